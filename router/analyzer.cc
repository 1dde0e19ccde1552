#include "router/analyzer.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <functional>
#include <iterator>
#include <map>
#include <numeric>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "router/shard_connection.h"
#include "router/tree_walk.h"

namespace shardkit::internal {
namespace {

absl::Status Refuse(std::string message, std::string_view sqlstate = "0A000") {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord(ToAbsl(sqlstate)));
  return status;
}

std::string_view StringOf(const PgQuery__Node* node) {
  if (node == nullptr || node->node_case != PG_QUERY__NODE__NODE_STRING) {
    return {};
  }
  return node->string->sval;
}

bool Is(const ProtobufCMessage* m, const ProtobufCMessageDescriptor& d) {
  return IsMessage(m, d);
}

// "variable_set_stmt" for SET, "explain_stmt" for EXPLAIN, ...
std::string StatementTypeName(const PgQuery__Node& stmt) {
  const ProtobufCFieldDescriptor* f = protobuf_c_message_descriptor_get_field(
      &pg_query__node__descriptor, stmt.node_case);
  return f != nullptr ? f->name : "unknown";
}

// One appearance of a table of the map in the statement.
struct Instance {
  const Table* table;
  std::string alias;  // the alias, else the table's name as written
  int depth;          // 0: the statement's own FROM; > 0: inside a subquery
};

bool IsAggregateName(std::string_view name) {
  static const std::set<std::string_view> kAggregates = {
      "count", "sum", "min", "max", "avg", "array_agg", "string_agg",
      "bool_and", "bool_or", "every", "bit_and", "bit_or", "bit_xor",
      "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
      "xmlagg", "stddev", "stddev_pop", "stddev_samp", "variance",
      "var_pop", "var_samp", "corr", "covar_pop", "covar_samp",
      "mode", "percentile_cont", "percentile_disc", "range_agg",
      "range_intersect_agg", "regr_avgx", "regr_avgy", "regr_count",
      "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy",
      "regr_syy", "rank", "dense_rank", "percent_rank", "cume_dist"};
  return kAggregates.count(name) > 0;
}

class Analyzer {
 public:
  explicit Analyzer(const ShardMap& map) : map_(map) {}

  absl::StatusOr<RoutingPlan> Analyze(const PgQuery__Node& stmt) {
    CollectCteNames(&stmt.base);
    switch (stmt.node_case) {
      case PG_QUERY__NODE__NODE_SELECT_STMT:
        plan_.kind = StatementKind::kSelect;
        RETURN_IF_ERROR(CollectStatement(stmt));
        RETURN_IF_ERROR(CheckColocation());
        if (stmt.select_stmt->op != PG_QUERY__SET_OPERATION__SETOP_NONE) {
          plan_.single_shard_only =
              "UNION, INTERSECT and EXCEPT over sharded tables run only when "
              "every part selects one shard by its key";
        } else {
          plan_.key = TopLevelCondition(*stmt.select_stmt);
          plan_.needs_merge = MergeNeed(*stmt.select_stmt);
          if (!plan_.needs_merge.empty() &&
              SimpleAggregates(*stmt.select_stmt)) {
            plan_.needs_merge.clear();
          } else if (plan_.needs_merge.empty()) {
            plan_.needs_merge = OrderAndLimit(*stmt.select_stmt);
          }
        }
        break;
      case PG_QUERY__NODE__NODE_UPDATE_STMT:
        plan_.kind = StatementKind::kUpdate;
        plan_.writes = true;
        RETURN_IF_ERROR(CollectStatement(stmt));
        RETURN_IF_ERROR(CheckColocation());
        RETURN_IF_ERROR(CheckKeyNotSet(*stmt.update_stmt->relation,
                                       stmt.update_stmt->n_target_list,
                                       stmt.update_stmt->target_list, "UPDATE"));
        plan_.key = Condition(stmt.update_stmt->where_clause);
        break;
      case PG_QUERY__NODE__NODE_DELETE_STMT:
        plan_.kind = StatementKind::kDelete;
        plan_.writes = true;
        RETURN_IF_ERROR(CollectStatement(stmt));
        RETURN_IF_ERROR(CheckColocation());
        plan_.key = Condition(stmt.delete_stmt->where_clause);
        break;
      case PG_QUERY__NODE__NODE_INSERT_STMT:
        plan_.kind = StatementKind::kInsert;
        plan_.writes = true;
        RETURN_IF_ERROR(CollectStatement(stmt));
        RETURN_IF_ERROR(CheckColocation());
        RETURN_IF_ERROR(AnalyzeInsert(*stmt.insert_stmt));
        break;
      case PG_QUERY__NODE__NODE_CREATE_STMT:
      case PG_QUERY__NODE__NODE_INDEX_STMT:
      case PG_QUERY__NODE__NODE_ALTER_TABLE_STMT:
      case PG_QUERY__NODE__NODE_DROP_STMT:
      case PG_QUERY__NODE__NODE_TRUNCATE_STMT:
        plan_.kind = StatementKind::kDdl;
        plan_.writes = true;
        RETURN_IF_ERROR(CollectDdlTables(stmt));
        RETURN_IF_ERROR(CheckDefaultShard(stmt));
        return std::move(plan_);
      default:
        return Refuse(StrCat(
            "statements of type ", StatementTypeName(stmt),
            " are not routed; run it on every shard with shardctl exec --all "
            "(Cluster::ExecuteOnAllShards)"));
    }
    RETURN_IF_ERROR(CheckWriteTargets());
    RETURN_IF_ERROR(CheckDefaultShard(stmt));
    return std::move(plan_);
  }

