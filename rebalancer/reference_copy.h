// Internal: bringing a shard's copy of a reference table in line with
// another shard's, for a shard added to the map (shardctl rebalance).
//
// Reference tables are copied on every shard and the router writes them
// on every shard of its map in one transaction; a shard added to the
// configuration starts with empty tables. SyncReferenceTable copies the
// rows from a shard that has them:
//
//   destination: BEGIN; LOCK t IN ACCESS EXCLUSIVE MODE
//   source:      BEGIN; LOCK t IN SHARE MODE   (writes to t wait)
//   destination: DELETE FROM t; COPY t FROM STDIN  <- source: COPY t TO STDOUT
//   destination: COMMIT; source: COMMIT
//
// Both locks are bounded by a lock timeout and retried: a writer prepared
// on one shard and waiting on the other cannot hold the copy up for long
// (nor the copy the writer). Writes to t through shardkit wait for the
// copy, which holds the source's lock for as long as the COPY takes.
//
// Thread-safety: thread-compatible (opens its own sessions).

#ifndef SHARDKIT_REBALANCER_REFERENCE_COPY_H_
#define SHARDKIT_REBALANCER_REFERENCE_COPY_H_

#include <cstdint>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "rebalancer/move_session.h"

namespace shardkit::internal {

// Rows of `table` on `shard` (count(*)); kNotFound naming the shard when
// the table is missing there.
[[nodiscard]] absl::StatusOr<int64_t> CountRows(const ShardEndpoint& shard,
                                                std::string_view table,
                                                absl::Duration timeout);

// A table's rows on one shard, summarized: their count and the sum of the
// XXH3 of each row's COPY text line (in the canonical output settings of
// MoveSession), which does not depend on the order rows come in. Two
// copies with equal digests hold the same rows (with overwhelming
// probability), column for column in the table's order.
struct TableDigest {
  int64_t rows = 0;
  uint64_t checksum = 0;
  bool operator==(const TableDigest&) const = default;
};

// The digest of `table` on `shard`, read with one COPY (reference tables
// are small: every row is read); kNotFound as CountRows.
[[nodiscard]] absl::StatusOr<TableDigest> DigestRows(const ShardEndpoint& shard,
                                                     std::string_view table,
                                                     absl::Duration timeout);

// Replaces `destination`'s rows of reference table `table` with
// `source`'s (see above). Returns the rows copied.
[[nodiscard]] absl::StatusOr<int64_t> SyncReferenceTable(
    const ShardEndpoint& source, const ShardEndpoint& destination,
    std::string_view table, absl::Duration timeout);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_REFERENCE_COPY_H_
