// Streamed results (Cluster::Stream) against real PostgreSQL: the same rows
// in one plain database (the oracle) and spread over three shards must come
// back alike, whatever the fetch batch; the shards' transactions and
// connections must end with the stream; a shard that fails mid-way must
// fail the stream, never shorten it silently.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "router/router.h"
#include "router/stream.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::HasSubstr;
using Rows = std::vector<std::vector<std::string>>;

constexpr char kTable[] =
    "CREATE TABLE items (id int8 PRIMARY KEY, name text, grp int4, "
    "price numeric(12,2))";
constexpr int kItems = 2500;

constexpr char kMapBody[] = R"(
[distributions.items]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2", "s3"]
[tables.items]
distribution = "items"
key = "id"
[timeouts]
connect = "2s"
statement = "5s"
)";

class StreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shards = testing::TestCluster::Start(3);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = shards->release();
    auto oracle = testing::TestCluster::Start(1);
    ASSERT_TRUE(oracle.ok()) << oracle.status();
    oracle_ = oracle->release();
    auto cluster = Cluster::OpenFile(shards_->WriteConfig("stream.toml", kMapBody));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();

    ASSERT_TRUE(oracle_->Query(0, kTable).ok());
    ASSERT_TRUE(cluster_->Execute(kTable).ok());
    std::vector<std::string> values;
    for (int id = 1; id <= kItems; ++id) {
      values.push_back(absl::StrCat(
          "(", id, ", ",
          id % 11 == 0 ? "NULL" : absl::StrCat("'item ", (id * 7919) % 1000, "'"),
          ", ", id % 13 == 0 ? "NULL" : std::to_string(id % 17), ", ",
          id * 3 % 1000, ".", id % 100, ")"));
    }
    const std::string insert =
        "INSERT INTO items (id, name, grp, price) VALUES " +
        absl::StrJoin(values, ", ");
    ASSERT_TRUE(oracle_->Query(0, insert).ok());
    absl::StatusOr<Result> loaded = cluster_->Execute(insert);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
  }

  static void TearDownTestSuite() {
    delete cluster_;
    delete shards_;
    delete oracle_;
  }

  // Every row of a stream as text ("NULL" for NULL); fails the test on an
  // error.
  static Rows Drain(absl::StatusOr<RowStream> stream) {
    Rows rows;
    EXPECT_TRUE(stream.ok()) << stream.status();
    if (!stream.ok()) return rows;
    const int64_t before = stream->rows_read();
    Row row;
    while (true) {
      absl::StatusOr<bool> more = stream->Next(&row);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      std::vector<std::string> text;
      for (const auto& v : row) text.push_back(v.value_or("NULL"));
      rows.push_back(std::move(text));
    }
    EXPECT_EQ(stream->rows_read() - before, static_cast<int64_t>(rows.size()));
    return rows;
  }

  // A stream with a fetch batch of `batch` rows (Cluster::Stream uses 1000).
  static absl::StatusOr<RowStream> StreamWithBatch(const std::string& sql,
                                                   const std::vector<Param>& params,
                                                   int batch) {
    static internal::Router* router = new internal::Router();
    internal::StreamOptions options;
    options.batch_rows = batch;
    options.exec.connect_timeout = absl::Seconds(2);
    return internal::OpenStream(*router, cluster_->map(), sql, params, options);
  }

  // The backends of shard `index` still inside a transaction.
  static int InTransaction(int index) {
    auto rows = shards_->Query(
        index,
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in "
        "transaction%' AND pid <> pg_backend_pid()");
    return rows.ok() ? std::stoi((*rows)[0][0]) : -1;
  }

  // Waits up to 5 s for no backend of any shard to be inside a transaction
  // (a closed connection's backend ends a moment later).
  static bool NoneInTransaction() {
    for (int attempt = 0; attempt < 100; ++attempt) {
      if (InTransaction(0) + InTransaction(1) + InTransaction(2) == 0) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  static testing::TestCluster* shards_;
  static testing::TestCluster* oracle_;
  static Cluster* cluster_;
};

testing::TestCluster* StreamTest::shards_ = nullptr;
testing::TestCluster* StreamTest::oracle_ = nullptr;
Cluster* StreamTest::cluster_ = nullptr;

std::string Literal(std::string sql, const std::vector<Param>& params) {
  for (size_t i = params.size(); i >= 1; --i) {
    const std::string value = params[i - 1] ? "'" + *params[i - 1] + "'" : "NULL";
    size_t at;
    while ((at = sql.find("$" + std::to_string(i))) != std::string::npos) {
      sql.replace(at, std::to_string(i).size() + 1, value);
    }
  }
  return sql;
}

TEST_F(StreamTest, StreamsWhatOnePostgresWouldReturn) {
  struct Case {
    std::string sql;
    std::vector<Param> params;
    bool ordered;  // the order is defined: compare it too
  };
  const std::vector<Case> cases = {
      {"SELECT * FROM items", {}, false},
      {"SELECT id, name FROM items WHERE grp = $1", {"3"}, false},
      {"SELECT * FROM items ORDER BY id", {}, true},
      {"SELECT id, name FROM items ORDER BY name NULLS FIRST, id DESC", {}, true},
      {"SELECT id, grp, price FROM items ORDER BY grp DESC NULLS LAST, price, id",
       {}, true},
      {"SELECT id, name FROM items ORDER BY name DESC, id LIMIT 1700 OFFSET 333",
       {}, true},
      {"SELECT id FROM items ORDER BY id LIMIT $1 OFFSET $2", {"10", "2490"}, true},
      {"SELECT id FROM items ORDER BY id OFFSET 2400", {}, true},
      {"SELECT id FROM items ORDER BY id LIMIT 0", {}, true},
      {"SELECT * FROM items WHERE id = $1", {"42"}, true},
      {"SELECT * FROM items WHERE id IN (1, 2, 3, 500) ORDER BY id", {}, true},
      {"SELECT * FROM items WHERE id < 0", {}, true},
      {"SELECT * FROM items -- a trailing comment", {}, false},
      {"SELECT id FROM items ORDER BY id;", {}, true},
      // Aggregates over several shards are combined in one query, then read
      // from memory.
      {"SELECT grp, count(*), sum(price) FROM items GROUP BY grp ORDER BY grp",
       {}, true},
  };
  for (int batch : {1, 7, 1000}) {
    for (const Case& c : cases) {
      SCOPED_TRACE(absl::StrCat(c.sql, " batch ", batch));
      absl::StatusOr<Rows> expected = oracle_->Query(0, Literal(c.sql, c.params));
      ASSERT_TRUE(expected.ok()) << expected.status();
      Rows got = batch == 1000 ? Drain(cluster_->Stream(c.sql, c.params))
                               : Drain(StreamWithBatch(c.sql, c.params, batch));
      if (!c.ordered) {
        std::sort(got.begin(), got.end());
        std::sort(expected->begin(), expected->end());
      }
      EXPECT_EQ(got, *expected);
    }
  }
  EXPECT_TRUE(NoneInTransaction());
}

TEST_F(StreamTest, ColumnsAndShardsAreKnownBeforeTheFirstRow) {
  absl::StatusOr<RowStream> stream =
      cluster_->Stream("SELECT id, name AS label FROM items ORDER BY id");
  ASSERT_TRUE(stream.ok()) << stream.status();
  ASSERT_EQ(stream->columns().size(), 2u);
  EXPECT_EQ(stream->columns()[0].name, "id");
  EXPECT_EQ(stream->columns()[0].type_oid, 20u);
  EXPECT_EQ(stream->columns()[1].name, "label");
  EXPECT_EQ(stream->shards(), (std::vector<ShardId>{0, 1, 2}));
}

TEST_F(StreamTest, WritesRunOnceAndStreamTheirResult) {
  absl::StatusOr<RowStream> stream = cluster_->Stream(
      "INSERT INTO items (id, name) VALUES (100001, 'a'), (100002, 'b') "
      "RETURNING id, name");
  Rows rows = Drain(std::move(stream));
  std::sort(rows.begin(), rows.end());
  EXPECT_EQ(rows, (Rows{{"100001", "a"}, {"100002", "b"}}));
  absl::StatusOr<Result> gone =
      cluster_->Execute("DELETE FROM items WHERE id > 100000");
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(gone->rows_affected, 2);
}

TEST_F(StreamTest, ADroppedStreamEndsItsTransactions) {
  {
    absl::StatusOr<RowStream> stream = StreamWithBatch(
        "SELECT * FROM items ORDER BY name", {}, 10);
    ASSERT_TRUE(stream.ok()) << stream.status();
    Row row;
    for (int i = 0; i < 25; ++i) ASSERT_TRUE(*stream->Next(&row));
    // Mid-way, every shard holds the stream's open transaction.
    EXPECT_EQ(InTransaction(0) + InTransaction(1) + InTransaction(2), 3);
  }
  EXPECT_TRUE(NoneInTransaction());
  // The pool is still fit for work.
  absl::StatusOr<Result> r = cluster_->Execute("SELECT count(*) FROM items");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r->rows[0][0], std::to_string(kItems));
}

