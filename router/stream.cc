#include "router/stream.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/status_macros.h"
#include "common/strings.h"
#include "router/merge.h"

namespace shardkit::internal {
namespace {

constexpr char kCursor[] = "shardkit_stream";

// The cursor over a shard's statement. Its text ends on a line of its
// own, so that a trailing comment in it ends there too.
std::string Declare(const std::string& sql) {
  return StrCat("DECLARE ", kCursor, " NO SCROLL CURSOR FOR ", sql, "\n");
}

// The rows of a result already in memory.
class ResultSource : public RowSource {
 public:
  explicit ResultSource(Result result) : result_(std::move(result)) {}

  const std::vector<Column>& columns() const override { return result_.columns; }
  const std::vector<ShardId>& shards() const override { return result_.shards; }

  absl::StatusOr<bool> Next(Row* row) override {
    if (next_ >= result_.rows.size()) {
      // Free the rows once read.
      result_.rows = {};
      next_ = 0;
      return false;
    }
    *row = std::move(result_.rows[next_++]);
    return true;
  }

 private:
  Result result_;
  size_t next_ = 0;
};

// One target shard of a cursor stream.
struct ShardCursor {
  ShardTask task;  // its session is `session`
  std::unique_ptr<ShardSession> session;
  std::vector<Row> rows;  // the last batch fetched
  size_t next = 0;        // its first row not yet taken
  bool exhausted = false;  // the cursor has no rows beyond `rows`

  bool has_row() const { return next < rows.size(); }
};

class CursorSource : public RowSource {
 public:
  CursorSource(std::vector<ShardCursor> shards, std::vector<Column> columns,
               std::vector<MergeKey> keys, bool merge, int64_t offset,
               std::optional<int64_t> limit, const StreamOptions& options)
      : cursors_(std::move(shards)),
        columns_(std::move(columns)),
        keys_(std::move(keys)),
        merge_(merge),
        offset_(offset),
        limit_(limit),
        options_(options) {
    for (const ShardCursor& c : cursors_) shard_ids_.push_back(c.task.shard);
    std::sort(shard_ids_.begin(), shard_ids_.end());
    shard_ids_.erase(std::unique(shard_ids_.begin(), shard_ids_.end()),
                     shard_ids_.end());
    if (merge_) {
      for (size_t i = 0; i < cursors_.size(); ++i) {
        if (cursors_[i].has_row()) Push(i);
      }
    }
  }

  const std::vector<Column>& columns() const override { return columns_; }
  const std::vector<ShardId>& shards() const override { return shard_ids_; }

  absl::StatusOr<bool> Next(Row* row) override {
    while (true) {
      if (!failure_.ok()) return failure_;
      if (ended_) return false;
      if (limit_ && returned_ >= *limit_) return End();
      std::optional<size_t> from;
      if (merge_) {
        from = Pop();
      } else {
        from = NextInShardOrder();
        if (!failure_.ok()) return failure_;
      }
      if (!from) return End();
      ShardCursor& cursor = cursors_[*from];
      Row taken = std::move(cursor.rows[cursor.next++]);
      if (merge_) {
        if (!cursor.has_row() && !cursor.exhausted) {
          absl::Status fetched = Fetch(cursor);
          if (!fetched.ok()) return Fail(std::move(fetched));
        }
        if (cursor.has_row()) Push(*from);
      }
      if (skipped_ < offset_) {
        ++skipped_;
        continue;
      }
      ++returned_;
      *row = std::move(taken);
      return true;
    }
  }

 private:
  // Concatenation: the first shard, in order, with a row left, fetching
  // as needed; nullopt when none has.
  std::optional<size_t> NextInShardOrder() {
    while (current_ < cursors_.size()) {
      ShardCursor& cursor = cursors_[current_];
      if (cursor.has_row()) return current_;
      if (cursor.exhausted) {
        ++current_;
        continue;
      }
      absl::Status fetched = Fetch(cursor);
      if (!fetched.ok()) {
        Fail(std::move(fetched)).IgnoreError();
        return std::nullopt;
      }
    }
    return std::nullopt;
  }

  // The merge: a heap of the shards with a row, by their next row; ties go
  // to the lower shard, as MergeRows does.
  bool Later(size_t a, size_t b) const {
    const int c = CompareRows(cursors_[a].rows[cursors_[a].next],
                              cursors_[b].rows[cursors_[b].next], keys_);
    return c != 0 ? c > 0 : a > b;
  }
  void Push(size_t i) {
    heap_.push_back(i);
    std::push_heap(heap_.begin(), heap_.end(),
                   [this](size_t a, size_t b) { return Later(a, b); });
  }
  std::optional<size_t> Pop() {
    if (heap_.empty()) return std::nullopt;
    std::pop_heap(heap_.begin(), heap_.end(),
                  [this](size_t a, size_t b) { return Later(a, b); });
    const size_t i = heap_.back();
    heap_.pop_back();
    return i;
  }

  absl::Status Fetch(ShardCursor& cursor) {
    ShardTask task = cursor.task;
    task.sql = StrCat("FETCH ", std::max(options_.batch_rows, 1), " FROM ",
                      kCursor);
    task.params.clear();
    ASSIGN_OR_RETURN(std::vector<TaskOutcome> done,
                     RunAll({task}, options_.exec));
    cursor.rows = std::move(done[0].result.rows);
    cursor.next = 0;
    cursor.exhausted =
        cursor.rows.size() < static_cast<size_t>(std::max(options_.batch_rows, 1));
    return absl::OkStatus();
  }

