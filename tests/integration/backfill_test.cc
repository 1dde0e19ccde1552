// The backfill and verify of an online move (rebalancer/backfill.h,
// rebalancer/verify.h) between two real shards: the slice's rows arrive
// byte for byte and nothing else does; chunks resume; newer rows and
// deletes by concurrent (dual-)writers win; verify finds planted
// differences by key; tables that cannot move are refused with what to do.

#include "rebalancer/backfill.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "rebalancer/shard_objects.h"
#include "rebalancer/verify.h"
#include "router/failpoint.h"
#include "shardkit/key.h"
#include "tests/integration/test_cluster.h"

namespace shardkit::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Rows = std::vector<std::vector<std::string>>;

constexpr uint64_t kHalf = uint64_t{1} << 63;

// Default options but the chunk size.
BackfillOptions Chunks(int64_t rows) {
  BackfillOptions options;
  options.chunk_rows = rows;
  return options;
}
VerifyOptions VerifyChunks(int64_t rows) {
  VerifyOptions options;
  options.chunk_rows = rows;
  return options;
}

MoveSlice HashSlice(uint64_t move_id, KeyType type, uint64_t lo,
                    std::optional<uint64_t> hi) {
  MoveSlice slice;
  slice.move_id = move_id;
  slice.strategy = Strategy::kHash;
  slice.key_type = type;
  slice.hash_lo = lo;
  slice.hash_hi = hi;
  return slice;
}

MoveSlice RangeSlice(uint64_t move_id, int64_t from, int64_t to) {
  MoveSlice slice;
  slice.move_id = move_id;
  slice.strategy = Strategy::kRange;
  slice.key_type = KeyType::kInt8;
  slice.from = Key::Integer(from);
  slice.to = Key::Integer(to);
  return slice;
}

bool InHashSlice(const MoveSlice& slice, const Key& key) {
  const uint64_t h = HashKey(key);
  return h >= slice.hash_lo && (!slice.hash_hi || h < *slice.hash_hi);
}

class BackfillTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shards = testing::TestCluster::Start(2);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = shards->release();
  }
  static void TearDownTestSuite() { delete shards_; }

  void SetUp() override {
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(shards_
                      ->Query(i,
                              "DROP SCHEMA IF EXISTS shardkit CASCADE; "
                              "DROP SCHEMA public CASCADE; "
                              "CREATE SCHEMA public")
                      .ok());
    }
  }

  ShardEndpoint source() const { return {"s1", shards_->dsn(0)}; }
  ShardEndpoint destination() const { return {"s2", shards_->dsn(1)}; }

  // Runs `sql` on both shards.
  void Both(const std::string& sql) {
    for (int i = 0; i < 2; ++i) {
      auto r = shards_->Query(i, sql);
      ASSERT_TRUE(r.ok()) << r.status();
    }
  }

  Rows Query(int shard, const std::string& sql) {
    auto r = shards_->Query(shard, sql);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : Rows{};
  }

  // The rows of `sql` (first column the key of type `type`) whose key is in
  // the hash slice.
  Rows InSlice(int shard, const std::string& sql, const MoveSlice& slice,
               KeyType type) {
    Rows out;
    for (auto& row : Query(shard, sql)) {
      auto key = Key::Parse(type, row[0]);
      EXPECT_TRUE(key.ok()) << key.status();
      if (key.ok() && InHashSlice(slice, *key)) out.push_back(row);
    }
    return out;
  }

  static testing::TestCluster* shards_;
};

testing::TestCluster* BackfillTest::shards_ = nullptr;

constexpr char kUsers[] =
    "CREATE TABLE users (id int8 PRIMARY KEY, name text, score int4)";

