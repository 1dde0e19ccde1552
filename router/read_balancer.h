// Internal: where a read outside a transaction goes, among a shard's
// primary and streaming replicas (Shard::replicas).
//
// A ReadBalancer owns one background monitor thread that probes every
// backend of the map (CheckHealth, router/health.h) at once, first when
// it starts and then every heartbeat_interval (the shortest of the
// shards'). After each round, a replica takes reads only when its probe
// succeeded, the server says it is in recovery, and its replay lag
// (seconds) is known and at most the shard's max_lag. A replica not
// probed yet takes none: until the first round ends, reads go to the
// primaries.
//
// PickReplica spreads a shard's reads over its usable replicas by weight
// with smooth weighted round-robin (as nginx does): over any run of
// sum(weights) reads, each replica gets exactly its weight's share, and
// the picks are interleaved, not bunched. MarkFailed takes a replica out
// at once (a statement could not reach it) and wakes the monitor, whose
// next successful probe of it puts it back.
//
// failure_threshold is not used here: a replica takes no reads from its
// first failed probe (reads have a primary to fall back to); the
// threshold is for the primary's failover.
//
// Thread-safety: thread-safe.

#ifndef SHARDKIT_ROUTER_READ_BALANCER_H_
#define SHARDKIT_ROUTER_READ_BALANCER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/health.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

class ReadBalancer {
 public:
  // Starts the monitor of the backends of `map`. Returns nullptr when no
  // shard of `map` has a replica (no thread is started then).
  static std::unique_ptr<ReadBalancer> Start(
      std::shared_ptr<const ShardMap> map, ProbeOptions probe);

  // Stops the monitor and waits for it: at most the rest of a round under
  // way (up to the probe's connect and query timeouts when a backend does
  // not answer).
  ~ReadBalancer();
  ReadBalancer(const ReadBalancer&) = delete;
  ReadBalancer& operator=(const ReadBalancer&) = delete;

  // A replica chosen for the next read of shard `shard`: its index in the
  // shard's replicas; nullopt when it has none usable (read the primary).
  // With `min_lsn`, only a replica whose replay position, as the monitor
  // last saw it, is at least that.
  std::optional<size_t> PickReplica(ShardId shard,
                                    std::optional<uint64_t> min_lsn = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  // The connection string of replica `replica` of shard `shard`.
  // REQUIRES: both in range of the map given to Start.
  const Backend& replica(ShardId shard, size_t replica) const {
    return map_->shard(shard).replicas[replica];
  }

  // A statement could not reach replica `replica` of shard `shard`: it
  // takes no reads until a probe of it succeeds. Wakes the monitor.
  void MarkFailed(ShardId shard, size_t replica) ABSL_LOCKS_EXCLUDED(mu_);

  // A balancer over `map` with no monitor: every replica unusable until
  // SetUsableForTest.
  static std::unique_ptr<ReadBalancer> CreateForTest(
      std::shared_ptr<const ShardMap> map);
  void SetUsableForTest(ShardId shard, size_t replica, bool usable)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Rounds of probes completed since Start.
  int64_t rounds() const ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until `rounds() > after`, at most `timeout`; whether it did.
  bool WaitForRoundForTest(int64_t after, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct ReplicaState {
    bool usable = false;
    std::optional<uint64_t> replay_lsn;  // as last probed
    int64_t current_weight = 0;  // smooth weighted round-robin
  };

  ReadBalancer(std::shared_ptr<const ShardMap> map, ProbeOptions probe);
  void Run();
  void ApplyRound(const std::vector<BackendHealth>& health)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  const std::shared_ptr<const ShardMap> map_;
  const ProbeOptions probe_;
  const absl::Duration interval_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  // By shard, then replica, as in map_.
  std::vector<std::vector<ReplicaState>> replicas_ ABSL_GUARDED_BY(mu_);
  int64_t rounds_ ABSL_GUARDED_BY(mu_) = 0;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_READ_BALANCER_H_
