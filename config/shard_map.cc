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

// The even slice of n that holds `hash`, by the definition in shard_map.h
// (the product estimate can be one short at a boundary).
size_t EvenSliceOf(uint64_t hash, uint64_t n) {
  uint64_t j = static_cast<uint64_t>(
      (static_cast<unsigned __int128>(hash) * n) >> 64);
  if (j + 1 < n && hash >= internal::ShardMapBuilder::EvenSliceLo(j + 1, n)) ++j;
  return static_cast<size_t>(j);
}

// Bytes that order text and uuid keys as PostgreSQL does.
std::string_view OrderBytes(const Key& key) {
  if (key.kind() == Key::Kind::kText) return key.text();
  return std::string_view(reinterpret_cast<const char*>(key.uuid().data()),
                          16);
}

// The smallest key greater than `key`, or nullopt if there is none.
std::optional<Key> Successor(const Key& key, KeyType type) {
  switch (key.kind()) {
    case Key::Kind::kInteger: {
      Key next = Key::Integer(key.integer() + 1);
      if (key.integer() == INT64_MAX || !next.FitsType(type)) {
        return std::nullopt;
      }
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

// Whether no key of `type` is smaller than `key`.
bool IsDomainMin(const Key& key, KeyType type) {
  switch (key.kind()) {
    case Key::Kind::kInteger:
      return key.integer() == INT64_MIN ||
             !Key::Integer(key.integer() - 1).FitsType(type);
    case Key::Kind::kText:
      return key.text().empty();
    case Key::Kind::kUuid:
      return key.uuid() == Key::Uuid{};
  }
  return false;
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

std::string Shard::MaskedDsn() const { return MaskDsnPassword(dsn); }

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
      size_t i;
      if (key.kind() == Key::Kind::kInteger) {
        i = std::upper_bound(range_int_from_.begin(), range_int_from_.end(),
                             key.integer()) -
            range_int_from_.begin();
      } else {
        i = std::upper_bound(range_bytes_from_.begin(),
                             range_bytes_from_.end(), OrderBytes(key)) -
            range_bytes_from_.begin();
      }
      return Placement{range_slices_[i].shard, i, std::nullopt};
    }
    case Strategy::kRegion:
      return PlaceRegion(key, hash_key);
  }
  return absl::InternalError("unknown strategy");
}

Placement Distribution::PlaceHash(uint64_t hash) const {
  assert(strategy_ == Strategy::kHash && !hash_lo_.empty());
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
  return Placement{region.shards[EvenSliceOf(h, region.shards.size())],
                   it->second, h};
}

absl::StatusOr<std::vector<ShardId>> Distribution::ShardsForRange(
    const KeyRange& range) const {
  if (strategy_ != Strategy::kRange) {
    return absl::FailedPreconditionError(StrCat(
        "distribution '", name_, "' uses strategy ", StrategyName(strategy_),
        ": only range distributions can be searched by a key range"));
  }
  // Normalise to inclusive bounds, then find the slices of both ends.
  size_t first = 0;
  size_t last = range_slices_.size() - 1;
  auto slice_of = [&](const Key& k) -> size_t {
    if (k.kind() == Key::Kind::kInteger) {
      return std::upper_bound(range_int_from_.begin(), range_int_from_.end(),
                              k.integer()) -
             range_int_from_.begin();
    }
    return std::upper_bound(range_bytes_from_.begin(), range_bytes_from_.end(),
                            OrderBytes(k)) -
           range_bytes_from_.begin();
  };
  // Number of slice lower bounds strictly below `k`: the last slice that
  // holds a key < k.
  auto slice_below = [&](const Key& k) -> size_t {
    if (k.kind() == Key::Kind::kInteger) {
      return std::lower_bound(range_int_from_.begin(), range_int_from_.end(),
                              k.integer()) -
             range_int_from_.begin();
    }
    return std::lower_bound(range_bytes_from_.begin(), range_bytes_from_.end(),
                            OrderBytes(k)) -
           range_bytes_from_.begin();
  };
  std::optional<Key> low;
  if (range.lower) {
    if (absl::Status s = CheckKey(range.lower->key, key_type_); !s.ok()) return s;
    low = range.lower->inclusive ? std::optional<Key>(range.lower->key)
                                 : Successor(range.lower->key, key_type_);
    if (!low) return std::vector<ShardId>{};
    first = slice_of(*low);
  }
  if (range.upper) {
    const Key& high = range.upper->key;
    if (absl::Status s = CheckKey(high, key_type_); !s.ok()) return s;
    if (low && (range.upper->inclusive ? high < *low : !(*low < high))) {
      return std::vector<ShardId>{};
    }
    if (range.upper->inclusive) {
      last = slice_of(high);
    } else {
      if (IsDomainMin(high, key_type_)) return std::vector<ShardId>{};
      last = slice_below(high);
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
