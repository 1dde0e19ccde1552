#include "router/analyzer.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>
#include <iterator>
#include <map>
#include <numeric>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/numbers.h"
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

// --- Aggregating SELECTs across shards ---------------------------------------

bool SameTree(const ProtobufCMessage* a, const ProtobufCMessage* b);

size_t ElementSize(ProtobufCType type) {
  switch (type) {
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
      return 8;
    case PROTOBUF_C_TYPE_FLOAT:
      return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
      return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
      return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_BYTES:
      return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
      return sizeof(void*);
    default:  // 32-bit integers and enums
      return 4;
  }
}

bool SameValue(ProtobufCType type, const char* a, const char* b) {
  switch (type) {
    case PROTOBUF_C_TYPE_STRING: {
      const char* x = *reinterpret_cast<char* const*>(a);
      const char* y = *reinterpret_cast<char* const*>(b);
      return std::strcmp(x != nullptr ? x : "", y != nullptr ? y : "") == 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
      return SameTree(*reinterpret_cast<const ProtobufCMessage* const*>(a),
                      *reinterpret_cast<const ProtobufCMessage* const*>(b));
    case PROTOBUF_C_TYPE_BYTES: {
      const auto& x = *reinterpret_cast<const ProtobufCBinaryData*>(a);
      const auto& y = *reinterpret_cast<const ProtobufCBinaryData*>(b);
      return x.len == y.len &&
             (x.len == 0 || std::memcmp(x.data, y.data, x.len) == 0);
    }
    default:
      return std::memcmp(a, b, ElementSize(type)) == 0;
  }
}

// Whether two parse trees are the same expression: equal in every field
// but where in the statement they were written.
bool SameTree(const ProtobufCMessage* a, const ProtobufCMessage* b) {
  if (a == b) return true;
  if (a == nullptr || b == nullptr || a->descriptor != b->descriptor) {
    return false;
  }
  const ProtobufCMessageDescriptor& d = *a->descriptor;
  const char* x = reinterpret_cast<const char*>(a);
  const char* y = reinterpret_cast<const char*>(b);
  for (unsigned i = 0; i < d.n_fields; ++i) {
    const ProtobufCFieldDescriptor& f = d.fields[i];
    if (std::strcmp(f.name, "location") == 0) continue;
    if (f.label == PROTOBUF_C_LABEL_REPEATED) {
      const size_t n = *reinterpret_cast<const size_t*>(x + f.quantifier_offset);
      if (n != *reinterpret_cast<const size_t*>(y + f.quantifier_offset)) {
        return false;
      }
      const char* xs = *reinterpret_cast<char* const*>(x + f.offset);
      const char* ys = *reinterpret_cast<char* const*>(y + f.offset);
      const size_t size = ElementSize(f.type);
      for (size_t k = 0; k < n; ++k) {
        if (!SameValue(f.type, xs + k * size, ys + k * size)) return false;
      }
      continue;
    }
    if (f.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      const uint32_t active =
          *reinterpret_cast<const uint32_t*>(x + f.quantifier_offset);
      if (active != *reinterpret_cast<const uint32_t*>(y + f.quantifier_offset)) {
        return false;
      }
      if (active != f.id) continue;
    }
    if (!SameValue(f.type, x + f.offset, y + f.offset)) return false;
  }
  return true;
}

bool SameTree(const PgQuery__Node* a, const PgQuery__Node* b) {
  return SameTree(a != nullptr ? &a->base : nullptr,
                  b != nullptr ? &b->base : nullptr);
}

// Hashes of parse trees, equal for trees SameTree finds the same;
// memoized by node, so that hashing every node of a tree costs its size.
class TreeHasher {
 public:
  size_t operator()(const ProtobufCMessage* m) {
    if (m == nullptr) return 0x9e3779b9;
    if (auto it = memo_.find(m); it != memo_.end()) return it->second;
    const ProtobufCMessageDescriptor& d = *m->descriptor;
    size_t h = std::hash<const void*>()(&d);
    auto mix = [&h](size_t v) { h ^= v + 0x9e3779b9 + (h << 6) + (h >> 2); };
    const char* x = reinterpret_cast<const char*>(m);
    for (unsigned i = 0; i < d.n_fields; ++i) {
      const ProtobufCFieldDescriptor& f = d.fields[i];
      if (std::strcmp(f.name, "location") == 0) continue;
      if (f.label == PROTOBUF_C_LABEL_REPEATED) {
        const size_t n = *reinterpret_cast<const size_t*>(x + f.quantifier_offset);
        const char* items = *reinterpret_cast<char* const*>(x + f.offset);
        mix(n);
        for (size_t k = 0; k < n; ++k) {
          mix(Value(f.type, items + k * ElementSize(f.type)));
        }
        continue;
      }
      if ((f.flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
          *reinterpret_cast<const uint32_t*>(x + f.quantifier_offset) != f.id) {
        continue;
      }
      mix(f.id);
      mix(Value(f.type, x + f.offset));
    }
    memo_[m] = h;
    return h;
  }

  size_t operator()(const PgQuery__Node* node) {
    return (*this)(node != nullptr ? &node->base : nullptr);
  }

 private:
  size_t Value(ProtobufCType type, const char* p) {
    switch (type) {
      case PROTOBUF_C_TYPE_STRING: {
        const char* s = *reinterpret_cast<char* const*>(p);
        return std::hash<std::string_view>()(s != nullptr ? s : "");
      }
      case PROTOBUF_C_TYPE_MESSAGE:
        return (*this)(*reinterpret_cast<const ProtobufCMessage* const*>(p));
      case PROTOBUF_C_TYPE_BYTES: {
        const auto& b = *reinterpret_cast<const ProtobufCBinaryData*>(p);
        return std::hash<std::string_view>()(std::string_view(
            reinterpret_cast<const char*>(b.data), b.len));
      }
      default: {
        uint64_t v = 0;
        std::memcpy(&v, p, ElementSize(type));
        return std::hash<uint64_t>()(v);
      }
    }
  }

  absl::flat_hash_map<const ProtobufCMessage*, size_t> memo_;
};

// Expressions, each kept once with a value, found by SameTree in about
// constant time.
class TreeIndex {
 public:
  explicit TreeIndex(TreeHasher& hash) : hash_(hash) {}

  // The value of the expression SameTree as `node`, or -1.
  int Find(const PgQuery__Node* node) {
    auto it = by_hash_.find(hash_(node));
    if (it == by_hash_.end()) return -1;
    for (const auto& [tree, value] : it->second) {
      if (SameTree(tree, node)) return value;
    }
    return -1;
  }

  // REQUIRES: Find(node) < 0.
  void Add(const PgQuery__Node* node, int value) {
    by_hash_[hash_(node)].emplace_back(node, value);
  }

 private:
  TreeHasher& hash_;
  absl::flat_hash_map<size_t, std::vector<std::pair<const PgQuery__Node*, int>>>
      by_hash_;
};

// The name PostgreSQL gives an output column written without AS, as
// FigureColnameInternal (parse_target.c) finds it in the raw tree; returns
// 2 for a name, 1 for a fallback (a type name, "case"), 0 for none.
int FigureName(const PgQuery__Node* node, std::string* name) {
  if (node == nullptr) return 0;
  auto last_string = [](PgQuery__Node** items, size_t n) -> const char* {
    const char* last = nullptr;
    for (size_t i = 0; i < n; ++i) {
      if (items[i]->node_case == PG_QUERY__NODE__NODE_STRING) {
        last = items[i]->string->sval;
      }
    }
    return last;
  };
  auto named = [name](std::string_view s) {
    *name = std::string(s);
    return 2;
  };
  switch (node->node_case) {
    case PG_QUERY__NODE__NODE_COLUMN_REF: {
      const PgQuery__ColumnRef& ref = *node->column_ref;
      const char* last = last_string(ref.fields, ref.n_fields);
      return last != nullptr ? named(last) : 0;
    }
    case PG_QUERY__NODE__NODE_A_INDIRECTION: {
      const PgQuery__AIndirection& ind = *node->a_indirection;
      const char* last = last_string(ind.indirection, ind.n_indirection);
      return last != nullptr ? named(last) : FigureName(ind.arg, name);
    }
    case PG_QUERY__NODE__NODE_FUNC_CALL: {
      const PgQuery__FuncCall& call = *node->func_call;
      return call.n_funcname > 0 ? named(StringOf(call.funcname[call.n_funcname - 1]))
                                 : 0;
    }
    case PG_QUERY__NODE__NODE_A_EXPR:
      return node->a_expr->kind == PG_QUERY__A__EXPR__KIND__AEXPR_NULLIF
                 ? named("nullif")
                 : 0;
    case PG_QUERY__NODE__NODE_TYPE_CAST: {
      const PgQuery__TypeCast& cast = *node->type_cast;
      const int strength = FigureName(cast.arg, name);
      if (strength <= 1 && cast.type_name != nullptr &&
          cast.type_name->n_names > 0) {
        *name = std::string(
            StringOf(cast.type_name->names[cast.type_name->n_names - 1]));
        return 1;
      }
      return strength;
    }
    case PG_QUERY__NODE__NODE_COLLATE_CLAUSE:
      return FigureName(node->collate_clause->arg, name);
    case PG_QUERY__NODE__NODE_GROUPING_FUNC:
      return named("grouping");
    case PG_QUERY__NODE__NODE_SUB_LINK: {
      const PgQuery__SubLink& link = *node->sub_link;
      switch (link.sub_link_type) {
        case PG_QUERY__SUB_LINK_TYPE__EXISTS_SUBLINK:
          return named("exists");
        case PG_QUERY__SUB_LINK_TYPE__ARRAY_SUBLINK:
          return named("array");
        case PG_QUERY__SUB_LINK_TYPE__EXPR_SUBLINK: {
          // The name of the subquery's one output column.
          const PgQuery__Node* sub = link.subselect;
          if (sub == nullptr || sub->node_case != PG_QUERY__NODE__NODE_SELECT_STMT) {
            return 0;
          }
          const PgQuery__SelectStmt* s = sub->select_stmt;
          while (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE && s->larg != nullptr) {
            s = s->larg;
          }
          if (s->n_target_list == 0 ||
              s->target_list[0]->node_case != PG_QUERY__NODE__NODE_RES_TARGET) {
            return 0;
          }
          const PgQuery__ResTarget& t = *s->target_list[0]->res_target;
          if (t.name != nullptr && t.name[0] != '\0') return named(t.name);
          std::string inner;
          return named(FigureName(t.val, &inner) > 0 ? inner : "?column?");
        }
        default:
          return 0;
      }
    }
    case PG_QUERY__NODE__NODE_CASE_EXPR: {
      const int strength = FigureName(node->case_expr->defresult, name);
      if (strength <= 1) {
        *name = "case";
        return 1;
      }
      return strength;
    }
    case PG_QUERY__NODE__NODE_A_ARRAY_EXPR:
      return named("array");
    case PG_QUERY__NODE__NODE_ROW_EXPR:
      return named("row");
    case PG_QUERY__NODE__NODE_COALESCE_EXPR:
      return named("coalesce");
    case PG_QUERY__NODE__NODE_MIN_MAX_EXPR:
      switch (node->min_max_expr->op) {
        case PG_QUERY__MIN_MAX_OP__IS_GREATEST:
          return named("greatest");
        case PG_QUERY__MIN_MAX_OP__IS_LEAST:
          return named("least");
        default:
          return 0;
      }
    case PG_QUERY__NODE__NODE_SQLVALUE_FUNCTION:
      switch (node->sqlvalue_function->op) {
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_DATE:
          return named("current_date");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_TIME:
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_TIME_N:
          return named("current_time");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_TIMESTAMP:
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_TIMESTAMP_N:
          return named("current_timestamp");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_LOCALTIME:
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_LOCALTIME_N:
          return named("localtime");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_LOCALTIMESTAMP:
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_LOCALTIMESTAMP_N:
          return named("localtimestamp");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_ROLE:
          return named("current_role");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_USER:
          return named("current_user");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_USER:
          return named("user");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_SESSION_USER:
          return named("session_user");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_CATALOG:
          return named("current_catalog");
        case PG_QUERY__SQLVALUE_FUNCTION_OP__SVFOP_CURRENT_SCHEMA:
          return named("current_schema");
        default:
          return 0;
      }
    case PG_QUERY__NODE__NODE_XML_EXPR:
      switch (node->xml_expr->op) {
        case PG_QUERY__XML_EXPR_OP__IS_XMLCONCAT:
          return named("xmlconcat");
        case PG_QUERY__XML_EXPR_OP__IS_XMLELEMENT:
          return named("xmlelement");
        case PG_QUERY__XML_EXPR_OP__IS_XMLFOREST:
          return named("xmlforest");
        case PG_QUERY__XML_EXPR_OP__IS_XMLPARSE:
          return named("xmlparse");
        case PG_QUERY__XML_EXPR_OP__IS_XMLPI:
          return named("xmlpi");
        case PG_QUERY__XML_EXPR_OP__IS_XMLROOT:
          return named("xmlroot");
        case PG_QUERY__XML_EXPR_OP__IS_XMLSERIALIZE:
          return named("xmlserialize");
        default:
          return 0;
      }
    case PG_QUERY__NODE__NODE_XML_SERIALIZE:
      return named("xmlserialize");
    default:
      return 0;
  }
}

// The name of an output column of a SELECT: its alias, or the one
// PostgreSQL makes up ("count", "lower", "?column?").
std::string OutputName(const PgQuery__ResTarget& target) {
  if (target.name != nullptr && target.name[0] != '\0') return target.name;
  std::string name;
  return FigureName(target.val, &name) > 0 ? name : "?column?";
}

// SQL for `select`, its parameters renumbered first, first + 1, ... in the
// order of their numbers; `used` gets those numbers, so that the SQL's
// parameter first + i is the statement's used[i]. The numbers are restored.
absl::StatusOr<std::string> DeparseSelect(PgQuery__SelectStmt& select,
                                          int first, std::vector<int>* used) {
  std::vector<PgQuery__ParamRef*> refs;
  std::function<void(ProtobufCMessage*)> collect = [&](ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__param_ref__descriptor)) {
      refs.push_back(reinterpret_cast<PgQuery__ParamRef*>(m));
    }
    ForEachChild(m, collect);
  };
  collect(&select.base);
  std::set<int> numbers;
  for (const PgQuery__ParamRef* ref : refs) numbers.insert(ref->number);
  used->assign(numbers.begin(), numbers.end());
  std::vector<int> original(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    original[i] = refs[i]->number;
    refs[i]->number = first + static_cast<int>(std::distance(
                                  numbers.begin(), numbers.find(original[i])));
  }
  PgQuery__Node node = PG_QUERY__NODE__INIT;
  node.node_case = PG_QUERY__NODE__NODE_SELECT_STMT;
  node.select_stmt = &select;
  PgQuery__RawStmt raw = PG_QUERY__RAW_STMT__INIT;
  raw.stmt = &node;
  PgQuery__RawStmt* stmts[] = {&raw};
  PgQuery__ParseResult result = PG_QUERY__PARSE_RESULT__INIT;
  result.version = PG_VERSION_NUM;
  result.n_stmts = 1;
  result.stmts = stmts;
  std::vector<uint8_t> packed(pg_query__parse_result__get_packed_size(&result));
  pg_query__parse_result__pack(&result, packed.data());
  for (size_t i = 0; i < refs.size(); ++i) refs[i]->number = original[i];
  PgQueryProtobuf buffer{packed.size(), reinterpret_cast<char*>(packed.data())};
  PgQueryDeparseResult deparsed = pg_query_deparse_protobuf(buffer);
  if (deparsed.error != nullptr) {
    const std::string message = deparsed.error->message;
    pg_query_free_deparse_result(deparsed);
    return absl::InternalError(
        StrCat("cannot turn the rewritten statement back into SQL: ", message));
  }
  std::string sql = deparsed.query;
  pg_query_free_deparse_result(deparsed);
  return sql;
}

