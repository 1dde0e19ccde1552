#include "router/read_balancer.h"

#include <algorithm>
#include <utility>

namespace shardkit::internal {
namespace {

absl::Duration ShortestInterval(const ShardMap& map) {
  absl::Duration shortest = absl::InfiniteDuration();
  for (const Shard& s : map.shards()) {
    if (s.replicas.empty()) continue;
    shortest = std::min(shortest, s.replica_settings.heartbeat_interval);
  }
  return shortest;
}

// Whether `a` and `b` (the same shard in two maps) name the same servers
// in the same roles.
bool SameBackends(const Shard& a, const Shard& b) {
  if (a.dsn != b.dsn || a.replicas.size() != b.replicas.size()) return false;
  for (size_t i = 0; i < a.replicas.size(); ++i) {
    if (a.replicas[i].dsn != b.replicas[i].dsn) return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<ReadBalancer> ReadBalancer::Start(
    std::shared_ptr<const ShardMap> map, ProbeOptions probe,
    PrimaryDownHandler on_primary_down) {
  const bool any_replica =
      std::any_of(map->shards().begin(), map->shards().end(),
                  [](const Shard& s) { return !s.replicas.empty(); });
  if (!any_replica) return nullptr;
  // The constructor is private, so make_unique cannot reach it.
  std::unique_ptr<ReadBalancer> balancer(
      new ReadBalancer(std::move(map), probe, std::move(on_primary_down)));
  balancer->thread_ = std::thread([raw = balancer.get()] { raw->Run(); });
  return balancer;
}

ReadBalancer::ReadBalancer(std::shared_ptr<const ShardMap> map,
                           ProbeOptions probe,
                           PrimaryDownHandler on_primary_down)
    : probe_(probe),
      interval_(ShortestInterval(*map)),
      on_primary_down_(std::move(on_primary_down)) {
  {
    absl::MutexLock lock(&link_->mu);
    link_->balancer = this;
  }
  absl::MutexLock lock(&mu_);
  for (const Shard& s : map->shards()) {
    shards_.push_back(ShardState{std::vector<ReplicaState>(s.replicas.size())});
  }
  map_ = std::move(map);
}

std::unique_ptr<ReadBalancer> ReadBalancer::CreateForTest(
    std::shared_ptr<const ShardMap> map) {
  return std::unique_ptr<ReadBalancer>(
      new ReadBalancer(std::move(map), ProbeOptions{}, nullptr));
}

void ReadBalancer::SetUsableForTest(ShardId shard, size_t replica,
                                    bool usable) {
  absl::MutexLock lock(&mu_);
  shards_[shard].replicas[replica].usable = usable;
}

ReadBalancer::~ReadBalancer() {
  {
    absl::MutexLock lock(&link_->mu);
    link_->balancer = nullptr;
  }
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ReadBalancer::Run() {
  while (true) {
    std::shared_ptr<const ShardMap> map;
    {
      absl::MutexLock lock(&mu_);
      map = map_;
    }
    const std::vector<ShardId> down = ApplyRound(*map, CheckHealth(*map, probe_));
    if (on_primary_down_) {
      for (ShardId shard : down) on_primary_down_(shard, map->epoch());
    }
    absl::MutexLock lock(&mu_);
    // A primary that failed once is probed again sooner, so that its
    // failure is confirmed (or not) quickly; a failover just attempted is
    // not retried before a full interval.
    const bool suspect =
        std::any_of(shards_.begin(), shards_.end(), [](const ShardState& s) {
          return s.primary_failures > 0;
        });
    const absl::Duration wait =
        suspect && down.empty() ? interval_ / 4 : interval_;
    auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || wake_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&woken), wait);
    if (stop_) return;
    wake_ = false;
  }
}

std::vector<ShardId> ReadBalancer::ApplyRound(
    const ShardMap& map, const std::vector<BackendHealth>& health) {
  std::vector<ShardId> down;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  if (map.epoch() != map_->epoch()) return down;  // Follow came meanwhile
  for (const BackendHealth& b : health) {
    const Shard& shard = map.shard(b.target.shard);
    ShardState& state = shards_[b.target.shard];
    const int threshold = shard.replica_settings.failure_threshold;
    if (b.target.configured_primary) {
      state.primary_last_probe = b;
      state.primary_probed_at = now;
      state.primary_failures = b.up() ? 0 : state.primary_failures + 1;
      if (state.primary_failures >= threshold && !shard.replicas.empty()) {
        down.push_back(b.target.shard);
      }
      continue;
    }
    for (size_t i = 0; i < shard.replicas.size(); ++i) {
      if (shard.replicas[i].name != b.target.backend) continue;
      ReplicaState& replica = state.replicas[i];
      replica.last_probe = b;
      replica.probed_at = now;
      if (b.up()) {
        replica.failures = 0;
        replica.replay_lsn = b.lsn;
        replica.usable = b.role == BackendRole::kReplica && b.lag.has_value() &&
                         *b.lag <= shard.replica_settings.max_lag;
      } else if (++replica.failures >= threshold) {
        replica.usable = false;
      }
    }
  }
  ++rounds_;
  return down;
}

void ReadBalancer::Follow(std::shared_ptr<const ShardMap> map) {
  absl::MutexLock lock(&mu_);
  if (map->epoch() <= map_->epoch()) return;
  for (ShardId id = 0; id < map->shards().size() && id < shards_.size(); ++id) {
    const Shard& now = map->shard(id);
    if (SameBackends(map_->shard(id), now)) continue;
    shards_[id] = ShardState{std::vector<ReplicaState>(now.replicas.size())};
  }
  map_ = std::move(map);
  wake_ = true;
}

std::function<void(std::shared_ptr<const ShardMap>)> ReadBalancer::Follower() {
  return [link = link_](std::shared_ptr<const ShardMap> map) {
    absl::MutexLock lock(&link->mu);
    if (link->balancer != nullptr) link->balancer->Follow(std::move(map));
  };
}

void ReadBalancer::ProbeNow() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

std::optional<ReadBalancer::Choice> ReadBalancer::Choose(
    ShardId shard, std::optional<uint64_t> min_lsn) {
  absl::MutexLock lock(&mu_);
  if (shard >= shards_.size()) return std::nullopt;
  std::vector<ReplicaState>& states = shards_[shard].replicas;
  const std::vector<Backend>& backends = map_->shard(shard).replicas;
  int64_t total = 0;
  std::optional<size_t> best;
  for (size_t i = 0; i < states.size(); ++i) {
    if (!states[i].usable) continue;
    if (min_lsn && !(states[i].replay_lsn && *states[i].replay_lsn >= *min_lsn)) {
      continue;
    }
    states[i].current_weight += backends[i].weight;
    total += backends[i].weight;
    if (!best || states[i].current_weight > states[*best].current_weight) {
      best = i;
    }
  }
  if (!best) return std::nullopt;
  states[*best].current_weight -= total;
  return Choice{*best, backends[*best].dsn};
}

std::optional<size_t> ReadBalancer::PickReplica(
    ShardId shard, std::optional<uint64_t> min_lsn) {
  std::optional<Choice> choice = Choose(shard, min_lsn);
  if (!choice) return std::nullopt;
  return choice->index;
}

Backend ReadBalancer::replica(ShardId shard, size_t replica) const {
  absl::MutexLock lock(&mu_);
  return map_->shard(shard).replicas[replica];
}

void ReadBalancer::MarkFailed(ShardId shard, size_t replica) {
  absl::MutexLock lock(&mu_);
  if (shard >= shards_.size() || replica >= shards_[shard].replicas.size()) {
    return;
  }
  shards_[shard].replicas[replica].usable = false;
  shards_[shard].replicas[replica].current_weight = 0;
  wake_ = true;
}

ReadBalancer::Observations ReadBalancer::Observe() const {
  absl::MutexLock lock(&mu_);
  Observations out;
  out.map = map_;
  for (const ShardState& state : shards_) {
    std::vector<Observed>& shard = out.shards.emplace_back();
    shard.push_back(Observed{state.primary_last_probe, state.primary_probed_at,
                             state.primary_failures, false});
    for (const ReplicaState& r : state.replicas) {
      shard.push_back(Observed{r.last_probe, r.probed_at, r.failures, r.usable});
    }
  }
  return out;
}

int64_t ReadBalancer::rounds() const {
  absl::MutexLock lock(&mu_);
  return rounds_;
}

bool ReadBalancer::WaitForRoundForTest(int64_t after, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [this, after]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return rounds_ > after;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

}  // namespace shardkit::internal
