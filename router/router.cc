#include "router/router.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "router/merge.h"
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
  // An aggregating SELECT's HAVING, for the combining query (see
  // HavingTemplate); empty without HAVING.
  std::string having_template;
  std::vector<int> having_params;  // $n of the template, in order
  // The lowest and highest $n the statement uses (1 and 0 without any).
  // Execute checks the parameters given against them before anything
  // looks a parameter up.
  int lowest_param = 1;
  int highest_param = 0;
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

// HAVING as SQL text over placeholders: the j-th aggregate call (in
// VisitHaving order) as shardkit_h<j>_, a grouped column as shardkit_g<k>_
// (k-th grouped output), parameter $n as shardkit_p<n>_ (`params` gets each
// n, in order of appearance). The combining query substitutes the combined
// aggregates and the partial columns. The tree is restored after.
absl::StatusOr<std::string> HavingTemplate(ParsedSql& tree,
                                           const RoutingPlan& routing,
                                           std::vector<int>* params) {
  PgQuery__Node* stmt = tree.mutable_statement(0);
  PgQuery__SelectStmt* select = stmt->select_stmt;
  // Grouped outputs by the column name they select.
  std::map<std::string, size_t> group_index;
  size_t g = 0;
  for (size_t i = 0; i < select->n_target_list; ++i) {
    if (routing.aggregates[i].function != AggregateTarget::Function::kGroupKey) continue;
    const PgQuery__ColumnRef& ref = *select->target_list[i]->res_target->val->column_ref;
    const PgQuery__Node* last = ref.fields[ref.n_fields - 1];
    group_index.emplace(last->string->sval, g++);
  }
  std::vector<PgQuery__Node*> nodes;
  std::vector<std::string> placeholders;
  size_t h = 0;
  VisitHaving(
      select->having_clause,
      [&](PgQuery__Node* call) {
        nodes.push_back(call);
        placeholders.push_back(StrCat("shardkit_h", h++, "_"));
      },
      [&](PgQuery__Node* column) {
        const PgQuery__ColumnRef& ref = *column->column_ref;
        nodes.push_back(column);
        placeholders.push_back(StrCat(
            "shardkit_g", group_index[ref.fields[ref.n_fields - 1]->string->sval],
            "_"));
      });
  // Parameters outside the aggregates (those inside go with the partial
  // aggregates to the shards): the combining query numbers its own.
  std::function<void(ProtobufCMessage*)> find_params = [&](ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__node__descriptor)) {
      auto* node = reinterpret_cast<PgQuery__Node*>(m);
      if (std::find(nodes.begin(), nodes.end(), node) != nodes.end()) return;
      if (node->node_case == PG_QUERY__NODE__NODE_PARAM_REF) {
        nodes.push_back(node);
        placeholders.push_back(StrCat("shardkit_p", node->param_ref->number, "_"));
        if (std::find(params->begin(), params->end(),
                      node->param_ref->number) == params->end()) {
          params->push_back(node->param_ref->number);
        }
        return;
      }
    }
    ForEachChild(m, find_params);
  };
  find_params(&select->having_clause->base);
  const size_t m = nodes.size();
  std::vector<PgQuery__Node> saved(m);
  std::vector<PgQuery__String> strings(m, PgQuery__String(PG_QUERY__STRING__INIT));
  std::vector<PgQuery__Node> string_nodes(m, PgQuery__Node(PG_QUERY__NODE__INIT));
  std::vector<PgQuery__Node*> fields(m);
  std::vector<PgQuery__ColumnRef> refs(m, PgQuery__ColumnRef(PG_QUERY__COLUMN_REF__INIT));
  for (size_t i = 0; i < m; ++i) {
    saved[i] = *nodes[i];
    strings[i].sval = placeholders[i].data();
    string_nodes[i].node_case = PG_QUERY__NODE__NODE_STRING;
    string_nodes[i].string = &strings[i];
    fields[i] = &string_nodes[i];
    refs[i].n_fields = 1;
    refs[i].fields = &fields[i];
    refs[i].location = -1;
    nodes[i]->node_case = PG_QUERY__NODE__NODE_COLUMN_REF;
    nodes[i]->column_ref = &refs[i];
  }
  // Deparse `SELECT <having>` in place of the statement.
  PgQuery__ResTarget target = PG_QUERY__RES_TARGET__INIT;
  target.name = const_cast<char*>("");
  target.val = select->having_clause;
  target.location = -1;
  PgQuery__Node target_node = PG_QUERY__NODE__INIT;
  target_node.node_case = PG_QUERY__NODE__NODE_RES_TARGET;
  target_node.res_target = &target;
  PgQuery__Node* target_list[] = {&target_node};
  PgQuery__SelectStmt probe = PG_QUERY__SELECT_STMT__INIT;
  probe.n_target_list = 1;
  probe.target_list = target_list;
  probe.limit_option = PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_DEFAULT;
  probe.op = PG_QUERY__SET_OPERATION__SETOP_NONE;
  const PgQuery__Node statement = *stmt;
  stmt->select_stmt = &probe;
  absl::StatusOr<std::string> sql = tree.Deparse();
  *stmt = statement;
  for (size_t i = 0; i < m; ++i) *nodes[i] = saved[i];
  if (!sql.ok()) return sql.status();
  constexpr std::string_view kSelect = "SELECT ";
  if (sql->rfind(kSelect, 0) != 0) {
    return absl::InternalError(StrCat("unexpected deparse of HAVING: ", *sql));
  }
  return sql->substr(kSelect.size());
}

