// Bulk loads (shardkit/load.h, shardctl load) against three real shards:
// every row lands, byte for byte, on the shard that owns its key; a
// reference table's rows on every shard; any failure leaves nothing on any
// shard and names the shard and the CSV line.

#include "shardkit/load.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::HasSubstr;
using testing::CommandOutput;
using testing::RunCommand;

constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2", "s3"]
[distributions.tags]
strategy = "hash"
key_type = "text"
shards = ["s1", "s2", "s3"]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
[tables.tags]
distribution = "tags"
key = "name"
[tables.countries]
reference = true
[timeouts]
connect = "2s"
)";

// orders is in the map but created on no shard.
constexpr char kSchema[] =
    "CREATE TABLE users (id int8 PRIMARY KEY, name text, note text, "
    "score int4, joined date DEFAULT '2000-01-01');"
    "CREATE TABLE tags (name text PRIMARY KEY, info text);"
    "CREATE TABLE countries (code text PRIMARY KEY, name text)";

using Value = std::optional<std::string>;
using Values = std::vector<Value>;

// One CSV field as a careful writer writes it: NULL unquoted and empty,
// anything else quoted when it must be (or when asked).
std::string CsvField(const Value& v, bool always_quote = false) {
  if (!v.has_value()) return "";
  if (!always_quote && !v->empty() &&
      v->find_first_of(",\"\r\n") == std::string::npos && *v != "\\.") {
    return *v;
  }
  std::string out = "\"";
  for (char c : *v) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string CsvLine(const Values& row) {
  std::vector<std::string> fields;
  for (const Value& v : row) fields.push_back(CsvField(v));
  return absl::StrJoin(fields, ",") + "\n";
}

// A column read back so that NULL and every string differ: "N" or "V...".
std::string Tagged(const std::string& column) {
  return absl::StrCat("CASE WHEN ", column, " IS NULL THEN 'N' ELSE 'V' || ",
                      column, "::text END");
}

std::string TagOf(const Value& v) { return v ? "V" + *v : "N"; }

class LoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shards = testing::TestCluster::Start(3);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = shards->release();
    config_path_ = shards_->WriteConfig("load.toml", kMapBody);
    auto cluster = Cluster::OpenFile(config_path_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    for (int i = 0; i < shards_->size(); ++i) {
      ASSERT_TRUE(shards_->Query(i, kSchema).ok());
    }
  }

  static void TearDownTestSuite() {
    delete cluster_;
    delete shards_;
  }

  void SetUp() override {
    for (int i = 0; i < shards_->size(); ++i) {
      ASSERT_TRUE(shards_->Query(i, "TRUNCATE users, tags, countries").ok());
    }
  }

  static absl::StatusOr<LoadReport> Load(const std::string& table,
                                         const std::string& csv,
                                         const LoadOptions& options = {}) {
    std::istringstream in(csv);
    return LoadCsv(*cluster_, table, in, options);
  }

  static int64_t Count(int shard, const std::string& table) {
    auto rows = shards_->Query(shard, "SELECT count(*) FROM " + table);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() ? std::stoll((*rows)[0][0]) : -1;
  }

  static void ExpectNothingLoaded() {
    for (int i = 0; i < shards_->size(); ++i) {
      for (const char* table : {"users", "tags", "countries"}) {
        EXPECT_EQ(Count(i, table), 0) << "shard s" << i + 1 << " " << table;
      }
    }
  }

  static int OwnerOf(const Key& key, const std::string& table) {
    absl::StatusOr<Placement> where = cluster_->map()->Place(table, key);
    EXPECT_TRUE(where.ok()) << where.status();
    return where.ok() ? static_cast<int>(where->shard) : -1;
  }

  // Checks that shard i holds exactly the rows of `expected` (by id) that
  // it owns, with these values.
  static void ExpectUsersPlaced(const std::map<int64_t, Values>& expected) {
    std::vector<std::map<int64_t, Values>> per_shard(shards_->size());
    for (const auto& [id, row] : expected) {
      per_shard[OwnerOf(Key::Integer(id), "users")][id] = row;
    }
    for (int i = 0; i < shards_->size(); ++i) {
      auto rows = shards_->Query(
          i, absl::StrCat("SELECT id, ", Tagged("name"), ", ", Tagged("note"),
                          ", ", Tagged("score"), " FROM users ORDER BY id"));
      ASSERT_TRUE(rows.ok()) << rows.status();
      ASSERT_EQ(rows->size(), per_shard[i].size()) << "shard s" << i + 1;
      auto want = per_shard[i].begin();
      for (const auto& got : *rows) {
        ASSERT_EQ(std::stoll(got[0]), want->first) << "shard s" << i + 1;
        for (size_t c = 0; c < 3; ++c) {
          EXPECT_EQ(got[c + 1], TagOf(want->second[c]))
              << "id " << want->first << " column " << c;
        }
        ++want;
      }
    }
  }

  static CommandOutput Shardctl(std::vector<std::string> args,
                                const std::string& stdin_text = "") {
    args.insert(args.begin(), SHARDCTL_PATH);
    return RunCommand(args, stdin_text);
  }

  static testing::TestCluster* shards_;
  static Cluster* cluster_;
  static std::string config_path_;
};