  // The rows ended: every shard's transaction commits, and the
  // connections go back to the pool.
  absl::StatusOr<bool> End() {
    ended_ = true;
    heap_.clear();
    std::vector<ShardTask> commits;
    for (ShardCursor& cursor : cursors_) {
      cursor.rows = {};
      ShardTask task = cursor.task;
      task.sql = "COMMIT";
      task.params.clear();
      commits.push_back(std::move(task));
    }
    absl::StatusOr<std::vector<TaskOutcome>> done =
        RunAll(commits, options_.exec);
    if (!done.ok()) return Fail(done.status());
    for (ShardCursor& cursor : cursors_) cursor.session->Release();
    return false;
  }

  // The stream ends with `status`; the connections are closed (their
  // servers roll back).
  absl::StatusOr<bool> Fail(absl::Status status) {
    failure_ = std::move(status);
    heap_.clear();
    for (ShardCursor& cursor : cursors_) {
      cursor.rows = {};
      cursor.session.reset();
    }
    return failure_;
  }

  std::vector<ShardCursor> cursors_;
  std::vector<ShardId> shard_ids_;
  const std::vector<Column> columns_;
  const std::vector<MergeKey> keys_;
  const bool merge_;
  const int64_t offset_;
  const std::optional<int64_t> limit_;
  const StreamOptions options_;

  std::vector<size_t> heap_;  // merge: shards with a row
  size_t current_ = 0;        // concatenation: the shard being read
  int64_t skipped_ = 0;
  int64_t returned_ = 0;
  bool ended_ = false;
  absl::Status failure_;
};

}  // namespace

absl::StatusOr<RowStream> OpenStream(Router& router,
                                     const std::shared_ptr<const ShardMap>& map,
                                     std::string_view sql, const Params& params,
                                     const StreamOptions& options) {
  ASSIGN_OR_RETURN(Router::Prepared prepared, router.Prepare(map, sql, params));
  const RoutingPlan& routing = *prepared.routing;
  const bool reads_only = routing.kind == StatementKind::kSelect &&
                          !routing.writes && !routing.needs_primary;
  if (reads_only && options.place_reads) options.place_reads(prepared.tasks);
  if (reads_only && prepared.combine == Router::Combining::kAggregate) {
    ASSIGN_OR_RETURN(Result result, router.Run(prepared, params, options.exec));
    return RowStream(std::make_unique<ResultSource>(std::move(result)));
  }
  if (prepared.dual != nullptr) {
    // Its rows in a moving slice must also be applied on the destination,
    // in a distributed transaction, which only Execute runs.
    return absl::FailedPreconditionError(
        "this write reaches the source of a slice being moved (dual-write); "
        "run it with Execute or inside a Transaction, not as a stream");
  }
  if (routing.kind != StatementKind::kSelect || routing.writes ||
      prepared.combine == Router::Combining::kAggregate) {
    ASSIGN_OR_RETURN(Result result,
                     router.Execute(map, sql, params, options.exec));
    return RowStream(std::make_unique<ResultSource>(std::move(result)));
  }

  const int batch = std::max(options.batch_rows, 1);
  std::vector<ShardCursor> cursors(prepared.tasks.size());
  std::vector<ShardTask> opening;
  const bool with_params = !prepared.tasks[0].params.empty();
  for (size_t i = 0; i < cursors.size(); ++i) {
    ShardCursor& cursor = cursors[i];
    cursor.session = std::make_unique<ShardSession>();
    cursor.task = prepared.tasks[i];
    cursor.task.session = cursor.session.get();
    ShardTask task = cursor.task;
    if (with_params) {
      task.sql = "BEGIN";
      task.params.clear();
    } else {
      task.sql = StrCat("BEGIN; ", Declare(task.sql), "; FETCH ", batch,
                        " FROM ", kCursor);
    }
    opening.push_back(std::move(task));
  }
  ASSIGN_OR_RETURN(std::vector<TaskOutcome> done,
                   RunAll(opening, options.exec));
  if (with_params) {
    for (size_t i = 0; i < cursors.size(); ++i) {
      opening[i].sql = Declare(cursors[i].task.sql);
      opening[i].params = cursors[i].task.params;
    }
    RETURN_IF_ERROR(RunAll(opening, options.exec).status());
    for (ShardTask& task : opening) {
      task.sql = StrCat("FETCH ", batch, " FROM ", kCursor);
      task.params.clear();
    }
    ASSIGN_OR_RETURN(done, RunAll(opening, options.exec));
  }
  std::vector<Column> columns = done[0].result.columns;
  for (size_t i = 0; i < cursors.size(); ++i) {
    cursors[i].rows = std::move(done[i].result.rows);
    cursors[i].exhausted = cursors[i].rows.size() < static_cast<size_t>(batch);
  }
  const bool merge = prepared.combine == Router::Combining::kMerge;
  std::vector<MergeKey> keys;
  if (merge) {
    // Any collation lookup runs in the first shard's session.
    ASSIGN_OR_RETURN(keys, router.MergeKeys(routing, columns, cursors[0].task,
                                            options.exec));
  }
  return RowStream(std::make_unique<CursorSource>(
      std::move(cursors), std::move(columns), std::move(keys), merge,
      prepared.offset, prepared.limit, options));
}

}  // namespace shardkit::internal

namespace shardkit {

RowStream::RowStream(std::unique_ptr<internal::RowSource> source)
    : source_(std::move(source)) {}
RowStream::~RowStream() = default;
RowStream::RowStream(RowStream&&) noexcept = default;
RowStream& RowStream::operator=(RowStream&&) noexcept = default;

const std::vector<Column>& RowStream::columns() const {
  return source_->columns();
}

const std::vector<ShardId>& RowStream::shards() const {
  return source_->shards();
}

absl::StatusOr<bool> RowStream::Next(Row* row) {
  absl::StatusOr<bool> more = source_->Next(row);
  if (more.ok() && *more) ++rows_read_;
  return more;
}

}  // namespace shardkit
