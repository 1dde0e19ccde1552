// Online moves under a write workload (rebalancer/mover.h): the writers'
// throughput while a move dual-writes against their throughput before it,
// and the pause the cutover costs them, in one run.
//
//   build/tests/bench/move_bench [--rows N] [--writers W] [--seconds S]
//                                [--reps R] [--hash server|lists]
//                                [--backfill-rate R]
//                                (defaults 200,000, 4, 5, 3, server, 0)
//
// --backfill-rate R: MoverOptions::max_rows_per_second (default 0:
// unpaced), to see what pacing the copy leaves the writers.
// --hash server: the servers get shardkit's hash functions
// (rebalancer/server_hash.h, as `shardctl hash install` creates them), so
// the moves keep no key lists; --hash lists: without them.
//
// Three throwaway servers (s1, s2, s3); the catalog is a database of s1's
// server, as in mover_test. A hash distribution over s1 and s2 with two
// colocated tables, users (id, name, n) and orders (user_id, id, note),
// loaded with N users and N orders (LoadCsv). W threads write through one
// Cluster, without pause, over the whole keyspace: 50% UPDATE users SET
// n = n + 1 for a random loaded id, 25% INSERT a new user, 15% INSERT an
// order of a random user, 10% DELETE a user the thread inserted; each
// write is timed. Each repetition then
//   A  runs the writers for S seconds with no move (the baseline);
//   B  moves s2's whole slice (0x8000000000000000:, half of the rows)
//      to s3, and on the next repetition back, with default MoverOptions.
//      The mover's log lines time the phases. The benchmark holds the
//      mover for S seconds in its log callback at "move N: backfill" (the
//      fence is committed, the routers dual-write, nothing is copied yet):
//      that interval gives the throughput of dual-writing alone; then the
//      backfill and the verify run (the servers copy and checksum on the
//      same cores the writers use).
// The cutover window runs from the line "move N: cutover" to "move N:
// cleanup" (the fence at the next epoch, its publish, the journal); the
// writes that were under way during any part of it are its writes, and
// their max and p99 latency are the pause writers saw. Prints each
// repetition, then the medians and the worst, then per repetition where
// the time went: when the catalog had the cutover's map and when this
// process routed by it, and the mean latency of writes to the slice and
// elsewhere, before the move and while dual-writing. Writes that fail are
// counted and their errors printed (exit status 3): the library retries a
// write refused for a stale map, so there should be none.

#include <libpq-fe.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "rebalancer/mover.h"
#include "router/live_map.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"
#include "shardkit/key.h"
#include "shardkit/load.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using testing::TestCluster;

constexpr char kMapBody[] = R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
)";

constexpr char kSlice[] = "0x8000000000000000:";

int64_t Now() { return absl::GetCurrentTimeNanos(); }

struct Write {
  int64_t start = 0;
  int64_t end = 0;
  bool ok = true;
  bool in_slice = false;  // its key hashes into kSlice
};

// The writers: each appends its timed writes to its own log.
class Writers {
 public:
  Writers(const Cluster& cluster, int64_t rows, int threads)
      : cluster_(cluster), rows_(rows), logs_(threads) {}