TEST_F(BackfillTest, HashSliceArrivesWholeInChunksAndVerifies) {
  Both(kUsers);
  Query(0,
        "INSERT INTO users SELECT g, 'user ' || g, g % 7 FROM "
        "generate_series(1, 1000) g");
  const MoveSlice slice = HashSlice(1, KeyType::kInt8, 0, kHalf);
  std::vector<BackfillChunk> reported;
  BackfillOptions options;
  options.chunk_rows = 100;
  options.on_chunk = [&](const BackfillChunk& c) {
    reported.push_back(c);
    return absl::OkStatus();
  };
  auto stats =
      BackfillTable(source(), destination(), {"users", "id"}, slice, options);
  ASSERT_TRUE(stats.ok()) << stats.status();

  const std::string all = "SELECT id, name, score FROM users ORDER BY id";
  const Rows expected = InSlice(0, all, slice, KeyType::kInt8);
  ASSERT_GT(expected.size(), 300u);
  ASSERT_LT(expected.size(), 700u);
  EXPECT_EQ(Query(1, all), expected);
  EXPECT_EQ(stats->rows_scanned, 1000);
  EXPECT_EQ(stats->rows_in_slice, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(stats->rows_copied, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(stats->chunks, 10);
  ASSERT_EQ(reported.size(), 10u);
  EXPECT_THAT(reported[0].bound, ElementsAre("100"));
  EXPECT_THAT(reported[9].bound, ElementsAre("1000"));
  EXPECT_EQ(reported[9].total.rows_copied, stats->rows_copied);

  // Both sides list exactly the slice's keys.
  Rows keys;
  for (const auto& row : expected) keys.push_back({row[0]});
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(Query(i, "SELECT key FROM shardkit.move_1_keys ORDER BY key"),
              keys);
  }

  VerifyOptions verify_options;
  verify_options.chunk_rows = 128;
  auto report = VerifyTable(source(), destination(), {"users", "id"}, slice,
                            verify_options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok()) << report->Summary();
  EXPECT_EQ(report->chunks, 8);
  EXPECT_EQ(report->source_rows, static_cast<int64_t>(expected.size()));
  EXPECT_EQ(report->destination_rows, report->source_rows);
}

TEST_F(BackfillTest, RangeSliceCompositeKeyIdentityAndGeneratedColumns) {
  Both(
      "CREATE TABLE orders (user_id int8, id int8 GENERATED ALWAYS AS "
      "IDENTITY, amount numeric(10,2), total numeric GENERATED ALWAYS AS "
      "(amount * 2) STORED, placed timestamptz, PRIMARY KEY (user_id, id))");
  Query(0,
        "INSERT INTO orders (user_id, amount, placed) SELECT g / 5, g * 1.25, "
        "'2024-01-01 10:00+02'::timestamptz + g * interval '1 hour' FROM "
        "generate_series(1, 1500) g");
  // A destination row elsewhere in the keyspace stays alone.
  Query(1, "INSERT INTO orders (user_id, amount) VALUES (5, 1)");
  BackfillOptions options;
  options.chunk_rows = 37;
  auto stats = BackfillTable(source(), destination(), {"orders", "user_id"},
                             RangeSlice(2, 100, 200), options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  const std::string slice_rows =
      "SELECT user_id, id, amount, total, placed FROM orders WHERE user_id "
      ">= 100 AND user_id < 200 ORDER BY user_id, id";
  const Rows expected = Query(0, slice_rows);
  ASSERT_EQ(expected.size(), 500u);
  EXPECT_EQ(Query(1, slice_rows), expected);
  EXPECT_EQ(stats->rows_in_slice, 500);
  EXPECT_EQ(stats->chunks, 14);  // 500 / 37, rounded up
  EXPECT_EQ(Query(1, "SELECT count(*) FROM orders")[0][0], "501");
  // The range filter ran in SQL: only the slice's rows were scanned.
  EXPECT_EQ(stats->rows_scanned, 500);

  auto report = VerifyTable(source(), destination(), {"orders", "user_id"},
                            RangeSlice(2, 100, 200), VerifyChunks(64));
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok()) << report->Summary();
  EXPECT_EQ(report->source_rows, 500);
}

TEST_F(BackfillTest, TextAndUuidKeysWithSpecialCharactersAndNulls) {
  Both(
      "CREATE TABLE notes (name text, u uuid, body text, extra bytea, "
      "PRIMARY KEY (name, u));"
      "CREATE TABLE devices (id uuid PRIMARY KEY, label text)");
  // Keys and values with tabs, backslashes, newlines, carriage returns,
  // quotes, braces, commas, \N look-alikes and non-ASCII text.
  Query(0,
        "INSERT INTO notes SELECT k || g, md5(g::text)::uuid, "
        "CASE WHEN g % 4 = 0 THEN NULL ELSE E'a\\tb\\\\c\\nd\\re ' || k END, "
        "CASE WHEN g % 3 = 0 THEN NULL ELSE decode('00ff5c09', 'hex') END "
        "FROM generate_series(1, 60) g, unnest(ARRAY[E'tab\\there', "
        "E'back\\\\slash', E'new\\nline', 'ünïcødé ✓ 日本', '\"{a,b}\"', "
        "E'\\\\N', 'NULL', '']) k");
  Query(0,
        "INSERT INTO devices SELECT md5('d' || g)::uuid, CASE WHEN g % 5 = 0 "
        "THEN NULL ELSE 'device ' || g END FROM generate_series(1, 400) g");

  const MoveSlice text_slice =
      HashSlice(3, KeyType::kText, uint64_t{1} << 62, kHalf + (kHalf >> 1));
  auto stats = BackfillTable(source(), destination(), {"notes", "name"},
                             text_slice, Chunks(50));
  ASSERT_TRUE(stats.ok()) << stats.status();
  const std::string notes =
      "SELECT name, u, body, extra FROM notes ORDER BY name, u";
  const Rows expected_notes = InSlice(0, notes, text_slice, KeyType::kText);
  ASSERT_GT(expected_notes.size(), 60u);
  EXPECT_EQ(Query(1, notes), expected_notes);

  const MoveSlice uuid_slice = HashSlice(4, KeyType::kUuid, kHalf, {});
  stats = BackfillTable(source(), destination(), {"devices", "id"},
                        uuid_slice, Chunks(64));
  ASSERT_TRUE(stats.ok()) << stats.status();
  const std::string devices = "SELECT id, label FROM devices ORDER BY id";
  const Rows expected_devices =
      InSlice(0, devices, uuid_slice, KeyType::kUuid);
  ASSERT_GT(expected_devices.size(), 100u);
  EXPECT_EQ(Query(1, devices), expected_devices);
  EXPECT_EQ(Query(1, "SELECT count(*) FROM shardkit.move_4_keys")[0][0],
            std::to_string(expected_devices.size()));

  for (const auto& [table, key, slice] :
       {std::tuple{"notes", "name", text_slice},
        std::tuple{"devices", "id", uuid_slice}}) {
    auto report = VerifyTable(source(), destination(), {table, key}, slice,
                              VerifyChunks(30));
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_TRUE(report->ok()) << report->Summary();
  }
}

TEST_F(BackfillTest, ResumesFromAnEarlierBoundAndCopiesNothingTwice) {
  Both(kUsers);
  Query(0,
        "INSERT INTO users SELECT g, 'u' || g, 0 FROM "
        "generate_series(1, 500) g");
  const MoveSlice slice = HashSlice(5, KeyType::kInt8, 0, {});
  std::vector<BackfillChunk> reported;
  BackfillOptions options;
  options.chunk_rows = 50;
  options.on_chunk = [&](const BackfillChunk& c) {
    reported.push_back(c);
    if (reported.size() == 3) return absl::AbortedError("journal is down");
    return absl::OkStatus();
  };
  auto stopped =
      BackfillTable(source(), destination(), {"users", "id"}, slice, options);
  EXPECT_EQ(stopped.status(), absl::AbortedError("journal is down"));
  EXPECT_EQ(Query(1, "SELECT count(*) FROM users")[0][0], "150");

  // The journal only kept the second chunk's bound: the third is copied
  // again and inserts nothing.
  options.resume_after = reported[1].bound;
  options.on_chunk = nullptr;
  auto resumed =
      BackfillTable(source(), destination(), {"users", "id"}, slice, options);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->rows_in_slice, 400);
  EXPECT_EQ(resumed->rows_copied, 350);
  const std::string all = "SELECT id, name, score FROM users ORDER BY id";
  EXPECT_EQ(Query(1, all), Query(0, all));

  // A bound of the wrong width is refused.
  options.resume_after = std::vector<std::string>{"1", "2"};
  auto wrong =
      BackfillTable(source(), destination(), {"users", "id"}, slice, options);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
}

