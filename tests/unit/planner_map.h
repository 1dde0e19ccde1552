// The shard map the planners' unit tests share (plan_test, rebalance_test):
// shards s1-s3; "users", hash over s1 and s2 (table users); "events", range
// with s1 below 1000 and s2 from it; "geo", by region (eu on s1, us on s2,
// the rest on s3).

#ifndef SHARDKIT_TESTS_UNIT_PLANNER_MAP_H_
#define SHARDKIT_TESTS_UNIT_PLANNER_MAP_H_

#include <cstdlib>
#include <iostream>

#include "shardkit/config.h"

namespace shardkit::internal {

inline constexpr char kPlannerConfig[] = R"(
[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
[shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"

[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]

[distributions.events]
strategy = "range"
key_type = "int8"
slices = [ { to = 1000, shard = "s1" }, { from = 1000, shard = "s2" } ]

[distributions.geo]
strategy = "region"
key_type = "text"
regions = { eu = ["s1"], us = ["s2"] }
default = "s3"

[tables.users]
distribution = "users"
key = "id"
)";

inline ShardMap MustMap() {
  absl::StatusOr<Config> config = ParseConfig(kPlannerConfig, "test.toml");
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    std::abort();
  }
  return config->map;
}

}  // namespace shardkit::internal

#endif  // SHARDKIT_TESTS_UNIT_PLANNER_MAP_H_
