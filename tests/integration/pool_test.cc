// Per-shard connection pools (router/pool.h) under the executor, against
// real PostgreSQL servers: reuse, the per-shard limit, what is never reused,
// idle expiry, a shard that restarts, and a pool that stays exhausted.
//
// One cluster of two shards serves the whole suite. Each test connects with
// an application_name of its own, so that pg_stat_activity shows exactly
// the backends that test's pools opened.

#include "router/pool.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/executor.h"
#include "shardkit/config.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using internal::ConnectionPools;
using internal::ExecOptions;
using internal::ShardPoolStats;
using internal::ShardTask;
using internal::TaskOutcome;
using ::testing::HasSubstr;
using testing::Eventually;
using testing::Session;

constexpr int kShards = 2;

PoolSettings Settings(int max_connections,
                      absl::Duration idle_timeout = absl::Seconds(60)) {
  PoolSettings settings;
  settings.max_connections_per_shard = max_connections;
  settings.idle_timeout = idle_timeout;
  return settings;
}

// Executor options over `pools`, with bounds far beyond what the tests
// need unless a test sets them.
ExecOptions Options(ConnectionPools& pools) {
  ExecOptions options;
  options.pools = &pools;
  options.connect_timeout = absl::Seconds(60);
  options.statement_timeout = absl::Seconds(60);
  return options;
}

// The stats of `shard`'s pool; all zero if it has none yet.
ShardPoolStats StatsOf(const ConnectionPools& pools, ShardId shard) {
  for (const ShardPoolStats& stats : pools.Stats()) {
    if (stats.shard == shard) return stats;
  }
  ShardPoolStats none;
  none.shard = shard;
  return none;
}

class PoolTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<testing::TestCluster>> started =
        testing::TestCluster::Start(kShards);
    if (started.ok()) {
      cluster_ = started->release();
    } else {
      start_error_ = new std::string(started.status().ToString());
    }
  }

  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
    delete start_error_;
    start_error_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(cluster_, nullptr)
        << "the test cluster did not start: "
        << (start_error_ != nullptr ? *start_error_ : "unknown");
  }

  testing::TestCluster& tc() { return *cluster_; }

  // The dsn of shard `index` with application_name `app`.
  std::string Dsn(int index, const std::string& app) {
    return absl::StrCat(tc().dsn(index), " application_name=", app);
  }

  // A task running `sql` on shard `index` (named s1, s2, ...) as `app`.
  ShardTask Task(int index, const std::string& app, const std::string& sql,
                 std::vector<std::optional<std::string>> params = {}) {
    ShardTask task;
    task.shard = static_cast<ShardId>(index);
    task.shard_name = absl::StrCat("s", index + 1);
    task.dsn = Dsn(index, app);
    task.sql = sql;
    task.params = std::move(params);
    return task;
  }

  // The outcome of `task` alone.
  static TaskOutcome RunOne(const ShardTask& task, const ExecOptions& options) {
    std::vector<TaskOutcome> outcomes = internal::RunOnShards({task}, options);
    return outcomes.empty() ? TaskOutcome{} : std::move(outcomes[0]);
  }

  // The backend pid that serves `SELECT pg_backend_pid()` on shard `index`
  // through `pools` as `app`; "" (and a failed test) on error.
  std::string BackendPid(ConnectionPools& pools, int index,
                         const std::string& app) {
    TaskOutcome outcome =
        RunOne(Task(index, app, "SELECT pg_backend_pid()"), Options(pools));
    EXPECT_TRUE(outcome.status.ok()) << outcome.status;
    if (!outcome.status.ok() || outcome.result.rows.size() != 1) return "";
    return outcome.result.rows[0][0].value_or("");
  }

  // The first value of the first row of `sql` on shard `index`, "" if none.
  std::string ScalarOn(int index, const std::string& sql) {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        tc().Query(index, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (!rows.ok() || rows->empty() || (*rows)[0].empty()) return "";
    return (*rows)[0][0];
  }

  // How many backends on shard `index` have application_name `app`.
  int Backends(int index, const std::string& app) {
    const std::string count = ScalarOn(
        index, absl::StrCat("SELECT count(*) FROM pg_stat_activity WHERE "
                            "application_name = '",
                            app, "'"));
    return count.empty() ? -1 : std::stoi(count);
  }

  // Whether backend `pid` still exists on shard `index`.
  bool BackendExists(int index, const std::string& pid) {
    return ScalarOn(index, absl::StrCat("SELECT count(*) FROM "
                                        "pg_stat_activity WHERE pid = ",
                                        pid)) != "0";
  }

  static testing::TestCluster* cluster_;
  static std::string* start_error_;
};

