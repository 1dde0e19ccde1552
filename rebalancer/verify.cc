#include "rebalancer/verify.h"

#define XXH_INLINE_ALL  // no symbol clash with libpg_query's bundled xxHash
#include <xxhash.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/backfill.h"
#include "shardkit/cluster.h"

namespace shardkit::internal {
namespace {

// One side's rows of a chunk: each row's primary key (its raw COPY fields,
// tab-joined: a canonical text) and the XXH3 of its whole line.
// How long a recheck's FOR SHARE read waits for a lock (see VerifyTable),
// and the SQLSTATE of giving up: lock_not_available.
constexpr absl::Duration kGiveWayAfter = absl::Milliseconds(300);
constexpr std::string_view kLockNotAvailable = "55P03";

struct ChunkRows {
  std::vector<std::pair<std::string, uint64_t>> rows;
  uint64_t checksum = 0;  // sum of the line hashes: order-independent

  bool SameAs(const ChunkRows& o) const {
    return rows.size() == o.rows.size() && checksum == o.checksum;
  }
};

std::vector<std::string> KeyValues(std::string_view raw_key) {
  std::vector<std::string_view> fields;
  SplitCopyLine(raw_key, fields);
  std::vector<std::string> values;
  for (std::string_view f : fields) {
    values.push_back(UnescapeCopyField(f).value_or("NULL"));
  }
  return values;
}

class Verifier {
 public:
  Verifier(std::unique_ptr<MoveSession> source,
           std::unique_ptr<MoveSession> destination, TableShape shape,
           const MoveSlice& slice, const VerifyOptions& options)
      : source_(std::move(source)),
        destination_(std::move(destination)),
        shape_(std::move(shape)),
        slice_(slice),
        options_(options) {
    condition_ = SliceCondition(shape_, slice_);
  }

  absl::StatusOr<VerifyReport> Run();

 private:
  // Reads `session`'s rows of the slice with `where` (may be empty),
  // ordered by key, with `tail` appended ("LIMIT n", "FOR SHARE").
  // `last_key` gets the primary key of the last row scanned (slice or not).
  absl::Status Read(MoveSession& session, const std::string& where,
                    const std::string& tail, ChunkRows& out,
                    int64_t& scanned, std::vector<std::string>* last_key);
  // The condition for keys in (after, up_to] on `session`, with the slice's.
  std::string Range(const MoveSession& session,
                    const std::optional<std::vector<std::string>>& after,
                    const std::optional<std::vector<std::string>>& up_to)
      const;
  // Reads a chunk again on both sides, the source's rows FOR SHARE, until
  // they agree or the rechecks run out. Leaves the last reads in `source`
  // and `destination`.
  absl::StatusOr<bool> Recheck(
      const std::optional<std::vector<std::string>>& after,
      const std::optional<std::vector<std::string>>& up_to,
      ChunkRows& source, ChunkRows& destination);
  // After Recheck: the keys of `source` and `destination` that still
  // differ, read again one by one (the source's rows FOR SHARE, then,
  // after a pause for a dual-write whose source has committed to commit
  // on the destination too, the destination's) until none differs or the
  // rechecks run out. A large chunk read twice always straddles some
  // writes while the application inserts and deletes; the rows those
  // writes touch settle, a real difference stays.
  absl::StatusOr<bool> RecheckKeys(const ChunkRows& source,
                                   const ChunkRows& destination);
  ChunkMismatch Diff(const std::optional<std::vector<std::string>>& after,
                     const std::optional<std::vector<std::string>>& up_to,
                     const ChunkRows& source,
                     const ChunkRows& destination) const;

