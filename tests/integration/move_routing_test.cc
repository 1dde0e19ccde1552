// The router's part of an online move (rebalancer/shard_objects.h) against
// real shards: the epoch fence and the transparent retry, and the hiding of
// a moving slice's second copy in both phases. The move's states are
// published by hand through the catalog, and the shard objects created by
// hand, as the mover would.

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "common/strings.h"
#include "absl/time/clock.h"
#include "config/live_state.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rebalancer/shard_objects.h"
#include "router/router.h"
#include "router/catalog.h"
#include "router/live_map.h"
#include "shardkit/cluster.h"
#include "shardkit/transaction.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using internal::LiveState;
using testing::TestCluster;

constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[distributions.items]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
[tables.items]
distribution = "items"
key = "id"
[timeouts]
connect = "5s"
)";

// Half of s1's slice [0, 2^63) moves to s2.
constexpr uint64_t kSliceHi = 0x4000000000000000ULL;
constexpr char kSliceHiText[] = "0x4000000000000000";

bool InSlice(int64_t id) { return HashKey(Key::Integer(id)) < kSliceHi; }
int OwnerBefore(int64_t id) {
  return HashKey(Key::Integer(id)) < 0x8000000000000000ULL ? 0 : 1;
}

class MoveRoutingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto started = TestCluster::Start(2);
    ASSERT_TRUE(started.ok()) << started.status();
    shards_ = started->release();
    auto written = shards_->WriteMoveConfig(
        "move.toml", kMapBody,
        StrCat("CREATE TABLE users (id int8 PRIMARY KEY, name text);"
               "CREATE TABLE orders (user_id int8, id int8, amount int,"
               " PRIMARY KEY (user_id, id));"
               "CREATE TABLE items (id int8 PRIMARY KEY, v text);",
               internal::InstallFenceFunctionSql(),
               internal::InstallFenceTriggerSql("users"), ";",
               internal::InstallFenceTriggerSql("orders"), ";",
               internal::CreateMoveTablesSql(1, KeyType::kInt8)));
    ASSERT_TRUE(written.ok()) << written.status();
    config_path_ = new std::string(*written);
    // Rows on their owners; the slice's rows also copied to s2 (as the
    // backfill would) and listed on both sides.
    for (int64_t id = 1; id <= 60; ++id) {
      const std::string row = StrCat("INSERT INTO users VALUES (", id, ", 'u",
                                     id, "'); INSERT INTO orders VALUES (",
                                     id, ", 1, ", id, ")");
      ASSERT_TRUE(shards_->Query(OwnerBefore(id), row).ok());
      if (InSlice(id)) {
        ++in_slice_;
        ASSERT_TRUE(shards_->Query(1, row).ok());
        for (int s = 0; s < 2; ++s) {
          ASSERT_TRUE(shards_->Query(s, StrCat("INSERT INTO ",
                                               internal::MoveKeysTable(1),
                                               " VALUES (", id, ")"))
                          .ok());
        }
      }
    }
    ASSERT_GT(in_slice_, 0);
    // Epoch 2: the slice in dual-write.
    auto config = LoadConfig(*config_path_);
    ASSERT_TRUE(config.ok()) << config.status();
    catalog_ = new internal::Catalog(*config->catalog, internal::ExecOptions{});
    state_ = new LiveState(internal::LiveStateOf(config->map));
    state_->moves.push_back(LiveState::Move{1, "users", "", kSliceHiText, "",
                                            "s1", "s2",
                                            MovePhase::kDualWrite});
    Publish();
  }

  static void TearDownTestSuite() {
    delete catalog_;
    delete state_;
    delete config_path_;
    delete shards_;
  }

  static void Publish() {
    ++state_->epoch;
    absl::Status published = catalog_->Publish(*state_, "move_routing_test");
    ASSERT_TRUE(published.ok()) << published;
  }

  // Epoch + 1 with the slice owned by s2, its move cut over.
  static void CutOver() {
    LiveState::Ownership& users = state_->distributions["users"];
    users.slices = {{"", kSliceHiText, "s2"},
                    {kSliceHiText, "0x8000000000000000", "s1"},
                    {"0x8000000000000000", "", "s2"}};
    state_->moves[0].phase = MovePhase::kCutOver;
    Publish();
  }

  // Every shard refuses writes to users and orders routed by a map older
  // than `epoch`.
  static void Fence(uint64_t epoch) {
    for (int s = 0; s < 2; ++s) {
      ASSERT_TRUE(shards_
                      ->Query(s, StrCat("INSERT INTO shardkit.fences VALUES "
                                        "('users', ", epoch, "), ('orders', ",
                                        epoch, ") ON CONFLICT (table_name) DO "
                                        "UPDATE SET min_epoch = ", epoch))
                      .ok());
    }
  }

  static std::unique_ptr<Cluster> Open() {
    auto cluster = Cluster::OpenFile(*config_path_);
    EXPECT_TRUE(cluster.ok()) << cluster.status();
    return cluster.ok() ? *std::move(cluster) : nullptr;
  }

  static int64_t Scalar(Cluster& cluster, const std::string& sql) {
    absl::StatusOr<Result> r = cluster.Execute(sql, {});
    EXPECT_TRUE(r.ok()) << sql << ": " << r.status();
    if (!r.ok() || r->rows.empty() || !r->rows[0][0]) return -1;
    return std::stoll(*r->rows[0][0]);
  }

  // Reads see each row once: 60 users, 60 orders.
  static void ExpectEachRowOnce(Cluster& cluster) {
    EXPECT_EQ(Scalar(cluster, "SELECT count(*) FROM users"), 60);
    EXPECT_EQ(Scalar(cluster, "SELECT sum(id) FROM users"), 60 * 61 / 2);
    EXPECT_EQ(Scalar(cluster, "SELECT count(DISTINCT id) FROM users u"), 60);
    EXPECT_EQ(Scalar(cluster, "SELECT count(*) FROM users u JOIN orders o "
                              "ON o.user_id = u.id"),
              60);
    absl::StatusOr<Result> all = cluster.Execute("SELECT * FROM users", {});
    ASSERT_TRUE(all.ok()) << all.status();
    EXPECT_EQ(all->rows.size(), 60u);
    absl::StatusOr<Result> first =
        cluster.Execute("SELECT id FROM users ORDER BY id LIMIT 5 OFFSET 1", {});
    ASSERT_TRUE(first.ok()) << first.status();
    std::vector<std::string> ids;
    for (const Row& row : first->rows) ids.push_back(*row[0]);
    EXPECT_EQ(ids, (std::vector<std::string>{"2", "3", "4", "5", "6"}));
  }

  static int64_t RawCount(int shard, const std::string& sql) {
    auto rows = shards_->Query(shard, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? std::stoll((*rows)[0][0]) : -1;
  }

  static TestCluster* shards_;
  static std::string* config_path_;
  static internal::Catalog* catalog_;
  static LiveState* state_;
  static int in_slice_;
};

