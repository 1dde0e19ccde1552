// Internal: recognizing the statements that begin and end a transaction
// block (BEGIN, COMMIT, ROLLBACK and their other spellings), for callers that
// drive a shardkit::Transaction from SQL text, such as `shardctl sql --stdin`.
//
//   absl::StatusOr<TransactionControl> control =
//       ClassifyTransactionControl("start transaction;");
//   // control->kind == TransactionControl::Kind::kBegin
//
// The text is parsed with PostgreSQL's grammar (libpg_query), so every
// spelling PostgreSQL accepts is recognized: BEGIN [WORK | TRANSACTION],
// START TRANSACTION, COMMIT / END [WORK | TRANSACTION] [AND [NO] CHAIN],
// ROLLBACK / ABORT [WORK | TRANSACTION] [AND [NO] CHAIN], in any case,
// with comments and a trailing ';'.
//
// Thread-safety: thread-safe (parses on the parser thread).

#ifndef SHARDKIT_ROUTER_TRANSACTION_CONTROL_H_
#define SHARDKIT_ROUTER_TRANSACTION_CONTROL_H_

#include <string_view>

#include "absl/status/statusor.h"

namespace shardkit::internal {

struct TransactionControl {
  enum class Kind {
    kBegin,     // BEGIN, START TRANSACTION
    kCommit,    // COMMIT, END
    kRollback,  // ROLLBACK, ABORT
    kOther,     // anything else: a statement to run
  };
  Kind kind = Kind::kOther;
  // COMMIT / ROLLBACK AND CHAIN: a new transaction begins at once.
  bool chain = false;
};

// Classifies `sql`, one statement. Text that does not parse, or holds
// several statements, is kOther: running it reports why. Fails with
// kInvalidArgument, SQLSTATE 0A000 and what to do instead, for transaction
// control that a transaction across shards does not offer: SAVEPOINT,
// RELEASE SAVEPOINT, ROLLBACK TO SAVEPOINT, PREPARE TRANSACTION,
// COMMIT PREPARED, ROLLBACK PREPARED, and BEGIN / START TRANSACTION with
// transaction modes (ISOLATION LEVEL, READ ONLY, DEFERRABLE).
// REQUIRES: not called on the parser thread.
[[nodiscard]] absl::StatusOr<TransactionControl> ClassifyTransactionControl(
    std::string_view sql);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_TRANSACTION_CONTROL_H_
