#include "router/router.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "router/hiding.h"
#include "router/merge.h"
#include "router/move_guard.h"
#include "router/parser_thread.h"
#include "router/shard_connection.h"
#include "router/sql_parser.h"
#include "router/tree_walk.h"

namespace shardkit::internal {

struct Router::Plan {
  // The map the plan was made for; keeps the tables it points to alive.
  std::shared_ptr<const ShardMap> map;
  // Touched only on the parser thread (INSERT rows are split by rewriting
  // it), which runs one job at a time.
  std::unique_ptr<ParsedSql> tree;
  RoutingPlan routing;
  // What a SELECT with OFFSET sends to each of several shards: LIMIT
  // count + offset and no OFFSET (each shard cannot know which rows the
  // others skip). Empty: the statement as written.
  std::string sql_across_shards;
  // Its parameters: params[n - 1] for each n here, in order.
  std::vector<int> params_across_shards;
  // The lowest and highest $n the statement uses (1 and 0 without any).
  // Execute checks the parameters given against them before anything
  // looks a parameter up.
  int lowest_param = 1;
  int highest_param = 0;
  // The statement as sent to each shard that hides a moving slice's keys
  // (router/hiding.h): `sql` in place of the statement as written,
  // `sql_across_shards` in place of the plan's (same parameters).
  struct Hidden {
    std::string sql;
    std::string sql_across_shards;
  };
  absl::flat_hash_map<ShardId, Hidden> hidden;
  // INSERT / UPDATE / DELETE of a sharded table: that table.
  const Table* write_table = nullptr;
  // It holds a data-modifying WITH, which is not dual-written: refused
  // where it reaches a shard of a move (router/move_guard.h).
  bool writing_with = false;
};

namespace {

// The lowest and highest $n in `tree` (libpg_query gives $0 as 0, and a
// number past INT_MAX as a negative), or {1, 0} if it has none.
std::pair<int, int> ParamRange(const ParsedSql& tree) {
  bool seen = false;
  int lowest = 1, highest = 0;
  std::function<void(ProtobufCMessage*)> walk = [&](ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__param_ref__descriptor)) {
      const int n = reinterpret_cast<PgQuery__ParamRef*>(m)->number;
      lowest = seen ? std::min(lowest, n) : n;
      highest = seen ? std::max(highest, n) : n;
      seen = true;
    }
    ForEachChild(m, walk);
  };
  walk(&const_cast<ParsedSql&>(tree).mutable_statement(0)->base);
  return {lowest, highest};
}

// "INSERT 0 3" + "INSERT 0 4" -> "INSERT 0 7": the tag with its count
// replaced by the total.
std::string TagWithCount(const std::string& tag, int64_t count) {
  const size_t space = tag.rfind(' ');
  int64_t ignored;
  if (space == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(tag).substr(space + 1), &ignored)) {
    return tag;
  }
  return StrCat(tag.substr(0, space + 1), count);
}

// SQL for the (possibly rewritten) statement with the parameters it still
// uses renumbered $1.. in order; `used` gets their original numbers, so
// that its parameters are params[used[i] - 1]. The numbers are restored.
absl::StatusOr<std::string> DeparseRenumbered(ParsedSql& tree,
                                              std::vector<int>* used) {
  std::vector<PgQuery__ParamRef*> refs;
  std::function<void(ProtobufCMessage*)> collect = [&](ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__param_ref__descriptor)) {
      refs.push_back(reinterpret_cast<PgQuery__ParamRef*>(m));
    }
    ForEachChild(m, collect);
  };
  collect(&tree.mutable_statement(0)->base);
  std::set<int> numbers;
  for (const PgQuery__ParamRef* ref : refs) numbers.insert(ref->number);
  used->assign(numbers.begin(), numbers.end());
  std::map<int, int> renumber;
  for (size_t i = 0; i < used->size(); ++i) renumber[(*used)[i]] = i + 1;
  for (PgQuery__ParamRef* ref : refs) ref->number = renumber[ref->number];
  absl::StatusOr<std::string> sql = tree.Deparse();
  std::map<int, int> back;
  for (const auto& [from, to] : renumber) back[to] = from;
  for (PgQuery__ParamRef* ref : refs) ref->number = back[ref->number];
  return sql;
}

// SQL for the INSERT with only `rows` of its VALUES, its parameters
// renumbered $1.. in order; `used` gets the original numbers, so that the
// shard's parameters are params[used[i] - 1]. The tree is restored after.
absl::StatusOr<std::string> InsertForRows(ParsedSql& tree,
                                          const std::vector<size_t>& rows,
                                          std::vector<int>* used) {
  PgQuery__InsertStmt* insert = tree.mutable_statement(0)->insert_stmt;
  PgQuery__SelectStmt* values = insert->select_stmt->select_stmt;
  PgQuery__Node** all_rows = values->values_lists;
  const size_t n_all_rows = values->n_values_lists;
  std::vector<PgQuery__Node*> chosen;
  chosen.reserve(rows.size());
  for (size_t r : rows) chosen.push_back(all_rows[r]);
  values->values_lists = chosen.data();
  values->n_values_lists = chosen.size();

  absl::StatusOr<std::string> sql = DeparseRenumbered(tree, used);

  values->values_lists = all_rows;
  values->n_values_lists = n_all_rows;
  return sql;
}

