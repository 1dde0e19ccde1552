#include "config/live_state.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <iostream>

#include "shardkit/config.h"

namespace shardkit::internal {
namespace {

using ::testing::HasSubstr;

constexpr char kConfig[] = R"(
[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
replicas = [ { name = "a", dsn = "host=127.0.0.1 port=6101 dbname=app" },
             { name = "b", dsn = "host=127.0.0.1 port=6102 dbname=app" } ]
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

[tables.users]
distribution = "users"
key = "id"
[tables.events]
distribution = "events"
key = "id"
)";

Config MustParse() {
  absl::StatusOr<Config> config = ParseConfig(kConfig, "test.toml");
  if (!config.ok()) {
    std::cerr << config.status() << "\n";
    std::abort();
  }
  return *std::move(config);
}

TEST(LiveStateTest, OfConfiguredMapAppliesToTheSameMap) {
  const Config config = MustParse();
  LiveState state = LiveStateOf(config.map);
  state.epoch = 2;
  absl::StatusOr<ShardMap> map = ApplyLiveState(config.map, state);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->epoch(), 2u);
  const Distribution* users = map->FindDistribution("users");
  ASSERT_EQ(users->hash_slices().size(), 2u);
  EXPECT_EQ(users->hash_slices()[1].lo, 0x8000000000000000u);
  EXPECT_EQ(map->shard(0).dsn, config.map.shard(0).dsn);
  EXPECT_EQ(map->shard(0).replicas.size(), 2u);
}

TEST(LiveStateTest, TextRoundTrip) {
  const Config config = MustParse();
  LiveState state = LiveStateOf(config.map);
  state.epoch = 9;
  state.shards["s1"] = {"b", {"primary"}};
  state.moves.push_back({4, "events", "1000", "2000", "", "s2", "s3",
                         MovePhase::kCutOver});
  absl::StatusOr<LiveState> back = ParseLiveState(SerializeLiveState(state));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(SerializeLiveState(*back), SerializeLiveState(state));
  EXPECT_EQ(back->epoch, 9u);
  EXPECT_EQ(back->shards.at("s1").primary, "b");
  ASSERT_EQ(back->moves.size(), 1u);
  EXPECT_EQ(back->moves[0].phase, MovePhase::kCutOver);
  EXPECT_EQ(back->moves[0].to, "2000");
}

// A hash move whose shards hash keys themselves says so in the text, and
// the map built from it carries it to the routers (hiding, dual-writes);
// a move without it reads as before (a state written by an older version).
TEST(LiveStateTest, ServerHashOfAMoveReachesTheMap) {
  const Config config = MustParse();
  LiveState state = LiveStateOf(config.map);
  state.epoch = 4;
  LiveState::Move move{5, "users", "0x8000000000000000", "", "", "s2", "s3",
                       MovePhase::kDualWrite};
  move.server_hash = true;
  state.moves.push_back(move);
  const std::string text = SerializeLiveState(state);
  EXPECT_NE(text.find("server_hash = true"), std::string::npos) << text;
  absl::StatusOr<LiveState> back = ParseLiveState(text);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->moves.size(), 1u);
  EXPECT_TRUE(back->moves[0].server_hash);
  std::string wrong = text;
  wrong.replace(wrong.find("server_hash = true"), 18, "server_hash = 'yes'");
  absl::StatusOr<LiveState> refused = ParseLiveState(wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("server_hash is not true or false"),
            std::string::npos)
      << refused.status();
  absl::StatusOr<ShardMap> map = ApplyLiveState(config.map, *back);
  ASSERT_TRUE(map.ok()) << map.status();
  ASSERT_EQ(map->moves().size(), 1u);
  EXPECT_TRUE(map->moves()[0].server_hash);
  // And back from the map to a state.
  EXPECT_TRUE(LiveStateOf(*map).moves.at(0).server_hash);

  back->moves[0].server_hash = false;
  const std::string without = SerializeLiveState(*back);
  EXPECT_EQ(without.find("server_hash"), std::string::npos) << without;
  absl::StatusOr<LiveState> old = ParseLiveState(without);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_FALSE(old->moves[0].server_hash);
}

TEST(LiveStateTest, PromotionMakesTheReplicaPrimaryAndDropsTheRetired) {
  const Config config = MustParse();
  LiveState state = LiveStateOf(config.map);
  state.epoch = 2;
  state.shards["s1"] = {"b", {"primary"}};
  absl::StatusOr<ShardMap> map = ApplyLiveState(config.map, state);
  ASSERT_TRUE(map.ok()) << map.status();
  EXPECT_EQ(map->shard(0).dsn, "host=127.0.0.1 port=6102 dbname=app");
  ASSERT_EQ(map->shard(0).replicas.size(), 1u);
  EXPECT_EQ(map->shard(0).replicas[0].name, "a");
}

TEST(LiveStateTest, MovedSliceAndMoveAreInTheMap) {
  const Config config = MustParse();
  LiveState state = LiveStateOf(config.map);
  state.epoch = 3;
  state.distributions["events"].slices = {
      {"", "1000", "s1"}, {"1000", "1500", "s3"}, {"1500", "", "s2"}};
  state.moves.push_back({7, "events", "1000", "1500", "", "s2", "s3",
                         MovePhase::kCutOver});
  absl::StatusOr<ShardMap> map = ApplyLiveState(config.map, state);
  ASSERT_TRUE(map.ok()) << map.status();
  absl::StatusOr<Placement> p = map->Place("events", Key::Integer(1200));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(map->shard(p->shard).name, "s3");
  ASSERT_EQ(map->moves().size(), 1u);
  const MovingSlice& m = map->moves()[0];
  EXPECT_EQ(map->shard(m.source).name, "s2");
  EXPECT_EQ(map->shard(m.destination).name, "s3");
  const Distribution& d = map->distributions()[m.distribution];
  EXPECT_TRUE(m.Contains(d, Key::Integer(1000), *p));
  EXPECT_FALSE(m.Contains(d, Key::Integer(1500), *p));
}

TEST(LiveStateTest, StateThatDoesNotFitTheConfigurationIsRefused) {
  const Config config = MustParse();
  LiveState gap = LiveStateOf(config.map);
  gap.distributions["events"].slices = {{"", "1000", "s1"},
                                        {"2000", "", "s2"}};
  absl::StatusOr<ShardMap> map = ApplyLiveState(config.map, gap);
  ASSERT_FALSE(map.ok());
  EXPECT_THAT(map.status().message(), HasSubstr("does not fit"));

  LiveState unknown = LiveStateOf(config.map);
  unknown.shards["s1"] = {"zz", {"primary"}};
  map = ApplyLiveState(config.map, unknown);
  ASSERT_FALSE(map.ok());
  EXPECT_THAT(map.status().message(), HasSubstr("'zz'"));

  EXPECT_FALSE(ParseLiveState("epoch = 0").ok());
  EXPECT_FALSE(ParseLiveState("not toml [").ok());
}

}  // namespace
}  // namespace shardkit::internal