  const std::unique_ptr<MoveSession> source_;
  const std::unique_ptr<MoveSession> destination_;
  const TableShape shape_;
  const MoveSlice& slice_;
  const VerifyOptions& options_;
  std::string condition_;
};

std::string Verifier::Range(
    const MoveSession& session,
    const std::optional<std::vector<std::string>>& after,
    const std::optional<std::vector<std::string>>& up_to) const {
  std::vector<std::string> parts;
  if (after) parts.push_back(shape_.After(session, *after));
  if (up_to) parts.push_back(shape_.AtOrBefore(session, *up_to));
  if (!condition_.empty()) parts.push_back(condition_);
  return absl::StrJoin(parts, " AND ");
}

absl::Status Verifier::Read(MoveSession& session, const std::string& where,
                            const std::string& tail, ChunkRows& out,
                            int64_t& scanned,
                            std::vector<std::string>* last_key) {
  out = ChunkRows();
  scanned = 0;
  std::vector<std::string_view> fields;
  std::string last_line;
  absl::Status row_error;
  const std::string sql = StrCat(
      "COPY (SELECT ", shape_.ColumnList(), " FROM ", shape_.quoted,
      where.empty() ? "" : StrCat(" WHERE ", where), " ORDER BY ",
      shape_.PrimaryKeyList(), tail.empty() ? "" : " ", tail, ") TO STDOUT");
  RETURN_IF_ERROR(session.CopyOut(
      sql,
      [&](std::string_view line) {
        ++scanned;
        if (last_key != nullptr) last_line.assign(line);
        if (!row_error.ok()) return;
        SplitCopyLine(line, fields);
        if (fields.size() != shape_.columns.size()) {
          row_error = absl::InternalError(
              StrCat("shard ", session.shard_name(), ": a row of ",
                     shape_.name, " has ", fields.size(), " fields, not ",
                     shape_.columns.size()));
          return;
        }
        absl::StatusOr<bool> in = RowInSlice(shape_, slice_, fields);
        if (!in.ok()) {
          row_error = in.status();
          return;
        }
        if (!*in) return;
        std::string key;
        for (size_t i : shape_.primary_key) {
          if (!key.empty()) key += '\t';
          key.append(fields[i]);
        }
        const uint64_t hash = XXH3_64bits(line.data(), line.size());
        out.checksum += hash;
        out.rows.emplace_back(std::move(key), hash);
      },
      StrCat("reading table ", shape_.name, " for verify")));
  RETURN_IF_ERROR(row_error);
  if (last_key != nullptr && scanned > 0) {
    SplitCopyLine(last_line, fields);
    *last_key = PrimaryKeyOf(shape_, fields);
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Verifier::Recheck(
    const std::optional<std::vector<std::string>>& after,
    const std::optional<std::vector<std::string>>& up_to, ChunkRows& source,
    ChunkRows& destination) {
  int64_t scanned = 0;
  for (int attempt = 0; attempt < options_.rechecks; ++attempt) {
    absl::SleepFor(options_.recheck_pause);
    RETURN_IF_ERROR(source_->Run("BEGIN").status());
    absl::Status status = Read(*source_, Range(*source_, after, up_to),
                               "FOR SHARE", source, scanned, nullptr);
    if (status.ok()) {
      status = Read(*destination_, Range(*destination_, after, up_to), "",
                    destination, scanned, nullptr);
    }
    if (status.ok()) status = source_->Run("COMMIT").status();
    if (!status.ok()) {
      source_->RollbackQuietly();
      if (SqlStateOf(status) == kLockNotAvailable) continue;  // gave way
      return status;
    }
    if (source.SameAs(destination)) return true;
  }
  return false;
}

// The keys whose rows differ between `a` and `b` (missing on one side,
// or with other values).
std::vector<std::string> DifferingKeys(const ChunkRows& a, const ChunkRows& b) {
  absl::flat_hash_map<std::string_view, uint64_t> in_b;
  for (const auto& [key, hash] : b.rows) in_b[key] = hash;
  absl::flat_hash_map<std::string_view, bool> in_a;
  std::vector<std::string> keys;
  for (const auto& [key, hash] : a.rows) {
    in_a[key] = true;
    auto it = in_b.find(key);
    if (it == in_b.end() || it->second != hash) keys.push_back(key);
  }
  for (const auto& [key, hash] : b.rows) {
    if (!in_a.contains(key)) keys.push_back(key);
  }
  return keys;
}

absl::StatusOr<bool> Verifier::RecheckKeys(const ChunkRows& source,
                                           const ChunkRows& destination) {
  constexpr int kMaxKeys = 10000;  // more differ: not writes in flight
  std::vector<std::string> keys = DifferingKeys(source, destination);
  for (int attempt = 0; attempt < options_.rechecks + 2; ++attempt) {
    if (keys.empty()) return true;
    if (static_cast<int>(keys.size()) > kMaxKeys) return false;
    std::vector<std::string> on_source, on_destination;
    for (const std::string& key : keys) {
      on_source.push_back(shape_.At(*source_, KeyValues(key)));
      on_destination.push_back(shape_.At(*destination_, KeyValues(key)));
    }
    const std::string source_where =
        StrCat("(", absl::StrJoin(on_source, " OR "), ")");
    const std::string destination_where =
        StrCat("(", absl::StrJoin(on_destination, " OR "), ")");
    absl::SleepFor(options_.recheck_pause);
    ChunkRows s, d;
    int64_t scanned = 0;
    RETURN_IF_ERROR(source_->Run("BEGIN").status());
    absl::Status status =
        Read(*source_, source_where, "FOR SHARE", s, scanned, nullptr);
    if (status.ok()) {
      absl::SleepFor(options_.recheck_pause / 5);
      status = Read(*destination_, destination_where, "", d, scanned, nullptr);
    }
    if (status.ok()) status = source_->Run("COMMIT").status();
    if (!status.ok()) {
      source_->RollbackQuietly();
      if (SqlStateOf(status) == kLockNotAvailable) continue;  // gave way
      return status;
    }
    keys = DifferingKeys(s, d);
  }
  return keys.empty();
}

ChunkMismatch Verifier::Diff(
    const std::optional<std::vector<std::string>>& after,
    const std::optional<std::vector<std::string>>& up_to,
    const ChunkRows& source, const ChunkRows& destination) const {
  ChunkMismatch mismatch;
  mismatch.after = after;
  mismatch.up_to = up_to;
  mismatch.source_rows = static_cast<int64_t>(source.rows.size());
  mismatch.destination_rows = static_cast<int64_t>(destination.rows.size());
  auto note = [&](RowDifference::Kind kind, const std::string& key) {
    ++mismatch.differences_total;
    if (static_cast<int>(mismatch.differences.size()) <
        options_.max_differences) {
      mismatch.differences.push_back({kind, KeyValues(key)});
    }
  };
  absl::flat_hash_map<std::string_view, uint64_t> on_destination;
  for (const auto& [key, hash] : destination.rows) on_destination[key] = hash;
  absl::flat_hash_map<std::string_view, bool> on_source;
  for (const auto& [key, hash] : source.rows) {
    on_source[key] = true;
    auto it = on_destination.find(key);
    if (it == on_destination.end()) {
      note(RowDifference::Kind::kMissingOnDestination, key);
    } else if (it->second != hash) {
      note(RowDifference::Kind::kDifferent, key);
    }
  }
  for (const auto& [key, hash] : destination.rows) {
    if (!on_source.contains(key)) {
      note(RowDifference::Kind::kExtraOnDestination, key);
    }
  }
  return mismatch;
}

absl::StatusOr<VerifyReport> Verifier::Run() {
  VerifyReport report;
  report.table = shape_.name;
  std::optional<std::vector<std::string>> after;
  const absl::Time started = absl::Now();
  int64_t scanned_in_all = 0;
  while (true) {
    ChunkRows source, destination;
    int64_t scanned = 0;
    std::vector<std::string> last;
    std::vector<std::string> where;
    if (after) where.push_back(shape_.After(*source_, *after));
    if (!condition_.empty()) where.push_back(condition_);
    RETURN_IF_ERROR(Read(*source_, absl::StrJoin(where, " AND "),
                         StrCat("LIMIT ", options_.chunk_rows), source,
                         scanned, &last));
    const bool last_chunk = scanned < options_.chunk_rows;
    // The last chunk is open above: rows past the source's last key that
    // only the destination has are extra rows too.
    std::optional<std::vector<std::string>> up_to;
    if (!last_chunk) up_to = last;
    int64_t ignored = 0;
    RETURN_IF_ERROR(Read(*destination_, Range(*destination_, after, up_to), "",
                         destination, ignored, nullptr));
    ++report.chunks;
    if (!source.SameAs(destination)) {
      ++report.rechecked_chunks;
      ASSIGN_OR_RETURN(bool agreed, Recheck(after, up_to, source, destination));
      if (!agreed) {
        ASSIGN_OR_RETURN(agreed, RecheckKeys(source, destination));
      }
      if (!agreed) {
        report.mismatches.push_back(Diff(after, up_to, source, destination));
      }
    }
    report.source_rows += static_cast<int64_t>(source.rows.size());
    report.destination_rows += static_cast<int64_t>(destination.rows.size());
    if (last_chunk) break;
    after = std::move(up_to);
    scanned_in_all += scanned;
    if (options_.max_rows_per_second > 0) {
      absl::SleepFor(PaceDelay(scanned_in_all, options_.max_rows_per_second,
                               absl::Now() - started));
    }
  }
  return report;
}

std::string KeyText(const std::optional<std::vector<std::string>>& key,
                    const char* none) {
  if (!key) return none;
  return StrCat("(", absl::StrJoin(*key, ", "), ")");
}

}  // namespace

std::string_view RowDifferenceKindName(RowDifference::Kind kind) {
  switch (kind) {
    case RowDifference::Kind::kMissingOnDestination:
      return "missing on destination";
    case RowDifference::Kind::kExtraOnDestination:
      return "extra on destination";
    case RowDifference::Kind::kDifferent:
      return "different";
  }
  return "?";
}

std::string VerifyReport::Summary() const {
  std::string out = StrCat(
      "table ", table, ": ", chunks, " chunks, ", source_rows,
      " rows on the source, ", destination_rows, " on the destination, ",
      mismatches.empty() ? "all equal"
                         : StrCat(mismatches.size(), " chunks differ"));
  for (const ChunkMismatch& m : mismatches) {
    StrAppend(&out, "\n  keys after ", KeyText(m.after, "the first"),
              " up to ", KeyText(m.up_to, "the last"), ": ", m.source_rows,
              " rows on the source, ", m.destination_rows,
              " on the destination, ", m.differences_total, " differ");
    for (const RowDifference& d : m.differences) {
      StrAppend(&out, "\n    ", KeyText(d.key, ""), " ",
                RowDifferenceKindName(d.kind));
    }
  }
  return out;
}

absl::StatusOr<VerifyReport> VerifyTable(const ShardEndpoint& source,
                                         const ShardEndpoint& destination,
                                         const TableToMove& table,
                                         const MoveSlice& slice,
                                         const VerifyOptions& options) {
  if (options.chunk_rows < 1 || options.rechecks < 0) {
    return absl::InvalidArgumentError(
        "verify: chunk_rows must be >= 1 and rechecks >= 0");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> s,
                   MoveSession::Open(source, options.statement_timeout));
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> d,
                   MoveSession::Open(destination, options.statement_timeout));
  ASSIGN_OR_RETURN(TableShape shape, DescribeTableForMove(*s, *d, table.name,
                                                          table.key_column));
  // The rechecks lock the source's rows FOR SHARE: an application
  // transaction that holds one and waits for another would deadlock with
  // them, and the server would cancel one of the two. They wait at most
  // this long (under deadlock_timeout, 1 s by default), then give way.
  RETURN_IF_ERROR(s->Run(StrCat("SET lock_timeout = ",
                                absl::ToInt64Milliseconds(kGiveWayAfter)),
                         "bounding verify's lock waits")
                      .status());
  Verifier verifier(std::move(s), std::move(d), std::move(shape), slice,
                    options);
  return verifier.Run();
}

}  // namespace shardkit::internal
