#include "config/map_builder.h"

#include "config/dsn.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "absl/strings/str_join.h"

namespace shardkit::internal {
namespace {

std::string SliceText(const HashSliceSpec& s) {
  return StrCat("[", FormatHash(s.lo), ", ",
                      s.hi ? FormatHash(*s.hi) : std::string("end"), ")");
}

std::string BoundText(const std::optional<Key>& k, std::string_view open) {
  return k ? StrCat("'", k->ToString(), "'") : std::string(open);
}

std::string SliceText(const RangeSliceSpec& s) {
  return StrCat("[", BoundText(s.from, "start"), ", ",
                      BoundText(s.to, "end"), ")");
}

// host/port/dbname as libpq resolves them, to spot two shards that are one
// database. Empty if the string does not parse (reported elsewhere).
std::string DatabaseIdentity(const std::string& dsn) {
  absl::StatusOr<ConnInfo> info = ParseConnInfo(dsn);
  if (!info.ok()) return "";
  std::string host, hostaddr, port = "5432", dbname, user;
  for (const auto& [keyword, value] : *info) {
    if (keyword == "host") host = value;
    if (keyword == "hostaddr") hostaddr = value;
    if (keyword == "port") port = value;
    if (keyword == "dbname") dbname = value;
    if (keyword == "user") user = value;
  }
  if (host.empty() && hostaddr.empty()) return "";  // environment decides
  if (host == "localhost") host = "127.0.0.1";
  if (dbname.empty()) dbname = user;
  return StrCat(hostaddr.empty() ? host : hostaddr, ":", port, "/", dbname);
}

}  // namespace

uint64_t ShardMapBuilder::EvenSliceLo(uint64_t i, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(i) << 64) / n);
}

size_t ShardMapBuilder::EvenSliceOf(uint64_t hash, uint64_t n) {
  // floor(hash * n / 2^64) can be one short of the slice at a boundary
  // (slice bounds are rounded down), never more.
  uint64_t j = static_cast<uint64_t>(
      (static_cast<unsigned __int128>(hash) * n) >> 64);
  if (j + 1 < n && hash >= EvenSliceLo(j + 1, n)) ++j;
  return static_cast<size_t>(j);
}

class ShardMapBuilder::Impl {
 public:
  Impl(const ShardMapSpec& spec, const ProblemReporter& report)
      : spec_(spec), report_(report) {}

  std::optional<ShardMap> Build() {
    map_.epoch_ = spec_.epoch;
    BuildShards();
    for (const DistributionSpec& d : spec_.distributions) BuildDistribution(d);
    for (const TableSpec& t : spec_.tables) BuildTable(t);
    for (const MoveSpec& m : spec_.moves) BuildMove(m);
    if (spec_.default_shard) {
      map_.default_shard_ = ResolveShard(*spec_.default_shard, "router.default_shard");
    }
    if (failed_) return std::nullopt;
    return std::move(map_);
  }

 private:
  void Report(SourcePos pos, std::string message) {
    failed_ = true;
    report_(pos, std::move(message));
  }

  // Which backend first claimed a database (host:port/dbname).
  struct IdentityOwner {
    std::string shard;
    std::string replica;  // empty for the shard's primary
  };

  static std::string Describe(const IdentityOwner& owner) {
    if (owner.replica.empty()) {
      return StrCat("the primary of shard '", owner.shard, "'");
    }
    return StrCat("replica '", owner.replica, "' of shard '", owner.shard, "'");
  }

