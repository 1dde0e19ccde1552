// Transactions across real PostgreSQL shards: commit everywhere or nowhere,
// plain COMMIT when one shard suffices, two-phase commit when several wrote,
// and recovery of prepared transactions left in doubt.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"
#include "tests/integration/test_cluster.h"

namespace shardkit {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kMapBody[] = R"(
[distributions.accounts]
strategy = "range"
key_type = "int8"
slices = [ { to = 100, shard = "s1" }, { from = 100, to = 200, shard = "s2" },
           { from = 200, shard = "s3" } ]
[tables.accounts]
distribution = "accounts"
key = "id"
[tables.currencies]
reference = true
[timeouts]
connect = "2s"
statement = "10s"
[transactions]
recovery_grace = "1ms"
recovery_interval = "1h"
)";

class TransactionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shards = testing::TestCluster::Start(3);
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = shards->release();
    config_ = shards_->WriteConfig("txn.toml", kMapBody);
    auto cluster = Cluster::OpenFile(config_);
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    for (const char* ddl :
         {"CREATE TABLE accounts (id int8 PRIMARY KEY, balance int8 NOT NULL "
          "CHECK (balance >= 0))",
          "CREATE TABLE currencies (code text PRIMARY KEY)"}) {
      absl::StatusOr<Result> r = cluster_->Execute(ddl);
      ASSERT_TRUE(r.ok()) << r.status();
    }
  }

  static void TearDownTestSuite() {
    delete cluster_;
    delete shards_;
  }

  void SetUp() override {
    absl::StatusOr<Result> r = cluster_->Execute("DELETE FROM accounts");
    ASSERT_TRUE(r.ok()) << r.status();
    r = cluster_->Execute(
        "INSERT INTO accounts (id, balance) VALUES (1, 100), (2, 100), "
        "(150, 100), (250, 100)");
    ASSERT_TRUE(r.ok()) << r.status();
  }

  static std::string Scalar(int shard, const std::string& sql) {
    auto rows = shards_->Query(shard, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() && !rows->empty() ? (*rows)[0][0] : "";
  }

  static std::string Balance(int64_t id) {
    const int shard = id < 100 ? 0 : id < 200 ? 1 : 2;
    return Scalar(shard, absl::StrCat("SELECT coalesce((SELECT balance FROM "
                                      "accounts WHERE id = ",
                                      id, ")::text, 'none')"));
  }

  static int Prepared() {
    int total = 0;
    for (int s = 0; s < 3; ++s) {
      total += std::stoi(Scalar(s, "SELECT count(*) FROM pg_prepared_xacts"));
    }
    return total;
  }

  // Rows in the decision log (on s1: there is no [catalog]).
  static std::string Decisions() {
    return Scalar(0,
                  "SELECT CASE WHEN to_regclass('shardkit.commit_decisions') "
                  "IS NULL THEN 0 ELSE (SELECT count(*) FROM "
                  "shardkit.commit_decisions) END");
  }

  static testing::TestCluster* shards_;
  static Cluster* cluster_;
  static std::string config_;
};

testing::TestCluster* TransactionTest::shards_ = nullptr;
Cluster* TransactionTest::cluster_ = nullptr;
std::string TransactionTest::config_;

absl::Status Transfer(Transaction& txn, int64_t from, int64_t to, int64_t amount) {
  absl::StatusOr<Result> r = txn.Execute(
      "UPDATE accounts SET balance = balance - $2 WHERE id = $1",
      {std::to_string(from), std::to_string(amount)});
  if (!r.ok()) return r.status();
  r = txn.Execute("UPDATE accounts SET balance = balance + $2 WHERE id = $1",
                  {std::to_string(to), std::to_string(amount)});
  return r.status();
}

TEST_F(TransactionTest, OneShardCommitsPlainly) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE(Transfer(**txn, 1, 2, 30).ok());
  EXPECT_EQ((*txn)->participants(), std::vector<ShardId>{0});
  // Not visible outside before the commit.
  EXPECT_EQ(Balance(1), "100");
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(Balance(1), "70");
  EXPECT_EQ(Balance(2), "130");
  EXPECT_EQ(Prepared(), 0);
}