// The SELECT with `LIMIT count OFFSET offset` turned into
// `LIMIT count + offset` (no OFFSET), or with OFFSET dropped when there is
// no LIMIT. The tree is restored after.
absl::StatusOr<std::string> PushDownOffset(ParsedSql& tree,
                                           std::vector<int>* used) {
  PgQuery__SelectStmt* select = tree.mutable_statement(0)->select_stmt;
  PgQuery__Node* count = select->limit_count;
  PgQuery__Node* offset = select->limit_offset;
  // Nodes on the stack: deparse only reads them, and the tree gets its own
  // pointers back before anything could free them.
  PgQuery__String plus = PG_QUERY__STRING__INIT;
  plus.sval = const_cast<char*>("+");
  PgQuery__Node plus_node = PG_QUERY__NODE__INIT;
  plus_node.node_case = PG_QUERY__NODE__NODE_STRING;
  plus_node.string = &plus;
  PgQuery__Node* name[] = {&plus_node};
  // Both sides cast to int8: `$1 + $2` alone has no type to resolve.
  PgQuery__String int8_name = PG_QUERY__STRING__INIT;
  int8_name.sval = const_cast<char*>("int8");
  PgQuery__Node int8_node = PG_QUERY__NODE__INIT;
  int8_node.node_case = PG_QUERY__NODE__NODE_STRING;
  int8_node.string = &int8_name;
  PgQuery__Node* type_names[] = {&int8_node};
  PgQuery__TypeName int8_type = PG_QUERY__TYPE_NAME__INIT;
  int8_type.n_names = 1;
  int8_type.names = type_names;
  int8_type.typemod = -1;
  PgQuery__TypeCast casts[2] = {PG_QUERY__TYPE_CAST__INIT,
                                PG_QUERY__TYPE_CAST__INIT};
  PgQuery__Node cast_nodes[2] = {PG_QUERY__NODE__INIT, PG_QUERY__NODE__INIT};
  PgQuery__Node* sides[2] = {count, offset};
  for (int i = 0; i < 2; ++i) {
    casts[i].arg = sides[i];
    casts[i].type_name = &int8_type;
    casts[i].location = -1;
    cast_nodes[i].node_case = PG_QUERY__NODE__NODE_TYPE_CAST;
    cast_nodes[i].type_cast = &casts[i];
  }
  PgQuery__AExpr sum = PG_QUERY__A__EXPR__INIT;
  sum.kind = PG_QUERY__A__EXPR__KIND__AEXPR_OP;
  sum.n_name = 1;
  sum.name = name;
  sum.lexpr = &cast_nodes[0];
  sum.rexpr = &cast_nodes[1];
  PgQuery__Node sum_node = PG_QUERY__NODE__INIT;
  sum_node.node_case = PG_QUERY__NODE__NODE_A_EXPR;
  sum_node.a_expr = &sum;
  const bool limited =
      count != nullptr && !(count->node_case == PG_QUERY__NODE__NODE_A_CONST &&
                            count->a_const->isnull);
  select->limit_count = limited ? &sum_node : nullptr;
  select->limit_offset = nullptr;
  absl::StatusOr<std::string> sql = DeparseRenumbered(tree, used);
  select->limit_count = count;
  select->limit_offset = offset;
  return sql;
}

// The aggregating SELECT as each shard runs it, as the analyzer planned it
// (AggregatePlan::partial_sql): no rewriting left for run time.
absl::StatusOr<std::string> PartialAggregates(ParsedSql& /*tree*/,
                                              const RoutingPlan& routing,
                                              std::vector<int>* used) {
  *used = routing.aggregate.partial_params;
  return routing.aggregate.partial_sql;
}

// An aggregating SELECT the router cannot combine across shards after all,
// as the shards' answers show (SQLSTATE 0A000).
absl::Status CannotCombine(std::string message) {
  absl::Status status = absl::InvalidArgumentError(std::move(message));
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("0A000"));
  return status;
}

// SQL computing aggregate `a` from the partial columns p1, p2, ... of
// `types` (SQL type names), with the result type PostgreSQL gives the
// aggregate over the original rows.
absl::StatusOr<std::string> CombinedAggregateSql(
    const CombinedAggregate& a, const std::vector<std::string>& types) {
  auto column = [](size_t c) { return StrCat("p", c + 1); };
  const std::string x = column(a.columns[0]);
  if (a.distinct) {
    std::string sql = StrCat(a.function, "(DISTINCT ", x, ")");
    if (a.filter) StrAppend(&sql, " FILTER (WHERE ", column(*a.filter), ")");
    return StrCat("(", sql, ")");
  }
  const std::string& type = types[a.columns[0]];
  if (a.function == "count") return StrCat("(coalesce(sum(", x, "), 0)::bigint)");
  // sum(int4) is int8, whose sum is numeric: cast back.
  if (a.function == "sum") return StrCat("(sum(", x, ")::", type, ")");
  if (a.function == "avg") {
    const std::string n = StrCat("sum(", column(a.columns[1]), ")");
    if (type == "interval") {
      return StrCat("(sum(", x, ") / nullif(", n, ", 0)::float8)");
    }
    if (type == "real") {
      return CannotCombine(
          "avg() of a real value across shards: PostgreSQL adds up real "
          "values as double precision, which the shards' sums in real would "
          "not match; write avg(x::float8), which PostgreSQL computes the "
          "same way");
    }
    // As PostgreSQL divides: numeric by numeric (integers, numeric), or
    // double precision.
    const std::string as = type == "double precision" ? "float8" : "numeric";
    return StrCat("(sum(", x, ")::", as, " / nullif(", n, ", 0)::", as, ")");
  }
  return StrCat("(", a.function, "(", x, "))");
}