  // Tables not in the map live on the default shard: a statement may use
  // them with reference tables (the default shard has its copy), never with
  // sharded ones, and may not change a reference table from them.
  absl::Status CheckDefaultShard(const PgQuery__Node& stmt) {
    if (unmapped_.empty()) return absl::OkStatus();
    const std::string unmapped = *unmapped_.begin();
    const std::string shard = map_.shard(*map_.default_shard()).name;
    for (const Table* t : plan_.tables) {
      if (!t->reference) {
        return Refuse(StrCat(
            "table ", unmapped, " is not in the shard map, so it lives on the "
            "default shard ", shard, ", while ", t->name,
            " is spread over shards: one statement cannot use both; add ",
            unmapped, " to [tables], or query them separately"));
      }
    }
    const PgQuery__RangeVar* target = nullptr;
    if (stmt.node_case == PG_QUERY__NODE__NODE_INSERT_STMT) target = stmt.insert_stmt->relation;
    if (stmt.node_case == PG_QUERY__NODE__NODE_UPDATE_STMT) target = stmt.update_stmt->relation;
    if (stmt.node_case == PG_QUERY__NODE__NODE_DELETE_STMT) target = stmt.delete_stmt->relation;
    if (plan_.kind == StatementKind::kDdl && !plan_.tables.empty()) {
      return Refuse(StrCat("this statement names ", unmapped,
                           ", which lives on the default shard ", shard,
                           ", and ", plan_.tables.front()->name,
                           ", which is on every shard: run it as two "
                           "statements"));
    }
    if (target != nullptr) {
      absl::StatusOr<const Table*> t = Resolve(*target);
      if (t.ok() && *t != nullptr && (*t)->reference) {
        return Refuse(StrCat("a write to reference table ", (*t)->name,
                             " that reads ", unmapped,
                             " (on the default shard ", shard,
                             " only) would change that shard's copy alone; "
                             "compute the rows first, then write them"));
      }
    }
    plan_.on_default_shard = true;
    return absl::OkStatus();
  }

 private:
  // --- Tables -------------------------------------------------------------

  void CollectCteNames(const ProtobufCMessage* m) {
    if (Is(m, pg_query__common_table_expr__descriptor)) {
      cte_names_.insert(reinterpret_cast<const PgQuery__CommonTableExpr*>(m)->ctename);
    }
    ForEachChild(m, [&](const ProtobufCMessage* c) { CollectCteNames(c); });
  }

  absl::StatusOr<const Table*> Resolve(const PgQuery__RangeVar& rv) {
    const std::string name =
        rv.schemaname[0] != '\0' ? StrCat(rv.schemaname, ".", rv.relname)
                                 : std::string(rv.relname);
    const Table* table = map_.FindTable(name);
    if (table == nullptr && std::string_view(rv.schemaname) == "public") {
      table = map_.FindTable(rv.relname);
    }
    if (table == nullptr && map_.default_shard()) {
      unmapped_.insert(name);  // lives on the default shard
      return nullptr;
    }
    if (table == nullptr) {
      return Refuse(StrCat("table ", name,
                           " is not in the shard map; add it to [tables] "
                           "(sharded, with its distribution and key, or "
                           "reference = true), or name a shard for unmapped "
                           "tables with [router] default_shard"),
                    "42P01");
    }
    return table;
  }

  void Note(const Table* table) {
    if (std::find(plan_.tables.begin(), plan_.tables.end(), table) ==
        plan_.tables.end()) {
      plan_.tables.push_back(table);
    }
  }

  // Collect() from the statement itself (the Node's one member): its own
  // FROM is depth 0.
  absl::Status CollectStatement(const PgQuery__Node& stmt) {
    absl::Status status;
    ForEachChild(&stmt.base, [&](const ProtobufCMessage* m) {
      status = Collect(m, /*depth=*/0, /*root=*/true);
    });
    return status;
  }

  // Records every table instance with its subquery depth, and the key
  // equalities that tie instances together.
  absl::Status Collect(const ProtobufCMessage* m, int depth, bool root) {
    if (Is(m, pg_query__select_stmt__descriptor) && !root) ++depth;
    if (Is(m, pg_query__range_var__descriptor)) {
      const auto* rv = reinterpret_cast<const PgQuery__RangeVar*>(m);
      if (rv->schemaname[0] == '\0' && cte_names_.count(rv->relname)) {
        return absl::OkStatus();
      }
      ASSIGN_OR_RETURN(const Table* table, Resolve(*rv));
      if (table == nullptr) return absl::OkStatus();  // on the default shard
      Note(table);
      instances_.push_back(Instance{
          table,
          rv->alias != nullptr ? rv->alias->aliasname : rv->relname, depth});
      return absl::OkStatus();
    }
    if (Is(m, pg_query__select_stmt__descriptor)) {
      equalities_where_.push_back(
          reinterpret_cast<const PgQuery__SelectStmt*>(m)->where_clause);
    } else if (Is(m, pg_query__join_expr__descriptor)) {
      const auto* join = reinterpret_cast<const PgQuery__JoinExpr*>(m);
      equalities_where_.push_back(join->quals);
      for (size_t i = 0; i < join->n_using_clause; ++i) {
        using_columns_.push_back(std::string(StringOf(join->using_clause[i])));
      }
    } else if (Is(m, pg_query__update_stmt__descriptor)) {
      equalities_where_.push_back(
          reinterpret_cast<const PgQuery__UpdateStmt*>(m)->where_clause);
    } else if (Is(m, pg_query__delete_stmt__descriptor)) {
      equalities_where_.push_back(
          reinterpret_cast<const PgQuery__DeleteStmt*>(m)->where_clause);
    }
    absl::Status status;
    ForEachChild(m, [&](const ProtobufCMessage* c) {
      if (status.ok()) status = Collect(c, depth, false);
    });
    return status;
  }

  absl::Status CollectDdlTables(const PgQuery__Node& stmt) {
    absl::Status status;
    std::function<void(const ProtobufCMessage*)> walk =
        [&](const ProtobufCMessage* m) {
          if (!status.ok()) return;
          if (Is(m, pg_query__range_var__descriptor)) {
            absl::StatusOr<const Table*> t =
                Resolve(*reinterpret_cast<const PgQuery__RangeVar*>(m));
            if (!t.ok()) {
              status = t.status();
            } else if (*t != nullptr) {
              Note(*t);
            }
            return;
          }
          ForEachChild(m, walk);
        };
    walk(&stmt.base);
    return status;
  }

  // --- Which instance a column belongs to ---------------------------------