TEST_F(TransactionTest, SeveralShardsCommitTogether) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE(Transfer(**txn, 1, 150, 40).ok());
  absl::Status moved = Transfer(**txn, 250, 2, 5);
  ASSERT_TRUE(moved.ok()) << moved;
  EXPECT_EQ((*txn)->participants(), (std::vector<ShardId>{0, 1, 2}));
  absl::Status committed = (*txn)->Commit();
  ASSERT_TRUE(committed.ok()) << committed;
  EXPECT_EQ(Balance(1), "60");
  EXPECT_EQ(Balance(2), "105");
  EXPECT_EQ(Balance(150), "140");
  EXPECT_EQ(Balance(250), "95");
  EXPECT_EQ(Prepared(), 0);
  // Its decision is deleted off the commit's path: with the next decision
  // this process records, or at the next recovery pass (ours, or the
  // background one's if it took the queue first).
  EXPECT_TRUE(testing::Eventually(
      [] { return cluster_->Recover().ok() && Decisions() == "0"; },
      absl::Seconds(10)))
      << Decisions() << " decision(s) left";
  // It has ended.
  EXPECT_EQ((*txn)->Execute("SELECT 1").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(TransactionTest, ReadsOnOtherShardsNeedNoPrepare) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE((*txn)->Execute("SELECT * FROM accounts").ok());  // every shard
  ASSERT_TRUE(Transfer(**txn, 1, 2, 1).ok());
  ASSERT_TRUE((*txn)->Commit().ok());
  EXPECT_EQ(Balance(1), "99");
  // A single writer committed plainly: no decision was ever needed.
  EXPECT_EQ(Prepared(), 0);
}

TEST_F(TransactionTest, RollbackLeavesNothing) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE(Transfer(**txn, 1, 250, 10).ok());
  ASSERT_TRUE((*txn)->Rollback().ok());
  EXPECT_EQ(Balance(1), "100");
  EXPECT_EQ(Balance(250), "100");
}

TEST_F(TransactionTest, DroppedTransactionRollsBack) {
  {
    absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
    ASSERT_TRUE(txn.ok());
    ASSERT_TRUE(Transfer(**txn, 1, 250, 10).ok());
  }
  EXPECT_EQ(Balance(1), "100");
  EXPECT_EQ(Balance(250), "100");
}

TEST_F(TransactionTest, AFailedStatementAbortsTheTransaction) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  ASSERT_TRUE(Transfer(**txn, 1, 150, 10).ok());
  // Overdraws account 250: the CHECK fails on s3.
  absl::Status overdrawn = Transfer(**txn, 250, 2, 1000);
  ASSERT_FALSE(overdrawn.ok());
  EXPECT_EQ(SqlStateOf(overdrawn), "23514");
  absl::StatusOr<Result> after = (*txn)->Execute("SELECT 1");
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(SqlStateOf(after.status()), "25P02");
  absl::Status committed = (*txn)->Commit();
  EXPECT_EQ(committed.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(committed.message()), HasSubstr("rolled back"));
  EXPECT_EQ(Balance(1), "100");
  EXPECT_EQ(Balance(150), "100");
  EXPECT_EQ(Prepared(), 0);
}

TEST_F(TransactionTest, MultiShardWritesOutsideATransactionAreAtomic) {
  // Row 250 exists on s3: the whole INSERT fails, and s1, s2 keep nothing.
  absl::StatusOr<Result> r = cluster_->Execute(
      "INSERT INTO accounts (id, balance) VALUES (3, 1), (160, 1), (250, 1)");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(SqlStateOf(r.status()), "23505");
  EXPECT_EQ(Balance(3), "none");
  EXPECT_EQ(Balance(160), "none");
  // And when every shard accepts, every shard has its rows.
  r = cluster_->Execute(
      "INSERT INTO accounts (id, balance) VALUES (3, 1), (160, 1), (260, 1)");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->rows_affected, 3);
  EXPECT_EQ(Balance(160), "1");
  // A multi-shard UPDATE that fails on one shard changes none.
  r = cluster_->Execute("UPDATE accounts SET balance = balance - 100");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(Balance(1), "100");
  EXPECT_EQ(Balance(150), "100");
  // Reference tables: every copy or none.
  ASSERT_TRUE(shards_->Query(2, "INSERT INTO currencies VALUES ('eur')").ok());
  r = cluster_->Execute("INSERT INTO currencies VALUES ('eur')");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(Scalar(0, "SELECT count(*) FROM currencies"), "0");
  ASSERT_TRUE(shards_->Query(2, "DELETE FROM currencies").ok());
  // DDL too: s2 already has the table, so no shard gets it.
  ASSERT_TRUE(shards_->Query(1, "CREATE TABLE only_s2 (x int)").ok());
  r = cluster_->Execute("CREATE TABLE only_s2 (x int)");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(Scalar(0, "SELECT to_regclass('only_s2') IS NULL"), "t");
  ASSERT_TRUE(shards_->Query(1, "DROP TABLE only_s2").ok());
  EXPECT_EQ(Prepared(), 0);
}