// A PostgreSQL array literal of text values (NULL for nullopt).
std::string ArrayLiteral(const std::vector<std::optional<std::string>>& values) {
  std::string out = "{";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    if (!values[i]) {
      out += "NULL";
      continue;
    }
    out += '"';
    for (char c : *values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

// LIMIT / OFFSET as a number: a constant, or a parameter's value.
absl::StatusOr<std::optional<int64_t>> CountOf(
    const std::optional<KeyOperand>& operand, const Params& params,
    std::string_view what) {
  if (!operand) return std::optional<int64_t>();
  std::optional<std::string> text = operand->constant;
  if (operand->param > 0) {
    if (static_cast<size_t>(operand->param) > params.size()) {
      return absl::InvalidArgumentError(StrCat(
          "the statement uses $", operand->param, " but ", params.size(),
          " parameters were given"));
    }
    text = params[operand->param - 1];
  }
  if (!text) return std::optional<int64_t>();  // NULL: no limit / no offset
  int64_t n = 0;
  if (!absl::SimpleAtoi(ToAbsl(*text), &n) || n < 0) {
    absl::Status status = absl::InvalidArgumentError(
        StrCat(what, " must be a non-negative integer, not \"", *text, "\""));
    status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("2201W"));
    return status;
  }
  return std::optional<int64_t>(n);
}

// The shards `tasks` ran on, ascending, no repeats.
std::vector<ShardId> ShardsOf(const std::vector<ShardTask>& tasks) {
  std::vector<ShardId> out;
  for (const ShardTask& t : tasks) out.push_back(t.shard);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Result Combine(const RoutingPlan& plan, std::vector<TaskOutcome>& done,
               const std::vector<ShardTask>& tasks) {
  Result out = std::move(done[0].result);
  const bool copies = plan.kind == StatementKind::kDdl ||
                      (plan.distribution == nullptr && plan.writes);
  if (!copies) {
    // Several shards' parts of one answer: rows and counts add up.
    for (size_t i = 1; i < done.size(); ++i) {
      Result& part = done[i].result;
      out.rows_affected += part.rows_affected;
      out.rows.insert(out.rows.end(), std::make_move_iterator(part.rows.begin()),
                      std::make_move_iterator(part.rows.end()));
    }
    out.command_tag = TagWithCount(out.command_tag, out.rows_affected);
  }
  // Else every shard applied the same statement to its copy: the first
  // shard's answer is the answer.
  out.shards = ShardsOf(tasks);
  return out;
}

// PostgreSQL's own checks of a statement's $n against the parameters
// given, made before anything looks a parameter up.
absl::Status CheckParams(const Router::Plan& plan, const Params& params) {
  absl::Status status;
  if (plan.lowest_param < 1) {
    status = absl::InvalidArgumentError(
        StrCat("there is no parameter $", plan.lowest_param,
               ": parameters are numbered from $1"));
    status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("42P02"));
  } else if (static_cast<size_t>(plan.highest_param) > params.size()) {
    status = absl::InvalidArgumentError(
        StrCat("the statement uses $", plan.highest_param, " but ",
               params.size(), params.size() == 1 ? " parameter was" :
               " parameters were", " given"));
    status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("08P01"));
  }
  return status;
}

}  // namespace

// The hidden variants of the plan's statements (Plan::hidden), for each
// shard that hides keys of the statement's distribution. An INSERT ...
// VALUES reads nothing, and DDL is the user's to run on both sides.
absl::Status PlanHiding(const ShardMap& map, Router::Plan& plan) {
  const RoutingPlan& routing = plan.routing;
  if (routing.distribution == nullptr || map.moves().empty() ||
      routing.kind == StatementKind::kInsert ||
      routing.kind == StatementKind::kDdl) {
    return absl::OkStatus();
  }
  const size_t distribution = static_cast<size_t>(
      routing.distribution - map.distributions().data());
  // The statement across shards (partial aggregates, LIMIT pushed down)
  // is hidden from its own tree: it was deparsed from the plan's already.
  std::optional<ParsedSql> across;
  if (!plan.sql_across_shards.empty()) {
    ASSIGN_OR_RETURN(across, ParsedSql::Parse(plan.sql_across_shards));
  }
  for (ShardId shard : HidingShards(map, distribution)) {
    Router::Plan::Hidden hidden;
    RETURN_IF_ERROR(WithSliceHidden(
        *plan.tree, map, distribution, shard, [&]() -> absl::Status {
          ASSIGN_OR_RETURN(hidden.sql, plan.tree->Deparse());
          return absl::OkStatus();
        }));
    if (across.has_value()) {
      RETURN_IF_ERROR(WithSliceHidden(
          *across, map, distribution, shard, [&]() -> absl::Status {
            ASSIGN_OR_RETURN(hidden.sql_across_shards, across->Deparse());
            return absl::OkStatus();
          }));
    }
    plan.hidden.emplace(shard, std::move(hidden));
  }
  return absl::OkStatus();
}


