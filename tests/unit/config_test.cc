#include "shardkit/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>

namespace shardkit {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;

EnvLookup FakeEnv(std::map<std::string, std::string> vars) {
  return [vars](std::string_view name) -> std::optional<std::string> {
    auto it = vars.find(std::string(name));
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::vector<std::string> Problems(const std::string& toml,
                                  const EnvLookup& env = FakeEnv({})) {
  std::vector<ConfigProblem> problems;
  absl::StatusOr<Config> config = ParseConfig(toml, "t.toml", &problems, env);
  std::vector<std::string> out;
  for (const ConfigProblem& p : problems) out.push_back(p.ToString());
  if (config.ok()) {
    EXPECT_TRUE(problems.empty());
  } else {
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    // The status carries every problem too, one per line.
    for (const std::string& p : out) {
      EXPECT_THAT(std::string(config.status().message()), HasSubstr(p));
    }
  }
  return out;
}

// The example from the README / issue, verbatim in shape.
constexpr char kExample[] = R"(# comment
[catalog]
dsn = "host=127.0.0.1 port=6000 dbname=shardkit"

[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app user=app password=${APP_PASSWORD}"
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"

[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]

[distributions.events]
strategy = "range"
key_type = "int8"
slices = [ { to = 1000000, shard = "s1" },
           { from = 1000000, shard = "s2" } ]

[distributions.geo]
strategy = "region"
key_type = "text"
hash_key_type = "int8"
regions = { eu = "s1", us = ["s1", "s2"] }
default = "s2"

[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
[tables.countries]
reference = true

[pool]
max_connections_per_shard = 4
idle_timeout = "2m"

[timeouts]
connect = "1500ms"
statement = "10s"
)";

TEST(ConfigTest, ParsesTheDocumentedShape) {
  absl::StatusOr<Config> config = ParseConfig(
      kExample, "t.toml", nullptr, FakeEnv({{"APP_PASSWORD", "s3cret"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->source, "t.toml");
  ASSERT_TRUE(config->catalog.has_value());
  EXPECT_EQ(config->catalog->dsn, "host=127.0.0.1 port=6000 dbname=shardkit");
  const ShardMap& map = config->map;
  ASSERT_EQ(map.shards().size(), 2u);
  EXPECT_EQ(map.shard(0).name, "s1");
  EXPECT_EQ(map.shard(0).dsn,
            "host=127.0.0.1 port=6001 dbname=app user=app password=s3cret");
  EXPECT_THAT(map.shard(0).MaskedDsn(), HasSubstr("password=********"));
  EXPECT_THAT(map.shard(0).MaskedDsn(), ::testing::Not(HasSubstr("s3cret")));
  ASSERT_EQ(map.distributions().size(), 3u);
  EXPECT_EQ(map.FindDistribution("events")->strategy(), Strategy::kRange);
  EXPECT_EQ(map.FindDistribution("geo")->regions().size(), 2u);
  EXPECT_EQ(map.FindDistribution("geo")->default_shard(), 1u);
  ASSERT_NE(map.FindTable("orders"), nullptr);
  EXPECT_EQ(map.FindTable("orders")->key_column, "user_id");
  EXPECT_EQ(&map.DistributionOf(*map.FindTable("orders")),
            map.FindDistribution("users"));
  EXPECT_TRUE(map.FindTable("countries")->reference);
  EXPECT_EQ(config->pool.max_connections_per_shard, 4);
  EXPECT_EQ(config->pool.idle_timeout, absl::Minutes(2));
  EXPECT_EQ(config->timeouts.connect, absl::Milliseconds(1500));
  EXPECT_EQ(config->timeouts.statement, absl::Seconds(10));
}

TEST(ConfigTest, DefaultsWhenSectionsAreAbsent) {
  absl::StatusOr<Config> config = ParseConfig(
      "[shards.a]\ndsn = \"host=127.0.0.1 dbname=x\"\n", "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_FALSE(config->catalog.has_value());
  EXPECT_EQ(config->pool.max_connections_per_shard, 8);
  EXPECT_EQ(config->timeouts.connect, absl::Seconds(5));
  EXPECT_EQ(config->timeouts.statement, absl::Seconds(30));
}

TEST(ConfigTest, EnvironmentSubstitution) {
  const std::string toml =
      "[shards.a]\ndsn = \"host=${HOST} dbname=x password=p$$q\"\n";
  absl::StatusOr<Config> config =
      ParseConfig(toml, "t.toml", nullptr, FakeEnv({{"HOST", "10.0.0.7"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->map.shard(0).dsn, "host=10.0.0.7 dbname=x password=p$q");
  EXPECT_THAT(Problems(toml),
              ElementsAre("t.toml:2:7: shards.a.dsn: environment variable "
                          "HOST is not set; export it, or write $$ for a "
                          "literal $"));
  EXPECT_THAT(Problems("[shards.a]\ndsn = \"host=${HOST\"\n"),
              ElementsAre("t.toml:2:7: shards.a.dsn: unterminated ${...}; "
                          "write ${NAME}, or $$ for a literal $"));
}

TEST(ConfigTest, ReadsTheProcessEnvironmentByDefault) {
  setenv("SHARDKIT_TEST_PW", "from-env", 1);
  absl::StatusOr<Config> config = ParseConfig(
      "[shards.a]\ndsn = \"host=h dbname=x password=${SHARDKIT_TEST_PW}\"\n",
      "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->map.shard(0).dsn, HasSubstr("password=from-env"));
}

constexpr char kTwoShards[] = R"([shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
)";  // 4 lines: the cases below start on line 5

struct Case {
  std::string name;
  std::string body;  // appended to kTwoShards
  std::vector<std::string> problems;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ValidationTest : public ::testing::TestWithParam<Case> {};

TEST_P(ValidationTest, ReportsEveryProblemWithItsPosition) {
  EXPECT_THAT(Problems(kTwoShards + GetParam().body),
              ElementsAreArray(GetParam().problems));
}

INSTANTIATE_TEST_SUITE_P(
    Config, ValidationTest,
    ::testing::Values(
        Case{"HashGap", R"([distributions.d]
strategy = "hash"
key_type = "int8"
slices = [ { to = "0x4000000000000000", shard = "s1" },
           { from = "0x5000000000000000", shard = "s2" } ]
)",
             {"t.toml:9:12: distributions.d.slices: hash values "
              "[0x4000000000000000, 0x5000000000000000) are not covered by "
              "any slice"}},
        Case{"HashOverlapAndUnknownShard", R"([distributions.d]
strategy = "hash"
key_type = "int8"
slices = [ { to = "0x8000000000000000", shard = "s1" },
           { from = "0x7000000000000000", shard = "s9" } ]
)",
             {"t.toml:9:12: distributions.d.slices: slice "
              "[0x7000000000000000, end) overlaps slice [0x0000000000000000, "
              "0x8000000000000000) (line 8)",
              "t.toml:9:51: distributions.d: unknown shard 's9' (defined "
              "shards: s1, s2)"}},
        Case{"HashStartAndEndNotCovered", R"([distributions.d]
strategy = "hash"
key_type = "int8"
slices = [ { from = "0x1", to = "0x8000000000000000", shard = "s1" } ]
)",
             {"t.toml:8:12: distributions.d.slices: hash values "
              "[0x0000000000000000, 0x0000000000000001) are not covered by "
              "any slice",
              "t.toml:8:12: distributions.d.slices: hash values "
              "[0x8000000000000000, end) are not covered by any slice; omit "
              "`to` on the last slice to reach the end"}},
        Case{"MalformedHashBounds", R"([distributions.d]
strategy = "hash"
key_type = "int8"
slices = [ { to = 1234, shard = "s1" },
           { from = "0xZZ", shard = "s2" } ]
)",
             {"t.toml:8:19: distributions.d.slices[0].to: hash bounds are hex "
              "strings such as \"0x8000000000000000\", found an integer",
              "t.toml:9:21: distributions.d.slices[1].from: invalid hash bound "
              "\"0xZZ\": expected \"0x\" and 1 to 16 hex digits, e.g. "
              "\"0x8000000000000000\""}},
        Case{"EvenShardsTwiceAndEmptySlice", R"([distributions.d]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2", "s1"]
[distributions.e]
strategy = "hash"
key_type = "int8"
slices = [ { from = "0x0", to = "0x0", shard = "s1" } ]
)",
             {"t.toml:8:23: distributions.d.shards: shard 's1' is listed "
              "twice; each shard takes one even slice",
              "t.toml:12:12: distributions.e.slices[0]: slice "
              "[0x0000000000000000, 0x0000000000000000) is empty: `to` must "
              "be above `from`",
              "t.toml:12:12: distributions.e.slices: hash values "
              "[0x0000000000000000, end) are not covered by any slice; omit "
              "`to` on the last slice to reach the end"}},
        Case{"RangeGapAndOverlap", R"([distributions.r]
strategy = "range"
key_type = "int4"
slices = [ { to = 10, shard = "s1" },
           { from = 20, to = 30, shard = "s2" },
           { from = 25, shard = "s1" } ]
)",
             {"t.toml:9:12: distributions.r.slices: keys ['10', '20') are "
              "not covered by any slice",
              "t.toml:10:12: distributions.r.slices: slice ['25', end) "
              "overlaps slice ['20', '30') (line 9)"}},
        // Coverage is judged only once every bound parses.
        Case{"RangeBoundTypes", R"([distributions.r]
strategy = "range"
key_type = "int4"
slices = [ { to = 10, shard = "s1" },
           { from = "40", shard = "s2" },
           { from = 3000000000, shard = "s2" } ]
[distributions.u]
strategy = "range"
key_type = "uuid"
slices = [ { to = "not-a-uuid", shard = "s1" } ]
)",
             {"t.toml:9:21: distributions.r.slices[1].from: expected an "
              "integer (the key type is int4), found a string",
              "t.toml:10:21: distributions.r.slices[2].from: 3000000000 is "
              "out of range for int4",
              "t.toml:14:19: distributions.u.slices[0].to: invalid uuid "
              "\"not-a-uuid\": expected 32 hex digits such as "
              "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}},
        Case{"RangeMustSpanTheDomain", R"([distributions.r]
strategy = "range"
key_type = "text"
slices = [ { from = "a", to = "m", shard = "s1" },
           { from = "m", to = "t", shard = "s2" } ]
)",
             {"t.toml:8:12: distributions.r.slices: keys below 'a' are not "
              "covered by any slice; omit `from` on the first slice to start "
              "at the smallest key",
              "t.toml:9:12: distributions.r.slices: keys from 't' up are not "
              "covered by any slice; omit `to` on the last slice to reach the "
              "largest key"}},
        Case{"KeyTypeTheStrategyCannotUse", R"([distributions.g]
strategy = "region"
key_type = "int8"
regions = { eu = "s1" }
[distributions.h]
strategy = "hash"
key_type = "bigint"
shards = ["s1"]
)",
             {"t.toml:7:12: distributions.g.key_type: strategy region cannot "
              "use key type int8: region keys are names; use key_type = "
              "\"text\"",
              "t.toml:11:12: distributions.h.key_type: unknown key type "
              "'bigint' (use int2, int4, int8, text or uuid)"}},
        // A table of a distribution with errors is not also reported.
        Case{"UnknownSettingsAndTypos", R"([distributions.d]
strategy = "hash"
key_typ = "int8"
shards = ["s1"]
[tables.t]
distribution = "d"
key = "id"
colocate = true
[poool]
x = 1
)",
             {"t.toml:5:1: distributions.d: missing required setting "
              "'key_type'",
              "t.toml:7:1: distributions.d.key_typ: unknown setting (did you "
              "mean 'key_type'?)",
              "t.toml:12:1: tables.t.colocate: unknown setting (allowed "
              "here: distribution, key, hash_key, reference)",
              "t.toml:13:2: poool: unknown setting (did you mean 'pool'?)"}},
        Case{"WrongValueTypes", R"([distributions.d]
strategy = 1
key_type = "int8"
[tables.t]
reference = "yes"
[pool]
max_connections_per_shard = "8"
idle_timeout = 60
[timeouts]
connect = "soon"
)",
             {"t.toml:6:12: distributions.d.strategy: expected a string, "
              "found an integer",
              "t.toml:9:13: tables.t.reference: expected a boolean (true or "
              "false), found a string",
              "t.toml:11:29: pool.max_connections_per_shard: expected an "
              "integer from 1 to 10000",
              "t.toml:12:16: pool.idle_timeout: expected a positive duration "
              "string such as \"5s\", \"250ms\" or \"1m30s\"",
              "t.toml:14:11: timeouts.connect: expected a positive duration "
              "string such as \"5s\", \"250ms\" or \"1m30s\""}},
        Case{"TablesThatCannotBe", R"([distributions.d]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.a]
distribution = "nope"
key = "id"
[tables.b]
reference = true
key = "id"
[tables.c]
distribution = "d"
[tables.e]
[tables.f]
distribution = "d"
key = "id"
hash_key = "x"
)",
             {"t.toml:10:16: tables.a.distribution: unknown distribution "
              "'nope' (defined: d)",
              "t.toml:14:7: tables.b.key: a reference table is copied to "
              "every shard and has no key",
              "t.toml:15:1: tables.c: missing required setting 'key'",
              "t.toml:17:1: tables.e: a table needs `distribution` and `key` "
              "(a sharded table) or `reference = true`",
              "t.toml:21:12: tables.f.hash_key: distribution 'd' has no "
              "`hash_key_type`; `hash_key` is only for region distributions "
              "that spread a region over several shards"}},
        Case{"RegionProblems", R"([distributions.g]
strategy = "region"
key_type = "text"
regions = { eu = "s1", us = ["s1", "s1"], apac = [] }
default = "s7"
[tables.t]
distribution = "g"
key = "region"
)",
             {"t.toml:5:1: distributions.g: a region is spread over several "
              "shards, so set `hash_key_type` (the type of the column that "
              "spreads it, e.g. \"int8\") and give each table a `hash_key`",
              "t.toml:8:36: distributions.g.regions.us: shard 's1' is listed "
              "twice",
              "t.toml:8:50: distributions.g.regions.apac: the list is empty; "
              "name at least one shard",
              "t.toml:9:11: distributions.g.default: unknown shard 's7' "
              "(defined shards: s1, s2)"}},
        Case{"HashSettingsOnOtherStrategies", R"([distributions.r]
strategy = "range"
key_type = "int8"
shards = ["s1"]
[distributions.h]
strategy = "hash"
key_type = "int8"
shards = ["s1"]
slices = [ { shard = "s1" } ]
)",
             {"t.toml:5:1: distributions.r: missing required setting "
              "'slices'",
              "t.toml:8:10: distributions.r.shards: not used by range "
              "distributions; give explicit `slices` with key bounds",
              "t.toml:9:1: distributions.h: give either `shards` (even "
              "slices, one per shard) or explicit `slices`, not both"}},
        Case{"DuplicateDatabaseAndBadDsn", R"([shards.s3]
dsn = "host=localhost port=6001 dbname=app"
[shards.s4]
dsn = "host=127.0.0.1 nonsense=1"
)",
             {"t.toml:6:7: shards.s3.dsn: shards 's1' and 's3' are the same "
              "database (127.0.0.1:6001/app); each shard needs its own "
              "database",
              "t.toml:8:7: shards.s4.dsn: not a valid libpq connection "
              "string: invalid connection option \"nonsense\""}},
        Case{"StrategyAndLayoutShapes", R"([distributions.a]
strategy = "consistent"
key_type = "int8"
[distributions.b]
strategy = "hash"
key_type = "int8"
shards = "s1"
[distributions.c]
strategy = "range"
key_type = "int8"
slices = []
[distributions.e]
strategy = "range"
key_type = "int8"
slices = [ "s1" ]
)",
             {"t.toml:6:12: distributions.a.strategy: unknown strategy "
              "'consistent' (use hash, range or region)",
              "t.toml:11:10: distributions.b.shards: expected an array of "
              "shard names, found a string",
              "t.toml:15:10: distributions.c.slices: the list is empty; give "
              "at least one slice",
              "t.toml:19:12: distributions.e.slices[0]: expected a slice "
              "table { from, to, shard }, found a string"}},
        Case{"RegionShapes", R"([distributions.a]
strategy = "region"
key_type = "text"
[distributions.b]
strategy = "region"
key_type = "text"
regions = { eu = 1 }
[distributions.c]
strategy = "region"
key_type = "text"
regions = {}
[distributions.d]
strategy = "region"
key_type = "text"
hash_key_type = "int8"
regions = { us = ["s1", "s2"] }
[tables.t]
distribution = "d"
key = "region"
)",
             {"t.toml:5:1: distributions.a: missing required setting "
              "'regions', e.g. regions = { eu = \"s1\", us = [\"s2\", "
              "\"s3\"] }",
              "t.toml:11:18: distributions.b.regions.eu: expected a shard "
              "name or an array of them, found an integer",
              "t.toml:12:1: distributions.c: no regions and no default: every "
              "key would be refused; list regions, or set `default`",
              "t.toml:21:1: tables.t: distribution 'd' spreads regions by a "
              "hash key: set `hash_key` to the column that holds it"}},
        Case{"ShardsShapes", R"([shards.s3]
port = 5
[shards.s4]
dsn = "host=h dbname=${}"
)",
             {"t.toml:5:1: shards.s3: missing required setting 'dsn'",
              "t.toml:6:1: shards.s3.port: unknown setting (allowed here: "
              "dsn, replicas, max_lag, heartbeat_interval, "
              "failure_threshold)",
              "t.toml:8:7: shards.s4.dsn: empty ${}; write ${NAME}"}},
        Case{"RouterSettings", R"([router]
default_shard = "s9"
fallback = true
)",
             {"t.toml:6:17: router.default_shard: unknown shard 's9' (defined "
              "shards: s1, s2)",
              "t.toml:7:1: router.fallback: unknown setting (allowed here: "
              "default_shard)"}},
        Case{"ReplicaShapes", R"([shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"
replicas = [ { dsn = "host=127.0.0.1 port=6103 dbname=app", weigth = 2 },
             { weight = 0, dsn = "host=127.0.0.1 port=6104 dbname=app" },
             { dsn = "host=127.0.0.1 port=6105 dbname=app", weight = "1" },
             { name = "primary", dsn = "host=127.0.0.1 port=6106 dbname=app" },
             "host=127.0.0.1 port=6107",
             { weight = 1 } ]
[shards.s4]
dsn = "host=127.0.0.1 port=6004 dbname=app"
replicas = { dsn = "host=127.0.0.1 port=6108 dbname=app" }
)",
             {"t.toml:7:61: shards.s3.replicas[0].weigth: unknown setting "
              "(did you mean 'weight'?)",
              "t.toml:8:25: shards.s3.replicas[1].weight: expected an "
              "integer from 1 to 10000 (a replica's share of its shard's "
              "reads)",
              "t.toml:9:70: shards.s3.replicas[2].weight: expected an "
              "integer from 1 to 10000 (a replica's share of its shard's "
              "reads)",
              "t.toml:10:23: shards.s3.replicas[3].name: 'primary' is not a "
              "replica name: use letters, digits, '_' and '-' (at most 63), "
              "and not \"primary\"",
              "t.toml:11:14: shards.s3.replicas[4]: expected a replica table "
              "{ dsn, weight, name }, found a string",
              "t.toml:12:14: shards.s3.replicas[5]: missing required setting "
              "'dsn'",
              "t.toml:15:12: shards.s4.replicas: expected an array of "
              "replicas [ { dsn = \"...\", weight = 1 } ], found a table"}},
        Case{"ReplicaIsTheSameDatabase", R"([shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"
replicas = [ { dsn = "host=localhost port=6003 dbname=app" },
             { dsn = "host=127.0.0.1 port=6001 dbname=app" },
             { dsn = "host=127.0.0.1 port=6103 dbname=app", name = "a" },
             { dsn = "host=127.0.0.1 port=6103 dbname=app" },
             { dsn = "host=127.0.0.1 port=6104 dbname=app", name = "a" } ]
)",
             {"t.toml:7:22: shards.s3.replicas[0].dsn: the replica is the "
              "shard's own primary (127.0.0.1:6003/app); a replica is another "
              "server, streaming from the primary",
              "t.toml:8:22: shards.s3.replicas[1].dsn: the same database "
              "(127.0.0.1:6001/app) as the primary of shard 's1'; each backend "
              "needs its own server",
              "t.toml:10:22: shards.s3.replicas[3].dsn: the same database "
              "(127.0.0.1:6103/app) as replica 'a' of shard 's3'; each backend "
              "needs its own server",
              "t.toml:11:68: shards.s3.replicas[4].name: shard 's3' already "
              "has a replica named 'a' (line 9); give each replica its own "
              "name"}},
        Case{"ReplicaSettingValues", R"([replicas]
max_lag = "0s"
heartbeat_interval = 5
failure_threshold = 0
max_lagg = "1s"
[shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"
max_lag = "soon"
failure_threshold = 1001
)",
             {"t.toml:6:11: replicas.max_lag: expected a positive duration "
              "string such as \"5s\", \"250ms\" or \"1m30s\"",
              "t.toml:7:22: replicas.heartbeat_interval: expected a positive "
              "duration string such as \"5s\", \"250ms\" or \"1m30s\"",
              "t.toml:8:21: replicas.failure_threshold: expected an integer "
              "from 1 to 1000 (consecutive failed heartbeats)",
              "t.toml:9:1: replicas.max_lagg: unknown setting (did you mean "
              "'max_lag'?)",
              "t.toml:12:11: shards.s3.max_lag: expected a positive duration "
              "string such as \"5s\", \"250ms\" or \"1m30s\"",
              "t.toml:13:21: shards.s3.failure_threshold: expected an integer "
              "from 1 to 1000 (consecutive failed heartbeats)"}},
        Case{"TomlSyntax", "[distributions.d\nstrategy = \"hash\"\n",
             {"t.toml:5:17: TOML syntax error: Error while parsing table "
              "header: expected ']', saw '\\n'"}},
        Case{"DuplicateKeyIsATomlError", "[shards.s1]\ndsn = \"x\"\n",
             {"t.toml:5:1: TOML syntax error: Error while parsing table "
              "header: cannot redefine existing table 'shards.s1'"}}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(ConfigTest, ReplicasAndTheirSettings) {
  absl::StatusOr<Config> config = ParseConfig(R"([replicas]
max_lag = "500ms"
failure_threshold = 5

[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
replicas = [ { dsn = "host=127.0.0.1 port=6101 dbname=app password=${PW}" },
             { dsn = "host=127.0.0.1 port=6102 dbname=app", weight = 3, name = "east-1" },
             { dsn = "host=127.0.0.1 port=6103 dbname=app" } ]
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
max_lag = "2s"
heartbeat_interval = "250ms"
[[shards.s2.replicas]]
dsn = "host=127.0.0.1 port=6201 dbname=app"
)", "t.toml", nullptr, FakeEnv({{"PW", "s3cret"}}));
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->replicas.max_lag, absl::Milliseconds(500));
  EXPECT_EQ(config->replicas.heartbeat_interval, absl::Seconds(1));
  EXPECT_EQ(config->replicas.failure_threshold, 5);

  const Shard& s1 = config->map.shard(0);
  EXPECT_EQ(s1.dsn, "host=127.0.0.1 port=6001 dbname=app");
  ASSERT_EQ(s1.replicas.size(), 3u);
  EXPECT_EQ(s1.replicas[0].name, "r1");
  EXPECT_EQ(s1.replicas[0].weight, 1);
  EXPECT_EQ(s1.replicas[0].dsn,
            "host=127.0.0.1 port=6101 dbname=app password=s3cret");
  EXPECT_THAT(s1.replicas[0].MaskedDsn(), HasSubstr("password=********"));
  EXPECT_THAT(s1.replicas[0].MaskedDsn(), Not(HasSubstr("s3cret")));
  EXPECT_EQ(s1.replicas[1].name, "east-1");
  EXPECT_EQ(s1.replicas[1].weight, 3);
  // Default names count every replica listed, named or not.
  EXPECT_EQ(s1.replicas[2].name, "r3");
  EXPECT_EQ(s1.replica_settings.max_lag, absl::Milliseconds(500));
  EXPECT_EQ(s1.replica_settings.heartbeat_interval, absl::Seconds(1));
  EXPECT_EQ(s1.replica_settings.failure_threshold, 5);

  // A shard's own settings override [replicas], one by one.
  const Shard& s2 = config->map.shard(1);
  ASSERT_EQ(s2.replicas.size(), 1u);
  EXPECT_EQ(s2.replicas[0].dsn, "host=127.0.0.1 port=6201 dbname=app");
  EXPECT_EQ(s2.replica_settings.max_lag, absl::Seconds(2));
  EXPECT_EQ(s2.replica_settings.heartbeat_interval, absl::Milliseconds(250));
  EXPECT_EQ(s2.replica_settings.failure_threshold, 5);
}