TEST_F(TransactionTest, StatementsThatRefuseTransactionBlocksStillRun) {
  absl::StatusOr<Result> r = cluster_->Execute(
      "CREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance)");
  ASSERT_TRUE(r.ok()) << r.status();
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(Scalar(s, "SELECT to_regclass('accounts_balance') IS NOT NULL"), "t");
  }
  ASSERT_TRUE(cluster_->Execute("DROP INDEX accounts_balance").ok());
}

// A prepared transaction left by a coordinator that died: recovery follows
// the recorded decision, or rolls back when there is none.
TEST_F(TransactionTest, RecoveryResolvesWhatACrashLeft) {
  const std::string undecided = "shardkit_" + std::string(32, 'a') + "_0";
  const std::string decided = "shardkit_" + std::string(32, 'b') + "_1";
  ASSERT_TRUE(shards_->Query(0, "BEGIN; UPDATE accounts SET balance = 0 WHERE "
                                "id = 1; PREPARE TRANSACTION '" + undecided + "'")
                  .ok());
  ASSERT_TRUE(shards_->Query(1, "BEGIN; UPDATE accounts SET balance = 7 WHERE "
                                "id = 150; PREPARE TRANSACTION '" + decided + "'")
                  .ok());
  // Make sure the log exists, then record 'commit' for the second.
  absl::StatusOr<RecoveryReport> first = cluster_->Recover();
  ASSERT_TRUE(first.ok()) << first.status();
  // The undecided one was older than the 1 ms grace: rolled back already;
  // the other had no decision either.
  EXPECT_EQ(first->resolved.size(), 2u);
  EXPECT_EQ(Balance(1), "100");
  EXPECT_EQ(Balance(150), "100");

  ASSERT_TRUE(shards_->Query(1, "BEGIN; UPDATE accounts SET balance = 7 WHERE "
                                "id = 150; PREPARE TRANSACTION '" + decided + "'")
                  .ok());
  ASSERT_TRUE(shards_->Query(0, "DELETE FROM shardkit.commit_decisions; "
                                "INSERT INTO shardkit.commit_decisions (txid, "
                                "outcome) VALUES ('" + std::string(32, 'b') +
                                "', 'commit')")
                  .ok());
  absl::StatusOr<RecoveryReport> second = cluster_->Recover();
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_EQ(second->resolved.size(), 1u);
  EXPECT_TRUE(second->resolved[0].committed);
  EXPECT_EQ(second->resolved[0].gid, decided);
  EXPECT_EQ(second->resolved[0].shard_name, "s2");
  EXPECT_EQ(Balance(150), "7");
  EXPECT_EQ(Prepared(), 0);
  // Prepared transactions of others are not shardkit's to resolve.
  ASSERT_TRUE(shards_->Query(2, "BEGIN; PREPARE TRANSACTION 'someone_else'").ok());
  absl::StatusOr<RecoveryReport> third = cluster_->Recover();
  ASSERT_TRUE(third.ok());
  EXPECT_TRUE(third->resolved.empty());
  ASSERT_TRUE(shards_->Query(2, "ROLLBACK PREPARED 'someone_else'").ok());

  // Finished decisions left by a process that died before deleting them:
  // a 'commit' recorded before the pass (less a minute) with nothing
  // prepared goes; a recent one, which a coordinator may still be
  // committing, and an 'abort' stay.
  ASSERT_TRUE(shards_->Query(0, "DELETE FROM shardkit.commit_decisions; "
                                "INSERT INTO shardkit.commit_decisions VALUES "
                                "('" + std::string(32, 'c') + "', 'commit', "
                                "now() - interval '2 minutes'), ('" +
                                std::string(32, 'd') + "', 'commit', now()), "
                                "('" + std::string(32, 'e') + "', 'abort', "
                                "now() - interval '2 minutes')")
                  .ok());
  ASSERT_TRUE(cluster_->Recover().ok());
  EXPECT_EQ(Scalar(0, "SELECT string_agg(substr(txid, 1, 1), ',' ORDER BY "
                      "txid) FROM shardkit.commit_decisions"),
            "d,e");
}