testing::TestCluster* LoadTest::shards_ = nullptr;
Cluster* LoadTest::cluster_ = nullptr;
std::string LoadTest::config_path_;

// Values that CSV and COPY could get wrong.
const std::vector<Value> kAwkward = {
    std::nullopt,
    "",
    "plain",
    "with, comma",
    "with \"quotes\"",
    "\"",
    "line\nbreak",
    "crlf\r\ninside",
    "cr\ronly",
    "  padded  ",
    "back\\slash \\N",
    "\\.",
    "NULL",
    "ünïcödé, 日本",
    "'single'",
    "tab\there",
    "trailing newline\n",
};

TEST_F(LoadTest, RowsLandOnTheirShardsExactly) {
  std::map<int64_t, Values> expected;
  std::string csv = "id,name,note,score\n";
  for (int64_t id = 1; id <= 400; ++id) {
    Values row = {kAwkward[id % kAwkward.size()],
                  kAwkward[(id * 7 + 3) % kAwkward.size()],
                  id % 9 == 0 ? std::nullopt : Value(std::to_string(id * 3 - 500))};
    expected[id] = row;
    std::vector<std::string> fields = {std::to_string(id)};
    for (size_t c = 0; c < row.size(); ++c) {
      fields.push_back(CsvField(row[c], id % 5 == 0 && c == 0));
    }
    csv += absl::StrJoin(fields, ",") + "\n";
  }
  LoadOptions options;
  options.batch_bytes = 300;  // many COPY batches per shard
  absl::StatusOr<LoadReport> report = Load("users", csv, options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->table, "users");
  EXPECT_EQ(report->rows, 400);
  EXPECT_THAT(report->columns,
              ::testing::ElementsAre("id", "name", "note", "score"));
  ASSERT_EQ(report->shards.size(), 3u);
  int64_t sum = 0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(report->shards[i].shard_name, absl::StrCat("s", i + 1));
    EXPECT_EQ(report->shards[i].rows, Count(i, "users"));
    EXPECT_GT(report->shards[i].rows, 50);
    sum += report->shards[i].rows;
  }
  EXPECT_EQ(sum, 400);
  ExpectUsersPlaced(expected);
}

TEST_F(LoadTest, DefaultBatchesCrLfAndNoFinalLineBreak) {
  std::map<int64_t, Values> expected;
  std::string csv = "score,id,name\r\n";  // any order, a subset, CRLF
  for (int64_t id = 1; id <= 20000; ++id) {
    const Value name = kAwkward[id % kAwkward.size()];
    expected[id] = {name, std::nullopt, Value(std::to_string(id % 100))};
    csv += absl::StrCat(id % 100, ",", id, ",", CsvField(name));
    if (id < 20000) csv += "\r\n";
  }
  absl::StatusOr<LoadReport> report = Load("users", csv);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->rows, 20000);
  ExpectUsersPlaced(expected);
  // Columns left out take their defaults.
  auto rows = shards_->Query(0, "SELECT DISTINCT joined FROM users");
  ASSERT_TRUE(rows.ok());
  EXPECT_EQ(*rows, (std::vector<std::vector<std::string>>{{"2000-01-01"}}));
}

