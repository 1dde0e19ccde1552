#include "router/shard_connection.h"

#include <poll.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "libpq-fe.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {
namespace {

struct PqClear {
  void operator()(PGresult* res) const { PQclear(res); }
};
using ResultPtr = std::unique_ptr<PGresult, PqClear>;

// libpq messages span lines ("...failed: Connection refused\n\tIs the server
// running..."); statuses are one line.
std::string OneLine(std::string_view text) {
  std::vector<absl::string_view> words =
      absl::StrSplit(absl::string_view(text.data(), text.size()),
                     absl::ByAnyChar(" \t\r\n"), absl::SkipEmpty());
  return absl::StrJoin(words, " ");
}

std::string Field(const PGresult* res, int code) {
  const char* value = PQresultErrorField(res, code);
  return value == nullptr ? std::string() : std::string(value);
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// A FATAL or PANIC error: the server ends the session after sending it.
bool EndsSession(const PGresult* res) {
  const std::string severity = Field(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  return severity == "FATAL" || severity == "PANIC";
}

// PQcancel must stay signal-safe, so it reports errno as a number
// ("PQcancel() -- connect() failed: error 111"); its caller here may spell
// it out ("... failed: Connection refused").
std::string CancelErrorMessage(const char* error) {
  std::string message = OneLine(error);
  constexpr std::string_view kErrno = "error ";
  const size_t at = message.rfind(kErrno);
  int number = 0;
  if (at == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(message).substr(at + kErrno.size()),
                        &number)) {
    return message;
  }
  char buffer[128];
  // GNU strerror_r: thread-safe, unlike strerror.
  message.replace(at, std::string::npos,
                  strerror_r(number, buffer, sizeof(buffer)));
  return message;
}

// The parameters as libpq takes them (null for SQL NULL); they point into
// `params`.
std::vector<const char*> ParamValues(
    const std::vector<std::optional<std::string>>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const std::optional<std::string>& p : params) {
    values.push_back(p.has_value() ? p->c_str() : nullptr);
  }
  return values;
}

}  // namespace

absl::StatusCode StatusCodeForSqlState(std::string_view sqlstate) {
  using absl::StatusCode;
  if (sqlstate.size() != 5) return StatusCode::kUnknown;
  if (sqlstate == "42P07" || sqlstate == "42710" || sqlstate == "42P04" ||
      sqlstate == "42P06" || sqlstate == "23505") {
    return StatusCode::kAlreadyExists;
  }
  if (sqlstate == "42P01" || sqlstate == "42703" || sqlstate == "42883" ||
      sqlstate == "42704" || sqlstate == "3F000" || sqlstate == "3D000") {
    return StatusCode::kNotFound;
  }
  if (sqlstate == "42501") return StatusCode::kPermissionDenied;
  if (sqlstate == "57014") return StatusCode::kCancelled;
  if (StartsWith(sqlstate, "57P") || StartsWith(sqlstate, "08")) {
    return StatusCode::kUnavailable;
  }
  if (StartsWith(sqlstate, "28")) return StatusCode::kUnauthenticated;
  // SK: shardkit's own (SK001: routed by a stale map, retry).
  if (StartsWith(sqlstate, "40") || StartsWith(sqlstate, "SK")) {
    return StatusCode::kAborted;
  }
  if (StartsWith(sqlstate, "53")) return StatusCode::kResourceExhausted;
  if (StartsWith(sqlstate, "23") || StartsWith(sqlstate, "25") ||
      StartsWith(sqlstate, "55")) {
    return StatusCode::kFailedPrecondition;
  }
  if (StartsWith(sqlstate, "42") || StartsWith(sqlstate, "22")) {
    return StatusCode::kInvalidArgument;
  }
  return StatusCode::kUnknown;
}

