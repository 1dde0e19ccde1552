// Routing as data: SQL (and parameters) in, target shards or the refusal out.

#include "router/analyzer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <set>
#include <string>
#include <string_view>

#include "router/parser_thread.h"
#include "router/sql_parser.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"

namespace shardkit::internal {
namespace {

using ::testing::HasSubstr;

constexpr char kMap[] = R"(
[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
[shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"
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
)";

const ShardMap& Map() {
  static const Config* config = [] {
    absl::StatusOr<Config> c = ParseConfig(kMap, "analyzer_test.toml");
    if (!c.ok()) {
      std::cerr << c.status() << "\n";
      std::abort();
    }
    return new Config(*std::move(c));
  }();
  return config->map;
}

absl::StatusOr<RoutingPlan> Plan(const std::string& sql) {
  absl::StatusOr<RoutingPlan> plan = absl::InternalError("not run");
  ParserThread::Default().Run([&] {
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    if (!parsed.ok()) {
      plan = parsed.status();
      return;
    }
    plan = AnalyzeStatement(*parsed->statement(0), Map());
  });
  return plan;
}

// Shard names the statement runs on, or "error: <message>".
std::string Route(const std::string& sql, const Params& params = {}) {
  absl::StatusOr<RoutingPlan> plan = Plan(sql);
  if (!plan.ok()) return "error: " + std::string(plan.status().message());
  absl::StatusOr<std::vector<ShardId>> ids =
      plan->kind == StatementKind::kInsert && plan->distribution != nullptr
          ? InsertRowShards(*plan, params)
          : TargetShards(*plan, Map(), params);
  if (!ids.ok()) return "error: " + std::string(ids.status().message());
  std::set<std::string> names;
  for (ShardId id : *ids) names.insert(Map().shard(id).name);
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ",") + n;
  return out;
}

// The owners of users' keys, by the map itself (lookups are tested in
// shard_map_test); e.g. Owners({1, 2}) == "s1,s3".
std::string Owners(std::initializer_list<int64_t> keys) {
  std::set<std::string> names;
  for (int64_t k : keys) {
    names.insert(Map().shard(Map().Place("users", Key::Integer(k))->shard).name);
  }
  std::string out;
  for (const std::string& n : names) out += (out.empty() ? "" : ",") + n;
  return out;
}

TEST(AnalyzerTest, PointAndListPredicatesNarrowHashTargets) {
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = 42"), Owners({42}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE 42 = id"), Owners({42}));
  EXPECT_EQ(Route("SELECT * FROM users u WHERE u.id = $1", {"7"}), Owners({7}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = $1::int8", {"7"}), Owners({7}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id IN (1, 2, 3)"), Owners({1, 2, 3}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = ANY($1)", {"{5,6}"}),
            Owners({5, 6}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = ANY(ARRAY[9, 10])"),
            Owners({9, 10}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = 42 AND name = 'x'"), Owners({42}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = 1 OR id = 2"), Owners({1, 2}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE (id = 1 OR id = 2) AND id = 2"),
            Owners({2}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = '42'"), Owners({42}));
}

TEST(AnalyzerTest, AnythingElseGoesEverywhere) {
  for (const char* sql :
       {"SELECT * FROM users", "SELECT * FROM users WHERE name = 'x'",
        "SELECT * FROM users WHERE id = 1 OR name = 'x'",
        "SELECT * FROM users WHERE NOT (id = 1)",
        "SELECT * FROM users WHERE id <> 1",
        "SELECT * FROM users WHERE id > 10",  // hash: no order
        "SELECT * FROM users WHERE id = 5.0",  // still compared as numeric
        "SELECT * FROM users WHERE id + 0 = 5"}) {
    EXPECT_EQ(Route(sql), "s1,s2,s3") << sql;
  }
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = ANY($1)", {"not an array"}),
            "s1,s2,s3");
}

TEST(AnalyzerTest, NullKeysMatchNothingButOneShardStillAnswers) {
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = NULL"), "s1");
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = $1", {std::nullopt}), "s1");
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = 1 AND id = 2"),
            Owners({1}) == Owners({2}) ? Owners({1}) : "s1");
}

TEST(AnalyzerTest, RangeDistributionsUseOrder) {
  EXPECT_EQ(Route("SELECT * FROM events WHERE id < 100"), "s1");
  EXPECT_EQ(Route("SELECT * FROM events WHERE id <= 100"), "s1,s2");
  EXPECT_EQ(Route("SELECT * FROM events WHERE 150 < id"), "s2,s3");
  EXPECT_EQ(Route("SELECT * FROM events WHERE id BETWEEN 120 AND 180"), "s2");
  EXPECT_EQ(Route("SELECT * FROM events WHERE id >= $1 AND id < $2",
                  {"100", "200"}),
            "s2");
  EXPECT_EQ(Route("SELECT * FROM events WHERE id = 250"), "s3");
  // Beyond int8: past every key (no shard matches; the first answers).
  EXPECT_EQ(Route("SELECT * FROM events WHERE id > 99999999999999999999"), "s1");
  EXPECT_EQ(Route("SELECT * FROM events WHERE id < 99999999999999999999"),
            "s1,s2,s3");
  EXPECT_EQ(Route("SELECT * FROM events WHERE id > -99999999999999999999 AND "
                  "id < 50"),
            "s1");
}

TEST(AnalyzerTest, ColocatedJoinsAndReferenceTables) {
  EXPECT_EQ(Route("SELECT * FROM users u JOIN orders o ON o.user_id = u.id "
                  "WHERE u.id = 42"),
            Owners({42}));
  EXPECT_EQ(Route("SELECT * FROM users u JOIN orders o ON o.user_id = u.id "
                  "WHERE o.user_id = 42"),
            Owners({42}));
  EXPECT_EQ(Route("SELECT * FROM users u, orders o WHERE o.user_id = u.id"),
            "s1,s2,s3");
  EXPECT_EQ(Route("SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id"),
            "s1,s2,s3");
  EXPECT_EQ(Route("SELECT * FROM users u JOIN countries c ON c.code = u.country "
                  "WHERE u.id = 3"),
            Owners({3}));
  EXPECT_EQ(Route("SELECT * FROM users WHERE EXISTS (SELECT 1 FROM orders o "
                  "WHERE o.user_id = users.id)"),
            "s1,s2,s3");
  // A CTE over a sharded table is a subquery: one shard only, for now.
  EXPECT_THAT(Route("WITH big AS (SELECT * FROM users WHERE id = 8) "
                    "SELECT * FROM big"),
              HasSubstr("error: the subquery over users is not tied to the "
                        "outer query by the shard key"));
  EXPECT_EQ(Route("WITH one AS (SELECT * FROM users WHERE id = 8) "
                  "SELECT * FROM one, users u WHERE u.id = 8 AND one.id = u.id"),
            Owners({8}));
  EXPECT_EQ(Route("SELECT * FROM countries"), "s1");
  EXPECT_EQ(Route("SELECT 1"), "s1");
}

TEST(AnalyzerTest, Refusals) {
  EXPECT_EQ(Route("SELECT * FROM nope"),
            "error: table nope is not in the shard map; add it to [tables] "
            "(sharded, with its distribution and key, or reference = true), "
            "or name a shard for unmapped tables with [router] default_shard");
  EXPECT_EQ(Route("SELECT * FROM users u JOIN orders o ON o.id = u.id"),
            "error: the join of users and orders is not on their shard keys, "
            "so matching rows may sit on different shards; join on u.id = "
            "o.user_id");
  EXPECT_EQ(Route("SELECT * FROM users u JOIN events e ON e.id = u.id"),
            "error: tables users (distribution users) and events "
            "(distribution events) are placed by different distributions, so "
            "their rows do not meet on one shard; query them separately, or "
            "put both tables in one distribution");
  EXPECT_THAT(Route("SELECT * FROM users WHERE id IN (SELECT user_id FROM "
                    "orders WHERE total > 5)"),
              HasSubstr("error: the subquery over orders is not tied to the "
                        "outer query by the shard key (user_id)"));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = 1 AND id IN (SELECT user_id "
                  "FROM orders)"),
            Owners({1}));  // one shard: correct there
  EXPECT_EQ(Route("UPDATE users SET id = 5 WHERE id = 4"),
            "error: UPDATE changes the shard key users.id, which would move "
            "the row to another shard; delete the row and insert it with its "
            "new key instead");
  EXPECT_THAT(Route("INSERT INTO users (id) VALUES (1) ON CONFLICT (id) DO "
                    "UPDATE SET id = 2"),
              HasSubstr("error: INSERT ... ON CONFLICT DO UPDATE changes the "
                        "shard key users.id"));
  EXPECT_THAT(Route("UPDATE countries SET name = u.name FROM users u"),
              HasSubstr("error: a write to reference table countries that "
                        "reads sharded tables"));
  EXPECT_THAT(Route("SET search_path = x"),
              HasSubstr("error: statements of type variable_set_stmt are not "
                        "routed"));
  EXPECT_THAT(Route("SELECT * FROM users UNION SELECT * FROM users"),
              HasSubstr("error: UNION, INTERSECT and EXCEPT over sharded "
                        "tables run only when every part selects one shard"));
}

TEST(AnalyzerTest, Writes) {
  EXPECT_EQ(Route("UPDATE users SET name = 'x' WHERE id = 9"), Owners({9}));
  EXPECT_EQ(Route("DELETE FROM orders WHERE user_id IN (4, 5) RETURNING *"),
            Owners({4, 5}));
  EXPECT_EQ(Route("UPDATE users SET name = 'x'"), "s1,s2,s3");
  EXPECT_EQ(Route("INSERT INTO countries (code) VALUES ('de')"), "s1,s2,s3");
  EXPECT_EQ(Route("DELETE FROM countries"), "s1,s2,s3");
  EXPECT_EQ(Route("CREATE TABLE users (id int8 PRIMARY KEY)"), "s1,s2,s3");
  EXPECT_EQ(Route("CREATE INDEX ON orders (user_id)"), "s1,s2,s3");
  EXPECT_EQ(Route("DROP TABLE countries"), "s1,s2,s3");
  EXPECT_THAT(Route("CREATE TABLE stray (id int8)"),
              HasSubstr("error: table stray is not in the shard map"));
}

TEST(AnalyzerTest, InsertRowsArePlacedOneByOne) {
  absl::StatusOr<RoutingPlan> plan = Plan(
      "INSERT INTO users (name, id) VALUES ('a', 1), ('b', $1), ('c', 3) "
      "ON CONFLICT (id) DO NOTHING RETURNING id");
  ASSERT_TRUE(plan.ok()) << plan.status();
  absl::StatusOr<std::vector<ShardId>> rows = InsertRowShards(*plan, {"2"});
  ASSERT_TRUE(rows.ok()) << rows.status();
  ASSERT_EQ(rows->size(), 3u);
  for (int64_t k = 1; k <= 3; ++k) {
    EXPECT_EQ((*rows)[k - 1], Map().Place("users", Key::Integer(k))->shard);
  }
  EXPECT_EQ(Route("INSERT INTO users (id) VALUES (NULL)"),
            "error: row 1 of the INSERT INTO users has a NULL shard key id; "
            "every row needs a key");
  EXPECT_EQ(Route("INSERT INTO users (id) VALUES (1), ('x')"),
            "error: row 2 of the INSERT INTO users: invalid int8 value \"x\": "
            "expected a decimal integer");
  EXPECT_EQ(Route("INSERT INTO users (id) VALUES (1 + 1)"),
            "error: row 1 of the INSERT INTO users: the shard key id must be "
            "a constant or a parameter ($n), so that the router can place "
            "the row");
  EXPECT_EQ(Route("INSERT INTO users (name) VALUES ('x')"),
            "error: INSERT INTO users does not give the shard key id; every "
            "row needs one to be placed");
  EXPECT_THAT(Route("INSERT INTO users VALUES (1)"),
              HasSubstr("error: INSERT INTO users must name its columns"));
  EXPECT_THAT(Route("INSERT INTO users (id) SELECT id FROM orders"),
              HasSubstr("error: INSERT INTO users ... SELECT is not routed"));
  EXPECT_EQ(Route("SELECT * FROM users WHERE id = $2", {"1"}),
            "error: the statement uses $2 but 1 parameters were given");
}

// With [router] default_shard, tables not in the map live on that shard.
TEST(AnalyzerTest, UnmappedTablesGoToTheDefaultShard) {
  static const Config* config = [] {
    absl::StatusOr<Config> c = ParseConfig(
        std::string(kMap) + "[router]\ndefault_shard = \"s2\"\n", "t.toml");
    if (!c.ok()) std::abort();
    return new Config(*std::move(c));
  }();
  auto route = [&](const std::string& sql) -> std::string {
    absl::StatusOr<RoutingPlan> plan = absl::InternalError("not run");
    ParserThread::Default().Run([&] {
      absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
      plan = parsed.ok() ? AnalyzeStatement(*parsed->statement(0), config->map)
                         : absl::StatusOr<RoutingPlan>(parsed.status());
    });
    if (!plan.ok()) return "error: " + std::string(plan.status().message());
    absl::StatusOr<std::vector<ShardId>> ids = TargetShards(*plan, config->map, {});
    if (!ids.ok()) return "error: " + std::string(ids.status().message());
    std::string out;
    for (ShardId id : *ids) out += (out.empty() ? "" : ",") + config->map.shard(id).name;
    return out;
  };
  EXPECT_EQ(route("SELECT * FROM settings"), "s2");
  EXPECT_EQ(route("INSERT INTO settings VALUES (1)"), "s2");
  EXPECT_EQ(route("CREATE TABLE settings (k text)"), "s2");
  EXPECT_EQ(route("SELECT * FROM settings s JOIN countries c ON c.code = s.k"), "s2");
  EXPECT_EQ(route("SELECT * FROM users WHERE id = 1"), Owners({1}));
  EXPECT_EQ(route("SELECT * FROM settings, users"),
            "error: table settings is not in the shard map, so it lives on "
            "the default shard s2, while users is spread over shards: one "
            "statement cannot use both; add settings to [tables], or query "
            "them separately");
  EXPECT_THAT(route("INSERT INTO countries (code) SELECT k FROM settings"),
              HasSubstr("error: a write to reference table countries that "
                        "reads settings (on the default shard s2 only)"));
}

TEST(AnalyzerTest, WhatAMultiShardSelectNeeds) {
  absl::StatusOr<RoutingPlan> agg = Plan("SELECT count(*), avg(id) AS a FROM users");
  ASSERT_TRUE(agg.ok());
  EXPECT_EQ(agg->needs_merge, "");
  ASSERT_EQ(agg->aggregates.size(), 2u);
  EXPECT_EQ(agg->aggregates[0].name, "count");
  EXPECT_EQ(agg->aggregates[1].name, "a");
  EXPECT_EQ(agg->aggregates[1].function, AggregateTarget::Function::kAvg);

  absl::StatusOr<RoutingPlan> sorted = Plan(
      "SELECT id, name FROM users ORDER BY name DESC, 1 NULLS FIRST LIMIT $1 OFFSET 5");
  ASSERT_TRUE(sorted.ok());
  EXPECT_EQ(sorted->needs_merge, "");
  ASSERT_EQ(sorted->order_by.size(), 2u);
  EXPECT_EQ(sorted->order_by[0].column, "name");
  EXPECT_TRUE(sorted->order_by[0].descending);
  EXPECT_TRUE(sorted->order_by[0].nulls_first);  // DESC defaults to NULLS FIRST
  EXPECT_EQ(sorted->order_by[1].position, 1);
  EXPECT_TRUE(sorted->order_by[1].nulls_first);
  EXPECT_EQ(sorted->limit->param, 1);
  EXPECT_EQ(sorted->offset->constant, "5");

  for (const auto& [sql, need] : std::vector<std::pair<std::string, std::string>>{
           {"SELECT country, count(*) FROM users GROUP BY country", ""},
           {"SELECT country, count(*) FROM users GROUP BY country HAVING "
            "count(*) > 1",
            ""},
           // Ungrouped columns go to the shards, whose PostgreSQL says
           // whether they depend on the grouped ones.
           {"SELECT country, count(*) FROM users GROUP BY country HAVING "
            "name = 'x'",
            ""},
           {"SELECT name, count(*) FROM users GROUP BY country", ""},
           {"SELECT DISTINCT country FROM users", ""},
           {"SELECT DISTINCT ON (country) country, id FROM users",
            "DISTINCT ON without GROUP BY or aggregates (the row it keeps of "
            "each value depends on the rows of every shard)"},
           {"SELECT DISTINCT country, count(*) FROM users GROUP BY 1", ""},
           {"SELECT count(*) + 1 FROM users", ""},
           {"SELECT sum(id) FILTER (WHERE id > 1) FROM users", ""},
           {"SELECT count(DISTINCT name) FROM users", ""},
           {"SELECT rank() OVER (ORDER BY id) FROM users", "window function rank()"},
           {"SELECT id FROM users ORDER BY id + 1",
            "ORDER BY an expression (select it as a column and order by that "
            "column)"},
           {"SELECT id FROM users ORDER BY id FETCH FIRST 3 ROWS WITH TIES",
            "FETCH FIRST ... WITH TIES"}}) {
    absl::StatusOr<RoutingPlan> plan = Plan(sql);
    ASSERT_TRUE(plan.ok()) << sql << ": " << plan.status();
    EXPECT_EQ(plan->needs_merge, need) << sql;
  }
}

// An aggregating SELECT as data: what each shard runs, and the combining
// statement with its holes shown as <from> and {aggregate over columns}.
struct AggregateCase {
  std::string sql;
  std::string partial;
  std::string combine;
};

std::string CombineText(const AggregatePlan& plan) {
  std::string out = plan.text[0];
  for (size_t i = 0; i < plan.holes.size(); ++i) {
    if (plan.holes[i] == AggregatePlan::kFrom) {
      out += "<from>";
    } else {
      const CombinedAggregate& a = plan.aggregates[plan.holes[i]];
      out += "{" + a.function + (a.distinct ? " DISTINCT" : "");
      for (size_t c : a.columns) out += " p" + std::to_string(c + 1);
      if (a.filter) out += " FILTER p" + std::to_string(*a.filter + 1);
      out += "}";
    }
    out += plan.text[i + 1];
  }
  return out;
}

TEST(AnalyzerTest, AggregatingSelectsArePlannedForShards) {
  for (const AggregateCase& c : std::vector<AggregateCase>{
           {"SELECT count(*) FROM users", "SELECT count(*) FROM users",
            "SELECT {count p1} AS count FROM <from>"},
           // DISTINCT arguments are grouped by on the shards; plain
           // aggregates are partial per finer group, summed again.
           {"SELECT country, count(*), count(DISTINCT name) FROM users "
            "GROUP BY country",
            "SELECT country, count(*), name FROM users GROUP BY 1, 3",
            "SELECT p1 AS country, {count p2} AS count, {count DISTINCT p3} "
            "AS count FROM <from> GROUP BY p1"},
           {"SELECT sum(DISTINCT score) FILTER (WHERE id > 3), avg(DISTINCT "
            "score) FROM users",
            "SELECT score, id > 3 FROM users GROUP BY 1, 2",
            "SELECT {sum DISTINCT p1 FILTER p2} AS sum, {avg DISTINCT p1} AS "
            "avg FROM <from>"},
           // GROUP BY expressions, by position or written out; expressions
           // of them and of aggregates; ORDER BY an aggregate not selected.
           {"SELECT lower(country) AS c, count(*) FROM users WHERE id > $2 "
            "GROUP BY 1 HAVING avg(score) > $1 ORDER BY count(*) DESC, 1 "
            "LIMIT $3",
            "SELECT lower(country), count(*), sum(score), count(score) FROM "
            "users WHERE id > $1 GROUP BY 1",
            "SELECT p1 AS c, {count p2} AS count FROM <from> GROUP BY p1 "
            "HAVING {avg p3 p4} > $5 ORDER BY {count p2} DESC, 1 LIMIT $6"},
           {"SELECT id % 3 + 1, sum(score) / count(*) FROM users GROUP BY id % 3",
            "SELECT id % 3, sum(score), count(*) FROM users GROUP BY 1",
            "SELECT p1 + 1 AS \"?column?\", {sum p2} / {count p3} AS "
            "\"?column?\" FROM <from> GROUP BY p1"},
           // An output named as a column its expression uses: that column.
           {"SELECT upper(name) AS name, score::text FROM users GROUP BY "
            "name, score",
            "SELECT name, score FROM users GROUP BY 1, 2",
            "SELECT upper(p1) AS name, p2::text AS score FROM <from> GROUP BY "
            "p1, p2"},
           {"SELECT count(*) FROM users GROUP BY score IS NULL",
            "SELECT score IS NULL, count(*) FROM users GROUP BY 1",
            "SELECT {count p2} AS count FROM <from> GROUP BY p1"},
           // A column written with its table is the one GROUP BY names.
           {"SELECT u.country, count(*) FROM users u GROUP BY country",
            "SELECT country, count(*) FROM users u GROUP BY 1",
            "SELECT p1 AS country, {count p2} AS count FROM <from> GROUP BY p1"},
           // A column that depends on the grouped key (the primary key):
           // selected, not grouped, by the shards.
           {"SELECT u.id, u.name, count(o.id) FROM users u JOIN orders o ON "
            "o.user_id = u.id GROUP BY u.id",
            "SELECT u.id, u.name, count(o.id) FROM users u JOIN orders o ON "
            "o.user_id = u.id GROUP BY 1",
            "SELECT p1 AS id, p2 AS name, {count p3} AS count FROM <from> "
            "GROUP BY p1, p2"},
           {"SELECT DISTINCT country, score FROM users ORDER BY 1",
            "SELECT country, score FROM users GROUP BY 1, 2",
            "SELECT DISTINCT p1 AS country, p2 AS score FROM <from> GROUP BY "
            "p1, p2 ORDER BY 1"},
           {"SELECT country, bool_and(score > 1), max(name) FROM users GROUP "
            "BY 1 ORDER BY country FETCH FIRST 2 ROWS WITH TIES",
            "SELECT country, bool_and(score > 1), max(name) FROM users GROUP "
            "BY 1",
            "SELECT p1 AS country, {bool_and p2} AS bool_and, {max p3} AS max "
            "FROM <from> GROUP BY p1 ORDER BY country FETCH FIRST 2 ROWS WITH "
            "TIES"},
           // HAVING alone makes one group.
           {"SELECT 1 FROM users HAVING true", "SELECT count(*) FROM users",
            "SELECT 1 AS \"?column?\" FROM <from> HAVING true"},
           // A placeholder's name in a string constant: another name.
           {"SELECT 'shardkit_a0_' AS x, count(*) FROM users",
            "SELECT count(*) FROM users",
            "SELECT 'shardkit_a0_' AS x, {count p1} AS count FROM <from>"}}) {
    SCOPED_TRACE(c.sql);
    absl::StatusOr<RoutingPlan> plan = Plan(c.sql);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->needs_merge, "");
    ASSERT_FALSE(plan->aggregates.empty());
    EXPECT_EQ(plan->aggregate.partial_sql, c.partial);
    EXPECT_EQ(CombineText(plan->aggregate), c.combine);
  }
}

TEST(AnalyzerTest, AggregatePlanParameters) {
  absl::StatusOr<RoutingPlan> plan = Plan(
      "SELECT country, sum(score * $3) FROM users WHERE id > $1 GROUP BY 1 "
      "HAVING count(*) > $2 ORDER BY 2 LIMIT $2");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const AggregatePlan& a = plan->aggregate;
  EXPECT_EQ(a.partial_sql,
            "SELECT country, sum(score * $2), count(*) FROM users WHERE id > "
            "$1 GROUP BY 1");
  EXPECT_EQ(a.partial_params, (std::vector<int>{1, 3}));
  EXPECT_EQ(a.columns, 3u);
  EXPECT_EQ(CombineText(a),
            "SELECT p1 AS country, {sum p2} AS sum FROM <from> GROUP BY p1 "
            "HAVING {count p3} > $4 ORDER BY 2 LIMIT $4");
  EXPECT_EQ(a.combine_params, (std::vector<int>{2}));
  // Values compared on the combining shard keep their collation, which
  // the shard reports for the partial statement without running it.
  EXPECT_EQ(a.collated, (std::vector<size_t>{0}));
  EXPECT_EQ(a.collation_sql,
            "SELECT pg_collation_for(shardkit_s.c1::text) FROM (SELECT) AS "
            "shardkit_one LEFT JOIN (SELECT country, sum(score * $2), count(*) "
            "FROM users WHERE id > $1 GROUP BY 1 LIMIT 0) AS shardkit_s(c1, "
            "c2, c3) ON true");
}

TEST(AnalyzerTest, AggregateOutputsAreNamedAsPostgresNamesThem) {
  absl::StatusOr<RoutingPlan> plan = Plan(
      "SELECT count(*), lower(country), country::text, CASE WHEN true THEN "
      "1 END, 1, coalesce(max(name), ''), max(name)::varchar, country "
      "COLLATE \"C\", score + 1, 2::int8, avg(id) AS a, NULLIF(score, 1) "
      "FROM users GROUP BY 2, 3, 8, score");
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::vector<std::string> names;
  for (const AggregateTarget& t : plan->aggregates) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{
                       "count", "lower", "country", "case", "?column?",
                       "coalesce", "max", "country", "?column?", "int8", "a",
                       "nullif"}));
  EXPECT_EQ(plan->aggregates[0].function, AggregateTarget::Function::kCount);
  EXPECT_EQ(plan->aggregates[1].function, AggregateTarget::Function::kGroupKey);
  EXPECT_EQ(plan->aggregates[5].function, AggregateTarget::Function::kExpression);
  EXPECT_EQ(plan->aggregates[10].function, AggregateTarget::Function::kAvg);
}

