// The correctness test of online moves (issue 5): writer threads insert,
// increment and delete through the library, in single statements and in
// transactions across shards, while a slice of their distribution moves;
// every acknowledged write is logged. At the end each shard is read
// directly and must hold exactly what the acknowledged writes imply: no
// lost update, no resurrected delete, no duplicate, no row on a shard that
// does not own it in the final map; the router must answer the same.
//
// Variants: the move run to completion in this process; a mover (shardctl
// move) killed at each failpoint and then resumed; killed at failpoints
// before the point of no return and then aborted. Single statements must
// never fail (a stale map is retried inside the library); nor may a
// transaction's first statement (replayed inside the library by the newer
// map); a transaction refused for a stale map later (SK001, rolled back:
// the refused shard held its earlier work) is retried here, as an
// application would; a failed commit would leave its writes in doubt, and
// the check allows either outcome for them.

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "gtest/gtest.h"
#include "rebalancer/mover.h"
#include "rebalancer/shard_objects.h"
#include "router/failpoint.h"
#include "router/live_map.h"
#include "shardkit/cluster.h"
#include "shardkit/transaction.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using testing::Eventually;
using testing::TestCluster;

// accounts and entries colocated in distribution "accounts" over s1 and s2;
// s3 starts empty; countries is a reference table nobody writes.
constexpr char kMapBody[] = R"(
[distributions.accounts]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.accounts]
distribution = "accounts"
key = "id"
[tables.entries]
distribution = "accounts"
key = "account_id"
[tables.countries]
reference = true
[timeouts]
connect = "5s"
statement = "30s"
)";

// Three quarters of s1's half, [2^61, 2^63): a good share of the rows,
// and s1 keeps rows outside the slice.
constexpr char kSlice[] = "0x2000000000000000:0x8000000000000000";

constexpr int kWriters = 4;
constexpr int64_t kSeedAccounts = 2400;
// Accounts a writer keeps at most (it inserts only below that).
constexpr size_t kMaxRowsPerWriter = 800;

// A row's key: (table, id, seq); accounts rows have seq 0.
enum class Rel { kAccounts, kEntries };
using RowKey = std::tuple<Rel, int64_t, int64_t>;

std::string RowName(const RowKey& key) {
  const auto& [table, id, seq] = key;
  return table == Rel::kAccounts ? StrCat("accounts(", id, ")")
                                   : StrCat("entries(", id, ", ", seq, ")");
}

// What the acknowledged writes imply for one row. A write that failed
// without a known outcome widens it: an insert or delete makes the row's
// presence unknown, an increment raises n_max only.
struct Expected {
  enum class Presence { kPresent, kAbsent, kEither };
  Presence presence = Presence::kAbsent;
  int64_t n_min = 0;
  int64_t n_max = 0;
};

// One writer's log, in the order its writes were acknowledged (each
// writer owns its rows, so its own order is the rows' order).
class Ledger {
 public:
  bool Present(const RowKey& key) const {
    auto it = rows_.find(key);
    return it != rows_.end() &&
           it->second.presence == Expected::Presence::kPresent;
  }
  void Insert(const RowKey& key, int64_t n, bool known) {
    Expected& e = rows_[key];
    e.presence = known ? Expected::Presence::kPresent
                       : Expected::Presence::kEither;
    e.n_min = e.n_max = n;
  }
  void Increment(const RowKey& key, bool known) {
    Expected& e = rows_[key];
    e.n_max += 1;
    if (known) e.n_min += 1;
  }
  void Delete(const RowKey& key, bool known) {
    Expected& e = rows_[key];
    e.presence = known ? Expected::Presence::kAbsent
                       : Expected::Presence::kEither;
  }
  const std::map<RowKey, Expected>& rows() const { return rows_; }

 private:
  std::map<RowKey, Expected> rows_;
};

// Counts of one writer, by how its writes ended.
struct WriterStats {
  int64_t acknowledged = 0;
  int64_t during_dual_write = 0;  // acknowledged while the map was so
  int64_t during_cut_over = 0;
  int64_t statement_failures = 0;  // single statements: must stay 0
  int64_t transaction_retries = 0;  // stale map (SK001): rolled back, retried
  // Of those, refused on the transaction's first statement: must stay 0.
  int64_t first_statement_refusals = 0;
  int64_t transaction_failures = 0;  // other failures
  int64_t unknown_outcomes = 0;
  std::vector<std::string> errors;  // the first few
  std::vector<std::string> anomalies;  // wrong row counts of acked writes
};

// kWriters threads writing through one Cluster, each on rows of its own.
class Workload {
 public:
  Workload(const Cluster& cluster, std::vector<Ledger>& ledgers)
      : cluster_(cluster), ledgers_(ledgers), stats_(ledgers.size()) {}

  ~Workload() { Stop(); }

  void Start() {
    stop_ = false;
    ++starts_;
    for (size_t t = 0; t < ledgers_.size(); ++t) {
      threads_.emplace_back([this, t] { Write(static_cast<int>(t)); });
    }
  }

