// Streaming replicas against real PostgreSQL 15 on loopback: `dev up
// --replicas`, the health probe (router/health.h) and `shardctl health`.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/health.h"
#include "shardkit/config.h"
#include "tests/integration/test_cluster.h"

namespace shardkit::testing {
namespace {

using internal::BackendHealth;
using internal::BackendRole;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// --- A small JSON reader, to check `shardctl health --format json` as a
// program reading it would. ------------------------------------------------

struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> items;        // array elements, or object values
  std::vector<std::string> keys;  // object keys, parallel to items

  // The member `key` of an object; a null value when absent.
  const Json& operator[](std::string_view key) const {
    static const Json kNullValue;
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return items[i];
    }
    return kNullValue;
  }
  bool is_null() const { return kind == Kind::kNull; }
};

class JsonReader {
 public:
  explicit JsonReader(std::string_view text) : text_(text) {}

  // The one value `text` holds (surrounded by whitespace at most).
  std::optional<Json> ReadDocument() {
    std::optional<Json> value = ReadValue();
    SkipSpace();
    if (!value || pos_ != text_.size()) return std::nullopt;
    return value;
  }

 private:
  void SkipSpace() {
    while (pos_ < text_.size() && std::string_view(" \t\r\n").find(
                                      text_[pos_]) != std::string_view::npos) {
      ++pos_;
    }
  }
  bool Consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  std::optional<Json> ReadValue() {
    SkipSpace();
    if (pos_ >= text_.size()) return std::nullopt;
    Json value;
    const char c = text_[pos_];
    if (c == '{') return ReadContainer('}', true);
    if (c == '[') return ReadContainer(']', false);
    if (c == '"') {
      std::optional<std::string> s = ReadString();
      if (!s) return std::nullopt;
      value.kind = Json::Kind::kString;
      value.string = *s;
    } else if (Consume("true")) {
      value.kind = Json::Kind::kBool;
      value.boolean = true;
    } else if (Consume("false")) {
      value.kind = Json::Kind::kBool;
    } else if (Consume("null")) {
      value.kind = Json::Kind::kNull;
    } else {
      const size_t end = text_.find_first_not_of("+-0123456789.eE", pos_);
      const std::string number(text_.substr(pos_, end - pos_));
      char* parsed_end = nullptr;
      value.number = std::strtod(number.c_str(), &parsed_end);
      if (number.empty() || *parsed_end != '\0') return std::nullopt;
      value.kind = Json::Kind::kNumber;
      pos_ = end == std::string_view::npos ? text_.size() : end;
    }
    return value;
  }

  std::optional<std::string> ReadString() {
    std::string out;
    ++pos_;  // the opening quote
    while (pos_ < text_.size() && text_[pos_] != '"') {
      char c = text_[pos_++];
      if (c == '\\') {
        if (pos_ >= text_.size()) return std::nullopt;
        c = text_[pos_++];
        switch (c) {
          case 'n':
            c = '\n';
            break;
          case 't':
            c = '\t';
            break;
          case 'r':
            c = '\r';
            break;
          case 'b':
            c = '\b';
            break;
          case 'f':
            c = '\f';
            break;
          case 'u': {
            // Enough for the control characters our writer escapes.
            if (pos_ + 4 > text_.size()) return std::nullopt;
            c = static_cast<char>(
                std::stoi(std::string(text_.substr(pos_, 4)), nullptr, 16));
            pos_ += 4;
            break;
          }
          default:
            break;  // \" \\ \/
        }
      }
      out += c;
    }
    if (pos_ >= text_.size()) return std::nullopt;
    ++pos_;  // the closing quote
    return out;
  }

