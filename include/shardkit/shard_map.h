// The shard map: which shard owns which keys of which table.
//
// A `ShardMap` holds
//   * shards: PostgreSQL databases, each reached by a libpq connection string
//     (its primary), with optional streaming replicas (`Backend`s);
//   * distributions: a strategy (hash, range or region), a key type, and the
//     slices of the keyspace, each owned by one shard (Citus calls a
//     distribution a colocation group, Vitess a keyspace);
//   * tables: sharded ones name a distribution and their shard-key column
//     (tables of one distribution are colocated: equal keys live on the same
//     shard); reference tables are copied to every shard;
//   * an epoch, the version of the map, bumped on every change of ownership.
//
// A map is built from a configuration (see config.h) and is immutable:
// a change of ownership produces a new map with a higher epoch.
//
// Example:
//
//   absl::StatusOr<shardkit::Config> config =
//       shardkit::LoadConfig("shards.toml");
//   if (!config.ok()) return config.status();
//   const shardkit::ShardMap& map = config->map;
//   absl::StatusOr<shardkit::Key> key =
//       shardkit::Key::Parse(shardkit::KeyType::kInt8, "42");
//   absl::StatusOr<shardkit::Placement> where = map.Place("users", *key);
//   if (where.ok()) std::cout << map.shard(where->shard).name;
//
// ## Strategies
//
//   hash    The keyspace is the unsigned 64-bit value HashKey(key) (key.h).
//           Slices are half-open ranges [lo, hi) of it that together cover
//           [0, 2^64) exactly once. "N even slices" means slice i of N is
//           [floor(i * 2^64 / N), floor((i + 1) * 2^64 / N)).
//   range   Slices are half-open ranges [from, to) of the key itself, open at
//           either end where `from` / `to` is absent, together covering the
//           whole key domain exactly once.
//   region  The key is a region name (text). Each region is owned by one
//           shard, or spread over several shards by the hash of a second
//           column (the table's hash key) in even slices; regions not listed
//           go to the default shard if there is one.
//
// Thread-safety: a ShardMap is immutable after construction; any number of
// threads may read it concurrently.

#ifndef SHARDKIT_SHARD_MAP_H_
#define SHARDKIT_SHARD_MAP_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "shardkit/key.h"

namespace shardkit {

namespace internal {
class ShardMapBuilder;
}  // namespace internal

// Index of a shard in ShardMap::shards().
using ShardId = uint32_t;

// One streaming replica of a shard: a read-only PostgreSQL server that
// replays the primary's WAL (see Shard::replicas).
struct Backend {
  // Unique within its shard: the replica's `name` in the configuration, or
  // "r<i>" for the i-th replica listed (1-based). Never "primary".
  std::string name;
  // The libpq connection string, with ${ENV} references substituted. It may
  // hold a password: print MaskedDsn(), never this.
  std::string dsn;
  // Its share of the reads sent to the shard's replicas, relative to the
  // other replicas' weights; >= 1.
  int weight = 1;

  // `dsn` with any password replaced by "********".
  std::string MaskedDsn() const;
};

// How a shard's backends are watched and when a replica is too stale to
// read from: the [replicas] section of the configuration, which a shard may
// override for itself. Kept per shard because one shard's replicas may sit
// farther away than another's.
struct ReplicaSettings {
  // A replica whose replay lag exceeds this takes no reads until it catches
  // up. Positive.
  absl::Duration max_lag = absl::Seconds(1);
  // How often the health monitor checks each backend. Positive.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // Consecutive failed heartbeats after which a backend counts as down
  // (for a primary: after which failover may begin). >= 1.
  int failure_threshold = 3;
};

struct Shard {
  std::string name;
  // The primary's libpq connection string, with ${ENV} references
  // substituted: every write, and every read inside a transaction, goes
  // here. It may hold a password: print MaskedDsn(), never this.
  std::string dsn;
  // The primary's streaming replicas, in configuration order; empty when
  // the shard is its primary alone. No two backends of a map (primaries and
  // replicas) are the same database.
  std::vector<Backend> replicas;
  // This shard's settings for watching its backends ([replicas], with the
  // shard's own overrides applied).
  ReplicaSettings replica_settings;

  // `dsn` with any password replaced by "********".
  std::string MaskedDsn() const;
};

enum class Strategy { kHash, kRange, kRegion };

// "hash", "range", "region".
std::string_view StrategyName(Strategy strategy);

// [lo, hi) of the 64-bit hash space; hi == nullopt means up to 2^64.
struct HashSlice {
  uint64_t lo = 0;
  std::optional<uint64_t> hi;
  ShardId shard = 0;

