// shardctl rebalance: plan moves that even out the data across shards
// (rebalancer/rebalance.h), and run them.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cli/commands.h"
#include "cli/move_commands.h"
#include "cli/move_progress.h"
#include "common/strings.h"
#include "rebalancer/move_table.h"
#include "rebalancer/rebalance.h"
#include "rebalancer/reference_copy.h"

namespace shardkit::cli {
namespace {

using internal::BalanceBy;
using internal::RebalancePlan;
using internal::RebalanceStep;
using internal::ShardEndpoint;

struct RebalanceArgs {
  std::string config_path;
  std::string distribution;
  BalanceBy by = BalanceBy::kRows;
  double tolerance_percent = 10;
  int max_moves = 16;
  bool dry_run = false;
  CopyFlags copy;
  Format format = Format::kTable;
};

// A reference table to copy onto a shard that is to receive data.
struct ReferenceSync {
  std::string table;
  std::string from;
  std::string to;
  int64_t rows = 0;
};

std::string Amount(int64_t n, BalanceBy by) {
  if (by == BalanceBy::kRows) return GroupedNumber(n) + " rows";
  if (n >= (int64_t{1} << 20)) {
    return absl::StrFormat("%.1f MiB", static_cast<double>(n) / (1 << 20));
  }
  return absl::StrFormat("%.1f KiB", static_cast<double>(n) / 1024);
}

void PrintPlans(CommandContext& ctx, const std::vector<RebalancePlan>& plans,
                const std::vector<ReferenceSync>& syncs,
                const std::vector<std::string>& notes,
                const RebalanceArgs& args) {
  if (args.format == Format::kJson) {
    JsonWriter json;
    json.BeginObject()
        .Key("by").String(args.by == BalanceBy::kRows ? "rows" : "bytes")
        .Key("dry_run").Bool(args.dry_run)
        .Key("distributions").BeginArray();
    for (const RebalancePlan& plan : plans) {
      json.BeginObject().Key("distribution").String(plan.distribution);
      json.Key("before").BeginObject();
      for (const auto& [shard, n] : plan.before) json.Key(shard).Int(n);
      json.EndObject().Key("after").BeginObject();
      for (const auto& [shard, n] : plan.after) json.Key(shard).Int(n);
      json.EndObject().Key("moves").BeginArray();
      for (const RebalanceStep& s : plan.steps) {
        json.BeginObject()
            .Key("slice").String(s.request.slice)
            .Key("source").String(s.source)
            .Key("destination").String(s.request.destination)
            .Key("rows").Int(s.rows)
            .Key("bytes").Int(s.bytes)
            .EndObject();
      }
      json.EndArray().EndObject();
    }
    json.EndArray().Key("reference_copies").BeginArray();
    for (const ReferenceSync& s : syncs) {
      json.BeginObject()
          .Key("table").String(s.table)
          .Key("from").String(s.from)
          .Key("to").String(s.to)
          .Key("rows").Int(s.rows)
          .EndObject();
    }
    json.EndArray().Key("notes").BeginArray();
    for (const std::string& n : notes) json.String(n);
    json.EndArray().EndObject();
    *ctx.out << json.str() << "\n";
    return;
  }
  std::ostream& out = *ctx.out;
  for (const RebalancePlan& plan : plans) {
    out << "Distribution " << plan.distribution << ":\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& [shard, n] : plan.before) {
      rows.push_back({shard, Amount(n, args.by), Amount(plan.after.at(shard),
                                                       args.by)});
    }
    PrintTable(out, {"SHARD", "NOW", "AFTER"}, rows);
    if (plan.steps.empty()) {
      out << "Balanced: no move.\n\n";
      continue;
    }
    rows.clear();
    int i = 0;
    for (const RebalanceStep& s : plan.steps) {
      rows.push_back({std::to_string(++i), s.request.slice, s.source,
                      s.request.destination,
                      Amount(args.by == BalanceBy::kRows ? s.rows : s.bytes,
                             args.by)});
    }
    out << "\n";
    PrintTable(out, {"#", "SLICE", "FROM", "TO", "MOVES"}, rows);
    out << "\n";
  }
  for (const ReferenceSync& s : syncs) {
    out << "Reference table " << s.table << ": copy " << GroupedNumber(s.rows)
        << " rows from " << s.from << " to " << s.to << " first.\n";
  }
  for (const std::string& n : notes) out << "Note: " << n << "\n";
  if (args.dry_run) out << "Dry run: nothing was changed.\n";
}

void RunRebalance(const RebalanceArgs& args, CommandContext& ctx) {
  MoveProgressDisplay display(*ctx.err,
                              MoveProgressDisplay::StderrIsTerminal());
  std::unique_ptr<internal::Mover> mover =
      OpenMoverOrFail(ctx, args.config_path, &display, args.copy);
  if (mover == nullptr) return;
  absl::StatusOr<std::vector<internal::MoveRecord>> active =
      mover->journal().Active();
  if (!active.ok()) {
    Fail(ctx, active.status());
    return;
  }
  if (!active->empty()) {
    const internal::MoveRecord& m = active->front();
    Fail(ctx, StrCat("move ", m.id, " (", m.distribution, " ", SliceText(m),
                     " from ", m.source, " to ", m.destination,
                     ") is not finished, phase ",
                     internal::JournalPhaseName(m.phase),
                     ": a rebalance plans on a settled map. Finish it first (",
                     WhatNext(m), "), then run the rebalance again"));
    return;
  }
  absl::StatusOr<internal::Mover::Live> live = mover->Current();
  if (!live.ok()) {
    Fail(ctx, live.status());
    return;
  }
  const ShardMap& map = live->map;
  const absl::Duration timeout = mover->options().statement_timeout;
  const std::vector<ShardEndpoint> endpoints =
      internal::ShardEndpoints(map, mover->options().connect_timeout);

  std::vector<RebalancePlan> plans;
  std::vector<std::string> notes;
  if (!args.distribution.empty() &&
      map.FindDistribution(args.distribution) == nullptr) {
    Fail(ctx, StrCat("unknown distribution '", args.distribution,
                     "' (`shardctl map show -c ", args.config_path,
                     "` lists them)"));
    return;
  }
  internal::RebalanceOptions options;
  options.by = args.by;
  options.tolerance = args.tolerance_percent / 100.0;
  options.max_moves = args.max_moves;
  for (const Distribution& d : map.distributions()) {
    if (!args.distribution.empty() && d.name() != args.distribution) continue;
    if (d.strategy() == Strategy::kRegion) {
      notes.push_back(StrCat("distribution ", d.name(),
                             " places keys by region (a policy): not "
                             "rebalanced; `shardctl move --region` moves a "
                             "region"));
      continue;
    }
    absl::StatusOr<internal::DistributionLoad> load =
        internal::MeasureDistribution(map, d.name(), endpoints, timeout);
    if (!load.ok()) {
      Fail(ctx, load.status());
      return;
    }
    absl::StatusOr<RebalancePlan> plan = internal::PlanRebalance(
        map, *load, options,
        internal::RangeCutFinder(map, d.name(), endpoints, timeout));
    if (!plan.ok()) {
      Fail(ctx, plan.status());
      return;
    }
    plans.push_back(*std::move(plan));
  }

  // The shards that receive data must have the distribution's tables
  // (checked by each move too, but better before the first one) and the
  // reference tables' rows.
  std::map<std::string, std::set<std::string>> receivers;  // shard -> dists
  for (const RebalancePlan& plan : plans) {
    for (const RebalanceStep& s : plan.steps) {
      receivers[s.request.destination].insert(plan.distribution);
    }
  }
  std::set<ShardId> owners;  // the shards that hold data already
  for (const Distribution& d : map.distributions()) {
    owners.insert(d.shards().begin(), d.shards().end());
  }
  std::vector<ReferenceSync> syncs;
  for (const auto& [shard, dists] : receivers) {
    const ShardEndpoint& to = endpoints[*map.FindShard(shard)];
    for (const Table& t : map.tables()) {
      const bool wanted =
          t.reference ||
          dists.count(map.distributions()[t.distribution].name()) > 0;
      if (!wanted) continue;
      absl::StatusOr<int64_t> there = internal::CountRows(to, t.name, timeout);
      if (there.status().code() == absl::StatusCode::kNotFound) {
        Fail(ctx, StrCat(there.status().message(), ", which is to receive "
                         "data: create it there first (e.g. `shardctl exec "
                         "-c ", args.config_path, " --all \"CREATE TABLE IF "
                         "NOT EXISTS ...\"`), then run the rebalance again"));
        return;
      }
      if (!there.ok()) {
        Fail(ctx, there.status());
        return;
      }
      if (!t.reference) continue;
      // The other shards that own data already have the reference rows:
      // the first is the one to copy from, and the others' copies must
      // hold the same rows (count and checksum of every row), or the
      // rebalance would pick one of two versions blindly.
      std::optional<std::string> from;
      internal::TableDigest digest;
      for (const ShardId id : owners) {
        const std::string& donor = map.shard(id).name;
        if (donor == shard) continue;
        absl::StatusOr<internal::TableDigest> d =
            internal::DigestRows(endpoints[id], t.name, timeout);
        if (!d.ok()) {
          Fail(ctx, d.status());
          return;
        }
        if (!from) {
          from = donor;
          digest = *d;
        } else if (*d != digest) {
          Fail(ctx, StrCat("reference table ", t.name, " has ", digest.rows,
                           " rows on ", *from, " and ", d->rows, " on ", donor,
                           d->rows == digest.rows ? " with other values" : "",
                           ": its copies differ, and the rebalance would "
                           "copy one of them onto ", shard, ". Make them "
                           "equal, then run the rebalance again"));
          return;
        }
      }
      const int64_t rows = digest.rows;
      if (!from || rows == *there) continue;
      if (*there != 0) {
        Fail(ctx, StrCat("reference table ", t.name, " has ", *there,
                         " rows on ", shard, " but ", rows, " on ", *from,
                         ": its copies differ. Make them equal, or empty it "
                         "on ", shard, " (TRUNCATE ", t.name, " there) and "
                         "the rebalance copies ", *from, "'s rows first; "
                         "then run the rebalance again"));
        return;
      }
      syncs.push_back({t.name, *from, shard, rows});
    }
  }
  PrintPlans(ctx, plans, syncs, notes, args);
  if (args.dry_run) return;

  for (const ReferenceSync& s : syncs) {
    *ctx.err << "copying reference table " << s.table << " from " << s.from
             << " to " << s.to << "\n";
    absl::StatusOr<int64_t> copied = internal::SyncReferenceTable(
        endpoints[*map.FindShard(s.from)], endpoints[*map.FindShard(s.to)],
        s.table, timeout);
    if (!copied.ok()) {
      Fail(ctx, copied.status());
      return;
    }
  }
  int done = 0;
  int total = 0;
  for (const RebalancePlan& plan : plans) total += plan.steps.size();
  for (const RebalancePlan& plan : plans) {
    for (const RebalanceStep& step : plan.steps) {
      *ctx.err << "rebalance: move " << ++done << " of " << total << ": "
               << plan.distribution << " " << step.request.slice << " from "
               << step.source << " to " << step.request.destination << "\n";
      absl::StatusOr<internal::MoveRecord> move = mover->Start(step.request);
      if (!move.ok()) {
        Fail(ctx, StrCat(move.status().message(), " (rebalance stopped after ",
                         done - 1, " of ", total, " moves; run it again to "
                         "plan the rest)"));
        return;
      }
      CommandContext quiet = ctx;
      std::ostringstream discard;
      quiet.out = &discard;
      RunMoveToEnd(quiet, *mover, move->id, Format::kTable);
      if (quiet.exit_code != 0) {
        ctx.exit_code = quiet.exit_code;
        return;
      }
    }
  }
  if (args.format == Format::kTable && total > 0) {
    *ctx.out << "Rebalanced: " << total << " move" << (total == 1 ? "" : "s")
             << " done.\n";
  }
}

}  // namespace

