// Failover on real streaming replication: a primary killed with SIGKILL
// under writes, two Clusters racing to promote, shardctl failover and
// switchover. Each test runs its own dev cluster: one shard, two replicas,
// a catalog; with synchronous replication (ANY 1) where no acknowledged
// write may be lost.

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/live_map.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit::testing {
namespace {

using ::testing::HasSubstr;

std::string PrimaryDsn(const Cluster& cluster) {
  return internal::LiveMapOf(cluster).current()->shard(0).dsn;
}

// The replica (0 or 1) that is the shard's primary now, or -1.
int PromotedReplica(const TestCluster& servers, const Cluster& cluster) {
  const std::string dsn = PrimaryDsn(cluster);
  for (int r = 0; r < 2; ++r) {
    if (servers.replica_dsn(0, r) == dsn) return r;
  }
  return -1;
}

std::set<int64_t> IdsOn(absl::StatusOr<std::vector<std::vector<std::string>>> rows) {
  std::set<int64_t> ids;
  EXPECT_TRUE(rows.ok()) << rows.status();
  if (!rows.ok()) return ids;
  for (const auto& row : *rows) {
    int64_t id = 0;
    if (absl::SimpleAtoi(row[0], &id)) ids.insert(id);
  }
  return ids;
}

// The one value of a one-row result, or the error.
std::string Scalar(absl::StatusOr<std::vector<std::vector<std::string>>> rows) {
  if (!rows.ok()) return std::string(rows.status().message());
  if (rows->size() != 1 || (*rows)[0].size() != 1) return "not one value";
  return (*rows)[0][0];
}

class FailoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<TestCluster>> started =
        TestCluster::StartWithReplicas(1, 2, {}, Synchronous());
    ASSERT_TRUE(started.ok()) << started.status();
    servers_ = *std::move(started);
    ASSERT_TRUE(servers_
                    ->Query(0, "CREATE TABLE users (id int8 PRIMARY KEY, "
                               "name text)")
                    .ok());
    // Replicated before any primary is killed: without synchronous
    // replication a kill may otherwise lose it, as it would any write.
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(Eventually([&] {
        return servers_->QueryReplica(0, r, "SELECT 1 FROM users").ok();
      }));
    }
  }

  // Synchronous replication makes a new primary wait for a standby: only
  // where no write may be lost, as the other tests retire replicas.
  virtual bool Synchronous() const { return false; }

  std::unique_ptr<Cluster> Open() {
    absl::StatusOr<std::unique_ptr<Cluster>> cluster =
        Cluster::OpenFile(servers_->config_path());
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    return cluster.ok() ? *std::move(cluster) : nullptr;
  }

  std::unique_ptr<TestCluster> servers_;
};

class SynchronousFailoverTest : public FailoverTest {
 protected:
  bool Synchronous() const override { return true; }
};

