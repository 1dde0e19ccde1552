// A Cluster: one process's handle on a sharded PostgreSQL deployment.
//
// A Cluster is opened from a configuration (config.h) and runs SQL on its
// shards. One Cluster serves a whole process.
//
// Example:
//
//   absl::StatusOr<std::unique_ptr<shardkit::Cluster>> cluster =
//       shardkit::Cluster::OpenFile("shards.toml");
//   if (!cluster.ok()) return cluster.status();
//   for (const shardkit::ShardOutcome& o :
//        (*cluster)->ExecuteOnAllShards("CREATE TABLE t (id int8)")) {
//     std::cout << o.shard_name << ": " << (o.status.ok() ? "ok" : o.status.ToString());
//   }
//
// Thread-safety: all methods may be called concurrently from any thread.

#ifndef SHARDKIT_CLUSTER_H_
#define SHARDKIT_CLUSTER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "shardkit/config.h"
#include "shardkit/health.h"
#include "shardkit/key.h"
#include "shardkit/result.h"
#include "shardkit/row_stream.h"
#include "shardkit/shard_map.h"
#include "shardkit/transaction.h"

namespace shardkit {

class Cluster;

namespace internal {
class ConnectionPools;
class DecisionLog;
struct ExecOptions;
DecisionLog& DecisionLogOf(const Cluster& cluster);
class LiveMap;
LiveMap& LiveMapOf(const Cluster& cluster);
class ReadBalancer;
ReadBalancer* ReadBalancerOf(const Cluster& cluster);
class RecoveryLoop;
class Router;
}  // namespace internal

// A statement parameter ($1, $2, ...): its text form, or nullopt for SQL
// NULL. Parameters always travel as parameters, never inside the SQL.
using Param = std::optional<std::string>;

// What happened on one shard.
struct ShardOutcome {
  ShardId shard = 0;
  std::string shard_name;
  // OK, or the failure: kUnavailable for a shard that cannot be reached
  // (within the connect timeout), kDeadlineExceeded for a statement that ran
  // past the statement timeout, otherwise the server's error. The message
  // names the shard and carries the SQLSTATE when the server sent one.
  absl::Status status;
  // Valid only when status is OK.
  Result result;
};

// Read-your-writes for one logical session of an application (a user's
// requests, a worker): give the same WritePositions to its writes and its
// reads (ExecuteOptions::read_your_writes). After each write run with it,
// Execute records the written shards' primary WAL position
// (pg_current_wal_insert_lsn(), past the commit record even under
// synchronous_commit = off: one more round trip per shard); a read run with
// it goes to a replica of a shard only when the health monitor last saw
// that replica's replay past the recorded position, else to the primary.
// So such a read never sees data older than the session's writes, at the
// cost of reading primaries until the next heartbeat after a write.
// A Transaction begun with it (TransactionOptions::read_your_writes)
// records, once it has committed, the position of each shard it wrote to
// (after COMMIT, or after COMMIT PREPARED on every shard for two-phase
// commit), the same way. Thread-safety: thread-safe; it must outlive the
// calls and transactions that use it.
class WritePositions {
 public:
  // The recorded position on shard `shard`'s primary, if any.
  std::optional<uint64_t> Of(ShardId shard) const ABSL_LOCKS_EXCLUDED(mu_);
  // Records `lsn` for shard `shard`, unless a later one is recorded.
  void Advance(ShardId shard, uint64_t lsn) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::vector<std::optional<uint64_t>> lsn_ ABSL_GUARDED_BY(mu_);
};

// How Execute and Stream run one statement.
struct ExecuteOptions {
  // Run on the shards' primaries even if the statement only reads (see
  // "Reads and replicas" at Execute). Writing the comment
  // /* shardkit:primary */ anywhere in the statement's text does the same.
  bool primary = false;
  // Read-your-writes (see WritePositions); nullptr: off. Borrowed.
  WritePositions* read_your_writes = nullptr;
};

// How Begin runs a transaction.
struct TransactionOptions {
  // Read-your-writes (see WritePositions): a successful Commit records
  // there the WAL position of the primary of each shard the transaction
  // wrote to (a writing statement ran there, or, when it touched several
  // shards, its transaction there was assigned an id), so that the
  // session's reads after it see its writes. A failed commit records
  // nothing. nullptr: off. Borrowed.
  WritePositions* read_your_writes = nullptr;
};

// The SQLSTATE that a shard's error carried (e.g. "42P07"), or nullopt for
// a status that did not come from a PostgreSQL server error (an unreachable
// shard, a timeout, invalid input).
std::optional<std::string> SqlStateOf(const absl::Status& status);

class Cluster {
 public:
  // Opens a cluster over `config`. Connections are made lazily, so this
  // fails only on an invalid configuration.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Cluster>> Open(
      Config config);