void RegisterRebalance(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<RebalanceArgs>();
  CLI::App* cmd = app.add_subcommand(
      "rebalance",
      "Even out the data across shards (including a newly added, empty one) "
      "with online moves");
  AddConfigOption(cmd, &args->config_path);
  cmd->add_flag("--dry-run", args->dry_run,
                "Print the plan and change nothing");
  static const std::map<std::string, BalanceBy> kBy = {
      {"rows", BalanceBy::kRows}, {"bytes", BalanceBy::kBytes}};
  cmd->add_option("--by", args->by, "What to even out: rows or bytes "
                                    "(pg_total_relation_size)")
      ->transform(CLI::CheckedTransformer(kBy, CLI::ignore_case))
      ->option_text("rows|bytes")
      ->default_str("rows");
  cmd->add_option("--distribution", args->distribution,
                  "Only this distribution (default: every hash and range "
                  "distribution)")
      ->option_text("NAME");
  cmd->add_option("--tolerance", args->tolerance_percent,
                  "A shard within this many percent of the mean is balanced")
      ->check(CLI::Range(1.0, 100.0))
      ->option_text("PERCENT")
      ->default_str("10");
  cmd->add_option("--max-moves", args->max_moves,
                  "At most this many moves per distribution")
      ->check(CLI::Range(1, 1000))
      ->default_str("16");
  AddCopyOptions(cmd, &args->copy);
  AddFormatOption(cmd, &args->format);
  cmd->footer(
      "Measures each shard's rows (count(*)) or bytes of each distribution, "
      "then plans moves from the most loaded shard to the least loaded one "
      "until every shard is within --tolerance of the mean: a whole slice "
      "when one fits, else a part carved off the top of a slice (for hash "
      "distributions by width, the hash spreading rows evenly; for range "
      "ones at the key the owner's rows put there). Every shard of the "
      "configuration takes part: to add a shard, add it under [shards] in "
      "every program's configuration, create the tables on it (`shardctl "
      "exec -c FILE --all \"CREATE TABLE IF NOT EXISTS ...\"`), and run "
      "the rebalance. A shard about to receive data whose reference tables "
      "are empty gets their rows first (copied from a shard that owns data, "
      "writes to that table waiting meanwhile); the rebalance refuses when "
      "the copies of a reference table differ in rows between shards.\n"
      "The moves then run one after the other, online, as `shardctl move` "
      "runs them (needs a [catalog]; see `shardctl move --help`); if one "
      "stops, so does the rebalance: resume or abort that move with "
      "`shardctl moves`, and run the rebalance again for the rest. Region "
      "distributions are not rebalanced.\n"
      "--format json prints the plan: {\"by\":\"rows\",\"dry_run\":true,"
      "\"distributions\":[{\"distribution\":\"users\",\"before\":{\"s1\":"
      "500,...},\"after\":{...},\"moves\":[{\"slice\":\"0xa000000000000000:"
      "\",\"source\":\"s1\",\"destination\":\"s4\",\"rows\":125,\"bytes\":"
      "16384}]}],\"reference_copies\":[...],\"notes\":[...]}.\n"
      "Exit status: 0 when the plan was printed (--dry-run) or every move is "
      "done; 1 otherwise.\n"
      "\nExamples:\n"
      "  shardctl rebalance -c shards.toml --dry-run\n"
      "  shardctl rebalance -c shards.toml --by bytes --tolerance 5");
  cmd->callback([args, &ctx] { RunRebalance(*args, ctx); });
}

}  // namespace shardkit::cli