TestCluster* MoveRoutingTest::shards_ = nullptr;
std::string* MoveRoutingTest::config_path_ = nullptr;
internal::Catalog* MoveRoutingTest::catalog_ = nullptr;
LiveState* MoveRoutingTest::state_ = nullptr;
int MoveRoutingTest::in_slice_ = 0;

int64_t SliceKey(int nth) {
  for (int64_t id = 1000;; ++id) {
    if (InSlice(id) && nth-- == 0) return id;
  }
}

// Dual-write: a write reaching the slice's source is applied on the
// destination in the same transaction, its key listed on both sides; the
// user sees the result they would without the move.
TEST_F(MoveRoutingTest, DualWriteMirrorsTheSliceOnTheDestination) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->map()->epoch(), 2u);
  const std::string a = std::to_string(SliceKey(20));
  const std::string b = std::to_string(SliceKey(21));
  const std::string c = std::to_string(SliceKey(22));
  const std::string outside = std::to_string([] {
    for (int64_t id = 1000;; ++id) {
      if (!InSlice(id) && OwnerBefore(id) == 0) return id;
    }
  }());
  auto has = [](int shard, const std::string& table, const std::string& where) {
    return RawCount(shard, StrCat("SELECT count(*) FROM ", table, " WHERE ",
                                  where));
  };
  auto pending = [](const std::string& id) {
    return RawCount(1, StrCat("SELECT count(*) FROM ",
                              internal::MovePendingTable(1), " WHERE key = ",
                              id));
  };
  auto listed = [](int shard, const std::string& id) {
    return RawCount(shard, StrCat("SELECT count(*) FROM ",
                                  internal::MoveKeysTable(1),
                                  " WHERE key = ", id));
  };

  // An INSERT of a key in the slice lands on both sides, listed on both;
  // the user gets what they would without the move.
  absl::StatusOr<Result> r =
      cluster->Execute("INSERT INTO users (id, name) VALUES ($1, 'a')", {a});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows_affected, 1);
  EXPECT_TRUE(r->columns.empty());
  EXPECT_TRUE(r->rows.empty());
  EXPECT_EQ(has(0, "users", StrCat("id = ", a, " AND name = 'a'")), 1);
  EXPECT_EQ(has(1, "users", StrCat("id = ", a, " AND name = 'a'")), 1);
  EXPECT_EQ(listed(0, a), 1);
  EXPECT_EQ(listed(1, a), 1);
  // A single statement: committed on the destination first, with the
  // source transaction's id recorded (rebalancer/pending_copies.h).
  EXPECT_EQ(pending(a), 1);

  // A partial UPDATE of a row not yet on the destination creates it there
  // with the whole image; the user's RETURNING is theirs only.
  ASSERT_TRUE(shards_->Query(0, StrCat("INSERT INTO users VALUES (", b,
                                       ", 'b'); INSERT INTO orders VALUES (",
                                       b, ", 7, 5)"))
                  .ok());
  r = cluster->Execute(
      "UPDATE orders SET amount = amount + 1 WHERE user_id = $1 RETURNING amount",
      {b});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows_affected, 1);
  ASSERT_EQ(r->columns.size(), 1u);
  EXPECT_EQ(r->columns[0].name, "amount");
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0], (Row{"6"}));
  EXPECT_EQ(has(1, "orders", StrCat("user_id = ", b, " AND id = 7 AND amount = 6")),
            1);
  // Listed on the destination, which now holds the row; not on the
  // source, whose row existed before the move: the backfill lists it.
  EXPECT_EQ(listed(0, b), 0);
  EXPECT_EQ(listed(1, b), 1);

  // INSERT ... ON CONFLICT DO UPDATE, mirrored, RETURNING *.
  r = cluster->Execute(
      "INSERT INTO users AS u (id, name) VALUES ($1, 'again') ON CONFLICT (id) DO UPDATE "
      "SET name = EXCLUDED.name || '!' RETURNING *",
      {a});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->columns.size(), 2u);
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0], (Row{a, "again!"}));
  EXPECT_EQ(has(1, "users", StrCat("id = ", a, " AND name = 'again!'")), 1);

  // DELETE removes it on the destination; its key stays listed.
  r = cluster->Execute("DELETE FROM users WHERE id = $1", {a});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows_affected, 1);
  EXPECT_TRUE(r->rows.empty());
  EXPECT_EQ(has(0, "users", StrCat("id = ", a)), 0);
  EXPECT_EQ(has(1, "users", StrCat("id = ", a)), 0);
  EXPECT_EQ(listed(1, a), 1);

  // The same inside a Transaction.
  {
    absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster->Begin();
    ASSERT_TRUE(txn.ok()) << txn.status();
    ASSERT_TRUE((*txn)->Execute("SELECT count(*) FROM users", {}).ok());
    r = (*txn)->Execute("INSERT INTO users (id, name) VALUES ($1, 'c') "
                        "RETURNING name",
                        {c});
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->rows.size(), 1u);
    EXPECT_EQ(r->rows[0], (Row{"c"}));
    r = (*txn)->Execute("UPDATE users SET name = name || '+' WHERE id = $1",
                        {c});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows_affected, 1);
    r = (*txn)->Execute("DELETE FROM orders WHERE user_id = $1", {b});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows_affected, 1);
    // Nothing is visible outside before the commit.
    EXPECT_EQ(has(1, "users", StrCat("id = ", c)), 0);
    ASSERT_TRUE((*txn)->Commit().ok());
  }
  EXPECT_EQ(has(0, "users", StrCat("id = ", c, " AND name = 'c+'")), 1);
  EXPECT_EQ(has(1, "users", StrCat("id = ", c, " AND name = 'c+'")), 1);
  EXPECT_EQ(listed(0, c), 1);
  EXPECT_EQ(listed(1, c), 1);
  EXPECT_EQ(pending(c), 0);  // a Transaction commits by two-phase commit
  EXPECT_EQ(has(1, "orders", StrCat("user_id = ", b)), 0);
  // A rolled-back transaction leaves neither side changed.
  {
    absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster->Begin();
    ASSERT_TRUE(txn.ok()) << txn.status();
    ASSERT_TRUE((*txn)->Execute("UPDATE users SET name = 'no' WHERE id = $1",
                                {c})
                    .ok());
    ASSERT_TRUE((*txn)->Rollback().ok());
  }
  EXPECT_EQ(has(1, "users", StrCat("id = ", c, " AND name = 'c+'")), 1);

  // A write that names its keys, none in the slice, is planned without
  // the dual-write (one statement, as without the move); one that names a
  // key in it, or none, with it.
  {
    internal::Router router;
    auto plan = [&](std::string_view sql, const std::string& key) {
      absl::StatusOr<internal::Router::Prepared> p =
          router.Prepare(cluster->map(), sql, {key});
      EXPECT_TRUE(p.ok()) << p.status();
      return p.ok() && p->dual != nullptr;
    };
    EXPECT_FALSE(plan("UPDATE users SET name = 'x' WHERE id = $1", outside));
    EXPECT_FALSE(plan("INSERT INTO users (id, name) VALUES ($1, 'x')", outside));
    EXPECT_FALSE(plan("DELETE FROM orders WHERE user_id IN ($1)", outside));
    EXPECT_TRUE(plan("UPDATE users SET name = 'x' WHERE id = $1", b));
    EXPECT_TRUE(plan("INSERT INTO users (id, name) VALUES ($1, 'x')", b));
    EXPECT_TRUE(plan(StrCat("INSERT INTO users (id, name) VALUES ($1, 'x'), (",
                            b, ", 'y')"),
                     outside));
    EXPECT_TRUE(plan("UPDATE users SET name = $1 WHERE id > 0", "x"));
  }

  // A write outside the slice (on the source) is not mirrored.
  r = cluster->Execute("INSERT INTO users (id, name) VALUES ($1, 'o') "
                       "RETURNING id",
                       {outside});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->rows.size(), 1u);
  EXPECT_EQ(r->rows[0], (Row{outside}));
  ASSERT_TRUE(
      cluster->Execute("UPDATE users SET name = 'oo' WHERE id = $1", {outside})
          .ok());
  EXPECT_EQ(has(0, "users", StrCat("id = ", outside)), 1);
  EXPECT_EQ(has(1, "users", StrCat("id = ", outside)), 0);
  EXPECT_EQ(listed(0, outside), 0);

  // Reads (hiding) see each row once.
  EXPECT_EQ(Scalar(*cluster, "SELECT count(*) FROM users WHERE id >= 1000"), 3);
  EXPECT_EQ(Scalar(*cluster, StrCat("SELECT count(*) FROM users WHERE id = ", c)),
            1);

  // Back to the rows the next test expects.
  r = cluster->Execute("DELETE FROM users WHERE id >= 1000", {});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows_affected, 3);
  ASSERT_TRUE(cluster->Execute("DELETE FROM orders WHERE user_id >= 1000", {})
                  .ok());
  EXPECT_EQ(RawCount(0, "SELECT count(*) FROM users WHERE id >= 1000") +
                RawCount(1, "SELECT count(*) FROM users WHERE id >= 1000"),
            0);
  ExpectEachRowOnce(*cluster);
}

