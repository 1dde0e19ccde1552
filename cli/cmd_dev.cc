// shardctl dev up | down: throwaway PostgreSQL shards on this machine.

#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/dev_cluster.h"
#include "cli/output.h"

namespace shardkit::cli {
namespace {

using dev::kMaxPort;
using dev::kMaxReplicas;
using dev::kMaxShards;
using dev::kMinPort;

// --port must leave room for all the shards' and replicas' ports. CLI11
// runs an app's option callbacks in the order the options were added, so
// `*options` holds the parsed --shards, --replicas and --catalog when
// this runs.
CLI::Validator PortRangeValidator(const dev::DevClusterOptions* options) {
  const int* shards = &options->shards;
  const int* replicas = &options->replicas;
  return CLI::Validator(
      [options, shards, replicas](std::string& value) -> std::string {
        int port = 0;
        int highest = kMaxPort - (*shards * (1 + *replicas) - 1);
        // The catalog instance takes the port before.
        int lowest = options->WithCatalog() ? kMinPort + 1 : kMinPort;
        if (!absl::SimpleAtoi(value, &port) || port < lowest ||
            port > highest) {
          if (options->WithCatalog()) {
            return absl::StrFormat(
                "%s is not a usable first port for %d shards with %d "
                "replicas each and the catalog on the port before: it "
                "must be between %d and %d",
                value, *shards, *replicas, lowest, highest);
          }
          return absl::StrFormat(
              "%s is not a usable first port for %d shards: it must be "
              "between %d and %d",
              value, *shards, kMinPort, highest);
        }
        return "";
      },
      absl::StrFormat("first port in %d..%d-(N-1)", kMinPort, kMaxPort),
      "PORT_RANGE");
}

std::string StateOf(const dev::DevInstance& instance) {
  if (instance.created) return "created";
  if (instance.started) return "started";
  return "already running";
}

struct UpArgs {
  dev::DevClusterOptions options;
  Format format = Format::kTable;
};

void PrintUpJson(const dev::DevCluster& cluster, std::ostream& out) {
  JsonWriter json;
  json.BeginObject()
      .Key("dir").String(cluster.dir)
      .Key("config").String(cluster.config_path)
      .Key("shards").BeginArray();
  auto instance_members = [&json](const dev::DevInstance& instance) {
    json.Key("name").String(instance.name)
        .Key("port").Int(instance.port)
        .Key("state").String(StateOf(instance))
        .Key("dsn").String(instance.dsn)
        .Key("data_dir").String(instance.data_dir);
  };
  for (const dev::DevInstance& instance : cluster.instances) {
    json.BeginObject();
    instance_members(instance);
    if (!instance.replicas.empty()) {
      json.Key("replicas").BeginArray();
      for (const dev::DevInstance& replica : instance.replicas) {
        json.BeginObject();
        instance_members(replica);
        json.EndObject();
      }
      json.EndArray();
    }
    json.EndObject();
  }
  json.EndArray();
  json.Key("catalog");
  if (cluster.catalog) {
    json.BeginObject();
    instance_members(*cluster.catalog);
    json.EndObject();
  } else {
    json.Null();
  }
  json.EndObject();
  out << json.str() << "\n";
}

void RunUp(const UpArgs& args, CommandContext& ctx) {
  absl::StatusOr<dev::DevCluster> cluster = dev::Up(args.options);
  if (!cluster.ok()) {
    Fail(ctx, cluster.status());
    return;
  }
  if (args.format == Format::kJson) {
    PrintUpJson(*cluster, *ctx.out);
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const dev::DevInstance& instance : cluster->instances) {
    rows.push_back({instance.name, std::to_string(instance.port),
                    StateOf(instance), instance.dsn});
    for (const dev::DevInstance& replica : instance.replicas) {
      rows.push_back({replica.name, std::to_string(replica.port),
                      StateOf(replica), replica.dsn});
    }
  }
  if (cluster->catalog) {
    rows.push_back({cluster->catalog->name,
                    std::to_string(cluster->catalog->port),
                    StateOf(*cluster->catalog), cluster->catalog->dsn});
  }
  PrintTable(*ctx.out, {"SHARD", "PORT", "STATE", "DSN"}, rows);
  *ctx.out << "\nWrote " << cluster->config_path << "\n"
           << "Next: shardctl map show -c " << cluster->config_path << "\n"
           << "Stop: shardctl dev down --dir " << cluster->dir << "\n";
}

struct DownArgs {
  std::string dir;
  Format format = Format::kTable;
};

void PrintDownJson(const dev::DownResult& down, std::ostream& out) {
  JsonWriter json;
  json.BeginObject().Key("dir").String(down.dir).Key("stopped").BeginArray();
  for (const std::string& name : down.stopped) json.String(name);
  json.EndArray().EndObject();
  out << json.str() << "\n";
}

void RunDown(const DownArgs& args, CommandContext& ctx) {
  absl::StatusOr<dev::DownResult> down = dev::Down(args.dir);
  if (!down.ok()) {
    Fail(ctx, down.status());
    return;
  }
  if (args.format == Format::kJson) {
    PrintDownJson(*down, *ctx.out);
  } else if (down->stopped.empty()) {
    *ctx.out << "No running dev instances under " << down->dir << "\n";
  } else {
    *ctx.out << "Stopped " << absl::StrJoin(down->stopped, ", ") << "\n";
  }
}

}  // namespace

void RegisterDev(CLI::App& app, CommandContext& ctx) {
  CLI::App* dev = app.add_subcommand(
      "dev",
      "Run throwaway PostgreSQL shards on this machine (development and "
      "tests only)");
  dev->require_subcommand(1);

  auto args = std::make_shared<UpArgs>();
  dev::DevClusterOptions* options = &args->options;
  CLI::App* up = dev->add_subcommand(
      "up",
      "Start N throwaway PostgreSQL servers on 127.0.0.1 (with --replicas, "
      "each with R streaming replicas) and write DIR/shards.toml describing "
      "them (development only)");
  const std::string shards_help =
      absl::StrFormat("Number of shards, 1..%d (required)", kMaxShards);
  up->add_option("--shards", options->shards, shards_help)
      ->required()
      ->check(CLI::Range(1, kMaxShards))
      ->option_text("N");
  up->add_option("--dir", options->dir,
                 "Directory for the instances' data, logs and shards.toml "
                 "(created if missing), e.g. /tmp/shardkit-dev (required)")
      ->required()
      ->option_text("DIR");
  const std::string replicas_help = absl::StrFormat(
      "Streaming replicas per shard, 0..%d (default 0): each made with "
      "pg_basebackup from its shard's primary",
      kMaxReplicas);
  up->add_option("--replicas", options->replicas, replicas_help)
      ->check(CLI::Range(0, kMaxReplicas))
      ->option_text("R");
  up->add_flag("--catalog", options->catalog,
               "Also run a catalog instance on PORT-1 (implied by "
               "--replicas): online moves and failover keep the live shard "
               "map there");
  up->add_flag("--sync", options->synchronous,
              "Synchronous replication: a commit returns once a replica has "
              "it (needs --replicas; 2 keep a shard writable after a "
              "failover)");
  up->add_option("--port", options->base_port,
                 "Port of shard s1 (default 6001); shard i listens on "
                 "PORT+i-1, replicas on the ports after the shards', the "
                 "catalog (with --catalog or --replicas) on PORT-1")
      ->check(PortRangeValidator(options))
      ->option_text("PORT");
  up->add_option("--database", options->database,
                 "Database created on every instance and named in the "
                 "connection strings (default app)")
      ->option_text("NAME");
  up->add_option("--setting", options->extra_settings,
                 "Extra postgresql.conf line for every instance, e.g. "
                 "--setting \"log_statement = 'all'\" (repeatable)")
      ->option_text("LINE");
  AddFormatOption(up, &args->format);
  up->footer(
      "Creates one PostgreSQL 15 instance per shard (initdb, data in "
      "DIR/s1..DIR/sN, log in DIR/sI.log), listening on 127.0.0.1 ports "
      "PORT..PORT+N-1, creates the database on each, and writes "
      "DIR/shards.toml: the shards, a hash distribution 'users' with tables "
      "users (id) and orders (user_id), and a reference table countries.\n"
      "With --replicas R, each shard's primary also gets R streaming "
      "replicas (hot standbys made with pg_basebackup -R, replaying the "
      "primary's WAL; data in DIR/sI-rJ, log in DIR/sI-rJ.log), listening "
      "on the ports after the shards', first replicas first: replica J of "
      "shard I on PORT+J*N+(I-1). shards.toml lists them under each shard's "
      "`replicas`; `shardctl health -c DIR/shards.toml` shows their lag. "
      "Without --replicas, replicas that exist are left alone (and "
      "unlisted).\n"
      "With --catalog or --replicas, a catalog instance also runs on PORT-1 "
      "(data in DIR/catalog) and shards.toml names it in [catalog]: it holds "
      "the live shard map and the journal of moves, so `shardctl move`, "
      "`split` and `rebalance` work, and a shard whose primary dies is failed over to a replica "
      "automatically by the programs using the cluster, and `shardctl "
      "failover` / `switchover` work. --sync makes every commit on a "
      "primary wait for one replica (synchronous_standby_names = 'ANY 1 "
      "(*)'), so a failover loses no acknowledged write.\n"
      "Idempotent: existing instances are reused and running ones left "
      "alone, so running it again is harmless.\n"
      "Development only: anyone on this machine can connect without a "
      "password (trust authentication on loopback), and durability is off "
      "(fsync, full_page_writes). As root, the servers run as the 'postgres' "
      "user, which must be able to reach DIR.\n"
      "\n"
      "Example:\n"
      "  shardctl dev up --shards 3 --dir /tmp/shardkit-dev\n"
      "  shardctl dev up --shards 2 --replicas 1 --dir /tmp/shardkit-rep\n"
      "  shardctl map show -c /tmp/shardkit-dev/shards.toml\n"
      "  shardctl dev down --dir /tmp/shardkit-dev");
  up->callback([args, &ctx] { RunUp(*args, ctx); });

  auto down_args = std::make_shared<DownArgs>();
  CLI::App* down = dev->add_subcommand(
      "down", "Stop the dev PostgreSQL servers under DIR; their data stays");
  down->footer(
      "Stops (fast shutdown) every server that `shardctl dev up` runs under "
      "DIR, replicas first, the catalog last. The data stays: `shardctl dev up` with the same "
      "--dir starts them again. Remove DIR to delete it.\n"
      "Prints the shards it stopped; as JSON: "
      "{\"dir\":\"/tmp/shardkit-dev\",\"stopped\":[\"s1\",\"s2\"]} (DIR made "
      "absolute; the list is empty if none was running).");
  down->add_option("--dir", down_args->dir,
                   "Directory given to `shardctl dev up` (required)")
      ->required()
      ->option_text("DIR");
  AddFormatOption(down, &down_args->format);
  down->callback([down_args, &ctx] { RunDown(*down_args, ctx); });
}

}  // namespace shardkit::cli