testing::TestCluster* PoolTest::cluster_ = nullptr;
std::string* PoolTest::start_error_ = nullptr;

TEST_F(PoolTest, ReusesAConnectionAcrossCalls) {
  const std::string app = "pool_reuse";
  ConnectionPools pools(Settings(4));
  const std::string first = BackendPid(pools, 0, app);
  ASSERT_NE(first, "");
  // With parameters (extended protocol) on the same connection.
  TaskOutcome second =
      RunOne(Task(0, app, "SELECT pg_backend_pid(), $1::text", {"O'Brien"}),
             Options(pools));
  ASSERT_TRUE(second.status.ok()) << second.status;
  ASSERT_EQ(second.result.rows.size(), 1u);
  EXPECT_EQ(second.result.rows[0][0], first);
  EXPECT_EQ(second.result.rows[0][1], "O'Brien");
  EXPECT_EQ(BackendPid(pools, 0, app), first);

  const ShardPoolStats stats = StatsOf(pools, 0);
  EXPECT_EQ(stats.shard_name, "s1");
  EXPECT_EQ(stats.idle, 1);
  EXPECT_EQ(stats.open, 1);
  EXPECT_EQ(stats.waiting, 0);
  EXPECT_EQ(Backends(0, app), 1);
}

TEST_F(PoolTest, EachShardHasItsOwnPool) {
  const std::string app = "pool_per_shard";
  ConnectionPools pools(Settings(4));
  std::vector<TaskOutcome> outcomes = internal::RunOnShards(
      {Task(0, app, "SELECT 1"), Task(1, app, "SELECT 1")}, Options(pools));
  for (const TaskOutcome& o : outcomes) ASSERT_TRUE(o.status.ok()) << o.status;
  std::vector<ShardPoolStats> stats = pools.Stats();
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].shard, 0u);
  EXPECT_EQ(stats[0].shard_name, "s1");
  EXPECT_EQ(stats[0].idle, 1);
  EXPECT_EQ(stats[1].shard, 1u);
  EXPECT_EQ(stats[1].shard_name, "s2");
  EXPECT_EQ(stats[1].idle, 1);
  EXPECT_EQ(Backends(0, app), 1);
  EXPECT_EQ(Backends(1, app), 1);
}

// Tasks of one call on one shard share its pool: with a limit of one, the
// second and third wait in the loop for the first's connection, which is
// handed on to them.
TEST_F(PoolTest, TasksOfOneCallWaitForEachOthersConnection) {
  const std::string app = "pool_one_call";
  ConnectionPools pools(Settings(1));
  std::vector<TaskOutcome> outcomes =
      internal::RunOnShards({Task(0, app, "SELECT pg_backend_pid()"),
                             Task(0, app, "SELECT pg_backend_pid()"),
                             Task(0, app, "SELECT pg_backend_pid()")},
                            Options(pools));
  ASSERT_EQ(outcomes.size(), 3u);
  for (const TaskOutcome& o : outcomes) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    ASSERT_EQ(o.result.rows.size(), 1u);
  }
  EXPECT_EQ(outcomes[1].result.rows[0][0], outcomes[0].result.rows[0][0]);
  EXPECT_EQ(outcomes[2].result.rows[0][0], outcomes[0].result.rows[0][0]);
  const std::optional<std::string> shared_pid = outcomes[0].result.rows[0][0];

  // A connection that is not taken back frees its slot for the next task,
  // which opens a connection of its own.
  outcomes = internal::RunOnShards(
      {Task(0, app, "BEGIN"), Task(0, app, "SELECT pg_backend_pid()")},
      Options(pools));
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_TRUE(outcomes[0].status.ok()) << outcomes[0].status;
  ASSERT_TRUE(outcomes[1].status.ok()) << outcomes[1].status;
  ASSERT_EQ(outcomes[1].result.rows.size(), 1u);
  EXPECT_NE(outcomes[1].result.rows[0][0], shared_pid);
  EXPECT_EQ(StatsOf(pools, 0).open, 1);
  EXPECT_TRUE(Eventually([&] { return Backends(0, app) == 1; }));
}