namespace {

// The RangeVar an INSERT, UPDATE or DELETE writes; nullptr for others.
PgQuery__RangeVar* WrittenRelation(PgQuery__Node& statement) {
  switch (statement.node_case) {
    case PG_QUERY__NODE__NODE_INSERT_STMT:
      return statement.insert_stmt->relation;
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
      return statement.update_stmt->relation;
    case PG_QUERY__NODE__NODE_DELETE_STMT:
      return statement.delete_stmt->relation;
    default:
      return nullptr;
  }
}

// The column that ends the user's RETURNING columns in a source's
// statement of a dual-write; the row image follows it. Its value is the
// source transaction's id (Prepared::DualWrite::xids).
constexpr std::string_view kImageMarker = "shardkit_image";

// Rewritten dual-write statements cached at most (Router::ImageReturningSql).
constexpr size_t kMaxCachedImageSql = 1024;

std::string QuoteName(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

// `sql` (one INSERT, UPDATE or DELETE) returning, after its own RETURNING
// columns, the marker column and the row image (`t.*`).
// REQUIRES: on the parser thread.
absl::StatusOr<std::string> WithImageReturning(std::string_view sql) {
  ASSIGN_OR_RETURN(ParsedSql tree, ParsedSql::Parse(sql));
  PgQuery__Node* statement = tree.mutable_statement(0);
  PgQuery__RangeVar* rv = WrittenRelation(*statement);
  if (rv == nullptr) {
    return absl::InternalError("dual-write of a statement that writes no table");
  }
  const std::string ref = QuoteName(rv->alias != nullptr ? rv->alias->aliasname
                                                         : rv->relname);
  ASSIGN_OR_RETURN(ParsedSql extra,
                   ParsedSql::Parse(StrCat("SELECT pg_current_xact_id()::text AS ",
                                           kImageMarker, ", ", ref, ".*")));
  PgQuery__SelectStmt* select = extra.mutable_statement(0)->select_stmt;
  size_t* count = nullptr;
  PgQuery__Node*** list = nullptr;
  switch (statement->node_case) {
    case PG_QUERY__NODE__NODE_INSERT_STMT:
      count = &statement->insert_stmt->n_returning_list;
      list = &statement->insert_stmt->returning_list;
      break;
    case PG_QUERY__NODE__NODE_UPDATE_STMT:
      count = &statement->update_stmt->n_returning_list;
      list = &statement->update_stmt->returning_list;
      break;
    default:
      count = &statement->delete_stmt->n_returning_list;
      list = &statement->delete_stmt->returning_list;
      break;
  }
  std::vector<PgQuery__Node*> items(*list, *list + *count);
  items.push_back(select->target_list[0]);
  items.push_back(select->target_list[1]);
  const size_t saved_count = *count;
  PgQuery__Node** const saved_list = *list;
  *count = items.size();
  *list = items.data();
  absl::StatusOr<std::string> out = tree.Deparse();
  *count = saved_count;
  *list = saved_list;
  return out;
}

// The sharded table an INSERT, UPDATE or DELETE writes; nullptr otherwise.
const Table* WrittenTable(const PgQuery__Node& statement, const ShardMap& map) {
  const PgQuery__RangeVar* rv =
      WrittenRelation(const_cast<PgQuery__Node&>(statement));
  if (rv == nullptr) return nullptr;
  const std::string_view schema = rv->schemaname;
  const Table* table = map.FindTable(
      schema.empty() ? std::string(rv->relname)
                     : StrCat(schema, ".", rv->relname));
  if (table == nullptr && schema == "public") table = map.FindTable(rv->relname);
  if (table == nullptr || table->reference) return nullptr;
  return table;
}

// The shard keys a write names when it names every key it can touch
// (INSERT ... VALUES, or a WHERE of key = v / key IN (...)), as text;
// nullopt when it does not (or one is NULL).
std::optional<std::vector<std::string>> NamedKeys(const RoutingPlan& routing,
                                                  const Params& params) {
  const std::vector<KeyOperand>* operands = nullptr;
  if (routing.kind == StatementKind::kInsert) {
    operands = &routing.insert_keys;
  } else if (routing.key.op == KeyCondition::Op::kIn) {
    operands = &routing.key.values;
  }
  if (operands == nullptr || operands->empty()) return std::nullopt;
  std::vector<std::string> keys;
  for (const KeyOperand& operand : *operands) {
    std::optional<std::string> text = operand.constant;
    if (operand.param > 0) {
      if (static_cast<size_t>(operand.param) > params.size()) return std::nullopt;
      text = params[operand.param - 1];
    }
    if (!text) return std::nullopt;
    keys.push_back(*std::move(text));
  }
  return keys;
}

// Whether none of `keys` is in `move`'s slice: the write cannot touch it.
// False when that cannot be told (a key that does not parse, a region
// spread by a second key).
bool NoneInSlice(const std::vector<std::string>& keys, const Table& table,
                 const Distribution& distribution, const MovingSlice& move) {
  if (!table.hash_key_column.empty()) return false;
  for (const std::string& text : keys) {
    absl::StatusOr<Key> key = Key::Parse(distribution.key_type(), text);
    if (!key.ok()) return false;
    absl::StatusOr<Placement> placement = distribution.Place(*key, nullptr);
    if (!placement.ok() || move.Contains(distribution, *key, *placement)) {
      return false;
    }
  }
  return true;
}

// Marks the tasks of `out` that reach the source of a move in dual-write
// of the written table's distribution, and has them return the row images
// (Prepared::DualWrite).
absl::Status PlanDualWrite(Router& router, const ShardMap& map,
                           const Params& params, Router::Prepared& out) {
  const Table* table = out.plan->write_table;
  if (table == nullptr || map.moves().empty() || !out.routing->writes) {
    return absl::OkStatus();
  }
  auto dual = std::make_shared<Router::Prepared::DualWrite>();
  dual->table = table;
  dual->kind = out.routing->kind;
  const Distribution& distribution = map.distributions()[table->distribution];
  const std::optional<std::vector<std::string>> keys =
      NamedKeys(*out.routing, params);
  for (const MovingSlice& move : map.moves()) {
    if (move.phase != MovePhase::kDualWrite ||
        move.distribution != table->distribution) {
      continue;
    }
    // A write to keys of the source outside the slice runs as it would
    // without the move: one statement, one round trip.
    if (keys && NoneInSlice(*keys, *table, distribution, move)) continue;
    for (size_t i = 0; i < out.tasks.size(); ++i) {
      if (out.tasks[i].shard != move.source) continue;
      dual->moves.push_back(&move);
      if (std::find(dual->tasks.begin(), dual->tasks.end(), i) ==
          dual->tasks.end()) {
        dual->tasks.push_back(i);
      }
    }
  }
  if (dual->tasks.empty()) return absl::OkStatus();
  for (size_t i : dual->tasks) {
    ASSIGN_OR_RETURN(out.tasks[i].sql, router.ImageReturningSql(out.tasks[i].sql));
    // The same statement on every write of this kind while the move
    // lasts: prepared once per connection (it carries parameters, so it
    // is a single statement).
    out.tasks[i].prepare = !out.tasks[i].params.empty();
  }
  dual->image_columns.resize(dual->tasks.size());
  dual->images.resize(dual->tasks.size());
  dual->xids.resize(dual->tasks.size());
  out.dual = std::move(dual);
  return absl::OkStatus();
}

// Starts every task of a write of a sharded table with the table's
// WriteMark, by which the write guard of a table under a move tells the
// writes the router routed (and dual-writes) from those it did not see
// (rebalancer/shard_objects.h, "Write guard"). After PlanDualWrite, whose
// rewrite would drop the comment.
void MarkWrites(const Router::Plan& plan, Router::Prepared& out) {
  if (plan.write_table == nullptr) return;
  const std::string mark = WriteMark(plan.write_table->name);
  for (ShardTask& task : out.tasks) task.sql.insert(0, mark);
}

// Takes the row images off the results of the dual-write's source tasks
// (Prepared::DualWrite), leaving what the user's statement returns.
absl::Status TakeImages(Router::Prepared::DualWrite& dual,
                        std::vector<TaskOutcome>& done,
                        const std::vector<ShardTask>& tasks) {
  for (size_t j = 0; j < dual.tasks.size(); ++j) {
    Result& result = done[dual.tasks[j]].result;
    size_t marker = result.columns.size();
    for (size_t c = result.columns.size(); c-- > 0;) {
      if (result.columns[c].name == kImageMarker) {
        marker = c;
        break;
      }
    }
    if (marker == result.columns.size()) {
      return absl::InternalError(StrCat(
          "shard ", tasks[dual.tasks[j]].shard_name,
          " did not return the row images of a dual-write"));
    }
    dual.image_columns[j].assign(result.columns.begin() + marker + 1,
                                 result.columns.end());
    result.columns.resize(marker);
    if (!result.rows.empty() && result.rows[0][marker]) {
      dual.xids[j] = *result.rows[0][marker];
    }
    for (Row& row : result.rows) {
      dual.images[j].emplace_back(std::make_move_iterator(row.begin() + marker + 1),
                                  std::make_move_iterator(row.end()));
      row.resize(marker);
    }
    if (marker == 0) result.rows.clear();
  }
  return absl::OkStatus();
}

// A data-modifying WITH, DDL or TRUNCATE reaching a shard of a move is
// refused (router/move_guard.h).
absl::Status GuardMoveBypass(const ShardMap& map, const Router::Plan& plan,
                             const std::vector<ShardTask>& tasks) {
  const bool ddl = plan.routing.kind == StatementKind::kDdl;
  if ((!plan.writing_with && !ddl) || map.moves().empty()) {
    return absl::OkStatus();
  }
  std::vector<ShardId> shards;
  for (const ShardTask& task : tasks) shards.push_back(task.shard);
  return ddl ? RefuseDdlDuringMove(map, plan.routing.tables, shards)
             : RefuseWritingWithDuringMove(map, plan.routing.tables, shards);
}

}  // namespace

Router::Router() = default;
Router::~Router() = default;

size_t Router::CachedPlansForTest() const {
  absl::MutexLock lock(&mu_);
  return plans_.size();
}

absl::StatusOr<std::shared_ptr<Router::Plan>> Router::PlanFor(
    const std::shared_ptr<const ShardMap>& map, std::string_view sql) {
  {
    absl::MutexLock lock(&mu_);
    auto it = plans_.find(ToAbsl(sql));
    if (it != plans_.end() && it->second->map == map) return it->second;
  }
  auto plan = std::make_shared<Plan>();
  plan->map = map;
  absl::Status status;
  ParserThread::Default().Run([&] {
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    if (!parsed.ok()) {
      status = parsed.status();
      return;
    }
    if (parsed->size() != 1) {
      status = absl::InvalidArgumentError(
          parsed->size() == 0
              ? std::string("empty SQL: give a statement to run")
              : StrCat("the router runs one statement at a time; this SQL "
                       "holds ",
                       parsed->size(),
                       ": send them one by one (a script of DDL can go to "
                       "every shard with ExecuteOnAllShards)"));
      return;
    }
    absl::StatusOr<RoutingPlan> routing =
        AnalyzeStatement(*parsed->statement(0), *map);
    if (!routing.ok()) {
      status = routing.status();
      return;
    }
    plan->routing = *std::move(routing);
    plan->tree = std::make_unique<ParsedSql>(*std::move(parsed));
    std::tie(plan->lowest_param, plan->highest_param) =
        ParamRange(*plan->tree);
    if (!plan->routing.aggregates.empty()) {
      absl::StatusOr<std::string> partial =
          PartialAggregates(*plan->tree, plan->routing,
                            &plan->params_across_shards);
      if (!partial.ok()) {
        status = partial.status();
        return;
      }
      plan->sql_across_shards = *std::move(partial);
    }
    if (plan->routing.kind == StatementKind::kSelect && plan->routing.offset &&
        plan->routing.aggregates.empty()) {
      absl::StatusOr<std::string> pushed =
          PushDownOffset(*plan->tree, &plan->params_across_shards);
      if (!pushed.ok()) {
        status = pushed.status();
        return;
      }
      plan->sql_across_shards = *std::move(pushed);
    }
    plan->write_table = WrittenTable(*plan->tree->statement(0), *map);
    plan->writing_with = HasWritingWith(*plan->tree->statement(0));
    status = PlanHiding(*map, *plan);
  });
  RETURN_IF_ERROR(status);
  absl::MutexLock lock(&mu_);
  if (plans_.size() >= kMaxCachedPlans) plans_.clear();
  plans_[std::string(sql)] = plan;
  return plan;
}

absl::StatusOr<std::vector<ShardTask>> Router::InsertTasks(
    Plan& plan, const ShardMap& map, std::string_view sql,
    const Params& params) {
  ASSIGN_OR_RETURN(std::vector<ShardId> row_shards,
                   InsertRowShards(plan.routing, params));
  std::map<ShardId, std::vector<size_t>> rows_of;
  for (size_t row = 0; row < row_shards.size(); ++row) {
    rows_of[row_shards[row]].push_back(row);
  }
  std::vector<ShardTask> tasks;
  for (const auto& [shard, rows] : rows_of) {
    ShardTask task;
    task.shard = shard;
    task.shard_name = map.shard(shard).name;
    task.dsn = map.shard(shard).dsn;
    tasks.push_back(std::move(task));
  }
  if (tasks.size() == 1) {  // every row on one shard: the statement as is
    tasks[0].sql = std::string(sql);
    tasks[0].params = params;
    return tasks;
  }
  absl::Status status;
  ParserThread::Default().Run([&] {
    size_t i = 0;
    for (const auto& [shard, rows] : rows_of) {
      std::vector<int> used;
      absl::StatusOr<std::string> rewritten =
          InsertForRows(*plan.tree, rows, &used);
      if (!rewritten.ok()) {
        status = rewritten.status();
        return;
      }
      tasks[i].sql = *std::move(rewritten);
      for (int n : used) tasks[i].params.push_back(params[n - 1]);
      ++i;
    }
  });
  RETURN_IF_ERROR(status);
  return tasks;
}

absl::StatusOr<Router::Prepared> Router::Prepare(
    const std::shared_ptr<const ShardMap>& map, std::string_view sql,
    const Params& params) {
  Prepared out;
  ASSIGN_OR_RETURN(out.plan, PlanFor(map, sql));
  const Plan& plan = *out.plan;
  RETURN_IF_ERROR(CheckParams(plan, params));
  const RoutingPlan& routing = plan.routing;
  out.routing = &routing;
  if (routing.kind == StatementKind::kInsert && routing.distribution != nullptr) {
    ASSIGN_OR_RETURN(out.tasks, InsertTasks(*out.plan, *map, sql, params));
    for (ShardTask& task : out.tasks) task.epoch = map->epoch();
    RETURN_IF_ERROR(GuardMoveBypass(*map, plan, out.tasks));
    RETURN_IF_ERROR(PlanDualWrite(*this, *map, params, out));
    MarkWrites(plan, out);
    return out;
  }
  ASSIGN_OR_RETURN(std::vector<ShardId> targets,
                   TargetShards(routing, *map, params));
  if (targets.size() > 1 && !routing.needs_merge.empty()) {
    absl::Status refused = absl::InvalidArgumentError(StrCat(
        routing.needs_merge, " over ", targets.size(),
        " shards needs the shards' rows merged, which the router does not "
        "do yet; narrow the statement to one shard with a condition on "
        "the shard key (",
        routing.distribution->name(), ")"));
    refused.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("0A000"));
    return refused;
  }
  if (targets.size() > 1 && !routing.aggregates.empty()) {
    out.combine = Combining::kAggregate;
  } else if (targets.size() > 1 && routing.kind == StatementKind::kSelect &&
             (!routing.order_by.empty() || routing.limit || routing.offset)) {
    out.combine = Combining::kMerge;
    ASSIGN_OR_RETURN(out.limit, CountOf(routing.limit, params, "LIMIT"));
    ASSIGN_OR_RETURN(std::optional<int64_t> offset,
                     CountOf(routing.offset, params, "OFFSET"));
    out.offset = offset.value_or(0);
  }
  for (ShardId id : targets) {
    ShardTask task;
    task.shard = id;
    task.shard_name = map->shard(id).name;
    task.dsn = map->shard(id).dsn;
    task.epoch = map->epoch();
    const auto hidden = plan.hidden.find(id);
    if (out.combine != Combining::kConcat && !plan.sql_across_shards.empty()) {
      task.sql = hidden != plan.hidden.end() ? hidden->second.sql_across_shards
                                             : plan.sql_across_shards;
      for (int n : plan.params_across_shards) task.params.push_back(params[n - 1]);
    } else {
      task.sql = hidden != plan.hidden.end() ? hidden->second.sql
                                             : std::string(sql);
      task.params = params;
    }
    out.tasks.push_back(std::move(task));
  }
  RETURN_IF_ERROR(GuardMoveBypass(*map, plan, out.tasks));
  RETURN_IF_ERROR(PlanDualWrite(*this, *map, params, out));
  MarkWrites(plan, out);
  return out;
}

