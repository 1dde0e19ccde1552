// The online mover against real servers: a slice moved from one shard to
// another end to end (dual-write, backfill, verify, cutover, cleanup), and
// a move stopped by a failed verify, then aborted; for a hash slice (keys
// listed) and a range slice (hidden, cleaned up and aborted by its SQL
// condition: rebalancer/shard_objects.h).

#include "rebalancer/mover.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "gtest/gtest.h"
#include "rebalancer/shard_objects.h"
#include "router/failpoint.h"
#include "router/live_map.h"
#include "shardkit/cluster.h"
#include "shardkit/load.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using testing::TestCluster;

constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
)";

constexpr int kUsers = 1500;

// The role of the moves that run without a superuser (WriteOwnerConfig).
constexpr char kOwner[] = "shardkit_owner";

// The tables of kMapBody and kRangeMapBody, on every shard.
constexpr char kUsersAndOrders[] =
    "CREATE TABLE users (id int8 PRIMARY KEY, name text, n int NOT NULL "
    "DEFAULT 0); CREATE TABLE orders (user_id int8, id int8, note text, "
    "PRIMARY KEY (user_id, id))";

// A move of users' `slice` to s3 (which owns nothing at first).
internal::MoveRequest UsersToS3(std::string slice) {
  internal::MoveRequest request;
  request.distribution = "users";
  request.slice = std::move(slice);
  request.destination = "s3";
  return request;
}

int64_t ScalarOf(const absl::StatusOr<Result>& r) {
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok() || r->rows.empty() || !r->rows[0][0]) return -1;
  int64_t n = -1;
  EXPECT_TRUE(absl::SimpleAtoi(*r->rows[0][0], &n));
  return n;
}

class MoverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto started = TestCluster::Start(3);
    ASSERT_TRUE(started.ok()) << started.status();
    shards_ = *std::move(started);
    auto config = shards_->WriteMoveConfig("mover.toml", kMapBody,
                                           kUsersAndOrders);
    ASSERT_TRUE(config.ok()) << config.status();
    config_path_ = *config;
    auto cluster = Cluster::OpenFile(config_path_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    for (int i = 1; i <= kUsers; i += 100) {
      std::string users = "INSERT INTO users (id, name) VALUES ";
      std::string orders = "INSERT INTO orders (user_id, id, note) VALUES ";
      for (int id = i; id < i + 100; ++id) {
        absl::StrAppend(&users, id == i ? "" : ", ", "(", id, ", 'user\\t", id,
                        "')");
        absl::StrAppend(&orders, id == i ? "" : ", ", "(", id, ", 1, 'o", id,
                        "'), (", id, ", 2, NULL)");
      }
      ASSERT_TRUE((*cluster)->Execute(users).ok());
      ASSERT_TRUE((*cluster)->Execute(orders).ok());
    }
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

  // Each of the kUsers users is on exactly one shard, the one the live
  // map places it on.
  void ExpectUsersOnTheirOwners() {
    auto fresh = Cluster::OpenFile(config_path_);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    const ShardMap& map = *(*fresh)->map();
    const Distribution& d = *map.FindDistribution("users");
    int64_t total = 0;
    for (int s = 0; s < 3; ++s) {
      auto ids = shards_->Query(s, "SELECT id FROM users");
      ASSERT_TRUE(ids.ok()) << ids.status();
      for (const auto& row : *ids) {
        int64_t id = 0;
        ASSERT_TRUE(absl::SimpleAtoi(row[0], &id));
        auto placed = d.Place(Key::Integer(id));
        ASSERT_TRUE(placed.ok()) << placed.status();
        EXPECT_EQ(map.shard(placed->shard).name, StrCat("s", s + 1))
            << "user " << id;
      }
      total += static_cast<int64_t>(ids->size());
    }
    EXPECT_EQ(total, kUsers);
  }

  // For moves as kOwner, a role that is not a superuser: creates it on
  // every shard, and on s1's server the database "ownercat" it owns for
  // the catalog, and writes a configuration whose shards and catalog it
  // connects as (config_path_'s, but for the user and the catalog's
  // database). Returns its path. The test gives the role its tables.
  absl::StatusOr<std::string> WriteOwnerConfig() {
    for (int s = 0; s < 3; ++s) {
      RETURN_IF_ERROR(shards_
                          ->Query(s, StrCat("CREATE ROLE ", kOwner,
                                            " LOGIN NOSUPERUSER"))
                          .status());
    }
    RETURN_IF_ERROR(
        shards_->Query(0, StrCat("CREATE DATABASE ownercat OWNER ", kOwner))
            .status());
    std::ifstream in(config_path_);
    std::string text((std::istreambuf_iterator<char>(in)), {});
    if (!absl::StrContains(text, "dbname=movecat")) {
      return absl::InternalError(StrCat("no catalog in ", config_path_));
    }
    text =
        absl::StrReplaceAll(text, {{"user=postgres", StrCat("user=", kOwner)},
                                   {"dbname=movecat", "dbname=ownercat"}});
    const std::string path = shards_->cluster().dir + "/owner.toml";
    std::ofstream out(path, std::ios::trunc);
    out << text;
    out.close();
    if (!out) return absl::InternalError(StrCat("cannot write ", path));
    return path;
  }

  absl::StatusOr<std::unique_ptr<internal::Mover>> OpenMover() {
    ASSIGN_OR_RETURN(Config config, LoadConfig(config_path_));
    internal::MoverOptions options;
    options.chunk_rows = 170;  // several chunks
    options.map_grace = absl::Milliseconds(100);
    return internal::Mover::Open(std::move(config), options);
  }

  std::unique_ptr<TestCluster> shards_;
  std::string config_path_;
};

TEST_F(MoverTest, MovesAHashSliceEndToEnd) {
  auto before = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(before.ok()) << before.status();
  const int64_t on_s2 = Count(1, "SELECT count(*) FROM users");
  ASSERT_GT(on_s2, 0);

  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start(UsersToS3("0x8000000000000000:"));
  ASSERT_TRUE(move.ok()) << move.status();
  EXPECT_EQ(move->source, "s2");
  ASSERT_TRUE((*mover)->Run(move->id).ok());

  auto done = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(done->phase, internal::JournalPhase::kDone);
  EXPECT_TRUE(done->past_point_of_no_return);
  // Every row of the slice is on s3 and nowhere else, with its values.
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), 0);
  EXPECT_EQ(Count(1, "SELECT count(*) FROM orders"), 0);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users"), on_s2);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM orders"), 2 * on_s2);
  // The names hold a backslash (standard strings): it survives COPY.
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users WHERE name <> "
                     "'user\\t' || id"),
            0);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM orders WHERE note IS NULL"), on_s2);
  // The keys tables are gone from both sides.
  for (int s : {1, 2}) {
    EXPECT_EQ(Count(s, StrCat("SELECT count(*) FROM pg_class WHERE relname = "
                              "'move_",
                              move->id, "_keys'")),
              0);
  }
  // A cluster opened before the move routes by the new map, and a new one
  // too: every row once, and the slice's keys on s3.
  for (const auto* cluster : {before->get()}) {
    ASSERT_TRUE(internal::LiveMapOf(*cluster).Refresh().ok());
    auto count = cluster->Execute("SELECT count(*) FROM users");
    ASSERT_TRUE(count.ok()) << count.status();
    EXPECT_EQ(*count->rows[0][0], StrCat(kUsers));
    auto write = cluster->Execute("UPDATE users SET n = n + 1");
    ASSERT_TRUE(write.ok()) << write.status();
    EXPECT_EQ(write->rows_affected, kUsers);
  }
  auto fresh = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(fresh.ok());
  const Distribution& d = *(*fresh)->map()->FindDistribution("users");
  EXPECT_EQ((*fresh)->map()->shard(d.PlaceHash(0x9000000000000000u).shard).name,
            "s3");
  EXPECT_TRUE((*fresh)->map()->moves().empty());
  auto sum = (*fresh)->Execute("SELECT sum(n), count(*) FROM users");
  ASSERT_TRUE(sum.ok()) << sum.status();
  EXPECT_EQ(*sum->rows[0][0], StrCat(kUsers));
}