TEST_F(MoveRoutingTest, FenceRetriesHidingAndTransactionsAcrossPhases) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  ASSERT_EQ(cluster->map()->epoch(), 2u);

  // Dual-write: the destination's copies are hidden; the raw shards do
  // hold the slice twice.
  EXPECT_EQ(RawCount(0, "SELECT count(*) FROM users") +
                RawCount(1, "SELECT count(*) FROM users"),
            60 + in_slice_);
  ExpectEachRowOnce(*cluster);
  // An UPDATE everywhere touches each row once, and not s2's copies.
  absl::StatusOr<Result> touched =
      cluster->Execute("UPDATE users SET name = name WHERE id > 0", {});
  ASSERT_TRUE(touched.ok()) << touched.status();
  EXPECT_EQ(touched->rows_affected, 60);

  // The fence rises to epoch 3 before the catalog announces it: a write
  // routed by epoch 2 is refused, waits for the new map and lands, once,
  // on the slice's new owner.
  Fence(3);
  auto* raw = new testing::Session(shards_->dsn(0));
  EXPECT_NE(raw->Scalar("SET shardkit.epoch = 2; "
                        "UPDATE users SET name = 'x' WHERE id = -1")
                .find("is under a move"),
            std::string::npos);
  delete raw;
  std::thread publisher([] {
    absl::SleepFor(absl::Milliseconds(300));
    CutOver();
  });
  const int64_t key = SliceKey(0);
  absl::StatusOr<Result> inserted = cluster->Execute(
      "INSERT INTO users (id, name) VALUES ($1, 'late')", {std::to_string(key)});
  publisher.join();
  ASSERT_TRUE(inserted.ok()) << inserted.status();
  EXPECT_EQ(cluster->map()->epoch(), 3u);
  EXPECT_EQ(RawCount(1, StrCat("SELECT count(*) FROM users WHERE id = ", key)),
            1);
  EXPECT_EQ(RawCount(0, StrCat("SELECT count(*) FROM users WHERE id = ", key)),
            0);
  ASSERT_TRUE(cluster->Execute("DELETE FROM users WHERE id = $1",
                               {std::to_string(key)})
                  .ok());

  // Cut over: the source's leftover copies are hidden.
  ExpectEachRowOnce(*cluster);

  // A transaction fenced mid-way fails with the retryable error; run again
  // by the new map it succeeds.
  Fence(4);
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster->Begin();
  ASSERT_TRUE(txn.ok()) << txn.status();
  ASSERT_TRUE((*txn)->Execute("SELECT count(*) FROM users", {}).ok());
  absl::StatusOr<Result> fenced = (*txn)->Execute(
      "UPDATE users SET name = 'in txn' WHERE id = $1",
      {std::to_string(SliceKey(1))});
  ASSERT_FALSE(fenced.ok());
  EXPECT_EQ(fenced.status().code(), absl::StatusCode::kAborted);
  EXPECT_EQ(SqlStateOf(fenced.status()), "SK001");
  EXPECT_NE(fenced.status().message().find("retry the transaction"),
            std::string::npos)
      << fenced.status();
  ASSERT_TRUE((*txn)->Rollback().ok());
  Publish();  // epoch 4, same ownership
  ASSERT_TRUE(testing::Eventually(
      [&] { return cluster->map()->epoch() == 4u; }));
  txn = cluster->Begin();
  ASSERT_TRUE(txn.ok());
  const int64_t moved = [] {
    for (int64_t id = 1;; ++id) if (InSlice(id)) return id;
  }();
  absl::StatusOr<Result> updated = (*txn)->Execute(
      "UPDATE users SET name = 'in txn' WHERE id = $1", {std::to_string(moved)});
  ASSERT_TRUE(updated.ok()) << updated.status();
  EXPECT_EQ(updated->rows_affected, 1);
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(RawCount(1, StrCat("SELECT count(*) FROM users WHERE id = ", moved,
                               " AND name = 'in txn'")),
            1);

  // Another distribution is neither fenced nor filtered.
  ASSERT_TRUE(cluster->Execute("INSERT INTO items (id, v) VALUES (1, 'a'), (2, 'b')", {})
                  .ok());
  EXPECT_EQ(Scalar(*cluster, "SELECT count(*) FROM items"), 2);
}


