// What the router costs, each figure beside its baseline from the same run:
//
//   - BM_Router/point_* vs BM_Direct/point_*: a point SELECT and a point
//     UPDATE by primary key through Cluster::Execute, and the same statement
//     with PQexecParams on one persistent libpq connection per thread to the
//     server that owns the key; 1 and 2 client threads; statements per
//     second, and the client process's CPU per statement.
//   - BM_PlanForHit vs BM_PlanForMiss: Router::PlanFor on a cached statement,
//     and on a new statement text each call (parse and analyse).
//   - BM_FanOut/n vs BM_FanOut/1: a statement that names no key, so it runs
//     on every shard of a map over n = 1, 2, 4, 8 servers, vs the same
//     statement through libpq alone (BM_DirectFanOut/n: sent on a connection
//     to each server, then each result read).
//   - BM_RouterDirectTurns: BM_Router and BM_Direct alternating call by
//     call on each thread, so that the load of a shared machine falls on
//     both alike; counters give each side's wall time per call.
//
//   ninja -C build router_bench && build/tests/bench/router_bench
//
// The program starts 8 throwaway PostgreSQL servers (TestCluster: initdb on
// free loopback ports under /tmp, as the postgres user when run as root) the
// first time a benchmark needs them, and stops them before it exits. If they
// cannot start, those benchmarks are skipped with the reason. After the
// usual table it prints the ratios.
//
// Unless told otherwise on the command line it runs 15 short repetitions
// (0.1 s) of each benchmark, randomly interleaved, so that a busy spell of a
// shared machine spreads over both sides of each ratio; it shows only their
// aggregates, and takes the ratios from the medians.

#include <benchmark/benchmark.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "router/router.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"
#include "shardkit/key.h"
#include "tests/bench/turns.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using bench::Clock;
using bench::Microseconds;
using bench::Skip;
using bench::TakeTurns;

constexpr int kServers = 8;
constexpr std::array<int, 4> kFanOuts = {1, 2, 4, 8};
constexpr int64_t kUsers = 10000;
constexpr int64_t kProbeRows = 800;

// A statement of one parameter, and what it gives when all is well: the
// benchmarks check it once before they measure, so that they never time an
// error path.
struct Statement {
  const char* sql;
  enum class Expect { kOneRow, kOneRowUpdated, kNoRow } expect;
};

constexpr Statement kPointSelect = {
    "SELECT id, name, v FROM users WHERE id = $1",
    Statement::Expect::kOneRow};
constexpr Statement kPointUpdate = {"UPDATE users SET v = v + 1 WHERE id = $1",
                                    Statement::Expect::kOneRowUpdated};
// No key condition: every shard of the map. No row has this name.
constexpr Statement kProbe = {"SELECT id FROM probe WHERE name = $1",
                              Statement::Expect::kNoRow};
constexpr char kAbsentName[] = "nobody";

constexpr char kSchema[] =
    "CREATE TABLE users (id int8 PRIMARY KEY, name text NOT NULL, "
    "v int8 NOT NULL);"
    "CREATE TABLE probe (id int8 PRIMARY KEY, name text NOT NULL);"
    "CREATE INDEX probe_name ON probe (name)";

// users: hash over s1 and s2. Point statements use only keys s1 owns, so
// the router and libpq talk to the same server.
constexpr char kPointMap[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.users]
distribution = "users"
key = "id"
)";

std::string ProbeMap(int shards) {
  std::vector<std::string> names;
  for (int i = 1; i <= shards; ++i) names.push_back(absl::StrCat("\"s", i, "\""));
  return absl::StrCat(
      "[distributions.probe]\nstrategy = \"hash\"\nkey_type = \"int8\"\n"
      "shards = [",
      absl::StrJoin(names, ", "),
      "]\n[tables.probe]\ndistribution = \"probe\"\nkey = \"id\"\n");
}

