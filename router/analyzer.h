// Internal: what a statement touches and which shards it must run on.
//
// AnalyzeStatement reads one parsed statement against a shard map and
// returns a RoutingPlan: the statement's kind, the tables of the map it
// names, their distribution, and the shard-key condition as a small tree
// (key = v, key IN (...), key = ANY($n), ranges; AND / OR of them) that
// TargetShards evaluates with the statement's parameters. A plan holds no
// parameter values, so one plan serves every execution of a statement.
//
// An aggregating SELECT gets an AggregatePlan: the SQL each shard runs and
// the SQL that combines their partial rows on one shard.
//
// What is refused, each with a message that says why and what to do: a
// table not in the map; a join or subquery of sharded tables that are not
// tied together by their shard keys (its rows would have to meet across
// shards); tables of two distributions in one statement; a write that
// mixes reference and sharded tables; changing a shard key; an INSERT whose
// rows' keys are not constants or parameters.
//
// Thread-safety: functions are thread-safe; a plan is immutable. A plan
// points into the ShardMap it was made from and lives no longer than it.

#ifndef SHARDKIT_ROUTER_ANALYZER_H_
#define SHARDKIT_ROUTER_ANALYZER_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shardkit/shard_map.h"

struct PgQuery__Node;
struct PgQuery__FuncCall;

