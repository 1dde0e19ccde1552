// Internal: the one seam over a libpq connection to one shard.
//
// A ShardConnection is a non-blocking state machine. Its owner (the
// executor) polls socket() for WantedEvents() together with other
// connections, calls Advance() when the socket is ready, and reads the
// outcome once the state is kIdle or kFailed. Nothing here blocks its
// caller: StartCancel hands libpq 15's blocking PQcancel to a thread of its
// own (see PendingCancel).
//
//   ShardConnection conn("s1", dsn);
//   RETURN_IF_ERROR(conn.StartConnect());
//   while (conn.state() == ShardConnection::State::kConnecting) {
//     ... poll(conn.socket(), conn.WantedEvents()) ...; conn.Advance();
//   }
//   RETURN_IF_ERROR(conn.SendStatement("SELECT $1::text", {"O'Brien"}));
//   ... poll and Advance() until state() is kIdle (the result is ready) ...
//   absl::StatusOr<Result> result = conn.TakeResult();
//
// Errors name the shard. A shard that cannot be reached is kUnavailable and
// shows the connection string with its password masked; an error sent by
// the server reads `shard s2: ERROR 42P01: relation "nope" does not exist`,
// carries the SQLSTATE as a payload (SqlStateOf) and maps it to a specific
// status code (see StatusCodeForSqlState).
//
// Thread-safety: a ShardConnection is not thread-safe; one thread drives it.

#ifndef SHARDKIT_ROUTER_SHARD_CONNECTION_H_
#define SHARDKIT_ROUTER_SHARD_CONNECTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shardkit/cluster.h"
#include "shardkit/result.h"

// libpq's types, kept out of this header's includers.
typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

namespace shardkit::internal {

// Type URL of the status payload that holds a server error's SQLSTATE.
inline constexpr std::string_view kSqlStatePayloadUrl =
    "type.shardkit.dev/shardkit.SqlState";

// SqlStateOf (the reader of that payload) is public: shardkit/cluster.h.

// The status code shardkit uses for a server error with `sqlstate`:
// kAlreadyExists (42P07, 42710, 23505, ...), kNotFound (42P01, 42703, ...),
// kInvalidArgument (other class 42 and 22), kFailedPrecondition (23, 25),
// kAborted (40, and shardkit's SK001: a stale map), kPermissionDenied
// (42501), kUnauthenticated (28),
// kUnavailable (08, 57P0x), kResourceExhausted (53), kCancelled (57014),
// kUnknown otherwise.
absl::StatusCode StatusCodeForSqlState(std::string_view sqlstate);

// One statement and its parameters ($1..$n as text; nullopt is NULL).
struct Statement {
  std::string sql;
  std::vector<std::optional<std::string>> params;
  // Run as a named prepared statement of the connection, prepared (parsed
  // and analysed by the server) on its first use there and reused after:
  // for the library's own statements that repeat on every write of a
  // kind (a dual-write's). `sql` must then be a single statement.
  bool prepare = false;
};

// A cancel request on its way to a server (ShardConnection::StartCancel).
//
// The sending thread shares this handle's state and owns everything else it
// uses: its own copy of the connection's cancel key (PGcancel), which it
// frees when PQcancel returns, and the `on_sent` callback. It depends
// neither on the ShardConnection, which may be closed or destroyed
// meanwhile, nor on this handle: destroying the handle never waits, and the
// thread ends on its own whenever PQcancel returns. So `on_sent` must own
// what it touches (e.g. hold a std::shared_ptr), not borrow from a caller
// that may have returned.
//
// Thread-safety: thread-safe; copies share one request.
class PendingCancel {
 public:
  // nullopt while the request is being sent; then OK once the server has
  // received it (which does not mean the statement stopped, see
  // StartCancel), or kUnavailable when it could not be sent: "could not
  // send the cancel request: PQcancel() -- connect() failed: Connection
  // refused".
  std::optional<absl::Status> outcome() const;

 private:
  friend class ShardConnection;
  struct State;
  explicit PendingCancel(std::shared_ptr<State> state)
      : state_(std::move(state)) {}

  std::shared_ptr<State> state_;  // never null
};

class ShardConnection {
 public:
  enum class State {
    // Not yet started, or closed: no socket.
    kNew,
    // PQconnectPoll in progress.
    kConnecting,
    // Connected, no statement in flight; a result may be waiting in
    // TakeResult().
    kIdle,
    // A statement was sent but libpq still has bytes to write.
    kSending,
    // The statement is out; reading its results.
    kReceiving,
    // The connection is unusable; failure() says why.
    kFailed,
  };

