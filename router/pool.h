// Internal: per-shard pools of libpq connections, one ConnectionPools per
// Cluster, so that repeated statements reuse connections instead of paying
// a connection (TCP, authentication, backend start) each.
//
// The executor uses them through ExecOptions::pools (router/executor.h):
//
//   ConnectionPools pools(config.pool);        // lives as long as the Cluster
//   ExecOptions options;
//   options.pools = &pools;
//   std::vector<TaskOutcome> done = RunOnShards(tasks, options);
//
// What RunOnShards does with them, per task (see executor.h for the
// timeouts), by way of a PoolLease:
//
//   PoolLease lease = pools.Acquire(task.shard, task.shard_name, task.dsn);
//   if (!lease.granted()) {
//     lease.OnGranted([waker] { waker->Wake(); });  // wait, without blocking
//     ... until lease.granted(), or the connect deadline: then
//     lease.Release(nullptr, false) and fail with kResourceExhausted ...
//   }
//   std::unique_ptr<ShardConnection> conn = lease.TakeIdleConnection();
//   if (conn == nullptr) ... open one: ShardConnection(...).StartConnect() ...
//   ... run the statement on conn ...
//   lease.Release(std::move(conn), /*statement_completed=*/true);
//
// The pool of a shard:
//  - Is keyed by (ShardId, shard name, dsn): a shard whose connection string
//    changes gets a new pool, and the old one's connections are closed as
//    they come back or expire. Pools are created on first use and kept for
//    the life of the ConnectionPools (one small entry per key).
//  - Has PoolSettings::max_connections_per_shard slots. A slot is held by a
//    granted lease (whether its connection is open, still connecting, or
//    not yet made) or by an idle connection in the pool; "open" counts
//    both. So this process never has more connections to a shard than
//    that, counting connections being established.
//  - Grants a lease at once when it has an idle connection or a free slot
//    and nobody is queued; otherwise queues it. Queued leases are granted
//    in FIFO order as slots come back: a connection given back for reuse is
//    handed straight to the first in the queue; a slot freed by a closed
//    connection lets the first in the queue open a new one.
//  - Reuses the most recently returned idle connection first, so that
//    connections beyond what the load needs sit idle until they expire.
//  - Closes an idle connection once it has been idle longer than
//    PoolSettings::idle_timeout: when that pool is next used (Acquire,
//    TakeIdleConnection, Release), or at CloseExpiredIdle(). There is no
//    background thread. With idle_timeout <= 0 no connection is kept
//    idle (one may still pass straight to a queued lease).
//  - Checks a connection before handing it out for reuse
//    (ShardConnection::CheckAliveWhileIdle, one non-blocking poll): one
//    whose server ended the session (restart, shutdown,
//    pg_terminate_backend) is closed and the next one tried, or the caller
//    told to open a new one. Nothing of a statement has been sent then, so
//    the caller sees no error.
//  - Takes back, on Release, only a connection whose statement completed
//    (its outcome, a result or an ordinary server error, was read in full:
//    the caller says so) and that ShardConnection::IsReusable(): idle,
//    healthy, not inside a transaction block (open or failed), and not
//    ended by the server. Anything else — the connection broke, the
//    statement timed out or was cancelled (a late cancel request could hit
//    the next statement), a COPY was refused mid-protocol, a transaction
//    was left open or failed — is closed, and its slot freed.
//
// Session state is not reset between statements (that would cost a round
// trip each): a statement that changes its session (SET without LOCAL,
// PREPARE, LISTEN, CREATE TEMP TABLE, pg_advisory_lock) leaves that to
// whichever statement next gets the connection. Callers must not run such
// statements through a pool: run them with ExecOptions::pools = nullptr (a
// fresh connection, closed afterwards).
//
// Thread-safety: ConnectionPools is thread-safe. A PoolLease belongs to one
// thread at a time (it may move between threads); its methods must not run
// concurrently with each other, but may run concurrently with any other
// lease's and the ConnectionPools'. A connection is used by one thread at a
// time: whoever holds it (the lease holder, or the pool while it is idle).

#ifndef SHARDKIT_ROUTER_POOL_H_
#define SHARDKIT_ROUTER_POOL_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/shard_connection.h"
#include "shardkit/config.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

class ConnectionPools;

// The state of one shard's pool at one moment (ConnectionPools::Stats).
struct ShardPoolStats {
  ShardId shard = 0;
  std::string shard_name;
  // Connected, in the pool, ready for reuse.
  int idle = 0;
  // Slots taken: idle connections plus granted leases, whose connection may
  // be running a statement, connecting, or not made yet.
  // Never above PoolSettings::max_connections_per_shard.
  int open = 0;
  // Leases queued for a slot.
  int waiting = 0;
};

// A claim on one slot of one shard's pool: granted (the slot is held), or
// queued for one. Returned by ConnectionPools::Acquire; move-only. A lease
// that still holds or asks for a slot when destroyed releases it as
// Release(nullptr, false) does.
//
// REQUIRES: a lease does not outlive the ConnectionPools that made it.
class PoolLease {
 public:
  // Holds and asks for nothing (empty() is true).
  PoolLease();
  PoolLease(PoolLease&& other) noexcept;
  PoolLease& operator=(PoolLease&& other) noexcept;
  PoolLease(const PoolLease&) = delete;
  PoolLease& operator=(const PoolLease&) = delete;
  ~PoolLease();