  void Stop() {
    stop_ = true;
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

  WriterStats Total() const {
    WriterStats total;
    absl::MutexLock lock(&mu_);
    for (const WriterStats& s : stats_) {
      total.acknowledged += s.acknowledged;
      total.during_dual_write += s.during_dual_write;
      total.during_cut_over += s.during_cut_over;
      total.statement_failures += s.statement_failures;
      total.transaction_retries += s.transaction_retries;
      total.first_statement_refusals += s.first_statement_refusals;
      total.transaction_failures += s.transaction_failures;
      total.unknown_outcomes += s.unknown_outcomes;
      for (const std::string& e : s.errors) total.errors.push_back(e);
      for (const std::string& e : s.anomalies) total.anomalies.push_back(e);
    }
    return total;
  }

  int64_t AcknowledgedIn(MovePhase phase) const {
    absl::MutexLock lock(&mu_);
    int64_t n = 0;
    for (const WriterStats& s : stats_) {
      n += phase == MovePhase::kDualWrite ? s.during_dual_write
                                          : s.during_cut_over;
    }
    return n;
  }

 private:
  // The ids a writer inserts: its own range.
  static int64_t NewId(int writer, int64_t n) {
    return (writer + 1) * int64_t{100000000} + n;
  }

  void Acked(int writer, std::optional<MovePhase> phase) {
    absl::MutexLock lock(&mu_);
    WriterStats& s = stats_[writer];
    ++s.acknowledged;
    if (phase == MovePhase::kDualWrite) ++s.during_dual_write;
    if (phase == MovePhase::kCutOver) ++s.during_cut_over;
  }
  void Note(int writer, int64_t WriterStats::*counter,
            const absl::Status& status, std::string_view what) {
    absl::MutexLock lock(&mu_);
    WriterStats& s = stats_[writer];
    ++(s.*counter);
    if (s.errors.size() < 5) s.errors.push_back(StrCat(what, ": ", status.ToString()));
  }
  void Anomaly(int writer, std::string what) {
    absl::MutexLock lock(&mu_);
    stats_[writer].anomalies.push_back(std::move(what));
  }

  std::optional<MovePhase> PhaseNow() const {
    const std::shared_ptr<const ShardMap> map = cluster_.map();
    if (map->moves().empty()) return std::nullopt;
    return map->moves().front().phase;
  }

  // One single statement; false (and logged) if it failed.
  bool Single(int writer, std::string_view sql, const std::vector<Param>& params,
              int64_t* rows_affected) {
    absl::StatusOr<Result> result = cluster_.Execute(sql, params);
    if (!result.ok()) {
      Note(writer, &WriterStats::statement_failures, result.status(), sql);
      Note(writer, &WriterStats::unknown_outcomes, result.status(), sql);
      return false;
    }
    if (rows_affected != nullptr) *rows_affected = result->rows_affected;
    return true;
  }

  // Runs `statements` in one Transaction; retried from the start when the
  // map changed under it. Returns whether it committed: kCommitted,
  // kRolledBack (its effects certainly absent) or kUnknown (Commit failed).
  enum class Outcome { kCommitted, kRolledBack, kUnknown };
  Outcome InTransaction(
      int writer,
      const std::vector<std::pair<std::string, std::vector<Param>>>& statements,
      std::vector<int64_t>& affected) {
    for (int attempt = 0;; ++attempt) {
      affected.clear();
      auto txn = cluster_.Begin();
      if (!txn.ok()) {
        Note(writer, &WriterStats::transaction_failures, txn.status(), "Begin");
        return Outcome::kRolledBack;
      }
      absl::Status failed;
      std::string_view failed_sql;
      bool first = true;
      for (const auto& [sql, params] : statements) {
        absl::StatusOr<Result> r = (*txn)->Execute(sql, params);
        if (!r.ok()) {
          failed = r.status();
          failed_sql = sql;
          break;
        }
        first = false;
        affected.push_back(r->rows_affected);
      }
      if (failed.ok()) {
        absl::Status committed = (*txn)->Commit();
        if (committed.ok()) return Outcome::kCommitted;
        Note(writer, &WriterStats::unknown_outcomes, committed, "Commit");
        return Outcome::kUnknown;
      }
      (*txn)->Rollback().IgnoreError();
      if (SqlStateOf(failed) == internal::kStaleEpochSqlState && attempt < 5) {
        if (first) {
          Note(writer, &WriterStats::first_statement_refusals, failed,
               failed_sql);
        }
        absl::MutexLock lock(&mu_);
        ++stats_[writer].transaction_retries;
        continue;
      }
      Note(writer, &WriterStats::transaction_failures, failed, failed_sql);
      return Outcome::kRolledBack;
    }
  }

  void Write(int writer) {
    Ledger& ledger = ledgers_[writer];
    std::mt19937_64 random(1000 * starts_ + writer);
    // The accounts this writer may touch: present for certain.
    std::vector<int64_t> live;
    std::map<int64_t, int64_t> next_seq;
    for (const auto& [key, e] : ledger.rows()) {
      const auto& [table, id, seq] = key;
      if (table == Rel::kAccounts &&
          e.presence == Expected::Presence::kPresent) {
        live.push_back(id);
      }
      if (table == Rel::kEntries) {
        next_seq[id] = std::max(next_seq[id], seq + 1);
      }
    }
    int64_t inserted = 0;
    for (const auto& [key, e] : ledger.rows()) {
      const auto& [table, id, seq] = key;
      if (table == Rel::kAccounts && id >= NewId(writer, 0)) {
        inserted = std::max(inserted, id - NewId(writer, 0) + 1);
      }
    }
    auto pick = [&]() -> int64_t {
      return live[std::uniform_int_distribution<size_t>(0, live.size() - 1)(
          random)];
    };
    auto forget = [&](int64_t id) {
      live.erase(std::find(live.begin(), live.end(), id));
    };
    while (!stop_) {
      const std::optional<MovePhase> phase = PhaseNow();
      const int dice = std::uniform_int_distribution<int>(0, 99)(random);
      // Inserts stop while the writer has many rows: the moves' work
      // stays bounded however long the test runs.
      const bool may_insert = live.size() < kMaxRowsPerWriter;
      if (live.size() < 10 || (dice < 22 && may_insert)) {
        // A new account.
        const int64_t id = NewId(writer, inserted++);
        const bool ok = Single(writer,
                               "INSERT INTO accounts (id, n, note) VALUES "
                               "($1, 0, $2)",
                               {StrCat(id), StrCat("w", writer)}, nullptr);
        ledger.Insert({Rel::kAccounts, id, 0}, 0, ok);
        if (ok) {
          live.push_back(id);
          Acked(writer, phase);
        }
      } else if (dice < 30 && may_insert) {
        // Two new accounts in one INSERT (two shards, or one).
        const int64_t a = NewId(writer, inserted++);
        const int64_t b = NewId(writer, inserted++);
        const bool ok = Single(writer,
                               "INSERT INTO accounts (id, n, note) VALUES "
                               "($1, 0, 'pair'), ($2, 0, 'pair')",
                               {StrCat(a), StrCat(b)}, nullptr);
        ledger.Insert({Rel::kAccounts, a, 0}, 0, ok);
        ledger.Insert({Rel::kAccounts, b, 0}, 0, ok);
        if (ok) {
          live.push_back(a);
          live.push_back(b);
          Acked(writer, phase);
        }
      } else if (dice < 58) {
        const int64_t id = pick();
        int64_t affected = -1;
        const bool ok = Single(writer,
                               "UPDATE accounts SET n = n + 1 WHERE id = $1",
                               {StrCat(id)}, &affected);
        ledger.Increment({Rel::kAccounts, id, 0}, ok);
        if (ok) {
          Acked(writer, phase);
          if (affected != 1) {
            Anomaly(writer, StrCat("UPDATE of accounts(", id, ") changed ",
                                   affected, " rows"));
          }
        }
      } else if (dice < 66) {
        // The entry of seq 0 of an account, where it has one for certain.
        const int64_t id = pick();
        const RowKey entry{Rel::kEntries, id, 0};
        if (!ledger.Present(entry)) continue;
        int64_t affected = -1;
        const bool ok = Single(writer,
                               "UPDATE entries SET n = n + 1 WHERE "
                               "account_id = $1 AND seq = 0",
                               {StrCat(id)}, &affected);
        ledger.Increment(entry, ok);
        if (ok) {
          Acked(writer, phase);
          if (affected != 1) {
            Anomaly(writer, StrCat("UPDATE of ", RowName(entry), " changed ",
                                   affected, " rows"));
          }
        }
      } else if (dice < 72) {
        const int64_t id = pick();
        int64_t affected = -1;
        const bool ok = Single(writer, "DELETE FROM accounts WHERE id = $1",
                               {StrCat(id)}, &affected);
        ledger.Delete({Rel::kAccounts, id, 0}, ok);
        forget(id);
        if (ok) {
          Acked(writer, phase);
          if (affected != 1) {
            Anomaly(writer, StrCat("DELETE of accounts(", id, ") deleted ",
                                   affected, " rows"));
          }
        }
      } else if (dice < 92) {
        // A transfer: two accounts (often on two shards) and a new entry.
        const int64_t a = pick();
        const int64_t b = pick();
        if (a == b) continue;
        const int64_t seq = next_seq[a]++;
        std::vector<int64_t> affected;
        const Outcome outcome = InTransaction(
            writer,
            {{"UPDATE accounts SET n = n + 1 WHERE id = $1", {StrCat(a)}},
             {"UPDATE accounts SET n = n + 1 WHERE id = $1", {StrCat(b)}},
             {"INSERT INTO entries (account_id, seq, n) VALUES ($1, $2, 1)",
              {StrCat(a), StrCat(seq)}}},
            affected);
        if (outcome == Outcome::kRolledBack) continue;
        const bool known = outcome == Outcome::kCommitted;
        ledger.Increment({Rel::kAccounts, a, 0}, known);
        ledger.Increment({Rel::kAccounts, b, 0}, known);
        ledger.Insert({Rel::kEntries, a, seq}, 1, known);
        if (known) {
          Acked(writer, phase);
          if (affected[0] != 1 || affected[1] != 1) {
            Anomaly(writer, StrCat("a transfer between accounts(", a,
                                   ") and accounts(", b, ") changed ",
                                   affected[0], " and ", affected[1], " rows"));
          }
        }
      } else {
        // An account and all its entries, in one transaction.
        const int64_t id = pick();
        std::vector<RowKey> entries;
        int64_t present = 0;
        for (const auto& [key, e] : ledger.rows()) {
          if (std::get<0>(key) == Rel::kEntries && std::get<1>(key) == id) {
            entries.push_back(key);
            if (e.presence == Expected::Presence::kPresent) ++present;
          }
        }
        std::vector<int64_t> affected;
        const Outcome outcome = InTransaction(
            writer,
            {{"DELETE FROM entries WHERE account_id = $1", {StrCat(id)}},
             {"DELETE FROM accounts WHERE id = $1", {StrCat(id)}}},
            affected);
        if (outcome == Outcome::kRolledBack) continue;
        const bool known = outcome == Outcome::kCommitted;
        for (const RowKey& key : entries) ledger.Delete(key, known);
        ledger.Delete({Rel::kAccounts, id, 0}, known);
        forget(id);
        if (known) {
          Acked(writer, phase);
          if (affected[0] < present ||
              affected[0] > static_cast<int64_t>(entries.size()) ||
              affected[1] != 1) {
            Anomaly(writer, StrCat("deleting accounts(", id, ") deleted ",
                                   affected[0], " entries (", present,
                                   " expected) and ", affected[1],
                                   " accounts"));
          }
        }
      }
      absl::SleepFor(absl::Milliseconds(1));
    }
  }

  const Cluster& cluster_;
  std::vector<Ledger>& ledgers_;
  std::atomic<bool> stop_{false};
  int starts_ = 0;  // Start calls, for each run's own random writes
  std::vector<std::thread> threads_;
  mutable absl::Mutex mu_;
  std::vector<WriterStats> stats_ ABSL_GUARDED_BY(mu_);
};

class MoveCorrectnessTest : public ::testing::Test {
 protected:
  // The configuration's distribution and the slice that moves (from s1).
  virtual std::string MapBody() const { return kMapBody; }
  virtual const char* Slice() const { return kSlice; }
  // Whether the shards get shardkit's hash functions, so that a hash slice
  // moves without key lists (rebalancer/server_hash.h).
  virtual bool ServerHash() const { return false; }

