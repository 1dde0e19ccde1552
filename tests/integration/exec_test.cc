// Running statements on every shard, against real PostgreSQL servers: the
// library (Cluster::ExecuteOnAllShards, the executor underneath) and the
// `shardctl exec` binary.
//
// One cluster of three shards serves the whole suite; each test uses its own
// table names so that tests do not see each other's data.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/dev_cluster.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/executor.h"
#include "router/shard_connection.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"
#include "tests/integration/fault_proxy.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::Eventually;
using testing::Session;

constexpr int kShards = 3;

// A TCP port that accepts connections into its backlog but never answers:
// what a hung server looks like to a client.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        ::listen(fd_, 8) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      return;
    }
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() {
    if (fd_ >= 0) ::close(fd_);
  }
  SilentListener(const SilentListener&) = delete;
  SilentListener& operator=(const SilentListener&) = delete;

  int port() const { return port_; }  // 0 if it could not listen

 private:
  int fd_ = -1;
  int port_ = 0;
};

class ExecTest : public ::testing::Test {
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

  // The body of a configuration over the suite's shards (WriteConfig adds
  // the [shards.*] sections), with `timeouts` as its [timeouts] table.
  static std::string ConfigBody(const std::string& timeouts) {
    std::string body =
        "[distributions.main]\nstrategy = \"hash\"\nkey_type = \"int8\"\n"
        "shards = [\"s1\", \"s2\", \"s3\"]\n";
    if (!timeouts.empty()) absl::StrAppend(&body, "\n[timeouts]\n", timeouts);
    return body;
  }

  // Writes configuration `name` with `body` and opens a Cluster over it.
  std::unique_ptr<Cluster> OpenCluster(const std::string& name,
                                       const std::string& body) {
    absl::StatusOr<std::unique_ptr<Cluster>> cluster =
        Cluster::OpenFile(tc().WriteConfig(name, body));
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    if (!cluster.ok()) return nullptr;
    return *std::move(cluster);
  }

  std::unique_ptr<Cluster> OpenSuiteCluster() {
    absl::StatusOr<std::unique_ptr<Cluster>> cluster =
        Cluster::OpenFile(tc().config_path());
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    if (!cluster.ok()) return nullptr;
    return *std::move(cluster);
  }

  // The first value of the first row of `sql` on shard i, "" if no row.
  std::string ScalarOn(int i, const std::string& sql) {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        tc().Query(i, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (!rows.ok() || rows->empty() || (*rows)[0].empty()) return "";
    return (*rows)[0][0];
  }

  // A FaultProxy in front of shard `index`; null (the test has failed) if
  // it cannot start.
  std::unique_ptr<testing::FaultProxy> ProxyFor(
      int index, testing::FaultProxy::Options options) {
    absl::StatusOr<std::unique_ptr<testing::FaultProxy>> proxy =
        testing::FaultProxy::Start(
            "127.0.0.1", tc().cluster().instances.at(index).port, options);
    EXPECT_TRUE(proxy.ok()) << proxy.status();
    if (!proxy.ok()) return nullptr;
    return *std::move(proxy);
  }

  // Terminates every backend on shard `index` whose statement is (or last
  // was) `sql`, one that a test left running on purpose, and waits for each
  // to exit.
  void EndStatement(int index, const std::string& sql) {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows = tc().Query(
        index, absl::StrCat("SELECT pg_terminate_backend(pid, 30000) FROM "
                            "pg_stat_activity WHERE pid <> pg_backend_pid() "
                            "AND query = $q$",
                            sql, "$q$"));
    EXPECT_TRUE(rows.ok()) << rows.status();
  }

  bool TableExists(int i, const std::string& table) {
    return ScalarOn(i, absl::StrCat("SELECT count(*) FROM pg_tables WHERE "
                                    "tablename = '",
                                    table, "'")) == "1";
  }

  std::vector<std::string> ShardctlExec(const std::string& config,
                                        std::vector<std::string> args) {
    std::vector<std::string> argv = {SHARDCTL_PATH, "exec", "-c", config};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }

  static testing::TestCluster* cluster_;
  static std::string* start_error_;
};

testing::TestCluster* ExecTest::cluster_ = nullptr;
std::string* ExecTest::start_error_ = nullptr;

TEST_F(ExecTest, DdlRunsOnEveryShard) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes =
      cluster->ExecuteOnAllShards("CREATE TABLE ddl_t (id int8 PRIMARY KEY)");
  ASSERT_EQ(outcomes.size(), kShards);
  for (int i = 0; i < kShards; ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(outcomes[i].shard, static_cast<ShardId>(i));
    EXPECT_EQ(outcomes[i].shard_name, absl::StrCat("s", i + 1));
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.command_tag, "CREATE TABLE");
    EXPECT_EQ(outcomes[i].result.rows_affected, 0);
    EXPECT_TRUE(outcomes[i].result.columns.empty());
    EXPECT_THAT(outcomes[i].result.shards, ElementsAre(ShardId(i)));
    EXPECT_TRUE(TableExists(i, "ddl_t"));
  }
}

TEST_F(ExecTest, FailureOnOneShardLeavesTheOthersApplied) {
  ASSERT_TRUE(tc().Query(1, "CREATE TABLE dup_t (id int)").ok());
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes =
      cluster->ExecuteOnAllShards("CREATE TABLE dup_t (id int)");
  ASSERT_EQ(outcomes.size(), kShards);
  EXPECT_TRUE(outcomes[0].status.ok()) << outcomes[0].status;
  EXPECT_TRUE(outcomes[2].status.ok()) << outcomes[2].status;
  EXPECT_EQ(outcomes[1].status.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(outcomes[1].status.message(),
            "shard s2: ERROR 42P07: relation \"dup_t\" already exists");
  EXPECT_EQ(SqlStateOf(outcomes[1].status), "42P07");
  for (int i = 0; i < kShards; ++i) EXPECT_TRUE(TableExists(i, "dup_t"));
}

TEST_F(ExecTest, ServerErrorNamesShardSqlstateAndPosition) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes =
      cluster->ExecuteOnAllShards("SELECT * FROM nope");
  ASSERT_EQ(outcomes.size(), kShards);
  for (int i = 0; i < kShards; ++i) {
    EXPECT_EQ(outcomes[i].status.code(), absl::StatusCode::kNotFound);
    EXPECT_EQ(outcomes[i].status.message(),
              absl::StrCat("shard s", i + 1,
                           ": ERROR 42P01: relation \"nope\" does not exist "
                           "(statement position 15)"));
  }
}

