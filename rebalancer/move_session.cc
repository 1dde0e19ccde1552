#include "rebalancer/move_session.h"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "router/copy_writer.h"
#include "router/shard_connection.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {
namespace {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

// What libpq said, on one line.
std::string LibpqMessage(const PGconn* conn) {
  std::string message = PQerrorMessage(conn);
  while (!message.empty() &&
         (message.back() == '\n' || message.back() == ' ')) {
    message.pop_back();
  }
  for (char& c : message) {
    if (c == '\n') c = ' ';
  }
  return message;
}

std::string Suffix(std::string_view context) {
  return context.empty() ? std::string() : StrCat(" (while ", context, ")");
}

int OctalDigit(char c) { return c >= '0' && c <= '7' ? c - '0' : -1; }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MoveSession>> MoveSession::Open(
    const ShardEndpoint& shard, absl::Duration statement_timeout) {
  const int64_t connect_seconds =
      std::max<int64_t>(1, absl::ToInt64Seconds(shard.connect_timeout));
  const std::string timeout = std::to_string(connect_seconds);
  // The dsn comes last and is expanded (expand_dbname): whatever it sets
  // itself wins over these defaults.
  const char* keys[] = {"connect_timeout", "application_name", "dbname",
                        nullptr};
  const char* values[] = {timeout.c_str(), "shardkit-mover", shard.dsn.c_str(),
                          nullptr};
  PGconn* conn = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  if (conn == nullptr) {
    return absl::ResourceExhaustedError(
        StrCat("shard ", shard.name, ": out of memory connecting"));
  }
  if (PQstatus(conn) != CONNECTION_OK) {
    absl::Status status = absl::UnavailableError(
        StrCat("shard ", shard.name, " (", MaskDsnPassword(shard.dsn),
               "): cannot connect: ", LibpqMessage(conn)));
    PQfinish(conn);
    return status;
  }
  // Notices ("schema shardkit already exists, skipping") are not for the
  // operator's terminal.
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);
  std::unique_ptr<MoveSession> session(new MoveSession(shard.name, conn));
  session->statement_timeout_ = statement_timeout;
  // Reported by the server at connection start: no round trip.
  const char* superuser = PQparameterStatus(conn, "is_superuser");
  session->superuser_ =
      superuser != nullptr && std::string_view(superuser) == "on";
  const std::string setup = StrCat(
      "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, MDY'; "
      "SET IntervalStyle = 'postgres'; SET TimeZone = 'UTC'; "
      "SET extra_float_digits = 1; SET bytea_output = 'hex'; SET ",
      kMoverSetting,
      " = 'on'; "
      "SET statement_timeout = ",
      absl::ToInt64Milliseconds(statement_timeout),
      // Rows are copied, not written anew: a superuser's session applies
      // them as logical replication does, without firing the tables'
      // triggers (their effects come with the rows they wrote) or
      // checking foreign keys table by table (the source has them right).
      session->superuser_ ? "; SET session_replication_role = replica" : "");
  absl::StatusOr<std::vector<int64_t>> set =
      session->Run(setup, "setting up the mover's session");
  if (!set.ok()) return set.status();
  return session;
}

MoveSession::~MoveSession() { PQfinish(conn_); }

absl::Status MoveSession::Error(std::string_view what,
                                std::string_view context) const {
  if (PQstatus(conn_) != CONNECTION_OK) {
    return absl::UnavailableError(StrCat("shard ", shard_name_,
                                         ": connection lost during ", what,
                                         ": ", LibpqMessage(conn_),
                                         Suffix(context)));
  }
  return absl::UnknownError(StrCat("shard ", shard_name_, ": ", what,
                                   " failed: ", LibpqMessage(conn_),
                                   Suffix(context)));
}