  void BuildShards() {
    std::map<std::string, IdentityOwner> identity_owner;
    // Primaries first, so that a replica that repeats a primary listed
    // after it is reported at the replica, whose mistake it most likely is.
    for (const ShardSpec& s : spec_.shards) {
      const ShardId id = static_cast<ShardId>(map_.shards_.size());
      map_.shards_.push_back(Shard{s.name, s.dsn, {}, s.replica_settings});
      map_.shard_index_[s.name] = id;
      const std::string identity = DatabaseIdentity(s.dsn);
      if (identity.empty()) continue;
      auto [it, inserted] =
          identity_owner.emplace(identity, IdentityOwner{s.name, ""});
      if (!inserted) {
        Report(s.pos,
               StrCat("shards.", s.name, ".dsn: shards '", it->second.shard,
                      "' and '", s.name, "' are the same database (", identity,
                      "); each shard needs its own database"));
      }
    }
    for (size_t id = 0; id < spec_.shards.size(); ++id) {
      const ShardSpec& s = spec_.shards[id];
      std::map<std::string, SourcePos> names;
      for (size_t i = 0; i < s.replicas.size(); ++i) {
        const BackendSpec& r = s.replicas[i];
        const std::string path =
            StrCat("shards.", s.name, ".replicas[", i, "]");
        if (auto [it, inserted] = names.emplace(r.name, r.name_pos);
            !inserted) {
          Report(r.name_pos.line > 0 ? r.name_pos : r.pos,
                 StrCat(path, ".name: shard '", s.name,
                        "' already has a replica named '", r.name, "' (line ",
                        it->second.line, "); give each replica its own name"));
        }
        map_.shards_[id].replicas.push_back(Backend{r.name, r.dsn, r.weight});
        const std::string identity = DatabaseIdentity(r.dsn);
        if (identity.empty()) continue;
        auto [it, inserted] =
            identity_owner.emplace(identity, IdentityOwner{s.name, r.name});
        if (inserted) continue;
        if (it->second.shard == s.name && it->second.replica.empty()) {
          Report(r.pos,
                 StrCat(path, ".dsn: the replica is the shard's own primary (",
                        identity,
                        "); a replica is another server, streaming "
                        "from the primary"));
        } else {
          Report(r.pos, StrCat(path, ".dsn: the same database (", identity,
                               ") as ", Describe(it->second),
                               "; each backend needs its own server"));
        }
      }
    }
  }

  std::optional<ShardId> ResolveShard(const ShardRef& ref,
                                      std::string_view where) {
    if (auto id = map_.FindShard(ref.name)) return id;
    std::vector<std::string> names;
    for (const Shard& s : map_.shards_) names.push_back(s.name);
    Report(ref.pos, StrCat(where, ": unknown shard '", ref.name,
                                 "' (defined shards: ",
                                 names.empty() ? "none" : absl::StrJoin(names, ", "),
                                 ")"));
    return std::nullopt;
  }

  void BuildDistribution(const DistributionSpec& spec) {
    Distribution d;
    d.name_ = spec.name;
    d.strategy_ = spec.strategy;
    d.key_type_ = spec.key_type;
    d.hash_key_type_ = spec.hash_key_type;
    const std::string path = StrCat("distributions.", spec.name);
    bool ok = true;
    switch (spec.strategy) {
      case Strategy::kHash:
        ok = BuildHash(spec, path, d);
        break;
      case Strategy::kRange:
        ok = BuildRange(spec, path, d);
        break;
      case Strategy::kRegion:
        ok = BuildRegion(spec, path, d);
        break;
    }
    if (!ok) d = Distribution();  // keep indices stable for tables
    std::set<ShardId> owners;
    for (const auto& s : d.hash_slices_) owners.insert(s.shard);
    for (const auto& s : d.range_slices_) owners.insert(s.shard);
    for (const auto& r : d.regions_) owners.insert(r.shards.begin(), r.shards.end());
    if (d.default_shard_) owners.insert(*d.default_shard_);
    d.owners_.assign(owners.begin(), owners.end());
    d.name_ = spec.name;
    map_.distribution_index_[spec.name] = map_.distributions_.size();
    map_.distributions_.push_back(std::move(d));
  }