TEST_F(ExecTest, ResultCarriesColumnsTypesNullsAndTag) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes = cluster->ExecuteOnAllShards(
      "SELECT 7::int8 AS a, 'x'::text AS b, NULL::int4 AS c");
  ASSERT_EQ(outcomes.size(), kShards);
  for (const ShardOutcome& o : outcomes) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    ASSERT_EQ(o.result.columns.size(), 3u);
    EXPECT_EQ(o.result.columns[0].name, "a");
    EXPECT_EQ(o.result.columns[0].type_oid, 20u);  // int8
    EXPECT_EQ(o.result.columns[1].name, "b");
    EXPECT_EQ(o.result.columns[1].type_oid, 25u);  // text
    EXPECT_EQ(o.result.columns[2].name, "c");
    EXPECT_EQ(o.result.columns[2].type_oid, 23u);  // int4
    EXPECT_THAT(o.result.rows, ElementsAre(Row{"7", "x", std::nullopt}));
    EXPECT_EQ(o.result.command_tag, "SELECT 1");
    EXPECT_EQ(o.result.rows_affected, 1);
  }
}

TEST_F(ExecTest, RowsAffectedComesFromTheCommandTag) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes = cluster->ExecuteOnAllShards(
      "CREATE TABLE affected_t (id int); "
      "INSERT INTO affected_t VALUES (1), (2), (3)");
  ASSERT_EQ(outcomes.size(), kShards);
  for (const ShardOutcome& o : outcomes) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    EXPECT_EQ(o.result.command_tag, "INSERT 0 3");
    EXPECT_EQ(o.result.rows_affected, 3);
  }
}

TEST_F(ExecTest, SeveralStatementsKeepTheLastResult) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes =
      cluster->ExecuteOnAllShards("SELECT 1; SELECT 2 AS two");
  for (const ShardOutcome& o : outcomes) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    ASSERT_EQ(o.result.columns.size(), 1u);
    EXPECT_EQ(o.result.columns[0].name, "two");
    EXPECT_THAT(o.result.rows, ElementsAre(Row{"2"}));
  }
}

TEST_F(ExecTest, AnErrorAmongSeveralStatementsFailsAndRollsBack) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes = cluster->ExecuteOnAllShards(
      "CREATE TABLE multi_t (id int); SELECT * FROM nope; SELECT 3");
  for (int i = 0; i < kShards; ++i) {
    EXPECT_EQ(SqlStateOf(outcomes[i].status), "42P01")
        << outcomes[i].status;
    // One string is one implicit transaction: the CREATE is rolled back.
    EXPECT_FALSE(TableExists(i, "multi_t"));
  }
}

TEST_F(ExecTest, StoppedShardIsUnavailableAndTheOthersStillRun) {
  std::unique_ptr<Cluster> cluster =
      OpenCluster("stopped.toml", ConfigBody("connect = \"1s\"\n"));
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(tc().StopShard(1).ok());
  absl::Cleanup restart = [this] { EXPECT_TRUE(tc().StartShard(1).ok()); };

  std::vector<ShardOutcome> outcomes =
      cluster->ExecuteOnAllShards("CREATE TABLE stopped_t (id int)");
  ASSERT_EQ(outcomes.size(), kShards);
  EXPECT_TRUE(outcomes[0].status.ok()) << outcomes[0].status;
  EXPECT_TRUE(outcomes[2].status.ok()) << outcomes[2].status;
  EXPECT_EQ(outcomes[1].status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StartsWith(outcomes[1].status.message(), "shard s2 ("))
      << outcomes[1].status;
  EXPECT_THAT(std::string(outcomes[1].status.message()),
              HasSubstr("is unreachable: "));
  EXPECT_TRUE(TableExists(0, "stopped_t"));
  EXPECT_TRUE(TableExists(2, "stopped_t"));
}

// A server that accepts the TCP connection but never answers: only the
// connect deadline can end the attempt. The other shard is not held up.
TEST_F(ExecTest, ConnectTimeoutEndsAHungConnect) {
  SilentListener silent;
  ASSERT_NE(silent.port(), 0);
  std::vector<internal::ShardTask> tasks(2);
  tasks[0].shard = 0;
  tasks[0].shard_name = "hung";
  tasks[0].dsn = absl::StrCat("host=127.0.0.1 port=", silent.port(),
                              " dbname=app password=sekret");
  tasks[0].sql = "SELECT 1";
  tasks[1].shard = 1;
  tasks[1].shard_name = "s1";
  tasks[1].dsn = tc().dsn(0);
  tasks[1].sql = "SELECT 1";
  internal::ExecOptions options;
  options.connect_timeout = absl::Seconds(1);
  std::vector<internal::TaskOutcome> outcomes =
      internal::RunOnShards(tasks, options);
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(outcomes[0].status.message()),
              HasSubstr("shard hung ("));
  EXPECT_THAT(std::string(outcomes[0].status.message()),
              HasSubstr("is unreachable: no connection within the connect "
                        "timeout (1s)"));
  EXPECT_THAT(std::string(outcomes[0].status.message()),
              Not(HasSubstr("sekret")));
  EXPECT_TRUE(outcomes[1].status.ok()) << outcomes[1].status;
}

