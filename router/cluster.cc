#include "shardkit/cluster.h"

#include <thread>
#include <utility>

#include "absl/memory/memory.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "router/executor.h"
#include "router/failover.h"
#include "router/health.h"
#include "router/live_map.h"
#include "router/move_guard.h"
#include "router/pool.h"
#include "router/read_balancer.h"
#include "router/router.h"
#include "router/stream.h"
#include "router/transaction.h"

namespace shardkit {
namespace {

internal::ExecOptions OptionsOf(const Config& config,
                                internal::ConnectionPools* pools) {
  internal::ExecOptions options;
  options.connect_timeout = config.timeouts.connect;
  options.statement_timeout = config.timeouts.statement;
  options.pools = pools;
  return options;
}

constexpr std::string_view kPrimaryHint = "/* shardkit:primary */";

// Whether the statement may read from replicas (see Cluster::Execute).
bool MayReadReplicas(const internal::RoutingPlan& routing, std::string_view sql,
                     const ExecuteOptions& execute) {
  return !execute.primary && routing.kind == internal::StatementKind::kSelect &&
         !routing.writes && !routing.needs_primary &&
         sql.find(kPrimaryHint) == std::string_view::npos;
}

using ReplicaRef = std::pair<ShardId, size_t>;

// Points each task without a session at a replica of its shard, where one
// is usable (and, with `written`, has replayed the session's writes);
// returns the replicas chosen.
std::vector<ReplicaRef> PlaceReads(internal::ReadBalancer& reads,
                                   std::vector<internal::ShardTask>& tasks,
                                   const WritePositions* written) {
  std::vector<ReplicaRef> used;
  for (internal::ShardTask& task : tasks) {
    if (task.session != nullptr) continue;
    std::optional<internal::ReadBalancer::Choice> replica = reads.Choose(
        task.shard, written != nullptr ? written->Of(task.shard)
                                       : std::nullopt);
    if (!replica) continue;
    task.dsn = std::move(replica->dsn);
    used.emplace_back(task.shard, replica->index);
  }
  return used;
}

// Records in `written` the WAL position of the primaries of the shards
// `tasks` wrote. A failure only costs freshness: the position stays the
// older one, so reads may still go to replicas that lack this write.
void RecordWrites(const std::vector<internal::ShardTask>& tasks,
                  const internal::ExecOptions& options,
                  WritePositions& written) {
  std::vector<internal::ShardTask> asks;
  for (const internal::ShardTask& task : tasks) {
    internal::ShardTask ask;
    ask.shard = task.shard;
    ask.shard_name = task.shard_name;
    ask.dsn = task.dsn;
    ask.sql = "SELECT pg_current_wal_insert_lsn()::text";
    asks.push_back(std::move(ask));
  }
  std::vector<internal::TaskOutcome> done = internal::RunOnShards(asks, options);
  for (size_t i = 0; i < done.size(); ++i) {
    if (!done[i].status.ok() || done[i].result.rows.empty() ||
        done[i].result.rows[0].empty() || !done[i].result.rows[0][0]) {
      continue;
    }
    std::optional<uint64_t> lsn = internal::ParseLsn(*done[i].result.rows[0][0]);
    if (lsn) written.Advance(asks[i].shard, *lsn);
  }
}

// RecordWrites once a transaction has committed. `written` must outlive
// the transaction.
internal::DistributedTransaction::OnCommit RecorderOf(
    const internal::ExecOptions& options, WritePositions& written) {
  return [options, &written](const std::vector<internal::ShardTask>& tasks) {
    RecordWrites(tasks, options, written);
  };
}

// A statement could not connect to the primary of shard `shard` of `map`:
// if a failover can replace it (a catalog, replicas), starts the monitor's
// probes at once and waits, at most as long as detecting the failure and
// promoting should take, for a live map in which another backend is the
// shard's primary. Returns that map, or nullptr.
std::shared_ptr<const ShardMap> AwaitNewPrimary(internal::LiveMap& live,
                                                internal::ReadBalancer* reads,
                                                const ShardMap& map,
                                                ShardId shard) {
  const Shard& before = map.shard(shard);
  if (live.catalog() == nullptr || reads == nullptr || before.replicas.empty()) {
    return nullptr;
  }
  reads->ProbeNow();
  const ReplicaSettings& settings = before.replica_settings;
  // Detection (see ReadBalancer), then the failover itself: a lease, a
  // probe, pg_promote and a publish take well under the allowance on a
  // healthy network.
  constexpr absl::Duration kPromoteAllowance = absl::Seconds(5);
  const absl::Time deadline =
      absl::Now() + settings.heartbeat_interval * settings.failure_threshold +
      kPromoteAllowance;
  for (uint64_t epoch = map.epoch() + 1; absl::Now() < deadline; ++epoch) {
    if (!live.AwaitEpoch(epoch, deadline - absl::Now()).ok()) return nullptr;
    std::shared_ptr<const ShardMap> now = live.current();
    if (shard < now->shards().size() && now->shard(shard).dsn != before.dsn) {
      return now;
    }
    epoch = now->epoch();
  }
  return nullptr;
}

bool IsStaleMap(const absl::Status& status) {
  return SqlStateOf(status) == internal::kStaleEpochSqlState;
}

// After a shard refused a statement routed by map epoch `stale`: the live
// map once it is newer (read from the catalog now, or awaited for up to
// `wait`). Fails with `refused`, saying why, when no newer map comes.
absl::StatusOr<std::shared_ptr<const ShardMap>> NewerMap(
    internal::LiveMap& live, uint64_t stale, const absl::Status& refused,
    absl::Duration wait) {
  absl::Status waited = live.AwaitEpoch(stale + 1, wait);
  if (!waited.ok()) {
    absl::Status status(
        refused.code(),
        StrCat(refused.message(), "; no newer shard map than epoch ", stale,
               " could be read from the catalog (", waited.message(),
               "): check that the catalog is reachable, then retry"));
    status.SetPayload(ToAbsl(internal::kSqlStatePayloadUrl),
                      absl::Cord(ToAbsl(internal::kStaleEpochSqlState)));
    return status;
  }
  return live.current();
}

// The decision log of two-phase commit: the catalog, else the first shard.
std::shared_ptr<internal::DecisionLog> DecisionLogOf(const Config& config) {
  if (config.catalog) {
    return std::make_shared<internal::DecisionLog>("catalog", config.catalog->dsn);
  }
  const Shard& first = config.map.shard(0);
  return std::make_shared<internal::DecisionLog>(StrCat("shard ", first.name),
                                                 first.dsn);
}

}  // namespace

namespace internal {

// Recovery in the background: a pass at once, then one every interval,
// on connections of its own. Stop wakes it and waits for it to end: at
// most the rest of a pass under way, which is quick unless a shard is
// unreachable (then up to the connect timeout). A thread left running past
// the Cluster could still be inside libpq when the process exits.
class RecoveryLoop {
 public:
  static std::shared_ptr<RecoveryLoop> Start(
      const LiveMap* map, std::shared_ptr<DecisionLog> log,
      ExecOptions options, TransactionSettings settings) {
    auto loop = std::shared_ptr<RecoveryLoop>(new RecoveryLoop(
        map, std::move(log), options, settings));
    loop->thread_ = std::thread([raw = loop.get()] { raw->Run(); });
    return loop;
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    thread_.join();
  }

