// Internal: hiding a moving slice's second copy from a statement.
//
// While a slice moves (shardkit.h MovingSlice), its rows exist on both its
// source and its destination (rebalancer/shard_objects.h, "Keys of a
// moving slice"). One side hides them: the destination during dual-write,
// the source once cut over. In the statement sent to that shard, each
// FROM-clause reference to a table T of the moving distribution
//
//   ... FROM users u JOIN orders o ON ...
//
// becomes a subquery with the same name, without the slice's rows: for a
// range or region slice those in its SQL condition (SliceConditionSql),
//
//   ... FROM (SELECT * FROM users WHERE NOT COALESCE(users.id >=
//       '100'::int8 AND users.id < '200'::int8, false)) AS u JOIN ...
//
// for a hash slice whose shards hash keys themselves (server_hash) those
// in its hash condition (HashSliceConditionSql),
//
//   ... WHERE NOT COALESCE(shardkit.hash_key_v1(users.id) >=
//       '0'::int8, false) ...
//
// and for any other hash slice those whose key is listed in
// shardkit.move_<id>_keys,
//
//   ... FROM (SELECT * FROM users WHERE NOT EXISTS (SELECT 1 FROM
//       shardkit.move_4_keys h WHERE h.key = users.id)) AS u JOIN ...
//
// in joins, subqueries and CTEs alike; and an UPDATE or DELETE of T gets
// the same condition ANDed to its WHERE. So a row is seen once, whichever
// shards a statement reaches. The rewrite depends only on the map's moves,
// so it is made once per plan (a plan belongs to one map).
//
// Thread-safety: functions run on the parser thread (parser_thread.h).

#ifndef SHARDKIT_ROUTER_HIDING_H_
#define SHARDKIT_ROUTER_HIDING_H_

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "router/sql_parser.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// The shard that hides `move`'s keys: its destination during dual-write,
// its source after the cutover.
ShardId HidingShard(const MovingSlice& move);

// The shards that hide keys of distribution `distribution` (an index into
// map.distributions()), ascending, no repeats; empty when none of its
// slices moves.
std::vector<ShardId> HidingShards(const ShardMap& map, size_t distribution);

// Edits statement 0 of `tree` so that it hides, for `shard`, the rows of
// every move of `distribution` that `shard` hides (see the file comment),
// calls `while_hidden` (which deparses what it needs), and puts the tree
// back as it was, whatever `while_hidden` returns. Returns its status, or
// kInternal when a rewrite template cannot be parsed.
// REQUIRES: on the parser thread; nothing else reads `tree` meanwhile.
absl::Status WithSliceHidden(ParsedSql& tree, const ShardMap& map,
                             size_t distribution, ShardId shard,
                             const std::function<absl::Status()>& while_hidden);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_HIDING_H_
