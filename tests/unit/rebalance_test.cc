#include "rebalancer/rebalance.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "shardkit/config.h"
#include "tests/unit/planner_map.h"

namespace shardkit::internal {
namespace {

using ::testing::HasSubstr;

DistributionLoad LoadOf(const ShardMap& map, const std::string& distribution,
                        const std::vector<int64_t>& rows) {
  DistributionLoad load;
  load.distribution = distribution;
  const LiveState state = LiveStateOf(map);
  const auto& slices = state.distributions.at(distribution).slices;
  for (size_t i = 0; i < slices.size(); ++i) {
    load.slices.push_back({slices[i], rows.at(i), rows.at(i) * 100});
  }
  return load;
}

// Applies the plan's moves one after the other, as the mover would: each
// must be accepted by PlanMove against the map the previous ones left.
ShardMap Execute(ShardMap map, const RebalancePlan& plan) {
  for (const RebalanceStep& step : plan.steps) {
    absl::StatusOr<PlannedMove> planned = PlanMove(map, step.request);
    EXPECT_TRUE(planned.ok()) << step.request.slice << ": "
                              << planned.status();
    if (!planned.ok()) return map;
    EXPECT_EQ(planned->source, step.source);
    LiveState state = LiveStateOf(map);
    state.epoch = map.epoch() + 1;
    state.distributions[plan.distribution] = planned->after;
    absl::StatusOr<ShardMap> next = ApplyLiveState(map, state);
    EXPECT_TRUE(next.ok()) << next.status();
    if (!next.ok()) return map;
    map = *std::move(next);
  }
  return map;
}

// A range finder over keys 0..999 spread evenly in the slice [from, to)
// (open sides read as 0 and 1000).
absl::StatusOr<std::optional<std::string>> EvenKeys(const SliceLoad& s,
                                                    double fraction_below) {
  int64_t lo = 0, hi = 1000;
  if (!s.slice.from.empty() && !absl::SimpleAtoi(s.slice.from, &lo)) {
    return absl::InternalError("bad from");
  }
  if (!s.slice.to.empty() && !absl::SimpleAtoi(s.slice.to, &hi)) {
    return absl::InternalError("bad to");
  }
  const int64_t cut = lo + static_cast<int64_t>((hi - lo) * fraction_below);
  if (cut <= lo || cut >= hi) return std::nullopt;
  return std::to_string(cut);
}

void ExpectWithin(const RebalancePlan& plan, double tolerance) {
  int64_t total = 0;
  for (const auto& [shard, n] : plan.after) total += n;
  const double mean = static_cast<double>(total) / plan.after.size();
  for (const auto& [shard, n] : plan.after) {
    EXPECT_LE(std::abs(static_cast<double>(n) - mean), mean * tolerance + 1)
        << shard << " has " << n << ", mean " << mean;
  }
}

TEST(PlanRebalance, HashOntoAnEmptyShard) {
  const ShardMap map = MustMap();
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "users", {600, 600}), {}, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->before.at("s3"), 0);
  ASSERT_EQ(plan->steps.size(), 2u);
  for (const RebalanceStep& s : plan->steps) {
    EXPECT_EQ(s.request.destination, "s3");
    EXPECT_NEAR(static_cast<double>(s.rows), 200, 5);
  }
  ExpectWithin(*plan, 0.1);
  // The carved parts are the tops of s1's and s2's slices, cut on round
  // hash values.
  EXPECT_EQ(plan->steps[0].request.slice, "0x5555000000000000:0x8000000000000000");
  EXPECT_EQ(plan->steps[1].request.slice, "0xd555000000000000:");
  const ShardMap after = Execute(map, *plan);
  EXPECT_EQ(after.FindDistribution("users")->shards().size(), 3u);
}

TEST(PlanRebalance, ByBytes) {
  const ShardMap map = MustMap();
  RebalanceOptions options;
  options.by = BalanceBy::kBytes;
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "users", {900, 300}), options, nullptr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->before.at("s1"), 90000);
  ExpectWithin(*plan, 0.1);
  Execute(map, *plan);
}

