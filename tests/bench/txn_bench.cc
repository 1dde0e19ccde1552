// What atomic commit across shards costs, each figure beside its baseline
// from the same run, on two throwaway PostgreSQL shards on loopback:
//
//   - BM_TwoPhase: Begin; UPDATE a row of s1; UPDATE a row of s2; Commit.
//     Both shards wrote, so the commit is two-phase (PREPARE TRANSACTION on
//     both, the decision recorded in the log on s1, COMMIT PREPARED on both).
//   - BM_TwoSingles: the same two UPDATEs as two independent single-shard
//     transactions (Begin; UPDATE s1; Commit; Begin; UPDATE s2; Commit),
//     each committed with a plain COMMIT: what an application pays when it
//     gives up atomicity across the two.
//   - BM_TwoPhaseSinglesTurns: the two alternating call by call on each
//     thread, so that the load of a shared machine falls on both alike;
//     counters give each side's wall time per call.
//   - BM_Execute: one UPDATE through Cluster::Execute (autocommit on one
//     shard), for reference.
//
// 1 and 4 client threads, each thread (and each side of a turn) on rows of
// its own, so that no write waits for another's row lock. One call of the
// first three is one pair of writes (a debit on s1 and a credit on s2); of
// BM_Execute, one write.
//
//   ninja -C build txn_bench && build/tests/bench/txn_bench [--durable]
//
// The program starts 2 PostgreSQL servers (TestCluster: initdb on free
// loopback ports under /tmp, as the postgres user when run as root, with
// the settings of `shardctl dev up`: fsync, synchronous_commit and
// full_page_writes off; with --durable, all three on, as in production) the
// first time a benchmark needs them, and stops them before it exits; if
// they cannot start, the benchmarks are skipped with the reason. After the
// usual table it prints the ratios, then checks that the money added up:
// the sum of balances over both shards is unchanged and no prepared
// transaction is left.
//
// Unless told otherwise on the command line it runs 15 repetitions (0.2 s)
// of each benchmark, randomly interleaved, shows only their aggregates, and
// takes the ratios from the medians (as router_bench does).

#include <benchmark/benchmark.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
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
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "shardkit/cluster.h"
#include "shardkit/transaction.h"
#include "tests/bench/turns.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using bench::Clock;
using bench::Microseconds;
using bench::Skip;
using bench::TakeTurns;

constexpr int64_t kRowsPerShard = 4000;
constexpr int64_t kBalance = 1000000;
// s1 owns ids below it, s2 the others.
constexpr int64_t kSplit = 1000000;
// --durable: the servers flush their WAL to disk as production servers do
// (later lines of postgresql.conf win over dev::Up's).
bool durable = false;
const std::vector<std::string> kDurableSettings = {
    "fsync = on", "synchronous_commit = on", "full_page_writes = on"};

constexpr char kMap[] = R"(
[distributions.accounts]
strategy = "range"
key_type = "int8"
slices = [ { to = 1000000, shard = "s1" }, { from = 1000000, shard = "s2" } ]
[tables.accounts]
distribution = "accounts"
key = "id"
# A two-phase commit holds a connection to s1 for the transaction and takes
# another for the decision: 4 threads need 8, the default most.
[pool]
max_connections_per_shard = 16
)";

constexpr char kDebit[] =
    "UPDATE accounts SET balance = balance - 1 WHERE id = $1";
constexpr char kCredit[] =
    "UPDATE accounts SET balance = balance + 1 WHERE id = $1";
// The reference statement leaves the balances alone, so that the check at
// the end holds.
constexpr char kTouch[] =
    "UPDATE accounts SET touched = touched + 1 WHERE id = $1";

// The servers, and a cluster over them, for the whole run.
struct Servers {
  std::unique_ptr<testing::TestCluster> servers;
  std::unique_ptr<Cluster> cluster;
  // Row i of s1 and of s2 as a parameter list: ids 1 + i and kSplit + 1 + i.
  std::vector<std::vector<Param>> s1_keys;
  std::vector<std::vector<Param>> s2_keys;
};

absl::Status AllShardsOk(const std::vector<ShardOutcome>& outcomes) {
  for (const ShardOutcome& o : outcomes) {
    if (!o.status.ok()) return o.status;
  }
  return absl::OkStatus();
}

