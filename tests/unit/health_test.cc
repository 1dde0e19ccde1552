#include "router/health.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "shardkit/config.h"

namespace shardkit::internal {
namespace {

TEST(LsnTest, ParsesAndFormatsWhatPostgresPrints) {
  struct Case {
    std::string text;
    uint64_t value;
  };
  for (const Case& c : std::vector<Case>{{"0/0", 0},
                                         {"0/3001130", 0x3001130},
                                         {"16/B374D848", 0x16B374D848},
                                         {"FFFFFFFF/FFFFFFFF", UINT64_MAX}}) {
    SCOPED_TRACE(c.text);
    EXPECT_EQ(ParseLsn(c.text), c.value);
    EXPECT_EQ(FormatLsn(c.value), c.text);
  }
  EXPECT_EQ(ParseLsn("16/b374d848"), 0x16B374D848u);
  for (const char* bad : {"", "0", "/0", "0/", "1/2/3", "123456789/0",
                          "0/123456789", "G/0", "-1/0", " 0/0"}) {
    SCOPED_TRACE(bad);
    EXPECT_EQ(ParseLsn(bad), std::nullopt);
  }
}

TEST(BackendsOfTest, EachShardsPrimaryThenItsReplicas) {
  absl::StatusOr<Config> config = ParseConfig(R"([shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
replicas = [ { dsn = "host=127.0.0.1 port=6101 dbname=app" },
             { dsn = "host=127.0.0.1 port=6102 dbname=app", name = "east" } ]
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
)",
                                              "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  std::vector<ProbeTarget> targets = BackendsOf(config->map);
  ASSERT_EQ(targets.size(), 4u);
  std::vector<std::string> names;
  for (const ProbeTarget& t : targets) {
    names.push_back(t.shard_name + "/" + t.backend +
                    (t.configured_primary ? "*" : ""));
  }
  EXPECT_THAT(names, ::testing::ElementsAre("s1/primary*", "s1/r1", "s1/east",
                                            "s2/primary*"));
  EXPECT_EQ(targets[2].dsn, "host=127.0.0.1 port=6102 dbname=app");
  EXPECT_EQ(targets[3].shard, 1u);
}

BackendHealth Primary(std::optional<uint64_t> lsn) {
  BackendHealth b;
  b.target.backend = "primary";
  b.target.configured_primary = true;
  b.role = BackendRole::kPrimary;
  b.lsn = lsn;
  return b;
}

BackendHealth Replica(uint64_t replay, std::optional<uint64_t> receive,
                      std::optional<absl::Duration> since_last_replay) {
  BackendHealth b;
  b.target.backend = "r1";
  b.role = BackendRole::kReplica;
  b.lsn = replay;
  b.receive_lsn = receive;
  b.since_last_replay = since_last_replay;
  return b;
}

struct LagCase {
  std::string name;
  std::vector<BackendHealth> backends;  // [0]: the one whose lag is checked
  std::optional<uint64_t> lag_bytes;
  std::optional<absl::Duration> lag;
};

void PrintTo(const LagCase& c, std::ostream* os) { *os << c.name; }

class ComputeReplicaLagTest : public ::testing::TestWithParam<LagCase> {};

TEST_P(ComputeReplicaLagTest, AgainstTheShardsPrimary) {
  std::vector<BackendHealth> backends = GetParam().backends;
  std::vector<BackendHealth*> pointers;
  for (BackendHealth& b : backends) pointers.push_back(&b);
  ComputeReplicaLag(pointers);
  EXPECT_EQ(backends[0].lag_bytes, GetParam().lag_bytes);
  EXPECT_EQ(backends[0].lag, GetParam().lag);
}

BackendHealth Down(BackendHealth b) {
  b.status = absl::UnavailableError("down");
  return b;
}

INSTANTIATE_TEST_SUITE_P(
    Health, ComputeReplicaLagTest,
    ::testing::Values(
        // Caught up: an idle primary's old last commit is no lag.
        LagCase{"CaughtUp",
                {Replica(1000, 1000, absl::Hours(1)), Primary(1000)},
                0,
                absl::ZeroDuration()},
        LagCase{"Behind",
                {Replica(1000, 1500, absl::Seconds(3)), Primary(4096)},
                3096,
                absl::Seconds(3)},
        // Ahead of the primary's position read a moment earlier.
        LagCase{"AheadOfAnEarlierRead",
                {Replica(5000, 5000, absl::Seconds(1)), Primary(4096)},
                0,
                absl::ZeroDuration()},
        LagCase{"BehindWithNoTransactionReplayed",
                {Replica(1000, 1000, std::nullopt), Primary(2000)},
                1000,
                std::nullopt},
        // Without the primary: caught up with what it received, or not.
        LagCase{"PrimaryDownReplayedAllReceived",
                {Replica(1000, 1000, absl::Seconds(9)), Down(Primary(2000))},
                std::nullopt,
                absl::ZeroDuration()},
        LagCase{"PrimaryDownReplayBehindReceive",
                {Replica(1000, 1200, absl::Seconds(9)), Down(Primary(2000))},
                std::nullopt,
                absl::Seconds(9)},
        // A configured primary in recovery is no reference; another backend
        // that reports itself primary (e.g. promoted) is.
        LagCase{"PromotedReplicaIsTheReference",
                {Replica(1000, 1000, absl::Seconds(2)),
                 [] {
                   BackendHealth b = Replica(900, 900, std::nullopt);
                   b.target.configured_primary = true;
                   return b;
                 }(),
                 [] {
                   BackendHealth b = Primary(1600);
                   b.target.configured_primary = false;
                   return b;
                 }()},
                600,
                absl::Seconds(2)},
        LagCase{"DownReplicaHasNone",
                {Down(Replica(1000, 1000, absl::Seconds(1))), Primary(2000)},
                std::nullopt,
                std::nullopt},
        LagCase{"APrimaryHasNone",
                {Primary(2000), Replica(1000, 1000, absl::Seconds(1))},
                std::nullopt,
                std::nullopt}),
    [](const ::testing::TestParamInfo<LagCase>& info) {
      return info.param.name;
    });

// Nothing listens on port 1 of the loopback: down at once, named, and the
// password never shown.
TEST(ProbeBackendsTest, AnUnreachableBackendIsDownWithItsName) {
  std::vector<ProbeTarget> targets = {
      ProbeTarget{0, "s1", "r2", false,
                  "host=127.0.0.1 port=1 dbname=app password=Sup3rSecret"}};
  std::vector<BackendHealth> health = ProbeBackends(targets, ProbeOptions{});
  ASSERT_EQ(health.size(), 1u);
  EXPECT_FALSE(health[0].up());
  EXPECT_EQ(health[0].status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(health[0].status.message()),
              ::testing::StartsWith("shard s1 replica r2 (password=******** "
                                    "dbname=app host=127.0.0.1 port=1) is "
                                    "unreachable: "));
  EXPECT_THAT(std::string(health[0].status.message()),
              ::testing::Not(::testing::HasSubstr("Sup3rSecret")));
  EXPECT_EQ(health[0].role, BackendRole::kUnknown);
  EXPECT_EQ(health[0].target.backend, "r2");
}

}  // namespace
}  // namespace shardkit::internal
