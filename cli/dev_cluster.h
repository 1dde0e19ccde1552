// Local development clusters: N throwaway PostgreSQL instances on loopback.
//
// `Up` initdb's and starts one PostgreSQL server per shard under `dir`, each
// on its own loopback port, creates the database the shards use, and writes
// `dir/shards.toml` describing them with one hash distribution. It is
// idempotent: instances that exist are reused, ones that run are left
// running. As root, the servers run as the `postgres` user (PostgreSQL
// refuses root). `Down` stops every instance under `dir`.
//
// This is the embedded default for the demo and the integration tests; it is
// not a production deployment tool (trust authentication on loopback).
//
// Thread-safety: functions are thread-safe for distinct directories.

#ifndef SHARDKIT_CLI_DEV_CLUSTER_H_
#define SHARDKIT_CLI_DEV_CLUSTER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace shardkit::dev {

struct DevClusterOptions {
  std::string dir;       // created if missing
  int shards = 2;        // 1..64
  int base_port = 6001;  // shard i (1-based) listens on base_port + i - 1
  // Database created on every instance and named in the connection strings.
  std::string database = "app";
  // Extra postgresql.conf lines for every instance.
  std::vector<std::string> extra_settings;
};

struct DevInstance {
  std::string name;      // "s1", "s2", ...
  std::string data_dir;  // absolute
  int port = 0;
  std::string dsn;       // libpq connection string
  bool created = false;  // initdb ran in this call
  bool started = false;  // the server was started by this call
};

struct DevCluster {
  std::string dir;          // absolute
  std::string config_path;  // dir/shards.toml
  std::vector<DevInstance> instances;
};

// See the file comment. Fails with a message saying what to do (e.g. a port
// in use by something else, PostgreSQL 15 not installed, a directory the
// postgres user cannot reach).
[[nodiscard]] absl::StatusOr<DevCluster> Up(const DevClusterOptions& options);

// Stops every instance under `dir` (fast shutdown). Instances already
// stopped are fine. Returns the names of instances it stopped.
[[nodiscard]] absl::StatusOr<std::vector<std::string>> Down(
    const std::string& dir);

}  // namespace shardkit::dev

#endif  // SHARDKIT_CLI_DEV_CLUSTER_H_