// Unpaced, the next chunk of a slice without key lists is read (and
// locked on the source) while the destination writes the one before;
// paced (max_rows_per_second), the
// backfill reads one chunk at a time and waits with nothing locked. Either
// way every row arrives once.
TEST_F(BackfillTest, PacedBackfillWaitsWithNothingLocked) {
  Both(kUsers);
  Query(0,
        "INSERT INTO users SELECT g, 'u' || g, 0 FROM "
        "generate_series(1, 400) g");
  // A range slice (no key lists: a slice with lists reads one chunk at a
  // time, paced or not).
  MoveSlice slice;
  slice.move_id = 8;
  slice.strategy = Strategy::kRange;
  slice.key_type = KeyType::kInt8;
  slice.from = Key::Integer(1);
  for (const int64_t pace : {int64_t{0}, int64_t{1000000}}) {
    SCOPED_TRACE(pace == 0 ? "unpaced" : "paced");
    Query(1, "TRUNCATE users");
    Query(1, "DROP TABLE IF EXISTS shardkit.move_8_keys");
    Query(0, "DROP TABLE IF EXISTS shardkit.move_8_keys");
    BackfillOptions options;
    options.chunk_rows = 100;
    options.max_rows_per_second = pace;
    std::vector<std::string> locked;  // per chunk: could rows after it lock?
    options.on_chunk = [&](const BackfillChunk& c) {
      auto after = shards_->Query(
          0, absl::StrCat("SET lock_timeout = '100ms'; SELECT id FROM users WHERE "
                    "id > ", c.bound.at(0),
                    " ORDER BY id LIMIT 1 FOR UPDATE"));
      locked.push_back(after.ok() ? "free" : "locked");
      return absl::OkStatus();
    };
    auto stats =
        BackfillTable(source(), destination(), {"users", "id"}, slice, options);
    ASSERT_TRUE(stats.ok()) << stats.status();
    EXPECT_EQ(stats->rows_copied, 400);
    const std::string all = "SELECT id, name, score FROM users ORDER BY id";
    EXPECT_EQ(Query(1, all), Query(0, all));
    // Four chunks; after the last there is nothing left to lock.
    ASSERT_EQ(locked.size(), 4u);
    EXPECT_EQ(locked, (pace == 0 ? std::vector<std::string>{"locked", "locked",
                                                            "locked", "free"}
                                 : std::vector<std::string>{"free", "free",
                                                            "free", "free"}));
  }
}