TEST(ConfigTest, ReplicaDefaults) {
  absl::StatusOr<Config> config = ParseConfig(
      "[shards.a]\ndsn = \"host=127.0.0.1 dbname=x\"\n", "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->map.shard(0).replicas.empty());
  for (const ReplicaSettings& settings :
       {config->replicas, config->map.shard(0).replica_settings}) {
    EXPECT_EQ(settings.max_lag, absl::Seconds(1));
    EXPECT_EQ(settings.heartbeat_interval, absl::Seconds(1));
    EXPECT_EQ(settings.failure_threshold, 3);
  }
}

// A replica's password stays out of every problem, as a primary's does.
TEST(ConfigTest, InvalidReplicaDsnNeverShowsThePassword) {
  const std::vector<std::string> problems = Problems(
      "[shards.a]\ndsn = \"host=h dbname=x\"\n"
      "replicas = [ { dsn = \"host=r password=Sup3rSecret nonsense\" } ]\n");
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_THAT(problems[0], HasSubstr("t.toml:3:22: shards.a.replicas[0].dsn: "
                                     "not a valid libpq connection string"));
  EXPECT_THAT(problems[0], Not(HasSubstr("Sup3rSecret")));
}

TEST(ConfigTest, ShardThatIsNotATable) {
  EXPECT_THAT(Problems("shards = { s1 = \"host=h\" }\n"),
              ElementsAre("t.toml:1:17: shards.s1: expected a table with a "
                          "`dsn`, found a string"));
}

// libpq's parse errors quote the connection string: never with a password.
TEST(ConfigTest, InvalidDsnNeverShowsThePassword) {
  for (const char* dsn :
       {"postgresql://app:Sup3rSecret@[::1/db",
        "host=h password=Sup3rSecret nonsense",
        "host=h sslpassword=Sup3rSecret =x"}) {
    SCOPED_TRACE(dsn);
    const std::vector<std::string> problems =
        Problems(std::string("[shards.a]\ndsn = \"") + dsn + "\"\n");
    ASSERT_EQ(problems.size(), 1u);
    EXPECT_THAT(problems[0], Not(HasSubstr("Sup3rSecret")));
    EXPECT_THAT(problems[0],
                HasSubstr("not a valid libpq connection string: libpq's "
                          "reason is withheld because it would show the "
                          "password"));
  }
}

// A substituted value stays one value: spaces, quotes and "key=value" text
// in it cannot change another setting.
TEST(ConfigTest, SubstitutedValuesAreEscaped) {
  struct Case {
    std::string dsn;
    std::string value;
    std::string expected;
  };
  for (const Case& c : std::vector<Case>{
           {"host=h password=${PW}", "open sesame",
            "host=h password='open sesame'"},
           {"host=h password=${PW}", "x host=evil",
            "host=h password='x host=evil'"},
           {"host=h password='${PW}'", "it's", "host=h password='it\\'s'"},
           {"host=h password=${PW}", "plain", "host=h password=plain"},
           {"postgresql://app:${PW}@h/db", "p@ss/w:rd",
            "postgresql://app:p%40ss%2Fw%3Ard@h/db"}}) {
    SCOPED_TRACE(c.dsn + " with " + c.value);
    absl::StatusOr<Config> config =
        ParseConfig("[shards.a]\ndsn = \"" + c.dsn + "\"\n", "t.toml", nullptr,
                    FakeEnv({{"PW", c.value}}));
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->map.shard(0).dsn, c.expected);
  }
}