// Writes the router does not dual-write (a data-modifying WITH, SQL run
// unanalysed by ExecuteOnShardOf and ExecuteOnAllShards) are refused while
// they could touch the moving distribution on the move's shards, and say
// what to do; reads and other distributions pass. (Whatever the move's
// phase: it is in the map in both.)
TEST_F(MoveRoutingTest, WritesThatBypassTheDualWriteAreRefusedDuringAMove) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  ASSERT_FALSE(cluster->map()->moves().empty());
  const std::string key = std::to_string(SliceKey(2));
  auto expect_refused = [](const absl::Status& status, std::string_view what) {
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
    EXPECT_EQ(SqlStateOf(status), "55000") << status;
    EXPECT_NE(status.message().find(ToAbsl(what)), std::string::npos) << status;
    EXPECT_NE(status.message().find("move 1 of distribution 'users'"),
              std::string::npos)
        << status;
    EXPECT_NE(status.message().find("wait until the move has finished"),
              std::string::npos)
        << status;
  };
  const int64_t users_before = RawCount(0, "SELECT count(*) FROM users") +
                               RawCount(1, "SELECT count(*) FROM users");

  for (const std::string sql : {
           "WITH d AS (DELETE FROM users WHERE id = $1 RETURNING id) "
           "SELECT count(*) FROM d",
           "WITH u AS (UPDATE users SET name = 'cte' WHERE id = $1 "
           "RETURNING id) SELECT * FROM u",
           "WITH i AS (INSERT INTO orders VALUES ($1, 8, 8) RETURNING "
           "user_id) SELECT * FROM i"}) {
    SCOPED_TRACE(sql);
    absl::StatusOr<Result> r = cluster->Execute(sql, {key});
    ASSERT_FALSE(r.ok());
    expect_refused(r.status(), "data-modifying WITH");
    auto txn = cluster->Begin();
    ASSERT_TRUE(txn.ok());
    r = (*txn)->Execute(sql, {key});
    ASSERT_FALSE(r.ok());
    expect_refused(r.status(), "data-modifying WITH");
  }
  // A WITH that only reads, and a writing WITH on another distribution.
  absl::StatusOr<Result> reading_with = cluster->Execute(
      "WITH s AS (SELECT 1) UPDATE users SET name = name WHERE id = $1", {key});
  EXPECT_TRUE(reading_with.ok()) << reading_with.status();
  EXPECT_TRUE(cluster->Execute("WITH d AS (DELETE FROM items WHERE id = 77 "
                               "RETURNING id) SELECT count(*) FROM d")
                  .ok());

  absl::StatusOr<Result> on_shard = cluster->ExecuteOnShardOf(
      "users", Key::Integer(SliceKey(2)),
      "UPDATE users SET name = 'raw' WHERE id = $1", {key});
  ASSERT_FALSE(on_shard.ok());
  expect_refused(on_shard.status(), "ExecuteOnShardOf runs its SQL unanalysed");
  on_shard = cluster->ExecuteOnShardOf("users", Key::Integer(SliceKey(2)),
                                       "DO $$ BEGIN END $$");
  ASSERT_FALSE(on_shard.ok());
  expect_refused(on_shard.status(), "DO or CALL");
  on_shard = cluster->ExecuteOnShardOf(
      "users", Key::Integer(SliceKey(2)),
      "SELECT count(*) FROM users WHERE id = $1", {key});
  EXPECT_TRUE(on_shard.ok()) << on_shard.status();
  on_shard = cluster->ExecuteOnShardOf("items", Key::Integer(5),
                                       "UPDATE items SET v = v WHERE id = 5");
  EXPECT_TRUE(on_shard.ok()) << on_shard.status();

  for (const ShardOutcome& outcome :
       cluster->ExecuteOnAllShards("CREATE INDEX ON orders (amount)")) {
    expect_refused(outcome.status, "ExecuteOnAllShards runs its SQL unanalysed");
  }
  for (const ShardOutcome& outcome : cluster->ExecuteOnAllShards(
           "CREATE TABLE side (x int); DROP TABLE side; SELECT 1")) {
    EXPECT_TRUE(outcome.status.ok()) << outcome.status;
  }
  // Nothing of the refused writes ran.
  EXPECT_EQ(RawCount(0, "SELECT count(*) FROM users") +
                RawCount(1, "SELECT count(*) FROM users"),
            users_before);
  EXPECT_EQ(RawCount(0, "SELECT count(*) FROM users WHERE name IN ('cte', "
                        "'raw', 'x')") +
                RawCount(1, "SELECT count(*) FROM users WHERE name IN ('cte', "
                            "'raw', 'x')"),
            0);
  EXPECT_EQ(RawCount(0, "SELECT count(*) FROM orders WHERE id IN (8, 9)") +
                RawCount(1, "SELECT count(*) FROM orders WHERE id IN (8, 9)"),
            0);
}