// Whether `call` is an aggregate (rather than a plain function), as far as
// its name and form tell: the built-in aggregates, and anything written
// with *, DISTINCT, FILTER, ORDER BY or WITHIN GROUP.
bool IsAggregateCall(const PgQuery__FuncCall& call) {
  const std::string_view name =
      call.n_funcname > 0 ? StringOf(call.funcname[call.n_funcname - 1]) : "";
  return call.agg_star || call.agg_distinct || call.agg_filter != nullptr ||
         call.n_agg_order > 0 || call.agg_within_group || IsAggregateName(name);
}

// Whether `m` holds an aggregate call outside subqueries and window calls.
bool HasAggregate(const ProtobufCMessage* m) {
  if (Is(m, pg_query__select_stmt__descriptor)) return false;
  if (Is(m, pg_query__func_call__descriptor)) {
    const auto* call = reinterpret_cast<const PgQuery__FuncCall*>(m);
    if (call->over == nullptr && IsAggregateCall(*call)) return true;
  }
  bool found = false;
  ForEachChild(m, [&](const ProtobufCMessage* c) {
    if (!found) found = HasAggregate(c);
  });
  return found;
}

// Aggregates whose partial results combine with the same function:
// min(min(x)) is min(x).
bool CombinesWithItself(std::string_view name) {
  static const std::set<std::string_view> kSelf = {
      "min",    "max",     "bool_and", "bool_or",
      "every",  "bit_and", "bit_or",   "bit_xor"};
  return kSelf.count(name) > 0;
}