  // The instance whose shard key `ref` names, or -1.
  int KeyInstance(const PgQuery__ColumnRef& ref) const {
    if (ref.n_fields == 0 || ref.n_fields > 3) return -1;
    const std::string_view column = StringOf(ref.fields[ref.n_fields - 1]);
    if (column.empty()) return -1;
    const std::string_view qualifier =
        ref.n_fields >= 2 ? StringOf(ref.fields[ref.n_fields - 2]) : "";
    int found = -1;
    for (size_t i = 0; i < instances_.size(); ++i) {
      const Instance& inst = instances_[i];
      if (inst.table->reference || inst.table->key_column != column) continue;
      if (!qualifier.empty() && inst.alias != qualifier) continue;
      if (found >= 0) return -1;  // ambiguous: let PostgreSQL say so
      found = static_cast<int>(i);
    }
    return found;
  }

  int KeyInstance(const PgQuery__Node* node) const {
    if (node == nullptr || node->node_case != PG_QUERY__NODE__NODE_COLUMN_REF) {
      return -1;
    }
    return KeyInstance(*node->column_ref);
  }

  // --- Colocation -----------------------------------------------------------

  int Find(std::vector<int>& parent, int i) const {
    while (parent[i] != i) i = parent[i] = parent[parent[i]];
    return i;
  }

  void UniteKeyEqualities(const PgQuery__Node* node, std::vector<int>& parent) {
    if (node == nullptr) return;
    if (node->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR &&
        node->bool_expr->boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR) {
      for (size_t i = 0; i < node->bool_expr->n_args; ++i) {
        UniteKeyEqualities(node->bool_expr->args[i], parent);
      }
      return;
    }
    if (node->node_case != PG_QUERY__NODE__NODE_A_EXPR) return;
    const PgQuery__AExpr& e = *node->a_expr;
    if (e.kind != PG_QUERY__A__EXPR__KIND__AEXPR_OP || e.n_name != 1 ||
        StringOf(e.name[0]) != "=") {
      return;
    }
    const int a = KeyInstance(e.lexpr);
    const int b = KeyInstance(e.rexpr);
    if (a >= 0 && b >= 0) parent[Find(parent, a)] = Find(parent, b);
  }

  absl::Status CheckColocation() {
    std::vector<int> sharded;
    for (size_t i = 0; i < instances_.size(); ++i) {
      if (!instances_[i].table->reference) sharded.push_back(static_cast<int>(i));
    }
    if (sharded.empty()) return absl::OkStatus();
    const Table& first = *instances_[sharded[0]].table;
    plan_.distribution = &map_.DistributionOf(first);
    for (int i : sharded) {
      const Table& t = *instances_[i].table;
      if (&map_.DistributionOf(t) != plan_.distribution) {
        return Refuse(StrCat(
            "tables ", first.name, " (distribution ",
            plan_.distribution->name(), ") and ", t.name, " (distribution ",
            map_.DistributionOf(t).name(),
            ") are placed by different distributions, so their rows do not "
            "meet on one shard; query them separately, or put both tables in "
            "one distribution"));
      }
    }
    std::vector<int> parent(instances_.size());
    std::iota(parent.begin(), parent.end(), 0);
    for (const PgQuery__Node* where : equalities_where_) {
      UniteKeyEqualities(where, parent);
    }
    // JOIN ... USING (key): the key columns of the joined tables are equal.
    for (const std::string& column : using_columns_) {
      int prev = -1;
      for (int i : sharded) {
        if (instances_[i].table->key_column != column) continue;
        if (prev >= 0) parent[Find(parent, prev)] = Find(parent, i);
        prev = i;
      }
    }
    // Every instance of the statement's own FROM must be tied to the first
    // one; one inside a subquery that is not is correct on one shard only.
    int anchor = -1;
    for (int i : sharded) {
      if (instances_[i].depth == 0) {
        anchor = i;
        break;
      }
    }
    for (int i : sharded) {
      const Instance& inst = instances_[i];
      if (anchor >= 0 && Find(parent, i) == Find(parent, anchor)) continue;
      if (anchor >= 0 && inst.depth == 0) {
        const Instance& a = instances_[anchor];
        return Refuse(StrCat(
            "the join of ", a.table->name, " and ", inst.table->name,
            " is not on their shard keys, so matching rows may sit on "
            "different shards; join on ", a.alias, ".", a.table->key_column,
            " = ", inst.alias, ".", inst.table->key_column));
      }
      plan_.single_shard_only = StrCat(
          "the subquery over ", inst.table->name,
          " is not tied to the outer query by the shard key (",
          inst.table->key_column,
          "), so it would see only one shard's rows on each; narrow the "
          "statement to one shard with a condition on the key, or correlate "
          "the subquery on the key");
    }
    return absl::OkStatus();
  }

  // --- The key condition ----------------------------------------------------

  // A constant or parameter, looking through casts; nullopt otherwise.
  std::optional<KeyOperand> Operand(const PgQuery__Node* node) const {
    if (node == nullptr) return std::nullopt;
    switch (node->node_case) {
      case PG_QUERY__NODE__NODE_TYPE_CAST:
        return Operand(node->type_cast->arg);
      case PG_QUERY__NODE__NODE_PARAM_REF:
        return KeyOperand{node->param_ref->number, std::nullopt};
      case PG_QUERY__NODE__NODE_A_CONST: {
        const PgQuery__AConst& c = *node->a_const;
        if (c.isnull) return KeyOperand{0, std::nullopt};
        switch (c.val_case) {
          case PG_QUERY__A__CONST__VAL_IVAL:
            return KeyOperand{0, std::to_string(c.ival->ival)};
          case PG_QUERY__A__CONST__VAL_FVAL:
            return KeyOperand{0, std::string(c.fval->fval)};
          case PG_QUERY__A__CONST__VAL_SVAL:
            return KeyOperand{0, std::string(c.sval->sval)};
          default:
            return std::nullopt;
        }
      }
      default:
        return std::nullopt;
    }
  }

  bool IsKey(const PgQuery__Node* node) const {
    const int i = KeyInstance(node);
    return i >= 0 && instances_[i].depth == 0;
  }