TEST(AnalyzerTest, PlanningLeavesTheTreeAsItWas) {
  ParserThread::Default().Run([] {
    const std::string sql =
        "SELECT lower(country) AS c, count(DISTINCT name), avg(score) FROM "
        "users WHERE id > $1 GROUP BY 1 HAVING sum(id) > $2 ORDER BY "
        "count(*) DESC, c LIMIT $3 OFFSET 1";
    absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
    ASSERT_TRUE(parsed.ok());
    absl::StatusOr<std::string> before = parsed->Deparse();
    ASSERT_TRUE(before.ok());
    absl::StatusOr<RoutingPlan> plan =
        AnalyzeStatement(*parsed->statement(0), Map());
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_FALSE(plan->aggregates.empty());
    EXPECT_EQ(parsed->Deparse().value_or(""), *before);
  });
}

TEST(AnalyzerTest, AggregatingSelectsThatCannotBeCombined) {
  constexpr char kCombined[] =
      " (across shards the router combines count, sum, avg, min, max, "
      "bool_and, bool_or, every, bit_and, bit_or and bit_xor, also with "
      "DISTINCT or FILTER)";
  for (const auto& [sql, need] : std::vector<std::pair<std::string, std::string>>{
           {"SELECT country, string_agg(name, ',') FROM users GROUP BY 1",
            std::string("aggregate string_agg()") + kCombined},
           {"SELECT stddev(score) FROM users",
            std::string("aggregate stddev()") + kCombined},
           {"SELECT count(DISTINCT name ORDER BY name) FROM users",
            std::string("aggregate count(DISTINCT ... ORDER BY ...)") + kCombined},
           {"SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY score) FROM users",
            std::string("aggregate percentile_cont(... ORDER BY ...) WITHIN "
                        "GROUP (...)") +
                kCombined},
           {"SELECT myschema.count(*) FROM users",
            std::string("aggregate count()") + kCombined},
           {"SELECT country, my_total(score) FROM users GROUP BY 1",
            std::string("my_total() of score, a column not in GROUP BY (if "
                        "my_total is an aggregate, the router cannot combine "
                        "it: across shards the router combines count, sum, "
                        "avg, min, max, bool_and, bool_or, every, bit_and, "
                        "bit_or and bit_xor, also with DISTINCT or FILTER; "
                        "else add score to GROUP BY)")},
           {"SELECT country, rank() OVER (ORDER BY count(*)) FROM users GROUP "
            "BY 1",
            "window function rank()"},
           {"SELECT country, count(*) FROM users GROUP BY ROLLUP (country)",
            "GROUP BY ROLLUP, CUBE or GROUPING SETS"},
           {"SELECT lower(country) AS c, count(*) FROM users GROUP BY c",
            "GROUP BY c, the name of an output column (it may also name a "
            "table's column, which PostgreSQL would group by; group by the "
            "expression itself, or by its position: GROUP BY 1)"},
           {"SELECT country AS c, count(*) FROM users GROUP BY c",
            "GROUP BY c, the name of an output column (it may also name a "
            "table's column, which PostgreSQL would group by; group by the "
            "expression itself, or by its position: GROUP BY 1)"},
           {"SELECT country, count(*) FROM users GROUP BY 3",
            "GROUP BY 3, which is not a position in the select list"},
           {"SELECT u.*, count(o.id) FROM users u JOIN orders o ON o.user_id "
            "= u.id GROUP BY u.id",
            "* in the select list of an aggregating SELECT (name the columns)"},
           {"SELECT country, (SELECT count(*) FROM countries) FROM users "
            "GROUP BY 1",
            "a subquery in the select list, HAVING or ORDER BY of an "
            "aggregating SELECT"},
           {"SELECT u.id, u.name, count(DISTINCT o.note) FROM users u JOIN "
            "orders o ON o.user_id = u.id GROUP BY u.id",
            "column u.name, neither in GROUP BY nor inside an aggregate, with "
            "an aggregate (DISTINCT ...) (add it to GROUP BY)"}}) {
    absl::StatusOr<RoutingPlan> plan = Plan(sql);
    ASSERT_TRUE(plan.ok()) << sql << ": " << plan.status();
    EXPECT_EQ(plan->needs_merge, need) << sql;
    EXPECT_TRUE(plan->aggregates.empty()) << sql;
  }
}