constexpr std::string_view kCombinedAggregates =
    "across shards the router combines count, sum, avg, min, max, bool_and, "
    "bool_or, every, bit_and, bit_or and bit_xor, also with DISTINCT or "
    "FILTER";

// Plans an aggregating SELECT across shards (see AggregatePlan). The tree
// is changed while deparsing and restored before Plan returns.
class AggregatePlanner {
 public:
  explicit AggregatePlanner(PgQuery__SelectStmt& select) : select_(select) {}

  // "" with `outputs` and `plan` filled, or the construct that stops it,
  // with what to do (RoutingPlan::needs_merge).
  std::string Plan(std::vector<AggregateTarget>* outputs, AggregatePlan* plan) {
    FindKeys();
    if (refusal_.empty()) RewriteAll();
    if (refusal_.empty() && has_distinct_ && !extra_names_.empty()) {
      refusal_ = StrCat(
          "column ", extra_names_.front(),
          ", neither in GROUP BY nor inside an aggregate, with an aggregate "
          "(DISTINCT ...) (add it to GROUP BY)");
    }
    if (!refusal_.empty()) return refusal_;
    if (columns_.empty()) {  // e.g. SELECT 1 FROM t HAVING true: one group
      AddColumn(Column::kAggregate, NewCall("count", nullptr, 0, nullptr, true),
                false);
    }
    absl::Status status = PartialSql(plan);
    if (status.ok()) status = CombineSql(plan);
    if (!status.ok()) {
      return StrCat("this aggregating SELECT (", status.message(), ")");
    }
    for (size_t i = 0; i < select_.n_target_list; ++i) {
      outputs->push_back({output_functions_[i], output_names_[i]});
    }
    plan->aggregates = aggregates_;
    return "";
  }

