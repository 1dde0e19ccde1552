// Cluster::Health: the monitor's findings (router/read_balancer.h), or a
// probe made now (router/health.h), by backend as the configuration names
// them, with their roles in the current map.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/clock.h"
#include "router/health.h"
#include "router/live_map.h"
#include "router/read_balancer.h"
#include "shardkit/cluster.h"
#include "shardkit/health.h"

namespace shardkit {
namespace {

using Observed = internal::ReadBalancer::Observed;

// A configured backend of a shard: "primary" or a replica's name.
struct Configured {
  std::string name;
  std::string dsn;
  std::string masked_dsn;
};

std::vector<Configured> ConfiguredBackends(const Shard& shard) {
  std::vector<Configured> out;
  out.push_back(Configured{"primary", shard.dsn, shard.MaskedDsn()});
  for (const Backend& r : shard.replicas) {
    out.push_back(Configured{r.name, r.dsn, r.MaskedDsn()});
  }
  return out;
}

BackendState StateOf(const internal::BackendHealth& probe, bool primary,
                     absl::Duration max_lag) {
  if (!probe.up()) return BackendState::kDown;
  if (primary) return BackendState::kUp;
  const bool fresh = probe.role == internal::BackendRole::kReplica &&
                     probe.lag.has_value() && *probe.lag <= max_lag;
  return fresh ? BackendState::kUp : BackendState::kLagging;
}

BackendHealth Report(const Configured& backend, BackendRole role,
                     const Observed* seen, absl::Duration max_lag) {
  BackendHealth out;
  out.name = backend.name;
  out.role = role;
  out.masked_dsn = backend.masked_dsn;
  if (seen == nullptr || !seen->probe) return out;
  const internal::BackendHealth& probe = *seen->probe;
  out.state = StateOf(probe, role == BackendRole::kPrimary, max_lag);
  out.error = probe.status;
  out.consecutive_failures = seen->failures;
  out.probed_at = seen->probed_at;
  out.takes_reads = seen->takes_reads;
  if (!probe.up()) return out;
  out.in_recovery = probe.role == internal::BackendRole::kReplica;
  out.lsn = probe.lsn;
  out.receive_lsn = probe.receive_lsn;
  out.replay_paused = probe.replay_paused;
  out.replay_lag = probe.lag;
  out.replay_lag_bytes = probe.lag_bytes;
  out.connect_time = probe.connect_time;
  out.latency = probe.latency;
  return out;
}

// Probes every backend of `map` now, as the monitor would have.
internal::ReadBalancer::Observations ProbeNow(
    std::shared_ptr<const ShardMap> map, const internal::ProbeOptions& probe) {
  internal::ReadBalancer::Observations out;
  out.shards.resize(map->shards().size());
  const absl::Time now_ish = absl::Now();
  for (internal::BackendHealth& b : internal::CheckHealth(*map, probe)) {
    const int failures = b.up() ? 0 : 1;
    out.shards[b.target.shard].push_back(
        Observed{std::move(b), now_ish, failures, false});
  }
  out.map = std::move(map);
  return out;
}

}  // namespace

std::string_view BackendRoleName(BackendRole role) {
  switch (role) {
    case BackendRole::kPrimary:
      return "primary";
    case BackendRole::kReplica:
      return "replica";
    case BackendRole::kRetired:
      return "retired";
  }
  return "primary";
}

std::string_view BackendStateName(BackendState state) {
  switch (state) {
    case BackendState::kUnknown:
      return "unknown";
    case BackendState::kUp:
      return "up";
    case BackendState::kLagging:
      return "lagging";
    case BackendState::kDown:
      return "down";
  }
  return "unknown";
}

ClusterHealth Cluster::Health(const HealthOptions& options) const {
  internal::ReadBalancer::Observations seen;
  if (reads_ != nullptr && !options.probe_now) {
    seen = reads_->Observe();
  } else {
    internal::ProbeOptions probe;
    probe.connect_timeout = config_.timeouts.connect;
    probe.query_timeout = config_.timeouts.connect;
    seen = ProbeNow(live_->current(), probe);
  }
  const ShardMap& map = *seen.map;
  const ShardMap& configured = live_->configured();
  ClusterHealth health;
  health.epoch = map.epoch();
  for (ShardId id = 0; id < map.shards().size(); ++id) {
    const Shard& now = map.shard(id);
    ShardHealth& shard = health.shards.emplace_back();
    shard.shard = id;
    shard.name = now.name;
    shard.max_lag = now.replica_settings.max_lag;
    // The live map keeps the configured backends' dsns: a failover only
    // moves them between the primary's place, the replicas and retirement.
    const std::vector<Configured> backends =
        ConfiguredBackends(configured.shard(id));
    auto observed = [&](size_t i) -> const Observed* {
      return i < seen.shards[id].size() ? &seen.shards[id][i] : nullptr;
    };
    std::vector<bool> listed(backends.size(), false);
    auto add = [&](const std::string& dsn, BackendRole role, size_t index) {
      for (size_t b = 0; b < backends.size(); ++b) {
        if (listed[b] || backends[b].dsn != dsn) continue;
        listed[b] = true;
        shard.backends.push_back(
            Report(backends[b], role, observed(index), shard.max_lag));
        return;
      }
    };
    add(now.dsn, BackendRole::kPrimary, 0);
    for (size_t r = 0; r < now.replicas.size(); ++r) {
      add(now.replicas[r].dsn, BackendRole::kReplica, r + 1);
    }
    for (size_t b = 0; b < backends.size(); ++b) {
      if (!listed[b]) {
        shard.backends.push_back(
            Report(backends[b], BackendRole::kRetired, nullptr, shard.max_lag));
      }
    }
  }
  return health;
}

}  // namespace shardkit
