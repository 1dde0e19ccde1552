// Read/write splitting against real streaming replication on loopback: 2
// shards, each a primary with 2 replicas. Which server answered is told by
// its port (current_setting('port')).

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/read_balancer.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"
#include "shardkit/health.h"
#include "tests/integration/test_cluster.h"

namespace shardkit::testing {
namespace {

// Routed to shard s1 (index 0): a statement naming no table runs on the
// first shard.
constexpr char kPort[] = "SELECT current_setting('port')";

class ReadSplitTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<TestCluster>> started =
        TestCluster::StartWithReplicas(2, 2);
    ASSERT_TRUE(started.ok()) << started.status();
    servers_ = started->release();
    for (int shard = 0; shard < 2; ++shard) {
      ASSERT_TRUE(servers_
                      ->Query(shard,
                              "CREATE TABLE users (id int8 PRIMARY KEY, "
                              "name text)")
                      .ok());
    }
    // A replica within max_lag may not have replayed it yet: the first
    // reads would fail there.
    for (int shard = 0; shard < 2; ++shard) {
      for (int r = 0; r < 2; ++r) {
        ASSERT_TRUE(Eventually([&] {
          return servers_->QueryReplica(shard, r, "SELECT 1 FROM users").ok();
        }));
      }
    }
  }

  static void TearDownTestSuite() {
    delete servers_;
    servers_ = nullptr;
  }

  void SetUp() override {
    if (servers_ == nullptr) GTEST_SKIP() << "the cluster did not start";
    absl::StatusOr<std::unique_ptr<Cluster>> opened =
        Cluster::OpenFile(servers_->config_path());
    ASSERT_TRUE(opened.ok()) << opened.status();
    cluster_ = *std::move(opened);
    for (int shard = 0; shard < 2; ++shard) {
      for (key_on_[shard] = 1;; ++key_on_[shard]) {
        absl::StatusOr<Result> r = cluster_->Execute(
            absl::StrCat("SELECT 1 FROM users WHERE id = ", key_on_[shard]));
        ASSERT_TRUE(r.ok()) << r.status();
        if (r->shards == std::vector<ShardId>{static_cast<ShardId>(shard)}) {
          break;
        }
      }
      absl::Status inserted =
          cluster_
              ->Execute(absl::StrCat("INSERT INTO users (id, name) VALUES (",
                                     key_on_[shard],
                                     ", 'row') ON CONFLICT DO NOTHING"))
              .status();
      ASSERT_TRUE(inserted.ok()) << inserted;
    }
    ASSERT_TRUE(ReplicasServing(0));
    ASSERT_TRUE(ReplicasServing(1));
  }

  static std::string PrimaryPort(int shard) {
    return absl::StrCat(servers_->cluster().instances[shard].port);
  }
  static std::string ReplicaPort(int shard, int replica) {
    return absl::StrCat(
        servers_->cluster().instances[shard].replicas[replica].port);
  }

  // The first value of the result of `sql` through the cluster, "" for
  // none, or the error.
  std::string Scalar(const std::string& sql, ExecuteOptions options = {}) {
    absl::StatusOr<Result> r = cluster_->Execute(sql, {}, options);
    if (!r.ok()) return absl::StrCat("error: ", r.status().ToString());
    if (r->rows.empty() || r->rows[0].empty() || !r->rows[0][0]) return "";
    return *r->rows[0][0];
  }

  // A read of the row with key key_on_[shard], on shard `shard`, that
  // returns the port of the server that answers it.
  std::string PortQuery(int shard) const {
    return absl::StrCat("SELECT current_setting('port') FROM users WHERE id = ",
                        key_on_[shard]);
  }

  // Whether reads of `shard` soon reach its two replicas, and only them.
  bool ReplicasServing(int shard) {
    return Eventually([&] {
      std::map<std::string, int> seen;
      for (int i = 0; i < 4; ++i) ++seen[Scalar(PortQuery(shard))];
      return seen.size() == 2 && seen.count(ReplicaPort(shard, 0)) == 1 &&
             seen.count(ReplicaPort(shard, 1)) == 1;
    });
  }

  static TestCluster* servers_;
  std::unique_ptr<Cluster> cluster_;
  int key_on_[2] = {0, 0};
};

TestCluster* ReadSplitTest::servers_ = nullptr;