// The servers, and clusters over them, for the whole run.
struct Servers {
  std::unique_ptr<testing::TestCluster> servers;
  std::unique_ptr<Cluster> point;  // kPointMap
  // Keys of users that s1 owns, and each as a parameter list and as text.
  std::vector<std::vector<Param>> s1_key_params;
  std::vector<std::string> s1_keys;
  // kFanOuts[i] shards: probe over s1..s<n>.
  std::array<std::unique_ptr<Cluster>, kFanOuts.size()> fan_out;
};

absl::Status AllShardsOk(const std::vector<ShardOutcome>& outcomes) {
  for (const ShardOutcome& o : outcomes) {
    if (!o.status.ok()) return o.status;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Cluster>> OpenCluster(
    const testing::TestCluster& servers, const std::string& name,
    const std::string& body) {
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::OpenFile(servers.WriteConfig(name, body));
  if (!cluster.ok()) {
    return absl::Status(cluster.status().code(),
                        absl::StrCat(name, ": ", cluster.status().message()));
  }
  return cluster;
}

// `count` rows "(id, 'name-id'...)" from `first`, through the router, which
// puts each on its shard.
absl::Status Insert(const Cluster& cluster, const std::string& head,
                    int64_t first, int64_t count, bool with_v) {
  constexpr int64_t kBatch = 1000;
  for (int64_t from = first; from < first + count; from += kBatch) {
    std::vector<std::string> rows;
    for (int64_t id = from; id < std::min(from + kBatch, first + count); ++id) {
      rows.push_back(with_v ? absl::StrCat("(", id, ", 'user-", id, "', 0)")
                            : absl::StrCat("(", id, ", 'name-", id, "')"));
    }
    absl::StatusOr<Result> done =
        cluster.Execute(absl::StrCat(head, absl::StrJoin(rows, ", ")));
    if (!done.ok()) return done.status();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Servers>> StartServers() {
  auto env = std::make_unique<Servers>();
  absl::StatusOr<std::unique_ptr<testing::TestCluster>> started =
      testing::TestCluster::Start(kServers);
  if (!started.ok()) {
    return absl::Status(started.status().code(),
                        absl::StrCat("starting ", kServers,
                                     " PostgreSQL servers: ",
                                     started.status().message()));
  }
  env->servers = *std::move(started);
  std::fprintf(stderr,
               "router_bench: %d servers under %s (if this run is killed, "
               "stop them with `shardctl dev down --dir %s`)\n",
               kServers, env->servers->cluster().dir.c_str(),
               env->servers->cluster().dir.c_str());

  absl::StatusOr<std::unique_ptr<Cluster>> point =
      OpenCluster(*env->servers, "point.toml", kPointMap);
  if (!point.ok()) return point.status();
  env->point = *std::move(point);
  for (size_t i = 0; i < kFanOuts.size(); ++i) {
    absl::StatusOr<std::unique_ptr<Cluster>> cluster =
        OpenCluster(*env->servers, absl::StrCat("probe", kFanOuts[i], ".toml"),
                    ProbeMap(kFanOuts[i]));
    if (!cluster.ok()) return cluster.status();
    env->fan_out[i] = *std::move(cluster);
  }

  // Every map lists all 8 servers, so this reaches each of them.
  absl::Status status = AllShardsOk(env->point->ExecuteOnAllShards(kSchema));
  if (status.ok()) {
    status = Insert(*env->point, "INSERT INTO users (id, name, v) VALUES ", 1,
                    kUsers, /*with_v=*/true);
  }
  if (status.ok()) {
    status = Insert(*env->fan_out.back(), "INSERT INTO probe (id, name) VALUES ",
                    1, kProbeRows, /*with_v=*/false);
  }
  if (status.ok()) {
    status = AllShardsOk(env->point->ExecuteOnAllShards("VACUUM ANALYZE"));
  }
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("loading the tables: ",
                                                    status.message()));
  }

  const std::shared_ptr<const ShardMap> map = env->point->map();
  for (int64_t id = 1; id <= kUsers; ++id) {
    absl::StatusOr<Placement> where = map->Place("users", Key::Integer(id));
    if (!where.ok()) return where.status();
    if (where->shard != 0) continue;
    env->s1_keys.push_back(absl::StrCat(id));
    env->s1_key_params.push_back({absl::StrCat(id)});
  }
  return env;
}

// Started by the first benchmark that needs them; deleted in main.
struct Started {
  std::unique_ptr<Servers> env;
  absl::Status status;
};
Started* started = nullptr;
std::once_flag start_once;

absl::StatusOr<const Servers*> GetServers() {
  std::call_once(start_once, [] {
    started = new Started;
    absl::StatusOr<std::unique_ptr<Servers>> env = StartServers();
    if (env.ok()) {
      started->env = *std::move(env);
    } else {
      started->status = env.status();
    }
  });
  if (started->env == nullptr) return started->status;
  return started->env.get();
}

// This thread's share of `n` keys: [first, last).
std::pair<size_t, size_t> ThreadShare(const benchmark::State& state, size_t n) {
  const size_t per_thread = n / state.threads();
  const size_t first = per_thread * state.thread_index();
  return {first, first + per_thread};
}

absl::Status CheckOutcome(const Statement& statement, int64_t rows_affected,
                          size_t rows) {
  bool ok = false;
  switch (statement.expect) {
    case Statement::Expect::kOneRow:
      ok = rows == 1;
      break;
    case Statement::Expect::kOneRowUpdated:
      ok = rows_affected == 1;
      break;
    case Statement::Expect::kNoRow:
      ok = rows == 0;
      break;
  }
  if (ok) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("\"", statement.sql, "\" gave ",
                                          rows, " rows, ", rows_affected,
                                          " affected"));
}

// `statement` through `cluster`. With `shards`, also checks that it ran on
// that many shards and gave what it should (for the warm-up call: the
// measured calls check only the status).
absl::Status ViaRouter(const Cluster& cluster, const Statement& statement,
                       const std::vector<Param>& params,
                       std::optional<size_t> shards = std::nullopt) {
  absl::StatusOr<Result> result = cluster.Execute(statement.sql, params);
  if (!result.ok()) return result.status();
  benchmark::DoNotOptimize(*result);
  if (!shards) return absl::OkStatus();
  if (result->shards.size() != *shards) {
    return absl::InternalError(absl::StrCat("\"", statement.sql, "\" ran on ",
                                            result->shards.size(),
                                            " shards, not ", *shards));
  }
  return CheckOutcome(statement, result->rows_affected, result->rows.size());
}

struct PgConnCloser {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct PgResultClearer {
  void operator()(PGresult* result) const { PQclear(result); }
};

// One persistent libpq connection, used as an application uses libpq: the
// baseline of the router.
class Direct {
 public:
  explicit Direct(const std::string& dsn) : conn_(PQconnectdb(dsn.c_str())) {}

  // OK, or why the connection failed.
  absl::Status Connected() const {
    if (PQstatus(conn_.get()) == CONNECTION_OK) return absl::OkStatus();
    return absl::UnavailableError(
        absl::StrCat("libpq: ", PQerrorMessage(conn_.get())));
  }

  // `statement` with its one parameter (PQexecParams, text formats); the
  // values are read where libpq holds them. With `check`, also that it gave
  // what it should.
  absl::Status Run(const Statement& statement, const char* param,
                   bool check = false) {
    const char* values[1] = {param};
    std::unique_ptr<PGresult, PgResultClearer> result(PQexecParams(
        conn_.get(), statement.sql, 1, /*paramTypes=*/nullptr, values,
        /*paramLengths=*/nullptr, /*paramFormats=*/nullptr,
        /*resultFormat=*/0));
    return Read(statement, result.get(), check);
  }

  // Run in two halves, so that one thread can have the statement run on
  // several servers at once: Send returns once it is sent, Receive waits for
  // its outcome.
  absl::Status Send(const Statement& statement, const char* param) {
    const char* values[1] = {param};
    if (PQsendQueryParams(conn_.get(), statement.sql, 1,
                          /*paramTypes=*/nullptr, values,
                          /*paramLengths=*/nullptr, /*paramFormats=*/nullptr,
                          /*resultFormat=*/0) == 1) {
      return absl::OkStatus();
    }
    return absl::InternalError(
        absl::StrCat("libpq: ", PQerrorMessage(conn_.get())));
  }
  absl::Status Receive(const Statement& statement, bool check = false) {
    absl::Status outcome;
    while (PGresult* raw = PQgetResult(conn_.get())) {
      std::unique_ptr<PGresult, PgResultClearer> result(raw);
      absl::Status status = Read(statement, result.get(), check);
      if (outcome.ok()) outcome = status;
    }
    return outcome;
  }

 private:
  // PQcmdTuples takes a non-const PGresult.
  absl::Status Read(const Statement& statement, PGresult* result,
                    bool check) const {
    const ExecStatusType status = PQresultStatus(result);
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      return absl::InternalError(absl::StrCat(
          "libpq: ", PQresStatus(status), ": ", PQerrorMessage(conn_.get())));
    }
    const int rows = PQntuples(result);
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < PQnfields(result); ++c) {
        benchmark::DoNotOptimize(PQgetvalue(result, r, c));
      }
    }
    if (!check) return absl::OkStatus();
    return CheckOutcome(statement, std::atoll(PQcmdTuples(result)),
                        static_cast<size_t>(rows));
  }

  std::unique_ptr<PGconn, PgConnCloser> conn_;
};