// A hash slice moves without key lists only when both shards hash keys as
// the library does (rebalancer/server_hash.h): a shard whose
// shardkit.hash_key_v1 hashes differently makes the move keep lists, and
// says why; with the real functions on both, the slice's rows are told
// apart by the shards, and exactly they move.
TEST_F(MoverTest, HashesOnTheShardsOnlyWhenBothAgreeWithTheLibrary) {
  for (int s = 0; s < 3; ++s) {
    absl::Status installed = shards_->InstallServerHash(s);
    ASSERT_TRUE(installed.ok()) << installed;
  }
  ASSERT_TRUE(shards_
                  ->Query(2,
                          "CREATE OR REPLACE FUNCTION shardkit.hash_key_v1("
                          "int8) RETURNS int8 LANGUAGE sql IMMUTABLE AS "
                          "'SELECT $1'")
                  .ok());
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move_slice = [&](const char* slice) -> uint64_t {
    auto move = (*mover)->Start(UsersToS3(slice));
    EXPECT_TRUE(move.ok()) << move.status();
    if (!move.ok()) return 0;
    absl::Status ran = (*mover)->Run(move->id);
    EXPECT_TRUE(ran.ok()) << ran;
    return move->id;
  };

  const uint64_t listed = move_slice("0x8000000000000000:0xc000000000000000");
  auto first = (*mover)->journal().Get(listed);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->phase, internal::JournalPhase::kDone);
  EXPECT_FALSE(first->server_hash);
  auto events = (*mover)->journal().Events(listed);
  ASSERT_TRUE(events.ok());
  EXPECT_NE(absl::StrJoin(*events, "\n").find("key lists (slower): shard s3: "
                                              "shardkit.hash_key_v1(int8) "
                                              "hashes '0' to "),
            std::string::npos)
      << absl::StrJoin(*events, "\n");

  absl::Status reinstalled = shards_->InstallServerHash(2);
  ASSERT_TRUE(reinstalled.ok()) << reinstalled;
  const uint64_t hashed = move_slice("0xc000000000000000:0xe000000000000000");
  auto second = (*mover)->journal().Get(hashed);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->phase, internal::JournalPhase::kDone);
  EXPECT_TRUE(second->server_hash);

  // Turned off (shardctl --key-lists), the move keeps lists and says why.
  auto config = LoadConfig(config_path_);
  ASSERT_TRUE(config.ok()) << config.status();
  internal::MoverOptions with_lists = (*mover)->options();
  with_lists.use_server_hash = false;
  auto lists_mover = internal::Mover::Open(*std::move(config), with_lists);
  ASSERT_TRUE(lists_mover.ok()) << lists_mover.status();
  // A slice of s1's.
  auto third =
      (*lists_mover)->Start(UsersToS3("0x0000000000000000:0x1000000000000000"));
  ASSERT_TRUE(third.ok()) << third.status();
  ASSERT_TRUE((*lists_mover)->Run(third->id).ok());
  auto turned_off = (*lists_mover)->journal().Get(third->id);
  ASSERT_TRUE(turned_off.ok());
  EXPECT_FALSE(turned_off->server_hash);
  auto said = (*lists_mover)->journal().Events(third->id);
  ASSERT_TRUE(said.ok());
  EXPECT_NE(absl::StrJoin(*said, "\n").find(
                "key lists (slower): turned off "
                "(MoverOptions::use_server_hash)"),
            std::string::npos)
      << absl::StrJoin(*said, "\n");

  // Each shard holds exactly the users (and their orders) the final map
  // places there: s3 got all three slices, s1 and s2 kept the rest.
  ExpectUsersOnTheirOwners();
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(Count(s, "SELECT count(*) FROM orders o WHERE NOT EXISTS "
                       "(SELECT 1 FROM users u WHERE u.id = o.user_id)"),
              0);
  }
  EXPECT_GT(Count(2, "SELECT count(*) FROM users"), 0);
  EXPECT_GT(Count(1, "SELECT count(*) FROM users"), 0);
}