  std::optional<Json> ReadContainer(char close, bool object) {
    Json value;
    value.kind = object ? Json::Kind::kObject : Json::Kind::kArray;
    ++pos_;
    SkipSpace();
    if (Consume(std::string_view(&close, 1))) return value;
    while (true) {
      if (object) {
        SkipSpace();
        if (pos_ >= text_.size() || text_[pos_] != '"') return std::nullopt;
        std::optional<std::string> key = ReadString();
        SkipSpace();
        if (!key || !Consume(":")) return std::nullopt;
        value.keys.push_back(*key);
      }
      std::optional<Json> item = ReadValue();
      if (!item) return std::nullopt;
      value.items.push_back(std::move(*item));
      SkipSpace();
      if (Consume(",")) continue;
      if (Consume(std::string_view(&close, 1))) return value;
      return std::nullopt;
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

std::optional<Json> ParseJson(std::string_view text) {
  return JsonReader(text).ReadDocument();
}

TEST(JsonReaderTest, ReadsWhatTheTestsNeed) {
  std::optional<Json> doc = ParseJson(
      R"( {"a":[1,-2.5e1,true,false,null],"b":{"c":"x\"y\\u0009"},"d":[]} )");
  ASSERT_TRUE(doc.has_value());
  ASSERT_EQ(doc->kind, Json::Kind::kObject);
  ASSERT_EQ((*doc)["a"].items.size(), 5u);
  EXPECT_EQ((*doc)["a"].items[1].number, -25);
  EXPECT_TRUE((*doc)["a"].items[2].boolean);
  EXPECT_FALSE((*doc)["a"].items[3].boolean);
  EXPECT_TRUE((*doc)["a"].items[4].is_null());
  EXPECT_EQ((*doc)["b"]["c"].string, "x\"y\\u0009");
  EXPECT_TRUE((*doc)["missing"].is_null());
  EXPECT_FALSE(ParseJson("{\"a\":1").has_value());
  EXPECT_FALSE(ParseJson("[1,]").has_value());
  EXPECT_FALSE(ParseJson("{} x").has_value());
}

// --- The cluster: 2 shards, each a primary with 1 streaming replica. ------

class ReplicaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<TestCluster>> started =
        TestCluster::StartWithReplicas(2, 1);
    ASSERT_TRUE(started.ok()) << started.status();
    cluster_ = started->release();
    absl::StatusOr<Config> config = LoadConfig(cluster_->config_path());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = new Config(*std::move(config));
    for (int shard = 0; shard < 2; ++shard) {
      ASSERT_TRUE(cluster_
                      ->Query(shard,
                              "CREATE TABLE items (id int8 PRIMARY KEY, "
                              "note text)")
                      .ok());
    }
  }

  static void TearDownTestSuite() {
    delete config_;
    config_ = nullptr;
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    if (cluster_ == nullptr) GTEST_SKIP() << "the cluster did not start";
  }

  static std::vector<BackendHealth> Health() {
    return internal::CheckHealth(config_->map, internal::ProbeOptions{});
  }

  // The health of `backend` ("primary" or "r1") of shard `shard` (0-based).
  static BackendHealth HealthOf(int shard, const std::string& backend) {
    for (BackendHealth& b : Health()) {
      if (b.target.shard == static_cast<ShardId>(shard) &&
          b.target.backend == backend) {
        return b;
      }
    }
    ADD_FAILURE() << "no backend " << backend << " of shard " << shard;
    return BackendHealth();
  }

  // Whether shard `shard`'s replica has replayed everything its primary
  // wrote.
  static bool CaughtUp(int shard) {
    BackendHealth r = HealthOf(shard, "r1");
    return r.up() && r.lag_bytes == 0u && r.lag == absl::ZeroDuration();
  }

  static std::string Scalar(int shard, const std::string& sql) {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        cluster_->Query(shard, sql);
    if (!rows.ok()) return absl::StrCat("error: ", rows.status().message());
    return rows->empty() || rows->front().empty() ? "" : rows->front().front();
  }

  static std::string ReplicaScalar(int shard, const std::string& sql) {
    absl::StatusOr<std::vector<std::vector<std::string>>> rows =
        cluster_->QueryReplica(shard, 0, sql);
    if (!rows.ok()) return absl::StrCat("error: ", rows.status().message());
    return rows->empty() || rows->front().empty() ? "" : rows->front().front();
  }

  static CommandOutput ShardctlHealth(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {SHARDCTL_PATH, "health", "-c",
                                     cluster_->config_path()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return RunCommand(argv);
  }

  static TestCluster* cluster_;
  static Config* config_;
};