  void Start() {
    for (size_t t = 0; t < logs_.size(); ++t) {
      threads_.emplace_back([this, t] { Loop(static_cast<int>(t)); });
    }
  }
  void Stop() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
  }
  // Every write, merged (after Stop).
  std::vector<Write> All() const {
    std::vector<Write> all;
    for (const auto& log : logs_) all.insert(all.end(), log.begin(), log.end());
    return all;
  }
  std::map<std::string, int> Errors() {
    absl::MutexLock lock(&mu_);
    return errors_;
  }

 private:
  void Loop(int thread) {
    std::mt19937_64 random(thread + 1);
    std::uniform_int_distribution<int64_t> loaded(1, rows_);
    std::uniform_int_distribution<int> kind(0, 99);
    // New keys: beyond the loaded ones, disjoint per thread.
    int64_t next_key = rows_ + 1 + int64_t{thread} * 1'000'000'000;
    std::vector<int64_t> inserted;
    int64_t next_order = 1'000'000 + int64_t{thread} * 1'000'000'000;
    std::vector<Write>& log = logs_[thread];
    while (!stop_) {
      const int k = kind(random);
      std::string sql;
      std::vector<Param> params;
      if (k < 50) {
        sql = "UPDATE users SET n = n + 1 WHERE id = $1";
        params = {absl::StrCat(loaded(random))};
      } else if (k < 75) {
        inserted.push_back(next_key);
        sql = "INSERT INTO users (id, name) VALUES ($1, 'new')";
        params = {absl::StrCat(next_key++)};
      } else if (k < 90 || inserted.empty()) {
        sql = "INSERT INTO orders (user_id, id, note) VALUES ($1, $2, 'o')";
        params = {absl::StrCat(loaded(random)), absl::StrCat(next_order++)};
      } else {
        const size_t i = random() % inserted.size();
        sql = "DELETE FROM users WHERE id = $1";
        params = {absl::StrCat(inserted[i])};
        inserted[i] = inserted.back();
        inserted.pop_back();
      }
      Write w;
      int64_t key = 0;
      (void)absl::SimpleAtoi(*params[0], &key);
      w.in_slice = HashKey(Key::Integer(key)) >= 0x8000000000000000u;
      w.start = Now();
      absl::StatusOr<Result> result = cluster_.Execute(sql, params);
      w.end = Now();
      w.ok = result.ok();
      if (!result.ok()) {
        absl::MutexLock lock(&mu_);
        ++errors_[absl::StrCat(sql, ": ", result.status().ToString())];
      }
      log.push_back(w);
    }
  }

  const Cluster& cluster_;
  const int64_t rows_;
  std::vector<std::vector<Write>> logs_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  std::map<std::string, int> errors_ ABSL_GUARDED_BY(mu_);
};

// When each phase line of one move was logged.
struct PhaseTimes {
  absl::Mutex mu;
  std::map<std::string, int64_t> at ABSL_GUARDED_BY(mu);
  void Mark(const std::string& phase) {
    absl::MutexLock lock(&mu);
    if (!at.count(phase)) at[phase] = Now();
  }
  int64_t Get(const std::string& phase) {
    absl::MutexLock lock(&mu);
    auto it = at.find(phase);
    return it == at.end() ? 0 : it->second;
  }
};