 private:
  struct Column {
    enum Kind { kKey, kExtra, kDistinct, kAggregate };
    Kind kind;
    PgQuery__Node* expr;  // what the shards select
    bool collated;        // whether its values keep their collation
  };

  bool PlainDistinct() const {
    return select_.n_distinct_clause == 1 &&
           select_.distinct_clause[0]->node_case == PG_QUERY__NODE__NODE__NOT_SET;
  }

  bool Grouped() const {
    return select_.n_group_clause > 0 || (PlainDistinct() && no_aggregates_);
  }

  size_t AddColumn(Column::Kind kind, PgQuery__Node* expr, bool collated) {
    columns_.push_back({kind, expr, collated});
    return columns_.size() - 1;
  }

  // A column for a value the shards group by (a GROUP BY expression, the
  // argument or FILTER of a DISTINCT aggregate), shared with an equal one.
  size_t AddGrouped(Column::Kind kind, PgQuery__Node* expr) {
    if (const int found = grouped_.Find(expr); found >= 0) return found;
    const size_t column = AddColumn(kind, expr, true);
    grouped_.Add(expr, static_cast<int>(column));
    const PgQuery__Node* only = SingleName(expr);
    if (kind == Column::kKey && only != nullptr) {
      keys_by_name_.emplace(std::string(StringOf(only)), column);
    }
    return column;
  }

  // The name of a column reference written without its table, or nullptr.
  static const PgQuery__Node* SingleName(const PgQuery__Node* node) {
    if (node == nullptr || node->node_case != PG_QUERY__NODE__NODE_COLUMN_REF ||
        node->column_ref->n_fields != 1 ||
        node->column_ref->fields[0]->node_case != PG_QUERY__NODE__NODE_STRING) {
      return nullptr;
    }
    return node->column_ref->fields[0];
  }

  // --- Nodes on the side (the tree points to them while it is deparsed) -----

  PgQuery__Node* NewString(std::string text) {
    PgQuery__String& s = strings_.emplace_back(PgQuery__String(PG_QUERY__STRING__INIT));
    s.sval = texts_.emplace_back(std::move(text)).data();
    PgQuery__Node& n = nodes_.emplace_back(PgQuery__Node(PG_QUERY__NODE__INIT));
    n.node_case = PG_QUERY__NODE__NODE_STRING;
    n.string = &s;
    return &n;
  }

  PgQuery__Node* NewColumnRef(std::string name) {
    PgQuery__Node** field = &pointers_.emplace_back(NewString(std::move(name)));
    PgQuery__ColumnRef& ref =
        column_refs_.emplace_back(PgQuery__ColumnRef(PG_QUERY__COLUMN_REF__INIT));
    ref.n_fields = 1;
    ref.fields = field;
    ref.location = -1;
    PgQuery__Node& n = nodes_.emplace_back(PgQuery__Node(PG_QUERY__NODE__INIT));
    n.node_case = PG_QUERY__NODE__NODE_COLUMN_REF;
    n.column_ref = &ref;
    return &n;
  }

  PgQuery__Node* NewCall(const char* name, PgQuery__Node** args, size_t n_args,
                         PgQuery__Node* filter, bool star = false) {
    PgQuery__Node** funcname = &pointers_.emplace_back(NewString(name));
    PgQuery__FuncCall& call =
        calls_.emplace_back(PgQuery__FuncCall(PG_QUERY__FUNC_CALL__INIT));
    call.n_funcname = 1;
    call.funcname = funcname;
    call.n_args = n_args;
    call.args = args;
    call.agg_filter = filter;
    call.agg_star = star;
    call.funcformat = PG_QUERY__COERCION_FORM__COERCE_EXPLICIT_CALL;
    call.location = -1;
    PgQuery__Node& n = nodes_.emplace_back(PgQuery__Node(PG_QUERY__NODE__INIT));
    n.node_case = PG_QUERY__NODE__NODE_FUNC_CALL;
    n.func_call = &call;
    return &n;
  }

  PgQuery__Node* NewTarget(PgQuery__Node* val, const std::string* name) {
    PgQuery__ResTarget& t =
        res_targets_.emplace_back(PgQuery__ResTarget(PG_QUERY__RES_TARGET__INIT));
    t.name = const_cast<char*>(name != nullptr ? name->c_str() : "");
    t.val = val;
    t.location = -1;
    PgQuery__Node& n = nodes_.emplace_back(PgQuery__Node(PG_QUERY__NODE__INIT));
    n.node_case = PG_QUERY__NODE__NODE_RES_TARGET;
    n.res_target = &t;
    return &n;
  }

  PgQuery__Node* NewPosition(size_t position) {
    PgQuery__Integer& i = integers_.emplace_back(PgQuery__Integer(PG_QUERY__INTEGER__INIT));
    i.ival = static_cast<int32_t>(position);
    PgQuery__AConst& c = consts_.emplace_back(PgQuery__AConst(PG_QUERY__A__CONST__INIT));
    c.val_case = PG_QUERY__A__CONST__VAL_IVAL;
    c.ival = &i;
    c.location = -1;
    PgQuery__Node& n = nodes_.emplace_back(PgQuery__Node(PG_QUERY__NODE__INIT));
    n.node_case = PG_QUERY__NODE__NODE_A_CONST;
    n.a_const = &c;
    return &n;
  }

  // A placeholder for hole `hole` of the combining statement, named when
  // it is deparsed (see CombineSql).
  PgQuery__Node* NewHole(int hole) {
    PgQuery__Node* n = NewColumnRef("");
    holes_.push_back({n->column_ref->fields[0]->string, hole});
    return n;
  }

  static std::string ColumnName(size_t column) { return StrCat("p", column + 1); }

  // --- GROUP BY ---------------------------------------------------------------

