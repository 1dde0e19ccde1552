// Internal: merging the sorted rows of several shards into the rows one
// PostgreSQL would have returned.
//
// Values arrive in PostgreSQL's text form; ValueOrder compares two of them
// as the server orders their type: integers and floats by value (NaN above
// everything, as PostgreSQL sorts it), numeric exactly by its decimal
// digits, text by the database's collation ("C" byte order, or the libc
// locale it names, through strcoll_l as PostgreSQL's libc provider does),
// booleans false < true, uuids by their bytes, dates and timestamps in ISO
// form. Other types are refused rather than guessed.
//
// Thread-safety: a ValueOrder is immutable; MergeRows is thread-safe.

#ifndef SHARDKIT_ROUTER_MERGE_H_
#define SHARDKIT_ROUTER_MERGE_H_

#include <locale.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "router/analyzer.h"
#include "shardkit/result.h"

namespace shardkit::internal {

class ValueOrder {
 public:
  // The order of values of type `type_oid`; `collation` is the collation
  // that orders text ("C", "POSIX", or a libc locale such as
  // "en_US.UTF-8"). Fails with kInvalidArgument (SQLSTATE 0A000) for a
  // type it cannot order exactly, or a locale this machine lacks.
  [[nodiscard]] static absl::StatusOr<std::shared_ptr<const ValueOrder>> For(
      uint32_t type_oid, const std::string& collation);

  ~ValueOrder();

  // <0, 0, >0. Values must be of the type given to For.
  int Compare(std::string_view a, std::string_view b) const;

 private:
  enum class Kind { kInteger, kFloat, kNumeric, kBytes, kCollated, kBool };
  ValueOrder(Kind kind, locale_t locale) : kind_(kind), locale_(locale) {}

  const Kind kind_;
  const locale_t locale_;  // kCollated only; owned
};

// One resolved ORDER BY key: a column of the result and how it orders.
struct MergeKey {
  size_t column = 0;
  bool descending = false;
  bool nulls_first = false;
  std::shared_ptr<const ValueOrder> order;
};

// The column each SortSpec names in `columns`. Fails with kInvalidArgument
// (0A000) for a name that is not a result column, or names two of them, or
// a position out of range.
[[nodiscard]] absl::StatusOr<std::vector<size_t>> ResolveSortColumns(
    const std::vector<SortSpec>& specs, const std::vector<Column>& columns);

// <0, 0, >0: how rows `a` and `b` order by `keys` (NULLs placed as each
// key says). REQUIRES: both have every column the keys name.
int CompareRows(const Row& a, const Row& b, const std::vector<MergeKey>& keys);

// Merges `parts` (each sorted by `keys`, as its shard sorted it) into one
// sorted sequence, skips `offset` rows and keeps at most `limit`. With no
// keys the parts are concatenated, then cut the same way.
std::vector<Row> MergeRows(std::vector<std::vector<Row>> parts,
                           const std::vector<MergeKey>& keys, int64_t offset,
                           std::optional<int64_t> limit);

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_MERGE_H_