// Recovery and a coordinator at work on the same transaction at once.
//
// A prepared transaction that another session is committing at that moment
// ("is busy", SQLSTATE 55000, to any other COMMIT or ROLLBACK PREPARED of
// it) is neither done nor failed: the coordinator and recovery wait for it
// to be gone. Without that, the coordinator left its decision in the log
// (purged only a minute later) and a recovery pass reported the shard
// unreachable and purged nothing. And a pass must not take a transaction
// finished since its scan for one without a decision.

constexpr char kRacingMapBody[] = R"(
[distributions.accounts]
strategy = "range"
key_type = "int8"
slices = [ { to = 100, shard = "s1" }, { from = 100, shard = "s2" } ]
[tables.accounts]
distribution = "accounts"
key = "id"
[timeouts]
connect = "2s"
statement = "10s"
[transactions]
recovery_grace = "1ms"
)";

// Holds prepared transaction `gid` on shard `index` busy: a session of its
// own runs COMMIT PREPARED on it, which then waits for a synchronous
// standby that never comes (the servers name one; only this session sets
// synchronous_commit on). Release cancels the wait: the commit is then
// done, locally.
class BusyHolder {
 public:
  BusyHolder(testing::TestCluster& shards, int index, const std::string& gid)
      : shards_(shards), index_(index), session_(shards.dsn(index)) {
    pid_ = session_.Scalar("SELECT pg_backend_pid()");
    if (session_.Scalar("SET synchronous_commit = on; "
                        "SET client_min_messages = error") != "") {
      return;
    }
    thread_ = std::thread([this, gid] {
      result_ = session_.Scalar("COMMIT PREPARED '" + gid + "'");
    });
    holding_ = testing::Eventually(
        [&] {
          return Activity("count(*)", "pid = " + pid_ +
                                          " AND wait_event = 'SyncRep'") == "1";
        },
        absl::Seconds(10));
  }
  ~BusyHolder() { Release(); }

  bool holding() const { return holding_; }

  // Whether another session has run `sql` and now waits, idle, after it.
  bool Tried(const std::string& sql) {
    std::string quoted;
    for (char c : sql) {
      quoted += c;
      if (c == '\'') quoted += c;
    }
    return Activity("count(*)", "pid <> " + pid_ + " AND state = 'idle' AND "
                                "query = '" + quoted + "'") != "0";
  }

  // Ends the hold; returns the holder's COMMIT PREPARED outcome ("": done).
  std::string Release() {
    if (thread_.joinable()) {
      Activity("pg_cancel_backend(pid)", "pid = " + pid_);
      thread_.join();
    }
    return result_;
  }

 private:
  std::string Activity(const std::string& what, const std::string& where) {
    auto rows = shards_.Query(
        index_, "SELECT " + what + " FROM pg_stat_activity WHERE " + where);
    return rows.ok() && !rows->empty() ? (*rows)[0][0] : "?";
  }

  testing::TestCluster& shards_;
  const int index_;
  testing::Session session_;
  std::string pid_;
  std::thread thread_;
  std::string result_ = "not run";
  bool holding_ = false;
};

class RacingRecoveryTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto shards = testing::TestCluster::Start(
        2, {"synchronous_standby_names = 'nobody'"});
    ASSERT_TRUE(shards.ok()) << shards.status();
    shards_ = shards->release();
    absl::StatusOr<Config> config =
        LoadConfig(shards_->WriteConfig("racing.toml", kRacingMapBody));
    ASSERT_TRUE(config.ok()) << config.status();
    // Only the tests' own recovery passes.
    config->transactions.recover_in_background = false;
    auto cluster = Cluster::Open(*std::move(config));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    cluster_ = cluster->release();
    // Across both shards: two-phase commit, which creates the decision log.
    absl::StatusOr<Result> r =
        cluster_->Execute("CREATE TABLE accounts (id int8 PRIMARY KEY)");
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_TRUE(cluster_->Recover().ok());
  }

  static void TearDownTestSuite() {
    delete cluster_;
    delete shards_;
  }

  // Nothing prepared, an empty decision log and nothing queued for it.
  void SetUp() override {
    ASSERT_TRUE(cluster_->Recover().ok());
    ASSERT_EQ(Scalar(1, "SELECT count(*) FROM pg_prepared_xacts"), "0");
    ASSERT_TRUE(
        shards_->Query(0, "DELETE FROM shardkit.commit_decisions").ok());
  }

  static std::string Decisions() {
    return Scalar(0, "SELECT coalesce(string_agg(outcome, ','), '') FROM "
                     "shardkit.commit_decisions");
  }

  static std::string Scalar(int shard, const std::string& sql) {
    auto rows = shards_->Query(shard, sql);
    EXPECT_TRUE(rows.ok()) << rows.status();
    return rows.ok() && !rows->empty() ? (*rows)[0][0] : "";
  }

  static testing::TestCluster* shards_;
  static Cluster* cluster_;
};

