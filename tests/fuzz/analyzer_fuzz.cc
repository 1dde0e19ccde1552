// libFuzzer target: SQL text through the parser, the analyzer and the
// choice of shards, as Router::PlanFor and Router::Execute run them, against
// fixed shard maps with every strategy and key type (one with a [router]
// default_shard, one without). Any Status is a correct answer; a crash, a
// sanitizer report, a leak or a timeout is a bug.
//
// The input is the SQL text, or an amplified one (amplified_input.h) for
// the nesting depths and statement sizes that few-KiB inputs cannot reach.
// Beyond "no crash", it checks that a statement over kMaxStatementBytes is
// refused, that a statement that parses is no deeper than kMaxNestingDepth
// allows (the parser's estimate from tokens must bound the tree that
// libpg_query converts and unpacks by recursion), and that the shards chosen
// exist.

#include <pg_query/pg_query.pb-c.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "router/analyzer.h"
#include "router/parser_thread.h"
#include "router/sql_parser.h"
#include "router/tree_walk.h"
#include "shardkit/config.h"
#include "tests/fuzz/amplified_input.h"

namespace shardkit::internal {
namespace {

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
[distributions.sessions]
strategy = "hash"
key_type = "uuid"
slices = [ { to = "0x8000000000000000", shard = "s1" },
           { from = "0x8000000000000000", shard = "s2" } ]
[distributions.events]
strategy = "range"
key_type = "int8"
slices = [ { to = 100, shard = "s1" }, { from = 100, to = 200, shard = "s2" },
           { from = 200, shard = "s3" } ]
[distributions.small]
strategy = "range"
key_type = "int2"
slices = [ { to = 0, shard = "s1" }, { from = 0, shard = "s2" } ]
[distributions.names]
strategy = "range"
key_type = "text"
slices = [ { to = "m", shard = "s1" }, { from = "m", shard = "s3" } ]
[distributions.geo]
strategy = "region"
key_type = "text"
hash_key_type = "int8"
regions = { eu = "s1", us = ["s2", "s3"] }
default = "s1"
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
[tables.sessions]
distribution = "sessions"
key = "id"
[tables.events]
distribution = "events"
key = "id"
[tables.counters]
distribution = "small"
key = "k"
[tables.people]
distribution = "names"
key = "name"
[tables.customers]
distribution = "geo"
key = "region"
hash_key = "id"
[tables.countries]
reference = true
[tables."app.audit"]
reference = true
)";

const ShardMap& LoadMap(const std::string& toml) {
  absl::StatusOr<Config> config =
      ParseConfig(toml, "analyzer_fuzz.toml", nullptr,
                  [](std::string_view) { return std::nullopt; });
  if (!config.ok()) {
    std::cerr << "analyzer_fuzz: the fixed map does not load: "
              << config.status() << "\n";
    std::abort();
  }
  return (new Config(*std::move(config)))->map;  // for the process
}

// Statements naming tables not in the map are refused by one, run on
// shard s2 by the other.
const std::vector<const ShardMap*>& Maps() {
  static const auto* const maps = new std::vector<const ShardMap*>{
      &LoadMap(kMap),
      &LoadMap(std::string(kMap) + "[router]\ndefault_shard = \"s2\"\n")};
  return *maps;
}

// Values of every shape the key operands meet: keys of each type, NULL, an
// array literal for = ANY($n), integers beyond int2 and int8, junk.
const Params& SomeParams() {
  static const Params* const params = new Params{
      "7",
      "{1,NULL,\"x y\",42,\"a\\\"b\"}",
      std::nullopt,
      "99999999999999999999",
      "us",
      "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
      "-32769",
      "{}",
      "",
      "m",
  };
  return *params;
}

// Amplified statements stop here: room for 16,000 levels of "+(1)" (before
// statements were refused by depth, 40,000 overflowed the parser thread's
// stack), yet quick enough to run many: flat statements of this size take
// about half a second under the sanitizers.
constexpr size_t kAmplifiedBytes = size_t{64} << 10;

// A parse tree no deeper than this is within what kMaxNestingDepth allows:
// a level of the estimate is at most 8 messages of the tree (a scalar
// subquery, the deepest, is 6), plus a few for the statement itself.
constexpr int kMaxTreeDepth = 8 * kMaxNestingDepth + 64;

// The depth of the tree under `root`, in messages; without recursion, as
// the tree may be deeper than a stack allows (which is what it looks for).
int TreeDepth(const ProtobufCMessage* root) {
  int deepest = 0;
  std::vector<std::pair<const ProtobufCMessage*, int>> pending = {{root, 1}};
  while (!pending.empty()) {
    const auto [message, depth] = pending.back();
    pending.pop_back();
    deepest = std::max(deepest, depth);
    ForEachChild(message, [&, depth = depth](const ProtobufCMessage* child) {
      pending.emplace_back(child, depth + 1);
    });
  }
  return deepest;
}

void Check(bool ok, std::string_view what, const std::string& sql) {
  if (ok) return;
  std::cerr << "analyzer_fuzz: broken invariant: " << what << " ("
            << sql.size() << " bytes of SQL)\n";
  std::abort();
}

// As Router::Execute chooses the shards.
void Route(const RoutingPlan& plan, const ShardMap& map, const Params& params,
           const std::string& sql) {
  if (plan.kind == StatementKind::kInsert && plan.distribution != nullptr) {
    absl::StatusOr<std::vector<ShardId>> rows = InsertRowShards(plan, params);
    if (!rows.ok()) return;
    Check(rows->size() == plan.insert_keys.size(), "a shard for every row",
          sql);
    for (ShardId id : *rows) {
      Check(id < map.shards().size(), "rows go to shards of the map", sql);
    }
    return;
  }
  absl::StatusOr<std::vector<ShardId>> shards = TargetShards(plan, map, params);
  if (!shards.ok()) return;
  Check(!shards->empty(), "a statement runs somewhere", sql);
  for (ShardId id : *shards) {
    Check(id < map.shards().size(), "statements go to shards of the map", sql);
  }
}

struct Analyzed {
  const ShardMap* map;
  RoutingPlan plan;
};

// On the parser thread: parses `sql` and analyses each statement against
// each map, with what the router does to the tree of a plan it keeps.
std::vector<Analyzed> Analyze(const std::string& sql) {
  std::vector<Analyzed> out;
  absl::StatusOr<ParsedSql> parsed = ParsedSql::Parse(sql);
  Check(sql.size() <= kMaxStatementBytes || !parsed.ok(),
        "a statement over kMaxStatementBytes is refused", sql);
  if (!parsed.ok()) return out;
  // The router plans one statement at a time; every statement of the
  // string is one the analyzer may be given.
  for (size_t i = 0; i < parsed->size(); ++i) {
    PgQuery__Node* stmt = parsed->mutable_statement(i);
    Check(TreeDepth(&stmt->base) <= kMaxTreeDepth,
          "the parse tree is within kMaxNestingDepth", sql);
    if (i >= 16) continue;
    for (const ShardMap* map : Maps()) {
      absl::StatusOr<RoutingPlan> plan = AnalyzeStatement(*stmt, *map);
      if (!plan.ok()) continue;
      if (stmt->node_case == PG_QUERY__NODE__NODE_SELECT_STMT &&
          stmt->select_stmt->having_clause != nullptr) {
        VisitHaving(
            stmt->select_stmt->having_clause,
            [](PgQuery__Node* call) {
              (void)SimpleAggregateOf(*call->func_call);
            },
            [](PgQuery__Node*) {});
      }
      out.push_back({map, *std::move(plan)});
    }
  }
  // The router deparses what it rewrites: INSERT rows split by shard, a
  // SELECT whose rows or aggregates are combined across shards.
  if (parsed->size() == 1 && !out.empty()) {
    const RoutingPlan& plan = out[0].plan;
    if ((plan.kind == StatementKind::kInsert && plan.distribution) ||
        (plan.kind == StatementKind::kSelect &&
         (plan.offset || !plan.aggregates.empty()))) {
      (void)parsed->Deparse();
    }
  }
  return out;
}

}  // namespace
}  // namespace shardkit::internal

// libFuzzer spots a slow input by SIGALRM, and acts on it only in the thread
// that runs the input; the work runs on the parser thread. That thread is
// started here with SIGALRM blocked (it keeps the mask it starts with), so
// that the signal reaches the fuzzing thread.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  sigset_t alarm;
  sigemptyset(&alarm);
  sigaddset(&alarm, SIGALRM);
  pthread_sigmask(SIG_BLOCK, &alarm, nullptr);
  shardkit::internal::ParserThread::Default();
  pthread_sigmask(SIG_UNBLOCK, &alarm, nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardkit::internal;
  const std::string sql = shardkit::fuzz::AmplifiedInput(
      data, size, kAmplifiedBytes, kMaxStatementBytes);
  std::vector<Analyzed> plans;
  ParserThread::Default().Run([&] { plans = Analyze(sql); });
  for (const Analyzed& a : plans) {
    Route(a.plan, *a.map, SomeParams(), sql);
    Route(a.plan, *a.map, Params{}, sql);
  }
  return 0;
}
