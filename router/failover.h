// Internal: replacing a shard's primary by one of its streaming replicas.
//
// One function does it for the three callers: the health monitor of every
// Cluster (automatic failover, when the primary failed failure_threshold
// consecutive heartbeats), `shardctl failover` (on demand, even with the
// primary up) and `shardctl switchover` (planned, no lost write):
//
//   FailoverOptions options;
//   options.mode = FailoverMode::kSwitchover;
//   absl::StatusOr<FailoverReport> done =
//       Failover(config.map, catalog, "s1", options);
//
// Steps, each of which can stop it (nothing is changed before step 5
// except as said):
//  1. Take the lease "failover/<shard>" in the catalog (options.lease_ttl,
//     renewed before promoting and before publishing). Only its holder
//     promotes: several processes watching one shard race for it and one
//     wins; the others stop with kAborted.
//  2. Read the live map (the catalog's latest state applied to the
//     configuration). With options.expected_epoch (the monitor's), a map
//     that moved on since the monitor saw the primary fail means someone
//     else already acted: kAborted.
//  3. Probe the shard's backends once. kAutomatic: the primary must still
//     be down (kAborted if it answers again). kSwitchover: it must be up
//     and a primary (kFailedPrecondition: use failover). kManual: either.
//  4. Choose the replica to promote: options.target if given (it must be
//     up, in recovery and, with the primary up, within the shard's
//     max_lag: kFailedPrecondition saying why), else the replica with the
//     highest received WAL position (then replayed), so that the fewest
//     transactions are lost.
//  5. kSwitchover: fence the old primary (ALTER SYSTEM SET
//     default_transaction_read_only = on, pg_reload_conf(), terminate its
//     client sessions), read its pg_current_wal_lsn(), and wait until the
//     target has replayed that far (options.catch_up_timeout; on timeout
//     the fence is lifted and nothing else changed: kDeadlineExceeded).
//     kManual with the primary up: fence it the same way, without waiting.
//  6. Promote the target: SELECT pg_promote(true, promote_timeout).
//  7. Publish the new live state (compare-and-swap on the epoch): the
//     target is the shard's primary and the old primary is retired, for
//     good; every Cluster of every process follows within a poll interval
//     and never uses a retired backend again, even if it comes back. A
//     publish that loses its race to an unrelated change (a slice move) is
//     rebased on the newer state and retried.
//  8. Point the shard's other replicas at the new primary: ALTER SYSTEM
//     SET primary_conninfo (their current one with the new primary's host
//     and port) and pg_reload_conf(); PostgreSQL (>= 13) restarts the WAL
//     receiver and, with recovery_target_timeline = 'latest' (the
//     default), follows the promoted server's new timeline. One that
//     cannot be reached or refuses is listed in the report: point it at
//     the new primary by hand, or rebuild it.
//
// Split brain. The lease makes one process promote; the publish is a CAS
// on the epoch, so two writers of one epoch cannot both win; a process
// that cannot read the catalog keeps routing by the last map it read,
// which after a failover never names the retired primary. What no
// software on this side can do is stop an old primary that is still
// running but unreachable from the monitor from taking writes from a
// client that can still reach it and has not yet read the new map (at
// most its poll interval): configure synchronous replication
// (synchronous_standby_names) so that such a primary cannot commit once
// its standbys follow the new primary, and shut the old primary down.
//
// Thread-safety: Failover is thread-safe; concurrent calls for one shard
// are serialized by the lease (all but one fail with kAborted).

#ifndef SHARDKIT_ROUTER_FAILOVER_H_
#define SHARDKIT_ROUTER_FAILOVER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/catalog.h"
#include "router/health.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

enum class FailoverMode {
  kAutomatic,   // the monitor: only if the primary is still down
  kManual,      // shardctl failover: now, whatever the primary's state
  kSwitchover,  // shardctl switchover: primary up, no lost write
};

// "automatic", "failover", "switchover".
std::string_view FailoverModeName(FailoverMode mode);

struct FailoverOptions {
  FailoverMode mode = FailoverMode::kManual;
  // The replica to promote (its backend name: "r1", or the name the
  // configuration gives it); nullopt: the most advanced healthy one.
  std::optional<std::string> target;
  // kAutomatic: the epoch of the map under which the primary was seen
  // failing; the failover stops (kAborted) if the live map is past it.
  std::optional<uint64_t> expected_epoch;
  // Who holds the lease (ProcessIdentity() by default).
  std::string holder;
  absl::Duration lease_ttl = absl::Seconds(15);
  // pg_promote's wait for the promotion to complete.
  absl::Duration promote_timeout = absl::Seconds(60);
  // kSwitchover: how long the target may take to replay the old primary's
  // last WAL.
  absl::Duration catch_up_timeout = absl::Seconds(30);
  // Connect and statement timeouts for the probes and commands.
  ProbeOptions probe;
};

// What a failover did, for the monitor's callers and shardctl's output.
struct FailoverReport {
  std::string shard;
  FailoverMode mode = FailoverMode::kManual;
  std::string old_primary;  // backend name: "primary", "r1", ...
  std::string new_primary;
  uint64_t epoch = 0;       // of the live map that records it
  // Whether the old primary answered when probed; if so, whether it was
  // made read-only (and its sessions ended). A retired primary that is
  // still up must be shut down or rebuilt as a replica of the new one.
  bool old_primary_up = false;
  bool old_primary_fenced = false;
  // The WAL position of the promoted replica when it was chosen (replayed,
  // or with kSwitchover the old primary's final position it replayed).
  std::optional<uint64_t> promoted_at_lsn;
  // The shard's other replicas now following the new primary, and those
  // that are not, each with why ("r2: <error>").
  std::vector<std::string> repointed;
  std::vector<std::string> not_repointed;
  // What the operator should know or do next, one sentence each.
  std::vector<std::string> notes;
};

// Does the failover described in the file comment for shard `shard` of
// the map `configured` (the configuration's; the catalog's live state is
// applied to it). Fails with kNotFound (no such shard or target backend),
// kFailedPrecondition (no replica to promote, a target down or lagging, a
// switchover without a primary up: the message says what to do), kAborted
// (another process holds the lease or acted first, or the primary answers
// again), kUnavailable (the catalog or the target cannot be reached),
// kDeadlineExceeded (a switchover's target did not catch up). Once the
// target is promoted, a failure to publish is reported as kInternal
// naming the promoted backend: the shard then has two primaries until an
// operator publishes it (run the same failover with --to it) or rebuilds it.
[[nodiscard]] absl::StatusOr<FailoverReport> Failover(
    const ShardMap& configured, Catalog& catalog, std::string_view shard,
    const FailoverOptions& options);

// Whether a statement that failed with `status` surely never reached the
// server (it failed to connect, or its connection was found broken before
// it was sent), so that running it again cannot run it twice. False for
// everything else, including a connection lost while it may have run.
bool NeverSent(const absl::Status& status);

// `current` (a replica's primary_conninfo) with the host, hostaddr and port
// of libpq connection string `new_primary`; `new_primary` itself when
// `current` is empty or unparsable. Keywords are kept in order, values
// quoted as libpq requires.
std::string RepointConninfo(std::string_view current,
                            std::string_view new_primary);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_FAILOVER_H_