testing::TestCluster* RacingRecoveryTest::shards_ = nullptr;
Cluster* RacingRecoveryTest::cluster_ = nullptr;

TEST_F(RacingRecoveryTest, CoordinatorWaitsWhileAnotherSessionCommitsItsPart) {
  absl::StatusOr<std::unique_ptr<Transaction>> txn = cluster_->Begin();
  ASSERT_TRUE(txn.ok());
  absl::StatusOr<Result> inserted =
      (*txn)->Execute("INSERT INTO accounts (id) VALUES (1), (101)");
  ASSERT_TRUE(inserted.ok()) << inserted.status();
  // The decision waits for this lock, with both writers prepared.
  testing::Session locker(shards_->dsn(0));
  ASSERT_EQ(locker.Scalar("BEGIN; LOCK shardkit.commit_decisions IN "
                          "EXCLUSIVE MODE"),
            "");
  absl::Status committed;
  std::thread commit([&] { committed = (*txn)->Commit(); });
  std::string gid;
  const bool prepared = testing::Eventually([&] {
    gid = Scalar(1, "SELECT coalesce(max(gid), '') FROM pg_prepared_xacts");
    return !gid.empty();
  });
  EXPECT_TRUE(prepared);
  {
    // s2's part is being committed by another session (as recovery would,
    // once the decision is in) when the coordinator commits it.
    BusyHolder holder(*shards_, 1, gid);
    EXPECT_TRUE(holder.holding());
    EXPECT_EQ(locker.Scalar("COMMIT"), "");
    EXPECT_TRUE(testing::Eventually(
        [&] { return holder.Tried("COMMIT PREPARED '" + gid + "'"); },
        absl::Seconds(10)));
    EXPECT_EQ(holder.Release(), "");
  }
  commit.join();
  ASSERT_TRUE(prepared);
  ASSERT_TRUE(committed.ok()) << committed;
  EXPECT_EQ(Scalar(0, "SELECT count(*) FROM accounts WHERE id = 1"), "1");
  EXPECT_EQ(Scalar(1, "SELECT count(*) FROM accounts WHERE id = 101"), "1");
  EXPECT_EQ(Scalar(1, "SELECT count(*) FROM pg_prepared_xacts"), "0");
  // Every part committed, so the coordinator queued its decision for
  // deletion, which the next pass does.
  ASSERT_TRUE(cluster_->Recover().ok());
  EXPECT_EQ(Decisions(), "");
}

TEST_F(RacingRecoveryTest, RecoveryWaitsWhileAnotherSessionCommitsAPart) {
  const std::string txid(32, 'f');
  const std::string gid = "shardkit_" + txid + "_1";
  ASSERT_TRUE(shards_->Query(1, "BEGIN; INSERT INTO accounts (id) VALUES "
                                "(102); PREPARE TRANSACTION '" + gid + "'")
                  .ok());
  // Decided two minutes ago: the pass purges it once nothing of it is left
  // prepared anywhere.
  ASSERT_TRUE(shards_->Query(0, "INSERT INTO shardkit.commit_decisions VALUES "
                                "('" + txid + "', 'commit', now() - interval "
                                "'2 minutes')")
                  .ok());
  // A recovery pass connects for each statement: a failed one counts as a
  // rollback in the database's statistics as its connection closes.
  const std::string rollbacks =
      "SELECT xact_rollback FROM pg_stat_database WHERE datname = "
      "current_database()";
  absl::StatusOr<RecoveryReport> report;
  {
    BusyHolder holder(*shards_, 1, gid);
    ASSERT_TRUE(holder.holding());
    const std::string before = Scalar(1, rollbacks);
    std::thread recover([&] { report = cluster_->Recover(); });
    EXPECT_TRUE(testing::Eventually(
        [&] { return Scalar(1, rollbacks) != before; }, absl::Seconds(10)));
    EXPECT_EQ(holder.Release(), "");
    recover.join();
  }
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(report->unreachable, IsEmpty());
  EXPECT_THAT(report->resolved, IsEmpty());  // the other session did it
  EXPECT_EQ(Scalar(1, "SELECT count(*) FROM accounts WHERE id = 102"), "1");
  EXPECT_EQ(Decisions(), "");
}

