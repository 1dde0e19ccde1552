// Failover and replica reads on real servers (dev clusters on loopback).
//
//   failover_bench [RUNS]
//
// 1. Time from a primary's death to the first successful write: RUNS
//    times (default 5), a fresh cluster of one shard with two streaming
//    replicas and a catalog, default settings (heartbeat 1 s, threshold
//    3); one thread writes single-row INSERTs through a Cluster without
//    pause; the primary is killed with SIGKILL; the time is from the kill
//    to the end of the first INSERT sent after it that succeeds. Prints each
//    run, the median and the maximum.
// 2. Read throughput, in one run: point SELECTs by primary key from 4
//    threads for 5 s on the primary only (ExecuteOptions{.primary}), then
//    for 5 s spread over the two replicas, on the same cluster; prints
//    both rates and their ratio.

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit::testing {
namespace {

constexpr int kRows = 1000;

absl::StatusOr<std::unique_ptr<TestCluster>> StartServers() {
  absl::StatusOr<std::unique_ptr<TestCluster>> servers =
      TestCluster::StartWithReplicas(1, 2);
  if (!servers.ok()) return servers;
  absl::Status made =
      (*servers)
          ->Query(0, absl::StrCat("CREATE TABLE users (id int8 PRIMARY KEY, "
                                  "name text); INSERT INTO users SELECT g, "
                                  "'u' FROM generate_series(1, ",
                                  kRows, ") g"))
          .status();
  if (!made.ok()) return made;
  return servers;
}

// One failover: seconds from the kill to the first write that succeeds.
absl::StatusOr<double> TimeOneFailover() {
  absl::StatusOr<std::unique_ptr<TestCluster>> servers = StartServers();
  if (!servers.ok()) return servers.status();
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::OpenFile((*servers)->config_path());
  if (!cluster.ok()) return cluster.status();
  // Let the monitor's first round see every backend.
  absl::SleepFor(absl::Seconds(2));
  std::atomic<bool> stop{false};
  std::atomic<int64_t> killed_at_ns{0};
  std::atomic<int64_t> resumed_at_ns{0};
  std::thread writer([&] {
    for (int64_t id = kRows + 1; !stop.load(); ++id) {
      // Only a write sent after the primary is dead counts: one sent
      // before may complete on it while the kill is under way.
      const int64_t sent = absl::GetCurrentTimeNanos();
      absl::StatusOr<Result> written = (*cluster)->Execute(
          "INSERT INTO users (id, name) VALUES ($1, 'w')",
          {Param(absl::StrCat(id))});
      const int64_t now = absl::GetCurrentTimeNanos();
      const int64_t killed = killed_at_ns.load();
      if (written.ok() && killed != 0 && sent >= killed &&
          resumed_at_ns.load() == 0) {
        resumed_at_ns = now;
      }
    }
  });
  absl::SleepFor(absl::Milliseconds(500));
  absl::Status killed = (*servers)->KillShard(0);
  // Dead from here: KillShard returns once the postmaster and its server
  // processes were sent SIGKILL.
  killed_at_ns = absl::GetCurrentTimeNanos();
  const bool resumed = killed.ok() && Eventually([&] {
    return resumed_at_ns.load() != 0;
  }, absl::Seconds(60));
  stop = true;
  writer.join();
  if (!killed.ok()) return killed;
  if (!resumed) return absl::DeadlineExceededError("writes did not resume");
  return static_cast<double>(resumed_at_ns.load() - killed_at_ns.load()) / 1e9;
}

// Point reads per second from `threads` threads for `duration`.
double ReadRate(const Cluster& cluster, bool primary_only, int threads,
                absl::Duration duration) {
  std::atomic<int64_t> done{0};
  std::atomic<int64_t> failed{0};
  const absl::Time end = absl::Now() + duration;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      ExecuteOptions options;
      options.primary = primary_only;
      for (int64_t i = t; absl::Now() < end; i += threads) {
        absl::StatusOr<Result> read =
            cluster.Execute("SELECT name FROM users WHERE id = $1",
                            {Param(absl::StrCat(1 + i % kRows))}, options);
        (read.ok() ? done : failed).fetch_add(1);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  if (failed.load() != 0) {
    std::fprintf(stderr, "  %lld reads failed\n",
                 static_cast<long long>(failed.load()));
  }
  return static_cast<double>(done.load()) / absl::ToDoubleSeconds(duration);
}

int Main(int argc, char** argv) {
  const int runs = argc > 1 ? std::max(1, std::atoi(argv[1])) : 5;
  std::printf("primary death to first successful write (default settings: "
              "heartbeat 1s, failure_threshold 3)\n");
  std::vector<double> seconds;
  for (int run = 1; run <= runs; ++run) {
    absl::StatusOr<double> took = TimeOneFailover();
    if (!took.ok()) {
      std::fprintf(stderr, "run %d: %s\n", run,
                   std::string(took.status().message()).c_str());
      return 1;
    }
    std::printf("  run %d: %.3f s\n", run, *took);
    seconds.push_back(*took);
  }
  std::sort(seconds.begin(), seconds.end());
  std::printf("  median %.3f s, max %.3f s over %d runs\n",
              seconds[seconds.size() / 2], seconds.back(), runs);

  absl::StatusOr<std::unique_ptr<TestCluster>> servers = StartServers();
  if (!servers.ok()) {
    std::fprintf(stderr, "%s\n", std::string(servers.status().message()).c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<Cluster>> cluster =
      Cluster::OpenFile((*servers)->config_path());
  if (!cluster.ok()) {
    std::fprintf(stderr, "%s\n", std::string(cluster.status().message()).c_str());
    return 1;
  }
  absl::SleepFor(absl::Seconds(2));  // the replicas usable
  constexpr int kThreads = 4;
  const absl::Duration kFor = absl::Seconds(5);
  const double primary = ReadRate(**cluster, true, kThreads, kFor);
  const double replicas = ReadRate(**cluster, false, kThreads, kFor);
  std::printf("point reads, %d threads, 5 s each: primary only %.0f/s, "
              "2 replicas %.0f/s, ratio %.2f\n",
              kThreads, primary, replicas, replicas / primary);
  return 0;
}

}  // namespace
}  // namespace shardkit::testing

int main(int argc, char** argv) { return shardkit::testing::Main(argc, argv); }