// Twelve threads against a limit of three. While the test holds an advisory
// lock, the statements block on it, so exactly three run and nine wait in
// the pool; then, released, every statement completes, on those three
// connections only. Then the threads hammer the pool while the test samples
// the shard's backends.
TEST_F(PoolTest, LimitHoldsUnderConcurrentThreads) {
  const std::string app = "pool_limit";
  constexpr int kLimit = 3;
  constexpr int kThreads = 12;
  ConnectionPools pools(Settings(kLimit));
  auto holder = std::make_unique<Session>(tc().dsn(0));
  ASSERT_TRUE(holder->ok()) << holder->error();
  ASSERT_EQ(holder->Scalar("SELECT pg_advisory_lock(4711)"), "");

  absl::Mutex mu;
  std::set<std::string> pids;
  std::vector<absl::Status> failures;
  auto record = [&](const TaskOutcome& o) {
    absl::MutexLock lock(&mu);
    if (!o.status.ok()) {
      failures.push_back(o.status);
    } else if (o.result.rows.size() == 1) {
      pids.insert(o.result.rows[0][0].value_or(""));
    }
  };
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      record(RunOne(Task(0, app,
                         "SELECT pg_backend_pid(), "
                         "pg_advisory_xact_lock_shared(4711)"),
                    Options(pools)));
    });
  }
  absl::Cleanup join = [&] {
    holder.reset();  // ends the session: releases the lock
    for (std::thread& t : threads) t.join();
  };
  EXPECT_TRUE(Eventually([&] {
    const ShardPoolStats stats = StatsOf(pools, 0);
    return stats.open == kLimit && stats.waiting == kThreads - kLimit;
  })) << "expected "
      << kLimit << " connections and " << kThreads - kLimit << " waiting tasks";
  EXPECT_TRUE(Eventually([&] {
    return ScalarOn(0, absl::StrCat("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE application_name = '",
                                    app, "' AND wait_event_type = 'Lock'")) ==
           absl::StrCat(kLimit);
  }));
  EXPECT_EQ(Backends(0, app), kLimit);
  std::move(join).Invoke();
  threads.clear();
  for (const absl::Status& failure : failures) ADD_FAILURE() << failure;
  EXPECT_EQ(pids.size(), static_cast<size_t>(kLimit));

  // Unblocked: hammer, and sample what the shard sees meanwhile.
  std::atomic<bool> done{false};
  int most_backends = 0;
  int most_open = 0;
  std::thread sampler([&] {
    while (!done.load()) {
      most_backends = std::max(most_backends, Backends(0, app));
      most_open = std::max(most_open, StatsOf(pools, 0).open);
    }
  });
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 20; ++j) {
        record(RunOne(Task(0, app, "SELECT pg_backend_pid()"), Options(pools)));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  done = true;
  sampler.join();
  for (const absl::Status& failure : failures) ADD_FAILURE() << failure;
  EXPECT_LE(most_backends, kLimit);
  EXPECT_LE(most_open, kLimit);
  // Every statement completed normally, so no connection was replaced.
  EXPECT_EQ(pids.size(), static_cast<size_t>(kLimit));
  EXPECT_EQ(Backends(0, app), kLimit);
  const ShardPoolStats stats = StatsOf(pools, 0);
  EXPECT_EQ(stats.idle, kLimit);
  EXPECT_EQ(stats.open, kLimit);
  EXPECT_EQ(stats.waiting, 0);
}

