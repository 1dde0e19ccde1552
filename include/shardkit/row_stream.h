// A RowStream: the rows of one statement, read one at a time in bounded
// memory (Cluster::Stream).
//
// Example:
//
//   absl::StatusOr<shardkit::RowStream> rows = cluster->Stream(
//       "SELECT id, name FROM users ORDER BY name");
//   if (!rows.ok()) return rows.status();
//   shardkit::Row row;
//   while (true) {
//     absl::StatusOr<bool> more = rows->Next(&row);
//     if (!more.ok()) return more.status();  // a shard failed mid-way
//     if (!*more) break;                     // the end
//     Use(row);
//   }
//
// Thread-safety: a RowStream is used by one thread at a time (it may move
// between threads). Different streams, and the Cluster, may be used
// concurrently.

#ifndef SHARDKIT_ROW_STREAM_H_
#define SHARDKIT_ROW_STREAM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "shardkit/result.h"
#include "shardkit/shard_map.h"

namespace shardkit {

namespace internal {
class RowSource;
}  // namespace internal

class RowStream {
 public:
  // Made by Cluster::Stream; `source` is internal.
  explicit RowStream(std::unique_ptr<internal::RowSource> source);

  // Ends the stream. If rows remain unread, the shards' work is abandoned:
  // their connections are closed, which rolls back the shards'
  // transactions (a SELECT only read). Never blocks on the network.
  ~RowStream();
  RowStream(RowStream&&) noexcept;
  RowStream& operator=(RowStream&&) noexcept;

  // The result's columns, known before the first row.
  const std::vector<Column>& columns() const;

  // The shards the statement runs on, ascending.
  const std::vector<ShardId>& shards() const;

  // Reads the next row into `*row` and returns true, or returns false at
  // the end of the rows. Fails (and the stream ends) when a shard fails
  // while rows are being fetched: an unreachable shard, a statement
  // timeout (which applies to each fetch from a shard), a server error;
  // the status names the shard as Cluster::Execute's do. After false or a
  // failure, every later call returns the same.
  [[nodiscard]] absl::StatusOr<bool> Next(Row* row);

  // How many rows Next has returned so far.
  int64_t rows_read() const { return rows_read_; }

 private:
  std::unique_ptr<internal::RowSource> source_;
  int64_t rows_read_ = 0;
};

}  // namespace shardkit

#endif  // SHARDKIT_ROW_STREAM_H_
