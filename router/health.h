// Internal: one health check of every backend of a shard map.
//
// A backend is a shard's primary or one of its streaming replicas
// (Shard::replicas). A probe connects to it and runs one query:
//
//   SELECT pg_is_in_recovery(),
//          pg_current_wal_lsn()               -- on a primary only
//          pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(),
//          pg_is_wal_replay_paused(),         -- on a replica only
//          now() - pg_last_xact_replay_timestamp()
//
// and reports what the server says it is (its role), whether it answered
// (its state, with the error when it did not), how far a replica's replay
// is behind its shard's primary, and how long the query took.
//
//   std::vector<BackendHealth> health =
//       CheckHealth(config.map, ProbeOptions{});
//   for (const BackendHealth& b : health) {
//     if (!b.up()) std::cerr << b.status.message() << "\n";
//   }
//
// Replay lag of a replica, relative to its shard's primary:
//  - bytes: the primary's pg_current_wal_lsn() minus the replica's
//    pg_last_wal_replay_lsn(), both read in the same round of probes (the
//    probes run concurrently, so a primary writing meanwhile can make it a
//    little off either way; it is never below 0). Unknown when the shard
//    has no backend up that reports itself primary.
//  - time: 0 when the replica has replayed all the primary's WAL (byte lag
//    0), or, with the primary's position unknown, all the WAL it received;
//    otherwise the age of the last transaction it replayed (now() -
//    pg_last_xact_replay_timestamp(), on the replica's clock), which is
//    what PostgreSQL offers: exact under a steady stream of writes, an
//    over-estimate right after a primary that sat idle writes again.
//    Unknown when it has replayed no transaction since it started.
// A replica whose replay is paused (pg_wal_replay_pause()) keeps
// receiving WAL, so its lag grows while the primary writes.
//
// This is the probe the heartbeat monitor will run on each
// heartbeat_interval; it keeps no state between calls.
//
// Thread-safety: the functions are thread-safe.

#ifndef SHARDKIT_ROUTER_HEALTH_H_
#define SHARDKIT_ROUTER_HEALTH_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// The role a backend's server reports: a primary accepts writes, a replica
// is in recovery (replaying WAL). kUnknown when it did not answer.
enum class BackendRole { kUnknown, kPrimary, kReplica };

// "unknown", "primary", "replica".
std::string_view BackendRoleName(BackendRole role);

// One backend to probe.
struct ProbeTarget {
  ShardId shard = 0;
  std::string shard_name;
  // "primary" for the shard's configured primary, else the replica's name.
  std::string backend;
  // Whether the configuration names it the shard's primary.
  bool configured_primary = false;
  std::string dsn;  // may hold a password; never put in a message
};

struct ProbeOptions {
  // Connecting, from the start of the probe.
  absl::Duration connect_timeout = absl::Seconds(5);
  // The probe query, from when it is sent.
  absl::Duration query_timeout = absl::Seconds(5);
};

// What one probe of one backend found.
struct BackendHealth {
  ProbeTarget target;
  // OK: the backend answered (it is up). Otherwise why not, naming the shard
  // and backend: kUnavailable (unreachable, connection lost),
  // kDeadlineExceeded (no connection within connect_timeout, or no answer
  // within query_timeout), or the server's error.
  absl::Status status;
  BackendRole role = BackendRole::kUnknown;
  // A primary: pg_current_wal_lsn(). A replica: pg_last_wal_replay_lsn().
  std::optional<uint64_t> lsn;
  // A replica: pg_last_wal_receive_lsn(), the WAL it has received (nullopt
  // while it has received none by streaming).
  std::optional<uint64_t> receive_lsn;
  // A replica: whether its replay is paused.
  bool replay_paused = false;
  // A replica: now() - pg_last_xact_replay_timestamp() on its clock;
  // nullopt when it has replayed no transaction.
  std::optional<absl::Duration> since_last_replay;
  // A replica, filled by CheckHealth (see the file comment); nullopt when
  // unknown or for a primary.
  std::optional<uint64_t> lag_bytes;
  std::optional<absl::Duration> lag;
  // Establishing the connection, and the probe query's round trip on it.
  absl::Duration connect_time;
  absl::Duration latency;

  bool up() const { return status.ok(); }
};

// Probes every target concurrently (one thread drives all the connections
// with poll(); a backend that does not answer holds up no other) and waits
// for all, at most connect_timeout + query_timeout. Returns one
// BackendHealth per target, in order; lag_bytes and lag are left unset.
std::vector<BackendHealth> ProbeBackends(
    const std::vector<ProbeTarget>& targets, const ProbeOptions& options);

// Every backend of `map`, shard by shard, each shard's primary before its
// replicas in configuration order.
std::vector<ProbeTarget> BackendsOf(const ShardMap& map);

// Probes every backend of `map` (ProbeBackends(BackendsOf(map), options)),
// then fills each replica's lag relative to its shard's primary.
std::vector<BackendHealth> CheckHealth(const ShardMap& map,
                                       const ProbeOptions& options);

// Fills the lag of the replicas among `shard_backends` (the backends of one
// shard, as CheckHealth probed them) from the backend that reports itself
// primary (the configured primary first). A backend that is down, or not
// in recovery, gets none.
void ComputeReplicaLag(std::vector<BackendHealth*>& shard_backends);

// A pg_lsn as PostgreSQL prints it ("16/B374D848": the high and low 32
// bits in hex). nullopt when `text` is not one.
std::optional<uint64_t> ParseLsn(std::string_view text);
// The inverse of ParseLsn.
std::string FormatLsn(uint64_t lsn);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_HEALTH_H_