TEST(ParserTest, SyntaxErrorsCarryPositionAndSqlState) {
  absl::StatusOr<RoutingPlan> plan = Plan("SELECT * FORM users");
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().message(),
            "syntax error at or near \"FORM\" at position 10");
  EXPECT_EQ(SqlStateOf(plan.status()), "42601");
}

// libpg_query has no depth guard (40,000 chained operators overflow an
// 8 MiB stack) and its time grows with the square of the depth: long
// chains and oversized statements are refused, never parsed.
TEST(ParserTest, DeepAndOversizedStatementsAreRefused) {
  std::string chain = "SELECT * FROM users WHERE id = 1";
  for (int i = 1; i < kMaxOperatorChain; ++i) chain += "+1";
  EXPECT_EQ(Route(chain), "s1,s2,s3");  // the longest accepted
  chain += "::int8";
  absl::StatusOr<RoutingPlan> plan = Plan(chain);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().message(),
            "expression too deeply nested: 1001 operators in one chain (at "
            "most 1000); use IN (...) or = ANY($1) for long lists of values");
  EXPECT_EQ(SqlStateOf(plan.status()), "54001");

  std::string crash = "SELECT 1";
  for (int i = 0; i < 60000; ++i) crash += "+1";
  EXPECT_EQ(SqlStateOf(Plan(crash).status()), "54001");

  // Long flat lists stay fine: OR and IN do not nest.
  std::string flat = "SELECT * FROM users WHERE id = 0";
  std::string in = "SELECT * FROM users WHERE id IN (0";
  for (int i = 1; i < 5000; ++i) {
    flat += " OR id = " + std::to_string(i);
    in += ", " + std::to_string(i);
  }
  EXPECT_EQ(Route(flat), "s1,s2,s3");
  EXPECT_EQ(Route(in + ")"), "s1,s2,s3");

  std::string big = "SELECT '" + std::string(kMaxStatementBytes, 'x') + "'";
  plan = Plan(big);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(std::string(plan.status().message()),
              HasSubstr("statement too large: 1048585 bytes (at most 1048576)"));
  EXPECT_EQ(SqlStateOf(plan.status()), "54000");
}