  bool Contains(uint64_t hash) const { return hash >= lo && (!hi || hash < *hi); }
};

// [from, to) of the key domain; nullopt means unbounded on that side.
struct RangeSlice {
  std::optional<Key> from;
  std::optional<Key> to;
  ShardId shard = 0;
};

// One region and the shards that hold it. With more than one shard the
// region is spread by HashKey(hash key) in even slices over `shards`, in
// this order.
struct Region {
  std::string name;
  std::vector<ShardId> shards;
};

// One end of a key range for ShardsForRange.
struct KeyBound {
  Key key;
  bool inclusive = true;
};

// A range of keys; an absent bound is unbounded.
struct KeyRange {
  std::optional<KeyBound> lower;
  std::optional<KeyBound> upper;
};

// Where one key lives.
struct Placement {
  ShardId shard = 0;
  // Index of the owning slice in hash_slices() / range_slices(), or of the
  // region in regions(); nullopt when a region key fell to the default shard.
  std::optional<size_t> slice;
  // The 64-bit hash that placed the key: the key's for hash distributions,
  // the hash key's for a spread region; nullopt otherwise.
  std::optional<uint64_t> hash;
};

class Distribution {
 public:
  const std::string& name() const { return name_; }
  Strategy strategy() const { return strategy_; }
  KeyType key_type() const { return key_type_; }
  // For region distributions with a spread region: the type of the tables'
  // hash-key column. nullopt otherwise.
  std::optional<KeyType> hash_key_type() const { return hash_key_type_; }

  // Sorted by lo; non-empty only for hash distributions.
  const std::vector<HashSlice>& hash_slices() const { return hash_slices_; }
  // Sorted by from; non-empty only for range distributions.
  const std::vector<RangeSlice>& range_slices() const { return range_slices_; }
  // In config order; non-empty only for region distributions.
  const std::vector<Region>& regions() const { return regions_; }
  // Region distributions: owner of regions not listed, if any.
  std::optional<ShardId> default_shard() const { return default_shard_; }

  // Every shard that owns part of this distribution, ascending, no repeats.
  const std::vector<ShardId>& shards() const { return owners_; }

  // Places `key`. For a region that is spread over several shards,
  // `hash_key` (the row's hash-key value) is required.
  // Fails with kInvalidArgument when the key does not fit key_type(), when a
  // spread region gets no hash key, or with kNotFound for a region that is
  // not listed when there is no default shard.
  [[nodiscard]] absl::StatusOr<Placement> Place(
      const Key& key, const Key* hash_key = nullptr) const;

  // The slice that owns 64-bit hash value `hash`.
  // REQUIRES: strategy() == Strategy::kHash (DCHECKed; otherwise the result
  // names shard 0 and no slice).
  Placement PlaceHash(uint64_t hash) const;

  // The shards whose slices intersect `range`, ascending, no repeats.
  // REQUIRES: strategy() == Strategy::kRange; otherwise fails with
  // kFailedPrecondition (a hash or region keyspace has no key order).
  // An integer bound beyond a narrower key type's domain is clamped (for
  // int2, `< 40000` bounds nothing and `> 40000` selects nothing). Fails
  // with kInvalidArgument for a bound of another kind (text for int8, ...).
  [[nodiscard]] absl::StatusOr<std::vector<ShardId>> ShardsForRange(
      const KeyRange& range) const;

 private:
  friend class internal::ShardMapBuilder;

  Distribution() = default;  // built by internal::ShardMapBuilder only

  absl::StatusOr<Placement> PlaceRegion(const Key& key,
                                        const Key* hash_key) const;
  // Range distributions: the slice that holds `key`, and the last slice
  // that holds a key below `key`.
  size_t RangeSliceOf(const Key& key) const;
  size_t RangeSliceBelow(const Key& key) const;
  absl::Status CheckKey(const Key& key, KeyType type) const;

  std::string name_;
  Strategy strategy_ = Strategy::kHash;
  KeyType key_type_ = KeyType::kInt8;
  std::optional<KeyType> hash_key_type_;
  std::vector<HashSlice> hash_slices_;
  std::vector<RangeSlice> range_slices_;
  std::vector<Region> regions_;
  std::optional<ShardId> default_shard_;
  std::vector<ShardId> owners_;

