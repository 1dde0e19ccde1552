#include "router/move_guard.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <string>

#include "absl/strings/cord.h"
#include "common/strings.h"
#include "router/parser_thread.h"
#include "router/shard_connection.h"
#include "router/tree_walk.h"

namespace shardkit::internal {
namespace {

absl::Status Refusal(std::string message) {
  absl::Status status = absl::FailedPreconditionError(std::move(message));
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl),
                    absl::Cord(ToAbsl(kMoveUnderWaySqlState)));
  return status;
}

// The first move of `table`'s distribution whose source or destination is
// among `shards`; nullptr if none.
const MovingSlice* MoveTouching(const ShardMap& map, const Table& table,
                                const std::vector<ShardId>& shards) {
  if (table.reference) return nullptr;
  for (const MovingSlice& move : map.moves()) {
    if (move.distribution != table.distribution) continue;
    for (ShardId shard : shards) {
      if (shard == move.source || shard == move.destination) return &move;
    }
  }
  return nullptr;
}

std::string MoveText(const ShardMap& map, const MovingSlice& move) {
  return StrCat("move ", move.move_id, " of distribution '",
                map.distributions()[move.distribution].name(), "' (",
                map.shard(move.source).name, " -> ",
                map.shard(move.destination).name, ", ",
                MovePhaseName(move.phase), ")");
}

// The tables of `map` that `node` names anywhere, in RangeVars.
void CollectTables(const ProtobufCMessage* node, const ShardMap& map,
                   std::vector<const Table*>& out) {
  if (IsMessage(node, pg_query__range_var__descriptor)) {
    const auto* rv = reinterpret_cast<const PgQuery__RangeVar*>(node);
    const std::string_view schema = rv->schemaname;
    const Table* table = map.FindTable(
        schema.empty() ? std::string(rv->relname)
                       : StrCat(schema, ".", rv->relname));
    if (table == nullptr && schema == "public") {
      table = map.FindTable(rv->relname);
    }
    if (table != nullptr &&
        std::find(out.begin(), out.end(), table) == out.end()) {
      out.push_back(table);
    }
  }
  ForEachChild(node, [&](const ProtobufCMessage* child) {
    CollectTables(child, map, out);
  });
}

bool WritingWithIn(const ProtobufCMessage* node) {
  if (IsMessage(node, pg_query__common_table_expr__descriptor)) {
    const auto* cte = reinterpret_cast<const PgQuery__CommonTableExpr*>(node);
    if (cte->ctequery != nullptr &&
        cte->ctequery->node_case != PG_QUERY__NODE__NODE_SELECT_STMT) {
      return true;
    }
  }
  bool found = false;
  ForEachChild(node, [&](const ProtobufCMessage* child) {
    found = found || WritingWithIn(child);
  });
  return found;
}

// Whether `statement` only reads: a SELECT without INTO or a writing WITH,
// SHOW, SET, transaction control, or EXPLAIN (without ANALYZE) of one.
bool ReadOnly(const PgQuery__Node& statement) {
  switch (statement.node_case) {
    case PG_QUERY__NODE__NODE_SELECT_STMT:
      return statement.select_stmt->into_clause == nullptr &&
             !HasWritingWith(statement);
    case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
    case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
    case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
      return true;
    case PG_QUERY__NODE__NODE_EXPLAIN_STMT: {
      const PgQuery__ExplainStmt& explain = *statement.explain_stmt;
      for (size_t i = 0; i < explain.n_options; ++i) {
        const PgQuery__Node* option = explain.options[i];
        if (option->node_case == PG_QUERY__NODE__NODE_DEF_ELEM &&
            std::string_view(option->def_elem->defname) == "analyze") {
          return false;
        }
      }
      return explain.query != nullptr && ReadOnly(*explain.query);
    }
    default:
      return false;
  }
}

}  // namespace

bool HasWritingWith(const PgQuery__Node& statement) {
  return WritingWithIn(&statement.base);
}