// What a statement leaves its connection in decides whether the pool takes
// it back. Each case runs on the one connection of a pool of one, between
// two `SELECT pg_backend_pid()`.
struct AfterStatementCase {
  std::string name;
  std::string sql;
  absl::StatusCode code;  // of the statement's outcome
  bool reused;
};

TEST_F(PoolTest, OnlyACleanlyIdleConnectionIsReused) {
  const std::vector<AfterStatementCase> cases = {
      {"success", "SELECT 1", absl::StatusCode::kOk, true},
      // An ordinary error in autocommit: rolled back, the session is idle.
      {"autocommit_error", "SELECT 1/0", absl::StatusCode::kInvalidArgument,
       true},
      // The session is left inside a failed transaction block.
      {"failed_transaction", "BEGIN; SELECT 1/0",
       absl::StatusCode::kInvalidArgument, false},
      // ... or inside an open one.
      {"open_transaction", "BEGIN; SELECT 1", absl::StatusCode::kOk, false},
      // Refused mid-protocol.
      {"copy_out", "COPY (SELECT 1) TO STDOUT",
       absl::StatusCode::kInvalidArgument, false},
      // Cancelled past the statement timeout (set below).
      {"timed_out", "SELECT pg_sleep(60)", absl::StatusCode::kDeadlineExceeded,
       false},
      // The server ends the session (FATAL 57P01).
      {"terminated", "SELECT pg_terminate_backend(pg_backend_pid())",
       absl::StatusCode::kUnavailable, false},
  };
  for (const AfterStatementCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string app = absl::StrCat("pool_after_", c.name);
    ConnectionPools pools(Settings(1));
    const std::string before = BackendPid(pools, 0, app);
    ASSERT_NE(before, "");
    ExecOptions options = Options(pools);
    options.statement_timeout = absl::Milliseconds(300);
    TaskOutcome outcome = RunOne(Task(0, app, c.sql), options);
    EXPECT_EQ(outcome.status.code(), c.code) << outcome.status;
    EXPECT_EQ(StatsOf(pools, 0).idle, c.reused ? 1 : 0);
    EXPECT_EQ(StatsOf(pools, 0).open, c.reused ? 1 : 0);
    const std::string after = BackendPid(pools, 0, app);
    ASSERT_NE(after, "");
    if (c.reused) {
      EXPECT_EQ(after, before);
    } else {
      EXPECT_NE(after, before);
      EXPECT_TRUE(Eventually([&] { return !BackendExists(0, before); }))
          << "the connection that was not taken back was not closed";
      EXPECT_EQ(Backends(0, app), 1);
    }
  }
}

TEST_F(PoolTest, IdleTimeoutClosesIdleConnections) {
  const std::string app = "pool_idle";
  ConnectionPools pools(Settings(2, absl::Milliseconds(1)));
  const std::string first = BackendPid(pools, 0, app);
  ASSERT_NE(first, "");
  EXPECT_EQ(StatsOf(pools, 0).idle, 1);
  // Lets the idle timeout pass; what follows asserts state, not time.
  absl::SleepFor(absl::Milliseconds(20));
  const std::string second = BackendPid(pools, 0, app);
  EXPECT_NE(second, first) << "an expired idle connection was reused";
  EXPECT_TRUE(Eventually([&] { return !BackendExists(0, first); }))
      << "the expired connection was not closed";
  EXPECT_EQ(StatsOf(pools, 0).idle, 1);

  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(pools.CloseExpiredIdle(), 1);
  const ShardPoolStats stats = StatsOf(pools, 0);
  EXPECT_EQ(stats.idle, 0);
  EXPECT_EQ(stats.open, 0);
  EXPECT_TRUE(Eventually([&] { return Backends(0, app) == 0; }));
}