// Found by fuzzing: a long run of signs makes PostgreSQL's scanner
// quadratic; it is refused before scanning.
TEST(ParserTest, LongRunsOfSignsAreRefused) {
  absl::StatusOr<RoutingPlan> plan;
  const std::string signs = "SELECT 1 " + std::string(300, '+') + " 1";
  plan = Plan(signs);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(std::string(plan.status().message()),
              HasSubstr("a run of 300 + and - signs (at most 256)"));

  // Ordinary nesting stays fine.
  EXPECT_EQ(Route("SELECT * FROM users WHERE ((id = 1) OR (id = 2))"),
            Owners({1, 2}));
}

std::string Repeat(std::string_view text, int times) {
  std::string out;
  for (int i = 0; i < times; ++i) out += text;
  return out;
}

// "SELECT 1+(1)+(1)...": `times` operators, each with a bracketed operand.
std::string ChainOfBracketed(int times) {
  return "SELECT 1" + Repeat("+(1)", times);
}

// "SELECT (1 + (1 + (... 1)))": `levels` nested parentheses, an operator in
// each.
std::string NestedSums(int levels) {
  return "SELECT " + Repeat("(1 + ", levels) + "1" + Repeat(")", levels);
}

// "SELECT (((1)))": `levels` bare parentheses.
std::string NestedParentheses(int levels) {
  return "SELECT " + Repeat("(", levels) + "1" + Repeat(")", levels);
}