TEST_F(ExecTest, StatementTimeoutCancelsTheBackend) {
  ASSERT_TRUE(tc().Query(1, "CREATE TABLE slow_marker (id int)").ok());
  std::unique_ptr<Cluster> cluster =
      OpenCluster("timeout.toml", ConfigBody("statement = \"500ms\"\n"));
  ASSERT_NE(cluster, nullptr);
  // Sleeps only where the marker table exists: on s2. 60 s is far beyond
  // the waits below, so the backend can only be gone if it was cancelled.
  const std::string sleep =
      "SELECT pg_sleep(60) FROM pg_tables WHERE tablename = 'slow_marker'";
  std::vector<ShardOutcome> outcomes = cluster->ExecuteOnAllShards(sleep);
  ASSERT_EQ(outcomes.size(), kShards);
  EXPECT_TRUE(outcomes[0].status.ok()) << outcomes[0].status;
  EXPECT_TRUE(outcomes[2].status.ok()) << outcomes[2].status;
  EXPECT_EQ(outcomes[1].status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(outcomes[1].status.message()),
              HasSubstr("shard s2: the statement did not finish within the "
                        "statement timeout (500ms) and was cancelled"));

  const std::string still_running = absl::StrCat(
      "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
      "query = $q$",
      sleep, "$q$");
  EXPECT_TRUE(Eventually([&] { return ScalarOn(1, still_running) == "0"; },
                         absl::Seconds(5)))
      << "the sleep still runs on s2: the cancel did not reach it";
}

// The cancel paths below need a shard that mishandles a cancel request. A
// FaultProxy in front of a real shard makes one: the statements are real
// (pg_sleep) and run on the real server; only the cancel request is lost,
// held up or refused on its way. Each test's statement text is its own, so
// that it finds (and in the end terminates) just the backends it started.

// What the executor reports for `task` alone with `options`.
internal::TaskOutcome RunOne(const internal::ShardTask& task,
                             const internal::ExecOptions& options) {
  std::vector<internal::TaskOutcome> outcomes =
      internal::RunOnShards({task}, options);
  return outcomes.empty() ? internal::TaskOutcome{} : outcomes[0];
}

// A task running `sql` on the shard behind `proxy`, connected through it.
internal::ShardTask TaskThrough(const testing::FaultProxy& proxy,
                                ShardId shard, const std::string& shard_name,
                                const std::string& sql) {
  internal::ShardTask task;
  task.shard = shard;
  task.shard_name = shard_name;
  task.dsn = dev::InstanceDsn(proxy.port(), "app");
  task.sql = sql;
  return task;
}

// The cancel request reaches the shard's address, but not the server: the
// proxy reads it and closes its connection, which to libpq means that the
// server received it. The statement goes on running, and the executor must
// say that it may.
TEST_F(ExecTest, UnconfirmedCancelSaysTheStatementMayStillRun) {
  const std::string sleep = "SELECT pg_sleep(60) AS unconfirmed_cancel";
  std::unique_ptr<testing::FaultProxy> proxy =
      ProxyFor(0, {.on_cancel = testing::FaultProxy::OnCancel::kDrop});
  ASSERT_NE(proxy, nullptr);
  absl::Cleanup end_sleep = [&] { EndStatement(0, sleep); };
  internal::ExecOptions options;
  options.statement_timeout = absl::Milliseconds(200);
  options.cancel_grace = absl::Milliseconds(300);
  internal::TaskOutcome outcome =
      RunOne(TaskThrough(*proxy, 0, "s1", sleep), options);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(std::string(outcome.status.message()),
            "shard s1: the statement did not finish within the statement "
            "timeout (200ms) and was cancelled, but the shard did not "
            "confirm the cancel within 300ms; the statement may still be "
            "running there: check pg_stat_activity on that shard");
  ASSERT_TRUE(proxy->WaitForCancelRequests(1, absl::Seconds(30)))
      << "no cancel request arrived";
  // The request named the statement's backend, which does still run it.
  absl::StatusOr<std::vector<std::vector<std::string>>> running = tc().Query(
      0, absl::StrCat("SELECT pid FROM pg_stat_activity WHERE state = "
                      "'active' AND query = $q$",
                      sleep, "$q$"));
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_THAT(*running, ElementsAre(ElementsAre(
                            absl::StrCat(proxy->CancelRequestPids()[0]))));
}

// The shard's host is gone by the time the cancel request is sent: the
// proxy lets the session's connection through, then stops listening, so the
// cancel request's connection is refused. The grace is far longer than the
// test runs, so the message can only say the request failed if the
// executor reported it as soon as it did.
TEST_F(ExecTest, CancelThatCannotBeSentIsReportedAtOnce) {
  const std::string sleep = "SELECT pg_sleep(60) AS unsendable_cancel";
  std::unique_ptr<testing::FaultProxy> proxy =
      ProxyFor(0, {.accept_limit = 1});
  ASSERT_NE(proxy, nullptr);
  absl::Cleanup end_sleep = [&] { EndStatement(0, sleep); };
  internal::ExecOptions options;
  options.statement_timeout = absl::Milliseconds(200);
  options.cancel_grace = absl::Minutes(10);
  internal::TaskOutcome outcome =
      RunOne(TaskThrough(*proxy, 0, "s1", sleep), options);
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(std::string(outcome.status.message()),
            "shard s1: the statement did not finish within the statement "
            "timeout (200ms) and cancelling it failed: could not send the "
            "cancel request: PQcancel() -- connect() failed: Connection "
            "refused; the statement may still be running there: check "
            "pg_stat_activity on that shard");
  // And so it is: no cancel request reached the server.
  EXPECT_EQ(ScalarOn(0, absl::StrCat("SELECT count(*) FROM pg_stat_activity "
                                     "WHERE state = 'active' AND query = $q$",
                                     sleep, "$q$")),
            "1");
}