absl::Status ServerErrorStatus(const std::string& shard_name,
                               const PGresult* res) {
  const std::string sqlstate = Field(res, PG_DIAG_SQLSTATE);
  if (sqlstate.empty()) {
    // Raised by libpq itself (the connection broke), not by the server.
    return absl::UnavailableError(absl::StrCat(
        "shard ", shard_name, ": ", OneLine(PQresultErrorMessage(res)),
        "; check that the server is running, then retry"));
  }
  std::string severity = Field(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (severity.empty()) severity = Field(res, PG_DIAG_SEVERITY);
  std::string message =
      absl::StrCat("shard ", shard_name, ": ", severity, " ", sqlstate, ": ",
                   Field(res, PG_DIAG_MESSAGE_PRIMARY));
  if (std::string position = Field(res, PG_DIAG_STATEMENT_POSITION);
      !position.empty()) {
    absl::StrAppend(&message, " (statement position ", position, ")");
  }
  if (std::string detail = Field(res, PG_DIAG_MESSAGE_DETAIL);
      !detail.empty()) {
    absl::StrAppend(&message, "; detail: ", OneLine(detail));
  }
  if (std::string hint = Field(res, PG_DIAG_MESSAGE_HINT); !hint.empty()) {
    absl::StrAppend(&message, "; hint: ", OneLine(hint));
  }
  absl::Status status(StatusCodeForSqlState(sqlstate), message);
  status.SetPayload(
      absl::string_view(kSqlStatePayloadUrl.data(), kSqlStatePayloadUrl.size()),
      absl::Cord(sqlstate));
  return status;
}

Result ConvertResult(const PGresult* res) {
  // libpq's accessors predate const-correctness; none of them modifies res.
  PGresult* r = const_cast<PGresult*>(res);
  Result result;
  const int columns = PQnfields(r);
  result.columns.reserve(columns);
  for (int c = 0; c < columns; ++c) {
    result.columns.push_back(Column{PQfname(r, c), PQftype(r, c),
                                    PQftable(r, c), PQftablecol(r, c)});
  }
  const int rows = PQntuples(r);
  result.rows.reserve(rows);
  for (int i = 0; i < rows; ++i) {
    Row row;
    row.reserve(columns);
    for (int c = 0; c < columns; ++c) {
      if (PQgetisnull(r, i, c)) {
        row.push_back(std::nullopt);
      } else {
        row.push_back(std::string(PQgetvalue(r, i, c), PQgetlength(r, i, c)));
      }
    }
    result.rows.push_back(std::move(row));
  }
  result.command_tag = PQcmdStatus(r);
  int64_t affected = 0;
  if (absl::SimpleAtoi(PQcmdTuples(r), &affected)) {
    result.rows_affected = affected;
  }
  return result;
}

ShardConnection::ShardConnection(std::string shard_name, std::string dsn)
    : shard_name_(std::move(shard_name)), dsn_(std::move(dsn)) {}

ShardConnection::~ShardConnection() { Close(); }

std::string ShardConnection::MaskedDsn() const { return MaskDsnPassword(dsn_); }

std::string ShardConnection::LibpqMessage() const {
  if (conn_ == nullptr) return "no connection";
  std::string message = OneLine(PQerrorMessage(conn_));
  return message.empty() ? "unknown libpq error" : message;
}

void ShardConnection::FailWith(absl::Status status) {
  failure_ = std::move(status);
  state_ = State::kFailed;
}

absl::Status ShardConnection::ConnectionLost(const char* during) const {
  return absl::UnavailableError(absl::StrCat(
      "shard ", shard_name_, ": connection lost while ", during, ": ",
      LibpqMessage(),
      "; the statement may or may not have been applied on this shard: check "
      "it, then retry"));
}

absl::Status ShardConnection::StartConnect() {
  if (state_ != State::kNew) {
    return absl::FailedPreconditionError(absl::StrCat(
        "shard ", shard_name_, ": StartConnect on a connection already used"));
  }
  // Validate first so that a malformed connection string is reported as the
  // configuration error it is, not as an unreachable server.
  char* parse_error = nullptr;
  PQconninfoOption* options = PQconninfoParse(dsn_.c_str(), &parse_error);
  if (options == nullptr) {
    std::string why = parse_error != nullptr ? OneLine(parse_error)
                                             : std::string("out of memory");
    PQfreemem(parse_error);
    // libpq may quote part of the string it could not parse; when that
    // string holds a password, say only that it is malformed.
    if (MaskedDsn() != dsn_) why = "it cannot be parsed";
    absl::Status status = absl::InvalidArgumentError(absl::StrCat(
        "shard ", shard_name_, " has an invalid connection string (",
        MaskedDsn(), "): ", why,
        "; fix the shard's dsn in the configuration (see "
        "https://www.postgresql.org/docs/15/libpq-connect.html)"));
    FailWith(status);
    return status;
  }
  PQconninfoFree(options);

  // expand_dbname=1 makes libpq read the user's string, keyword=value or
  // URI, as a whole set of parameters; fallback_application_name names us
  // in pg_stat_activity unless the user's string sets application_name.
  const char* const keywords[] = {"fallback_application_name", "dbname",
                                  nullptr};
  const char* const values[] = {"shardkit", dsn_.c_str(), nullptr};
  conn_ = PQconnectStartParams(keywords, values, /*expand_dbname=*/1);
  if (conn_ == nullptr) {
    absl::Status status = absl::ResourceExhaustedError(absl::StrCat(
        "shard ", shard_name_, ": libpq could not allocate a connection"));
    FailWith(status);
    return status;
  }
  PQsetNoticeReceiver(conn_, &ShardConnection::OnNotice, this);
  if (PQstatus(conn_) == CONNECTION_BAD) {
    absl::Status status = absl::UnavailableError(absl::StrCat(
        "shard ", shard_name_, " (", MaskedDsn(),
        ") is unreachable: ", LibpqMessage(),
        "; start the server, or fix the shard's dsn in the configuration"));
    FailWith(status);
    return status;
  }
  // libpq's contract: after a successful start, wait until writable.
  state_ = State::kConnecting;
  connect_wants_read_ = false;
  return absl::OkStatus();
}

int ShardConnection::socket() const {
  if (conn_ == nullptr || state_ == State::kFailed) return -1;
  return PQsocket(conn_);
}

short ShardConnection::WantedEvents() const {
  switch (state_) {
    case State::kConnecting:
      return connect_wants_read_ ? POLLIN : POLLOUT;
    case State::kSending:
      // While libpq cannot write, the server may be waiting for us to read.
      return POLLIN | POLLOUT;
    case State::kReceiving:
      return POLLIN;
    case State::kNew:
    case State::kIdle:
    case State::kFailed:
      return 0;
  }
  return 0;
}

void ShardConnection::Advance() {
  switch (state_) {
    case State::kConnecting:
      AdvanceConnect();
      return;
    case State::kSending:
      AdvanceSend();
      return;
    case State::kReceiving:
      AdvanceReceive();
      return;
    case State::kNew:
    case State::kIdle:
    case State::kFailed:
      return;
  }
}

void ShardConnection::AdvanceConnect() {
  const PostgresPollingStatusType poll_status = PQconnectPoll(conn_);
  connect_wants_read_ = poll_status == PGRES_POLLING_READING;
  switch (poll_status) {
    case PGRES_POLLING_OK:
      if (PQsetnonblocking(conn_, 1) != 0) {
        FailWith(ConnectionLost("switching to non-blocking mode"));
        return;
      }
      state_ = State::kIdle;
      return;
    case PGRES_POLLING_FAILED:
      FailWith(absl::UnavailableError(absl::StrCat(
          "shard ", shard_name_, " (", MaskedDsn(),
          ") is unreachable: ", LibpqMessage(),
          "; start the server, or fix the shard's dsn in the configuration")));
      return;
    default:
      return;  // reading or writing: poll again
  }
}

absl::Status ShardConnection::SendStatement(
    std::string_view sql,
    const std::vector<std::optional<std::string>>& params) {
  RETURN_IF_ERROR(
      ReadyToSend("a statement was sent on a connection that is not idle"));
  const std::string text(sql);  // libpq wants a terminated string
  int sent = 0;
  if (params.empty()) {
    sent = PQsendQuery(conn_, text.c_str());
  } else {
    const std::vector<const char*> values = ParamValues(params);
    sent =
        PQsendQueryParams(conn_, text.c_str(), static_cast<int>(values.size()),
                          /*paramTypes=*/nullptr, values.data(),
                          /*paramLengths=*/nullptr, /*paramFormats=*/nullptr,
                          /*resultFormat=*/0);
  }
  if (sent == 0) {
    if (PQstatus(conn_) == CONNECTION_OK) {
      // Refused by libpq itself, e.g. more than 65535 parameters.
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", shard_name_,
                       ": cannot send the statement: ", LibpqMessage()));
    }
    absl::Status status = ConnectionLost("sending the statement");
    FailWith(status);
    return status;
  }
  return StartSending();
}

