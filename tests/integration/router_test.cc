// The router against real PostgreSQL: the same data in one plain database
// (the oracle) and spread over three shards must answer alike.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "shardkit/cluster.h"
#include "shardkit/transaction.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::HasSubstr;

constexpr char kSchema[] =
    "CREATE TABLE users (id int8 PRIMARY KEY, name text, country text, "
    "score int4);"
    "CREATE TABLE orders (id int8, user_id int8, amount numeric(10,2), "
    "note text, PRIMARY KEY (user_id, id));"
    "CREATE TABLE events (id int8 PRIMARY KEY, kind text);"
    "CREATE TABLE countries (code text PRIMARY KEY, name text)";

constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2", "s3"]
[distributions.events]
strategy = "range"
key_type = "int8"
slices = [ { to = 100, shard = "s1" }, { from = 100, to = 200, shard = "s2" },
           { from = 200, shard = "s3" } ]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
[tables.events]
distribution = "events"
key = "id"
[tables.countries]
reference = true
[timeouts]
connect = "2s"
)";

using Rows = std::vector<std::vector<std::string>>;

class RouterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shards = testing::TestCluster::Start(3);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = shards->release();
    auto oracle = testing::TestCluster::Start(1);
    ASSERT_TRUE(oracle.ok()) << oracle.status();
    oracle_ = oracle->release();
    auto cluster = Cluster::OpenFile(shards_->WriteConfig("router.toml", kMapBody));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    Load();
  }

  static void TearDownTestSuite() {
    delete cluster_;
    delete shards_;
    delete oracle_;
  }

  // The same statements through the router and on the oracle.
  static void Both(const std::string& sql, const std::vector<Param>& params = {}) {
    absl::StatusOr<Result> routed = cluster_->Execute(sql, params);
    ASSERT_TRUE(routed.ok()) << sql << ": " << routed.status();
    std::string literal = sql;
    for (size_t i = params.size(); i >= 1; --i) {
      const std::string value = params[i - 1] ? "'" + *params[i - 1] + "'" : "NULL";
      size_t at;
      while ((at = literal.find("$" + std::to_string(i))) != std::string::npos) {
        literal.replace(at, std::to_string(i).size() + 1, value);
      }
    }
    ASSERT_TRUE(oracle_->Query(0, literal).ok()) << literal;
  }

  static void Load() {
    for (const char* ddl : {kSchema}) {
      ASSERT_TRUE(oracle_->Query(0, ddl).ok());
    }
    // DDL through the router reaches every shard.
    for (const std::string& ddl :
         {std::string("CREATE TABLE users (id int8 PRIMARY KEY, name text, "
                      "country text, score int4)"),
          std::string("CREATE TABLE orders (id int8, user_id int8, amount "
                      "numeric(10,2), note text, PRIMARY KEY (user_id, id))"),
          std::string("CREATE TABLE events (id int8 PRIMARY KEY, kind text)"),
          std::string("CREATE TABLE countries (code text PRIMARY KEY, name "
                      "text)")}) {
      absl::StatusOr<Result> r = cluster_->Execute(ddl);
      ASSERT_TRUE(r.ok()) << r.status();
    }
    Both("INSERT INTO countries (code, name) VALUES ('de', 'Germany'), "
         "('fr', 'France'), ('us', 'United States')");
    std::vector<std::string> users, orders, events;
    const char* countries[] = {"de", "fr", "us", "jp"};
    for (int id = 1; id <= 60; ++id) {
      users.push_back(absl::StrCat(
          "(", id, ", ", id % 7 == 0 ? "NULL" : absl::StrCat("'user ", id, "'"),
          ", '", countries[id % 4], "', ", id % 5 == 0 ? "NULL" : std::to_string(id * 3 % 17),
          ")"));
      for (int k = 0; k < id % 4; ++k) {
        orders.push_back(absl::StrCat("(", k, ", ", id, ", ", id * 10 + k, ".25, ",
                                      k == 1 ? "NULL" : "'n'", ")"));
      }
    }
    for (int id = 0; id < 300; id += 7) {
      events.push_back(absl::StrCat("(", id, ", 'k", id % 3, "')"));
    }
    Both("INSERT INTO users (id, name, country, score) VALUES " +
         absl::StrJoin(users, ", "));
    Both("INSERT INTO orders (id, user_id, amount, note) VALUES " +
         absl::StrJoin(orders, ", "));
    Both("INSERT INTO events (id, kind) VALUES " + absl::StrJoin(events, ", "));
  }

  // Rows as text ("NULL" for NULL), sorted unless `ordered`.
  static Rows Routed(const std::string& sql, const std::vector<Param>& params,
                     bool ordered) {
    absl::StatusOr<Result> r = cluster_->Execute(sql, params);
    EXPECT_TRUE(r.ok()) << sql << ": " << r.status();
    Rows rows;
    if (!r.ok()) return rows;
    for (const Row& row : r->rows) {
      std::vector<std::string> cells;
      for (const auto& v : row) cells.push_back(v.value_or("NULL"));
      rows.push_back(std::move(cells));
    }
    if (!ordered) std::sort(rows.begin(), rows.end());
    return rows;
  }

  static Rows Oracle(std::string sql, const std::vector<Param>& params,
                     bool ordered) {
    for (size_t i = params.size(); i >= 1; --i) {
      size_t at;
      while ((at = sql.find("$" + std::to_string(i))) != std::string::npos) {
        sql.replace(at, std::to_string(i).size() + 1,
                    params[i - 1] ? "'" + *params[i - 1] + "'" : "NULL");
      }
    }
    absl::StatusOr<Rows> rows = oracle_->Query(0, sql);
    EXPECT_TRUE(rows.ok()) << sql << ": " << rows.status();
    Rows out = rows.value_or(Rows{});
    if (!ordered) std::sort(out.begin(), out.end());
    return out;
  }

  static testing::TestCluster* shards_;
  static testing::TestCluster* oracle_;
  static Cluster* cluster_;
};