  // The shards group by the GROUP BY expressions (for plain DISTINCT, the
  // select list), as the statement writes them.
  void FindKeys() {
    no_aggregates_ = true;
    for (size_t i = 0; i < select_.n_target_list; ++i) {
      if (select_.target_list[i]->node_case != PG_QUERY__NODE__NODE_RES_TARGET ||
          select_.target_list[i]->res_target->val == nullptr) {
        refusal_ = "this select list";
        return;
      }
      output_names_.push_back(OutputName(*select_.target_list[i]->res_target));
      outputs_by_name_[output_names_.back()].push_back(i);
      const PgQuery__Node* val = select_.target_list[i]->res_target->val;
      if (val != nullptr && val->node_case == PG_QUERY__NODE__NODE_COLUMN_REF) {
        const PgQuery__ColumnRef& ref = *val->column_ref;
        if (ref.n_fields > 0 &&
            ref.fields[ref.n_fields - 1]->node_case == PG_QUERY__NODE__NODE_A_STAR) {
          refusal_ =
              "* in the select list of an aggregating SELECT (name the "
              "columns)";
          return;
        }
      }
      no_aggregates_ &= !HasAggregate(&select_.target_list[i]->base);
    }
    if (select_.n_target_list == 0) {
      refusal_ = "an aggregating SELECT without a select list";
      return;
    }
    no_aggregates_ &= select_.having_clause == nullptr;
    for (size_t i = 0; i < select_.n_sort_clause; ++i) {
      no_aggregates_ &= !HasAggregate(&select_.sort_clause[i]->base);
    }
    if (select_.into_clause != nullptr) {
      refusal_ = "SELECT ... INTO (create the table, then INSERT the rows)";
      return;
    }
    if (select_.n_window_clause > 0) {
      refusal_ = "a WINDOW clause in an aggregating SELECT";
      return;
    }
    if (select_.n_group_clause == 0 && PlainDistinct() && no_aggregates_) {
      for (size_t i = 0; i < select_.n_target_list; ++i) {
        AddGrouped(Column::kKey, select_.target_list[i]->res_target->val);
      }
      return;
    }
    for (size_t i = 0; i < select_.n_group_clause; ++i) {
      PgQuery__Node* key = GroupKey(select_.group_clause[i]);
      if (key == nullptr) return;
      AddGrouped(Column::kKey, key);
    }
  }

  // The expression GROUP BY item `g` groups by, or nullptr (refused).
  PgQuery__Node* GroupKey(PgQuery__Node* g) {
    if (g->node_case == PG_QUERY__NODE__NODE_GROUPING_SET) {
      refusal_ = "GROUP BY ROLLUP, CUBE or GROUPING SETS";
      return nullptr;
    }
    if (g->node_case == PG_QUERY__NODE__NODE_A_CONST &&
        g->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL) {
      const int32_t position = g->a_const->ival->ival;
      if (position < 1 || static_cast<size_t>(position) > select_.n_target_list) {
        refusal_ = StrCat("GROUP BY ", position,
                          ", which is not a position in the select list");
        return nullptr;
      }
      return select_.target_list[position - 1]->res_target->val;
    }
    // A bare name is a column of the FROM items if there is one, else an
    // output column (PostgreSQL's rule for GROUP BY); the router cannot
    // tell without the tables' columns, unless the output's expression
    // uses a column of that name (then there is one).
    if (g->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
        g->column_ref->n_fields == 1 &&
        g->column_ref->fields[0]->node_case == PG_QUERY__NODE__NODE_STRING) {
      const std::string name(StringOf(g->column_ref->fields[0]));
      auto outputs = outputs_by_name_.find(name);
      for (size_t i : outputs != outputs_by_name_.end() ? outputs->second
                                                         : std::vector<size_t>{}) {
        const PgQuery__ResTarget& t = *select_.target_list[i]->res_target;
        if (!UsesColumn(&t.val->base, name)) {
          refusal_ = StrCat(
              "GROUP BY ", name, ", the name of an output column (it may also "
              "name a table's column, which PostgreSQL would group by; group "
              "by the expression itself, or by its position: GROUP BY ",
              i + 1, ")");
          return nullptr;
        }
      }
    }
    return g;
  }

  // Whether `m` refers to a column named `name` (outside subqueries).
  static bool UsesColumn(const ProtobufCMessage* m, std::string_view name) {
    if (Is(m, pg_query__select_stmt__descriptor)) return false;
    if (Is(m, pg_query__column_ref__descriptor)) {
      const auto* ref = reinterpret_cast<const PgQuery__ColumnRef*>(m);
      return ref->n_fields > 0 &&
             ref->fields[ref->n_fields - 1]->node_case ==
                 PG_QUERY__NODE__NODE_STRING &&
             StringOf(ref->fields[ref->n_fields - 1]) == name;
    }
    bool found = false;
    ForEachChild(m, [&](const ProtobufCMessage* c) {
      found = found || UsesColumn(c, name);
    });
    return found;
  }

  // The column of the GROUP BY expression `node` is, or -1. A column
  // written with its table (u.country) is the one GROUP BY names without
  // (country): the shards evaluate the latter, so that PostgreSQL still
  // says when it is ambiguous.
  int KeyOf(const PgQuery__Node* node) {
    const int found = grouped_.Find(node);
    if (found >= 0 && columns_[found].kind == Column::kKey) return found;
    if (node->node_case == PG_QUERY__NODE__NODE_COLUMN_REF &&
        node->column_ref->n_fields > 1) {
      const PgQuery__ColumnRef& ref = *node->column_ref;
      const PgQuery__Node* last = ref.fields[ref.n_fields - 1];
      if (last->node_case == PG_QUERY__NODE__NODE_STRING) {
        auto it = keys_by_name_.find(std::string(StringOf(last)));
        if (it != keys_by_name_.end()) return static_cast<int>(it->second);
      }
    }
    return -1;
  }

  // --- The combining statement's expressions ----------------------------------

  // Rewrites, for the combining statement, every expression it evaluates:
  // the select list, HAVING, ORDER BY, DISTINCT ON, LIMIT and OFFSET.
  void RewriteAll() {
    output_functions_.assign(select_.n_target_list,
                             AggregateTarget::Function::kExpression);
    for (size_t i = 0; i < select_.n_target_list && refusal_.empty(); ++i) {
      PgQuery__Node* val = select_.target_list[i]->res_target->val;
      if (KeyOf(val) >= 0) {
        output_functions_[i] = AggregateTarget::Function::kGroupKey;
      } else if (val->node_case == PG_QUERY__NODE__NODE_FUNC_CALL &&
                 val->func_call->over == nullptr) {
        PgQuery__FuncCall call = *val->func_call;
        call.agg_distinct = false;  // count(DISTINCT x) is a count too
        if (std::optional<AggregateTarget::Function> f = SimpleAggregateOf(call)) {
          output_functions_[i] = *f;
        }
      }
      Rewrite(val, "");
    }
    if (select_.having_clause != nullptr) Rewrite(select_.having_clause, "");
    for (size_t i = 0; i < select_.n_sort_clause && refusal_.empty(); ++i) {
      if (select_.sort_clause[i]->node_case != PG_QUERY__NODE__NODE_SORT_BY) continue;
      PgQuery__Node* item = select_.sort_clause[i]->sort_by->node;
      if (!NamesOutput(item)) Rewrite(item, "");
    }
    if (!PlainDistinct()) {
      for (size_t i = 0; i < select_.n_distinct_clause && refusal_.empty(); ++i) {
        PgQuery__Node* item = select_.distinct_clause[i];
        if (!NamesOutput(item)) Rewrite(item, "");
      }
    }
    if (select_.limit_count != nullptr) Rewrite(select_.limit_count, "");
    if (select_.limit_offset != nullptr) Rewrite(select_.limit_offset, "");
  }

