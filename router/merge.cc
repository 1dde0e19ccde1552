#include "router/merge.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <queue>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "router/shard_connection.h"

namespace shardkit::internal {
namespace {

absl::Status Unsupported(std::string message) {
  absl::Status status = absl::InvalidArgumentError(std::move(message));
  status.SetPayload(ToAbsl(kSqlStatePayloadUrl), absl::Cord("0A000"));
  return status;
}

// PostgreSQL type OIDs.
constexpr uint32_t kBoolOid = 16, kCharOid = 18, kNameOid = 19, kInt8Oid = 20,
                   kInt2Oid = 21, kInt4Oid = 23, kTextOid = 25, kOidOid = 26,
                   kFloat4Oid = 700, kFloat8Oid = 701, kBpcharOid = 1042,
                   kVarcharOid = 1043, kDateOid = 1082, kTimeOid = 1083,
                   kTimestampOid = 1114, kNumericOid = 1700, kUuidOid = 2950;

int Sign(int v) { return v < 0 ? -1 : v > 0; }

int CompareBytes(std::string_view a, std::string_view b) {
  return Sign(a.compare(b));
}

int CompareIntegers(std::string_view a, std::string_view b) {
  int64_t x = 0, y = 0;
  (void)absl::SimpleAtoi(ToAbsl(a), &x);
  (void)absl::SimpleAtoi(ToAbsl(b), &y);
  return x < y ? -1 : x > y;
}

// float4/float8 text: NaN sorts above every other value, as in PostgreSQL.
int CompareFloats(std::string_view a, std::string_view b) {
  const double x = std::strtod(std::string(a).c_str(), nullptr);
  const double y = std::strtod(std::string(b).c_str(), nullptr);
  if (std::isnan(x) || std::isnan(y)) return std::isnan(x) - std::isnan(y);
  return x < y ? -1 : x > y;
}

// The magnitude of an unsigned decimal "123.4500": compares integer digits
// (without leading zeros) by length then value, then the fraction digits.
int CompareMagnitudes(std::string_view a, std::string_view b) {
  auto split = [](std::string_view s) {
    const size_t dot = s.find('.');
    std::string_view integer = s.substr(0, dot);
    std::string_view fraction =
        dot == std::string_view::npos ? std::string_view() : s.substr(dot + 1);
    while (!integer.empty() && integer.front() == '0') integer.remove_prefix(1);
    while (!fraction.empty() && fraction.back() == '0') fraction.remove_suffix(1);
    return std::make_pair(integer, fraction);
  };
  auto [ai, af] = split(a);
  auto [bi, bf] = split(b);
  if (ai.size() != bi.size()) return ai.size() < bi.size() ? -1 : 1;
  if (int c = CompareBytes(ai, bi)) return c;
  return CompareBytes(af, bf);  // digit strings: byte order is value order
}

// numeric text, exactly: -Infinity < negatives < 0 < positives < Infinity
// < NaN.
int CompareNumerics(std::string_view a, std::string_view b) {
  auto rank = [](std::string_view s) {
    if (s == "NaN") return 3;
    if (s == "Infinity") return 2;
    if (s == "-Infinity") return -2;
    return 0;
  };
  const int ra = rank(a), rb = rank(b);
  if (ra != 0 || rb != 0) {
    if (ra != rb) return ra < rb ? -1 : 1;
    if (ra != 0) return 0;
  }
  const bool na = !a.empty() && a.front() == '-';
  const bool nb = !b.empty() && b.front() == '-';
  if (na != nb) {
    const bool a_zero = CompareMagnitudes(a.substr(na), "0") == 0;
    const bool b_zero = CompareMagnitudes(b.substr(nb), "0") == 0;
    if (a_zero && b_zero) return 0;
    return na ? -1 : 1;
  }
  const int c = CompareMagnitudes(a.substr(na), b.substr(nb));
  return na ? -c : c;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const ValueOrder>> ValueOrder::For(
    uint32_t type_oid, const std::string& collation) {
  Kind kind;
  switch (type_oid) {
    case kInt2Oid: case kInt4Oid: case kInt8Oid: case kOidOid:
      kind = Kind::kInteger;
      break;
    case kFloat4Oid: case kFloat8Oid:
      kind = Kind::kFloat;
      break;
    case kNumericOid:
      kind = Kind::kNumeric;
      break;
    case kBoolOid:
      kind = Kind::kBool;
      break;
    case kCharOid: case kNameOid: case kUuidOid: case kDateOid: case kTimeOid:
    case kTimestampOid:
      kind = Kind::kBytes;  // "name" always sorts in C order
      break;
    case kTextOid: case kVarcharOid: case kBpcharOid:
      kind = collation == "C" || collation == "POSIX" || collation == "ucs_basic"
                 ? Kind::kBytes
                 : Kind::kCollated;
      break;
    default:
      return Unsupported(StrCat(
          "ORDER BY a column of type oid ", type_oid,
          " across shards is not merged: the router compares integers, "
          "floats, numeric, text, booleans, uuids, dates and timestamps "
          "without time zone; narrow the statement to one shard, or order by "
          "a cast of it to one of those types"));
  }
  locale_t locale = nullptr;
  if (kind == Kind::kCollated) {
    locale = newlocale(LC_COLLATE_MASK, collation.c_str(), nullptr);
    if (locale == nullptr) {
      return Unsupported(StrCat(
          "the shards order text by collation \"", collation,
          "\", which this machine does not have, so their rows cannot be "
          "merged in that order; install the locale here (e.g. locale-gen), "
          "or ORDER BY ... COLLATE \"C\""));
    }
  }
  return std::shared_ptr<const ValueOrder>(new ValueOrder(kind, locale));
}

ValueOrder::~ValueOrder() {
  if (locale_ != nullptr) freelocale(locale_);
}

int ValueOrder::Compare(std::string_view a, std::string_view b) const {
  switch (kind_) {
    case Kind::kInteger:
      return CompareIntegers(a, b);
    case Kind::kFloat:
      return CompareFloats(a, b);
    case Kind::kNumeric:
      return CompareNumerics(a, b);
    case Kind::kBool:
      return (a == "t") - (b == "t");
    case Kind::kBytes:
      return CompareBytes(a, b);
    case Kind::kCollated: {
      // As PostgreSQL's libc provider: strcoll_l, ties broken by strcmp.
      const std::string x(a), y(b);
      if (int c = Sign(strcoll_l(x.c_str(), y.c_str(), locale_))) return c;
      return CompareBytes(a, b);
    }
  }
  return 0;
}

absl::StatusOr<std::vector<size_t>> ResolveSortColumns(
    const std::vector<SortSpec>& specs, const std::vector<Column>& columns) {
  std::vector<size_t> out;
  for (const SortSpec& spec : specs) {
    if (spec.column.empty()) {
      if (spec.position < 1 || static_cast<size_t>(spec.position) > columns.size()) {
        return Unsupported(StrCat("ORDER BY position ", spec.position,
                                  " is not in the select list"));
      }
      out.push_back(spec.position - 1);
      continue;
    }
    std::optional<size_t> found;
    for (size_t i = 0; i < columns.size(); ++i) {
      if (columns[i].name != spec.column) continue;
      if (found) {
        return Unsupported(StrCat("ORDER BY ", spec.column,
                                  " names two result columns; give them "
                                  "distinct aliases"));
      }
      found = i;
    }
    if (!found) {
      return Unsupported(StrCat(
          "ORDER BY ", spec.column,
          " across shards needs it in the select list, to merge the shards' "
          "rows by it; add it to the SELECT"));
    }
    out.push_back(*found);
  }
  return out;
}

int CompareRows(const Row& a, const Row& b, const std::vector<MergeKey>& keys) {
  for (const MergeKey& k : keys) {
    const auto& x = a[k.column];
    const auto& y = b[k.column];
    if (!x || !y) {
      if (!x && !y) continue;
      return (!x) == k.nulls_first ? -1 : 1;
    }
    int c = k.order->Compare(*x, *y);
    if (k.descending) c = -c;
    if (c != 0) return c;
  }
  return 0;
}

std::vector<Row> MergeRows(std::vector<std::vector<Row>> parts,
                           const std::vector<MergeKey>& keys, int64_t offset,
                           std::optional<int64_t> limit) {
  std::vector<Row> out;
  int64_t skipped = 0;
  auto emit = [&](Row&& row) {
    if (skipped < offset) {
      ++skipped;
      return true;
    }
    if (limit && static_cast<int64_t>(out.size()) >= *limit) return false;
    out.push_back(std::move(row));
    return true;
  };
  if (keys.empty()) {
    for (auto& part : parts) {
      for (Row& row : part) {
        if (!emit(std::move(row))) return out;
      }
    }
    return out;
  }
  // A heap of the next row of each part; ties go to the lower part, so the
  // merge is stable with respect to shard order.
  using Cursor = std::pair<size_t, size_t>;  // part, row
  auto later = [&](const Cursor& a, const Cursor& b) {
    const int c = CompareRows(parts[a.first][a.second], parts[b.first][b.second], keys);
    return c != 0 ? c > 0 : a.first > b.first;
  };
  std::priority_queue<Cursor, std::vector<Cursor>, decltype(later)> heap(later);
  for (size_t p = 0; p < parts.size(); ++p) {
    if (!parts[p].empty()) heap.push({p, 0});
  }
  while (!heap.empty()) {
    auto [p, r] = heap.top();
    heap.pop();
    if (!emit(std::move(parts[p][r]))) break;
    if (r + 1 < parts[p].size()) heap.push({p, r + 1});
  }
  return out;
}

}  // namespace shardkit::internal