absl::StatusOr<std::vector<int64_t>> MoveSession::Run(
    std::string_view sql, std::string_view context) {
  const std::string text(sql);
  if (!PQsendQuery(conn_, text.c_str())) return Error("a statement", context);
  std::vector<int64_t> counts;
  absl::Status first_error;
  while (PGresult* raw = PQgetResult(conn_)) {
    ResultPtr res(raw);
    switch (PQresultStatus(raw)) {
      case PGRES_COMMAND_OK:
      case PGRES_TUPLES_OK: {
        const char* tuples = PQcmdTuples(raw);
        counts.push_back(*tuples ? std::stoll(tuples) : 0);
        break;
      }
      case PGRES_FATAL_ERROR:
        if (first_error.ok()) {
          first_error = WithMessageSuffix(
              ServerErrorStatus(shard_name_, raw), Suffix(context));
        }
        break;
      default:
        if (first_error.ok()) {
          first_error = absl::InternalError(StrCat(
              "shard ", shard_name_, ": unexpected result ",
              PQresStatus(PQresultStatus(raw)), Suffix(context)));
        }
        break;
    }
  }
  if (!first_error.ok()) return first_error;
  if (PQstatus(conn_) != CONNECTION_OK) return Error("a statement", context);
  return counts;
}

absl::StatusOr<std::vector<MoveSession::Row>> MoveSession::Query(
    std::string_view sql,
    const std::vector<std::optional<std::string>>& params,
    std::string_view context) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
  const std::string text(sql);
  ResultPtr res(PQexecParams(conn_, text.c_str(),
                             static_cast<int>(values.size()), nullptr,
                             values.data(), nullptr, nullptr, 0));
  if (res == nullptr) return Error("a query", context);
  if (PQresultStatus(res.get()) == PGRES_FATAL_ERROR) {
    return WithMessageSuffix(ServerErrorStatus(shard_name_, res.get()),
                             Suffix(context));
  }
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK &&
      PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
    return Error("a query", context);
  }
  std::vector<Row> rows(PQntuples(res.get()));
  const int columns = PQnfields(res.get());
  for (int r = 0; r < static_cast<int>(rows.size()); ++r) {
    rows[r].reserve(columns);
    for (int c = 0; c < columns; ++c) {
      if (PQgetisnull(res.get(), r, c)) {
        rows[r].emplace_back(std::nullopt);
      } else {
        rows[r].emplace_back(std::string(PQgetvalue(res.get(), r, c),
                                         PQgetlength(res.get(), r, c)));
      }
    }
  }
  return rows;
}

absl::StatusOr<int64_t> MoveSession::QueryInt(
    std::string_view sql,
    const std::vector<std::optional<std::string>>& params,
    std::string_view context) {
  ASSIGN_OR_RETURN(std::vector<Row> rows, Query(sql, params, context));
  int64_t n = 0;
  if (rows.empty() || rows[0].empty() || !rows[0][0] ||
      !absl::SimpleAtoi(*rows[0][0], &n)) {
    return absl::InternalError(ToAbsl(
        StrCat("shard ", shard_name_, ": expected a number", Suffix(context))));
  }
  return n;
}

absl::Status MoveSession::CopyOut(
    std::string_view sql, absl::FunctionRef<void(std::string_view)> on_line,
    std::string_view context) {
  const std::string text(sql);
  ResultPtr start(PQexec(conn_, text.c_str()));
  if (start == nullptr) return Error("COPY TO", context);
  if (PQresultStatus(start.get()) == PGRES_FATAL_ERROR) {
    return WithMessageSuffix(ServerErrorStatus(shard_name_, start.get()),
                             Suffix(context));
  }
  if (PQresultStatus(start.get()) != PGRES_COPY_OUT) {
    return absl::InternalError(StrCat("shard ", shard_name_,
                                      ": not a COPY TO STDOUT: ", sql));
  }
  char* buffer = nullptr;
  int length;
  // The server sends one row per CopyData message, and libpq hands each
  // back whole.
  while ((length = PQgetCopyData(conn_, &buffer, /*async=*/0)) > 0) {
    std::string_view line(buffer, length);
    if (!line.empty() && line.back() == '\n') line.remove_suffix(1);
    on_line(line);
    PQfreemem(buffer);
  }
  if (length == -2) return Error("COPY TO", context);
  absl::Status status;
  while (PGresult* raw = PQgetResult(conn_)) {
    ResultPtr res(raw);
    if (PQresultStatus(raw) == PGRES_FATAL_ERROR && status.ok()) {
      status = WithMessageSuffix(ServerErrorStatus(shard_name_, raw),
                                 Suffix(context));
    }
  }
  return status;
}

