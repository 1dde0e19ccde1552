#include "rebalancer/reference_copy.h"

#define XXH_INLINE_ALL  // no symbol clash with libpg_query's bundled xxHash
#include <xxhash.h>

#include <memory>
#include <string>
#include <vector>

#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {

namespace {

constexpr int kAttempts = 5;
constexpr absl::Duration kLockTimeout = absl::Seconds(2);

absl::Status Copy(MoveSession& source, MoveSession& destination,
                  const std::string& quoted, int64_t& copied) {
  const std::string lock = StrCat("SET LOCAL lock_timeout = ",
                                  absl::ToInt64Milliseconds(kLockTimeout));
  RETURN_IF_ERROR(destination
                      .Run(StrCat("BEGIN; ", lock, "; LOCK TABLE ", quoted,
                                  " IN ACCESS EXCLUSIVE MODE; DELETE FROM ",
                                  quoted),
                           "locking the copy to replace")
                      .status());
  RETURN_IF_ERROR(source
                      .Run(StrCat("BEGIN; ", lock, "; LOCK TABLE ", quoted,
                                  " IN SHARE MODE"),
                           "locking the copy to read")
                      .status());
  RETURN_IF_ERROR(destination.StartCopyIn(
      StrCat("COPY ", quoted, " FROM STDIN"), "copying the rows"));
  absl::Status sent;
  std::string buffer;
  RETURN_IF_ERROR(source.CopyOut(
      StrCat("COPY ", quoted, " TO STDOUT"),
      [&](std::string_view line) {
        if (!sent.ok()) return;
        buffer.append(line);
        buffer.push_back('\n');
        if (buffer.size() >= (1 << 16)) {
          sent = destination.PutCopyData(buffer);
          buffer.clear();
        }
      },
      "reading the rows"));
  RETURN_IF_ERROR(sent);
  if (!buffer.empty()) RETURN_IF_ERROR(destination.PutCopyData(buffer));
  ASSIGN_OR_RETURN(copied, destination.EndCopyIn("copying the rows"));
  RETURN_IF_ERROR(destination.Run("COMMIT").status());
  return source.Run("COMMIT").status();
}

}  // namespace

// A session on `shard` once `table` is known to exist there (kNotFound
// naming the shard otherwise).
static absl::StatusOr<std::unique_ptr<MoveSession>> OpenWithTable(
    const ShardEndpoint& shard, std::string_view table,
    absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session,
                   MoveSession::Open(shard, timeout));
  ASSIGN_OR_RETURN(std::vector<MoveSession::Row> exists,
                   session->Query("SELECT to_regclass($1) IS NOT NULL",
                                  {QuoteQualifiedName(table)},
                                  "looking for the table"));
  if (exists.empty() || exists[0][0] != "t") {
    return absl::NotFoundError(ToAbsl(StrCat(
        "table ", table, " does not exist on shard ", shard.name)));
  }
  return session;
}

absl::StatusOr<int64_t> CountRows(const ShardEndpoint& shard,
                                  std::string_view table,
                                  absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session,
                   OpenWithTable(shard, table, timeout));
  return session->QueryInt(
      StrCat("SELECT count(*) FROM ", QuoteQualifiedName(table)), {},
      StrCat("counting ", table));
}

absl::StatusOr<TableDigest> DigestRows(const ShardEndpoint& shard,
                                       std::string_view table,
                                       absl::Duration timeout) {
  ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session,
                   OpenWithTable(shard, table, timeout));
  TableDigest digest;
  RETURN_IF_ERROR(session->CopyOut(
      StrCat("COPY ", QuoteQualifiedName(table), " TO STDOUT"),
      [&](std::string_view line) {
        ++digest.rows;
        digest.checksum += XXH3_64bits(line.data(), line.size());
      },
      StrCat("reading ", table)));
  return digest;
}

absl::StatusOr<int64_t> SyncReferenceTable(const ShardEndpoint& source,
                                           const ShardEndpoint& destination,
                                           std::string_view table,
                                           absl::Duration timeout) {
  const std::string quoted = QuoteQualifiedName(table);
  absl::Status last;
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> src,
                     MoveSession::Open(source, timeout));
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> dst,
                     MoveSession::Open(destination, timeout));
    int64_t copied = 0;
    last = Copy(*src, *dst, quoted, copied);
    if (last.ok()) return copied;
    dst->RollbackQuietly();
    src->RollbackQuietly();
    // 55P03: lock_not_available (a writer holds the table on one side).
    if (last.message().find("55P03") == absl::string_view::npos) {
      break;
    }
    absl::SleepFor(absl::Milliseconds(200) * (attempt + 1));
  }
  return absl::Status(last.code(),
                      ToAbsl(StrCat("copying reference table ", table, " from ",
                                    source.name, " to ", destination.name,
                                    ": ", last.message())));
}

}  // namespace shardkit::internal