  // `shard_name` is used in every message; `dsn` is a libpq connection
  // string (keyword=value or URI) and may hold a password, which is never
  // put into a message.
  ShardConnection(std::string shard_name, std::string dsn);
  ~ShardConnection();  // closes the connection (PQfinish)

  ShardConnection(const ShardConnection&) = delete;
  ShardConnection& operator=(const ShardConnection&) = delete;

  // Begins connecting without blocking. REQUIRES: state() == kNew.
  // Fails with kInvalidArgument when libpq cannot parse the connection
  // string, kUnavailable when the connection fails at once (e.g. refused);
  // the state is then kFailed. The caller enforces the connect deadline:
  // libpq's own connect_timeout only applies to blocking connects.
  [[nodiscard]] absl::Status StartConnect();

  // Sends `sql` with `params` ($1..$n as text, nullopt is NULL), without
  // blocking. REQUIRES: state() == kIdle.
  //
  // With parameters it uses PQsendQueryParams (extended protocol, one
  // statement). Without parameters it uses PQsendQuery (simple protocol):
  // there are no values to interpolate, and it lets one string carry several
  // statements, e.g. "CREATE TABLE a (...); CREATE INDEX ...", which the
  // server runs as one implicit transaction. Fails with kUnavailable if the
  // connection broke; the state is then kFailed.
  [[nodiscard]] absl::Status SendStatement(
      std::string_view sql,
      const std::vector<std::optional<std::string>>& params);

  // Sends `statements` in one round trip, without blocking: libpq pipeline
  // mode, each statement with the extended protocol (so each is a single
  // statement, with its own parameters), one Sync after the last. The
  // server runs each only if every one before it succeeded; the outcome
  // (TakeResult) is the first error, or else the last statement's result.
  // A statement marked Statement::prepare runs as a named prepared
  // statement (PQsendPrepare on its first use on this connection, then
  // PQsendQueryPrepared). Fails as SendStatement does. REQUIRES: state() ==
  // kIdle; statements is not empty.
  [[nodiscard]] absl::Status SendPipeline(
      const std::vector<Statement>& statements);

  // The socket to poll, or -1 when there is none (kNew, kFailed).
  int socket() const;

  // The poll() events to wait for in the current state (POLLIN, POLLOUT);
  // 0 when nothing is awaited (kNew, kIdle, kFailed).
  short WantedEvents() const;

  // Makes progress after poll() reported the socket ready (or erroring).
  // Moves kConnecting to kIdle or kFailed, and kSending / kReceiving to
  // kIdle once every result of the statement has arrived (the outcome is
  // then in TakeResult()), or to kFailed when the connection breaks.
  void Advance();

  // Starts asking the server to cancel the statement in flight, and returns
  // at once: the request (PQcancel, a TCP connection of its own to the same
  // server) is sent from a new thread, because libpq 15 offers only that
  // blocking call and it can block for as long as the OS tries to reach a
  // host that has gone away. The returned handle tells when the request is
  // out and whether it got through; `on_sent` (optional) runs once on the
  // sending thread after that outcome is set (see PendingCancel for what it
  // may capture).
  //
  // The statement's outcome still arrives through Advance(): usually
  // SQLSTATE 57014, or its result if it finished first. Close() may be
  // called, and this object destroyed, while the request is in flight.
  // A connection must not carry another statement until the request is out
  // (outcome() is set), or the late request could cancel that one.
  //
  // Fails with kFailedPrecondition when there is no open connection, and
  // kResourceExhausted when no thread can be started; nothing is sent then.
  // Unlike the others here, these statuses and outcome()'s do not name the
  // shard: they complete the caller's message about the statement.
  [[nodiscard]] absl::StatusOr<PendingCancel> StartCancel(
      std::function<void()> on_sent = nullptr);

  // The outcome of the last statement: its last result when it carried
  // several statements, or the first error. REQUIRES: state() == kIdle after
  // a statement completed; each outcome is taken once.
  [[nodiscard]] absl::StatusOr<Result> TakeResult();

  // Closes the connection (PQfinish); the state becomes kNew.
  void Close();

  // Whether the connection can carry another, unrelated statement: it is
  // connected and kIdle, the last outcome was taken, the session is outside
  // any transaction (PQTRANS_IDLE: not in an open or failed transaction
  // block) and the server has not announced that it is ending it (a FATAL
  // or PANIC error). A statement that failed with an ordinary error in
  // autocommit leaves a reusable connection. Says nothing about session
  // state a statement may have set (SET, PREPARE, LISTEN, temporary tables,
  // session advisory locks): that stays with the connection.
  bool IsReusable() const;

