// Local development clusters: N throwaway PostgreSQL instances on loopback.
//
// `Up` initdb's and starts one PostgreSQL server per shard under `dir`, each
// on its own loopback port, creates the database the shards use, and writes
// `dir/shards.toml` describing them with one hash distribution. It is
// idempotent: instances that exist are reused, ones that run are left
// running. As root, the servers run as the `postgres` user (PostgreSQL
// refuses root). `Down` stops every instance under `dir`.
//
// With `replicas` = R > 0, each shard's primary also gets R streaming
// replicas on loopback, made with pg_basebackup -R from the primary once it
// runs (and reused, like the primaries, when they exist), and shards.toml
// lists them under each shard's `replicas`. Ports: the primaries take
// base_port .. base_port + shards - 1 as without replicas, the replicas the
// ports after them, the shards' first replicas first: replica j (1-based)
// of shard i listens on base_port + j * shards + (i - 1), so a replica
// keeps its port when R grows.
//
// With replicas (or `catalog`), Up also starts a small "catalog" instance
// on base_port - 1 (CatalogPort) and shards.toml names it in [catalog]: the
// live shard map, the move journal, the failover leases and the two-phase
// commit log live there, on no
// shard's primary, so a failover of any shard keeps them (with a catalog,
// Clusters fail a dead primary over to a replica automatically: see
// router/failover.h). With `synchronous`, the shards' servers also run
// synchronous_commit = on and synchronous_standby_names = 'ANY 1 (*)': a
// commit on a primary returns once one of its replicas has flushed it, so a
// failover loses no acknowledged write. A shard with a single replica then
// stops taking writes after a failover (its new primary has no standby):
// give it two.
//
//   shardkit::dev::DevClusterOptions options;
//   options.dir = "/tmp/shardkit-dev";
//   options.shards = 3;
//   absl::StatusOr<shardkit::dev::DevCluster> cluster =
//       shardkit::dev::Up(options);
//   // ... use cluster->config_path ...
//   absl::StatusOr<shardkit::dev::DownResult> stopped =
//       shardkit::dev::Down(options.dir);
//
// Layout of `dir`:
//   s<i>/         the data directory of shard i (initdb), owned by the
//                 server's user;
//   s<i>/shardkit.conf
//                 the settings Up writes on every call, included from
//                 postgresql.conf: listen_addresses='127.0.0.1', the port, no
//                 Unix socket (TCP only, so long paths do not matter),
//                 max_prepared_transactions=64, max_connections=100, with
//                 replicas also wal_level=replica, max_wal_senders=10,
//                 wal_keep_size=512MB and hot_standby=on, then the extra
//                 settings (applied to replicas too: a standby needs
//                 max_connections and max_prepared_transactions at least
//                 the primary's). pg_hba.conf allows replication
//                 connections from 127.0.0.1 (trust), as initdb --auth=trust
//                 writes it; Up adds the line if it is missing. For speed
//                 it also turns off fsync, synchronous_commit and
//                 full_page_writes: a crash of the machine can corrupt these
//                 instances, which is fine for throwaway dev data and never
//                 for anything else;
//   s<i>.log      the server's log;
//   s<i>-r<j>/, s<i>-r<j>.log
//                 replica j of shard i: data directory (pg_basebackup, with
//                 standby.signal and primary_conninfo in
//                 postgresql.auto.conf) and log. Its shardkit.conf is the
//                 primary's but for the port.
//   catalog/, catalog.log
//                 the catalog instance (with replicas), and its log;
//   shards.toml   the shard map (rewritten atomically by every Up).
// A running instance keeps the settings it started with until it is
// restarted (Down, then Up), except that Up refuses to report a running
// instance on another port than the one asked for.
//
// This is the embedded default for the demo and the integration tests; it is
// not a production deployment tool (trust authentication on loopback).
//
// Thread-safety: functions are thread-safe for distinct directories.

#ifndef SHARDKIT_CLI_DEV_CLUSTER_H_
#define SHARDKIT_CLI_DEV_CLUSTER_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cli/process.h"

