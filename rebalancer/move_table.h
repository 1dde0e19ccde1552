// Internal: one table under move: which of its rows move (MoveSlice), its
// shape on the shards (TableShape), and the SQL the backfill and verify
// share to walk it in primary-key order.
//
//   MoveSlice slice = MoveSlice::FromMovingSlice(distribution, moving);
//   ASSIGN_OR_RETURN(TableShape shape,
//                    DescribeTableForMove(*source, *destination, "users",
//                                         "id"));
//
// Thread-safety: value types; DescribeTableForMove uses the sessions given.

#ifndef SHARDKIT_REBALANCER_MOVE_TABLE_H_
#define SHARDKIT_REBALANCER_MOVE_TABLE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "rebalancer/move_session.h"
#include "shardkit/key.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// The keys of a distribution that move, and the move they belong to.
struct MoveSlice {
  // Names shardkit.move_<id>_keys (shard_objects.h).
  uint64_t move_id = 0;
  Strategy strategy = Strategy::kHash;
  // The distribution's key type (for regions: kText).
  KeyType key_type = KeyType::kInt8;
  // kHash: [hash_lo, hash_hi) of HashKey(key); hash_hi nullopt: to 2^64.
  uint64_t hash_lo = 0;
  std::optional<uint64_t> hash_hi;
  // kRange: [from, to) of the key; nullopt: open on that side.
  std::optional<Key> from;
  std::optional<Key> to;
  // kRegion: the region whose rows move.
  std::string region;
  // kHash: the shards compute the key hash themselves (MovingSlice::
  // server_hash): the slice is filtered by SQL, and keeps no key lists.
  bool server_hash = false;

  // The slice of `moving`, a move of `distribution`.
  static MoveSlice FromMovingSlice(const Distribution& distribution,
                                   const MovingSlice& moving);

  // Whether the slice is the whole hash space (nothing to filter).
  bool IsWholeHashSpace() const {
    return strategy == Strategy::kHash && hash_lo == 0 && !hash_hi;
  }

  // "hash [0x..., 0x...)", "range [10, 20)", "region eu".
  std::string ToString() const;
};

// A table's columns as the mover copies them.
struct TableShape {
  struct Column {
    std::string name;
    std::string quoted;
    // format_type(): "bigint", "character varying(20)", ...
    std::string type;
    bool identity = false;
  };

  // The table's name as given, and quoted ("public"."users" style).
  std::string name;
  std::string quoted;
  // The columns that are copied, in the table's order: every column but
  // dropped and generated ones (the destination computes those itself).
  std::vector<Column> columns;
  // The primary key's columns, in index order, as indexes into `columns`.
  std::vector<size_t> primary_key;
  // The shard-key column, as an index into `columns`; one of primary_key.
  size_t key_column = 0;
  // Some column is an identity column: inserts need OVERRIDING SYSTEM
  // VALUE to keep the source's values.
  bool has_identity = false;

  // "c1, c2, ..." of `columns`, quoted.
  std::string ColumnList() const;
  // "pk1, pk2", quoted: the ORDER BY of a walk in key order.
  std::string PrimaryKeyList() const;
  // "(pk1, pk2) > ('v1'::t1, 'v2'::t2)": the rows after `bound` (the text
  // values of the primary key, in order). REQUIRES: bound.size() ==
  // primary_key.size().
  std::string After(const MoveSession& session,
                    const std::vector<std::string>& bound) const;
  // Likewise "(pk1, pk2) <= (...)".
  std::string AtOrBefore(const MoveSession& session,
                         const std::vector<std::string>& bound) const;
  // Likewise "(pk1, pk2) = (...)": the row of that primary key.
  std::string At(const MoveSession& session,
                 const std::vector<std::string>& key) const;
};

// Reads `table`'s shape on `source` and checks that the table can move:
// it has a primary key that includes `key_column`, and `destination` has
// the same table with the same columns (names, types, generated or not)
// and the same primary key. Fails with kNotFound when the table is
// missing on either shard, and kFailedPrecondition, saying what to fix,
// when it has no suitable primary key or the two shards' tables differ.
[[nodiscard]] absl::StatusOr<TableShape> DescribeTableForMove(
    MoveSession& source, MoveSession& destination, std::string_view table,
    std::string_view key_column);

// The SQL condition that keeps the slice's rows, for range and region
// slices and hash slices with server_hash (SliceConditionSql and
// HashSliceConditionSql in shard_objects.h: the routers hide the slice by
// the same condition); empty for other hash slices, which are filtered
// client-side (see RowInSlice).
std::string SliceCondition(const TableShape& shape, const MoveSlice& slice);

// Whether a row of `shape` whose raw COPY fields are `fields` belongs to
// `slice`. Range and region slices, and hash slices with server_hash, are
// filtered in SQL, so only the other hash slices test anything here. Fails with kInvalidArgument when the key
// cannot be read as a key of the slice's type.
[[nodiscard]] absl::StatusOr<bool> RowInSlice(
    const TableShape& shape, const MoveSlice& slice,
    const std::vector<std::string_view>& fields);

// The primary-key values (unescaped text) of a row's raw COPY fields.
std::vector<std::string> PrimaryKeyOf(
    const TableShape& shape, const std::vector<std::string_view>& fields);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_MOVE_TABLE_H_