namespace {

// Statements one connection prepares at most (Statement::prepare); past
// it, they run unnamed.
constexpr size_t kMaxPrepared = 256;

}  // namespace

absl::Status ShardConnection::SendPipeline(
    const std::vector<Statement>& statements) {
  if (statements.size() == 1 && !statements[0].prepare) {
    return SendStatement(statements[0].sql, statements[0].params);
  }
  constexpr std::string_view kNotIdle =
      "a pipeline was sent on a connection that is not idle, or empty";
  if (statements.empty()) {
    failed_before_sending_ = false;
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", shard_name_, ": ", std::string(kNotIdle)));
  }
  RETURN_IF_ERROR(ReadyToSend(kNotIdle));
  if (PQenterPipelineMode(conn_) == 0) {
    return absl::InternalError(absl::StrCat(
        "shard ", shard_name_, ": cannot enter pipeline mode: ",
        LibpqMessage()));
  }
  preparing_.clear();
  size_t prepares = 0;
  for (const Statement& statement : statements) {
    const std::vector<const char*> values = ParamValues(statement.params);
    const std::string* name = nullptr;
    if (statement.prepare) {
      auto it = prepared_.find(statement.sql);
      if (it != prepared_.end()) {
        name = &it->second;
      } else if (prepared_.size() + preparing_.size() < kMaxPrepared) {
        preparing_.emplace_back(statement.sql,
                                absl::StrCat("shardkit_", ++prepared_count_));
        name = &preparing_.back().second;
        if (PQsendPrepare(conn_, name->c_str(), statement.sql.c_str(),
                          static_cast<int>(values.size()),
                          /*paramTypes=*/nullptr) == 0) {
          absl::Status status = ConnectionLost("sending the statement");
          FailWith(status);
          return status;
        }
        ++prepares;
      }
    }
    const int sent =
        name != nullptr
            ? PQsendQueryPrepared(conn_, name->c_str(),
                                  static_cast<int>(values.size()),
                                  values.data(), /*paramLengths=*/nullptr,
                                  /*paramFormats=*/nullptr, /*resultFormat=*/0)
            : PQsendQueryParams(conn_, statement.sql.c_str(),
                                static_cast<int>(values.size()),
                                /*paramTypes=*/nullptr, values.data(),
                                /*paramLengths=*/nullptr,
                                /*paramFormats=*/nullptr, /*resultFormat=*/0);
    if (sent == 0) {
      // Part of the pipeline may be out already: the connection is only
      // fit to be closed.
      absl::Status status = ConnectionLost("sending the statement");
      FailWith(status);
      return status;
    }
  }
  if (PQpipelineSync(conn_) == 0) {
    absl::Status status = ConnectionLost("sending the statement");
    FailWith(status);
    return status;
  }
  pipelined_ = statements.size() + prepares;
  pipeline_gaps_ = 0;
  return StartSending();
}

