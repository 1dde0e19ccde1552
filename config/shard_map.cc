#include "shardkit/shard_map.h"

#include <algorithm>
#include <cassert>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "absl/strings/str_join.h"
#include "config/map_builder.h"

namespace shardkit {
namespace {

absl::string_view AsAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

// Bytes that order text and uuid keys as PostgreSQL does.
std::string_view OrderBytes(const Key& key) {
  if (key.kind() == Key::Kind::kText) return key.text();
  return std::string_view(reinterpret_cast<const char*>(key.uuid().data()),
                          16);
}

// The smallest key of `type` greater than `key`, or nullopt if there is
// none. REQUIRES: key.FitsType(type).
std::optional<Key> Successor(const Key& key, KeyType type) {
  switch (key.kind()) {
    case Key::Kind::kInteger: {
      if (key.integer() == INT64_MAX) return std::nullopt;
      Key next = Key::Integer(key.integer() + 1);
      if (!next.FitsType(type)) return std::nullopt;
      return next;
    }
    case Key::Kind::kText:
      return Key::Text(key.text() + std::string(1, '\0'));
    case Key::Kind::kUuid: {
      Key::Uuid u = key.uuid();
      for (int i = 15; i >= 0; --i) {
        if (++u[i] != 0) return Key::FromUuid(u);
      }
      return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace

std::string_view StrategyName(Strategy strategy) {
  switch (strategy) {
    case Strategy::kHash: return "hash";
    case Strategy::kRange: return "range";
    case Strategy::kRegion: return "region";
  }
  return "?";
}

std::string_view MovePhaseName(MovePhase phase) {
  switch (phase) {
    case MovePhase::kDualWrite: return "dual-write";
    case MovePhase::kCutOver: return "cut-over";
  }
  return "?";
}

bool MovingSlice::Contains(const Distribution& d, const Key& key,
                           const Placement& placement) const {
  switch (d.strategy()) {
    case Strategy::kHash:
      return placement.hash && *placement.hash >= hash_lo &&
             (!hash_hi || *placement.hash < *hash_hi);
    case Strategy::kRange:
      return (!from || key.Compare(*from) >= 0) &&
             (!to || key.Compare(*to) < 0);
    case Strategy::kRegion:
      return key.kind() == Key::Kind::kText && key.text() == region;
  }
  return false;
}

std::string Shard::MaskedDsn() const { return MaskDsnPassword(dsn); }
std::string Backend::MaskedDsn() const { return MaskDsnPassword(dsn); }

absl::Status Distribution::CheckKey(const Key& key, KeyType type) const {
  if (key.FitsType(type)) return absl::OkStatus();
  return absl::InvalidArgumentError(StrCat(
      "key ", key.ToString(), " does not fit distribution '", name_,
      "', whose key type is ", KeyTypeName(type)));
}

absl::StatusOr<Placement> Distribution::Place(const Key& key,
                                              const Key* hash_key) const {
  switch (strategy_) {
    case Strategy::kHash:
      if (absl::Status s = CheckKey(key, key_type_); !s.ok()) return s;
      return PlaceHash(HashKey(key));
    case Strategy::kRange: {
      if (absl::Status s = CheckKey(key, key_type_); !s.ok()) return s;
      const size_t i = RangeSliceOf(key);
      return Placement{range_slices_[i].shard, i, std::nullopt};
    }
    case Strategy::kRegion:
      return PlaceRegion(key, hash_key);
  }
  return absl::InternalError("unknown strategy");
}

Placement Distribution::PlaceHash(uint64_t hash) const {
  // The builder gives every hash distribution at least one slice.
  assert(strategy_ == Strategy::kHash && !hash_lo_.empty());
  if (hash_lo_.empty()) return Placement{0, std::nullopt, hash};
  // The slice is among [radix[b], radix[b + 1]], and hash_lo_[radix[b]] is
  // at most `hash`, so upper_bound never returns the first candidate.
  const size_t b = hash >> hash_radix_shift_;
  const auto first = hash_lo_.begin() + hash_radix_[b];
  const auto last = hash_lo_.begin() + hash_radix_[b + 1] + 1;
  const size_t i = std::upper_bound(first + 1, last, hash) - hash_lo_.begin() - 1;
  return Placement{hash_slices_[i].shard, i, hash};
}

absl::StatusOr<Placement> Distribution::PlaceRegion(
    const Key& key, const Key* hash_key) const {
  if (absl::Status s = CheckKey(key, key_type_); !s.ok()) return s;
  auto it = region_index_.find(AsAbsl(key.text()));
  if (it == region_index_.end()) {
    if (default_shard_) return Placement{*default_shard_, std::nullopt, std::nullopt};
    return absl::NotFoundError(StrCat(
        "region '", key.text(), "' is not listed in distribution '", name_,
        "' and it has no default shard; add it to `regions` or set "
        "`default`"));
  }
  const Region& region = regions_[it->second];
  if (region.shards.size() == 1) {
    return Placement{region.shards[0], it->second, std::nullopt};
  }
  if (hash_key == nullptr) {
    return absl::InvalidArgumentError(StrCat(
        "region '", region.name, "' of distribution '", name_,
        "' is spread over ", region.shards.size(),
        " shards by hash key: a hash-key value is needed to place a row"));
  }
  if (absl::Status s = CheckKey(*hash_key, *hash_key_type_); !s.ok()) {
    return absl::InvalidArgumentError(
        StrCat("hash key: ", s.message()));
  }
  const uint64_t h = HashKey(*hash_key);
  return Placement{region.shards[internal::ShardMapBuilder::EvenSliceOf(h, region.shards.size())],
                   it->second, h};
}

size_t Distribution::RangeSliceOf(const Key& key) const {
  if (key.kind() == Key::Kind::kInteger) {
    return std::upper_bound(range_int_from_.begin(), range_int_from_.end(),
                            key.integer()) -
           range_int_from_.begin();
  }
  return std::upper_bound(range_bytes_from_.begin(), range_bytes_from_.end(),
                          OrderBytes(key)) -
         range_bytes_from_.begin();
}

size_t Distribution::RangeSliceBelow(const Key& key) const {
  if (key.kind() == Key::Kind::kInteger) {
    return std::lower_bound(range_int_from_.begin(), range_int_from_.end(),
                            key.integer()) -
           range_int_from_.begin();
  }
  return std::lower_bound(range_bytes_from_.begin(), range_bytes_from_.end(),
                          OrderBytes(key)) -
         range_bytes_from_.begin();
}

absl::StatusOr<std::vector<ShardId>> Distribution::ShardsForRange(
    const KeyRange& range) const {
  if (strategy_ != Strategy::kRange) {
    return absl::FailedPreconditionError(StrCat(
        "distribution '", name_, "' uses strategy ", StrategyName(strategy_),
        ": only range distributions can be searched by a key range"));
  }
  const std::vector<ShardId> none;
  // An integer bound outside a narrower type's domain (int2col < 40000)
  // is clamped: it either selects nothing or does not bound at all.
  const Key domain_min = MinKey(key_type_);
  auto outside = [&](const KeyBound& b, bool above) {
    return b.key.kind() == Key::Kind::kInteger &&
           IsIntegerKeyType(key_type_) && !b.key.FitsType(key_type_) &&
           (above ? domain_min.integer() < b.key.integer()
                  : b.key.integer() < domain_min.integer());
  };
  std::optional<KeyBound> lower = range.lower;
  std::optional<KeyBound> upper = range.upper;
  if (lower && outside(*lower, /*above=*/true)) return none;
  if (lower && outside(*lower, /*above=*/false)) lower.reset();
  if (upper && outside(*upper, /*above=*/false)) return none;
  if (upper && outside(*upper, /*above=*/true)) upper.reset();

  // Normalise to an inclusive lower bound, then find the slices of both ends.
  size_t first = 0;
  size_t last = range_slices_.size() - 1;
  std::optional<Key> low;
  if (lower) {
    if (absl::Status s = CheckKey(lower->key, key_type_); !s.ok()) return s;
    low = lower->inclusive ? std::optional<Key>(lower->key)
                           : Successor(lower->key, key_type_);
    if (!low) return none;
    first = RangeSliceOf(*low);
  }
  if (upper) {
    const Key& high = upper->key;
    if (absl::Status s = CheckKey(high, key_type_); !s.ok()) return s;
    if (low && (upper->inclusive ? high < *low : !(*low < high))) return none;
    if (upper->inclusive) {
      last = RangeSliceOf(high);
    } else {
      if (high == domain_min) return none;
      last = RangeSliceBelow(high);
    }
  }
  std::vector<ShardId> out;
  for (size_t i = first; i <= last && i < range_slices_.size(); ++i) {
    out.push_back(range_slices_[i].shard);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::optional<ShardId> ShardMap::FindShard(std::string_view name) const {
  auto it = shard_index_.find(AsAbsl(name));
  if (it == shard_index_.end()) return std::nullopt;
  return it->second;
}

const Distribution* ShardMap::FindDistribution(std::string_view name) const {
  auto it = distribution_index_.find(AsAbsl(name));
  return it == distribution_index_.end() ? nullptr
                                         : &distributions_[it->second];
}

const Table* ShardMap::FindTable(std::string_view name) const {
  auto it = table_index_.find(AsAbsl(name));
  return it == table_index_.end() ? nullptr : &tables_[it->second];
}

absl::StatusOr<Placement> ShardMap::Place(std::string_view table,
                                          const Key& key,
                                          const Key* hash_key) const {
  const Table* t = FindTable(table);
  if (t == nullptr) {
    return absl::NotFoundError(
        StrCat("table '", table, "' is not in the shard map"));
  }
  if (t->reference) {
    return absl::InvalidArgumentError(StrCat(
        "table '", table,
        "' is a reference table: every shard holds all of its rows"));
  }
  return distributions_[t->distribution].Place(key, hash_key);
}

}  // namespace shardkit
