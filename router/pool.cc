#include "router/pool.h"

#include <algorithm>
#include <cassert>
#include <deque>
#include <utility>

#include "absl/time/clock.h"

namespace shardkit::internal {

// Guarded by the owning ConnectionPools' mu_ (a Request is reached only
// through its lease, or through its pool's queue under that lock).
struct PoolLease::Request {
  enum class State { kQueued, kGranted };

  ConnectionPools::Pool* pool = nullptr;
  State state = State::kQueued;
  // An idle connection that came with the grant, not yet taken, and since
  // when it has been idle.
  std::unique_ptr<ShardConnection> handed;
  absl::Time handed_idle_since;
  std::function<void()> on_granted;
};

struct ConnectionPools::Pool {
  struct Idle {
    std::unique_ptr<ShardConnection> conn;
    absl::Time since;
  };

  Pool(ShardId shard, std::string_view shard_name)
      : shard(shard), shard_name(shard_name) {}

  int open() const { return leased + static_cast<int>(idle.size()); }

  const ShardId shard;
  const std::string shard_name;
  // Oldest first: expiry takes from the front, reuse from the back.
  std::deque<Idle> idle;
  // Granted leases not yet released.
  int leased = 0;
  // Queued leases, first come first served. Never holds a request while
  // `idle` is not empty (GrantQueuedLocked hands those out at once).
  std::deque<PoolLease::Request*> queue;
};

struct ConnectionPools::Deferred {
  // Run on destruction, after the lock was let go: connections are closed
  // (PQfinish writes to a socket), then callbacks run.
  ~Deferred() {
    to_close.clear();
    for (const std::function<void()>& notify : to_notify) notify();
  }