  // Whether the session is inside a transaction block, open or failed
  // (as of the last message read from the server).
  bool InTransactionBlock() const;

  // Checks, without blocking, that a reusable connection that sat idle is
  // still alive: reads whatever the server sent meanwhile. A server that
  // ended the session (shut down, restarted, pg_terminate_backend) has sent
  // its FATAL message and closed the socket by then, which this reads.
  // Returns IsReusable() afterwards; false when the connection broke (it is
  // then only fit to be closed). A connection that breaks after this check
  // is not detected here.
  // REQUIRES: state() == kIdle.
  bool CheckAliveWhileIdle();

  // After SendStatement failed: true when the connection was already broken
  // and not a byte of the statement reached the socket, so the statement
  // certainly did not run. False after any other failure, and after a
  // failure while the statement was being written or its results read,
  // when it may have run.
  bool failed_before_sending() const { return failed_before_sending_; }

  // The map epoch this session carries as shardkit.epoch (see ShardTask::
  // epoch), or 0 when unknown. A SET made inside a transaction block is
  // undone if the block rolls back, so such a one is forgotten once the
  // session is seen outside the block (it is then set again).
  uint64_t epoch() {
    if (epoch_in_block_ && !InTransactionBlock()) {
      epoch_ = 0;
      epoch_in_block_ = false;
    }
    return epoch_;
  }
  // Records that `SET shardkit.epoch` to `epoch` just completed.
  void NoteEpochSet(uint64_t epoch) {
    epoch_ = epoch;
    epoch_in_block_ = InTransactionBlock();
  }
  State state() const { return state_; }
  // Why the state is kFailed; OK otherwise.
  const absl::Status& failure() const { return failure_; }
  const std::string& shard_name() const { return shard_name_; }

  // The connection string with its password masked, for messages.
  std::string MaskedDsn() const;

 private:
  void AdvanceConnect();
  void AdvanceSend();
  void AdvanceReceive();
  // Folds one PGresult into the statement's outcome; takes ownership.
  void AbsorbResult(PGresult* res);
  void FailWith(absl::Status status);
  // Before sending: fails (kFailedPrecondition with `not_idle`) unless the
  // connection is idle with no outcome pending, and fails it (kUnavailable)
  // when it is known broken, so that nothing was sent.
  absl::Status ReadyToSend(std::string_view not_idle);
  // After sending: resets the statement's outcome and starts flushing.
  absl::Status StartSending();
  // kUnavailable for a connection that broke, with libpq's message.
  absl::Status ConnectionLost(const char* during) const;
  std::string LibpqMessage() const;
  // libpq's notice receiver: discards notices and warnings, and notes a
  // FATAL error that arrives while no statement runs (the server ending
  // the session). `arg` is the ShardConnection.
  static void OnNotice(void* arg, const PGresult* res);

  const std::string shard_name_;
  const std::string dsn_;
  PGconn* conn_ = nullptr;  // owned; null in kNew
  State state_ = State::kNew;
  // While kConnecting: PQconnectPoll last asked to wait for reading.
  bool connect_wants_read_ = false;
  absl::Status failure_;
  // Statements of a pipeline whose results have not all arrived; 0 when
  // not in pipeline mode.
  size_t pipelined_ = 0;
  // Ends of statements' results seen in the pipeline (at most one each).
  size_t pipeline_gaps_ = 0;
  // Statement::prepare: the statements this connection has prepared, by
  // SQL text, and those the pipeline in flight prepares (kept once it
  // succeeds; names are never reused, so a failed one leaves no clash).
  absl::flat_hash_map<std::string, std::string> prepared_;
  std::vector<std::pair<std::string, std::string>> preparing_;
  uint64_t prepared_count_ = 0;
  // While a statement is in flight: its results so far, the first error.
  std::optional<Result> last_result_;
  absl::Status statement_error_;
  bool has_outcome_ = false;
  // The server sent a FATAL or PANIC error: it ends the session.
  bool session_ending_ = false;
  bool failed_before_sending_ = false;
  uint64_t epoch_ = 0;
  bool epoch_in_block_ = false;
};

// The server error in `res` (PGRES_FATAL_ERROR) as a status naming
// `shard_name`: "shard s2: ERROR 42P01: relation "nope" does not exist at
// position 15; hint: ...", with the SQLSTATE as payload. REQUIRES: res is
// not null.
absl::Status ServerErrorStatus(const std::string& shard_name,
                               const PGresult* res);

// Converts a PGRES_TUPLES_OK / PGRES_COMMAND_OK result. REQUIRES: res is not
// null.
Result ConvertResult(const PGresult* res);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_SHARD_CONNECTION_H_
