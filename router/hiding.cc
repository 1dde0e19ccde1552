#include "router/hiding.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "router/tree_walk.h"

namespace shardkit::internal {

ShardId HidingShard(const MovingSlice& move) {
  return move.phase == MovePhase::kDualWrite ? move.destination : move.source;
}

std::vector<ShardId> HidingShards(const ShardMap& map, size_t distribution) {
  std::set<ShardId> shards;
  for (const MovingSlice& move : map.moves()) {
    if (move.distribution == distribution) shards.insert(HidingShard(move));
  }
  return {shards.begin(), shards.end()};
}

namespace {

// Always quoted: the deparser keeps what it is given, and a quoted name
// means exactly the name.
std::string QuoteIdent(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

// One rewrite: the edits to `tree` are undone in reverse order, before the
// templates the edits borrowed nodes from are freed.
class Rewrite {
 public:
  Rewrite(const ShardMap& map, size_t distribution, ShardId shard)
      : map_(map) {
    for (const MovingSlice& move : map.moves()) {
      if (move.distribution == distribution && HidingShard(move) == shard) {
        moves_.push_back(&move);
      }
    }
    distribution_ = distribution;
  }

  ~Rewrite() {
    for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
  }

  bool empty() const { return moves_.empty(); }

  absl::Status Apply(PgQuery__Node* statement) {
    CollectCteNames(&statement->base);
    return Walk(&statement->base);
  }

 private:
  // For every move the shard hides, ANDed: "NOT EXISTS (SELECT 1 FROM
  // shardkit.move_4_keys h WHERE h.key = ref.key)" for a hash slice with
  // key lists; "NOT COALESCE(shardkit.hash_key_v1(ref.key) >= ..., false)"
  // for one the shards hash themselves;
  // "NOT COALESCE(ref.key >= 10 AND ref.key < 20, false)" for a range or
  // region slice (its condition, SliceConditionSql; shard_objects.h says
  // why not IS NOT TRUE).
  std::string Condition(std::string_view ref, const Table& table) const {
    const Distribution& distribution = map_.distributions()[distribution_];
    const std::string key = StrCat(ref, ".", QuoteIdent(table.key_column));
    std::string out;
    for (const MovingSlice* move : moves_) {
      if (!out.empty()) out += " AND ";
      if (MoveListsKeys(distribution.strategy(), move->server_hash)) {
        StrAppend(&out, "NOT EXISTS (SELECT 1 FROM ",
                  MoveKeysTable(move->move_id),
                  " shardkit_hidden WHERE shardkit_hidden.key = ", key, ")");
      } else if (distribution.strategy() == Strategy::kHash) {
        StrAppend(&out, "NOT COALESCE(",
                  HashSliceConditionSql(move->hash_lo, move->hash_hi, key),
                  ", false)");
      } else {
        StrAppend(&out, "NOT COALESCE(",
                  SliceConditionSql(distribution.strategy(),
                                    distribution.key_type(), move->from,
                                    move->to, move->region, key),
                  ", false)");
      }
    }
    return out;
  }

  // The map table `rv` names when it belongs to the moving distribution
  // (and is not a CTE of the statement); nullptr otherwise.
  const Table* MovingTable(const PgQuery__RangeVar& rv) const {
    const std::string_view schema = rv.schemaname;
    if (schema.empty() && cte_names_.count(rv.relname)) return nullptr;
    const Table* table = map_.FindTable(
        schema.empty() ? std::string(rv.relname)
                       : StrCat(schema, ".", rv.relname));
    if (table == nullptr && schema == "public") {
      table = map_.FindTable(rv.relname);
    }
    if (table == nullptr || table->reference ||
        table->distribution != distribution_) {
      return nullptr;
    }
    return table;
  }

  absl::StatusOr<ParsedSql*> Template(const std::string& sql) {
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    if (!parsed.ok()) {
      return absl::InternalError(StrCat(
          "cannot hide a moving slice: its filter does not parse (",
          parsed.status().message(), "); please report this as a shardkit "
          "bug, with the statement"));
    }
    templates_.push_back(std::make_unique<ParsedSql>(*std::move(parsed)));
    return templates_.back().get();
  }

  // FROM item `node` (a RangeVar of a moving table) becomes the filtered
  // subquery under the same name and column aliases.
  absl::Status HideFromItem(PgQuery__Node* node, const Table& table) {
    const PgQuery__RangeVar& rv = *node->range_var;
    std::string relation = rv.schemaname[0] != '\0'
                               ? StrCat(QuoteIdent(rv.schemaname), ".",
                                        QuoteIdent(rv.relname))
                               : QuoteIdent(rv.relname);
    std::string alias = QuoteIdent(rv.alias != nullptr ? rv.alias->aliasname
                                                       : rv.relname);
    if (rv.alias != nullptr && rv.alias->n_colnames > 0) {
      alias += "(";
      for (size_t i = 0; i < rv.alias->n_colnames; ++i) {
        if (i > 0) alias += ", ";
        alias += QuoteIdent(rv.alias->colnames[i]->string->sval);
      }
      alias += ")";
    }
    const std::string sql = StrCat(
        "SELECT * FROM (SELECT * FROM ", rv.inh ? "" : "ONLY ", relation,
        " shardkit_t WHERE ", Condition("shardkit_t", table), ") AS ", alias);
    ASSIGN_OR_RETURN(ParsedSql * parsed, Template(sql));
    PgQuery__Node* subselect =
        parsed->mutable_statement(0)->select_stmt->from_clause[0];
    const PgQuery__Node saved = *node;
    *node = *subselect;
    undo_.push_back([node, saved] { *node = saved; });
    return absl::OkStatus();
  }

  // UPDATE / DELETE of a moving table: WHERE (theirs) AND NOT EXISTS ...
  absl::Status HideTarget(const PgQuery__RangeVar& rv,
                          PgQuery__Node** where) {
    const Table* table = MovingTable(rv);
    if (table == nullptr) return absl::OkStatus();
    const std::string ref = QuoteIdent(
        rv.alias != nullptr ? rv.alias->aliasname : rv.relname);
    const bool had_where = *where != nullptr;
    ASSIGN_OR_RETURN(
        ParsedSql * parsed,
        Template(StrCat("SELECT 1 WHERE ", had_where ? "true AND " : "",
                        Condition(ref, *table))));
    PgQuery__Node* condition =
        parsed->mutable_statement(0)->select_stmt->where_clause;
    PgQuery__Node* const original = *where;
    if (had_where) {
      // The placeholder `true` stands for their condition.
      PgQuery__Node** slot = &condition->bool_expr->args[0];
      PgQuery__Node* const placeholder = *slot;
      *slot = original;
      undo_.push_back([slot, placeholder] { *slot = placeholder; });
    }
    *where = condition;
    undo_.push_back([where, original] { *where = original; });
    return absl::OkStatus();
  }

  absl::Status Walk(ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__node__descriptor)) {
      auto* node = reinterpret_cast<PgQuery__Node*>(m);
      if (node->node_case == PG_QUERY__NODE__NODE_RANGE_VAR) {
        const Table* table = MovingTable(*node->range_var);
        return table != nullptr ? HideFromItem(node, *table)
                                : absl::OkStatus();
      }
    }
    // FOR UPDATE OF names range table entries, not relations to read.
    if (IsMessage(m, pg_query__locking_clause__descriptor)) {
      return absl::OkStatus();
    }
    absl::Status status;
    ForEachChild(m, [&](ProtobufCMessage* child) {
      if (status.ok()) status = Walk(child);
    });
    RETURN_IF_ERROR(status);
    // After the children, so that the condition added is not walked.
    if (IsMessage(m, pg_query__update_stmt__descriptor)) {
      auto* update = reinterpret_cast<PgQuery__UpdateStmt*>(m);
      if (update->relation != nullptr) {
        return HideTarget(*update->relation, &update->where_clause);
      }
    } else if (IsMessage(m, pg_query__delete_stmt__descriptor)) {
      auto* del = reinterpret_cast<PgQuery__DeleteStmt*>(m);
      if (del->relation != nullptr) {
        return HideTarget(*del->relation, &del->where_clause);
      }
    }
    return absl::OkStatus();
  }

  void CollectCteNames(const ProtobufCMessage* m) {
    if (IsMessage(m, pg_query__common_table_expr__descriptor)) {
      cte_names_.insert(
          reinterpret_cast<const PgQuery__CommonTableExpr*>(m)->ctename);
    }
    ForEachChild(const_cast<ProtobufCMessage*>(m),
                 [&](ProtobufCMessage* c) { CollectCteNames(c); });
  }

  const ShardMap& map_;
  size_t distribution_ = 0;
  std::vector<const MovingSlice*> moves_;
  std::set<std::string, std::less<>> cte_names_;
  std::vector<std::unique_ptr<ParsedSql>> templates_;
  std::vector<std::function<void()>> undo_;
};

}  // namespace

absl::Status WithSliceHidden(ParsedSql& tree, const ShardMap& map,
                             size_t distribution, ShardId shard,
                             const std::function<absl::Status()>& while_hidden) {
  Rewrite rewrite(map, distribution, shard);
  if (rewrite.empty()) return while_hidden();
  RETURN_IF_ERROR(rewrite.Apply(tree.mutable_statement(0)));
  return while_hidden();
}

}  // namespace shardkit::internal