 private:
  RecoveryLoop(const LiveMap* map, std::shared_ptr<DecisionLog> log,
               ExecOptions options, TransactionSettings settings)
      : map_(map),
        log_(std::move(log)),
        options_(options),
        settings_(settings) {}

  void Run() {
    while (true) {
      RecoverPrepared(*map_->current(), *log_, options_,
                      settings_.recovery_grace)
          .IgnoreError();
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stop_), settings_.recovery_interval);
      if (stop_) return;
    }
  }

  const LiveMap* const map_;  // outlives the loop
  const std::shared_ptr<DecisionLog> log_;
  const ExecOptions options_;
  const TransactionSettings settings_;
  std::thread thread_;
  absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

DecisionLog& DecisionLogOf(const Cluster& cluster) {
  return *cluster.decisions_;
}

LiveMap& LiveMapOf(const Cluster& cluster) { return *cluster.live_; }

ReadBalancer* ReadBalancerOf(const Cluster& cluster) {
  return cluster.reads_.get();
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Open(Config config) {
  if (config.map.shards().empty()) {
    return absl::InvalidArgumentError(
        StrCat("configuration ", config.source,
                     " defines no shards; add at least one shard (see "
                     "docs/configuration.md)"));
  }
  if (config.timeouts.connect <= absl::ZeroDuration() ||
      config.timeouts.statement <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(StrCat(
        "configuration ", config.source,
        ": [timeouts] connect and statement must be positive durations, "
        "e.g. \"5s\""));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<internal::LiveMap> live,
                   internal::LiveMap::Open(config, OptionsOf(config, nullptr)));
  // The constructor is private, so make_unique cannot reach it.
  return absl::WrapUnique(new Cluster(std::move(config), std::move(live)));
}

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::OpenFile(
    const std::string& path) {
  ASSIGN_OR_RETURN(Config config, LoadConfig(path));
  return Open(std::move(config));
}

Cluster::Cluster(Config config, std::unique_ptr<internal::LiveMap> live)
    : config_(std::move(config)),
      router_(std::make_unique<internal::Router>()),
      pools_(std::make_unique<internal::ConnectionPools>(config_.pool)),
      decisions_(DecisionLogOf(config_)),
      live_(std::move(live)) {
  if (config_.transactions.recover_in_background) {
    recovery_ = internal::RecoveryLoop::Start(
        live_.get(), decisions_, OptionsOf(config_, nullptr),
        config_.transactions);
  }
  internal::ProbeOptions probe;
  probe.connect_timeout = config_.timeouts.connect;
  probe.query_timeout = config_.timeouts.connect;
  internal::ReadBalancer::PrimaryDownHandler failover;
  if (live_->catalog() != nullptr) {
    failover = [this, probe](ShardId shard, uint64_t epoch) {
      internal::FailoverOptions options;
      options.mode = internal::FailoverMode::kAutomatic;
      options.expected_epoch = epoch;
      options.probe = probe;
      const std::shared_ptr<const ShardMap> map = live_->current();
      if (shard >= map->shards().size()) return;
      // Whoever wins, this process must route by the new map at once; a
      // failover that could not be done is tried again by the next round.
      internal::Failover(live_->configured(), *live_->catalog(),
                         map->shard(shard).name, options)
          .IgnoreError();
      live_->Refresh().IgnoreError();
    };
  }
  reads_ = internal::ReadBalancer::Start(live_->current(), probe,
                                         std::move(failover));
  if (reads_ != nullptr) live_->AddListener(reads_->Follower());
}

std::shared_ptr<const ShardMap> Cluster::map() const {
  return live_->current();
}

Cluster::~Cluster() {
  reads_.reset();
  if (recovery_ != nullptr) recovery_->Stop();
}

std::vector<ShardOutcome> Cluster::ExecuteOnAllShards(
    std::string_view sql) const {
  const std::shared_ptr<const ShardMap> map = this->map();
  const std::vector<Shard>& shards = map->shards();
  if (sql.find_first_not_of(" \t\r\n\f\v;") == std::string_view::npos) {
    std::vector<ShardOutcome> refused;
    for (ShardId id = 0; id < shards.size(); ++id) {
      refused.push_back(ShardOutcome{
          id, shards[id].name,
          absl::InvalidArgumentError("empty SQL: give a statement to run"),
          Result{}});
    }
    return refused;
  }
  std::vector<ShardId> every_shard;
  for (ShardId id = 0; id < shards.size(); ++id) every_shard.push_back(id);
  if (absl::Status refused = internal::RefuseUnroutedWriteDuringMove(
          *map, sql, "ExecuteOnAllShards", every_shard);
      !refused.ok()) {
    std::vector<ShardOutcome> outcomes;
    for (ShardId id = 0; id < shards.size(); ++id) {
      outcomes.push_back(ShardOutcome{id, shards[id].name, refused, Result{}});
    }
    return outcomes;
  }
  std::vector<internal::ShardTask> tasks;
  tasks.reserve(shards.size());
  for (ShardId id = 0; id < shards.size(); ++id) {
    internal::ShardTask task;
    task.shard = id;
    task.shard_name = shards[id].name;
    task.dsn = shards[id].dsn;
    task.sql = std::string(sql);
    task.epoch = map->epoch();
    tasks.push_back(std::move(task));
  }
  const internal::ExecOptions options = OptionsOf(config_, nullptr);

  std::vector<internal::TaskOutcome> done =
      internal::RunOnShards(tasks, options);
  std::vector<ShardOutcome> outcomes;
  outcomes.reserve(done.size());
  for (size_t i = 0; i < done.size(); ++i) {
    ShardOutcome outcome;
    outcome.shard = tasks[i].shard;
    outcome.shard_name = tasks[i].shard_name;
    outcome.status = std::move(done[i].status);
    if (outcome.status.ok()) {
      outcome.result = std::move(done[i].result);
      outcome.result.shards = {outcome.shard};
    }
    outcomes.push_back(std::move(outcome));
  }
  return outcomes;
}

}  // namespace shardkit

namespace shardkit {

absl::StatusOr<Result> Cluster::Execute(std::string_view sql,
                                        const std::vector<Param>& params) const {
  return Execute(sql, params, ExecuteOptions{});
}

absl::StatusOr<Result> Cluster::Execute(std::string_view sql,
                                        const std::vector<Param>& params,
                                        const ExecuteOptions& execute) const {
  std::shared_ptr<const ShardMap> map = this->map();
  const internal::ExecOptions options = OptionsOf(config_, pools_.get());
  // A shard fenced for a move refuses a statement routed by an older map
  // before it changes anything (SQLSTATE SK001, from a BEFORE ... FOR EACH
  // STATEMENT trigger). The statement then runs again by the newer map,
  // unless a part of it may have run elsewhere outside a transaction.
  for (int attempt = 1;; ++attempt) {
    bool retryable = false;
    absl::StatusOr<Result> result =
        ExecuteRouted(map, sql, params, execute, options, retryable);
    if (result.ok() || !IsStaleMap(result.status()) || !retryable ||
        attempt == internal::kStaleMapAttempts) {
      return result;
    }
    ASSIGN_OR_RETURN(map, NewerMap(*live_, map->epoch(), result.status(),
                                   config_.timeouts.connect));
  }
}

absl::StatusOr<Result> Cluster::ExecuteRouted(
    const std::shared_ptr<const ShardMap>& map, std::string_view sql,
    const std::vector<Param>& params, const ExecuteOptions& execute,
    const internal::ExecOptions& options, bool& retryable) const {
  ASSIGN_OR_RETURN(internal::Router::Prepared prepared,
                   router_->Prepare(map, sql, params));
  if (reads_ != nullptr && MayReadReplicas(*prepared.routing, sql, execute)) {
    internal::Router::Prepared on_replicas = prepared;
    const std::vector<ReplicaRef> used =
        PlaceReads(*reads_, on_replicas.tasks, execute.read_your_writes);
    if (!used.empty()) {
      absl::StatusOr<Result> result =
          router_->Run(on_replicas, params, options);
      if (result.ok() ||
          result.status().code() != absl::StatusCode::kUnavailable) {
        return result;
      }
      // Which of them failed the status does not say: out with all, until
      // the monitor, woken now, finds them up again.
      for (const auto& [shard, replica] : used) {
        reads_->MarkFailed(shard, replica);
      }
    }
  }
  // A write reaching the source of a move in dual-write is also applied on
  // the destination: in a distributed transaction, even on one shard.
  if (!prepared.routing->writes ||
      (prepared.tasks.size() < 2 && prepared.dual == nullptr)) {
    // One shard's statement refused by its fence did nothing; parts that
    // ran on other shards outside a transaction would run twice.
    retryable = prepared.tasks.size() == 1;
    absl::StatusOr<Result> result = router_->Run(prepared, params, options);
    // A statement for one shard whose primary could not even be connected
    // to never ran: once a failover has put another primary in its place,
    // it runs there, once.
    if (!result.ok() && prepared.tasks.size() == 1 &&
        prepared.tasks[0].session == nullptr &&
        internal::NeverSent(result.status())) {
      if (std::shared_ptr<const ShardMap> next = AwaitNewPrimary(
              *live_, reads_.get(), *map, prepared.tasks[0].shard)) {
        // From the start by the newer map: it may route the statement to
        // several shards, or have a move dual-write it (which a plain Run
        // would not apply on the destination).
        return ExecuteRouted(next, sql, params, execute, options, retryable);
      }
    }
    if (result.ok() && prepared.routing->writes &&
        execute.read_your_writes != nullptr) {
      RecordWrites(prepared.tasks, options, *execute.read_your_writes);
    }
    return result;
  }
  // A write to several shards: atomic, as a transaction of its own.
  internal::DistributedTransaction txn(*router_, map, options, *decisions_);
  txn.set_single_statement();
  // Through the transaction, so that a dual-write's destination counts too.
  if (execute.read_your_writes != nullptr) {
    txn.set_on_commit(RecorderOf(options, *execute.read_your_writes));
  }
  absl::StatusOr<Result> result = txn.Execute(prepared, params);
  if (!result.ok()) {
    txn.Rollback().IgnoreError();
    retryable = true;  // rolled back everywhere
    if (SqlStateOf(result.status()) == "25001") {
      retryable = false;
      // PostgreSQL runs it only outside a transaction block (CREATE INDEX
      // CONCURRENTLY, ...): as PostgreSQL itself would, on each shard on
      // its own.
      return router_->Run(prepared, params, options);
    }
    return result;
  }
  absl::Status committed = txn.Commit();
  if (!committed.ok()) {
    // Refused for a stale map before any decision (a statement the
    // dual-write deferred to the commit): rolled back, so it may run again.
    retryable = IsStaleMap(committed);
    return committed;
  }
  return result;
}

std::optional<uint64_t> WritePositions::Of(ShardId shard) const {
  absl::MutexLock lock(&mu_);
  return shard < lsn_.size() ? lsn_[shard] : std::nullopt;
}

void WritePositions::Advance(ShardId shard, uint64_t lsn) {
  absl::MutexLock lock(&mu_);
  if (shard >= lsn_.size()) lsn_.resize(shard + 1);
  if (!lsn_[shard] || *lsn_[shard] < lsn) lsn_[shard] = lsn;
}

absl::StatusOr<std::unique_ptr<Transaction>> Cluster::Begin() const {
  return Begin(TransactionOptions{});
}

absl::StatusOr<std::unique_ptr<Transaction>> Cluster::Begin(
    const TransactionOptions& options) const {
  const internal::ExecOptions exec = OptionsOf(config_, pools_.get());
  std::shared_ptr<const ShardMap> map = this->map();
  auto txn = std::make_unique<internal::DistributedTransaction>(
      *router_, std::move(map), exec, *decisions_);
  // A fence goes up just before its map is published (a move's cutover):
  // the statement the transaction replays, or the application's retry of
  // the transaction, is routed by that map, as Execute's retry is, rather
  // than refused again.
  txn->set_newer_map(
      [live = live_.get(), timeout = config_.timeouts.connect](
          uint64_t stale, const absl::Status& refused,
          bool wait) -> absl::StatusOr<std::shared_ptr<const ShardMap>> {
        if (!wait) {
          // The transaction still holds locks: the map as this process
          // knows it, nothing read or awaited.
          std::shared_ptr<const ShardMap> now = live->current();
          if (now->epoch() > stale) return now;
          return refused;
        }
        return NewerMap(*live, stale, refused, timeout);
      });
  if (options.read_your_writes != nullptr) {
    txn->set_on_commit(RecorderOf(exec, *options.read_your_writes));
  }
  return std::make_unique<Transaction>(std::move(txn));
}

absl::StatusOr<RecoveryReport> Cluster::Recover() const {
  return internal::RecoverPrepared(*map(), *decisions_,
                                   OptionsOf(config_, nullptr),
                                   config_.transactions.recovery_grace);
}

absl::StatusOr<RowStream> Cluster::Stream(
    std::string_view sql, const std::vector<Param>& params) const {
  return Stream(sql, params, ExecuteOptions{});
}

absl::StatusOr<RowStream> Cluster::Stream(
    std::string_view sql, const std::vector<Param>& params,
    const ExecuteOptions& execute) const {
  internal::StreamOptions options;
  options.exec = OptionsOf(config_, pools_.get());
  const std::shared_ptr<const ShardMap> map = this->map();
  if (reads_ == nullptr || execute.primary ||
      sql.find(kPrimaryHint) != std::string_view::npos) {
    return internal::OpenStream(*router_, map, sql, params, options);
  }
  // The stream keeps its options: the callback must not outlive what it
  // captures.
  auto used = std::make_shared<std::vector<ReplicaRef>>();
  options.place_reads = [reads = reads_.get(), used,
                         written = execute.read_your_writes](
                            std::vector<internal::ShardTask>& tasks) {
    *used = PlaceReads(*reads, tasks, written);
  };
  absl::StatusOr<RowStream> stream =
      internal::OpenStream(*router_, map, sql, params, options);
  if (stream.ok() || used->empty() ||
      stream.status().code() != absl::StatusCode::kUnavailable) {
    return stream;
  }
  for (const auto& [shard, replica] : *used) reads_->MarkFailed(shard, replica);
  options.place_reads = nullptr;
  return internal::OpenStream(*router_, map, sql, params, options);
}

absl::StatusOr<Result> Cluster::ExecuteOnShardOf(
    std::string_view table, const Key& key, std::string_view sql,
    const std::vector<Param>& params) const {
  const std::shared_ptr<const ShardMap> map = this->map();
  ASSIGN_OR_RETURN(Placement where, map->Place(table, key));
  RETURN_IF_ERROR(internal::RefuseUnroutedWriteDuringMove(
      *map, sql, "ExecuteOnShardOf", {where.shard}));
  internal::ShardTask task;
  task.shard = where.shard;
  task.shard_name = map->shard(where.shard).name;
  task.dsn = map->shard(where.shard).dsn;
  task.sql = std::string(sql);
  task.params = params;
  task.epoch = map->epoch();
  std::vector<internal::TaskOutcome> done =
      internal::RunOnShards({task}, OptionsOf(config_, pools_.get()));
  if (internal::NeverSent(done[0].status)) {
    // As in Execute: it never ran, so it may run on the new primary.
    if (std::shared_ptr<const ShardMap> next =
            AwaitNewPrimary(*live_, reads_.get(), *map, where.shard)) {
      task.dsn = next->shard(where.shard).dsn;
      done = internal::RunOnShards({task}, OptionsOf(config_, pools_.get()));
    }
  }
  RETURN_IF_ERROR(done[0].status);
  done[0].result.shards = {where.shard};
  return std::move(done[0].result);
}

}  // namespace shardkit
