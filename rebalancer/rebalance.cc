#include "rebalancer/rebalance.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {

namespace {

using u128 = unsigned __int128;

constexpr u128 kHashSpace = u128{1} << 64;
// Hash cuts are rounded to a multiple of this where that stays inside the
// slice: 0x5a3c000000000000 reads better than 0x5a3b9f0e11c2d7a4.
constexpr uint64_t kHashGranule = uint64_t{1} << 48;

absl::Status Invalid(std::string_view message) {
  return absl::InvalidArgumentError(ToAbsl(message));
}

int64_t Metric(const SliceLoad& s, BalanceBy by) {
  return by == BalanceBy::kRows ? s.rows : s.bytes;
}

struct HashBounds {
  uint64_t lo = 0;
  u128 hi = kHashSpace;
};

absl::StatusOr<HashBounds> HashBoundsOf(const LiveState::Slice& s) {
  HashBounds b;
  ASSIGN_OR_RETURN(std::optional<uint64_t> lo, ParseHashBound(s.from));
  ASSIGN_OR_RETURN(std::optional<uint64_t> hi, ParseHashBound(s.to));
  b.lo = lo.value_or(0);
  if (hi) b.hi = *hi;
  return b;
}

// Rounds `cut` to a hash granule when that keeps it inside (lo, hi).
uint64_t RoundCut(uint64_t cut, uint64_t lo, u128 hi) {
  const uint64_t rounded =
      (cut + kHashGranule / 2) / kHashGranule * kHashGranule;
  if (rounded > lo && u128{rounded} < hi) return rounded;
  return cut;
}

// Where a part of `slice` holding `fraction` of it starts, its upper part
// being the one that moves; nullopt when it cannot be carved.
absl::StatusOr<std::optional<std::string>> CarveCut(
    const Distribution& d, const SliceLoad& slice, double fraction,
    const CutFinder& finder) {
  if (d.strategy() == Strategy::kHash) {
    ASSIGN_OR_RETURN(HashBounds b, HashBoundsOf(slice.slice));
    const u128 width = b.hi - b.lo;
    const u128 part =
        static_cast<u128>(static_cast<long double>(width) * fraction);
    if (part == 0 || part >= width) return std::nullopt;
    const uint64_t cut = RoundCut(static_cast<uint64_t>(b.hi - part), b.lo,
                                  b.hi);
    return HashBoundText(cut);
  }
  if (!finder) return std::nullopt;
  return finder(slice, 1.0 - fraction);
}

}  // namespace

