// Internal: runs one statement through the router.
//
// Router::Execute parses and analyses a statement once per map epoch (plans
// are cached by statement text), picks the target shards with the
// statement's parameters, runs it there concurrently, and combines what the
// shards return. INSERT ... VALUES rows are split by shard: each shard gets
// only its rows, with the parameters renumbered to the ones those rows use.
//
// Combining is exact: rows of several shards are concatenated, or, for a
// SELECT with ORDER BY, merged in the order PostgreSQL would give them
// (merge.h); LIMIT n OFFSET m goes to each shard as LIMIT n + m and is
// applied to the merged rows. An aggregating SELECT (aggregates, GROUP BY,
// DISTINCT) runs as the analyzer's AggregatePlan: a partial statement on
// each shard, whose rows one shard then combines with the statement's own
// select list, HAVING, ORDER BY and LIMIT. What cannot be answered exactly
// across shards is refused, naming the construct, and runs when the key
// condition selects one shard.
//
// Thread-safety: thread-safe.

#ifndef SHARDKIT_ROUTER_ROUTER_H_
#define SHARDKIT_ROUTER_ROUTER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "router/analyzer.h"
#include "router/executor.h"
#include "router/merge.h"
#include "shardkit/result.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

class ParsedSql;

class Router {
 public:
  // Plans kept at most; past it the cache starts over.
  static constexpr size_t kMaxCachedPlans = 4096;

  Router();
  ~Router();