TestCluster* ReplicaTest::cluster_ = nullptr;
Config* ReplicaTest::config_ = nullptr;

TEST_F(ReplicaTest, DevUpListsTheReplicasInItsConfiguration) {
  ASSERT_EQ(config_->map.shards().size(), 2u);
  for (int shard = 0; shard < 2; ++shard) {
    const Shard& s = config_->map.shard(shard);
    EXPECT_EQ(s.dsn, cluster_->dsn(shard));
    ASSERT_EQ(s.replicas.size(), 1u);
    EXPECT_EQ(s.replicas[0].name, "r1");
    EXPECT_EQ(s.replicas[0].weight, 1);
    EXPECT_EQ(s.replicas[0].dsn, cluster_->replica_dsn(shard, 0));
    // Replicas take the ports after the shards'.
    EXPECT_EQ(cluster_->cluster().instances[shard].replicas[0].port,
              cluster_->cluster().instances[0].port + 2 + shard);
    EXPECT_EQ(ReplicaScalar(shard, "SELECT pg_is_in_recovery()"), "t");
    EXPECT_EQ(Scalar(shard, "SELECT pg_is_in_recovery()"), "f");
    EXPECT_TRUE(Eventually([&] {
      return Scalar(shard,
                    "SELECT count(*) FROM pg_stat_replication WHERE state = "
                    "'streaming'") == "1";
    }));
  }
}

TEST_F(ReplicaTest, ARowWrittenOnAPrimaryAppearsOnItsReplicaOnly) {
  ASSERT_EQ(Scalar(0, "INSERT INTO items VALUES (1, 'on s1') RETURNING id"),
            "1");
  ASSERT_EQ(Scalar(1, "INSERT INTO items VALUES (2, 'on s2') RETURNING id"),
            "2");
  EXPECT_TRUE(Eventually([] {
    return ReplicaScalar(0, "SELECT note FROM items WHERE id = 1") == "on s1";
  }));
  EXPECT_TRUE(Eventually([] {
    return ReplicaScalar(1, "SELECT note FROM items WHERE id = 2") == "on s2";
  }));
  EXPECT_EQ(ReplicaScalar(0, "SELECT count(*) FROM items WHERE id = 2"), "0");
  // A replica is read-only.
  EXPECT_THAT(ReplicaScalar(0, "INSERT INTO items VALUES (3, 'x')"),
              HasSubstr("ERROR 25006"));
}

TEST_F(ReplicaTest, HealthReportsRolesAndLag) {
  ASSERT_EQ(Scalar(0, "INSERT INTO items VALUES (10, 'x') RETURNING id"), "10");
  ASSERT_TRUE(Eventually([] { return CaughtUp(0) && CaughtUp(1); }));
  std::vector<BackendHealth> health = Health();
  ASSERT_EQ(health.size(), 4u);
  for (const BackendHealth& b : health) {
    SCOPED_TRACE(absl::StrCat(b.target.shard_name, " ", b.target.backend));
    EXPECT_TRUE(b.up()) << b.status;
    EXPECT_TRUE(b.lsn.has_value());
    EXPECT_GT(b.latency, absl::ZeroDuration());
    EXPECT_LT(b.latency, absl::Seconds(5));
    EXPECT_GT(b.connect_time, absl::ZeroDuration());
    EXPECT_FALSE(b.replay_paused);
    if (b.target.configured_primary) {
      EXPECT_EQ(b.role, BackendRole::kPrimary);
      EXPECT_EQ(b.lag_bytes, std::nullopt);
      EXPECT_EQ(b.lag, std::nullopt);
    } else {
      EXPECT_EQ(b.role, BackendRole::kReplica);
      EXPECT_TRUE(b.receive_lsn.has_value());
    }
  }
  EXPECT_EQ(health[0].target.backend, "primary");
  EXPECT_EQ(health[1].target.backend, "r1");
  EXPECT_EQ(health[1].target.shard_name, "s1");
  EXPECT_EQ(health[3].target.shard_name, "s2");
}

