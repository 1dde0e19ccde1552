#include "config/live_state.h"

#include <algorithm>
#include <sstream>
#include <utility>

#include <toml++/toml.h>

#include "absl/strings/str_join.h"
#include "common/strings.h"
#include "config/map_builder.h"

namespace shardkit::internal {

namespace {

absl::Status Invalid(std::string message) {
  return absl::InvalidArgumentError(
      StrCat("catalog live map: ", std::move(message)));
}

std::optional<std::string> StringAt(const toml::table& t, std::string_view k) {
  if (const toml::node* n = t.get(k); n != nullptr && n->is_string()) {
    return n->as_string()->get();
  }
  return std::nullopt;
}

std::vector<std::string> StringsAt(const toml::table& t, std::string_view k) {
  std::vector<std::string> out;
  if (const toml::array* a = t.get_as<toml::array>(k)) {
    for (const toml::node& n : *a) {
      if (n.is_string()) out.push_back(n.as_string()->get());
    }
  }
  return out;
}

toml::array ToArray(const std::vector<std::string>& v) {
  toml::array a;
  for (const std::string& s : v) a.push_back(s);
  return a;
}

}  // namespace

std::string HashBoundText(const std::optional<uint64_t>& hash) {
  return hash ? FormatHash(*hash) : std::string();
}

std::string HashLowerText(uint64_t lo) {
  return lo == 0 ? std::string() : FormatHash(lo);
}

std::string KeyBoundText(const std::optional<Key>& key) {
  return key ? key->ToString() : std::string();
}

absl::StatusOr<std::optional<uint64_t>> ParseHashBound(const std::string& text) {
  if (text.empty()) return std::optional<uint64_t>();
  absl::StatusOr<uint64_t> v = ParseHash(text);
  if (!v.ok()) return v.status();
  return std::optional<uint64_t>(*v);
}

absl::StatusOr<std::optional<Key>> ParseKeyBound(KeyType type,
                                                 const std::string& text) {
  if (text.empty()) return std::optional<Key>();
  absl::StatusOr<Key> key = Key::Parse(type, text);
  if (!key.ok()) return key.status();
  return std::optional<Key>(*std::move(key));
}

LiveState LiveStateOf(const ShardMap& map) {
  LiveState state;
  state.epoch = map.epoch();
  for (const Distribution& d : map.distributions()) {
    LiveState::Ownership& own = state.distributions[d.name()];
    for (const HashSlice& h : d.hash_slices()) {
      own.slices.push_back({HashLowerText(h.lo),
                            HashBoundText(h.hi), map.shard(h.shard).name});
    }
    for (const RangeSlice& r : d.range_slices()) {
      own.slices.push_back({KeyBoundText(r.from), KeyBoundText(r.to),
                            map.shard(r.shard).name});
    }
    for (const Region& r : d.regions()) {
      LiveState::RegionOwners owners{r.name, {}};
      for (ShardId id : r.shards) owners.shards.push_back(map.shard(id).name);
      own.regions.push_back(std::move(owners));
    }
    if (d.default_shard()) own.default_shard = map.shard(*d.default_shard()).name;
  }
  for (const MovingSlice& m : map.moves()) {
    const Distribution& d = map.distributions()[m.distribution];
    LiveState::Move move;
    move.id = m.move_id;
    move.distribution = d.name();
    if (d.strategy() == Strategy::kHash) {
      move.from = HashLowerText(m.hash_lo);
      move.to = HashBoundText(m.hash_hi);
    } else if (d.strategy() == Strategy::kRange) {
      move.from = KeyBoundText(m.from);
      move.to = KeyBoundText(m.to);
    } else {
      move.region = m.region;
    }
    move.source = map.shard(m.source).name;
    move.destination = map.shard(m.destination).name;
    move.phase = m.phase;
    move.server_hash = m.server_hash;
    state.moves.push_back(std::move(move));
  }
  return state;
}

std::string SerializeLiveState(const LiveState& state) {
  toml::table root;
  root.insert("epoch", static_cast<int64_t>(state.epoch));
  toml::table shards;
  for (const auto& [name, change] : state.shards) {
    toml::table t;
    t.insert("primary", change.primary);
    t.insert("retired", ToArray(change.retired));
    shards.insert(name, std::move(t));
  }
  root.insert("shards", std::move(shards));
  toml::table distributions;
  for (const auto& [name, own] : state.distributions) {
    toml::table t;
    toml::array slices;
    for (const LiveState::Slice& s : own.slices) {
      toml::table slice;
      if (!s.from.empty()) slice.insert("from", s.from);
      if (!s.to.empty()) slice.insert("to", s.to);
      slice.insert("shard", s.shard);
      slices.push_back(std::move(slice));
    }
    t.insert("slices", std::move(slices));
    toml::array regions;
    for (const LiveState::RegionOwners& r : own.regions) {
      toml::table region;
      region.insert("region", r.region);
      region.insert("shards", ToArray(r.shards));
      regions.push_back(std::move(region));
    }
    t.insert("regions", std::move(regions));
    if (own.default_shard) t.insert("default", *own.default_shard);
    distributions.insert(name, std::move(t));
  }
  root.insert("distributions", std::move(distributions));
  toml::array moves;
  for (const LiveState::Move& m : state.moves) {
    toml::table t;
    t.insert("id", static_cast<int64_t>(m.id));
    t.insert("distribution", m.distribution);
    if (!m.from.empty()) t.insert("from", m.from);
    if (!m.to.empty()) t.insert("to", m.to);
    if (!m.region.empty()) t.insert("region", m.region);
    t.insert("source", m.source);
    t.insert("destination", m.destination);
    t.insert("phase", std::string(MovePhaseName(m.phase)));
    if (m.server_hash) t.insert("server_hash", true);
    moves.push_back(std::move(t));
  }
  root.insert("moves", std::move(moves));
  std::ostringstream out;
  out << root;
  return out.str();
}

absl::StatusOr<LiveState> ParseLiveState(std::string_view text) {
  toml::table root;
  try {
    root = toml::parse(text);
  } catch (const toml::parse_error& e) {
    return Invalid(StrCat("not TOML: ", e.description()));
  }
  LiveState state;
  const std::optional<int64_t> epoch = root["epoch"].value<int64_t>();
  if (!epoch || *epoch < 1) return Invalid("no positive `epoch`");
  state.epoch = static_cast<uint64_t>(*epoch);
  if (const toml::table* shards = root.get_as<toml::table>("shards")) {
    for (const auto& [name, node] : *shards) {
      const toml::table* t = node.as_table();
      if (t == nullptr) return Invalid(StrCat("shards.", name.str(), " is not a table"));
      LiveState::ShardChange change;
      change.primary = StringAt(*t, "primary").value_or("primary");
      change.retired = StringsAt(*t, "retired");
      state.shards[std::string(name.str())] = std::move(change);
    }
  }
  if (const toml::table* ds = root.get_as<toml::table>("distributions")) {
    for (const auto& [name, node] : *ds) {
      const toml::table* t = node.as_table();
      if (t == nullptr) {
        return Invalid(StrCat("distributions.", name.str(), " is not a table"));
      }
      LiveState::Ownership own;
      if (const toml::array* slices = t->get_as<toml::array>("slices")) {
        for (const toml::node& n : *slices) {
          const toml::table* s = n.as_table();
          std::optional<std::string> shard =
              s != nullptr ? StringAt(*s, "shard") : std::nullopt;
          if (!shard) {
            return Invalid(StrCat("distributions.", name.str(),
                                  ": a slice without a shard"));
          }
          own.slices.push_back({StringAt(*s, "from").value_or(""),
                                StringAt(*s, "to").value_or(""), *shard});
        }
      }
      if (const toml::array* regions = t->get_as<toml::array>("regions")) {
        for (const toml::node& n : *regions) {
          const toml::table* r = n.as_table();
          std::optional<std::string> region =
              r != nullptr ? StringAt(*r, "region") : std::nullopt;
          if (!region) {
            return Invalid(StrCat("distributions.", name.str(),
                                  ": a region without a name"));
          }
          own.regions.push_back({*region, StringsAt(*r, "shards")});
        }
      }
      own.default_shard = StringAt(*t, "default");
      state.distributions[std::string(name.str())] = std::move(own);
    }
  }
  if (const toml::array* moves = root.get_as<toml::array>("moves")) {
    for (const toml::node& n : *moves) {
      const toml::table* t = n.as_table();
      if (t == nullptr) return Invalid("a move is not a table");
      LiveState::Move m;
      const std::optional<int64_t> id = (*t)["id"].value<int64_t>();
      std::optional<std::string> distribution = StringAt(*t, "distribution");
      std::optional<std::string> source = StringAt(*t, "source");
      std::optional<std::string> destination = StringAt(*t, "destination");
      std::optional<std::string> phase = StringAt(*t, "phase");
      if (!id || !distribution || !source || !destination || !phase) {
        return Invalid("a move needs id, distribution, source, destination "
                       "and phase");
      }
      m.id = static_cast<uint64_t>(*id);
      m.distribution = *distribution;
      m.from = StringAt(*t, "from").value_or("");
      m.to = StringAt(*t, "to").value_or("");
      m.region = StringAt(*t, "region").value_or("");
      m.source = *source;
      m.destination = *destination;
      if (const toml::node* h = t->get("server_hash")) {
        if (!h->is_boolean()) {
          return Invalid(StrCat("move ", m.id, ": server_hash is not true "
                                "or false"));
        }
        m.server_hash = h->as_boolean()->get();
      }
      if (*phase == MovePhaseName(MovePhase::kDualWrite)) {
        m.phase = MovePhase::kDualWrite;
      } else if (*phase == MovePhaseName(MovePhase::kCutOver)) {
        m.phase = MovePhase::kCutOver;
      } else {
        return Invalid(StrCat("move ", m.id, ": unknown phase '", *phase, "'"));
      }
      state.moves.push_back(std::move(m));
    }
  }
  return state;
}

absl::StatusOr<ShardMap> ApplyLiveState(const ShardMap& configured,
                                        const LiveState& state) {
  ShardMapSpec spec = ShardMapBuilder::SpecOf(configured);
  spec.epoch = state.epoch;
  std::vector<std::string> problems;
  auto problem = [&](std::string text) { problems.push_back(std::move(text)); };

  for (const auto& [name, change] : state.shards) {
    auto shard = std::find_if(spec.shards.begin(), spec.shards.end(),
                              [&](const ShardSpec& s) { return s.name == name; });
    if (shard == spec.shards.end()) {
      problem(StrCat("shard '", name, "' is not in the configuration"));
      continue;
    }
    auto retired = [&](const std::string& backend) {
      return std::find(change.retired.begin(), change.retired.end(),
                       backend) != change.retired.end();
    };
    std::vector<BackendSpec> replicas;
    std::optional<std::string> primary_dsn;
    if (change.primary == "primary") primary_dsn = shard->dsn;
    for (BackendSpec& b : shard->replicas) {
      if (b.name == change.primary) {
        primary_dsn = b.dsn;
      } else if (!retired(b.name)) {
        replicas.push_back(std::move(b));
      }
    }
    if (!primary_dsn) {
      problem(StrCat("shard '", name, "': its primary is backend '",
                     change.primary,
                     "', which the configuration does not list among its "
                     "replicas; add it to the shard's replicas"));
      continue;
    }
    if (change.primary != "primary" && !retired("primary")) {
      // The configured primary, no longer primary and not retired, would
      // be a replica only if it follows the new one: the catalog retires
      // it at failover, so this is a state someone wrote by hand.
      problem(StrCat("shard '", name, "': backend '", change.primary,
                     "' is its primary but the configured primary is not "
                     "retired"));
      continue;
    }
    shard->dsn = *primary_dsn;
    shard->replicas = std::move(replicas);
  }

  for (const auto& [name, own] : state.distributions) {
    auto d = std::find_if(
        spec.distributions.begin(), spec.distributions.end(),
        [&](const DistributionSpec& s) { return s.name == name; });
    if (d == spec.distributions.end()) {
      problem(StrCat("distribution '", name, "' is not in the configuration"));
      continue;
    }
    d->even_shards.reset();
    d->hash_slices.clear();
    d->range_slices.clear();
    d->regions.clear();
    d->default_shard.reset();
    const Distribution* configured_d = configured.FindDistribution(name);
    for (const LiveState::Slice& s : own.slices) {
      if (d->strategy == Strategy::kHash) {
        absl::StatusOr<std::optional<uint64_t>> lo = ParseHashBound(s.from);
        absl::StatusOr<std::optional<uint64_t>> hi = ParseHashBound(s.to);
        if (!lo.ok() || !hi.ok()) {
          problem(StrCat("distribution '", name, "': bad hash bound"));
          continue;
        }
        d->hash_slices.push_back(
            HashSliceSpec{lo->value_or(0), *hi, ShardRef{s.shard, {}}, {}});
      } else {
        absl::StatusOr<std::optional<Key>> from = ParseKeyBound(configured_d->key_type(), s.from);
        absl::StatusOr<std::optional<Key>> to = ParseKeyBound(configured_d->key_type(), s.to);
        if (!from.ok() || !to.ok()) {
          problem(StrCat("distribution '", name, "': bad range bound"));
          continue;
        }
        d->range_slices.push_back(
            RangeSliceSpec{*from, *to, ShardRef{s.shard, {}}, {}});
      }
    }
    for (const LiveState::RegionOwners& r : own.regions) {
      RegionSpec rs;
      rs.name = r.region;
      for (const std::string& s : r.shards) rs.shards.push_back({s, {}});
      d->regions.push_back(std::move(rs));
    }
    if (own.default_shard) d->default_shard = ShardRef{*own.default_shard, {}};
  }

  spec.moves.clear();
  for (const LiveState::Move& m : state.moves) {
    const Distribution* d = configured.FindDistribution(m.distribution);
    if (d == nullptr) {
      problem(StrCat("move ", m.id, ": distribution '", m.distribution,
                     "' is not in the configuration"));
      continue;
    }
    MoveSpec ms;
    ms.id = m.id;
    ms.distribution = m.distribution;
    ms.region = m.region;
    if (d->strategy() == Strategy::kHash) {
      absl::StatusOr<std::optional<uint64_t>> lo = ParseHashBound(m.from);
      absl::StatusOr<std::optional<uint64_t>> hi = ParseHashBound(m.to);
      if (!lo.ok() || !hi.ok()) {
        problem(StrCat("move ", m.id, ": bad hash bound"));
        continue;
      }
      ms.hash_lo = lo->value_or(0);
      ms.hash_hi = *hi;
    } else if (d->strategy() == Strategy::kRange) {
      absl::StatusOr<std::optional<Key>> from = ParseKeyBound(d->key_type(), m.from);
      absl::StatusOr<std::optional<Key>> to = ParseKeyBound(d->key_type(), m.to);
      if (!from.ok() || !to.ok()) {
        problem(StrCat("move ", m.id, ": bad range bound"));
        continue;
      }
      ms.from = *from;
      ms.to = *to;
    }
    ms.source = ShardRef{m.source, {}};
    ms.destination = ShardRef{m.destination, {}};
    ms.phase = m.phase;
    ms.server_hash = m.server_hash;
    spec.moves.push_back(std::move(ms));
  }

  std::optional<ShardMap> map;
  if (problems.empty()) {
    map = ShardMapBuilder::Build(
        spec, [&](SourcePos, std::string message) { problem(std::move(message)); });
  }
  if (!problems.empty() || !map) {
    return absl::FailedPreconditionError(StrCat(
        "the catalog's live map (epoch ", state.epoch,
        ") does not fit this configuration: ", absl::StrJoin(problems, "; "),
        "; every process must use the configuration the catalog was "
        "written with (shards and replicas are added to the file first)"));
  }
  return *std::move(map);
}

}  // namespace shardkit::internal
