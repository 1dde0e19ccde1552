// Internal: the sources behind shardkit::RowStream (Cluster::Stream).
//
// A SELECT that the router answers by concatenating or merging the shards'
// rows streams through a cursor on each target shard, in a transaction of
// its own on a connection the stream holds (a ShardSession) until it ends:
//
//   BEGIN; DECLARE shardkit_stream NO SCROLL CURSOR FOR <the shard's SQL>;
//   FETCH <batch> FROM shardkit_stream   (one round trip without
//                                         parameters; with them, three)
//
// then FETCH <batch> again from a shard whenever its rows run out, so that
// at most `batch` rows per shard are held at once, whatever the size of the
// result. Rows are concatenated in shard order, or merged by the ORDER BY
// as a k-way merge (merge.h) with OFFSET and LIMIT applied to the merged
// rows (each shard's cursor runs the statement with LIMIT n + m, as
// Execute does). Once the rows end, every shard's transaction commits and
// its connection goes back to the pool; a stream dropped before its end
// closes its connections instead (the servers roll back).
//
// Any other statement — a write with RETURNING, an aggregating SELECT over
// several shards (whose partials are combined in one query) — runs as
// Router::Execute would, and its result is read from memory.
//
// A stream holds one pooled connection per target shard for its whole
// life: with [pool] max_connections_per_shard = 1, a thread that holds a
// stream and runs another statement on one of its shards waits for that
// connection until the connect timeout, and fails.

#ifndef SHARDKIT_ROUTER_STREAM_H_
#define SHARDKIT_ROUTER_STREAM_H_

#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "router/executor.h"
#include "router/router.h"
#include "shardkit/result.h"
#include "shardkit/row_stream.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual const std::vector<Column>& columns() const = 0;
  virtual const std::vector<ShardId>& shards() const = 0;
  // As RowStream::Next.
  virtual absl::StatusOr<bool> Next(Row* row) = 0;
};

struct StreamOptions {
  ExecOptions exec;  // its pools must outlive the stream
  // Rows fetched from a shard at a time; below 1 is taken as 1.
  int batch_rows = 1000;
  // When set, called once, before anything runs, with the tasks of a
  // statement that only reads (a SELECT, not writes, not needs_primary),
  // to point them at replicas (their dsn).
  std::function<void(std::vector<ShardTask>&)> place_reads;
};

// Opens the stream of `sql` with `params` (see the file comment). Fails as
// Router::Execute does when the statement cannot run, or a shard fails to
// start it. REQUIRES: `router` outlives the stream.
[[nodiscard]] absl::StatusOr<RowStream> OpenStream(
    Router& router, const std::shared_ptr<const ShardMap>& map,
    std::string_view sql, const Params& params, const StreamOptions& options);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_STREAM_H_