TEST_F(ReadSplitTest, ReadsAreSpreadOverTheReplicasByWeight) {
  std::map<std::string, int> seen;
  for (int i = 0; i < 20; ++i) ++seen[Scalar(kPort)];
  // Equal weights: smooth weighted round-robin alternates exactly.
  EXPECT_EQ(seen, (std::map<std::string, int>{{ReplicaPort(0, 0), 10},
                                              {ReplicaPort(0, 1), 10}}));
  EXPECT_EQ(Scalar("SELECT pg_is_in_recovery()"), "t");
}

TEST_F(ReadSplitTest, WritesLockingReadsAndTransactionsUseThePrimary) {
  EXPECT_EQ(Scalar(absl::StrCat("UPDATE users SET name = 'w' WHERE id = ",
                                key_on_[1],
                                " RETURNING current_setting('port')")),
            PrimaryPort(1));
  EXPECT_EQ(Scalar(absl::StrCat(PortQuery(1), " FOR UPDATE")),
            PrimaryPort(1));
  EXPECT_EQ(Scalar(absl::StrCat(PortQuery(0), " FOR SHARE")), PrimaryPort(0));
  EXPECT_EQ(Scalar("WITH w AS (DELETE FROM users WHERE id = -1 RETURNING id) "
                   "SELECT pg_is_in_recovery() FROM (SELECT 1) x "
                   "LEFT JOIN w ON true"),
            "f");
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  absl::StatusOr<Result> in_txn = (*txn)->Execute(kPort);
  ASSERT_TRUE(in_txn.ok()) << in_txn.status();
  EXPECT_EQ(in_txn->rows[0][0], PrimaryPort(0));
  ASSERT_TRUE((*txn)->Commit().ok());
}

TEST_F(ReadSplitTest, ThePrimaryCanBeForced) {
  EXPECT_EQ(Scalar(kPort, ExecuteOptions{.primary = true}), PrimaryPort(0));
  EXPECT_EQ(Scalar(absl::StrCat("/* shardkit:primary */ ", kPort)),
            PrimaryPort(0));
  EXPECT_EQ(Scalar(absl::StrCat(kPort, " /* shardkit:primary */")),
            PrimaryPort(0));
  absl::StatusOr<RowStream> stream =
      cluster_->Stream(kPort, {}, ExecuteOptions{.primary = true});
  ASSERT_TRUE(stream.ok()) << stream.status();
  Row row;
  ASSERT_TRUE(stream->Next(&row).value_or(false));
  EXPECT_EQ(row[0], PrimaryPort(0));
}

TEST_F(ReadSplitTest, StreamsReadFromReplicas) {
  std::map<std::string, int> seen;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<RowStream> stream = cluster_->Stream(kPort);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Row row;
    ASSERT_TRUE(stream->Next(&row).value_or(false));
    ++seen[row[0].value_or("NULL")];
  }
  EXPECT_EQ(seen, (std::map<std::string, int>{{ReplicaPort(0, 0), 2},
                                              {ReplicaPort(0, 1), 2}}));
  // An aggregate across shards, combined on a replica.
  absl::StatusOr<Result> count =
      cluster_->Execute("SELECT count(*), bool_and(pg_is_in_recovery()) "
                        "FROM users");
  ASSERT_TRUE(count.ok()) << count.status();
}

// Replicas stopped behind the monitor's back: no read fails; the first one
// finds a replica down, takes it out and runs on what is left.
TEST_F(ReadSplitTest, StoppedReplicasFallBackToThePrimaryWithoutErrors) {
  ASSERT_TRUE(servers_->StopReplica(0, 0).ok());
  for (int i = 0; i < 6; ++i) {
    EXPECT_THAT(Scalar(kPort), ::testing::AnyOf(ReplicaPort(0, 1),
                                                PrimaryPort(0)));
  }
  ASSERT_TRUE(servers_->StopReplica(0, 1).ok());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(Scalar(kPort), PrimaryPort(0));
  // Reads of the other shard still go to its replicas.
  EXPECT_TRUE(ReplicasServing(1));

  ASSERT_TRUE(servers_->StartReplica(0, 0).ok());
  ASSERT_TRUE(servers_->StartReplica(0, 1).ok());
  EXPECT_TRUE(ReplicasServing(0));
}