testing::TestCluster* RouterTest::shards_ = nullptr;
testing::TestCluster* RouterTest::oracle_ = nullptr;
Cluster* RouterTest::cluster_ = nullptr;

struct Query {
  std::string sql;
  std::vector<Param> params;
  bool ordered = false;  // compare in order (single-shard ORDER BY)
};

TEST_F(RouterTest, AnswersAsOneDatabaseWould) {
  const std::vector<Query> queries = {
      {"SELECT * FROM users"},
      {"SELECT * FROM users WHERE id = 42"},
      {"SELECT * FROM users WHERE id = $1", {"17"}},
      {"SELECT name, score FROM users WHERE id IN (1, 2, 3, 4, 5, 60, 61)"},
      {"SELECT * FROM users WHERE id = ANY($1)", {"{8,9,10,11}"}},
      {"SELECT * FROM users WHERE id = 3 OR id = 33"},
      {"SELECT * FROM users WHERE country = 'fr' AND score > 5"},
      {"SELECT * FROM users WHERE name IS NULL"},
      {"SELECT id, upper(name) FROM users WHERE id BETWEEN 10 AND 20"},
      {"SELECT u.id, u.name, o.id, o.amount FROM users u JOIN orders o ON "
       "o.user_id = u.id"},
      {"SELECT u.id, o.amount FROM users u JOIN orders o ON o.user_id = u.id "
       "WHERE u.id = 39"},
      {"SELECT u.id, o.id FROM users u LEFT JOIN orders o ON o.user_id = u.id "
       "WHERE u.id < 5"},
      {"SELECT u.id, c.name FROM users u JOIN countries c ON c.code = "
       "u.country"},
      {"SELECT u.id, c.name FROM users u LEFT JOIN countries c ON c.code = "
       "u.country WHERE u.id = 12"},
      {"SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE "
       "o.user_id = u.id AND o.amount > 300)"},
      {"SELECT * FROM countries"},
      {"SELECT * FROM events WHERE id < 100"},
      {"SELECT * FROM events WHERE id >= 98 AND id <= 203"},
      {"SELECT * FROM events WHERE id > $1", {"250"}},
      {"SELECT count(*), sum(amount) FROM orders WHERE user_id = 39"},
      {"SELECT * FROM orders WHERE user_id = 38 ORDER BY id DESC LIMIT 2", {},
       true},
      {"SELECT 1 + 1 AS two"},
      // Merged across shards in PostgreSQL's order.
      {"SELECT * FROM users ORDER BY id", {}, true},
      {"SELECT id, name FROM users ORDER BY name, id", {}, true},
      {"SELECT id, name FROM users ORDER BY name DESC NULLS LAST, id DESC", {},
       true},
      {"SELECT id, score FROM users ORDER BY score NULLS FIRST, id", {}, true},
      {"SELECT id, score FROM users ORDER BY 2 DESC, 1 LIMIT 7", {}, true},
      {"SELECT id, country FROM users ORDER BY country COLLATE \"C\", id "
       "OFFSET 50",
       {}, true},
      {"SELECT user_id, id, amount FROM orders ORDER BY amount DESC, user_id, "
       "id LIMIT $1 OFFSET $2",
       {"5", "3"}, true},
      {"SELECT user_id, amount FROM orders ORDER BY amount LIMIT ALL", {}, true},
      {"SELECT id FROM users WHERE country = $1 ORDER BY id OFFSET $2",
       {"de", "4"}, true},
      {"SELECT u.id, u.name, o.amount FROM users u JOIN orders o ON "
       "o.user_id = u.id ORDER BY o.amount DESC, u.id LIMIT 10",
       {}, true},
      {"SELECT * FROM events WHERE id > 50 ORDER BY id DESC LIMIT 3", {}, true},
      {"SELECT id FROM users LIMIT 0"},
      // Aggregates over every shard: partials combined by PostgreSQL.
      {"SELECT count(*) FROM users"},
      {"SELECT count(*), count(name), sum(score), min(name), max(score), "
       "avg(score) FROM users"},
      {"SELECT sum(amount), avg(amount), min(amount), max(amount) FROM orders"},
      {"SELECT count(*) AS n, sum(id) AS total FROM users WHERE country = 'fr'"},
      {"SELECT count(*), sum(id), avg(id), min(id) FROM users WHERE id > 100000"},
      {"SELECT avg(score::float8), sum(score::float4) FROM users"},
      {"SELECT max(u.id), count(o.id) FROM users u JOIN orders o ON "
       "o.user_id = u.id"},
      // GROUP BY: partial groups per shard, combined (and sorted, limited)
      // by PostgreSQL on one shard.
      {"SELECT country, count(*), avg(score), sum(score), min(name), max(id) "
       "FROM users GROUP BY country"},
      {"SELECT count(*) AS n, country FROM users GROUP BY 2 ORDER BY n DESC, "
       "country LIMIT 2",
       {}, true},
      {"SELECT score, count(*) FROM users GROUP BY score ORDER BY score NULLS "
       "FIRST OFFSET $1",
       {"2"}, true},
      {"SELECT u.country, o.note, sum(o.amount) FROM users u JOIN orders o ON "
       "o.user_id = u.id GROUP BY u.country, o.note ORDER BY 1, 2, 3",
       {}, true},
      {"SELECT country, avg(id) FROM users WHERE id < 0 GROUP BY country"},
      // HAVING: its aggregates computed as hidden partials, applied when the
      // partials are combined.
      {"SELECT country, count(*) FROM users GROUP BY country HAVING "
       "count(*) > 14"},
      {"SELECT country, count(*) AS n FROM users GROUP BY country HAVING "
       "avg(score) > 7.5 AND country <> 'jp' ORDER BY n DESC",
       {}, true},
      {"SELECT score FROM users GROUP BY score HAVING sum(id) > $1 AND "
       "max(name) IS NOT NULL ORDER BY 1 NULLS FIRST",
       {"100"}, true},
      {"SELECT count(*) FROM users HAVING count(*) > 1000"},
      {"SELECT country FROM users WHERE id > $1 GROUP BY country HAVING "
       "min(score) < $2 AND max(score) > $2",
       {"3", "10"}},
      // DISTINCT: a GROUP BY of the selected columns.
      {"SELECT DISTINCT country FROM users"},
      {"SELECT DISTINCT score, country FROM users ORDER BY score DESC NULLS "
       "LAST, country LIMIT 6",
       {}, true},
      {"SELECT DISTINCT o.note FROM users u JOIN orders o ON o.user_id = u.id"},
  };
  for (const Query& q : queries) {
    SCOPED_TRACE(q.sql);
    EXPECT_EQ(Routed(q.sql, q.params, q.ordered), Oracle(q.sql, q.params, q.ordered));
  }
}

