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

// The longest run of + and - signs, up to a "--" (which starts a comment).
// PostgreSQL's scanner takes such a run as one operator, keeps its first
// sign and scans the rest again: its time grows with the square of the run
// (100 KB of "+" takes 37 s), whether the run then parses or not.
size_t LongestSignRun(std::string_view sql) {
  size_t longest = 0;
  size_t run = 0;
  for (size_t i = 0; i < sql.size(); ++i) {
    const char c = sql[i];
    if (c != '+' && c != '-') {
      run = 0;
    } else if (c == '-' && i > 0 && sql[i - 1] == '-') {
      run = 0;
    } else {
      longest = std::max(longest, ++run);
    }
  }
  return longest;
}

// Tokens after which what precedes them sits one level deeper in the tree
// ("a + b", "a::t", "a COLLATE c", "a IS NULL", "a IN (...)", "NOT a",
// "a OPERATOR(+) b", ...): repeated, they nest without bound.
bool IsNestingToken(PgQuery__Token t) {
  if (IsOperatorToken(t)) return true;
  switch (t) {
    case PG_QUERY__TOKEN__COLLATE: case PG_QUERY__TOKEN__AT:
    case PG_QUERY__TOKEN__IS: case PG_QUERY__TOKEN__ISNULL:
    case PG_QUERY__TOKEN__NOTNULL: case PG_QUERY__TOKEN__IN_P:
    case PG_QUERY__TOKEN__NOT: case PG_QUERY__TOKEN__NOT_LA:
    case PG_QUERY__TOKEN__LIKE: case PG_QUERY__TOKEN__ILIKE:
    case PG_QUERY__TOKEN__SIMILAR: case PG_QUERY__TOKEN__BETWEEN:
    case PG_QUERY__TOKEN__OVERLAPS: case PG_QUERY__TOKEN__ESCAPE:
    case PG_QUERY__TOKEN__OPERATOR:
      return true;
    default:
      return false;
  }
}

// Tokens between siblings of a flat list: list items, AND / OR operands
// (flattened into one node), CASE branches, statements.
bool IsSiblingSeparator(PgQuery__Token t) {
  switch (t) {
    case ',': case ';':
    case PG_QUERY__TOKEN__AND: case PG_QUERY__TOKEN__OR:
    case PG_QUERY__TOKEN__WHEN: case PG_QUERY__TOKEN__THEN:
    case PG_QUERY__TOKEN__ELSE:
      return true;
    default:
      return false;
  }
}

struct TokenMeasures {
  // The longest chain of operators with only operands between them
  // ("1+1+...+1", "x::a::b", "a || b || c"): each nests the parse one level
  // deeper, and libpg_query's time grows with the square of it.
  int longest_chain = 0;
  // An upper bound of how deep the parse tree nests, for libpg_query
  // converts, packs and unpacks it by recursion with no depth guard of its
  // own: nesting tokens in a row, plus, for each bracketed group among them
  // ("(...)", "[...]", CASE ... END), the depth of the group; and every
  // join and set operation, which nest across clauses. Separators start a
  // new row: what they separate are siblings.
  int depth = 0;
};

absl::StatusOr<TokenMeasures> MeasureTokens(const std::string& sql) {
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
  TokenMeasures out;
  int run = 0;
  // Per open group, innermost last: the depth of the row since the last
  // separator, and the deepest row so far (at most the group's tokens).
  struct Group {
    int row = 0;
    int deepest = 0;
  };
  std::vector<Group> groups(1);
  // A closed group is one operand of its enclosing row, as deep as it.
  auto close_group = [&groups] {
    const int inner = groups.back().deepest + 1;
    groups.pop_back();
    Group& outer = groups.back();
    outer.row += inner;
    outer.deepest = std::max(outer.deepest, outer.row);
  };
  int joins_and_set_operations = 0;
  for (size_t i = 0; i < tokens->n_tokens; ++i) {
    const PgQuery__Token t = tokens->tokens[i]->token;
    if (IsOperatorToken(t)) {
      out.longest_chain = std::max(out.longest_chain, ++run);
    } else if (!IsOperandToken(t)) {
      run = 0;
    }
    if (t == '(' || t == '[' || t == PG_QUERY__TOKEN__CASE) {
      groups.emplace_back();
    } else if (t == ')' || t == ']' || t == PG_QUERY__TOKEN__END_P) {
      if (groups.size() > 1) close_group();
    } else if (IsNestingToken(t)) {
      Group& g = groups.back();
      g.deepest = std::max(g.deepest, ++g.row);
    } else if (IsSiblingSeparator(t)) {
      groups.back().row = 0;
    } else if (t == PG_QUERY__TOKEN__JOIN || t == PG_QUERY__TOKEN__UNION ||
               t == PG_QUERY__TOKEN__INTERSECT ||
               t == PG_QUERY__TOKEN__EXCEPT) {
      ++joins_and_set_operations;
    }
  }
  pg_query__scan_result__free_unpacked(tokens, nullptr);
  while (groups.size() > 1) close_group();  // unbalanced: the parser says so
  out.depth = groups[0].deepest + joins_and_set_operations;
  return out;
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
  if (const size_t signs = LongestSignRun(sql); signs > kMaxSignRun) {
    return WithSqlState(
        absl::InvalidArgumentError(StrCat(
            "a run of ", signs, " + and - signs (at most ", kMaxSignRun,
            "): PostgreSQL's scanner takes time growing with the square of "
            "its length; pass such text as a parameter ($1)")),
        "54001");
  }
  const std::string text(sql);  // NUL-terminated for the C API
  absl::StatusOr<TokenMeasures> measures = MeasureTokens(text);
  if (!measures.ok()) return measures.status();
  if (measures->longest_chain > kMaxOperatorChain) {
    return WithSqlState(
        absl::InvalidArgumentError(StrCat(
            "expression too deeply nested: ", measures->longest_chain,
            " operators in one chain (at most ", kMaxOperatorChain,
            "); use IN (...) or = ANY($1) for long lists of values")),
        "54001");
  }
  if (measures->depth > kMaxNestingDepth) {
    return WithSqlState(
        absl::InvalidArgumentError(StrCat(
            "statement too deeply nested: up to ", measures->depth,
            " levels of operators, parentheses, subqueries, joins and set "
            "operations (at most ", kMaxNestingDepth,
            "); simplify it, or split it into several statements")),
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
