#include "router/sql_parser.h"

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>

#include <algorithm>
#include <cassert>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "router/parser_thread.h"
#include "router/shard_connection.h"

namespace shardkit::internal {
namespace {

absl::Status WithSqlState(absl::Status status, std::string_view sqlstate) {
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl),
                    absl::Cord(ToAbsl(sqlstate)));
  return status;
}

bool IsOperatorToken(PgQuery__Token t) {
  switch (t) {
    case '+': case '-': case '*': case '/': case '%': case '^':
    case '<': case '>': case '=':
    case PG_QUERY__TOKEN__Op:
    case PG_QUERY__TOKEN__TYPECAST:
    case PG_QUERY__TOKEN__LESS_EQUALS:
    case PG_QUERY__TOKEN__GREATER_EQUALS:
    case PG_QUERY__TOKEN__NOT_EQUALS:
      return true;
    default:
      return false;
  }
}

bool IsOperandToken(PgQuery__Token t) {
  switch (t) {
    case PG_QUERY__TOKEN__IDENT: case PG_QUERY__TOKEN__UIDENT:
    case PG_QUERY__TOKEN__FCONST: case PG_QUERY__TOKEN__SCONST:
    case PG_QUERY__TOKEN__USCONST: case PG_QUERY__TOKEN__BCONST:
    case PG_QUERY__TOKEN__XCONST: case PG_QUERY__TOKEN__ICONST:
    case PG_QUERY__TOKEN__PARAM: case '.':
      return true;
    default:
      return false;
  }
}

// The longest chain of operators with only operands between them
// ("1+1+...+1", "x::a::b", "a || b || c"): each nests the parse one level
// deeper, and libpg_query's time grows with the square of it. Parentheses
// are bounded by the grammar itself; AND / OR lists are flat.
absl::StatusOr<int> LongestOperatorChain(const std::string& sql) {
  PgQueryScanResult scan = pg_query_scan(sql.c_str());
  if (scan.error != nullptr) {
    absl::Status error = WithSqlState(
        absl::InvalidArgumentError(StrCat(scan.error->message, " at position ",
                                          scan.error->cursorpos)),
        "42601");
    pg_query_free_scan_result(scan);
    return error;
  }
  PgQuery__ScanResult* tokens = pg_query__scan_result__unpack(
      nullptr, scan.pbuf.len, reinterpret_cast<const uint8_t*>(scan.pbuf.data));
  pg_query_free_scan_result(scan);
  if (tokens == nullptr) return absl::InternalError("cannot read scanner output");
  int longest = 0;
  int run = 0;
  for (size_t i = 0; i < tokens->n_tokens; ++i) {
    const PgQuery__Token t = tokens->tokens[i]->token;
    if (IsOperatorToken(t)) {
      longest = std::max(longest, ++run);
    } else if (!IsOperandToken(t)) {
      run = 0;
    }
  }
  pg_query__scan_result__free_unpacked(tokens, nullptr);
  return longest;
}

}  // namespace

absl::StatusOr<ParsedSql> ParsedSql::Parse(std::string_view sql) {
  assert(ParserThread::Default().IsCurrent());
  if (sql.size() > kMaxStatementBytes) {
    return WithSqlState(
        absl::InvalidArgumentError(StrCat(
            "statement too large: ", sql.size(), " bytes (at most ",
            kMaxStatementBytes,
            "); split a large multi-row INSERT, or load bulk data with COPY")),
        "54000");
  }
  const std::string text(sql);  // NUL-terminated for the C API
  absl::StatusOr<int> chain = LongestOperatorChain(text);
  if (!chain.ok()) return chain.status();
  if (*chain > kMaxOperatorChain) {
    return WithSqlState(
        absl::InvalidArgumentError(StrCat(
            "expression too deeply nested: ", *chain,
            " operators in one chain (at most ", kMaxOperatorChain,
            "); use IN (...) or = ANY($1) for long lists of values")),
        "54001");
  }
  PgQueryProtobufParseResult result = pg_query_parse_protobuf(text.c_str());
  if (result.error != nullptr) {
    absl::Status error = WithSqlState(
        absl::InvalidArgumentError(StrCat(
            result.error->message, " at position ", result.error->cursorpos)),
        "42601");
    pg_query_free_protobuf_parse_result(result);
    return error;
  }
  PgQuery__ParseResult* tree = pg_query__parse_result__unpack(
      nullptr, result.parse_tree.len,
      reinterpret_cast<const uint8_t*>(result.parse_tree.data));
  pg_query_free_protobuf_parse_result(result);
  if (tree == nullptr) {
    return absl::InternalError("libpg_query returned a parse tree that does "
                               "not unpack");
  }
  return ParsedSql(tree);
}

ParsedSql::ParsedSql(ParsedSql&& other) noexcept : tree_(other.tree_) {
  other.tree_ = nullptr;
}

ParsedSql& ParsedSql::operator=(ParsedSql&& other) noexcept {
  std::swap(tree_, other.tree_);
  return *this;
}

ParsedSql::~ParsedSql() {
  if (tree_ != nullptr) pg_query__parse_result__free_unpacked(tree_, nullptr);
}

size_t ParsedSql::size() const { return tree_->n_stmts; }

const PgQuery__Node* ParsedSql::statement(size_t i) const {
  return tree_->stmts[i]->stmt;
}

PgQuery__Node* ParsedSql::mutable_statement(size_t i) {
  return tree_->stmts[i]->stmt;
}

absl::StatusOr<std::string> ParsedSql::Deparse() const {
  assert(ParserThread::Default().IsCurrent());
  std::vector<uint8_t> packed(pg_query__parse_result__get_packed_size(tree_));
  pg_query__parse_result__pack(tree_, packed.data());
  PgQueryProtobuf buffer{packed.size(), reinterpret_cast<char*>(packed.data())};
  PgQueryDeparseResult result = pg_query_deparse_protobuf(buffer);
  if (result.error != nullptr) {
    absl::Status error = absl::InternalError(
        StrCat("cannot turn the rewritten statement back into SQL: ",
               result.error->message));
    pg_query_free_deparse_result(result);
    return error;
  }
  std::string sql = result.query;
  pg_query_free_deparse_result(result);
  return sql;
}

}  // namespace shardkit::internal