// PQcancel blocks until the server closes the cancel connection; the proxy
// holds that connection open, unanswered, until told. RunOnShards must
// still end the task when the grace is over, and return.
TEST_F(ExecTest, RunOnShardsReturnsWhileACancelRequestHangs) {
  const std::string sleep = "SELECT pg_sleep(60) AS hanging_cancel";
  std::unique_ptr<testing::FaultProxy> proxy =
      ProxyFor(0, {.on_cancel = testing::FaultProxy::OnCancel::kHang});
  ASSERT_NE(proxy, nullptr);
  absl::Cleanup end_sleep = [&] { EndStatement(0, sleep); };
  internal::ExecOptions options;
  options.statement_timeout = absl::Milliseconds(200);
  options.cancel_grace = absl::Milliseconds(300);
  std::atomic<bool> returned{false};
  internal::TaskOutcome outcome;
  std::thread runner([&] {
    outcome = RunOne(TaskThrough(*proxy, 0, "s1", sleep), options);
    returned = true;
  });
  absl::Cleanup join = [&] {
    proxy->ReleaseHungCancels();
    runner.join();
  };
  ASSERT_TRUE(proxy->WaitForCancelRequests(1, absl::Seconds(30)));
  EXPECT_TRUE(Eventually([&] { return returned.load(); }))
      << "RunOnShards waited for a cancel request that does not get through";
  std::move(join).Invoke();
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(outcome.status.message()),
              HasSubstr("but the shard did not confirm the cancel within "
                        "300ms; the statement may still be running there"));
}

// One shard's cancel request hangs (the proxy holds it) while another
// shard's statement times out too: that shard must be cancelled and its
// connection closed meanwhile, which the loop can only do if the hanging
// request is not sent from it. Proven without timing: the test lets the
// held request go on to its server only once the other shard's backend is
// gone; then that server cancels too.
TEST_F(ExecTest, AHangingCancelRequestHoldsUpNoOtherShard) {
  ASSERT_TRUE(tc().Query(0, "CREATE SEQUENCE stall_pid").ok());
  const std::string sleep = "SELECT pg_sleep(60) AS held_cancel";
  std::unique_ptr<testing::FaultProxy> proxy =
      ProxyFor(1, {.on_cancel = testing::FaultProxy::OnCancel::kHang});
  ASSERT_NE(proxy, nullptr);
  absl::Cleanup end_sleep = [&] { EndStatement(1, sleep); };
  std::vector<internal::ShardTask> tasks(2);
  tasks[0] = TaskThrough(*proxy, 1, "s2", sleep);
  tasks[1].shard = 0;
  tasks[1].shard_name = "s1";
  tasks[1].dsn = tc().dsn(0);
  // setval is not transactional: the test sees the backend's pid at once.
  tasks[1].sql = "SELECT setval('stall_pid', pg_backend_pid()), pg_sleep(60)";
  internal::ExecOptions options;
  options.statement_timeout = absl::Milliseconds(300);
  // Far beyond the test: both cancels get confirmed long before.
  options.cancel_grace = absl::Minutes(10);

  std::vector<internal::TaskOutcome> outcomes;
  std::thread runner([&] { outcomes = internal::RunOnShards(tasks, options); });
  absl::Cleanup join = [&] {
    proxy->ReleaseHungCancels();
    runner.join();
  };
  std::string pid;
  ASSERT_TRUE(Eventually([&] {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        tc().Query(0, "SELECT last_value, is_called FROM stall_pid");
    if (!rows.ok() || rows->empty() || (*rows)[0][1] != "t") return false;
    pid = (*rows)[0][0];
    return true;
  })) << "the statement never started on s1";
  ASSERT_TRUE(proxy->WaitForCancelRequests(1, absl::Seconds(30)));
  EXPECT_TRUE(Eventually([&] {
    return ScalarOn(0, absl::StrCat("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE pid = ",
                                    pid)) == "0";
  })) << "s1's statement was not cancelled and its connection not closed "
         "while another shard's cancel request hung";
  std::move(join).Invoke();

  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(outcomes[0].status.message()),
              HasSubstr("shard s2: the statement did not finish within the "
                        "statement timeout (300ms) and was cancelled"));
  EXPECT_EQ(outcomes[1].status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(outcomes[1].status.message()),
              HasSubstr("shard s1: the statement did not finish within the "
                        "statement timeout (300ms) and was cancelled"));
}

