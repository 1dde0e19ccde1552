// Peak memory of a cross-shard ORDER BY read through Cluster::Stream, against
// the same statement through Cluster::Execute (which holds every row), in
// one run on three throwaway PostgreSQL shards on loopback.
//
//   build/tests/bench/stream_bench [--rows N]     (default 1,200,000)
//
// The rows (id, md5(id)) are spread over the shards by a range distribution
// and read ordered by the md5 text, so every fetch interleaves all three
// shards in the merge. Memory is this process's peak resident set (VmHWM in
// /proc/self/status): the servers are other processes. It only grows, so
// the phases run in increasing order of what they may hold: a stream of
// 10,000 rows, a stream of every row, then Execute of every row; each
// phase's figure is how much the peak grew over the peak before the first
// phase. A bounded stream shows the same figure for 10,000 rows and for
// all of them. Each streamed phase also checks the order and the count.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "shardkit/cluster.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

// This process's peak resident set, in KiB.
long PeakRssKib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

struct Phase {
  std::string name;
  int64_t rows = 0;
  double seconds = 0;
  long peak_growth_kib = 0;
};

int Run(int64_t rows) {
  absl::StatusOr<std::unique_ptr<testing::TestCluster>> shards =
      testing::TestCluster::Start(3);
  if (!shards.ok()) {
    std::cerr << "cannot start the shards: " << shards.status() << "\n";
    return 1;
  }
  const int64_t third = rows / 3;
  const std::string config = (*shards)->WriteConfig(
      "stream_bench.toml",
      absl::StrCat(R"(
[distributions.big]
strategy = "range"
key_type = "int8"
slices = [ { to = )",
                   third, R"(, shard = "s1" }, { from = )", third, ", to = ",
                   2 * third, R"(, shard = "s2" },
           { from = )",
                   2 * third, R"(, shard = "s3" } ]
[tables.big]
distribution = "big"
key = "id"
[timeouts]
statement = "600s"
)"));
  absl::StatusOr<std::unique_ptr<Cluster>> cluster = Cluster::OpenFile(config);
  if (!cluster.ok()) {
    std::cerr << cluster.status() << "\n";
    return 1;
  }
  if (absl::StatusOr<Result> r =
          (*cluster)->Execute("CREATE TABLE big (id int8 PRIMARY KEY, name text)");
      !r.ok()) {
    std::cerr << r.status() << "\n";
    return 1;
  }
  const int64_t bounds[] = {0, third, 2 * third, rows};
  for (int s = 0; s < 3; ++s) {
    auto loaded = (*shards)->Query(
        s, absl::StrCat("INSERT INTO big SELECT g, md5(g::text) FROM "
                        "generate_series(",
                        bounds[s], ", ", bounds[s + 1] - 1, ") g; ANALYZE big"));
    if (!loaded.ok()) {
      std::cerr << loaded.status() << "\n";
      return 1;
    }
  }
  const std::string sql = "SELECT id, name FROM big ORDER BY name";
  const long base = PeakRssKib();
  std::vector<Phase> phases;

  for (int64_t limit : {int64_t{10000}, rows}) {
    Phase phase{absl::StrCat("Stream, ", limit == rows ? "every row" : "10,000 rows")};
    const absl::Time start = absl::Now();
    absl::StatusOr<RowStream> stream = (*cluster)->Stream(
        limit == rows ? sql : absl::StrCat(sql, " LIMIT ", limit));
    if (!stream.ok()) {
      std::cerr << stream.status() << "\n";
      return 1;
    }
    Row row;
    std::string previous;
    while (true) {
      absl::StatusOr<bool> more = stream->Next(&row);
      if (!more.ok()) {
        std::cerr << more.status() << "\n";
        return 1;
      }
      if (!*more) break;
      if (*row[1] < previous) {
        std::cerr << "out of order at row " << phase.rows << "\n";
        return 1;
      }
      previous = *row[1];
      ++phase.rows;
    }
    phase.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    phase.peak_growth_kib = PeakRssKib() - base;
    if (phase.rows != limit) {
      std::cerr << "streamed " << phase.rows << " rows, expected " << limit << "\n";
      return 1;
    }
    phases.push_back(phase);
  }
  {
    Phase phase{"Execute, every row"};
    const absl::Time start = absl::Now();
    absl::StatusOr<Result> all = (*cluster)->Execute(sql);
    if (!all.ok()) {
      std::cerr << all.status() << "\n";
      return 1;
    }
    phase.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    phase.rows = static_cast<int64_t>(all->rows.size());
    phase.peak_growth_kib = PeakRssKib() - base;
    phases.push_back(phase);
  }

  absl::PrintF("%-22s %12s %10s %12s %22s\n", "phase", "rows", "seconds",
               "rows/s", "peak memory growth");
  for (const Phase& p : phases) {
    absl::PrintF("%-22s %12d %10.2f %12.0f %19.1f MiB\n", p.name, p.rows,
                 p.seconds, p.rows / p.seconds, p.peak_growth_kib / 1024.0);
  }
  absl::PrintF("stream / Execute throughput: %.2f\n",
               (phases[1].rows / phases[1].seconds) /
                   (phases[2].rows / phases[2].seconds));
  return 0;
}

}  // namespace
}  // namespace shardkit

int main(int argc, char** argv) {
  int64_t rows = 1200000;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--rows") == 0 && i + 1 < argc) {
      rows = std::atoll(argv[++i]);
    } else {
      std::cerr << "usage: stream_bench [--rows N]\n";
      return 2;
    }
  }
  if (rows < 30000) {
    std::cerr << "--rows must be at least 30000\n";
    return 2;
  }
  return shardkit::Run(rows);
}