// The aggregating SELECT as each shard runs it: the grouped columns
// first, then the aggregates, avg(x) as sum(x), count(x); grouped by the
// leading columns' positions; no ORDER BY, LIMIT or OFFSET (they apply to
// the combined rows). The tree is restored after.
absl::StatusOr<std::string> PartialAggregates(ParsedSql& tree,
                                              const RoutingPlan& routing,
                                              std::vector<int>* used) {
  PgQuery__SelectStmt* select = tree.mutable_statement(0)->select_stmt;
  PgQuery__SelectStmt saved = *select;
  const size_t n = saved.n_target_list;
  // HAVING's aggregates (hidden outputs), in the order the analyzer met them.
  std::vector<PgQuery__Node*> having_calls;
  if (saved.having_clause != nullptr) {
    VisitHaving(saved.having_clause,
                [&](PgQuery__Node* call) { having_calls.push_back(call); },
                [](PgQuery__Node*) {});
  }
  const size_t total = routing.aggregates.size();
  // Nodes on the stack, as in PushDownOffset; sized up front so nothing
  // moves once pointed to.
  std::vector<PgQuery__String> names(2 * total, PgQuery__String(PG_QUERY__STRING__INIT));
  std::vector<PgQuery__Node> name_nodes(2 * total, PgQuery__Node(PG_QUERY__NODE__INIT));
  std::vector<PgQuery__Node*> name_ptrs(2 * total);
  std::vector<PgQuery__FuncCall> calls(2 * total, PgQuery__FuncCall(PG_QUERY__FUNC_CALL__INIT));
  std::vector<PgQuery__Node> call_nodes(2 * total, PgQuery__Node(PG_QUERY__NODE__INIT));
  std::vector<PgQuery__ResTarget> targets(2 * total, PgQuery__ResTarget(PG_QUERY__RES_TARGET__INIT));
  std::vector<PgQuery__Node> target_nodes(2 * total, PgQuery__Node(PG_QUERY__NODE__INIT));
  std::vector<PgQuery__Integer> positions(total, PgQuery__Integer(PG_QUERY__INTEGER__INIT));
  std::vector<PgQuery__AConst> position_consts(total, PgQuery__AConst(PG_QUERY__A__CONST__INIT));
  std::vector<PgQuery__Node> position_nodes(total, PgQuery__Node(PG_QUERY__NODE__INIT));
  std::vector<PgQuery__Node*> list, group_by;
  size_t k = 0;
  // A ResTarget (on the stack) computing `call`.
  auto add_target = [&](PgQuery__Node* call) {
    targets[k].name = const_cast<char*>("");
    targets[k].val = call;
    targets[k].location = -1;
    target_nodes[k].node_case = PG_QUERY__NODE__NODE_RES_TARGET;
    target_nodes[k].res_target = &targets[k];
    list.push_back(&target_nodes[k]);
    ++k;
  };
  for (size_t i = 0; i < n; ++i) {
    if (routing.aggregates[i].function != AggregateTarget::Function::kGroupKey) continue;
    list.push_back(saved.target_list[i]);
    const size_t g = group_by.size();
    positions[g].ival = static_cast<int32_t>(g + 1);
    position_consts[g].val_case = PG_QUERY__A__CONST__VAL_IVAL;
    position_consts[g].ival = &positions[g];
    position_consts[g].location = -1;
    position_nodes[g].node_case = PG_QUERY__NODE__NODE_A_CONST;
    position_nodes[g].a_const = &position_consts[g];
    group_by.push_back(&position_nodes[g]);
  }
  for (size_t i = 0; i < total; ++i) {
    const AggregateTarget::Function f = routing.aggregates[i].function;
    if (f == AggregateTarget::Function::kGroupKey) continue;
    PgQuery__Node* call =
        i < n ? saved.target_list[i]->res_target->val : having_calls[i - n];
    if (f != AggregateTarget::Function::kAvg) {
      if (i < n) {
        list.push_back(saved.target_list[i]);
      } else {
        add_target(call);
      }
      continue;
    }
    const PgQuery__FuncCall& avg = *call->func_call;
    for (const char* fn : {"sum", "count"}) {
      names[k].sval = const_cast<char*>(fn);
      name_nodes[k].node_case = PG_QUERY__NODE__NODE_STRING;
      name_nodes[k].string = &names[k];
      name_ptrs[k] = &name_nodes[k];
      calls[k].n_funcname = 1;
      calls[k].funcname = &name_ptrs[k];
      calls[k].n_args = avg.n_args;
      calls[k].args = avg.args;
      calls[k].funcformat = PG_QUERY__COERCION_FORM__COERCE_EXPLICIT_CALL;
      calls[k].location = -1;
      call_nodes[k].node_case = PG_QUERY__NODE__NODE_FUNC_CALL;
      call_nodes[k].func_call = &calls[k];
      add_target(&call_nodes[k]);
    }
  }
  select->having_clause = nullptr;
  select->target_list = list.data();
  select->n_target_list = list.size();
  select->group_clause = group_by.data();
  select->n_group_clause = group_by.size();
  select->sort_clause = nullptr;
  select->n_sort_clause = 0;
  select->limit_count = nullptr;
  select->limit_offset = nullptr;
  select->limit_option = PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_DEFAULT;
  select->distinct_clause = nullptr;  // a GROUP BY of the columns now
  select->n_distinct_clause = 0;
  absl::StatusOr<std::string> sql = DeparseRenumbered(tree, used);
  *select = saved;
  return sql;
}