// cancel_others_on_failure: s2 fails while s1's statement runs, and s1's
// statement is cancelled for it. Ordered without timing: s2's statement
// first waits for an advisory lock the test holds on s2, which the test
// lets go only once s1's sleep is seen running; the division runs only
// then (a string of statements is planned one statement at a time, so the
// constant 1/0 is not folded before the lock is taken). Nothing else can
// end s1's sleep: the timeouts are far beyond the test.
TEST_F(ExecTest, FailureCancelsTheOtherShardsRunningStatement) {
  const std::string sleep = "SELECT pg_sleep(60) AS cancelled_for_s2";
  auto holder = std::make_unique<Session>(tc().dsn(1));
  ASSERT_TRUE(holder->ok()) << holder->error();
  ASSERT_EQ(holder->Scalar("SELECT pg_advisory_lock(5151)"), "");
  absl::Cleanup end_sleep = [&] { EndStatement(0, sleep); };
  std::vector<internal::ShardTask> tasks(2);
  tasks[0].shard = 0;
  tasks[0].shard_name = "s1";
  tasks[0].dsn = tc().dsn(0);
  tasks[0].sql = sleep;
  tasks[1].shard = 1;
  tasks[1].shard_name = "s2";
  tasks[1].dsn = tc().dsn(1);
  tasks[1].sql = "SELECT pg_advisory_xact_lock(5151); SELECT 1/0";
  internal::ExecOptions options;
  options.statement_timeout = absl::Minutes(10);
  options.cancel_grace = absl::Minutes(10);
  options.cancel_others_on_failure = true;

  std::vector<internal::TaskOutcome> outcomes;
  std::thread runner([&] { outcomes = internal::RunOnShards(tasks, options); });
  absl::Cleanup join = [&] {
    holder.reset();  // closing the session releases the lock
    runner.join();
  };
  const std::string sleep_running = absl::StrCat(
      "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
      "query = $q$",
      sleep, "$q$");
  EXPECT_TRUE(Eventually([&] { return ScalarOn(0, sleep_running) == "1"; }))
      << "the sleep never started on s1";
  std::move(join).Invoke();

  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(outcomes[0].status.message(),
            "shard s1: cancelled because shard s2 failed");
  EXPECT_EQ(outcomes[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(outcomes[1].status.message(),
            "shard s2: ERROR 22012: division by zero");
  EXPECT_EQ(SqlStateOf(outcomes[1].status), "22012");
  EXPECT_TRUE(Eventually([&] { return ScalarOn(0, sleep_running) == "0"; }))
      << "the sleep still runs on s1: the cancel did not reach it";
}

// A task that has not sent its statement when another fails is ended at
// once: here one whose server never answers the connection, with a connect
// timeout far beyond the test, so that only the failure can end it.
TEST_F(ExecTest, FailureEndsAnotherShardStillConnecting) {
  SilentListener silent;
  ASSERT_NE(silent.port(), 0);
  std::vector<internal::ShardTask> tasks(2);
  tasks[0].shard = 0;
  tasks[0].shard_name = "hung";
  tasks[0].dsn =
      absl::StrCat("host=127.0.0.1 port=", silent.port(), " dbname=app");
  tasks[0].sql = "SELECT 1";
  tasks[1].shard = 1;
  tasks[1].shard_name = "s2";
  tasks[1].dsn = tc().dsn(1);
  tasks[1].sql = "SELECT 1/0";
  internal::ExecOptions options;
  options.connect_timeout = absl::Minutes(10);
  options.cancel_others_on_failure = true;
  std::vector<internal::TaskOutcome> outcomes =
      internal::RunOnShards(tasks, options);
  ASSERT_EQ(outcomes.size(), 2u);
  EXPECT_EQ(outcomes[0].status.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(outcomes[0].status.message(),
            "shard hung: cancelled because shard s2 failed, before the "
            "statement was sent");
  EXPECT_EQ(SqlStateOf(outcomes[1].status), "22012") << outcomes[1].status;
}

// RunAll (a statement's parts) fails with the failure itself, not with
// the cancellation it caused on a shard earlier in task order: its
// SQLSTATE is what the caller acts on (a fence's SK001 is retried).
TEST_F(ExecTest, RunAllFailsWithTheFailureNotTheCancellationItCaused) {
  SilentListener silent;
  ASSERT_NE(silent.port(), 0);
  std::vector<internal::ShardTask> tasks(2);
  tasks[0].shard = 0;
  tasks[0].shard_name = "hung";
  tasks[0].dsn =
      absl::StrCat("host=127.0.0.1 port=", silent.port(), " dbname=app");
  tasks[0].sql = "SELECT 1";
  tasks[1].shard = 1;
  tasks[1].shard_name = "s2";
  tasks[1].dsn = tc().dsn(1);
  tasks[1].sql = "SELECT 1/0";
  internal::ExecOptions options;
  options.connect_timeout = absl::Minutes(10);
  absl::StatusOr<std::vector<internal::TaskOutcome>> done =
      internal::RunAll(tasks, options);
  ASSERT_FALSE(done.ok());
  EXPECT_EQ(SqlStateOf(done.status()), "22012") << done.status();
  EXPECT_EQ(done.status().message(), "shard s2: ERROR 22012: division by zero");
}

// By default a failure leaves the other shards alone: s1's statement,
// held on a lock the test lets go only once s2 has failed and its
// connection is closed (its backend gone), still completes.
TEST_F(ExecTest, ByDefaultAFailureCancelsNoOtherShard) {
  ASSERT_TRUE(tc().Query(1, "CREATE SEQUENCE failed_pid").ok());
  auto holder = std::make_unique<Session>(tc().dsn(0));
  ASSERT_TRUE(holder->ok()) << holder->error();
  ASSERT_EQ(holder->Scalar("SELECT pg_advisory_lock(5252)"), "");
  std::vector<internal::ShardTask> tasks(2);
  tasks[0].shard = 0;
  tasks[0].shard_name = "s1";
  tasks[0].dsn = tc().dsn(0);
  tasks[0].sql = "SELECT pg_advisory_xact_lock(5252), 'done' AS state";
  tasks[1].shard = 1;
  tasks[1].shard_name = "s2";
  tasks[1].dsn = tc().dsn(1);
  // setval is not transactional: the test sees the backend's pid.
  tasks[1].sql = "SELECT setval('failed_pid', pg_backend_pid()); SELECT 1/0";
  internal::ExecOptions options;  // cancel_others_on_failure = false
  options.statement_timeout = absl::Minutes(10);

  std::vector<internal::TaskOutcome> outcomes;
  std::thread runner([&] { outcomes = internal::RunOnShards(tasks, options); });
  absl::Cleanup join = [&] {
    holder.reset();  // closing the session releases the lock
    runner.join();
  };
  EXPECT_TRUE(Eventually([&] {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        tc().Query(1, "SELECT last_value, is_called FROM failed_pid");
    if (!rows.ok() || rows->empty() || (*rows)[0][1] != "t") return false;
    return ScalarOn(1, absl::StrCat("SELECT count(*) FROM pg_stat_activity "
                                    "WHERE pid = ",
                                    (*rows)[0][0])) == "0";
  })) << "s2's statement never failed and ended";
  std::move(join).Invoke();

  ASSERT_EQ(outcomes.size(), 2u);
  ASSERT_TRUE(outcomes[0].status.ok()) << outcomes[0].status;
  ASSERT_EQ(outcomes[0].result.rows.size(), 1u);
  EXPECT_EQ(outcomes[0].result.rows[0][1], "done");
  EXPECT_EQ(SqlStateOf(outcomes[1].status), "22012") << outcomes[1].status;
}

TEST_F(ExecTest, CopyFromStdinIsRefusedNamingTheShard) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(tc().Query(i, "CREATE TABLE copy_t (id int)").ok());
  }
  for (const char* sql : {"COPY copy_t FROM STDIN", "COPY copy_t TO STDOUT"}) {
    SCOPED_TRACE(sql);
    std::vector<ShardOutcome> outcomes = cluster->ExecuteOnAllShards(sql);
    ASSERT_EQ(outcomes.size(), kShards);
    for (int i = 0; i < kShards; ++i) {
      EXPECT_EQ(outcomes[i].status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(std::string(outcomes[i].status.message()),
                absl::StrCat("shard s", i + 1,
                             ": COPY FROM STDIN / TO STDOUT is not supported "
                             "here; use COPY with a server-side file or "
                             "INSERT ... VALUES / SELECT"));
    }
  }
  for (int i = 0; i < kShards; ++i) {
    EXPECT_EQ(ScalarOn(i, "SELECT count(*) FROM copy_t"), "0");
  }
}

// Proof of concurrency without timing: every shard's statement blocks on an
// advisory lock the test holds on that shard. Run one shard at a time, the
// first statement would block forever and the second shard would never see
// its statement; run concurrently, every shard shows a waiting statement at
// once. Then the test lets go and all complete.
TEST_F(ExecTest, ShardsRunConcurrently) {
  std::vector<std::unique_ptr<Session>> holders;
  for (int i = 0; i < kShards; ++i) {
    holders.push_back(std::make_unique<Session>(tc().dsn(i)));
    ASSERT_TRUE(holders.back()->ok()) << holders.back()->error();
    ASSERT_EQ(holders.back()->Scalar("SELECT pg_advisory_lock(4242)"), "");
  }
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  std::vector<ShardOutcome> outcomes;
  std::thread runner([&] {
    outcomes = cluster->ExecuteOnAllShards(
        "SELECT pg_advisory_xact_lock(4242), 'done' AS state");
  });
  absl::Cleanup join = [&] {
    holders.clear();  // closing the sessions releases the locks
    runner.join();
  };

  std::vector<bool> waiting(kShards, false);
  const bool all_waiting = Eventually([&] {
    for (int i = 0; i < kShards; ++i) {
      if (!waiting[i]) {
        // A waiter cannot go away while the test holds the lock, so once
        // seen it is still waiting when the last shard is seen.
        waiting[i] = ScalarOn(i,
                              "SELECT count(*) FROM pg_stat_activity "
                              "WHERE wait_event_type = 'Lock' AND "
                              "wait_event = 'advisory'") == "1";
      }
    }
    return std::find(waiting.begin(), waiting.end(), false) == waiting.end();
  });
  EXPECT_TRUE(all_waiting) << "not every shard ran its statement while the "
                              "others were blocked: shards ran one by one";
  std::move(join).Invoke();
  ASSERT_EQ(outcomes.size(), kShards);
  for (const ShardOutcome& o : outcomes) {
    ASSERT_TRUE(o.status.ok()) << o.status;
    ASSERT_EQ(o.result.rows.size(), 1u);
    EXPECT_EQ(o.result.rows[0][1], "done");
  }
}

TEST_F(ExecTest, ParametersTravelAsParameters) {
  ASSERT_TRUE(tc().Query(0, "CREATE TABLE people (name text)").ok());
  const std::vector<std::string> names = {
      "O'Brien", "x'); DROP TABLE people; --", "back\\slash"};
  std::vector<internal::ShardTask> tasks;
  for (size_t i = 0; i < names.size(); ++i) {
    internal::ShardTask task;
    task.shard = 0;
    task.shard_name = "s1";
    task.dsn = tc().dsn(0);
    task.sql = "INSERT INTO people (name) VALUES ($1) RETURNING name, $2::text";
    task.params = {names[i], std::nullopt};
    tasks.push_back(task);
  }
  std::vector<internal::TaskOutcome> outcomes =
      internal::RunOnShards(tasks, internal::ExecOptions{});
  ASSERT_EQ(outcomes.size(), names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_THAT(outcomes[i].result.rows,
                ElementsAre(Row{names[i], std::nullopt}));
    EXPECT_EQ(outcomes[i].result.command_tag, "INSERT 0 1");
  }
  EXPECT_EQ(ScalarOn(0, "SELECT count(*) FROM people"), "3");
  EXPECT_EQ(ScalarOn(0, "SELECT count(*) FROM people WHERE name = 'O''Brien'"),
            "1");
}

TEST_F(ExecTest, APipelineRunsInOneRoundTripAndStopsAtItsFirstError) {
  ASSERT_TRUE(tc().Query(1, "CREATE TABLE piped (id int PRIMARY KEY)").ok());
  internal::ConnectionPools pools(PoolSettings{});
  internal::ExecOptions options;
  options.pools = &pools;
  internal::ShardTask task;
  task.shard = 1;
  task.shard_name = "s2";
  task.dsn = tc().dsn(1);
  task.sql = "BEGIN";
  task.then = {{"INSERT INTO piped VALUES ($1)", {"1"}},
               {"INSERT INTO piped VALUES ($1), ($2) RETURNING id", {"2", "3"}},
               {"COMMIT", {}}};
  absl::StatusOr<Result> done = internal::RunTask(task, options);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->command_tag, "COMMIT");  // the last statement's result
  EXPECT_EQ(ScalarOn(1, "SELECT string_agg(id::text, ',' ORDER BY id) FROM "
                        "piped"),
            "1,2,3");
  // A duplicate key stops the pipeline there: the first error is the
  // outcome, and what follows it does not run.
  task.then = {{"INSERT INTO piped VALUES ($1)", {"4"}},
               {"INSERT INTO piped VALUES ($1)", {"1"}},
               {"INSERT INTO piped VALUES ($1)", {"5"}},
               {"COMMIT", {}}};
  done = internal::RunTask(task, options);
  EXPECT_EQ(SqlStateOf(done.status()), "23505") << done.status();
  EXPECT_THAT(done.status().message(), HasSubstr("shard s2"));
  // The transaction was left failed, so its connection was not pooled;
  // the shard still serves the next task, which saw nothing of 4 or 5.
  internal::ShardTask count = task;
  count.sql = "SELECT count(*) FROM piped";
  count.then.clear();
  done = internal::RunTask(count, options);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_THAT(done->rows, ElementsAre(Row{"3"}));
  // A pipeline without a transaction block leaves a reusable connection.
  count.then = {{"SELECT $1::int + 1", {"41"}}};
  done = internal::RunTask(count, options);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_THAT(done->rows, ElementsAre(Row{"42"}));
  EXPECT_EQ(pools.Stats()[0].idle, 1);
}

// Statement::prepare: prepared on a connection's first use, reused after
// (one pooled connection: the server lists one prepared statement), still
// right after DEALLOCATE ALL (once refused, then prepared again), and a
// statement that fails to prepare fails as it would unprepared.
TEST_F(ExecTest, PreparedStatementsArePreparedOncePerConnection) {
  internal::ConnectionPools pools(PoolSettings{});
  internal::ExecOptions options;
  options.pools = &pools;
  internal::ShardTask task;
  task.shard = 1;
  task.shard_name = "s2";
  task.dsn = tc().dsn(1);
  task.sql = "SELECT $1::int * 2";
  task.params = {"21"};
  task.prepare = true;
  task.then = {{"SELECT count(*) FROM pg_prepared_statements", {}, true}};
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Result> done = internal::RunTask(task, options);
    ASSERT_TRUE(done.ok()) << done.status();
    EXPECT_THAT(done->rows, ElementsAre(Row{"2"})) << "run " << i;
  }
  internal::ShardTask alone = task;
  alone.then.clear();
  absl::StatusOr<Result> doubled = internal::RunTask(alone, options);
  ASSERT_TRUE(doubled.ok()) << doubled.status();
  EXPECT_THAT(doubled->rows, ElementsAre(Row{"42"}));
  EXPECT_EQ(pools.Stats()[0].idle, 1);

  internal::ShardTask deallocate = alone;
  deallocate.sql = "DEALLOCATE ALL";
  deallocate.params.clear();
  deallocate.prepare = false;
  ASSERT_TRUE(internal::RunTask(deallocate, options).ok());
  absl::StatusOr<Result> gone = internal::RunTask(alone, options);
  EXPECT_EQ(SqlStateOf(gone.status()), "26000") << gone.status();
  doubled = internal::RunTask(alone, options);
  ASSERT_TRUE(doubled.ok()) << doubled.status();
  EXPECT_THAT(doubled->rows, ElementsAre(Row{"42"}));

  // Its table changes shape under it: refused once, then prepared again.
  ASSERT_TRUE(tc().Query(1, "CREATE TABLE shaped (id int)").ok());
  internal::ShardTask star = alone;
  star.sql = "SELECT * FROM shaped WHERE id = $1";
  ASSERT_TRUE(internal::RunTask(star, options).ok());
  ASSERT_TRUE(tc().Query(1, "ALTER TABLE shaped ADD COLUMN v text").ok());
  absl::StatusOr<Result> changed = internal::RunTask(star, options);
  EXPECT_EQ(SqlStateOf(changed.status()), "0A000") << changed.status();
  changed = internal::RunTask(star, options);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_EQ(changed->columns.size(), 2u);

  internal::ShardTask bad = alone;
  bad.sql = "SELECT $1::int FROM no_such_table";
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<Result> failed = internal::RunTask(bad, options);
    EXPECT_EQ(SqlStateOf(failed.status()), "42P01") << failed.status();
  }
  doubled = internal::RunTask(alone, options);
  ASSERT_TRUE(doubled.ok()) << doubled.status();
  EXPECT_THAT(doubled->rows, ElementsAre(Row{"42"}));
}