// A pass's scan comes before its look at the decisions. A transaction it
// found prepared, and whose decision its coordinator recorded, committed
// everywhere and deleted in between, is no transaction without a decision:
// the pass must not record 'abort' for it (which would stand a week).
TEST_F(RacingRecoveryTest, RecoveryLeavesATransactionCommittedSinceItsScan) {
  const std::string txid(32, 'c');
  const std::string gid = "shardkit_" + txid + "_1";
  ASSERT_TRUE(shards_->Query(1, "BEGIN; INSERT INTO accounts (id) VALUES "
                                "(103); PREPARE TRANSACTION '" + gid + "'")
                  .ok());
  ASSERT_TRUE(shards_->Query(0, "INSERT INTO shardkit.commit_decisions (txid, "
                                "outcome) VALUES ('" + txid + "', 'commit')")
                  .ok());
  // The pass's look at the decisions waits for this lock, after its scan.
  testing::Session locker(shards_->dsn(0));
  ASSERT_EQ(locker.Scalar("BEGIN; LOCK shardkit.commit_decisions IN ACCESS "
                          "EXCLUSIVE MODE"),
            "");
  absl::StatusOr<RecoveryReport> report;
  std::thread recover([&] { report = cluster_->Recover(); });
  EXPECT_TRUE(testing::Eventually(
      [&] {
        return Scalar(0, "SELECT count(*) FROM pg_stat_activity WHERE "
                         "wait_event_type = 'Lock' AND query LIKE 'SELECT "
                         "txid, outcome FROM shardkit.commit_decisions%'") ==
               "1";
      },
      absl::Seconds(10)));
  // Meanwhile its coordinator commits it and forgets the decision.
  EXPECT_TRUE(shards_->Query(1, "COMMIT PREPARED '" + gid + "'").ok());
  EXPECT_EQ(locker.Scalar("DELETE FROM shardkit.commit_decisions; COMMIT"), "");
  recover.join();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_THAT(report->resolved, IsEmpty());
  EXPECT_THAT(report->unreachable, IsEmpty());
  EXPECT_EQ(Decisions(), "");
  EXPECT_EQ(Scalar(1, "SELECT count(*) FROM accounts WHERE id = 103"), "1");
}

TEST(TransactionSetupTest, ShardsWithoutPreparedTransactionsSaySo) {
  auto shards = testing::TestCluster::Start(2, {"max_prepared_transactions = 0"});
  ASSERT_TRUE(shards.ok()) << shards.status();
  auto cluster = Cluster::OpenFile((*shards)->WriteConfig("no2pc.toml", R"(
[distributions.accounts]
strategy = "range"
key_type = "int8"
slices = [ { to = 100, shard = "s1" }, { from = 100, shard = "s2" } ]
[tables.accounts]
distribution = "accounts"
key = "id"
)"));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  for (int s = 0; s < 2; ++s) {
    ASSERT_TRUE((*shards)->Query(s, "CREATE TABLE accounts (id int8 PRIMARY KEY)").ok());
  }
  absl::StatusOr<Result> r =
      (*cluster)->Execute("INSERT INTO accounts (id) VALUES (1), (101)");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.status().message()),
              HasSubstr("set max_prepared_transactions"));
  EXPECT_EQ(SqlStateOf(r.status()), "55000");
  EXPECT_EQ((*shards)->Query(0, "SELECT count(*) FROM accounts")->at(0)[0], "0");
  // One shard needs no two-phase commit.
  r = (*cluster)->Execute("INSERT INTO accounts (id) VALUES (1), (2)");
  ASSERT_TRUE(r.ok()) << r.status();
}

}  // namespace
}  // namespace shardkit