  KeyCondition Condition(const PgQuery__Node* node) const {
    KeyCondition any;
    if (node == nullptr) return any;
    if (node->node_case == PG_QUERY__NODE__NODE_BOOL_EXPR) {
      const PgQuery__BoolExpr& b = *node->bool_expr;
      if (b.boolop == PG_QUERY__BOOL_EXPR_TYPE__NOT_EXPR) return any;
      KeyCondition out;
      out.op = b.boolop == PG_QUERY__BOOL_EXPR_TYPE__AND_EXPR
                   ? KeyCondition::Op::kAnd
                   : KeyCondition::Op::kOr;
      for (size_t i = 0; i < b.n_args; ++i) {
        out.children.push_back(Condition(b.args[i]));
      }
      return out;
    }
    if (node->node_case != PG_QUERY__NODE__NODE_A_EXPR) return any;
    const PgQuery__AExpr& e = *node->a_expr;
    const std::string_view op = e.n_name == 1 ? StringOf(e.name[0]) : "";
    switch (e.kind) {
      case PG_QUERY__A__EXPR__KIND__AEXPR_OP:
        return Comparison(e, op);
      case PG_QUERY__A__EXPR__KIND__AEXPR_IN: {
        if (op != "=" || !IsKey(e.lexpr) || e.rexpr == nullptr ||
            e.rexpr->node_case != PG_QUERY__NODE__NODE_LIST) {
          return any;
        }
        KeyCondition in;
        in.op = KeyCondition::Op::kIn;
        for (size_t i = 0; i < e.rexpr->list->n_items; ++i) {
          std::optional<KeyOperand> v = Operand(e.rexpr->list->items[i]);
          if (!v) return any;
          in.values.push_back(*v);
        }
        return in;
      }
      case PG_QUERY__A__EXPR__KIND__AEXPR_OP_ANY: {
        if (op != "=" || !IsKey(e.lexpr)) return any;
        const PgQuery__Node* r = e.rexpr;
        while (r != nullptr && r->node_case == PG_QUERY__NODE__NODE_TYPE_CAST) {
          r = r->type_cast->arg;
        }
        if (r != nullptr && r->node_case == PG_QUERY__NODE__NODE_PARAM_REF) {
          KeyCondition c;
          c.op = KeyCondition::Op::kArrayParam;
          c.array_param = r->param_ref->number;
          return c;
        }
        if (r != nullptr && r->node_case == PG_QUERY__NODE__NODE_A_ARRAY_EXPR) {
          KeyCondition in;
          in.op = KeyCondition::Op::kIn;
          for (size_t i = 0; i < r->a_array_expr->n_elements; ++i) {
            std::optional<KeyOperand> v = Operand(r->a_array_expr->elements[i]);
            if (!v) return any;
            in.values.push_back(*v);
          }
          return in;
        }
        return any;
      }
      case PG_QUERY__A__EXPR__KIND__AEXPR_BETWEEN: {
        if (!IsKey(e.lexpr) || e.rexpr == nullptr ||
            e.rexpr->node_case != PG_QUERY__NODE__NODE_LIST ||
            e.rexpr->list->n_items != 2) {
          return any;
        }
        std::optional<KeyOperand> lo = Operand(e.rexpr->list->items[0]);
        std::optional<KeyOperand> hi = Operand(e.rexpr->list->items[1]);
        if (!lo || !hi) return any;
        KeyCondition r;
        r.op = KeyCondition::Op::kRange;
        r.lower = lo;
        r.upper = hi;
        return r;
      }
      default:
        return any;
    }
  }

  KeyCondition Comparison(const PgQuery__AExpr& e, std::string_view op) const {
    KeyCondition any;
    const PgQuery__Node* key = e.lexpr;
    const PgQuery__Node* value = e.rexpr;
    bool flipped = false;
    if (!IsKey(key)) {
      std::swap(key, value);
      flipped = true;
      if (!IsKey(key)) return any;
    }
    std::optional<KeyOperand> v = Operand(value);
    if (!v) return any;
    KeyCondition c;
    if (op == "=") {
      c.op = KeyCondition::Op::kIn;
      c.values.push_back(*v);
      return c;
    }
    // key < v, or v < key (flipped): normalise to the key on the left.
    static const std::map<std::string_view, std::string_view> kFlip = {
        {"<", ">"}, {"<=", ">="}, {">", "<"}, {">=", "<="}};
    auto it = kFlip.find(op);
    if (it == kFlip.end()) return any;
    const std::string_view normal = flipped ? it->second : op;
    c.op = KeyCondition::Op::kRange;
    if (normal[0] == '<') {
      c.upper = v;
      c.upper_inclusive = normal.size() == 2;
    } else {
      c.lower = v;
      c.lower_inclusive = normal.size() == 2;
    }
    return c;
  }

  // WHERE, and the conditions of inner joins in the statement's own FROM.
  KeyCondition TopLevelCondition(const PgQuery__SelectStmt& select) const {
    KeyCondition all;
    all.op = KeyCondition::Op::kAnd;
    all.children.push_back(Condition(select.where_clause));
    std::function<void(const PgQuery__Node*)> joins = [&](const PgQuery__Node* n) {
      if (n == nullptr || n->node_case != PG_QUERY__NODE__NODE_JOIN_EXPR) return;
      if (n->join_expr->jointype == PG_QUERY__JOIN_TYPE__JOIN_INNER) {
        all.children.push_back(Condition(n->join_expr->quals));
        joins(n->join_expr->larg);
        joins(n->join_expr->rarg);
      }
    };
    for (size_t i = 0; i < select.n_from_clause; ++i) joins(select.from_clause[i]);
    return all;
  }

  // --- What a multi-shard SELECT needs beyond concatenation -----------------

  // The first aggregate or window call in `m` (not inside subqueries).
  static std::string AggregateIn(const ProtobufCMessage* m) {
    if (Is(m, pg_query__select_stmt__descriptor)) return "";
    if (Is(m, pg_query__func_call__descriptor)) {
      const auto* call = reinterpret_cast<const PgQuery__FuncCall*>(m);
      const std::string_view name =
          call->n_funcname > 0 ? StringOf(call->funcname[call->n_funcname - 1])
                               : "";
      if (call->over != nullptr) return StrCat("window function ", name, "()");
      if (call->agg_distinct) return StrCat("aggregate ", name, "(DISTINCT ...)");
      if (call->agg_star || IsAggregateName(name)) {
        return StrCat("aggregate ", name, "()");
      }
    }
    std::string found;
    ForEachChild(m, [&](const ProtobufCMessage* c) {
      if (found.empty()) found = AggregateIn(c);
    });
    return found;
  }