TEST_F(ExecTest, ShardctlExecPrintsATableAndExitsZero) {
  testing::CommandOutput run = testing::RunCommand(ShardctlExec(
      tc().config_path(), {"--all", "CREATE TABLE cli_t (id int)"}));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.err, "");
  EXPECT_THAT(run.out, HasSubstr("shard  status  result"));
  for (int i = 1; i <= kShards; ++i) {
    EXPECT_THAT(run.out, HasSubstr(absl::StrCat("s", i,
                                                "     ok      CREATE "
                                                "TABLE")));
  }
  for (int i = 0; i < kShards; ++i) EXPECT_TRUE(TableExists(i, "cli_t"));

  run = testing::RunCommand(ShardctlExec(
      tc().config_path(),
      {"--all", "SELECT count(*) AS n, NULL::text AS nothing FROM cli_t"}));
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_THAT(run.out, HasSubstr("shard  n  nothing"));
  EXPECT_THAT(run.out, HasSubstr("s2     0  NULL"));
  EXPECT_THAT(run.out, HasSubstr("s3     ok      SELECT 1"));
}

TEST_F(ExecTest, ShardctlExecJson) {
  ASSERT_TRUE(tc().Query(0, "CREATE TABLE json_t (id int)").ok());
  ASSERT_TRUE(tc().Query(0, "INSERT INTO json_t VALUES (1), (2)").ok());
  testing::CommandOutput run = testing::RunCommand(
      ShardctlExec(tc().config_path(),
                   {"--all", "--format", "json",
                    "SELECT count(*) AS n, NULL::text AS z FROM json_t"}));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_TRUE(absl::StartsWith(run.out, "{\"shards\":[")) << run.out;
  EXPECT_THAT(run.out,
              HasSubstr("{\"shard\":\"s1\",\"ok\":true,\"command\":\"SELECT "
                        "1\",\"rows_affected\":1,\"columns\":[{\"name\":\"n\","
                        "\"type_oid\":20},{\"name\":\"z\",\"type_oid\":25}],"
                        "\"rows\":[[\"2\",null]]}"));
  EXPECT_THAT(run.out,
              HasSubstr("{\"shard\":\"s2\",\"ok\":false,\"code\":\"NOT_FOUND\","
                        "\"error\":\"shard s2: ERROR 42P01: relation "
                        "\\\"json_t\\\" does not exist (statement position "
                        "44)\"}"));
  EXPECT_EQ(run.err, "shardctl: exec failed on 2 of 3 shards: s2, s3\n");
}

