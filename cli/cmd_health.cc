// shardctl health: every backend's role, state, replay lag and latency.

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "config/live_state.h"
#include "router/catalog.h"
#include "router/health.h"

namespace shardkit::cli {
namespace {

using internal::BackendHealth;
using internal::BackendRole;

struct HealthArgs {
  std::string config_path;
  Format format = Format::kTable;
};

std::string Millis(absl::Duration d) {
  return absl::StrFormat("%.2fms", absl::ToDoubleMilliseconds(d));
}

std::string LagText(const std::optional<absl::Duration>& lag) {
  if (!lag) return "-";
  if (*lag == absl::ZeroDuration()) return "0s";
  return absl::StrFormat("%.3fs", absl::ToDoubleSeconds(*lag));
}

// What an operator should notice about an answering backend, if anything.
std::string Note(const BackendHealth& b) {
  if (!b.up()) return std::string(b.status.message());
  if (b.target.configured_primary && b.role == BackendRole::kReplica) {
    return "configured as the primary but in recovery: it takes no writes";
  }
  if (!b.target.configured_primary && b.role == BackendRole::kPrimary) {
    return "configured as a replica but not in recovery (promoted?)";
  }
  if (b.replay_paused) return "replay paused";
  if (b.role == BackendRole::kReplica && !b.lag_bytes) {
    return "lag in bytes unknown: the shard's primary did not answer";
  }
  return "";
}

// Whether the shard's configured primary answers as a primary; else why.
std::optional<std::string> PrimaryProblem(const BackendHealth& b) {
  if (!b.target.configured_primary) return std::nullopt;
  if (!b.up()) {
    return absl::StrCat("the primary of shard ", b.target.shard_name,
                        " is down: ", b.status.message());
  }
  if (b.role != BackendRole::kPrimary) {
    return absl::StrCat("the primary of shard ", b.target.shard_name,
                        " is in recovery (a replica): it takes no writes");
  }
  return std::nullopt;
}

void PrintTableOf(const std::vector<BackendHealth>& health, std::ostream& out) {
  std::vector<std::vector<std::string>> rows;
  for (const BackendHealth& b : health) {
    const bool replica = b.up() && b.role == BackendRole::kReplica;
    rows.push_back(
        {b.target.shard_name, b.target.backend,
         b.up() ? std::string(internal::BackendRoleName(b.role)) : "-",
         b.up() ? "up" : "down", replica ? LagText(b.lag) : "-",
         replica && b.lag_bytes ? std::to_string(*b.lag_bytes) : "-",
         b.up() ? Millis(b.latency) : "-", TableCell(Note(b))});
  }
  PrintTable(out,
             {"SHARD", "BACKEND", "ROLE", "STATE", "LAG", "LAG_BYTES",
              "LATENCY", "NOTE"},
             rows);
}

void OptionalLsn(JsonWriter& json, const std::optional<uint64_t>& lsn) {
  if (lsn) {
    json.String(internal::FormatLsn(*lsn));
  } else {
    json.Null();
  }
}

void PrintJson(const std::vector<BackendHealth>& health, bool ok,
               const ShardMap& map, std::ostream& out) {
  JsonWriter json;
  json.BeginObject().Key("ok").Bool(ok).Key("backends").BeginArray();
  for (const BackendHealth& b : health) {
    const Shard& shard = map.shard(b.target.shard);
    std::string dsn = shard.MaskedDsn();
    for (const Backend& r : shard.replicas) {
      if (!b.target.configured_primary && r.name == b.target.backend) {
        dsn = r.MaskedDsn();
      }
    }
    json.BeginObject()
        .Key("shard").String(b.target.shard_name)
        .Key("backend").String(b.target.backend)
        .Key("configured_role")
        .String(b.target.configured_primary ? "primary" : "replica")
        .Key("dsn").String(dsn)
        .Key("state").String(b.up() ? "up" : "down")
        .Key("error");
    if (b.up()) {
      json.Null();
    } else {
      json.String(std::string(b.status.message()));
    }
    json.Key("role").String(internal::BackendRoleName(b.role));
    json.Key("lsn");
    OptionalLsn(json, b.lsn);
    json.Key("receive_lsn");
    OptionalLsn(json, b.receive_lsn);
    json.Key("replay_paused").Bool(b.replay_paused);
    json.Key("lag_bytes");
    if (b.lag_bytes) {
      json.Int(static_cast<int64_t>(*b.lag_bytes));
    } else {
      json.Null();
    }
    json.Key("lag_seconds");
    if (b.lag) {
      json.Double(absl::ToDoubleSeconds(*b.lag));
    } else {
      json.Null();
    }
    json.Key("connect_ms");
    if (b.up()) {
      json.Double(absl::ToDoubleMilliseconds(b.connect_time));
    } else {
      json.Null();
    }
    json.Key("latency_ms");
    if (b.up()) {
      json.Double(absl::ToDoubleMilliseconds(b.latency));
    } else {
      json.Null();
    }
    json.EndObject();
  }
  json.EndArray().EndObject();
  out << json.str() << "\n";
}

// The map to check: with a [catalog], the live one (after a failover its
// primary is a former replica, and the old primary is retired), with each
// shard's primary named as the live state names it.
std::optional<ShardMap> LiveMapOrFail(
    const Config& config, CommandContext& ctx,
    std::map<std::string, std::string>& primary_names) {
  if (!config.catalog) return config.map;
  internal::ExecOptions exec;
  exec.connect_timeout = config.timeouts.connect;
  exec.statement_timeout = config.timeouts.statement;
  internal::Catalog catalog(*config.catalog, exec);
  absl::StatusOr<std::optional<internal::LiveState>> latest = catalog.Latest();
  if (!latest.ok()) {
    Fail(ctx, absl::StrCat("cannot read the live shard map from the catalog (",
                           MaskDsnPassword(config.catalog->dsn),
                           "): ", latest.status().message(),
                           "; start the catalog's server"));
    return std::nullopt;
  }
  if (!*latest) return config.map;
  for (const auto& [shard, change] : (*latest)->shards) {
    primary_names[shard] = change.primary;
  }
  absl::StatusOr<ShardMap> map = internal::ApplyLiveState(config.map, **latest);
  if (!map.ok()) {
    Fail(ctx, map.status());
    return std::nullopt;
  }
  return *std::move(map);
}

void RunHealth(const HealthArgs& args, CommandContext& ctx) {
  std::optional<Config> config = LoadConfigOrFail(ctx, args.config_path);
  if (!config) return;
  std::map<std::string, std::string> primary_names;
  std::optional<ShardMap> map = LiveMapOrFail(*config, ctx, primary_names);
  if (!map) return;
  internal::ProbeOptions options;
  options.connect_timeout = config->timeouts.connect;
  options.query_timeout = config->timeouts.connect;
  std::vector<BackendHealth> health = internal::CheckHealth(*map, options);
  for (BackendHealth& b : health) {
    auto renamed = primary_names.find(b.target.shard_name);
    if (b.target.configured_primary && renamed != primary_names.end()) {
      b.target.backend = renamed->second;
    }
  }
  std::vector<std::string> problems;
  for (const BackendHealth& b : health) {
    if (std::optional<std::string> p = PrimaryProblem(b)) {
      problems.push_back(*p);
    }
  }
  if (args.format == Format::kJson) {
    PrintJson(health, problems.empty(), *map, *ctx.out);
  } else {
    PrintTableOf(health, *ctx.out);
  }
  if (problems.empty()) return;
  ctx.out->flush();
  if (problems.size() == 1) {
    Fail(ctx, problems[0]);
  } else {
    Fail(ctx, absl::StrCat(problems[0], " (and ", problems.size() - 1,
                           " more primaries not up)"));
  }
}

}  // namespace

void RegisterHealth(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<HealthArgs>();
  CLI::App* cmd = app.add_subcommand(
      "health",
      "Check every backend of every shard (primary and replicas) once: "
      "role, state, replay lag and latency");
  AddConfigOption(cmd, &args->config_path);
  AddFormatOption(cmd, &args->format);
  cmd->footer(
      "Connects to each shard's primary and each of its replicas (in "
      "parallel; [timeouts] connect to connect and as long again to answer) "
      "and runs one query: pg_is_in_recovery(), the WAL positions "
      "(pg_current_wal_lsn() on a primary, pg_last_wal_receive_lsn() and "
      "pg_last_wal_replay_lsn() on a replica) and now() - "
      "pg_last_xact_replay_timestamp().\n"
      "Columns: SHARD; BACKEND (primary, or the replica's name: r1, r2, ... "
      "unless the configuration names it); ROLE as the server reports it "
      "(primary, or replica when in recovery); STATE up or down; LAG, a "
      "replica's replay lag in seconds (0 once it has replayed all of its "
      "primary's WAL, else the age of the last transaction it replayed); "
      "LAG_BYTES, how far its replay is behind its primary's current WAL "
      "position; LATENCY, the round trip of the query; NOTE: why a backend "
      "is down, a paused replay, a role that differs from the "
      "configuration.\n"
      "With a [catalog], the shards are as its live map has them: after a "
      "failover, a shard's primary is the promoted replica (BACKEND r1, "
      "...) and the old primary, retired, is not listed.\n"
      "--format json prints {\"ok\":true,\"backends\":[{\"shard\":\"s1\","
      "\"backend\":\"r1\",\"configured_role\":\"replica\",\"dsn\":...,"
      "\"state\":\"up\",\"error\":null,\"role\":\"replica\",\"lsn\":"
      "\"0/3000148\",\"receive_lsn\":\"0/3000148\",\"replay_paused\":false,"
      "\"lag_bytes\":0,\"lag_seconds\":0,\"connect_ms\":1.9,"
      "\"latency_ms\":0.41}, ...]} (passwords masked).\n"
      "Exit status: 0 when every shard's primary is up and not in recovery; "
      "1 otherwise (the table is printed all the same, and stderr says "
      "which primary). A replica that is down or lagging does not change "
      "it: read the table.\n"
      "\n"
      "Example:\n"
      "  shardctl dev up --shards 2 --replicas 1 --dir /tmp/shardkit-rep\n"
      "  shardctl health -c /tmp/shardkit-rep/shards.toml");
  cmd->callback([args, &ctx] { RunHealth(*args, ctx); });
}

}  // namespace shardkit::cli
