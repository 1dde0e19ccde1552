// shardctl move, split and moves: online moves of key slices between
// shards (rebalancer/mover.h), and the journal of moves.

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "cli/commands.h"
#include "cli/move_commands.h"
#include "cli/move_progress.h"
#include "common/strings.h"
#include "config/live_state.h"
#include "rebalancer/mover.h"

namespace shardkit::cli {

using internal::JournalPhase;
using internal::MoveRecord;
using internal::Mover;

std::unique_ptr<Mover> OpenMoverOrFail(CommandContext& ctx,
                                       const std::string& config_path,
                                       MoveProgressDisplay* display,
                                       const CopyFlags& copy,
                                       const std::string& map_grace) {
  internal::MoverOptions options;
  if (!map_grace.empty() &&
      (!absl::ParseDuration(map_grace, &options.map_grace) ||
       options.map_grace < absl::ZeroDuration())) {
    Fail(ctx, absl::StrCat("--map-grace: '", map_grace,
                           "' is not a duration; write e.g. 3s or 500ms"));
    ctx.exit_code = 2;
    return nullptr;
  }
  std::optional<Config> config = LoadConfigOrFail(ctx, config_path);
  if (!config) return nullptr;
  options.connect_timeout = config->timeouts.connect;
  if (copy.chunk_rows > 0) options.chunk_rows = copy.chunk_rows;
  options.max_rows_per_second = copy.max_rate;
  options.use_server_hash = !copy.key_lists;
  if (display != nullptr) display->Attach(options);
  absl::StatusOr<std::unique_ptr<Mover>> mover =
      Mover::Open(*std::move(config), std::move(options));
  if (!mover.ok()) {
    Fail(ctx, mover.status());
    return nullptr;
  }
  return *std::move(mover);
}

void AddCopyOptions(CLI::App* cmd, CopyFlags* flags) {
  cmd->add_option("--chunk-rows", flags->chunk_rows,
                  "Rows per backfill chunk (default 20000)")
      ->check(CLI::Range(int64_t{1}, int64_t{10000000}));
  cmd->add_option("--max-rate", flags->max_rate,
                  "At most this many source rows per second per table in "
                  "the backfill and the verify, to leave the application its "
                  "share of the shards (default: as fast as they go)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000000000}))
      ->option_text("ROWS");
  cmd->add_flag("--key-lists", flags->key_lists,
                "Move a hash slice with key lists even when its shards have "
                "shardkit's hash functions (`shardctl hash`), e.g. while "
                "programs older than them still route by the map");
}

std::string SliceText(const MoveRecord& move) {
  if (!move.region.empty()) return StrCat("region ", move.region);
  return StrCat(move.from, ":", move.to);
}

void WriteMoveJson(JsonWriter& json, const MoveRecord& move) {
  json.BeginObject()
      .Key("id").Int(static_cast<int64_t>(move.id))
      .Key("distribution").String(move.distribution);
  if (move.region.empty()) {
    json.Key("from").String(move.from).Key("to").String(move.to);
  } else {
    json.Key("region").String(move.region);
  }
  json.Key("source").String(move.source)
      .Key("destination").String(move.destination)
      .Key("phase").String(internal::JournalPhaseName(move.phase))
      .Key("past_point_of_no_return").Bool(move.past_point_of_no_return)
      .Key("server_hash").Bool(move.server_hash)
      .Key("error").String(move.error)
      .Key("created_at").String(move.created_at)
      .Key("updated_at").String(move.updated_at)
      .EndObject();
}

std::string WhatNext(const MoveRecord& move) {
  switch (move.phase) {
    case JournalPhase::kDone:
    case JournalPhase::kAborted:
      return "";
    case JournalPhase::kAborting:
      return StrCat("`shardctl moves abort ", move.id,
                          "` finishes the abort");
    default:
      break;
  }
  if (move.past_point_of_no_return) {
    return StrCat("`shardctl moves resume ", move.id,
                        "` finishes it (it has cut over: it can only go "
                        "forward)");
  }
  return StrCat("`shardctl moves resume ", move.id,
                      "` continues it, `shardctl moves abort ", move.id,
                      "` rolls it back");
}

// Runs move `id` to its end, or fails saying where it stopped and what to
// do. Prints the final record on success.
void RunMoveToEnd(CommandContext& ctx, Mover& mover, uint64_t id,
                  Format format) {
  absl::Status run = mover.Run(id);
  absl::StatusOr<MoveRecord> after = mover.journal().Get(id);
  if (!run.ok()) {
    std::string message(run.message());
    if (after.ok() && message.find("shardctl moves") == std::string::npos) {
      const std::string next = WhatNext(*after);
      StrAppend(&message, " (move ", id, " stopped in phase ",
                      internal::JournalPhaseName(after->phase),
                      next.empty() ? "" : "; ", next, ")");
    }
    Fail(ctx, message);
    return;
  }
  if (!after.ok()) {
    Fail(ctx, after.status());
    return;
  }
  PrintMoveResult(ctx, *after, format);
}

void PrintMoveResult(CommandContext& ctx, const MoveRecord& move,
                     Format format) {
  if (format == Format::kJson) {
    JsonWriter json;
    WriteMoveJson(json, move);
    *ctx.out << json.str() << "\n";
    return;
  }
  *ctx.out << "Move " << move.id << " " << internal::JournalPhaseName(move.phase)
           << ": " << move.distribution << " " << SliceText(move) << " from "
           << move.source << " to " << move.destination << ".\n";
}

namespace {

struct MoveArgs {
  std::string config_path;
  std::string distribution;
  std::string slice;
  std::string region;
  std::string destination;
  CopyFlags copy;
  std::string map_grace;
  Format format = Format::kTable;
};

void RunMove(const MoveArgs& args, CommandContext& ctx) {
  MoveProgressDisplay display(*ctx.err,
                              MoveProgressDisplay::StderrIsTerminal());
  std::unique_ptr<Mover> mover =
      OpenMoverOrFail(ctx, args.config_path, &display, args.copy,
                      args.map_grace);
  if (mover == nullptr) return;
  internal::MoveRequest request;
  request.distribution = args.distribution;
  request.slice = args.slice;
  request.region = args.region;
  request.destination = args.destination;
  absl::StatusOr<MoveRecord> move = mover->Start(request);
  if (!move.ok()) {
    Fail(ctx, move.status());
    return;
  }
  RunMoveToEnd(ctx, *mover, move->id, args.format);
}

struct SplitArgs {
  std::string config_path;
  std::string distribution;
  std::string slice;
  std::string at;
  std::string destination;
  std::string half = "upper";
  Format format = Format::kTable;
};

// The bound `text` of a slice of `d` as the live state writes it, so that
// two spellings of one bound compare equal; `lower`: a lower bound.
absl::StatusOr<std::string> NormalBound(const Distribution& d,
                                        const std::string& text, bool lower) {
  if (d.strategy() == Strategy::kHash) {
    absl::StatusOr<std::optional<uint64_t>> v = internal::ParseHashBound(text);
    if (!v.ok()) return v.status();
    if (lower) return internal::HashLowerText(v->value_or(0));
    return internal::HashBoundText(*v);
  }
  absl::StatusOr<std::optional<Key>> k =
      internal::ParseKeyBound(d.key_type(), text);
  if (!k.ok()) return k.status();
  return internal::KeyBoundText(*k);
}

void RunSplit(const SplitArgs& args, CommandContext& ctx) {
  MoveProgressDisplay display(*ctx.err,
                              MoveProgressDisplay::StderrIsTerminal());
  std::unique_ptr<Mover> mover =
      OpenMoverOrFail(ctx, args.config_path, &display);
  if (mover == nullptr) return;
  absl::StatusOr<Mover::Live> live = mover->Current();
  if (!live.ok()) {
    Fail(ctx, live.status());
    return;
  }
  const Distribution* d = live->map.FindDistribution(args.distribution);
  if (d == nullptr) {
    Fail(ctx, StrCat("unknown distribution '", args.distribution,
                           "' (`shardctl map show -c ", args.config_path,
                           "` lists them)"));
    return;
  }
  if (d->strategy() == Strategy::kRegion) {
    Fail(ctx, StrCat("distribution '", d->name(),
                           "' places keys by region: there is no slice to "
                           "split; move a region with `shardctl move "
                           "--region`"));
    return;
  }
  // --slice must name a slice of the map as it is, so that the operator
  // splits what they think they split.
  const std::vector<std::string> sides =
      absl::StrSplit(args.slice, absl::MaxSplits(':', 1));
  if (sides.size() != 2) {
    Fail(ctx, StrCat("--slice '", args.slice,
                           "' must be LO:HI, as `shardctl map show` prints "
                           "the slices (an empty side is open)"));
    return;
  }
  absl::StatusOr<std::string> lo = NormalBound(*d, sides[0], true);
  absl::StatusOr<std::string> hi = NormalBound(*d, sides[1], false);
  if (!lo.ok() || !hi.ok()) {
    Fail(ctx, StrCat("--slice '", args.slice, "': ",
                           (lo.ok() ? hi : lo).status().message()));
    return;
  }
  const internal::LiveState::Ownership& own =
      live->state.distributions.at(d->name());
  const internal::LiveState::Slice* slice = nullptr;
  std::string slices;
  for (const internal::LiveState::Slice& s : own.slices) {
    StrAppend(&slices, slices.empty() ? "" : ", ", s.from, ":", s.to,
                    " (", s.shard, ")");
    if (s.from == *lo && s.to == *hi) slice = &s;
  }
  if (slice == nullptr) {
    Fail(ctx, StrCat("--slice ", args.slice, " is not a slice of '",
                           d->name(), "' in the live map (epoch ",
                           live->state.epoch, "); its slices: ", slices));
    return;
  }
  absl::StatusOr<std::string> at = NormalBound(*d, args.at, false);
  if (!at.ok()) {
    Fail(ctx, StrCat("--at '", args.at, "': ", at.status().message()));
    return;
  }
  absl::StatusOr<uint64_t> epoch = mover->Split(d->name(), *at);
  if (!epoch.ok()) {
    Fail(ctx, epoch.status());
    return;
  }
  const std::string lower = StrCat(*lo, ":", *at);
  const std::string upper = StrCat(*at, ":", *hi);
  if (args.destination.empty()) {
    if (args.format == Format::kJson) {
      JsonWriter json;
      json.BeginObject()
          .Key("distribution").String(d->name())
          .Key("slices").BeginArray().String(lower).String(upper).EndArray()
          .Key("shard").String(slice->shard)
          .Key("epoch").Int(static_cast<int64_t>(*epoch))
          .EndObject();
      *ctx.out << json.str() << "\n";
    } else {
      *ctx.out << "Split " << d->name() << " " << args.slice << " at "
               << *at << ": " << lower << " and " << upper << ", both on "
               << slice->shard << " (live map epoch " << *epoch << ").\n";
    }
    return;
  }
  *ctx.err << "split " << d->name() << " at " << *at << " (epoch " << *epoch
           << "); moving " << args.half << " half to " << args.destination
           << "\n";
  internal::MoveRequest request;
  request.distribution = d->name();
  request.slice = args.half == "lower" ? lower : upper;
  request.destination = args.destination;
  absl::StatusOr<MoveRecord> move = mover->Start(request);
  if (!move.ok()) {
    Fail(ctx, StrCat(move.status().message(), " (the split itself "
                           "was published)"));
    return;
  }
  RunMoveToEnd(ctx, *mover, move->id, args.format);
}

struct MovesArgs {
  std::string config_path;
  uint64_t id = 0;
  bool active = false;
  std::string map_grace;  // resume, abort
  CopyFlags copy;         // resume
  Format format = Format::kTable;
};

void RunList(const MovesArgs& args, CommandContext& ctx) {
  std::unique_ptr<Mover> mover = OpenMoverOrFail(ctx, args.config_path,
                                                 nullptr);
  if (mover == nullptr) return;
  absl::StatusOr<std::vector<MoveRecord>> moves =
      args.active ? mover->journal().Active() : mover->journal().List();
  if (!moves.ok()) {
    Fail(ctx, moves.status());
    return;
  }
  if (args.format == Format::kJson) {
    JsonWriter json;
    json.BeginArray();
    for (const MoveRecord& m : *moves) WriteMoveJson(json, m);
    json.EndArray();
    *ctx.out << json.str() << "\n";
    return;
  }
  if (moves->empty()) {
    *ctx.out << (args.active ? "No move under way.\n" : "No moves yet.\n");
    return;
  }
  std::vector<std::vector<std::string>> rows;
  for (const MoveRecord& m : *moves) {
    rows.push_back({std::to_string(m.id), m.distribution, SliceText(m),
                    m.source, m.destination,
                    std::string(internal::JournalPhaseName(m.phase)),
                    m.updated_at, TableCell(m.error)});
  }
  PrintTable(*ctx.out,
             {"ID", "DISTRIBUTION", "SLICE", "FROM", "TO", "PHASE", "UPDATED",
              "ERROR"},
             rows);
}

void RunStatus(const MovesArgs& args, CommandContext& ctx) {
  std::unique_ptr<Mover> mover = OpenMoverOrFail(ctx, args.config_path,
                                                 nullptr);
  if (mover == nullptr) return;
  absl::StatusOr<MoveRecord> move = mover->journal().Get(args.id);
  if (!move.ok()) {
    Fail(ctx, move.status());
    return;
  }
  absl::StatusOr<std::vector<internal::TableProgress>> progress =
      mover->journal().Progress(args.id);
  absl::StatusOr<std::vector<std::string>> events =
      mover->journal().Events(args.id);
  if (!progress.ok() || !events.ok()) {
    Fail(ctx, progress.ok() ? events.status() : progress.status());
    return;
  }
  if (args.format == Format::kJson) {
    JsonWriter json;
    json.BeginObject().Key("move");
    WriteMoveJson(json, *move);
    json.Key("tables").BeginArray();
    for (const internal::TableProgress& p : *progress) {
      json.BeginObject()
          .Key("table").String(p.table)
          .Key("rows_scanned").Int(p.rows_scanned)
          .Key("rows_copied").Int(p.rows_copied)
          .Key("backfilled").Bool(p.done)
          .EndObject();
    }
    json.EndArray().Key("events").BeginArray();
    for (const std::string& e : *events) json.String(e);
    json.EndArray().Key("next").String(WhatNext(*move)).EndObject();
    *ctx.out << json.str() << "\n";
    return;
  }
  std::ostream& out = *ctx.out;
  out << "Move " << move->id << ": " << move->distribution << " "
      << SliceText(*move) << " from " << move->source << " to "
      << move->destination << "\n"
      << "Phase: " << internal::JournalPhaseName(move->phase)
      << (move->past_point_of_no_return ? " (cut over: can only go forward)"
                                        : "")
      << "\nStarted: " << move->created_at << "\nUpdated: "
      << move->updated_at << "\n";
  if (!move->error.empty()) out << "Stopped: " << move->error << "\n";
  if (!progress->empty()) {
    std::vector<std::vector<std::string>> rows;
    for (const internal::TableProgress& p : *progress) {
      rows.push_back({p.table, GroupedNumber(p.rows_copied),
                      GroupedNumber(p.rows_scanned), p.done ? "yes" : "no"});
    }
    out << "\n";
    PrintTable(out, {"TABLE", "ROWS COPIED", "ROWS SCANNED", "BACKFILLED"},
               rows);
  }
  if (!events->empty()) {
    out << "\nEvents:\n";
    for (const std::string& e : *events) out << "  " << e << "\n";
  }
  const std::string next = WhatNext(*move);
  if (!next.empty()) out << "\nNext: " << next << ".\n";
}

void RunResume(const MovesArgs& args, CommandContext& ctx) {
  MoveProgressDisplay display(*ctx.err,
                              MoveProgressDisplay::StderrIsTerminal());
  std::unique_ptr<Mover> mover =
      OpenMoverOrFail(ctx, args.config_path, &display, args.copy,
                      args.map_grace);
  if (mover == nullptr) return;
  RunMoveToEnd(ctx, *mover, args.id, args.format);
}

void RunAbort(const MovesArgs& args, CommandContext& ctx) {
  MoveProgressDisplay display(*ctx.err,
                              MoveProgressDisplay::StderrIsTerminal());
  std::unique_ptr<Mover> mover =
      OpenMoverOrFail(ctx, args.config_path, &display, {}, args.map_grace);
  if (mover == nullptr) return;
  absl::Status aborted = mover->Abort(args.id);
  if (!aborted.ok()) {
    Fail(ctx, aborted);
    return;
  }
  absl::StatusOr<MoveRecord> move = mover->journal().Get(args.id);
  if (!move.ok()) {
    Fail(ctx, move.status());
    return;
  }
  PrintMoveResult(ctx, *move, args.format);
}

void AddMapGraceOption(CLI::App* cmd, std::string* map_grace) {
  cmd->add_option("--map-grace", *map_grace,
                  "How long programs get to pick up a new map before the "
                  "mover removes what the previous one used (default 3s; "
                  "they hear of a new map at once, or within their 1 s "
                  "poll)")
      ->option_text("DURATION");
}

CLI::App* AddMovesCommand(CLI::App* moves, CommandContext& ctx,
                          const char* name, const char* description,
                          void (*run)(const MovesArgs&, CommandContext&),
                          bool takes_id) {
  auto args = std::make_shared<MovesArgs>();
  if (!takes_id) {
    // list
    CLI::App* cmd = moves->add_subcommand(name, description);
    AddConfigOption(cmd, &args->config_path);
    cmd->add_flag("--active", args->active,
                  "Only the moves not finished (not done, not aborted)");
    AddFormatOption(cmd, &args->format);
    cmd->callback([args, run, &ctx] { run(*args, ctx); });
    return cmd;
  }
  CLI::App* cmd = moves->add_subcommand(name, description);
  cmd->add_option("ID", args->id, "The move's id (`shardctl moves list`)")
      ->required();
  AddConfigOption(cmd, &args->config_path);
  if (std::string_view(name) == "resume" || std::string_view(name) == "abort") {
    AddMapGraceOption(cmd, &args->map_grace);
  }
  if (std::string_view(name) == "resume") AddCopyOptions(cmd, &args->copy);
  AddFormatOption(cmd, &args->format);
  cmd->callback([args, run, &ctx] { run(*args, ctx); });
  return cmd;
}

constexpr char kMoveFooter[] =
    "Needs a [catalog] in the configuration: the live map (who owns which "
    "slice) and the journal of moves are kept there, and every program "
    "using the cluster with this configuration follows the map.\n"
    "The phases, each journaled before it starts:\n"
    "  dual-write  programs apply writes to the slice on both shards; the "
    "source's tables are fenced so that a program with an older map gets a "
    "retryable error (the library refreshes its map and retries)\n"
    "  backfill    the rows that existed before are copied with COPY, in "
    "chunks (--chunk-rows)\n"
    "  verify      counts and checksums per chunk must match, or the move "
    "stops with a report and does not cut over\n"
    "  cutover     writes to the slice pause (milliseconds), the "
    "destination becomes the owner, writes resume there\n"
    "  cleanup     the slice's rows are deleted from the source\n"
    "Progress goes to stderr: a progress bar on a terminal, log lines "
    "otherwise. If the command is interrupted or killed, the cluster keeps "
    "serving correctly: `shardctl moves resume ID` continues the move, "
    "`shardctl moves abort ID` rolls it back (until the cutover).\n"
    "Exit status: 0 when the move is done; 1 otherwise (stderr says why "
    "and what to do).\n";

}  // namespace

void RegisterMove(CLI::App& app, CommandContext& ctx) {
  {
    auto args = std::make_shared<MoveArgs>();
    CLI::App* cmd = app.add_subcommand(
        "move",
        "Move a slice of keys (every table of a distribution) to another "
        "shard, online");
    AddConfigOption(cmd, &args->config_path);
    cmd->add_option("--distribution", args->distribution,
                    "The distribution whose slice moves")
        ->required()
        ->option_text("NAME");
    CLI::Option* slice =
        cmd->add_option("--slice", args->slice,
                        "The keys that move, FROM:TO (FROM included, TO "
                        "not): hex hash values for a hash distribution "
                        "(0x4000000000000000:0x8000000000000000), keys for a "
                        "range one (1000:2000); an empty side is open. It "
                        "may be part of a slice of the map: it is split off")
            ->option_text("FROM:TO");
    CLI::Option* region =
        cmd->add_option("--region", args->region,
                        "For a region distribution: the region that moves")
            ->option_text("NAME");
    slice->excludes(region);
    cmd->add_option("--to", args->destination, "The shard that gets the keys")
        ->required()
        ->option_text("SHARD");
    AddCopyOptions(cmd, &args->copy);
    AddMapGraceOption(cmd, &args->map_grace);
    AddFormatOption(cmd, &args->format);
    cmd->footer(StrCat(
        kMoveFooter,
        "--format json prints the finished move as {\"id\":4,"
        "\"distribution\":\"users\",\"from\":...,\"to\":...,\"source\":"
        "\"s1\",\"destination\":\"s3\",\"phase\":\"done\",...}.\n"
        "\nExamples:\n"
        "  shardctl move -c shards.toml --distribution users "
        "--slice 0x4000000000000000:0x6000000000000000 --to s3\n"
        "  shardctl move -c shards.toml --distribution events --slice "
        "1000000: --to s4\n"
        "  shardctl move -c shards.toml --distribution customers --region "
        "eu --to s2"));
    cmd->callback([args, &ctx] {
      if (args->slice.empty() == args->region.empty()) {
        Fail(ctx, "give the keys that move: --slice FROM:TO (hash or range "
                  "distributions) or --region NAME (region distributions)");
        ctx.exit_code = 2;
        return;
      }
      RunMove(*args, ctx);
    });
  }
  {
    auto args = std::make_shared<SplitArgs>();
    CLI::App* cmd = app.add_subcommand(
        "split", "Split a slice of a distribution in two, optionally moving "
                 "one half to another shard");
    AddConfigOption(cmd, &args->config_path);
    cmd->add_option("--distribution", args->distribution,
                    "The distribution whose slice is split")
        ->required()
        ->option_text("NAME");
    cmd->add_option("--slice", args->slice,
                    "The slice to split, LO:HI, exactly as `shardctl map "
                    "show` lists it (an empty side is open)")
        ->required()
        ->option_text("LO:HI");
    cmd->add_option("--at", args->at,
                    "Where to split: the upper half starts at K (a hex hash "
                    "for hash distributions, a key for range ones)")
        ->required()
        ->option_text("K");
    CLI::Option* to = cmd->add_option(
        "--to", args->destination,
        "Move one half (--half, default the upper one K:HI) to SHARD, online "
        "as `shardctl move` does");
    to->option_text("SHARD");
    cmd->add_option("--half", args->half, "Which half --to moves")
        ->check(CLI::IsMember({"upper", "lower"}))
        ->option_text("upper|lower")
        ->default_str("upper")
        ->needs(to);
    AddFormatOption(cmd, &args->format);
    cmd->footer(StrCat(
        "Without --to, only the map changes: both halves stay on the slice's "
        "shard and no row moves (a new epoch of the live map in the "
        "[catalog]). With --to, the half then moves as with `shardctl "
        "move`:\n",
        kMoveFooter,
        "\nExamples:\n"
        "  shardctl split -c shards.toml --distribution users --slice "
        ":0x5555555555555555 --at 0x2aaaaaaaaaaaaaaa\n"
        "  shardctl split -c shards.toml --distribution events --slice "
        "1000: --at 5000 --to s4"));
    cmd->callback([args, &ctx] { RunSplit(*args, ctx); });
  }
  {
    CLI::App* moves = app.add_subcommand(
        "moves", "List moves, show one, resume or abort one");
    moves->require_subcommand(1);
    AddMovesCommand(moves, ctx, "list",
                    "The moves in the journal, newest first", RunList, false)
        ->footer(
            "--format json prints an array of moves: [{\"id\":4,"
            "\"distribution\":\"users\",\"from\":...,\"to\":...,"
            "\"source\":\"s1\",\"destination\":\"s3\",\"phase\":"
            "\"backfill\",\"past_point_of_no_return\":false,\"error\":"
            "\"\",...}].");
    AddMovesCommand(moves, ctx, "status",
                    "One move: phase, progress per table, events, what to "
                    "do next",
                    RunStatus, true);
    AddMovesCommand(moves, ctx, "resume",
                    "Run a stopped move to its end from its journaled phase",
                    RunResume, true)
        ->footer(
            "Redoes the phase the move stopped in (each phase checks what is "
            "already done), then the rest. Refused while another process "
            "runs the move (a lease in the catalog: once that process has "
            "died, at once on the same host, else 30 s later).\nExit "
            "status: 0 when the move is done; 1 otherwise.");
    AddMovesCommand(moves, ctx, "abort",
                    "Roll a move back: the source keeps the slice",
                    RunAbort, true)
        ->footer(
            "Possible until the move's point of no return, the cutover that "
            "publishes the destination as the owner (after it, only resume). "
            "Drops the move from the live map, "
            "fences the destination and deletes the copies made there. "
            "Nothing written through shardkit is lost: the source had every "
            "write.\nExit status: 0 when the move is aborted; 1 otherwise.");
  }
}

}  // namespace shardkit::cli