TEST_F(LoadTest, WithoutHeaderTheRowsHoldTheTablesColumns) {
  LoadOptions options;
  options.header = false;
  absl::StatusOr<LoadReport> report =
      Load("users", "1,a,,7,2024-02-03\n2,b,\"\",,\n", options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(report->columns, ::testing::ElementsAre("id", "name", "note",
                                                      "score", "joined"));
  ExpectUsersPlaced({{1, {"a", std::nullopt, "7"}}, {2, {"b", "", std::nullopt}}});

  // A column list: the rows hold those; a header, if any, is skipped.
  ASSERT_TRUE(shards_->Query(OwnerOf(Key::Integer(1), "users"),
                             "DELETE FROM users").ok());
  ASSERT_TRUE(shards_->Query(OwnerOf(Key::Integer(2), "users"),
                             "DELETE FROM users").ok());
  options.columns = {"name", "id"};
  report = Load("users", "x,3\ny,4\n", options);
  ASSERT_TRUE(report.ok()) << report.status();
  options.header = true;
  report = Load("users", "whatever,header\nz,5\n", options);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->rows, 1);
  ExpectUsersPlaced({{3, {"x", std::nullopt, std::nullopt}},
                     {4, {"y", std::nullopt, std::nullopt}},
                     {5, {"z", std::nullopt, std::nullopt}}});
}

TEST_F(LoadTest, DelimiterAndNullString) {
  LoadOptions options;
  options.delimiter = '\t';
  options.null_string = "\\N";
  absl::StatusOr<LoadReport> report =
      Load("users", "id\tname\tnote\n1\t\\N\t\n2\t\"a\tb\"\t\"\\N\"\n", options);
  ASSERT_TRUE(report.ok()) << report.status();
  ExpectUsersPlaced({{1, {std::nullopt, "", std::nullopt}},
                     {2, {"a\tb", "\\N", std::nullopt}}});
}

TEST_F(LoadTest, TextKeysHashTheirUnquotedBytes) {
  std::vector<std::string> keys = {"a",     "a, b",  "q\"uote", "multi\nline",
                                   "ü",     " pad ", "",        "NULL",
                                   "\\.",   "z"};
  std::string csv = "name,info\n";
  for (const std::string& k : keys) csv += CsvLine({k, "i:" + k});
  absl::StatusOr<LoadReport> report = Load("tags", csv);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->rows, static_cast<int64_t>(keys.size()));
  for (const std::string& k : keys) {
    const int owner = OwnerOf(Key::Text(k), "tags");
    for (int i = 0; i < 3; ++i) {
      auto rows = shards_->Query(
          i, absl::StrCat("SELECT count(*) FROM tags WHERE name = $q$", k,
                          "$q$ AND info = $q$i:", k, "$q$"));
      ASSERT_TRUE(rows.ok()) << rows.status();
      EXPECT_EQ((*rows)[0][0], i == owner ? "1" : "0")
          << "key '" << k << "' on s" << i + 1;
    }
  }
}

TEST_F(LoadTest, ReferenceTableRowsGoToEveryShard) {
  absl::StatusOr<LoadReport> report = Load(
      "countries", "code,name\nde,Germany\nfr,\"France, République\"\nus,\n");
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->rows, 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(report->shards[i].rows, 3);
    auto rows = shards_->Query(
        i, "SELECT code, " + Tagged("name") + " FROM countries ORDER BY code");
    ASSERT_TRUE(rows.ok());
    EXPECT_EQ(*rows, (std::vector<std::vector<std::string>>{
                         {"de", "VGermany"},
                         {"fr", "VFrance, République"},
                         {"us", "N"}}));
  }
}

