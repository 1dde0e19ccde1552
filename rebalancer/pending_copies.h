// Internal: the destination's copies of single-statement dual-writes whose
// source transaction had not committed when the destination did
// (rebalancer/shard_objects.h, "Dual-write of a single statement").
//
// A single statement dual-written to a move's destination commits there
// first, then on the source; the destination records the source
// transaction's id beside each key it copied, in
// shardkit.move_<id>_pending (xid xid8, key). Once the source has
// committed, the record is finished with. Should the source have rolled
// back (its COMMIT failed, or the writing process died between the two
// commits), the destination holds rows the source never committed: the
// source's rows of those keys are put back over them, before the
// destination may own the slice.
//
//   ASSIGN_OR_RETURN(PendingCopies pending,
//                    FindPendingCopies(*source, *destination, move_id,
//                                      key_type));
//   // ... with no write to the slice able to commit on the source:
//   RETURN_IF_ERROR(RepairPendingCopies(*source, *destination, tables,
//                                       pending));
//
// Thread-safety: functions; they use the sessions given.

#ifndef SHARDKIT_REBALANCER_PENDING_COPIES_H_
#define SHARDKIT_REBALANCER_PENDING_COPIES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "rebalancer/move_session.h"
#include "rebalancer/move_table.h"
#include "shardkit/key.h"

namespace shardkit::internal {

// What the destination's pending list holds, by the state of each source
// transaction.
struct PendingCopies {
  uint64_t move_id = 0;
  KeyType key_type = KeyType::kInt8;
  // Source transactions that committed (their records deleted by
  // FindPendingCopies, if it was asked to).
  int64_t committed = 0;
  // Source transactions still in progress (their copies stay listed).
  int64_t in_progress = 0;
  // The ids (xid8, as text) of the source transactions that rolled back,
  // and the keys (text) their copies wrote, without duplicates.
  std::vector<std::string> rolled_back;
  std::vector<std::string> keys;
};

// Reads the destination's pending list of move `move_id`, asks the source
// how each transaction ended, and (if `forget_committed`) deletes the
// records of those that committed. Changes no row of the slice: safe
// while writes run.
[[nodiscard]] absl::StatusOr<PendingCopies> FindPendingCopies(
    MoveSession& source, MoveSession& destination, uint64_t move_id,
    KeyType key_type, bool forget_committed = true);

// Puts the source's rows of `pending.keys` back on the destination, in
// every table of `tables` (the destination's rows of those keys are
// deleted, the source's copied), and deletes the records of
// `pending.rolled_back`, in one transaction of the destination. Does
// nothing when no key is listed.
// REQUIRES: no write to those tables can commit on the source or the
// destination until it returns (the caller holds them locked on the
// source, or both are fenced), and `destination` runs with a map epoch
// its fence lets write (kEpochSetting).
[[nodiscard]] absl::Status RepairPendingCopies(
    MoveSession& source, MoveSession& destination,
    const std::vector<TableShape>& tables, const PendingCopies& pending);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_PENDING_COPIES_H_
