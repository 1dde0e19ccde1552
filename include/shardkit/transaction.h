// A Transaction: statements across shards that commit everywhere or nowhere.
//
//   absl::StatusOr<std::unique_ptr<shardkit::Transaction>> txn = cluster->Begin();
//   if (!txn.ok()) return txn.status();
//   RETURN_IF_ERROR((*txn)->Execute(
//       "UPDATE accounts SET balance = balance - $2 WHERE id = $1", {"7", "10"}).status());
//   RETURN_IF_ERROR((*txn)->Execute(
//       "UPDATE accounts SET balance = balance + $2 WHERE id = $1", {"9", "10"}).status());
//   RETURN_IF_ERROR((*txn)->Commit());  // both rows, or neither
//
// Each statement is routed as Cluster::Execute routes it; a shard joins the
// transaction when a statement first touches it (BEGIN there), and keeps
// one connection of the pool until the transaction ends. Commit:
//   - one shard touched: a plain COMMIT there, nothing more;
//   - several touched, at most one of which wrote (asked of the shard:
//     pg_current_xact_id_if_assigned): a plain COMMIT on each;
//   - several wrote: two-phase commit. PREPARE TRANSACTION on every shard
//     that wrote (the others just COMMIT); once all are prepared, the
//     decision to commit is recorded durably in the decision log (the
//     [catalog] database, or without one the map's first shard); then
//     COMMIT PREPARED on each. A process that dies at any step leaves
//     nothing in doubt for long: recovery (Cluster::Recover, run when a
//     cluster opens and every [transactions] recovery_interval) commits
//     every prepared transaction whose decision is recorded, and rolls
//     back those without one once they are older than [transactions]
//     recovery_grace. The decision and recovery's "roll back" are one row
//     keyed by the transaction, so whichever is recorded first wins and a
//     late commit can never meet an earlier rollback.
//
// Isolation: each shard gives its own READ COMMITTED (or whatever the
// statements SET LOCAL). A transaction on one shard is exactly a
// PostgreSQL transaction. Across shards, commit is atomic — every shard's
// writes become durable, or none do — but there is no snapshot across
// shards: another transaction may see one shard's part of a committed
// transaction before another shard's, and a statement that reads several
// shards reads each at its own moment. Locks are per shard; a deadlock
// across shards is not detected by PostgreSQL and ends when a statement
// times out ([timeouts] statement).
//
// Errors follow PostgreSQL: after a statement fails, the transaction is
// aborted; later statements fail with SQLSTATE 25P02 and Commit rolls
// back and says so.
//
// Thread-safety: a Transaction is used by one thread at a time. REQUIRES:
// the Cluster outlives it.

#ifndef SHARDKIT_TRANSACTION_H_
#define SHARDKIT_TRANSACTION_H_

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shardkit/result.h"
#include "shardkit/shard_map.h"

namespace shardkit {

namespace internal {
class DistributedTransaction;
}  // namespace internal

class Transaction {
 public:
  // Made by Cluster::Begin; `impl` is internal.
  explicit Transaction(std::unique_ptr<internal::DistributedTransaction> impl);

  // Rolls back if still open, without waiting for the shards: the
  // connections are closed, and their servers roll back.
  ~Transaction();
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // Runs one statement inside the transaction, routed as Cluster::Execute
  // routes it, on the shard map the transaction began with. Fails as
  // Cluster::Execute does, and then aborts the transaction; with SQLSTATE
  // 25P02 once aborted, and with kFailedPrecondition after it ended.
  // A shard under a move refuses a write routed by an older map (its
  // cutover): where the statement is the first of the transaction on
  // every shard it ran on, their parts are rolled back and it runs again,
  // inside this call, by the newer map, which the transaction's later
  // statements use too; that waits for the newer map only when the
  // transaction holds nothing on other shards (else it must be known
  // already). Otherwise (that shard holds earlier work of the
  // transaction, which a refused statement aborts there, or the
  // transaction's work elsewhere would stay locked while it waits) it is
  // rolled back on every shard, waits for the newer map, and fails with
  // kAborted and SQLSTATE SK001: run the whole transaction again, and it
  // is routed by the newer map. Also
  // fails (kUnavailable) when the statement completed but its shard's
  // connection was closed meanwhile (it completed just as its statement
  // timeout cancelled it): that shard rolls back its part.
  [[nodiscard]] absl::StatusOr<Result> Execute(
      std::string_view sql,
      const std::vector<std::optional<std::string>>& params = {});

  // Commits (see the file comment). OK: committed on every shard it wrote
  // to (a shard that could not be told yet is told by recovery; the commit
  // is decided). Otherwise rolled back everywhere, with the reason:
  // kAborted after an earlier failed statement or when a shard's part was
  // lost (its connection closed, so the shard rolled it back), the
  // shard's error when a shard refused to prepare (e.g.
  // max_prepared_transactions = 0: the message says what to set), or
  // kUnavailable when a shard or the decision log was lost at a moment
  // that leaves the outcome to recovery (the message says so). Writes to a
  // slice under a move are applied on its destination in the same round
  // trip as the PREPARE (not by Execute): a refusal there is Commit's
  // error, with SQLSTATE SK001 when a newer shard map fenced it (retry the
  // transaction). The transaction has ended either way.
  [[nodiscard]] absl::Status Commit();

  // Rolls back on every shard touched. The transaction has ended
  // whatever the result; a failure only reports a shard that could not be
  // told (its server rolls back when the connection closes).
  absl::Status Rollback();

  // The shards the transaction touched so far, ascending.
  std::vector<ShardId> participants() const;

 private:
  std::unique_ptr<internal::DistributedTransaction> impl_;
};

// What Cluster::Recover did.
struct RecoveryReport {
  struct Resolved {
    std::string shard_name;
    std::string gid;  // the prepared transaction's identifier
    bool committed = false;  // else rolled back
  };
  std::vector<Resolved> resolved;
  // Prepared transactions left for later: without a decision and younger
  // than the recovery grace (their commit may still be in progress).
  int left_in_progress = 0;
  // Shards that could not be checked, each with why ("shard s2: ...").
  std::vector<std::string> unreachable;
};

}  // namespace shardkit

#endif  // SHARDKIT_TRANSACTION_H_
