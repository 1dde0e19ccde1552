// Internal: refusing writes that an online move would not see.
//
// While a slice of a distribution moves (ShardMap::moves()), the router
// applies a plain INSERT, UPDATE or DELETE of the distribution's tables on
// the move's destination too (dual-write) and hides the slice's second copy
// (router/hiding.h). These paths write without that:
//   - a data-modifying WITH (WITH d AS (DELETE ...) ...): only the top
//     statement's row images are mirrored;
//   - Cluster::ExecuteOnShardOf and Cluster::ExecuteOnAllShards: their SQL
//     runs unanalysed;
//   - DDL and TRUNCATE (Cluster::Execute runs them on every shard): the
//     move copies the table as it was when it started.
// A write of a table of a moving distribution on the move's source or
// destination through one of them could be lost on the destination,
// resurrect a deleted row or change a hidden copy; so, while the move is
// in the map, it is refused (kFailedPrecondition, SQLSTATE 55000) with a
// message naming the move and what to do instead. Reads pass, and so do
// writes of other tables, and writes on shards the move does not involve.
//
// Thread-safety: thread-safe (the parsing runs on the parser thread).

#ifndef SHARDKIT_ROUTER_MOVE_GUARD_H_
#define SHARDKIT_ROUTER_MOVE_GUARD_H_

#include <optional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "router/sql_parser.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// The SQLSTATE of the refusals: object_not_in_prerequisite_state.
inline constexpr std::string_view kMoveUnderWaySqlState = "55000";

// Whether statement `statement` holds a WITH whose query is an INSERT,
// UPDATE or DELETE, at any depth. REQUIRES: on the parser thread.
bool HasWritingWith(const PgQuery__Node& statement);

// For a statement with a data-modifying WITH, routed to `shards` by `map`,
// naming the map tables `tables`: the refusal when one of those tables
// belongs to a distribution with a move in `map` whose source or
// destination is among `shards`; OK otherwise.
absl::Status RefuseWritingWithDuringMove(
    const ShardMap& map, const std::vector<const Table*>& tables,
    const std::vector<ShardId>& shards);

// For DDL or TRUNCATE naming the map tables `tables`, routed to `shards`
// by `map`: the refusal when one of those tables belongs to a distribution
// with a move in `map` whose source or destination is among `shards` (the
// move copies the table as it was when it started); OK otherwise.
absl::Status RefuseDdlDuringMove(const ShardMap& map,
                                 const std::vector<const Table*>& tables,
                                 const std::vector<ShardId>& shards);

// For `sql` about to run unanalysed on `shards` (`path` names the API in
// the message, e.g. "ExecuteOnShardOf"): the refusal when a statement of
// it is not read-only and names a table of a distribution with a move in
// `map` whose source or destination is among `shards`, or is one whose
// writes cannot be seen (DO, CALL) while such a move is under way. SQL
// that does not parse is refused in that case too (what it writes cannot
// be known). OK at once when `map` has no move.
absl::Status RefuseUnroutedWriteDuringMove(const ShardMap& map,
                                           std::string_view sql,
                                           std::string_view path,
                                           const std::vector<ShardId>& shards);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_MOVE_GUARD_H_
