// shardctl move, split, moves and rebalance as an operator runs them,
// against real servers: a slice moved and the journal read back; a split;
// a rebalance onto a shard that owns nothing yet (its reference table
// copied first) while a writer keeps writing through the library, checked
// shard by shard afterwards; and what the commands refuse, and say to do.

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/failpoint.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::CommandOutput;
using testing::RunCommand;
using testing::TestCluster;

// s3 is a shard of the configuration that owns nothing: as a shard just
// added to a cluster. geo (no tables) is there for what region
// distributions refuse.
constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[distributions.geo]
strategy = "region"
key_type = "text"
regions = { eu = ["s1"] }
default = "s2"
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
[tables.countries]
reference = true
)";

constexpr int kUsers = 3000;

class MoveCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto started = TestCluster::Start(3);
    ASSERT_TRUE(started.ok()) << started.status();
    shards_ = *std::move(started);
    auto config = shards_->WriteMoveConfig(
        "move_cli.toml", kMapBody,
        "CREATE TABLE users (id int8 PRIMARY KEY, name text, n int NOT NULL "
        "DEFAULT 0); CREATE TABLE orders (user_id int8, id int8, PRIMARY KEY "
        "(user_id, id)); CREATE TABLE countries (code text PRIMARY KEY, name "
        "text)");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    // The new shard's copy of the reference table is empty.
    for (int s = 0; s < 2; ++s) {
      ASSERT_TRUE(shards_
                      ->Query(s, "INSERT INTO countries VALUES ('de', "
                                 "'Germany'), ('fr', 'France'), ('jp', "
                                 "'Japan')")
                      .ok());
    }
    auto cluster = Cluster::OpenFile(config_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    for (int i = 1; i <= kUsers; i += 500) {
      std::string users = "INSERT INTO users (id, name) VALUES ";
      std::string orders = "INSERT INTO orders (user_id, id) VALUES ";
      for (int id = i; id < i + 500; ++id) {
        StrAppend(&users, id == i ? "" : ", ", "(", id, ", 'u", id, "')");
        StrAppend(&orders, id == i ? "" : ", ", "(", id, ", 1)");
      }
      ASSERT_TRUE((*cluster)->Execute(users).ok());
      ASSERT_TRUE((*cluster)->Execute(orders).ok());
    }
  }

  CommandOutput Shardctl(std::vector<std::string> args) {
    args.insert(args.begin(), SHARDCTL_PATH);
    return RunCommand(args);
  }

  int64_t Count(int shard, const std::string& sql) {
    auto rows = shards_->Query(shard, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    int64_t n = -1;
    if (rows.ok() && !rows->empty()) {
      EXPECT_TRUE(absl::SimpleAtoi((*rows)[0][0], &n));
    }
    return n;
  }

  // Every users row read directly from each shard: id -> n, failing on a
  // key found twice or on a shard that does not own it in the live map.
  std::map<int64_t, int64_t> ReadUsersDirectly() {
    auto cluster = Cluster::OpenFile(config_);
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    if (!cluster.ok()) return {};
    const std::shared_ptr<const ShardMap> map = (*cluster)->map();
    EXPECT_TRUE(map->moves().empty());
    std::map<int64_t, int64_t> rows;
    for (int s = 0; s < 3; ++s) {
      auto result = shards_->Query(s, "SELECT id, n FROM users");
      EXPECT_TRUE(result.ok()) << result.status();
      if (!result.ok()) return {};
      for (const auto& row : *result) {
        int64_t id = 0, n = 0;
        EXPECT_TRUE(absl::SimpleAtoi(row[0], &id));
        EXPECT_TRUE(absl::SimpleAtoi(row[1], &n));
        EXPECT_TRUE(rows.emplace(id, n).second) << "key " << id << " twice";
        auto owner = map->Place("users", Key::Integer(id));
        EXPECT_TRUE(owner.ok());
        if (owner.ok()) {
          EXPECT_EQ(map->shard(owner->shard).name, StrCat("s", s + 1))
              << "key " << id << " left on the wrong shard";
        }
      }
    }
    return rows;
  }

  std::unique_ptr<TestCluster> shards_;
  std::string config_;
};

