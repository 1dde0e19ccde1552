// Configuration: a TOML file that describes the shards, the shard map and
// the client's settings, read and validated into a `Config`.
//
// Example:
//
//   std::vector<shardkit::ConfigProblem> problems;
//   absl::StatusOr<shardkit::Config> config =
//       shardkit::LoadConfig("shards.toml", &problems);
//   if (!config.ok()) {
//     for (const auto& p : problems) std::cerr << p.ToString() << "\n";
//     return 1;
//   }
//
// The file's shape (every setting, its type and default) is documented in
// docs/configuration.md; examples/shards.toml is a commented example.
//
// Validation collects every problem it finds, not only the first: TOML
// syntax, unknown settings (typos), wrong value types, malformed bounds,
// unknown shards or distributions, duplicate names, key types a strategy
// cannot use, slices that overlap or leave a gap, and two backends
// (primaries or replicas) that are the same database. Each problem carries
// the file, line and column of the value it is about.
//
// A shard may list streaming replicas; the [replicas] section sets how
// stale a replica may be (max_lag) and how backends are watched
// (heartbeat_interval, failure_threshold), and a shard may override each:
//
//   [replicas]
//   max_lag = "500ms"
//   [shards.s1]
//   dsn = "host=10.0.0.1 dbname=app"                      # the primary
//   replicas = [ { dsn = "host=10.0.0.2 dbname=app", weight = 2 },
//                { dsn = "host=10.0.0.3 dbname=app", name = "east" } ]
//   max_lag = "2s"                                        # s1 only
//
// `${NAME}` in a connection string is replaced by the environment variable
// NAME (an unset variable is a problem); `$$` stands for a literal `$`.
//
// Thread-safety: these functions are thread-safe (the environment is read
// with getenv; do not modify it concurrently). A Config is a value.

#ifndef SHARDKIT_CONFIG_H_
#define SHARDKIT_CONFIG_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "shardkit/shard_map.h"

namespace shardkit {

// Where the live shard map and the move journal are kept ([catalog]).
struct CatalogSettings {
  std::string dsn;  // may hold a password: see MaskDsnPassword
};

// Per-process connection pools ([pool]).
struct PoolSettings {
  // Most connections this process opens to one shard.
  int max_connections_per_shard = 8;
  // An idle pooled connection older than this is closed.
  absl::Duration idle_timeout = absl::Seconds(60);
};

// Timeouts ([timeouts]).
struct TimeoutSettings {
  // Establishing a connection to a shard.
  absl::Duration connect = absl::Seconds(5);
  // One statement on one shard, after which it is cancelled.
  absl::Duration statement = absl::Seconds(30);
};

// Transactions across shards ([transactions]).
struct TransactionSettings {
  // A prepared transaction of two-phase commit with no recorded decision
  // is rolled back by recovery only once it is this old: younger ones may
  // belong to a commit still in progress in some process.
  absl::Duration recovery_grace = absl::Seconds(30);
  // How often an open Cluster looks for prepared transactions left in
  // doubt (by a process that died mid-commit) and resolves them.
  absl::Duration recovery_interval = absl::Seconds(60);
  // Whether an open Cluster runs recovery on its own (a pass when it opens,
  // then every recovery_interval). Not read from the file: a program that
  // runs Cluster::Recover itself and must see everything it resolved in
  // its report (shardctl recover) turns it off.
  bool recover_in_background = true;
};

struct Config {
  // The path or name the configuration was read from.
  std::string source;
  // The shards (each with its primary, replicas and ReplicaSettings),
  // distributions and tables.
  ShardMap map;
  // The [replicas] section as written, defaults filled in: what a shard
  // that overrides nothing gets. Each shard's effective settings are
  // map.shard(id).replica_settings.
  ReplicaSettings replicas;
  std::optional<CatalogSettings> catalog;
  PoolSettings pool;
  TimeoutSettings timeouts;
  TransactionSettings transactions;
};

// One thing wrong with a configuration, at a position in its source.
struct ConfigProblem {
  std::string file;
  int line = 0;    // 1-based; 0 when the problem has no single place
  int column = 0;  // 1-based
  std::string message;

  // "file:line:col: message" (or "file: message" without a position).
  std::string ToString() const;
};

// Looks an environment variable up; nullopt if it is not set.
using EnvLookup = std::function<std::optional<std::string>(std::string_view)>;

// The process environment (getenv).
EnvLookup ProcessEnvironment();

// Reads and validates the TOML file at `path`.
//
// On success returns the Config. On failure returns kInvalidArgument whose
// message lists every problem, one `file:line:col: message` per line, and,
// if `problems` is not null, stores them there too, ordered by position.
// A file that cannot be read fails with kNotFound / kPermissionDenied and
// one problem without a position.
[[nodiscard]] absl::StatusOr<Config> LoadConfig(
    const std::string& path, std::vector<ConfigProblem>* problems = nullptr,
    const EnvLookup& env = ProcessEnvironment());

// As LoadConfig, for TOML text already in memory; `source_name` is used in
// problems and Config::source.
[[nodiscard]] absl::StatusOr<Config> ParseConfig(
    std::string_view toml, std::string_view source_name,
    std::vector<ConfigProblem>* problems = nullptr,
    const EnvLookup& env = ProcessEnvironment());

}  // namespace shardkit

#endif  // SHARDKIT_CONFIG_H_