// A REPEATABLE READ transaction whose snapshot predates a fence still
// meets it: the fence is read from a sequence, as it is now, not through
// the transaction's snapshot (where the fences table shows no row yet).
TEST_F(MoveRoutingTest, FenceHoldsForATransactionWithAnOlderSnapshot) {
  ASSERT_TRUE(shards_
                  ->Query(0, StrCat("CREATE TABLE fenced_rr (id int8 PRIMARY "
                                    "KEY); ",
                                    internal::InstallFenceTriggerSql(
                                        "fenced_rr")))
                  .ok());
  for (const char* isolation : {"REPEATABLE READ", "SERIALIZABLE"}) {
    testing::Session old(shards_->dsn(0));
    testing::Session mover(shards_->dsn(0));
    ASSERT_TRUE(old.ok() && mover.ok());
    ASSERT_EQ(old.Scalar("SET shardkit.epoch = 5"), "");
    ASSERT_EQ(old.Scalar(StrCat("BEGIN ISOLATION LEVEL ", isolation)), "");
    const std::string epoch = isolation[0] == 'R' ? "6" : "7";
    const std::string fenced_now =
        StrCat("SELECT count(*) FROM shardkit.fences WHERE table_name = "
               "'fenced_rr' AND min_epoch >= ", epoch);
    ASSERT_EQ(old.Scalar(fenced_now), "0");  // the snapshot is taken
    ASSERT_EQ(mover.Scalar(StrCat("BEGIN; LOCK TABLE fenced_rr IN SHARE ROW "
                                  "EXCLUSIVE MODE; SELECT "
                                  "shardkit.raise_fence('fenced_rr', ",
                                  epoch, "); COMMIT")),
              "");
    // Its snapshot still shows the fences table without the new fence...
    EXPECT_EQ(old.Scalar(fenced_now), "0");
    // ...but its write is refused as stale.
    EXPECT_THAT(old.Scalar("INSERT INTO fenced_rr VALUES (1)"),
                ::testing::HasSubstr(StrCat("requires epoch ", epoch)))
        << isolation;
    old.Scalar("ROLLBACK");
  }
  // A session at the fence's epoch writes.
  testing::Session current(shards_->dsn(0));
  EXPECT_EQ(current.Scalar("SET shardkit.epoch = 7; INSERT INTO fenced_rr "
                           "VALUES (1)"),
            "");
  EXPECT_EQ(shards_->Query(0, "SELECT count(*) FROM fenced_rr")->at(0).at(0),
            "1");
}