  bool BuildHash(const DistributionSpec& spec, const std::string& path,
                 Distribution& d) {
    std::vector<HashSliceSpec> slices = spec.hash_slices;
    if (spec.even_shards) {
      const auto& refs = *spec.even_shards;
      if (refs.empty()) {
        Report(spec.even_shards_pos,
               StrCat(path, ".shards: the list is empty; name at least "
                                  "one shard"));
        return false;
      }
      std::set<std::string> seen;
      for (const ShardRef& r : refs) {
        if (!seen.insert(r.name).second) {
          Report(r.pos, StrCat(path, ".shards: shard '", r.name,
                                     "' is listed twice; each shard takes one "
                                     "even slice"));
        }
      }
      const uint64_t n = refs.size();
      for (uint64_t i = 0; i < n; ++i) {
        HashSliceSpec s;
        s.lo = EvenSliceLo(i, n);
        if (i + 1 < n) s.hi = EvenSliceLo(i + 1, n);
        s.shard = refs[i];
        s.pos = refs[i].pos;
        slices.push_back(s);
      }
    }
    bool ok = true;
    for (size_t i = 0; i < slices.size(); ++i) {
      const HashSliceSpec& s = slices[i];
      if (s.hi && *s.hi <= s.lo) {
        Report(s.pos, StrCat(path, ".slices[", i, "]: slice ",
                                   SliceText(s),
                                   " is empty: `to` must be above `from`"));
        ok = false;
      }
    }
    if (slices.empty()) {
      Report(spec.pos, StrCat(path, ": no slices; give `shards` or `slices`"));
      return false;
    }
    std::stable_sort(slices.begin(), slices.end(),
                     [](const HashSliceSpec& a, const HashSliceSpec& b) {
                       return a.lo < b.lo;
                     });
    if (!slices.empty() && slices.front().lo != 0) {
      Report(slices.front().pos,
             StrCat(path, ".slices: hash values [0x0000000000000000, ",
                          FormatHash(slices.front().lo),
                          ") are not covered by any slice"));
      ok = false;
    }
    for (size_t i = 1; i < slices.size(); ++i) {
      const HashSliceSpec& prev = slices[i - 1];
      const HashSliceSpec& cur = slices[i];
      if (!prev.hi || cur.lo < *prev.hi) {
        Report(cur.pos, StrCat(path, ".slices: slice ", SliceText(cur),
                                     " overlaps slice ", SliceText(prev),
                                     " (line ", prev.pos.line, ")"));
        ok = false;
      } else if (cur.lo > *prev.hi) {
        Report(cur.pos, StrCat(path, ".slices: hash values [",
                                     FormatHash(*prev.hi), ", ",
                                     FormatHash(cur.lo),
                                     ") are not covered by any slice"));
        ok = false;
      }
    }
    if (!slices.empty() && slices.back().hi) {
      Report(slices.back().pos,
             StrCat(path, ".slices: hash values [",
                          FormatHash(*slices.back().hi),
                          ", end) are not covered by any slice; omit `to` on "
                          "the last slice to reach the end"));
      ok = false;
    }
    for (const HashSliceSpec& s : slices) {
      auto id = ResolveShard(s.shard, path);
      if (!id) {
        ok = false;
        continue;
      }
      d.hash_slices_.push_back(HashSlice{s.lo, s.hi, *id});
      d.hash_lo_.push_back(s.lo);
    }
    if (ok) BuildHashRadix(d);
    return ok;
  }

  // About two radix buckets per slice, at most 2^16 of them.
  static void BuildHashRadix(Distribution& d) {
    int bits = 1;
    while (bits < 16 && (uint64_t{1} << bits) < 2 * d.hash_lo_.size()) ++bits;
    d.hash_radix_shift_ = 64 - bits;
    const uint64_t buckets = uint64_t{1} << bits;
    d.hash_radix_.assign(buckets + 1, 0);
    size_t slice = 0;
    for (uint64_t b = 0; b < buckets; ++b) {
      const uint64_t first_hash = b << d.hash_radix_shift_;
      while (slice + 1 < d.hash_lo_.size() && d.hash_lo_[slice + 1] <= first_hash) {
        ++slice;
      }
      d.hash_radix_[b] = static_cast<uint32_t>(slice);
    }
    d.hash_radix_[buckets] = static_cast<uint32_t>(d.hash_lo_.size() - 1);
  }

  bool BuildRange(const DistributionSpec& spec, const std::string& path,
                  Distribution& d) {
    std::vector<RangeSliceSpec> slices = spec.range_slices;
    bool ok = true;
    for (size_t i = 0; i < slices.size(); ++i) {
      const RangeSliceSpec& s = slices[i];
      if (s.from && s.to && !(*s.from < *s.to)) {
        Report(s.pos, StrCat(path, ".slices[", i, "]: slice ",
                                   SliceText(s),
                                   " is empty: `to` must be above `from`"));
        ok = false;
      }
    }
    // Open `from` sorts first.
    std::stable_sort(slices.begin(), slices.end(),
                     [](const RangeSliceSpec& a, const RangeSliceSpec& b) {
                       if (!a.from || !b.from) return !a.from && b.from;
                       return *a.from < *b.from;
                     });
    if (slices.empty()) {
      Report(spec.pos, StrCat(path, ": no slices; give at least one"));
      return false;
    }
    const RangeSliceSpec& first = slices.front();
    if (first.from && !(*first.from == MinKey(spec.key_type))) {
      Report(first.pos,
             StrCat(path, ".slices: keys below '", first.from->ToString(),
                          "' are not covered by any slice; omit `from` on the "
                          "first slice to start at the smallest key"));
      ok = false;
    }
    for (size_t i = 1; i < slices.size(); ++i) {
      const RangeSliceSpec& prev = slices[i - 1];
      const RangeSliceSpec& cur = slices[i];
      if (!prev.to || !cur.from || *cur.from < *prev.to) {
        Report(cur.pos, StrCat(path, ".slices: slice ", SliceText(cur),
                                     " overlaps slice ", SliceText(prev),
                                     " (line ", prev.pos.line, ")"));
        ok = false;
      } else if (*prev.to < *cur.from) {
        Report(cur.pos, StrCat(path, ".slices: keys [",
                                     BoundText(prev.to, ""), ", ",
                                     BoundText(cur.from, ""),
                                     ") are not covered by any slice"));
        ok = false;
      }
    }
    if (slices.back().to) {
      Report(slices.back().pos,
             StrCat(path, ".slices: keys from '",
                          slices.back().to->ToString(),
                          "' up are not covered by any slice; omit `to` on "
                          "the last slice to reach the largest key"));
      ok = false;
    }
    for (size_t i = 0; i < slices.size(); ++i) {
      const RangeSliceSpec& s = slices[i];
      auto id = ResolveShard(s.shard, path);
      if (!id) {
        ok = false;
        continue;
      }
      d.range_slices_.push_back(RangeSlice{s.from, s.to, *id});
      if (i == 0 || !s.from) continue;
      if (s.from->kind() == Key::Kind::kInteger) {
        d.range_int_from_.push_back(s.from->integer());
      } else if (s.from->kind() == Key::Kind::kText) {
        d.range_bytes_from_.push_back(s.from->text());
      } else {
        d.range_bytes_from_.emplace_back(
            reinterpret_cast<const char*>(s.from->uuid().data()), 16);
      }
    }
    return ok;
  }

