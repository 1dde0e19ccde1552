// Internal to shardctl: what `move`, `split`, `moves` and `rebalance`
// share: opening a mover from a configuration, running a move to its end,
// and printing moves.

#ifndef SHARDKIT_CLI_MOVE_COMMANDS_H_
#define SHARDKIT_CLI_MOVE_COMMANDS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "cli/move_progress.h"
#include "cli/output.h"
#include "rebalancer/journal.h"
#include "rebalancer/mover.h"

namespace shardkit::cli {

// How a command's backfill copies: --chunk-rows and --max-rate (0: the
// defaults, MoverOptions::chunk_rows and max_rows_per_second).
struct CopyFlags {
  int64_t chunk_rows = 0;
  int64_t max_rate = 0;
  bool key_lists = false;  // --key-lists: MoverOptions::use_server_hash off
};

// Adds --chunk-rows, --max-rate and --key-lists to `cmd`.
void AddCopyOptions(CLI::App* cmd, CopyFlags* flags);

// Loads the configuration and opens a mover over its [catalog], with
// `display` (may be null) attached, `copy` and `map_grace` (a duration
// such as "500ms"; empty: the default, see MoverOptions::map_grace). On
// failure prints why, sets exit status 1 (2 for a map_grace that is not a
// duration) and returns null.
std::unique_ptr<internal::Mover> OpenMoverOrFail(
    CommandContext& ctx, const std::string& config_path,
    MoveProgressDisplay* display, const CopyFlags& copy = {},
    const std::string& map_grace = "");

// "FROM:TO" or "region NAME".
std::string SliceText(const internal::MoveRecord& move);

// The move as a JSON object.
void WriteMoveJson(JsonWriter& json, const internal::MoveRecord& move);

// What the operator can do with a move that stopped ("" once it is done
// or aborted).
std::string WhatNext(const internal::MoveRecord& move);

// Runs move `id` to its end; on failure prints where it stopped and what
// to do (exit status 1), else the finished move in `format`.
void RunMoveToEnd(CommandContext& ctx, internal::Mover& mover, uint64_t id,
                  Format format);

void PrintMoveResult(CommandContext& ctx, const internal::MoveRecord& move,
                     Format format);

}  // namespace shardkit::cli

#endif  // SHARDKIT_CLI_MOVE_COMMANDS_H_
