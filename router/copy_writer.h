// Internal: one shard's side of a bulk load (shardkit/load.h).
//
// A CopyWriter owns one blocking libpq connection to one shard, inside one
// transaction, and a thread that sends each batch of CSV records it is
// given as one `COPY ... FROM STDIN` statement. The loader splits the input
// on its own thread and hands each shard its batches; the shards copy in
// parallel. The loader then commits or rolls back every writer.
//
//   FirstFailure failure;
//   CopyWriter writer({"s1", dsn, absl::Seconds(5), absl::Seconds(30)},
//                     failure);
//   writer.Start("COPY \"users\" (\"id\") FROM STDIN (FORMAT csv)", "users");
//   CopyBatch batch;
//   batch.Add(record, LineEnding::kLf);
//   if (!writer.Send(std::move(batch))) ...;   // failure.status() says why
//   RETURN_IF_ERROR(writer.Finish());
//   RETURN_IF_ERROR(writer.Run("COMMIT", "COMMIT"));
//
// Thread-safety: Send may block waiting for the worker; all methods are
// called from one thread (the loader's), which shares state with the
// worker only through the mutex and FirstFailure.

#ifndef SHARDKIT_ROUTER_COPY_WRITER_H_
#define SHARDKIT_ROUTER_COPY_WRITER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/csv.h"
#include "shardkit/cluster.h"
#include "shardkit/result.h"

typedef struct pg_conn PGconn;
typedef struct pg_result PGresult;

namespace shardkit::internal {

// The first failure among the threads of one load.
// Thread-safety: thread-safe.
class FirstFailure {
 public:
  // Keeps `status` if no failure was recorded yet. REQUIRES: !status.ok().
  void Set(absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  // Cheap enough to ask after every row.
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // The first failure; OK if none.
  absl::Status status() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> failed_{false};
};

// `status` with `suffix` appended to its message; code and payloads (the
// SQLSTATE) kept.
absl::Status WithMessageSuffix(const absl::Status& status,
                               std::string_view suffix);

// CSV records for one shard, sent as one COPY statement, and where each
// came from, to name the CSV line of a row the shard refuses.
struct CopyBatch {
  struct Row {
    int64_t csv_line = 0;  // where the record starts in the input
    // The line number PostgreSQL gives the record in this COPY's error
    // context ("COPY users, line 3"): it counts records, plus line breaks
    // inside quotes, and names a record by its last line.
    int64_t copy_line = 0;
  };

  std::string data;
  std::vector<Row> rows;

  // Appends `record`'s original bytes. `ending` is the input's line ending.
  void Add(const CsvRecord& record, LineEnding ending);

  // The CSV line of the row PostgreSQL calls line `copy_line` of this
  // batch; nullopt when there is no such row.
  std::optional<int64_t> CsvLineOf(int64_t copy_line) const;
};

class CopyWriter {
 public:
  struct Settings {
    std::string shard_name;
    std::string dsn;  // may hold a password: never printed unmasked
    absl::Duration connect_timeout = absl::Seconds(5);
    // Bounds each statement (one batch's COPY, the commit) on the shard.
    absl::Duration statement_timeout = absl::Seconds(30);
    // The epoch of the map the rows were placed by, carried as the session
    // setting shardkit.epoch (see ShardTask::epoch); 0: not set.
    uint64_t epoch = 0;
  };

  // Failures are recorded in `failure`, which must outlive the writer.
  CopyWriter(Settings settings, FirstFailure& failure);
  // Stops the worker, dropping batches not yet sent, and closes the
  // connection: an open transaction rolls back.
  ~CopyWriter();

  CopyWriter(const CopyWriter&) = delete;
  CopyWriter& operator=(const CopyWriter&) = delete;

  const std::string& shard_name() const { return settings_.shard_name; }

  // Connects (blocking, within the connect timeout), sets the session up
  // (client_encoding UTF8, statement_timeout) and begins the transaction,
  // on the calling thread. Done by the worker when not called before Start.
  // Fails with kUnavailable for a shard that cannot be reached, or with
  // the shard's error.
  [[nodiscard]] absl::Status Open();

  // Runs `sql` with `params` on the calling thread and returns its rows.
  // REQUIRES: Open() succeeded; Start() not called yet.
  [[nodiscard]] absl::StatusOr<Result> Query(
      const std::string& sql, const std::vector<Param>& params);

  // Starts the worker, which opens the connection unless Open() did, then
  // runs `copy_sql` (a COPY ... FROM STDIN) for each batch Send hands it.
  // `relname` is the table's name as PostgreSQL prints it in a COPY's error
  // context. REQUIRES: called once.
  void Start(std::string copy_sql, std::string relname);

  // Queues `batch` for the worker; blocks while two batches wait already.
  // Returns false, dropping the batch, once this writer has failed (its
  // error is in the FirstFailure). REQUIRES: Start() called, Finish() not.
  bool Send(CopyBatch batch);

  // Ends the worker without sending what is still queued (a batch being
  // copied is finished first). Safe to call at any time, and again.
  void Stop();

  // Waits until the worker has sent every queued batch, or failed, and
  // ends it. Returns OK or the writer's failure. REQUIRES: Start() called.
  [[nodiscard]] absl::Status Finish();

  // Runs a statement that returns no rows on the calling thread and checks
  // that its command tag is `expected_tag` (e.g. a COMMIT that the server
  // turned into ROLLBACK fails). REQUIRES: Finish() returned OK.
  [[nodiscard]] absl::Status Run(const char* sql,
                                 std::string_view expected_tag);

  // Rolls the transaction back if the connection still holds one, and
  // closes it. Best effort: a broken connection is just closed, which rolls
  // back just the same on the server. REQUIRES: no worker running (Stop or
  // Finish returned).
  void Rollback();

  // Rows the shard reported copied. REQUIRES: Finish() returned.
  int64_t rows_copied() const { return rows_copied_; }

 private:
  void WorkerLoop();
  absl::Status CopyBatchNow(const CopyBatch& batch);
  // The shard's error in `res`, with the CSV line of the refused row.
  absl::Status CopyError(const PGresult* res, const CopyBatch& batch) const;
  absl::Status ConnectionLost(std::string_view during) const;
  void Fail(absl::Status status) ABSL_LOCKS_EXCLUDED(mu_);
  void Close();

  const Settings settings_;
  FirstFailure& failure_;

  // Used by one thread at a time: the caller's before Start and after
  // Finish, the worker's in between.
  PGconn* conn_ = nullptr;
  std::string copy_sql_;
  std::string relname_;
  int64_t rows_copied_ = 0;
  std::thread worker_;

  absl::Mutex mu_;
  std::deque<CopyBatch> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;   // no more batches will come
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;  // drop what is queued
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_COPY_WRITER_H_