absl::StatusOr<std::string> Router::ImageReturningSql(const std::string& sql) {
  {
    absl::MutexLock lock(&mu_);
    auto it = image_sql_.find(sql);
    if (it != image_sql_.end()) return it->second;
  }
  absl::StatusOr<std::string> rewritten;
  ParserThread::Default().Run([&] { rewritten = WithImageReturning(sql); });
  RETURN_IF_ERROR(rewritten.status());
  absl::MutexLock lock(&mu_);
  // Bounded as the plans are: a statement text per distinct literal
  // would grow it without end.
  if (image_sql_.size() >= kMaxCachedImageSql) image_sql_.clear();
  image_sql_.emplace(sql, *rewritten);
  return rewritten;
}

absl::StatusOr<Result> Router::Execute(const std::shared_ptr<const ShardMap>& map,
                                       std::string_view sql,
                                       const Params& params,
                                       const ExecOptions& options) {
  ASSIGN_OR_RETURN(Prepared prepared, Prepare(map, sql, params));
  return Run(prepared, params, options);
}

absl::StatusOr<Result> Router::Run(const Prepared& prepared,
                                   const Params& params,
                                   const ExecOptions& options) {
  switch (prepared.combine) {
    case Combining::kAggregate:
      return ExecuteAggregated(*prepared.routing, prepared.tasks,
                               params, options);
    case Combining::kMerge:
      return ExecuteMerged(prepared, options);
    case Combining::kConcat:
      break;
  }
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done,
                   RunAll(prepared.tasks, options));
  if (prepared.dual != nullptr) {
    RETURN_IF_ERROR(TakeImages(*prepared.dual, done, prepared.tasks));
  }
  return Combine(*prepared.routing, done, prepared.tasks);
}