  // ORDER BY and DISTINCT ON items that name an output column, by position
  // or by a bare name, are left to the combining statement, whose output
  // columns have the same names and order.
  bool NamesOutput(const PgQuery__Node* item) {
    if (item == nullptr) return true;
    if (item->node_case == PG_QUERY__NODE__NODE_A_CONST) {
      return item->a_const->val_case == PG_QUERY__A__CONST__VAL_IVAL;
    }
    if (item->node_case != PG_QUERY__NODE__NODE_COLUMN_REF ||
        item->column_ref->n_fields != 1 ||
        item->column_ref->fields[0]->node_case != PG_QUERY__NODE__NODE_STRING) {
      return false;
    }
    return outputs_by_name_.contains(
        std::string(StringOf(item->column_ref->fields[0])));
  }

  // Records, for the combining statement, `node` replaced by what computes
  // it from the partial rows: a GROUP BY expression by its column, an
  // aggregate by its combination, a column that depends on the grouped ones
  // by its own column; anything else is rewritten inside. `function` is the
  // innermost plain function call `node` is an argument of.
  void Rewrite(PgQuery__Node* node, std::string_view function) {
    if (!refusal_.empty() || node == nullptr) return;
    if (const int key = KeyOf(node); key >= 0) {
      Replace(node, NewColumnRef(ColumnName(key)));
      return;
    }
    switch (node->node_case) {
      case PG_QUERY__NODE__NODE_FUNC_CALL: {
        const PgQuery__FuncCall& call = *node->func_call;
        const std::string_view name =
            call.n_funcname > 0 ? StringOf(call.funcname[call.n_funcname - 1]) : "";
        if (call.over != nullptr) {
          refusal_ = StrCat("window function ", name, "()");
          return;
        }
        if (IsAggregateCall(call)) {
          const int hole = AddAggregate(node);
          if (hole >= 0) Replace(node, NewHole(hole));
          return;
        }
        function = name;
        break;
      }
      case PG_QUERY__NODE__NODE_SUB_LINK:
        refusal_ =
            "a subquery in the select list, HAVING or ORDER BY of an "
            "aggregating SELECT";
        return;
      case PG_QUERY__NODE__NODE_COLUMN_REF:
        AddExtra(node, function);
        return;
      default:
        break;
    }
    std::function<void(ProtobufCMessage*)> children = [&](ProtobufCMessage* m) {
      if (IsMessage(m, pg_query__type_name__descriptor)) return;  // not values
      if (IsMessage(m, pg_query__node__descriptor)) {
        Rewrite(reinterpret_cast<PgQuery__Node*>(m), function);
      } else {
        ForEachChild(m, children);
      }
    };
    ForEachChild(&node->base, children);
  }

  // A column outside aggregates and GROUP BY: PostgreSQL allows it when it
  // depends on the grouped columns (the table's primary key is grouped).
  // The shards select it without grouping by it, so PostgreSQL still
  // checks that, and the combining statement groups by it too, which
  // changes no group. Inside a function call the router cannot tell from
  // an aggregate it does not know, it is refused.
  void AddExtra(PgQuery__Node* node, std::string_view function) {
    const PgQuery__ColumnRef& ref = *node->column_ref;
    std::vector<std::string> parts;
    for (size_t i = 0; i < ref.n_fields; ++i) {
      if (ref.fields[i]->node_case == PG_QUERY__NODE__NODE_A_STAR) {
        refusal_ = "* in an aggregating SELECT (name the columns)";
        return;
      }
      parts.push_back(std::string(StringOf(ref.fields[i])));
    }
    const std::string name = absl::StrJoin(parts, ".");
    if (!function.empty()) {
      refusal_ = StrCat(
          function, "() of ", name, ", a column not in GROUP BY (if ",
          function, " is an aggregate, the router cannot combine it: ",
          kCombinedAggregates, "; else add ", name, " to GROUP BY)");
      return;
    }
    int column = extras_.Find(node);
    if (column < 0) {
      column = static_cast<int>(AddColumn(Column::kExtra, node, true));
      extras_.Add(node, column);
      extra_names_.push_back(name);
    }
    Replace(node, NewColumnRef(ColumnName(column)));
  }

  // The hole of aggregate call `node` in the combining statement (one per
  // distinct call), adding the partial columns it needs; -1 if refused.
  int AddAggregate(PgQuery__Node* node) {
    if (const int hole = aggregate_calls_.Find(node); hole >= 0) return hole;
    const PgQuery__FuncCall& call = *node->func_call;
    const bool qualified =
        call.n_funcname == 2 && StringOf(call.funcname[0]) == "pg_catalog";
    const std::string name(
        call.n_funcname > 0 ? StringOf(call.funcname[call.n_funcname - 1]) : "");
    const bool known = name == "count" || name == "sum" || name == "avg" ||
                       CombinesWithItself(name);
    const bool arity = call.agg_star ? name == "count" : call.n_args == 1;
    if (call.n_funcname > 2 || (call.n_funcname == 2 && !qualified) || !known ||
        !arity || call.n_agg_order > 0 || call.agg_within_group ||
        call.func_variadic) {
      std::string form = call.agg_distinct ? "DISTINCT ..." : "";
      if (call.n_agg_order > 0) {
        form = call.agg_distinct ? "DISTINCT ... ORDER BY ..." : "... ORDER BY ...";
      }
      refusal_ = StrCat("aggregate ", name, "(", form, ")",
                        call.agg_within_group ? " WITHIN GROUP (...)" : "",
                        " (", kCombinedAggregates, ")");
      return -1;
    }
    CombinedAggregate combined;
    combined.function = name;
    if (call.agg_distinct) {
      has_distinct_ = true;
      combined.distinct = true;
      combined.columns.push_back(AddGrouped(Column::kDistinct, call.args[0]));
      if (call.agg_filter != nullptr) {
        combined.filter = AddGrouped(Column::kDistinct, call.agg_filter);
      }
    } else if (name == "avg") {
      for (const char* part : {"sum", "count"}) {
        combined.columns.push_back(
            AddColumn(Column::kAggregate,
                      NewCall(part, call.args, call.n_args, call.agg_filter),
                      false));
      }
    } else {
      combined.columns.push_back(AddColumn(Column::kAggregate, node,
                                           name == "min" || name == "max"));
    }
    aggregate_calls_.Add(node, static_cast<int>(aggregates_.size()));
    aggregates_.push_back(std::move(combined));
    return static_cast<int>(aggregates_.size() - 1);
  }