TEST_F(BackfillTest, NewerRowsAndDeletesWin) {
  Both(kUsers);
  Query(0,
        "INSERT INTO users SELECT g, 'old', 0 FROM generate_series(1, 300) g");
  // Dual-written before the backfill: row 250 updated on both sides.
  Query(1, "INSERT INTO users VALUES (250, 'newer', 1)");
  Query(0, "UPDATE users SET name = 'newer', score = 1 WHERE id = 250");
  const MoveSlice slice = HashSlice(6, KeyType::kInt8, 0, {});
  BackfillOptions options;
  options.chunk_rows = 100;
  options.on_chunk = [&](const BackfillChunk& c) {
    if (c.total.chunks == 1) {
      // A row of a later chunk is deleted, dual-written (the destination
      // has no copy yet: the delete matches nothing there), and a row of
      // the destination is updated again by a dual-write.
      Query(0, "DELETE FROM users WHERE id = 280");
      Query(1, "DELETE FROM users WHERE id = 280");
      Query(0, "UPDATE users SET score = 2 WHERE id = 250");
      Query(1, "UPDATE users SET score = 2 WHERE id = 250");
    }
    return absl::OkStatus();
  };
  auto stats =
      BackfillTable(source(), destination(), {"users", "id"}, slice, options);
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->rows_copied, 298);  // 300 - the deleted - the newer
  EXPECT_EQ(Query(1, "SELECT name, score FROM users WHERE id = 250"),
            (Rows{{"newer", "2"}}));
  EXPECT_TRUE(Query(1, "SELECT 1 FROM users WHERE id = 280").empty());
  const std::string all = "SELECT id, name, score FROM users ORDER BY id";
  EXPECT_EQ(Query(1, all), Query(0, all));
}

// What the router's dual-write does for one row of the slice, by hand: the
// source's write in a transaction, the row image (or the delete) applied
// on the destination, the key listed on both, the destination committed,
// then the source.
class DualWriter {
 public:
  DualWriter(const std::string& source_dsn, const std::string& dest_dsn,
             uint64_t move_id)
      : source_(source_dsn), destination_(dest_dsn),
        keys_(absl::StrCat("shardkit.move_", move_id, "_keys")) {}

  bool ok() const { return source_.ok() && destination_.ok(); }

  // One write to row `id`: 0 updates, 1 deletes, 2 inserts (or upserts).
  std::string Write(int64_t id, int kind) {
    std::string image;
    Must(source_.Scalar("BEGIN"));
    if (kind == 0) {
      image = source_.Scalar(absl::StrCat(
          "UPDATE users SET score = score + 1, name = E'up\\t' || id WHERE "
          "id = ",
          id, " RETURNING users::text"));
    } else if (kind == 1) {
      Must(source_.Scalar(absl::StrCat("DELETE FROM users WHERE id = ", id)));
    } else {
      image = source_.Scalar(absl::StrCat(
          "INSERT INTO users VALUES (", id,
          ", 'fresh', 100) ON CONFLICT (id) DO UPDATE SET score = "
          "users.score + 100 RETURNING users::text"));
    }
    Must(image);
    Must(destination_.Scalar("BEGIN"));
    if (kind == 1) {
      Must(destination_.Scalar(
          absl::StrCat("DELETE FROM users WHERE id = ", id)));
    } else if (!image.empty()) {
      Must(destination_.Scalar(absl::StrCat(
          "INSERT INTO users SELECT (r).* FROM (SELECT $img$", image,
          "$img$::users AS r) x ON CONFLICT (id) DO UPDATE SET name = "
          "excluded.name, score = excluded.score")));
    }
    for (testing::Session* s : {&source_, &destination_}) {
      Must(s->Scalar(absl::StrCat("INSERT INTO ", keys_, " VALUES (", id,
                                  ") ON CONFLICT DO NOTHING")));
    }
    Must(destination_.Scalar("COMMIT"));
    Must(source_.Scalar("COMMIT"));
    std::string out = error_;
    error_.clear();
    if (!out.empty()) {
      source_.Scalar("ROLLBACK");
      destination_.Scalar("ROLLBACK");
    }
    return out;
  }