absl::StatusOr<std::shared_ptr<const Router::TableColumns>> Router::ColumnsOf(
    const Table& table, uint64_t epoch, const ShardTask& shard,
    const ExecOptions& options) {
  const std::string cache_key = StrCat(table.name, "/", shard.dsn, "/", epoch);
  {
    absl::MutexLock lock(&mu_);
    auto it = table_columns_.find(cache_key);
    if (it != table_columns_.end()) return it->second;
  }
  ShardTask task = shard;
  task.then.clear();  // this statement alone
  task.prepare = false;
  task.session = nullptr;
  task.sql =
      "SELECT a.attname, format_type(a.atttypid, a.atttypmod), "
      "a.attgenerated <> '', coalesce(a.attnum = ANY(i.indkey), false) "
      "FROM pg_attribute a LEFT JOIN pg_index i ON i.indrelid = a.attrelid "
      "AND i.indisprimary WHERE a.attrelid = $1::regclass AND a.attnum > 0 "
      "AND NOT a.attisdropped ORDER BY a.attnum";
  task.params = {table.name};
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll({task}, options));
  auto columns = std::make_shared<TableColumns>();
  for (const Row& row : done[0].result.rows) {
    if (row[3].value_or("f") == "t") {
      columns->primary_key.push_back(columns->names.size());
    }
    columns->names.push_back(row[0].value_or(""));
    columns->types.push_back(row[1].value_or("text"));
    columns->generated.push_back(row[2].value_or("f") == "t");
  }
  if (columns->primary_key.empty()) {
    return absl::FailedPreconditionError(StrCat(
        "table ", table.name, " on shard ", shard.shard_name,
        " has no primary key, which a table under a move needs (to apply "
        "its writes on the destination): add one, or cancel the move"));
  }
  absl::MutexLock lock(&mu_);
  table_columns_[cache_key] = columns;
  return std::shared_ptr<const TableColumns>(columns);
}