  void Replace(PgQuery__Node* node, PgQuery__Node* with) {
    replacements_.push_back({node, with});
  }

  // --- SQL ---------------------------------------------------------------------

  absl::Status PartialSql(AggregatePlan* plan) {
    PgQuery__SelectStmt partial = select_;
    std::vector<PgQuery__Node*>& targets = lists_.emplace_back();
    std::vector<PgQuery__Node*>& group_by = lists_.emplace_back();
    for (size_t i = 0; i < columns_.size(); ++i) {
      targets.push_back(NewTarget(columns_[i].expr, nullptr));
      if (columns_[i].kind == Column::kKey ||
          columns_[i].kind == Column::kDistinct) {
        group_by.push_back(NewPosition(i + 1));
      }
    }
    partial.target_list = targets.data();
    partial.n_target_list = targets.size();
    partial.group_clause = group_by.data();
    partial.n_group_clause = group_by.size();
    partial.group_distinct = false;
    partial.having_clause = nullptr;
    partial.sort_clause = nullptr;
    partial.n_sort_clause = 0;
    partial.limit_count = nullptr;
    partial.limit_offset = nullptr;
    partial.limit_option = PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_DEFAULT;
    partial.distinct_clause = nullptr;
    partial.n_distinct_clause = 0;
    ASSIGN_OR_RETURN(plan->partial_sql,
                     DeparseSelect(partial, 1, &plan->partial_params));
    plan->columns = columns_.size();
    std::vector<std::string> names, collations;
    for (size_t i = 0; i < columns_.size(); ++i) {
      names.push_back(StrCat("c", i + 1));
      if (!columns_[i].collated) continue;
      plan->collated.push_back(i);
      collations.push_back(
          StrCat("pg_collation_for(shardkit_s.c", i + 1, "::text)"));
    }
    // The partial statement's columns have their expressions' collations,
    // which PostgreSQL reports without running it (LIMIT 0), from one row
    // of NULLs. pg_collation_for refuses a type without collations: cast
    // to text, a value keeps its collation, others get "default".
    if (!collations.empty()) {
      plan->collation_sql = StrCat(
          "SELECT ", absl::StrJoin(collations, ", "),
          " FROM (SELECT) AS shardkit_one LEFT JOIN (", plan->partial_sql,
          " LIMIT 0) AS shardkit_s(", absl::StrJoin(names, ", "), ") ON true");
    }
    return absl::OkStatus();
  }

  absl::Status CombineSql(AggregatePlan* plan) {
    PgQuery__SelectStmt combine = select_;
    std::vector<PgQuery__Node*>& targets = lists_.emplace_back();
    for (size_t i = 0; i < select_.n_target_list; ++i) {
      targets.push_back(
          NewTarget(select_.target_list[i]->res_target->val, &output_names_[i]));
    }
    PgQuery__RangeVar from = PG_QUERY__RANGE_VAR__INIT;
    from.inh = true;
    from.relpersistence = const_cast<char*>("p");
    from.location = -1;
    PgQuery__Node from_node = PG_QUERY__NODE__INIT;
    from_node.node_case = PG_QUERY__NODE__NODE_RANGE_VAR;
    from_node.range_var = &from;
    PgQuery__Node* from_list[] = {&from_node};
    std::vector<PgQuery__Node*>& group_by = lists_.emplace_back();
    if (Grouped()) {
      for (size_t i = 0; i < columns_.size(); ++i) {
        if (columns_[i].kind == Column::kKey || columns_[i].kind == Column::kExtra) {
          group_by.push_back(NewColumnRef(ColumnName(i)));
        }
      }
    }
    combine.target_list = targets.data();
    combine.n_target_list = targets.size();
    combine.from_clause = from_list;
    combine.n_from_clause = 1;
    combine.where_clause = nullptr;
    combine.group_clause = group_by.data();
    combine.n_group_clause = group_by.size();
    combine.group_distinct = false;
    combine.with_clause = nullptr;
    combine.n_locking_clause = 0;
    combine.locking_clause = nullptr;

    std::vector<PgQuery__Node> saved;
    saved.reserve(replacements_.size());
    for (const auto& [node, with] : replacements_) {
      saved.push_back(*node);
      *node = *with;
    }
    // Placeholders must not occur in the statement otherwise (in a string
    // constant): try prefixes until the deparsed text holds each once.
    absl::StatusOr<std::string> sql;
    std::string prefix;
    std::vector<std::string> hole_names(holes_.size());
    for (int attempt = 0; attempt < 100; ++attempt) {
      prefix = attempt == 0 ? "shardkit_" : StrCat("shardkit", attempt, "_");
      std::string from_name = StrCat(prefix, "from_");
      from.relname = from_name.data();
      for (size_t i = 0; i < holes_.size(); ++i) {
        hole_names[i] = StrCat(prefix, "a", holes_[i].second, "_");
        holes_[i].first->sval = hole_names[i].data();
      }
      sql = DeparseSelect(combine, static_cast<int>(columns_.size()) + 1,
                          &plan->combine_params);
      from.relname = nullptr;
      if (!sql.ok()) break;
      size_t count = 0;
      for (size_t at = sql->find(prefix); at != std::string::npos;
           at = sql->find(prefix, at + 1)) {
        ++count;
      }
      if (count == holes_.size() + 1) break;
      sql = absl::InternalError("no placeholder name fits");
    }
    for (size_t i = replacements_.size(); i-- > 0;) *replacements_[i].first = saved[i];
    RETURN_IF_ERROR(sql.status());
    // Cut the text at the placeholders.
    plan->text.clear();
    plan->holes.clear();
    size_t begin = 0;
    for (size_t at = sql->find(prefix); at != std::string::npos;
         at = sql->find(prefix, begin)) {
      plan->text.push_back(sql->substr(begin, at - begin));
      const size_t name_start = at + prefix.size();
      const size_t end = sql->find('_', name_start);
      const std::string_view name =
          std::string_view(*sql).substr(name_start, end - name_start);
      int hole = AggregatePlan::kFrom;
      if (name != "from" &&
          (name.empty() || name[0] != 'a' ||
           !absl::SimpleAtoi(ToAbsl(name.substr(1)), &hole))) {
        return absl::InternalError(StrCat("unexpected placeholder in ", *sql));
      }
      plan->holes.push_back(hole);
      begin = end + 1;
    }
    plan->text.push_back(sql->substr(begin));
    return absl::OkStatus();
  }