TEST_F(ExecTest, ShardctlExecFailsWithOneLineSummary) {
  ASSERT_TRUE(tc().Query(1, "CREATE TABLE cli_dup (id int)").ok());
  testing::CommandOutput run = testing::RunCommand(ShardctlExec(
      tc().config_path(), {"--all", "CREATE TABLE cli_dup (id int)"}));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_EQ(run.err, "shardctl: exec failed on 1 of 3 shards: s2\n");
  EXPECT_THAT(run.out,
              HasSubstr("s2     error   shard s2: ERROR 42P07: relation "
                        "\"cli_dup\" already exists"));
  EXPECT_THAT(run.out, HasSubstr("s1     ok      CREATE TABLE"));
}

TEST_F(ExecTest, ShardctlExecRequiresAll) {
  testing::CommandOutput run =
      testing::RunCommand(ShardctlExec(tc().config_path(), {"SELECT 1"}));
  EXPECT_EQ(run.exit_code, 2);
  EXPECT_THAT(run.err, HasSubstr("--all"));
  EXPECT_EQ(run.out, "");
}

TEST_F(ExecTest, ShardctlExecRefusesEmptySql) {
  for (const char* sql : {"", " ;\n\t; "}) {
    SCOPED_TRACE(absl::StrCat("sql: '", sql, "'"));
    testing::CommandOutput run =
        testing::RunCommand(ShardctlExec(tc().config_path(), {"--all", sql}));
    EXPECT_EQ(run.exit_code, 1);
    EXPECT_EQ(run.out, "");
    EXPECT_EQ(run.err,
              "shardctl: the SQL statement is empty; pass the statement to "
              "run, e.g. shardctl exec -c shards.toml --all 'CREATE TABLE t "
              "(id int8)'\n");
  }
  testing::CommandOutput help =
      testing::RunCommand({SHARDCTL_PATH, "exec", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("An empty SQL string is refused (exit 1)"));
}

TEST_F(ExecTest, LibraryRefusesEmptySqlOnEveryShard) {
  std::unique_ptr<Cluster> cluster = OpenSuiteCluster();
  ASSERT_NE(cluster, nullptr);
  for (const char* sql : {"", " ;\n\t; "}) {
    std::vector<ShardOutcome> outcomes = cluster->ExecuteOnAllShards(sql);
    ASSERT_EQ(outcomes.size(), static_cast<size_t>(tc().size()));
    for (const ShardOutcome& o : outcomes) {
      EXPECT_EQ(o.status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(o.status.message(), "empty SQL: give a statement to run");
    }
  }
}

TEST_F(ExecTest, PasswordNeverAppearsInOutput) {
  // Trust authentication ignores the password; it only has to be printed
  // nowhere.
  // WriteConfig copies the cluster's own dsns; this one adds a password.
  std::string body;
  for (int i = 0; i < kShards; ++i) {
    absl::StrAppend(&body, "[shards.s", i + 1, "]\ndsn = \"", tc().dsn(i),
                    " password=sekret\"\n\n");
  }
  absl::StrAppend(&body, ConfigBody("connect = \"1s\"\n"));
  const std::string path = tc().cluster().dir + "/password.toml";
  {
    std::ofstream file(path);
    file << body;
    ASSERT_TRUE(file.good()) << "cannot write " << path;
  }

  testing::CommandOutput ok =
      testing::RunCommand(ShardctlExec(path, {"--all", "SELECT 1"}));
  EXPECT_EQ(ok.exit_code, 0) << ok.err;

  ASSERT_TRUE(tc().StopShard(2).ok());
  absl::Cleanup restart = [this] { EXPECT_TRUE(tc().StartShard(2).ok()); };
  for (const char* format : {"table", "json"}) {
    SCOPED_TRACE(format);
    testing::CommandOutput down = testing::RunCommand(
        ShardctlExec(path, {"--all", "--format", format, "SELECT 1"}));
    EXPECT_EQ(down.exit_code, 1);
    EXPECT_EQ(down.err, "shardctl: exec failed on 1 of 3 shards: s3\n");
    EXPECT_THAT(down.out, HasSubstr("is unreachable"));
    EXPECT_THAT(down.out, HasSubstr("password=********"));
    EXPECT_THAT(down.out + down.err, Not(HasSubstr("sekret")));
  }
  EXPECT_THAT(ok.out + ok.err, Not(HasSubstr("sekret")));
}

}  // namespace
}  // namespace shardkit