  // LoadConfig(path) then Open. Fails as LoadConfig does.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Cluster>> OpenFile(
      const std::string& path);

  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // The configuration the cluster was opened with: its settings (timeouts,
  // pool, catalog) hold for the cluster's life. Its `map` is the map at
  // open time; use map() for the current one.
  const Config& config() const { return config_; }

  // A snapshot of the current shard map. It stays valid and unchanged for as
  // long as the caller holds it; once ownership changes (a move, a split),
  // a later call returns a new map with a higher epoch. Never null.
  std::shared_ptr<const ShardMap> map() const;

  // Runs one SQL statement through the router: it goes to the shards that
  // own the keys its conditions name (every shard when they name none), runs
  // there concurrently, and the shards' results are combined into exactly
  // the result one PostgreSQL holding all the rows would give:
  //   - SELECT, UPDATE, DELETE: `key = v`, `key IN (...)`, `key = ANY($n)`,
  //     and for range distributions `<`, `<=`, `>`, `>=`, `BETWEEN`, under
  //     AND / OR, narrow the shards; rows and counts of several shards add
  //     up. Across shards, ORDER BY merges the shards' sorted rows (by type
  //     and collation), LIMIT / OFFSET apply to the merged rows, and
  //     count / sum / min / max / avg, GROUP BY, HAVING and DISTINCT are
  //     computed from the shards' partial results. What cannot be answered
  //     exactly across shards is refused (SQLSTATE 0A000), naming the
  //     construct; it runs when its conditions narrow it to one shard.
  //   - Joins of tables of one distribution on their shard keys, and with
  //     reference tables, run on each shard; other joins are refused.
  //   - INSERT ... VALUES into a sharded table: each row goes to the shard
  //     that owns its key; every row needs one (a constant or parameter).
  //   - Reference tables: reads run on one shard, writes on every shard.
  //   - DDL on tables of the map (CREATE TABLE, CREATE INDEX, ALTER TABLE,
  //     DROP, TRUNCATE) runs on every shard.
  // A write that touches several shards (a multi-row INSERT spanning
  // shards, an UPDATE or DELETE over several, a write to a reference
  // table, DDL) runs as a transaction of its own and commits atomically
  // with two-phase commit (see Transaction), except statements PostgreSQL
  // runs only outside a transaction block (CREATE INDEX CONCURRENTLY...),
  // which run on each shard on its own. Statements run on pooled connections ([pool]), so
  // session state (SET without LOCAL, PREPARE, temporary tables, session
  // advisory locks) must not be relied on across calls. The whole result
  // is held in memory: use Stream for large results.
  // Fails with kInvalidArgument (SQLSTATE 42601) for SQL that does not
  // parse, kInvalidArgument (SQLSTATE 0A000) for a statement that cannot be
  // answered correctly across shards, naming the construct and what to do,
  // 42P01 for a table not in the map, 42P02 / 08P01 for a $n without a
  // parameter, kUnavailable / kDeadlineExceeded for a shard that is down or
  // too slow, or the shard's own error; each names the shard and carries
  // the SQLSTATE (see SqlStateOf).
  //
  // Online moves. While a slice of a distribution moves (ShardMap::moves()),
  // writes to its tables are applied on the move's destination too, and a
  // statement refused by a shard for a stale map runs again by the new one
  // (so does a Transaction's statement that was its first on the shards it
  // ran on; one refused where the transaction had worked already fails,
  // kAborted with SQLSTATE SK001, once the newer map has arrived or the
  // connect timeout has passed: run it again from its start, and it is
  // routed by the newer map; see Transaction::Execute).
  // A data-modifying WITH over a moving distribution's table that reaches
  // the move's source or destination is refused (kFailedPrecondition,
  // SQLSTATE 55000): it is not applied on the destination; run its writes
  // as separate statements, or wait until the move has finished.
  //
  // Reads and replicas. A statement that only reads (a SELECT without FOR
  // UPDATE / SHARE, SELECT INTO, or a writing WITH) runs, on each target
  // shard that lists streaming replicas (Shard::replicas), on one of its
  // usable replicas, spread by weight (smooth weighted round-robin); on
  // the primary when the shard has none usable. A replica is usable once
  // the cluster's health monitor (a thread that probes every backend when
  // the cluster opens and then every [replicas] heartbeat_interval) has
  // found it up, in recovery, and with a replay lag of at most max_lag;
  // until its first probe answers, reads go to the primaries. A replica
  // that cannot be reached by a statement (kUnavailable) is taken out at
  // once and the statement runs again on the primaries, so the caller sees
  // no error; a replica the monitor found down first is never tried. A
  // read from a replica may miss the latest writes (up to max_lag old,
  // as last measured); to read them, pass ExecuteOptions{.primary = true},
  // write /* shardkit:primary */ in the SQL, or read in a Transaction:
  // writes, and everything in a Transaction, always run on primaries.
  [[nodiscard]] absl::StatusOr<Result> Execute(
      std::string_view sql, const std::vector<Param>& params = {}) const;
  // As above, with `options`.
  [[nodiscard]] absl::StatusOr<Result> Execute(
      std::string_view sql, const std::vector<Param>& params,
      const ExecuteOptions& options) const;

  // Runs one statement as Execute does, and returns its rows as a stream
  // read in bounded memory, however many there are. A SELECT answered by
  // concatenating or merging the shards' rows (ORDER BY, LIMIT, OFFSET)
  // reads them from a cursor on each target shard, 1000 rows at a time per
  // shard, each in a transaction of its own that commits when the rows end
  // (so each shard's rows come from one snapshot of that shard; there is no
  // snapshot across shards). The statement timeout applies to each fetch.
  // Other statements (writes with RETURNING, aggregates over several
  // shards) run as Execute and are read from its result in memory.
  // The stream holds one pooled connection per target shard until it ends
  // or is destroyed: with [pool] max_connections_per_shard = 1, another
  // statement on those shards waits until then (and fails after the
  // connect timeout). REQUIRES: the Cluster outlives the stream.
  // Reads go to replicas as in Execute (and fall back to the primaries
  // the same way when a replica cannot be reached while the stream opens;
  // a replica lost after the first row fails the stream).
  // Fails as Execute does, before the first row.
  [[nodiscard]] absl::StatusOr<RowStream> Stream(
      std::string_view sql, const std::vector<Param>& params = {}) const;
  // As above, with `options`.
  [[nodiscard]] absl::StatusOr<RowStream> Stream(
      std::string_view sql, const std::vector<Param>& params,
      const ExecuteOptions& options) const;

  // Begins a transaction across shards (see transaction.h). Nothing is
  // sent until its first statement. Never fails today; the status is for
  // future limits.
  [[nodiscard]] absl::StatusOr<std::unique_ptr<Transaction>> Begin() const;
  // As above, with `options`.
  [[nodiscard]] absl::StatusOr<std::unique_ptr<Transaction>> Begin(
      const TransactionOptions& options) const;

  // Each shard's backends (primary, replicas, retired ones) with their
  // role in the current map and what the health monitor last found about
  // them: state, replay lag, probe latency, last error (see health.h).
  // Without I/O, unless `options.probe_now` or no shard has a replica (the
  // cluster then runs no monitor): it then probes every backend that is not
  // retired, concurrently, and waits for all (at most twice [timeouts]
  // connect). A backend that does not answer is reported kDown with why;
  // this call does not fail.
  ClusterHealth Health(const HealthOptions& options = {}) const;

  // Resolves the prepared transactions of two-phase commit left in doubt
  // on the shards by a process that died mid-commit (see transaction.h),
  // and reports what it did. Also runs on its own when the cluster opens
  // and every [transactions] recovery_interval, unless
  // recover_in_background is off (config.h); what such a pass, or another
  // process, resolved first is not in this report. Fails only when the
  // decision log (the [catalog], or the first shard) cannot be reached; a
  // shard that cannot be is listed in the report.
  [[nodiscard]] absl::StatusOr<RecoveryReport> Recover() const;

  // Runs `sql` unchanged on the shard that owns `key` of sharded table
  // `table`, without analysing it: for callers who know better.
  // Fails as ShardMap::Place does for the table and key, and otherwise as
  // Execute does. While a slice of `table`'s distribution moves and this
  // shard is the move's source or destination, SQL that writes a table of
  // that distribution (or DO / CALL, or SQL that does not parse) is
  // refused with kFailedPrecondition (SQLSTATE 55000): the move would not
  // apply it on its destination. Execute and Transactions do.
  [[nodiscard]] absl::StatusOr<Result> ExecuteOnShardOf(
      std::string_view table, const Key& key, std::string_view sql,
      const std::vector<Param>& params = {}) const;

  // Runs `sql` on every shard of the current map concurrently and waits for
  // all of them, each on a connection of its own (closed afterwards, so
  // session settings such as SET do not outlive the call). `sql` is one SQL
  // string without parameters (typically DDL);
  // several statements separated by ';' run as one implicit transaction on
  // each shard. Returns one outcome per shard, in shard order. A failure on
  // one shard does not stop the others, and nothing is rolled back across
  // shards: the caller sees exactly which shards applied it.
  // While a slice moves (ShardMap::moves()), SQL that writes a table of
  // the moving distribution (or DO / CALL, or SQL that does not parse)
  // runs nowhere: every outcome is kFailedPrecondition (SQLSTATE 55000),
  // saying to wait for the move or to write through Execute.
  [[nodiscard]] std::vector<ShardOutcome> ExecuteOnAllShards(
      std::string_view sql) const;

 private:
  Cluster(Config config, std::unique_ptr<internal::LiveMap> live);

  // Execute by one map. Sets `retryable` when a failure left nothing done
  // anywhere (so that a statement refused for a stale map can run again).
  absl::StatusOr<Result> ExecuteRouted(
      const std::shared_ptr<const ShardMap>& map, std::string_view sql,
      const std::vector<Param>& params, const ExecuteOptions& execute,
      const internal::ExecOptions& options, bool& retryable) const;

  const Config config_;

  const std::unique_ptr<internal::Router> router_;
  // Connections of Execute and ExecuteOnShardOf; ExecuteOnAllShards uses its
  // own, so that a script's session settings never leak into the pool.
  const std::unique_ptr<internal::ConnectionPools> pools_;

  friend internal::DecisionLog& internal::DecisionLogOf(const Cluster& cluster);
  // Where two-phase commit records its decisions.
  const std::shared_ptr<internal::DecisionLog> decisions_;
  // Runs recovery in the background; stopped by the destructor. Null
  // without [transactions] recover_in_background.
  std::shared_ptr<internal::RecoveryLoop> recovery_;
  friend internal::ReadBalancer* internal::ReadBalancerOf(
      const Cluster& cluster);
  // Where reads go among primaries and replicas, and the health monitor
  // behind it; null when no shard has a replica. Stopped by the destructor.
  std::unique_ptr<internal::ReadBalancer> reads_;

  friend internal::LiveMap& internal::LiveMapOf(const Cluster& cluster);
  std::unique_ptr<internal::LiveMap> live_;
};

}  // namespace shardkit

#endif  // SHARDKIT_CLUSTER_H_