TEST_F(LoadTest, TablesNotInTheMapGoToTheDefaultShard) {
  auto cluster = Cluster::OpenFile(shards_->WriteConfig(
      "default.toml", std::string(kMapBody) + "[router]\ndefault_shard = \"s2\"\n"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ASSERT_TRUE(shards_->Query(1, "CREATE TABLE plain (k text, v int4)").ok());
  std::istringstream in("v,k\n1,a\n2,\n");
  absl::StatusOr<LoadReport> report = LoadCsv(**cluster, "plain", in);
  auto rows = shards_->Query(1, "SELECT k, v FROM plain ORDER BY v");
  ASSERT_TRUE(shards_->Query(1, "DROP TABLE plain").ok());
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->shards.size(), 1u);
  EXPECT_EQ(report->shards[0].shard_name, "s2");
  EXPECT_EQ(report->shards[0].rows, 2);
  ASSERT_TRUE(rows.ok()) << rows.status();
  EXPECT_EQ(*rows, (std::vector<std::vector<std::string>>{{"a", "1"},
                                                           {"NULL", "2"}}));
}

TEST_F(LoadTest, EmptyInputLoadsNothing) {
  for (const char* csv : {"", "id,name\n"}) {
    absl::StatusOr<LoadReport> report = Load("users", csv);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_EQ(report->rows, 0);
    for (const ShardRows& s : report->shards) EXPECT_EQ(s.rows, 0);
  }
}

// A CSV whose rows carry line breaks in quotes, so that CSV lines, COPY
// lines and records all differ; the bad row comes late.
std::string ManyLinesThen(const std::string& bad_row, int* bad_line) {
  std::string csv = "id,name,note,score\n";
  int line = 2;
  for (int id = 1; id <= 200; ++id) {
    csv += absl::StrCat(id, ",\"two\nlines\",", id % 3 ? "x" : "\"a\r\nb\"",
                        ",", id, "\n");
    line += 2 + (id % 3 ? 0 : 1);
  }
  *bad_line = line;
  return csv + bad_row + "\n201,after,,1\n";
}

TEST_F(LoadTest, DuplicateKeyLeavesNothingAndNamesShardAndLine) {
  int bad_line = 0;
  const std::string csv = ManyLinesThen("17,again,,1", &bad_line);
  LoadOptions options;
  options.batch_bytes = 500;
  absl::StatusOr<LoadReport> report = Load("users", csv, options);
  ASSERT_FALSE(report.ok());
  const int owner = OwnerOf(Key::Integer(17), "users");
  EXPECT_EQ(report.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(SqlStateOf(report.status()), "23505");
  EXPECT_THAT(report.status().message(),
              HasSubstr(absl::StrCat("shard s", owner + 1, ": ERROR 23505: "
                                     "duplicate key value violates unique "
                                     "constraint \"users_pkey\"")));
  EXPECT_THAT(report.status().message(),
              HasSubstr(absl::StrCat("(CSV line ", bad_line,
                                     "); nothing was loaded")));
  ExpectNothingLoaded();
}

TEST_F(LoadTest, TypeErrorOnOneShardLeavesNothing) {
  int bad_line = 0;
  const std::string csv = ManyLinesThen("555,bad,,not-a-number", &bad_line);
  absl::StatusOr<LoadReport> report = Load("users", csv);
  ASSERT_FALSE(report.ok());
  const int owner = OwnerOf(Key::Integer(555), "users");
  EXPECT_EQ(SqlStateOf(report.status()), "22P02");
  EXPECT_THAT(report.status().message(),
              HasSubstr(absl::StrCat("shard s", owner + 1, ": ERROR 22P02: ")));
  EXPECT_THAT(report.status().message(),
              HasSubstr(absl::StrCat("(CSV line ", bad_line, ")")));
  ExpectNothingLoaded();
}

TEST_F(LoadTest, ReferenceTableFailureOnOneShardLeavesNothing) {
  // A row that only s2 refuses.
  ASSERT_TRUE(shards_->Query(1, "INSERT INTO countries VALUES ('fr', 'x')").ok());
  absl::StatusOr<LoadReport> report =
      Load("countries", "code,name\nde,Germany\nfr,France\n");
  ASSERT_TRUE(shards_->Query(1, "DELETE FROM countries").ok());
  ASSERT_FALSE(report.ok());
  EXPECT_THAT(report.status().message(),
              HasSubstr("shard s2: ERROR 23505: duplicate key value"));
  EXPECT_THAT(report.status().message(), HasSubstr("(CSV line 3)"));
  ExpectNothingLoaded();
}

struct BadInput {
  std::string table;
  std::string csv;
  absl::StatusCode code;
  std::string error;
};

TEST_F(LoadTest, RefusesBadInputWithClearErrors) {
  const std::vector<BadInput> cases = {
      {"users", "id,name\n1,a\n,b\n", absl::StatusCode::kInvalidArgument,
       "line 3: the row has no shard key: column \"id\" is NULL"},
      {"users", "id,name\n1,a\n2x,b\n", absl::StatusCode::kInvalidArgument,
       "line 3: column \"id\", the shard key of table users: invalid int8 "
       "value \"2x\": expected a decimal integer"},
      {"users", "id,name\n1,a\n2,b,c\n", absl::StatusCode::kInvalidArgument,
       "line 3: the row has 3 fields but there are 2 columns (id, name)"},
      {"users", "name,note\na,b\n", absl::StatusCode::kInvalidArgument,
       "the CSV has no column \"id\", the shard key of table users, so its "
       "rows cannot be placed"},
      {"users", "id,nme\n1,a\n", absl::StatusCode::kInvalidArgument,
       "the header (line 1) names column \"nme\", which table users does not "
       "have; its columns: id, name, note, score, joined"},
      {"users", "ID,name\n1,a\n", absl::StatusCode::kInvalidArgument,
       "names column \"ID\", which table users does not have (did you mean "
       "\"id\"? names are exact)"},
      {"users", "id,name,id\n1,a,1\n", absl::StatusCode::kInvalidArgument,
       "the header (line 1) names column \"id\" twice"},
      {"users", "id,,note\n", absl::StatusCode::kInvalidArgument,
       "the header (line 1): field 2 is empty"},
      {"users", "id,name\n1,\"open\n", absl::StatusCode::kInvalidArgument,
       "line 2: a quoted field in the row that starts here is not closed"},
      {"users", "id,name\n1,a\n\\.\n2,b\n", absl::StatusCode::kInvalidArgument,
       "line 3: a line holding only \\. marks the end of the data"},
      {"nope", "id\n1\n", absl::StatusCode::kNotFound,
       "table \"nope\" is not in the shard map (its tables: users, orders, "
       "tags, countries)"},
      {"orders", "id,user_id\n1,1\n", absl::StatusCode::kNotFound,
       "shard s1: ERROR 42P01: relation \"orders\" does not exist; create "
       "table orders on every shard first"},
  };
  for (const BadInput& c : cases) {
    absl::StatusOr<LoadReport> report = Load(c.table, c.csv);
    ASSERT_FALSE(report.ok()) << c.csv;
    EXPECT_EQ(report.status().code(), c.code) << report.status();
    EXPECT_THAT(report.status().message(), HasSubstr(c.error)) << c.csv;
    ExpectNothingLoaded();
  }
  LoadOptions options;
  options.delimiter = '"';
  absl::StatusOr<LoadReport> report = Load("users", "id\n1\n", options);
  EXPECT_THAT(report.status().message(),
              HasSubstr("the delimiter cannot be the quote character"));
}

TEST_F(LoadTest, ShardDownFailsNamingItAndLoadsNothing) {
  ASSERT_TRUE(shards_->StopShard(2).ok());
  absl::StatusOr<LoadReport> report = Load("users", "id\n1\n2\n3\n4\n5\n6\n");
  ASSERT_TRUE(shards_->StartShard(2).ok());
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(report.status().message(), HasSubstr("shard s3 ("));
  EXPECT_THAT(report.status().message(), HasSubstr("is unreachable"));
  EXPECT_THAT(report.status().message(), HasSubstr("nothing was loaded"));
  ExpectNothingLoaded();
}

TEST_F(LoadTest, DeferredConstraintsAreCheckedBeforeAnyCommit) {
  // s3 only: a deferred unique constraint on countries.name.
  ASSERT_TRUE(shards_->Query(2, "ALTER TABLE countries ADD CONSTRAINT "
                                "uniq_name UNIQUE (name) DEFERRABLE "
                                "INITIALLY DEFERRED").ok());
  absl::StatusOr<LoadReport> report =
      Load("countries", "code,name\nat,same\nch,same\n");
  ASSERT_TRUE(shards_->Query(2, "ALTER TABLE countries DROP CONSTRAINT "
                                "uniq_name").ok());
  ASSERT_FALSE(report.ok());
  EXPECT_THAT(report.status().message(),
              HasSubstr("shard s3: ERROR 23505: duplicate key value violates "
                        "unique constraint \"uniq_name\""));
  EXPECT_THAT(report.status().message(), HasSubstr("nothing was loaded"));
  ExpectNothingLoaded();
}

TEST_F(LoadTest, ShardctlLoadsAFile) {
  const std::string path = shards_->cluster().dir + "/users.csv";
  std::ofstream(path) << "id,name\n1,\"a, b\"\n2,\"c\nd\"\n3,\n4,x\n5,y\n6,z\n";
  CommandOutput r =
      Shardctl({"load", "-c", config_path_, "users", "--csv", path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  std::vector<std::string> parts;
  for (int i = 0; i < 3; ++i) {
    parts.push_back(absl::StrCat("s", i + 1, " ", Count(i, "users")));
  }
  EXPECT_EQ(r.out, "loaded 6 rows: " + absl::StrJoin(parts, ", ") + "\n");
  ExpectUsersPlaced({{1, {"a, b", std::nullopt, std::nullopt}},
                     {2, {"c\nd", std::nullopt, std::nullopt}},
                     {3, {std::nullopt, std::nullopt, std::nullopt}},
                     {4, {"x", std::nullopt, std::nullopt}},
                     {5, {"y", std::nullopt, std::nullopt}},
                     {6, {"z", std::nullopt, std::nullopt}}});
}

TEST_F(LoadTest, ShardctlLoadsStdin) {
  CommandOutput r = Shardctl(
      {"load", "-c", config_path_, "countries", "--format", "json"},
      "code,name\nde,Germany\nfr,France\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "{\"table\":\"countries\",\"rows\":2,\"columns\":[\"code\","
            "\"name\"],\"shards\":[{\"shard\":\"s1\",\"rows\":2},{\"shard\":"
            "\"s2\",\"rows\":2},{\"shard\":\"s3\",\"rows\":2}]}\n");

  // --columns: no header; "-" is stdin too; a tab delimiter.
  r = Shardctl({"load", "-c", config_path_, "tags", "--csv", "-", "--columns",
                "info,name", "--delimiter", "tab"},
               "first\tk1\nsecond\tk2\n");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("loaded 2 rows: s1 "));
  int64_t tags = 0;
  for (int i = 0; i < 3; ++i) tags += Count(i, "tags");
  EXPECT_EQ(tags, 2);
}

TEST_F(LoadTest, ShardctlFailureIsOneLineAndExitOne) {
  CommandOutput r = Shardctl({"load", "-c", config_path_, "users"},
                             "id,score\n1,1\n2,\"bad\nvalue\"\n3,3\n");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat(
                         "shardctl: shard s", OwnerOf(Key::Integer(2), "users") + 1,
                         ": ERROR 22P02: invalid input syntax for type integer")));
  EXPECT_THAT(r.err, HasSubstr("(CSV line 3); nothing was loaded"));
  ExpectNothingLoaded();

  r = Shardctl({"load", "-c", config_path_, "users", "--csv",
                "/nonexistent/file.csv"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.err,
            "shardctl: cannot read /nonexistent/file.csv: No such file or "
            "directory\n");
}

}  // namespace
}  // namespace shardkit
