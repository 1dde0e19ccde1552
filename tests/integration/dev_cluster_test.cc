// `shardctl dev up/down` against real PostgreSQL servers, driven through the
// binary as a user runs it, and the TestCluster fixture built on it.

#include <libpq-fe.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/test_cluster.h"

namespace shardkit::testing {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

// The connection string of the dev instance on `port`, database "app".
std::string LocalDsn(int port) { return dev::InstanceDsn(port, "app"); }

// One row of text values from `sql` on `dsn`, or the libpq error.
absl::StatusOr<std::vector<std::string>> QueryRow(const std::string& dsn,
                                                  const std::string& sql) {
  PGconn* conn = PQconnectdb(absl::StrCat(dsn, " connect_timeout=5").c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    absl::Status error = absl::UnavailableError(PQerrorMessage(conn));
    PQfinish(conn);
    return error;
  }
  PGresult* result = PQexec(conn, sql.c_str());
  absl::StatusOr<std::vector<std::string>> row;
  if (PQresultStatus(result) != PGRES_TUPLES_OK) {
    row = absl::UnknownError(PQerrorMessage(conn));
  } else if (PQntuples(result) != 1) {
    row = absl::NotFoundError(absl::StrCat(PQntuples(result), " rows"));
  } else {
    row.emplace();
    for (int c = 0; c < PQnfields(result); ++c) {
      row->push_back(PQgetvalue(result, 0, c));
    }
  }
  PQclear(result);
  PQfinish(conn);
  return row;
}

int CountOccurrences(const std::string& text, const std::string& needle) {
  int count = 0;
  for (size_t at = text.find(needle); at != std::string::npos;
       at = text.find(needle, at + 1)) {
    ++count;
  }
  return count;
}

// Each test gets its own directory and ports, and stops what it started.
class DevCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeTempDirForTest();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
    absl::StatusOr<int> port = FindFreePortsForTest(kShards);
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
  }

  void TearDown() override {
    if (dir_.empty()) return;
    RunCommand({SHARDCTL_PATH, "dev", "down", "--dir", dir_});
    RemoveDirForTest(dir_);
  }

  CommandOutput Up() {
    return RunCommand({SHARDCTL_PATH, "dev", "up", "--shards",
                       std::to_string(kShards), "--dir", dir_, "--port",
                       std::to_string(port_)});
  }
  CommandOutput Down() {
    return RunCommand({SHARDCTL_PATH, "dev", "down", "--dir", dir_});
  }

  std::string ExpectedShardsToml() const {
    std::string text =
        "# Written by `shardctl dev up`: 3 local PostgreSQL instances on "
        "loopback.\n";
    for (int i = 0; i < kShards; ++i) {
      absl::StrAppend(&text, "[shards.s", i + 1, "]\ndsn = \"",
                      LocalDsn(port_ + i), "\"\n\n");
    }
    absl::StrAppend(&text,
                    "[distributions.users]\n"
                    "strategy = \"hash\"\n"
                    "key_type = \"int8\"\n"
                    "shards = [\"s1\", \"s2\", \"s3\"]\n"
                    "\n"
                    "[tables.users]\n"
                    "distribution = \"users\"\n"
                    "key = \"id\"\n"
                    "\n"
                    "[tables.orders]\n"
                    "distribution = \"users\"\n"
                    "key = \"user_id\"\n"
                    "\n"
                    "[tables.countries]\n"
                    "reference = true\n");
    return text;
  }

  static constexpr int kShards = 3;
  std::string dir_;
  int port_ = 0;
};

TEST_F(DevCommandTest, UpStartsConfiguredServersAndWritesShardsToml) {
  CommandOutput up = Up();
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(up.err, "");
  EXPECT_EQ(CountOccurrences(up.out, " created "), kShards) << up.out;
  EXPECT_THAT(up.out, HasSubstr(absl::StrCat("s2     ", port_ + 1)));
  EXPECT_THAT(up.out, HasSubstr(LocalDsn(port_ + 2)));
  EXPECT_THAT(up.out, HasSubstr(absl::StrCat("Wrote ", dir_, "/shards.toml")));
  EXPECT_THAT(up.out, HasSubstr(absl::StrCat("shardctl map show -c ", dir_,
                                             "/shards.toml")));

  for (int i = 0; i < kShards; ++i) {
    SCOPED_TRACE(absl::StrCat("s", i + 1));
    absl::StatusOr<std::vector<std::string>> row = QueryRow(
        LocalDsn(port_ + i),
        "SELECT current_setting('port'), "
        "current_setting('max_prepared_transactions'), current_database(), "
        "current_setting('listen_addresses'), "
        "current_setting('lc_collate'), current_setting('server_encoding')");
    ASSERT_TRUE(row.ok()) << row.status();
    EXPECT_THAT(*row, ElementsAre(std::to_string(port_ + i), "64", "app",
                                  "127.0.0.1", "C", "UTF8"));
  }
  EXPECT_EQ(ReadFile(dir_ + "/shards.toml"), ExpectedShardsToml());
}