 private:
  void Must(const std::string& result) {
    if (error_.empty() && result.rfind("error: ", 0) == 0) error_ = result;
  }

  testing::Session source_;
  testing::Session destination_;
  std::string keys_;
  std::string error_;
};

TEST_F(BackfillTest, ConcurrentDualWritesEndIdentical) {
  Both(kUsers);
  Both(
      "CREATE SCHEMA shardkit; CREATE TABLE shardkit.move_7_keys (key int8 "
      "PRIMARY KEY)");
  Query(0,
        "INSERT INTO users SELECT g, 'u' || g, 0 FROM "
        "generate_series(1, 4000) g");
  const MoveSlice slice = HashSlice(7, KeyType::kInt8, 0, kHalf);
  std::vector<int64_t> ids;  // keys of the slice, existing or not yet
  for (int64_t id = 1; id <= 4400; ++id) {
    if (InHashSlice(slice, Key::Integer(id))) ids.push_back(id);
  }

  std::atomic<bool> stop{false};
  std::atomic<int> writes{0};
  std::vector<std::string> errors(2);
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      DualWriter writer(shards_->dsn(0), shards_->dsn(1), 7);
      if (!writer.ok()) {
        errors[w] = "cannot connect";
        return;
      }
      uint64_t state = 0x9e3779b97f4a7c15ull * (w + 1);
      while (!stop.load() && errors[w].empty()) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        const int64_t id = ids[state % ids.size()];
        const int kind = static_cast<int>((state >> 32) % 5);  // mostly updates
        errors[w] = writer.Write(id, kind >= 3 ? kind - 2 : 0);
        writes.fetch_add(1);
      }
    });
  }
  // Let writes start before the backfill, and run during it.
  ASSERT_TRUE(testing::Eventually([&] { return writes.load() >= 20; }));
  BackfillOptions options;
  options.chunk_rows = 150;
  auto stats =
      BackfillTable(source(), destination(), {"users", "id"}, slice, options);
  const int during = writes.load();
  ASSERT_TRUE(testing::Eventually([&] { return writes.load() >= during + 50; }));

  // Verify while the writers still write: differences of a moment are
  // rechecked away.
  VerifyOptions verify_options;
  verify_options.chunk_rows = 200;
  verify_options.rechecks = 20;
  auto live_report = VerifyTable(source(), destination(), {"users", "id"},
                                 slice, verify_options);
  stop = true;
  for (auto& t : writers) t.join();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));

  const std::string all = "SELECT id, name, score FROM users ORDER BY id";
  const Rows expected = InSlice(0, all, slice, KeyType::kInt8);
  EXPECT_EQ(Query(1, all), expected);
  ASSERT_TRUE(live_report.ok()) << live_report.status();
  EXPECT_TRUE(live_report->ok()) << live_report->Summary();

  auto report = VerifyTable(source(), destination(), {"users", "id"}, slice,
                            verify_options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->ok()) << report->Summary();
  EXPECT_EQ(report->source_rows, static_cast<int64_t>(expected.size()));
}