TEST_F(RouterTest, RowsLandOnTheShardThatOwnsTheirKey) {
  const std::shared_ptr<const ShardMap> map = cluster_->map();
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<Rows> ids = shards_->Query(i, "SELECT id FROM users");
    ASSERT_TRUE(ids.ok()) << ids.status();
    for (const auto& row : *ids) {
      absl::StatusOr<Placement> p =
          map->Place("users", Key::Integer(std::stoll(row[0])));
      ASSERT_TRUE(p.ok());
      EXPECT_EQ(p->shard, static_cast<ShardId>(i)) << "user " << row[0];
    }
    absl::StatusOr<Rows> orphans = shards_->Query(
        i, "SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM "
           "users u WHERE u.id = o.user_id)");
    ASSERT_TRUE(orphans.ok());
    EXPECT_EQ((*orphans)[0][0], "0") << "orders colocated with their users";
    absl::StatusOr<Rows> countries = shards_->Query(i, "SELECT count(*) FROM countries");
    EXPECT_EQ((*countries)[0][0], "3") << "a full copy on every shard";
  }
}

TEST_F(RouterTest, WritesRouteAndReportCounts) {
  absl::StatusOr<Result> insert = cluster_->Execute(
      "INSERT INTO users (id, name) VALUES ($1, $2), ($3, $4), (1003, 'c') "
      "RETURNING id",
      {"1001", "a", "1002", std::nullopt});
  ASSERT_TRUE(insert.ok()) << insert.status();
  EXPECT_EQ(insert->command_tag, "INSERT 0 3");
  EXPECT_EQ(insert->rows.size(), 3u);
  absl::StatusOr<Result> update = cluster_->Execute(
      "UPDATE users SET score = 99 WHERE id IN (1001, 1002, 1003)");
  ASSERT_TRUE(update.ok()) << update.status();
  EXPECT_EQ(update->command_tag, "UPDATE 3");
  EXPECT_EQ(update->rows_affected, 3);
  absl::StatusOr<Result> names = cluster_->Execute(
      "SELECT name FROM users WHERE id = $1", {"1002"});
  ASSERT_TRUE(names.ok());
  ASSERT_EQ(names->rows.size(), 1u);
  EXPECT_EQ(names->rows[0][0], std::nullopt);
  absl::StatusOr<Result> del =
      cluster_->Execute("DELETE FROM users WHERE id >= 1001 AND id <= 1003");
  ASSERT_TRUE(del.ok()) << del.status();
  EXPECT_EQ(del->rows_affected, 3);
  EXPECT_EQ(del->shards.size(), 3u);  // hash keys: a range goes everywhere
  absl::StatusOr<Result> ref = cluster_->Execute(
      "UPDATE countries SET name = name WHERE code = 'de'");
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->command_tag, "UPDATE 1");  // one logical row
  EXPECT_EQ(ref->shards.size(), 3u);
}

TEST_F(RouterTest, ExplicitRoutingRunsWhereTheKeyLives) {
  absl::StatusOr<Result> r = cluster_->ExecuteOnShardOf(
      "users", Key::Integer(42), "SELECT current_setting('port')");
  ASSERT_TRUE(r.ok()) << r.status();
  const ShardId owner = cluster_->map()->Place("users", Key::Integer(42))->shard;
  EXPECT_EQ(r->shards, std::vector<ShardId>{owner});
  EXPECT_EQ(*r->rows[0][0], std::to_string(shards_->cluster().instances[owner].port));
}