// Writes through the library while the primary is killed: writes resume
// on a promoted replica, every acknowledged write is there (synchronous
// replication), the other replica follows the new primary, and once the
// old primary is started again neither this cluster nor one opened afresh
// writes to it.
TEST_F(SynchronousFailoverTest,
       KilledPrimaryUnderWritesFailsOverLosingNoAcknowledgedWrite) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  absl::Mutex mu;
  std::vector<int64_t> acknowledged;
  int64_t acknowledged_after_kill = 0;
  std::atomic<bool> killed{false};
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    for (int64_t id = 1; !stop.load(); ++id) {
      absl::StatusOr<Result> written = cluster->Execute(
          "INSERT INTO users (id, name) VALUES ($1, 'w')", {Param(absl::StrCat(id))});
      if (!written.ok()) continue;  // may have run: never retried
      absl::MutexLock lock(&mu);
      acknowledged.push_back(id);
      if (killed.load()) ++acknowledged_after_kill;
    }
  });
  auto count = [&] {
    absl::MutexLock lock(&mu);
    return acknowledged.size();
  };
  if (!Eventually([&] { return count() >= 50; })) {
    stop = true;
    writer.join();
    FAIL() << "the writes do not succeed before the failover";
  }
  ASSERT_TRUE(servers_->KillShard(0).ok());
  killed = true;
  const bool resumed = Eventually([&] {
    absl::MutexLock lock(&mu);
    return acknowledged_after_kill >= 50;
  }, absl::Seconds(60));
  stop = true;
  writer.join();
  ASSERT_TRUE(resumed) << "writes did not resume after the primary died";

  const int promoted = PromotedReplica(*servers_, *cluster);
  ASSERT_GE(promoted, 0) << PrimaryDsn(*cluster);
  EXPECT_GT(internal::LiveMapOf(*cluster).current()->epoch(), 1u);
  const std::set<int64_t> on_new_primary =
      IdsOn(servers_->QueryReplica(0, promoted, "SELECT id FROM users"));
  std::vector<int64_t> missing;
  {
    absl::MutexLock lock(&mu);
    for (int64_t id : acknowledged) {
      if (on_new_primary.count(id) == 0) missing.push_back(id);
    }
  }
  EXPECT_TRUE(missing.empty()) << missing.size() << " acknowledged writes lost";
  EXPECT_EQ(Scalar(servers_->QueryReplica(0, promoted,
                                          "SELECT pg_is_in_recovery()")),
            "f");

  // The other replica streams from the new primary.
  const int other = 1 - promoted;
  EXPECT_TRUE(Eventually([&] {
    return IdsOn(servers_->QueryReplica(0, other, "SELECT id FROM users")) ==
           on_new_primary;
  }));

  // The old primary comes back (crash recovery) while the clusters run.
  EXPECT_NE(PrimaryDsn(*cluster), servers_->dsn(0));
  const absl::Status restarted = servers_->StartShard(0);
  ASSERT_TRUE(restarted.ok()) << restarted;
  ASSERT_TRUE(Eventually([&] { return servers_->Query(0, "SELECT 1").ok(); }))
      << servers_->Query(0, "SELECT 1").status();
  ASSERT_EQ(Scalar(servers_->Query(0, "SELECT pg_is_in_recovery()")), "f");
  const std::set<int64_t> on_old_primary =
      IdsOn(servers_->Query(0, "SELECT id FROM users"));

  // Writes after the failover, and from a cluster opened afresh from the
  // same configuration (whose dsn is the old primary's), go to the new
  // primary, never to the old one.
  for (int64_t id = 1000000; id < 1000020; ++id) {
    ASSERT_TRUE(cluster->Execute("INSERT INTO users (id, name) VALUES ($1, 'after')",
                                 {Param(absl::StrCat(id))})
                    .ok());
  }
  std::unique_ptr<Cluster> reopened = Open();
  ASSERT_NE(reopened, nullptr);
  EXPECT_EQ(PrimaryDsn(*reopened), PrimaryDsn(*cluster));
  ASSERT_TRUE(reopened->Execute("INSERT INTO users (id, name) VALUES (2000000, 'new')").ok());
  EXPECT_EQ(IdsOn(servers_->Query(0, "SELECT id FROM users")), on_old_primary);
  // Its health report lists the old primary as retired and never probes
  // it, though it is up again.
  const ClusterHealth health =
      reopened->Health(HealthOptions{.probe_now = true});
  ASSERT_EQ(health.shards.size(), 1u);
  ASSERT_EQ(health.shards[0].backends.size(), 3u);
  const BackendHealth& now_primary = health.shards[0].backends[0];
  EXPECT_EQ(now_primary.name, absl::StrCat("r", promoted + 1));
  EXPECT_EQ(now_primary.role, BackendRole::kPrimary);
  EXPECT_EQ(now_primary.state, BackendState::kUp);
  EXPECT_EQ(now_primary.in_recovery, false);
  const BackendHealth& retired = health.shards[0].backends[2];
  EXPECT_EQ(retired.name, "primary");
  EXPECT_EQ(retired.role, BackendRole::kRetired);
  EXPECT_EQ(retired.state, BackendState::kUnknown);
  EXPECT_FALSE(retired.latency.has_value());
  EXPECT_EQ(Scalar(servers_->Query(
                0, "SELECT count(*) FROM users WHERE id >= 1000000")),
            "0");
  EXPECT_EQ(IdsOn(servers_->QueryReplica(
                0, promoted, "SELECT id FROM users WHERE id >= 1000000"))
                .size(),
            21u);
}

