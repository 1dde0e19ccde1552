// shardctl as a user runs it: arguments, output and exit status. No server
// is needed: these commands only read the configuration.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "shardkit/config.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using testing::CommandOutput;
using testing::RunCommand;

const std::string kExample = std::string(SHARDKIT_SOURCE_DIR) + "/examples/shards.toml";

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { setenv("APP_PASSWORD", "hunter2", 1); }

  static CommandOutput Shardctl(std::vector<std::string> args) {
    args.insert(args.begin(), SHARDCTL_PATH);
    return RunCommand(args);
  }

  // Writes `toml` to a scratch file and returns its path.
  static std::string Write(const std::string& name, const std::string& toml) {
    const std::string path = ::testing::TempDir() + "/" + name;
    std::ofstream(path) << toml;
    return path;
  }

  // The example configuration without its [catalog]: a cluster with a
  // catalog reads the live map from it when it opens, and the example's
  // catalog is not running.
  static std::string ExampleWithoutCatalog() {
    std::ifstream in(kExample);
    std::stringstream text;
    text << in.rdbuf();
    std::string toml = text.str();
    const size_t at = toml.find("[catalog]\n");
    const size_t end = toml.find('\n', toml.find("dsn", at));
    toml.erase(at, end + 1 - at);
    return Write("example-no-catalog.toml", toml);
  }

  // A failure prints exactly one line on stderr.
  static void ExpectOneLineError(const CommandOutput& r, int code,
                                 const std::string& text) {
    EXPECT_EQ(r.exit_code, code) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_THAT(r.err, HasSubstr(text));
  }
};

TEST_F(CliTest, ValidateOk) {
  CommandOutput r = Shardctl({"validate", "-c", kExample});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "ok\n");
  EXPECT_EQ(r.err, "");
}

TEST_F(CliTest, ValidateListsEveryProblem) {
  const std::string path = Write("bad.toml", R"([shards.s1]
dsn = "host=127.0.0.1 port=1 dbname=a"
[distributions.d]
strategy = "hash"
key_type = "int8"
slices = [ { to = "0x10", shard = "s1" }, { from = "0x20", shard = "s2" } ]
[tables.t]
distribution = "d"
key = "id"
colour = "red"
)");
  CommandOutput r = Shardctl({"validate", "-c", path});
  EXPECT_EQ(r.out,
            path + ":6:43: distributions.d.slices: hash values "
                   "[0x0000000000000010, 0x0000000000000020) are not covered "
                   "by any slice\n" +
            path + ":6:68: distributions.d: unknown shard 's2' (defined "
                   "shards: s1)\n" +
            path + ":10:1: tables.t.colour: unknown setting (allowed here: "
                   "distribution, key, hash_key, reference)\n");
  ExpectOneLineError(r, 1, "shardctl: " + path + ": 3 problems");

  CommandOutput json = Shardctl({"validate", "-c", path, "--format", "json"});
  EXPECT_EQ(json.exit_code, 1);
  EXPECT_THAT(json.out, HasSubstr("{\"ok\":false,\"problems\":[{\"file\":\"" +
                                  path + "\",\"line\":6,\"column\":43,"));
}

TEST_F(CliTest, ValidateMissingFile) {
  CommandOutput r = Shardctl({"validate", "-c", "/nonexistent.toml"});
  EXPECT_EQ(r.out, "/nonexistent.toml: cannot read the configuration: No such "
                   "file or directory\n");
  ExpectOneLineError(r, 1, "shardctl: /nonexistent.toml: 1 problem");
}

TEST_F(CliTest, RouteAgreesWithTheLibrary) {
  absl::StatusOr<Config> config = LoadConfig(kExample);
  ASSERT_TRUE(config.ok()) << config.status();
  std::vector<std::string> all = {"route", "-c", kExample, "users"};
  std::string all_expected;
  for (int64_t id : {0, 1, 42, -7, 123456789}) {
    absl::StatusOr<Placement> p = config->map.Place("users", Key::Integer(id));
    ASSERT_TRUE(p.ok());
    CommandOutput r = Shardctl({"route", "-c", kExample, "users", std::to_string(id)});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, config->map.shard(p->shard).name + "\n");
    all.push_back(std::to_string(id));
    all_expected += r.out;
  }
  // Several keys: one line each, in order.
  CommandOutput r = Shardctl(all);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, all_expected);
}

