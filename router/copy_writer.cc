#include "router/copy_writer.h"

#include <algorithm>
#include <memory>
#include <system_error>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/strings.h"
#include "libpq-fe.h"
#include "router/shard_connection.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {
namespace {

struct PqClear {
  void operator()(PGresult* res) const { PQclear(res); }
};
using ResultPtr = std::unique_ptr<PGresult, PqClear>;

// libpq hands COPY data to the kernel in pieces this large, so that its
// own buffer stays small whatever the batch size.
constexpr size_t kPieceBytes = 64 << 10;

std::string OneLine(std::string_view text) {
  std::vector<absl::string_view> words =
      absl::StrSplit(ToAbsl(text), absl::ByAnyChar(" \t\r\n"),
                     absl::SkipEmpty());
  return absl::StrJoin(words, " ");
}

// Notices (from triggers, say) would otherwise go to stderr.
void IgnoreNotice(void*, const char*) {}

// The line number in the COPY's own frame of an error context:
// "COPY users, line 3, column id: "x"". The words are translated with the
// server's lc_messages, so only the shape is relied on: the first number
// after "COPY <relname>, ". A trigger's frames may come first.
std::optional<int64_t> CopyLineOf(std::string_view context,
                                  std::string_view relname) {
  const std::string prefix = StrCat("COPY ", relname, ", ");
  for (absl::string_view line : absl::StrSplit(ToAbsl(context), '\n')) {
    if (!absl::StartsWith(line, prefix)) continue;
    const size_t digits = line.find_first_of("0123456789", prefix.size());
    if (digits == absl::string_view::npos) return std::nullopt;
    const size_t end = line.find_first_not_of("0123456789", digits);
    int64_t value = 0;
    if (!absl::SimpleAtoi(line.substr(digits, end == absl::string_view::npos
                                                  ? absl::string_view::npos
                                                  : end - digits),
                          &value)) {
      return std::nullopt;
    }
    return value;
  }
  return std::nullopt;
}

}  // namespace

absl::Status WithMessageSuffix(const absl::Status& status,
                               std::string_view suffix) {
  absl::Status out(status.code(), StrCat(status.message(), suffix));
  status.ForEachPayload(
      [&out](absl::string_view url, const absl::Cord& payload) {
        out.SetPayload(url, payload);
      });
  return out;
}

void FirstFailure::Set(absl::Status status) {
  absl::MutexLock lock(&mu_);
  if (status_.ok()) status_ = std::move(status);
  failed_.store(true, std::memory_order_release);
}

absl::Status FirstFailure::status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

void CopyBatch::Add(const CsvRecord& record, LineEnding ending) {
  // PostgreSQL counts a line break inside quotes as a line: "\n" when the
  // stream's lines end with "\n", "\r" otherwise, and "\r" while it does
  // not know yet, i.e. within the first record of each COPY.
  const int64_t counted = rows.empty() || ending != LineEnding::kLf
                              ? record.quoted_cr
                              : record.quoted_lf;
  const int64_t last = rows.empty() ? 0 : rows.back().copy_line;
  rows.push_back(Row{record.line, last + 1 + counted});
  data.append(record.raw);
}

std::optional<int64_t> CopyBatch::CsvLineOf(int64_t copy_line) const {
  auto it = std::lower_bound(
      rows.begin(), rows.end(), copy_line,
      [](const Row& row, int64_t line) { return row.copy_line < line; });
  if (it == rows.end()) return std::nullopt;
  return it->csv_line;
}

CopyWriter::CopyWriter(Settings settings, FirstFailure& failure)
    : settings_(std::move(settings)), failure_(failure) {}

CopyWriter::~CopyWriter() {
  Stop();
  Close();
}

void CopyWriter::Stop() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = stopped_ = true;
    queue_.clear();
  }
  if (worker_.joinable()) worker_.join();
}

void CopyWriter::Close() {
  if (conn_ != nullptr) PQfinish(conn_);
  conn_ = nullptr;
}

absl::Status CopyWriter::ConnectionLost(std::string_view during) const {
  std::string why = conn_ == nullptr ? "no connection"
                                     : OneLine(PQerrorMessage(conn_));
  return absl::UnavailableError(StrCat("shard ", settings_.shard_name,
                                       ": connection lost while ", during,
                                       ": ", why));
}