// Transactions at a cutover, on the items distribution (state of its own,
// whatever the tests above left): its part [0, kSliceHi) changes owner at
// a new epoch, its old owner fenced at that epoch first, as a move's
// cutover does it.
class TransactionAtCutoverTest : public MoveRoutingTest {
 protected:
  void SetUp() override {
    for (int s = 0; s < 2; ++s) {
      ASSERT_TRUE(
          shards_->Query(s, internal::InstallFenceTriggerSql("items")).ok());
    }
  }

  // Fences items on the slice's owner at the next epoch (writes routed by
  // the current one are refused there from now on); returns that owner.
  static int FenceItemsOwner() {
    const int from = items_owner_;
    EXPECT_TRUE(shards_
                    ->Query(from, StrCat("SELECT shardkit.raise_fence('items', ",
                                         state_->epoch + 1, ")"))
                    .ok());
    return from;
  }

  // Publishes the next epoch, with the slice owned by the other shard.
  static void HandOverItems() {
    items_owner_ = 1 - items_owner_;
    const std::string owner = items_owner_ == 0 ? "s1" : "s2";
    state_->distributions["items"].slices = {
        {"", kSliceHiText, owner},
        {kSliceHiText, "0x8000000000000000", "s1"},
        {"0x8000000000000000", "", "s2"}};
    Publish();
  }

  static int64_t ItemsOn(int shard, int64_t id) {
    return RawCount(shard, StrCat("SELECT count(*) FROM items WHERE id = ", id));
  }

  static void DeleteItems(const std::vector<int64_t>& ids) {
    for (int s = 0; s < 2; ++s) {
      for (int64_t id : ids) {
        // At an epoch the fences allow.
        ASSERT_TRUE(shards_
                        ->Query(s, StrCat("SET shardkit.epoch = ",
                                          state_->epoch,
                                          "; DELETE FROM items WHERE id = ", id))
                        .ok());
      }
    }
  }

  static int items_owner_;  // of items' part [0, kSliceHi)
};

