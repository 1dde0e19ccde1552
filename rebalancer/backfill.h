// Internal: the backfill of an online move: copies the rows of one table
// that belong to a moving slice from the source shard to the destination,
// in chunks, while the application keeps writing (dual-writes reach the
// destination meanwhile; see rebalancer/shard_objects.h, "Backfill").
//
//   MoveSlice slice = MoveSlice::FromMovingSlice(distribution, move);
//   BackfillOptions options;
//   options.resume_after = journal.bound;          // nullopt: from the start
//   options.epoch = map.epoch();                    // passes the fences
//   options.on_chunk = [&](const BackfillChunk& c) {
//     return journal.RecordBound(c.bound);          // resume point
//   };
//   absl::StatusOr<BackfillStats> done = BackfillTable(
//       {"s1", s1_dsn}, {"s4", s4_dsn}, {"users", "id"}, slice, options);
//
// ## One chunk
//
// Source, in a transaction: the next `chunk_rows` rows after the bound in
// primary-key order, read and locked by
//   COPY (SELECT cols FROM t WHERE (pk) > (bound) [AND the slice's filter]
//         ORDER BY pk LIMIT n FOR SHARE) TO STDOUT
// (a dual-write of one of them waits until the chunk is on the destination,
// and a row deleted before the read is simply not there, so the backfill
// never resurrects a deleted row). The filter is the slice's SQL condition
// (range, region, and hash slices whose shards hash keys themselves:
// MoveSlice::server_hash); any other hash slice cannot be filtered in SQL:
// its rows are kept client-side by HashKey of the key column's value. The
// rows are passed on as their COPY text lines, never re-encoded.
// Destination, in a transaction: COPY the slice's rows into the table as
// the source sends them; when one is already there (unique violation), back
// to a savepoint, COPY them into a temporary staging table, then
//   INSERT INTO t (cols) [OVERRIDING SYSTEM VALUE] SELECT cols FROM staging
//     ON CONFLICT DO NOTHING
// (a row already there was dual-written, so it is newer: kept); for a hash
// slice with key lists, list the keys in shardkit.move_<id>_keys (other
// slices keep no lists: shard_objects.h); then the destination commits,
// then the source (releasing the locks), and then, for such a slice, the
// source lists the keys too, in a transaction of its own (while it held
// the rows, its listing could deadlock with a dual-write listing the same
// key and waiting for one of the rows). The bound after a chunk is the
// primary key of the last row it scanned.
//
// ## Two chunks at a time
//
// The source has two sessions. While the destination writes chunk k (its
// rows handed to libpq at once, sent as the server takes them), the other
// source session reads chunk k + 1 (locked as above); then chunk k
// commits (destination, then source), and chunk k + 1 goes to the
// destination while chunk k + 2 is read. So neither server waits for the
// other between chunks: timed on two cores, the backfill went from 0.76 to
// 0.82-0.86 of a raw COPY pipe. At most two chunks' rows are locked on the
// source at once.
//
// Every lock wait of the backfill is bounded (lock_timeout 300 ms, under
// the servers' deadlock_timeout): with the source's rows locked and its
// copies uncommitted, waiting on a dual-write that waits on one of them
// would be a deadlock across two servers that neither detects. A chunk
// that times out rolls back on both sides, with the chunk read after it,
// and the backfill runs again from the last chunk committed, in chunks of
// half the size.
//
// Resuming from any earlier bound (or from the start) is harmless: a chunk
// copied again inserts nothing and lists keys already listed.
//
// A killed mover leaves at most one chunk of a hash slice with key lists
// committed on the destination whose keys the source has not listed: the
// resume copies it again, which lists them; the move must not cut over
// before a backfill finished.
//
// Failpoints (router/failpoint.h, SHARDKIT_FAILPOINTS):
//   move-backfill-after-chunk  a chunk committed on the destination, not
//                              yet on the source (each chunk)
//   move-backfill-mid          after the first chunk committed and its
//                              progress was reported
//
// Thread-safety: BackfillTable may run concurrently for different tables;
// each call opens its own connections.

#ifndef SHARDKIT_REBALANCER_BACKFILL_H_
#define SHARDKIT_REBALANCER_BACKFILL_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rebalancer/move_session.h"
#include "rebalancer/move_table.h"