TEST_F(BackfillTest, VerifyReportsEachPlantedDifferenceByKey) {
  Both(
      "CREATE TABLE pairs (a int8, b text, v text, PRIMARY KEY (a, b))");
  Query(0,
        "INSERT INTO pairs SELECT g / 3, 'k' || (g % 3), 'v' || g FROM "
        "generate_series(3, 902) g");
  const MoveSlice slice = RangeSlice(8, 1, 1000);
  auto stats = BackfillTable(source(), destination(), {"pairs", "a"}, slice,
                             Chunks(100));
  ASSERT_TRUE(stats.ok()) << stats.status();
  Query(1, "DELETE FROM pairs WHERE a = 10 AND b = 'k1'");
  Query(1, "UPDATE pairs SET v = 'changed' WHERE a = 200 AND b = 'k2'");
  Query(1, "INSERT INTO pairs VALUES (999, E'x\\ty', 'only here')");
  // Outside the slice: not the slice's business.
  Query(1, "INSERT INTO pairs VALUES (5000, 'z', 'elsewhere')");

  VerifyOptions options;
  options.chunk_rows = 100;
  options.rechecks = 1;
  options.recheck_pause = absl::ZeroDuration();
  auto report =
      VerifyTable(source(), destination(), {"pairs", "a"}, slice, options);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(report->ok());
  EXPECT_EQ(report->source_rows, 900);
  EXPECT_EQ(report->destination_rows, 900);
  ASSERT_EQ(report->mismatches.size(), 3u) << report->Summary();
  std::vector<std::pair<RowDifference::Kind, std::vector<std::string>>> found;
  for (const ChunkMismatch& m : report->mismatches) {
    EXPECT_EQ(m.differences_total, 1);
    for (const RowDifference& d : m.differences) found.push_back({d.kind, d.key});
  }
  using K = RowDifference::Kind;
  EXPECT_THAT(
      found,
      ElementsAre(
          std::pair{K::kMissingOnDestination, std::vector<std::string>{"10", "k1"}},
          std::pair{K::kDifferent, std::vector<std::string>{"200", "k2"}},
          std::pair{K::kExtraOnDestination,
                    std::vector<std::string>{"999", "x\ty"}}));
  EXPECT_THAT(report->Summary(), HasSubstr("(10, k1) missing on destination"));
  // The last chunk is open above: the extra row past the source's last key.
  EXPECT_FALSE(report->mismatches.back().up_to.has_value());
}