absl::StatusOr<RebalancePlan> PlanRebalance(const ShardMap& map,
                                            const DistributionLoad& load,
                                            const RebalanceOptions& options,
                                            const CutFinder& finder) {
  const Distribution* d = map.FindDistribution(load.distribution);
  if (d == nullptr) {
    return Invalid(StrCat("unknown distribution '", load.distribution, "'"));
  }
  if (d->strategy() == Strategy::kRegion) {
    return Invalid(StrCat(
        "distribution '", d->name(), "' places keys by region: where a "
        "region lives is a policy, not balance; move a region with "
        "`shardctl move --region`"));
  }
  RebalancePlan plan;
  plan.distribution = d->name();
  std::map<std::string, int64_t>& loads = plan.after;
  for (const Shard& s : map.shards()) loads[s.name] = 0;
  std::vector<SliceLoad> slices = load.slices;
  int64_t total = 0;
  for (const SliceLoad& s : slices) {
    loads[s.slice.shard] += Metric(s, options.by);
    total += Metric(s, options.by);
  }
  plan.before = loads;
  if (total == 0 || loads.size() < 2) return plan;
  const double mean =
      static_cast<double>(total) / static_cast<double>(loads.size());
  const double slack = std::max(1.0, mean * options.tolerance);
  // Slices that cannot be carved (one key), by their bounds.
  std::vector<std::pair<std::string, std::string>> uncarvable;

  while (static_cast<int>(plan.steps.size()) < options.max_moves) {
    // Ties go to the first shard by name, so that plans are reproducible.
    auto donor = std::max_element(
        loads.begin(), loads.end(),
        [](const auto& a, const auto& b) { return a.second < b.second; });
    auto receiver = std::min_element(
        loads.begin(), loads.end(),
        [](const auto& a, const auto& b) { return a.second < b.second; });
    const double excess = static_cast<double>(donor->second) - mean;
    const double deficit = mean - static_cast<double>(receiver->second);
    if (excess <= slack && deficit <= slack) break;
    const double amount = std::min(excess, deficit);
    if (amount < 1) break;

    // The donor's slices, most loaded first.
    std::vector<size_t> own;
    for (size_t i = 0; i < slices.size(); ++i) {
      if (slices[i].slice.shard == donor->first &&
          Metric(slices[i], options.by) > 0) {
        own.push_back(i);
      }
    }
    std::sort(own.begin(), own.end(), [&](size_t a, size_t b) {
      return Metric(slices[a], options.by) > Metric(slices[b], options.by);
    });
    std::optional<size_t> whole;
    for (size_t i : own) {
      if (static_cast<double>(Metric(slices[i], options.by)) <=
          amount + slack / 2) {
        whole = i;
        break;
      }
    }
    RebalanceStep step;
    step.source = donor->first;
    step.request.distribution = d->name();
    step.request.destination = receiver->first;
    if (whole) {
      SliceLoad& s = slices[*whole];
      step.request.slice = StrCat(s.slice.from, ":", s.slice.to);
      step.rows = s.rows;
      step.bytes = s.bytes;
      s.slice.shard = receiver->first;
    } else {
      std::optional<size_t> carved;
      std::string cut;
      for (size_t i : own) {
        const std::pair<std::string, std::string> bounds{slices[i].slice.from,
                                                         slices[i].slice.to};
        if (std::find(uncarvable.begin(), uncarvable.end(), bounds) !=
            uncarvable.end()) {
          continue;
        }
        const double fraction =
            amount / static_cast<double>(Metric(slices[i], options.by));
        ASSIGN_OR_RETURN(std::optional<std::string> c,
                         CarveCut(*d, slices[i], fraction, finder));
        if (c && *c != slices[i].slice.from && *c != slices[i].slice.to) {
          carved = i;
          cut = *c;
          break;
        }
        uncarvable.push_back(bounds);
      }
      if (!carved) break;  // nothing the donor holds can move: done
      SliceLoad upper = slices[*carved];
      SliceLoad& lower = slices[*carved];
      // The rows above the cut: proportional to the hash width (even
      // spread), or as the finder placed the cut for a range.
      double moved_fraction =
          amount / static_cast<double>(Metric(lower, options.by));
      if (d->strategy() == Strategy::kHash) {
        ASSIGN_OR_RETURN(HashBounds b, HashBoundsOf(lower.slice));
        ASSIGN_OR_RETURN(std::optional<uint64_t> c, ParseHashBound(cut));
        moved_fraction = static_cast<double>(b.hi - *c) /
                         static_cast<double>(b.hi - b.lo);
      }
      upper.slice.from = cut;
      upper.slice.shard = receiver->first;
      upper.rows = std::llround(static_cast<double>(lower.rows) * moved_fraction);
      upper.bytes =
          std::llround(static_cast<double>(lower.bytes) * moved_fraction);
      lower.slice.to = cut;
      lower.rows -= upper.rows;
      lower.bytes -= upper.bytes;
      step.request.slice = StrCat(upper.slice.from, ":", upper.slice.to);
      step.rows = upper.rows;
      step.bytes = upper.bytes;
      slices.insert(slices.begin() + *carved + 1, upper);
    }
    const int64_t moved =
        options.by == BalanceBy::kRows ? step.rows : step.bytes;
    if (moved <= 0) break;
    donor->second -= moved;
    receiver->second += moved;
    plan.steps.push_back(std::move(step));
  }
  return plan;
}