// Two Clusters watch the same shard when its primary dies: the lease lets
// one promote; both end up on the same new primary and the other replica
// stays a replica.
TEST_F(FailoverTest, TwoMonitorsPromoteOneReplica) {
  std::unique_ptr<Cluster> a = Open();
  std::unique_ptr<Cluster> b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(servers_->KillShard(0).ok());
  ASSERT_TRUE(Eventually([&] {
    return PromotedReplica(*servers_, *a) >= 0 &&
           PromotedReplica(*servers_, *b) >= 0;
  }, absl::Seconds(60)));
  const int promoted = PromotedReplica(*servers_, *a);
  EXPECT_EQ(PromotedReplica(*servers_, *b), promoted);
  // Long enough for a second, wrong promotion to have happened.
  absl::SleepFor(absl::Seconds(3));
  EXPECT_EQ(Scalar(servers_->QueryReplica(0, 1 - promoted,
                                          "SELECT pg_is_in_recovery()")),
            "t");
  absl::StatusOr<Result> published = internal::LiveMapOf(*a).catalog()->Run(
      "SELECT count(*) FROM shardkit.live_maps WHERE reason LIKE 'automatic%'");
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(published->rows[0][0], "1");
  absl::StatusOr<Result> via_a =
      a->Execute("INSERT INTO users (id, name) VALUES (1, 'a')");
  EXPECT_TRUE(via_a.ok()) << via_a.status();
  absl::StatusOr<Result> via_b =
      b->Execute("INSERT INTO users (id, name) VALUES (2, 'b')");
  EXPECT_TRUE(via_b.ok()) << via_b.status();
}

// shardctl failover and switchover as a user runs them.
TEST_F(FailoverTest, ShardctlFailoverAndSwitchover) {
  const std::string config = servers_->config_path();
  // Refusals first: nothing changes.
  CommandOutput unknown = RunCommand(
      {SHARDCTL_PATH, "failover", "-c", config, "s1", "--to", "r9"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no replica named 'r9'"));
  ASSERT_TRUE(servers_->StopReplica(0, 1).ok());
  CommandOutput down = RunCommand(
      {SHARDCTL_PATH, "failover", "-c", config, "s1", "--to", "r2"});
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_THAT(down.err, HasSubstr("replica r2 of shard s1: it is down"));
  ASSERT_TRUE(servers_->StartReplica(0, 1).ok());
  const std::string no_catalog = servers_->WriteConfig("plain.toml", "");
  CommandOutput plain =
      RunCommand({SHARDCTL_PATH, "failover", "-c", no_catalog, "s1"});
  EXPECT_EQ(plain.exit_code, 1);
  EXPECT_THAT(plain.err, HasSubstr("has no [catalog]"));

  // Failover with the primary up: r1 promoted, the old primary fenced.
  CommandOutput failover = RunCommand({SHARDCTL_PATH, "failover", "-c", config,
                                       "s1", "--to", "r1", "--format", "json"});
  ASSERT_EQ(failover.exit_code, 0) << failover.err;
  EXPECT_THAT(failover.out, HasSubstr("\"new_primary\":\"r1\""));
  EXPECT_THAT(failover.out, HasSubstr("\"old_primary_fenced\":true"));
  EXPECT_THAT(failover.out, HasSubstr("\"repointed\":[\"r2\"]"));
  EXPECT_EQ(Scalar(servers_->Query(0, "SHOW default_transaction_read_only")),
            "on");
  CommandOutput health =
      RunCommand({SHARDCTL_PATH, "health", "-c", config, "--format", "json"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_THAT(health.out,
              HasSubstr("\"backend\":\"r1\",\"configured_role\":\"primary\""));
  {
    std::unique_ptr<Cluster> cluster = Open();
    ASSERT_NE(cluster, nullptr);
    ASSERT_TRUE(cluster->Execute("INSERT INTO users (id, name) VALUES (1, 'one')").ok());
    EXPECT_EQ(IdsOn(servers_->QueryReplica(0, 0, "SELECT id FROM users")),
              std::set<int64_t>{1});
  }

  // Switchover to r2 (which follows r1 now): no write lost.
  CommandOutput switchover = RunCommand(
      {SHARDCTL_PATH, "switchover", "-c", config, "s1", "--to", "r2"});
  ASSERT_EQ(switchover.exit_code, 0) << switchover.err;
  EXPECT_THAT(switchover.out, HasSubstr("r2 is the primary now (was r1)"));
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(cluster->Execute("INSERT INTO users (id, name) VALUES (2, 'two')").ok());
  EXPECT_EQ(IdsOn(servers_->QueryReplica(0, 1, "SELECT id FROM users")),
            (std::set<int64_t>{1, 2}));
  // Nothing is left to promote: r1 is retired, the primary too.
  CommandOutput none =
      RunCommand({SHARDCTL_PATH, "switchover", "-c", config, "s1"});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_THAT(none.err, HasSubstr("has no replica up and in recovery"));
}

}  // namespace
}  // namespace shardkit::testing