absl::Status MoveSession::StartCopyIn(std::string_view sql,
                                      std::string_view context) {
  const std::string text(sql);
  ResultPtr start(PQexec(conn_, text.c_str()));
  if (start == nullptr) return Error("COPY FROM", context);
  if (PQresultStatus(start.get()) == PGRES_FATAL_ERROR) {
    return WithMessageSuffix(ServerErrorStatus(shard_name_, start.get()),
                             Suffix(context));
  }
  if (PQresultStatus(start.get()) != PGRES_COPY_IN) {
    return absl::InternalError(StrCat("shard ", shard_name_,
                                      ": not a COPY FROM STDIN: ", sql));
  }
  return absl::OkStatus();
}

absl::Status MoveSession::PutCopyData(std::string_view data,
                                      std::string_view context) {
  // libpq buffers what it is given and flushes in its own blocks; pieces of
  // 1 MiB keep a call's cost per byte low without one huge send buffer
  // (and the server refuses a message over 1 GiB). Nonblocking (after
  // QueueCopyData), libpq grows its buffer to take them all, and says 0
  // only when it cannot: then wait until the server has taken some.
  constexpr size_t kPiece = 1 << 20;
  for (size_t at = 0; at < data.size();) {
    const size_t n = std::min(kPiece, data.size() - at);
    const int put = PQputCopyData(conn_, data.data() + at, static_cast<int>(n));
    if (put < 0) return Error("COPY FROM", context);
    if (put == 0) {
      RETURN_IF_ERROR(WaitToSend(context));
      continue;
    }
    at += n;
  }
  return absl::OkStatus();
}

absl::Status MoveSession::QueueCopyData(std::string_view data,
                                        std::string_view context) {
  if (!PQisnonblocking(conn_) && PQsetnonblocking(conn_, 1) != 0) {
    return Error("COPY FROM", context);
  }
  RETURN_IF_ERROR(PutCopyData(data, context));
  return FlushCopyData(context);
}

absl::Status MoveSession::WaitToSend(std::string_view context) {
  pollfd fd{PQsocket(conn_), POLLOUT | POLLIN, 0};
  if (poll(&fd, 1, 100) < 0 && errno != EINTR) {
    return Error("COPY FROM", context);
  }
  if ((fd.revents & POLLIN) && PQconsumeInput(conn_) == 0) {
    return Error("COPY FROM", context);
  }
  return absl::OkStatus();
}

absl::Status MoveSession::FlushCopyData(std::string_view context) {
  if (PQflush(conn_) < 0) return Error("COPY FROM", context);
  return absl::OkStatus();
}

