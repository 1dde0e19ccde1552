#include "rebalancer/backfill.h"

#include <algorithm>
#include <memory>
#include <thread>
#include <utility>

#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "shardkit/cluster.h"
#include "router/failpoint.h"

namespace shardkit::internal {
namespace {

// Per session: the backfill opens its own sessions for one table.
constexpr char kStagingTable[] = "shardkit_backfill_staging";

// One table's backfill: the two sessions and the SQL built once.
class Backfill {
 public:
  Backfill(std::unique_ptr<MoveSession> source,
           std::unique_ptr<MoveSession> next_source,
           std::unique_ptr<MoveSession> destination, TableShape shape,
           const MoveSlice& slice, const BackfillOptions& options)
      : sources_{std::move(source), std::move(next_source)},
        destination_(std::move(destination)),
        shape_(std::move(shape)),
        slice_(slice),
        options_(options) {}

  absl::Status Prepare();
  absl::StatusOr<BackfillStats> Run();

 private:
  // A chunk read from the source, its rows still locked there (its
  // session's transaction is open).
  struct Chunk {
    MoveSession* source = nullptr;
    BackfillStats stats;
    std::string data;       // the slice's rows, COPY text
    std::string keys;       // their keys, COPY text (slices with key lists)
    std::string last_line;  // the last row scanned
  };

  // Chunks from the last committed bound until the source has no more
  // rows or a chunk fails; adds each committed chunk to `total` and moves
  // `bound` past it.
  absl::Status CopyChunks(std::optional<std::vector<std::string>>& bound,
                          BackfillStats& total);
  // Reads the chunk after `bound` on `source` into `chunk`, in a
  // transaction left open; meanwhile sends the destination what it takes
  // of the chunk queued before (`feeding`).
  absl::Status ReadChunk(MoveSession& source,
                         const std::optional<std::vector<std::string>>& bound,
                         bool feeding, Chunk& chunk);
  // Starts `chunk`'s transaction and COPY on the destination and queues
  // its rows (sent while the next chunk is read).
  absl::Status StartWrite(const Chunk& chunk);
  // Finishes it: the rows (merged if some were there already), the keys,
  // the destination's commit, then the source's, then the source's keys.
  absl::Status FinishWrite(Chunk& chunk);
  // The primary key of `chunk`'s last row.
  absl::StatusOr<std::vector<std::string>> BoundAfter(const Chunk& chunk);
  void RollbackAll() {
    // The sources first: their locks hold the application's writes, and
    // the destination may still have a chunk's rows to take in.
    for (const auto& source : sources_) source->RollbackQuietly();
    destination_->RollbackQuietly();
  }
  std::string ReadChunkSql(
      const std::optional<std::vector<std::string>>& bound) const;
  absl::Status FieldCountError(size_t fields) const {
    return absl::InternalError(
        StrCat("shard ", sources_[0]->shard_name(), ": a row of ", shape_.name,
               " has ", fields, " fields, not ", shape_.columns.size()));
  }
  std::string Context(std::string_view what) const {
    return StrCat(what, " of table ", shape_.name, " (", slice_.ToString(),
                  ")");
  }

  // Two sessions on the source: while the destination writes the chunk
  // one of them read (its rows locked until then), the other reads the
  // next one.
  const std::unique_ptr<MoveSession> sources_[2];
  const std::unique_ptr<MoveSession> destination_;
  const TableShape shape_;
  const MoveSlice& slice_;
  const BackfillOptions& options_;
  // Copies `data` (COPY text lines) with `copy_sql`, or, when a row is
  // already there (unique violation: dual-written, or copied by an earlier
  // run), into `staging_sql` and then `merge_sql` (ON CONFLICT DO NOTHING).
  // `started`: the COPY with `copy_sql` was already started, and `data`
  // sent, in savepoint kSavepoint. Returns the rows inserted.
  absl::StatusOr<int64_t> CopyOrMerge(MoveSession& session, bool started,
                                      const std::string& copy_sql,
                                      const std::string& staging_sql,
                                      const std::string& merge_sql,
                                      std::string_view data,
                                      std::string_view what);

