// Internal: the live state a catalog keeps on top of the configuration.
//
// The configuration file describes the cluster as it was set up. What
// changes while it runs (a replica promoted to primary by a failover, a
// slice that moved to another shard, a move under way) is recorded in the
// [catalog] database as a LiveState, versioned by the map's epoch, so that
// every process of the application agrees on one map. The live map is
//
//   ApplyLiveState(config.map, state)
//
// The state names shards, backends and distributions by their names in the
// configuration and never holds a connection string: shards and backends
// can only be added through the configuration file (every process's), and
// no password is ever written to the catalog.
//
// Its text form is TOML:
//
//   epoch = 7
//   [shards.s1]                  # after a failover of s1
//   primary = "r1"               # the backend now its primary
//   retired = ["primary"]        # backends shardkit never uses again
//   [distributions.users]        # ownership, when it changed
//   slices = [ { to = "0x8000000000000000", shard = "s1" },
//              { from = "0x8000000000000000", shard = "s3" } ]
//   [[moves]]                    # slices being moved
//   id = 4
//   distribution = "users"
//   from = "0x8000000000000000"
//   source = "s2"
//   destination = "s3"
//   phase = "cut-over"
//   server_hash = true           # the shards hash keys themselves
//
// Slice bounds are written as in the configuration: hash bounds as hex
// strings, range bounds as the key's text; an absent bound is open. A region
// distribution lists `regions = [ { region = "eu", shards = ["s1"] } ]` and
// optionally `default = "s2"`; a region move names `region` instead of
// bounds.

#ifndef SHARDKIT_CONFIG_LIVE_STATE_H_
#define SHARDKIT_CONFIG_LIVE_STATE_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

struct LiveState {
  struct ShardChange {
    // The backend that is now the shard's primary: "primary" (the
    // configured one) or a replica's name.
    std::string primary = "primary";
    // Backends never to be used again (old primaries after a failover).
    std::vector<std::string> retired;
  };
  // One slice's bounds as text ("" for an open side) and owner.
  struct Slice {
    std::string from;
    std::string to;
    std::string shard;
  };
  struct RegionOwners {
    std::string region;
    std::vector<std::string> shards;
  };
  // A distribution's ownership, replacing the configuration's whole.
  struct Ownership {
    std::vector<Slice> slices;          // hash and range distributions
    std::vector<RegionOwners> regions;  // region distributions
    std::optional<std::string> default_shard;
  };
  struct Move {
    uint64_t id = 0;
    std::string distribution;
    std::string from;    // "" open; hash and range distributions
    std::string to;
    std::string region;  // region distributions
    std::string source;
    std::string destination;
    MovePhase phase = MovePhase::kDualWrite;
    // MovingSlice::server_hash; "server_hash = true" in the text form,
    // absent when false.
    bool server_hash = false;
  };

  uint64_t epoch = 1;
  std::map<std::string, ShardChange> shards;
  std::map<std::string, Ownership> distributions;
  std::vector<Move> moves;
};

// The state that describes `map` with nothing changed: its epoch, and its
// distributions' ownership spelled out (so that a change can edit it).
LiveState LiveStateOf(const ShardMap& map);

// TOML text form (see above). Parse fails with kInvalidArgument naming what
// is wrong.
std::string SerializeLiveState(const LiveState& state);
[[nodiscard]] absl::StatusOr<LiveState> ParseLiveState(std::string_view text);

// `configured` with `state` applied: epoch, primaries, ownership, moves.
// Fails with kFailedPrecondition when the state does not fit the
// configuration (a shard or backend it names is not configured, slices do
// not cover the keyspace, ...), saying what to change.
[[nodiscard]] absl::StatusOr<ShardMap> ApplyLiveState(
    const ShardMap& configured, const LiveState& state);

// Text forms of slice bounds as the state writes them ("" for an open
// side), and back: hash bounds as hex, range bounds as the key's text. A
// hash slice's lower bound 0 is written open.
std::string HashBoundText(const std::optional<uint64_t>& hash);
std::string HashLowerText(uint64_t lo);
std::string KeyBoundText(const std::optional<Key>& key);
[[nodiscard]] absl::StatusOr<std::optional<uint64_t>> ParseHashBound(
    const std::string& text);
[[nodiscard]] absl::StatusOr<std::optional<Key>> ParseKeyBound(
    KeyType type, const std::string& text);

}  // namespace shardkit::internal

#endif  // SHARDKIT_CONFIG_LIVE_STATE_H_