// The shards' hash functions are checked again before each phase that
// relies on them: replaced by one that hashes differently after the move
// was prepared, the backfill stops before it copies anything, and says
// what to do; installed again, the move resumes and finishes.
TEST_F(MoverTest, StopsWhenTheShardsNoLongerHashAsPrepared) {
  for (int s = 0; s < 3; ++s) {
    absl::Status installed = shards_->InstallServerHash(s);
    ASSERT_TRUE(installed.ok()) << installed;
  }
  auto config = LoadConfig(config_path_);
  ASSERT_TRUE(config.ok()) << config.status();
  internal::MoverOptions options;
  options.chunk_rows = 170;
  options.map_grace = absl::Milliseconds(100);
  bool replaced = false;
  options.log = [&](std::string_view line) {
    if (!replaced && absl::EndsWith(absl::string_view(line.data(), line.size()),
                                    ": backfill")) {
      replaced = true;
      EXPECT_TRUE(shards_
                      ->Query(2,
                              "CREATE OR REPLACE FUNCTION "
                              "shardkit.hash_key_v1(int8) RETURNS int8 "
                              "LANGUAGE sql IMMUTABLE AS 'SELECT $1'")
                      .ok());
    }
  };
  auto mover = internal::Mover::Open(*std::move(config), options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move =
      (*mover)->Start(UsersToS3("0x8000000000000000:0xc000000000000000"));
  ASSERT_TRUE(move.ok()) << move.status();
  absl::Status stopped = (*mover)->Run(move->id);
  ASSERT_TRUE(replaced);
  EXPECT_EQ(stopped.code(), absl::StatusCode::kFailedPrecondition) << stopped;
  EXPECT_NE(stopped.message().find("no longer hash as this shardkit does"),
            std::string::npos)
      << stopped;
  EXPECT_NE(stopped.message().find(
                StrCat("`shardctl moves resume ", move->id, "`")),
            std::string::npos)
      << stopped;
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users"), 0);  // nothing copied

  absl::Status reinstalled = shards_->InstallServerHash(2);
  ASSERT_TRUE(reinstalled.ok()) << reinstalled;
  absl::Status resumed = (*mover)->Run(move->id);
  ASSERT_TRUE(resumed.ok()) << resumed;
  ExpectUsersOnTheirOwners();
  EXPECT_GT(Count(2, "SELECT count(*) FROM users"), 0);
}

// The write guard (rebalancer/shard_objects.h): from the plan until the
// cutover, a write of a moving table that the router did not route as one
// (here: a function called by a SELECT) is refused on both of the move's
// shards, with a message that says what to do; other shards, and the
// router's own writes, are not affected; once cut over the function
// writes again, on the new owner. Schema changes of the moving tables are
// refused meanwhile too, by the router and by the shards.
TEST_F(MoverTest, RefusesWritesTheRouterDidNotRouteUntilTheCutover) {
  const std::string bump =
      "CREATE FUNCTION bump(k int8) RETURNS int8 LANGUAGE sql AS "
      "'UPDATE users SET n = n + 1 WHERE id = k RETURNING n'";
  // A trigger's writes pass: the trigger runs on the destination too when
  // the router applies the row there.
  const std::string touch =
      "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
      "UPDATE users SET name = name WHERE id = NEW.user_id; RETURN NULL; "
      "END $$; CREATE TRIGGER touch AFTER UPDATE ON orders FOR EACH ROW "
      "EXECUTE FUNCTION touch()";
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(shards_->Query(s, bump).ok());
    ASSERT_TRUE(shards_->Query(s, touch).ok());
  }
  auto cluster = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  const Distribution& users = *(*cluster)->map()->FindDistribution("users");
  int64_t moving = 0, staying = 0;  // users of s2 (the slice) and of s1
  for (int64_t id = 1; moving == 0 || staying == 0; ++id) {
    const ShardId owner = users.Place(Key::Integer(id))->shard;
    (owner == 1 ? moving : staying) = id;
  }
  int64_t loaded_id = 100000;  // a new user of s2, loaded during the plan
  while (users.Place(Key::Integer(++loaded_id))->shard != 1) {
  }
  const std::string moving_text = std::to_string(moving);
  const std::string staying_text = std::to_string(staying);

  auto config = LoadConfig(config_path_);
  ASSERT_TRUE(config.ok()) << config.status();
  internal::MoverOptions options;
  options.chunk_rows = 170;
  options.map_grace = absl::Milliseconds(100);
  absl::Status in_dual_write, on_destination, after_cutover, ddl_routed;
  std::vector<std::pair<std::string, absl::Status>> ddl_on_shards;
  absl::Status other_ddl;
  int64_t staying_bumps = 0;
  absl::Status loaded = absl::UnknownError("no load");
  // A REPEATABLE READ transaction on the destination whose snapshot
  // predates the guard still meets it (the guard is read as it is now).
  testing::Session old_snapshot(shards_->dsn(2));
  ASSERT_EQ(old_snapshot.Scalar("BEGIN ISOLATION LEVEL REPEATABLE READ; "
                                "SELECT 1 FROM users LIMIT 0"),
            "");
  // The application as a role with rights on its tables only (none on
  // schema shardkit), writing and reading through the library meanwhile.
  for (int shard = 0; shard < 3; ++shard) {
    ASSERT_TRUE(shards_
                    ->Query(shard,
                            "CREATE ROLE app_rw LOGIN; GRANT SELECT, INSERT, "
                            "UPDATE, DELETE ON users, orders TO app_rw")
                    .ok());
  }
  std::string app_config;
  {
    std::ifstream in(config_path_);
    for (std::string line; std::getline(in, line);) {
      if (!absl::StrContains(line, "dbname=movecat")) {
        line = absl::StrReplaceAll(line, {{"user=postgres", "user=app_rw"}});
      }
      app_config += line + "\n";
    }
  }
  const std::string app_path = shards_->cluster().dir + "/app.toml";
  std::ofstream(app_path) << app_config;
  auto app_cluster = Cluster::OpenFile(app_path);
  ASSERT_TRUE(app_cluster.ok()) << app_cluster.status();
  absl::Status app_write = absl::UnknownError("not run");
  int64_t app_count = -1;
  std::string in_old_snapshot = "not run", by_other_trigger = "not run";
  ASSERT_TRUE(shards_
                  ->Query(1,
                          "CREATE TABLE audit (x int8); CREATE FUNCTION "
                          "audited() RETURNS trigger LANGUAGE plpgsql AS $$ "
                          "BEGIN UPDATE users SET n = n + 1 WHERE id = NEW.x; "
                          "RETURN NULL; END $$; CREATE TRIGGER audited AFTER "
                          "INSERT ON audit FOR EACH ROW EXECUTE FUNCTION "
                          "audited()")
                  .ok());
  options.log = [&](std::string_view line) {
    const absl::string_view l(line.data(), line.size());
    if (absl::EndsWith(l, ": dual-write")) {
      // Planned, guarded, not yet in the map: the library's own COPY (a
      // load, which refuses itself once the move is in the map) passes.
      std::istringstream csv(StrCat("id,name\n", loaded_id, ",loaded\n"));
      loaded = LoadCsv(**cluster, "users", csv).status();
    } else if (absl::EndsWith(l, ": backfill")) {
      in_dual_write = (*cluster)
                          ->Execute("SELECT bump(id) FROM users WHERE id = $1",
                                    {moving_text})
                          .status();
      staying_bumps += (*cluster)
                           ->Execute("SELECT bump(id) FROM users WHERE id = $1",
                                     {staying_text})
                           .ok();
      // The router's own writes pass, with parameters or without, alone
      // or in a transaction, and so do the writes of their triggers.
      EXPECT_TRUE((*cluster)
                      ->Execute("UPDATE users SET name = name WHERE id = $1",
                                {moving_text})
                      .ok());
      auto txn = (*cluster)->Begin();
      ASSERT_TRUE(txn.ok()) << txn.status();
      absl::Status in_txn =
          (*txn)
              ->Execute(StrCat("UPDATE orders SET note = note WHERE "
                               "user_id = ",
                               moving))
              .status();
      EXPECT_TRUE(in_txn.ok()) << in_txn;
      EXPECT_TRUE((*txn)->Commit().ok());
      // A client that is not shardkit's, on the destination (the source
      // refuses it by its fence already).
      on_destination =
          shards_->Query(2, "DELETE FROM users WHERE id = -1").status();
      app_write = (*app_cluster)
                      ->Execute("UPDATE users SET name = name WHERE id = $1",
                                {moving_text})
                      .status();
      app_count =
          ScalarOf((*app_cluster)->Execute("SELECT count(*) FROM users"));
      in_old_snapshot = old_snapshot.Scalar("DELETE FROM users WHERE id = -1");
      // A trigger of a table the move does not guard, writing a guarded
      // one, in a session at the map's epoch (as the library's are).
      testing::Session local(shards_->dsn(1));
      by_other_trigger = local.Scalar(
          StrCat("SET shardkit.epoch = 1000000; INSERT INTO audit VALUES (",
                 moving, ")"));
      old_snapshot.Scalar("ROLLBACK");  // holds no lock for the cutover
      // Schema changes of the moving tables: refused by the router, and on
      // the shards (the test's user is a superuser: event triggers).
      ddl_routed = (*cluster)
                       ->Execute("ALTER TABLE users ADD COLUMN extra int")
                       .status();
      for (const auto& [shard, ddl] : std::vector<std::pair<int, std::string>>{
               {2, "ALTER TABLE users ADD COLUMN extra int"},
               {1, "CREATE INDEX ON orders (note)"},
               {1, "DROP TABLE orders"},
               {1, "CREATE RULE r AS ON UPDATE TO users DO ALSO NOTIFY r"},
               {2, "DROP TRIGGER shardkit_epoch_fence ON users"}}) {
        ddl_on_shards.emplace_back(ddl, shards_->Query(shard, ddl).status());
      }
      other_ddl =
          shards_->Query(1, "CREATE TABLE side (x int); DROP TABLE side")
              .status();
    } else if (absl::EndsWith(l, ": cleanup")) {
      after_cutover = (*cluster)
                          ->Execute("SELECT bump(id) FROM users WHERE id = $1",
                                    {moving_text})
                          .status();
    }
  };
  auto mover = internal::Mover::Open(*std::move(config), options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start(UsersToS3("0x8000000000000000:"));
  ASSERT_TRUE(move.ok()) << move.status();
  ASSERT_TRUE((*mover)->Run(move->id).ok());

  EXPECT_EQ(in_dual_write.code(), absl::StatusCode::kFailedPrecondition)
      << in_dual_write;
  EXPECT_EQ(SqlStateOf(in_dual_write), "55000") << in_dual_write;
  for (const std::string_view want :
       {"table users is under move 1", "statement: SELECT bump(id) FROM users",
        "shardctl moves status 1"}) {
    EXPECT_NE(in_dual_write.message().find(ToAbsl(want)), std::string::npos)
        << in_dual_write;
  }
  EXPECT_NE(on_destination.message().find("table users is under move 1"),
            std::string::npos)
      << on_destination;
  EXPECT_TRUE(app_write.ok()) << app_write;
  EXPECT_EQ(app_count, kUsers + 1);  // with the row loaded at the plan
  EXPECT_NE(in_old_snapshot.find("table users is under move 1"),
            std::string::npos)
      << in_old_snapshot;
  EXPECT_NE(by_other_trigger.find("table users is under move 1"),
            std::string::npos)
      << by_other_trigger;
  EXPECT_TRUE(loaded.ok()) << loaded;
  EXPECT_EQ(staying_bumps, 1);
  EXPECT_EQ(SqlStateOf(ddl_routed), "55000") << ddl_routed;
  EXPECT_NE(ddl_routed.message().find("DDL or TRUNCATE of table users cannot "
                                      "run while move 1"),
            std::string::npos)
      << ddl_routed;
  for (const auto& [ddl, status] : ddl_on_shards) {
    SCOPED_TRACE(ddl);
    EXPECT_NE(status.message().find("cannot run while move 1 copies it"),
              std::string::npos)
        << status;
  }
  EXPECT_TRUE(other_ddl.ok()) << other_ddl;
  EXPECT_TRUE(after_cutover.ok()) << after_cutover;
  // The refused bump changed nothing; the one after the cutover is on s3.
  EXPECT_EQ(Count(2, StrCat("SELECT n FROM users WHERE id = ", moving)), 1);
  EXPECT_EQ(Count(0, StrCat("SELECT n FROM users WHERE id = ", staying)), 1);
  for (int s = 0; s < 3; ++s) {
    auto guards = shards_->Query(
        s, "SELECT count(*) FROM pg_class WHERE relname = 'write_guards'");
    ASSERT_TRUE(guards.ok());
    if ((*guards)[0][0] == "1") {
      EXPECT_EQ(Count(s, "SELECT count(*) FROM shardkit.write_guards"), 0);
    }
  }
  // The loaded rows are where they belong; none is lost.
  auto loaded_rows =
      (*cluster)->Execute("SELECT count(*) FROM users WHERE name = 'loaded'");
  ASSERT_TRUE(loaded_rows.ok()) << loaded_rows.status();
  EXPECT_EQ(*loaded_rows->rows[0][0], "1");
  ASSERT_TRUE((*cluster)->Execute("DELETE FROM users WHERE id > 100000").ok());
  ExpectUsersOnTheirOwners();
  // A role with rights on the tables only (none on schema shardkit) still
  // writes them where the fence stays, and runs DDL where the event
  // triggers stay.
  for (int shard : {1, 2}) {
    testing::Session app(shards_->dsn(shard) + " user=app_rw");
    EXPECT_EQ(app.Scalar("SET shardkit.epoch = 1000000; UPDATE users SET n = n "
                      "WHERE id = 1"),
              "")
        << "s" << shard + 1;
    EXPECT_EQ(app.Scalar("CREATE TEMP TABLE scratch (x int)"), "")
        << "s" << shard + 1;
  }
  // Once the move is done, the schema may change again.
  auto altered = (*cluster)->Execute("ALTER TABLE users ADD COLUMN extra int");
  EXPECT_TRUE(altered.ok()) << altered.status();
}

// The mover as production runs it: connected to the shards and the catalog
// as the role that owns the moving tables, not as a superuser. The move
// completes while a thread writes through a Cluster of that role (single
// statements and two-phase transactions, into an identity column whose
// sequence the cutover advances); the write guard still refuses a
// function's write of a moving row; DDL on the shards is not refused (its
// event triggers need a superuser), and the log and the journal say so.
TEST_F(MoverTest, MovesAsTheTablesOwnerWithoutASuperuser) {
  const std::string bump =
      "CREATE FUNCTION bump(k int8) RETURNS int8 LANGUAGE sql AS "
      "'UPDATE users SET n = n + 1 WHERE id = k RETURNING n'";
  auto owner_config = WriteOwnerConfig();
  ASSERT_TRUE(owner_config.ok()) << owner_config.status();
  for (int s = 0; s < 3; ++s) {
    // What an owner has in production: its tables (their sequences come
    // along), and CREATE on its database (for schema shardkit).
    ASSERT_TRUE(
        shards_
            ->Query(s, StrCat("ALTER TABLE orders ALTER COLUMN id ADD "
                              "GENERATED BY DEFAULT AS IDENTITY (START 10); "
                              "GRANT CREATE ON DATABASE app TO ", kOwner,
                              "; ALTER TABLE users OWNER TO ", kOwner,
                              "; ALTER TABLE orders OWNER TO ", kOwner, "; ",
                              bump))
            .ok());
  }
  config_path_ = *owner_config;
  auto cluster = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto superuser = (*cluster)->Execute(
      "SELECT current_user, current_setting('is_superuser')");
  ASSERT_TRUE(superuser.ok()) << superuser.status();
  ASSERT_EQ(*superuser->rows[0][0], kOwner);
  ASSERT_EQ(*superuser->rows[0][1], "off");

  const Distribution& users = *(*cluster)->map()->FindDistribution("users");
  int64_t moving = 0, staying = 0;  // users of s2 (the slice) and of s1
  for (int64_t id = 1; moving == 0 || staying == 0; ++id) {
    const ShardId owner = users.Place(Key::Integer(id))->shard;
    (owner == 1 ? moving : staying) = id;
  }

  // The writer: single updates, and transactions that insert an order and
  // update a user (two shards: two-phase commit); a transaction refused by
  // a fence (rolled back) is retried.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> bumped{0}, inserted{0}, failures{0};
  std::string first_error;
  std::thread writer([&] {
    std::mt19937 rng(7);
    auto user = [&] { return 1 + static_cast<int64_t>(rng() % kUsers); };
    while (!stop.load()) {
      absl::Status failed;
      if (rng() % 4 != 0) {
        auto r = (*cluster)->Execute(
            StrCat("UPDATE users SET n = n + 1 WHERE id = ", user()));
        if (r.ok() && r->rows_affected == 1) ++bumped;
        failed = r.ok() && r->rows_affected != 1
                     ? absl::InternalError("update matched no row")
                     : r.status();
      } else {
        const int64_t a = user(), b = user();
        for (int attempt = 0; attempt < 5; ++attempt) {
          auto txn = (*cluster)->Begin();
          failed = txn.status();
          if (!txn.ok()) break;
          failed = (*txn)
                       ->Execute(StrCat("INSERT INTO orders (user_id, note) "
                                        "VALUES (", a, ", 'w')"))
                       .status();
          if (failed.ok()) {
            failed = (*txn)
                         ->Execute(StrCat("UPDATE users SET n = n + 1 WHERE "
                                          "id = ", b))
                         .status();
          }
          if (failed.ok()) {
            failed = (*txn)->Commit();
            if (failed.ok()) {
              ++inserted;
              ++bumped;
            }
            break;
          }
          (*txn)->Rollback().IgnoreError();
          if (SqlStateOf(failed) != internal::kStaleEpochSqlState) break;
        }
      }
      if (!failed.ok() && failures++ == 0) {
        first_error = std::string(failed.message());
      }
    }
  });

  auto config = LoadConfig(config_path_);
  ASSERT_TRUE(config.ok()) << config.status();
  internal::MoverOptions options;
  options.chunk_rows = 170;
  options.map_grace = absl::Milliseconds(100);
  std::vector<std::string> log;
  absl::Status in_dual_write, ddl_on_destination;
  int64_t staying_bumps = 0;
  options.log = [&](std::string_view line) {
    log.emplace_back(line);
    if (!absl::EndsWith(ToAbsl(line), ": backfill")) return;
    in_dual_write = (*cluster)
                        ->Execute("SELECT bump(id) FROM users WHERE id = $1",
                                  {std::to_string(moving)})
                        .status();
    staying_bumps += (*cluster)
                         ->Execute("SELECT bump(id) FROM users WHERE id = $1",
                                   {std::to_string(staying)})
                         .ok();
    // Not refused on the shards without event triggers (the router still
    // refuses it: RefusesWritesTheRouterDidNotRouteUntilTheCutover).
    ddl_on_destination =
        shards_->Query(2, "CREATE INDEX users_n ON users (n); DROP INDEX "
                          "users_n")
            .status();
  };
  auto mover = internal::Mover::Open(*std::move(config), options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start(UsersToS3("0x8000000000000000:"));
  absl::Status ran = move.ok() ? (*mover)->Run(move->id) : move.status();
  stop = true;
  writer.join();
  ASSERT_TRUE(ran.ok()) << ran << "\n" << absl::StrJoin(log, "\n");

  auto done = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->phase, internal::JournalPhase::kDone);
  EXPECT_EQ(failures.load(), 0) << first_error;
  EXPECT_GT(bumped.load(), 0);
  EXPECT_EQ(SqlStateOf(in_dual_write), "55000") << in_dual_write;
  EXPECT_NE(in_dual_write.message().find(
                StrCat("table users is under move ", move->id)),
            std::string::npos)
      << in_dual_write;
  EXPECT_EQ(staying_bumps, 1);
  EXPECT_TRUE(ddl_on_destination.ok()) << ddl_on_destination;
  auto events = (*mover)->journal().Events(move->id);
  ASSERT_TRUE(events.ok()) << events.status();
  for (const std::string_view shard : {"s2", "s3"}) {
    const std::string unguarded =
        StrCat("DDL on ", shard, " is not refused during the move");
    EXPECT_NE(absl::StrJoin(*events, "\n").find(unguarded), std::string::npos)
        << absl::StrJoin(*events, "\n");
    EXPECT_NE(absl::StrJoin(log, "\n").find(unguarded), std::string::npos)
        << absl::StrJoin(log, "\n");
  }
  for (int s : {1, 2}) {
    EXPECT_EQ(Count(s, "SELECT count(*) FROM pg_event_trigger"), 0);
    EXPECT_EQ(Count(s, "SELECT count(*) FROM shardkit.write_guards"), 0);
  }

  ExpectUsersOnTheirOwners();
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), 0);
  EXPECT_EQ(Count(1, "SELECT count(*) FROM orders"), 0);
  // Every acknowledged write is there once: the refused bump changed
  // nothing, the other one counts.
  auto after = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(ScalarOf((*after)->Execute("SELECT sum(n) FROM users")),
            bumped.load() + staying_bumps);
  EXPECT_EQ(ScalarOf((*after)->Execute("SELECT count(*) FROM orders")),
            2 * kUsers + inserted.load());
}