// The depth estimated from the tokens (an operator and a bracketed operand
// count a level each) is capped at kMaxNestingDepth before libpg_query
// parses. That is stricter than PostgreSQL 15, which accepts 3000 levels of
// each form below: its grammar's stack runs out ("memory exhausted") at
// about 3,300 nested sums and 10,000 parentheses, and the chain exceeds the
// default max_stack_depth of 2 MB at about 4,000 operands. The parser
// thread's 64 MiB stack would hold these too; they are refused anyway, as
// the estimate cannot tell them from statements that nest a level per token,
// and the same tree is walked again by the analyzer and the deparser.
TEST(ParserTest, DeeplyNestedStatementsAreRefused) {
  static_assert(kMaxNestingDepth == 2000, "update the depths below");
  struct Case {
    std::string name;
    std::string sql;
    int estimated_depth;  // 0: accepted
  };
  const Case cases[] = {
      {"1000 bracketed operands", ChainOfBracketed(1000), 0},
      {"1001 bracketed operands", ChainOfBracketed(1001), 2002},
      {"3000 bracketed operands", ChainOfBracketed(3000), 6000},
      {"1000 nested sums", NestedSums(1000), 0},
      {"1001 nested sums", NestedSums(1001), 2002},
      {"3000 nested sums", NestedSums(3000), 6000},
      {"2000 parentheses", NestedParentheses(2000), 0},
      {"2001 parentheses", NestedParentheses(2001), 2001},
      {"3000 parentheses", NestedParentheses(3000), 3000},
  };
  for (const Case& c : cases) {
    absl::StatusOr<RoutingPlan> plan = Plan(c.sql);
    if (c.estimated_depth == 0) {
      EXPECT_TRUE(plan.ok()) << c.name << ": " << plan.status();
      continue;
    }
    ASSERT_FALSE(plan.ok()) << c.name;
    EXPECT_EQ(plan.status().message(),
              "statement too deeply nested: up to " +
                  std::to_string(c.estimated_depth) +
                  " levels of operators, parentheses, subqueries, joins and "
                  "set operations (at most 2000); simplify it, or split it "
                  "into several statements")
        << c.name;
    EXPECT_EQ(SqlStateOf(plan.status()), "54001") << c.name;
  }
}

