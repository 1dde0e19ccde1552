// Internal: what a statement touches and which shards it must run on.
//
// AnalyzeStatement reads one parsed statement against a shard map and
// returns a RoutingPlan: the statement's kind, the tables of the map it
// names, their distribution, and the shard-key condition as a small tree
// (key = v, key IN (...), key = ANY($n), ranges; AND / OR of them) that
// TargetShards evaluates with the statement's parameters. A plan holds no
// parameter values, so one plan serves every execution of a statement.
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

// One output column of an aggregating SELECT that the router can assemble
// (`SELECT country, count(*), avg(x) FROM t WHERE ... GROUP BY country
// ORDER BY 2 DESC LIMIT 5`): each output is a grouped column or count, sum,
// min, max or avg. Each shard computes partial aggregates per group, and
// one shard combines them (and sorts and limits) in SQL.
struct AggregateTarget {
  enum class Function { kGroupKey, kCount, kSum, kMin, kMax, kAvg };
  Function function = Function::kCount;
  std::string name;  // the output column's name
  // An aggregate only HAVING uses: computed, combined, never output. They
  // follow the outputs, in the order VisitHaving meets them.
  bool hidden = false;
};

// Walks HAVING expression `expr` in a fixed order, calling on_aggregate for
// each aggregate call (not descending into it) and on_column for each
// column reference outside them. Returns false if it meets a subquery or a
// window function (then HAVING is not assembled across shards).
bool VisitHaving(PgQuery__Node* expr,
                 const std::function<void(PgQuery__Node*)>& on_aggregate,
                 const std::function<void(PgQuery__Node*)>& on_column);

// Which simple aggregate `call` is (count, sum, min, max, avg without
// DISTINCT, FILTER, ORDER BY or OVER); nullopt otherwise.
std::optional<AggregateTarget::Function> SimpleAggregateOf(
    const PgQuery__FuncCall& call);

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
  // router cannot assemble from theirs ("aggregate count()", "GROUP BY",
  // "DISTINCT", "ORDER BY an expression", ...); empty when concatenation,
  // or a merge by `order_by` with `limit` and `offset`, is exact.
  std::string needs_merge;
  // SELECT across shards: how to merge the shards' rows. Each shard sorts
  // its own rows and returns at most limit + offset of them; the merged
  // rows are then skipped by `offset` and cut at `limit`.
  std::vector<SortSpec> order_by;
  // Non-empty for an aggregating SELECT the router assembles (see
  // AggregateTarget), in output order; `order_by`, `limit` and `offset`
  // then apply to the combined rows.
  std::vector<AggregateTarget> aggregates;
  std::optional<KeyOperand> limit;   // nullopt: none (or LIMIT ALL)
  std::optional<KeyOperand> offset;  // nullopt: none
  // INSERT ... VALUES into a sharded table: each row's shard key.
  std::vector<KeyOperand> insert_keys;
};

// See the file comment. Fails with kInvalidArgument (SQLSTATE 0A000 for a
// construct that cannot run across shards, 42P01 for a table not in the
// map). REQUIRES: on the parser thread (it walks a libpg_query tree).
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