absl::Status ShardConnection::ReadyToSend(std::string_view not_idle) {
  failed_before_sending_ = false;
  if (state_ != State::kIdle || has_outcome_) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", shard_name_, ": ", std::string(not_idle)));
  }
  if (PQstatus(conn_) != CONNECTION_OK) {
    // Known broken before anything is written: the statement cannot run.
    failed_before_sending_ = true;
    absl::Status status = absl::UnavailableError(
        absl::StrCat("shard ", shard_name_,
                     ": the connection was lost before the statement was "
                     "sent: ",
                     LibpqMessage()));
    FailWith(status);
    return status;
  }
  return absl::OkStatus();
}

absl::Status ShardConnection::StartSending() {
  last_result_.reset();
  statement_error_ = absl::OkStatus();
  state_ = State::kSending;
  AdvanceSend();
  if (state_ == State::kFailed) return failure_;
  return absl::OkStatus();
}

void ShardConnection::AdvanceSend() {
  switch (PQflush(conn_)) {
    case 0:
      state_ = State::kReceiving;
      // A result takes a round trip: reading now would only find nothing
      // (a wasted syscall per statement). Unless input was read while
      // flushing (PQisBusy parses it without reading), or the connection
      // broke meanwhile, wait for poll() to report the socket readable.
      if (PQstatus(conn_) != CONNECTION_OK || PQisBusy(conn_) == 0) {
        AdvanceReceive();
      }
      return;
    case 1:
      // Not all sent; drain what the server sent meanwhile so it does not
      // stall writing to us while we wait to write to it.
      if (PQconsumeInput(conn_) == 0) {
        FailWith(ConnectionLost("sending the statement"));
      }
      return;
    default:
      FailWith(ConnectionLost("sending the statement"));
      return;
  }
}