TEST_F(CliTest, RouteJson) {
  // int8 42 hashes to 0xd5a6f8c838df27c8 (a golden vector), in the last of
  // three even slices.
  CommandOutput r =
      Shardctl({"route", "-c", kExample, "orders", "42", "--format", "json"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out,
            "{\"table\":\"orders\",\"key\":\"42\",\"distribution\":\"users\","
            "\"strategy\":\"hash\",\"shard\":\"s3\",\"epoch\":1,"
            "\"hash\":\"0xd5a6f8c838df27c8\",\"slice\":{\"from\":"
            "\"0xaaaaaaaaaaaaaaaa\",\"to\":null}}\n");
  CommandOutput range =
      Shardctl({"route", "-c", kExample, "events", "1500000", "--format", "json"});
  EXPECT_THAT(range.out, HasSubstr("\"shard\":\"s2\",\"epoch\":1,\"slice\":{"
                                   "\"from\":\"1000000\",\"to\":\"2000000\"}"));
  CommandOutput region = Shardctl({"route", "-c", kExample, "customers", "us",
                                   "--hash-key", "5", "--format", "json"});
  EXPECT_EQ(region.exit_code, 0) << region.err;
  EXPECT_THAT(region.out, HasSubstr("\"region\":\"us\",\"default\":false"));
}

TEST_F(CliTest, RouteErrors) {
  ExpectOneLineError(Shardctl({"route", "-c", kExample, "nope", "1"}), 1,
                     "shardctl: table 'nope' is not in the shard map (tables: "
                     "users, orders, events, customers, countries)");
  ExpectOneLineError(Shardctl({"route", "-c", kExample, "users", "abc"}), 1,
                     "shardctl: invalid int8 value \"abc\": expected a "
                     "decimal integer");
  ExpectOneLineError(Shardctl({"route", "-c", kExample, "countries", "1"}), 1,
                     "shardctl: table 'countries' is a reference table: "
                     "every shard holds all of its rows");
  ExpectOneLineError(Shardctl({"route", "-c", kExample, "customers", "us"}), 1,
                     "a hash-key value is needed to place a row (give it with "
                     "--hash-key)");
  ExpectOneLineError(
      Shardctl({"route", "-c", kExample, "users", "1", "--hash-key", "2"}), 1,
      "--hash-key is only for region distributions");
}

TEST_F(CliTest, InvalidConfigIsOneLineForOtherCommands) {
  const std::string path = Write("two.toml", R"([shards.s1]
dsn = "host=127.0.0.1 port=1 dbname=a"
[tables.t]
distribution = "x"
key = "id"
colour = 1
)");
  ExpectOneLineError(
      Shardctl({"map", "show", "-c", path}), 1,
      "shardctl: " + path +
          ":4:16: tables.t.distribution: unknown distribution 'x' (defined: "
          "none) (and 1 more problems: run 'shardctl validate -c " + path + "')");
}

TEST_F(CliTest, MapShowMasksPasswords) {
  for (const char* format : {"table", "json"}) {
    CommandOutput r = Shardctl({"map", "show", "-c", kExample, "--format", format});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_THAT(r.out, Not(HasSubstr("hunter2")));
    EXPECT_THAT(r.out, HasSubstr("password=********"));
  }
  CommandOutput table = Shardctl({"map", "show", "-c", kExample});
  EXPECT_THAT(table.out, HasSubstr("0x5555555555555555  0xaaaaaaaaaaaaaaaa  "
                                   "33.33%  s2\n"));
  EXPECT_THAT(table.out, HasSubstr("orders     users"));
  CommandOutput json = Shardctl({"map", "show", "-c", kExample, "--format", "json"});
  EXPECT_THAT(json.out,
              HasSubstr("{\"name\":\"events\",\"strategy\":\"range\","
                        "\"key_type\":\"int8\",\"slices\":[{\"from\":null,"
                        "\"to\":1000000,\"shard\":\"s1\"}"));
  EXPECT_THAT(json.out, HasSubstr("\"regions\":[{\"name\":\"eu\",\"shards\":"
                                  "[\"s1\"]},{\"name\":\"us\",\"shards\":"
                                  "[\"s2\",\"s3\"]}],\"default\":\"s1\""));
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  ExpectOneLineError(Shardctl({}), 2, "shardctl: A subcommand is required");
  ExpectOneLineError(Shardctl({"frobnicate"}), 2,
                     "shardctl: unknown command 'frobnicate' (commands: "
                     "validate, map, route, sql, exec, recover, load, health, "
                     "failover, switchover, move, split, moves, rebalance, "
                     "hash, dev; see 'shardctl --help')");
  ExpectOneLineError(Shardctl({"route", "users", "1"}), 2,
                     "--config is required (see 'shardctl route --help')");
  ExpectOneLineError(Shardctl({"recover"}), 2,
                     "--config is required (see 'shardctl recover --help')");
  ExpectOneLineError(Shardctl({"map", "show", "-c", kExample, "--format", "xml"}),
                     2, "xml");
  ExpectOneLineError(Shardctl({"map", "-c", kExample}), 2,
                     "(see 'shardctl map --help')");
}

TEST_F(CliTest, SqlNeedsAStatementOrStdin) {
  ExpectOneLineError(Shardctl({"sql", "-c", kExample}), 1,
                     "shardctl: give a statement with -e SQL, or --stdin to "
                     "read them");
  ExpectOneLineError(Shardctl({"sql", "-c", kExample, "-e", "SELECT 1",
                               "--stdin"}),
                     2, "--execute excludes --stdin");
  ExpectOneLineError(
      Shardctl({"sql", "-c", ExampleWithoutCatalog(), "-e", "SELEC 1"}), 1,
                     "shardctl: ERROR 42601: syntax error at or near \"SELEC\" "
                     "at position 1");
}

// With a [catalog], a cluster reads the live map from it before routing
// anything; an unreachable one is an error that says why.
TEST_F(CliTest, UnreachableCatalogIsRefusedBeforeRouting) {
  ExpectOneLineError(
      Shardctl({"sql", "-c", kExample, "-e", "SELECT 1"}), 1,
      "shardctl: cannot read the live shard map from the catalog "
      "(host=127.0.0.1 port=6000 dbname=shardkit)");
  CommandOutput r = Shardctl({"sql", "-c", kExample, "-e", "SELECT 1"});
  EXPECT_THAT(r.err, HasSubstr("does not route by the configuration alone "
                               "while a catalog is configured"));
}

TEST_F(CliTest, FailoverAndSwitchoverHelpAndUsageErrors) {
  CommandOutput failover = Shardctl({"failover", "--help"});
  EXPECT_EQ(failover.exit_code, 0) << failover.err;
  EXPECT_THAT(failover.out, HasSubstr("Usage: shardctl failover [OPTIONS] SHARD"));
  EXPECT_THAT(failover.out, HasSubstr("Promote a replica of SHARD to primary"));
  CommandOutput switchover = Shardctl({"switchover", "--help"});
  EXPECT_EQ(switchover.exit_code, 0) << switchover.err;
  EXPECT_THAT(switchover.out,
              HasSubstr("Usage: shardctl switchover [OPTIONS] SHARD"));
  EXPECT_THAT(switchover.out, HasSubstr("losing no write"));
  ExpectOneLineError(Shardctl({"failover", "-c", kExample}), 2,
                     "shardctl: SHARD is required (see 'shardctl failover "
                     "--help')");
  ExpectOneLineError(Shardctl({"switchover", "-c", kExample}), 2,
                     "shardctl: SHARD is required (see 'shardctl switchover "
                     "--help')");
}

TEST_F(CliTest, LoadHelpAndUsageErrors) {
  CommandOutput help = Shardctl({"load", "--help"});
  EXPECT_EQ(help.exit_code, 0) << help.err;
  EXPECT_THAT(help.out, HasSubstr("Usage: shardctl load [OPTIONS] TABLE"));
  EXPECT_THAT(help.out, HasSubstr("nothing is loaded"));
  EXPECT_THAT(help.out, HasSubstr("--no-header"));
  EXPECT_THAT(help.out, HasSubstr("--columns a,b,c"));
  EXPECT_THAT(help.out, HasSubstr("shardctl load -c shards.toml users --csv "
                                  "users.csv"));

  ExpectOneLineError(Shardctl({"load", "-c", kExample}), 2,
                     "shardctl: TABLE is required (see 'shardctl load --help')");
  ExpectOneLineError(Shardctl({"load", "users"}), 2, "--config is required");
  ExpectOneLineError(
      Shardctl({"load", "-c", kExample, "users", "--header", "--no-header"}),
      2, "--no-header excludes --header");
  ExpectOneLineError(
      Shardctl({"load", "-c", kExample, "users", "--delimiter", "ab"}), 2,
      "shardctl: --delimiter: must be one character, or 'tab', not 'ab'");
  ExpectOneLineError(
      Shardctl({"load", "-c", kExample, "users", "--format", "csv"}), 2,
      "--format");
}

// Failures that need no running server: exit 1, one line.
TEST_F(CliTest, LoadFailsBeforeConnecting) {
  ExpectOneLineError(
      Shardctl({"load", "-c", kExample, "users", "--csv", "/nonexistent.csv"}),
      1, "shardctl: cannot read /nonexistent.csv: No such file or directory");
  const std::string path = Write("load.toml", R"([shards.s1]
dsn = "host=127.0.0.1 port=1 dbname=a"
[distributions.d]
strategy = "hash"
key_type = "int8"
shards = ["s1"]
[tables.t]
distribution = "d"
key = "id"
)");
  ExpectOneLineError(
      Shardctl({"load", "-c", path, "nope", "--csv", kExample}), 1,
      "shardctl: table \"nope\" is not in the shard map (its tables: t); "
      "add it to [tables] in the configuration, or set [router] "
      "default_shard");
  ExpectOneLineError(Shardctl({"load", "-c", path, "t", "--csv", kExample}), 1,
                     "shardctl: shard s1 (host=127.0.0.1 port=1 dbname=a) is "
                     "unreachable");
  ExpectOneLineError(
      Shardctl({"load", "-c", "/nonexistent.toml", "users"}), 1,
      "shardctl: ");
  ExpectOneLineError(Shardctl({"load", "-c", ExampleWithoutCatalog(), "users",
                                "--null", ","}),
                     1,
                     "shardctl: the NULL string \",\" cannot hold the "
                     "delimiter ','");
}

TEST_F(CliTest, MoveCommandsHelpAndUsageErrors) {
  CommandOutput move = Shardctl({"move", "--help"});
  EXPECT_EQ(move.exit_code, 0) << move.err;
  EXPECT_THAT(move.out, HasSubstr("--slice FROM:TO"));
  EXPECT_THAT(move.out, HasSubstr("shardctl moves resume ID"));
  EXPECT_THAT(Shardctl({"split", "--help"}).out, HasSubstr("--half"));
  EXPECT_THAT(Shardctl({"rebalance", "--help"}).out, HasSubstr("--dry-run"));
  EXPECT_THAT(Shardctl({"moves", "abort", "--help"}).out,
              HasSubstr("point of no return"));

  ExpectOneLineError(
      Shardctl({"move", "-c", kExample, "--distribution", "users", "--to",
                "s2"}),
      2, "give the keys that move: --slice FROM:TO");
  ExpectOneLineError(
      Shardctl({"move", "-c", kExample, "--distribution", "users", "--slice",
                ":0x10", "--region", "eu", "--to", "s2"}),
      2, "--slice excludes --region");
  ExpectOneLineError(Shardctl({"move", "-c", kExample, "--slice", ":0x10",
                               "--to", "s2"}),
                     2, "--distribution is required");
  ExpectOneLineError(Shardctl({"split", "-c", kExample, "--distribution",
                               "users", "--slice", ":", "--at", "0x10",
                               "--half", "lower"}),
                     2, "--half requires --to");
  ExpectOneLineError(Shardctl({"moves", "status", "-c", kExample}), 2,
                     "ID is required");
  ExpectOneLineError(Shardctl({"moves"}), 2, "A subcommand is required");
  ExpectOneLineError(Shardctl({"rebalance", "-c", kExample, "--by", "cpu"}),
                     2, "--by");
  ExpectOneLineError(
      Shardctl({"move", "-c", kExample, "--distribution", "users", "--slice",
                ":0x10", "--to", "s2", "--max-rate", "0"}),
      2, "--max-rate: Value 0 not in range 1 to 1000000000");
  ExpectOneLineError(Shardctl({"hash"}), 2,
                     "A subcommand is required (see 'shardctl hash --help')");

  // Without a [catalog] there is no live map to move in: each says so.
  const std::string no_catalog = ExampleWithoutCatalog();
  for (std::vector<std::string> cmd :
       {std::vector<std::string>{"move", "-c", no_catalog, "--distribution",
                                 "users", "--slice", ":0x1000000000000000",
                                 "--to", "s2"},
        {"split", "-c", no_catalog, "--distribution", "users", "--slice",
         ":", "--at", "0x10"},
        {"rebalance", "-c", no_catalog, "--dry-run"},
        {"moves", "list", "-c", no_catalog}}) {
    ExpectOneLineError(Shardctl(cmd), 1, "moving data needs a [catalog]");
  }
}

TEST_F(CliTest, HelpExplainsEachCommand) {
  for (std::vector<std::string> cmd :
       {std::vector<std::string>{"--help"}, {"validate", "--help"},
        {"map", "show", "--help"}, {"route", "--help"}, {"exec", "--help"},
        {"sql", "--help"}, {"recover", "--help"},
        {"dev", "up", "--help"}, {"dev", "down", "--help"},
        {"move", "--help"}, {"split", "--help"}, {"rebalance", "--help"},
        {"moves", "list", "--help"}, {"moves", "status", "--help"},
        {"moves", "resume", "--help"}, {"moves", "abort", "--help"}}) {
    CommandOutput r = Shardctl(cmd);
    EXPECT_EQ(r.exit_code, 0) << cmd[0];
    EXPECT_THAT(r.out, HasSubstr("Usage:"));
  }
  EXPECT_THAT(Shardctl({"route", "--help"}).out, HasSubstr("--hash-key"));
  EXPECT_THAT(Shardctl({"sql", "--help"}).out, HasSubstr("BEGIN"));
  EXPECT_THAT(Shardctl({"recover", "--help"}).out,
              HasSubstr("When to use it"));
}

}  // namespace
}  // namespace shardkit