// What a superuser made in schema shardkit (`shardctl hash install`
// creates the schema; a move run as a superuser, the fence's functions,
// tables and sequences) is not the mover's to use or replace when it runs
// as the tables' owner, and neither is a moving table another role owns.
// The move stops before it installs anything on either shard and says, per
// shard, what to run as a superuser (or that it must run as the tables'
// owner); once that is done, it resumes and finishes, the shards hashing
// the slice.
TEST_F(MoverTest, SaysWhatToGrantWhenShardkitsObjectsAreAnotherRoles) {
  auto owner_config = WriteOwnerConfig();
  ASSERT_TRUE(owner_config.ok()) << owner_config.status();
  for (int s = 0; s < 3; ++s) {
    // No CREATE on the database: schema shardkit is given to the role.
    ASSERT_TRUE(shards_
                    ->Query(s, StrCat("ALTER TABLE users OWNER TO ", kOwner,
                                      s == 2 ? ""
                                             : StrCat("; ALTER TABLE orders "
                                                      "OWNER TO ",
                                                      kOwner)))
                    .ok());
    absl::Status installed = shards_->InstallServerHash(s);
    ASSERT_TRUE(installed.ok()) << installed;
  }
  // On s3, what a move run as a superuser leaves.
  ASSERT_TRUE(shards_
                  ->Query(2, StrCat(internal::InstallFenceFunctionSql(),
                                    "; SELECT shardkit.raise_fence('users', "
                                    "0)"))
                  .ok());
  config_path_ = *owner_config;
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start({"users", "0x8000000000000000:", "", "s3"});
  ASSERT_TRUE(move.ok()) << move.status();
  absl::Status refused = (*mover)->Run(move->id);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  const std::string schema =
      StrCat("GRANT USAGE, CREATE ON SCHEMA shardkit TO ", kOwner, ";");
  for (const std::string& want :
       {StrCat("move ", move->id,
               " cannot install its fence and write "
               "guard: the mover's user lacks privileges on the shards "
               "(nothing was installed); on s2 (user shardkit_owner), as "
               "a superuser: `",
               schema,
               "`; on s3 (user shardkit_owner), "
               "it does not own orders (owner postgres), which get the "
               "fence's trigger: run the move as their owner, and as a "
               "superuser: `",
               schema,
               " ALTER FUNCTION "
               "shardkit.add_write_guard(text,bigint) OWNER TO "
               "shardkit_owner; ALTER FUNCTION shardkit.check_epoch() "
               "OWNER TO shardkit_owner; ALTER FUNCTION "
               "shardkit.fence_sequence(text) OWNER TO shardkit_owner; "
               "ALTER FUNCTION shardkit.guard_sequence(text) OWNER TO "
               "shardkit_owner; ALTER FUNCTION "
               "shardkit.guarding_move(text) OWNER TO shardkit_owner; "
               "ALTER FUNCTION shardkit.raise_fence(text,bigint) OWNER TO "
               "shardkit_owner; ALTER FUNCTION "
               "shardkit.remove_write_guards(bigint) OWNER TO "
               "shardkit_owner; ALTER FUNCTION shardkit.write_mark(text) "
               "OWNER TO shardkit_owner; ALTER SEQUENCE shardkit.fence_"),
        StrCat(" OWNER TO shardkit_owner; ALTER TABLE shardkit.fences "
               "OWNER TO shardkit_owner; ALTER TABLE shardkit.write_guards "
               "OWNER TO shardkit_owner;`; then `shardctl moves resume ",
               move->id, "`")}) {
    EXPECT_NE(refused.message().find(want), std::string::npos)
        << refused << "\nwants: " << want;
  }
  auto stopped = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(stopped.ok()) << stopped.status();
  EXPECT_EQ(stopped->phase, internal::JournalPhase::kPlanned);
  for (int s : {1, 2}) {
    EXPECT_EQ(Count(s, "SELECT count(*) FROM pg_trigger WHERE tgname = "
                       "'shardkit_epoch_fence'"),
              0);
  }
  EXPECT_EQ(Count(2, "SELECT count(*) FROM shardkit.write_guards"), 0);

  // The operator runs what the message says, as a superuser, and makes the
  // role the owner of s3's orders.
  for (int s : {1, 2}) {
    const std::string clause = StrCat("on s", s + 1, " (user ", kOwner, ")");
    const size_t at = refused.message().find(ToAbsl(clause));
    ASSERT_NE(at, std::string::npos) << refused;
    constexpr std::string_view kRun = "as a superuser: `";
    const size_t from = refused.message().find(ToAbsl(kRun), at) + kRun.size();
    const size_t to = refused.message().find('`', from);
    const std::string grants(refused.message().substr(from, to - from));
    auto granted = shards_->Query(s, grants);
    ASSERT_TRUE(granted.ok()) << granted.status() << "\n" << grants;
  }
  ASSERT_TRUE(
      shards_->Query(2, StrCat("ALTER TABLE orders OWNER TO ", kOwner)).ok());
  absl::Status resumed = (*mover)->Run(move->id);
  ASSERT_TRUE(resumed.ok()) << resumed;
  auto done = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->phase, internal::JournalPhase::kDone);
  EXPECT_TRUE(done->server_hash);
  ExpectUsersOnTheirOwners();
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), 0);
}

