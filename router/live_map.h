// Internal: the map a Cluster routes by, kept current from the catalog.
//
// Without a [catalog] the configuration's map is the map, for good. With
// one, the live map is the configuration's with the catalog's latest
// LiveState applied (config/live_state.h), and it follows the catalog:
//   - Open reads it before anything is routed (a process must never route
//     by a map older than one it could have read: after a failover the
//     configured primary may be a retired one);
//   - a watcher thread LISTENs on the catalog's `shardkit_map` channel and
//     installs each new epoch as soon as it is announced, and also polls
//     the epoch every `poll_interval` (a notification is lost when the
//     listening connection breaks);
//   - Refresh() reads it at once, for a caller that learned the map is
//     stale (a shard refused a statement for its epoch).
// A catalog that cannot be reached leaves the last map in place; the
// watcher retries.
//
// Thread-safety: thread-safe.

#ifndef SHARDKIT_ROUTER_LIVE_MAP_H_
#define SHARDKIT_ROUTER_LIVE_MAP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "config/live_state.h"
#include "router/catalog.h"
#include "shardkit/config.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

class LiveMap {
 public:
  // Called with each new map after it is installed, on the thread that
  // installed it; must not call back into the LiveMap's Refresh.
  using Listener = std::function<void(std::shared_ptr<const ShardMap>)>;

  // Without a catalog in `config`: the configured map, no thread. With
  // one: reads the catalog's live map (failing with kUnavailable, or as
  // ApplyLiveState does, when it cannot), then starts the watcher.
  static absl::StatusOr<std::unique_ptr<LiveMap>> Open(
      const Config& config, ExecOptions catalog_options,
      absl::Duration poll_interval = absl::Seconds(1));
  ~LiveMap();
  LiveMap(const LiveMap&) = delete;
  LiveMap& operator=(const LiveMap&) = delete;

  std::shared_ptr<const ShardMap> current() const ABSL_LOCKS_EXCLUDED(mu_);

  // nullptr without a catalog.
  Catalog* catalog() const { return catalog_.get(); }

  // The configuration's map, which the catalog's states apply to.
  const ShardMap& configured() const { return configured_; }

  // Reads the catalog and installs its map if newer. Returns the current
  // map. Without a catalog, returns it unchanged.
  absl::StatusOr<std::shared_ptr<const ShardMap>> Refresh()
      ABSL_LOCKS_EXCLUDED(mu_);

  // Blocks until the current map's epoch is at least `epoch`, refreshing
  // as needed, or `timeout` passes (then kDeadlineExceeded).
  absl::Status AwaitEpoch(uint64_t epoch, absl::Duration timeout);

  void AddListener(Listener listener) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  LiveMap(const ShardMap& configured, std::unique_ptr<Catalog> catalog,
          absl::Duration poll_interval);
  // Installs `state` if newer than the current map.
  absl::Status Install(const LiveState& state) ABSL_LOCKS_EXCLUDED(mu_);
  void Watch();

  const ShardMap configured_;
  const std::unique_ptr<Catalog> catalog_;
  const absl::Duration poll_interval_;
  // Written by the destructor to wake the watcher out of poll().
  const int wake_fd_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const ShardMap> map_ ABSL_GUARDED_BY(mu_);
  std::vector<Listener> listeners_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Serializes installs so listeners see maps in epoch order.
  absl::Mutex install_mu_;
  std::thread watcher_;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_LIVE_MAP_H_