// Replay paused on both replicas of s1 while the primary writes: once
// their lag passes max_lag (1 s by default) the monitor takes them out,
// and reads see the primary's latest rows.
TEST_F(ReadSplitTest, ALaggingReplicaTakesNoReads) {
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(
        servers_->QueryReplica(0, r, "SELECT pg_wal_replay_pause()").ok());
  }
  for (const char* name : {"late", "later"}) {
    ASSERT_TRUE(servers_
                    ->Query(0, absl::StrCat("UPDATE users SET name = '", name,
                                            "' WHERE id = ", key_on_[0]))
                    .ok());
    absl::SleepFor(absl::Milliseconds(1200));
  }
  internal::ReadBalancer* reads = internal::ReadBalancerOf(*cluster_);
  ASSERT_NE(reads, nullptr);
  // A round that began before the writes may end first: wait for the next.
  const int64_t round = reads->rounds();
  ASSERT_TRUE(reads->WaitForRoundForTest(round + 1, absl::Seconds(10)));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Scalar(PortQuery(0)), PrimaryPort(0));
  EXPECT_EQ(Scalar(absl::StrCat("SELECT name FROM users WHERE id = ",
                                key_on_[0])),
            "later");
  // The other shard's replicas are not affected.
  EXPECT_TRUE(ReplicasServing(1));
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(
        servers_->QueryReplica(0, r, "SELECT pg_wal_replay_resume()").ok());
  }
  EXPECT_TRUE(ReplicasServing(0));
}

// Read-your-writes: each read after a write of the same session sees it,
// however far the replicas are behind; once they have replayed it, the
// session's reads go to them again.
TEST_F(ReadSplitTest, ReadYourWrites) {
  WritePositions session;
  const ExecuteOptions options{.read_your_writes = &session};
  for (int i = 0; i < 50; ++i) {
    const std::string name = absl::StrCat("v", i);
    absl::StatusOr<Result> wrote = cluster_->Execute(
        absl::StrCat("UPDATE users SET name = '", name, "' WHERE id = ",
                     key_on_[i % 2]),
        {}, options);
    ASSERT_TRUE(wrote.ok()) << wrote.status();
    ASSERT_EQ(Scalar(absl::StrCat("SELECT name FROM users WHERE id = ",
                                  key_on_[i % 2]),
                     options),
              name);
  }
  EXPECT_TRUE(session.Of(0).has_value());
  EXPECT_TRUE(session.Of(1).has_value());
  EXPECT_TRUE(Eventually([&] {
    return Scalar(PortQuery(0), options) != PrimaryPort(0) &&
           Scalar(PortQuery(1), options) != PrimaryPort(1);
  }));
}