  static std::string MergeNeed(const PgQuery__SelectStmt& s) {
    if (s.n_distinct_clause > 0) return "DISTINCT";
    if (s.n_group_clause > 0) return "GROUP BY";
    if (s.having_clause != nullptr) return "HAVING";
    for (size_t i = 0; i < s.n_target_list; ++i) {
      std::string agg = AggregateIn(&s.target_list[i]->base);
      if (!agg.empty()) return agg;
    }
    if (s.limit_option == PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_WITH_TIES) {
      return "FETCH FIRST ... WITH TIES";
    }
    return "";
  }

  // An aggregating SELECT whose outputs are grouped columns and count, sum,
  // min, max or avg (no DISTINCT, FILTER or ORDER BY inside them), grouped
  // by selected columns only, without HAVING or DISTINCT; ORDER BY (of
  // outputs), LIMIT and OFFSET are fine. Fills plan_.aggregates.
  bool SimpleAggregates(const PgQuery__SelectStmt& s) {
    // Plain DISTINCT (not DISTINCT ON) of selected columns is a GROUP BY of
    // all of them.
    const bool distinct =
        s.n_distinct_clause == 1 && s.distinct_clause[0]->node_case ==
                                        PG_QUERY__NODE__NODE__NOT_SET;
    if ((s.n_distinct_clause > 0 && !distinct) || s.n_target_list == 0 ||
        (distinct && s.having_clause != nullptr)) {
      return false;
    }
    std::vector<AggregateTarget> out;
    std::vector<std::string> plain_columns;  // selected ColumnRef names
    bool any_aggregate = false;
    for (size_t i = 0; i < s.n_target_list; ++i) {
      const PgQuery__Node* t = s.target_list[i];
      if (t->node_case != PG_QUERY__NODE__NODE_RES_TARGET) return false;
      const PgQuery__Node* v = t->res_target->val;
      const std::string alias = t->res_target->name;
      if (v != nullptr && v->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
          v->column_ref->n_fields > 0) {
        const std::string column(
            StringOf(v->column_ref->fields[v->column_ref->n_fields - 1]));
        if (column.empty()) return false;  // t.*
        out.push_back({AggregateTarget::Function::kGroupKey,
                       alias.empty() ? column : alias});
        plain_columns.push_back(column);
        continue;
      }
      plain_columns.push_back("");
      if (v == nullptr || v->node_case != PG_QUERY__NODE__NODE_FUNC_CALL) {
        return false;
      }
      std::optional<AggregateTarget::Function> function =
          SimpleAggregateOf(*v->func_call);
      if (!function) return false;
      AggregateTarget target;
      target.function = *function;
      const std::string_view name = StringOf(v->func_call->funcname[0]);
      any_aggregate = true;
      target.name = alias.empty() ? std::string(name) : alias;
      out.push_back(std::move(target));
    }
    if (distinct) {
      if (any_aggregate || s.n_group_clause > 0) return false;
    } else if (!any_aggregate && s.n_group_clause == 0) {
      return false;
    }
    // Every GROUP BY item is a selected column (by name or position), and
    // every selected column is grouped.
    std::vector<bool> grouped(out.size(), false);
    for (size_t i = 0; i < s.n_group_clause; ++i) {
      const PgQuery__Node* g = s.group_clause[i];
      int index = -1;
      if (g->node_case == PG_QUERY__NODE__NODE_A_CONST &&
          g->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL) {
        index = g->a_const->ival->ival - 1;
      } else if (g->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
                 g->column_ref->n_fields > 0) {
        const std::string_view column =
            StringOf(g->column_ref->fields[g->column_ref->n_fields - 1]);
        for (size_t k = 0; k < out.size(); ++k) {
          if (plain_columns[k] == column || (!column.empty() && out[k].name == column &&
                                             out[k].function ==
                                                 AggregateTarget::Function::kGroupKey)) {
            index = static_cast<int>(k);
            break;
          }
        }
      }
      if (index < 0 || static_cast<size_t>(index) >= out.size() ||
          out[index].function != AggregateTarget::Function::kGroupKey) {
        return false;
      }
      grouped[index] = true;
    }
    for (size_t k = 0; k < out.size(); ++k) {
      if (out[k].function == AggregateTarget::Function::kGroupKey &&
          !grouped[k] && !distinct) {
        return false;  // PostgreSQL will say why
      }
    }
    // HAVING: its aggregates become hidden partials, its columns must be
    // grouped outputs.
    if (s.having_clause != nullptr) {
      bool ok = true;
      const bool walked = VisitHaving(
          s.having_clause,
          [&](PgQuery__Node* call) {
            std::optional<AggregateTarget::Function> f =
                SimpleAggregateOf(*call->func_call);
            if (!f) {
              ok = false;
              return;
            }
            out.push_back({*f, "", /*hidden=*/true});
          },
          [&](PgQuery__Node* column) {
            const PgQuery__ColumnRef& ref = *column->column_ref;
            const std::string_view name =
                ref.n_fields > 0 ? StringOf(ref.fields[ref.n_fields - 1]) : "";
            bool found = false;
            for (size_t k = 0; k < plain_columns.size(); ++k) {
              found |= !name.empty() && plain_columns[k] == name &&
                       out[k].function == AggregateTarget::Function::kGroupKey;
            }
            ok &= found;
          });
      if (!walked || !ok) return false;
    }
    if (!OrderAndLimit(s).empty()) return false;
    // ORDER BY must name outputs: they are all the combined rows have.
    for (SortSpec& spec : plan_.order_by) {
      if (spec.column.empty()) continue;
      int found = -1;
      for (size_t k = 0; k < out.size(); ++k) {
        if (out[k].name == spec.column) {
          if (found >= 0) return false;
          found = static_cast<int>(k);
        }
      }
      if (found < 0) return false;
      spec.position = found + 1;
      spec.column.clear();
    }
    plan_.aggregates = std::move(out);
    return true;
  }