// "name" quoted as a SQL identifier.
std::string QuoteIdentifier(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
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

// Runs `tasks` concurrently; the first failure, in task order, fails the
// statement, and the other shards' work is cancelled.
absl::StatusOr<std::vector<TaskOutcome>> RunAll(
    const std::vector<ShardTask>& tasks, ExecOptions options) {
  // One shard's failure fails the statement: stop the others' work.
  options.cancel_others_on_failure = true;
  std::vector<TaskOutcome> done = RunOnShards(tasks, options);
  for (TaskOutcome& outcome : done) {
    if (!outcome.status.ok()) return outcome.status;
  }
  return done;
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
      if (plan->tree->statement(0)->select_stmt->having_clause != nullptr) {
        absl::StatusOr<std::string> having =
            HavingTemplate(*plan->tree, plan->routing, &plan->having_params);
        if (!having.ok()) {
          status = having.status();
          return;
        }
        plan->having_template = *std::move(having);
      }
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
    if (out.combine != Combining::kConcat && !plan.sql_across_shards.empty()) {
      task.sql = plan.sql_across_shards;
      for (int n : plan.params_across_shards) task.params.push_back(params[n - 1]);
    } else {
      task.sql = std::string(sql);
      task.params = params;
    }
    out.tasks.push_back(std::move(task));
  }
  return out;
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
      return ExecuteAggregated(*prepared.routing, prepared.plan->having_template,
                               prepared.plan->having_params, prepared.tasks,
                               params, options);
    case Combining::kMerge:
      return ExecuteMerged(prepared, options);
    case Combining::kConcat:
      break;
  }
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done,
                   RunAll(prepared.tasks, options));
  return Combine(*prepared.routing, done, prepared.tasks);
}

