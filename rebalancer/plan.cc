#include "rebalancer/plan.h"

#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {

namespace {

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(std::move(message));
}

struct SliceText {
  std::string from;
  std::string to;
};

absl::StatusOr<SliceText> SplitSlice(std::string_view slice) {
  const size_t colon = slice.find(':');
  if (colon == std::string_view::npos || slice.find(':', colon + 1) !=
                                             std::string_view::npos) {
    return Invalid(StrCat("--slice '", slice,
                          "': write FROM:TO, e.g. 0x4000000000000000:"
                          "0x8000000000000000 for a hash distribution or "
                          "1000:2000 for a range one (an empty side is open)"));
  }
  return SliceText{std::string(slice.substr(0, colon)),
                   std::string(slice.substr(colon + 1))};
}

absl::StatusOr<std::optional<uint64_t>> HashSide(const std::string& text) {
  absl::StatusOr<std::optional<uint64_t>> v = ParseHashBound(text);
  if (!v.ok()) return Invalid(StrCat("--slice: ", v.status().message()));
  return v;
}

absl::StatusOr<std::optional<Key>> KeySide(const Distribution& d,
                                           const std::string& text) {
  absl::StatusOr<std::optional<Key>> k = ParseKeyBound(d.key_type(), text);
  if (!k.ok()) return Invalid(StrCat("--slice: ", k.status().message()));
  return k;
}

// a <= b where nullopt is -infinity (a lower bound).
bool LowerLe(const std::optional<Key>& a, const std::optional<Key>& b) {
  if (!a) return true;
  if (!b) return false;
  return a->Compare(*b) <= 0;
}

// a <= b where nullopt is +infinity (an upper bound).
bool UpperLe(const std::optional<Key>& a, const std::optional<Key>& b) {
  if (!b) return true;
  if (!a) return false;
  return a->Compare(*b) <= 0;
}

// Whether a slice ending at `upper` (nullopt: +inf) ends before one that
// starts at `lower` (nullopt: -inf) begins.
bool EndsBefore(const std::optional<Key>& upper,
                const std::optional<Key>& lower) {
  return upper && lower && upper->Compare(*lower) <= 0;
}

bool HashUpperLe(const std::optional<uint64_t>& a,
                 const std::optional<uint64_t>& b) {
  if (!b) return true;
  if (!a) return false;
  return *a <= *b;
}

std::string OwnersText(const ShardMap& map, const Distribution& d) {
  std::vector<std::string> parts;
  for (const HashSlice& s : d.hash_slices()) {
    parts.push_back(StrCat("[", FormatHash(s.lo), ", ",
                           s.hi ? FormatHash(*s.hi) : "end", ") on ",
                           map.shard(s.shard).name));
  }
  for (const RangeSlice& s : d.range_slices()) {
    parts.push_back(StrCat("[", s.from ? s.from->ToString() : "-inf", ", ",
                           s.to ? s.to->ToString() : "+inf", ") on ",
                           map.shard(s.shard).name));
  }
  return absl::StrJoin(parts, ", ");
}

// Replaces owned slice `i` of `own` ([lo, hi) as text) by the pieces the
// move leaves: the owner keeps what is outside [from, to).
void Carve(LiveState::Ownership& own, size_t i, const std::string& from,
           const std::string& to, const std::string& destination) {
  const LiveState::Slice old = own.slices[i];
  std::vector<LiveState::Slice> pieces;
  if (from != old.from) pieces.push_back({old.from, from, old.shard});
  pieces.push_back({from, to, destination});
  if (to != old.to) pieces.push_back({to, old.to, old.shard});
  own.slices.erase(own.slices.begin() + i);
  own.slices.insert(own.slices.begin() + i, pieces.begin(), pieces.end());
}

}  // namespace

bool SlicesOverlap(const Distribution& d, const MovingSlice& a,
                   const MovingSlice& b) {
  switch (d.strategy()) {
    case Strategy::kHash:
      return (!b.hash_hi || a.hash_lo < *b.hash_hi) &&
             (!a.hash_hi || b.hash_lo < *a.hash_hi);
    case Strategy::kRange:
      return !EndsBefore(a.to, b.from) && !EndsBefore(b.to, a.from);
    case Strategy::kRegion:
      return a.region == b.region;
  }
  return true;
}

