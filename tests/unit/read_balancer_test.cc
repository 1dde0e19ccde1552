#include "router/read_balancer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>

#include "shardkit/config.h"

namespace shardkit::internal {
namespace {

std::shared_ptr<const ShardMap> MapWithWeights() {
  absl::StatusOr<Config> config = ParseConfig(R"([shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
replicas = [ { dsn = "host=127.0.0.1 port=6101 dbname=app", weight = 5 },
             { dsn = "host=127.0.0.1 port=6102 dbname=app" },
             { dsn = "host=127.0.0.1 port=6103 dbname=app" } ]
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
)",
                                              "t.toml");
  EXPECT_TRUE(config.ok()) << config.status();
  return std::make_shared<const ShardMap>(config->map);
}

// The replicas picked for `n` reads of shard 0, as digits ('-' for the
// primary).
std::string Picks(ReadBalancer& reads, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    std::optional<size_t> r = reads.PickReplica(0);
    out += r ? static_cast<char>('0' + *r) : '-';
  }
  return out;
}

TEST(ReadBalancerTest, SmoothWeightedRoundRobin) {
  std::unique_ptr<ReadBalancer> reads =
      ReadBalancer::CreateForTest(MapWithWeights());
  for (size_t r = 0; r < 3; ++r) reads->SetUsableForTest(0, r, true);
  // Weights 5, 1, 1: nginx's sequence, interleaved, repeating every 7.
  EXPECT_EQ(Picks(*reads, 14), "00102000010200");
  EXPECT_EQ(reads->replica(0, 1).dsn, "host=127.0.0.1 port=6102 dbname=app");
}

TEST(ReadBalancerTest, UnusableReplicasAndShardsWithoutThemReadThePrimary) {
  std::unique_ptr<ReadBalancer> reads =
      ReadBalancer::CreateForTest(MapWithWeights());
  EXPECT_EQ(Picks(*reads, 3), "---");  // none probed yet
  reads->SetUsableForTest(0, 1, true);
  reads->SetUsableForTest(0, 2, true);
  EXPECT_EQ(Picks(*reads, 4), "1212");
  reads->MarkFailed(0, 1);
  EXPECT_EQ(Picks(*reads, 2), "22");
  reads->MarkFailed(0, 2);
  EXPECT_EQ(Picks(*reads, 2), "--");
  EXPECT_EQ(reads->PickReplica(1), std::nullopt);  // s2 has no replica
  EXPECT_EQ(reads->PickReplica(7), std::nullopt);  // no such shard
}

TEST(ReadBalancerTest, NoMonitorWithoutReplicas) {
  absl::StatusOr<Config> config = ParseConfig(R"([shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
)",
                                              "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(ReadBalancer::Start(std::make_shared<const ShardMap>(config->map),
                                ProbeOptions{}),
            nullptr);
}

}  // namespace
}  // namespace shardkit::internal
