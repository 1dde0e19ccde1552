// The fixture of the integration tests: real, throwaway PostgreSQL shards.
//
//   absl::StatusOr<std::unique_ptr<TestCluster>> started =
//       TestCluster::Start(3);
//   ASSERT_TRUE(started.ok()) << started.status();
//   TestCluster& cluster = **started;
//   std::string config = cluster.WriteConfig("users.toml", R"(
//     [distributions.users]
//     strategy = "hash"
//     key_type = "int8"
//     shards = ["s1", "s2", "s3"]
//   )");
//   auto rows = cluster.Query(0, "SELECT count(*) FROM users");
//
// Each TestCluster runs dev::Up (cli/dev_cluster.h) in a fresh directory
// under /tmp on free loopback ports, so test binaries may run concurrently.
// The destructor stops the servers and removes the directory; with the
// environment variable SHARDKIT_KEEP_TEST_CLUSTER set, the directory (data
// and server logs) is kept for a post-mortem and its path printed.
//
// Thread-safety: const methods are thread-safe; StopShard / StartShard must
// not run concurrently with anything else on the same TestCluster.

#ifndef SHARDKIT_TESTS_INTEGRATION_TEST_CLUSTER_H_
#define SHARDKIT_TESTS_INTEGRATION_TEST_CLUSTER_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cli/dev_cluster.h"

struct pg_conn;  // libpq's PGconn

namespace shardkit::testing {

class TestCluster {
 public:
  // Starts `shards` PostgreSQL servers (database "app") in a fresh temporary
  // directory on consecutive free loopback ports; `extra_settings` are
  // additional postgresql.conf lines. Retries on other ports if another
  // process takes the chosen ones meanwhile. Fails with dev::Up's message.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<TestCluster>> Start(
      int shards, std::vector<std::string> extra_settings = {});

  // As Start, and each shard's primary gets `replicas` streaming replicas
  // (dev::Up with DevClusterOptions::replicas; config_path() and
  // WriteConfig list them), and a catalog instance that config_path()
  // names in [catalog] (WriteConfig does not); with `synchronous`,
  // synchronous replication
  // (DevClusterOptions::synchronous).
  // REQUIRES: 1 <= replicas <= dev::kMaxReplicas.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<TestCluster>>
  StartWithReplicas(int shards, int replicas,
                    std::vector<std::string> extra_settings = {},
                    bool synchronous = false);

  TestCluster(const TestCluster&) = delete;
  TestCluster& operator=(const TestCluster&) = delete;
  ~TestCluster();

  const dev::DevCluster& cluster() const { return cluster_; }
  int size() const { return static_cast<int>(cluster_.instances.size()); }

  // The shards.toml dev::Up wrote: one hash distribution "users" over all
  // shards, tables users (id), orders (user_id), reference table countries.
  const std::string& config_path() const { return cluster_.config_path; }

  // The libpq connection string of shard `index` (0-based: index 0 is s1).
  // REQUIRES: 0 <= index < size().
  std::string dsn(int index) const;

  // Writes DIR/<name>: the [shards.*] sections of this cluster
  // (dev::ShardsTomlSection) followed by `body` (distributions, tables, ...).
  // Returns its path. A file that cannot be written is reported on stderr; the
  // test then fails on reading it.
  std::string WriteConfig(std::string_view name, std::string_view body) const;

  // For online moves: creates the catalog database "movecat" on shard 0's
  // server, writes DIR/<name> (WriteConfig) with a [catalog] naming it
  // before `body`, and runs `schema` (if not empty) on every shard.
  // Returns the configuration's path.
  [[nodiscard]] absl::StatusOr<std::string> WriteMoveConfig(
      std::string_view name, std::string_view body,
      const std::string& schema) const;

  // Runs `sql` (one or more statements, simple query protocol) on shard
  // `index` with plain libpq, independently of shardkit: for test setup and
  // as the oracle. Returns the last statement's rows as text, SQL NULL as
  // "NULL". Fails with kUnavailable if the shard cannot be reached, and with
  // kUnknown "shard sN: ERROR <SQLSTATE>: message" if the server refuses it.
  // REQUIRES: 0 <= index < size().
  [[nodiscard]] absl::StatusOr<std::vector<std::vector<std::string>>> Query(
      int index, const std::string& sql) const;

  // Creates shardkit's hash functions (rebalancer/server_hash.h) on shard
  // `index` from the module this build made (extension/shardkit_pg.c,
  // copied into the cluster's directory for the servers to read), so
  // that a move of a hash slice there keeps no key lists.
  // REQUIRES: 0 <= index < size().
  [[nodiscard]] absl::Status InstallServerHash(int index) const;
  // The path of that copy (made if missing), for `shardctl hash install
  // --module`.
  [[nodiscard]] absl::StatusOr<std::string> ServerHashModule() const;