namespace {

struct TableCounts {
  int64_t rows = 0;
  int64_t bytes = 0;
};

std::vector<const Table*> TablesOf(const ShardMap& map, const Distribution& d) {
  std::vector<const Table*> tables;
  for (const Table& t : map.tables()) {
    if (!t.reference && &map.distributions()[t.distribution] == &d) {
      tables.push_back(&t);
    }
  }
  return tables;
}

// "key >= $1 AND key < $2" for the bounds present, and the parameters.
std::string RangeWhere(const Table& t, const LiveState::Slice& s,
                       std::vector<std::optional<std::string>>& params,
                       KeyType type) {
  const std::string collate = type == KeyType::kText ? " COLLATE \"C\"" : "";
  std::string where = "true";
  const std::string key = QuoteIdentifier(t.key_column) + collate;
  if (!s.from.empty()) {
    params.push_back(s.from);
    StrAppend(&where, " AND ", key, " >= $", params.size());
  }
  if (!s.to.empty()) {
    params.push_back(s.to);
    StrAppend(&where, " AND ", key, " < $", params.size());
  }
  return where;
}

}  // namespace

std::vector<ShardEndpoint> ShardEndpoints(const ShardMap& map,
                                          absl::Duration connect_timeout) {
  std::vector<ShardEndpoint> endpoints;
  for (const Shard& s : map.shards()) {
    endpoints.push_back({s.name, s.dsn, connect_timeout});
  }
  return endpoints;
}

absl::StatusOr<DistributionLoad> MeasureDistribution(
    const ShardMap& map, std::string_view distribution,
    const std::vector<ShardEndpoint>& shards,
    absl::Duration statement_timeout) {
  const Distribution* d = map.FindDistribution(distribution);
  if (d == nullptr) {
    return Invalid(StrCat("unknown distribution '", distribution, "'"));
  }
  LiveState state = LiveStateOf(map);
  DistributionLoad load;
  load.distribution = d->name();
  for (const LiveState::Slice& s : state.distributions[d->name()].slices) {
    load.slices.push_back({s, 0, 0});
  }
  const std::vector<const Table*> tables = TablesOf(map, *d);
  // Per owner: its tables' rows and bytes.
  std::map<std::string, TableCounts> per_shard;
  std::map<std::string, u128> width;  // hash: the hash space each owns
  for (const ShardId id : d->shards()) {
    const ShardEndpoint& endpoint = shards.at(id);
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session,
                     MoveSession::Open(endpoint, statement_timeout));
    for (const Table* t : tables) {
      const std::string quoted = QuoteQualifiedName(t->name);
      ASSIGN_OR_RETURN(
          int64_t rows,
          session->QueryInt(StrCat("SELECT count(*) FROM ", quoted), {},
                   StrCat("counting ", t->name)));
      ASSIGN_OR_RETURN(
          int64_t bytes,
          session->QueryInt("SELECT pg_total_relation_size($1::regclass)",
                   {quoted}, StrCat("measuring ", t->name)));
      TableCounts& c = per_shard[endpoint.name];
      if (d->strategy() == Strategy::kHash) {
        c.rows += rows;
        c.bytes += bytes;
        continue;
      }
      // Range: each slice this shard owns, counted by its bounds; the
      // bytes shared out by rows.
      for (SliceLoad& s : load.slices) {
        if (s.slice.shard != endpoint.name) continue;
        std::vector<std::optional<std::string>> params;
        const std::string where = RangeWhere(*t, s.slice, params,
                                             d->key_type());
        ASSIGN_OR_RETURN(int64_t in_slice,
                         session->QueryInt(StrCat("SELECT count(*) FROM ", quoted,
                                         " WHERE ", where),
                                  params, StrCat("counting ", t->name)));
        s.rows += in_slice;
        if (rows > 0) {
          s.bytes += static_cast<int64_t>(static_cast<double>(bytes) *
                                          static_cast<double>(in_slice) /
                                          static_cast<double>(rows));
        }
      }
    }
  }
  if (d->strategy() == Strategy::kHash) {
    for (const SliceLoad& s : load.slices) {
      ASSIGN_OR_RETURN(HashBounds b, HashBoundsOf(s.slice));
      width[s.slice.shard] += b.hi - b.lo;
    }
    for (SliceLoad& s : load.slices) {
      ASSIGN_OR_RETURN(HashBounds b, HashBoundsOf(s.slice));
      const double share = static_cast<double>(b.hi - b.lo) /
                           static_cast<double>(width[s.slice.shard]);
      const TableCounts& c = per_shard[s.slice.shard];
      s.rows = std::llround(static_cast<double>(c.rows) * share);
      s.bytes = std::llround(static_cast<double>(c.bytes) * share);
    }
  }
  return load;
}