TEST_F(MoveCliTest, MoveSplitAndTheJournal) {
  const int64_t on_s2 = Count(1, "SELECT count(*) FROM users");
  CommandOutput move = Shardctl(
      {"move", "-c", config_, "--distribution", "users", "--slice",
       "0xc000000000000000:", "--to", "s3", "--format", "json"});
  ASSERT_EQ(move.exit_code, 0) << move.err;
  EXPECT_THAT(move.out, HasSubstr("\"id\":1,"));
  EXPECT_THAT(move.out, HasSubstr("\"phase\":\"done\""));
  EXPECT_THAT(move.out, HasSubstr("\"source\":\"s2\""));
  // Not a terminal: plain progress lines on stderr, each phase named.
  for (const char* phase : {"move 1: dual-write", "move 1: backfill",
                            "move 1: verify", "move 1: cutover",
                            "move 1: cleanup", "move 1: done"}) {
    EXPECT_THAT(move.err, HasSubstr(phase));
  }
  EXPECT_THAT(move.err, HasSubstr("rows copied"));
  EXPECT_THAT(move.err, Not(HasSubstr("\r")));
  const int64_t on_s3 = Count(2, "SELECT count(*) FROM users");
  EXPECT_GT(on_s3, on_s2 / 4);
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), on_s2 - on_s3);
  EXPECT_EQ(ReadUsersDirectly().size(), static_cast<size_t>(kUsers));
  EXPECT_EQ(Count(2, "SELECT count(*) FROM orders"), on_s3);

  CommandOutput list = Shardctl({"moves", "list", "-c", config_, "--format",
                                 "json"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("\"from\":\"0xc000000000000000\""));
  EXPECT_THAT(list.out, HasSubstr("\"destination\":\"s3\""));
  CommandOutput active = Shardctl({"moves", "list", "-c", config_, "--active"});
  ASSERT_EQ(active.exit_code, 0) << active.err;
  EXPECT_THAT(active.out, HasSubstr("No move under way"));
  CommandOutput status =
      Shardctl({"moves", "status", "1", "-c", config_, "--format", "json"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr(StrCat("\"table\":\"users\",\"rows_scanned\":")));
  EXPECT_THAT(status.out, HasSubstr(StrCat("\"rows_copied\":", on_s3)));
  EXPECT_THAT(status.out, HasSubstr("\"next\":\"\""));
  // These shards have no hash functions: the move kept key lists, and says
  // so.
  EXPECT_THAT(status.out, HasSubstr("\"server_hash\":false"));
  CommandOutput text = Shardctl({"moves", "status", "1", "-c", config_});
  EXPECT_THAT(text.out, HasSubstr("Phase: done (cut over"));
  EXPECT_THAT(text.out, HasSubstr("phase verify"));
  EXPECT_THAT(text.out, HasSubstr("the slice keeps key lists (slower)"));
  // A finished move can be neither aborted nor moved again.
  CommandOutput abort = Shardctl({"moves", "abort", "1", "-c", config_});
  EXPECT_EQ(abort.exit_code, 1);
  EXPECT_THAT(abort.err, HasSubstr("point of no return"));
  CommandOutput again = Shardctl({"move", "-c", config_, "--distribution",
                                  "users", "--slice", "0xc000000000000000:",
                                  "--to", "s3"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.err, HasSubstr("s3"));
  CommandOutput unknown = Shardctl({"moves", "status", "42", "-c", config_});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("shardctl moves list"));

  // map show follows the live map.
  CommandOutput map = Shardctl({"map", "show", "-c", config_});
  ASSERT_EQ(map.exit_code, 0) << map.err;
  EXPECT_THAT(map.out, HasSubstr("Live shard map from the catalog"));
  EXPECT_THAT(map.out, HasSubstr("0xc000000000000000  end"));

  // Split s3's slice in the map only; then an unknown slice is refused.
  CommandOutput split = Shardctl(
      {"split", "-c", config_, "--distribution", "users", "--slice",
       "0xc000000000000000:", "--at", "0xe000000000000000"});
  ASSERT_EQ(split.exit_code, 0) << split.err;
  EXPECT_THAT(split.out, HasSubstr("0xc000000000000000:0xe000000000000000 "
                                   "and 0xe000000000000000:, both on s3"));
  CommandOutput wrong = Shardctl(
      {"split", "-c", config_, "--distribution", "users", "--slice",
       "0xc000000000000000:", "--at", "0xd000000000000000"});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_THAT(wrong.err, HasSubstr("is not a slice of 'users'"));
  // Split and move the lower half back to s2.
  CommandOutput back = Shardctl(
      {"split", "-c", config_, "--distribution", "users", "--slice",
       "0xc000000000000000:0xe000000000000000", "--at", "0xd000000000000000",
       "--to", "s2", "--half", "lower"});
  ASSERT_EQ(back.exit_code, 0) << back.err;
  EXPECT_THAT(back.out, HasSubstr("0xc000000000000000:0xd000000000000000 "
                                  "from s3 to s2"));
  EXPECT_EQ(ReadUsersDirectly().size(), static_cast<size_t>(kUsers));
}

TEST_F(MoveCliTest, RebalanceOntoAnEmptyShardWhileWriting) {
  // shardkit's hash functions, installed as the README says, so that the
  // moves keep no key lists; first what check and install say when they
  // cannot.
  CommandOutput missing = Shardctl({"hash", "check", "-c", config_});
  EXPECT_EQ(missing.exit_code, 1) << missing.out;
  EXPECT_THAT(missing.out, HasSubstr("cannot hash int8 keys itself"));
  EXPECT_THAT(missing.out, HasSubstr("`shardctl hash install`"));
  EXPECT_THAT(missing.err, HasSubstr("3 server(s) cannot hash keys"));
  CommandOutput unreadable =
      Shardctl({"hash", "install", "-c", config_, "--module",
                "/nonexistent/shardkit_pg.so"});
  EXPECT_EQ(unreadable.exit_code, 1) << unreadable.out;
  EXPECT_THAT(unreadable.out, HasSubstr("pg_config --pkglibdir"));
  absl::StatusOr<std::string> module = shards_->ServerHashModule();
  ASSERT_TRUE(module.ok()) << module.status();
  CommandOutput installed =
      Shardctl({"hash", "install", "-c", config_, "--module", *module});
  ASSERT_EQ(installed.exit_code, 0) << installed.out << installed.err;
  EXPECT_THAT(installed.out, HasSubstr("installed, hashes as shardkit does"));
  CommandOutput checked =
      Shardctl({"hash", "check", "-c", config_, "--format", "json"});
  EXPECT_EQ(checked.exit_code, 0) << checked.out << checked.err;
  EXPECT_THAT(checked.out, HasSubstr("{\"shard\":\"s3\",\"ok\":true"));

  CommandOutput plan =
      Shardctl({"rebalance", "-c", config_, "--dry-run", "--format", "json"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_THAT(plan.out, HasSubstr("\"destination\":\"s3\""));
  EXPECT_THAT(plan.out, HasSubstr("\"reference_copies\":[{\"table\":"
                                  "\"countries\",\"from\":\"s1\",\"to\":"
                                  "\"s3\",\"rows\":3}]"));
  // A dry run changes nothing.
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users"), 0);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM countries"), 0);
  EXPECT_THAT(Shardctl({"moves", "list", "-c", config_}).out,
              HasSubstr("No moves yet"));

  // A writer through the library: new keys and increments, each logged
  // once acknowledged.
  std::atomic<bool> stop{false};
  std::vector<int64_t> inserted;
  std::map<int64_t, int64_t> increments;
  int failures = 0;
  std::string first_failure;
  std::thread writer([&] {
    auto cluster = Cluster::OpenFile(config_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    for (int64_t i = 0; !stop.load(); ++i) {
      const int64_t id = kUsers + 1 + i;
      absl::StatusOr<Result> insert = (*cluster)->Execute(
          "INSERT INTO users (id, name) VALUES ($1, 'w')", {StrCat(id)});
      const int64_t target = 1 + (i * 37) % kUsers;
      absl::StatusOr<Result> bump = (*cluster)->Execute(
          "UPDATE users SET n = n + 1 WHERE id = $1", {StrCat(target)});
      for (const auto* r : {&insert, &bump}) {
        if (!r->ok() && failures++ == 0) first_failure = r->status().ToString();
      }
      if (insert.ok()) inserted.push_back(id);
      if (bump.ok()) ++increments[target];
    }
  });
  CommandOutput rebalance = Shardctl({"rebalance", "-c", config_});
  stop = true;
  writer.join();
  ASSERT_EQ(rebalance.exit_code, 0) << rebalance.err;
  EXPECT_THAT(rebalance.out, HasSubstr("Rebalanced:"));
  EXPECT_THAT(rebalance.err, HasSubstr("copying reference table countries"));
  EXPECT_THAT(rebalance.err, HasSubstr("the shards hash keys themselves"));
  EXPECT_EQ(failures, 0) << first_failure;
  ASSERT_FALSE(inserted.empty());

  // Shard by shard: every acknowledged insert and increment, each key once
  // and on its owner, the reference table complete on s3.
  const std::map<int64_t, int64_t> rows = ReadUsersDirectly();
  EXPECT_EQ(rows.size(), kUsers + inserted.size());
  for (int64_t id : inserted) EXPECT_EQ(rows.count(id), 1u) << id;
  for (const auto& [id, n] : rows) {
    auto it = increments.find(id);
    EXPECT_EQ(n, it == increments.end() ? 0 : it->second) << "key " << id;
  }
  EXPECT_EQ(Count(2, "SELECT count(*) FROM countries"), 3);
  const int64_t s3 = Count(2, "SELECT count(*) FROM users");
  const double mean = static_cast<double>(rows.size()) / 3;
  EXPECT_GT(s3, mean * 0.8);
  EXPECT_EQ(Count(0, "SELECT count(*) FROM orders") +
                Count(1, "SELECT count(*) FROM orders") +
                Count(2, "SELECT count(*) FROM orders"),
            kUsers);

  // Balanced now (the plan aimed at 10%; the hash spreads the keys
  // written since about evenly).
  CommandOutput after = Shardctl(
      {"rebalance", "-c", config_, "--dry-run", "--tolerance", "20"});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_THAT(after.out, HasSubstr("Balanced: no move."));
}

// What an operator gets refused, with what to do, each on a cluster left
// as it was: nothing moved, nothing journaled.
TEST_F(MoveCliTest, RefusalsSayWhatToDo) {
  // A region distribution has no slices to split; an unknown one is named.
  CommandOutput region = Shardctl({"split", "-c", config_, "--distribution",
                                   "geo", "--slice", ":", "--at", "x"});
  EXPECT_EQ(region.exit_code, 1);
  EXPECT_THAT(region.err, HasSubstr("distribution 'geo' places keys by "
                                    "region: there is no slice to split"));
  EXPECT_THAT(region.err, HasSubstr("shardctl move --region"));
  CommandOutput unknown = Shardctl({"split", "-c", config_, "--distribution",
                                    "nope", "--slice", ":", "--at", "0x10"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("unknown distribution 'nope'"));
  EXPECT_THAT(unknown.err, HasSubstr(StrCat("shardctl map show -c ", config_)));

  // map show with a catalog it cannot read: a warning saying what to check,
  // and the configured map all the same.
  const std::string no_catalog = shards_->WriteConfig(
      "no_catalog.toml", StrCat("[catalog]\ndsn = \"", shards_->dsn(0),
                                " dbname=no_such_catalog\"\n", kMapBody));
  CommandOutput map = Shardctl({"map", "show", "-c", no_catalog});
  EXPECT_EQ(map.exit_code, 0) << map.err;
  EXPECT_THAT(map.err, HasSubstr("shardctl: warning: cannot read the live "
                                 "map from the catalog"));
  EXPECT_THAT(map.err, HasSubstr("\"no_such_catalog\" does not exist; "
                                 "start the server, or fix"));
  EXPECT_THAT(map.err, HasSubstr(StrCat("showing the map of ", no_catalog)));
  EXPECT_THAT(map.err, HasSubstr("--configured shows it"));
  EXPECT_THAT(map.out, HasSubstr(StrCat("Shard map from ", no_catalog)));
  EXPECT_THAT(map.out, HasSubstr("users"));
  EXPECT_THAT(map.out, Not(HasSubstr("Live shard map")));

  // The receiving shard lacks one of the distribution's tables: the
  // rebalance and a move both refuse before changing anything.
  ASSERT_TRUE(shards_->Query(2, "DROP TABLE orders").ok());
  CommandOutput rebalance = Shardctl({"rebalance", "-c", config_});
  EXPECT_EQ(rebalance.exit_code, 1);
  EXPECT_THAT(rebalance.err, HasSubstr("table orders does not exist on "
                                       "shard s3"));
  EXPECT_THAT(rebalance.err, HasSubstr("create it there first"));
  EXPECT_THAT(rebalance.err, HasSubstr("then run the rebalance again"));
  CommandOutput move = Shardctl({"move", "-c", config_, "--distribution",
                                 "users", "--slice", "0xc000000000000000:",
                                 "--to", "s3"});
  EXPECT_EQ(move.exit_code, 1);
  EXPECT_THAT(move.err, HasSubstr("shard s3: table orders does not exist; "
                                  "create it"));
  EXPECT_THAT(Shardctl({"moves", "list", "-c", config_}).out,
              HasSubstr("No moves yet"));
  EXPECT_EQ(Count(2, "SELECT count(*) FROM countries"), 0);
  ASSERT_TRUE(shards_
                  ->Query(2, "CREATE TABLE orders (user_id int8, id int8, "
                             "PRIMARY KEY (user_id, id))")
                  .ok());

  // The receiving shard's copy of a reference table differs from the
  // others': not overwritten, the operator decides.
  ASSERT_TRUE(
      shards_->Query(2, "INSERT INTO countries VALUES ('it', 'Italy')").ok());
  CommandOutput differ = Shardctl({"rebalance", "-c", config_});
  EXPECT_EQ(differ.exit_code, 1);
  EXPECT_THAT(differ.err, HasSubstr("reference table countries has 1 rows on "
                                    "s3 but 3 on s1: its copies differ"));
  EXPECT_THAT(differ.err, HasSubstr("TRUNCATE countries"));
  EXPECT_EQ(Count(2, "SELECT count(*) FROM countries WHERE code = 'it'"), 1);
  EXPECT_THAT(Shardctl({"moves", "list", "-c", config_}).out,
              HasSubstr("No moves yet"));
  ASSERT_TRUE(shards_->Query(2, "TRUNCATE countries").ok());
  // So do the copies of the shards it would be copied from: the rebalance
  // does not pick one of them blindly.
  ASSERT_TRUE(
      shards_->Query(1, "INSERT INTO countries VALUES ('it', 'Italy')").ok());
  CommandOutput sources = Shardctl({"rebalance", "-c", config_, "--dry-run"});
  EXPECT_EQ(sources.exit_code, 1);
  EXPECT_THAT(sources.err, HasSubstr("reference table countries has 3 rows "
                                     "on s1 and 4 on s2: its copies differ, "
                                     "and the rebalance would copy one of "
                                     "them onto s3. Make them equal"));
  ASSERT_TRUE(
      shards_->Query(1, "DELETE FROM countries WHERE code = 'it'").ok());
  // As many rows, one of them with another value: told apart too.
  ASSERT_TRUE(shards_
                  ->Query(1, "UPDATE countries SET name = name || '!' WHERE "
                             "code = 'de'")
                  .ok());
  CommandOutput values = Shardctl({"rebalance", "-c", config_, "--dry-run"});
  EXPECT_EQ(values.exit_code, 1);
  EXPECT_THAT(values.err, HasSubstr("reference table countries has 3 rows on "
                                    "s1 and 3 on s2 with other values: its "
                                    "copies differ"));
  ASSERT_TRUE(shards_
                  ->Query(1, "UPDATE countries SET name = rtrim(name, '!') "
                             "WHERE code = 'de'")
                  .ok());

  // A move stopped half-way (killed after its backfill): the rebalance
  // waits for it; once it is aborted as advised, the rebalance plans.
  CommandOutput killed = RunCommand(
      {"/usr/bin/env", "SHARDKIT_FAILPOINTS=move-after-backfill",
       SHARDCTL_PATH, "move", "-c", config_, "--distribution", "users",
       "--slice", "0xc000000000000000:", "--to", "s3"});
  ASSERT_EQ(killed.exit_code, internal::kFailpointExitCode) << killed.err;
  CommandOutput busy = Shardctl({"rebalance", "-c", config_});
  EXPECT_EQ(busy.exit_code, 1);
  EXPECT_THAT(busy.err, HasSubstr("move 1 (users 0xc000000000000000: from s2 "
                                  "to s3) is not finished, phase "));
  EXPECT_THAT(busy.err, HasSubstr("`shardctl moves resume 1` continues it, "
                                  "`shardctl moves abort 1` rolls it back"));
  EXPECT_THAT(busy.err, HasSubstr("then run the rebalance again"));
  EXPECT_THAT(busy.out, Not(HasSubstr("SLICE")));
  CommandOutput aborted = Shardctl(
      {"moves", "abort", "1", "-c", config_, "--map-grace", "100ms"});
  ASSERT_EQ(aborted.exit_code, 0) << aborted.err;
  CommandOutput plan = Shardctl({"rebalance", "-c", config_, "--dry-run"});
  ASSERT_EQ(plan.exit_code, 0) << plan.err;
  EXPECT_THAT(plan.out, HasSubstr("Dry run: nothing was changed."));
  EXPECT_EQ(ReadUsersDirectly().size(), static_cast<size_t>(kUsers));
}

}  // namespace
}  // namespace shardkit