TEST_F(RouterTest, RefusalsSayWhy) {
  struct Case {
    std::string sql;
    std::string message;
    std::string sqlstate;
  };
  for (const Case& c : std::vector<Case>{
           {"SELECT * FROM users ORDER BY lower(name)",
            "ORDER BY an expression (select it as a column and order by that "
            "column) over 3 shards needs the shards' rows merged, which the "
            "router does not do yet; narrow the statement to one shard with "
            "a condition on the shard key (users)",
            "0A000"},
           {"SELECT id FROM users ORDER BY name",
            "ORDER BY name across shards needs it in the select list, to "
            "merge the shards' rows by it; add it to the SELECT",
            "0A000"},
           {"SELECT country, string_agg(name, ',') FROM users GROUP BY 1",
            "aggregate string_agg() (across shards the router combines "
            "count, sum, avg, min, max, bool_and, bool_or, every, bit_and, "
            "bit_or and bit_xor, also with DISTINCT or FILTER) over 3 shards "
            "needs the shards' rows merged, which the router does not do "
            "yet; narrow the statement to one shard with a condition on the "
            "shard key (users)",
            "0A000"},
           {"SELECT lower(country) AS c, count(*) FROM users GROUP BY c",
            "GROUP BY c, the name of an output column (it may also name a "
            "table's column, which PostgreSQL would group by; group by the "
            "expression itself, or by its position: GROUP BY 1) over 3 "
            "shards",
            "0A000"},
           {"SELECT DISTINCT ON (country) country, id FROM users",
            "DISTINCT ON without GROUP BY or aggregates (the row it keeps of "
            "each value depends on the rows of every shard) over 3 shards",
            "0A000"},
           {"SELECT count(DISTINCT country ORDER BY country) FROM users",
            "aggregate count(DISTINCT ... ORDER BY ...) (across shards", "0A000"},
           {"SELECT country, percentile_cont(0.5) WITHIN GROUP (ORDER BY "
            "score) FROM users GROUP BY 1",
            "aggregate percentile_cont(... ORDER BY ...) WITHIN GROUP (...) "
            "(across shards",
            "0A000"},
           {"SELECT country, rank() OVER (ORDER BY count(*)) FROM users GROUP "
            "BY 1",
            "window function rank() over 3 shards", "0A000"},
           {"SELECT country, count(*) FROM users GROUP BY CUBE (country)",
            "GROUP BY ROLLUP, CUBE or GROUPING SETS over 3 shards", "0A000"},
           {"SELECT u.*, count(o.id) FROM users u JOIN orders o ON o.user_id "
            "= u.id GROUP BY u.id",
            "* in the select list of an aggregating SELECT (name the columns) "
            "over 3 shards",
            "0A000"},
           {"SELECT country, (SELECT count(*) FROM countries) FROM users "
            "GROUP BY 1",
            "a subquery in the select list, HAVING or ORDER BY of an "
            "aggregating SELECT over 3 shards",
            "0A000"},
           {"SELECT u.id, u.name, count(DISTINCT o.note) FROM users u JOIN "
            "orders o ON o.user_id = u.id GROUP BY u.id",
            "column u.name, neither in GROUP BY nor inside an aggregate, with "
            "an aggregate (DISTINCT ...) (add it to GROUP BY) over 3 shards",
            "0A000"},
           // Refused once the shards' answers show the types.
           {"SELECT country, avg(score::real) FROM users GROUP BY 1",
            "avg() of a real value across shards: PostgreSQL adds up real "
            "values as double precision, which the shards' sums in real would "
            "not match; write avg(x::float8), which PostgreSQL computes the "
            "same way",
            "0A000"},
           {"SELECT ARRAY[country], count(*) FROM users GROUP BY 1",
            "a value of type text[] across shards, grouped by, DISTINCT, or "
            "compared by min or max: the router passes the shards' values to "
            "one shard as arrays, which cannot hold arrays; narrow the "
            "statement to one shard with a condition on the shard key",
            "0A000"},
           {"SELECT * FROM users u JOIN orders o ON o.id = u.id",
            "the join of users and orders is not on their shard keys", "0A000"},
           // USING (id) joins users.id to orders.id, not to its key user_id.
           {"SELECT * FROM users u LEFT JOIN orders o USING (id)",
            "the join of users and orders is not on their shard keys", "0A000"},
           {"SELECT * FROM nope", "table nope is not in the shard map", "42P01"},
           {"SELEC 1", "syntax error at or near \"SELEC\" at position 1", "42601"},
           {"BEGIN", "begin a transaction across shards with Cluster::Begin()",
            "0A000"},
           {"SELECT 1; SELECT 2", "the router runs one statement at a time",
            ""},
           {"UPDATE users SET id = 1 WHERE id = 2",
            "UPDATE changes the shard key users.id", "0A000"},
           {"INSERT INTO users (name) VALUES ('x')",
            "does not give the shard key id", "23502"}}) {
    SCOPED_TRACE(c.sql);
    absl::StatusOr<Result> r = cluster_->Execute(c.sql);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message));
    if (!c.sqlstate.empty()) EXPECT_EQ(SqlStateOf(r.status()), c.sqlstate);
  }
}