// pg_wal_replay_pause() on a replica: it keeps receiving the primary's WAL
// but applies none, so both lags grow while the primary writes.
TEST_F(ReplicaTest, APausedReplayShowsGrowingLag) {
  ASSERT_TRUE(Eventually([] { return CaughtUp(0); }));
  ASSERT_EQ(ReplicaScalar(0, "SELECT pg_wal_replay_pause()"), "");
  ASSERT_TRUE(Eventually([] {
    return ReplicaScalar(0, "SELECT pg_get_wal_replay_pause_state()") ==
           "paused";
  }));
  std::vector<BackendHealth> seen;
  for (int round = 0; round < 3; ++round) {
    ASSERT_EQ(
        Scalar(0, absl::StrCat("INSERT INTO items SELECT g, repeat('x', "
                               "100) FROM generate_series(",
                               1000 * (round + 1), ", ",
                               1000 * (round + 1) + 499, ") g RETURNING 1")),
        "1");
    // The insert's WAL is written out on the primary (commits do not wait
    // for it: synchronous_commit is off) and reaches the replica, which
    // receives it but replays none of it.
    std::optional<uint64_t> inserted =
        internal::ParseLsn(Scalar(0, "SELECT pg_current_wal_insert_lsn()"));
    ASSERT_TRUE(inserted.has_value());
    ASSERT_TRUE(Eventually([&] {
      std::optional<uint64_t> written = HealthOf(0, "primary").lsn;
      std::optional<uint64_t> received = HealthOf(0, "r1").receive_lsn;
      return written && *written >= *inserted && received &&
             *received >= *inserted;
    }));
    absl::SleepFor(absl::Milliseconds(50));
    seen.push_back(HealthOf(0, "r1"));
  }
  for (size_t i = 0; i < seen.size(); ++i) {
    SCOPED_TRACE(i);
    const BackendHealth& r = seen[i];
    ASSERT_TRUE(r.up()) << r.status;
    EXPECT_EQ(r.role, BackendRole::kReplica);
    EXPECT_TRUE(r.replay_paused);
    ASSERT_TRUE(r.lag_bytes.has_value());
    ASSERT_TRUE(r.lag.has_value());
    EXPECT_GT(*r.lag_bytes, 0u);
    EXPECT_GT(*r.lag, absl::ZeroDuration());
    EXPECT_LT(*r.lsn, *r.receive_lsn);
    if (i > 0) {
      EXPECT_GT(*r.lag_bytes, *seen[i - 1].lag_bytes);
      EXPECT_GT(*r.lag, *seen[i - 1].lag);
      EXPECT_EQ(*r.lsn, *seen[i - 1].lsn);  // nothing replayed
    }
  }
  // The other shard's replica is not affected.
  EXPECT_TRUE(Eventually([] { return CaughtUp(1); }));
  // The rows are not visible on the paused replica yet.
  EXPECT_EQ(ReplicaScalar(0, "SELECT count(*) FROM items WHERE id >= 1000"),
            "0");

  ASSERT_EQ(ReplicaScalar(0, "SELECT pg_wal_replay_resume()"), "");
  EXPECT_TRUE(Eventually([] { return CaughtUp(0); }));
  EXPECT_EQ(ReplicaScalar(0, "SELECT count(*) FROM items WHERE id >= 1000"),
            "1500");
  EXPECT_FALSE(HealthOf(0, "r1").replay_paused);
}