TEST_F(StreamTest, OtherStatementsRunWhileAStreamIsOpen) {
  absl::StatusOr<RowStream> stream = cluster_->Stream("SELECT id FROM items");
  ASSERT_TRUE(stream.ok()) << stream.status();
  Row row;
  ASSERT_TRUE(*stream->Next(&row));
  absl::StatusOr<Result> r = cluster_->Execute("SELECT count(*) FROM items");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Drain(std::move(stream)).size() + 1, static_cast<size_t>(kItems));
}

TEST_F(StreamTest, AShardLostMidwayFailsTheStream) {
  absl::StatusOr<RowStream> stream =
      StreamWithBatch("SELECT id FROM items ORDER BY id", {}, 5);
  ASSERT_TRUE(stream.ok()) << stream.status();
  Row row;
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(*stream->Next(&row));
  // The backend holding the cursor on s2 goes away.
  auto killed = shards_->Query(
      1,
      "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
      "query LIKE '%shardkit_stream%' AND pid <> pg_backend_pid()");
  ASSERT_TRUE(killed.ok()) << killed.status();
  ASSERT_EQ((*killed)[0][0], "1");
  absl::Status failure;
  int64_t read = 10;
  while (true) {
    absl::StatusOr<bool> more = stream->Next(&row);
    if (!more.ok()) {
      failure = more.status();
      break;
    }
    ASSERT_TRUE(*more) << "the stream ended after " << read
                       << " rows without an error";
    ++read;
  }
  EXPECT_LT(read, kItems);
  EXPECT_THAT(std::string(failure.message()), HasSubstr("shard s2"));
  // The failure sticks.
  EXPECT_FALSE(stream->Next(&row).ok());
  EXPECT_TRUE(NoneInTransaction());
}

TEST_F(StreamTest, RefusalsAndErrorsComeBeforeTheFirstRow) {
  absl::StatusOr<RowStream> refused =
      cluster_->Stream("SELECT * FROM items ORDER BY lower(name)");
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(SqlStateOf(refused.status()), "0A000");
  absl::StatusOr<RowStream> missing = cluster_->Stream("SELECT nope FROM items");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(SqlStateOf(missing.status()), "42703");
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("shard s"));
  absl::StatusOr<RowStream> no_param =
      cluster_->Stream("SELECT * FROM items WHERE id = $1");
  ASSERT_FALSE(no_param.ok());
  EXPECT_EQ(SqlStateOf(no_param.status()), "08P01");
  EXPECT_TRUE(NoneInTransaction());
}

}  // namespace
}  // namespace shardkit
