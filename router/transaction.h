// Internal: transactions across shards, two-phase commit, and the recovery
// of prepared transactions left in doubt. The protocol and its guarantees
// are described in include/shardkit/transaction.h; this is how it is kept.
//
// The decision log is one table, in the [catalog] database or else in the
// map's first shard, created on first need:
//
//   shardkit.commit_decisions (txid text PRIMARY KEY,
//                              outcome text ('commit' | 'abort'),
//                              decided_at timestamptz)
//
// A coordinator records 'commit' for its transaction once every writer has
// prepared; recovery records 'abort' for a prepared transaction without a
// decision that is older than the grace, and still prepared after the
// decisions were read (its scan came before: a transaction committed and
// forgotten in between has none). Both insert with ON CONFLICT DO
// NOTHING, so the first to record wins and the other learns the outcome:
// a coordinator that finds 'abort' rolls back, recovery that finds
// 'commit' commits. Both may COMMIT (or ROLLBACK) PREPARED the same one at
// once: the one that finds it gone (42704) counts it done; the one that
// finds it busy (55000: the other is finishing it, and may yet fail) asks
// again a few times over about a second, and failing that counts it not
// done.
//
// A 'commit' decision is finished with once every writer has committed.
// The coordinator that saw them all commit does not delete it on the
// commit's path (a round trip and a commit of its own, per transaction):
// it queues the txid (ForgetLater), and the queue is deleted in the same
// statement as the next decision this process records, or at the start of
// the next recovery pass (ForgetFinished). What a process that died left
// queued is purged by recovery: a 'commit' decision recorded before the
// pass began (by the log's clock, less a minute of margin) whose
// transaction the pass found prepared on no shard, or resolved, is
// finished: its writers all prepared before it was recorded, so the pass's
// scan would have found any of them still prepared. 'abort' decisions stay
// a week (long past any coordinator that could still try to commit: a
// deleted 'abort' would let a late 'commit' in after the rollback).
//
// Each participant's prepared transaction is named
// "shardkit_<txid>_<shard id>": unique on a server whose databases are
// several shards (prepared transaction names are per server).

#ifndef SHARDKIT_ROUTER_TRANSACTION_H_
#define SHARDKIT_ROUTER_TRANSACTION_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/executor.h"
#include "router/router.h"
#include "shardkit/cluster.h"
#include "shardkit/transaction.h"

namespace shardkit::internal {

// The table of commit decisions (see the file comment).
//
// Thread-safety: thread-safe.
class DecisionLog {
 public:
  // `where` names the database in messages ("catalog", "shard s1").
  DecisionLog(std::string where, std::string dsn);

  // Records `outcome` ("commit" or "abort") for `txid` unless an outcome is
  // recorded already; returns the outcome recorded, ours or the earlier
  // one. Creates the table on first use.
  [[nodiscard]] absl::StatusOr<std::string> Decide(const std::string& txid,
                                                   std::string_view outcome,
                                                   const ExecOptions& options);

  // The recorded outcomes of `txids` (those without one are absent).
  [[nodiscard]] absl::StatusOr<absl::flat_hash_map<std::string, std::string>>
  Lookup(const std::vector<std::string>& txids, const ExecOptions& options);

  // Queues the 'commit' decision of `txid`, whose writers have all
  // committed, for deletion: with the next Decide of this log (in its
  // statement) or at the next ForgetFinished. Never blocks on the database.
  // Past kMaxQueued waiting, further ones are left to Purge.
  void ForgetLater(const std::string& txid) ABSL_LOCKS_EXCLUDED(mu_);

  // Deletes the decisions ForgetLater queued (on failure they stay queued),
  // and returns the log database's clock (now(), as text) as it did: the
  // bound a recovery pass that scans the shards after it gives Purge.
  [[nodiscard]] absl::StatusOr<std::string> ForgetFinished(
      const ExecOptions& options) ABSL_LOCKS_EXCLUDED(mu_);

  // Deletes 'commit' decisions recorded a minute or more before `scanned`
  // (a time ForgetFinished returned before the shards were scanned; empty:
  // an hour before now) whose transaction is not in `still_prepared`, and
  // 'abort' decisions older than a week. REQUIRES: every shard was scanned
  // after `scanned`, and every transaction found prepared is either in
  // `still_prepared` or resolved. Fails (42P01) where the table was never
  // created.
  absl::Status Purge(const std::vector<std::string>& still_prepared,
                     const std::string& scanned, const ExecOptions& options);

  // Finished decisions queued for deletion at most.
  static constexpr size_t kMaxQueued = 10000;

  const std::string& where() const { return where_; }

 private:
  absl::Status EnsureTable(const ExecOptions& options) ABSL_LOCKS_EXCLUDED(mu_);
  ShardTask Task(std::string sql, Params params) const;