TEST(ConfigTest, KeepsTheFileOrder) {
  absl::StatusOr<Config> config = ParseConfig(std::string(kTwoShards) + R"(
[distributions.zeta]
strategy = "region"
key_type = "text"
regions = { us = "s1", eu = "s2", apac = "s1" }
[distributions.alpha]
strategy = "hash"
key_type = "int8"
shards = ["s2", "s1"]
[tables.zz]
reference = true
[tables.aa]
reference = true
)", "t.toml");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->map.distributions()[0].name(), "zeta");
  const auto& regions = config->map.distributions()[0].regions();
  ASSERT_EQ(regions.size(), 3u);
  EXPECT_EQ(regions[0].name, "us");
  EXPECT_EQ(regions[2].name, "apac");
  EXPECT_EQ(config->map.tables()[0].name, "zz");
  // Even slices follow the order of `shards`, not the shards' order.
  EXPECT_EQ(config->map.shard(config->map.distributions()[1].hash_slices()[0].shard).name,
            "s2");
}

// Found by fuzzing: toml++ recurses once per part of a dotted key.
TEST(ConfigTest, ALineWithThousandsOfDotsIsRefused) {
  std::string deep = "[shards.s1]\ndsn = \"host=h\"\n[tables.a";
  for (int i = 0; i < 5000; ++i) deep += ".a";
  deep += "]\nreference = true\n";
  EXPECT_THAT(Problems(deep),
              ElementsAre("t.toml:3:1: more than 4096 dots in one line: a key "
                          "or table name of that many parts nests too "
                          "deeply"));
}