absl::StatusOr<std::string> Router::DatabaseCollation(
    const ShardTask& shard, const ExecOptions& options) {
  {
    absl::MutexLock lock(&mu_);
    auto it = collations_.find(shard.dsn);
    if (it != collations_.end()) return it->second;
  }
  ShardTask task = shard;
  task.then.clear();  // this statement alone
  task.prepare = false;
  task.sql =
      "SELECT datcollate FROM pg_database WHERE datname = current_database()";
  task.params.clear();
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll({task}, options));
  if (done[0].result.rows.empty() || !done[0].result.rows[0][0]) {
    return absl::InternalError(
        StrCat("shard ", shard.shard_name, " did not report its collation"));
  }
  const std::string collation = *done[0].result.rows[0][0];
  absl::MutexLock lock(&mu_);
  collations_[shard.dsn] = collation;
  return collation;
}

absl::StatusOr<std::string> Router::ColumnCollation(const ShardTask& shard,
                                                   const Column& column,
                                                   const ExecOptions& options) {
  if (column.table_oid == 0) return std::string("default");
  ShardTask task = shard;
  task.then.clear();  // this statement alone
  task.prepare = false;
  task.sql =
      "SELECT c.collname, c.collprovider, c.collcollate FROM pg_attribute a "
      "JOIN pg_collation c ON c.oid = a.attcollation "
      "WHERE a.attrelid = $1 AND a.attnum = $2";
  task.params = {std::to_string(column.table_oid),
                 std::to_string(column.table_column)};
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll({task}, options));
  if (done[0].result.rows.empty()) return std::string("default");  // no collation
  const Row& row = done[0].result.rows[0];
  const std::string name = row[0].value_or("default");
  if (name == "default" || name == "C" || name == "POSIX") return name;
  if (row[1].value_or("") != "c") {
    absl::Status status = absl::InvalidArgumentError(StrCat(
        "ORDER BY ", column.name, " across shards: the column sorts by "
        "collation \"", name, "\", which is not a libc collation the router "
        "can reproduce; add COLLATE \"C\" (or a libc collation) to the ORDER "
        "BY, or narrow the statement to one shard"));
    status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("0A000"));
    return status;
  }
  return row[2].value_or("C");
}

absl::StatusOr<std::vector<std::string>> Router::TypeNames(
    const ShardTask& shard, const std::vector<Column>& columns,
    const ExecOptions& options) {
  std::vector<std::optional<std::string>> missing;
  {
    absl::MutexLock lock(&mu_);
    for (const Column& c : columns) {
      if (!type_names_.contains(StrCat(shard.dsn, "/", c.type_oid))) {
        missing.push_back(std::to_string(c.type_oid));
      }
    }
  }
  if (!missing.empty()) {
    ShardTask task = shard;
    task.then.clear();  // this statement alone
    task.prepare = false;
    task.sql =
        "SELECT o::int8, format_type(o, NULL) FROM unnest($1::oid[]) AS t(o)";
    task.params = {ArrayLiteral(missing)};
    ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll({task}, options));
    absl::MutexLock lock(&mu_);
    for (const Row& row : done[0].result.rows) {
      uint32_t oid = 0;
      if (row[0] && row[1] && absl::SimpleAtoi(ToAbsl(*row[0]), &oid)) {
        type_names_[StrCat(shard.dsn, "/", oid)] = *row[1];
      }
    }
  }
  std::vector<std::string> out;
  absl::MutexLock lock(&mu_);
  for (const Column& c : columns) {
    auto it = type_names_.find(StrCat(shard.dsn, "/", c.type_oid));
    if (it == type_names_.end()) {
      return absl::InternalError(StrCat("shard ", shard.shard_name,
                                        " does not know type oid ", c.type_oid));
    }
    out.push_back(it->second);
  }
  return out;
}