absl::Status MoveSession::FinishCopyData(std::string_view context) {
  if (!PQisnonblocking(conn_)) return absl::OkStatus();
  // Bounded like a statement: a server that stops reading (and says
  // nothing) does not keep the caller, and the rows it holds, waiting.
  const absl::Duration bound = statement_timeout_ > absl::ZeroDuration()
                                   ? statement_timeout_
                                   : absl::Minutes(5);
  const absl::Time deadline = absl::Now() + bound;
  while (true) {
    const int flushed = PQflush(conn_);
    if (flushed < 0) return Error("COPY FROM", context);
    if (flushed == 0) break;
    if (absl::Now() > deadline) {
      // Give the connection up (the server rolls back when it sees it
      // closed): a later use, RollbackQuietly's too, fails at once instead
      // of waiting for the bound again.
      shutdown(PQsocket(conn_), SHUT_RDWR);
      return absl::DeadlineExceededError(StrCat(
          "shard ", shard_name_, ": the server took no more COPY data for ",
          absl::FormatDuration(bound), Suffix(context)));
    }
    // The server reads slower than we queued: wait until it takes more
    // (or says something, which PQflush reads, so it never stalls on us).
    RETURN_IF_ERROR(WaitToSend(context));
  }
  if (PQsetnonblocking(conn_, 0) != 0) return Error("COPY FROM", context);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> MoveSession::EndCopyIn(std::string_view context) {
  if (PQputCopyEnd(conn_, nullptr) != 1) return Error("COPY FROM", context);
  absl::Status status;
  int64_t rows = 0;
  while (PGresult* raw = PQgetResult(conn_)) {
    ResultPtr res(raw);
    if (PQresultStatus(raw) == PGRES_FATAL_ERROR) {
      if (status.ok()) {
        status = WithMessageSuffix(ServerErrorStatus(shard_name_, raw),
                                   Suffix(context));
      }
    } else if (PQresultStatus(raw) == PGRES_COMMAND_OK) {
      const char* tuples = PQcmdTuples(raw);
      if (*tuples) rows = std::stoll(tuples);
    }
  }
  if (!status.ok()) return status;
  return rows;
}

absl::StatusOr<int64_t> MoveSession::CopyIn(std::string_view sql,
                                            std::string_view data,
                                            std::string_view context) {
  RETURN_IF_ERROR(StartCopyIn(sql, context));
  // PutCopyData fails only when the connection broke: nothing to end.
  RETURN_IF_ERROR(PutCopyData(data, context));
  return EndCopyIn(context);
}

std::string MoveSession::Literal(std::string_view value) const {
  char* escaped = PQescapeLiteral(conn_, value.data(), value.size());
  // Fails only for invalid multibyte input or out of memory: the values
  // come from this server's own output, in UTF8.
  if (escaped == nullptr) return "NULL";
  std::string out(escaped);
  PQfreemem(escaped);
  return out;
}

bool MoveSession::InTransaction() const {
  const PGTransactionStatusType s = PQtransactionStatus(conn_);
  return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE;
}

void MoveSession::RollbackQuietly() {
  // Back to blocking (a chunk stopped while its rows were queued); what is
  // still queued is sent first, or FinishCopyData gave the connection up
  // (then every later use of the session fails).
  if (PQisnonblocking(conn_)) FinishCopyData("").IgnoreError();
  if (PQisnonblocking(conn_)) PQsetnonblocking(conn_, 0);
  // A COPY FROM STDIN left open (a backfill chunk stopped half-way by the
  // source): end it as failed, or the session refuses every later command.
  if (PQtransactionStatus(conn_) == PQTRANS_ACTIVE &&
      PQputCopyEnd(conn_, "shardkit: the chunk was abandoned") == 1) {
    while (PGresult* res = PQgetResult(conn_)) PQclear(res);
  }
  if (PQtransactionStatus(conn_) == PQTRANS_INTRANS ||
      PQtransactionStatus(conn_) == PQTRANS_INERROR) {
    PQclear(PQexec(conn_, "ROLLBACK"));
  }
}

std::string QuoteIdentifier(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

std::string QuoteQualifiedName(std::string_view name) {
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos) return QuoteIdentifier(name);
  return StrCat(QuoteIdentifier(name.substr(0, dot)), ".",
                QuoteIdentifier(name.substr(dot + 1)));
}

void SplitCopyLine(std::string_view line,
                   std::vector<std::string_view>& fields) {
  fields.clear();
  size_t start = 0;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\\') {
      ++i;  // an escaped character is never a separator
    } else if (line[i] == '\t') {
      fields.push_back(line.substr(start, i - start));
      start = i + 1;
    }
  }
  fields.push_back(line.substr(start));
}

std::optional<std::string> UnescapeCopyField(std::string_view raw) {
  if (raw == "\\N") return std::nullopt;
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\\' || i + 1 == raw.size()) {
      out += raw[i];
      continue;
    }
    const char c = raw[++i];
    switch (c) {
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x': {
        int value = 0;
        int digits = 0;
        while (digits < 2 && i + 1 < raw.size() && HexDigit(raw[i + 1]) >= 0) {
          value = value * 16 + HexDigit(raw[++i]);
          ++digits;
        }
        if (digits == 0) {
          out += 'x';  // "\x" without hex digits is a plain x
        } else {
          out += static_cast<char>(value);
        }
        break;
      }
      default:
        if (OctalDigit(c) >= 0) {
          int value = OctalDigit(c);
          for (int digits = 1;
               digits < 3 && i + 1 < raw.size() && OctalDigit(raw[i + 1]) >= 0;
               ++digits) {
            value = value * 8 + OctalDigit(raw[++i]);
          }
          out += static_cast<char>(value & 0xff);
        } else {
          out += c;
        }
    }
  }
  return out;
}

}  // namespace shardkit::internal