// kRowsPerShard rows from `first_id`, one shard's worth per statement.
absl::Status InsertRows(const Cluster& cluster, int64_t first_id) {
  std::vector<std::string> rows;
  for (int64_t id = first_id; id < first_id + kRowsPerShard; ++id) {
    rows.push_back(absl::StrCat("(", id, ", ", kBalance, ", 0)"));
  }
  return cluster
      .Execute(
          absl::StrCat("INSERT INTO accounts (id, balance, touched) VALUES ",
                       absl::StrJoin(rows, ", ")))
      .status();
}

absl::StatusOr<std::unique_ptr<Servers>> StartServers() {
  auto env = std::make_unique<Servers>();
  absl::StatusOr<std::unique_ptr<testing::TestCluster>> started =
      testing::TestCluster::Start(
          2, durable ? kDurableSettings : std::vector<std::string>{});
  if (!started.ok()) {
    return absl::Status(started.status().code(),
                        absl::StrCat("starting 2 PostgreSQL servers: ",
                                     started.status().message()));
  }
  env->servers = *std::move(started);
  if (durable) {
    absl::StatusOr<std::vector<std::vector<std::string>>> fsync =
        env->servers->Query(0, "SHOW fsync");
    if (!fsync.ok()) return fsync.status();
    if ((*fsync)[0][0] != "on") {
      return absl::InternalError("--durable: the servers run with fsync off");
    }
  }
  std::fprintf(stderr,
               "txn_bench: 2 servers under %s (if this run is killed, stop "
               "them with `shardctl dev down --dir %s`)\n",
               env->servers->cluster().dir.c_str(),
               env->servers->cluster().dir.c_str());
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::OpenFile(env->servers->WriteConfig("txn_bench.toml", kMap));
  if (!cluster.ok()) return cluster.status();
  env->cluster = *std::move(cluster);

  absl::Status status = AllShardsOk(env->cluster->ExecuteOnAllShards(
      "CREATE TABLE accounts (id int8 PRIMARY KEY, balance int8 NOT NULL, "
      "touched int8 NOT NULL)"));
  if (status.ok()) status = InsertRows(*env->cluster, 1);
  if (status.ok()) status = InsertRows(*env->cluster, kSplit + 1);
  if (status.ok()) {
    status = AllShardsOk(env->cluster->ExecuteOnAllShards("VACUUM ANALYZE"));
  }
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrCat("loading the accounts: ",
                                                    status.message()));
  }
  for (int64_t i = 0; i < kRowsPerShard; ++i) {
    env->s1_keys.push_back({absl::StrCat(1 + i)});
    env->s2_keys.push_back({absl::StrCat(kSplit + 1 + i)});
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

// Rows [first, last) of each shard: this thread's share of `n`.
struct Rows {
  size_t first;
  size_t last;
};
Rows ThreadShare(const benchmark::State& state, size_t n) {
  const size_t per_thread = n / state.threads();
  const size_t first = per_thread * state.thread_index();
  return {first, first + per_thread};
}

// Cycles through rows.
class RowCursor {
 public:
  explicit RowCursor(Rows rows) : rows_(rows), i_(rows.first) {}
  size_t Next() {
    const size_t i = i_;
    if (++i_ == rows_.last) i_ = rows_.first;
    return i;
  }

 private:
  Rows rows_;
  size_t i_;
};

absl::Status UpdatedOneRow(const absl::StatusOr<Result>& result,
                           const char* sql) {
  if (!result.ok()) return result.status();
  if (result->rows_affected == 1) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("\"", sql, "\" updated ", result->rows_affected, " rows"));
}

// With `check`, also that the transaction touched both shards (and so
// committed in two phases) and that each UPDATE found its row: for the
// warm-up call; the measured calls check only the status.
absl::Status TwoPhase(const Cluster& cluster, const std::vector<Param>& from,
                      const std::vector<Param>& to, bool check = false) {
  ASSIGN_OR_RETURN(std::unique_ptr<Transaction> txn, cluster.Begin());
  absl::StatusOr<Result> debit = txn->Execute(kDebit, from);
  if (!debit.ok()) return debit.status();
  absl::StatusOr<Result> credit = txn->Execute(kCredit, to);
  if (!credit.ok()) return credit.status();
  if (check) {
    RETURN_IF_ERROR(UpdatedOneRow(debit, kDebit));
    RETURN_IF_ERROR(UpdatedOneRow(credit, kCredit));
    if (txn->participants() != std::vector<ShardId>{0, 1}) {
      return absl::InternalError("the transaction did not touch both shards");
    }
  }
  return txn->Commit();
}