  const std::string where_;
  const std::string dsn_;
  // Takes up to `limit` queued txids off the queue.
  std::vector<std::string> TakeFinished(size_t limit) ABSL_LOCKS_EXCLUDED(mu_);
  // Puts txids TakeFinished took back (their deletion failed).
  void Requeue(std::vector<std::string> txids) ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  bool table_ready_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::string> finished_ ABSL_GUARDED_BY(mu_);
};

// How many times a statement refused for a stale map epoch is routed
// again, each time by a newer map: one retry per move phase it races with
// (Cluster::Execute, and DistributedTransaction::Execute where it may).
inline constexpr int kStaleMapAttempts = 5;

// The engine of shardkit::Transaction (see there for the contract).
//
// Thread-safety: one thread at a time.
class DistributedTransaction {
 public:
  // All borrowed: REQUIRES they outlive the transaction.
  DistributedTransaction(Router& router, std::shared_ptr<const ShardMap> map,
                         ExecOptions options, DecisionLog& log);
  ~DistributedTransaction();

  absl::StatusOr<Result> Execute(std::string_view sql, const Params& params);
  // The same for a statement already prepared against this transaction's
  // map (Router::Prepare): its tasks are run on the transaction's sessions.
  absl::StatusOr<Result> Execute(Router::Prepared prepared,
                                 const Params& params);
  absl::Status Commit();
  absl::Status Rollback();
  std::vector<ShardId> participants() const;

  // Given the epoch of a map a shard refused a statement for (SQLSTATE
  // SK001: a move fenced the table) and that refusal, returns a newer map,
  // or the refusal (with SK001) saying that none came. With `wait`, waits
  // for one (Cluster::Begin's: for its live map to be newer, up to the
  // connect timeout); without, answers at once from the map known already
  // (no catalog read, no wait).
  using NewerMap = std::function<absl::StatusOr<std::shared_ptr<const ShardMap>>(
      uint64_t stale_epoch, const absl::Status& refused, bool wait)>;
  // Called when a shard refuses a statement for this transaction's stale
  // map epoch. The transaction holds nothing anywhere while it waits for
  // the newer map: the cutover that raised the fence may be waiting for
  // its locks (its fence on the move's destination waits for the writers
  // there) before it publishes that map. So, where the refused statement
  // is the first of the transaction on every shard it ran on, their parts
  // are rolled back; if the transaction has no part left, it waits for
  // the newer map and the statement is routed again by it, which later
  // statements use too (at most kStaleMapAttempts times); if it has parts
  // on other shards (earlier work), the statement is routed again only by
  // a newer map known already, without waiting. Otherwise the transaction
  // is rolled back on every shard, then waits for the newer map, so that
  // its retry routes by it, and fails with the retryable SK001 error. May
  // be empty: then the transaction fails at once (Cluster::Execute
  // retries on its own).
  void set_newer_map(NewerMap newer_map) { newer_map_ = std::move(newer_map); }

  // Called once Commit has succeeded, with the participants that wrote
  // (shard, name and the primary's dsn; no session: the connections are
  // back in the pool by then), so that read-your-writes can record their
  // WAL positions (Cluster::Begin with TransactionOptions). Not called
  // when nothing was written or the commit failed. May be empty.
  using OnCommit = std::function<void(const std::vector<ShardTask>& written)>;
  void set_on_commit(OnCommit on_commit) { on_commit_ = std::move(on_commit); }

  // Declares that the transaction runs one statement, then commits (a
  // single statement outside a transaction: Cluster::Execute). A dual-write
  // of such a statement to one move's destination commits without
  // two-phase commit: the destination, then the source (see
  // CommitMirrored). Call before Execute.
  void set_single_statement() { single_statement_ = true; }

 private:
  struct Participant {
    ShardTask base;  // shard, name, dsn and session; no SQL
    std::unique_ptr<ShardSession> session;
    bool wrote = false;  // a statement that writes ran there
    // Statements deferred to the next round trip on this participant, in
    // the same pipeline as its next statement (a dual-write's work, see
    // ApplyDualWrite; starting with BEGIN when the shard has not joined
    // yet). Their failure is that next statement's.
    std::vector<Statement> pending;
  };
  enum class State { kOpen, kAborted, kEnded };

