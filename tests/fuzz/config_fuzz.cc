// libFuzzer target: TOML text through ParseConfig, and, when it loads, every
// lookup of the map it describes: Place with keys of every kind for every
// table, PlaceHash at every slice boundary, ShardsForRange with bounds at
// and around every slice bound, MaskDsnPassword on every connection string.
// Lookups are checked against a brute-force scan of the slices, so a wrong
// answer is a finding as much as a crash, a sanitizer report or a leak.
//
// The input is the TOML text, or an amplified one (amplified_input.h) for
// sizes and nesting that few-KiB inputs cannot reach. The environment is
// fake: ${V_text} stands for "text" (so the fuzzer picks what is
// substituted), ${PW} for a value that needs escaping, ${EMPTY} for "";
// any other name is unset.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "shardkit/config.h"
#include "shardkit/key.h"
#include "shardkit/shard_map.h"
#include "tests/fuzz/amplified_input.h"

namespace shardkit {
namespace {

// Amplified configurations stop here: room for a dotted table name of
// 65,000 parts ("[a.a.a...]"; before lines of that many dots were refused,
// toml++ overflowed the stack on them).
constexpr size_t kAmplifiedBytes = size_t{128} << 10;

std::optional<std::string> FakeEnv(std::string_view name) {
  if (name.substr(0, 2) == "V_") return std::string(name.substr(2));
  if (name == "PW") return std::string("s3 'cr\\et@/?&=%");
  if (name == "EMPTY") return std::string();
  return std::nullopt;
}

void Check(bool ok, std::string_view what) {
  if (ok) return;
  std::cerr << "config_fuzz: broken invariant: " << what << "\n";
  std::abort();
}

// The smallest key of `type` above `key`; nullopt if none (as the map's own
// range search defines it).
std::optional<Key> Successor(const Key& key, KeyType type) {
  switch (key.kind()) {
    case Key::Kind::kInteger: {
      if (key.integer() == std::numeric_limits<int64_t>::max()) return {};
      Key next = Key::Integer(key.integer() + 1);
      return next.FitsType(type) ? std::optional<Key>(next) : std::nullopt;
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

// Keys worth trying for `d`: a few of each kind, and every slice bound and
// region name with its neighbours.
std::vector<Key> SampleKeys(const Distribution& d) {
  std::vector<Key> keys = {
      Key::Integer(0),
      Key::Integer(-1),
      Key::Integer(42),
      Key::Integer(std::numeric_limits<int16_t>::max()),
      Key::Integer(std::numeric_limits<int16_t>::max() + 1),
      Key::Integer(std::numeric_limits<int32_t>::min()),
      Key::Integer(std::numeric_limits<int64_t>::min()),
      Key::Integer(std::numeric_limits<int64_t>::max()),
      Key::Text(""),
      Key::Text("eu"),
      Key::Text(std::string("a\0b", 3)),
      Key::Text("\xff"),
      Key::FromUuid(Key::Uuid{}),
      Key::FromUuid(Key::Uuid{0x80}),
  };
  Key::Uuid max_uuid;
  max_uuid.fill(0xff);
  keys.push_back(Key::FromUuid(max_uuid));
  auto around = [&](const Key& k) {
    keys.push_back(k);
    if (std::optional<Key> next = Successor(k, d.key_type())) {
      keys.push_back(*next);
    }
    if (k.kind() == Key::Kind::kInteger &&
        k.integer() > std::numeric_limits<int64_t>::min()) {
      keys.push_back(Key::Integer(k.integer() - 1));
    }
    if (k.kind() == Key::Kind::kText && !k.text().empty()) {
      keys.push_back(Key::Text(k.text().substr(0, k.text().size() - 1)));
    }
  };
  for (const RangeSlice& s : d.range_slices()) {
    if (s.from) around(*s.from);
    if (s.to) around(*s.to);
  }
  for (const Region& r : d.regions()) keys.push_back(Key::Text(r.name));
  // Checks are quadratic in the keys: a big map is sampled.
  if (keys.size() > 256) keys.erase(keys.begin() + 256, keys.end());
  return keys;
}

// Brute force: the slice of a range distribution that holds `key`.
std::optional<size_t> RangeSliceScan(const Distribution& d, const Key& key) {
  for (size_t i = 0; i < d.range_slices().size(); ++i) {
    const RangeSlice& s = d.range_slices()[i];
    if ((!s.from || !(key < *s.from)) && (!s.to || key < *s.to)) return i;
  }
  return std::nullopt;
}

void CheckPlace(const ShardMap& map, const Table& table, const Key& key,
                const Key* hash_key) {
  absl::StatusOr<Placement> p = map.Place(table.name, key, hash_key);
  if (table.reference) {
    Check(!p.ok(), "a reference table has no placement");
    return;
  }
  const Distribution& d = map.DistributionOf(table);
  if (!p.ok()) {
    Check(d.strategy() == Strategy::kRegion || !key.FitsType(d.key_type()),
          "Place fails only for a key that does not fit or a region");
    return;
  }
  Check(p->shard < map.shards().size(), "Place names a shard of the map");
  Check(key.FitsType(d.key_type()), "Place accepts only keys of the type");
  switch (d.strategy()) {
    case Strategy::kHash:
      Check(p->hash == HashKey(key), "a hash placement carries the key's hash");
      Check(p->slice && *p->slice < d.hash_slices().size() &&
                d.hash_slices()[*p->slice].Contains(*p->hash) &&
                d.hash_slices()[*p->slice].shard == p->shard,
            "Place picks the hash slice that holds the hash");
      break;
    case Strategy::kRange:
      Check(p->slice == RangeSliceScan(d, key) &&
                d.range_slices()[*p->slice].shard == p->shard,
            "Place picks the range slice that holds the key");
      break;
    case Strategy::kRegion:
      if (p->slice) {
        const Region& r = d.regions().at(*p->slice);
        Check(r.name == key.text(), "Place picks the key's region");
        bool member = false;
        for (ShardId id : r.shards) member |= id == p->shard;
        Check(member, "Place picks a shard of the region");
      } else {
        Check(d.default_shard() == p->shard, "unlisted regions go to default");
      }
      break;
  }
}

void CheckHash(const Distribution& d) {
  std::vector<uint64_t> hashes = {0, 1, std::numeric_limits<uint64_t>::max()};
  for (const HashSlice& s : d.hash_slices()) {
    hashes.push_back(s.lo);
    hashes.push_back(s.lo - 1);
    hashes.push_back(s.lo + 1);
    if (s.hi) hashes.push_back(*s.hi - 1);
  }
  for (uint64_t h : hashes) {
    const Placement p = d.PlaceHash(h);
    size_t owners = 0;
    for (const HashSlice& s : d.hash_slices()) owners += s.Contains(h);
    Check(owners == 1, "hash slices cover each hash exactly once");
    Check(p.slice && *p.slice < d.hash_slices().size() &&
              d.hash_slices()[*p.slice].Contains(h) &&
              d.hash_slices()[*p.slice].shard == p.shard,
          "PlaceHash picks the slice that holds the hash");
  }
}

// Brute force: the shards of the slices that hold a key in `range`.
std::set<ShardId> RangeScan(const Distribution& d, const KeyRange& range) {
  std::set<ShardId> out;
  std::optional<Key> low;
  if (range.lower) {
    low = range.lower->inclusive ? std::optional<Key>(range.lower->key)
                                 : Successor(range.lower->key, d.key_type());
    if (!low) return out;
  }
  for (const RangeSlice& s : d.range_slices()) {
    // The smallest key of the slice within the lower bound.
    Key first = s.from ? *s.from : MinKey(d.key_type());
    if (low && first < *low) first = *low;
    if (s.to && !(first < *s.to)) continue;
    if (range.upper && (range.upper->inclusive ? range.upper->key < first
                                               : !(first < range.upper->key))) {
      continue;
    }
    out.insert(s.shard);
  }
  return out;
}

void CheckRanges(const Distribution& d, const std::vector<Key>& keys) {
  if (d.strategy() != Strategy::kRange) {
    absl::StatusOr<std::vector<ShardId>> ids = d.ShardsForRange({});
    Check(!ids.ok() && ids.status().code() ==
                           absl::StatusCode::kFailedPrecondition,
          "only range distributions are searched by range");
    return;
  }
  std::vector<std::optional<KeyBound>> bounds = {std::nullopt};
  for (const Key& k : keys) {
    bounds.push_back(KeyBound{k, true});
    bounds.push_back(KeyBound{k, false});
  }
  // Every pair would be quadratic in the slices: pair each bound with a
  // few others.
  for (size_t i = 0; i < bounds.size(); ++i) {
    for (size_t j : {size_t{0}, i, (i * 7 + 3) % bounds.size(),
                     bounds.size() - 1 - i}) {
      const KeyRange range{bounds[i], bounds[j]};
      absl::StatusOr<std::vector<ShardId>> ids = d.ShardsForRange(range);
      const bool in_type =
          (!range.lower || range.lower->key.FitsType(d.key_type())) &&
          (!range.upper || range.upper->key.FitsType(d.key_type()));
      if (!ids.ok()) {
        Check(!in_type, "ShardsForRange fails only for a bound of another "
                        "type");
        continue;
      }
      Check(std::set<ShardId>(ids->begin(), ids->end()).size() == ids->size(),
            "ShardsForRange names each shard once");
      if (in_type) {
        Check(std::set<ShardId>(ids->begin(), ids->end()) == RangeScan(d, range),
              "ShardsForRange finds the shards of the slices in the range");
      }
    }
  }
}

void Exercise(const Config& config) {
  const ShardMap& map = config.map;
  if (config.catalog) (void)MaskDsnPassword(config.catalog->dsn);
  Check(!map.default_shard() || *map.default_shard() < map.shards().size(),
        "the default shard is a shard of the map");
  for (const Shard& shard : map.shards()) {
    (void)shard.MaskedDsn();
    Check(map.FindShard(shard.name).has_value(), "every shard is found");
  }
  for (const Distribution& d : map.distributions()) {
    Check(map.FindDistribution(d.name()) != nullptr,
          "every distribution is found");
    Check(!d.shards().empty(), "a distribution has owners");
    if (d.strategy() == Strategy::kHash) CheckHash(d);
    CheckRanges(d, SampleKeys(d));
  }
  for (const Table& table : map.tables()) {
    Check(map.FindTable(table.name) == &table, "every table is found");
    if (table.reference) {
      CheckPlace(map, table, Key::Integer(1), nullptr);
      continue;
    }
    const Distribution& d = map.DistributionOf(table);
    const std::vector<Key> keys = SampleKeys(d);
    const Key hash_keys[] = {Key::Integer(7), Key::Text("x")};
    for (const Key& key : keys) {
      CheckPlace(map, table, key, nullptr);
      if (d.hash_key_type()) {
        for (const Key& h : hash_keys) CheckPlace(map, table, key, &h);
      }
    }
  }
}

}  // namespace
}  // namespace shardkit

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardkit;
  const std::string text =
      fuzz::AmplifiedInput(data, size, kAmplifiedBytes, kAmplifiedBytes);
  const std::string_view toml = text;
  std::vector<ConfigProblem> problems;
  absl::StatusOr<Config> config =
      ParseConfig(toml, "fuzz.toml", &problems, &FakeEnv);
  for (const ConfigProblem& p : problems) (void)p.ToString();
  Check(config.ok() == problems.empty(), "problems are listed iff it fails");
  if (config.ok()) Exercise(*config);
  for (const std::string_view dsn : {toml, toml.substr(0, 200)}) {
    (void)MaskDsnPassword(dsn);  // any text, as a user may give it
  }
  return 0;
}