absl::Status OneShardTransaction(const Cluster& cluster, const char* sql,
                                 const std::vector<Param>& params, bool check) {
  ASSIGN_OR_RETURN(std::unique_ptr<Transaction> txn, cluster.Begin());
  absl::StatusOr<Result> done = txn->Execute(sql, params);
  if (!done.ok()) return done.status();
  if (check) RETURN_IF_ERROR(UpdatedOneRow(done, sql));
  return txn->Commit();
}

absl::Status TwoSingles(const Cluster& cluster, const std::vector<Param>& from,
                        const std::vector<Param>& to, bool check = false) {
  RETURN_IF_ERROR(OneShardTransaction(cluster, kDebit, from, check));
  return OneShardTransaction(cluster, kCredit, to, check);
}

absl::Status OneStatement(const Cluster& cluster,
                          const std::vector<Param>& params,
                          bool check = false) {
  absl::StatusOr<Result> done = cluster.Execute(kTouch, params);
  if (check) return UpdatedOneRow(done, kTouch);
  return done.status();
}

// The decision log exists on s1 once a two-phase commit has recorded a
// decision there: proof that BM_TwoPhase measures what it says.
absl::Status DecisionLogUsed(const testing::TestCluster& servers) {
  ASSIGN_OR_RETURN(auto rows,
                   servers.Query(0,
                                 "SELECT to_regclass('shardkit.commit_"
                                 "decisions') IS NOT NULL"));
  if (!rows.empty() && rows[0][0] == "t") return absl::OkStatus();
  return absl::InternalError(
      "no decision log on s1 after a transaction over both shards: it did "
      "not commit in two phases");
}

// `body` for each iteration of `state`, stopping at its first failure.
template <typename F>
void Loop(benchmark::State& state, F body) {
  for (auto _ : state) {
    absl::Status status = body();
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_TwoPhase(benchmark::State& state) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Servers& e = **env;
  const Rows rows = ThreadShare(state, e.s1_keys.size());
  // Also warms this thread's pooled connections.
  absl::Status status =
      TwoPhase(*e.cluster, e.s1_keys[rows.first], e.s2_keys[rows.first], true);
  if (status.ok()) status = DecisionLogUsed(*e.servers);
  if (!status.ok()) return Skip(state, status.ToString());
  RowCursor row(rows);
  Loop(state, [&] {
    const size_t i = row.Next();
    return TwoPhase(*e.cluster, e.s1_keys[i], e.s2_keys[i]);
  });
}

void BM_TwoSingles(benchmark::State& state) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Servers& e = **env;
  const Rows rows = ThreadShare(state, e.s1_keys.size());
  absl::Status status = TwoSingles(*e.cluster, e.s1_keys[rows.first],
                                   e.s2_keys[rows.first], true);
  if (!status.ok()) return Skip(state, status.ToString());
  RowCursor row(rows);
  Loop(state, [&] {
    const size_t i = row.Next();
    return TwoSingles(*e.cluster, e.s1_keys[i], e.s2_keys[i]);
  });
}

void BM_Execute(benchmark::State& state) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Servers& e = **env;
  const Rows rows = ThreadShare(state, e.s1_keys.size());
  absl::Status status = OneStatement(*e.cluster, e.s1_keys[rows.first], true);
  if (!status.ok()) return Skip(state, status.ToString());
  RowCursor row(rows);
  Loop(state, [&] { return OneStatement(*e.cluster, e.s1_keys[row.Next()]); });
}