void ShardConnection::AdvanceReceive() {
  if (PQconsumeInput(conn_) == 0) {
    FailWith(ConnectionLost("waiting for the statement's result"));
    return;
  }
  while (state_ == State::kReceiving && PQisBusy(conn_) == 0) {
    PGresult* res = PQgetResult(conn_);
    if (pipelined_ > 0) {
      // Pipeline mode: null ends one statement's results; the Sync's
      // result ends the pipeline.
      if (res == nullptr) {
        if (PQstatus(conn_) != CONNECTION_OK ||
            ++pipeline_gaps_ > pipelined_) {
          FailWith(ConnectionLost("waiting for the statement's result"));
          return;
        }
        continue;
      }
      const ExecStatusType status = PQresultStatus(res);
      if (status == PGRES_PIPELINE_SYNC) {
        PQclear(res);
        pipelined_ = 0;
        if (statement_error_.ok()) {
          for (auto& [sql, name] : preparing_) {
            prepared_.emplace(std::move(sql), std::move(name));
          }
        } else if (const std::optional<std::string> state =
                       SqlStateOf(statement_error_);
                   state == "26000" || state == "0A000") {
          // A prepared statement is gone (DEALLOCATE or DISCARD ran on
          // this connection), or its table changed shape under it ("cached
          // plan must not change result type"): prepare again from the
          // next use on.
          prepared_.clear();
        }
        preparing_.clear();
        if (PQexitPipelineMode(conn_) == 0) {
          FailWith(absl::InternalError(absl::StrCat(
              "shard ", shard_name_,
              ": cannot leave pipeline mode: ", LibpqMessage())));
          return;
        }
        state_ = State::kIdle;
        has_outcome_ = true;
        return;
      }
      if (status == PGRES_PIPELINE_ABORTED) {
        // Skipped after an earlier statement's error, which is the outcome.
        PQclear(res);
        continue;
      }
      AbsorbResult(res);
      continue;
    }
    if (res == nullptr) {
      // Every result of the statement (string) has arrived.
      state_ = State::kIdle;
      has_outcome_ = true;
      return;
    }
    AbsorbResult(res);
  }
}

void ShardConnection::AbsorbResult(PGresult* raw) {
  ResultPtr res(raw);
  switch (PQresultStatus(res.get())) {
    case PGRES_TUPLES_OK:
    case PGRES_COMMAND_OK:
    case PGRES_EMPTY_QUERY:
      if (statement_error_.ok()) last_result_ = ConvertResult(res.get());
      return;
    case PGRES_FATAL_ERROR:
      if (EndsSession(res.get())) session_ending_ = true;
      if (statement_error_.ok()) {
        statement_error_ = ServerErrorStatus(shard_name_, res.get());
      }
      return;
    case PGRES_NONFATAL_ERROR:
      return;  // a notice or warning; the statement goes on
    case PGRES_COPY_IN:
    case PGRES_COPY_OUT:
    case PGRES_COPY_BOTH:
      // Closing the connection makes the server abort the COPY and roll
      // back; there is no data stream to feed or drain here.
      FailWith(absl::InvalidArgumentError(absl::StrCat(
          "shard ", shard_name_,
          ": COPY FROM STDIN / TO STDOUT is not supported here; use COPY "
          "with a server-side file or INSERT ... VALUES / SELECT")));
      Close();
      state_ = State::kFailed;
      return;
    default:
      FailWith(absl::InternalError(absl::StrCat(
          "shard ", shard_name_, ": unexpected libpq result status ",
          PQresStatus(PQresultStatus(res.get())),
          "; please report this as a shardkit bug")));
      return;
  }
}

struct PendingCancel::State {
  mutable absl::Mutex mu;
  std::optional<absl::Status> outcome ABSL_GUARDED_BY(mu);
};