  // ORDER BY items, LIMIT and OFFSET of a SELECT; "" or the construct that
  // cannot be merged.
  std::string OrderAndLimit(const PgQuery__SelectStmt& s) {
    for (size_t i = 0; i < s.n_sort_clause; ++i) {
      if (s.sort_clause[i]->node_case != PG_QUERY__NODE__NODE_SORT_BY) {
        return "ORDER BY";
      }
      const PgQuery__SortBy& by = *s.sort_clause[i]->sort_by;
      SortSpec spec;
      if (by.sortby_dir == PG_QUERY__SORT_BY_DIR__SORTBY_USING) {
        return "ORDER BY ... USING";
      }
      spec.descending = by.sortby_dir == PG_QUERY__SORT_BY_DIR__SORTBY_DESC;
      spec.nulls_first =
          by.sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORTBY_NULLS_DEFAULT ||
                  by.sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORT_BY_NULLS_UNDEFINED
              ? spec.descending
              : by.sortby_nulls == PG_QUERY__SORT_BY_NULLS__SORTBY_NULLS_FIRST;
      const PgQuery__Node* key = by.node;
      if (key != nullptr && key->node_case == PG_QUERY__NODE__NODE_COLLATE_CLAUSE) {
        const PgQuery__CollateClause& c = *key->collate_clause;
        spec.collation = c.n_collname > 0
                             ? std::string(StringOf(c.collname[c.n_collname - 1]))
                             : "";
        key = c.arg;
      }
      if (key != nullptr && key->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
          key->column_ref->n_fields > 0) {
        spec.column = std::string(
            StringOf(key->column_ref->fields[key->column_ref->n_fields - 1]));
        if (spec.column.empty()) return "ORDER BY *";
      } else if (key != nullptr && key->node_case == PG_QUERY__NODE__NODE_A_CONST &&
                 key->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL) {
        spec.position = key->a_const->ival->ival;
      } else {
        return "ORDER BY an expression (select it as a column and order by "
               "that column)";
      }
      plan_.order_by.push_back(std::move(spec));
    }
    for (bool is_limit : {true, false}) {
      const PgQuery__Node* n = is_limit ? s.limit_count : s.limit_offset;
      if (n == nullptr) continue;
      std::optional<KeyOperand> v = Operand(n);
      if (!v) return is_limit ? "LIMIT with an expression" : "OFFSET with an expression";
      if (v->param == 0 && !v->constant) continue;  // LIMIT ALL / NULL
      (is_limit ? plan_.limit : plan_.offset) = v;
    }
    return "";
  }

  // --- Writes ----------------------------------------------------------------