  bool BuildRegion(const DistributionSpec& spec, const std::string& path,
                   Distribution& d) {
    bool ok = true;
    bool spread = false;
    for (const RegionSpec& r : spec.regions) {
      Region region{r.name, {}};
      std::set<std::string> seen;
      for (const ShardRef& ref : r.shards) {
        if (!seen.insert(ref.name).second) {
          Report(ref.pos, StrCat(path, ".regions.", r.name, ": shard '",
                                       ref.name, "' is listed twice"));
          ok = false;
        }
        auto id = ResolveShard(ref, StrCat(path, ".regions.", r.name));
        if (!id) {
          ok = false;
          continue;
        }
        region.shards.push_back(*id);
      }
      if (r.shards.empty()) {
        Report(r.pos, StrCat(path, ".regions.", r.name,
                                   ": the list is empty; name at least one "
                                   "shard"));
        ok = false;
      }
      spread |= r.shards.size() > 1;
      d.region_index_[r.name] = d.regions_.size();
      d.regions_.push_back(std::move(region));
    }
    if (spread && !spec.hash_key_type) {
      Report(spec.pos,
             StrCat(path, ": a region is spread over several shards, so "
                                "set `hash_key_type` (the type of the column "
                                "that spreads it, e.g. \"int8\") and give each "
                                "table a `hash_key`"));
      ok = false;
    }
    if (spec.regions.empty() && !spec.default_shard) {
      Report(spec.pos, StrCat(path, ": no regions and no default: every key "
                                    "would be refused; list regions, or set "
                                    "`default`"));
      ok = false;
    }
    if (spec.default_shard) {
      auto id = ResolveShard(*spec.default_shard, StrCat(path, ".default"));
      if (!id) return false;
      d.default_shard_ = *id;
    }
    return ok;
  }

  void BuildMove(const MoveSpec& spec) {
    const std::string path = StrCat("moves[", spec.id, "]");
    const Distribution* d = map_.FindDistribution(spec.distribution);
    if (d == nullptr) {
      Report({}, StrCat(path, ": unknown distribution '", spec.distribution,
                        "'"));
      return;
    }
    MovingSlice m;
    m.move_id = spec.id;
    m.distribution = map_.distribution_index_[spec.distribution];
    m.hash_lo = spec.hash_lo;
    m.hash_hi = spec.hash_hi;
    m.from = spec.from;
    m.to = spec.to;
    m.region = spec.region;
    m.phase = spec.phase;
    m.server_hash = spec.server_hash;
    std::optional<ShardId> source = ResolveShard(spec.source, path);
    std::optional<ShardId> destination =
        ResolveShard(spec.destination, path);
    if (!source || !destination) return;
    if (*source == *destination) {
      Report({}, StrCat(path, ": source and destination are both shard '",
                        spec.source.name, "'"));
      return;
    }
    m.source = *source;
    m.destination = *destination;
    map_.moves_.push_back(std::move(m));
  }

