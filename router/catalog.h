// Internal: the [catalog] database, where the live map and leases live.
//
// Tables (schema `shardkit`, created on first use):
//
//   live_maps (epoch int8 PRIMARY KEY, state text, reason text, written_at)
//       One row per version of the live map: the LiveState (see
//       config/live_state.h) in its TOML form. The row with the highest
//       epoch is the current map; older rows are the history
//       (`shardctl map history`). A new version is written only as
//       epoch = current + 1, in the transaction that also NOTIFYs channel
//       `shardkit_map`: two writers racing for one epoch collide on the
//       primary key, and the loser learns it (kAborted) and starts over
//       from the newer map. So every change of the map is a
//       compare-and-swap on the epoch.
//   leases (name text PRIMARY KEY, holder text, expires_at timestamptz)
//       Who may act on something for a while (e.g. "failover/s1": the one
//       process allowed to promote a replica of s1). Taken or renewed by
//       its holder, or taken over once expired; times are the catalog
//       server's, so the processes' clocks do not matter.
//
// Thread-safety: thread-safe; each call uses a connection of its own.

#ifndef SHARDKIT_ROUTER_CATALOG_H_
#define SHARDKIT_ROUTER_CATALOG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "config/live_state.h"
#include "router/executor.h"
#include "shardkit/config.h"

namespace shardkit::internal {

// The NOTIFY channel a new live map is announced on (payload: its epoch).
inline constexpr std::string_view kLiveMapChannel = "shardkit_map";

class Catalog {
 public:
  // `options` bounds each call (connect and statement timeouts); its pools
  // are not used.
  Catalog(CatalogSettings settings, ExecOptions options);

  const std::string& dsn() const { return settings_.dsn; }

  // Creates the schema and tables if missing (idempotent; safe to race).
  absl::Status EnsureSchema() ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `ddl` (CREATE ... IF NOT EXISTS statements, in schema shardkit,
  // which it creates) once per Catalog for `what` ("the move journal": it
  // names them in errors), under advisory lock `lock_key` so that
  // processes creating them at once do not collide.
  absl::Status EnsureTables(std::string_view what, int64_t lock_key,
                            std::string_view ddl) ABSL_LOCKS_EXCLUDED(mu_);

  // The current live state, or nullopt when none was ever written (the
  // configuration's map is the live map).
  [[nodiscard]] absl::StatusOr<std::optional<LiveState>> Latest();

  // The current epoch; 0 when no live map was ever written.
  [[nodiscard]] absl::StatusOr<uint64_t> LatestEpoch();

  // Writes `next` as the new live map. REQUIRES: next.epoch is the current
  // epoch + 1 (1 + the configuration's epoch for the first). Fails with
  // kAborted when another process wrote that epoch first: read Latest()
  // and decide again.
  absl::Status Publish(const LiveState& next, std::string_view reason);

  // Takes lease `name` for `holder` until `ttl` from now, or renews it if
  // `holder` has it. Returns false when another holder has it unexpired,
  // unless that holder is a process of this host that has died
  // (HolderIsDeadProcessOfThisHost): its lease is taken over at once.
  [[nodiscard]] absl::StatusOr<bool> TryLease(std::string_view name,
                                              std::string_view holder,
                                              absl::Duration ttl);
  // Gives the lease up if `holder` has it.
  absl::Status ReleaseLease(std::string_view name, std::string_view holder);

  // Runs `sql` with `params` on the catalog (for the move journal and
  // other modules keeping state there).
  [[nodiscard]] absl::StatusOr<Result> Run(
      std::string sql, std::vector<std::optional<std::string>> params = {});

 private:
  const CatalogSettings settings_;
  const ExecOptions options_;
  absl::Mutex mu_;
  // The `what`s of EnsureTables done.
  absl::flat_hash_set<std::string> created_ ABSL_GUARDED_BY(mu_);
};

// A process-unique name for lease holders and logs: host name, process id
// and a random part.
std::string ProcessIdentity();

// Whether `holder`, a ProcessIdentity(), names a process of this host (by
// host name) that no longer runs. False for another host's process, for
// a name not made by ProcessIdentity, and for this process.
bool HolderIsDeadProcessOfThisHost(std::string_view holder);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_CATALOG_H_