// Parameters that do not match the statement's $n are refused before
// anything looks them up (each of these once crashed the router).
TEST_F(RouterTest, ParametersMustMatchTheStatement) {
  struct Case {
    std::string sql;
    std::vector<Param> params;
    std::string message;
    std::string sqlstate;
  };
  for (const Case& c : std::vector<Case>{
           {"INSERT INTO users (id, name) VALUES (1, $1), (2, $1), (3, $1), "
            "(4, $1)",
            {}, "the statement uses $1 but 0 parameters were given", "08P01"},
           {"INSERT INTO users (id, name) VALUES (1, $2), (2, 'b'), (3, 'c'), "
            "(4, 'd')",
            {"a"}, "the statement uses $2 but 1 parameter was given", "08P01"},
           {"SELECT * FROM users WHERE name <> $0 ORDER BY id LIMIT 2 OFFSET 1",
            {"a"}, "there is no parameter $0", "42P02"},
           {"SELECT * FROM users WHERE id = $0", {"1"},
            "there is no parameter $0", "42P02"},
           {"SELECT * FROM users LIMIT $4294967295", {"1"},
            "there is no parameter $-1", "42P02"},
           {"SELECT count(*) FROM users HAVING count(*) > $3", {"1"},
            "the statement uses $3 but 1 parameter was given", "08P01"},
           {"SELECT * FROM users ORDER BY id OFFSET $2", {"1"},
            "the statement uses $2 but 1 parameter was given", "08P01"}}) {
    SCOPED_TRACE(c.sql);
    absl::StatusOr<Result> r = cluster_->Execute(c.sql, c.params);
    ASSERT_FALSE(r.ok());
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(c.message));
    EXPECT_EQ(SqlStateOf(r.status()), c.sqlstate);
  }
}

TEST_F(RouterTest, ShardErrorsNameTheShard) {
  absl::StatusOr<Result> r = cluster_->Execute(
      "INSERT INTO users (id, name) VALUES (42, 'duplicate')");
  ASSERT_FALSE(r.ok());
  const std::string owner =
      cluster_->map()->shard(cluster_->map()->Place("users", Key::Integer(42))->shard).name;
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("shard " + owner + ": ERROR 23505: duplicate key value"));
  EXPECT_EQ(SqlStateOf(r.status()), "23505");
}

TEST_F(RouterTest, PlansAreCachedByStatementText) {
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(cluster_->Execute("SELECT name FROM users WHERE id = $1",
                                  {std::to_string(i + 1)})
                    .ok());
  }
  // Different parameters, one plan: the same text returns the same rows as
  // a fresh cluster would (the cache holds no parameter values).
  absl::StatusOr<Result> a =
      cluster_->Execute("SELECT name FROM users WHERE id = $1", {"3"});
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->rows[0][0], "user 3");
}

TEST_F(RouterTest, ShardctlSqlCsvIsWhatPsqlPrints) {
  const std::string config = shards_->WriteConfig("router_cli.toml", kMapBody);
  const ShardId owner = cluster_->map()->Place("users", Key::Integer(21))->shard;
  for (const std::string& sql :
       {std::string("SELECT id, name, country, score, NULL AS n, '' AS e, "
                    "'a,\"b\"' AS q, E'x\\ny' AS nl FROM users WHERE id = 21"),
        std::string("SELECT * FROM orders WHERE user_id = 21 ORDER BY id")}) {
    SCOPED_TRACE(sql);
    testing::CommandOutput ours = testing::RunCommand(
        {SHARDCTL_PATH, "sql", "-c", config, "-e", sql, "--format", "csv"});
    ASSERT_EQ(ours.exit_code, 0) << ours.err;
    testing::CommandOutput psql = testing::RunCommand(
        {"psql", "-X", "--csv", "-c", sql, shards_->dsn(owner)});
    ASSERT_EQ(psql.exit_code, 0) << psql.err;
    EXPECT_EQ(ours.out, psql.out);
  }
}

TEST_F(RouterTest, ShardctlSqlStdinReportsEachStatement) {
  const std::string config = shards_->WriteConfig("router_stdin.toml", kMapBody);
  testing::CommandOutput r = testing::RunCommand(
      {SHARDCTL_PATH, "sql", "-c", config, "--stdin", "--format", "csv"},
      "INSERT INTO users (id, name) VALUES (2001, 'x'), (2002, 'y')\n"
      "SELECT name FROM users WHERE id = 2001\n"
      "\n"
      "SELECT * FROM nope\n"
      "DELETE FROM users WHERE id IN (2001, 2002)\n");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "OK 2\n"
            "name\nx\nOK 1\n"
            "ERROR 42P01 table nope is not in the shard map; add it to "
            "[tables] (sharded, with its distribution and key, or reference "
            "= true), or name a shard for unmapped tables with [router] "
            "default_shard\n"
            "OK 2\n");
}

