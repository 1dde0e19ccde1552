#include "rebalancer/plan.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>

#include "shardkit/config.h"
#include "tests/unit/planner_map.h"

namespace shardkit::internal {
namespace {

using ::testing::HasSubstr;

ShardMap Apply(const ShardMap& map, const LiveState::Ownership& own,
               const std::string& distribution) {
  LiveState state = LiveStateOf(map);
  state.epoch = map.epoch() + 1;
  state.distributions[distribution] = own;
  absl::StatusOr<ShardMap> next = ApplyLiveState(map, state);
  if (!next.ok()) {
    std::cerr << next.status() << "\n";
    std::abort();
  }
  return *std::move(next);
}

TEST(PlanMoveTest, HashSliceInsideASliceIsCarvedOut) {
  const ShardMap map = MustMap();
  absl::StatusOr<PlannedMove> plan = PlanMove(
      map, {"users", "0x8000000000000000:0xc000000000000000", "", "s3"});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->source, "s2");
  EXPECT_EQ(plan->from, "0x8000000000000000");
  EXPECT_EQ(plan->to, "0xc000000000000000");
  ASSERT_EQ(plan->after.slices.size(), 3u);
  const ShardMap after = Apply(map, plan->after, "users");
  const Distribution& d = *after.FindDistribution("users");
  EXPECT_EQ(after.shard(d.PlaceHash(0x9000000000000000u).shard).name, "s3");
  EXPECT_EQ(after.shard(d.PlaceHash(0xd000000000000000u).shard).name, "s2");
  EXPECT_EQ(after.shard(d.PlaceHash(0x1000000000000000u).shard).name, "s1");
}

TEST(PlanMoveTest, WholeOpenEndedSlice) {
  const ShardMap map = MustMap();
  absl::StatusOr<PlannedMove> plan =
      PlanMove(map, {"users", "0x8000000000000000:", "", "s3"});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->to, "");
  ASSERT_EQ(plan->after.slices.size(), 2u);
  EXPECT_EQ(plan->after.slices[1].shard, "s3");
}

TEST(PlanMoveTest, RangeSlice) {
  const ShardMap map = MustMap();
  absl::StatusOr<PlannedMove> plan =
      PlanMove(map, {"events", "1000:2000", "", "s3"});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->source, "s2");
  const ShardMap after = Apply(map, plan->after, "events");
  EXPECT_EQ(after.shard(after.FindDistribution("events")
                            ->Place(Key::Integer(1500))
                            ->shard)
                .name,
            "s3");
  EXPECT_EQ(after.shard(after.FindDistribution("events")
                            ->Place(Key::Integer(2000))
                            ->shard)
                .name,
            "s2");
}

TEST(PlanMoveTest, RegionMovesWholeAndUnlistedRegionsComeFromDefault) {
  const ShardMap map = MustMap();
  absl::StatusOr<PlannedMove> eu = PlanMove(map, {"geo", "", "eu", "s3"});
  ASSERT_TRUE(eu.ok()) << eu.status();
  EXPECT_EQ(eu->source, "s1");
  absl::StatusOr<PlannedMove> asia = PlanMove(map, {"geo", "", "asia", "s1"});
  ASSERT_TRUE(asia.ok()) << asia.status();
  EXPECT_EQ(asia->source, "s3");
}

TEST(PlanMoveTest, RefusalsSayWhatToDo) {
  const ShardMap map = MustMap();
  auto message = [&](MoveRequest r) {
    absl::StatusOr<PlannedMove> plan = PlanMove(map, r);
    EXPECT_FALSE(plan.ok());
    return std::string(plan.status().message());
  };
  EXPECT_THAT(message({"nope", "0x0:", "", "s3"}),
              HasSubstr("unknown distribution 'nope'"));
  EXPECT_THAT(message({"users", "0x0:", "", "s9"}),
              HasSubstr("added to the configuration file first"));
  EXPECT_THAT(message({"users", ":", "", "s3"}),
              HasSubstr("spans more than one slice"));
  EXPECT_THAT(message({"users", "0x10:0x20", "", "s1"}),
              HasSubstr("already owns"));
  EXPECT_THAT(message({"users", "0x20:0x10", "", "s3"}), HasSubstr("empty"));
  EXPECT_THAT(message({"users", "12", "", "s3"}), HasSubstr("FROM:TO"));
  EXPECT_THAT(message({"geo", "1:2", "", "s3"}), HasSubstr("--region"));
  EXPECT_THAT(message({"users", "", "eu", "s3"}), HasSubstr("--slice"));
}

// A region spread over several shards has no single source to move from:
// refused, saying so and what the operator can do instead.
TEST(PlanMoveTest, SpreadRegionIsRefused) {
  absl::StatusOr<Config> config = ParseConfig(R"(
[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
[shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"
[distributions.geo]
strategy = "region"
key_type = "text"
hash_key_type = "int8"
regions = { eu = ["s1", "s2"], us = ["s3"] }
)",
                                              "spread.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<PlannedMove> eu =
      PlanMove(config->map, {"geo", "", "eu", "s3"});
  ASSERT_FALSE(eu.ok());
  EXPECT_EQ(eu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(eu.status().message(),
              HasSubstr("region 'eu' is spread over shards s1, s2"));
  EXPECT_THAT(eu.status().message(),
              HasSubstr("only a region held by one shard can be moved"));
  EXPECT_THAT(eu.status().message(), HasSubstr("not supported yet"));
  // The region one shard holds moves.
  absl::StatusOr<PlannedMove> us =
      PlanMove(config->map, {"geo", "", "us", "s1"});
  ASSERT_TRUE(us.ok()) << us.status();
  EXPECT_EQ(us->source, "s3");
}

TEST(PlanSplitTest, SplitsInTheMapOnly) {
  const ShardMap map = MustMap();
  absl::StatusOr<LiveState::Ownership> own =
      PlanSplit(map, "users", "0x4000000000000000");
  ASSERT_TRUE(own.ok()) << own.status();
  ASSERT_EQ(own->slices.size(), 3u);
  EXPECT_EQ(own->slices[0].shard, "s1");
  EXPECT_EQ(own->slices[1].shard, "s1");
  EXPECT_EQ(own->slices[1].from, "0x4000000000000000");
  EXPECT_FALSE(PlanSplit(map, "users", "0x8000000000000000").ok());
  absl::StatusOr<LiveState::Ownership> range = PlanSplit(map, "events", "500");
  ASSERT_TRUE(range.ok()) << range.status();
  EXPECT_EQ(range->slices.size(), 3u);
  EXPECT_FALSE(PlanSplit(map, "events", "1000").ok());
  EXPECT_FALSE(PlanSplit(map, "geo", "x").ok());
}

}  // namespace
}  // namespace shardkit::internal