  absl::Status CheckKeyNotSet(const PgQuery__RangeVar& relation, size_t n,
                              PgQuery__Node** targets, std::string_view what) {
    ASSIGN_OR_RETURN(const Table* table, Resolve(relation));
    if (table == nullptr || table->reference) return absl::OkStatus();
    for (size_t i = 0; i < n; ++i) {
      if (targets[i]->node_case != PG_QUERY__NODE__NODE_RES_TARGET) continue;
      if (targets[i]->res_target->name == table->key_column) {
        return Refuse(StrCat(
            what, " changes the shard key ", table->name, ".",
            table->key_column,
            ", which would move the row to another shard; delete the row and "
            "insert it with its new key instead"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status AnalyzeInsert(const PgQuery__InsertStmt& insert) {
    ASSIGN_OR_RETURN(const Table* table, Resolve(*insert.relation));
    if (insert.on_conflict_clause != nullptr) {
      RETURN_IF_ERROR(CheckKeyNotSet(*insert.relation,
                                     insert.on_conflict_clause->n_target_list,
                                     insert.on_conflict_clause->target_list,
                                     "INSERT ... ON CONFLICT DO UPDATE"));
    }
    if (table == nullptr || table->reference) return absl::OkStatus();
    size_t key_index = insert.n_cols;
    for (size_t i = 0; i < insert.n_cols; ++i) {
      if (insert.cols[i]->node_case == PG_QUERY__NODE__NODE_RES_TARGET &&
          insert.cols[i]->res_target->name == table->key_column) {
        key_index = i;
      }
    }
    if (insert.n_cols == 0) {
      return Refuse(StrCat("INSERT INTO ", table->name,
                           " must name its columns, so that the router finds "
                           "the shard key ",
                           table->key_column, ": INSERT INTO ", table->name,
                           " (", table->key_column, ", ...) VALUES (...)"));
    }
    if (key_index == insert.n_cols) {
      return Refuse(StrCat("INSERT INTO ", table->name,
                           " does not give the shard key ", table->key_column,
                           "; every row needs one to be placed"),
                    "23502");
    }
    const PgQuery__Node* source = insert.select_stmt;
    if (source == nullptr || source->node_case != PG_QUERY__NODE__NODE_SELECT_STMT ||
        source->select_stmt->n_values_lists == 0) {
      return Refuse(StrCat("INSERT INTO ", table->name,
                           " ... SELECT is not routed: its rows are computed "
                           "on a shard, not known to the router; insert the "
                           "rows with VALUES, or load them with COPY"));
    }
    const PgQuery__SelectStmt& values = *source->select_stmt;
    for (size_t row = 0; row < values.n_values_lists; ++row) {
      const PgQuery__Node* list = values.values_lists[row];
      std::optional<KeyOperand> key;
      if (list->node_case == PG_QUERY__NODE__NODE_LIST &&
          key_index < list->list->n_items) {
        key = Operand(list->list->items[key_index]);
      }
      if (!key) {
        return Refuse(StrCat("row ", row + 1, " of the INSERT INTO ",
                             table->name, ": the shard key ",
                             table->key_column,
                             " must be a constant or a parameter ($n), so "
                             "that the router can place the row"));
      }
      plan_.insert_keys.push_back(*key);
    }
    return absl::OkStatus();
  }

  // A write names one target table: a reference table (all shards) or a
  // sharded one (by key). Reading the other kind alongside is fine, except
  // sharded rows feeding a write to a reference table, which would differ
  // per shard.
  absl::Status CheckWriteTargets() {
    if (!plan_.writes || plan_.tables.empty()) return absl::OkStatus();
    const Table* target = plan_.tables.front();
    if (target->reference && plan_.distribution != nullptr) {
      return Refuse(StrCat(
          "a write to reference table ", target->name,
          " that reads sharded tables would apply different rows on each "
          "shard; compute the rows first, then write them"));
    }
    return absl::OkStatus();
  }

  const ShardMap& map_;
  RoutingPlan plan_;
  std::set<std::string> cte_names_;
  std::set<std::string> unmapped_;  // tables not in the map
  std::vector<Instance> instances_;
  std::vector<const PgQuery__Node*> equalities_where_;
  std::vector<std::string> using_columns_;
};

// --- Evaluation ------------------------------------------------------------

using ShardSet = std::set<ShardId>;

absl::StatusOr<std::optional<std::string>> Value(const KeyOperand& operand,
                                                 const Params& params) {
  if (operand.param == 0) return operand.constant;
  if (operand.param < 1 || static_cast<size_t>(operand.param) > params.size()) {
    return Refuse(StrCat("the statement uses $", operand.param, " but ",
                         params.size(), " parameters were given"),
                  "08P01");
  }
  return params[operand.param - 1];
}

// The shards that may hold `text` as a key; nullopt: every owner (a value
// PostgreSQL may still compare, such as 5.0 with an int8 key).
std::optional<ShardSet> ShardsOfValue(const Distribution& d,
                                      const std::optional<std::string>& text) {
  if (!text) return ShardSet{};  // key = NULL matches no row
  absl::StatusOr<Key> key = Key::Parse(d.key_type(), *text);
  if (!key.ok()) return std::nullopt;
  if (d.strategy() == Strategy::kRegion) {
    for (const Region& r : d.regions()) {
      if (r.name == key->text()) return ShardSet(r.shards.begin(), r.shards.end());
    }
    if (d.default_shard()) return ShardSet{*d.default_shard()};
    return ShardSet{};
  }
  absl::StatusOr<Placement> p = d.Place(*key);
  if (!p.ok()) return std::nullopt;
  return ShardSet{p->shard};
}

// Elements of a one-dimensional PostgreSQL array literal such as
// {1,"a b",NULL}; nullopt if it is not one.
std::optional<std::vector<std::optional<std::string>>> ArrayElements(
    std::string_view text) {
  if (text.size() < 2 || text.front() != '{' || text.back() != '}') {
    return std::nullopt;
  }
  std::vector<std::optional<std::string>> out;
  std::string_view s = text.substr(1, text.size() - 2);
  if (s.empty()) return out;
  size_t i = 0;
  for (;;) {
    std::string element;
    bool quoted = false;
    if (i < s.size() && s[i] == '"') {
      quoted = true;
      for (++i; i < s.size() && s[i] != '"'; ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) ++i;
        element += s[i];
      }
      if (i >= s.size()) return std::nullopt;
      ++i;
    } else {
      while (i < s.size() && s[i] != ',') {
        if (s[i] == '{' || s[i] == '"') return std::nullopt;  // nested
        element += s[i++];
      }
    }
    if (!quoted && element == "NULL") {
      out.push_back(std::nullopt);
    } else {
      out.push_back(element);
    }
    if (i >= s.size()) return out;
    if (s[i] != ',') return std::nullopt;
    ++i;
  }
}

// [+-]digits: an integer, however large.
bool IsIntegerLiteral(std::string_view text) {
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) text.remove_prefix(1);
  return !text.empty() &&
         text.find_first_not_of("0123456789") == std::string_view::npos;
}

absl::StatusOr<std::optional<ShardSet>> Eval(const KeyCondition& c,
                                             const Distribution& d,
                                             const Params& params) {
  switch (c.op) {
    case KeyCondition::Op::kAny:
      return std::optional<ShardSet>();
    case KeyCondition::Op::kIn: {
      ShardSet out;
      for (const KeyOperand& v : c.values) {
        ASSIGN_OR_RETURN(std::optional<std::string> text, Value(v, params));
        std::optional<ShardSet> s = ShardsOfValue(d, text);
        if (!s) return std::optional<ShardSet>();
        out.insert(s->begin(), s->end());
      }
      return std::optional<ShardSet>(out);
    }
    case KeyCondition::Op::kArrayParam: {
      ASSIGN_OR_RETURN(std::optional<std::string> text,
                       Value(KeyOperand{c.array_param, std::nullopt}, params));
      if (!text) return std::optional<ShardSet>(ShardSet{});
      std::optional<std::vector<std::optional<std::string>>> elements =
          ArrayElements(*text);
      if (!elements) return std::optional<ShardSet>();
      ShardSet out;
      for (const auto& e : *elements) {
        std::optional<ShardSet> s = ShardsOfValue(d, e);
        if (!s) return std::optional<ShardSet>();
        out.insert(s->begin(), s->end());
      }
      return std::optional<ShardSet>(out);
    }
    case KeyCondition::Op::kRange: {
      if (d.strategy() != Strategy::kRange) return std::optional<ShardSet>();
      KeyRange range;
      for (bool upper : {false, true}) {
        const std::optional<KeyOperand>& side = upper ? c.upper : c.lower;
        if (!side) continue;
        ASSIGN_OR_RETURN(std::optional<std::string> text, Value(*side, params));
        if (!text) return std::optional<ShardSet>(ShardSet{});  // < NULL
        absl::StatusOr<Key> key = Key::Parse(d.key_type(), *text);
        if (!key.ok() && IsIntegerKeyType(d.key_type())) {
          // An integer beyond the type still bounds: clamped by
          // ShardsForRange, or beyond int8 itself, past every key.
          key = Key::Parse(KeyType::kInt8, *text);
          if (!key.ok() && IsIntegerLiteral(*text)) {
            const bool negative = (*text)[0] == '-';
            if (negative == upper) return std::optional<ShardSet>(ShardSet{});
            continue;  // this side bounds nothing
          }
        }
        if (!key.ok()) return std::optional<ShardSet>();  // does not narrow
        (upper ? range.upper : range.lower) =
            KeyBound{*key, upper ? c.upper_inclusive : c.lower_inclusive};
      }
      absl::StatusOr<std::vector<ShardId>> ids = d.ShardsForRange(range);
      if (!ids.ok()) return std::optional<ShardSet>();
      return std::optional<ShardSet>(ShardSet(ids->begin(), ids->end()));
    }
    case KeyCondition::Op::kAnd: {
      std::optional<ShardSet> out;
      for (const KeyCondition& child : c.children) {
        ASSIGN_OR_RETURN(std::optional<ShardSet> s, Eval(child, d, params));
        if (!s) continue;
        if (!out) {
          out = std::move(s);
        } else {
          ShardSet both;
          std::set_intersection(out->begin(), out->end(), s->begin(), s->end(),
                                std::inserter(both, both.begin()));
          out = std::move(both);
        }
      }
      return out;
    }
    case KeyCondition::Op::kOr: {
      ShardSet out;
      for (const KeyCondition& child : c.children) {
        ASSIGN_OR_RETURN(std::optional<ShardSet> s, Eval(child, d, params));
        if (!s) return std::optional<ShardSet>();
        out.insert(s->begin(), s->end());
      }
      return std::optional<ShardSet>(out);
    }
  }
  return std::optional<ShardSet>();
}

std::vector<ShardId> AllShards(const ShardMap& map) {
  std::vector<ShardId> all(map.shards().size());
  std::iota(all.begin(), all.end(), 0);
  return all;
}

}  // namespace

std::optional<AggregateTarget::Function> SimpleAggregateOf(
    const PgQuery__FuncCall& call) {
  if (call.agg_distinct || call.agg_filter != nullptr || call.n_agg_order > 0 ||
      call.over != nullptr || call.agg_within_group || call.n_funcname != 1) {
    return std::nullopt;
  }
  const std::string_view name = StringOf(call.funcname[0]);
  if (name == "count" && (call.agg_star || call.n_args == 1)) {
    return AggregateTarget::Function::kCount;
  }
  if (call.n_args != 1) return std::nullopt;
  if (name == "sum") return AggregateTarget::Function::kSum;
  if (name == "min") return AggregateTarget::Function::kMin;
  if (name == "max") return AggregateTarget::Function::kMax;
  if (name == "avg") return AggregateTarget::Function::kAvg;
  return std::nullopt;
}

bool VisitHaving(PgQuery__Node* expr,
                 const std::function<void(PgQuery__Node*)>& on_aggregate,
                 const std::function<void(PgQuery__Node*)>& on_column) {
  bool ok = true;
  std::function<void(ProtobufCMessage*)> walk = [&](ProtobufCMessage* m) {
    if (!ok) return;
    if (IsMessage(m, pg_query__select_stmt__descriptor)) {
      ok = false;
      return;
    }
    if (IsMessage(m, pg_query__node__descriptor)) {
      auto* node = reinterpret_cast<PgQuery__Node*>(m);
      if (node->node_case == PG_QUERY__NODE__NODE_FUNC_CALL) {
        const PgQuery__FuncCall& call = *node->func_call;
        const std::string_view name =
            call.n_funcname > 0 ? StringOf(call.funcname[call.n_funcname - 1])
                                : "";
        if (call.over != nullptr) {
          ok = false;
          return;
        }
        if (call.agg_star || call.agg_distinct ||
            IsAggregateName(name)) {
          on_aggregate(node);
          return;
        }
      } else if (node->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
        on_column(node);
        return;
      }
    }
    ForEachChild(m, walk);
  };
  walk(&expr->base);
  return ok;
}

absl::StatusOr<RoutingPlan> AnalyzeStatement(const PgQuery__Node& statement,
                                             const ShardMap& map) {
  return Analyzer(map).Analyze(statement);
}

absl::StatusOr<std::vector<ShardId>> TargetShards(const RoutingPlan& plan,
                                                  const ShardMap& map,
                                                  const Params& params) {
  if (plan.on_default_shard) return std::vector<ShardId>{*map.default_shard()};
  if (plan.kind == StatementKind::kDdl) return AllShards(map);
  if (plan.distribution == nullptr) {
    if (plan.writes && !plan.tables.empty()) return AllShards(map);
    return std::vector<ShardId>{0};
  }
  const Distribution& d = *plan.distribution;
  ASSIGN_OR_RETURN(std::optional<ShardSet> selected, Eval(plan.key, d, params));
  std::vector<ShardId> out;
  if (!selected) {
    out = d.shards();
  } else {
    out.assign(selected->begin(), selected->end());
  }
  // No key can match: one owner still answers, with the result's columns.
  if (out.empty()) out.push_back(d.shards().front());
  if (out.size() > 1 && !plan.single_shard_only.empty()) {
    return Refuse(plan.single_shard_only);
  }
  return out;
}

absl::StatusOr<std::vector<ShardId>> InsertRowShards(const RoutingPlan& plan,
                                                     const Params& params) {
  const Distribution& d = *plan.distribution;
  const Table& table = *plan.tables.front();
  std::vector<ShardId> out;
  out.reserve(plan.insert_keys.size());
  for (size_t row = 0; row < plan.insert_keys.size(); ++row) {
    ASSIGN_OR_RETURN(std::optional<std::string> text,
                     Value(plan.insert_keys[row], params));
    if (!text) {
      return Refuse(StrCat("row ", row + 1, " of the INSERT INTO ", table.name,
                           " has a NULL shard key ", table.key_column,
                           "; every row needs a key"),
                    "23502");
    }
    absl::StatusOr<Key> key = Key::Parse(d.key_type(), *text);
    if (!key.ok()) {
      return Refuse(StrCat("row ", row + 1, " of the INSERT INTO ", table.name,
                           ": ", key.status().message()),
                    "22P02");
    }
    absl::StatusOr<Placement> p = d.Place(*key);
    if (!p.ok()) {
      return Refuse(StrCat("row ", row + 1, " of the INSERT INTO ", table.name,
                           ": ", p.status().message()));
    }
    out.push_back(p->shard);
  }
  return out;
}

}  // namespace shardkit::internal