// Which SELECTs must run on a primary even outside a transaction (the
// rest may read from a replica).
TEST(AnalyzerTest, SelectsThatNeedThePrimary) {
  const struct {
    const char* sql;
    bool needs_primary;
  } kCases[] = {
      {"SELECT * FROM users WHERE id = 1", false},
      {"SELECT count(*) FROM orders", false},
      {"WITH u AS (SELECT id FROM users) SELECT * FROM u", false},
      {"SELECT * FROM users WHERE id = 1 FOR UPDATE", true},
      {"SELECT * FROM users WHERE id = 1 FOR NO KEY UPDATE", true},
      {"SELECT * FROM users WHERE id = 1 FOR SHARE", true},
      {"SELECT * FROM users WHERE id = 1 FOR KEY SHARE SKIP LOCKED", true},
      {"SELECT 1 FOR UPDATE", true},
      {"WITH d AS (DELETE FROM users WHERE id = 1 RETURNING id) "
       "SELECT * FROM d",
       true},
      {"WITH u AS (SELECT id FROM users WHERE id = 1 FOR UPDATE) "
       "SELECT * FROM u",
       true},
      {"SELECT id FROM users WHERE id = 1 UNION ALL "
       "(SELECT id FROM users WHERE id = 1 FOR UPDATE)",
       true},
  };
  for (const auto& c : kCases) {
    SCOPED_TRACE(c.sql);
    absl::StatusOr<RoutingPlan> plan = Plan(c.sql);
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(plan->kind, StatementKind::kSelect);
    EXPECT_FALSE(plan->writes);
    EXPECT_EQ(plan->needs_primary, c.needs_primary);
  }
}

}  // namespace
}  // namespace shardkit::internal