CutFinder RangeCutFinder(const ShardMap& map, std::string_view distribution,
                         const std::vector<ShardEndpoint>& shards,
                         absl::Duration statement_timeout) {
  const Distribution* d = map.FindDistribution(distribution);
  std::vector<const Table*> tables;
  if (d != nullptr) tables = TablesOf(map, *d);
  std::map<std::string, ShardEndpoint> by_name;
  for (const ShardEndpoint& e : shards) by_name[e.name] = e;
  const KeyType type = d != nullptr ? d->key_type() : KeyType::kInt8;
  return [tables, by_name, type, statement_timeout](
             const SliceLoad& slice, double fraction_below)
             -> absl::StatusOr<std::optional<std::string>> {
    auto endpoint = by_name.find(slice.slice.shard);
    if (endpoint == by_name.end() || tables.empty()) return std::nullopt;
    ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> session,
                     MoveSession::Open(endpoint->second, statement_timeout));
    // The table with the most rows in the slice sets the cut.
    const Table* biggest = nullptr;
    int64_t most = -1;
    for (const Table* t : tables) {
      std::vector<std::optional<std::string>> params;
      const std::string where = RangeWhere(*t, slice.slice, params, type);
      ASSIGN_OR_RETURN(int64_t n,
                       session->QueryInt(StrCat("SELECT count(*) FROM ",
                                       QuoteQualifiedName(t->name), " WHERE ",
                                       where),
                                params, "counting the slice"));
      if (n > most) {
        most = n;
        biggest = t;
      }
    }
    if (most <= 1) return std::nullopt;
    const int64_t offset = std::clamp<int64_t>(
        std::llround(static_cast<double>(most) * fraction_below), 1, most - 1);
    std::vector<std::optional<std::string>> params;
    const std::string collate = type == KeyType::kText ? " COLLATE \"C\"" : "";
    const std::string key = QuoteIdentifier(biggest->key_column);
    std::string where = RangeWhere(*biggest, slice.slice, params, type);
    // The key at that offset, or the next distinct key above the slice's
    // lower bound when many rows share it (a cut must be above `from`).
    params.push_back(std::to_string(offset));
    const std::string at_offset = StrCat(
        "SELECT ", key, "::text FROM ", QuoteQualifiedName(biggest->name),
        " WHERE ", where, " ORDER BY ", key, collate, " OFFSET $",
        params.size(), " LIMIT 1");
    ASSIGN_OR_RETURN(std::vector<MoveSession::Row> rows,
                     session->Query(at_offset, params, "finding a cut"));
    if (rows.empty() || !rows[0][0]) return std::nullopt;
    std::string cut = *rows[0][0];
    if (cut == slice.slice.from) {
      params.pop_back();
      params.push_back(cut);
      where += StrCat(" AND ", key, collate, " > $", params.size());
      ASSIGN_OR_RETURN(
          rows, session->Query(StrCat("SELECT min(", key, collate, ")::text FROM ",
                                      QuoteQualifiedName(biggest->name),
                                      " WHERE ", where),
                               params, "finding a cut"));
      if (rows.empty() || !rows[0][0]) return std::nullopt;
      cut = *rows[0][0];
    }
    return cut;
  };
}

}  // namespace shardkit::internal
