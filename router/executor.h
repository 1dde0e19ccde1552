// Internal: runs statements on several shards concurrently.
//
// One thread drives every connection with non-blocking libpq and poll(), so
// a slow shard never serializes the others. Each task gets a fresh
// connection for now (connection pools come with the router).
//
// Thread-safety: RunOnShards is thread-safe; tasks share nothing.

#ifndef SHARDKIT_ROUTER_EXECUTOR_H_
#define SHARDKIT_ROUTER_EXECUTOR_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shardkit/result.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

struct ShardTask {
  ShardId shard = 0;
  std::string shard_name;
  std::string dsn;
  std::string sql;
  // $1..$n, as text; nullopt is NULL. Always sent as parameters.
  std::vector<std::optional<std::string>> params;
};

struct ExecOptions {
  absl::Duration connect_timeout = absl::Seconds(5);
  absl::Duration statement_timeout = absl::Seconds(30);
};

struct TaskOutcome {
  absl::Status status;  // names the shard; see ShardOutcome in cluster.h
  Result result;
};

// Runs every task concurrently and waits for all; outcomes in task order.
std::vector<TaskOutcome> RunOnShards(const std::vector<ShardTask>& tasks,
                                     const ExecOptions& options);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_EXECUTOR_H_