absl::Status CopyWriter::Open() {
  if (conn_ != nullptr) return absl::OkStatus();
  const std::string masked = MaskDsnPassword(settings_.dsn);
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(settings_.dsn.c_str(), &parse_error);
  if (parsed == nullptr) {
    PQfreemem(parse_error);
    return absl::InvalidArgumentError(StrCat(
        "shard ", settings_.shard_name, " has an invalid connection string (",
        masked, "); fix the shard's dsn in the configuration"));
  }
  PQconninfoFree(parsed);

  // libpq's connect_timeout is in whole seconds (and at least 2).
  const int64_t seconds = std::max<int64_t>(
      1, absl::ToInt64Seconds(absl::Ceil(settings_.connect_timeout,
                                         absl::Seconds(1))));
  const std::string timeout = std::to_string(seconds);
  // Keywords after the expanded dsn override it: the configured connect
  // timeout, and UTF-8, the encoding the input and text keys are read in.
  const char* const keywords[] = {"fallback_application_name", "dbname",
                                  "connect_timeout", "client_encoding",
                                  nullptr};
  const char* const values[] = {"shardkit load", settings_.dsn.c_str(),
                                timeout.c_str(), "UTF8", nullptr};
  conn_ = PQconnectdbParams(keywords, values, /*expand_dbname=*/1);
  if (conn_ == nullptr) {
    return absl::ResourceExhaustedError(StrCat(
        "shard ", settings_.shard_name, ": libpq could not allocate a connection"));
  }
  if (PQstatus(conn_) != CONNECTION_OK) {
    absl::Status status = absl::UnavailableError(StrCat(
        "shard ", settings_.shard_name, " (", masked, ") is unreachable: ",
        OneLine(PQerrorMessage(conn_)),
        "; start the server, or fix the shard's dsn in the configuration"));
    Close();
    return status;
  }
  PQsetNoticeProcessor(conn_, &IgnoreNotice, nullptr);
  const int64_t statement_ms =
      std::max<int64_t>(0, absl::ToInt64Milliseconds(settings_.statement_timeout));
  const std::string set_timeout =
      StrCat("SET statement_timeout = ", statement_ms);
  const std::string set_epoch =
      settings_.epoch == 0 ? std::string("SELECT 1")
                           : StrCat("SET shardkit.epoch = ", settings_.epoch);
  for (const char* sql : {set_timeout.c_str(), set_epoch.c_str(), "BEGIN"}) {
    ResultPtr res(PQexec(conn_, sql));
    if (res == nullptr) return ConnectionLost("beginning the transaction");
    if (PQresultStatus(res.get()) != PGRES_COMMAND_OK &&
        PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
      return ServerErrorStatus(settings_.shard_name, res.get());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Result> CopyWriter::Query(const std::string& sql,
                                         const std::vector<Param>& params) {
  std::vector<const char*> values;
  values.reserve(params.size());
  for (const Param& p : params) values.push_back(p ? p->c_str() : nullptr);
  ResultPtr res(PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()),
                             nullptr, values.data(), nullptr, nullptr, 0));
  if (res == nullptr) return ConnectionLost("running a query");
  const ExecStatusType st = PQresultStatus(res.get());
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    return ServerErrorStatus(settings_.shard_name, res.get());
  }
  return ConvertResult(res.get());
}

void CopyWriter::Start(std::string copy_sql, std::string relname) {
  copy_sql_ = std::move(copy_sql);
  relname_ = std::move(relname);
  try {
    worker_ = std::thread([this] { WorkerLoop(); });
  } catch (const std::system_error& e) {
    Fail(absl::ResourceExhaustedError(
        StrCat("shard ", settings_.shard_name,
               ": cannot start a thread to copy rows: ", e.what())));
  }
}

void CopyWriter::Fail(absl::Status status) {
  {
    absl::MutexLock lock(&mu_);
    failed_ = true;
    status_ = status;
    queue_.clear();
  }
  failure_.Set(std::move(status));
}

void CopyWriter::WorkerLoop() {
  if (absl::Status opened = Open(); !opened.ok()) {
    Fail(std::move(opened));
    return;
  }
  auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue_.empty() || closed_ || stopped_;
  };
  while (true) {
    CopyBatch batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(&has_work));
      if (stopped_ || queue_.empty()) return;
      batch = std::move(queue_.front());
      queue_.pop_front();
    }
    if (absl::Status sent = CopyBatchNow(batch); !sent.ok()) {
      Fail(std::move(sent));
      return;
    }
  }
}

bool CopyWriter::Send(CopyBatch batch) {
  // Two batches may wait while a third is being copied: enough to keep the
  // shard busy, few enough to bound memory.
  auto has_room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.size() < 2 || failed_;
  };
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(&has_room));
  if (failed_) return false;
  queue_.push_back(std::move(batch));
  return true;
}

absl::Status CopyWriter::Finish() {
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  if (worker_.joinable()) worker_.join();
  absl::MutexLock lock(&mu_);
  return status_;
}

