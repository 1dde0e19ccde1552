// Internal: runs statements on several shards concurrently.
//
// One thread drives every connection with non-blocking libpq and poll(), so
// a slow shard never serializes the others.
//
// Connections:
//  - Without pools (ExecOptions::pools == nullptr), each task gets a fresh
//    connection, closed as soon as its task is done; none outlives
//    RunOnShards.
//  - With pools (router/pool.h), each task takes a lease on its shard's
//    pool: it reuses an idle connection there, or opens a new one if the
//    pool is below max_connections_per_shard, or else waits in the loop
//    (never blocking it: a queued task is woken through an eventfd when a
//    connection or slot is handed to it) until one is handed over. When
//    the task is done, its connection goes back to the pool if the pool
//    takes it (see PoolLease::Release: the statement completed, the
//    session is idle and outside any transaction); otherwise it is closed.
//    A reused connection found broken before the statement was sent (the
//    server ended the session: restarted, shut down, terminated it) is
//    replaced by a new connection without any error; once any of the
//    statement may have been sent, a broken connection is reported as
//    such and the statement is never sent again. Tasks of one call that
//    share a shard share its pool too: with more of them than
//    max_connections_per_shard, the later ones wait for the earlier ones'
//    connections (and may run out of connect_timeout doing so).
//    Pooled connections keep session state between statements: see
//    router/pool.h for what must not run through a pool.
//
// Timeouts, per task:
//  - connect: a shard not connected within ExecOptions::connect_timeout
//    fails with kUnavailable, naming the shard and the timeout. With
//    pools, the connect timeout also bounds the wait for a connection of
//    the pool: a task still waiting for one when it runs out fails with
//    kResourceExhausted, naming the shard and the limit, and saying to
//    raise [pool] max_connections_per_shard. Waiting and connecting share
//    the one connect timeout, counted from the start of RunOnShards.
//  - statement: a statement still running ExecOptions::statement_timeout
//    after it was sent is cancelled and fails with kDeadlineExceeded, naming
//    the shard and the timeout. The executor then waits up to
//    ExecOptions::cancel_grace, counted from when it issued the cancel
//    request, for the server to confirm, so that on return the statement no
//    longer runs there; if the server does not confirm in time, the message
//    says the statement may still be running there. If the cancel request
//    cannot be sent (e.g. the shard's host has gone away and the connection
//    to it is refused), the task fails at once, saying so. If the statement
//    completes before the cancel reaches the server, its outcome (success
//    or error) is reported as it is: it did happen on that shard.
//
// Cancelling the others (ExecOptions::cancel_others_on_failure): once any
// task has ended with a non-OK status (a server error, an unreachable
// shard, a statement timeout...), every other task is ended as early as
// the executor can. A task still waiting for a slot of its pool or
// connecting ends at once, its statement never sent, with kCancelled:
// "shard s1: cancelled because shard s2 failed, before the statement was
// sent". A task whose statement is running is cancelled as for a statement
// timeout (same request, same cancel_grace) and ends with kCancelled:
// "shard s1: cancelled because shard s2 failed". If the shard does not
// confirm that cancel within cancel_grace, or the request cannot be sent,
// the status is kCancelled too, names the failed shard and says the
// statement may still be running there. As with a timeout, a statement
// that completes (or fails otherwise) before the cancel reaches the server
// keeps its real outcome. The failed task's own status is unchanged, and a
// task already being cancelled for its statement timeout ends as that
// timeout says. Only the first failure (in task order, when several are
// seen at once) is acted on and named.
//
// A cancel request is sent from a thread of its own, because libpq 15's
// PQcancel blocks for a TCP connection to the shard, and for as long as the
// OS keeps trying when the host has gone away; the loop goes on serving the
// other shards meanwhile. So every task ends by connect_timeout +
// statement_timeout + cancel_grace after RunOnShards starts, and
// RunOnShards returns then even if a cancel request is still on its way:
// that thread owns all it uses and ends on its own when PQcancel returns
// (see PendingCancel in router/shard_connection.h).
// One libpq call blocks the loop: the host-name lookup libpq does when it
// starts connecting (use IP addresses, or hostaddr=, in connection strings
// where the resolver may be slow).
//
// Thread-safety: RunOnShards is thread-safe; tasks share nothing but the
// pools, which are thread-safe.