  // FailedPrecondition once ended, 25P02 once aborted; else OK.
  absl::Status CheckOpen() const;
  // Aborts the transaction with `status`, and returns it. A stale map
  // (SK001) first rolls back the transaction's part on every shard
  // (ReleaseParts), then gets the message of a retryable error, after
  // waiting for the newer map unless `await_newer_map` is false (waited
  // already).
  absl::Status Fail(absl::Status status, bool await_newer_map = true);
  // Rolls back the transaction's part on every shard that holds one (what
  // is pending is dropped: never sent), and gives back every session (to
  // the pool, or closed: one that could not be told rolls back as its
  // connection closes). The participants stay listed. Returns the
  // ROLLBACKs' outcomes.
  std::vector<TaskOutcome> ReleaseParts();
  // The task of `sql` on participant `p`'s session.
  static ShardTask On(const Participant& p, std::string sql);
  // The task of `p`'s pending statements then `statement` (none when its
  // sql is empty), in one round trip; `p.pending` is emptied.
  static ShardTask WithPending(Participant& p, Statement statement);
  // Whether `p` holds its part of the transaction: its session is inside
  // the transaction block, or it has not joined yet but will with its
  // pending BEGIN.
  static bool Holds(const Participant& p);
  // Runs one statement on each of `parts` (in parallel), after their
  // pending ones; outcomes in order.
  std::vector<TaskOutcome> RunOn(const std::vector<Participant*>& parts,
                                 const std::vector<std::string>& sql);
  absl::Status CommitTwoPhase(const std::vector<Participant*>& writers,
                              const std::vector<Participant*>& readers);
  // Commits a single statement's dual-write (its only writers: the move's
  // source and destination) in two round trips: COMMIT on the destination,
  // which also records the source transaction's id beside the keys it
  // copied (shardkit.move_<id>_pending), then COMMIT on the source. The
  // source's row locks, held until then, order the destination's copies
  // as the source ordered the writes. A source that rolls back after the
  // destination committed leaves a copy there that the mover repairs from
  // the source (rebalancer/shard_objects.h, "Dual-write of a single
  // statement").
  absl::Status CommitMirrored(Participant& source, Participant& destination);
  // Ends the transaction: every session goes back to the pool (or is
  // closed, if still inside a transaction).
  void End();
  // End, then on_commit_ with `writers` (their shards committed).
  void EndCommitted(const std::vector<Participant*>& writers);
  // The participant of `shard`; a new one joins with its first round trip
  // (BEGIN pending).
  Participant* Join(ShardId shard);
  // Execute's work by the map the statement was prepared against. When
  // `replayable` is given and the statement is refused for a stale map
  // (SK001) on shards that all joined with it, rolls back their parts
  // (Withdraw) and sets *replayable, without aborting the transaction: the
  // caller may route it again by a newer map.
  absl::StatusOr<Result> Run(Router::Prepared prepared, const Params& params,
                             bool* replayable);
  // Rolls back the parts of `parts` (their sessions then go back to the
  // pool, or are closed) and removes them from the participants. REQUIRES:
  // no statement of theirs but the last ran (they joined with it).
  void Withdraw(const std::vector<Participant*>& parts);
  // Applies the row images a dual-write's sources returned on the moves'
  // destinations, and lists the keys on both sides (Prepared::DualWrite):
  // as pending statements of the source and destination, which go out with
  // their next round trip (at the latest, PREPARE TRANSACTION's), so that a
  // dual-write costs no round trip of its own.
  absl::Status ApplyDualWrite(const Router::Prepared& prepared);

  Router& router_;
  // The map statements are routed by: the one the transaction began with,
  // until a statement replayed after a refusal for a stale map (Execute)
  // moves it to a newer one.
  std::shared_ptr<const ShardMap> map_;
  const ExecOptions options_;
  DecisionLog& log_;
  std::map<ShardId, Participant> participants_;
  State state_ = State::kOpen;
  absl::Status abort_reason_;
  NewerMap newer_map_;
  OnCommit on_commit_;
  bool single_statement_ = false;
  // Each move ApplyDualWrite mirrored to: its source, and its destination
  // if the copy went with the source transaction's id (single statement).
  struct Mirrored {
    ShardId source = 0;
    std::optional<ShardId> destination;
    bool operator==(const Mirrored&) const = default;
  };
  std::vector<Mirrored> mirrored_;
};

// Runs sql[i] on participant which[i], in parallel where it can; returns
// one status per statement, in order.
using RunStatements = std::function<std::vector<absl::Status>(
    const std::vector<size_t>& which, const std::vector<std::string>& sql)>;

// Commits by two-phase commit participants 0..readers-1, which only read
// (a plain COMMIT), and readers.. on the shards `writer_shards`, which
// wrote (PREPARE TRANSACTION, the decision in `log`, COMMIT PREPARED), each
// inside an open transaction on a connection `run` drives. The outcomes
// are those of Transaction::Commit. The failpoints are on its path.
[[nodiscard]] absl::Status TwoPhaseCommit(size_t readers,
                                          const std::vector<ShardId>& writer_shards,
                                          const RunStatements& run,
                                          DecisionLog& log,
                                          const ExecOptions& options);

// The decision log of `cluster`'s two-phase commits.
DecisionLog& DecisionLogOf(const Cluster& cluster);

// One pass of recovery over every shard of `map` (see the file comment):
// commits prepared transactions whose decision is 'commit', rolls back
// those whose decision is 'abort', and records 'abort' for those without
// a decision older than `grace` (and still prepared once the decisions
// were read) first. Fails only when the decision log cannot be reached; a
// shard that cannot be, or whose prepared transaction another session was
// still finishing, is listed in the report (unreachable), and then no
// decision is purged.
[[nodiscard]] absl::StatusOr<RecoveryReport> RecoverPrepared(
    const ShardMap& map, DecisionLog& log, const ExecOptions& options,
    absl::Duration grace);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_TRANSACTION_H_