absl::StatusOr<PlannedMove> PlanMove(const ShardMap& map,
                                     const MoveRequest& request) {
  const Distribution* d = map.FindDistribution(request.distribution);
  if (d == nullptr) {
    std::vector<std::string> names;
    for (const Distribution& x : map.distributions()) names.push_back(x.name());
    return Invalid(StrCat("unknown distribution '", request.distribution,
                          "' (the map has: ", absl::StrJoin(names, ", "), ")"));
  }
  const std::optional<ShardId> dest = map.FindShard(request.destination);
  if (!dest) {
    std::vector<std::string> names;
    for (const Shard& s : map.shards()) names.push_back(s.name);
    return Invalid(StrCat("unknown destination shard '", request.destination,
                          "' (the map has: ", absl::StrJoin(names, ", "),
                          "); a new shard is added to the configuration "
                          "file first"));
  }
  const bool is_region = d->strategy() == Strategy::kRegion;
  if (is_region != !request.region.empty() ||
      is_region == !request.slice.empty()) {
    return Invalid(is_region
                       ? StrCat("distribution '", d->name(),
                                "' is a region distribution: name the region "
                                "with --region, not --slice")
                       : StrCat("distribution '", d->name(), "' is a ",
                                StrategyName(d->strategy()),
                                " distribution: give --slice FROM:TO, not "
                                "--region"));
  }

  PlannedMove plan;
  plan.distribution = d->name();
  plan.destination = request.destination;
  LiveState whole = LiveStateOf(map);
  plan.after = whole.distributions[d->name()];
  MovingSlice& slice = plan.slice;
  slice.distribution = static_cast<size_t>(d - &map.distributions()[0]);
  slice.destination = *dest;
  ShardId source = 0;

  if (d->strategy() == Strategy::kHash) {
    ASSIGN_OR_RETURN(SliceText text, SplitSlice(request.slice));
    ASSIGN_OR_RETURN(std::optional<uint64_t> lo, HashSide(text.from));
    ASSIGN_OR_RETURN(std::optional<uint64_t> hi, HashSide(text.to));
    slice.hash_lo = lo.value_or(0);
    slice.hash_hi = hi;
    if (hi && *hi <= slice.hash_lo) {
      return Invalid(StrCat("--slice ", request.slice,
                            " is empty: TO must be above FROM"));
    }
    const size_t i = *d->PlaceHash(slice.hash_lo).slice;
    const HashSlice& owner = d->hash_slices()[i];
    if (!HashUpperLe(hi, owner.hi)) {
      return absl::FailedPreconditionError(StrCat(
          "slice ", request.slice, " of distribution '", d->name(),
          "' spans more than one slice of the map; move one slice at a "
          "time (the slices: ", OwnersText(map, *d), ")"));
    }
    source = owner.shard;
    plan.from = HashLowerText(slice.hash_lo);
    plan.to = HashBoundText(hi);
    Carve(plan.after, i, plan.from, plan.to, request.destination);
  } else if (d->strategy() == Strategy::kRange) {
    ASSIGN_OR_RETURN(SliceText text, SplitSlice(request.slice));
    ASSIGN_OR_RETURN(slice.from, KeySide(*d, text.from));
    ASSIGN_OR_RETURN(slice.to, KeySide(*d, text.to));
    if (slice.from && slice.to && slice.to->Compare(*slice.from) <= 0) {
      return Invalid(StrCat("--slice ", request.slice,
                            " is empty: TO must be above FROM"));
    }
    std::optional<size_t> found;
    for (size_t i = 0; i < d->range_slices().size(); ++i) {
      const RangeSlice& s = d->range_slices()[i];
      if (LowerLe(s.from, slice.from) && UpperLe(slice.to, s.to)) found = i;
    }
    if (!found) {
      return absl::FailedPreconditionError(StrCat(
          "slice ", request.slice, " of distribution '", d->name(),
          "' spans more than one slice of the map; move one slice at a "
          "time (the slices: ", OwnersText(map, *d), ")"));
    }
    source = d->range_slices()[*found].shard;
    plan.from = KeyBoundText(slice.from);
    plan.to = KeyBoundText(slice.to);
    Carve(plan.after, *found, plan.from, plan.to, request.destination);
  } else {
    slice.region = request.region;
    plan.region = request.region;
    bool listed = false;
    for (LiveState::RegionOwners& r : plan.after.regions) {
      if (r.region != request.region) continue;
      listed = true;
      if (r.shards.size() != 1) {
        return absl::FailedPreconditionError(StrCat(
            "region '", r.region, "' is spread over shards ",
            absl::StrJoin(r.shards, ", "),
            "; only a region held by one shard can be moved (its rows "
            "are placed by the hash of the hash key, and moving them is not "
            "supported yet): leave it there, or move a region that one "
            "shard holds"));
      }
      source = *map.FindShard(r.shards[0]);
      r.shards = {request.destination};
    }
    if (!listed) {
      if (!d->default_shard()) {
        return Invalid(StrCat("distribution '", d->name(),
                              "' has no region '", request.region,
                              "' and no default shard"));
      }
      source = *d->default_shard();
      plan.after.regions.push_back({request.region, {request.destination}});
    }
  }
  slice.source = source;
  plan.source = map.shard(source).name;
  if (source == *dest) {
    return absl::FailedPreconditionError(
        StrCat("shard ", plan.source, " already owns that slice of '",
               d->name(), "'; pick another destination"));
  }
  for (const MovingSlice& m : map.moves()) {
    if (m.distribution == slice.distribution && SlicesOverlap(*d, m, slice)) {
      return absl::FailedPreconditionError(StrCat(
          "move ", m.move_id, " is already moving part of that slice; wait "
          "for it (`shardctl moves status ", m.move_id,
          "`), or abort it first"));
    }
  }
  return plan;
}