void BM_Router(benchmark::State& state, Statement statement) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Cluster& cluster = *(*env)->point;
  const std::vector<std::vector<Param>>& keys = (*env)->s1_key_params;
  const auto [first, last] = ThreadShare(state, keys.size());
  // Also warms this thread's pooled connection.
  absl::Status status = ViaRouter(cluster, statement, keys[first], 1);
  if (!status.ok()) return Skip(state, status.ToString());

  size_t i = first;
  for (auto _ : state) {
    status = ViaRouter(cluster, statement, keys[i]);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
    if (++i == last) i = first;
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_Direct(benchmark::State& state, Statement statement) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  Direct direct((*env)->servers->dsn(0));
  absl::Status status = direct.Connected();
  if (!status.ok()) return Skip(state, status.ToString());
  const std::vector<std::string>& params = (*env)->s1_keys;
  const auto [first, last] = ThreadShare(state, params.size());
  status = direct.Run(statement, params[first].c_str(), /*check=*/true);
  if (!status.ok()) return Skip(state, status.ToString());

  size_t i = first;
  for (auto _ : state) {
    status = direct.Run(statement, params[i].c_str());
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
    if (++i == last) i = first;
  }
  state.SetItemsProcessed(state.iterations());
}

// BM_Router and BM_Direct at once, so that their ratio holds up when other
// work shares the machine (both sides are slowed alike).
void BM_RouterDirectTurns(benchmark::State& state, Statement statement) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Cluster& cluster = *(*env)->point;
  Direct direct((*env)->servers->dsn(0));
  absl::Status status = direct.Connected();
  if (!status.ok()) return Skip(state, status.ToString());
  const std::vector<std::vector<Param>>& params = (*env)->s1_key_params;
  const std::vector<std::string>& keys = (*env)->s1_keys;
  const auto [first, last] = ThreadShare(state, keys.size());
  status = ViaRouter(cluster, statement, params[first], 1);
  if (status.ok()) status = direct.Run(statement, keys[first].c_str(), true);
  if (!status.ok()) return Skip(state, status.ToString());

  // Each side on its own rows: an UPDATE must not find the row the other
  // side's UPDATE just left (and its pruning and hint-bit work).
  size_t router_i = first;
  size_t direct_i = first + (last - first) / 2;
  TakeTurns(
      state,
      [&] {
        absl::Status s = ViaRouter(cluster, statement, params[router_i]);
        if (++router_i == last) router_i = first;
        return s;
      },
      [&] {
        absl::Status s = direct.Run(statement, keys[direct_i].c_str());
        if (++direct_i == last) direct_i = first;
        return s;
      },
      "router_us", "direct_us");
}