  PgQuery__SelectStmt& select_;
  std::string refusal_;
  bool no_aggregates_ = true;
  bool has_distinct_ = false;
  std::vector<std::string> output_names_;
  absl::flat_hash_map<std::string, std::vector<size_t>> outputs_by_name_;
  std::vector<Column> columns_;
  TreeHasher hash_;
  TreeIndex grouped_{hash_};  // kKey and kDistinct columns
  absl::flat_hash_map<std::string, size_t> keys_by_name_;  // `GROUP BY name`
  TreeIndex extras_{hash_};
  std::vector<std::string> extra_names_;
  TreeIndex aggregate_calls_{hash_};          // hole by call
  std::vector<CombinedAggregate> aggregates_;  // by hole
  std::vector<AggregateTarget::Function> output_functions_;
  // Nodes of the combining statement to replace, and with what.
  std::vector<std::pair<PgQuery__Node*, PgQuery__Node*>> replacements_;
  // Placeholder names to set, and their hole.
  std::vector<std::pair<PgQuery__String*, int>> holes_;
  // Storage for the nodes made here (a deque never moves its elements).
  std::deque<PgQuery__Node> nodes_;
  std::deque<PgQuery__String> strings_;
  std::deque<std::string> texts_;
  std::deque<PgQuery__Node*> pointers_;
  std::deque<PgQuery__ColumnRef> column_refs_;
  std::deque<PgQuery__FuncCall> calls_;
  std::deque<PgQuery__ResTarget> res_targets_;
  std::deque<PgQuery__Integer> integers_;
  std::deque<PgQuery__AConst> consts_;
  std::deque<std::vector<PgQuery__Node*>> lists_;
};

// See RoutingPlan::needs_primary.
bool NeedsPrimary(const PgQuery__SelectStmt& select) {
  if (select.n_locking_clause > 0 || select.into_clause != nullptr) {
    return true;
  }
  if (select.larg != nullptr && NeedsPrimary(*select.larg)) return true;
  if (select.rarg != nullptr && NeedsPrimary(*select.rarg)) return true;
  if (select.with_clause == nullptr) return false;
  for (size_t i = 0; i < select.with_clause->n_ctes; ++i) {
    const PgQuery__Node* cte = select.with_clause->ctes[i];
    if (cte->node_case != PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR) continue;
    const PgQuery__Node* query = cte->common_table_expr->ctequery;
    if (query == nullptr) continue;
    if (query->node_case != PG_QUERY__NODE__NODE_SELECT_STMT ||
        NeedsPrimary(*query->select_stmt)) {
      return true;
    }
  }
  return false;
}

class Analyzer {
 public:
  explicit Analyzer(const ShardMap& map) : map_(map) {}

  absl::StatusOr<RoutingPlan> Analyze(const PgQuery__Node& stmt) {
    CollectCteNames(&stmt.base);
    switch (stmt.node_case) {
      case PG_QUERY__NODE__NODE_SELECT_STMT:
        plan_.kind = StatementKind::kSelect;
        plan_.needs_primary = NeedsPrimary(*stmt.select_stmt);
        RETURN_IF_ERROR(CollectStatement(stmt));
        RETURN_IF_ERROR(CheckColocation());
        if (stmt.select_stmt->op != PG_QUERY__SET_OPERATION__SETOP_NONE) {
          plan_.single_shard_only =
              "UNION, INTERSECT and EXCEPT over sharded tables run only when "
              "every part selects one shard by its key";
        } else {
          plan_.key = TopLevelCondition(*stmt.select_stmt);
          // The planner changes the tree while it deparses, and restores it.
          PgQuery__SelectStmt& select =
              const_cast<PgQuery__SelectStmt&>(*stmt.select_stmt);
          if (IsAggregating(select)) {
            plan_.needs_merge = AggregatePlanner(select).Plan(
                &plan_.aggregates, &plan_.aggregate);
            if (!plan_.needs_merge.empty()) {
              plan_.aggregates.clear();
              plan_.aggregate = AggregatePlan();
            }
          } else {
            plan_.needs_merge = MergeNeed(select);
            if (plan_.needs_merge.empty()) plan_.needs_merge = OrderAndLimit(select);
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
      case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
        return Refuse(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...) "
            "does not go through Cluster::Execute, which runs each statement "
            "on its own: begin a transaction across shards with "
            "Cluster::Begin() and end it with Transaction::Commit or "
            "Rollback (shardctl sql --stdin takes BEGIN / COMMIT lines)");
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

  // Whether the SELECT groups its rows: GROUP BY, HAVING, plain DISTINCT,
  // or an aggregate in its select list or ORDER BY.
  static bool IsAggregating(const PgQuery__SelectStmt& s) {
    if (s.n_group_clause > 0 || s.having_clause != nullptr) return true;
    if (s.n_distinct_clause == 1 &&
        s.distinct_clause[0]->node_case == PG_QUERY__NODE__NODE__NOT_SET) {
      return true;
    }
    for (size_t i = 0; i < s.n_target_list; ++i) {
      if (HasAggregate(&s.target_list[i]->base)) return true;
    }
    for (size_t i = 0; i < s.n_sort_clause; ++i) {
      if (HasAggregate(&s.sort_clause[i]->base)) return true;
    }
    return false;
  }

  // What a SELECT that does not group needs beyond a merge of its rows.
  static std::string MergeNeed(const PgQuery__SelectStmt& s) {
    if (s.n_distinct_clause > 0) {
      return "DISTINCT ON without GROUP BY or aggregates (the row it keeps "
             "of each value depends on the rows of every shard)";
    }
    for (size_t i = 0; i < s.n_target_list; ++i) {
      std::string agg = AggregateIn(&s.target_list[i]->base);
      if (!agg.empty()) return agg;
    }
    if (s.limit_option == PG_QUERY__LIMIT_OPTION__LIMIT_OPTION_WITH_TIES) {
      return "FETCH FIRST ... WITH TIES";
    }
    return "";
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