void BM_TwoPhaseSinglesTurns(benchmark::State& state) {
  absl::StatusOr<const Servers*> env = GetServers();
  if (!env.ok()) return Skip(state, env.status().ToString());
  const Servers& e = **env;
  const Rows rows = ThreadShare(state, e.s1_keys.size());
  // Each side on half of this thread's rows.
  const size_t middle = rows.first + (rows.last - rows.first) / 2;
  absl::Status status =
      TwoPhase(*e.cluster, e.s1_keys[rows.first], e.s2_keys[rows.first], true);
  if (status.ok()) {
    status = TwoSingles(*e.cluster, e.s1_keys[middle], e.s2_keys[middle], true);
  }
  if (!status.ok()) return Skip(state, status.ToString());
  RowCursor two_phase_row({rows.first, middle});
  RowCursor singles_row({middle, rows.last});
  TakeTurns(
      state,
      [&] {
        const size_t i = two_phase_row.Next();
        return TwoPhase(*e.cluster, e.s1_keys[i], e.s2_keys[i]);
      },
      [&] {
        const size_t i = singles_row.Next();
        return TwoSingles(*e.cluster, e.s1_keys[i], e.s2_keys[i]);
      },
      "two_phase_us", "singles_us");
}

void Args(benchmark::internal::Benchmark* b) {
  b->Threads(1)->Threads(4)->UseRealTime()->MeasureProcessCPUTime()->Unit(
      benchmark::kMicrosecond);
}

BENCHMARK(BM_TwoPhase)->Apply(Args);
BENCHMARK(BM_TwoSingles)->Apply(Args);
BENCHMARK(BM_TwoPhaseSinglesTurns)->Apply(Args);
BENCHMARK(BM_Execute)->Apply(Args);

// The console table, then the ratios: from the "median" aggregate of each
// benchmark when there are repetitions, else from its one run.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  using ConsoleReporter::ConsoleReporter;

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      const std::string key =
          absl::StrCat(run.run_name.function_name, "/", run.threads);
      if (run.error_occurred) {
        errors_[key] = run.error_message;
        continue;
      }
      const bool median =
          run.run_type == Run::RT_Aggregate && run.aggregate_name == "median";
      if (run.run_type == Run::RT_Aggregate && !median) continue;
      Figures& f = (median ? medians_ : singles_)[key];
      const double iterations = static_cast<double>(run.iterations);
      f.cpu_seconds = run.cpu_accumulated_time / iterations;
      for (const auto& [name, counter] : run.counters) {
        f.counters[name] = counter.value;
      }
    }
  }

  void Finalize() override {
    std::ostream& out = GetOutputStream();
    out << "\nRatios, of medians when there are repetitions. A call: one "
           "pair of writes (debit on s1, credit on s2), or one UPDATE for "
           "Execute. Throughput: calls/s, all threads together (and client "
           "CPU per call). Turns: both sides alternating call by call in one "
           "benchmark, wall time per call; the ratio is of the throughputs "
           "this gives (singles time / 2PC time). Servers: "
        << (durable ? "fsync and synchronous_commit on (--durable)"
                    : "fsync and synchronous_commit off (dev settings)")
        << ".\n";
    out << absl::StrFormat("%-50s %14s %14s %8s\n", "", "value", "baseline",
                           "ratio");
    for (int threads : {1, 4}) {
      const std::string t =
          absl::StrCat(", ", threads, " thread", threads == 1 ? "" : "s");
      Throughput(out, "2PC transaction / two 1-shard transactions" + t,
                 absl::StrCat("BM_TwoPhase/", threads),
                 absl::StrCat("BM_TwoSingles/", threads));
      Turns(out, "  turns: 2PC / two 1-shard transactions",
            absl::StrCat("BM_TwoPhaseSinglesTurns/", threads), "two_phase_us",
            "singles_us");
      Throughput(out, "2PC transaction / one Execute UPDATE" + t,
                 absl::StrCat("BM_TwoPhase/", threads),
                 absl::StrCat("BM_Execute/", threads));
    }
    ConsoleReporter::Finalize();
  }

 private:
  struct Figures {
    double cpu_seconds = 0;  // per iteration
    std::map<std::string, double> counters;
  };

  // The figures of benchmark `key`; if it has none, prints why on the row.
  const Figures* Get(std::ostream& out, const std::string& label,
                     const std::string& key) const {
    if (auto it = medians_.find(key); it != medians_.end()) return &it->second;
    if (auto it = singles_.find(key); it != singles_.end()) return &it->second;
    auto error = errors_.find(key);
    out << absl::StrFormat("%-50s %s\n", label,
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
                  const std::string& a, const std::string& b) const {
    const Figures* fa = Get(out, label, a);
    const Figures* fb = fa == nullptr ? nullptr : Get(out, label, b);
    if (fb == nullptr) return;
    const double ra = Counter(*fa, "items_per_second");
    const double rb = Counter(*fb, "items_per_second");
    out << absl::StrFormat("%-50s %12.0f/s %12.0f/s %8.3f\n", label, ra, rb,
                           ra / rb);
    out << absl::StrFormat("%-50s %11.1f us %11.1f us %8.3f\n",
                           "  client CPU per call", fa->cpu_seconds * 1e6,
                           fb->cpu_seconds * 1e6,
                           fa->cpu_seconds / fb->cpu_seconds);
  }

  // Two counters of one benchmark, microseconds per call: the ratio of the
  // throughputs they make (b/a).
  void Turns(std::ostream& out, const std::string& label,
             const std::string& key, const std::string& a,
             const std::string& b) const {
    const Figures* f = Get(out, label, key);
    if (f == nullptr) return;
    const double ua = Counter(*f, a);
    const double ub = Counter(*f, b);
    out << absl::StrFormat("%-50s %11.1f us %11.1f us %8.3f\n", label, ua, ub,
                           ub / ua);
  }

  std::map<std::string, Figures> medians_;
  std::map<std::string, Figures> singles_;
  std::map<std::string, std::string> errors_;
};