  std::vector<std::unique_ptr<ShardConnection>> to_close;
  std::vector<std::function<void()>> to_notify;
};

PoolLease::PoolLease() = default;

PoolLease::PoolLease(ConnectionPools* pools, std::unique_ptr<Request> request)
    : pools_(pools), request_(std::move(request)) {}

PoolLease::PoolLease(PoolLease&& other) noexcept
    : pools_(std::exchange(other.pools_, nullptr)),
      request_(std::move(other.request_)) {}

PoolLease& PoolLease::operator=(PoolLease&& other) noexcept {
  if (this != &other) {
    if (!empty()) Release(nullptr, false);
    pools_ = std::exchange(other.pools_, nullptr);
    request_ = std::move(other.request_);
  }
  return *this;
}

PoolLease::~PoolLease() {
  if (!empty()) Release(nullptr, false);
}

bool PoolLease::granted() const {
  assert(!empty());
  return pools_->IsGranted(*request_);
}

void PoolLease::OnGranted(std::function<void()> callback) {
  assert(!empty());
  pools_->SetOnGranted(*request_, std::move(callback));
}

std::unique_ptr<ShardConnection> PoolLease::TakeIdleConnection() {
  assert(!empty());
  return pools_->TakeIdle(*request_);
}

void PoolLease::Release(std::unique_ptr<ShardConnection> conn,
                        bool statement_completed) {
  assert(!empty());
  ConnectionPools* pools = std::exchange(pools_, nullptr);
  pools->Release(std::move(request_), std::move(conn), statement_completed);
}

ConnectionPools::ConnectionPools(PoolSettings settings)
    : settings_([&] {
        settings.max_connections_per_shard =
            std::max(settings.max_connections_per_shard, 1);
        return settings;
      }()) {}

ConnectionPools::~ConnectionPools() {
  absl::MutexLock lock(&mu_);
  assert(live_leases_ == 0 && "a PoolLease outlived its ConnectionPools");
}

int ConnectionPools::ExpireIdleLocked(Pool& pool, absl::Time now,
                                      Deferred& deferred) {
  int expired = 0;
  while (!pool.idle.empty() &&
         (settings_.idle_timeout <= absl::ZeroDuration() ||
          now - pool.idle.front().since > settings_.idle_timeout)) {
    deferred.to_close.push_back(std::move(pool.idle.front().conn));
    pool.idle.pop_front();
    ++expired;
  }
  return expired;
}

void ConnectionPools::GrantQueuedLocked(Pool& pool, Deferred& deferred) {
  while (!pool.queue.empty()) {
    const bool has_idle = !pool.idle.empty();
    if (!has_idle && pool.open() >= settings_.max_connections_per_shard) {
      return;
    }
    PoolLease::Request& request = *pool.queue.front();
    pool.queue.pop_front();
    if (has_idle) {
      // The slot of the idle connection passes to the lease with it.
      request.handed = std::move(pool.idle.back().conn);
      request.handed_idle_since = pool.idle.back().since;
      pool.idle.pop_back();
    }
    request.state = PoolLease::Request::State::kGranted;
    ++pool.leased;
    if (request.on_granted) deferred.to_notify.push_back(request.on_granted);
  }
}

PoolLease ConnectionPools::Acquire(ShardId shard, std::string_view shard_name,
                                   std::string_view dsn) {
  auto request = std::make_unique<PoolLease::Request>();
  // A whole Key, not a tuple of string_views, to find: clang 14 over
  // libstdc++ 12 has no < between tuples of string_view and of string.
  Key key(shard, std::string(shard_name), std::string(dsn));
  Deferred deferred;  // runs after `lock` is let go: destroyed after it
  absl::MutexLock lock(&mu_);
  auto it = pools_.find(key);
  if (it == pools_.end()) {
    it = pools_
             .emplace(std::move(key), std::make_unique<Pool>(shard, shard_name))
             .first;
  }
  Pool& pool = *it->second;
  request->pool = &pool;
  ExpireIdleLocked(pool, absl::Now(), deferred);
  pool.queue.push_back(request.get());
  GrantQueuedLocked(pool, deferred);
  ++live_leases_;
  return PoolLease(this, std::move(request));
}

bool ConnectionPools::IsGranted(const PoolLease::Request& request) const {
  absl::MutexLock lock(&mu_);
  return request.state == PoolLease::Request::State::kGranted;
}

void ConnectionPools::SetOnGranted(PoolLease::Request& request,
                                   std::function<void()> callback) {
  {
    absl::MutexLock lock(&mu_);
    if (request.state == PoolLease::Request::State::kQueued) {
      request.on_granted = std::move(callback);
      return;
    }
  }
  if (callback) callback();
}

std::unique_ptr<ShardConnection> ConnectionPools::TakeIdle(
    PoolLease::Request& request) {
  while (true) {
    std::unique_ptr<ShardConnection> conn;
    {
      Deferred deferred;
      absl::MutexLock lock(&mu_);
      assert(request.state == PoolLease::Request::State::kGranted);
      Pool& pool = *request.pool;
      ExpireIdleLocked(pool, absl::Now(), deferred);
      if (request.handed != nullptr) {
        conn = std::move(request.handed);
      } else if (!pool.idle.empty()) {
        // The lease's slot takes this connection; the idle one's slot is
        // freed.
        conn = std::move(pool.idle.back().conn);
        pool.idle.pop_back();
        GrantQueuedLocked(pool, deferred);
      }
    }
    if (conn == nullptr) return nullptr;
    // Outside the lock: a read of the socket, maybe of a few messages.
    if (conn->CheckAliveWhileIdle()) return conn;
    // Dead (the server ended the session): close it, try the next one.
  }
}

void ConnectionPools::Release(std::unique_ptr<PoolLease::Request> request,
                              std::unique_ptr<ShardConnection> conn,
                              bool statement_completed) {
  const bool reusable =
      conn != nullptr && statement_completed && conn->IsReusable();
  Deferred deferred;
  absl::MutexLock lock(&mu_);
  --live_leases_;
  Pool& pool = *request->pool;
  if (request->state == PoolLease::Request::State::kQueued) {
    pool.queue.erase(
        std::find(pool.queue.begin(), pool.queue.end(), request.get()));
    if (conn != nullptr) deferred.to_close.push_back(std::move(conn));
    return;
  }
  --pool.leased;
  const absl::Time now = absl::Now();
  if (request->handed != nullptr) {
    // Granted with an idle connection the caller never took: still idle.
    pool.idle.push_back(
        Pool::Idle{std::move(request->handed), request->handed_idle_since});
  }
  if (conn != nullptr) {
    if (reusable) {
      pool.idle.push_back(Pool::Idle{std::move(conn), now});
    } else {
      deferred.to_close.push_back(std::move(conn));
    }
  }
  // First hand connections and slots to queued leases, then expire.
  GrantQueuedLocked(pool, deferred);
  ExpireIdleLocked(pool, now, deferred);
}

int ConnectionPools::CloseExpiredIdle() {
  Deferred deferred;
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  int closed = 0;
  for (auto& [key, pool] : pools_) {
    closed += ExpireIdleLocked(*pool, now, deferred);
    GrantQueuedLocked(*pool, deferred);
  }
  return closed;
}

std::vector<ShardPoolStats> ConnectionPools::Stats() const {
  absl::MutexLock lock(&mu_);
  std::vector<ShardPoolStats> stats;
  stats.reserve(pools_.size());
  for (const auto& [key, pool] : pools_) {
    stats.push_back(ShardPoolStats{
        .shard = pool->shard,
        .shard_name = pool->shard_name,
        .idle = static_cast<int>(pool->idle.size()),
        .open = pool->open(),
        .waiting = static_cast<int>(pool->queue.size()),
    });
  }
  return stats;
}

}  // namespace shardkit::internal