// Copied rows are not written anew: on the destination the backfill fires
// no trigger of the moving tables (a counter a trigger keeps would count
// the copied rows twice, and the verify stop the move) and checks no
// foreign key table by table; on the source the cleanup's deletes cascade
// nowhere. (The test's user is a superuser: session_replication_role.)
TEST_F(MoverTest, CopiedRowsFireNoTriggersAndCheckNoForeignKeys) {
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(shards_
                    ->Query(s,
                            "ALTER TABLE orders ADD FOREIGN KEY (user_id) "
                            "REFERENCES users (id) ON DELETE CASCADE; "
                            "CREATE FUNCTION count_order() RETURNS trigger "
                            "LANGUAGE plpgsql AS $$ BEGIN UPDATE users SET "
                            "n = n + 1 WHERE id = NEW.user_id; RETURN NULL; "
                            "END $$; CREATE TRIGGER count_order AFTER INSERT "
                            "ON orders FOR EACH ROW EXECUTE FUNCTION "
                            "count_order()")
                    .ok());
  }
  auto sum = [&](int shard) {
    return Count(shard, "SELECT coalesce(sum(n), 0) FROM users");
  };
  const int64_t before = sum(0) + sum(1);
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start(UsersToS3("0x8000000000000000:"));
  ASSERT_TRUE(move.ok()) << move.status();
  absl::Status ran = (*mover)->Run(move->id);
  ASSERT_TRUE(ran.ok()) << ran;
  EXPECT_EQ(sum(0) + sum(1) + sum(2), before);
  EXPECT_EQ(Count(1, "SELECT count(*) FROM orders"), 0);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM orders"),
            2 * Count(2, "SELECT count(*) FROM users"));
  ExpectUsersOnTheirOwners();
}

TEST_F(MoverTest, VerifyMismatchStopsTheMoveAndAbortRollsItBack) {
  // A row of the slice that s3 already holds with other values: the
  // backfill keeps it (it could be a newer dual-write), so verify finds it.
  int64_t planted = 0;
  for (int64_t id = 1; id <= kUsers && planted == 0; ++id) {
    if (HashKey(Key::Integer(id)) >= 0x8000000000000000u) planted = id;
  }
  ASSERT_TRUE(shards_
                  ->Query(2, StrCat("INSERT INTO users VALUES (", planted,
                                    ", 'stale', 7)"))
                  .ok());
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start({"users", "0x8000000000000000:", "", "s3"});
  ASSERT_TRUE(move.ok()) << move.status();
  absl::Status ran = (*mover)->Run(move->id);
  ASSERT_EQ(ran.code(), absl::StatusCode::kDataLoss) << ran;
  EXPECT_NE(ran.message().find("did not cut over"), std::string::npos) << ran;
  auto stopped = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(stopped.ok());
  EXPECT_EQ(stopped->phase, internal::JournalPhase::kVerify);
  EXPECT_FALSE(stopped->past_point_of_no_return);
  // Still the source's: a new cluster reads each row once.
  auto cluster = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto count = (*cluster)->Execute("SELECT count(*) FROM users");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count->rows[0][0], StrCat(kUsers));

  // A cutover published but not journaled (a mover killed right after its
  // publish) cannot be aborted, and the refusal leaves the move resumable.
  auto live = (*mover)->Current();
  ASSERT_TRUE(live.ok()) << live.status();
  internal::LiveState cut = live->state;
  ASSERT_EQ(cut.moves.size(), 1u);
  cut.moves[0].phase = MovePhase::kCutOver;
  cut.epoch = live->state.epoch + 1;
  ASSERT_TRUE((*mover)->catalog().Publish(cut, "mover_test").ok());
  absl::Status refused = (*mover)->Abort(move->id);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_NE(refused.message().find("has cut over"), std::string::npos)
      << refused;
  auto still = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(still.ok());
  EXPECT_EQ(still->phase, internal::JournalPhase::kVerify);
  cut.moves[0].phase = MovePhase::kDualWrite;
  cut.epoch += 1;
  ASSERT_TRUE((*mover)->catalog().Publish(cut, "mover_test").ok());

  ASSERT_TRUE((*mover)->Abort(move->id).ok());
  auto aborted = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(aborted.ok());
  EXPECT_EQ(aborted->phase, internal::JournalPhase::kAborted);
  // The destination's copies are gone, the source keeps everything.
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users"), 0);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM orders"), 0);
  ASSERT_TRUE(internal::LiveMapOf(**cluster).Refresh().ok());
  EXPECT_TRUE((*cluster)->map()->moves().empty());
  count = (*cluster)->Execute("SELECT count(*) FROM users");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count->rows[0][0], StrCat(kUsers));
  // A finished abort cannot be resumed.
  EXPECT_FALSE((*mover)->Run(move->id).ok());
}

TEST_F(MoverTest, LiveMapEpochsAreWrittenByCompareAndSwap) {
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto live = (*mover)->Current();
  ASSERT_TRUE(live.ok()) << live.status();
  internal::LiveState next = live->state;
  next.epoch = live->state.epoch + 1;
  ASSERT_TRUE((*mover)->catalog().Publish(next, "first").ok());
  // A second writer of the same epoch, and one that skips an epoch, lose.
  absl::Status again = (*mover)->catalog().Publish(next, "second");
  EXPECT_EQ(again.code(), absl::StatusCode::kAborted) << again;
  EXPECT_NE(again.message().find("read it again and retry"), std::string::npos)
      << again;
  next.epoch += 2;
  absl::Status skipped = (*mover)->catalog().Publish(next, "skip");
  EXPECT_EQ(skipped.code(), absl::StatusCode::kAborted) << skipped;
  auto epoch = (*mover)->catalog().LatestEpoch();
  ASSERT_TRUE(epoch.ok());
  EXPECT_EQ(*epoch, live->state.epoch + 1);
}