TEST(PlanRebalance, RangeCutsWhereTheFinderSays) {
  const ShardMap map = MustMap();
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "events", {900, 100}), {}, EvenKeys);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->steps.size(), 2u);
  EXPECT_EQ(plan->steps[0].request.slice, "629:1000");
  EXPECT_EQ(plan->steps[0].request.destination, "s3");
  EXPECT_EQ(plan->steps[1].request.slice, "370:629");
  EXPECT_EQ(plan->steps[1].request.destination, "s2");
  ExpectWithin(*plan, 0.1);
  Execute(map, *plan);
}

TEST(PlanRebalance, MovesAWholeSliceWhenOneFits) {
  ShardMap map = MustMap();
  // s1 owns [, 500) and [500, 1000): after a split.
  LiveState state = LiveStateOf(map);
  state.epoch = 2;
  state.distributions["events"].slices = {
      {"", "500", "s1"}, {"500", "1000", "s1"}, {"1000", "", "s2"}};
  map = *ApplyLiveState(map, state);
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "events", {600, 300, 300}), {}, EvenKeys);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // s1 has 900 of 1200: its 300-row slice fits in s3's deficit of 400
  // and moves whole; the rest is carved.
  ASSERT_GE(plan->steps.size(), 1u);
  EXPECT_EQ(plan->steps[0].request.slice, "500:1000");
  EXPECT_EQ(plan->steps[0].request.destination, "s3");
  EXPECT_EQ(plan->steps[0].rows, 300);
  ExpectWithin(*plan, 0.1);
  Execute(map, *plan);
}

TEST(PlanRebalance, BalancedOrEmptyPlansNothing) {
  const ShardMap map = MustMap();
  RebalanceOptions options;
  options.tolerance = 0.5;
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "users", {0, 0}), options, nullptr);
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->steps.empty());
  // With s3 empty, 10/10/0 is off by 100% of the mean: not balanced at 50%.
  plan = PlanRebalance(map, LoadOf(map, "users", {10, 10}), options, nullptr);
  ASSERT_TRUE(plan.ok());
  EXPECT_FALSE(plan->steps.empty());
}

TEST(PlanRebalance, StopsWhenNothingCanBeCarved) {
  const ShardMap map = MustMap();
  auto none = [](const SliceLoad&, double)
      -> absl::StatusOr<std::optional<std::string>> { return std::nullopt; };
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "events", {900, 100}), {}, none);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_TRUE(plan->steps.empty());
}

TEST(PlanRebalance, RefusesRegionDistributions) {
  const ShardMap map = MustMap();
  DistributionLoad load;
  load.distribution = "geo";
  absl::StatusOr<RebalancePlan> plan = PlanRebalance(map, load, {}, nullptr);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(plan.status().message(), HasSubstr("move --region"));
  load.distribution = "nope";
  EXPECT_FALSE(PlanRebalance(map, load, {}, nullptr).ok());
}

TEST(PlanRebalance, RespectsMaxMoves) {
  const ShardMap map = MustMap();
  RebalanceOptions options;
  options.max_moves = 1;
  absl::StatusOr<RebalancePlan> plan =
      PlanRebalance(map, LoadOf(map, "users", {600, 600}), options, nullptr);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->steps.size(), 1u);
}

// The rebalance connects to the shards with the configuration's connect
// timeout, not the default: shardctl rebalance builds its endpoints with
// ShardEndpoints from the mover's options, which hold [timeouts] connect.
TEST(ShardEndpoints, CarryTheConfiguredConnectTimeout) {
  absl::StatusOr<Config> config = ParseConfig(
      std::string(kPlannerConfig) + "[timeouts]\nconnect = \"17s\"\n",
      "test.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_NE(config->timeouts.connect, ShardEndpoint{}.connect_timeout);
  const std::vector<ShardEndpoint> endpoints =
      ShardEndpoints(config->map, config->timeouts.connect);
  ASSERT_EQ(endpoints.size(), config->map.shards().size());
  for (size_t id = 0; id < endpoints.size(); ++id) {
    const Shard& shard = config->map.shard(static_cast<ShardId>(id));
    EXPECT_EQ(endpoints[id].name, shard.name);
    EXPECT_EQ(endpoints[id].dsn, shard.dsn);
    EXPECT_EQ(endpoints[id].connect_timeout, absl::Seconds(17)) << shard.name;
  }
}

}  // namespace
}  // namespace shardkit::internal