TEST_F(BackfillTest, TablesThatCannotMoveAreRefusedWithWhatToDo) {
  Both(
      "CREATE TABLE nopk (id int8, v text);"
      "CREATE TABLE wrongpk (id int8, other int8 PRIMARY KEY);");
  Query(0, "CREATE TABLE onlyhere (id int8 PRIMARY KEY)");
  Query(0, "CREATE TABLE shape (id int8 PRIMARY KEY, v text)");
  Query(1, "CREATE TABLE shape (id int8 PRIMARY KEY, v int4)");
  const MoveSlice slice = HashSlice(9, KeyType::kInt8, 0, {});

  auto nopk = CheckTableForMove(source(), destination(), {"nopk", "id"});
  EXPECT_EQ(nopk.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(nopk.status().message(),
              HasSubstr("shard s1: table nopk has no primary key: a table "
                        "under move needs a primary key that includes the "
                        "shard key"));
  auto wrongpk = BackfillTable(source(), destination(), {"wrongpk", "id"},
                               slice, {});
  EXPECT_EQ(wrongpk.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wrongpk.status().message(),
              HasSubstr("has a primary key without its shard key id"));
  EXPECT_THAT(wrongpk.status().message(), HasSubstr("add one"));

  auto missing = BackfillTable(source(), destination(), {"onlyhere", "id"},
                               slice, {});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("shard s2: table onlyhere does not exist"));

  auto shape = VerifyTable(source(), destination(), {"shape", "id"}, slice, {});
  EXPECT_EQ(shape.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(shape.status().message(),
              HasSubstr("table shape differs between shard s1"));

  auto down = BackfillTable(source(), {"s9", "host=127.0.0.1 port=1 dbname=x"},
                            {"shape", "id"}, slice, {});
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(down.status().message(), HasSubstr("shard s9"));
}

// The epoch fence of shard_objects.h lets the backfill's inserts through
// when it writes under the current epoch, and refuses them otherwise.
TEST_F(BackfillTest, WritesUnderTheFenceWithItsEpoch) {
  Both(kUsers);
  Query(0, "INSERT INTO users SELECT g, 'u', 0 FROM generate_series(1, 10) g");
  Query(1,
        "CREATE SCHEMA shardkit; CREATE TABLE shardkit.fences (table_name "
        "text PRIMARY KEY, min_epoch int8 NOT NULL);"
        "INSERT INTO shardkit.fences VALUES ('users', 4);"
        "CREATE FUNCTION shardkit.check_epoch() RETURNS trigger LANGUAGE "
        "plpgsql AS $$ BEGIN IF coalesce(nullif(current_setting("
        "'shardkit.epoch', true), '')::int8, 0) < 4 THEN RAISE EXCEPTION "
        "USING ERRCODE = 'SK001', MESSAGE = 'stale epoch'; END IF; RETURN "
        "NULL; END $$;" +
            internal::InstallFenceTriggerSql("users"));
  const MoveSlice slice = HashSlice(10, KeyType::kInt8, 0, {});
  auto refused = BackfillTable(source(), destination(), {"users", "id"},
                               slice, {});
  EXPECT_THAT(refused.status().message(), HasSubstr("SK001"));
  EXPECT_EQ(Query(1, "SELECT count(*) FROM users")[0][0], "0");
  BackfillOptions at_epoch;
  at_epoch.epoch = 4;
  auto passed = BackfillTable(source(), destination(), {"users", "id"}, slice,
                              at_epoch);
  ASSERT_TRUE(passed.ok()) << passed.status();
  EXPECT_EQ(Query(1, "SELECT count(*) FROM users")[0][0], "10");
}

// A server backend stopped with SIGSTOP, as a hung server leaves it: it
// reads nothing and enforces none of its timeouts. Terminated and resumed
// when the guard goes, so that a failed assertion leaves no stopped process
// (nor its transaction's locks) behind. The test runs as root, the servers
// as postgres: kill() is allowed.
class StoppedBackend {
 public:
  explicit StoppedBackend(pid_t pid)
      : pid_(pid), stopped_(kill(pid, SIGSTOP) == 0) {}
  StoppedBackend(const StoppedBackend&) = delete;
  StoppedBackend& operator=(const StoppedBackend&) = delete;
  // SIGTERM first: stopped, the backend cannot exit, so its pid is still
  // its own; resumed, it terminates at once.
  ~StoppedBackend() {
    if (!stopped_) return;
    kill(pid_, SIGTERM);
    kill(pid_, SIGCONT);
  }

  bool stopped() const { return stopped_; }

 private:
  const pid_t pid_;
  const bool stopped_;
};

// A destination that stops reading in the middle of a chunk (a hung
// server, a partition: no error, no FIN) fails the backfill after about
// its statement timeout, naming the shard, instead of keeping it, and the
// source rows it locked, waiting forever. The server's own
// statement_timeout cannot help: the backend is stopped. The chunk (some
// 80 MB of COPY text) is far more than the loopback socket buffers take,
// so the mover's sends block; a trigger holds the backend at an early row
// of the chunk, where the test stops it.
TEST_F(BackfillTest, DestinationThatStopsReadingFailsTheBackfill) {
  Both(kUsers);
  constexpr int kRows = 40000;  // 2 KB each
  constexpr int kHeldRow = 100;
  Query(0, absl::StrCat("INSERT INTO users SELECT g, repeat(md5(g::text), "
                        "64), 0 FROM generate_series(1, ",
                        kRows, ") g"));
  // lock_timeout 0 for the wait: the mover's 300 ms would end it before
  // the test stops the backend; its statement_timeout (2 s) still would.
  Query(1, absl::StrCat(
               "CREATE FUNCTION hold_row() RETURNS trigger LANGUAGE plpgsql "
               "SET lock_timeout = 0 AS $$ BEGIN IF NEW.id = ",
               kHeldRow,
               " THEN PERFORM pg_advisory_xact_lock(4711); END IF; RETURN "
               "NEW; END $$;"
               "CREATE TRIGGER hold BEFORE INSERT ON users FOR EACH ROW "
               "EXECUTE FUNCTION hold_row(); ALTER TABLE users ENABLE "
               "ALWAYS TRIGGER hold"));  // the mover's sessions are replicas
  testing::Session holder(shards_->dsn(1));
  ASSERT_TRUE(holder.ok()) << holder.error();
  ASSERT_EQ(holder.Scalar("SELECT pg_advisory_lock(4711)"), "");

  BackfillOptions options;
  options.chunk_rows = kRows;
  options.statement_timeout = absl::Seconds(2);
  std::atomic<bool> done{false};
  absl::StatusOr<BackfillStats> result;
  absl::Duration took;
  std::jthread backfill([&] {
    const absl::Time start = absl::Now();
    result = BackfillTable(source(), destination(), {"users", "id"},
                           RangeSlice(12, 1, kRows + 1), options);
    took = absl::Now() - start;
    done = true;
  });
  pid_t pid = 0;
  ASSERT_TRUE(testing::Eventually([&] {
    if (done) return true;
    auto waiting = shards_->Query(
        1,
        "SELECT pid FROM pg_stat_activity WHERE application_name = "
        "'shardkit-mover' AND wait_event = 'advisory' AND query LIKE 'COPY%'");
    if (waiting.ok() && !waiting->empty()) pid = std::stoi((*waiting)[0][0]);
    return pid != 0;
  }));
  ASSERT_NE(pid, 0) << "the backfill ended before its COPY reached row "
                    << kHeldRow << ": " << result.status();
  {
    StoppedBackend stopped(pid);
    ASSERT_TRUE(stopped.stopped()) << "kill(" << pid << ", SIGSTOP) failed";
    // Generous: this bounds a hang, it does not time the deadline.
    ASSERT_TRUE(testing::Eventually([&] { return done.load(); },
                                    absl::Seconds(30)))
        << "the backfill still waits on the stopped destination";
    std::cout << "the backfill failed after " << took << "\n";
    EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded)
        << result.status();
    EXPECT_THAT(result.status().message(),
                HasSubstr("shard s2: the server took no more COPY data for "
                          "2s (while copying a chunk of table users"));
    // The backfill rolled back the source: its rows are free.
    EXPECT_EQ(Query(0, "SET lock_timeout = '1s'; SELECT count(*) FROM "
                       "(SELECT id FROM users FOR UPDATE) x"),
              (Rows{{std::to_string(kRows)}}));
  }
  // Terminated, the backend's transaction rolled back: nothing copied.
  EXPECT_TRUE(testing::Eventually([&] {
    auto left = shards_->Query(
        1, absl::StrCat("SELECT 1 FROM pg_stat_activity WHERE pid = ", pid));
    return left.ok() && left->empty();
  }));
  EXPECT_EQ(Query(1, "SELECT count(*) FROM users")[0][0], "0");
}