absl::StatusOr<std::string> Router::DatabaseCollation(
    const ShardTask& shard, const ExecOptions& options) {
  {
    absl::MutexLock lock(&mu_);
    auto it = collations_.find(shard.dsn);
    if (it != collations_.end()) return it->second;
  }
  ShardTask task = shard;
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
    const RoutingPlan& routing, const std::string& having_template,
    const std::vector<int>& having_params, const std::vector<ShardTask>& tasks,
    const Params& params, const ExecOptions& options) {
  ASSIGN_OR_RETURN(std::optional<int64_t> limit,
                   CountOf(routing.limit, params, "LIMIT"));
  ASSIGN_OR_RETURN(std::optional<int64_t> offset,
                   CountOf(routing.offset, params, "OFFSET"));
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done, RunAll(tasks, options));
  // The shards' partial rows, one array parameter per column, are combined
  // by PostgreSQL itself on one shard: grouping, result types, numeric
  // scale, NULLs and the final order are exactly its own.
  const std::vector<Column>& columns = done[0].result.columns;
  ASSIGN_OR_RETURN(std::vector<std::string> types,
                   TypeNames(tasks[0], columns, options));
  ShardTask final_task = tasks[0];
  final_task.params.clear();
  std::vector<std::string> unnest_args, aliases;
  for (size_t c = 0; c < columns.size(); ++c) {
    std::vector<std::optional<std::string>> values;
    for (const TaskOutcome& outcome : done) {
      for (const Row& row : outcome.result.rows) values.push_back(row[c]);
    }
    final_task.params.push_back(ArrayLiteral(values));
    unnest_args.push_back(StrCat("$", c + 1, "::", types[c], "[]"));
    aliases.push_back(StrCat("p", c + 1));
  }
  size_t keys = 0;
  for (const AggregateTarget& a : routing.aggregates) {
    keys += a.function == AggregateTarget::Function::kGroupKey;
  }
  std::vector<std::string> outputs, group_by, hidden;
  size_t key = 0;
  size_t c = keys;  // partial aggregates follow the grouped columns
  for (const AggregateTarget& a : routing.aggregates) {
    std::string expr;
    const std::string p = StrCat("p", c + 1);
    switch (a.function) {
      case AggregateTarget::Function::kGroupKey:
        expr = StrCat("p", key + 1);
        group_by.push_back(expr);
        ++key;
        break;
      case AggregateTarget::Function::kCount:
        expr = StrCat("coalesce(sum(", p, "), 0)::int8");
        ++c;
        break;
      case AggregateTarget::Function::kSum:
        expr = StrCat("sum(", p, ")::", types[c]);
        ++c;
        break;
      case AggregateTarget::Function::kMin:
        expr = StrCat("min(", p, ")");
        ++c;
        break;
      case AggregateTarget::Function::kMax:
        expr = StrCat("max(", p, ")");
        ++c;
        break;
      case AggregateTarget::Function::kAvg: {
        const std::string q = StrCat("p", c + 2);
        if (types[c] == "interval") {
          expr = StrCat("sum(", p, ") / nullif(sum(", q, "), 0)");
        } else {
          const bool floating =
              types[c] == "real" || types[c] == "double precision";
          const std::string as = floating ? "float8" : "numeric";
          expr = StrCat("sum(", p, ")::", as, " / nullif(sum(", q, "), 0)::", as);
        }
        c += 2;
        break;
      }
    }
    if (a.hidden) {
      hidden.push_back(std::move(expr));
    } else {
      outputs.push_back(StrCat(expr, " AS ", QuoteIdentifier(a.name)));
    }
  }
  std::string sql = StrCat("SELECT ", absl::StrJoin(outputs, ", "), " FROM unnest(",
                           absl::StrJoin(unnest_args, ", "), ") AS partial(",
                           absl::StrJoin(aliases, ", "), ")");
  if (!group_by.empty()) StrAppend(&sql, " GROUP BY ", absl::StrJoin(group_by, ", "));
  if (!having_template.empty()) {
    std::string having = having_template;
    for (size_t j = 0; j < hidden.size(); ++j) {
      absl::StrReplaceAll({{StrCat("shardkit_h", j, "_"), StrCat("(", hidden[j], ")")}},
                          &having);
    }
    for (size_t k = 0; k < group_by.size(); ++k) {
      absl::StrReplaceAll({{StrCat("shardkit_g", k, "_"), group_by[k]}}, &having);
    }
    for (int n : having_params) {
      if (static_cast<size_t>(n) > params.size()) {
        return absl::InvalidArgumentError(StrCat(
            "the statement uses $", n, " but ", params.size(),
            " parameters were given"));
      }
      final_task.params.push_back(params[n - 1]);
      absl::StrReplaceAll({{StrCat("shardkit_p", n, "_"),
                            StrCat("$", final_task.params.size())}},
                          &having);
    }
    StrAppend(&sql, " HAVING ", having);
  }
  std::vector<std::string> order;
  for (const SortSpec& spec : routing.order_by) {
    std::string item = std::to_string(spec.position);
    if (!spec.collation.empty()) StrAppend(&item, " COLLATE ", QuoteIdentifier(spec.collation));
    StrAppend(&item, spec.descending ? " DESC" : " ASC",
              spec.nulls_first ? " NULLS FIRST" : " NULLS LAST");
    order.push_back(std::move(item));
  }
  if (!order.empty()) StrAppend(&sql, " ORDER BY ", absl::StrJoin(order, ", "));
  if (limit) StrAppend(&sql, " LIMIT ", *limit);
  if (offset) StrAppend(&sql, " OFFSET ", *offset);
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