// Read-your-writes after a Transaction, on one shard and across both (two-
// phase commit). Replay is paused on every replica, and a cluster that
// allows an hour of lag keeps reading from them: a read without the
// session goes to a replica, which lacks the transaction's rows; with it,
// to the primary, which has them.
TEST_F(ReadSplitTest, ReadYourWritesAfterATransaction) {
  const std::string config = servers_->WriteConfig("patient.toml", R"(
[replicas]
max_lag = "1h"

[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]

[tables.users]
distribution = "users"
key = "id"
)");
  absl::StatusOr<std::unique_ptr<Cluster>> opened = Cluster::OpenFile(config);
  ASSERT_TRUE(opened.ok()) << opened.status();
  Cluster& patient = **opened;
  // Keys that no test wrote yet: two on s1, one on s2.
  std::vector<int64_t> keys[2];
  for (int64_t id = 900000; keys[0].size() < 2 || keys[1].empty(); ++id) {
    absl::StatusOr<Placement> where = patient.map()->Place("users", Key::Integer(id));
    ASSERT_TRUE(where.ok()) << where.status();
    if (keys[where->shard].size() < 2) keys[where->shard].push_back(id);
  }
  auto read = [&](int shard, int64_t id, WritePositions* session) {
    absl::StatusOr<Result> r = patient.Execute(
        absl::StrCat("SELECT current_setting('port'), count(*) FROM users "
                     "WHERE id = ", id),
        {}, ExecuteOptions{.read_your_writes = session});
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || r->rows.size() != 1) return std::string("no answer");
    EXPECT_EQ(r->shards, std::vector<ShardId>{static_cast<ShardId>(shard)});
    return absl::StrCat(r->rows[0][0].value_or("NULL"), " ",
                        r->rows[0][1].value_or("NULL"));
  };
  // Until the monitor has found the replicas fresh, reads go to primaries.
  for (int shard = 0; shard < 2; ++shard) {
    ASSERT_TRUE(Eventually([&] {
      return read(shard, keys[shard][0], nullptr) !=
             absl::StrCat(PrimaryPort(shard), " 0");
    }));
  }
  absl::Cleanup resume = [] {
    for (int shard = 0; shard < 2; ++shard) {
      for (int r = 0; r < 2; ++r) {
        EXPECT_TRUE(servers_
                        ->QueryReplica(shard, r,
                                       "SELECT pg_wal_replay_resume()")
                        .ok());
      }
    }
  };
  for (int shard = 0; shard < 2; ++shard) {
    for (int r = 0; r < 2; ++r) {
      ASSERT_TRUE(servers_->QueryReplica(shard, r, "SELECT pg_wal_replay_pause()")
                      .ok());
    }
  }
  const std::vector<std::string> on_a_replica[2] = {
      {absl::StrCat(ReplicaPort(0, 0), " 0"), absl::StrCat(ReplicaPort(0, 1), " 0")},
      {absl::StrCat(ReplicaPort(1, 0), " 0"), absl::StrCat(ReplicaPort(1, 1), " 0")}};

  WritePositions session;
  auto insert = [&](Transaction& txn, int64_t id) {
    absl::StatusOr<Result> r = txn.Execute(
        absl::StrCat("INSERT INTO users (id, name) VALUES (", id, ", 'txn')"));
    EXPECT_TRUE(r.ok()) << r.status();
  };
  // One shard: a plain COMMIT.
  {
    absl::StatusOr<std::unique_ptr<Transaction>> txn =
        patient.Begin(TransactionOptions{.read_your_writes = &session});
    ASSERT_TRUE(txn.ok()) << txn.status();
    insert(**txn, keys[0][0]);
    const absl::Status committed = (*txn)->Commit();
    ASSERT_TRUE(committed.ok()) << committed;
  }
  EXPECT_TRUE(session.Of(0).has_value());
  EXPECT_FALSE(session.Of(1).has_value());
  EXPECT_EQ(read(0, keys[0][0], &session), absl::StrCat(PrimaryPort(0), " 1"));
  EXPECT_THAT(read(0, keys[0][0], nullptr),
              ::testing::AnyOfArray(on_a_replica[0]));
  // Both shards: two-phase commit.
  {
    absl::StatusOr<std::unique_ptr<Transaction>> txn =
        patient.Begin(TransactionOptions{.read_your_writes = &session});
    ASSERT_TRUE(txn.ok()) << txn.status();
    insert(**txn, keys[0][1]);
    insert(**txn, keys[1][0]);
    EXPECT_EQ((*txn)->participants(), (std::vector<ShardId>{0, 1}));
    const absl::Status committed = (*txn)->Commit();
    ASSERT_TRUE(committed.ok()) << committed;
  }
  EXPECT_TRUE(session.Of(1).has_value());
  EXPECT_EQ(read(0, keys[0][1], &session), absl::StrCat(PrimaryPort(0), " 1"));
  EXPECT_EQ(read(1, keys[1][0], &session), absl::StrCat(PrimaryPort(1), " 1"));
  EXPECT_THAT(read(0, keys[0][1], nullptr),
              ::testing::AnyOfArray(on_a_replica[0]));
  EXPECT_THAT(read(1, keys[1][0], nullptr),
              ::testing::AnyOfArray(on_a_replica[1]));
  // A transaction begun without the session records nothing in it.
  const std::optional<uint64_t> before = session.Of(1);
  {
    absl::StatusOr<std::unique_ptr<Transaction>> txn = patient.Begin();
    ASSERT_TRUE(txn.ok()) << txn.status();
    ASSERT_TRUE((*txn)
                    ->Execute(absl::StrCat("UPDATE users SET name = 'again' "
                                           "WHERE id = ", keys[1][0]))
                    .ok());
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  EXPECT_EQ(session.Of(1), before);
}