TEST_F(ReplicaTest, AStoppedReplicaIsDown) {
  ASSERT_TRUE(cluster_->StopReplica(1, 0).ok());
  std::vector<BackendHealth> health = Health();
  ASSERT_EQ(health.size(), 4u);
  const BackendHealth& down = health[3];
  EXPECT_EQ(down.target.shard_name, "s2");
  EXPECT_EQ(down.target.backend, "r1");
  EXPECT_FALSE(down.up());
  EXPECT_EQ(down.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(down.status.message()),
              StartsWith(absl::StrCat("shard s2 replica r1 (",
                                      cluster_->replica_dsn(1, 0),
                                      ") is unreachable: ")));
  EXPECT_EQ(down.role, BackendRole::kUnknown);
  EXPECT_EQ(down.lag_bytes, std::nullopt);
  for (int i : {0, 1, 2}) EXPECT_TRUE(health[i].up()) << health[i].status;

  // Every primary is up: shardctl health still succeeds, and says which
  // replica is down.
  CommandOutput table = ShardctlHealth({});
  EXPECT_EQ(table.exit_code, 0) << table.err;
  EXPECT_EQ(table.err, "");
  EXPECT_THAT(table.out, HasSubstr("s2     r1       -        down   -"));
  EXPECT_THAT(table.out, HasSubstr("shard s2 replica r1 ("));

  ASSERT_TRUE(cluster_->StartReplica(1, 0).ok());
  EXPECT_TRUE(Eventually([] { return CaughtUp(1); }));
}