// A mover killed at a failpoint (in a child process: this test binary run
// again with SHARDKIT_FAILPOINTS set) leaves a state the resume completes.
TEST_F(BackfillTest, KilledAtEachFailpointResumes) {
  if (std::getenv("SHARDKIT_BACKFILL_CHILD") != nullptr) {
    GTEST_SKIP() << "runs as a child";
  }
  for (const char* failpoint :
       {"move-backfill-after-chunk", "move-backfill-mid"}) {
    SCOPED_TRACE(failpoint);
    SetUp();
    Both(kUsers);
    Query(0,
          "INSERT INTO users SELECT g, 'u' || g, 0 FROM "
          "generate_series(1, 300) g");
    setenv("SHARDKIT_FAILPOINTS", failpoint, 1);
    setenv("SHARDKIT_BACKFILL_CHILD", "1", 1);
    setenv("BACKFILL_SOURCE_DSN", shards_->dsn(0).c_str(), 1);
    setenv("BACKFILL_DEST_DSN", shards_->dsn(1).c_str(), 1);
    testing::CommandOutput child = testing::RunCommand(
        {"/proc/self/exe", "--gtest_filter=BackfillChild.CopiesUsers"});
    unsetenv("SHARDKIT_FAILPOINTS");
    unsetenv("SHARDKIT_BACKFILL_CHILD");
    EXPECT_EQ(child.exit_code, kFailpointExitCode) << child.out << child.err;
    EXPECT_THAT(child.err, HasSubstr(failpoint));
    // The first chunk is on the destination; after-chunk: not listed on the
    // source yet (its transaction died).
    EXPECT_EQ(Query(1, "SELECT count(*) FROM users")[0][0], "100");
    EXPECT_EQ(Query(0, "SELECT count(*) FROM shardkit.move_11_keys")[0][0],
              std::string(failpoint) == "move-backfill-mid" ? "100" : "0");

    auto resumed = BackfillTable(source(), destination(), {"users", "id"},
                                 HashSlice(11, KeyType::kInt8, 0, {}),
                                 Chunks(100));
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    const std::string all = "SELECT id, name, score FROM users ORDER BY id";
    EXPECT_EQ(Query(1, all), Query(0, all));
    EXPECT_EQ(Query(0, "SELECT count(*) FROM shardkit.move_11_keys")[0][0],
              "300");
  }
}

// The child of KilledAtEachFailpointResumes; skipped when run directly.
TEST(BackfillChild, CopiesUsers) {
  if (std::getenv("SHARDKIT_BACKFILL_CHILD") == nullptr) {
    GTEST_SKIP() << "only as a child of KilledAtEachFailpointResumes";
  }
  auto stats = BackfillTable({"s1", std::getenv("BACKFILL_SOURCE_DSN")},
                             {"s2", std::getenv("BACKFILL_DEST_DSN")},
                             {"users", "id"},
                             HashSlice(11, KeyType::kInt8, 0, {}),
                             Chunks(100));
  FAIL() << "the failpoint did not fire: " << stats.status();
}

}  // namespace
}  // namespace shardkit::internal