  // Search structures derived from the slices.
  std::vector<uint64_t> hash_lo_;             // hash_slices_[i].lo
  // hash_radix_[b]: the slice holding the first hash whose top bits are b
  // (b < 2^bits), plus a last entry n - 1; narrows the search to a few
  // slices whatever their number.
  std::vector<uint32_t> hash_radix_;
  int hash_radix_shift_ = 63;                 // 64 - bits
  std::vector<int64_t> range_int_from_;       // integer range: from of slice i>0
  std::vector<std::string> range_bytes_from_; // text/uuid range: likewise
  absl::flat_hash_map<std::string, size_t> region_index_;
};

// Where a slice on its way between shards stands (see rebalancer/README.md).
enum class MovePhase {
  // The source still owns the slice; every write to it is applied on the
  // destination too, and the destination's copies are hidden from reads.
  kDualWrite,
  // The destination owns the slice; the source's leftover copies are hidden
  // from reads until the move's cleanup has deleted them.
  kCutOver,
};

// "dual-write", "cut-over".
std::string_view MovePhaseName(MovePhase phase);

// A slice of a distribution being moved by the online rebalancer.
struct MovingSlice {
  uint64_t move_id = 0;
  // Index into ShardMap::distributions().
  size_t distribution = 0;
  // The keys moving: for a hash distribution [hash_lo, hash_hi) of the
  // hash space (hash_hi nullopt: up to 2^64); for a range distribution
  // [from, to) of the key (nullopt: open); for a region distribution the
  // region `region`.
  uint64_t hash_lo = 0;
  std::optional<uint64_t> hash_hi;
  std::optional<Key> from;
  std::optional<Key> to;
  std::string region;
  ShardId source = 0;
  ShardId destination = 0;
  MovePhase phase = MovePhase::kDualWrite;
  // A hash slice whose shards compute the key hash themselves (shardkit's
  // SQL functions, checked by the mover): the slice is told apart by a SQL
  // condition on them, not by lists of its keys.
  bool server_hash = false;

  // Whether `placement` of a key of this slice's distribution (as
  // Distribution::Place returned it, with `key` the key placed) is in the
  // slice.
  bool Contains(const Distribution& distribution, const Key& key,
                const Placement& placement) const;
};

struct Table {
  std::string name;
  // True for a reference table: a full copy on every shard.
  bool reference = false;
  // Sharded tables: index into ShardMap::distributions() and the shard-key
  // column. Unset for reference tables.
  size_t distribution = 0;
  std::string key_column;
  // Region distributions with spread regions: the column hashed to pick a
  // shard within a region. Empty otherwise.
  std::string hash_key_column;
};

class ShardMap {
 public:
  ShardMap() = default;

  // The version of this map; 1 for a map read from a TOML file alone.
  uint64_t epoch() const { return epoch_; }

  const std::vector<Shard>& shards() const { return shards_; }
  // REQUIRES: id < shards().size().
  const Shard& shard(ShardId id) const { return shards_[id]; }
  std::optional<ShardId> FindShard(std::string_view name) const;

  const std::vector<Distribution>& distributions() const {
    return distributions_;
  }
  // nullptr if there is no distribution of that name.
  const Distribution* FindDistribution(std::string_view name) const;

  const std::vector<Table>& tables() const { return tables_; }
  // nullptr if the table is not in the map.
  const Table* FindTable(std::string_view name) const;

  // The shard that holds tables not in the map ([router] default_shard):
  // statements that name only such tables (and reference tables) run there.
  // nullopt: such statements are refused.
  std::optional<ShardId> default_shard() const { return default_shard_; }

  // Slices being moved between shards, by move id. Ownership in
  // distributions() is as the phase says: the source's until the cutover,
  // the destination's after it.
  const std::vector<MovingSlice>& moves() const { return moves_; }

  // REQUIRES: !table.reference.
  const Distribution& DistributionOf(const Table& table) const {
    return distributions_[table.distribution];
  }

  // Places `key` of sharded table `table` (see Distribution::Place).
  // Fails with kNotFound for a table not in the map and kInvalidArgument for
  // a reference table (it lives on every shard) or a key that does not fit.
  [[nodiscard]] absl::StatusOr<Placement> Place(
      std::string_view table, const Key& key,
      const Key* hash_key = nullptr) const;

 private:
  friend class internal::ShardMapBuilder;

  uint64_t epoch_ = 1;
  std::optional<ShardId> default_shard_;
  std::vector<Shard> shards_;
  std::vector<Distribution> distributions_;
  std::vector<Table> tables_;
  std::vector<MovingSlice> moves_;
  absl::flat_hash_map<std::string, ShardId> shard_index_;
  absl::flat_hash_map<std::string, size_t> distribution_index_;
  absl::flat_hash_map<std::string, size_t> table_index_;
};

// Returns `dsn` (keyword=value or URI form) with the password, if any,
// replaced by "********". A string libpq cannot parse is returned with
// everything after the first "password" masked.
std::string MaskDsnPassword(std::string_view dsn);

}  // namespace shardkit

#endif  // SHARDKIT_SHARD_MAP_H_
