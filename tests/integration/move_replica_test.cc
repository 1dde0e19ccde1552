// Moves of hash slices between shards that have replicas. shardkit's hash
// functions reach a replica with the WAL, the module's file does not, and
// reads of a moving slice sent to a replica run the slice's condition
// there: `shardctl hash check` checks every replica, and a move relies on
// the shards' hash only when their replicas hash too (a replica that
// cannot be asked counts as one that cannot hash).

#include <signal.h>
#include <sys/types.h>

#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "cli/dev_cluster.h"
#include "common/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using testing::CommandOutput;
using ::testing::HasSubstr;
using testing::RunCommand;
using testing::TestCluster;

// s3 owns nothing: the moves' destination.
constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.users]
distribution = "users"
key = "id"
)";

constexpr int kUsers = 600;

class MoveReplicaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto started = TestCluster::StartWithReplicas(3, 1);
    ASSERT_TRUE(started.ok()) << started.status();
    shards_ = *std::move(started);
    auto config = shards_->WriteMoveConfig(
        "move_replica.toml", kMapBody,
        "CREATE TABLE users (id int8 PRIMARY KEY, name text)");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto cluster = Cluster::OpenFile(config_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    std::string users = "INSERT INTO users (id, name) VALUES ";
    for (int id = 1; id <= kUsers; ++id) {
      StrAppend(&users, id == 1 ? "" : ", ", "(", id, ", 'u", id, "')");
    }
    ASSERT_TRUE((*cluster)->Execute(users).ok());
    // The functions on every primary, and (by the WAL) on every replica.
    for (int s = 0; s < 3; ++s) {
      absl::Status installed = shards_->InstallServerHash(s);
      ASSERT_TRUE(installed.ok()) << installed;
    }
    for (int s = 0; s < 3; ++s) {
      const absl::Time deadline = absl::Now() + absl::Seconds(30);
      for (;;) {
        auto replayed = shards_->QueryReplica(
            s, 0, "SELECT count(*) FROM pg_proc WHERE proname = 'hash_key_v1'");
        if (replayed.ok() && (*replayed)[0][0] == "3") break;
        ASSERT_LT(absl::Now(), deadline) << "replica of s" << s + 1;
        absl::SleepFor(absl::Milliseconds(50));
      }
    }
  }

  CommandOutput Shardctl(std::vector<std::string> args) {
    args.insert(args.begin(), SHARDCTL_PATH);
    return RunCommand(args);
  }

  // Makes shard `index`'s replica refuse new connections (or accept them
  // again): a replica that cannot be reached, by its pg_hba.conf and a
  // reload, without giving up its port (which a test running beside this
  // one could take while it is stopped).
  void RefuseConnections(int index, bool refuse) {
    const dev::DevInstance& replica =
        shards_->cluster().instances.at(index).replicas.at(0);
    const std::string hba = replica.data_dir + "/pg_hba.conf";
    constexpr std::string_view kReject = "host all all all reject\n";
    std::string text;
    {
      std::ifstream in(hba);
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    if (refuse) {
      text.insert(0, kReject);
    } else if (text.rfind(kReject, 0) == 0) {
      text.erase(0, kReject.size());
    }
    std::ofstream(hba, std::ios::trunc) << text;
    std::ifstream pid_file(replica.data_dir + "/postmaster.pid");
    pid_t pid = 0;
    pid_file >> pid;
    ASSERT_GT(pid, 0);
    ASSERT_EQ(kill(pid, SIGHUP), 0);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (shards_->QueryReplica(index, 0, "SELECT 1").ok() == refuse) {
      ASSERT_LT(absl::Now(), deadline) << "the replica did not reload";
      absl::SleepFor(absl::Milliseconds(50));
    }
  }

  // Every user is on exactly one shard.
  void ExpectEachUserOnce() {
    std::set<int64_t> seen;
    for (int s = 0; s < 3; ++s) {
      auto ids = shards_->Query(s, "SELECT id FROM users");
      ASSERT_TRUE(ids.ok()) << ids.status();
      for (const auto& row : *ids) {
        int64_t id = 0;
        ASSERT_TRUE(absl::SimpleAtoi(row[0], &id));
        EXPECT_TRUE(seen.insert(id).second) << "user " << id << " twice";
      }
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(kUsers));
  }

  std::unique_ptr<TestCluster> shards_;
  std::string config_;
};

TEST_F(MoveReplicaTest, HashOnTheShardsOnlyWhenTheirReplicasHashToo) {
  CommandOutput checked =
      Shardctl({"hash", "check", "-c", config_, "--format", "json"});
  EXPECT_EQ(checked.exit_code, 0) << checked.out << checked.err;
  for (const char* server : {"s1", "s1/r1", "s2", "s2/r1", "s3", "s3/r1"}) {
    EXPECT_THAT(checked.out,
                HasSubstr(StrCat("{\"shard\":\"", server, "\",\"ok\":true")));
  }

  // s2's replica out of reach: check says so, and a move from s2 keeps
  // key lists.
  RefuseConnections(1, true);
  CommandOutput down = Shardctl({"hash", "check", "-c", config_});
  EXPECT_EQ(down.exit_code, 1) << down.out;
  EXPECT_THAT(down.out, HasSubstr("s2/r1"));
  EXPECT_THAT(down.err, HasSubstr("1 server(s) cannot hash keys themselves"));
  CommandOutput listed =
      Shardctl({"move", "-c", config_, "--distribution", "users", "--slice",
                "0xc000000000000000:", "--to", "s3"});
  ASSERT_EQ(listed.exit_code, 0) << listed.out << listed.err;
  EXPECT_THAT(listed.out + listed.err,
              HasSubstr("the slice keeps key lists (slower): shard s2/r1"));
  CommandOutput status =
      Shardctl({"moves", "status", "1", "-c", config_, "--format", "json"});
  EXPECT_THAT(status.out, HasSubstr("\"server_hash\":false"));
  ExpectEachUserOnce();

  // Reachable again: the next move relies on the shards' hash.
  RefuseConnections(1, false);
  CommandOutput hashed =
      Shardctl({"move", "-c", config_, "--distribution", "users", "--slice",
                "0x8000000000000000:0xc000000000000000", "--to", "s3"});
  ASSERT_EQ(hashed.exit_code, 0) << hashed.out << hashed.err;
  EXPECT_THAT(hashed.out + hashed.err,
              HasSubstr("the shards hash keys themselves"));
  status =
      Shardctl({"moves", "status", "2", "-c", config_, "--format", "json"});
  EXPECT_THAT(status.out, HasSubstr("\"server_hash\":true"));
  ExpectEachUserOnce();
  auto on_s2 = shards_->Query(1, "SELECT count(*) FROM users");
  ASSERT_TRUE(on_s2.ok());
  EXPECT_EQ((*on_s2)[0][0], "0");  // s2's whole half moved in two moves
}

}  // namespace
}  // namespace shardkit
