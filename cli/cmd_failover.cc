// shardctl failover / switchover: promote a shard's replica to primary and
// record it in the catalog's live map (router/failover.h).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "router/catalog.h"
#include "router/failover.h"

namespace shardkit::cli {
namespace {

struct FailoverArgs {
  std::string config_path;
  std::string shard;
  std::string target;  // "" when not given
  Format format = Format::kTable;
};

void PrintReport(const internal::FailoverReport& report, Format format,
                 std::ostream& out) {
  const std::string lsn = report.promoted_at_lsn
                              ? internal::FormatLsn(*report.promoted_at_lsn)
                              : "";
  if (format == Format::kJson) {
    JsonWriter json;
    json.BeginObject()
        .Key("shard").String(report.shard)
        .Key("mode").String(internal::FailoverModeName(report.mode))
        .Key("old_primary").String(report.old_primary)
        .Key("new_primary").String(report.new_primary)
        .Key("epoch").Int(static_cast<int64_t>(report.epoch))
        .Key("old_primary_up").Bool(report.old_primary_up)
        .Key("old_primary_fenced").Bool(report.old_primary_fenced)
        .Key("promoted_at_lsn");
    if (report.promoted_at_lsn) {
      json.String(lsn);
    } else {
      json.Null();
    }
    json.Key("repointed").BeginArray();
    for (const std::string& r : report.repointed) json.String(r);
    json.EndArray().Key("not_repointed").BeginArray();
    for (const std::string& r : report.not_repointed) json.String(r);
    json.EndArray().Key("notes").BeginArray();
    for (const std::string& n : report.notes) json.String(n);
    json.EndArray().EndObject();
    out << json.str() << "\n";
    return;
  }
  out << "Shard " << report.shard << ": " << report.new_primary
      << " is the primary now (was " << report.old_primary << "), live map epoch "
      << report.epoch << ".\n";
  if (report.promoted_at_lsn) {
    out << (report.mode == internal::FailoverMode::kSwitchover
                ? "It replayed all of the old primary's WAL, up to "
                : "Promoted at WAL position ")
        << lsn << ".\n";
  }
  out << "Old primary: "
      << (report.old_primary_up
              ? (report.old_primary_fenced ? "up, made read-only"
                                           : "up, NOT made read-only")
              : "down")
      << "; retired.\n";
  if (!report.repointed.empty()) {
    out << "Replicas now following " << report.new_primary << ": "
        << absl::StrJoin(report.repointed, ", ") << ".\n";
  }
  for (const std::string& r : report.not_repointed) {
    out << "Not repointed: " << r << "\n";
  }
  for (const std::string& n : report.notes) out << "Note: " << n << ".\n";
}

void RunFailover(const FailoverArgs& args, internal::FailoverMode mode,
                 CommandContext& ctx) {
  std::optional<Config> config = LoadConfigOrFail(ctx, args.config_path);
  if (!config) return;
  const std::string command(internal::FailoverModeName(mode));
  if (!config->catalog) {
    Fail(ctx, absl::StrCat(
                  args.config_path, " has no [catalog]: a ", command,
                  " records the shard's new primary in the catalog so that "
                  "every process using the cluster follows it; add a "
                  "[catalog] section with the dsn of a PostgreSQL database "
                  "that is not one of the shards' (see docs/configuration.md)"));
    return;
  }
  internal::ExecOptions exec;
  exec.connect_timeout = config->timeouts.connect;
  exec.statement_timeout = config->timeouts.statement;
  internal::Catalog catalog(*config->catalog, exec);
  internal::FailoverOptions options;
  options.mode = mode;
  if (!args.target.empty()) options.target = args.target;
  options.probe.connect_timeout = config->timeouts.connect;
  options.probe.query_timeout = config->timeouts.statement;
  absl::StatusOr<internal::FailoverReport> report =
      internal::Failover(config->map, catalog, args.shard, options);
  if (!report.ok()) {
    Fail(ctx, report.status());
    return;
  }
  PrintReport(*report, args.format, *ctx.out);
}

CLI::App* AddCommand(CLI::App& app, CommandContext& ctx, const char* name,
                     const char* description, internal::FailoverMode mode) {
  auto args = std::make_shared<FailoverArgs>();
  CLI::App* cmd = app.add_subcommand(name, description);
  AddConfigOption(cmd, &args->config_path);
  cmd->add_option("SHARD", args->shard, "The shard whose primary to replace")
      ->required();
  cmd->add_option("--to", args->target,
                  "The replica to promote (r1, r2, ... or its configured "
                  "name); default: the most advanced healthy one")
      ->option_text("BACKEND");
  AddFormatOption(cmd, &args->format);
  cmd->callback([args, mode, &ctx] { RunFailover(*args, mode, ctx); });
  return cmd;
}

constexpr char kCommonFooter[] =
    "Needs a [catalog] in the configuration: the new primary is recorded "
    "there (the live map's next epoch), and every program using the "
    "cluster (a shardkit Cluster with this configuration) routes its "
    "writes to it within about a second and never uses the old primary "
    "again, even if it comes back: it is retired. The shard's other "
    "replicas are pointed at the new primary (ALTER SYSTEM SET "
    "primary_conninfo, pg_reload_conf()); those that cannot be are "
    "listed. A lease in the catalog (failover/SHARD) makes sure only one "
    "process promotes a replica of a shard at a time.\n"
    "--format json prints {\"shard\":\"s1\",\"mode\":...,\"old_primary\":"
    "\"primary\",\"new_primary\":\"r1\",\"epoch\":2,\"old_primary_up\":"
    "true,\"old_primary_fenced\":true,\"promoted_at_lsn\":\"0/3000148\","
    "\"repointed\":[\"r2\"],\"not_repointed\":[],\"notes\":[...]}.\n"
    "Exit status: 0 once the new primary is promoted and recorded; 1 "
    "otherwise (stderr says why and what to do).\n";

}  // namespace

void RegisterFailover(CLI::App& app, CommandContext& ctx) {
  CLI::App* failover = AddCommand(
      app, ctx, "failover",
      "Promote a replica of SHARD to primary now, whether or not its primary "
      "is up",
      internal::FailoverMode::kManual);
  failover->footer(absl::StrCat(
      "For a primary that is lost (programs with a [catalog] do this on "
      "their own once the primary misses [replicas] failure_threshold "
      "heartbeats) or must be replaced at once. Promotes --to BACKEND, or "
      "the replica that received the most WAL; --to refuses a replica that "
      "is down, not in recovery or, with the primary up, lagging past "
      "max_lag. With the primary up, it is first made read-only "
      "(default_transaction_read_only, its sessions ended), but it is not "
      "waited for: writes it has not shipped are lost (use `shardctl "
      "switchover` to lose none). The old primary is retired: shut it down, "
      "or rebuild it as a replica of the new one.\n",
      kCommonFooter,
      "\nExample:\n"
      "  shardctl failover -c /tmp/shardkit-rep/shards.toml s1\n"
      "  shardctl failover -c shards.toml s2 --to r2 --format json"));

  CLI::App* switchover = AddCommand(
      app, ctx, "switchover",
      "Planned change of SHARD's primary to a replica, losing no write",
      internal::FailoverMode::kSwitchover);
  switchover->footer(absl::StrCat(
      "For maintenance of a primary that is up: makes it refuse writes "
      "(ALTER SYSTEM SET default_transaction_read_only = on, "
      "pg_reload_conf(), its client sessions ended), waits until the "
      "replica to promote (--to BACKEND, or the most advanced) has replayed "
      "all of its WAL (pg_current_wal_lsn()), promotes it and records it. "
      "Writes fail for that short while (sessions ended, read-only); "
      "nothing acknowledged is lost. If the replica does not catch up "
      "within 30 s, the old primary takes writes again and nothing changes. "
      "The old primary stays up, read-only and retired: shut it down, or "
      "rebuild it as a replica of the new one.\n",
      kCommonFooter,
      "\nExample:\n"
      "  shardctl switchover -c /tmp/shardkit-rep/shards.toml s1 --to r1"));
}

}  // namespace shardkit::cli
