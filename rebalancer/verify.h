// Internal: the verify phase of an online move: compares one table's rows
// of a moving slice on the source and the destination, chunk by chunk, and
// reports what differs. A difference is a result (the move must not cut
// over), not an error.
//
//   absl::StatusOr<VerifyReport> report = VerifyTable(
//       {"s1", s1_dsn}, {"s4", s4_dsn}, {"users", "id"}, slice, {});
//   if (!report.ok()) return report.status();      // could not compare
//   if (!report->ok()) return absl::FailedPreconditionError(
//       report->Summary());                          // the shards differ
//
// ## How
//
// The source is walked in primary-key order, `chunk_rows` rows at a time
// (as the backfill does); a chunk covers the keys after the previous
// chunk's last key up to its own last key (the last chunk is open above,
// so that rows only the destination holds are seen). Each side's rows of
// the slice in that key range are read as COPY text lines of the copied
// columns (the same columns, in the same order, with the same output
// settings on both sessions: the canonical encoding) and summarized as a
// count and the sum of each line's XXH3 (independent of the order rows
// arrive in). Hash slices are filtered client-side on both sides (the
// destination may hold rows of other slices), range and region slices in
// SQL.
//
// Writes are still dual-written while verify runs, so the two reads of a
// chunk may straddle a write. A chunk that differs is read again up to
// `rechecks` times, each time with the source's rows of the chunk held
// FOR SHARE while the destination is read (a dual-write to them waits, so
// both sides show the same writes). A large chunk read twice still
// straddles some writes while the application inserts (a new row is not
// locked by FOR SHARE): so the keys that still differ are then read again
// on their own, a few times, until they agree; only those that never do
// are reported, the first ones by key.
//
// Thread-safety: VerifyTable may run concurrently for different tables.

#ifndef SHARDKIT_REBALANCER_VERIFY_H_
#define SHARDKIT_REBALANCER_VERIFY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rebalancer/backfill.h"
#include "rebalancer/move_session.h"
#include "rebalancer/move_table.h"

namespace shardkit::internal {

struct VerifyOptions {
  // Source rows per chunk. >= 1.
  int64_t chunk_rows = 20000;
  // How many times a chunk that differs is read again (with the source's
  // rows locked) before it counts as a mismatch. >= 0.
  int rechecks = 3;
  // Pause before each recheck, for a dual-write in flight to land.
  absl::Duration recheck_pause = absl::Milliseconds(50);
  // Differences reported per mismatching chunk (all are counted).
  int max_differences = 10;
  // Bounds each statement on either shard.
  absl::Duration statement_timeout = absl::Minutes(5);
  // At most this many source rows per second (0: unpaced), as
  // BackfillOptions::max_rows_per_second; it waits between chunks.
  int64_t max_rows_per_second = 0;
};

// One row that differs.
struct RowDifference {
  enum class Kind {
    kMissingOnDestination,  // on the source only
    kExtraOnDestination,    // on the destination only
    kDifferent,             // on both, with different values
  };
  Kind kind = Kind::kDifferent;
  // Its primary key, text values in key order.
  std::vector<std::string> key;
};

// "missing on destination", "extra on destination", "different".
std::string_view RowDifferenceKindName(RowDifference::Kind kind);

// A chunk whose rows still differed after the rechecks.
struct ChunkMismatch {
  // The chunk's keys: after `after` (nullopt: from the first) up to and
  // including `up_to` (nullopt: to the last).
  std::optional<std::vector<std::string>> after;
  std::optional<std::vector<std::string>> up_to;
  int64_t source_rows = 0;
  int64_t destination_rows = 0;
  // The first differences, in source key order then destination order.
  std::vector<RowDifference> differences;
  // All differences found in the chunk.
  int64_t differences_total = 0;
};

struct VerifyReport {
  std::string table;
  int64_t chunks = 0;
  // The slice's rows seen on each side (in the final read of each chunk).
  int64_t source_rows = 0;
  int64_t destination_rows = 0;
  // Chunks that differed at first and were read again.
  int64_t rechecked_chunks = 0;
  std::vector<ChunkMismatch> mismatches;

  // True when no chunk differs.
  bool ok() const { return mismatches.empty(); }
  // A few lines for a person: the counts, and each mismatching chunk with
  // its first differing keys.
  std::string Summary() const;
};

// Compares `table`'s rows of `slice` on `source` and `destination` (see
// above). Fails (kUnavailable, the shard's error, or as CheckTableForMove)
// only when it cannot compare; differences are in the report.
// REQUIRES: options.chunk_rows >= 1, options.rechecks >= 0.
[[nodiscard]] absl::StatusOr<VerifyReport> VerifyTable(
    const ShardEndpoint& source, const ShardEndpoint& destination,
    const TableToMove& table, const MoveSlice& slice,
    const VerifyOptions& options);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_VERIFY_H_
