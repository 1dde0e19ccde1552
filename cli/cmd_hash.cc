// shardctl hash install|check: shardkit's hash functions on the shards
// (rebalancer/server_hash.h), with which an online move of a hash slice
// keeps no key lists.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "rebalancer/move_session.h"
#include "rebalancer/rebalance.h"
#include "rebalancer/server_hash.h"
#include "shardkit/cluster.h"

namespace shardkit::cli {
namespace {

struct HashArgs {
  std::string config_path;
  std::string module = std::string(internal::kServerHashModule);
  Format format = Format::kTable;
  bool install = false;
};

void RunHash(const HashArgs& args, CommandContext& ctx) {
  std::optional<Config> config = LoadConfigOrFail(ctx, args.config_path);
  if (!config.has_value()) return;
  const absl::Duration connect = config->timeouts.connect;
  // The live map (after failovers, the shards' current primaries).
  config->transactions.recover_in_background = false;
  std::unique_ptr<Cluster> cluster = OpenClusterOrFail(ctx, *std::move(config));
  if (cluster == nullptr) return;
  std::vector<std::vector<std::string>> rows;
  JsonWriter json;
  json.BeginObject().Key("shards").BeginArray();
  int failed = 0;
  // One server: installs (primaries only) or checks, and reports.
  auto visit = [&](const internal::ShardEndpoint& server, bool install) {
    absl::Status done;
    absl::StatusOr<std::unique_ptr<internal::MoveSession>> session =
        internal::MoveSession::Open(server, absl::Minutes(1));
    if (!session.ok()) {
      done = session.status();
    } else if (install) {
      done = internal::InstallServerHash(**session, args.module);
    } else {
      done = internal::CheckServerHashOfEveryType(**session);
    }
    if (!done.ok()) ++failed;
    const std::string result =
        done.ok() ? (install ? "installed, hashes as shardkit does"
                             : "hashes as shardkit does")
                  : std::string(done.message());
    rows.push_back({server.name, TableCell(result)});
    json.BeginObject()
        .Key("shard")
        .String(server.name)
        .Key("ok")
        .Bool(done.ok())
        .Key("result")
        .String(result)
        .EndObject();
  };
  const ShardMap& map = *cluster->map();
  for (const Shard& shard : map.shards()) {
    visit({shard.name, shard.dsn, connect}, args.install);
    // A replica gets the functions with the WAL, not the module's file,
    // and reads of a moving slice may run there: checked too.
    if (args.install) continue;
    for (const Backend& replica : shard.replicas) {
      visit({absl::StrCat(shard.name, "/", replica.name), replica.dsn, connect},
            false);
    }
  }
  json.EndArray().EndObject();
  if (args.format == Format::kJson) {
    *ctx.out << json.str() << "\n";
  } else {
    PrintTable(*ctx.out, {"shard", "shardkit.hash_key_v1"}, rows);
  }
  ctx.out->flush();
  if (failed > 0) {
    Fail(ctx, absl::StrCat(failed,
                           " server(s) cannot hash keys themselves; "
                           "moves of hash slices from or to their "
                           "shards keep key lists (slower), and a "
                           "replica without the module fails the "
                           "reads of a moving slice sent to it"));
  }
}

}  // namespace

void RegisterHash(CLI::App& app, CommandContext& ctx) {
  CLI::App* hash = app.add_subcommand(
      "hash",
      "Install or check shardkit's hash functions on the shards, with which "
      "moves of hash slices run without key lists.");
  hash->require_subcommand(1);
  hash->footer(
      "A hash distribution places a key by the XXH3 hash of its encoding "
      "(include/shardkit/key.h), which PostgreSQL cannot compute. While a "
      "hash slice moves, each shard must tell the slice's rows apart: "
      "without help it keeps lists of the slice's keys, which the backfill "
      "and every dual-write fill (a B-tree insert per row on each side). "
      "With the shardkit_pg module loaded as shardkit.hash_key_v1, the "
      "shards compute the hash themselves and the move keeps no lists: its "
      "backfill runs about twice as fast. A move checks the functions on "
      "both of its shards when it starts and uses them only if they hash "
      "sample keys exactly as this shardkit does.");
  for (bool install : {true, false}) {
    auto args = std::make_shared<HashArgs>();
    args->install = install;
    CLI::App* cmd = hash->add_subcommand(
        install ? "install" : "check",
        install ? "Create shardkit.hash_key_v1 on every shard from the "
                  "shardkit_pg module, then check it."
                : "Check that every shard's shardkit.hash_key_v1 hashes as "
                  "this shardkit does, on its primary and on each replica "
                  "(listed as SHARD/REPLICA).");
    AddConfigOption(cmd, &args->config_path);
    AddFormatOption(cmd, &args->format);
    if (install) {
      cmd->add_option(
          "--module", args->module,
          "The module as the servers load it: a path their user can read "
          "(the build's shardkit_pg.so, or lib/shardkit/shardkit_pg.so "
          "where shardkit is installed), or $libdir/shardkit_pg once "
          "copied into the directory `pg_config --pkglibdir` prints on "
          "each shard's host")
          ->capture_default_str();
      cmd->footer(
          "Creating C functions needs a superuser connection. Installing "
          "again replaces the functions (e.g. after an upgrade): put the new "
          "module in place by rename (a new file), never by overwriting the "
          "one servers have loaded, which crashes them. Every program that "
          "routes by the cluster's map must run this shardkit or a later "
          "one before a move uses the functions.\n"
          "Exit status: 0 when every shard hashes as shardkit does; 1 "
          "otherwise (the table says why, per shard).\n"
          "Example:\n"
          "  shardctl hash install -c shards.toml --module "
          "/usr/local/lib/shardkit/shardkit_pg.so\n");
    } else {
      cmd->footer(
          "Exit status: 0 when every shard hashes as shardkit does; 1 "
          "otherwise (the table says why, per shard).\n"
          "Example:\n"
          "  shardctl hash check -c shards.toml\n");
    }
    cmd->callback([args, &ctx] { RunHash(*args, ctx); });
  }
}

}  // namespace shardkit::cli