namespace shardkit::internal {

// A sharded table as the mover sees it: its name in the map (table or
// schema.table) and its shard-key column.
struct TableToMove {
  std::string name;
  std::string key_column;
};

// What a backfill did (for one chunk, or summed).
struct BackfillStats {
  int64_t chunks = 0;
  // Rows read from the source (for a hash slice, rows of other slices too).
  int64_t rows_scanned = 0;
  // Rows of the slice sent to the destination.
  int64_t rows_in_slice = 0;
  // Rows the destination inserted; rows_in_slice minus those already there
  // (dual-written, or copied by an earlier run).
  int64_t rows_copied = 0;
  // Bytes of COPY text sent to the destination.
  int64_t bytes = 0;

  void Add(const BackfillStats& other);
};

// Reported after each chunk committed on both shards.
struct BackfillChunk {
  BackfillStats chunk;  // this chunk
  BackfillStats total;  // since BackfillTable was called
  // The primary key (text values, in key order) of the last row scanned:
  // give it as BackfillOptions::resume_after to continue after this chunk.
  std::vector<std::string> bound;
};

struct BackfillOptions {
  // Rows read from the source per chunk (and held FOR SHARE until the
  // chunk is on the destination). >= 1.
  int64_t chunk_rows = 20000;
  // Continue after this primary key (a BackfillChunk::bound); nullopt:
  // from the first row.
  std::optional<std::vector<std::string>> resume_after;
  // The map epoch this mover writes under: set as shardkit.epoch on both
  // sessions so that the epoch fences (shard_objects.h) let the inserts
  // through. nullopt: not set (no fence on the tables).
  std::optional<uint64_t> epoch;
  // Bounds each statement on either shard (including waits for row locks).
  absl::Duration statement_timeout = absl::Minutes(5);
  // At most this many rows read from the source per second (on average
  // since the call; 0: as fast as the shards go), so that the copy leaves
  // the application's writes their share of the servers. A paced backfill
  // reads one chunk at a time and waits between chunks with no row locked.
  int64_t max_rows_per_second = 0;
  // Called after each chunk committed on both shards, on the calling
  // thread; a non-OK status stops the backfill and is returned (the chunk
  // stays committed). The next chunk has been read by then, its rows
  // locked on the source until it is written: return promptly. May be
  // empty.
  std::function<absl::Status(const BackfillChunk&)> on_chunk;
};

// How long a backfill paced at `rows_per_second` (> 0) waits, having read
// `rows` in `elapsed`, so that its average stays at or under the pace:
// zero when it is behind.
absl::Duration PaceDelay(int64_t rows, int64_t rows_per_second,
                         absl::Duration elapsed);

// Checks that `table` can move from `source` to `destination` (see
// DescribeTableForMove) and returns its shape. For the plan phase.
[[nodiscard]] absl::StatusOr<TableShape> CheckTableForMove(
    const ShardEndpoint& source, const ShardEndpoint& destination,
    const TableToMove& table);

// Creates, if missing, shardkit.move_<id>_keys and move_<id>_pending
// (shard_objects.h) for `slice` on the session's shard. Only hash slices
// without server_hash list keys in the first (MoveListsKeys); the backfill
// of any other slice does not call it.
[[nodiscard]] absl::Status EnsureMoveKeysTable(MoveSession& session,
                                               const MoveSlice& slice);

// Copies the rows of `table` in `slice` from `source` to `destination`
// (see above), after options.resume_after, until the source has no more
// rows. Returns the totals. Fails with the first error, naming the shard
// and the table; chunks committed before it stay committed and were
// reported to on_chunk, so a retry resumes from the last bound. Fails like
// CheckTableForMove when the table cannot move.
// REQUIRES: options.chunk_rows >= 1; the slice's dual-writes are fenced in
// (every write to it already reaches the destination).
[[nodiscard]] absl::StatusOr<BackfillStats> BackfillTable(
    const ShardEndpoint& source, const ShardEndpoint& destination,
    const TableToMove& table, const MoveSlice& slice,
    const BackfillOptions& options);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_BACKFILL_H_