  void SetUp() override {
    auto started = TestCluster::Start(3);
    ASSERT_TRUE(started.ok()) << started.status();
    shards_ = *std::move(started);
    auto config = shards_->WriteMoveConfig(
        "move.toml", MapBody(),
        "CREATE TABLE accounts (id int8 PRIMARY KEY, n int NOT NULL, "
        "note text); "
        "CREATE TABLE entries (account_id int8, seq int8, n int NOT NULL, "
        "PRIMARY KEY (account_id, seq)); "
        "CREATE TABLE countries (code text PRIMARY KEY, name text); "
        "INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany'), "
        "('jp', 'Japan')");
    ASSERT_TRUE(config.ok()) << config.status();
    config_path_ = *config;
    for (int s = 0; s < shards_->size(); ++s) {
      if (ServerHash()) {
        absl::Status installed = shards_->InstallServerHash(s);
        ASSERT_TRUE(installed.ok()) << installed;
      }
    }
    auto cluster = Cluster::OpenFile(config_path_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = *std::move(cluster);
    ledgers_.resize(kWriters);
    for (int64_t from = 1; from <= kSeedAccounts; from += 200) {
      std::vector<std::string> accounts, entries;
      for (int64_t id = from; id < from + 200 && id <= kSeedAccounts; ++id) {
        accounts.push_back(StrCat("(", id, ", 0, 'seed')"));
        entries.push_back(StrCat("(", id, ", 0, 0)"));
        Ledger& ledger = ledgers_[id % kWriters];
        ledger.Insert({Rel::kAccounts, id, 0}, 0, true);
        ledger.Insert({Rel::kEntries, id, 0}, 0, true);
      }
      for (const auto& [table, rows] :
           {std::pair{"accounts", &accounts}, std::pair{"entries", &entries}}) {
        auto inserted = cluster_->Execute(
            StrCat("INSERT INTO ", table,
                   std::string_view(table) == "accounts" ? " (id, n, note)"
                                                         : " (account_id, seq, n)",
                   " VALUES ", absl::StrJoin(*rows, ", ")));
        ASSERT_TRUE(inserted.ok()) << inserted.status();
      }
    }
  }

  absl::StatusOr<std::unique_ptr<internal::Mover>> OpenMover(
      internal::MoverOptions options) {
    ASSIGN_OR_RETURN(Config config, LoadConfig(config_path_));
    return internal::Mover::Open(std::move(config), std::move(options));
  }

  int RowsOn(int shard) {
    auto rows = shards_->Query(shard, "SELECT count(*) FROM accounts");
    int n = -1;
    if (rows.ok()) {
      EXPECT_TRUE(absl::SimpleAtoi((*rows)[0][0], &n));
    }
    return n;
  }

  // Reads every shard directly and compares with the ledgers, the final
  // live map and the router's answer. Writers must be stopped. Returns the
  // problems found (empty: all good).
  std::vector<std::string> Check();

  // Writers run while the mover moves Slice() to s3 in this process;
  // then the shards are checked, and the check is shown to catch faults.
  void WritersDuringAMoveInProcess();

  // Moves killed at each failpoint of kFailpoints, each then resumed.
  void KilledAtEachFailpointThenResumed();

  // Moves killed at each failpoint of kAbortAfter, each then aborted.
  void KilledBeforeThePointOfNoReturnThenAborted();

  // See its definition.
  void KillThen(Workload& writers, const char* failpoint, const std::string& to,
                const std::string& then);

  std::unique_ptr<TestCluster> shards_;
  std::string config_path_;
  std::unique_ptr<Cluster> cluster_;  // the writers'
  std::vector<Ledger> ledgers_;
};

std::vector<std::string> MoveCorrectnessTest::Check() {
  std::vector<std::string> problems;
  auto problem = [&](std::string p) {
    if (problems.size() < 25) problems.push_back(std::move(p));
  };
  // The final map, from the catalog: a fresh cluster reads it.
  auto fresh = Cluster::OpenFile(config_path_);
  if (!fresh.ok()) return {StrCat("open: ", fresh.status().ToString())};
  const std::shared_ptr<const ShardMap> map = (*fresh)->map();
  if (!map->moves().empty()) problem("a move is still in the live map");

  // Every shard, read directly.
  std::map<RowKey, std::pair<int, int64_t>> found;  // -> (shard, n)
  for (int s = 0; s < shards_->size(); ++s) {
    for (Rel table : {Rel::kAccounts, Rel::kEntries}) {
      auto rows = shards_->Query(
          s, table == Rel::kAccounts
                 ? "SELECT id, 0, n FROM accounts"
                 : "SELECT account_id, seq, n FROM entries");
      if (!rows.ok()) return {rows.status().ToString()};
      for (const auto& row : *rows) {
        int64_t id = 0, seq = 0, n = 0;
        if (!absl::SimpleAtoi(row[0], &id) || !absl::SimpleAtoi(row[1], &seq) ||
            !absl::SimpleAtoi(row[2], &n)) {
          problem(StrCat("unreadable row on s", s + 1));
          continue;
        }
        const RowKey key{table, id, seq};
        auto [it, fresh_row] = found.emplace(key, std::make_pair(s, n));
        if (!fresh_row) {
          problem(StrCat(RowName(key), " is on s", it->second.first + 1,
                         " and on s", s + 1));
        }
        auto owner = map->Place(table == Rel::kAccounts ? "accounts" : "entries",
                                Key::Integer(id));
        if (!owner.ok() || static_cast<int>(owner->shard) != s) {
          problem(StrCat(RowName(key), " is on s", s + 1, ", owned by ",
                         owner.ok() ? map->shard(owner->shard).name : "?"));
        }
      }
    }
    auto keys_tables = shards_->Query(
        s, "SELECT count(*) FROM pg_tables WHERE schemaname = 'shardkit' AND "
           "tablename LIKE 'move\\_%\\_keys'");
    if (!keys_tables.ok() || (*keys_tables)[0][0] != "0") {
      problem(StrCat("s", s + 1, " still holds a move's keys table"));
    }
    auto countries = shards_->Query(
        s, "SELECT string_agg(code || '=' || name, ',' ORDER BY code) FROM "
           "countries");
    if (!countries.ok() ||
        (*countries)[0][0] != "de=Germany,fr=France,jp=Japan") {
      problem(StrCat("the reference table changed on s", s + 1));
    }
  }

  // What the acknowledged writes imply.
  std::map<RowKey, Expected> expected;
  for (const Ledger& ledger : ledgers_) {
    for (const auto& [key, e] : ledger.rows()) expected[key] = e;
  }
  for (const auto& [key, e] : expected) {
    auto it = found.find(key);
    const bool present = it != found.end();
    if (e.presence == Expected::Presence::kPresent && !present) {
      problem(StrCat(RowName(key), " is lost (its insert was acknowledged)"));
    } else if (e.presence == Expected::Presence::kAbsent && present) {
      problem(StrCat(RowName(key), " is back on s", it->second.first + 1,
                     " (its delete was acknowledged)"));
    } else if (present && (it->second.second < e.n_min ||
                           it->second.second > e.n_max)) {
      problem(StrCat(RowName(key), " has n = ", it->second.second,
                     ", acknowledged writes imply ", e.n_min,
                     e.n_max != e.n_min ? StrCat("..", e.n_max) : ""));
    }
  }
  for (const auto& [key, where] : found) {
    if (!expected.contains(key)) {
      problem(StrCat(RowName(key), " on s", where.first + 1,
                     " was never written"));
    }
  }

  // The router (by the map it follows) answers the same.
  internal::LiveMapOf(*cluster_).Refresh().IgnoreError();
  for (Rel table : {Rel::kAccounts, Rel::kEntries}) {
    auto routed = cluster_->Execute(
        table == Rel::kAccounts
            ? "SELECT id, 0, n FROM accounts ORDER BY 1, 2"
            : "SELECT account_id, seq, n FROM entries ORDER BY 1, 2");
    if (!routed.ok()) {
      problem(StrCat("routed read: ", routed.status().ToString()));
      continue;
    }
    std::vector<std::string> via_router, direct;
    for (const Row& row : routed->rows) {
      via_router.push_back(StrCat(*row[0], "/", *row[1], "/", *row[2]));
    }
    for (const auto& [key, where] : found) {
      if (std::get<0>(key) != table) continue;
      direct.push_back(StrCat(std::get<1>(key), "/", std::get<2>(key), "/",
                              where.second));
    }
    if (via_router != direct) {
      problem(StrCat("the router reads ", via_router.size(), " rows of ",
                     table == Rel::kAccounts ? "accounts" : "entries",
                     ", the shards hold ", direct.size(),
                     (via_router.size() == direct.size() ? " (values differ)"
                                                          : "")));
    }
  }
  return problems;
}

std::string Report(const WriterStats& s) {
  return StrCat(s.acknowledged, " writes acknowledged (", s.during_dual_write,
                " in dual-write, ", s.during_cut_over, " cut over), ",
                s.statement_failures, " statements failed, ",
                s.transaction_retries, " transactions retried (",
                s.first_statement_refusals, " refused on their first "
                "statement), ",
                s.transaction_failures, " failed, ", s.unknown_outcomes,
                " unknown outcomes; errors: ", absl::StrJoin(s.errors, " | "),
                "; anomalies: ", absl::StrJoin(s.anomalies, " | "));
}

void MoveCorrectnessTest::WritersDuringAMoveInProcess() {
  const int on_s1 = RowsOn(0);
  Workload writers(*cluster_, ledgers_);
  // The move waits until the writers have written while it dual-writes
  // (in its log callback, as the backfill starts: nothing of the source is
  // locked yet), and again while it is cut over (in its progress
  // callback), so that the test does not depend on how fast either side
  // runs.
  internal::MoverOptions options;
  options.chunk_rows = 150;
  options.map_grace = absl::Milliseconds(1200);
  bool waited_dual = false, waited_cut = false;
  options.log = [&](std::string_view line) {
    const absl::string_view text(line.data(), line.size());
    if (absl::EndsWith(text, ": backfill") && !waited_dual) {
      waited_dual = true;
      EXPECT_TRUE(Eventually([&] {
        return writers.AcknowledgedIn(MovePhase::kDualWrite) >= 100;
      }));
    }
  };
  options.progress = [&](const internal::MoveProgress& p) {
    if (p.phase == "cleanup" && !waited_cut) {
      waited_cut = true;
      EXPECT_TRUE(Eventually([&] {
        return writers.AcknowledgedIn(MovePhase::kCutOver) >= 50;
      }));
    }
  };
  auto mover = OpenMover(options);
  ASSERT_TRUE(mover.ok()) << mover.status();
  writers.Start();
  absl::SleepFor(absl::Milliseconds(300));
  internal::MoveRequest request;
  request.distribution = "accounts";
  request.slice = Slice();
  request.destination = "s3";
  auto move = (*mover)->Start(request);
  ASSERT_TRUE(move.ok()) << move.status();
  absl::Status ran = (*mover)->Run(move->id);
  EXPECT_TRUE(ran.ok()) << ran;
  // A hash slice kept key lists exactly when the shards could not hash.
  auto journaled = (*mover)->journal().Get(move->id);
  ASSERT_TRUE(journaled.ok()) << journaled.status();
  EXPECT_EQ(journaled->server_hash,
            ServerHash() && MapBody().find("\"hash\"") != std::string::npos);
  const int64_t at_end = writers.Total().acknowledged;
  EXPECT_TRUE(Eventually(
      [&] { return writers.Total().acknowledged >= at_end + 200; }));
  writers.Stop();

  const WriterStats total = writers.Total();
  std::cout << Report(total) << "\n";
  SCOPED_TRACE(Report(total));
  EXPECT_TRUE(waited_dual && waited_cut);
  EXPECT_EQ(total.statement_failures, 0);
  EXPECT_EQ(total.transaction_failures, 0);
  EXPECT_EQ(total.first_statement_refusals, 0);
  EXPECT_EQ(total.unknown_outcomes, 0);
  EXPECT_TRUE(total.anomalies.empty());
  const std::vector<std::string> problems = Check();
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
  // A good share of s1's rows moved, and s1 kept some.
  EXPECT_GT(RowsOn(2), on_s1 / 2);
  EXPECT_GT(RowsOn(0), 0);

  // The check finds what it must: a lost increment, a row left on the
  // source (twice, on the wrong shard), a deleted row brought back.
  auto moved = shards_->Query(2, "SELECT id FROM accounts ORDER BY id LIMIT 2");
  ASSERT_TRUE(moved.ok() && moved->size() == 2);
  const std::string id = (*moved)[0][0];
  const std::string decremented = (*moved)[1][0];
  int64_t deleted = 0;
  for (const auto& [key, e] : ledgers_[0].rows()) {
    if (std::get<0>(key) == Rel::kAccounts &&
        e.presence == Expected::Presence::kAbsent &&
        cluster_->map()->Place("accounts", Key::Integer(std::get<1>(key)))
                ->shard == 2) {
      deleted = std::get<1>(key);
    }
  }
  ASSERT_NE(deleted, 0);
  ASSERT_TRUE(shards_
                  ->Query(2, StrCat("SET shardkit.epoch = 1000000; "
                                    "UPDATE accounts SET n = n - 1 WHERE id = ",
                                    decremented, "; INSERT INTO accounts VALUES (",
                                    deleted, ", 0, 'back')"))
                  .ok());
  ASSERT_TRUE(
      shards_->Query(0, StrCat("SET shardkit.epoch = 1000000; INSERT INTO "
                               "accounts VALUES (", id, ", 0, 'left')"))
          .ok());
  const std::string found = absl::StrJoin(Check(), "\n");
  for (const std::string& expected :
       {StrCat("accounts(", decremented, ") has n = "),
        StrCat("accounts(", id, ") is on s1 and on s3"),
        StrCat("accounts(", id, ") is on s1, owned by s3"),
        StrCat("accounts(", deleted, ") is back on s3")}) {
    EXPECT_NE(found.find(expected), std::string::npos) << expected << " in\n"
                                                       << found;
  }
}

TEST_F(MoveCorrectnessTest, WritersDuringAMoveInProcess) {
  WritersDuringAMoveInProcess();
}

// The same for a range distribution, whose moving slice is hidden by its
// SQL condition rather than key lists (rebalancer/shard_objects.h). s1
// owns the seeded accounts and writer 0's new ones; [600, 120000000)
// moves: most of them, while s1 keeps 1..599.
class MoveCorrectnessRangeTest : public MoveCorrectnessTest {
 protected:
  std::string MapBody() const override {
    std::string body = kMapBody;
    const std::string hash =
        "strategy = \"hash\"\nkey_type = \"int8\"\nshards = [\"s1\", \"s2\"]";
    const size_t at = body.find(hash);
    EXPECT_NE(at, std::string::npos);
    body.replace(at, hash.size(),
                 "strategy = \"range\"\nkey_type = \"int8\"\nslices = [ { to "
                 "= 150000000, shard = \"s1\" }, { from = 150000000, shard = "
                 "\"s2\" } ]");
    return body;
  }
  const char* Slice() const override { return "600:120000000"; }
};

TEST_F(MoveCorrectnessRangeTest, WritersDuringARangeMoveInProcess) {
  WritersDuringAMoveInProcess();
}

// The hash move again, the shards computing the key hash themselves
// (shardkit.hash_key_v1, extension/shardkit_pg.c): the slice is filtered,
// hidden, cleaned up and aborted by its hash condition, with no key lists.
class MoveCorrectnessServerHashTest : public MoveCorrectnessTest {
 protected:
  bool ServerHash() const override { return true; }
};

TEST_F(MoveCorrectnessServerHashTest, WritersDuringAMoveInProcess) {
  WritersDuringAMoveInProcess();
}

// The failpoints of an online move (rebalancer/mover.cc, backfill.cc), in
// the order a move reaches them; FailpointsMatchTheSources keeps the list
// in step with the code.
constexpr const char* kFailpoints[] = {
    "move-after-plan",          "move-after-dual-write",
    "move-backfill-mid",        "move-backfill-after-chunk",
    "move-after-backfill",      "move-after-verify",
    "move-cutover-after-fence", "move-after-cutover",
    "move-cleanup-mid",         "move-cleanup-before-publish",
};
// Before the point of no return (the cutover's publish) a killed move can
// be aborted: with nothing in the map yet, with a chunk committed on the
// destination only, after a full copy, and with the source fenced for an
// epoch that was never published. (Each abort waits for routers to leave
// the dual-write map: MoverOptions::map_grace, 1.2 s here.)
constexpr const char* kAbortAfter[] = {
    "move-after-plan", "move-backfill-after-chunk", "move-after-verify",
    "move-cutover-after-fence"};

TEST(MoveFailpoints, FailpointsMatchTheSources) {
  std::set<std::string> in_code;
  for (const char* file : {"rebalancer/mover.cc", "rebalancer/backfill.cc"}) {
    std::ifstream in(StrCat(SHARDKIT_SOURCE_DIR, "/", file));
    ASSERT_TRUE(in.good()) << file;
    const std::string text((std::istreambuf_iterator<char>(in)),
                           std::istreambuf_iterator<char>());
    constexpr std::string_view kCall = "Failpoint(\"";
    for (size_t at = text.find(kCall); at != std::string::npos;
         at = text.find(kCall, at + 1)) {
      const size_t from = at + kCall.size();
      in_code.insert(text.substr(from, text.find('"', from) - from));
    }
  }
  EXPECT_EQ(in_code, std::set<std::string>(std::begin(kFailpoints),
                                           std::end(kFailpoints)));
}

// `shardctl args...`, with failpoint `failpoint` on (none if empty).
testing::CommandOutput Shardctl(std::vector<std::string> args,
                                const std::string& failpoint = "") {
  std::vector<std::string> argv = {
      "/usr/bin/env", StrCat("SHARDKIT_FAILPOINTS=", failpoint), SHARDCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return testing::RunCommand(argv);
}

// The id of the move not finished, from `shardctl moves list`; 0 if none.
uint64_t ActiveMove(const std::string& config_path) {
  testing::CommandOutput list = Shardctl(
      {"moves", "list", "-c", config_path, "--active", "--format", "json"});
  EXPECT_EQ(list.exit_code, 0) << list.err;
  constexpr std::string_view kId = "\"id\":";
  const size_t at = list.out.find(kId);
  uint64_t id = 0;
  if (at == std::string::npos) return 0;
  size_t end = at + kId.size();
  while (end < list.out.size() && std::isdigit(list.out[end])) ++end;
  EXPECT_TRUE(absl::SimpleAtoi(
      list.out.substr(at + kId.size(), end - at - kId.size()), &id))
      << list.out;
  return id;
}

// Runs the move of Slice() to `to` in a shardctl killed at `failpoint`,
// while the writers write, then `then` ("resume" or "abort") in another,
// and checks the data with the writers stopped.
void MoveCorrectnessTest::KillThen(Workload& writers, const char* failpoint,
                                   const std::string& to,
                                   const std::string& then) {
  SCOPED_TRACE(StrCat(failpoint, ", then ", then));
  writers.Start();
  absl::SleepFor(absl::Milliseconds(100));
  testing::CommandOutput killed =
      Shardctl({"move", "-c", config_path_, "--distribution", "accounts",
                "--slice", Slice(), "--to", to, "--chunk-rows", "300",
                "--map-grace", "1200ms"},
               failpoint);
  EXPECT_EQ(killed.exit_code, internal::kFailpointExitCode)
      << killed.out << killed.err;
  const uint64_t id = ActiveMove(config_path_);
  EXPECT_NE(id, 0u);
  // The writers go on while no mover runs.
  absl::SleepFor(absl::Milliseconds(100));
  testing::CommandOutput after =
      Shardctl({"moves", then, StrCat(id), "-c", config_path_, "--map-grace",
                "1200ms"});
  EXPECT_EQ(after.exit_code, 0) << after.out << after.err;
  absl::SleepFor(absl::Milliseconds(100));
  writers.Stop();
  EXPECT_EQ(ActiveMove(config_path_), 0u);
  const std::vector<std::string> problems = Check();
  EXPECT_TRUE(problems.empty()) << absl::StrJoin(problems, "\n");
}

TEST_F(MoveCorrectnessTest, MoverKilledAtEachFailpointThenResumed) {
  KilledAtEachFailpointThenResumed();
}

// With the shards hashing keys, the backfill reads a chunk ahead (no key
// lists): killed with two chunks locked, resumed from the journal's bound.
TEST_F(MoveCorrectnessServerHashTest, MoverKilledAtEachFailpointThenResumed) {
  KilledAtEachFailpointThenResumed();
}

void MoveCorrectnessTest::KilledAtEachFailpointThenResumed() {
  Workload writers(*cluster_, ledgers_);
  // The slice goes back and forth between s1 and s3.
  std::string to = "s3";
  for (const char* failpoint : kFailpoints) {
    KillThen(writers, failpoint, to, "resume");
    if (HasFailure()) break;  // the next moves would start from a mess
    to = to == "s3" ? "s1" : "s3";
  }
  const WriterStats total = writers.Total();
  std::cout << Report(total) << "\n";
  SCOPED_TRACE(Report(total));
  EXPECT_EQ(total.statement_failures, 0);
  EXPECT_EQ(total.transaction_failures, 0);
  EXPECT_EQ(total.first_statement_refusals, 0);
  EXPECT_TRUE(total.anomalies.empty());
  EXPECT_GT(total.during_dual_write, 0);
}

TEST_F(MoveCorrectnessTest, MoverKilledBeforeThePointOfNoReturnThenAborted) {
  KilledBeforeThePointOfNoReturnThenAborted();
}

TEST_F(MoveCorrectnessServerHashTest,
       MoverKilledBeforeThePointOfNoReturnThenAborted) {
  KilledBeforeThePointOfNoReturnThenAborted();
}

void MoveCorrectnessTest::KilledBeforeThePointOfNoReturnThenAborted() {
  Workload writers(*cluster_, ledgers_);
  const int on_s1 = RowsOn(0);
  for (const char* failpoint : kAbortAfter) {
    KillThen(writers, failpoint, "s3", "abort");
    EXPECT_EQ(RowsOn(2), 0);  // nothing left on the destination
    if (HasFailure()) break;
  }
  EXPECT_GT(RowsOn(0), on_s1 / 2);
  const WriterStats total = writers.Total();
  std::cout << Report(total) << "\n";
  SCOPED_TRACE(Report(total));
  EXPECT_EQ(total.statement_failures, 0);
  EXPECT_EQ(total.transaction_failures, 0);
  EXPECT_EQ(total.first_statement_refusals, 0);
  EXPECT_TRUE(total.anomalies.empty());
}

}  // namespace
}  // namespace shardkit