// After the run: every debit met its credit (the balances add up to what
// they started at), and no prepared transaction is left on either shard.
// Returns false, saying why, if not.
bool MoneyAddsUp(const Servers& env) {
  int64_t total = 0;
  int64_t prepared = 0;
  for (int shard = 0; shard < 2; ++shard) {
    auto rows = env.servers->Query(
        shard,
        "SELECT (SELECT coalesce(sum(balance), 0) FROM accounts)::text || ' ' "
        "|| (SELECT count(*) FROM pg_prepared_xacts)::text");
    if (!rows.ok() || rows->empty()) {
      std::fprintf(stderr, "txn_bench: cannot check shard s%d: %s\n", shard + 1,
                   rows.status().ToString().c_str());
      return false;
    }
    long long sum = 0;
    long long left = 0;
    std::sscanf((*rows)[0][0].c_str(), "%lld %lld", &sum, &left);
    total += sum;
    prepared += left;
  }
  const int64_t expected = 2 * kRowsPerShard * kBalance;
  std::printf(
      "\nCheck: total balance %lld (expected %lld), prepared "
      "transactions left %lld\n",
      static_cast<long long>(total), static_cast<long long>(expected),
      static_cast<long long>(prepared));
  return total == expected && prepared == 0;
}

}  // namespace
}  // namespace shardkit

int main(int argc, char** argv) {
  // Defaults first: flags given on the command line come later and win.
  std::vector<char*> args = {argv[0]};
  char repetitions[] = "--benchmark_repetitions=15";
  char min_time[] = "--benchmark_min_time=0.2";
  char interleave[] = "--benchmark_enable_random_interleaving=true";
  char aggregates[] = "--benchmark_display_aggregates_only=true";
  args.insert(args.end(), {repetitions, min_time, interleave, aggregates});
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--durable") {
      shardkit::durable = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  int args_count = static_cast<int>(args.size());
  args.push_back(nullptr);
  benchmark::Initialize(&args_count, args.data());
  if (benchmark::ReportUnrecognizedArguments(args_count, args.data())) return 1;

  shardkit::RatioReporter reporter(isatty(STDOUT_FILENO)
                                       ? benchmark::ConsoleReporter::OO_Color
                                       : benchmark::ConsoleReporter::OO_None);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  bool adds_up = true;
  if (shardkit::started != nullptr && shardkit::started->env != nullptr) {
    adds_up = shardkit::MoneyAddsUp(*shardkit::started->env);
  }
  // Stops the servers (if a benchmark started them) and removes their files.
  delete shardkit::started;
  return adds_up ? 0 : 1;
}
