// Internal: where a read outside a transaction goes, among a shard's
// primary and streaming replicas (Shard::replicas).
//
// A ReadBalancer owns one background monitor thread that probes every
// backend of the map (CheckHealth, router/health.h) at once, first when
// it starts and then every heartbeat_interval (the shortest of the
// shards'). A replica takes reads only when its latest answered probe
// found it in recovery with a replay lag (seconds) known and at most the
// shard's max_lag, and no read or failure_threshold probes failed on it
// since. A replica not probed yet takes none: until the first round ends,
// reads go to the primaries.
//
// PickReplica spreads a shard's reads over its usable replicas by weight
// with smooth weighted round-robin (as nginx does): over any run of
// sum(weights) reads, each replica gets exactly its weight's share, and
// the picks are interleaved, not bunched. MarkFailed takes a replica out
// at once (a statement could not reach it) and wakes the monitor, whose
// next successful probe of it puts it back.
//
// Failed probes. A replica is taken out after failure_threshold
// consecutive failed probes (a single lost probe does not shed its reads;
// a read that fails on it takes it out at once, as said). A shard's
// primary that fails failure_threshold consecutive probes is reported to
// the PrimaryDownHandler, if any (the Cluster's automatic failover,
// router/failover.h), on the monitor thread, once per round while it
// stays down. After a primary's first failed probe the monitor probes
// again every heartbeat_interval / 4 instead of every heartbeat_interval,
// so that with the defaults (1 s, threshold 3) a dead primary is reported
// at most about 1.5 s after it died (1 s until the next probe, then two
// more a quarter-second apart), plus the probes' own time. ProbeNow makes
// the next round start at once: the Cluster calls it when a statement
// could not connect to a primary.
//
// The map changes. Follow installs a newer map (a failover, a move): each
// shard whose backends changed (another primary, replicas retired) starts
// afresh (replicas unusable until probed, failure counts zeroed), the
// others keep their state, and the monitor probes the new map at once.
// Follower() gives a LiveMap listener that calls Follow for as long as
// the balancer lives.
//
// Thread-safety: thread-safe.

#ifndef SHARDKIT_ROUTER_READ_BALANCER_H_
#define SHARDKIT_ROUTER_READ_BALANCER_H_

#include <cstdint>
#include <functional>
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
  // Called on the monitor thread with a shard whose primary failed
  // failure_threshold consecutive probes, and the epoch of the map those
  // probes were made under. It may block (a failover takes seconds); the
  // monitor waits for it.
  using PrimaryDownHandler = std::function<void(ShardId shard, uint64_t epoch)>;

  // Starts the monitor of the backends of `map`. Returns nullptr when no
  // shard of `map` has a replica (no thread is started then).
  // `on_primary_down` may be empty.
  static std::unique_ptr<ReadBalancer> Start(
      std::shared_ptr<const ShardMap> map, ProbeOptions probe,
      PrimaryDownHandler on_primary_down = nullptr);

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

  // As PickReplica, with the chosen replica's connection string, read
  // under the same lock (the map may change between two calls).
  struct Choice {
    size_t index = 0;
    std::string dsn;
  };
  std::optional<Choice> Choose(ShardId shard,
                               std::optional<uint64_t> min_lsn = {})
      ABSL_LOCKS_EXCLUDED(mu_);

  // Replica `replica` of shard `shard` in the current map (a copy).
  // REQUIRES: both in range of it.
  Backend replica(ShardId shard, size_t replica) const ABSL_LOCKS_EXCLUDED(mu_);

  // Installs `map` if its epoch is newer (see the file comment).
  void Follow(std::shared_ptr<const ShardMap> map) ABSL_LOCKS_EXCLUDED(mu_);
  // A listener for LiveMap::AddListener: calls Follow while this balancer
  // lives, and nothing after.
  std::function<void(std::shared_ptr<const ShardMap>)> Follower();

  // Starts the next round of probes now.
  void ProbeNow() ABSL_LOCKS_EXCLUDED(mu_);

  // A statement could not reach replica `replica` of shard `shard`: it
  // takes no reads until a probe of it succeeds. Wakes the monitor.
  void MarkFailed(ShardId shard, size_t replica) ABSL_LOCKS_EXCLUDED(mu_);

  // A balancer over `map` with no monitor: every replica unusable until
  // SetUsableForTest.
  static std::unique_ptr<ReadBalancer> CreateForTest(
      std::shared_ptr<const ShardMap> map);
  void SetUsableForTest(ShardId shard, size_t replica, bool usable)
      ABSL_LOCKS_EXCLUDED(mu_);

  // What the monitor last found about one backend.
  struct Observed {
    // Its latest probe; nullopt until the first round after Start, or
    // after Follow installed a map that changed its shard's backends.
    std::optional<BackendHealth> probe;
    absl::Time probed_at = absl::InfinitePast();  // when that round ended
    int failures = 0;          // consecutive failed probes
    bool takes_reads = false;  // a replica that PickReplica may choose now
  };
  // The monitor's findings with the map they are of, read under one lock.
  struct Observations {
    std::shared_ptr<const ShardMap> map;
    // By shard of `map`: its primary, then its replicas in map order.
    std::vector<std::vector<Observed>> shards;
  };
  Observations Observe() const ABSL_LOCKS_EXCLUDED(mu_);

  // Rounds of probes completed since Start.
  int64_t rounds() const ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until `rounds() > after`, at most `timeout`; whether it did.
  bool WaitForRoundForTest(int64_t after, absl::Duration timeout)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct ReplicaState {
    bool usable = false;
    int failures = 0;                    // consecutive failed probes
    std::optional<uint64_t> replay_lsn;  // as last probed
    int64_t current_weight = 0;  // smooth weighted round-robin
    std::optional<BackendHealth> last_probe;
    absl::Time probed_at = absl::InfinitePast();
  };
  struct ShardState {
    std::vector<ReplicaState> replicas;  // as in the shard's replicas
    int primary_failures = 0;            // consecutive failed probes
    std::optional<BackendHealth> primary_last_probe;
    absl::Time primary_probed_at = absl::InfinitePast();
  };
  // Clears the listener's pointer when the balancer goes.
  struct FollowLink {
    absl::Mutex mu;
    ReadBalancer* balancer ABSL_GUARDED_BY(mu) = nullptr;
  };

  ReadBalancer(std::shared_ptr<const ShardMap> map, ProbeOptions probe,
               PrimaryDownHandler on_primary_down);
  void Run();
  // Records a round of probes of `map`; returns the shards whose primary
  // is down past the threshold. A round of an older map than the current
  // one is dropped.
  std::vector<ShardId> ApplyRound(const ShardMap& map,
                                  const std::vector<BackendHealth>& health)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Constant after construction.
  const ProbeOptions probe_;
  const absl::Duration interval_;
  const PrimaryDownHandler on_primary_down_;
  const std::shared_ptr<FollowLink> link_ = std::make_shared<FollowLink>();
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::shared_ptr<const ShardMap> map_ ABSL_GUARDED_BY(mu_);
  // By shard, as in map_.
  std::vector<ShardState> shards_ ABSL_GUARDED_BY(mu_);
  int64_t rounds_ ABSL_GUARDED_BY(mu_) = 0;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_READ_BALANCER_H_
