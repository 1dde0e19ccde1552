#include "router/catalog.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <random>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {

Catalog::Catalog(CatalogSettings settings, ExecOptions options)
    : settings_(std::move(settings)), options_(options) {}

absl::StatusOr<Result> Catalog::Run(
    std::string sql, std::vector<std::optional<std::string>> params) {
  ShardTask task;
  task.shard_name = "catalog";
  task.dsn = settings_.dsn;
  task.sql = std::move(sql);
  task.params = std::move(params);
  ExecOptions options = options_;
  options.pools = nullptr;
  return RunTask(task, options);
}

absl::Status Catalog::EnsureTables(std::string_view what, int64_t lock_key,
                                   std::string_view ddl) {
  {
    absl::MutexLock lock(&mu_);
    if (created_.contains(ToAbsl(what))) return absl::OkStatus();
  }
  // The advisory lock serializes processes creating them at once (IF NOT
  // EXISTS alone can still collide on PostgreSQL's unique indexes).
  absl::Status created =
      Run(StrCat("BEGIN; SELECT pg_advisory_xact_lock(", lock_key,
                 "); CREATE SCHEMA IF NOT EXISTS shardkit; ", ddl, "; COMMIT"))
          .status();
  if (!created.ok()) {
    return absl::Status(created.code(),
                        StrCat("cannot create ", what, " in the catalog: ",
                               created.message()));
  }
  absl::MutexLock lock(&mu_);
  created_.insert(std::string(what));
  return absl::OkStatus();
}

absl::Status Catalog::EnsureSchema() {
  return EnsureTables(
      "shardkit's tables", 7105846953277306881,
      "CREATE TABLE IF NOT EXISTS shardkit.live_maps ("
      "epoch int8 PRIMARY KEY CHECK (epoch > 0), "
      "state text NOT NULL, reason text NOT NULL, "
      "written_at timestamptz NOT NULL DEFAULT now()); "
      "CREATE TABLE IF NOT EXISTS shardkit.leases ("
      "name text PRIMARY KEY, holder text NOT NULL, "
      "expires_at timestamptz NOT NULL)");
}

absl::StatusOr<std::optional<LiveState>> Catalog::Latest() {
  RETURN_IF_ERROR(EnsureSchema());
  ASSIGN_OR_RETURN(Result result,
                   Run("SELECT state FROM shardkit.live_maps "
                       "ORDER BY epoch DESC LIMIT 1"));
  if (result.rows.empty() || !result.rows[0][0]) {
    return std::optional<LiveState>();
  }
  ASSIGN_OR_RETURN(LiveState state, ParseLiveState(*result.rows[0][0]));
  return std::optional<LiveState>(std::move(state));
}

absl::StatusOr<uint64_t> Catalog::LatestEpoch() {
  RETURN_IF_ERROR(EnsureSchema());
  ASSIGN_OR_RETURN(Result result,
                   Run("SELECT coalesce(max(epoch), 0) FROM shardkit.live_maps"));
  uint64_t epoch = 0;
  if (result.rows.empty() || !result.rows[0][0] ||
      !absl::SimpleAtoi(*result.rows[0][0], &epoch)) {
    return absl::InternalError("catalog: unreadable epoch");
  }
  return epoch;
}

absl::Status Catalog::Publish(const LiveState& next, std::string_view reason) {
  RETURN_IF_ERROR(EnsureSchema());
  // The INSERT writes nothing unless the current epoch is next - 1 (or
  // there is none yet); the primary key stops a concurrent writer of the
  // same epoch.
  const std::string epoch = StrCat(next.epoch);
  absl::StatusOr<Result> result =
      Run(StrCat("WITH written AS (INSERT INTO shardkit.live_maps "
                 "(epoch, state, reason) SELECT $1::int8, $2, $3 "
                 "WHERE coalesce((SELECT max(epoch) FROM shardkit.live_maps), "
                 "$1::int8 - 1) = $1::int8 - 1 RETURNING epoch) "
                 "SELECT pg_notify('", kLiveMapChannel,
                 "', epoch::text) FROM written"),
          {epoch, SerializeLiveState(next), std::string(reason)});
  if (!result.ok()) {
    if (SqlStateOf(result.status()) == "23505") {
      return absl::AbortedError(StrCat(
          "catalog: another process wrote live map epoch ", next.epoch,
          " first; read it again and retry"));
    }
    return result.status();
  }
  if (result->rows.empty()) {
    return absl::AbortedError(StrCat(
        "catalog: the live map is no longer at epoch ", next.epoch - 1,
        "; read it again and retry"));
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Catalog::TryLease(std::string_view name,
                                       std::string_view holder,
                                       absl::Duration ttl) {
  RETURN_IF_ERROR(EnsureSchema());
  ASSIGN_OR_RETURN(
      Result result,
      Run("INSERT INTO shardkit.leases AS l (name, holder, expires_at) "
          "VALUES ($1, $2, now() + make_interval(secs => $3::float8)) "
          "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, "
          "expires_at = EXCLUDED.expires_at "
          "WHERE l.holder = EXCLUDED.holder OR l.expires_at < now() "
          "RETURNING holder",
          {std::string(name), std::string(holder),
           absl::StrFormat("%.3f", absl::ToDoubleSeconds(ttl))}));
  if (!result.rows.empty()) return true;
  // A holder that died on this host (a mover killed a moment ago) would
  // keep its lease until it expires: take it over at once, if it is still
  // that holder's.
  ASSIGN_OR_RETURN(Result current,
                   Run("SELECT holder FROM shardkit.leases WHERE name = $1",
                       {std::string(name)}));
  if (current.rows.empty() || !current.rows[0][0] ||
      !HolderIsDeadProcessOfThisHost(*current.rows[0][0])) {
    return false;
  }
  ASSIGN_OR_RETURN(
      Result taken,
      Run("UPDATE shardkit.leases SET holder = $2, expires_at = now() + "
          "make_interval(secs => $3::float8) WHERE name = $1 AND holder = $4 "
          "RETURNING holder",
          {std::string(name), std::string(holder),
           absl::StrFormat("%.3f", absl::ToDoubleSeconds(ttl)),
           *current.rows[0][0]}));
  return !taken.rows.empty();
}

absl::Status Catalog::ReleaseLease(std::string_view name,
                                   std::string_view holder) {
  RETURN_IF_ERROR(EnsureSchema());
  return Run("DELETE FROM shardkit.leases WHERE name = $1 AND holder = $2",
             {std::string(name), std::string(holder)})
      .status();
}

std::string ProcessIdentity() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  std::random_device rd;
  return absl::StrFormat("%s:%d:%08x", host, static_cast<int>(getpid()), rd());
}

bool HolderIsDeadProcessOfThisHost(std::string_view holder) {
  // host:pid:random, as ProcessIdentity makes it (a host name has no ':').
  const std::vector<absl::string_view> parts =
      absl::StrSplit(ToAbsl(holder), ':');
  if (parts.size() != 3) return false;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  int pid = 0;
  if (parts[0] != absl::string_view(host) || !absl::SimpleAtoi(parts[1], &pid) ||
      pid <= 0 || pid == getpid()) {
    return false;
  }
  return kill(pid, 0) != 0 && errno == ESRCH;
}

}  // namespace shardkit::internal
