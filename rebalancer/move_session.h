// Internal: the blocking libpq session the mover's data paths (backfill,
// verify) hold on one shard, and PostgreSQL's COPY text format.
//
// The router's ShardConnection is a non-blocking state machine built for
// many shards at once; the mover drives exactly two connections in
// lock-step and streams COPY data both ways, which blocking libpq does
// best. So it has this seam of its own.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> s,
//                    MoveSession::Open({"s1", dsn}, absl::Minutes(5)));
//   RETURN_IF_ERROR(s->Run("BEGIN"));
//   RETURN_IF_ERROR(s->CopyOut("COPY (SELECT ...) TO STDOUT",
//                              [&](std::string_view line) { ... }));
//
// Every session sets the output settings that make a value's text form the
// same on every shard (DateStyle ISO, IntervalStyle postgres, TimeZone UTC,
// extra_float_digits 1, bytea_output hex, client_encoding UTF8): the
// backfill moves rows as COPY text and verify compares those texts.
//
// Errors name the shard: "shard s2: ERROR 42P01: relation ... (while
// copying a chunk of users)".
//
// Thread-safety: not thread-safe; one thread uses a session at a time.

#ifndef SHARDKIT_REBALANCER_MOVE_SESSION_H_
#define SHARDKIT_REBALANCER_MOVE_SESSION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

typedef struct pg_conn PGconn;

namespace shardkit::internal {

// One side of a move: a shard's name (for messages) and its primary's
// connection string (which may hold a password, never printed).
struct ShardEndpoint {
  std::string name;
  std::string dsn;
  absl::Duration connect_timeout = absl::Seconds(5);
};

class MoveSession {
 public:
  // Connects to `shard` (blocking, within its connect timeout) and sets the
  // canonical output settings and `statement_timeout` (zero: none).
  // Fails with kUnavailable naming the shard (password masked) when it
  // cannot be reached.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<MoveSession>> Open(
      const ShardEndpoint& shard, absl::Duration statement_timeout);

  ~MoveSession();  // closes the connection: an open transaction rolls back
  MoveSession(const MoveSession&) = delete;
  MoveSession& operator=(const MoveSession&) = delete;

  const std::string& shard_name() const { return shard_name_; }

  // Runs `sql`, one or more statements without parameters (simple
  // protocol), and returns each statement's affected-row count (0 where
  // the command reports none). Stops at the first error, which it returns
  // with `context` appended ("while ...").
  [[nodiscard]] absl::StatusOr<std::vector<int64_t>> Run(
      std::string_view sql, std::string_view context = "");

  // Runs one statement with text parameters (nullopt: NULL) and returns its
  // rows as text (nullopt: NULL).
  using Row = std::vector<std::optional<std::string>>;
  [[nodiscard]] absl::StatusOr<std::vector<Row>> Query(
      std::string_view sql,
      const std::vector<std::optional<std::string>>& params,
      std::string_view context = "");

  // Runs one statement that returns a number first (count(*), a size) and
  // returns it. Fails with kInternal naming the shard when the first value
  // of the first row is missing or not an integer.
  [[nodiscard]] absl::StatusOr<int64_t> QueryInt(
      std::string_view sql,
      const std::vector<std::optional<std::string>>& params,
      std::string_view context = "");

  // Runs `sql`, a COPY ... TO STDOUT in text format, and calls `on_line`
  // with each row's line, without its trailing newline. The view is valid
  // during the call only.
  [[nodiscard]] absl::Status CopyOut(
      std::string_view sql, absl::FunctionRef<void(std::string_view)> on_line,
      std::string_view context = "");

  // Runs `sql`, a COPY ... FROM STDIN in text format, sending `data`
  // (newline-terminated lines). Returns the number of rows copied.
  [[nodiscard]] absl::StatusOr<int64_t> CopyIn(std::string_view sql,
                                               std::string_view data,
                                               std::string_view context = "");

  // CopyIn in steps, for data that arrives while another session streams
  // it: StartCopyIn runs `sql`; PutCopyData sends whole lines (libpq
  // buffers and flushes them); EndCopyIn ends the COPY and returns the rows
  // copied, or the server's error (a row it refused).
  [[nodiscard]] absl::Status StartCopyIn(std::string_view sql,
                                         std::string_view context = "");
  [[nodiscard]] absl::Status PutCopyData(std::string_view data,
                                         std::string_view context = "");
  [[nodiscard]] absl::StatusOr<int64_t> EndCopyIn(
      std::string_view context = "");

  // PutCopyData without waiting for the server, for a session that feeds
  // one server while the caller reads another: QueueCopyData hands `data`
  // to libpq (the connection is nonblocking until FinishCopyData) and sends
  // what the server takes at once; FlushCopyData sends what it takes now;
  // FinishCopyData waits until all is sent (then EndCopyIn as usual). A
  // server that has not taken it all within the statement timeout (5
  // minutes without one) fails FinishCopyData with kDeadlineExceeded
  // naming the shard; the connection is given up then: every later use of
  // the session fails at once (the server rolls back when it sees it
  // closed).
  [[nodiscard]] absl::Status QueueCopyData(std::string_view data,
                                           std::string_view context = "");
  [[nodiscard]] absl::Status FlushCopyData(std::string_view context = "");
  [[nodiscard]] absl::Status FinishCopyData(std::string_view context = "");

  // `value` as an SQL string literal ('...', E'...' where needed).
  std::string Literal(std::string_view value) const;

  // Whether the session is inside a transaction block (open or failed).
  bool InTransaction() const;

  // Whether the session's user is a superuser (is_superuser, as the server
  // reported it when the session connected). Such a session copies rows
  // with session_replication_role = replica.
  bool superuser() const { return superuser_; }

  // Rolls back an open transaction, first ending as failed a COPY FROM
  // STDIN left open, ignoring errors (a broken connection rolls back on
  // the server anyway). The session can be used again afterwards.
  void RollbackQuietly();

 private:
  MoveSession(std::string shard_name, PGconn* conn)
      : shard_name_(std::move(shard_name)), conn_(conn) {}
  absl::Status Error(std::string_view what, std::string_view context) const;
  // Waits (up to 100 ms) until the socket takes more or the server sent
  // something, which it reads.
  absl::Status WaitToSend(std::string_view context);

  const std::string shard_name_;
  PGconn* const conn_;  // owned
  absl::Duration statement_timeout_;  // as set by Open
  bool superuser_ = false;            // as set by Open
};

// `name` as an SQL identifier, always double-quoted.
std::string QuoteIdentifier(std::string_view name);

// `name` as it is written in the map (table or schema.table), quoted.
std::string QuoteQualifiedName(std::string_view name);

// ## COPY text format
//
// A row is one line; fields are separated by a tab; \N is NULL; a
// backslash escapes the delimiter, newline, carriage return and itself
// (\t \n \r \\), also \b \f \v, \ooo (octal) and \xhh (hex); a backslash
// before any other character stands for that character.

// Splits `line` into its raw (still escaped) fields. A tab inside a value
// is always escaped, so every unescaped tab is a separator.
void SplitCopyLine(std::string_view line, std::vector<std::string_view>& fields);

// The value of a raw field; nullopt for \N.
std::optional<std::string> UnescapeCopyField(std::string_view raw);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_MOVE_SESSION_H_
