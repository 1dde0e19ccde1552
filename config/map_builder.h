// Internal: builds a ShardMap from a specification, validating it.
//
// The TOML reader (config.cc) checks syntax, types and unknown settings and
// fills a ShardMapSpec whose every element remembers where it came from;
// ShardMapBuilder checks what a map must satisfy (names resolve, slices
// cover the keyspace exactly once, key types suit strategies) and reports
// each violation at its element's position (among them: two backends,
// primaries or replicas, that are one database; two replicas of a shard
// with one name). The catalog will build maps
// through the same builder.

#ifndef SHARDKIT_CONFIG_MAP_BUILDER_H_
#define SHARDKIT_CONFIG_MAP_BUILDER_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "shardkit/key.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

struct SourcePos {
  int line = 0;  // 1-based; 0: no position
  int column = 0;
};

// Receives one problem: where, and a message that starts with the setting's
// dotted path (e.g. "distributions.users.slices[2]: ...").
using ProblemReporter = std::function<void(SourcePos, std::string)>;

struct BackendSpec {
  std::string name;  // "r<i>" when the configuration names none
  SourcePos name_pos;
  std::string dsn;  // ${ENV} already substituted; "" if it was invalid
  SourcePos pos;    // of the dsn value
  int weight = 1;
};

struct ShardSpec {
  std::string name;
  std::string dsn;  // ${ENV} already substituted
  SourcePos pos;    // of the dsn value
  std::vector<BackendSpec> replicas;
  ReplicaSettings replica_settings;  // overrides already applied
};

// A reference to a shard by name, as written.
struct ShardRef {
  std::string name;
  SourcePos pos;
};

struct HashSliceSpec {
  uint64_t lo = 0;
  std::optional<uint64_t> hi;
  ShardRef shard;
  SourcePos pos;
};

struct RangeSliceSpec {
  std::optional<Key> from;
  std::optional<Key> to;
  ShardRef shard;
  SourcePos pos;
};

struct RegionSpec {
  std::string name;
  std::vector<ShardRef> shards;
  SourcePos pos;
};

struct DistributionSpec {
  std::string name;
  SourcePos pos;
  Strategy strategy = Strategy::kHash;
  KeyType key_type = KeyType::kInt8;
  SourcePos key_type_pos;
  std::optional<KeyType> hash_key_type;
  SourcePos hash_key_type_pos;
  // hash: `shards = [...]` shorthand (even slices), else `hash_slices`.
  std::optional<std::vector<ShardRef>> even_shards;
  SourcePos even_shards_pos;
  std::vector<HashSliceSpec> hash_slices;
  std::vector<RangeSliceSpec> range_slices;
  std::vector<RegionSpec> regions;
  std::optional<ShardRef> default_shard;
};

struct TableSpec {
  std::string name;
  SourcePos pos;
  bool reference = false;
  std::optional<ShardRef> distribution;  // a distribution name, not a shard
  std::string key;
  std::string hash_key;
  SourcePos hash_key_pos;
};

// A slice under move (catalog only: a configuration file has none).
struct MoveSpec {
  uint64_t id = 0;
  std::string distribution;
  uint64_t hash_lo = 0;
  std::optional<uint64_t> hash_hi;
  std::optional<Key> from;
  std::optional<Key> to;
  std::string region;
  ShardRef source;
  ShardRef destination;
  MovePhase phase = MovePhase::kDualWrite;
  bool server_hash = false;  // see MovingSlice::server_hash
};

struct ShardMapSpec {
  uint64_t epoch = 1;
  std::vector<ShardSpec> shards;
  // Where tables not in the map live, if anywhere ([router] default_shard).
  std::optional<ShardRef> default_shard;
  std::vector<DistributionSpec> distributions;
  std::vector<TableSpec> tables;
  std::vector<MoveSpec> moves;
};

class ShardMapBuilder {
 public:
  // Validates `spec`, reporting every problem through `report`. Returns the
  // map when there was none, nullopt otherwise.
  static std::optional<ShardMap> Build(const ShardMapSpec& spec,
                                       const ProblemReporter& report);

  // The specification `map` was built from, less source positions, with
  // hash distributions' even slices spelled out as slices: Build(SpecOf(m))
  // rebuilds m. The live map of a catalog is the configuration's map with
  // the catalog's changes applied to this.
  static ShardMapSpec SpecOf(const ShardMap& map);

  // The lower bound of even slice i of n over [0, 2^64).
  static uint64_t EvenSliceLo(uint64_t i, uint64_t n);

  // The even slice of n that holds `hash`: i with
  // EvenSliceLo(i, n) <= hash < EvenSliceLo(i + 1, n). REQUIRES: n >= 1.
  static size_t EvenSliceOf(uint64_t hash, uint64_t n);

 private:
  class Impl;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_CONFIG_MAP_BUILDER_H_