absl::Status RefuseWritingWithDuringMove(
    const ShardMap& map, const std::vector<const Table*>& tables,
    const std::vector<ShardId>& shards) {
  for (const Table* table : tables) {
    const MovingSlice* move = MoveTouching(map, *table, shards);
    if (move == nullptr) continue;
    return Refusal(StrCat(
        "a data-modifying WITH (INSERT, UPDATE or DELETE in a WITH query) "
        "over table ", table->name, " cannot run while ", MoveText(map, *move),
        " is under way: the router applies only plain INSERT, UPDATE and "
        "DELETE statements on the move's destination too, so this write "
        "could be lost there; run its writes as separate statements (in a "
        "Transaction to keep them atomic), or wait until the move has "
        "finished (`shardctl moves list`)"));
  }
  return absl::OkStatus();
}

absl::Status RefuseDdlDuringMove(const ShardMap& map,
                                 const std::vector<const Table*>& tables,
                                 const std::vector<ShardId>& shards) {
  for (const Table* table : tables) {
    const MovingSlice* move = MoveTouching(map, *table, shards);
    if (move == nullptr) continue;
    return Refusal(StrCat(
        "DDL or TRUNCATE of table ", table->name, " cannot run while ",
        MoveText(map, *move),
        " is under way: the move copies the columns and rows the table had "
        "when it started, so a changed table would lose data on the "
        "destination; wait until the move has finished (`shardctl moves "
        "list`), or abort it (`shardctl moves abort ",
        move->move_id, "`)"));
  }
  return absl::OkStatus();
}

absl::Status RefuseUnroutedWriteDuringMove(const ShardMap& map,
                                           std::string_view sql,
                                           std::string_view path,
                                           const std::vector<ShardId>& shards) {
  if (map.moves().empty()) return absl::OkStatus();
  const MovingSlice* involved = nullptr;
  for (const MovingSlice& move : map.moves()) {
    for (ShardId shard : shards) {
      if (shard == move.source || shard == move.destination) involved = &move;
    }
  }
  if (involved == nullptr) return absl::OkStatus();
  const std::string what_to_do = StrCat(
      "wait until the move has finished (`shardctl moves list`), or write "
      "through Cluster::Execute or a Transaction, which apply the writes on "
      "the move's destination too");
  std::string refusal;
  ParserThread::Default().Run([&] {
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    if (!parsed.ok()) {
      refusal = StrCat(path, " cannot run SQL that does not parse (",
                       parsed.status().message(), ") while ",
                       MoveText(map, *involved),
                       " is under way: what it writes cannot be told; ",
                       what_to_do);
      return;
    }
    for (size_t i = 0; i < parsed->size(); ++i) {
      const PgQuery__Node& statement = *parsed->statement(i);
      if (ReadOnly(statement)) continue;
      if (statement.node_case == PG_QUERY__NODE__NODE_DO_STMT ||
          statement.node_case == PG_QUERY__NODE__NODE_CALL_STMT) {
        refusal = StrCat(path, " cannot run DO or CALL while ",
                         MoveText(map, *involved),
                         " is under way: what they write cannot be told, "
                         "and writes of the moving slice would not reach the "
                         "move's destination; ",
                         what_to_do);
        return;
      }
      std::vector<const Table*> tables;
      CollectTables(&statement.base, map, tables);
      for (const Table* table : tables) {
        const MovingSlice* move = MoveTouching(map, *table, shards);
        if (move == nullptr) continue;
        refusal = StrCat(
            path, " runs its SQL unanalysed, and this statement writes (or "
            "changes) table ", table->name, " on a shard of ",
            MoveText(map, *move),
            ", which is under way: the write would not reach the move's "
            "destination, or would change a copy the move hides; ",
            what_to_do);
        return;
      }
    }
  });
  if (refusal.empty()) return absl::OkStatus();
  return Refusal(std::move(refusal));
}

}  // namespace shardkit::internal