  // See the file comment. `options` carries the timeouts (and pools).
  [[nodiscard]] absl::StatusOr<Result> Execute(
      const std::shared_ptr<const ShardMap>& map, std::string_view sql,
      const Params& params, const ExecOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Parses and analyses `sql` against `map`, or returns the cached plan.
  struct Plan;
  [[nodiscard]] absl::StatusOr<std::shared_ptr<Plan>> PlanFor(
      const std::shared_ptr<const ShardMap>& map, std::string_view sql)
      ABSL_LOCKS_EXCLUDED(mu_);

  // How the shards' results of a statement make its result.
  enum class Combining {
    kConcat,     // rows and counts add up (or, for copies, the first's)
    kMerge,      // a SELECT's rows merged by ORDER BY, then OFFSET / LIMIT
    kAggregate,  // partial aggregates combined (ExecuteAggregated)
  };

  // A statement ready to run: its plan, and what to send to which shard
  // with the parameters given.
  struct Prepared {
    std::shared_ptr<Plan> plan;  // never null
    const RoutingPlan* routing = nullptr;  // the plan's; never null
    std::vector<ShardTask> tasks;  // at least one
    Combining combine = Combining::kConcat;
    // kMerge: the rows to skip and keep after merging.
    int64_t offset = 0;
    std::optional<int64_t> limit;
    // A write that reaches the source shard of a move in dual-write
    // (rebalancer/shard_objects.h): those tasks return the row images
    // after the user's RETURNING columns, and Run takes them off the
    // result into here, for the caller to apply on the destinations in
    // the same distributed transaction. nullptr: nothing to mirror.
    struct DualWrite {
      const Table* table = nullptr;  // the written table
      StatementKind kind = StatementKind::kInsert;
      // The kDualWrite moves of the table's distribution whose source is
      // one of the tasks' shards (the plan's map's).
      std::vector<const MovingSlice*> moves;
      // Indexes into `tasks` of the moves' sources.
      std::vector<size_t> tasks;
      // Filled by Run, one per entry of `tasks`: the image's columns and
      // rows (the table's columns, as RETURNING t.* gives them).
      std::vector<std::vector<Column>> image_columns;
      std::vector<std::vector<Row>> images;
      // Filled by Run, one per entry of `tasks`: the id of the source's
      // transaction that wrote them (pg_current_xact_id(), as text), empty
      // when it returned no row.
      std::vector<std::string> xids;
    };
    std::shared_ptr<DualWrite> dual;
  };

  // Plans `sql` (PlanFor), checks `params` against it and builds the
  // shards' tasks. Fails as Execute does before anything runs.
  [[nodiscard]] absl::StatusOr<Prepared> Prepare(
      const std::shared_ptr<const ShardMap>& map, std::string_view sql,
      const Params& params) ABSL_LOCKS_EXCLUDED(mu_);

  // Runs a prepared statement's tasks (on the sessions they name, if any)
  // and combines their results. Execute is Prepare, then Run.
  [[nodiscard]] absl::StatusOr<Result> Run(const Prepared& prepared,
                                           const Params& params,
                                           const ExecOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The ORDER BY of a merged SELECT resolved against its result's
  // `columns`: how each key compares (type, collation, looked up on
  // `shard` once per connection string).
  [[nodiscard]] absl::StatusOr<std::vector<MergeKey>> MergeKeys(
      const RoutingPlan& routing, const std::vector<Column>& columns,
      const ShardTask& shard, const ExecOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);

  size_t CachedPlansForTest() const ABSL_LOCKS_EXCLUDED(mu_);

  // A dual-write source's statement: `sql` (one INSERT, UPDATE or DELETE)
  // with the row images added to its RETURNING; rewritten once per SQL
  // text, then cached.
  [[nodiscard]] absl::StatusOr<std::string> ImageReturningSql(
      const std::string& sql) ABSL_LOCKS_EXCLUDED(mu_);

  // The columns of `table` as the shard of `shard` has them, in order,
  // with their SQL types and which make the primary key; looked up once
  // per (table, shard, map epoch).
  struct TableColumns {
    std::vector<std::string> names;
    std::vector<std::string> types;  // format_type
    std::vector<bool> generated;
    std::vector<size_t> primary_key;  // indexes into names
  };
  [[nodiscard]] absl::StatusOr<std::shared_ptr<const TableColumns>>
  ColumnsOf(const Table& table, uint64_t epoch, const ShardTask& shard,
            const ExecOptions& options) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Runs a SELECT on several shards and merges their rows by ORDER BY,
  // then applies OFFSET and LIMIT.
  absl::StatusOr<Result> ExecuteMerged(const Prepared& prepared,
                                       const ExecOptions& options);

  // Runs the partial aggregates of an aggregating SELECT on every shard
  // and combines them (grouping, ordering, LIMIT / OFFSET), in SQL, on the
  // first.
  absl::StatusOr<Result> ExecuteAggregated(const RoutingPlan& routing,
                                           const std::vector<ShardTask>& tasks,
                                           const Params& params,
                                           const ExecOptions& options);

  // SQL names of the columns' types (format_type), asked of `shard` once
  // per type.
  absl::StatusOr<std::vector<std::string>> TypeNames(
      const ShardTask& shard, const std::vector<Column>& columns,
      const ExecOptions& options) ABSL_LOCKS_EXCLUDED(mu_);

  // The collation that orders text in the shard's database (datcollate),
  // asked once per connection string.
  absl::StatusOr<std::string> DatabaseCollation(const ShardTask& shard,
                                                const ExecOptions& options)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The collation a result column sorts by: "default" (the database's)
  // for a computed column or one without its own, else the libc locale of
  // the table column's collation, asked of `shard`.
  absl::StatusOr<std::string> ColumnCollation(const ShardTask& shard,
                                              const Column& column,
                                              const ExecOptions& options);

  absl::StatusOr<std::vector<ShardTask>> InsertTasks(
      Plan& plan, const ShardMap& map, std::string_view sql,
      const Params& params);

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Plan>> plans_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> collations_ ABSL_GUARDED_BY(mu_);
  // By "<dsn>/<type oid>": a user-defined type's OID differs between
  // databases.
  absl::flat_hash_map<std::string, std::string> type_names_ ABSL_GUARDED_BY(mu_);
  // By "<table>/<dsn>/<epoch>".
  absl::flat_hash_map<std::string, std::shared_ptr<const TableColumns>>
      table_columns_ ABSL_GUARDED_BY(mu_);
  // By the statement's SQL (ImageReturningSql).
  absl::flat_hash_map<std::string, std::string> image_sql_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_ROUTER_H_