// A mover killed a moment ago on this host does not keep its lease until
// it expires: `moves resume` right after the kill takes it over. A live
// holder keeps it.
TEST_F(MoverTest, LeaseOfADeadProcessOfThisHostIsTakenOver) {
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  internal::Catalog& catalog = (*mover)->catalog();
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  const pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(waitpid(child, nullptr, 0), child);
  const std::string dead = StrCat(host, ":", child, ":0000abcd");
  const std::string alive = StrCat(host, ":", getppid(), ":0000abcd");
  EXPECT_TRUE(internal::HolderIsDeadProcessOfThisHost(dead));
  EXPECT_FALSE(internal::HolderIsDeadProcessOfThisHost(alive));
  EXPECT_FALSE(internal::HolderIsDeadProcessOfThisHost(
      StrCat("elsewhere:", child, ":0000abcd")));
  EXPECT_FALSE(internal::HolderIsDeadProcessOfThisHost("monitor-1"));

  auto taken = catalog.TryLease("move/900", dead, absl::Seconds(30));
  ASSERT_TRUE(taken.ok() && *taken);
  taken = catalog.TryLease("move/900", internal::ProcessIdentity(),
                           absl::Seconds(30));
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_TRUE(*taken);
  taken = catalog.TryLease("move/901", alive, absl::Seconds(30));
  ASSERT_TRUE(taken.ok() && *taken);
  taken = catalog.TryLease("move/901", internal::ProcessIdentity(),
                           absl::Seconds(30));
  ASSERT_TRUE(taken.ok()) << taken.status();
  EXPECT_FALSE(*taken);
}

// A single statement's dual-write commits on the destination, then on the
// source. A process that dies between the two leaves on the destination a
// copy the source rolled back; the mover puts the source's rows back over
// it, at verify (for copies made before) and under the cutover's pause
// (for copies made after). The destination's sequences are moved past the
// source's at the cutover.
TEST_F(MoverTest, RepairsCopiesTheSourceRolledBackAndAdvancesSequences) {
  for (int s = 0; s < 3; ++s) {
    ASSERT_TRUE(shards_
                    ->Query(s, "ALTER TABLE orders ALTER COLUMN id ADD "
                               "GENERATED BY DEFAULT AS IDENTITY")
                    .ok());
  }
  ASSERT_TRUE(
      shards_->Query(1, "SELECT setval(pg_get_serial_sequence('orders', 'id'), "
                        "5000)")
          .ok());
  const int64_t a = Count(1, "SELECT min(id) FROM users");
  const int64_t b = Count(1, "SELECT max(id) FROM users");
  ASSERT_GT(a, 0);
  ASSERT_NE(a, b);

  absl::Notification at_backfill, go_backfill, at_cutover, go_cutover;
  ASSERT_TRUE(LoadConfig(config_path_).ok());
  internal::MoverOptions options;
  options.chunk_rows = 170;
  options.map_grace = absl::Milliseconds(100);
  options.log = [&](std::string_view line) {
    if (line.ends_with(": backfill")) {
      at_backfill.Notify();
      go_backfill.WaitForNotification();
    } else if (line.ends_with(": cutover")) {
      at_cutover.Notify();
      go_cutover.WaitForNotification();
    }
  };
  auto mover = internal::Mover::Open(*LoadConfig(config_path_), options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start(UsersToS3("0x8000000000000000:"));
  ASSERT_TRUE(move.ok()) << move.status();
  absl::Status ran;
  std::thread runner([&] { ran = (*mover)->Run(move->id); });
  auto crash_running = [&](const std::string& sql) {
    return testing::RunCommand({"/usr/bin/env",
                                "SHARDKIT_FAILPOINTS=dual-write-after-"
                                "destination",
                                SHARDCTL_PATH, "sql", "-c", config_path_, "-e",
                                sql});
  };
  const std::string pending_count =
      StrCat("SELECT count(*) FROM ", internal::MovePendingTable(move->id));

  // Dual-writing, nothing copied yet.
  at_backfill.WaitForNotification();
  testing::CommandOutput crashed =
      crash_running(StrCat("UPDATE users SET name = 'lost' WHERE id = ", a));
  EXPECT_EQ(crashed.exit_code, internal::kFailpointExitCode) << crashed.err;
  EXPECT_EQ(Count(2, StrCat("SELECT count(*) FROM users WHERE id = ", a,
                            " AND name = 'lost'")),
            1);
  EXPECT_EQ(Count(1, StrCat("SELECT count(*) FROM users WHERE id = ", a,
                            " AND name = 'lost'")),
            0);
  EXPECT_EQ(Count(2, pending_count), 1);
  go_backfill.Notify();

  // Verified (the copy repaired first): the source's name is back.
  at_cutover.WaitForNotification();
  EXPECT_EQ(Count(2, StrCat("SELECT count(*) FROM users WHERE id = ", a,
                            " AND name = 'user\\t' || id")),
            1);
  EXPECT_EQ(Count(2, pending_count), 0);
  crashed = crash_running(StrCat("DELETE FROM orders WHERE user_id = ", b));
  EXPECT_EQ(crashed.exit_code, internal::kFailpointExitCode) << crashed.err;
  EXPECT_EQ(Count(2, StrCat("SELECT count(*) FROM orders WHERE user_id = ", b)),
            0);
  EXPECT_EQ(Count(1, StrCat("SELECT count(*) FROM orders WHERE user_id = ", b)),
            2);
  go_cutover.Notify();
  runner.join();
  ASSERT_TRUE(ran.ok()) << ran;

  // The destination owns the slice, with the source's rows.
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), 0);
  EXPECT_EQ(Count(2, StrCat("SELECT count(*) FROM orders WHERE user_id = ", b)),
            2);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users WHERE name = 'lost'"), 0);
  auto events = (*mover)->journal().Events(move->id);
  ASSERT_TRUE(events.ok()) << events.status();
  int repairs = 0;
  for (const std::string& e : *events) {
    if (e.find("repaired 1 keys") != std::string::npos) ++repairs;
  }
  EXPECT_EQ(repairs, 1);  // at verify; the cutover's repair is not journaled
  // The destination's sequence is past the source's: a new order there
  // takes no id the moved rows hold.
  EXPECT_GE(Count(2, "SELECT pg_sequence_last_value(pg_get_serial_sequence("
                     "'orders', 'id')::regclass)"),
            5000);
  auto cluster = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto inserted = (*cluster)->Execute(
      StrCat("INSERT INTO orders (user_id, note) VALUES (", b,
             ", 'new') RETURNING id"));
  ASSERT_TRUE(inserted.ok()) << inserted.status();
  int64_t id = 0;
  ASSERT_TRUE(absl::SimpleAtoi(*inserted->rows[0][0], &id));
  EXPECT_GT(id, 5000);
}

TEST_F(MoverTest, RefusesWithoutACatalog) {
  auto config = LoadConfig(shards_->WriteConfig("nocat.toml", kMapBody));
  ASSERT_TRUE(config.ok()) << config.status();
  auto mover = internal::Mover::Open(*config, {});
  ASSERT_FALSE(mover.ok());
  EXPECT_NE(mover.status().message().find("needs a [catalog]"),
            std::string::npos);
}

// A range distribution: users [.., 1000) on s1, [1000, ..) on s2.
constexpr char kRangeMapBody[] = R"(
[distributions.users]
strategy = "range"
key_type = "int8"
slices = [ { to = 1000, shard = "s1" }, { from = 1000, shard = "s2" } ]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
)";

class MoverRangeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto started = TestCluster::Start(3);
    ASSERT_TRUE(started.ok()) << started.status();
    shards_ = *std::move(started);
    auto config = shards_->WriteMoveConfig("mover.toml", kRangeMapBody,
                                           kUsersAndOrders);
    ASSERT_TRUE(config.ok()) << config.status();
    config_path_ = *config;
    auto cluster = Cluster::OpenFile(config_path_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    for (int i = 1; i <= kUsers; i += 100) {
      std::string users = "INSERT INTO users (id, name) VALUES ";
      std::string orders = "INSERT INTO orders (user_id, id, note) VALUES ";
      for (int id = i; id < i + 100; ++id) {
        absl::StrAppend(&users, id == i ? "" : ", ", "(", id, ", 'u", id,
                        "')");
        absl::StrAppend(&orders, id == i ? "" : ", ", "(", id, ", 1, 'o",
                        id, "')");
      }
      ASSERT_TRUE((*cluster)->Execute(users).ok());
      ASSERT_TRUE((*cluster)->Execute(orders).ok());
    }
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

  absl::StatusOr<std::unique_ptr<internal::Mover>> OpenMover(
      std::function<void(std::string_view)> log = nullptr) {
    ASSIGN_OR_RETURN(Config config, LoadConfig(config_path_));
    internal::MoverOptions options;
    options.chunk_rows = 70;  // several chunks
    options.map_grace = absl::Milliseconds(100);
    options.log = std::move(log);
    return internal::Mover::Open(std::move(config), options);
  }

  std::unique_ptr<TestCluster> shards_;
  std::string config_path_;
};