  std::string condition_;  // the range/region filter, or empty
  // The slice keeps key lists (hash slices; shard_objects.h).
  bool lists_keys_ = false;
  // When Run started: the pace (BackfillOptions::max_rows_per_second) is
  // the rows of the chunks committed since, over the time since.
  absl::Time started_;
  // Rows per chunk: options_.chunk_rows, halved after a chunk gave way to
  // the application's writes (see Run) so that a busy table still moves.
  int64_t chunk_rows_ = 0;
  // Rows: straight into the table, or staged and merged.
  std::string copy_rows_sql_, stage_rows_sql_, merge_rows_sql_;
  // Keys: straight into the list, or staged and merged.
  std::string copy_keys_sql_, stage_keys_sql_, merge_keys_sql_;
};

constexpr char kKeyStagingTable[] = "shardkit_backfill_keys";
// How long the backfill's destination waits for a lock before the chunk
// gives way (below the servers' deadlock_timeout, 1 s by default).
constexpr absl::Duration kGiveWayAfter = absl::Milliseconds(300);
// How many times in all the chunks may give way before the backfill fails.
constexpr int kMaxGiveWays = 200;
// SQLSTATE lock_not_available: lock_timeout expired.
constexpr std::string_view kLockNotAvailable = "55P03";
constexpr char kSavepoint[] = "shardkit_backfill";

absl::StatusOr<int64_t> Backfill::CopyOrMerge(
    MoveSession& session, bool started, const std::string& copy_sql,
    const std::string& staging_sql, const std::string& merge_sql,
    std::string_view data, std::string_view what) {
  const std::string context = Context(what);
  absl::StatusOr<int64_t> copied;
  if (started) {
    copied = session.EndCopyIn(context);
  } else {
    RETURN_IF_ERROR(
        session.Run(StrCat("SAVEPOINT ", kSavepoint), context).status());
    copied = session.CopyIn(copy_sql, data, context);
  }
  if (copied.ok() || SqlStateOf(copied.status()) != "23505") return copied;
  RETURN_IF_ERROR(
      session.Run(StrCat("ROLLBACK TO SAVEPOINT ", kSavepoint), context)
          .status());
  RETURN_IF_ERROR(session.CopyIn(staging_sql, data, context).status());
  ASSIGN_OR_RETURN(std::vector<int64_t> counts,
                   session.Run(merge_sql, context));
  return counts.empty() ? 0 : counts.front();
}

absl::Status Backfill::Prepare() {
  chunk_rows_ = options_.chunk_rows;
  condition_ = SliceCondition(shape_, slice_);
  lists_keys_ = MoveListsKeys(slice_.strategy, slice_.server_hash);
  const std::string keys = MoveKeysTable(slice_.move_id);
  const std::string columns = shape_.ColumnList();
  copy_rows_sql_ =
      StrCat("COPY ", shape_.quoted, " (", columns, ") FROM STDIN");
  stage_rows_sql_ =
      StrCat("COPY ", kStagingTable, " (", columns, ") FROM STDIN");
  merge_rows_sql_ = StrCat(
      "INSERT INTO ", shape_.quoted, " (", columns, ") ",
      shape_.has_identity ? "OVERRIDING SYSTEM VALUE " : "", "SELECT ",
      columns, " FROM ", kStagingTable, " ON CONFLICT DO NOTHING");
  copy_keys_sql_ = StrCat("COPY ", keys, " (key) FROM STDIN");
  stage_keys_sql_ = StrCat("COPY ", kKeyStagingTable, " (key) FROM STDIN");
  merge_keys_sql_ =
      StrCat("INSERT INTO ", keys, " (key) SELECT DISTINCT key FROM ",
             kKeyStagingTable, " ON CONFLICT DO NOTHING");
  for (MoveSession* s :
       {sources_[0].get(), sources_[1].get(), destination_.get()}) {
    if (options_.epoch) {
      RETURN_IF_ERROR(
          s->Run(StrCat("SET ", kEpochSetting, " = '", *options_.epoch, "'"),
                 "setting the mover's map epoch")
              .status());
    }
    // Range and region slices are hidden by their condition: no lists.
    if (!lists_keys_) continue;
    RETURN_IF_ERROR(EnsureMoveKeysTable(*s, slice_));
    RETURN_IF_ERROR(
        s->Run(StrCat("CREATE TEMPORARY TABLE ", kKeyStagingTable,
                      " ON COMMIT DELETE ROWS AS SELECT key FROM ", keys,
                      " WITH NO DATA"),
               Context("creating the staging table for keys"))
            .status());
  }
  // While a chunk holds the source's rows FOR SHARE and its copies on the
  // destination uncommitted, an insert on the destination may wait for a
  // dual-write transaction (the same row or key, not yet committed) that
  // itself waits for one of those source rows, or the source's read for
  // one that waits for a copied row: deadlocks across two servers, which
  // neither detects. The backfill's waits are bounded on both sides: the
  // chunk gives way, and runs again.
  for (MoveSession* s :
       {sources_[0].get(), sources_[1].get(), destination_.get()}) {
    RETURN_IF_ERROR(s->Run(StrCat("SET lock_timeout = ",
                                  absl::ToInt64Milliseconds(kGiveWayAfter)),
                           Context("bounding the backfill's lock waits"))
                        .status());
  }
  // Only the copied columns, none of the table's constraints or defaults:
  // the rows arrive whole and are checked by the real table's constraints
  // when inserted. ON COMMIT DELETE ROWS empties it after each chunk.
  return destination_
      ->Run(StrCat("CREATE TEMPORARY TABLE ", kStagingTable,
                   " ON COMMIT DELETE ROWS AS SELECT ", columns, " FROM ",
                   shape_.quoted, " WITH NO DATA"),
            Context("creating the staging table for the backfill"))
      .status();
}

std::string Backfill::ReadChunkSql(
    const std::optional<std::vector<std::string>>& bound) const {
  std::string where;
  if (bound) where = shape_.After(*sources_[0], *bound);
  if (!condition_.empty()) {
    where = where.empty() ? condition_ : StrCat(where, " AND ", condition_);
  }
  return StrCat("COPY (SELECT ", shape_.ColumnList(), " FROM ", shape_.quoted,
                where.empty() ? "" : StrCat(" WHERE ", where), " ORDER BY ",
                shape_.PrimaryKeyList(), " LIMIT ", chunk_rows_,
                " FOR SHARE) TO STDOUT");
}

absl::Status Backfill::ReadChunk(
    MoveSession& source, const std::optional<std::vector<std::string>>& bound,
    bool feeding, Chunk& chunk) {
  chunk = Chunk();
  chunk.source = &source;
  std::string last_key;  // the last key listed
  std::vector<std::string_view> fields;
  absl::Status row_error;
  const bool filter = slice_.strategy == Strategy::kHash &&
                      !slice_.server_hash && !slice_.IsWholeHashSpace();
  // How often the destination is given what it takes of the chunk before.
  constexpr size_t kFeedEvery = 64 << 10;
  size_t fed = 0;
  RETURN_IF_ERROR(source.Run("BEGIN", Context("the backfill")).status());
  RETURN_IF_ERROR(source.CopyOut(
      ReadChunkSql(bound),
      [&](std::string_view line) {
        ++chunk.stats.rows_scanned;
        chunk.last_line.assign(line);
        if (!row_error.ok()) return;
        if (feeding && chunk.data.size() - fed >= kFeedEvery) {
          row_error = destination_->FlushCopyData(Context("copying a chunk"));
          fed = chunk.data.size();
        }
        if (!filter && !lists_keys_) {
          // Filtered by the server, unlisted: the line as it came; the
          // destination's COPY checks its fields.
          ++chunk.stats.rows_in_slice;
          chunk.data.append(line);
          chunk.data += '\n';
          return;
        }
        SplitCopyLine(line, fields);
        if (fields.size() != shape_.columns.size()) {
          row_error = FieldCountError(fields.size());
          return;
        }
        if (filter) {
          absl::StatusOr<bool> in = RowInSlice(shape_, slice_, fields);
          if (!in.ok()) {
            row_error = in.status();
            return;
          }
          if (!*in) return;
        }
        ++chunk.stats.rows_in_slice;
        chunk.data.append(line);
        chunk.data += '\n';
        // A raw COPY field is a valid line of a one-column COPY. Rows of
        // one key follow each other when the key leads the primary key:
        // list it once (a repeat would fail the fast COPY of the keys).
        const std::string_view key = fields[shape_.key_column];
        if (lists_keys_ && (chunk.keys.empty() || key != last_key)) {
          chunk.keys.append(key);
          chunk.keys += '\n';
          last_key.assign(key);
        }
      },
      Context("reading a chunk for the backfill")));
  return row_error;
}

absl::Status Backfill::StartWrite(const Chunk& chunk) {
  RETURN_IF_ERROR(destination_
                      ->Run(StrCat("BEGIN; SAVEPOINT ", kSavepoint),
                            Context("the backfill"))
                      .status());
  // The fast path: straight into the table. A row already there fails the
  // COPY (unique violation) and sends the chunk through the staging table.
  RETURN_IF_ERROR(destination_->StartCopyIn(copy_rows_sql_,
                                            Context("copying a chunk")));
  return destination_->QueueCopyData(chunk.data, Context("copying a chunk"));
}

absl::Status Backfill::FinishWrite(Chunk& chunk) {
  RETURN_IF_ERROR(destination_->FinishCopyData(Context("copying a chunk")));
  ASSIGN_OR_RETURN(chunk.stats.rows_copied,
                   CopyOrMerge(*destination_, /*started=*/true,
                               copy_rows_sql_, stage_rows_sql_,
                               merge_rows_sql_, chunk.data, "copying a chunk"));
  chunk.stats.chunks = 1;
  chunk.stats.bytes = static_cast<int64_t>(chunk.data.size());
  if (!chunk.keys.empty()) {
    RETURN_IF_ERROR(CopyOrMerge(*destination_, /*started=*/false,
                                copy_keys_sql_, stage_keys_sql_,
                                merge_keys_sql_, chunk.keys,
                                "listing the keys copied")
                        .status());
  }
  RETURN_IF_ERROR(
      destination_->Run("COMMIT", Context("committing a chunk")).status());
  Failpoint("move-backfill-after-chunk");
  MoveSession& source = *chunk.source;
  RETURN_IF_ERROR(
      source.Run("COMMIT", Context("committing a chunk")).status());
  // The source lists the keys once its rows are unlocked: its insert may
  // wait for a dual-write's listing of the same key, whose transaction may
  // wait for one of those rows (a deadlock the server resolves by
  // cancelling one of them, perhaps the application's). A mover killed
  // before this resumes at this chunk again (its progress is reported
  // after), which lists them.
  if (!chunk.keys.empty()) {
    RETURN_IF_ERROR(source.Run("BEGIN", Context("the backfill")).status());
    RETURN_IF_ERROR(CopyOrMerge(source, /*started=*/false, copy_keys_sql_,
                                stage_keys_sql_, merge_keys_sql_, chunk.keys,
                                "listing the keys copied")
                        .status());
    RETURN_IF_ERROR(
        source.Run("COMMIT", Context("listing the keys copied")).status());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> Backfill::BoundAfter(
    const Chunk& chunk) {
  std::vector<std::string_view> fields;
  SplitCopyLine(chunk.last_line, fields);
  if (fields.size() != shape_.columns.size()) {
    return FieldCountError(fields.size());
  }
  return PrimaryKeyOf(shape_, fields);
}

absl::Status Backfill::CopyChunks(
    std::optional<std::vector<std::string>>& bound, BackfillStats& total) {
  // A pipeline of two chunks: while the destination writes chunk k (its
  // rows queued, sent as it takes them), the source reads chunk k + 1 on
  // its other session; then chunk k commits on the destination and on the
  // source, and chunk k + 1 goes to the destination. Each chunk's rows stay
  // locked on the source until it is on the destination, as before; the
  // two servers and this process just never wait for each other between
  // chunks.
  Chunk chunks[2];
  int current = 0;
  // Paced (max_rows_per_second): one chunk at a time, nothing locked
  // while it waits.
  const bool paced = options_.max_rows_per_second > 0;
  // A slice with key lists lists the keys of chunk k on the source after
  // its commit; with chunk k + 1 locked meanwhile, a dual-write listing one
  // of those keys while it waits for a row of chunk k + 1 would make the
  // listing give way (a wait through this process, which the server does
  // not see as a deadlock). Such a slice reads one chunk at a time.
  const bool ahead = !paced && !lists_keys_;
  RETURN_IF_ERROR(ReadChunk(*sources_[0], bound, /*feeding=*/false,
                            chunks[current]));
  while (true) {
    Chunk& chunk = chunks[current];
    if (chunk.stats.rows_scanned == 0) {
      return chunk.source->Run("COMMIT", Context("the backfill")).status();
    }
    ASSIGN_OR_RETURN(std::vector<std::string> after, BoundAfter(chunk));
    const bool last = chunk.stats.rows_scanned < chunk_rows_;
    RETURN_IF_ERROR(StartWrite(chunk));
    MoveSession& other =
        chunk.source == sources_[0].get() ? *sources_[1] : *sources_[0];
    if (!last && ahead) {
      RETURN_IF_ERROR(ReadChunk(other, after, /*feeding=*/true,
                                chunks[1 - current]));
    }
    RETURN_IF_ERROR(FinishWrite(chunk));
    bound = std::move(after);
    total.Add(chunk.stats);
    if (options_.on_chunk) {
      RETURN_IF_ERROR(options_.on_chunk({chunk.stats, total, *bound}));
    }
    if (total.chunks == 1) Failpoint("move-backfill-mid");
    if (last) return absl::OkStatus();
    current = 1 - current;
    if (!ahead) {
      if (paced) {
        absl::SleepFor(PaceDelay(total.rows_scanned,
                                 options_.max_rows_per_second,
                                 absl::Now() - started_));
      }
      RETURN_IF_ERROR(
          ReadChunk(other, bound, /*feeding=*/false, chunks[current]));
    }
  }
}

absl::StatusOr<BackfillStats> Backfill::Run() {
  started_ = absl::Now();
  std::optional<std::vector<std::string>> bound = options_.resume_after;
  BackfillStats total;
  int gave_way = 0;
  while (true) {
    absl::Status copied = CopyChunks(bound, total);
    if (copied.ok()) return total;
    // Closing the sessions would roll back as well; this keeps a caller
    // that retries on the same process from waiting on our locks.
    RollbackAll();
    if (SqlStateOf(copied) != kLockNotAvailable ||
        ++gave_way > kMaxGiveWays) {
      return copied;
    }
    // Gave way to the application's writes: again from the last chunk
    // committed, after they had time to finish, in smaller chunks.
    chunk_rows_ = std::max<int64_t>(1, chunk_rows_ / 2);
    absl::SleepFor(std::min(absl::Milliseconds(20) * gave_way,
                            absl::Milliseconds(500)));
  }
}

absl::StatusOr<std::pair<std::unique_ptr<MoveSession>,
                         std::unique_ptr<MoveSession>>>
OpenBoth(const ShardEndpoint& source, const ShardEndpoint& destination,
         absl::Duration statement_timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> s,
                   MoveSession::Open(source, statement_timeout));
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> d,
                   MoveSession::Open(destination, statement_timeout));
  return std::make_pair(std::move(s), std::move(d));
}

}  // namespace

absl::Duration PaceDelay(int64_t rows, int64_t rows_per_second,
                         absl::Duration elapsed) {
  const absl::Duration due =
      absl::Seconds(static_cast<double>(rows) / rows_per_second);
  return due > elapsed ? due - elapsed : absl::ZeroDuration();
}

void BackfillStats::Add(const BackfillStats& other) {
  chunks += other.chunks;
  rows_scanned += other.rows_scanned;
  rows_in_slice += other.rows_in_slice;
  rows_copied += other.rows_copied;
  bytes += other.bytes;
}

absl::StatusOr<TableShape> CheckTableForMove(const ShardEndpoint& source,
                                             const ShardEndpoint& destination,
                                             const TableToMove& table) {
  ASSIGN_OR_RETURN(auto sessions,
                   OpenBoth(source, destination, absl::Minutes(1)));
  return DescribeTableForMove(*sessions.first, *sessions.second, table.name,
                              table.key_column);
}

absl::Status EnsureMoveKeysTable(MoveSession& session,
                                 const MoveSlice& slice) {
  // IF NOT EXISTS still races with a concurrent creator (a unique violation
  // in pg_type): the mover creates the lists before dual-writes begin.
  return session
      .Run(CreateMoveTablesSql(slice.move_id, slice.key_type),
           StrCat("creating the key list of move ", slice.move_id))
      .status();
}

absl::StatusOr<BackfillStats> BackfillTable(const ShardEndpoint& source,
                                            const ShardEndpoint& destination,
                                            const TableToMove& table,
                                            const MoveSlice& slice,
                                            const BackfillOptions& options) {
  if (options.chunk_rows < 1) {
    return absl::InvalidArgumentError("backfill: chunk_rows must be >= 1");
  }
  ASSIGN_OR_RETURN(auto sessions,
                   OpenBoth(source, destination, options.statement_timeout));
  ASSIGN_OR_RETURN(TableShape shape,
                   DescribeTableForMove(*sessions.first, *sessions.second,
                                        table.name, table.key_column));
  if (options.resume_after &&
      options.resume_after->size() != shape.primary_key.size()) {
    return absl::InvalidArgumentError(
        StrCat("backfill of table ", table.name, ": the resume bound has ",
               options.resume_after->size(), " values, its primary key ",
               shape.primary_key.size(), " columns"));
  }
  // The source's second session: it reads a chunk while the destination
  // writes the one before (Backfill::CopyChunks).
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> next_source,
                   MoveSession::Open(source, options.statement_timeout));
  Backfill backfill(std::move(sessions.first), std::move(next_source),
                    std::move(sessions.second), std::move(shape), slice,
                    options);
  RETURN_IF_ERROR(backfill.Prepare());
  return backfill.Run();
}

}  // namespace shardkit::internal
