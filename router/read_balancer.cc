#include "router/read_balancer.h"

#include <algorithm>
#include <utility>

namespace shardkit::internal {

std::unique_ptr<ReadBalancer> ReadBalancer::Start(
    std::shared_ptr<const ShardMap> map, ProbeOptions probe) {
  const bool any_replica =
      std::any_of(map->shards().begin(), map->shards().end(),
                  [](const Shard& s) { return !s.replicas.empty(); });
  if (!any_replica) return nullptr;
  // The constructor is private, so make_unique cannot reach it.
  std::unique_ptr<ReadBalancer> balancer(
      new ReadBalancer(std::move(map), probe));
  balancer->thread_ = std::thread([raw = balancer.get()] { raw->Run(); });
  return balancer;
}

namespace {

absl::Duration ShortestInterval(const ShardMap& map) {
  absl::Duration shortest = absl::InfiniteDuration();
  for (const Shard& s : map.shards()) {
    if (s.replicas.empty()) continue;
    shortest = std::min(shortest, s.replica_settings.heartbeat_interval);
  }
  return shortest;
}

}  // namespace

ReadBalancer::ReadBalancer(std::shared_ptr<const ShardMap> map,
                           ProbeOptions probe)
    : map_(std::move(map)), probe_(probe), interval_(ShortestInterval(*map_)) {
  absl::MutexLock lock(&mu_);
  for (const Shard& s : map_->shards()) {
    replicas_.emplace_back(s.replicas.size());
  }
}

std::unique_ptr<ReadBalancer> ReadBalancer::CreateForTest(
    std::shared_ptr<const ShardMap> map) {
  return std::unique_ptr<ReadBalancer>(
      new ReadBalancer(std::move(map), ProbeOptions{}));
}

void ReadBalancer::SetUsableForTest(ShardId shard, size_t replica,
                                    bool usable) {
  absl::MutexLock lock(&mu_);
  replicas_[shard][replica].usable = usable;
}

ReadBalancer::~ReadBalancer() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void ReadBalancer::Run() {
  while (true) {
    ApplyRound(CheckHealth(*map_, probe_));
    absl::MutexLock lock(&mu_);
    auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return stop_ || wake_;
    };
    mu_.AwaitWithTimeout(absl::Condition(&woken), interval_);
    if (stop_) return;
    wake_ = false;
  }
}

void ReadBalancer::ApplyRound(const std::vector<BackendHealth>& health) {
  absl::MutexLock lock(&mu_);
  for (const BackendHealth& b : health) {
    if (b.target.configured_primary) continue;
    const Shard& shard = map_->shard(b.target.shard);
    for (size_t i = 0; i < shard.replicas.size(); ++i) {
      if (shard.replicas[i].name != b.target.backend) continue;
      replicas_[b.target.shard][i].replay_lsn = b.lsn;
      replicas_[b.target.shard][i].usable =
          b.up() && b.role == BackendRole::kReplica && b.lag.has_value() &&
          *b.lag <= shard.replica_settings.max_lag;
    }
  }
  ++rounds_;
}

std::optional<size_t> ReadBalancer::PickReplica(
    ShardId shard, std::optional<uint64_t> min_lsn) {
  absl::MutexLock lock(&mu_);
  if (shard >= replicas_.size()) return std::nullopt;
  std::vector<ReplicaState>& states = replicas_[shard];
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
  if (best) states[*best].current_weight -= total;
  return best;
}

void ReadBalancer::MarkFailed(ShardId shard, size_t replica) {
  absl::MutexLock lock(&mu_);
  if (shard >= replicas_.size() || replica >= replicas_[shard].size()) return;
  replicas_[shard][replica].usable = false;
  replicas_[shard][replica].current_weight = 0;
  wake_ = true;
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