// Cluster::Health reports what the monitor found: every backend up with
// its role, then a replica whose replay is paused as lagging, and a
// stopped one as down with why.
TEST_F(ReadSplitTest, HealthReportsEachBackend) {
  auto backend = [](const ClusterHealth& health, int shard,
                    const std::string& name) -> const BackendHealth* {
    for (const BackendHealth& b : health.shards[shard].backends) {
      if (b.name == name) return &b;
    }
    return nullptr;
  };
  ClusterHealth health;
  ASSERT_TRUE(Eventually([&] {
    health = cluster_->Health();
    for (const ShardHealth& shard : health.shards) {
      for (const BackendHealth& b : shard.backends) {
        if (b.state != BackendState::kUp) return false;
        if (b.role == BackendRole::kReplica && !b.takes_reads) return false;
      }
    }
    return health.shards.size() == 2;
  }));
  EXPECT_EQ(health.epoch, cluster_->map()->epoch());
  for (int shard = 0; shard < 2; ++shard) {
    const ShardHealth& s = health.shards[shard];
    EXPECT_EQ(s.name, absl::StrCat("s", shard + 1));
    ASSERT_EQ(s.backends.size(), 3u);
    EXPECT_EQ(s.backends[0].name, "primary");
    EXPECT_EQ(s.backends[0].role, BackendRole::kPrimary);
    EXPECT_EQ(s.backends[0].in_recovery, false);
    EXPECT_FALSE(s.backends[0].takes_reads);
    EXPECT_THAT(s.backends[0].masked_dsn,
                ::testing::HasSubstr(absl::StrCat("port=", PrimaryPort(shard))));
    for (int r = 0; r < 2; ++r) {
      const BackendHealth& b = s.backends[r + 1];
      EXPECT_EQ(b.name, absl::StrCat("r", r + 1));
      EXPECT_EQ(b.role, BackendRole::kReplica);
      EXPECT_EQ(b.in_recovery, true);
      EXPECT_TRUE(b.error.ok()) << b.error;
      EXPECT_EQ(b.consecutive_failures, 0);
      ASSERT_TRUE(b.replay_lag.has_value());
      EXPECT_LE(*b.replay_lag, s.max_lag);
      EXPECT_TRUE(b.replay_lag_bytes.has_value());
      EXPECT_TRUE(b.latency.has_value());
      EXPECT_NE(b.probed_at, absl::InfinitePast());
      EXPECT_THAT(b.masked_dsn, ::testing::HasSubstr(
                                    absl::StrCat("port=", ReplicaPort(shard, r))));
    }
  }

  // s2's r1 paused while its primary writes: lagging once its lag passes
  // max_lag (1 s). s2's r2 stopped: down.
  absl::Cleanup restore = [] {
    EXPECT_TRUE(servers_->StartReplica(1, 1).ok());
    EXPECT_TRUE(
        servers_->QueryReplica(1, 0, "SELECT pg_wal_replay_resume()").ok());
  };
  ASSERT_TRUE(servers_->QueryReplica(1, 0, "SELECT pg_wal_replay_pause()").ok());
  ASSERT_TRUE(servers_->StopReplica(1, 1).ok());
  ASSERT_TRUE(servers_
                  ->Query(1, absl::StrCat("UPDATE users SET name = 'health' "
                                          "WHERE id = ", key_on_[1]))
                  .ok());
  ASSERT_TRUE(Eventually([&] {
    health = cluster_->Health();
    const BackendHealth* r1 = backend(health, 1, "r1");
    const BackendHealth* r2 = backend(health, 1, "r2");
    // failure_threshold (3 by default) probes in a row before it is
    // taken out.
    return r1 != nullptr && r1->state == BackendState::kLagging &&
           r2 != nullptr && r2->state == BackendState::kDown &&
           r2->consecutive_failures >= 3;
  })) << "s2 r1: " << BackendStateName(backend(health, 1, "r1")->state)
      << ", s2 r2: " << BackendStateName(backend(health, 1, "r2")->state);
  const BackendHealth& lagging = *backend(health, 1, "r1");
  EXPECT_TRUE(lagging.replay_paused);
  EXPECT_FALSE(lagging.takes_reads);
  ASSERT_TRUE(lagging.replay_lag.has_value());
  EXPECT_GT(*lagging.replay_lag, health.shards[1].max_lag);
  EXPECT_GT(lagging.replay_lag_bytes.value_or(0), 0u);
  const BackendHealth& down = *backend(health, 1, "r2");
  EXPECT_FALSE(down.error.ok());
  EXPECT_THAT(std::string(down.error.message()),
              ::testing::HasSubstr("shard s2 replica r2"));
  EXPECT_FALSE(down.takes_reads);
  EXPECT_FALSE(down.latency.has_value());
  // s1 is not affected.
  EXPECT_EQ(backend(health, 0, "r1")->state, BackendState::kUp);
  EXPECT_EQ(backend(health, 0, "r2")->state, BackendState::kUp);

  // Probed now, on the caller's thread: the same picture.
  const ClusterHealth now = cluster_->Health(HealthOptions{.probe_now = true});
  EXPECT_EQ(backend(now, 1, "r1")->state, BackendState::kLagging);
  EXPECT_EQ(backend(now, 1, "r2")->state, BackendState::kDown);
  EXPECT_EQ(backend(now, 1, "r2")->consecutive_failures, 1);
  EXPECT_EQ(backend(now, 0, "primary")->state, BackendState::kUp);
  EXPECT_TRUE(backend(now, 0, "primary")->latency.has_value());

  std::move(restore).Invoke();
  EXPECT_TRUE(ReplicasServing(1));
}

}  // namespace
}  // namespace shardkit::testing