TEST_F(DevCommandTest, SecondUpIsHarmless) {
  CommandOutput first = Up();
  ASSERT_EQ(first.exit_code, 0) << first.err;
  std::string toml = ReadFile(dir_ + "/shards.toml");

  CommandOutput second = Up();
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.err, "");
  EXPECT_EQ(CountOccurrences(second.out, "already running"), kShards)
      << second.out;
  EXPECT_EQ(ReadFile(dir_ + "/shards.toml"), toml);
  for (int i = 0; i < kShards; ++i) {
    EXPECT_TRUE(QueryRow(LocalDsn(port_ + i), "SELECT 1").ok());
  }

  CommandOutput json = RunCommand({SHARDCTL_PATH, "dev", "up", "--shards",
                                   std::to_string(kShards), "--dir", dir_,
                                   "--port", std::to_string(port_),
                                   "--format", "json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  EXPECT_THAT(json.out,
              ::testing::HasSubstr(absl::StrCat(
                  "{\"name\":\"s2\",\"port\":", port_ + 1,
                  ",\"state\":\"already running\",\"dsn\":\"host=127.0.0.1 "
                  "port=", port_ + 1, " dbname=app user=postgres\"")));
}

TEST_F(DevCommandTest, DownStopsServersAndUpRestartsThemWithTheirData) {
  ASSERT_EQ(Up().exit_code, 0);
  ASSERT_TRUE(QueryRow(LocalDsn(port_),
                       "CREATE TABLE kept (x int); INSERT INTO kept VALUES "
                       "(42); SELECT 1")
                  .ok());

  CommandOutput down = Down();
  ASSERT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(down.out, "Stopped s1, s2, s3\n");
  for (int i = 0; i < kShards; ++i) {
    absl::StatusOr<std::vector<std::string>> row =
        QueryRow(LocalDsn(port_ + i), "SELECT 1");
    EXPECT_EQ(row.status().code(), absl::StatusCode::kUnavailable);
  }

  CommandOutput again = Down();
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out,
            absl::StrCat("No running dev instances under ", dir_, "\n"));

  CommandOutput up = Up();
  ASSERT_EQ(up.exit_code, 0) << up.err;
  EXPECT_EQ(CountOccurrences(up.out, " started "), kShards) << up.out;
  absl::StatusOr<std::vector<std::string>> row =
      QueryRow(LocalDsn(port_), "SELECT x FROM kept");
  ASSERT_TRUE(row.ok()) << row.status();
  EXPECT_THAT(*row, ElementsAre("42"));
}

TEST_F(DevCommandTest, PortTakenByAnotherListenerIsNamed) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port_ + 1));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<const sockaddr*>(&address),
                 sizeof(address)),
            0);
  ASSERT_EQ(listen(listener, 1), 0);

  CommandOutput up = Up();
  close(listener);
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_EQ(up.err,
            absl::StrFormat(
                "shardctl: port %d (shard s2) is already in use by another "
                "program; choose other ports with --port (shard i listens on "
                "port + i - 1)\n",
                port_ + 1));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/s1"))
      << "checks ports before creating or starting anything";
}