absl::StatusOr<Result> Router::ExecuteAggregated(
    const RoutingPlan& routing, const std::vector<ShardTask>& tasks, const Params& params,
    const ExecOptions& options) {
  // HAVING is part of the combining statement (AggregatePlan).
  const AggregatePlan& plan = routing.aggregate;
  // The collations of the partial columns, asked of the combining shard
  // alongside the partial statements; after them when the shard's work
  // runs in a session (a transaction), which serves one task at a time.
  ShardTask probe = tasks[0];
  probe.then.clear();  // this statement alone
  probe.prepare = false;
  probe.sql = plan.collation_sql;
  const bool alongside = !plan.collation_sql.empty() && probe.session == nullptr;
  std::vector<ShardTask> all = tasks;
  if (alongside) all.push_back(probe);
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll(all, options));
  if (!plan.collation_sql.empty() && !alongside) {
    ASSIGN_OR_RETURN(std::vector<TaskOutcome> asked, RunAll({probe}, options));
    done.push_back(std::move(asked[0]));
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    if (done[i].result.columns.size() != plan.columns) {
      return absl::InternalError(StrCat(
          "shard ", tasks[i].shard_name, " returned ",
          done[i].result.columns.size(), " partial columns, not ",
          plan.columns));
    }
  }
  std::vector<std::optional<std::string>> collations(plan.columns);
  if (!plan.collation_sql.empty()) {
    const Result& reported = done.back().result;
    if (reported.rows.size() != 1 ||
        reported.rows[0].size() != plan.collated.size()) {
      return absl::InternalError(StrCat("shard ", tasks[0].shard_name,
                                        " did not report the collations"));
    }
    for (size_t k = 0; k < plan.collated.size(); ++k) {
      collations[plan.collated[k]] = reported.rows[0][k];
    }
  }
  // The shards' partial rows, one array parameter per column, are combined
  // by PostgreSQL itself on one shard: grouping, result types, numeric
  // scale, NULLs, collations and the final order are exactly its own.
  const std::vector<Column>& columns = done[0].result.columns;
  ASSIGN_OR_RETURN(std::vector<std::string> types,
                   TypeNames(tasks[0], columns, options));
  ShardTask final_task = tasks[0];
  final_task.then.clear();  // this statement alone
  final_task.prepare = false;
  final_task.params.clear();
  std::vector<std::string> unnest_args, aliases, items;
  bool collated = false;
  for (size_t c = 0; c < columns.size(); ++c) {
    if (types[c] == "record" || absl::EndsWith(types[c], "[]")) {
      return CannotCombine(StrCat(
          "a value of type ", types[c], " across shards, grouped by, "
          "DISTINCT, or compared by min or max: the router passes the "
          "shards' values to one shard as arrays, which cannot hold ",
          types[c] == "record" ? "anonymous records" : "arrays",
          "; narrow the statement to one shard with a condition on the "
          "shard key"));
    }
    std::vector<std::optional<std::string>> values;
    for (size_t i = 0; i < tasks.size(); ++i) {
      for (const Row& row : done[i].result.rows) values.push_back(row[c]);
    }
    final_task.params.push_back(ArrayLiteral(values));
    const std::string p = StrCat("p", c + 1);
    unnest_args.push_back(StrCat("$", c + 1, "::", types[c], "[]"));
    aliases.push_back(p);
    if (collations[c] && *collations[c] != "\"default\"") {
      items.push_back(StrCat(p, " COLLATE ", *collations[c], " AS ", p));
      collated = true;
    } else {
      items.push_back(p);
    }
  }
  // Values keep the collation they had on the shards.
  const std::string from =
      collated
          ? StrCat("(SELECT ", absl::StrJoin(items, ", "), " FROM unnest(",
                   absl::StrJoin(unnest_args, ", "), ") AS shardkit_u(",
                   absl::StrJoin(aliases, ", "), ")) AS shardkit_partial")
          : StrCat("unnest(", absl::StrJoin(unnest_args, ", "),
                   ") AS shardkit_partial(", absl::StrJoin(aliases, ", "), ")");
  for (int n : plan.combine_params) {
    if (n < 1 || static_cast<size_t>(n) > params.size()) {
      return absl::InvalidArgumentError(StrCat(
          "the statement uses $", n, " but ", params.size(),
          " parameters were given"));
    }
    final_task.params.push_back(params[n - 1]);
  }
  std::string sql = plan.text[0];
  for (size_t h = 0; h < plan.holes.size(); ++h) {
    if (plan.holes[h] == AggregatePlan::kFrom) {
      StrAppend(&sql, from);
    } else {
      ASSIGN_OR_RETURN(std::string aggregate,
                       CombinedAggregateSql(plan.aggregates[plan.holes[h]], types));
      StrAppend(&sql, aggregate);
    }
    StrAppend(&sql, plan.text[h + 1]);
  }
  final_task.sql = std::move(sql);
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> combined,
                   RunAll({final_task}, options));
  Result out = std::move(combined[0].result);
  out.shards = ShardsOf(tasks);
  return out;
}

absl::StatusOr<std::vector<MergeKey>> Router::MergeKeys(
    const RoutingPlan& routing, const std::vector<Column>& columns,
    const ShardTask& shard, const ExecOptions& options) {
  ASSIGN_OR_RETURN(std::vector<size_t> sort_columns,
                   ResolveSortColumns(routing.order_by, columns));
  std::vector<MergeKey> keys;
  for (size_t i = 0; i < sort_columns.size(); ++i) {
    const SortSpec& spec = routing.order_by[i];
    std::string collation = spec.collation;
    if (collation.empty()) {
      ASSIGN_OR_RETURN(collation,
                       ColumnCollation(shard, columns[sort_columns[i]], options));
    }
    if (collation == "default") {
      ASSIGN_OR_RETURN(collation, DatabaseCollation(shard, options));
    }
    ASSIGN_OR_RETURN(std::shared_ptr<const ValueOrder> order,
                     ValueOrder::For(columns[sort_columns[i]].type_oid, collation));
    keys.push_back(MergeKey{sort_columns[i], spec.descending, spec.nulls_first,
                            std::move(order)});
  }
  return keys;
}

absl::StatusOr<Result> Router::ExecuteMerged(const Prepared& prepared,
                                             const ExecOptions& options) {
  const std::vector<ShardTask>& tasks = prepared.tasks;
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll(tasks, options));
  ASSIGN_OR_RETURN(std::vector<MergeKey> keys,
                   MergeKeys(*prepared.routing, done[0].result.columns,
                             tasks[0], options));
  std::vector<std::vector<Row>> parts;
  for (TaskOutcome& outcome : done) parts.push_back(std::move(outcome.result.rows));
  Result out = std::move(done[0].result);
  out.rows = MergeRows(std::move(parts), keys, prepared.offset, prepared.limit);
  out.rows_affected = static_cast<int64_t>(out.rows.size());
  out.command_tag = StrCat("SELECT ", out.rows.size());
  out.shards = ShardsOf(tasks);
  return out;
}

}  // namespace shardkit::internal