int TransactionAtCutoverTest::items_owner_ = 0;

// A transaction begun before the cutover whose first statement meets the
// fence on the old owner: the statement runs again by the new map, inside
// the library, and so do the later ones; nothing is left on the old owner.
TEST_F(TransactionAtCutoverTest, FirstStatementRefusedByTheFenceRunsByTheNewMap) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(testing::Eventually(
      [&] { return cluster->map()->epoch() == state_->epoch; }));
  const int64_t a = SliceKey(30), b = SliceKey(31);

  for (const bool two_shards : {false, true}) {
    SCOPED_TRACE(two_shards ? "a first statement on both shards"
                            : "a first statement on the old owner");
    const uint64_t epoch = state_->epoch;
    absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster->Begin();
    ASSERT_TRUE(txn.ok()) << txn.status();
    const int from = FenceItemsOwner();
    const int to = 1 - from;
    // Outside the slice, on its new owner (which is not fenced) in both
    // maps.
    const int64_t other = [to] {
      for (int64_t id = 1000;; ++id) {
        if (!InSlice(id) && OwnerBefore(id) == to) return id;
      }
    }();
    // The map comes after the fence, as at a cutover.
    std::thread publisher([] {
      absl::SleepFor(absl::Milliseconds(300));
      HandOverItems();
    });
    absl::StatusOr<Result> r =
        two_shards
            ? (*txn)->Execute("INSERT INTO items (id, v) VALUES ($1, 'txn'), "
                              "($2, 'txn')",
                              {std::to_string(a), std::to_string(other)})
            : (*txn)->Execute(
                  "INSERT INTO items (id, v) VALUES ($1, 'txn') RETURNING id",
                  {std::to_string(a)});
    publisher.join();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows_affected, two_shards ? 2 : 1);
    if (!two_shards) {
      EXPECT_EQ(r->rows, (std::vector<Row>{{std::to_string(a)}}));
    }
    // Only the new owner is part of the transaction: the part of the
    // refused statement that ran there by the old map was rolled back.
    EXPECT_EQ((*txn)->participants(),
              (std::vector<ShardId>{static_cast<ShardId>(to)}));
    // Later statements are routed by the new map too.
    r = (*txn)->Execute("INSERT INTO items (id, v) VALUES ($1, 'txn')",
                        {std::to_string(b)});
    ASSERT_TRUE(r.ok()) << r.status();
    r = (*txn)->Execute("UPDATE items SET v = 'txn+' WHERE id = $1 RETURNING v",
                        {std::to_string(a)});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->rows, (std::vector<Row>{{"txn+"}}));
    // Nothing visible before the commit.
    EXPECT_EQ(ItemsOn(to, a), 0);
    ASSERT_TRUE((*txn)->Commit().ok());
    EXPECT_EQ(cluster->map()->epoch(), epoch + 1);
    EXPECT_EQ(RawCount(to, StrCat("SELECT count(*) FROM items WHERE id = ", a,
                                  " AND v = 'txn+'")),
              1);
    EXPECT_EQ(ItemsOn(to, b), 1);
    EXPECT_EQ(ItemsOn(from, a), 0);
    EXPECT_EQ(ItemsOn(from, b), 0);
    if (two_shards) {
      EXPECT_EQ(ItemsOn(to, other), 1);
      EXPECT_EQ(ItemsOn(from, other), 0);
    }
    // The router reads each once.
    EXPECT_EQ(Scalar(*cluster, StrCat("SELECT count(*) FROM items WHERE id IN (",
                                      a, ", ", b, ", ", other, ")")),
              two_shards ? 3 : 2);
    DeleteItems({a, b, other});
  }
}

// A transaction that wrote on the old owner before the fence cannot run
// its refused statement again there (the refusal aborted its part): it
// fails with the retryable error, nothing of it stays, and run again it is
// routed by the new map.
TEST_F(TransactionAtCutoverTest, TransactionThatWroteOnTheOldOwnerFailsRetryably) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  ASSERT_TRUE(testing::Eventually(
      [&] { return cluster->map()->epoch() == state_->epoch; }));
  const int64_t a = SliceKey(40), b = SliceKey(41);
  const std::vector<std::pair<std::string, std::vector<std::optional<std::string>>>>
      statements = {{"INSERT INTO items (id, v) VALUES ($1, 'first')",
                     {std::to_string(a)}},
                    {"INSERT INTO items (id, v) VALUES ($1, 'second')",
                     {std::to_string(b)}}};
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster->Begin();
  ASSERT_TRUE(txn.ok()) << txn.status();
  absl::StatusOr<Result> r =
      (*txn)->Execute(statements[0].first, statements[0].second);
  ASSERT_TRUE(r.ok()) << r.status();
  const int from = FenceItemsOwner();
  const int to = 1 - from;
  HandOverItems();
  r = (*txn)->Execute(statements[1].first, statements[1].second);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted) << r.status();
  EXPECT_EQ(SqlStateOf(r.status()), "SK001") << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              ::testing::HasSubstr("retry the transaction"));
  EXPECT_THAT(std::string(r.status().message()),
              ::testing::HasSubstr("is under a move"));
  // Aborted: later statements are refused, the commit rolls back.
  EXPECT_EQ(SqlStateOf((*txn)->Execute("SELECT 1", {}).status()), "25P02");
  EXPECT_EQ((*txn)->Commit().code(), absl::StatusCode::kAborted);
  for (int s = 0; s < 2; ++s) {
    EXPECT_EQ(ItemsOn(s, a), 0);
    EXPECT_EQ(ItemsOn(s, b), 0);
  }
  // The retry is routed by the new map.
  txn = cluster->Begin();
  ASSERT_TRUE(txn.ok()) << txn.status();
  for (const auto& [sql, params] : statements) {
    r = (*txn)->Execute(sql, params);
    ASSERT_TRUE(r.ok()) << r.status();
  }
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(ItemsOn(to, a), 1);
  EXPECT_EQ(ItemsOn(to, b), 1);
  EXPECT_EQ(ItemsOn(from, a), 0);
  EXPECT_EQ(ItemsOn(from, b), 0);
  DeleteItems({a, b});
}

