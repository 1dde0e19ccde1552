// The health of a cluster's backends: each shard's primary and streaming
// replicas, as Cluster::Health reports them.
//
// A Cluster whose shards list replicas runs a health monitor: a thread
// that probes every backend of the current shard map when the cluster
// opens and then every [replicas] heartbeat_interval (connect, then one
// query: pg_is_in_recovery(), the WAL positions, the age of the last
// replayed transaction). Reads go to the replicas it finds fresh enough,
// and with a [catalog] a primary it finds down past failure_threshold is
// failed over. Health reports what it last found, without any I/O; with
// HealthOptions::probe_now, or on a cluster without replicas (which runs
// no monitor), it probes every backend itself first.
//
//   shardkit::ClusterHealth health = cluster->Health();
//   for (const shardkit::ShardHealth& shard : health.shards) {
//     for (const shardkit::BackendHealth& b : shard.backends) {
//       std::cout << shard.name << " " << b.name << " "
//                 << shardkit::BackendRoleName(b.role) << " "
//                 << shardkit::BackendStateName(b.state);
//       if (!b.error.ok()) std::cout << ": " << b.error.message();
//       std::cout << "\n";
//     }
//   }
//
// The types are plain values: a report is a copy, and stays valid and
// unchanged for as long as the caller keeps it.

#ifndef SHARDKIT_HEALTH_H_
#define SHARDKIT_HEALTH_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shardkit/shard_map.h"

namespace shardkit {

// A backend's place in the current shard map (after a failover, the live
// map of the [catalog]: a promoted replica is the primary, the old primary
// is retired).
enum class BackendRole {
  kPrimary,  // takes the shard's writes and its reads inside transactions
  kReplica,  // may take reads (see Cluster::Execute, "Reads and replicas")
  kRetired,  // replaced by a failover: shardkit never connects to it again
};

// What the latest probe of a backend found.
enum class BackendState {
  // Not probed: the monitor's first round after the cluster opened (or
  // after a failover changed the shard's backends) has not ended yet; and
  // always for a retired backend.
  kUnknown,
  // It answered; for a replica, also in recovery with a replay lag known
  // and at most the shard's max_lag.
  kUp,
  // A replica that answered, but whose replay lag exceeds max_lag, is not
  // known (it replayed no transaction since it started and is behind), or
  // that is not in recovery: it takes no reads.
  kLagging,
  // It did not answer: `error` says why.
  kDown,
};

// "primary", "replica", "retired".
std::string_view BackendRoleName(BackendRole role);
// "unknown", "up", "lagging", "down".
std::string_view BackendStateName(BackendState state);

struct BackendHealth {
  // "primary" for the shard's configured primary (even once retired or
  // after it became a replica), else the replica's name (Backend::name).
  std::string name;
  BackendRole role = BackendRole::kPrimary;
  // Its connection string with any password masked.
  std::string masked_dsn;
  BackendState state = BackendState::kUnknown;
  // Why the latest probe failed (kUnavailable: unreachable or connection
  // lost; kDeadlineExceeded: no connection or no answer within [timeouts]
  // connect; else the server's error), naming the shard and backend. OK
  // when it answered or was not probed.
  absl::Status error;
  // Failed probes in a row, up to now (0 when the latest answered). With
  // HealthOptions::probe_now, 0 or 1.
  int consecutive_failures = 0;
  // When the latest probe's round ended; absl::InfinitePast() if none.
  absl::Time probed_at = absl::InfinitePast();

  // The rest is known only when the latest probe answered (else nullopt,
  // false or zero).
  // pg_is_in_recovery(): whether the server replays WAL, which is what a
  // replica does. A primary in recovery takes no writes.
  std::optional<bool> in_recovery;
  // A primary: pg_current_wal_lsn(); a replica: pg_last_wal_replay_lsn().
  // As 64-bit positions (PostgreSQL prints "16/B374D848" as 0x16B374D848).
  std::optional<uint64_t> lsn;
  // A replica: pg_last_wal_receive_lsn(), the WAL it has received.
  std::optional<uint64_t> receive_lsn;
  // A replica whose replay is paused (pg_wal_replay_pause()).
  bool replay_paused = false;
  // A replica's replay lag: 0 once it has replayed all of its primary's WAL,
  // else the age of the last transaction it replayed (as PostgreSQL offers
  // it: exact under steady writes, an over-estimate right after an idle
  // primary writes again); nullopt when unknown.
  std::optional<absl::Duration> replay_lag;
  // A replica: how many bytes of WAL its replay is behind its primary's
  // current position, both read in the same round; nullopt when the
  // primary did not answer.
  std::optional<uint64_t> replay_lag_bytes;
  // Establishing the connection, and the probe query's round trip on it.
  std::optional<absl::Duration> connect_time;
  std::optional<absl::Duration> latency;

  // A replica that reads may go to now: the monitor found it fresh (kUp),
  // and since then neither failure_threshold probes in a row nor a
  // statement failed on it (so a replica kDown for fewer probes still
  // takes reads). Always false with HealthOptions::probe_now or without a
  // monitor, and for primaries.
  bool takes_reads = false;
};

struct ShardHealth {
  ShardId shard = 0;
  std::string name;
  // The replica lag beyond which a replica is kLagging.
  absl::Duration max_lag;
  // Its primary, then its replicas in map order, then retired backends in
  // configuration order.
  std::vector<BackendHealth> backends;
};

struct ClusterHealth {
  // The epoch of the shard map the backends' roles are taken from.
  uint64_t epoch = 0;
  // Every shard of that map, in shard order.
  std::vector<ShardHealth> shards;
};

// How Cluster::Health reports.
struct HealthOptions {
  // Probe every backend (but retired ones) now, on the calling thread, all
  // at once, and report that (it takes up to twice [timeouts] connect when
  // a backend does not answer), instead of the monitor's latest round. The
  // monitor's own state is left alone.
  bool probe_now = false;
};

}  // namespace shardkit

#endif  // SHARDKIT_HEALTH_H_