void PointArgs(benchmark::internal::Benchmark* b) {
  b->Threads(1)->Threads(2)->UseRealTime()->MeasureProcessCPUTime()->Unit(
      benchmark::kMicrosecond);
}

BENCHMARK_CAPTURE(BM_Router, point_select, kPointSelect)->Apply(PointArgs);
BENCHMARK_CAPTURE(BM_Direct, point_select, kPointSelect)->Apply(PointArgs);
BENCHMARK_CAPTURE(BM_Router, point_update, kPointUpdate)->Apply(PointArgs);
BENCHMARK_CAPTURE(BM_Direct, point_update, kPointUpdate)->Apply(PointArgs);
BENCHMARK_CAPTURE(BM_RouterDirectTurns, point_select, kPointSelect)
    ->Apply(PointArgs);
BENCHMARK_CAPTURE(BM_RouterDirectTurns, point_update, kPointUpdate)
    ->Apply(PointArgs);

// The map PlanFor plans against: kPointMap, without servers (PlanFor never
// connects).
std::shared_ptr<const ShardMap> PlanningMap() {
  std::string toml =
      "[shards.s1]\ndsn = \"host=127.0.0.1 port=1 dbname=app\"\n"
      "[shards.s2]\ndsn = \"host=127.0.0.1 port=2 dbname=app\"\n";
  toml += kPointMap;
  absl::StatusOr<Config> config = ParseConfig(toml, "plan.toml");
  if (!config.ok()) return nullptr;
  return std::make_shared<const ShardMap>(config->map);
}