namespace shardkit::dev {

// The most shards a dev cluster has.
inline constexpr int kMaxShards = 64;
// The most streaming replicas per shard.
inline constexpr int kMaxReplicas = 8;
// The ports a dev cluster's instances may listen on, inclusive.
inline constexpr int kMinPort = 1024;
inline constexpr int kMaxPort = 65535;

struct DevClusterOptions {
  std::string dir;  // created if missing
  int shards = 2;   // 1..kMaxShards
  // Streaming replicas per shard, 0..kMaxReplicas (see the file comment
  // for their ports). 0 leaves existing replicas alone and unlisted.
  int replicas = 0;
  // Shard i (1-based) listens on base_port + i - 1, replicas after them;
  // every port within kMinPort..kMaxPort.
  int base_port = 6001;
  // Database created on every instance and named in the connection strings.
  std::string database = "app";
  // Extra postgresql.conf lines for every instance.
  std::vector<std::string> extra_settings;
  // Synchronous replication on the shards (see the file comment).
  // REQUIRES: replicas >= 1.
  bool synchronous = false;
  // Start the catalog instance even without replicas (online moves need
  // it: shardctl move, rebalance). With replicas it always runs.
  bool catalog = false;

  bool WithCatalog() const { return replicas > 0 || catalog; }
};

// The name (and directory under `dir`) of the catalog instance.
inline constexpr char kCatalogName[] = "catalog";

// The port of the catalog instance of a cluster whose first shard listens
// on `base_port`.
int CatalogPort(int base_port);

struct DevInstance {
  std::string name;      // "s1", "s2", ...; a replica: "s1-r1", ...
  std::string data_dir;  // absolute
  int port = 0;
  std::string dsn;       // libpq connection string
  std::string log_file;  // absolute: dir/s<i>.log
  bool created = false;  // initdb ran in this call
  bool started = false;  // the server was started by this call
  // A replica: the name of the shard whose primary it streams from; empty
  // for a primary.
  std::string replica_of;
  // A primary: its streaming replicas, r1 first.
  std::vector<DevInstance> replicas;
};

struct DevCluster {
  std::string dir;          // absolute
  std::string config_path;  // dir/shards.toml
  // The shards' primaries, s1 first; each lists its replicas.
  std::vector<DevInstance> instances;
  // The catalog instance; only with replicas.
  std::optional<DevInstance> catalog;
};

struct DownResult {
  std::string dir;                   // absolute
  // Names of the instances Down stopped, in shard order, each shard's
  // replicas after its primary, the catalog last ("s1", "s1-r1", "s2",
  // ..., "catalog").
  std::vector<std::string> stopped;
};

// The libpq connection string of the dev instance on `port` for
// `database`, as Up writes it into DevInstance::dsn and shards.toml:
// "host=127.0.0.1 port=6001 dbname=app user=postgres".
// REQUIRES: `database` is a plain identifier (Up refuses any other).
std::string InstanceDsn(int port, const std::string& database);

// The [shards.*] sections of a shardkit configuration describing
// `instances`, in their order, each followed by a blank line:
//
//   [shards.s1]
//   dsn = "host=127.0.0.1 port=6001 dbname=app user=postgres"
//
// and for an instance with replicas, after its dsn:
//
//   replicas = [ { dsn = "host=127.0.0.1 port=6003 dbname=app ..." },
//                { dsn = "host=127.0.0.1 port=6005 dbname=app ..." } ]
//
// (one entry per replica: named r1, r2, ... by position). Each dsn is a TOML
// basic string, escaped as needed. Up's shards.toml opens
// with these sections, and so do the tests' configurations.
std::string ShardsTomlSection(const std::vector<DevInstance>& instances);

// See the file comment. Fails with a message saying what to do (e.g. a port
// in use by something else, PostgreSQL 15 not installed, a directory the
// postgres user cannot reach).
[[nodiscard]] absl::StatusOr<DevCluster> Up(const DevClusterOptions& options);

// Stops every instance under `dir` (fast shutdown), replicas before
// primaries and the catalog. Instances already stopped are fine. Returns `dir` made absolute
// and the names of the instances it stopped, in shard order.
//
// Fails with kNotFound if `dir` does not exist.
[[nodiscard]] absl::StatusOr<DownResult> Down(const std::string& dir);

// Stops one instance (a primary or a replica) of a cluster Up made (fast
// shutdown), so that tests can see a backend that is down. An instance
// already stopped is fine.
[[nodiscard]] absl::Status StopInstance(const DevInstance& instance);

// Starts one instance of a cluster Up made, with the settings Up last wrote.
// An instance already running is fine.
[[nodiscard]] absl::Status StartInstance(const DevInstance& instance);

// Whether the instance's server is running (pg_ctl status).
[[nodiscard]] absl::StatusOr<bool> IsRunning(const DevInstance& instance);

}  // namespace shardkit::dev

#endif  // SHARDKIT_CLI_DEV_CLUSTER_H_