// Writes completed in [from, to) per second.
double Rate(const std::vector<Write>& writes, int64_t from, int64_t to) {
  int64_t n = 0;
  for (const Write& w : writes) n += w.ok && w.end >= from && w.end < to;
  return n / (static_cast<double>(to - from) / 1e9);
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double Ms(int64_t ns) { return ns / 1e6; }

struct RepResult {
  double before = 0;     // writes/s, phase A
  double dual_only = 0;  // dual-write, nothing copied yet
  double backfill = 0;   // during the backfill
  double verify = 0;     // during the verify
  double backfill_s = 0, verify_s = 0;
  double window_ms = 0;   // "cutover" to "cleanup" line
  double publish_ms = 0;  // "cutover" line to the cutover's publish
  double map_ms = 0;      // "cutover" line to this process's new map
  int window_writes = 0;
  double window_max_ms = 0, window_p99_ms = 0;
  double p50_ms = 0, p99_ms = 0;  // phase A writes
  // The entry into dual-write ("dual-write" to "backfill" line: the map
  // with the move published, the source fenced at its epoch).
  double entry_ms = 0, entry_max_ms = 0;
  // Mean latency of writes to the slice / elsewhere, before the move and
  // while dual-writing with nothing copied.
  double slice_before_ms = 0, other_before_ms = 0;
  double slice_dual_ms = 0, other_dual_ms = 0;
  int failed = 0;
};

int Run(int64_t rows, int threads, int seconds, int reps, bool server_hash,
        int64_t backfill_rate) {
  auto started = TestCluster::Start(3);
  if (!started.ok()) {
    std::cerr << "cannot start the servers: " << started.status() << "\n";
    return 1;
  }
  TestCluster& servers = **started;
  auto fail = [](const absl::Status& s) {
    std::cerr << s << "\n";
    return 1;
  };
  absl::StatusOr<std::string> written = servers.WriteMoveConfig(
      "move_bench.toml", kMapBody,
      "CREATE TABLE users (id int8 PRIMARY KEY, name text, "
      "n int NOT NULL DEFAULT 0); CREATE TABLE orders (user_id int8, "
      "id int8, note text, PRIMARY KEY (user_id, id))");
  if (!written.ok()) return fail(written.status());
  const std::string config_path = *written;
  for (int s = 0; s < 3; ++s) {
    if (server_hash) {
      if (absl::Status h = servers.InstallServerHash(s); !h.ok()) {
        return fail(h);
      }
    }
  }
  auto cluster = Cluster::OpenFile(config_path);
  if (!cluster.ok()) return fail(cluster.status());
  {
    std::ostringstream users, orders;
    users << "id,name\n";
    orders << "user_id,id,note\n";
    for (int64_t id = 1; id <= rows; ++id) {
      users << id << ",user " << id << "\n";
      orders << id << ",1,order " << id << "\n";
    }
    for (auto [table, text] :
         {std::pair{"users", users.str()}, std::pair{"orders", orders.str()}}) {
      std::istringstream in(text);
      auto loaded = LoadCsv(**cluster, table, in);
      if (!loaded.ok()) return fail(loaded.status());
    }
    for (int s = 0; s < 3; ++s) {
      if (auto r = servers.Query(s, "VACUUM ANALYZE users, orders"); !r.ok()) {
        return fail(r.status());
      }
    }
  }
  // When this process first routes by a map published after the line
  // "move N: cutover" (the cutover's).
  std::atomic<int64_t> cutover_at{0}, map_installed{0};
  internal::LiveMapOf(**cluster).AddListener(
      [&](const std::shared_ptr<const ShardMap>&) {
        int64_t none = 0;
        if (cutover_at.load() != 0)
          map_installed.compare_exchange_strong(none, Now());
      });

  Writers writers(**cluster, rows, threads);
  writers.Start();
  std::vector<RepResult> results;
  std::vector<std::pair<int64_t, int64_t>> befores;
  std::vector<PhaseTimes> times(reps);
  std::vector<int64_t> dual_end(reps), map_at(reps);
  std::vector<uint64_t> move_ids(reps);
  int verify_stops = 0;
  int status = 0;
  for (int rep = 0; rep < reps && status == 0; ++rep) {
    const int64_t a0 = Now();
    absl::SleepFor(absl::Seconds(seconds));
    befores.push_back({a0, Now()});

    auto config = LoadConfig(config_path);
    if (!config.ok()) return fail(config.status());
    PhaseTimes& t = times[rep];
    internal::MoverOptions options;
    options.max_rows_per_second = backfill_rate;
    options.log = [&](std::string_view line) {
      const size_t colon = line.find(": ");
      if (colon == std::string_view::npos) return;
      const std::string phase(line.substr(colon + 2));
      t.Mark(phase);
      if (phase == "cutover") cutover_at = Now();
      if (phase == "backfill") {
        // Dual-writing, fenced, nothing copied yet: hold the mover here.
        absl::SleepFor(absl::Seconds(seconds));
        dual_end[rep] = Now();
      }
    };
    cutover_at = 0;
    map_installed = 0;
    auto mover = internal::Mover::Open(*std::move(config), options);
    if (!mover.ok()) return fail(mover.status());
    internal::MoveRequest request;
    request.distribution = "users";
    request.slice = kSlice;
    request.destination = rep % 2 == 0 ? "s3" : "s2";
    auto move = (*mover)->Start(request);
    if (!move.ok()) return fail(move.status());
    absl::Status ran = (*mover)->Run(move->id);
    // A verify that found differences stops the move before its cutover;
    // `moves resume` verifies again. Counted and shown: under these
    // writers there should be none.
    for (int again = 0; again < 3 && ran.code() == absl::StatusCode::kDataLoss;
         ++again) {
      std::cerr << "move " << move->id << " stopped, resumed: " << ran << "\n";
      ++verify_stops;
      ran = (*mover)->Run(move->id);
    }
    map_at[rep] = map_installed.load();
    move_ids[rep] = move->id;
    if (!ran.ok()) {
      std::cerr << "move " << move->id << ": " << ran << "\n";
      status = 1;
    }
    absl::SleepFor(absl::Milliseconds(500));
  }
  writers.Stop();
  if (status != 0) return status;

  // When each cutover was published: the catalog's clock (now() of the
  // publishing transaction), the same host's as ours.
  std::vector<int64_t> published(reps);
  if (PGconn* catalog =
          PQconnectdb(absl::StrCat(servers.dsn(0), " dbname=movecat").c_str());
      PQstatus(catalog) == CONNECTION_OK) {
    for (int rep = 0; rep < reps; ++rep) {
      PGresult* res = PQexec(
          catalog,
          absl::StrCat("SELECT (extract(epoch FROM written_at) * 1e9)::int8 "
                       "FROM shardkit.live_maps WHERE reason = 'move ",
                       move_ids[rep], ": cutover'")
              .c_str());
      if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        published[rep] = std::atoll(PQgetvalue(res, 0, 0));
      }
      PQclear(res);
    }
    PQfinish(catalog);
  }
  const std::vector<Write> all = writers.All();
  for (int rep = 0; rep < reps; ++rep) {
    PhaseTimes& t = times[rep];
    RepResult r;
    const auto [a0, a1] = befores[rep];
    r.before = Rate(all, a0, a1);
    const int64_t backfill = t.Get("backfill"), verify = t.Get("verify"),
                  cutover = t.Get("cutover"), cleanup = t.Get("cleanup");
    r.dual_only = Rate(all, backfill, dual_end[rep]);
    r.backfill = Rate(all, dual_end[rep], verify);
    r.verify = Rate(all, verify, cutover);
    r.backfill_s = (verify - dual_end[rep]) / 1e9;
    r.verify_s = (cutover - verify) / 1e9;
    r.window_ms = Ms(cleanup - cutover);
    r.map_ms = map_at[rep] == 0 ? -1 : Ms(map_at[rep] - cutover);
    r.publish_ms = published[rep] == 0 ? -1 : Ms(published[rep] - cutover);
    const int64_t dual = t.Get("dual-write");
    r.entry_ms = Ms(backfill - dual);
    std::vector<double> window, baseline;
    for (const Write& w : all) {
      if (w.end >= dual && w.start <= backfill) {
        r.entry_max_ms = std::max(r.entry_max_ms, Ms(w.end - w.start));
      }
      if (w.end >= cutover && w.start <= cleanup) {
        window.push_back(Ms(w.end - w.start));
      }
      if (w.end >= a0 && w.end < a1) baseline.push_back(Ms(w.end - w.start));
    }
    auto mean = [&](int64_t from, int64_t to, bool in_slice) {
      double sum = 0;
      int64_t n = 0;
      for (const Write& w : all) {
        if (w.ok && w.in_slice == in_slice && w.end >= from && w.end < to) {
          sum += Ms(w.end - w.start);
          ++n;
        }
      }
      return n == 0 ? 0 : sum / n;
    };
    r.slice_before_ms = mean(a0, a1, true);
    r.other_before_ms = mean(a0, a1, false);
    r.slice_dual_ms = mean(backfill, dual_end[rep], true);
    r.other_dual_ms = mean(backfill, dual_end[rep], false);
    r.window_writes = static_cast<int>(window.size());
    r.window_max_ms =
        window.empty() ? 0 : *std::max_element(window.begin(), window.end());
    r.window_p99_ms = Percentile(window, 0.99);
    r.p50_ms = Percentile(baseline, 0.5);
    r.p99_ms = Percentile(baseline, 0.99);
    results.push_back(r);
  }
  int failed = 0;
  for (const Write& w : all) failed += !w.ok;

  std::cout << absl::StrFormat(
      "rows %d users + %d orders, %d writers, %d s phases, %d moves of "
      "%s (s2 <-> s3); %d writes in all, %d failed\n",
      rows, rows, threads, seconds, reps, kSlice, all.size(), failed);
  std::cout << "rep  before/s  dual-only/s  backfill/s (s)  verify/s (s)  "
               "cutover window ms  writes in it  max ms  p99 ms  "
               "base p50/p99 ms\n";
  for (int rep = 0; rep < reps; ++rep) {
    const RepResult& r = results[rep];
    std::cout << absl::StrFormat(
        "%3d  %8.0f  %11.0f  %8.0f (%4.1f)  %6.0f (%4.1f)  %17.1f  "
        "%12d  %6.1f  %6.1f  %5.2f/%5.2f\n",
        rep + 1, r.before, r.dual_only, r.backfill, r.backfill_s, r.verify,
        r.verify_s, r.window_ms, r.window_writes, r.window_max_ms,
        r.window_p99_ms, r.p50_ms, r.p99_ms);
  }
  auto column = [&](auto field) {
    std::vector<double> v;
    for (const RepResult& r : results) v.push_back(field(r));
    return v;
  };
  auto median = [](std::vector<double> v) { return Percentile(v, 0.5); };
  auto worst_low = [](std::vector<double> v) {
    return *std::min_element(v.begin(), v.end());
  };
  auto worst_high = [](std::vector<double> v) {
    return *std::max_element(v.begin(), v.end());
  };
  const auto dual_ratio =
      column([](const RepResult& r) { return r.dual_only / r.before; });
  const auto copy_ratio = column([](const RepResult& r) {
    return (r.backfill * r.backfill_s + r.verify * r.verify_s) /
           (r.backfill_s + r.verify_s) / r.before;
  });
  const auto pause_max =
      column([](const RepResult& r) { return r.window_max_ms; });
  const auto pause_p99 =
      column([](const RepResult& r) { return r.window_p99_ms; });
  std::cout << absl::StrFormat(
      "dual-write / before throughput, nothing copied: median %.2f, worst "
      "%.2f (goal >= 0.5)\n"
      "dual-write / before throughput, during backfill + verify: median "
      "%.2f, worst %.2f (goal >= 0.5)\n"
      "writes spanning the cutover: max latency median %.1f ms, worst %.1f "
      "ms; p99 median %.1f ms, worst %.1f ms (goal < 50 ms)\n"
      "writes before the move: p50 median %.2f ms, p99 median %.2f ms\n",
      median(dual_ratio), worst_low(dual_ratio), median(copy_ratio),
      worst_low(copy_ratio), median(pause_max), worst_high(pause_max),
      median(pause_p99), worst_high(pause_p99),
      median(column([](const RepResult& r) { return r.p50_ms; })),
      median(column([](const RepResult& r) { return r.p99_ms; })));
  for (int rep = 0; rep < reps; ++rep) {
    std::cout << absl::StrFormat(
        "rep %d: entry into dual-write (publish + fence) %.1f ms, longest "
        "write across it %.1f ms; cutover: published %.1f ms, this "
        "process's map %.1f ms after the cutover line; mean latency of "
        "writes to the slice / elsewhere: before %.2f / %.2f ms, "
        "dual-writing %.2f / %.2f ms\n",
        rep + 1, results[rep].entry_ms, results[rep].entry_max_ms,
        results[rep].publish_ms, results[rep].map_ms,
        results[rep].slice_before_ms, results[rep].other_before_ms,
        results[rep].slice_dual_ms, results[rep].other_dual_ms);
  }
  if (verify_stops > 0) {
    std::cout << "VERIFY stopped a move " << verify_stops
              << " time(s) (resumed; see stderr)\n";
  }
  for (const auto& [error, count] : writers.Errors()) {
    std::cout << "FAILED " << count << "x " << error << "\n";
  }
  return failed == 0 ? 0 : 3;
}

}  // namespace
}  // namespace shardkit