TEST(ConfigTest, NoShards) {
  EXPECT_THAT(Problems("[tables.x]\nreference = true\n"),
              ElementsAre("t.toml: no shards: add at least one [shards.NAME] "
                          "with a dsn"));
}

TEST(LoadConfigTest, MissingFile) {
  std::vector<ConfigProblem> problems;
  absl::StatusOr<Config> config =
      LoadConfig("/nonexistent/shards.toml", &problems);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(config.status().message(),
            "/nonexistent/shards.toml: cannot read the configuration: No such "
            "file or directory");
  ASSERT_EQ(problems.size(), 1u);
}

TEST(LoadConfigTest, ADirectoryIsNotAConfiguration) {
  absl::StatusOr<Config> config = LoadConfig(::testing::TempDir());
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()),
              HasSubstr(": cannot read the configuration: it is a directory; "
                        "give the path of a .toml file"));
}

TEST(LoadConfigTest, ReadsAFile) {
  const std::string path = ::testing::TempDir() + "/load_config_test.toml";
  {
    std::ofstream out(path);
    out << kTwoShards;
  }
  absl::StatusOr<Config> config = LoadConfig(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->source, path);
  EXPECT_EQ(config->map.shards().size(), 2u);
}

TEST(LoadConfigTest, TheShippedExamplesAreValid) {
  for (const char* name : {"examples/shards.toml"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<Config> config =
        LoadConfig(std::string(SHARDKIT_SOURCE_DIR) + "/" + name, nullptr,
                   FakeEnv({{"APP_PASSWORD", "x"}}));
    EXPECT_TRUE(config.ok()) << config.status();
  }
}

}  // namespace
}  // namespace shardkit
