// Internal: planning moves that even out the data across shards.
//
//   ASSIGN_OR_RETURN(DistributionLoad load,
//                    MeasureDistribution(map, "users", shards, options));
//   ASSIGN_OR_RETURN(RebalancePlan plan,
//                    PlanRebalance(map, load, {}, finder));
//   for (const RebalanceStep& step : plan.steps) mover.Start(step.request);
//
// The load of a shard is the rows (or bytes) of the distribution's tables
// it owns. The planner repeatedly takes the most loaded shard and the
// least loaded one (a shard that owns nothing, newly added, counts with
// zero) and moves from the first to the second as much as brings either
// to the mean: a whole slice when one fits, else a part carved off the
// top of the donor's largest slice. It stops when every shard is within
// `tolerance` of the mean, or after `max_moves`.
//
// Where to carve: a hash slice's rows are spread evenly over its hash
// range (XXH3), so its part is proportional to its width (rounded to a
// multiple of 2^48 where that stays inside the slice). A range slice's
// rows are not: a CutFinder asks the owner for the key with the given
// number of rows of the slice below it.
//
// Region distributions are not planned: a region's place is a policy
// (data residency), not a matter of balance.

#ifndef SHARDKIT_REBALANCER_REBALANCE_H_
#define SHARDKIT_REBALANCER_REBALANCE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "config/live_state.h"
#include "rebalancer/move_session.h"
#include "rebalancer/plan.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// One slice of a distribution (bounds as the live state writes them) and
// what it holds.
struct SliceLoad {
  LiveState::Slice slice;
  int64_t rows = 0;
  int64_t bytes = 0;
};

// A distribution's slices in map order, with their loads.
struct DistributionLoad {
  std::string distribution;
  std::vector<SliceLoad> slices;
};

enum class BalanceBy { kRows, kBytes };

struct RebalanceOptions {
  BalanceBy by = BalanceBy::kRows;
  // A shard within this fraction of the mean load is balanced.
  double tolerance = 0.1;
  int max_moves = 16;
};

struct RebalanceStep {
  MoveRequest request;
  std::string source;
  // What the step moves (estimated for a hash part).
  int64_t rows = 0;
  int64_t bytes = 0;
};

struct RebalancePlan {
  std::string distribution;
  std::vector<RebalanceStep> steps;
  // Load (rows or bytes, as planned by) per shard before and after.
  std::map<std::string, int64_t> before;
  std::map<std::string, int64_t> after;
};

// The key (text as in the configuration) below which about
// `fraction_below` of the rows of range slice `slice` lie, strictly above
// its lower bound; nullopt when there is none (the slice holds one key
// only, say).
using CutFinder = std::function<absl::StatusOr<std::optional<std::string>>(
    const SliceLoad& slice, double fraction_below)>;

// Each shard of `map`, by shard id, as the rebalance connects to it: its
// primary's connection string and `connect_timeout` (the configuration's
// [timeouts] connect, as the mover's own sessions use: MoverOptions).
std::vector<ShardEndpoint> ShardEndpoints(const ShardMap& map,
                                          absl::Duration connect_timeout);

// Plans the moves that even out `load` over every shard of `map` (see
// above). Fails with kInvalidArgument for a region distribution or an
// unknown one. `finder` is used for range distributions only.
[[nodiscard]] absl::StatusOr<RebalancePlan> PlanRebalance(
    const ShardMap& map, const DistributionLoad& load,
    const RebalanceOptions& options, const CutFinder& finder);

// Measures each slice of `distribution` in `map` on its owner: rows
// counted (count(*), for range slices by their bounds) and the tables'
// bytes (pg_total_relation_size) shared out by rows. A hash slice gets
// its owner's rows in proportion to its width. `shards`: each shard's
// endpoint, by shard id.
[[nodiscard]] absl::StatusOr<DistributionLoad> MeasureDistribution(
    const ShardMap& map, std::string_view distribution,
    const std::vector<ShardEndpoint>& shards,
    absl::Duration statement_timeout);

// A CutFinder that asks the owner of a range slice of `distribution` (in
// `map`), by the distribution's table with the most rows there.
CutFinder RangeCutFinder(const ShardMap& map, std::string_view distribution,
                         const std::vector<ShardEndpoint>& shards,
                         absl::Duration statement_timeout);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_REBALANCE_H_