// The range slice [1200, ..) moves from s2 to s3 while two threads write
// through the library (updates of every user, inserts and deletes of new
// users of the slice with their orders). With the move in dual-write
// (backfill done) and again cut over but not cleaned up, both s2 and s3
// hold the slice's rows, and no key is listed anywhere: a scatter read
// through the library still sees each row once, and a scatter UPDATE
// touches each row once, because the router hides the slice by its
// condition on the shard that does not own it.
TEST_F(MoverRangeTest, ScatterReadsSeeEachRowOnceWhileARangeSliceMoves) {
  auto checker = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(checker.ok()) << checker.status();
  auto writers_cluster = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(writers_cluster.ok()) << writers_cluster.status();

  // Writers hold `pause` shared for each write; a check holds it alone, so
  // it knows exactly what was acknowledged.
  std::shared_mutex pause;
  std::atomic<bool> stop{false};
  std::atomic<int64_t> updated{0}, users{kUsers}, failures{0};
  std::vector<std::string> errors;
  std::mutex errors_mu;
  auto writer = [&](int w) {
    std::mt19937 rng(w);
    std::vector<int64_t> mine;
    int64_t next = 100000 * (w + 1);
    auto fail = [&](const absl::Status& s) {
      ++failures;
      std::lock_guard<std::mutex> l(errors_mu);
      if (errors.size() < 5) errors.push_back(std::string(s.message()));
    };
    while (!stop.load()) {
      std::shared_lock<std::shared_mutex> hold(pause);
      const int op = static_cast<int>(rng() % 10);
      if (op < 6 || (mine.empty() && op >= 9)) {
        const int64_t id = 1 + static_cast<int64_t>(rng() % kUsers);
        auto r = (*writers_cluster)->Execute(
            StrCat("UPDATE users SET n = n + 1 WHERE id = ", id));
        if (r.ok() && r->rows_affected == 1) {
          ++updated;
        } else {
          fail(r.ok() ? absl::InternalError("update matched no row")
                      : r.status());
        }
      } else if (op < 9) {
        const int64_t id = next++;
        auto r = (*writers_cluster)->Execute(
            StrCat("INSERT INTO users (id, name) VALUES (", id, ", 'w')"));
        auto o = r.ok() ? (*writers_cluster)->Execute(
                              StrCat("INSERT INTO orders (user_id, id, note) "
                                     "VALUES (", id, ", 1, 'w')"))
                        : r;
        if (r.ok() && o.ok()) {
          ++users;
          mine.push_back(id);
        } else {
          fail(o.status());
        }
      } else {
        const int64_t id = mine.back();
        mine.pop_back();
        auto o = (*writers_cluster)->Execute(
            StrCat("DELETE FROM orders WHERE user_id = ", id));
        auto r = o.ok() ? (*writers_cluster)->Execute(
                              StrCat("DELETE FROM users WHERE id = ", id))
                        : o;
        if (r.ok() && r->rows_affected == 1) {
          --users;
        } else {
          fail(r.ok() ? absl::InternalError("delete matched no row")
                      : r.status());
        }
      }
    }
  };

  std::vector<std::string> checked;
  uint64_t checked_move = 0;  // set once the move is planned
  auto check = [&](std::string_view line) {
    const bool dual_write = absl::EndsWith(ToAbsl(line), ": verify");
    const bool cut_over = absl::EndsWith(ToAbsl(line), ": cleanup");
    if (!dual_write && !cut_over) return;
    std::unique_lock<std::shared_mutex> alone(pause);
    checked.push_back(std::string(line));
    ASSERT_TRUE(internal::LiveMapOf(**checker).Refresh().ok());
    ASSERT_EQ((*checker)->map()->moves().size(), 1u) << line;
    EXPECT_EQ((*checker)->map()->moves()[0].phase,
              dual_write ? MovePhase::kDualWrite : MovePhase::kCutOver);
    // Both sides hold the slice (the hiding is exercised), no lists. In
    // dual-write, with the backfill done, the same rows.
    const std::string in_slice = "SELECT count(*) FROM users WHERE id >= 1200";
    const int64_t on_s2 = Count(1, in_slice);
    EXPECT_GE(on_s2, 301) << line;
    if (dual_write) {
      EXPECT_EQ(Count(2, in_slice), on_s2) << line;
    } else {
      EXPECT_GE(Count(2, in_slice), 301) << line;
    }
    for (int s : {1, 2}) {
      EXPECT_EQ(Count(s, StrCat("SELECT count(*) FROM ",
                                internal::MoveKeysTable(checked_move))),
                0)
          << line;
    }
    const int64_t want = users.load();
    EXPECT_EQ(ScalarOf((*checker)->Execute("SELECT count(*) FROM users")),
              want)
        << line;
    EXPECT_EQ(ScalarOf((*checker)->Execute(
                  "SELECT count(DISTINCT id) FROM users u")),
              want)
        << line;
    EXPECT_EQ(ScalarOf((*checker)->Execute(
                  "SELECT count(*) FROM users u JOIN orders o "
                  "ON o.user_id = u.id")),
              want)
        << line;
    EXPECT_EQ(ScalarOf((*checker)->Execute("SELECT sum(n) FROM users")),
              updated.load())
        << line;
    auto touched = (*checker)->Execute("UPDATE users SET name = name");
    ASSERT_TRUE(touched.ok()) << touched.status();
    EXPECT_EQ(touched->rows_affected, want) << line;
  };

  auto mover = OpenMover(check);
  ASSERT_TRUE(mover.ok()) << mover.status();
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) threads.emplace_back(writer, w);
  auto move = (*mover)->Start(UsersToS3("1200:"));
  if (move.ok()) checked_move = move->id;
  absl::Status ran = move.ok() ? (*mover)->Run(move->id) : move.status();
  stop = true;
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(ran.ok()) << ran;
  EXPECT_EQ(move->source, "s2");
  EXPECT_EQ(checked.size(), 2u);
  EXPECT_EQ(failures.load(), 0) << (errors.empty() ? "" : errors[0]);

  // Done: the slice is on s3 only, s2 keeps [1000, 1200), s1 untouched.
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users WHERE id >= 1200"), 0);
  EXPECT_EQ(Count(1, "SELECT count(*) FROM orders WHERE user_id >= 1200"), 0);
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), 200);
  EXPECT_EQ(Count(0, "SELECT count(*) FROM users"), 999);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users WHERE id < 1200"), 0);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM users"), users.load() - 1199);
  EXPECT_EQ(Count(2, "SELECT count(*) FROM orders"), users.load() - 1199);
  EXPECT_EQ(ScalarOf((*checker)->Execute("SELECT sum(n) FROM users")),
            updated.load());
}

// A range slice's abort deletes the destination's copies by the slice's
// condition, both bounds closed: the destination's own rows below and
// above it stay.
TEST_F(MoverRangeTest, AbortDeletesTheDestinationsCopiesByCondition) {
  // s1 holds [.., 1000); its row 1100 (of s2's slice, with other values)
  // makes verify stop the move [1000, 1200) from s2 to s1. A row of s1
  // above the slice (5000, left over) is not the move's.
  ASSERT_TRUE(shards_
                  ->Query(0, "INSERT INTO users VALUES (1100, 'stale', 7), "
                             "(5000, 'other', 0)")
                  .ok());
  auto mover = OpenMover();
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start({"users", "1000:1200", "", "s1"});
  ASSERT_TRUE(move.ok()) << move.status();
  EXPECT_EQ(move->source, "s2");
  absl::Status ran = (*mover)->Run(move->id);
  ASSERT_EQ(ran.code(), absl::StatusCode::kDataLoss) << ran;
  EXPECT_EQ(Count(0, "SELECT count(*) FROM users WHERE id >= 1000 AND "
                     "id < 1200"),
            200);
  ASSERT_TRUE((*mover)->Abort(move->id).ok());
  EXPECT_EQ(Count(0, "SELECT count(*) FROM users WHERE id >= 1000 AND "
                     "id < 1200"),
            0);
  EXPECT_EQ(Count(0, "SELECT count(*) FROM orders WHERE user_id >= 1000"),
            0);
  EXPECT_EQ(Count(0, "SELECT count(*) FROM users"), 1000);  // 1..999, 5000
  EXPECT_EQ(Count(1, "SELECT count(*) FROM users"), kUsers - 999);
  auto cluster = Cluster::OpenFile(config_path_);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  EXPECT_EQ(ScalarOf((*cluster)->Execute(
                "SELECT count(*) FROM users WHERE id < 1200")),
            1199);
}

// A text range distribution whose key column sorts by an ICU collation
// (where 'Z' > 'b'), while range slices order text by bytes ("C"); bounds
// and keys hold a quote and a backslash.
constexpr char kTextMapBody[] = R"(
[distributions.words]
strategy = "range"
key_type = "text"
slices = [ { to = "m", shard = "s1" }, { from = "m", shard = "s2" } ]
[tables.words]
distribution = "words"
key = "k"
)";