int main(int argc, char** argv) {
  int64_t rows = 200000;
  int writers = 4, seconds = 5, reps = 3;
  bool server_hash = true;
  int64_t backfill_rate = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) {
      rows = std::atoll(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--writers") == 0) {
      writers = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--seconds") == 0) {
      seconds = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--reps") == 0) {
      reps = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--hash") == 0 &&
               (std::strcmp(argv[i + 1], "server") == 0 ||
                std::strcmp(argv[i + 1], "lists") == 0)) {
      server_hash = std::strcmp(argv[i + 1], "server") == 0;
    } else if (std::strcmp(argv[i], "--backfill-rate") == 0) {
      backfill_rate = std::atoll(argv[i + 1]);
    } else {
      std::cerr << "usage: move_bench [--rows N] [--writers W] [--seconds S] "
                   "[--reps R] [--hash server|lists] [--backfill-rate R]\n";
      return 2;
    }
  }
  if (argc % 2 == 0 || rows < 1 || writers < 1 || seconds < 1 || reps < 1) {
    std::cerr << "usage: move_bench [--rows N] [--writers W] [--seconds S] "
                 "[--reps R] [--hash server|lists] [--backfill-rate R], each "
                 "positive\n";
    return 2;
  }
  return shardkit::Run(rows, writers, seconds, reps, server_hash,
                       backfill_rate);
}