  // True for a default-constructed lease, and after Release.
  bool empty() const { return request_ == nullptr; }

  // Whether the slot is held. A queued lease becomes granted when another
  // lease of the same pool is released; never the other way.
  // REQUIRES: !empty().
  bool granted() const;

  // Runs `callback` once when a queued lease is granted: on the thread that
  // granted it (the one releasing another lease), after the pool's lock is
  // let go; at once, here, if it is granted already. It must be quick, must
  // not call into the pools, and must own what it touches (e.g. hold a
  // std::shared_ptr): it may run while the lease is being released or
  // destroyed. Replaces an earlier callback. REQUIRES: !empty().
  void OnGranted(std::function<void()> callback);

  // A connection to reuse, connected and idle, that passed
  // CheckAliveWhileIdle just now; or nullptr when the pool has none, and
  // the caller is to open one with this lease's slot (a new
  // ShardConnection(shard_name, dsn), then StartConnect). Never blocks.
  // Dead and expired idle connections met on the way are closed. The
  // returned connection belongs to the caller until it gives it back with
  // Release. Call at most once per grant. REQUIRES: granted().
  [[nodiscard]] std::unique_ptr<ShardConnection> TakeIdleConnection();

  // Ends the lease: gives back its slot, and `conn` (may be null) with it.
  // `conn` goes back into the pool (or straight to the first queued lease)
  // if `statement_completed` — every statement the caller sent on it
  // completed and its outcome was read (an ordinary server error counts) —
  // and conn->IsReusable(); otherwise it is closed and the slot freed for
  // a new connection. On a queued lease, leaves the queue (and closes
  // `conn`). Afterwards empty() is true. Never blocks on the network:
  // closing sends at most libpq's Terminate message on a non-blocking
  // socket. REQUIRES: !empty(); `conn`, if not null, was made for this
  // lease's shard and dsn.
  void Release(std::unique_ptr<ShardConnection> conn, bool statement_completed);

 private:
  friend class ConnectionPools;
  struct Request;
  PoolLease(ConnectionPools* pools, std::unique_ptr<Request> request);

  ConnectionPools* pools_ = nullptr;  // null iff empty()
  std::unique_ptr<Request> request_;
};

class ConnectionPools {
 public:
  // `settings.max_connections_per_shard` below 1 is taken as 1 (LoadConfig
  // accepts 1..10000 only).
  explicit ConnectionPools(PoolSettings settings);
  // Closes every idle connection. REQUIRES: no lease of this object remains.
  ~ConnectionPools();
  ConnectionPools(const ConnectionPools&) = delete;
  ConnectionPools& operator=(const ConnectionPools&) = delete;

  // Asks for a slot in the pool of shard `shard`, named `shard_name` (in
  // messages), at connection string `dsn`. Never blocks and never fails:
  // the lease is granted at once when the pool has an idle connection or a
  // free slot and no lease is queued before it; otherwise it is queued
  // (see OnGranted to learn when it is granted, and Release to give up).
  // Also closes that pool's expired idle connections.
  [[nodiscard]] PoolLease Acquire(ShardId shard, std::string_view shard_name,
                                  std::string_view dsn);

  // Closes the idle connections of every pool that have been idle longer
  // than idle_timeout; returns how many. For a caller that wants them
  // closed without waiting for the next use of their pool (e.g. a periodic
  // timer), and for tests.
  int CloseExpiredIdle();

  // One entry per pool made so far, ordered by shard id, then name; a
  // shard's entries differ by dsn, which is not shown (it may hold a
  // password).
  std::vector<ShardPoolStats> Stats() const;

  const PoolSettings& settings() const { return settings_; }

 private:
  friend class PoolLease;
  struct Pool;
  using Key = std::tuple<ShardId, std::string, std::string>;
  // What to do once mu_ is let go (connections to close, callbacks to run).
  struct Deferred;

  // Moves `pool`'s idle connections past idle_timeout at `now` into
  // `deferred`; returns how many.
  int ExpireIdleLocked(Pool& pool, absl::Time now, Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Grants queued leases of `pool` while it has an idle connection or a
  // free slot for them.
  void GrantQueuedLocked(Pool& pool, Deferred& deferred)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The PoolLease operations, under mu_.
  bool IsGranted(const PoolLease::Request& request) const
      ABSL_LOCKS_EXCLUDED(mu_);
  void SetOnGranted(PoolLease::Request& request, std::function<void()> callback)
      ABSL_LOCKS_EXCLUDED(mu_);
  std::unique_ptr<ShardConnection> TakeIdle(PoolLease::Request& request)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Release(std::unique_ptr<PoolLease::Request> request,
               std::unique_ptr<ShardConnection> conn, bool statement_completed)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  const PoolSettings settings_;

  mutable absl::Mutex mu_;
  // Never erased, so a Pool* stays valid for the life of this object.
  std::map<Key, std::unique_ptr<Pool>, std::less<>> pools_ ABSL_GUARDED_BY(mu_);
  // Leases not yet released, for the destructor's precondition.
  int live_leases_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_POOL_H_