void BM_PlanForHit(benchmark::State& state) {
  // One router for all threads, so that they share its cache (and lock).
  static internal::Router* const router = new internal::Router();
  static const std::shared_ptr<const ShardMap>* const map =
      new std::shared_ptr<const ShardMap>(PlanningMap());
  if (*map == nullptr) return Skip(state, "the planning map does not parse");
  if (!router->PlanFor(*map, kPointSelect.sql).ok()) {
    return Skip(state, "the point SELECT does not plan");
  }
  for (auto _ : state) {
    auto plan = router->PlanFor(*map, kPointSelect.sql);
    benchmark::DoNotOptimize(plan);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PlanForHit)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime()
    ->MeasureProcessCPUTime();

// A new text each call; the cache starts over every
// Router::kMaxCachedPlans statements, as it does in use.
void BM_PlanForMiss(benchmark::State& state) {
  const std::shared_ptr<const ShardMap> map = PlanningMap();
  if (map == nullptr) return Skip(state, "the planning map does not parse");
  internal::Router router;
  int64_t n = 0;
  for (auto _ : state) {
    auto plan =
        router.PlanFor(map, absl::StrCat(kPointSelect.sql, " AND v > ", n++));
    if (!plan.ok()) {
      state.SkipWithError(plan.status().ToString().c_str());
      break;
    }
    benchmark::DoNotOptimize(plan);
  }
  state.SetItemsProcessed(state.iterations());
}
// Process CPU time: the parse runs on the parser thread.
BENCHMARK(BM_PlanForMiss)->UseRealTime()->MeasureProcessCPUTime();

const Cluster& FanOutCluster(const Servers& env, int64_t shards) {
  const auto it = std::find(kFanOuts.begin(), kFanOuts.end(), shards);
  return *env.fan_out[it - kFanOuts.begin()];
}

void BM_FanOut(benchmark::State& state) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Cluster& cluster = FanOutCluster(**env, state.range(0));
  const std::vector<Param> params = {std::string(kAbsentName)};
  // Also warms a pooled connection to each shard.
  absl::Status status =
      ViaRouter(cluster, kProbe, params, static_cast<size_t>(state.range(0)));
  if (!status.ok()) return Skip(state, status.ToString());

  for (auto _ : state) {
    status = ViaRouter(cluster, kProbe, params);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

BENCHMARK(BM_FanOut)
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->UseRealTime()
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);

// The baseline of BM_FanOut: what an application that knows the servers
// could do with libpq alone, one connection to each of the first n servers:
// the statement sent on every connection, then each outcome read in turn.
void BM_DirectFanOut(benchmark::State& state) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  std::vector<std::unique_ptr<Direct>> servers;
  for (int i = 0; i < state.range(0); ++i) {
    servers.push_back(std::make_unique<Direct>((*env)->servers->dsn(i)));
    absl::Status status = servers.back()->Connected();
    if (!status.ok()) return Skip(state, status.ToString());
  }
  auto fan_out = [&](bool check) {
    absl::Status outcome;
    for (auto& server : servers) outcome.Update(server->Send(kProbe, kAbsentName));
    for (auto& server : servers) outcome.Update(server->Receive(kProbe, check));
    return outcome;
  };
  absl::Status status = fan_out(/*check=*/true);
  if (!status.ok()) return Skip(state, status.ToString());

  for (auto _ : state) {
    status = fan_out(/*check=*/false);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DirectFanOut)
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->UseRealTime()
    ->MeasureProcessCPUTime()
    ->Unit(benchmark::kMicrosecond);

// The console table, then the ratios: from the "median" aggregate of each
// benchmark when there are repetitions, else from its one run.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      const std::string key = KeyOf(run);
      if (run.error_occurred) {
        errors_[key] = run.error_message;
        continue;
      }
      const bool median =
          run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type == Run::RT_Aggregate && !median) continue;
      Figures& f = (median ? medians_ : singles_)[key];
      const double iterations = static_cast<double>(run.iterations);
      f.real_seconds = run.real_accumulated_time / iterations;
      f.cpu_seconds = run.cpu_accumulated_time / iterations;
      for (const auto& [name, counter] : run.counters) {
        f.counters[name] = counter.value;
      }
    }
  }

  void Finalize() override {
    std::ostream& out = GetOutputStream();
    out << "\nRatios, of medians when there are repetitions. Throughput: "
           "calls/s (and client CPU per call). Latency: wall time per call. "
           "Turns: both sides alternating call by call in one benchmark, wall "
           "time per call; for router/direct the ratio is of the throughputs "
           "this gives (direct/router time).\n";
    out << absl::StrFormat("%-48s %14s %14s %8s  %s\n", "", "value",
                           "baseline", "ratio", "goal");
    for (const char* op : {"select", "update"}) {
      for (int threads : {1, 2}) {
        const std::string what = absl::StrFormat(
            "point %s, %d thread%s", absl::AsciiStrToUpper(op), threads,
            threads == 1 ? "" : "s");
        const std::string suffix = absl::StrCat("/point_", op, "/", threads);
        Throughput(out, what + ": router/direct",
                   absl::StrCat("BM_Router", suffix),
                   absl::StrCat("BM_Direct", suffix), ">= 0.95");
        Turns(out, what + ", turns: router/direct",
              absl::StrCat("BM_RouterDirectTurns", suffix), "router_us",
              "direct_us", ">= 0.95");
      }
    }
    Latency(out, "PlanFor: miss/hit", "BM_PlanForMiss/1", "BM_PlanForHit/1",
            "hit < 2 us");
    Throughput(out, "PlanFor hit: 2 threads/1 thread", "BM_PlanForHit/2",
               "BM_PlanForHit/1", "");
    for (int shards : {2, 4, 8}) {
      const std::string goal = shards == 8 ? "< 2" : "";
      Latency(out, absl::StrCat("fan-out: ", shards, " shards/1 shard"),
              absl::StrCat("BM_FanOut/", shards, "/1"), "BM_FanOut/1/1", goal);
      Latency(out, absl::StrCat("libpq fan-out: ", shards, " servers/1"),
              absl::StrCat("BM_DirectFanOut/", shards, "/1"),
              "BM_DirectFanOut/1/1", "");
    }
    for (int shards : {1, 8}) {
      Latency(out, absl::StrCat("fan-out ", shards, ": router/libpq"),
              absl::StrCat("BM_FanOut/", shards, "/1"),
              absl::StrCat("BM_DirectFanOut/", shards, "/1"), "");
    }
    ConsoleReporter::Finalize();
  }

 private:
  struct Figures {
    double real_seconds = 0;  // per iteration
    double cpu_seconds = 0;   // per iteration
    std::map<std::string, double> counters;
  };

  // function name [/ args] / threads; repetitions and flags left out.
  static std::string KeyOf(const Run& run) {
    std::string key = run.run_name.function_name;
    if (!run.run_name.args.empty()) absl::StrAppend(&key, "/", run.run_name.args);
    absl::StrAppend(&key, "/", run.threads);
    return key;
  }

  const Figures* Find(const std::string& key) const {
    if (auto it = medians_.find(key); it != medians_.end()) return &it->second;
    if (auto it = singles_.find(key); it != singles_.end()) return &it->second;
    return nullptr;
  }

  // The figures of benchmark `key`; if it has none, prints why on the row.
  const Figures* Get(std::ostream& out, const std::string& label,
                     const std::string& key) const {
    if (const Figures* f = Find(key)) return f;
    auto error = errors_.find(key);
    out << absl::StrFormat("%-48s %s\n", label,
                           error == errors_.end()
                               ? absl::StrCat(key, " did not run")
                               : absl::StrCat(key, ": ", error->second));
    return nullptr;
  }

  static double Counter(const Figures& f, const std::string& name) {
    auto it = f.counters.find(name);
    return it == f.counters.end() ? 0 : it->second;
  }

  void Throughput(std::ostream& out, const std::string& label,
                  const std::string& a, const std::string& b,
                  const std::string& goal) const {
    const Figures* fa = Get(out, label, a);
    const Figures* fb = fa == nullptr ? nullptr : Get(out, label, b);
    if (fb == nullptr) return;
    const double ra = Counter(*fa, "items_per_second");
    const double rb = Counter(*fb, "items_per_second");
    out << absl::StrFormat("%-48s %12.0f/s %12.0f/s %8.3f  %s\n", label, ra, rb,
                           ra / rb, goal);
    out << absl::StrFormat("%-48s %s %s %8.3f\n", "  client CPU per call",
                           Duration(fa->cpu_seconds), Duration(fb->cpu_seconds),
                           fa->cpu_seconds / fb->cpu_seconds);
  }

  void Latency(std::ostream& out, const std::string& label,
               const std::string& a, const std::string& b,
               const std::string& goal) const {
    const Figures* fa = Get(out, label, a);
    const Figures* fb = fa == nullptr ? nullptr : Get(out, label, b);
    if (fb == nullptr) return;
    out << absl::StrFormat("%-48s %s %s %8.3f  %s\n", label,
                           Duration(fa->real_seconds), Duration(fb->real_seconds),
                           fa->real_seconds / fb->real_seconds, goal);
  }

  // Two counters of one benchmark, microseconds per call: the ratio of the
  // throughputs they make (b/a).
  void Turns(std::ostream& out, const std::string& label,
             const std::string& key, const std::string& a,
             const std::string& b, const std::string& goal) const {
    const Figures* f = Get(out, label, key);
    if (f == nullptr) return;
    const double ua = Counter(*f, a);
    const double ub = Counter(*f, b);
    out << absl::StrFormat("%-48s %s %s %8.3f  %s\n", label,
                           Duration(ua * 1e-6), Duration(ub * 1e-6), ub / ua,
                           goal);
  }

  static std::string Duration(double seconds) {
    return seconds < 1e-6 ? absl::StrFormat("%11.1f ns", seconds * 1e9)
                          : absl::StrFormat("%11.1f us", seconds * 1e6);
  }

  std::map<std::string, Figures> medians_;
  std::map<std::string, Figures> singles_;
  std::map<std::string, std::string> errors_;
};

}  // namespace
}  // namespace shardkit

int main(int argc, char** argv) {
  // Defaults first: flags given on the command line come later and win.
  std::vector<char*> args = {argv[0]};
  char repetitions[] = "--benchmark_repetitions=15";
  char min_time[] = "--benchmark_min_time=0.1";
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  char aggregates[] = "--benchmark_display_aggregates_only=true";
  args.insert(args.end(), {repetitions, min_time, interleave, aggregates});
  args.insert(args.end(), argv + 1, argv + argc);
  int args_count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;

  shardkit::RatioReporter reporter(
      isatty(STDOUT_FILENO) ? benchmark::ConsoleReporter::OO_Color
                            : benchmark::ConsoleReporter::OO_None);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  // Stops the servers (if a benchmark started them) and removes their files.
  delete shardkit::started;
  return 0;
}