  // Stops (fast shutdown) / starts one server, to test a shard that is
  // down. Both are fine if it already is in that state.
  // REQUIRES: 0 <= index < size().
  [[nodiscard]] absl::Status StopShard(int index);
  [[nodiscard]] absl::Status StartShard(int index);

  // Kills shard `index`'s server and every process it started with
  // SIGKILL, as a machine that died would leave it: no shutdown, no
  // checkpoint, connections cut. Returns once none of them runs any more,
  // with the data directory's postmaster.pid removed (as after a reboot:
  // the dead postmaster may linger as a zombie that `pg_ctl status` takes
  // for a running server). StartShard starts it again (crash recovery).
  // REQUIRES: 0 <= index < size() and the server runs.
  [[nodiscard]] absl::Status KillShard(int index);

  // Replica `replica` (0-based: 0 is r1) of shard `index`: as dsn, Query,
  // StopShard and StartShard for the shard's primary.
  // REQUIRES: 0 <= index < size(), 0 <= replica < replicas_per_shard().
  int replicas_per_shard() const {
    return static_cast<int>(cluster_.instances.front().replicas.size());
  }
  std::string replica_dsn(int index, int replica) const;
  [[nodiscard]] absl::StatusOr<std::vector<std::vector<std::string>>>
  QueryReplica(int index, int replica, const std::string& sql) const;
  [[nodiscard]] absl::Status StopReplica(int index, int replica);
  [[nodiscard]] absl::Status StartReplica(int index, int replica);

 private:
  explicit TestCluster(dev::DevCluster cluster)
      : cluster_(std::move(cluster)) {}

  static absl::StatusOr<std::unique_ptr<TestCluster>> StartCluster(
      int shards, int replicas, std::vector<std::string> extra_settings,
      bool synchronous);
  static absl::StatusOr<std::vector<std::vector<std::string>>> QueryInstance(
      const dev::DevInstance& instance, const std::string& sql);

  dev::DevCluster cluster_;
};

// Calls `condition` every 20 ms until it returns true (then returns true)
// or `limit` has passed (then returns false). It bounds a wait for something
// that must eventually happen; it asserts no duration.
bool Eventually(absl::FunctionRef<bool()> condition,
                absl::Duration limit = absl::Seconds(30));

// A plain libpq session that a test holds open, independently of shardkit:
// e.g. to hold an advisory lock that the code under test then waits for.
// Destroying it closes the connection, which releases the lock.
// Thread-safety: not thread-safe; use one Session from one thread at a time.
class Session {
 public:
  // Connects to `dsn`; ok() tells whether that succeeded.
  explicit Session(const std::string& dsn);

  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  bool ok() const;
  // libpq's message for the last failure.
  std::string error() const;

  // Runs `sql` (simple query protocol). Returns the first value of its first
  // row; "" if it returns no row (or a void value, as pg_advisory_lock
  // does); "error: " and the server's message if it fails.
  std::string Scalar(const std::string& sql);

 private:
  struct Closer {
    void operator()(pg_conn* conn) const;
  };
  std::unique_ptr<pg_conn, Closer> conn_;
};

// What a child process did.
struct CommandOutput {
  int exit_code = -1;  // 128 + signal if killed; -1 if it could not start
  std::string out;
  std::string err;  // if it could not start: why
};

// Runs `argv` (argv[0] a path, e.g. SHARDCTL_PATH) without a shell, feeding
// it `stdin_text`, and returns its exit status and output.
CommandOutput RunCommand(const std::vector<std::string>& argv,
                         const std::string& stdin_text = "");

// Creates a fresh directory /tmp/shardkit-test-XXXXXX that the postgres user
// can enter (mode 0755). The caller removes it (RemoveDirForTest).
[[nodiscard]] absl::StatusOr<std::string> MakeTempDirForTest();

// Removes `dir` and everything below it; errors are ignored.
void RemoveDirForTest(const std::string& dir);

// The first of `count` consecutive TCP ports that are free on 127.0.0.1 at
// the time of the call, starting the search at a random port in
// 20000..60000. REQUIRES: 1 <= count <= 64.
[[nodiscard]] absl::StatusOr<int> FindFreePortsForTest(int count);

}  // namespace shardkit::testing

#endif  // SHARDKIT_TESTS_INTEGRATION_TEST_CLUSTER_H_