TEST_F(DevCommandTest, DownAsJsonListsWhatItStopped) {
  ASSERT_EQ(Up().exit_code, 0);
  CommandOutput down = RunCommand(
      {SHARDCTL_PATH, "dev", "down", "--dir", dir_, "--format", "json"});
  ASSERT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(down.err, "");
  EXPECT_EQ(down.out, absl::StrCat("{\"dir\":\"", dir_,
                                   "\",\"stopped\":[\"s1\",\"s2\",\"s3\"]}\n"));

  // A relative --dir comes back absolute; nothing left to stop.
  CommandOutput again =
      RunCommand({SHARDCTL_PATH, "dev", "down", "--dir",
                  std::filesystem::path(dir_)
                      .lexically_relative(std::filesystem::current_path())
                      .string(),
                  "--format", "json"});
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.out,
            absl::StrCat("{\"dir\":\"", dir_, "\",\"stopped\":[]}\n"));

  CommandOutput help = RunCommand({SHARDCTL_PATH, "dev", "down", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--format table|json"));
}

TEST_F(DevCommandTest, UpOnAnotherPortThanTheRunningClusterIsRefused) {
  ASSERT_EQ(Up().exit_code, 0);
  const int other_port = port_ + 10;
  CommandOutput up = RunCommand({SHARDCTL_PATH, "dev", "up", "--shards",
                                 std::to_string(kShards), "--dir", dir_,
                                 "--port", std::to_string(other_port)});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_EQ(up.out, "");
  EXPECT_EQ(up.err,
            absl::StrFormat(
                "shardctl: shard s1 (%s/s1) is already running on port %d, "
                "not %d as asked; pass --port %d, or stop the cluster first "
                "with `shardctl dev down --dir %s`\n",
                dir_, port_, other_port, port_, dir_));
  EXPECT_TRUE(QueryRow(LocalDsn(port_), "SELECT 1").ok())
      << "the running cluster is left alone";
}

TEST_F(DevCommandTest, DatabaseThatIsNotAPlainIdentifierIsRefused) {
  CommandOutput up =
      RunCommand({SHARDCTL_PATH, "dev", "up", "--shards", "1", "--dir", dir_,
                  "--port", std::to_string(port_), "--database", "bad name"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_EQ(up.out, "");
  EXPECT_EQ(up.err,
            "shardctl: database name 'bad name' is not a plain identifier; "
            "choose one (--database) of letters, digits and underscores, at "
            "most 63, not starting with a digit\n");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/s1"));
}

TEST_F(DevCommandTest, SettingSpanningLinesIsRefused) {
  CommandOutput up = RunCommand({SHARDCTL_PATH, "dev", "up", "--shards", "1",
                                 "--dir", dir_, "--port", std::to_string(port_),
                                 "--setting", "work_mem = 8MB\nfsync = on"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_EQ(up.out, "");
  EXPECT_EQ(up.err,
            "shardctl: an extra PostgreSQL setting spans several lines: "
            "'work_mem = 8MB\\nfsync = on'; give one setting per "
            "entry\n");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/s1"));
}

TEST(DevFormatTest, InstanceDsnAndShardsTomlSection) {
  EXPECT_EQ(dev::InstanceDsn(6001, "app"),
            "host=127.0.0.1 port=6001 dbname=app user=postgres");
  dev::DevInstance s1;
  s1.name = "s1";
  s1.dsn = dev::InstanceDsn(6001, "app");
  dev::DevInstance s2;
  s2.name = "s2";
  s2.dsn = "host=/tmp/a\"b\\c\tport=1";
  EXPECT_EQ(dev::ShardsTomlSection({s1, s2}),
            "[shards.s1]\n"
            "dsn = \"host=127.0.0.1 port=6001 dbname=app user=postgres\"\n"
            "\n"
            "[shards.s2]\n"
            "dsn = \"host=/tmp/a\\\"b\\\\c\\u0009port=1\"\n"
            "\n");
  EXPECT_EQ(dev::ShardsTomlSection({}), "");
}

TEST_F(DevCommandTest, ZeroShardsIsAUsageError) {
  CommandOutput up =
      RunCommand({SHARDCTL_PATH, "dev", "up", "--shards", "0", "--dir", dir_});
  EXPECT_EQ(up.exit_code, 2);
  EXPECT_EQ(up.out, "");
  EXPECT_EQ(up.err,
            "shardctl: --shards: Value 0 not in range 1 to 64 (see "
            "'shardctl dev up --help')\n");
}

TEST_F(DevCommandTest, PortsPastTheTopAreAUsageError) {
  CommandOutput up = RunCommand({SHARDCTL_PATH, "dev", "up", "--shards", "3",
                                 "--dir", dir_, "--port", "65534"});
  EXPECT_EQ(up.exit_code, 2);
  EXPECT_EQ(up.err,
            "shardctl: --port: 65534 is not a usable first port for 3 shards: "
            "it must be between 1024 and 65533 (see 'shardctl dev up "
            "--help')\n");
}

TEST_F(DevCommandTest, DownOfAMissingDirectorySaysWhatToDo) {
  std::string missing = dir_ + "/nope";
  CommandOutput down =
      RunCommand({SHARDCTL_PATH, "dev", "down", "--dir", missing});
  EXPECT_EQ(down.exit_code, 1);
  EXPECT_EQ(down.err,
            absl::StrCat("shardctl: no dev cluster at ", missing,
                         " (no such directory); pass the --dir given to "
                         "`shardctl dev up`\n"));
}

TEST_F(DevCommandTest, AsRootADirectoryPostgresCannotReachIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "only root hands servers to postgres";
  std::string closed = dir_ + "/closed";
  std::filesystem::create_directory(closed);
  std::filesystem::permissions(closed, std::filesystem::perms::owner_all);
  CommandOutput up = RunCommand({SHARDCTL_PATH, "dev", "up", "--shards", "1",
                                 "--dir", closed + "/cluster"});
  EXPECT_EQ(up.exit_code, 1);
  EXPECT_EQ(up.err,
            absl::StrCat(
                "shardctl: the PostgreSQL servers run as the 'postgres' user "
                "(shardctl runs as root), and that user cannot enter ",
                closed,
                " (mode 0700, owner uid 0); use a directory it can reach, "
                "such as /tmp/shardkit-dev, or allow it in (chmod o+x ",
                closed, ")\n"));
  EXPECT_FALSE(std::filesystem::exists(closed + "/cluster"));
}

TEST_F(DevCommandTest, HelpSaysWhatUpDoes) {
  CommandOutput help = RunCommand({SHARDCTL_PATH, "dev", "up", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("trust authentication on loopback"));
  EXPECT_THAT(help.out, HasSubstr("Development only"));
  EXPECT_THAT(help.out, HasSubstr("--shards"));
  EXPECT_THAT(help.out, HasSubstr("--port"));
}

TEST(TestClusterTest, StopShardAndStartShard) {
  absl::StatusOr<std::unique_ptr<TestCluster>> started = TestCluster::Start(2);
  ASSERT_TRUE(started.ok()) << started.status();
  TestCluster& cluster = **started;
  ASSERT_TRUE(cluster
                  .Query(1,
                         "CREATE TABLE t (x int); INSERT INTO t "
                         "VALUES (7), (NULL)")
                  .ok());

  ASSERT_TRUE(cluster.StopShard(1).ok());
  absl::StatusOr<bool> running = dev::IsRunning(cluster.cluster().instances[1]);
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_FALSE(*running);
  EXPECT_TRUE(cluster.StopShard(1).ok()) << "stopping twice is fine";
  absl::StatusOr<std::vector<std::vector<std::string>>> down =
      cluster.Query(1, "SELECT 1");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(down.status().message(), HasSubstr("shard s2"));
  EXPECT_TRUE(cluster.Query(0, "SELECT 1").ok()) << "s1 is not affected";

  ASSERT_TRUE(cluster.StartShard(1).ok());
  EXPECT_TRUE(dev::IsRunning(cluster.cluster().instances[1]).value_or(false));
  EXPECT_TRUE(cluster.StartShard(1).ok()) << "starting twice is fine";
  absl::StatusOr<std::vector<std::vector<std::string>>> rows =
      cluster.Query(1, "SELECT x FROM t ORDER BY x");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_THAT(*rows, ElementsAre(ElementsAre("7"), ElementsAre("NULL")));
}

TEST(TestClusterTest, QueryReportsServerErrorsWithSqlState) {
  absl::StatusOr<std::unique_ptr<TestCluster>> cluster = TestCluster::Start(1);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  absl::StatusOr<std::vector<std::vector<std::string>>> rows =
      (*cluster)->Query(0, "SELECT * FROM nope");
  EXPECT_EQ(rows.status().code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(rows.status().message(),
            "shard s1: ERROR 42P01: relation \"nope\" does not exist");
}

TEST(TestClusterTest, ExtraSettingsConfigAndCleanup) {
  absl::StatusOr<std::unique_ptr<TestCluster>> started =
      TestCluster::Start(2, {"work_mem = '7MB'"});
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<TestCluster> cluster = *std::move(started);
  std::string dir = cluster->cluster().dir;

  absl::StatusOr<std::vector<std::vector<std::string>>> rows =
      cluster->Query(1, "SHOW work_mem");
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_THAT(*rows, ElementsAre(ElementsAre("7MB")));
  EXPECT_EQ(cluster->dsn(1), LocalDsn(cluster->cluster().instances[1].port));
  EXPECT_EQ(cluster->config_path(), dir + "/shards.toml");

  std::string path = cluster->WriteConfig("custom.toml",
                                          "[distributions.d]\nstrategy = "
                                          "\"hash\"");
  EXPECT_EQ(path, dir + "/custom.toml");
  EXPECT_EQ(ReadFile(path),
            absl::StrCat("[shards.s1]\ndsn = \"", cluster->dsn(0),
                         "\"\n\n[shards.s2]\ndsn = \"", cluster->dsn(1),
                         "\"\n\n[distributions.d]\nstrategy = \"hash\"\n"));

  std::string dsn = cluster->dsn(0);
  cluster.reset();
  EXPECT_FALSE(std::filesystem::exists(dir));
  EXPECT_EQ(QueryRow(dsn, "SELECT 1").status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(RunCommandTest, FeedsStdinAndSeparatesOutputs) {
  CommandOutput cat =
      RunCommand({"/bin/sh", "-c", "cat; echo oops >&2; exit 3"}, "hello\n");
  EXPECT_EQ(cat.exit_code, 3);
  EXPECT_EQ(cat.out, "hello\n");
  EXPECT_EQ(cat.err, "oops\n");

  CommandOutput missing = RunCommand({"/nonexistent/program"});
  EXPECT_EQ(missing.exit_code, -1);
  EXPECT_THAT(missing.err, HasSubstr("No such file or directory"));
}

}  // namespace
}  // namespace shardkit::testing