// The slice [b'x\y, m) of s1 moves to s3. Keys by byte order: "Z" and "a"
// and "b'x" sort before it (though "Z" sorts after "b" in the column's
// collation), the others up to "m" are in it. At the verify and cleanup
// steps both shards hold the slice, and reads and a scatter UPDATE through
// the library see each row once; the cleanup leaves s1 exactly the rows
// outside the slice.
TEST(MoverTextRangeTest, TextSliceIsHiddenAndCleanedUpByByteOrder) {
  auto started = TestCluster::Start(3);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<TestCluster> shards = *std::move(started);
  auto written = shards->WriteMoveConfig(
      "mover.toml", kTextMapBody,
      "CREATE TABLE words (k text COLLATE \"en-x-icu\" PRIMARY KEY, v int "
      "NOT NULL)");
  ASSERT_TRUE(written.ok()) << written.status();
  const std::string config_path = *written;
  const std::vector<std::string> outside = {"Z", "a", "b'x"};
  const std::vector<std::string> inside = {"b'x\\y", "b'x\\z", "c", "l\\"};
  const std::vector<std::string> on_s2 = {"m", "n", "zz", "\xC3\xA9"};
  auto cluster = Cluster::OpenFile(config_path);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  for (const auto* keys : {&outside, &inside, &on_s2}) {
    for (const std::string& k : *keys) {
      auto r = (*cluster)->Execute("INSERT INTO words (k, v) VALUES ($1, 0)",
                                   {Param(k)});
      ASSERT_TRUE(r.ok()) << k << ": " << r.status();
    }
  }
  const int64_t total = 11;
  auto count = [&](int shard, const std::string& sql) -> int64_t {
    auto rows = shards->Query(shard, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() && !rows->empty() ? std::stoll((*rows)[0][0]) : -1;
  };
  ASSERT_EQ(count(0, "SELECT count(*) FROM words"), 7);

  int checks = 0;
  auto check = [&](std::string_view line) {
    if (!absl::EndsWith(ToAbsl(line), ": verify") &&
        !absl::EndsWith(ToAbsl(line), ": cleanup")) {
      return;
    }
    ++checks;
    // Both sides hold the slice's 4 rows.
    EXPECT_EQ(count(0, "SELECT count(*) FROM words"), 7) << line;
    EXPECT_EQ(count(2, "SELECT count(*) FROM words"), 4) << line;
    ASSERT_TRUE(internal::LiveMapOf(**cluster).Refresh().ok());
    EXPECT_EQ(ScalarOf((*cluster)->Execute("SELECT count(*) FROM words")),
              total)
        << line;
    EXPECT_EQ(ScalarOf((*cluster)->Execute(
                  "SELECT count(*) FROM words WHERE k = 'b''x\\y'")),
              1)
        << line;
    auto touched = (*cluster)->Execute("UPDATE words SET v = v + 1");
    ASSERT_TRUE(touched.ok()) << touched.status();
    EXPECT_EQ(touched->rows_affected, total) << line;
  };
  auto config = LoadConfig(config_path);
  ASSERT_TRUE(config.ok()) << config.status();
  internal::MoverOptions options;
  options.chunk_rows = 2;
  options.map_grace = absl::Milliseconds(100);
  options.log = check;
  auto mover = internal::Mover::Open(*std::move(config), options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start({"words", "b'x\\y:m", "", "s3"});
  ASSERT_TRUE(move.ok()) << move.status();
  EXPECT_EQ(move->source, "s1");
  ASSERT_TRUE((*mover)->Run(move->id).ok());
  EXPECT_EQ(checks, 2);

  auto keys_on = [&](int shard) {
    std::vector<std::string> keys;
    auto rows =
        shards->Query(shard, "SELECT k FROM words ORDER BY k COLLATE \"C\"");
    EXPECT_TRUE(rows.ok()) << rows.status();
    if (rows.ok()) {
      for (const auto& row : *rows) keys.push_back(row[0]);
    }
    return keys;
  };
  EXPECT_EQ(keys_on(0), outside);
  EXPECT_EQ(keys_on(2), inside);
  // Each check's UPDATE reached every row once, the slice's on both sides.
  ASSERT_TRUE(internal::LiveMapOf(**cluster).Refresh().ok());
  EXPECT_EQ(ScalarOf((*cluster)->Execute("SELECT sum(v) FROM words")),
            2 * total);
  EXPECT_EQ(count(2, "SELECT count(*) FROM words WHERE v <> 2"), 0);
}

// Regions "eu" and "EU" both on s1, "us" on s2; the tables' region column
// uses a case-insensitive (nondeterministic) collation, under which 'eu'
// and 'EU' are equal: regions are told apart by their bytes.
constexpr char kRegionMapBody[] = R"(
[distributions.accounts]
strategy = "region"
key_type = "text"
regions = { eu = "s1", EU = "s1", us = "s2" }
[tables.accounts]
distribution = "accounts"
key = "region"
)";

// Region eu moves from s1 to s3: at the verify and cleanup steps reads and
// a scatter UPDATE through the library see each row once, and the cleanup
// deletes eu's rows from s1 but not EU's.
TEST(MoverRegionTest, RegionIsHiddenAndCleanedUpByItsBytes) {
  auto started = TestCluster::Start(3);
  ASSERT_TRUE(started.ok()) << started.status();
  std::unique_ptr<TestCluster> shards = *std::move(started);
  auto written = shards->WriteMoveConfig(
      "mover.toml", kRegionMapBody,
      "CREATE COLLATION anycase (provider = icu, locale = "
      "'und-u-ks-level2', deterministic = false); "
      "CREATE TABLE accounts (region text COLLATE anycase, id int8, "
      "v int NOT NULL DEFAULT 0, PRIMARY KEY (region, id))");
  ASSERT_TRUE(written.ok()) << written.status();
  const std::string config_path = *written;
  auto cluster = Cluster::OpenFile(config_path);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  // eu: ids 1..30, EU: 101..120 (apart: the primary key cannot tell the
  // regions apart), us: 201..210.
  for (const auto& [region, from, to] :
       {std::tuple<std::string, int, int>{"eu", 1, 30}, {"EU", 101, 120},
        {"us", 201, 210}}) {
    for (int id = from; id <= to; ++id) {
      auto r = (*cluster)->Execute(
          "INSERT INTO accounts (region, id) VALUES ($1, $2)",
          {Param(region), Param(StrCat(id))});
      ASSERT_TRUE(r.ok()) << region << " " << id << ": " << r.status();
    }
  }
  const int64_t total = 60;
  auto count = [&](int shard, const std::string& sql) -> int64_t {
    auto rows = shards->Query(shard, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() && !rows->empty() ? std::stoll((*rows)[0][0]) : -1;
  };
  ASSERT_EQ(count(0, "SELECT count(*) FROM accounts"), 50);

  int checks = 0;
  auto check = [&](std::string_view line) {
    if (!absl::EndsWith(ToAbsl(line), ": verify") &&
        !absl::EndsWith(ToAbsl(line), ": cleanup")) {
      return;
    }
    ++checks;
    // Both sides hold eu's 30 rows.
    EXPECT_EQ(count(0, "SELECT count(*) FROM accounts"), 50) << line;
    EXPECT_EQ(count(2, "SELECT count(*) FROM accounts"), 30) << line;
    ASSERT_TRUE(internal::LiveMapOf(**cluster).Refresh().ok());
    EXPECT_EQ(ScalarOf((*cluster)->Execute("SELECT count(*) FROM accounts")),
              total)
        << line;
    auto touched = (*cluster)->Execute("UPDATE accounts SET v = v + 1");
    ASSERT_TRUE(touched.ok()) << touched.status();
    EXPECT_EQ(touched->rows_affected, total) << line;
  };
  auto config = LoadConfig(config_path);
  ASSERT_TRUE(config.ok()) << config.status();
  internal::MoverOptions options;
  options.chunk_rows = 7;
  options.map_grace = absl::Milliseconds(100);
  options.log = check;
  auto mover = internal::Mover::Open(*std::move(config), options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  auto move = (*mover)->Start({"accounts", "", "eu", "s3"});
  ASSERT_TRUE(move.ok()) << move.status();
  EXPECT_EQ(move->source, "s1");
  ASSERT_TRUE((*mover)->Run(move->id).ok());
  EXPECT_EQ(checks, 2);

  EXPECT_EQ(count(0, "SELECT count(*) FROM accounts"), 20);
  EXPECT_EQ(count(0, "SELECT count(*) FROM accounts WHERE region COLLATE "
                     "\"C\" = 'EU'"),
            20);
  EXPECT_EQ(count(2, "SELECT count(*) FROM accounts WHERE region COLLATE "
                     "\"C\" = 'eu'"),
            30);
  EXPECT_EQ(count(2, "SELECT count(*) FROM accounts"), 30);
  ASSERT_TRUE(internal::LiveMapOf(**cluster).Refresh().ok());
  EXPECT_EQ(ScalarOf((*cluster)->Execute("SELECT sum(v) FROM accounts")),
            2 * total);
}

}  // namespace
}  // namespace shardkit