TEST_F(RouterTest, ShardctlSqlErrorExitsNonZero) {
  const std::string config = shards_->WriteConfig("router_err.toml", kMapBody);
  testing::CommandOutput r = testing::RunCommand(
      {SHARDCTL_PATH, "sql", "-c", config, "-e",
       "SELECT country, string_agg(name, ',') FROM users GROUP BY 1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(r.out, "");
  EXPECT_THAT(r.err,
              HasSubstr("shardctl: ERROR 0A000: aggregate string_agg() (across "
                        "shards the router combines"));
  testing::CommandOutput p = testing::RunCommand(
      {SHARDCTL_PATH, "sql", "-c", config, "-e",
       "SELECT name FROM users WHERE id = $1", "-p", "5", "--format", "json"});
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(p.out,
            "{\"command\":\"SELECT 1\",\"rows_affected\":1,\"columns\":[{\"name\":"
            "\"name\",\"type_oid\":25}],\"rows\":[[\"user 5\"]]}\n");
}

TEST_F(RouterTest, ADownShardFailsTheStatementNamingIt) {
  const ShardId owner = cluster_->map()->Place("users", Key::Integer(5))->shard;
  ASSERT_TRUE(shards_->StopShard(owner).ok());
  absl::StatusOr<Result> r = cluster_->Execute("SELECT * FROM users WHERE id = 5");
  absl::StatusOr<Result> all = cluster_->Execute("SELECT * FROM users");
  ASSERT_TRUE(shards_->StartShard(owner).ok());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  const std::string name = cluster_->map()->shard(owner).name;
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("shard " + name));
  ASSERT_FALSE(all.ok());  // no silent partial result
  EXPECT_THAT(std::string(all.status().message()), HasSubstr("shard " + name));
}

}  // namespace
}  // namespace shardkit

namespace shardkit {
namespace {

TEST_F(RouterTest, ColumnCollationsDecideTheMergeOrder) {
  // A column of its own, non-libc collation: the router cannot reproduce
  // its order, so it says so instead of merging wrongly.
  Both("ALTER TABLE users ADD COLUMN label text COLLATE \"und-x-icu\"");
  Both("UPDATE users SET label = name");
  absl::StatusOr<Result> r =
      cluster_->Execute("SELECT id, label FROM users ORDER BY label");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "ORDER BY label across shards: the column sorts by collation "
            "\"und-x-icu\", which is not a libc collation the router can "
            "reproduce; add COLLATE \"C\" (or a libc collation) to the ORDER "
            "BY, or narrow the statement to one shard");
  const std::string sql =
      "SELECT id, label FROM users ORDER BY label COLLATE \"C\", id";
  EXPECT_EQ(Routed(sql, {}, true), Oracle(sql, {}, true));
}

}  // namespace
}  // namespace shardkit

