// shardctl recover: resolve the prepared transactions of two-phase commit
// that a process left in doubt, and say what was done.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "shardkit/cluster.h"

namespace shardkit::cli {
namespace {

struct RecoverArgs {
  std::string config_path;
  Format format = Format::kTable;
};

const char* OutcomeWord(const RecoveryReport::Resolved& r) {
  return r.committed ? "committed" : "rolled back";
}

void PrintRecoverTable(std::ostream& out, const RecoveryReport& report) {
  if (report.resolved.empty()) {
    out << "nothing to resolve\n";
  } else {
    std::vector<std::vector<std::string>> rows;
    for (const RecoveryReport::Resolved& r : report.resolved) {
      rows.push_back({r.shard_name, TableCell(r.gid), OutcomeWord(r)});
    }
    PrintTable(out, {"shard", "prepared transaction", "outcome"}, rows);
  }
  out << "resolved " << report.resolved.size() << ", left in progress "
      << report.left_in_progress << ", unreachable shards "
      << report.unreachable.size() << "\n";
  for (const std::string& why : report.unreachable) {
    out << "unreachable: " << TableCell(why) << "\n";
  }
}

void PrintRecoverJson(std::ostream& out, const RecoveryReport& report) {
  JsonWriter json;
  json.BeginObject().Key("resolved").BeginArray();
  for (const RecoveryReport::Resolved& r : report.resolved) {
    json.BeginObject()
        .Key("shard")
        .String(r.shard_name)
        .Key("gid")
        .String(r.gid)
        .Key("outcome")
        .String(r.committed ? "commit" : "rollback")
        .EndObject();
  }
  json.EndArray();
  json.Key("left_in_progress").Int(report.left_in_progress);
  json.Key("unreachable").BeginArray();
  for (const std::string& why : report.unreachable) json.String(why);
  json.EndArray().EndObject();
  out << json.str() << "\n";
}

void RunRecover(const RecoverArgs& args, CommandContext& ctx) {
  std::optional<Config> config = LoadConfigOrFail(ctx, args.config_path);
  if (!config.has_value()) return;
  const absl::Duration grace = config->transactions.recovery_grace;
  // Only this command's own pass, so that its report lists all it did.
  config->transactions.recover_in_background = false;
  std::unique_ptr<Cluster> cluster = OpenClusterOrFail(ctx, *std::move(config));
  if (cluster == nullptr) return;
  absl::StatusOr<RecoveryReport> report = cluster->Recover();
  if (!report.ok()) {
    Fail(ctx, absl::StrCat("recovery failed, nothing was resolved: ",
                           report.status().message()));
    return;
  }
  if (args.format == Format::kJson) {
    PrintRecoverJson(*ctx.out, *report);
  } else {
    PrintRecoverTable(*ctx.out, *report);
  }
  ctx.out->flush();
  std::vector<std::string> doubts;
  if (report->left_in_progress > 0) {
    doubts.push_back(absl::StrCat(
        report->left_in_progress,
        " prepared transaction(s) without a decision are younger than "
        "[transactions] recovery_grace (",
        absl::FormatDuration(grace),
        ") and may still be committing: run it again once they are older"));
  }
  if (!report->unreachable.empty()) {
    doubts.push_back(absl::StrCat(
        report->unreachable.size(),
        " shard(s) could not be checked: run it again once they are back"));
  }
  if (!doubts.empty()) Fail(ctx, absl::StrJoin(doubts, "; "));
}

}  // namespace

void RegisterRecover(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<RecoverArgs>();
  CLI::App* cmd = app.add_subcommand(
      "recover",
      "Resolve the prepared transactions that a process left in doubt when "
      "it died in the middle of a two-phase commit, and print what was "
      "done.");
  AddConfigOption(cmd, &args->config_path);
  AddFormatOption(cmd, &args->format);
  cmd->footer(
      "A transaction that wrote to several shards is prepared on each, its "
      "decision recorded in the decision log (the [catalog], else the first "
      "shard), then committed on each. A prepared transaction left behind "
      "holds its locks until resolved: recover commits it where the "
      "decision to commit is recorded, and rolls it back where none is and "
      "it is older than [transactions] recovery_grace (a younger one may "
      "still be committing: it is left in progress).\n"
      "When to use it: every program that opens the cluster does this on "
      "its own when it opens and every recovery_interval. Run recover after "
      "a crash (a killed process, a lost host) rather than wait for that, "
      "when no program has the cluster open, after a shard that was "
      "unreachable is back, or before taking a shard down.\n"
      "Output: one line per prepared transaction resolved (shard, its name "
      "shardkit_<txid>_<shard>, committed or rolled back), then how many "
      "were resolved, left in progress, and the shards that could not be "
      "reached.\n"
      "Exit status: 0 when nothing is left in doubt; 1 when a prepared "
      "transaction was left in progress or a shard could not be checked "
      "(run it again later), or the decision log could not be reached (then "
      "nothing was resolved).\n"
      "Example:\n"
      "  shardctl recover -c shards.toml\n"
      "  shardctl recover -c shards.toml --format json");
  cmd->callback([args, &ctx] { RunRecover(*args, ctx); });
}

}  // namespace shardkit::cli