TEST_F(ReplicaTest, ShardctlHealthJson) {
  ASSERT_TRUE(Eventually([] { return CaughtUp(0) && CaughtUp(1); }));
  CommandOutput r = ShardctlHealth({"--format", "json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  std::optional<Json> doc = ParseJson(r.out);
  ASSERT_TRUE(doc.has_value()) << r.out;
  EXPECT_TRUE((*doc)["ok"].boolean);
  const std::vector<Json>& backends = (*doc)["backends"].items;
  ASSERT_EQ(backends.size(), 4u) << r.out;
  const char* expected[][3] = {{"s1", "primary", "primary"},
                               {"s1", "r1", "replica"},
                               {"s2", "primary", "primary"},
                               {"s2", "r1", "replica"}};
  for (size_t i = 0; i < backends.size(); ++i) {
    const Json& b = backends[i];
    SCOPED_TRACE(r.out);
    EXPECT_EQ(b["shard"].string, expected[i][0]);
    EXPECT_EQ(b["backend"].string, expected[i][1]);
    EXPECT_EQ(b["configured_role"].string, expected[i][2]);
    EXPECT_EQ(b["role"].string, expected[i][2]);
    EXPECT_EQ(b["state"].string, "up");
    EXPECT_TRUE(b["error"].is_null());
    EXPECT_EQ(b["dsn"].string, i % 2 == 0 ? cluster_->dsn(i / 2)
                                          : cluster_->replica_dsn(i / 2, 0));
    EXPECT_TRUE(internal::ParseLsn(b["lsn"].string).has_value());
    EXPECT_EQ(b["latency_ms"].kind, Json::Kind::kNumber);
    EXPECT_GT(b["latency_ms"].number, 0);
    EXPECT_EQ(b["connect_ms"].kind, Json::Kind::kNumber);
    EXPECT_FALSE(b["replay_paused"].boolean);
    if (i % 2 == 0) {
      EXPECT_TRUE(b["lag_bytes"].is_null());
      EXPECT_TRUE(b["lag_seconds"].is_null());
      EXPECT_TRUE(b["receive_lsn"].is_null());
    } else {
      EXPECT_EQ(b["lag_bytes"].kind, Json::Kind::kNumber);
      EXPECT_EQ(b["lag_bytes"].number, 0);
      EXPECT_EQ(b["lag_seconds"].number, 0);
      EXPECT_TRUE(internal::ParseLsn(b["receive_lsn"].string).has_value());
    }
  }
}

// A primary that is down fails the command (exit 1, one line on stderr
// naming it), while its replica, still up, has no known byte lag.
TEST_F(ReplicaTest, APrimaryDownFailsShardctlHealth) {
  ASSERT_TRUE(cluster_->StopShard(1).ok());
  CommandOutput r = ShardctlHealth({"--format", "json"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, StartsWith("shardctl: the primary of shard s2 is down: "
                                "shard s2 ("));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  std::optional<Json> doc = ParseJson(r.out);
  ASSERT_TRUE(doc.has_value()) << r.out;
  EXPECT_FALSE((*doc)["ok"].boolean);
  const std::vector<Json>& backends = (*doc)["backends"].items;
  ASSERT_EQ(backends.size(), 4u);
  EXPECT_EQ(backends[2]["state"].string, "down");
  EXPECT_EQ(backends[2]["role"].string, "unknown");
  EXPECT_THAT(backends[2]["error"].string, HasSubstr("is unreachable"));
  EXPECT_TRUE(backends[2]["latency_ms"].is_null());
  EXPECT_EQ(backends[3]["state"].string, "up");
  EXPECT_EQ(backends[3]["role"].string, "replica");
  EXPECT_TRUE(backends[3]["lag_bytes"].is_null());

  ASSERT_TRUE(cluster_->StartShard(1).ok());
  CommandOutput again = ShardctlHealth({});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  EXPECT_TRUE(Eventually([] { return CaughtUp(1); }));
}

// --- shardctl dev up --replicas / dev down, as a user runs them. -----------

class DevReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::string> dir = MakeTempDirForTest();
    ASSERT_TRUE(dir.ok()) << dir.status();
    dir_ = *dir;
  }
  void TearDown() override {
    RunCommand({SHARDCTL_PATH, "dev", "down", "--dir", dir_});
    RemoveDirForTest(dir_);
  }
  std::string dir_;
};

TEST_F(DevReplicasTest, UpIsIdempotentAndDownStopsTheReplicasToo) {
  // The catalog instance on the first port, the shards' after it.
  absl::StatusOr<int> port = FindFreePortsForTest(5);
  ASSERT_TRUE(port.ok()) << port.status();
  ++*port;
  const std::vector<std::string> up = {
      SHARDCTL_PATH,       "dev",      "up",    "--shards", "2",
      "--replicas",        "1",        "--dir", dir_,       "--port",
      absl::StrCat(*port), "--format", "json"};
  CommandOutput first = RunCommand(up);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  std::optional<Json> doc = ParseJson(first.out);
  ASSERT_TRUE(doc.has_value()) << first.out;
  const std::vector<Json>& shards = (*doc)["shards"].items;
  ASSERT_EQ(shards.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    SCOPED_TRACE(first.out);
    EXPECT_EQ(shards[i]["port"].number, *port + static_cast<int>(i));
    ASSERT_EQ(shards[i]["replicas"].items.size(), 1u);
    const Json& replica = shards[i]["replicas"].items[0];
    EXPECT_EQ(replica["name"].string, absl::StrCat("s", i + 1, "-r1"));
    EXPECT_EQ(replica["port"].number, *port + 2 + static_cast<int>(i));
    EXPECT_EQ(replica["state"].string, "created");
    EXPECT_EQ(replica["dsn"].string,
              dev::InstanceDsn(*port + 2 + static_cast<int>(i), "app"));
  }
  absl::StatusOr<Config> config = LoadConfig(dir_ + "/shards.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->map.shard(1).replicas.at(0).dsn,
            dev::InstanceDsn(*port + 3, "app"));

  CommandOutput second = RunCommand(up);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_THAT(second.out, HasSubstr("\"name\":\"s2-r1\",\"port\":" +
                                    std::to_string(*port + 3) +
                                    ",\"state\":\"already running\""));

  CommandOutput health =
      RunCommand({SHARDCTL_PATH, "health", "-c", dir_ + "/shards.toml"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_THAT(health.out, HasSubstr("s1     r1       replica  up"));

  CommandOutput down = RunCommand(
      {SHARDCTL_PATH, "dev", "down", "--dir", dir_, "--format", "json"});
  EXPECT_EQ(down.exit_code, 0) << down.err;
  EXPECT_EQ(down.out, absl::StrCat("{\"dir\":\"", dir_,
                                   "\",\"stopped\":[\"s1\",\"s1-r1\",\"s2\","
                                   "\"s2-r1\",\"catalog\"]}\n"));
}

TEST_F(DevReplicasTest, PortsPastTheTopCountTheReplicas) {
  // 3 shards with 2 replicas each take 9 ports: 65528..65536 is one too far.
  CommandOutput up =
      RunCommand({SHARDCTL_PATH, "dev", "up", "--shards", "3", "--replicas",
                  "2", "--dir", dir_, "--port", "65528"});
  EXPECT_EQ(up.exit_code, 2);
  EXPECT_THAT(up.err, HasSubstr("65528 is not a usable first port for 3 "
                                "shards with 2 replicas each and the "
                                "catalog on the port before: it must be "
                                "between 1025 and 65527"));
  CommandOutput too_many = RunCommand({SHARDCTL_PATH, "dev", "up", "--shards",
                                       "1", "--replicas", "9", "--dir", dir_});
  EXPECT_EQ(too_many.exit_code, 2);
  EXPECT_THAT(too_many.err,
              HasSubstr("--replicas: Value 9 not in range 0 to 8"));
}

TEST(HealthCommandTest, HelpAndUsageErrors) {
  CommandOutput help = RunCommand({SHARDCTL_PATH, "health", "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--format table|json"));
  EXPECT_THAT(help.out, HasSubstr("Exit status: 0 when every shard's primary "
                                  "is up and not in recovery"));
  CommandOutput no_config = RunCommand({SHARDCTL_PATH, "health"});
  EXPECT_EQ(no_config.exit_code, 2);
  EXPECT_EQ(no_config.err,
            "shardctl: --config is required (see 'shardctl health --help')\n");
  CommandOutput missing =
      RunCommand({SHARDCTL_PATH, "health", "-c", "/nonexistent/shards.toml"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.err,
            "shardctl: /nonexistent/shards.toml: cannot read the "
            "configuration: No such file or directory\n");
}

TEST(ShardsTomlSectionTest, ListsEachShardsReplicas) {
  dev::DevInstance s1;
  s1.name = "s1";
  s1.dsn = "host=127.0.0.1 port=6001 dbname=app user=postgres";
  for (int port : {6003, 6005}) {
    dev::DevInstance replica;
    replica.dsn = dev::InstanceDsn(port, "app");
    s1.replicas.push_back(replica);
  }
  dev::DevInstance s2;
  s2.name = "s2";
  s2.dsn = "host=127.0.0.1 port=6002 dbname=app user=postgres";
  const std::string toml = dev::ShardsTomlSection({s1, s2});
  EXPECT_EQ(toml,
            "[shards.s1]\n"
            "dsn = \"host=127.0.0.1 port=6001 dbname=app user=postgres\"\n"
            "replicas = [ { dsn = \"host=127.0.0.1 port=6003 dbname=app "
            "user=postgres\" },\n"
            "             { dsn = \"host=127.0.0.1 port=6005 dbname=app "
            "user=postgres\" } ]\n"
            "\n"
            "[shards.s2]\n"
            "dsn = \"host=127.0.0.1 port=6002 dbname=app user=postgres\"\n"
            "\n");
  absl::StatusOr<Config> config = ParseConfig(toml, "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  ASSERT_EQ(config->map.shard(0).replicas.size(), 2u);
  EXPECT_EQ(config->map.shard(0).replicas[1].name, "r2");
}

}  // namespace
}  // namespace shardkit::testing