namespace shardkit {
namespace {

// One Cluster serves many threads at once: point reads, cross-shard merges
// and writes interleave, and every answer is the one a lone caller gets.
TEST_F(RouterTest, ManyThreadsShareOneCluster) {
  constexpr int kThreads = 8;
  constexpr int kRounds = 40;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &failures] {
      for (int i = 0; i < kRounds; ++i) {
        const int64_t id = 5000 + t * kRounds + i;
        const std::string key = std::to_string(id);
        auto insert = cluster_->Execute(
            "INSERT INTO users (id, name) VALUES ($1, $2)", {key, "t" + key});
        auto read = cluster_->Execute("SELECT name FROM users WHERE id = $1", {key});
        auto top = cluster_->Execute("SELECT id FROM users ORDER BY id LIMIT 3");
        auto count = cluster_->Execute(
            "SELECT count(*) FROM users WHERE id >= 5000 AND id < 6000");
        if (!insert.ok() || !read.ok() || read->rows.size() != 1 ||
            read->rows[0][0] != "t" + key || !top.ok() || top->rows.size() != 3 ||
            top->rows[0][0] != "1" || !count.ok()) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  auto count = cluster_->Execute(
      "SELECT count(*) FROM users WHERE id >= 5000 AND id < 6000");
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(count->rows[0][0], std::to_string(kThreads * kRounds));
  ASSERT_TRUE(cluster_->Execute("DELETE FROM users WHERE id >= 5000 AND id < 6000").ok());
}

}  // namespace
}  // namespace shardkit

namespace shardkit {
namespace {

// count(DISTINCT ...) and the other DISTINCT aggregates across shards: each
// shard groups by the argument too, and the combining shard takes the
// aggregate of the distinct values; NULLs in the argument, groups whose
// values are all NULL or all filtered out, and no rows at all.
TEST_F(RouterTest, DistinctAggregatesAnswerAsOneDatabaseWould) {
  const std::vector<Query> queries = {
      {"SELECT count(DISTINCT country) FROM users"},
      {"SELECT count(DISTINCT name), count(name), count(*) FROM users"},
      {"SELECT country, count(*), count(DISTINCT name) FROM users GROUP BY "
       "country"},
      {"SELECT country, count(DISTINCT score), sum(DISTINCT score), "
       "avg(DISTINCT score), min(DISTINCT score), max(score), avg(score) FROM "
       "users GROUP BY country ORDER BY country",
       {}, true},
      {"SELECT count(DISTINCT score) FILTER (WHERE id > 30), sum(score) "
       "FILTER (WHERE country = 'fr'), avg(id) FILTER (WHERE score IS NULL) "
       "FROM users"},
      {"SELECT country, count(*) FROM users GROUP BY country HAVING "
       "count(DISTINCT name) > 12"},
      {"SELECT country FROM users GROUP BY country HAVING count(DISTINCT "
       "score) < $1 ORDER BY count(DISTINCT score) DESC, 1",
       {"13"}, true},
      // All of a group's values NULL, or filtered out: 0 and NULL.
      {"SELECT id % 7 = 0 AS unnamed, count(DISTINCT name), sum(DISTINCT "
       "length(name)), min(name), count(*) FROM users GROUP BY 1"},
      {"SELECT country, count(DISTINCT name) FILTER (WHERE score > 100), "
       "avg(DISTINCT score) FILTER (WHERE score > 100) FROM users GROUP BY "
       "country"},
      // No rows at all: one row without GROUP BY, none with.
      {"SELECT count(DISTINCT name), sum(DISTINCT score), avg(DISTINCT "
       "score), count(*), sum(score) FROM users WHERE id > 100000"},
      {"SELECT country, count(DISTINCT name) FROM users WHERE id > 100000 "
       "GROUP BY country"},
      {"SELECT u.country, count(DISTINCT o.note), count(o.id), sum(o.amount), "
       "avg(DISTINCT o.amount) FROM users u JOIN orders o ON o.user_id = u.id "
       "GROUP BY u.country"},
      {"SELECT avg(DISTINCT amount), sum(DISTINCT amount), count(DISTINCT "
       "user_id) FROM orders"},
      {"SELECT count(DISTINCT lower(name)), count(DISTINCT id % 10), "
       "sum(DISTINCT id % 10), avg(DISTINCT score::float8) FROM users"},
      {"SELECT country, bool_and(score > 2), bool_or(name IS NULL), every(id "
       "> 0), bit_or(score), bit_and(id), bit_xor(id), bit_xor(DISTINCT "
       "score % 4) FROM users GROUP BY country"},
      {"SELECT DISTINCT count(DISTINCT name) FROM users GROUP BY country"},
  };
  for (const Query& q : queries) {
    SCOPED_TRACE(q.sql);
    EXPECT_EQ(Routed(q.sql, q.params, q.ordered), Oracle(q.sql, q.params, q.ordered));
  }
}

// GROUP BY expressions (written out or by position), expressions of the
// grouped values and of aggregates, ORDER BY aggregates that are not
// selected, columns that depend on a grouped primary key.
TEST_F(RouterTest, GroupingExpressionsAnswerAsOneDatabaseWould) {
  const std::vector<Query> queries = {
      {"SELECT lower(country), count(*) FROM users GROUP BY lower(country)"},
      {"SELECT upper(country) AS c, count(*), sum(score) FROM users GROUP BY "
       "1 ORDER BY 1",
       {}, true},
      {"SELECT id % 3, count(*), avg(score) FROM users GROUP BY id % 3 ORDER "
       "BY id % 3",
       {}, true},
      {"SELECT date_trunc('month', timestamp '2024-01-01' + id * interval '9 "
       "days') AS m, count(*), min(id) FROM users GROUP BY 1 ORDER BY 1",
       {}, true},
      {"SELECT date_trunc('month', timestamp '2024-01-01' + id * interval '9 "
       "days'), count(DISTINCT country) FROM users GROUP BY date_trunc("
       "'month', timestamp '2024-01-01' + id * interval '9 days')"},
      {"SELECT country || '!' AS c, count(*) * 2, max(id) - min(id) FROM "
       "users GROUP BY country"},
      {"SELECT count(*), sum(score) FROM users GROUP BY score IS NULL"},
      {"SELECT score % 4, count(*), count(score) FROM users GROUP BY 1"},
      {"SELECT id % $1::int, count(*) FROM users GROUP BY 1", {"4"}},
      {"SELECT u.country, count(*) FROM users u GROUP BY country"},
      {"SELECT u.id, u.name, count(o.id), sum(o.amount) FROM users u JOIN "
       "orders o ON o.user_id = u.id GROUP BY u.id ORDER BY u.id LIMIT 10",
       {}, true},
      {"SELECT country, round(avg(score), 2), sum(score) / count(*), "
       "count(*) + $1, coalesce(max(name), '-') FROM users GROUP BY country",
       {"100"}},
      {"SELECT country FROM users GROUP BY country HAVING sum(score) / "
       "count(*) > 6 AND lower(country) <> 'jp'"},
      {"SELECT DISTINCT count(*) FROM users GROUP BY country"},
      {"SELECT DISTINCT ON (score IS NULL) score IS NULL, country, count(*) "
       "FROM users GROUP BY score IS NULL, country ORDER BY score IS NULL, "
       "count(*) DESC, country",
       {}, true},
      {"SELECT lower(name), count(*) FROM users WHERE id < 0 GROUP BY 1"},
      // ORDER BY an aggregate or expression the select list does not have.
      {"SELECT country FROM users GROUP BY country ORDER BY count(*) DESC, "
       "sum(score), country",
       {}, true},
      {"SELECT country, sum(score) FROM users GROUP BY country ORDER BY "
       "sum(score) / count(*) DESC, country",
       {}, true},
      {"SELECT score, count(*) FROM users GROUP BY score ORDER BY avg(id) "
       "DESC NULLS LAST, score LIMIT 5",
       {}, true},
      {"SELECT lower(country) AS c, count(*) FROM users GROUP BY 1 ORDER BY "
       "max(name) DESC",
       {}, true},
      {"SELECT country, count(*) FROM users GROUP BY country ORDER BY "
       "count(*), country FETCH FIRST 1 ROWS WITH TIES",
       {}, true},
      {"SELECT score % 5 AS s, count(*) FROM users GROUP BY 1 ORDER BY 2 "
       "DESC, 1 NULLS FIRST LIMIT $1 OFFSET $2",
       {"3", "1"}, true},
      {"SELECT count(*) FROM users ORDER BY count(*)"},
      {"SELECT max(id) FROM users HAVING count(*) > $1", {"10"}},
  };
  for (const Query& q : queries) {
    SCOPED_TRACE(q.sql);
    EXPECT_EQ(Routed(q.sql, q.params, q.ordered), Oracle(q.sql, q.params, q.ordered));
  }
}

// The combining shard names and types the result's columns as PostgreSQL
// names and types the statement's on one shard.
TEST_F(RouterTest, CombinedColumnsHaveTheirOwnNamesAndTypes) {
  const std::string sql =
      "SELECT lower(country), count(*), count(DISTINCT name), sum(score), "
      "avg(score), sum(id), max(name), country || 'x', score::text, CASE "
      "WHEN count(*) > 1 THEN 'many' END, coalesce(max(name), '-'), "
      "sum(score) / count(*), 1, sum(DISTINCT score::int2), avg(score::float8), "
      "bool_or(score > 3), min(score::numeric(10,2)) AS m FROM users GROUP BY "
      "lower(country), country, score";
  absl::StatusOr<Result> routed = cluster_->Execute(sql);
  ASSERT_TRUE(routed.ok()) << routed.status();
  EXPECT_EQ(routed->shards.size(), 3u);
  absl::StatusOr<Result> one = cluster_->ExecuteOnShardOf("users", Key::Integer(1), sql);
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(routed->columns.size(), one->columns.size());
  for (size_t i = 0; i < one->columns.size(); ++i) {
    EXPECT_EQ(routed->columns[i].name, one->columns[i].name) << i;
    EXPECT_EQ(routed->columns[i].type_oid, one->columns[i].type_oid) << i;
  }
  EXPECT_EQ(Routed(sql, {}, false), Oracle(sql, {}, false));
}

// Inside a transaction the shards' partial statements, the combining one
// and the collations asked for run on the transaction's connections, and
// see its writes.
TEST_F(RouterTest, AggregatesInsideATransactionSeeItsWrites) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok()) << txn.status();
  ASSERT_TRUE((*txn)->Execute("INSERT INTO users (id, name, country) VALUES "
                              "(7001, 'tx a', 'zz'), (7002, 'tx b', 'zz'), "
                              "(7003, 'tx a', 'zz'), (7004, NULL, 'zz')")
                  .ok());
  absl::StatusOr<Result> with_params = (*txn)->Execute(
      "SELECT country, count(*), count(DISTINCT name), max(name) FROM users "
      "WHERE country = $1 GROUP BY country",
      {"zz"});
  ASSERT_TRUE(with_params.ok()) << with_params.status();
  EXPECT_EQ(with_params->shards.size(), 3u);
  ASSERT_EQ(with_params->rows.size(), 1u);
  EXPECT_EQ(with_params->rows[0],
            (Row{"zz", "4", "2", "tx b"}));
  absl::StatusOr<Result> without = (*txn)->Execute(
      "SELECT lower(name), count(*) FROM users WHERE country = 'zz' GROUP BY "
      "1 ORDER BY 1 NULLS FIRST");
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(without->rows, (std::vector<Row>{{std::nullopt, "1"},
                                             {"tx a", "2"},
                                             {"tx b", "1"}}));
  EXPECT_TRUE((*txn)->Rollback().ok());
  absl::StatusOr<Result> after = cluster_->Execute(
      "SELECT count(DISTINCT name) FROM users WHERE country = 'zz'");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->rows, (std::vector<Row>{{"0"}}));
}