absl::Status CopyWriter::CopyError(const PGresult* res,
                                   const CopyBatch& batch) const {
  const absl::Status error = ServerErrorStatus(settings_.shard_name, res);
  const char* context = PQresultErrorField(res, PG_DIAG_CONTEXT);
  std::optional<int64_t> csv_line;
  if (context != nullptr) {
    if (std::optional<int64_t> copy_line = CopyLineOf(context, relname_)) {
      csv_line = batch.CsvLineOf(*copy_line);
    }
  }
  if (csv_line.has_value()) {
    return WithMessageSuffix(error, StrCat(" (CSV line ", *csv_line, ")"));
  }
  if (batch.rows.empty()) return error;
  return WithMessageSuffix(
      error, StrCat(" (in the rows of CSV lines ", batch.rows.front().csv_line,
                    " to ", batch.rows.back().csv_line, ")"));
}

absl::Status CopyWriter::CopyBatchNow(const CopyBatch& batch) {
  {
    ResultPtr res(PQexec(conn_, copy_sql_.c_str()));
    if (res == nullptr) return ConnectionLost("starting COPY");
    if (PQresultStatus(res.get()) != PGRES_COPY_IN) {
      if (PQresultStatus(res.get()) == PGRES_FATAL_ERROR) {
        return ServerErrorStatus(settings_.shard_name, res.get());
      }
      return absl::InternalError(
          StrCat("shard ", settings_.shard_name, ": COPY answered ",
                 PQresStatus(PQresultStatus(res.get())),
                 " instead of starting; please report this as a shardkit bug"));
    }
  }
  for (size_t at = 0; at < batch.data.size(); at += kPieceBytes) {
    const size_t n = std::min(kPieceBytes, batch.data.size() - at);
    if (PQputCopyData(conn_, batch.data.data() + at, static_cast<int>(n)) != 1) {
      return ConnectionLost("sending rows");
    }
  }
  if (PQputCopyEnd(conn_, nullptr) != 1) return ConnectionLost("ending COPY");

  absl::Status outcome;
  int64_t copied = -1;
  while (PGresult* raw = PQgetResult(conn_)) {
    ResultPtr res(raw);
    switch (PQresultStatus(res.get())) {
      case PGRES_COMMAND_OK:
        if (!absl::SimpleAtoi(PQcmdTuples(res.get()), &copied)) copied = -1;
        break;
      case PGRES_FATAL_ERROR:
        if (outcome.ok()) outcome = CopyError(res.get(), batch);
        break;
      default:
        if (outcome.ok()) {
          outcome = absl::InternalError(StrCat(
              "shard ", settings_.shard_name, ": unexpected result ",
              PQresStatus(PQresultStatus(res.get())),
              " after COPY; please report this as a shardkit bug"));
        }
        break;
    }
  }
  if (!outcome.ok()) return outcome;
  if (PQstatus(conn_) != CONNECTION_OK) return ConnectionLost("copying rows");
  const int64_t sent = static_cast<int64_t>(batch.rows.size());
  if (copied != sent) {
    return absl::InternalError(StrCat(
        "shard ", settings_.shard_name, " stored ", copied, " rows of the ",
        sent, " rows of CSV lines ", batch.rows.front().csv_line, " to ",
        batch.rows.back().csv_line,
        " sent to it: shardkit and PostgreSQL disagree on where rows end; "
        "please report this as a shardkit bug"));
  }
  rows_copied_ += copied;
  return absl::OkStatus();
}

absl::Status CopyWriter::Run(const char* sql, std::string_view expected_tag) {
  ResultPtr res(PQexec(conn_, sql));
  if (res == nullptr || PQstatus(conn_) != CONNECTION_OK) {
    return ConnectionLost(StrCat("running ", sql));
  }
  if (PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
    return ServerErrorStatus(settings_.shard_name, res.get());
  }
  const std::string_view tag = PQcmdStatus(res.get());
  if (tag != expected_tag) {
    return absl::AbortedError(StrCat("shard ", settings_.shard_name, ": ", sql,
                                     " answered ", tag, ", not ",
                                     expected_tag));
  }
  return absl::OkStatus();
}

void CopyWriter::Rollback() {
  if (conn_ != nullptr && PQstatus(conn_) == CONNECTION_OK) {
    const PGTransactionStatusType t = PQtransactionStatus(conn_);
    if (t == PQTRANS_INTRANS || t == PQTRANS_INERROR) {
      ResultPtr res(PQexec(conn_, "ROLLBACK"));
    }
  }
  Close();
}

}  // namespace shardkit::internal
