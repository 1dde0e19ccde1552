#include "router/transaction_control.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <string>

#include "absl/status/status.h"
#include "common/strings.h"
#include "router/parser_thread.h"
#include "router/shard_connection.h"
#include "router/sql_parser.h"

namespace shardkit::internal {
namespace {

absl::Status Unsupported(std::string message) {
  absl::Status status = absl::InvalidArgumentError(message);
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("0A000"));
  return status;
}

absl::StatusOr<TransactionControl> Classify(
    const PgQuery__TransactionStmt& stmt) {
  using Kind = TransactionControl::Kind;
  switch (stmt.kind) {
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
      if (stmt.n_options > 0) {
        return Unsupported(
            "BEGIN with transaction modes (ISOLATION LEVEL, READ ONLY, "
            "DEFERRABLE) is not supported in a transaction across shards: "
            "write BEGIN alone; each shard runs its part at its own default "
            "isolation (default_transaction_isolation, READ COMMITTED unless "
            "set otherwise)");
      }
      return TransactionControl{Kind::kBegin, false};
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
      return TransactionControl{Kind::kCommit, stmt.chain != 0};
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
      return TransactionControl{Kind::kRollback, stmt.chain != 0};
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_SAVEPOINT:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_RELEASE:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_TO:
      return Unsupported(
          "savepoints (SAVEPOINT, RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT) "
          "are not supported in a transaction across shards: ROLLBACK the "
          "whole transaction and run it again, or run the part that may fail "
          "in a transaction of its own");
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_PREPARE:
      return Unsupported(
          "PREPARE TRANSACTION is shardkit's to send: COMMIT prepares a "
          "transaction that wrote to several shards and commits it with "
          "two-phase commit; write COMMIT");
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT_PREPARED:
    case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_PREPARED:
      return Unsupported(
          "COMMIT PREPARED and ROLLBACK PREPARED are not routed: prepared "
          "transactions that shardkit left in doubt are resolved by its "
          "decision log with 'shardctl recover -c FILE'; resolve others on "
          "their shard directly (psql)");
    default:
      return TransactionControl{};
  }
}

}  // namespace

absl::StatusOr<TransactionControl> ClassifyTransactionControl(
    std::string_view sql) {
  absl::StatusOr<TransactionControl> control = TransactionControl{};
  ParserThread::Default().Run([&] {
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    if (!parsed.ok() || parsed->size() != 1) return;
    const PgQuery__Node* stmt = parsed->statement(0);
    if (stmt->node_case != PG_QUERY__NODE__NODE_TRANSACTION_STMT) return;
    control = Classify(*stmt->transaction_stmt);
  });
  return control;
}

}  // namespace shardkit::internal
