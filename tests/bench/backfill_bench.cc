// Throughput of the backfill (rebalancer/backfill.h) against a raw
// `COPY (SELECT ...) TO STDOUT | COPY ... FROM STDIN` pipe between the same
// two throwaway PostgreSQL servers on loopback, for the same rows, in one
// run: the goal is a ratio (backfill rows/s over pipe rows/s) of at
// least 0.8.
//
//   build/tests/bench/backfill_bench [--rows N] [--reps R] [--chunk C]
//                                     [--strategy hash|hash-lists|range]
//                                     (defaults 200,000, 5, 20,000, hash)
//
// The table has a bigint primary key and three more columns; every row
// moves. --strategy hash: the hash slice [0x8000000000000000, 2^64), the
// table holding only keys in it (N of the first 2N or so integers), the
// shards having shardkit's hash functions (rebalancer/server_hash.h): the
// source filters the rows by shardkit.hash_key_v1, and no keys are
// listed; --strategy hash-lists: the same without the functions, the rows
// filtered client-side and their keys listed on both sides;
// --strategy range: the range slice [0, N + 1), which the server filters
// (id >= 0 AND id < N + 1) and which keeps no key lists
// (rebalancer/shard_objects.h). The pipe copies the whole table, no
// filter. The pipe
// streams each row from the source's COPY into the destination's COPY as
// it arrives, in one transaction (what `psql -c "COPY ... TO STDOUT" |
// psql -c "COPY ... FROM STDIN"` does). The two take turns, the order
// swapping each repetition, so that whatever else the machine runs falls
// on both alike; the destination table (and the backfill's key lists) are
// emptied, untimed, before each. The figure is the median over the
// repetitions.

#include <libpq-fe.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "rebalancer/backfill.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kColumns[] = "id, name, score, note";

absl::Status Check(PGconn* conn, PGresult* res, ExecStatusType want) {
  const bool ok = PQresultStatus(res) == want;
  std::string message = ok ? "" : PQerrorMessage(conn);
  PQclear(res);
  return ok ? absl::OkStatus() : absl::InternalError(message);
}