// A transaction refused by a fence lets go of what it holds on every
// shard before it waits for the newer map: the cutover that raised the
// fence waits for the writers of the move's destination before it
// publishes that map, and this transaction may be one of them (rows it
// wrote there earlier). Whether the refused statement was its first on
// the fenced shard or not, it had earlier work on another shard, which it
// cannot keep while it waits: it fails with the retryable error, and that
// shard's lock is free while it still waits for the map.
TEST_F(TransactionAtCutoverTest,
       RefusedTransactionReleasesItsLocksBeforeWaiting) {
  std::unique_ptr<Cluster> cluster = Open();
  ASSERT_NE(cluster, nullptr);
  const int64_t a = SliceKey(50), b = SliceKey(51);
  for (const bool wrote_fenced_shard : {false, true}) {
    SCOPED_TRACE(wrote_fenced_shard
                     ? "it wrote on the fenced shard before"
                     : "its first statement on the fenced shard is refused");
    ASSERT_TRUE(testing::Eventually(
        [&] { return cluster->map()->epoch() == state_->epoch; }));
    const int from = items_owner_;
    const int to = 1 - from;
    // Outside the slice: on the shard that is not fenced, in both maps.
    const int64_t other = [to] {
      for (int64_t id = 1000;; ++id) {
        if (!InSlice(id) && OwnerBefore(id) == to) return id;
      }
    }();
    absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster->Begin();
    ASSERT_TRUE(txn.ok()) << txn.status();
    if (wrote_fenced_shard) {
      ASSERT_TRUE((*txn)
                      ->Execute("INSERT INTO items (id, v) VALUES ($1, 'txn')",
                                {std::to_string(a)})
                      .ok());
    }
    ASSERT_TRUE((*txn)
                    ->Execute("INSERT INTO items (id, v) VALUES ($1, 'txn')",
                              {std::to_string(other)})
                    .ok());
    ASSERT_EQ(FenceItemsOwner(), from);
    // Refused on `from`; no newer map is published until the lock below
    // has been tried, so the transaction waits for one (up to the connect
    // timeout, 5 s).
    std::atomic<bool> returned = false;
    absl::StatusOr<Result> refused;
    std::thread writer([&] {
      refused = (*txn)->Execute("INSERT INTO items (id, v) VALUES ($1, 'txn')",
                                {std::to_string(b)});
      returned = true;
    });
    testing::Session locker(shards_->dsn(to));
    ASSERT_TRUE(locker.ok()) << locker.error();
    EXPECT_EQ(locker.Scalar("SET lock_timeout = '1s'"), "");
    EXPECT_EQ(locker.Scalar("BEGIN"), "");
    EXPECT_EQ(locker.Scalar("LOCK TABLE items IN SHARE ROW EXCLUSIVE MODE"),
              "");
    // Released while it waits, not once it gave up waiting.
    EXPECT_FALSE(returned);
    EXPECT_EQ(locker.Scalar("ROLLBACK"), "");
    HandOverItems();
    writer.join();
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kAborted)
        << refused.status();
    EXPECT_EQ(SqlStateOf(refused.status()), "SK001") << refused.status();
    EXPECT_THAT(std::string(refused.status().message()),
                ::testing::HasSubstr("retry the transaction"));
    EXPECT_EQ(SqlStateOf((*txn)->Execute("SELECT 1", {}).status()), "25P02");
    EXPECT_EQ((*txn)->Commit().code(), absl::StatusCode::kAborted);
    for (int s = 0; s < 2; ++s) {
      EXPECT_EQ(ItemsOn(s, a), 0);
      EXPECT_EQ(ItemsOn(s, b), 0);
      EXPECT_EQ(ItemsOn(s, other), 0);
    }
  }
}

}  // namespace
}  // namespace shardkit