// Values the combining shard groups, sorts and compares keep the collation
// they have on the shards: a column's own (ICU, unlike the database's
// "C"), a non-deterministic one that makes 'a' equal to 'A', and COLLATE.
TEST_F(RouterTest, CombinedValuesKeepTheirCollation) {
  const std::string ci =
      "CREATE COLLATION shardkit_ci (provider = icu, locale = "
      "'und-u-ks-level2', deterministic = false)";
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(shards_->Query(i, ci).ok());
  ASSERT_TRUE(oracle_->Query(0, ci).ok());
  Both("ALTER TABLE users ADD COLUMN tag text COLLATE \"und-x-icu\", ADD "
       "COLUMN ci text COLLATE shardkit_ci");
  Both("UPDATE users SET tag = CASE id % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'B' "
       "ELSE 'b' END || id % 2, ci = CASE id % 2 WHEN 0 THEN 'x' ELSE 'X' END "
       "|| id % 3");
  const std::vector<Query> queries = {
      {"SELECT tag, count(*) FROM users GROUP BY tag ORDER BY tag", {}, true},
      {"SELECT lower(tag) AS t, min(tag), max(tag) FROM users GROUP BY 1 "
       "ORDER BY 1 DESC",
       {}, true},
      {"SELECT min(tag), max(tag), count(DISTINCT tag) FROM users"},
      {"SELECT country, min(tag) FROM users GROUP BY country ORDER BY 2, 1",
       {}, true},
      {"SELECT tag COLLATE \"C\" AS t, count(*) FROM users GROUP BY 1 ORDER "
       "BY 1",
       {}, true},
      {"SELECT DISTINCT tag FROM users ORDER BY tag LIMIT 3", {}, true},
      // Non-deterministic: 'x1' and 'X1' are one value.
      {"SELECT count(DISTINCT ci), count(DISTINCT ci COLLATE \"C\") FROM users"},
      {"SELECT count(*) FROM users GROUP BY ci ORDER BY 1", {}, true},
  };
  for (const Query& q : queries) {
    SCOPED_TRACE(q.sql);
    EXPECT_EQ(Routed(q.sql, q.params, q.ordered), Oracle(q.sql, q.params, q.ordered));
  }
  Both("ALTER TABLE users DROP COLUMN tag, DROP COLUMN ci");
}

}  // namespace
}  // namespace shardkit