  void BuildTable(const TableSpec& spec) {
    const std::string path = StrCat("tables.", spec.name);
    Table t;
    t.name = spec.name;
    t.reference = spec.reference;
    t.key_column = spec.key;
    t.hash_key_column = spec.hash_key;
    if (!spec.reference && !spec.distribution) {
      Report(spec.pos, StrCat(path, ": a sharded table needs a `distribution`"));
      return;
    }
    if (!spec.reference) {
      const DistributionSpec* dist = nullptr;
      for (const DistributionSpec& d : spec_.distributions) {
        if (d.name == spec.distribution->name) dist = &d;
      }
      if (dist == nullptr) {
        std::vector<std::string> names;
        for (const DistributionSpec& d : spec_.distributions) names.push_back(d.name);
        Report(spec.distribution->pos,
               StrCat(path, ".distribution: unknown distribution '",
                            spec.distribution->name, "' (defined: ",
                            names.empty() ? "none" : absl::StrJoin(names, ", "),
                            ")"));
        return;
      }
      t.distribution = map_.distribution_index_.at(dist->name);
      if (dist->hash_key_type && spec.hash_key.empty()) {
        Report(spec.pos,
               StrCat(path, ": distribution '", dist->name,
                            "' spreads regions by a hash key: set `hash_key` "
                            "to the column that holds it"));
      } else if (!dist->hash_key_type && !spec.hash_key.empty()) {
        Report(spec.hash_key_pos,
               StrCat(path, ".hash_key: distribution '", dist->name,
                            "' has no `hash_key_type`; `hash_key` is only for "
                            "region distributions that spread a region over "
                            "several shards"));
      }
    }
    map_.table_index_[t.name] = map_.tables_.size();
    map_.tables_.push_back(std::move(t));
  }

  const ShardMapSpec& spec_;
  const ProblemReporter& report_;
  ShardMap map_;
  bool failed_ = false;
};

ShardMapSpec ShardMapBuilder::SpecOf(const ShardMap& map) {
  ShardMapSpec spec;
  spec.epoch = map.epoch();
  auto ref = [&](ShardId id) { return ShardRef{map.shard(id).name, {}}; };
  for (const Shard& shard : map.shards()) {
    ShardSpec s;
    s.name = shard.name;
    s.dsn = shard.dsn;
    s.replica_settings = shard.replica_settings;
    for (const Backend& b : shard.replicas) {
      s.replicas.push_back(BackendSpec{b.name, {}, b.dsn, {}, b.weight});
    }
    spec.shards.push_back(std::move(s));
  }
  if (map.default_shard()) spec.default_shard = ref(*map.default_shard());
  for (const Distribution& d : map.distributions()) {
    DistributionSpec ds;
    ds.name = d.name();
    ds.strategy = d.strategy();
    ds.key_type = d.key_type();
    ds.hash_key_type = d.hash_key_type();
    for (const HashSlice& h : d.hash_slices()) {
      ds.hash_slices.push_back(HashSliceSpec{h.lo, h.hi, ref(h.shard), {}});
    }
    for (const RangeSlice& r : d.range_slices()) {
      ds.range_slices.push_back(RangeSliceSpec{r.from, r.to, ref(r.shard), {}});
    }
    for (const Region& r : d.regions()) {
      RegionSpec rs;
      rs.name = r.name;
      for (ShardId id : r.shards) rs.shards.push_back(ref(id));
      ds.regions.push_back(std::move(rs));
    }
    if (d.default_shard()) ds.default_shard = ref(*d.default_shard());
    spec.distributions.push_back(std::move(ds));
  }
  for (const Table& t : map.tables()) {
    TableSpec ts;
    ts.name = t.name;
    ts.reference = t.reference;
    if (!t.reference) {
      ts.distribution = ShardRef{map.distributions()[t.distribution].name(), {}};
      ts.key = t.key_column;
      ts.hash_key = t.hash_key_column;
    }
    spec.tables.push_back(std::move(ts));
  }
  for (const MovingSlice& m : map.moves()) {
    MoveSpec ms;
    ms.id = m.move_id;
    ms.distribution = map.distributions()[m.distribution].name();
    ms.hash_lo = m.hash_lo;
    ms.hash_hi = m.hash_hi;
    ms.from = m.from;
    ms.to = m.to;
    ms.region = m.region;
    ms.source = ref(m.source);
    ms.destination = ref(m.destination);
    ms.phase = m.phase;
    ms.server_hash = m.server_hash;
    spec.moves.push_back(std::move(ms));
  }
  return spec;
}

std::optional<ShardMap> ShardMapBuilder::Build(const ShardMapSpec& spec,
                                               const ProblemReporter& report) {
  return Impl(spec, report).Build();
}

}  // namespace shardkit::internal
