// Internal: SQL text <-> libpg_query's parse tree (PostgreSQL 15 grammar).
//
// A ParsedSql owns the unpacked protobuf tree of one SQL string (one or more
// statements). The tree may be changed in place and deparsed back to SQL.
//
//   absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse("SELECT 1");
//   const PgQuery__Node* stmt = parsed->statement(0);
//
// All calls must run on the parser thread (parser_thread.h), whose stack is
// sized for the largest statement accepted here.
//
// Thread-safety: a ParsedSql is not thread-safe; distinct ones are
// independent.

#ifndef SHARDKIT_ROUTER_SQL_PARSER_H_
#define SHARDKIT_ROUTER_SQL_PARSER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

struct PgQuery__ParseResult;
struct PgQuery__Node;

namespace shardkit::internal {

// The largest SQL string parsed. Bigger ones are refused (split a large
// multi-row INSERT, or load bulk data with COPY).
inline constexpr size_t kMaxStatementBytes = size_t{1} << 20;

// The longest chain of binary operators parsed ("1+1+...", "a || b || ..."):
// each nests the tree a level deeper and libpg_query's time grows with the
// square of the depth (80,000 levels: 3 s). Longer chains are refused.
inline constexpr int kMaxOperatorChain = 1000;

// The deepest parse tree parsed, as estimated from the statement's tokens
// (an upper bound): operators and postfix forms in a row ("a IS NULL IS
// NULL ...", "a COLLATE x COLLATE y ...", "1+(1)+(1)+..."), parentheses,
// CASE, joins and set operations. libpg_query converts and unpacks the tree
// by recursion, one stack frame per level and without a depth guard (at
// 40,000 levels it overflows the parser thread's stack). Deeper statements
// are refused.
inline constexpr int kMaxNestingDepth = 2000;

// The longest run of + and - signs parsed (in a string constant too, as
// the check does not lex): PostgreSQL's scanner takes time quadratic in it
// (100 KB of "+": 37 s). Longer runs are refused.
inline constexpr size_t kMaxSignRun = 256;

class ParsedSql {
 public:
  // Parses `sql`. Fails with kInvalidArgument carrying SQLSTATE 42601 and
  // PostgreSQL's message with its position ("syntax error at or near
  // \"FORM\" at position 10"), 54000 for a statement over
  // kMaxStatementBytes, or 54001 for an operator chain over
  // kMaxOperatorChain, a statement nested deeper than kMaxNestingDepth or
  // a run of signs over kMaxSignRun. REQUIRES: on the parser thread.
  [[nodiscard]] static absl::StatusOr<ParsedSql> Parse(std::string_view sql);

  ParsedSql(ParsedSql&&) noexcept;
  ParsedSql& operator=(ParsedSql&&) noexcept;
  ~ParsedSql();

  // Number of statements in the string.
  size_t size() const;

  // Statement i (a SelectStmt, InsertStmt, ... node), owned by this.
  // REQUIRES: i < size().
  const PgQuery__Node* statement(size_t i) const;
  PgQuery__Node* mutable_statement(size_t i);

  // SQL for the tree as it now is (PostgreSQL's canonical spelling).
  // REQUIRES: on the parser thread.
  [[nodiscard]] absl::StatusOr<std::string> Deparse() const;

 private:
  explicit ParsedSql(PgQuery__ParseResult* tree) : tree_(tree) {}

  PgQuery__ParseResult* tree_;  // owned; unpacked by protobuf-c
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_SQL_PARSER_H_