namespace shardkit::internal {

// A value the shard key is compared with: a constant, or parameter $n.
struct KeyOperand {
  int param = 0;  // > 0: the statement's parameter $param
  // param == 0: the constant's text; nullopt for SQL NULL.
  std::optional<std::string> constant;
};

// Which keys a statement can touch.
struct KeyCondition {
  enum class Op {
    kAny,         // no restriction: every shard
    kIn,          // key equals one of `values` (key = v is kIn of one)
    kArrayParam,  // key = ANY($array_param)
    kRange,       // lower <(=) key <(=) upper; either side may be open
    kAnd,         // all of `children`
    kOr,          // any of `children`
  };
  Op op = Op::kAny;
  std::vector<KeyOperand> values;
  int array_param = 0;
  std::optional<KeyOperand> lower;
  bool lower_inclusive = true;
  std::optional<KeyOperand> upper;
  bool upper_inclusive = true;
  std::vector<KeyCondition> children;
};

enum class StatementKind { kSelect, kInsert, kUpdate, kDelete, kDdl };

// One output column of an aggregating SELECT that the router assembles
// across shards (see AggregatePlan): a GROUP BY expression, one aggregate
// (count, sum, min, max or avg, as the whole output), or any other
// expression of them (`sum(x) / count(*)`, `lower(country)`, ...).
struct AggregateTarget {
  enum class Function {
    kGroupKey, kCount, kSum, kMin, kMax, kAvg, kExpression
  };
  Function function = Function::kCount;
  std::string name;  // the output column's name, as PostgreSQL names it
};

// Walks HAVING expression `expr` in a fixed order, calling on_aggregate for
// each aggregate call (not descending into it) and on_column for each
// column reference outside them. Returns false if it meets a subquery or a
// window function.
bool VisitHaving(PgQuery__Node* expr,
                 const std::function<void(PgQuery__Node*)>& on_aggregate,
                 const std::function<void(PgQuery__Node*)>& on_column);

// Which simple aggregate `call` is (count, sum, min, max, avg without
// DISTINCT, FILTER, ORDER BY or OVER); nullopt otherwise.
std::optional<AggregateTarget::Function> SimpleAggregateOf(
    const PgQuery__FuncCall& call);

// One aggregate of an aggregating SELECT, as the combining statement
// computes it from the shards' partial rows (AggregatePlan; columns are
// numbered from 0 here, p1 is column 0).
struct CombinedAggregate {
  // count, sum, avg, min, max, bool_and, bool_or, every, bit_and, bit_or
  // or bit_xor.
  std::string function;
  // f(DISTINCT x): `columns` is {the column of x}, which each shard
  // grouped by, so that the combining statement takes f(DISTINCT) of the
  // shards' distinct values. Otherwise `columns` holds the shards' partial
  // aggregates: f(x) itself (FILTER applied), or for avg sum(x), count(x).
  bool distinct = false;
  std::vector<size_t> columns;
  // f(DISTINCT x) FILTER (WHERE c): the column holding c.
  std::optional<size_t> filter;
};

// How an aggregating SELECT (GROUP BY, aggregates, HAVING, plain DISTINCT)
// runs over several shards, planned once and kept with the plan:
//
//   SELECT lower(country) AS c, count(*), count(DISTINCT name)
//   FROM users WHERE id > $2 GROUP BY 1 HAVING avg(score) > $1
//   ORDER BY count(*) DESC LIMIT 5
//
// Each shard runs `partial_sql`: the statement's FROM and WHERE, grouped
// by the GROUP BY expressions and by the arguments of the DISTINCT
// aggregates, selecting those and the partial aggregates (avg as a sum and
// a count) of every aggregate the select list, HAVING and ORDER BY use:
//
//   SELECT lower(country), count(*), name, sum(score), count(score)
//   FROM users WHERE id > $1 GROUP BY 1, 3
//
// One shard then runs the combining statement over all the partial rows,
// passed as one array parameter per column ($1 .. $columns) and unnested
// as p1, p2, ...: it groups them by the GROUP BY columns again, combines
// the aggregates (count(*) as the sum of the counts, count(DISTINCT name)
// as count(DISTINCT p3), ...) and applies the select list, HAVING,
// DISTINCT, ORDER BY, LIMIT and OFFSET as written, so that PostgreSQL
// itself decides types, numeric scale, NULLs, collations and order:
//
//   SELECT p1 AS c, {count p2} AS count, {count DISTINCT p3} AS count
//   FROM {partial rows} GROUP BY p1 HAVING {avg p4 p5} > $6
//   ORDER BY {count p2} DESC LIMIT 5
//
// The partial columns' types are known only from the shards' answers, so
// the combining statement is kept as text around holes (in braces above):
// the FROM item over the partial rows, and each aggregate, whose SQL
// depends on the types (sum(int4) is int8, whose sum is numeric: cast
// back).
//
// A column outside aggregates and GROUP BY (allowed by PostgreSQL when the
// grouped columns include its table's primary key) is selected by the
// shards without grouping by it, so that their PostgreSQL checks it, and
// grouped by when combining, which changes no group.
struct AggregatePlan {
  std::string partial_sql;
  // partial_sql's $i is the statement's $partial_params[i - 1].
  std::vector<int> partial_params;
  // The number of columns partial_sql returns.
  size_t columns = 0;
  // The columns whose values the combining statement compares (grouped,
  // DISTINCT arguments, min and max, columns that depend on the grouped
  // ones): they must keep the collation they have on the shards.
  // `collation_sql` (with partial_sql's parameters) returns one row with
  // their collations (pg_collation_for; NULL for a type without one), in
  // this order; empty when there are none.
  std::vector<size_t> collated;
  std::string collation_sql;
  // The combining statement: text[0] hole[0] text[1] ... hole[n-1]
  // text[n]; a hole is kFrom or an index into `aggregates`.
  static constexpr int kFrom = -1;
  std::vector<std::string> text;
  std::vector<int> holes;
  std::vector<CombinedAggregate> aggregates;
  // The combining statement's $(columns + i) is the statement's
  // $combine_params[i - 1].
  std::vector<int> combine_params;
};

// One ORDER BY item of a SELECT, to merge the shards' sorted rows. It names
// a result column: by name (`ORDER BY name`, `ORDER BY u.name`) or by
// position (`ORDER BY 2`); the column is found in the result at run time.
struct SortSpec {
  std::string column;  // empty when by position
  int position = 0;    // 1-based; 0 when by name
  bool descending = false;
  bool nulls_first = false;  // as PostgreSQL defaults it: NULLS FIRST for DESC
  std::string collation;     // from COLLATE; empty: the column's own
};

struct RoutingPlan {
  StatementKind kind = StatementKind::kSelect;
  // Every table of the map the statement names, without repeats, in order
  // of first appearance.
  std::vector<const Table*> tables;
  // The distribution of its sharded tables; nullptr when it names none.
  const Distribution* distribution = nullptr;
  // Whether the statement changes data (INSERT, UPDATE, DELETE, DDL).
  bool writes = false;
  // A SELECT that must run on a primary even outside a transaction: it
  // locks rows (FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE), creates a
  // table (SELECT INTO), or its WITH holds an INSERT, UPDATE or DELETE.
  bool needs_primary = false;
  // It names tables not in the map (with reference tables at most): it runs
  // on the map's default shard, where such tables live.
  bool on_default_shard = false;
  // SELECT / UPDATE / DELETE of sharded tables: the keys it can touch.
  KeyCondition key;
  // A subquery over sharded tables is not tied to the outer query by the
  // shard key: correct only on a single shard. Holds the refusal for when
  // the key condition selects more than one.
  std::string single_shard_only;
  // SELECT: the first construct whose result over several shards the
  // router cannot assemble from theirs ("aggregate string_agg() ...",
  // "DISTINCT ON", "ORDER BY an expression ...", ...), saying what to do;
  // empty when concatenation, a merge by `order_by` with `limit` and
  // `offset`, or the aggregate plan is exact.
  std::string needs_merge;
  // SELECT across shards: how to merge the shards' rows. Each shard sorts
  // its own rows and returns at most limit + offset of them; the merged
  // rows are then skipped by `offset` and cut at `limit`.
  std::vector<SortSpec> order_by;
  // Non-empty for an aggregating SELECT the router assembles across
  // shards: its output columns, in order, and how (`aggregate`). The
  // combining statement then sorts and limits: `order_by`, `limit` and
  // `offset` are left empty.
  std::vector<AggregateTarget> aggregates;
  AggregatePlan aggregate;
  std::optional<KeyOperand> limit;   // nullopt: none (or LIMIT ALL)
  std::optional<KeyOperand> offset;  // nullopt: none
  // INSERT ... VALUES into a sharded table: each row's shard key.
  std::vector<KeyOperand> insert_keys;
};

// See the file comment. Fails with kInvalidArgument (SQLSTATE 0A000 for a
// construct that cannot run across shards, 42P01 for a table not in the
// map). To deparse an aggregating SELECT's rewritten parts, it swaps nodes
// of `statement` and puts them back before it returns: nothing else may
// read the tree meanwhile. REQUIRES: on the parser thread (it walks a
// libpg_query tree).
[[nodiscard]] absl::StatusOr<RoutingPlan> AnalyzeStatement(
    const PgQuery__Node& statement, const ShardMap& map);

// Parameters as the caller gives them: text, nullopt for NULL.
using Params = std::vector<std::optional<std::string>>;

// The shards `plan` must run on with `params`, ascending, no repeats:
//   statements on tables not in the map: the default shard;
//   DDL, and writes to reference tables: every shard of the map;
//   reads of reference tables only, and statements naming no table: one
//     shard (the first);
//   sharded tables: the owners of the keys the condition allows (every
//     owner of the distribution when it does not narrow them).
// A key that cannot be a value of the key type (id = 'abc' for int8) can
// match no row, and a NULL key none either: they select no shard; if no
// shard remains, the first owner runs it so that the result still has its
// columns. Fails with kInvalidArgument for a missing parameter, or with
// `plan.single_shard_only` when it needs more than one shard.
// REQUIRES: plan.kind != kInsert (see InsertRowShards).
[[nodiscard]] absl::StatusOr<std::vector<ShardId>> TargetShards(
    const RoutingPlan& plan, const ShardMap& map, const Params& params);

// INSERT into a sharded table: the shard of each row, in row order. Fails
// with kInvalidArgument for a NULL key or one that does not fit the key
// type. REQUIRES: plan.kind == kInsert && plan.distribution != nullptr.
[[nodiscard]] absl::StatusOr<std::vector<ShardId>> InsertRowShards(
    const RoutingPlan& plan, const Params& params);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_ANALYZER_H_