absl::StatusOr<LiveState::Ownership> PlanSplit(const ShardMap& map,
                                               std::string_view distribution,
                                               std::string_view at) {
  const Distribution* d = map.FindDistribution(distribution);
  if (d == nullptr) {
    return Invalid(StrCat("unknown distribution '", distribution, "'"));
  }
  LiveState whole = LiveStateOf(map);
  LiveState::Ownership own = whole.distributions[d->name()];
  std::string cut;
  std::optional<size_t> index;
  if (d->strategy() == Strategy::kHash) {
    ASSIGN_OR_RETURN(std::optional<uint64_t> v, HashSide(std::string(at)));
    if (!v || *v == 0) return Invalid("--at must be a hash above 0x0");
    cut = FormatHash(*v);
    index = d->PlaceHash(*v).slice;
    if (d->hash_slices()[*index].lo == *v) index.reset();
  } else if (d->strategy() == Strategy::kRange) {
    ASSIGN_OR_RETURN(std::optional<Key> k, KeySide(*d, std::string(at)));
    if (!k) return Invalid("--at needs a key");
    cut = k->ToString();
    for (size_t i = 0; i < d->range_slices().size(); ++i) {
      const RangeSlice& s = d->range_slices()[i];
      const bool inside = (!s.from || s.from->Compare(*k) < 0) &&
                          (!s.to || k->Compare(*s.to) < 0);
      if (inside) index = i;
    }
  } else {
    return Invalid(StrCat("distribution '", d->name(),
                          "' is a region distribution: its regions are "
                          "not ranges to split; move a region instead"));
  }
  if (!index) {
    return absl::FailedPreconditionError(
        StrCat(at, " is already a boundary between slices of '", d->name(),
               "' (", OwnersText(map, *d), ")"));
  }
  LiveState::Slice old = own.slices[*index];
  own.slices[*index].to = cut;
  own.slices.insert(own.slices.begin() + *index + 1,
                    LiveState::Slice{cut, old.to, old.shard});
  return own;
}

}  // namespace shardkit::internal