// A pooled connection whose backend went away while idle is replaced before
// the statement is sent: the caller sees no error.
TEST_F(PoolTest, TerminatedIdleConnectionIsReplacedWithoutError) {
  const std::string app = "pool_terminated";
  ConnectionPools pools(Settings(2));
  const std::string first = BackendPid(pools, 1, app);
  ASSERT_NE(first, "");
  ASSERT_EQ(
      ScalarOn(1, absl::StrCat("SELECT pg_terminate_backend(", first, ")")),
      "t");
  ASSERT_TRUE(Eventually([&] { return !BackendExists(1, first); }));
  EXPECT_EQ(StatsOf(pools, 1).idle, 1);  // not noticed yet
  const std::string second = BackendPid(pools, 1, app);
  EXPECT_NE(second, "");
  EXPECT_NE(second, first);
  EXPECT_EQ(StatsOf(pools, 1).open, 1);
}

// The shard restarts between two calls: every idle connection of its pool
// is dead, and the next call runs on fresh ones without an error.
TEST_F(PoolTest, ShardRestartBetweenCallsIsTransparent) {
  const std::string app = "pool_restart";
  ConnectionPools pools(Settings(3));
  const std::vector<ShardTask> tasks(3, Task(1, app, "SELECT 1"));
  for (const TaskOutcome& o : internal::RunOnShards(tasks, Options(pools))) {
    ASSERT_TRUE(o.status.ok()) << o.status;
  }
  ASSERT_EQ(StatsOf(pools, 1).idle, 3);

  ASSERT_TRUE(tc().StopShard(1).ok());
  ASSERT_TRUE(tc().StartShard(1).ok());

  for (const TaskOutcome& o : internal::RunOnShards(tasks, Options(pools))) {
    EXPECT_TRUE(o.status.ok()) << o.status;
  }
  TaskOutcome one = RunOne(Task(1, app, "SELECT 1"), Options(pools));
  EXPECT_TRUE(one.status.ok()) << one.status;
  EXPECT_EQ(StatsOf(pools, 1).open, 3);
  EXPECT_EQ(Backends(1, app), 3);
}

// A connection held by a long statement exhausts a pool of one: another
// statement waits for it for the connect timeout, then fails saying which
// shard, what limit, and how to raise it.
TEST_F(PoolTest, ExhaustedPoolFailsAfterTheConnectTimeout) {
  const std::string app = "pool_exhausted";
  ConnectionPools pools(Settings(1));
  auto holder = std::make_unique<Session>(tc().dsn(0));
  ASSERT_TRUE(holder->ok()) << holder->error();
  ASSERT_EQ(holder->Scalar("SELECT pg_advisory_lock(4712)"), "");
  TaskOutcome held;
  std::thread runner([&] {
    held = RunOne(Task(0, app, "SELECT pg_advisory_xact_lock(4712)"),
                  Options(pools));
  });
  absl::Cleanup join = [&] {
    holder.reset();
    runner.join();
  };
  ASSERT_TRUE(Eventually([&] { return StatsOf(pools, 0).open == 1; }));

  ExecOptions options = Options(pools);
  options.connect_timeout = absl::Milliseconds(300);
  TaskOutcome outcome = RunOne(Task(0, app, "SELECT 1"), options);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(std::string(outcome.status.message()),
            "shard s1: no pooled connection became free within the connect "
            "timeout (300ms): this process already has 1 connection to it, "
            "all busy, the most [pool] max_connections_per_shard allows; "
            "raise [pool] max_connections_per_shard in the configuration, "
            "or [timeouts] connect to wait longer");
  EXPECT_EQ(StatsOf(pools, 0).waiting, 0);
  EXPECT_EQ(Backends(0, app), 1);

  std::move(join).Invoke();
  EXPECT_TRUE(held.status.ok()) << held.status;
  TaskOutcome after = RunOne(Task(0, app, "SELECT 1"), Options(pools));
  EXPECT_TRUE(after.status.ok()) << after.status;
}

// Without pools the executor opens and closes a connection per task, as it
// always did: nothing stays connected.
TEST_F(PoolTest, WithoutPoolsNothingStaysConnected) {
  const std::string app = "pool_none";
  TaskOutcome outcome = RunOne(Task(0, app, "SELECT 1"), ExecOptions{});
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_TRUE(Eventually([&] { return Backends(0, app) == 0; }));
}

}  // namespace
}  // namespace shardkit