std::optional<absl::Status> PendingCancel::outcome() const {
  absl::MutexLock lock(&state_->mu);
  return state_->outcome;
}

absl::StatusOr<PendingCancel> ShardConnection::StartCancel(
    std::function<void()> on_sent) {
  if (conn_ == nullptr) {
    return absl::FailedPreconditionError(
        "there is no open connection to send it for");
  }
  // A copy of what the request needs (address, backend key): independent of
  // conn_, so the connection may close while the thread still uses it.
  std::unique_ptr<PGcancel, void (*)(PGcancel*)> cancel(PQgetCancel(conn_),
                                                        &PQfreeCancel);
  if (cancel == nullptr) {
    return absl::FailedPreconditionError(
        "there is no open connection to send it for");
  }
  auto state = std::make_shared<PendingCancel::State>();
  try {
    std::thread([cancel = std::move(cancel), state,
                 on_sent = std::move(on_sent)] {
      char error[256] = {0};
      absl::Status outcome = absl::OkStatus();
      if (PQcancel(cancel.get(), error, sizeof(error)) == 0) {
        outcome = absl::UnavailableError(absl::StrCat(
            "could not send the cancel request: ", CancelErrorMessage(error)));
      }
      {
        absl::MutexLock lock(&state->mu);
        state->outcome = std::move(outcome);
      }
      if (on_sent) on_sent();
    }).detach();
  } catch (const std::system_error& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot start a thread to send the cancel request: ", e.what()));
  }
  return PendingCancel(std::move(state));
}

absl::StatusOr<Result> ShardConnection::TakeResult() {
  if (!has_outcome_) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", shard_name_, ": no statement outcome to take"));
  }
  has_outcome_ = false;
  if (!statement_error_.ok()) return std::exchange(statement_error_, {});
  if (!last_result_.has_value()) return Result{};
  Result result = std::move(*last_result_);
  last_result_.reset();
  return result;
}

bool ShardConnection::IsReusable() const {
  return conn_ != nullptr && state_ == State::kIdle && !has_outcome_ &&
         !session_ending_ && PQstatus(conn_) == CONNECTION_OK &&
         PQtransactionStatus(conn_) == PQTRANS_IDLE;
}

bool ShardConnection::InTransactionBlock() const {
  if (conn_ == nullptr) return false;
  const PGTransactionStatusType status = PQtransactionStatus(conn_);
  return status == PQTRANS_INTRANS || status == PQTRANS_INERROR;
}

bool ShardConnection::CheckAliveWhileIdle() {
  if (!IsReusable()) return false;
  // Bounded, so that a server streaming notifications cannot hold the
  // caller here; what is left stays unread until the next statement.
  for (int round = 0; round < 8; ++round) {
    pollfd readable{PQsocket(conn_), POLLIN, 0};
    const int ready = poll(&readable, 1, 0);
    if (ready == 0) break;
    if (ready < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    // Data or the end of the connection. The first read may only take the
    // server's goodbye (FATAL), the next one sees the connection closed.
    if (PQconsumeInput(conn_) == 0) return false;
    // Parses what arrived: an error reaches OnNotice, notifications queue.
    PQisBusy(conn_);
    while (PGnotify* notify = PQnotifies(conn_)) PQfreemem(notify);
    if (!IsReusable()) return false;
  }
  return IsReusable();
}

void ShardConnection::OnNotice(void* arg, const PGresult* res) {
  // libpq's default prints notices (e.g. "table already exists, skipping")
  // to the process's stderr; a library must not write there.
  if (EndsSession(res)) {
    static_cast<ShardConnection*>(arg)->session_ending_ = true;
  }
}

void ShardConnection::Close() {
  if (conn_ != nullptr) {
    PQfinish(conn_);
    conn_ = nullptr;
  }
  state_ = State::kNew;
  session_ending_ = false;
  pipelined_ = 0;
  prepared_.clear();  // they were the closed session's
  preparing_.clear();
}

}  // namespace shardkit::internal

namespace shardkit {

std::optional<std::string> SqlStateOf(const absl::Status& status) {
  auto payload = status.GetPayload(absl::string_view(
      internal::kSqlStatePayloadUrl.data(),
      internal::kSqlStatePayloadUrl.size()));
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

}  // namespace shardkit