// The raw pipe: rows go from one COPY to the other as they arrive.
absl::Status Pipe(PGconn* source, PGconn* destination) {
  absl::Status s = Check(destination, PQexec(destination, "BEGIN"),
                         PGRES_COMMAND_OK);
  if (s.ok()) {
    s = Check(destination,
              PQexec(destination,
                     absl::StrCat("COPY big (", kColumns, ") FROM STDIN")
                         .c_str()),
              PGRES_COPY_IN);
  }
  if (s.ok()) {
    s = Check(source,
              PQexec(source, absl::StrCat("COPY (SELECT ", kColumns,
                                          " FROM big) TO STDOUT")
                                 .c_str()),
              PGRES_COPY_OUT);
  }
  if (!s.ok()) return s;
  char* row = nullptr;
  int length;
  while ((length = PQgetCopyData(source, &row, 0)) > 0) {
    PQputCopyData(destination, row, length);
    PQfreemem(row);
  }
  while (PGresult* r = PQgetResult(source)) PQclear(r);
  PQputCopyEnd(destination, nullptr);
  while (PGresult* r = PQgetResult(destination)) {
    if (PQresultStatus(r) == PGRES_FATAL_ERROR) {
      s = absl::InternalError(PQresultErrorMessage(r));
    }
    PQclear(r);
  }
  if (!s.ok()) return s;
  return Check(destination, PQexec(destination, "COMMIT"), PGRES_COMMAND_OK);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run(int64_t rows, int reps, int64_t chunk, Strategy strategy,
        bool server_hash) {
  auto shards = testing::TestCluster::Start(2);
  if (!shards.ok()) {
    std::cerr << "cannot start the shards: " << shards.status() << "\n";
    return 1;
  }
  testing::TestCluster& cluster = **shards;
  const std::string schema =
      "CREATE TABLE big (id int8 PRIMARY KEY, name text, score int4, "
      "note text)";
  for (int i = 0; i < 2; ++i) {
    if (auto r = cluster.Query(i, schema); !r.ok()) {
      std::cerr << r.status() << "\n";
      return 1;
    }
  }
  for (int i = 0; i < 2; ++i) {
    if (absl::Status s = cluster.InstallServerHash(i); !s.ok()) {
      std::cerr << s << "\n";
      return 1;
    }
  }
  // Hash: only keys of the slice [0x8000000000000000, 2^64), whose
  // hash_key_v1 (the hash minus 2^63) is >= 0.
  if (auto r = cluster.Query(
          0, absl::StrCat("INSERT INTO big SELECT g, 'user ' || g, g % 1000, "
                          "md5(g::text) FROM generate_series(1, ",
                          strategy == Strategy::kHash ? 3 * rows : rows,
                          ") g",
                          strategy == Strategy::kHash
                              ? " WHERE shardkit.hash_key_v1(g) >= 0"
                              : "",
                          " ORDER BY g LIMIT ", rows));
      !r.ok()) {
    std::cerr << r.status() << "\n";
    return 1;
  }
  if (auto r = cluster.Query(0, "VACUUM ANALYZE big");
      !r.ok()) {
    std::cerr << r.status() << "\n";
    return 1;
  }
  PGconn* source = PQconnectdb(cluster.dsn(0).c_str());
  PGconn* destination = PQconnectdb(cluster.dsn(1).c_str());
  if (PQstatus(source) != CONNECTION_OK ||
      PQstatus(destination) != CONNECTION_OK) {
    std::cerr << "cannot connect\n";
    return 1;
  }

  internal::MoveSlice slice;
  slice.move_id = 1;
  slice.strategy = strategy;
  slice.key_type = KeyType::kInt8;
  if (strategy == Strategy::kRange) {
    slice.from = Key::Integer(0);
    slice.to = Key::Integer(rows + 1);
  } else {
    slice.hash_lo = uint64_t{1} << 63;
    slice.server_hash = server_hash;
  }
  internal::BackfillOptions options;
  options.chunk_rows = chunk;
  auto backfill = [&]() -> absl::Status {
    absl::StatusOr<internal::BackfillStats> stats = internal::BackfillTable(
        {"s1", cluster.dsn(0)}, {"s2", cluster.dsn(1)}, {"big", "id"}, slice,
        options);
    if (!stats.ok()) return stats.status();
    if (stats->rows_copied != rows) {
      return absl::InternalError(
          absl::StrCat("backfill copied ", stats->rows_copied, " rows"));
    }
    return absl::OkStatus();
  };
  auto pipe = [&]() { return Pipe(source, destination); };
  auto reset = [&]() -> absl::Status {
    for (int i = 0; i < 2; ++i) {
      auto r = cluster.Query(
          i, absl::StrCat(i == 1 ? "TRUNCATE big; " : "",
                          "DROP TABLE IF EXISTS shardkit.move_1_keys, "
                          "shardkit.move_1_pending"));
      if (!r.ok()) return r.status();
    }
    return absl::OkStatus();
  };

  std::vector<double> backfill_s, pipe_s;
  for (int rep = 0; rep < reps; ++rep) {
    for (int turn = 0; turn < 2; ++turn) {
      const bool backfill_turn = (rep + turn) % 2 == 0;
      if (absl::Status s = reset(); !s.ok()) {
        std::cerr << s << "\n";
        return 1;
      }
      const Clock::time_point t0 = Clock::now();
      absl::Status s = backfill_turn ? backfill() : pipe();
      const double seconds =
          std::chrono::duration<double>(Clock::now() - t0).count();
      if (!s.ok()) {
        std::cerr << (backfill_turn ? "backfill: " : "pipe: ") << s << "\n";
        return 1;
      }
      (backfill_turn ? backfill_s : pipe_s).push_back(seconds);
    }
  }
  PQfinish(source);
  PQfinish(destination);

  const double b = Median(backfill_s), p = Median(pipe_s);
  std::cout << absl::StrFormat(
      "rows %d, chunk %d, %s slice, %d repetitions (median)\n"
      "raw COPY pipe   %8.3f s  %10.0f rows/s\n"
      "backfill        %8.3f s  %10.0f rows/s\n"
      "ratio (backfill / pipe throughput): %.2f (goal >= 0.8)\n",
      rows, chunk,
      strategy == Strategy::kRange ? "range"
      : server_hash                ? "hash (the shards hash)"
                                   : "hash (key lists)",
      reps, p, rows / p, b, rows / b, p / b);
  return 0;
}

}  // namespace
}  // namespace shardkit

int main(int argc, char** argv) {
  int64_t rows = 200000;
  int reps = 5;
  int64_t chunk = 20000;
  shardkit::Strategy strategy = shardkit::Strategy::kHash;
  bool server_hash = true;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) {
      rows = std::atoll(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--reps") == 0) {
      reps = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--chunk") == 0) {
      chunk = std::atoll(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--strategy") == 0 &&
               (std::strcmp(argv[i + 1], "hash") == 0 ||
                std::strcmp(argv[i + 1], "hash-lists") == 0 ||
                std::strcmp(argv[i + 1], "range") == 0)) {
      strategy = std::strcmp(argv[i + 1], "range") == 0
                     ? shardkit::Strategy::kRange
                     : shardkit::Strategy::kHash;
      server_hash = std::strcmp(argv[i + 1], "hash-lists") != 0;
    } else {
      std::cerr << "usage: backfill_bench [--rows N] [--reps R] [--chunk C] "
                   "[--strategy hash|hash-lists|range]\n";
      return 2;
    }
  }
  if (rows < 1 || reps < 1 || chunk < 1) {
    std::cerr << "--rows, --reps and --chunk must be positive\n";
    return 2;
  }
  return shardkit::Run(rows, reps, chunk, strategy, server_hash);
}
