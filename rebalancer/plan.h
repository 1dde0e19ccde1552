// Internal: planning a move or a split against the live map (pure logic).
//
// A move names a slice of a distribution and a destination shard:
//   - hash distributions: FROM:TO are hex hash bounds ("0x4000000000000000");
//   - range distributions: FROM:TO are key values as in the configuration;
//   - an empty side is open: ":0x4000000000000000", "1000:";
//   - region distributions: a region name instead of a slice.
// The slice must lie inside one slice of the map (one owner, the source);
// a slice inside a larger one is split off: the owner keeps the rest. A
// split without a destination only cuts a slice in two in the map (no rows
// move: both halves stay with the owner).

#ifndef SHARDKIT_REBALANCER_PLAN_H_
#define SHARDKIT_REBALANCER_PLAN_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "config/live_state.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

struct MoveRequest {
  std::string distribution;
  // "FROM:TO" (hash or range distributions), or empty with `region`.
  std::string slice;
  std::string region;
  std::string destination;
};

struct PlannedMove {
  std::string distribution;
  // Normalized bounds ("" = open): hex for hash, key text for range.
  std::string from;
  std::string to;
  std::string region;
  std::string source;
  std::string destination;
  // The distribution's ownership once the destination owns the slice.
  LiveState::Ownership after;
  // The slice as a MovingSlice of `map` (for membership tests of rows).
  MovingSlice slice;
};

// Validates `request` against `map`; fails with kInvalidArgument or
// kFailedPrecondition saying what to change (unknown distribution or
// shard, a slice that spans several owners, a destination that already
// owns it, a slice overlapping a move under way, ...).
[[nodiscard]] absl::StatusOr<PlannedMove> PlanMove(const ShardMap& map,
                                                   const MoveRequest& request);

// Splits the slice of `distribution` that holds `at` (text as in the
// configuration: a hex hash for hash distributions, a key for range ones)
// at `at`, in the map only: the distribution's ownership afterwards.
// Fails if `at` is already a slice boundary.
[[nodiscard]] absl::StatusOr<LiveState::Ownership> PlanSplit(
    const ShardMap& map, std::string_view distribution, std::string_view at);

// Whether two moves' slices of one distribution overlap.
bool SlicesOverlap(const Distribution& d, const MovingSlice& a,
                   const MovingSlice& b);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_PLAN_H_