#ifndef SHARDKIT_ROUTER_EXECUTOR_H_
#define SHARDKIT_ROUTER_EXECUTOR_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/pool.h"
#include "router/shard_connection.h"
#include "shardkit/result.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// One connection to one shard kept across several RunOnShards calls, for
// statements that must share a session: a cursor and its FETCHes, a
// transaction. A task that names a session (ShardTask::session) runs on
// its connection; the first such task takes one the usual way (from the
// pool, or a fresh one) and leaves it in the session when it is done, as
// long as its outcome was read in full (a server error included: the
// session is then in a failed transaction, which ROLLBACK ends).
//
// A session whose connection is lost (it broke, or its statement timed
// out or was cancelled, which closes it) never gets another: tasks that
// name it later fail at once with lost(), because whatever the session
// held on the server (an open transaction, a cursor) is gone, and running
// on a new connection would silently drop it.
//
// Release() ends the session: the connection goes back to its pool if
// the pool takes it (idle, outside any transaction block: end the
// transaction first) or is closed. The destructor releases too.
//
// Thread-safety: a session is used by one RunOnShards call at a time, and
// by one task of that call. REQUIRES: it does not outlive the pools it
// took its connection from.
class ShardSession {
 public:
  ShardSession() = default;
  ~ShardSession() { Release(); }
  ShardSession(const ShardSession&) = delete;
  ShardSession& operator=(const ShardSession&) = delete;

  // Whether a task has run on it (it holds, or held, a connection).
  bool started() const { return started_; }
  // OK, or why its connection is gone (see above).
  const absl::Status& lost() const { return lost_; }
  // Whether it holds a connection that is inside a transaction block
  // (open or failed).
  bool InTransaction() const;
  void Release();

 private:
  friend struct SessionAccess;
  bool started_ = false;
  absl::Status lost_;
  PoolLease lease_;  // with pools
  std::unique_ptr<ShardConnection> conn_;
};

struct ShardTask {
  ShardId shard = 0;
  std::string shard_name;
  std::string dsn;
  std::string sql;
  // $1..$n, as text; nullopt is NULL. Always sent as parameters.
  std::vector<std::optional<std::string>> params;
  // `sql` runs as a named prepared statement (Statement::prepare).
  bool prepare = false;
  // Statements run after `sql` in the same round trip (ShardConnection::
  // SendPipeline: `sql` is then a single statement too), each only if the
  // ones before it succeeded. The task's outcome is the first failure, or
  // the last statement's result. Empty: `sql` alone.
  std::vector<Statement> then;
  // The epoch of the map the statement was routed by, carried by the
  // connection as the session setting shardkit.epoch (the fence of a shard
  // under a move refuses writes from an older one: rebalancer/
  // shard_objects.h). The executor sends `SET shardkit.epoch` first only
  // when the connection does not carry this epoch yet, so a pooled
  // connection pays it once per epoch. 0: leave the setting as it is.
  uint64_t epoch = 0;
  // Run on this session's connection (see ShardSession); nullptr: a
  // connection for this task alone. Borrowed: REQUIRES it outlives the
  // RunOnShards call, and no two tasks of one call name the same session.
  ShardSession* session = nullptr;
};

struct ExecOptions {
  // From the start of the connection attempt until it is ready.
  absl::Duration connect_timeout = absl::Seconds(5);
  // From sending the statement until its last result arrives.
  absl::Duration statement_timeout = absl::Seconds(30);
  // After requesting a statement's cancel: how long to wait for the request
  // to get through and the server to confirm, before closing the connection
  // regardless.
  absl::Duration cancel_grace = absl::Seconds(2);
  // The per-shard connection pools to take connections from and give them
  // back to; nullptr: a fresh connection per task, closed afterwards.
  // Borrowed: REQUIRES it outlives the RunOnShards call.
  ConnectionPools* pools = nullptr;
  // When one task fails, end the others early: tasks that have not sent
  // their statement are finished at once and running statements cancelled,
  // each with kCancelled naming the failed shard (see "Cancelling the
  // others" above). False: a failure never affects the other tasks.
  bool cancel_others_on_failure = false;
};

struct TaskOutcome {
  absl::Status status;  // names the shard; see ShardOutcome in cluster.h
  // Valid only when status is OK. result.shards is {task.shard}. For a
  // string of several statements, the last statement's result.
  Result result;
};

// Runs every task concurrently and waits for all; outcomes in task order.
// A failure of one task never stops the others, unless
// options.cancel_others_on_failure. Statement errors carry the
// SQLSTATE (see SqlStateOf in router/shard_connection.h).
std::vector<TaskOutcome> RunOnShards(const std::vector<ShardTask>& tasks,
                                     const ExecOptions& options);

// Runs one task and returns its result, or its failure.
absl::StatusOr<Result> RunTask(const ShardTask& task, const ExecOptions& options);

// Runs `tasks` as one statement's parts: with cancel_others_on_failure, so
// that one shard's failure stops the others' work, and fails with the
// first failure in task order that is not a cancellation for another's
// (kCancelled; the failure that caused it tells the caller what happened,
// e.g. its SQLSTATE), else with the first; else every outcome, in task
// order.
absl::StatusOr<std::vector<TaskOutcome>> RunAll(
    const std::vector<ShardTask>& tasks, ExecOptions options);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_EXECUTOR_H_
