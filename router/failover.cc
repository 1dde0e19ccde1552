#include "router/failover.h"

#include <libpq-fe.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "config/live_state.h"
#include "router/executor.h"

namespace shardkit::internal {
namespace {

// A shard's backends as the live map has them, with their names.
struct ShardView {
  ShardId id = 0;
  const Shard* shard = nullptr;
  std::string primary_name;  // "primary" or the promoted replica's name
};

ExecOptions CommandOptions(const ProbeOptions& probe) {
  ExecOptions options;
  options.connect_timeout = probe.connect_timeout;
  options.statement_timeout = probe.query_timeout;
  return options;
}

absl::StatusOr<Result> RunOn(const std::string& label, const std::string& dsn,
                             std::string sql, const ExecOptions& options,
                             std::vector<std::optional<std::string>> params = {}) {
  ShardTask task;
  task.shard_name = label;
  task.dsn = dsn;
  task.sql = std::move(sql);
  task.params = std::move(params);
  return RunTask(task, options);
}

std::optional<std::string> FirstCell(const Result& result) {
  if (result.rows.empty() || result.rows[0].empty()) return std::nullopt;
  return result.rows[0][0];
}

std::string LeaseName(std::string_view shard) {
  return StrCat("failover/", shard);
}

// Probes the primary and replicas of `view` at once; the primary first.
std::vector<BackendHealth> ProbeShard(const ShardView& view,
                                      const ProbeOptions& options) {
  std::vector<ProbeTarget> targets;
  targets.push_back(ProbeTarget{view.id, view.shard->name, view.primary_name,
                                true, view.shard->dsn});
  for (const Backend& replica : view.shard->replicas) {
    targets.push_back(
        ProbeTarget{view.id, view.shard->name, replica.name, false, replica.dsn});
  }
  std::vector<BackendHealth> health = ProbeBackends(targets, options);
  std::vector<BackendHealth*> all;
  for (BackendHealth& b : health) all.push_back(&b);
  ComputeReplicaLag(all);
  return health;
}

// The one most worth promoting: received the most WAL (it will replay all
// of it before it ends recovery), then replayed the most.
const BackendHealth* MostAdvanced(const std::vector<BackendHealth>& replicas) {
  const BackendHealth* best = nullptr;
  auto key = [](const BackendHealth& b) {
    return std::make_pair(b.receive_lsn.value_or(0), b.lsn.value_or(0));
  };
  for (const BackendHealth& b : replicas) {
    if (!b.up() || b.role != BackendRole::kReplica) continue;
    if (best == nullptr || key(b) > key(*best)) best = &b;
  }
  return best;
}

absl::StatusOr<const BackendHealth*> ChooseTarget(
    const ShardView& view, const std::vector<BackendHealth>& health,
    const FailoverOptions& options, bool primary_up) {
  std::vector<BackendHealth> replicas(health.begin() + 1, health.end());
  const std::string& shard = view.shard->name;
  if (!options.target) {
    const BackendHealth* best = MostAdvanced(replicas);
    if (best == nullptr) {
      return absl::FailedPreconditionError(StrCat(
          "shard ", shard, " has no replica up and in recovery to promote",
          replicas.empty() ? " (it lists none)" : "",
          "; start one (`shardctl health` shows their state)"));
    }
    return &health[1 + (best - replicas.data())];
  }
  std::vector<std::string> names;
  for (size_t i = 1; i < health.size(); ++i) {
    const BackendHealth& b = health[i];
    names.push_back(b.target.backend);
    if (b.target.backend != *options.target) continue;
    if (!b.up()) {
      return absl::FailedPreconditionError(StrCat(
          "cannot promote replica ", b.target.backend, " of shard ", shard,
          ": it is down (", b.status.message(),
          "); start it, or choose another replica with --to"));
    }
    if (b.role != BackendRole::kReplica) {
      return absl::FailedPreconditionError(StrCat(
          "cannot promote replica ", b.target.backend, " of shard ", shard,
          ": it is not in recovery (already promoted?); it cannot become "
          "the shard's primary without losing the shard's history: rebuild "
          "it, or choose another replica with --to"));
    }
    const absl::Duration max_lag = view.shard->replica_settings.max_lag;
    if (primary_up && (!b.lag || *b.lag > max_lag)) {
      return absl::FailedPreconditionError(StrCat(
          "cannot promote replica ", b.target.backend, " of shard ", shard,
          ": it lags ",
          b.lag ? absl::FormatDuration(*b.lag) : std::string("an unknown time"),
          " behind the primary (max_lag ", absl::FormatDuration(max_lag),
          "); promoting it would lose those writes: wait for it to catch "
          "up, use `shardctl switchover` (which waits), or choose another "
          "replica with --to"));
    }
    return &b;
  }
  if (*options.target == view.primary_name) {
    return absl::FailedPreconditionError(
        StrCat("backend ", *options.target, " is already the primary of shard ",
               shard, "; name one of its replicas with --to"));
  }
  return absl::NotFoundError(StrCat(
      "shard ", shard, " has no replica named '", *options.target,
      "' in the live map (its replicas: ",
      names.empty() ? std::string("none") : absl::StrJoin(names, ", "),
      "; retired backends cannot be promoted)"));
}

constexpr char kFenceSql[] =
    "ALTER SYSTEM SET default_transaction_read_only = on";
constexpr char kUnfenceSql[] = "ALTER SYSTEM RESET default_transaction_read_only";
constexpr char kReloadSql[] = "SELECT pg_reload_conf()";
// Sessions opened before the reload keep writing: end them (not ours).
constexpr char kTerminateSql[] =
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()";

// Makes the old primary refuse new writes and ends its sessions.
absl::Status Fence(const std::string& label, const std::string& dsn,
                   const ExecOptions& options) {
  RETURN_IF_ERROR(RunOn(label, dsn, kFenceSql, options).status());
  RETURN_IF_ERROR(RunOn(label, dsn, kReloadSql, options).status());
  return RunOn(label, dsn, kTerminateSql, options).status();
}

void Unfence(const std::string& label, const std::string& dsn,
             const ExecOptions& options) {
  if (RunOn(label, dsn, kUnfenceSql, options).ok()) {
    RunOn(label, dsn, kReloadSql, options).IgnoreError();
  }
}

// Waits until `dsn` has replayed WAL up to `lsn`.
absl::Status AwaitReplay(const std::string& label, const std::string& dsn,
                         uint64_t lsn, absl::Duration timeout,
                         const ExecOptions& options) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    ASSIGN_OR_RETURN(Result result,
                     RunOn(label, dsn, "SELECT pg_last_wal_replay_lsn()::text",
                           options));
    std::optional<std::string> text = FirstCell(result);
    std::optional<uint64_t> replayed = text ? ParseLsn(*text) : std::nullopt;
    if (replayed && *replayed >= lsn) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(StrCat(
          "shard ", label, " did not replay the old primary's WAL up to ",
          FormatLsn(lsn), " within ", absl::FormatDuration(timeout),
          " (it is at ", text.value_or("an unknown position"),
          "); the old primary takes writes again; check the replica's "
          "replication (`shardctl health`) and retry"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// The live state with the failover recorded: `target` primary of `shard`,
// the old primary retired with those retired before.
LiveState WithFailover(LiveState state, const std::string& shard,
                       const std::string& old_primary,
                       const std::string& target) {
  LiveState::ShardChange& change = state.shards[shard];
  change.primary = target;
  if (std::find(change.retired.begin(), change.retired.end(), old_primary) ==
      change.retired.end()) {
    change.retired.push_back(old_primary);
  }
  ++state.epoch;
  return state;
}

std::string PrimaryNameIn(const LiveState& state, const std::string& shard) {
  auto it = state.shards.find(shard);
  return it == state.shards.end() ? "primary" : it->second.primary;
}

// Publishes the failover, rebased on newer states written meanwhile by
// other changes (moves); fails if one of them changed this shard's
// primary.
absl::StatusOr<uint64_t> PublishFailover(Catalog& catalog,
                                         const ShardMap& configured,
                                         LiveState seen,
                                         const std::string& shard,
                                         const std::string& old_primary,
                                         const std::string& target,
                                         std::string_view reason) {
  constexpr int kAttempts = 5;
  for (int attempt = 0;; ++attempt) {
    LiveState next = WithFailover(seen, shard, old_primary, target);
    absl::Status published = catalog.Publish(next, reason);
    if (published.ok()) return next.epoch;
    if (published.code() != absl::StatusCode::kAborted ||
        attempt + 1 == kAttempts) {
      return published;
    }
    ASSIGN_OR_RETURN(std::optional<LiveState> latest, catalog.Latest());
    seen = latest ? *std::move(latest) : LiveStateOf(configured);
    if (PrimaryNameIn(seen, shard) != old_primary) {
      return absl::AbortedError(StrCat(
          "the primary of shard ", shard, " was changed to ",
          PrimaryNameIn(seen, shard), " by another process meanwhile"));
    }
  }
}

// Points `replica` at the new primary; returns why not on failure.
absl::Status Repoint(const std::string& label, const std::string& dsn,
                     const std::string& new_primary_dsn,
                     const ExecOptions& options) {
  ASSIGN_OR_RETURN(Result current,
                   RunOn(label, dsn, "SHOW primary_conninfo", options));
  const std::string conninfo =
      RepointConninfo(FirstCell(current).value_or(""), new_primary_dsn);
  // ALTER SYSTEM takes no parameters: a string literal, quotes doubled.
  std::string literal = "'";
  for (char c : conninfo) {
    literal += c;
    if (c == '\'') literal += c;
  }
  literal += "'";
  RETURN_IF_ERROR(
      RunOn(label, dsn, StrCat("ALTER SYSTEM SET primary_conninfo = ", literal),
            options)
          .status());
  return RunOn(label, dsn, kReloadSql, options).status();
}

std::string QuoteConninfoValue(std::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  out += "'";
  return out;
}

struct ConninfoDeleter {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using ConninfoPtr = std::unique_ptr<PQconninfoOption, ConninfoDeleter>;

ConninfoPtr ParseConninfo(std::string_view text) {
  const std::string terminated(text);
  char* error = nullptr;
  ConninfoPtr parsed(PQconninfoParse(terminated.c_str(), &error));
  if (error != nullptr) PQfreemem(error);
  return parsed;
}

bool IsAddressKeyword(std::string_view keyword) {
  return keyword == "host" || keyword == "hostaddr" || keyword == "port";
}

}  // namespace

std::string_view FailoverModeName(FailoverMode mode) {
  switch (mode) {
    case FailoverMode::kAutomatic:
      return "automatic";
    case FailoverMode::kManual:
      return "failover";
    case FailoverMode::kSwitchover:
      return "switchover";
  }
  return "failover";
}

bool NeverSent(const absl::Status& status) {
  // The executor's and ShardConnection's wording for these two cases
  // (router/shard_connection.cc): a connection that never opened, and one
  // found broken before the statement was written to it.
  return status.code() == absl::StatusCode::kUnavailable &&
         (absl::StrContains(status.message(), ") is unreachable: ") ||
          absl::StrContains(status.message(),
                            "the connection was lost before the statement "
                            "was sent"));
}

std::string RepointConninfo(std::string_view current,
                            std::string_view new_primary) {
  ConninfoPtr old_options = ParseConninfo(current);
  ConninfoPtr new_options = ParseConninfo(new_primary);
  if (current.empty() || old_options == nullptr || new_options == nullptr) {
    return std::string(new_primary);
  }
  std::vector<std::string> parts;
  for (PQconninfoOption* o = old_options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || IsAddressKeyword(o->keyword)) continue;
    parts.push_back(StrCat(o->keyword, "=", QuoteConninfoValue(o->val)));
  }
  for (PQconninfoOption* o = new_options.get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || !IsAddressKeyword(o->keyword)) continue;
    parts.push_back(StrCat(o->keyword, "=", QuoteConninfoValue(o->val)));
  }
  return absl::StrJoin(parts, " ");
}

absl::StatusOr<FailoverReport> Failover(const ShardMap& configured,
                                        Catalog& catalog,
                                        std::string_view shard_name,
                                        const FailoverOptions& options) {
  const std::string shard(shard_name);
  const std::string holder =
      options.holder.empty() ? ProcessIdentity() : options.holder;
  const std::string lease = LeaseName(shard);
  if (!configured.FindShard(shard)) {
    return absl::NotFoundError(
        StrCat("no shard named '", shard, "' in the configuration"));
  }
  ASSIGN_OR_RETURN(bool leased, catalog.TryLease(lease, holder, options.lease_ttl));
  if (!leased) {
    return absl::AbortedError(StrCat(
        "another process holds the lease '", lease,
        "' in the catalog (it is failing over shard ", shard,
        "); wait for it, then check `shardctl health`"));
  }
  absl::StatusOr<FailoverReport> report = [&]() -> absl::StatusOr<FailoverReport> {
    ASSIGN_OR_RETURN(std::optional<LiveState> latest, catalog.Latest());
    LiveState state = latest ? *std::move(latest) : LiveStateOf(configured);
    if (options.expected_epoch && state.epoch != *options.expected_epoch) {
      return absl::AbortedError(StrCat(
          "the live map moved from epoch ", *options.expected_epoch, " to ",
          state.epoch, " meanwhile; not failing over shard ", shard,
          " on a stale view"));
    }
    ASSIGN_OR_RETURN(ShardMap map, ApplyLiveState(configured, state));
    ShardView view;
    view.primary_name = PrimaryNameIn(state, shard);
    for (ShardId id = 0; id < map.shards().size(); ++id) {
      if (map.shard(id).name == shard) {
        view.id = id;
        view.shard = &map.shard(id);
      }
    }
    const ExecOptions exec = CommandOptions(options.probe);
    std::vector<BackendHealth> health = ProbeShard(view, options.probe);
    const BackendHealth& primary = health[0];
    const bool primary_up = primary.up() && primary.role == BackendRole::kPrimary;

    FailoverReport report;
    report.shard = shard;
    report.mode = options.mode;
    report.old_primary = view.primary_name;
    report.old_primary_up = primary.up();
    if (options.mode == FailoverMode::kAutomatic && primary.up()) {
      return absl::AbortedError(StrCat(
          "the primary of shard ", shard, " answers again; no failover"));
    }
    if (options.mode == FailoverMode::kSwitchover && !primary_up) {
      return absl::FailedPreconditionError(StrCat(
          "a switchover needs shard ", shard, "'s primary up, and it is ",
          primary.up() ? std::string("in recovery")
                       : StrCat("down (", primary.status.message(), ")"),
          "; use `shardctl failover` to promote a replica without it"));
    }
    ASSIGN_OR_RETURN(const BackendHealth* target,
                     ChooseTarget(view, health, options, primary_up));
    report.new_primary = target->target.backend;
    report.promoted_at_lsn = target->lsn;
    const std::string& target_dsn = target->target.dsn;
    const std::string target_label =
        StrCat(shard, " replica ", target->target.backend);

    if (options.mode == FailoverMode::kSwitchover) {
      RETURN_IF_ERROR(Fence(shard, view.shard->dsn, exec));
      report.old_primary_fenced = true;
      absl::StatusOr<Result> position =
          RunOn(shard, view.shard->dsn, "SELECT pg_current_wal_lsn()::text", exec);
      std::optional<uint64_t> lsn;
      if (position.ok()) {
        std::optional<std::string> text = FirstCell(*position);
        if (text) lsn = ParseLsn(*text);
      }
      absl::Status caught_up =
          lsn ? AwaitReplay(target_label, target_dsn, *lsn,
                            options.catch_up_timeout, exec)
              : absl::UnavailableError(StrCat(
                    "cannot read the WAL position of shard ", shard,
                    "'s primary: ",
                    position.ok() ? "no answer" : position.status().message()));
      if (!caught_up.ok()) {
        Unfence(shard, view.shard->dsn, exec);
        return caught_up;
      }
      report.promoted_at_lsn = lsn;
    } else if (primary.up()) {
      absl::Status fenced = Fence(shard, view.shard->dsn, exec);
      report.old_primary_fenced = fenced.ok();
      if (!fenced.ok()) {
        report.notes.push_back(StrCat(
            "the old primary answers but could not be made read-only (",
            fenced.message(), "): shut it down now"));
      }
    }

    ASSIGN_OR_RETURN(bool still_leased,
                     catalog.TryLease(lease, holder, options.lease_ttl));
    if (!still_leased) {
      if (report.old_primary_fenced) Unfence(shard, view.shard->dsn, exec);
      return absl::AbortedError(StrCat("lost the lease '", lease,
                                       "' before promoting; nothing promoted"));
    }
    ASSIGN_OR_RETURN(
        Result promoted,
        RunOn(target_label, target_dsn, "SELECT pg_promote(true, $1::int)", exec,
              {StrCat(std::max<int64_t>(
                  1, absl::ToInt64Seconds(options.promote_timeout)))}));
    if (FirstCell(promoted).value_or("f") != "t") {
      return absl::UnavailableError(StrCat(
          "replica ", target->target.backend, " of shard ", shard,
          " did not finish its promotion within ",
          absl::FormatDuration(options.promote_timeout),
          "; see its server log, then run `shardctl failover -c FILE ", shard,
          " --to ", target->target.backend, "` again"));
    }

    // Promoted: from here on, failing to publish leaves two primaries.
    const std::string reason =
        StrCat(FailoverModeName(options.mode), " of shard ", shard, ": ",
               view.primary_name, " -> ", target->target.backend, " by ",
               holder);
    absl::StatusOr<uint64_t> epoch =
        catalog.TryLease(lease, holder, options.lease_ttl).value_or(false)
            ? PublishFailover(catalog, configured, state, shard,
                              view.primary_name, target->target.backend, reason)
            : absl::AbortedError("the lease expired after promoting");
    if (!epoch.ok()) {
      return absl::InternalError(StrCat(
          "replica ", target->target.backend, " of shard ", shard,
          " was promoted but the live map could not record it (",
          epoch.status().message(),
          "); run `shardctl failover -c FILE ", shard, " --to ",
          target->target.backend, "` to record it, or rebuild it"));
    }
    report.epoch = *epoch;

    for (size_t i = 1; i < health.size(); ++i) {
      const BackendHealth& b = health[i];
      if (&b == target) continue;
      absl::Status repointed = Repoint(StrCat(shard, " replica ", b.target.backend),
                                       b.target.dsn, target_dsn, exec);
      if (repointed.ok()) {
        report.repointed.push_back(b.target.backend);
      } else {
        report.not_repointed.push_back(
            StrCat(b.target.backend, ": ", repointed.message()));
      }
    }
    if (!report.not_repointed.empty()) {
      report.notes.push_back(
          "replicas not repointed still follow the old primary: set their "
          "primary_conninfo to the new primary and reload them, or rebuild "
          "them (pg_basebackup from the new primary)");
    }
    if (report.old_primary_up) {
      report.notes.push_back(StrCat(
          "the old primary (", view.primary_name,
          ") is retired: shardkit never uses it again; shut it down, or "
          "rebuild it as a replica of ", target->target.backend));
    } else {
      report.notes.push_back(StrCat(
          "the old primary (", view.primary_name,
          ") is retired: if it comes back, shardkit does not use it; rebuild "
          "it as a replica of ", target->target.backend,
          " rather than starting it"));
    }
    return report;
  }();
  catalog.ReleaseLease(lease, holder).IgnoreError();
  return report;
}

}  // namespace shardkit::internal
