#include "router/transaction.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <numeric>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "router/failpoint.h"
#include "router/shard_connection.h"
#include "shardkit/cluster.h"

namespace shardkit::internal {
namespace {

constexpr char kGidPrefix[] = "shardkit_";

// Finished decisions deleted along with one new decision, at most.
constexpr size_t kForgetPerDecision = 64;

// What COMMIT PREPARED and ROLLBACK PREPARED answer for a prepared
// transaction that is gone: another session finished it.
constexpr char kNoSuchPrepared[] = "42704";
// And for one that another session (recovery, or its coordinator) is
// committing or rolling back at that very moment ("prepared transaction
// with identifier ... is busy", object_not_in_prerequisite_state; not
// 55006, object_in_use): neither finished nor refused, for that session
// may still fail and leave it prepared.
constexpr char kPreparedBusy[] = "55000";

// A prepared transaction found busy is asked again up to kBusyRetries
// times, after pauses doubling from kFirstBusyPause to kMaxBusyPause (1.3 s
// in all): another session's COMMIT PREPARED takes milliseconds, unless it
// waits for a synchronous standby.
constexpr int kBusyRetries = 10;
constexpr absl::Duration kFirstBusyPause = absl::Milliseconds(5);
constexpr absl::Duration kMaxBusyPause = absl::Milliseconds(250);

// 128 random bits as 32 hex digits: a transaction's id.
std::string NewTxid() {
  thread_local std::mt19937_64 random(std::random_device{}());
  char text[33];
  std::snprintf(text, sizeof(text), "%016" PRIx64 "%016" PRIx64, random(),
                random());
  return text;
}

std::string GidOf(const std::string& txid, ShardId shard) {
  return StrCat(kGidPrefix, txid, "_", shard);
}

// The txid in a gid made by GidOf, or nullopt for another name.
std::optional<std::string> TxidOf(std::string_view gid) {
  const std::string_view prefix = kGidPrefix;
  if (gid.substr(0, prefix.size()) != prefix) return std::nullopt;
  gid.remove_prefix(prefix.size());
  const size_t underscore = gid.find('_');
  if (underscore != 32) return std::nullopt;
  return std::string(gid.substr(0, underscore));
}

// `name` as a SQL string literal (names made here hold no quote, but a
// prepared transaction found on a shard might).
std::string Quoted(std::string_view name) {
  std::string out = "'";
  for (char c : name) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

absl::Status WithSqlState(absl::Status status, std::string_view sqlstate) {
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord(ToAbsl(sqlstate)));
  return status;
}

// A failed PREPARE TRANSACTION, with what to do when the shard does not
// allow prepared transactions.
absl::Status PrepareFailure(const absl::Status& status) {
  if (SqlStateOf(status) == "55000" &&
      status.message().find("prepared transactions are disabled") !=
          std::string_view::npos) {
    return WithSqlState(
        absl::FailedPreconditionError(StrCat(
            status.message(),
            "; the transaction wrote to several shards and was rolled back: "
            "atomic commit across shards needs two-phase commit, so set "
            "max_prepared_transactions in that shard's postgresql.conf (at "
            "least its max_connections) and restart it")),
        "55000");
  }
  // The SQLSTATE stays: a statement a dual-write deferred to the PREPARE's
  // round trip may have been refused for a stale map (SK001), which the
  // caller retries.
  absl::Status out(status.code(), StrCat(status.message(),
                                         "; the transaction was rolled back "
                                         "on every shard"));
  const std::optional<std::string> sqlstate = SqlStateOf(status);
  return sqlstate ? WithSqlState(std::move(out), *sqlstate) : out;
}

// Runs statements 0..n-1 of COMMIT or ROLLBACK PREPARED by `run` (given
// which to run, returns their statuses in that order), then again, after a
// pause, those that found their prepared transaction busy, until none does
// or kBusyRetries retries ran. Returns each statement's last status.
std::vector<absl::Status> FinishPrepared(
    size_t n, const std::function<std::vector<absl::Status>(
                  const std::vector<size_t>& which)>& run) {
  std::vector<size_t> which(n);
  std::iota(which.begin(), which.end(), size_t{0});
  std::vector<absl::Status> out(n);
  absl::Duration pause = kFirstBusyPause;
  for (int retry = 0;; ++retry) {
    std::vector<absl::Status> done = run(which);
    std::vector<size_t> busy;
    for (size_t k = 0; k < which.size(); ++k) {
      if (SqlStateOf(done[k]) == kPreparedBusy) busy.push_back(which[k]);
      out[which[k]] = std::move(done[k]);
    }
    if (busy.empty() || retry == kBusyRetries) return out;
    absl::SleepFor(pause);
    pause = std::min(pause * 2, kMaxBusyPause);
    which = std::move(busy);
  }
}

// The tasks that list, on each of `shards`, the prepared transactions
// whose names start as GidOf's, each with whether it is older than
// `grace`, oldest first.
std::vector<ShardTask> PreparedScans(const ShardMap& map,
                                     const std::vector<ShardId>& shards,
                                     absl::Duration grace) {
  std::vector<ShardTask> scans;
  for (ShardId id : shards) {
    ShardTask task;
    task.shard = id;
    task.shard_name = map.shard(id).name;
    task.dsn = map.shard(id).dsn;
    task.sql =
        "SELECT gid, now() - prepared > make_interval(secs => $1::float8) "
        "FROM pg_prepared_xacts WHERE database = current_database() AND "
        "gid LIKE 'shardkit\\_%' ORDER BY prepared";
    task.params = {StrCat(absl::ToDoubleSeconds(grace))};
    scans.push_back(std::move(task));
  }
  return scans;
}

}  // namespace

// --- DecisionLog -----------------------------------------------------------

DecisionLog::DecisionLog(std::string where, std::string dsn)
    : where_(std::move(where)), dsn_(std::move(dsn)) {}

ShardTask DecisionLog::Task(std::string sql, Params params) const {
  ShardTask task;
  task.shard_name = where_;
  task.dsn = dsn_;
  task.sql = std::move(sql);
  task.params = std::move(params);
  return task;
}

absl::Status DecisionLog::EnsureTable(const ExecOptions& options) {
  {
    absl::MutexLock lock(&mu_);
    if (table_ready_) return absl::OkStatus();
  }
  // The advisory lock serializes processes creating it at once (IF NOT
  // EXISTS alone can still collide on the catalog's unique indexes).
  absl::Status created =
      RunTask(Task("BEGIN; SELECT pg_advisory_xact_lock(7105846953277306880); "
               "CREATE SCHEMA IF NOT EXISTS shardkit; "
               "CREATE TABLE IF NOT EXISTS shardkit.commit_decisions ("
               "txid text PRIMARY KEY, "
               "outcome text NOT NULL CHECK (outcome IN ('commit', 'abort')), "
               "decided_at timestamptz NOT NULL DEFAULT now()); COMMIT",
               {}),
          options)
          .status();
  if (!created.ok()) {
    return absl::Status(
        created.code(),
        StrCat("cannot create the decision log of two-phase commit "
               "(shardkit.commit_decisions) in ",
               where_, ": ", created.message()));
  }
  absl::MutexLock lock(&mu_);
  table_ready_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::string> DecisionLog::Decide(const std::string& txid,
                                                std::string_view outcome,
                                                const ExecOptions& options) {
  RETURN_IF_ERROR(EnsureTable(options));
  constexpr char kInsert[] =
      "INSERT INTO shardkit.commit_decisions (txid, outcome) VALUES ($1, $2) "
      "ON CONFLICT (txid) DO NOTHING RETURNING outcome";
  // Finished decisions go in the same statement: no round trip, no commit
  // of their own.
  std::vector<std::string> finished = TakeFinished(kForgetPerDecision);
  ShardTask task =
      finished.empty()
          ? Task(kInsert, {txid, std::string(outcome)})
          : Task(StrCat("WITH finished AS (DELETE FROM "
                        "shardkit.commit_decisions WHERE txid = "
                        "ANY(string_to_array($3, ',')) AND outcome = "
                        "'commit') ",
                        kInsert),
                 {txid, std::string(outcome), absl::StrJoin(finished, ",")});
  absl::StatusOr<Result> inserted = RunTask(task, options);
  if (!inserted.ok()) {
    Requeue(std::move(finished));
    return inserted.status();
  }
  if (!inserted->rows.empty()) return std::string(outcome);
  // Recorded before ours: ON CONFLICT waited for it to commit, so a new
  // statement sees it.
  ASSIGN_OR_RETURN(Result found,
                   RunTask(Task("SELECT outcome FROM shardkit.commit_decisions "
                            "WHERE txid = $1",
                            {txid}),
                       options));
  if (found.rows.empty() || !found.rows[0][0]) {
    return absl::InternalError(StrCat("the decision of transaction ", txid,
                                      " in ", where_,
                                      " was recorded and then vanished"));
  }
  return *found.rows[0][0];
}

absl::StatusOr<absl::flat_hash_map<std::string, std::string>>
DecisionLog::Lookup(const std::vector<std::string>& txids,
                    const ExecOptions& options) {
  absl::flat_hash_map<std::string, std::string> out;
  if (txids.empty()) return out;
  RETURN_IF_ERROR(EnsureTable(options));
  ASSIGN_OR_RETURN(
      Result found,
      RunTask(Task("SELECT txid, outcome FROM shardkit.commit_decisions "
               "WHERE txid = ANY(string_to_array($1, ','))",
               {absl::StrJoin(txids, ",")}),
          options));
  for (const Row& row : found.rows) {
    if (row[0] && row[1]) out[*row[0]] = *row[1];
  }
  return out;
}

void DecisionLog::ForgetLater(const std::string& txid) {
  absl::MutexLock lock(&mu_);
  if (finished_.size() < kMaxQueued) finished_.push_back(txid);
}

std::vector<std::string> DecisionLog::TakeFinished(size_t limit) {
  absl::MutexLock lock(&mu_);
  const size_t n = std::min(limit, finished_.size());
  std::vector<std::string> out(finished_.end() - n, finished_.end());
  finished_.resize(finished_.size() - n);
  return out;
}

void DecisionLog::Requeue(std::vector<std::string> txids) {
  absl::MutexLock lock(&mu_);
  for (std::string& txid : txids) {
    if (finished_.size() >= kMaxQueued) break;
    finished_.push_back(std::move(txid));
  }
}

absl::StatusOr<std::string> DecisionLog::ForgetFinished(
    const ExecOptions& options) {
  std::vector<std::string> finished = TakeFinished(kMaxQueued);
  // Only a log that recorded decisions has any queued, and so the table.
  absl::StatusOr<Result> done = RunTask(
      finished.empty()
          ? Task("SELECT now()::text", {})
          : Task("WITH finished AS (DELETE FROM shardkit.commit_decisions "
                 "WHERE txid = ANY(string_to_array($1, ',')) AND outcome = "
                 "'commit') SELECT now()::text",
                 {absl::StrJoin(finished, ",")}),
      options);
  if (!done.ok()) {
    Requeue(std::move(finished));
    return done.status();
  }
  if (done->rows.empty() || !done->rows[0][0]) {
    return absl::InternalError(StrCat(where_, " did not tell its clock"));
  }
  return *done->rows[0][0];
}

absl::Status DecisionLog::Purge(const std::vector<std::string>& still_prepared,
                                const std::string& scanned,
                                const ExecOptions& options) {
  // Without the table (two-phase commit never ran here) there is nothing to
  // purge, and no reason to create it.
  return RunTask(Task("DELETE FROM shardkit.commit_decisions WHERE "
                      "(outcome = 'commit' AND decided_at < coalesce("
                      "$2::timestamptz - interval '1 minute', now() - "
                      "interval '1 hour') AND txid <> "
                      "ALL(string_to_array($1, ','))) OR "
                      "(outcome = 'abort' AND decided_at < now() - interval "
                      "'7 days')",
                      {absl::StrJoin(still_prepared, ","),
                       scanned.empty() ? std::nullopt
                                       : std::optional<std::string>(scanned)}),
                 options)
      .status();
}

// --- DistributedTransaction -----------------------------------------------

DistributedTransaction::DistributedTransaction(
    Router& router, std::shared_ptr<const ShardMap> map, ExecOptions options,
    DecisionLog& log)
    : router_(router), map_(std::move(map)), options_(options), log_(log) {}

DistributedTransaction::~DistributedTransaction() = default;

ShardTask DistributedTransaction::On(const Participant& p, std::string sql) {
  ShardTask task = p.base;
  task.sql = std::move(sql);
  return task;
}

ShardTask DistributedTransaction::WithPending(Participant& p,
                                              Statement statement) {
  std::vector<Statement> all = std::exchange(p.pending, {});
  if (!statement.sql.empty()) all.push_back(std::move(statement));
  ShardTask task = p.base;
  if (all.empty()) return task;
  task.sql = std::move(all[0].sql);
  task.params = std::move(all[0].params);
  task.prepare = all[0].prepare;
  task.then.assign(std::make_move_iterator(all.begin() + 1),
                   std::make_move_iterator(all.end()));
  return task;
}

bool DistributedTransaction::Holds(const Participant& p) {
  return p.session->InTransaction() ||
         (!p.session->started() && !p.pending.empty() &&
          p.pending[0].sql == "BEGIN");
}

std::vector<TaskOutcome> DistributedTransaction::RunOn(
    const std::vector<Participant*>& parts,
    const std::vector<std::string>& sql) {
  std::vector<ShardTask> tasks;
  for (size_t i = 0; i < parts.size(); ++i) {
    tasks.push_back(WithPending(*parts[i], Statement{sql[i], {}}));
  }
  return RunOnShards(tasks, options_);
}

std::vector<ShardId> DistributedTransaction::participants() const {
  std::vector<ShardId> out;
  for (const auto& [id, p] : participants_) out.push_back(id);
  return out;
}

absl::Status DistributedTransaction::CheckOpen() const {
  if (state_ == State::kEnded) {
    return absl::FailedPreconditionError(
        "the transaction has ended (committed or rolled back); begin a new "
        "one");
  }
  if (state_ == State::kAborted) {
    return WithSqlState(
        absl::FailedPreconditionError(StrCat(
            "current transaction is aborted, commands ignored until end of "
            "transaction block (it failed with: ",
            abort_reason_.message(), "); roll it back")),
        "25P02");
  }
  return absl::OkStatus();
}

absl::Status DistributedTransaction::Fail(absl::Status status,
                                          bool await_newer_map) {
  if (SqlStateOf(status) == kStaleEpochSqlState) {
    // Nothing more of the transaction may run on its map: a move changed
    // ownership since. It is the caller's to run it again, from its
    // start, by the newer map (once it is there). Its locks go first: the
    // cutover that raised the fence may be waiting for them (its fence on
    // the destination waits for the writers there) before it publishes
    // the map awaited here.
    ReleaseParts();
    if (await_newer_map && newer_map_) {
      newer_map_(map_->epoch(), status, /*wait=*/true).status().IgnoreError();
    }
    status = WithSqlState(
        absl::AbortedError(StrCat(
            "the shard map changed while the transaction ran (",
            status.message(),
            "); roll back and retry the transaction: it will be routed by "
            "the new map")),
        kStaleEpochSqlState);
  }
  state_ = State::kAborted;
  abort_reason_ = status;
  return status;
}

std::vector<TaskOutcome> DistributedTransaction::ReleaseParts() {
  std::vector<Participant*> open;
  for (auto& [id, p] : participants_) {
    p.pending.clear();  // never sent: nothing to undo
    if (p.session->InTransaction()) open.push_back(&p);
  }
  std::vector<TaskOutcome> done =
      RunOn(open, std::vector<std::string>(open.size(), "ROLLBACK"));
  for (auto& [id, p] : participants_) p.session->Release();
  return done;
}

absl::StatusOr<Result> DistributedTransaction::Execute(std::string_view sql,
                                                       const Params& params) {
  RETURN_IF_ERROR(CheckOpen());
  // A move's cutover fences its source just before it publishes the map
  // naming the new owner. A statement refused there that was the first of
  // the transaction on the shards it ran on changed nothing the rollback
  // of those parts does not undo: it runs again by the newer map, as
  // Cluster::Execute would, and the transaction goes on by that map.
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<Router::Prepared> prepared =
        router_.Prepare(map_, sql, params);
    if (!prepared.ok()) return Fail(prepared.status());
    bool replayable = false;
    absl::StatusOr<Result> result =
        Run(*std::move(prepared), params,
            attempt < kStaleMapAttempts ? &replayable : nullptr);
    if (!replayable) return result;
    // The statement's parts are rolled back. Parts of earlier statements
    // on other shards may not be held through a wait for the map: the
    // cutover that raised the fence may be waiting for their locks before
    // it publishes it. With such parts, only a newer map known already
    // lets the statement run again; else the transaction fails, rolled
    // back everywhere before it waits (Fail).
    const bool holds_parts = !participants_.empty();
    absl::StatusOr<std::shared_ptr<const ShardMap>> newer =
        newer_map_(map_->epoch(), result.status(), /*wait=*/!holds_parts);
    if (!newer.ok()) {
      return holds_parts ? Fail(result.status())
                         : Fail(newer.status(), /*await_newer_map=*/false);
    }
    // The shards it keeps must be the same ones in the newer map.
    for (const auto& [id, p] : participants_) {
      if (id >= (*newer)->shards().size() ||
          (*newer)->shard(id).name != p.base.shard_name) {
        return Fail(result.status(), /*await_newer_map=*/false);
      }
    }
    map_ = *std::move(newer);
  }
}

absl::StatusOr<Result> DistributedTransaction::Execute(
    Router::Prepared prepared, const Params& params) {
  RETURN_IF_ERROR(CheckOpen());
  return Run(std::move(prepared), params, nullptr);
}

void DistributedTransaction::Withdraw(const std::vector<Participant*>& parts) {
  std::vector<Participant*> open;
  for (Participant* p : parts) {
    if (p->session->InTransaction()) open.push_back(p);
  }
  // One that cannot be told is closed on release, and its server rolls
  // back.
  RunOn(open, std::vector<std::string>(open.size(), "ROLLBACK"));
  for (Participant* p : parts) {
    p->session->Release();
    participants_.erase(p->base.shard);
  }
}

absl::StatusOr<Result> DistributedTransaction::Run(Router::Prepared prepared,
                                                   const Params& params,
                                                   bool* replayable) {
  // What a dual-write deferred on the shards this statement reaches runs
  // first, in a round of its own: the statement may be several in one
  // string, which a pipeline cannot carry.
  std::vector<Participant*> deferred;
  for (const ShardTask& task : prepared.tasks) {
    auto it = participants_.find(task.shard);
    if (it != participants_.end() && !it->second.pending.empty()) {
      deferred.push_back(&it->second);
    }
  }
  if (!deferred.empty()) {
    for (TaskOutcome& outcome :
         RunOn(deferred, std::vector<std::string>(deferred.size(), ""))) {
      if (!outcome.status.ok()) return Fail(outcome.status);
    }
  }
  // Shards touched for the first time begin the transaction there: in the
  // same round trip when the statements go without parameters (simple
  // protocol, several statements in one string), or as a pipeline when they
  // are single statements with parameters; else in one round first.
  std::vector<Participant*> joining;
  for (ShardTask& task : prepared.tasks) {
    auto [it, inserted] = participants_.try_emplace(task.shard);
    Participant& p = it->second;
    if (inserted) {
      p.session = std::make_unique<ShardSession>();
      p.base.shard = task.shard;
      p.base.shard_name = task.shard_name;
      p.base.dsn = task.dsn;
      p.base.session = p.session.get();
      joining.push_back(&p);
    }
    task.session = p.session.get();
  }
  auto joins = [&](const ShardTask& task) {
    return std::find_if(joining.begin(), joining.end(), [&](Participant* p) {
             return p->base.shard == task.shard;
           }) != joining.end();
  };
  if (!joining.empty()) {
    const bool without_params =
        std::all_of(prepared.tasks.begin(), prepared.tasks.end(),
                    [](const ShardTask& t) { return t.params.empty(); });
    if (without_params) {
      for (ShardTask& task : prepared.tasks) {
        if (!joins(task)) continue;
        // A write's mark stays first, where the write guard reads it.
        task.sql = StrCat(LeadingWriteMark(task.sql), "BEGIN; ", task.sql);
        task.prepare = false;  // two statements now
      }
    } else if (prepared.combine == Router::Combining::kConcat) {
      // With parameters the statement is a single one (extended protocol).
      for (ShardTask& task : prepared.tasks) {
        if (!joins(task)) continue;
        task.then.insert(task.then.begin(),
                         Statement{std::move(task.sql), std::move(task.params),
                                   task.prepare});
        task.prepare = false;
        task.sql = "BEGIN";
        task.params.clear();
      }
    } else {
      std::vector<TaskOutcome> begun =
          RunOn(joining, std::vector<std::string>(joining.size(), "BEGIN"));
      for (TaskOutcome& outcome : begun) {
        if (!outcome.status.ok()) return Fail(outcome.status);
      }
    }
  }
  absl::StatusOr<Result> result = router_.Run(prepared, params, options_);
  if (!result.ok()) {
    // Refused by a fence before it changed anything there; where it ran
    // as well, it was all the transaction did (its dual-write, deferred
    // until it succeeds, left nothing pending).
    if (replayable != nullptr && newer_map_ &&
        SqlStateOf(result.status()) == kStaleEpochSqlState &&
        std::all_of(prepared.tasks.begin(), prepared.tasks.end(), joins)) {
      Withdraw(joining);
      *replayable = true;
      return result.status();
    }
    return Fail(result.status());
  }
  // A statement can complete just as its timeout fires: it succeeded, but
  // the cancel closes its connection, and the server rolls back that
  // shard's part of the transaction with it.
  for (const ShardTask& task : prepared.tasks) {
    const absl::Status& lost = participants_[task.shard].session->lost();
    if (!lost.ok()) {
      return Fail(absl::Status(
          lost.code(), StrCat(lost.message(),
                              "; the statement completed, but as its "
                              "connection closed, that shard rolls back its "
                              "part of the transaction: roll back and "
                              "retry")));
    }
  }
  if (prepared.routing->writes) {
    for (const ShardTask& task : prepared.tasks) {
      participants_[task.shard].wrote = true;
    }
  }
  if (prepared.dual != nullptr) {
    absl::Status mirrored = ApplyDualWrite(prepared);
    if (!mirrored.ok()) return Fail(mirrored);
  }
  return result;
}

DistributedTransaction::Participant* DistributedTransaction::Join(
    ShardId shard) {
  auto [it, inserted] = participants_.try_emplace(shard);
  Participant& p = it->second;
  if (inserted) {
    p.session = std::make_unique<ShardSession>();
    p.base.shard = shard;
    p.base.shard_name = map_->shard(shard).name;
    p.base.dsn = map_->shard(shard).dsn;
    p.base.epoch = map_->epoch();
    p.base.session = p.session.get();
    p.pending.push_back(Statement{"BEGIN", {}});
  }
  return &p;
}

namespace {

std::string QuoteIdent(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

// A map table name ("users", "app.users") quoted part by part.
std::string QuoteTable(std::string_view name) {
  std::string out;
  size_t from = 0;
  for (;;) {
    const size_t dot = name.find('.', from);
    if (!out.empty()) out += ".";
    out += QuoteIdent(name.substr(from, dot == std::string_view::npos
                                            ? std::string_view::npos
                                            : dot - from));
    if (dot == std::string_view::npos) return out;
    from = dot + 1;
  }
}

// Rows per mirrored statement: well under PostgreSQL's 65535 parameters.
size_t RowsPerStatement(size_t columns) {
  return std::max<size_t>(1, 30000 / std::max<size_t>(1, columns));
}

}  // namespace

absl::Status DistributedTransaction::ApplyDualWrite(
    const Router::Prepared& prepared) {
  const Router::Prepared::DualWrite& dual = *prepared.dual;
  const Table& table = *dual.table;
  const Distribution& distribution =
      map_->distributions()[table.distribution];
  for (size_t j = 0; j < dual.tasks.size(); ++j) {
    const std::vector<Row>& images = dual.images[j];
    if (images.empty()) continue;
    const ShardTask& source_task = prepared.tasks[dual.tasks[j]];
    const std::vector<Column>& image_columns = dual.image_columns[j];
    // Where the key (and hash key) sit in the image.
    std::optional<size_t> key_at, hash_key_at;
    for (size_t c = 0; c < image_columns.size(); ++c) {
      if (image_columns[c].name == table.key_column) key_at = c;
      if (!table.hash_key_column.empty() &&
          image_columns[c].name == table.hash_key_column) {
        hash_key_at = c;
      }
    }
    if (!key_at) {
      return absl::InternalError(StrCat("the row images of ", table.name,
                                        " lack its key column ",
                                        table.key_column));
    }
    for (const MovingSlice* move : dual.moves) {
      if (move->source != source_task.shard) continue;
      // The images of rows in the slice, and their keys.
      std::vector<const Row*> moving;
      std::vector<std::string> keys;
      for (const Row& image : images) {
        if (!image[*key_at]) continue;
        ASSIGN_OR_RETURN(Key key,
                         Key::Parse(distribution.key_type(), *image[*key_at]));
        std::optional<Key> hash_key;
        if (hash_key_at && image[*hash_key_at] &&
            distribution.hash_key_type()) {
          ASSIGN_OR_RETURN(hash_key, Key::Parse(*distribution.hash_key_type(),
                                                *image[*hash_key_at]));
        }
        ASSIGN_OR_RETURN(Placement placement,
                         distribution.Place(key, hash_key ? &*hash_key : nullptr));
        if (!move->Contains(distribution, key, placement)) continue;
        moving.push_back(&image);
        keys.push_back(*image[*key_at]);
      }
      if (moving.empty()) continue;
      ASSIGN_OR_RETURN(std::shared_ptr<const Router::TableColumns> columns,
                       router_.ColumnsOf(table, map_->epoch(), source_task,
                                         options_));
      if (columns->names.size() != image_columns.size()) {
        return absl::InternalError(StrCat(
            "the row images of ", table.name, " have ", image_columns.size(),
            " columns, the table ", columns->names.size()));
      }
      Participant* source = Join(move->source);
      Participant* destination = Join(move->destination);
      const std::string quoted = QuoteTable(table.name);
      std::vector<std::string> pk_names;
      for (size_t c : columns->primary_key) {
        pk_names.push_back(QuoteIdent(columns->names[c]));
      }
      // What is listed where (rebalancer/shard_objects.h): the
      // destination lists the keys of the rows it receives, so that it
      // hides them (a DELETE leaves no row to hide); the source lists those
      // of new rows (the backfill lists every row that existed when it
      // passed); a single statement's copies are recorded with the source
      // transaction's id (see CommitMirrored).
      const std::string& xid = dual.xids[j];
      // A range or region slice, or a hash slice the shards hash
      // themselves, is hidden by its condition: no lists.
      const bool lists =
          MoveListsKeys(distribution.strategy(), move->server_hash);
      const bool list_on_source = lists && dual.kind == StatementKind::kInsert;
      const bool list_on_destination =
          lists && dual.kind != StatementKind::kDelete;
      const bool record_pending = single_statement_ && !xid.empty();
      const std::string_view key_type = KeySqlType(distribution.key_type());
      std::vector<size_t> written;  // columns given a value
      std::vector<std::string> names, updates;
      if (dual.kind == StatementKind::kDelete) {
        written = columns->primary_key;
      } else {
        for (size_t c = 0; c < columns->names.size(); ++c) {
          if (columns->generated[c]) continue;
          written.push_back(c);
          const std::string name = QuoteIdent(columns->names[c]);
          names.push_back(name);
          if (std::find(columns->primary_key.begin(),
                        columns->primary_key.end(),
                        c) == columns->primary_key.end()) {
            updates.push_back(StrCat(name, " = EXCLUDED.", name));
          }
        }
      }
      // One statement per batch of rows on the destination: the rows, and
      // in WITH clauses of the same statement, their keys and records.
      const size_t per = RowsPerStatement(written.size() + 2);
      for (size_t from = 0; from < moving.size(); from += per) {
        const size_t to = std::min(moving.size(), from + per);
        ShardTask task = On(*destination, "");
        std::vector<std::string> with;
        if (record_pending) task.params.push_back(xid);  // $1
        auto key_values = [&](bool with_xid) {
          std::vector<std::string> values;
          for (size_t r = from; r < to; ++r) {
            task.params.push_back(keys[r]);
            values.push_back(StrCat("(", with_xid ? "$1::xid8, " : "", "$",
                                    task.params.size(), "::", key_type, ")"));
          }
          return absl::StrJoin(values, ", ");
        };
        if (list_on_destination) {
          with.push_back(StrCat("shardkit_keys AS (INSERT INTO ",
                                MoveKeysTable(move->move_id), " (key) VALUES ",
                                key_values(false), " ON CONFLICT DO NOTHING)"));
        }
        if (record_pending) {
          with.push_back(StrCat("shardkit_pending AS (INSERT INTO ",
                                MovePendingTable(move->move_id),
                                " (xid, key) VALUES ", key_values(true), ")"));
        }
        std::vector<std::string> tuples;
        for (size_t r = from; r < to; ++r) {
          std::vector<std::string> values;
          for (size_t c : written) {
            task.params.push_back((*moving[r])[c]);
            values.push_back(StrCat("$", task.params.size(), "::",
                                    columns->types[c]));
          }
          tuples.push_back(StrCat("(", absl::StrJoin(values, ", "), ")"));
        }
        std::string main;
        if (dual.kind == StatementKind::kDelete) {
          main = StrCat("DELETE FROM ", quoted, " WHERE (",
                        absl::StrJoin(pk_names, ", "), ") IN (",
                        absl::StrJoin(tuples, ", "), ")");
        } else {
          main = StrCat(
              "INSERT INTO ", quoted, " (", absl::StrJoin(names, ", "),
              ") OVERRIDING SYSTEM VALUE VALUES ", absl::StrJoin(tuples, ", "),
              " ON CONFLICT (", absl::StrJoin(pk_names, ", "), ") DO ",
              updates.empty() ? std::string("NOTHING")
                              : StrCat("UPDATE SET ",
                                       absl::StrJoin(updates, ", ")));
        }
        // Marked as the router's write of the table (the destination's
        // write guard lets it pass).
        task.sql = with.empty() ? StrCat(WriteMark(table.name), main)
                                : StrCat(WriteMark(table.name), "WITH ",
                                         absl::StrJoin(with, ", "), " ", main);
        // Deferred to the destination's next round trip (see Participant::
        // pending).
        // Prepared: the same statement comes with every such write.
        destination->pending.push_back(
            Statement{std::move(task.sql), std::move(task.params), true});
      }
      if (list_on_source) {
        const size_t per_key = RowsPerStatement(1);
        for (size_t from = 0; from < keys.size(); from += per_key) {
          Statement listing;
          std::vector<std::string> values;
          for (size_t r = from; r < std::min(keys.size(), from + per_key); ++r) {
            listing.params.push_back(keys[r]);
            values.push_back(
                StrCat("($", listing.params.size(), "::", key_type, ")"));
          }
          listing.sql = StrCat("INSERT INTO ", MoveKeysTable(move->move_id),
                               " (key) VALUES ", absl::StrJoin(values, ", "),
                               " ON CONFLICT DO NOTHING");
          listing.prepare = true;
          source->pending.push_back(std::move(listing));
        }
      }
      mirrored_.push_back(
          {source->base.shard,
           record_pending ? std::optional<ShardId>(destination->base.shard)
                          : std::nullopt});
      source->wrote = true;
      destination->wrote = true;
    }
  }
  return absl::OkStatus();
}

void DistributedTransaction::End() {
  state_ = State::kEnded;
  for (auto& [id, p] : participants_) p.session->Release();
  participants_.clear();
}

void DistributedTransaction::EndCommitted(
    const std::vector<Participant*>& writers) {
  std::vector<ShardTask> written;
  for (const Participant* w : writers) {
    ShardTask task = w->base;
    task.session = nullptr;
    written.push_back(std::move(task));
  }
  End();
  if (on_commit_ && !written.empty()) on_commit_(written);
}

absl::Status DistributedTransaction::Rollback() {
  if (state_ == State::kEnded) return absl::OkStatus();
  std::vector<TaskOutcome> done = ReleaseParts();
  End();
  for (TaskOutcome& outcome : done) {
    if (!outcome.status.ok()) {
      return absl::Status(outcome.status.code(),
                          StrCat(outcome.status.message(),
                                 "; the shard rolls back when the connection "
                                 "closes"));
    }
  }
  return absl::OkStatus();
}

absl::Status DistributedTransaction::Commit() {
  if (state_ == State::kEnded) {
    return absl::FailedPreconditionError(
        "the transaction has ended (committed or rolled back); begin a new "
        "one");
  }
  if (state_ == State::kAborted) {
    const absl::Status reason = abort_reason_;
    Rollback().IgnoreError();
    return absl::AbortedError(StrCat(
        "the transaction was rolled back, as an earlier statement in it "
        "failed: ",
        reason.message()));
  }
  // Every participant must still hold its part (see Execute): committing
  // the others would commit only some of the transaction.
  std::vector<Participant*> parts;
  for (auto& [id, p] : participants_) {
    if (!Holds(p)) {
      const absl::Status lost =
          p.session->lost().ok()
              ? absl::UnavailableError(StrCat(
                    "shard ", p.base.shard_name,
                    ": the transaction's connection there was closed"))
              : p.session->lost();
      Rollback().IgnoreError();
      return absl::AbortedError(StrCat(
          "the transaction was rolled back on every shard, as its part on "
          "one of them was lost: ",
          lost.message()));
    }
    parts.push_back(&p);
  }
  if (parts.size() <= 1) {
    std::vector<TaskOutcome> done =
        RunOn(parts, std::vector<std::string>(parts.size(), "COMMIT"));
    if (done.empty() || !done[0].status.ok() || !parts[0]->wrote) {
      End();
      return done.empty() ? absl::OkStatus() : done[0].status;
    }
    EndCommitted(parts);
    return absl::OkStatus();
  }
  // Which participants wrote: those a writing statement ran on, and any
  // other whose transaction has an id (a SELECT may call a function that
  // writes).
  std::vector<Participant*> unsure;
  for (Participant* p : parts) {
    if (!p->wrote) unsure.push_back(p);
  }
  if (!unsure.empty()) {
    std::vector<TaskOutcome> asked = RunOn(
        unsure,
        std::vector<std::string>(
            unsure.size(), "SELECT pg_current_xact_id_if_assigned() IS NOT NULL"));
    for (size_t i = 0; i < unsure.size(); ++i) {
      if (!asked[i].status.ok()) {
        const absl::Status failed = asked[i].status;
        Rollback().IgnoreError();
        return absl::Status(failed.code(),
                            StrCat(failed.message(),
                                   "; the transaction was rolled back"));
      }
      const Result& r = asked[i].result;
      unsure[i]->wrote = !r.rows.empty() && r.rows[0][0] == "t";
    }
  }
  std::vector<Participant*> writers, readers;
  for (Participant* p : parts) (p->wrote ? writers : readers).push_back(p);
  if (writers.size() <= 1) {
    // One writer: its COMMIT decides alone; the readers have nothing to
    // commit.
    std::vector<TaskOutcome> done =
        RunOn(parts, std::vector<std::string>(parts.size(), "COMMIT"));
    for (size_t i = 0; i < parts.size(); ++i) {
      if (!done[i].status.ok() && parts[i]->wrote) {
        End();
        return done[i].status;
      }
    }
    EndCommitted(writers);
    return absl::OkStatus();
  }
  if (readers.empty() && writers.size() == 2 && !mirrored_.empty() &&
      std::all_of(mirrored_.begin(), mirrored_.end(),
                  [&](const Mirrored& m) { return m == mirrored_[0]; }) &&
      mirrored_[0].destination) {
    Participant* source = &participants_[mirrored_[0].source];
    Participant* destination = &participants_[*mirrored_[0].destination];
    if ((writers[0] == source && writers[1] == destination) ||
        (writers[0] == destination && writers[1] == source)) {
      return CommitMirrored(*source, *destination);
    }
  }
  absl::Status committed = CommitTwoPhase(writers, readers);
  if (!committed.ok()) {
    End();
    if (SqlStateOf(committed) == kStaleEpochSqlState) {
      // A statement a dual-write deferred was refused (the fence of a
      // move's destination), before any decision: nothing committed, and
      // the caller retries by the newer map, as for a refused statement.
      committed = Fail(committed);
      state_ = State::kEnded;
    }
    return committed;
  }
  EndCommitted(writers);
  return absl::OkStatus();
}

absl::Status DistributedTransaction::CommitMirrored(Participant& source,
                                                    Participant& destination) {
  // The destination first: its copy of the rows, its keys and the source
  // transaction's id. If it fails, nothing is committed anywhere. Joined
  // for this alone, it needs no transaction block: its statements, sent
  // in one pipeline, run as one implicit transaction.
  std::string commit = "COMMIT";
  if (!destination.session->started() && !destination.pending.empty() &&
      destination.pending[0].sql == "BEGIN") {
    destination.pending.erase(destination.pending.begin());
    commit.clear();
  }
  std::vector<TaskOutcome> done = RunOn({&destination}, {commit});
  if (!done[0].status.ok()) {
    absl::Status failed = done[0].status;
    Rollback().IgnoreError();
    if (SqlStateOf(failed) == kStaleEpochSqlState) {
      // Refused by the destination's fence (a move aborted or cut over
      // since): rolled back everywhere, so the caller may run it again by
      // the newer map.
      failed = Fail(failed);
      state_ = State::kEnded;
    }
    return failed;
  }
  // Committed on the destination, not yet on the source. Should the
  // source's COMMIT fail (or this process die here), the destination holds
  // a copy that the source rolled back; its keys stay in the destination's
  // pending list with the source transaction's id, and the mover puts the
  // source's rows back over them before the destination owns the slice.
  Failpoint("dual-write-after-destination");
  done = RunOn({&source}, {"COMMIT"});
  if (!done[0].status.ok()) {
    End();
    return done[0].status;
  }
  EndCommitted({&source, &destination});
  return absl::OkStatus();
}

absl::Status DistributedTransaction::CommitTwoPhase(
    const std::vector<Participant*>& writers,
    const std::vector<Participant*>& readers) {
  std::vector<Participant*> all = readers;
  all.insert(all.end(), writers.begin(), writers.end());
  std::vector<ShardId> writer_shards;
  for (Participant* w : writers) writer_shards.push_back(w->base.shard);
  return TwoPhaseCommit(
      readers.size(), writer_shards,
      [&](const std::vector<size_t>& which, const std::vector<std::string>& sql) {
        std::vector<Participant*> parts;
        for (size_t i : which) parts.push_back(all[i]);
        std::vector<absl::Status> out;
        for (TaskOutcome& o : RunOn(parts, sql)) out.push_back(std::move(o.status));
        return out;
      },
      log_, options_);
}

absl::Status TwoPhaseCommit(size_t readers,
                            const std::vector<ShardId>& writer_shards,
                            const RunStatements& run, DecisionLog& log,
                            const ExecOptions& options) {
  const std::string txid = NewTxid();
  const size_t n = readers + writer_shards.size();
  auto gid = [&](size_t i) { return GidOf(txid, writer_shards[i - readers]); };
  Failpoint("2pc-before-prepare");
  // Phase one: every writer prepares; the readers just end.
  std::vector<size_t> first;
  std::vector<std::string> sql;
  for (size_t i = 0; i < n; ++i) {
    first.push_back(i);
    sql.push_back(i < readers ? "COMMIT"
                              : StrCat("PREPARE TRANSACTION ", Quoted(gid(i))));
  }
  if (FailpointOn("2pc-between-prepares")) {
    // One writer prepared, the others not yet.
    run({readers}, {sql[readers]});
    Failpoint("2pc-between-prepares");
  }
  const std::vector<absl::Status> done = run(first, sql);
  absl::Status failed;
  std::vector<size_t> prepared;
  for (size_t i = readers; i < n; ++i) {
    if (done[i].ok()) {
      prepared.push_back(i);
    } else if (failed.ok()) {
      failed = PrepareFailure(done[i]);
    }
  }
  auto finish = [&](const std::vector<size_t>& which, std::string_view verb) {
    std::vector<std::string> statements;
    for (size_t i : which) {
      statements.push_back(StrCat(verb, " PREPARED ", Quoted(gid(i))));
    }
    return FinishPrepared(which.size(), [&](const std::vector<size_t>& again) {
      std::vector<size_t> parts;
      std::vector<std::string> sql;
      for (size_t k : again) {
        parts.push_back(which[k]);
        sql.push_back(statements[k]);
      }
      return run(parts, sql);
    });
  };
  if (!failed.ok()) {
    // A failed PREPARE rolled that shard back; undo the prepared ones.
    // One that cannot be told now is rolled back by recovery (no decision).
    finish(prepared, "ROLLBACK");
    return failed;
  }
  Failpoint("2pc-after-prepare");
  absl::StatusOr<std::string> decided = log.Decide(txid, "commit", options);
  if (!decided.ok()) {
    // Whether our decision was recorded is unknown if the connection broke
    // mid-way: ask again, proposing to abort; the log answers with the one
    // outcome recorded.
    decided = log.Decide(txid, "abort", options);
    if (!decided.ok()) {
      return absl::UnavailableError(StrCat(
          "the decision of a two-phase commit could not be recorded in ",
          log.where(), " (", decided.status().message(),
          "); every shard has prepared it, and its outcome is in doubt until "
          "recovery resolves it (run shardctl recover once ",
          log.where(), " is back): transaction ", txid));
    }
  }
  if (*decided != "commit") {
    finish(prepared, "ROLLBACK");
    return absl::AbortedError(StrCat(
        "the transaction was rolled back: recovery decided to abort it while "
        "its commit was under way (it took longer than [transactions] "
        "recovery_grace); transaction ",
        txid));
  }
  Failpoint("2pc-after-decision");
  if (FailpointOn("2pc-between-commits")) {
    finish({prepared[0]}, "COMMIT");
    Failpoint("2pc-between-commits");
  }
  bool all = true;
  for (const absl::Status& c : finish(prepared, "COMMIT")) {
    // Gone: recovery committed it first. Still busy after the retries:
    // recovery is committing it, and might yet fail.
    if (!c.ok() && SqlStateOf(c) != kNoSuchPrepared) all = false;
  }
  // Committed: a shard that could not be told now is told by recovery,
  // which then finds the decision (and its Purge deletes it a minute on).
  // Deleting it is not on the commit's path.
  if (all) log.ForgetLater(txid);
  return absl::OkStatus();
}

// --- Recovery --------------------------------------------------------------

absl::StatusOr<RecoveryReport> RecoverPrepared(const ShardMap& map,
                                               DecisionLog& log,
                                               const ExecOptions& options,
                                               absl::Duration grace) {
  RecoveryReport report;
  // Before the scans: the bound of what Purge may delete (empty: unknown).
  const std::string scan_start = log.ForgetFinished(options).value_or("");
  std::vector<ShardId> every(map.shards().size());
  std::iota(every.begin(), every.end(), ShardId{0});
  const std::vector<ShardTask> scans = PreparedScans(map, every, grace);
  std::vector<TaskOutcome> scanned = RunOnShards(scans, options);
  struct Found {
    ShardTask shard;
    std::string gid;
  };
  std::map<std::string, std::vector<Found>> by_txid;
  std::set<std::string> young;  // some part is younger than the grace
  for (size_t i = 0; i < scans.size(); ++i) {
    if (!scanned[i].status.ok()) {
      report.unreachable.push_back(std::string(scanned[i].status.message()));
      continue;
    }
    for (const Row& row : scanned[i].result.rows) {
      if (!row[0]) continue;
      std::optional<std::string> txid = TxidOf(*row[0]);
      if (!txid) continue;
      by_txid[*txid].push_back(Found{scans[i], *row[0]});
      if (row[1] != "t") young.insert(*txid);
    }
  }
  std::vector<std::string> txids;
  for (const auto& [txid, parts] : by_txid) txids.push_back(txid);
  if (txids.empty()) {
    if (report.unreachable.empty()) {
      // Nothing prepared anywhere: finished decisions may go. The table
      // exists only where two-phase commit ran.
      log.Purge({}, scan_start, options).IgnoreError();
    }
    return report;
  }
  ASSIGN_OR_RETURN(auto decisions, log.Lookup(txids, options));
  // Those without a decision and older than the grace are rolled back, once
  // 'abort' is recorded, only if still prepared now: the scan came before
  // the lookup, and in between their coordinator may have recorded
  // 'commit', committed every part and forgotten the decision (an 'abort'
  // recorded then would stand a week for a committed transaction). A part
  // still prepared after the lookup proves that no decision was recorded
  // before it (one is deleted only once no part is left prepared, and a
  // name is never prepared again); one recorded since, Decide returns.
  std::set<ShardId> to_check;
  for (const auto& [txid, parts] : by_txid) {
    if (decisions.contains(txid) || young.contains(txid)) continue;
    for (const Found& found : parts) to_check.insert(found.shard.shard);
  }
  std::set<std::pair<ShardId, std::string>> prepared_now;
  if (!to_check.empty()) {
    const std::vector<ShardTask> checks = PreparedScans(
        map, std::vector<ShardId>(to_check.begin(), to_check.end()), grace);
    std::vector<TaskOutcome> checked = RunOnShards(checks, options);
    for (size_t i = 0; i < checks.size(); ++i) {
      if (!checked[i].status.ok()) {
        report.unreachable.push_back(std::string(checked[i].status.message()));
        continue;
      }
      for (const Row& row : checked[i].result.rows) {
        if (row[0]) prepared_now.emplace(checks[i].shard, *row[0]);
      }
    }
  }
  std::vector<ShardTask> resolutions;
  std::vector<const Found*> resolving;
  std::vector<bool> commits;
  for (const auto& [txid, parts] : by_txid) {
    auto it = decisions.find(txid);
    std::string outcome;
    if (it != decisions.end()) {
      outcome = it->second;
    } else if (young.contains(txid)) {
      report.left_in_progress += static_cast<int>(parts.size());
      continue;
    } else if (std::none_of(parts.begin(), parts.end(), [&](const Found& f) {
                 return prepared_now.contains({f.shard.shard, f.gid});
               })) {
      // Finished since the scan by a session that knew its outcome (or on
      // a shard that could not be checked again: listed as unreachable).
      continue;
    } else {
      ASSIGN_OR_RETURN(outcome, log.Decide(txid, "abort", options));
    }
    for (const Found& found : parts) {
      ShardTask task = found.shard;
      task.params.clear();
      task.sql = StrCat(outcome == "commit" ? "COMMIT" : "ROLLBACK",
                        " PREPARED ", Quoted(found.gid));
      resolutions.push_back(std::move(task));
      resolving.push_back(&found);
      commits.push_back(outcome == "commit");
    }
  }
  const std::vector<absl::Status> resolved = FinishPrepared(
      resolutions.size(), [&](const std::vector<size_t>& which) {
        std::vector<ShardTask> tasks;
        for (size_t k : which) tasks.push_back(resolutions[k]);
        std::vector<absl::Status> out;
        for (TaskOutcome& o : RunOnShards(tasks, options)) {
          out.push_back(std::move(o.status));
        }
        return out;
      });
  for (size_t i = 0; i < resolved.size(); ++i) {
    if (resolved[i].ok()) {
      report.resolved.push_back(RecoveryReport::Resolved{
          resolving[i]->shard.shard_name, resolving[i]->gid, commits[i]});
    } else if (SqlStateOf(resolved[i]) != kNoSuchPrepared) {
      // Not reached, or still busy: another session is finishing it and
      // may yet fail. Either way its decision must stay: no Purge.
      report.unreachable.push_back(std::string(resolved[i].message()));
    }
  }
  if (report.unreachable.empty()) {
    // Every shard was seen: the decisions of transactions prepared
    // nowhere any more are finished with.
    std::vector<std::string> still;
    for (const auto& [txid, parts] : by_txid) {
      if (young.contains(txid) && !decisions.contains(txid)) still.push_back(txid);
    }
    log.Purge(still, scan_start, options).IgnoreError();
  }
  return report;
}

}  // namespace shardkit::internal

namespace shardkit {

Transaction::Transaction(std::unique_ptr<internal::DistributedTransaction> impl)
    : impl_(std::move(impl)) {}
Transaction::~Transaction() = default;

absl::StatusOr<Result> Transaction::Execute(
    std::string_view sql, const std::vector<std::optional<std::string>>& params) {
  return impl_->Execute(sql, params);
}

absl::Status Transaction::Commit() { return impl_->Commit(); }
absl::Status Transaction::Rollback() { return impl_->Rollback(); }
std::vector<ShardId> Transaction::participants() const {
  return impl_->participants();
}

}  // namespace shardkit
