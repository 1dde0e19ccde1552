// shardctl map show: the shard map as an operator reads it.

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "config/live_state.h"
#include "router/catalog.h"

namespace shardkit::cli {
namespace {

struct MapArgs {
  std::string config;
  Format format = Format::kTable;
  bool configured = false;
};

// "FROM:TO" of a move under way (bounds as the live state writes them), or
// its region.
std::string MoveSliceText(const internal::LiveState::Move& m) {
  if (!m.region.empty()) return absl::StrCat("region ", m.region);
  return absl::StrCat(m.from, ":", m.to);
}

// Share of the 64-bit hash space, in percent.
double HashShare(const HashSlice& s) {
  const long double width =
      (s.hi ? static_cast<long double>(*s.hi) : 18446744073709551616.0L) -
      static_cast<long double>(s.lo);
  return static_cast<double>(width / 18446744073709551616.0L * 100.0L);
}

std::string ShardList(const ShardMap& map, const std::vector<ShardId>& ids) {
  std::vector<std::string> names;
  for (ShardId id : ids) names.push_back(map.shard(id).name);
  return absl::StrJoin(names, ", ");
}

void JsonBound(JsonWriter& json, const std::optional<Key>& key) {
  if (!key) {
    json.Null();
  } else if (key->kind() == Key::Kind::kInteger) {
    json.Int(key->integer());
  } else {
    json.String(key->ToString());
  }
}

void PrintJson(const Config& config, bool live, std::ostream& out) {
  const ShardMap& map = config.map;
  JsonWriter json;
  json.BeginObject().Key("source").String(config.source);
  json.Key("epoch").Int(static_cast<int64_t>(map.epoch()));
  json.Key("live").Bool(live);
  json.Key("moves").BeginArray();
  for (const internal::LiveState::Move& m : internal::LiveStateOf(map).moves) {
    json.BeginObject()
        .Key("id").Int(static_cast<int64_t>(m.id))
        .Key("distribution").String(m.distribution)
        .Key("slice").String(MoveSliceText(m))
        .Key("source").String(m.source)
        .Key("destination").String(m.destination)
        .Key("phase").String(MovePhaseName(m.phase))
        .EndObject();
  }
  json.EndArray();
  json.Key("catalog");
  if (config.catalog) {
    json.String(MaskDsnPassword(config.catalog->dsn));
  } else {
    json.Null();
  }
  json.Key("shards").BeginArray();
  for (const Shard& s : map.shards()) {
    json.BeginObject().Key("name").String(s.name).Key("dsn").String(
        s.MaskedDsn());
    json.Key("replicas").BeginArray();
    for (const Backend& r : s.replicas) {
      json.BeginObject()
          .Key("name").String(r.name)
          .Key("dsn").String(r.MaskedDsn())
          .Key("weight").Int(r.weight)
          .EndObject();
    }
    json.EndArray();
    json.EndObject();
  }
  json.EndArray().Key("distributions").BeginArray();
  for (const Distribution& d : map.distributions()) {
    json.BeginObject()
        .Key("name").String(d.name())
        .Key("strategy").String(StrategyName(d.strategy()))
        .Key("key_type").String(KeyTypeName(d.key_type()));
    if (d.strategy() == Strategy::kRegion) {
      json.Key("hash_key_type");
      if (d.hash_key_type()) {
        json.String(KeyTypeName(*d.hash_key_type()));
      } else {
        json.Null();
      }
      json.Key("regions").BeginArray();
      for (const Region& r : d.regions()) {
        json.BeginObject().Key("name").String(r.name).Key("shards").BeginArray();
        for (ShardId id : r.shards) json.String(map.shard(id).name);
        json.EndArray().EndObject();
      }
      json.EndArray().Key("default");
      if (d.default_shard()) {
        json.String(map.shard(*d.default_shard()).name);
      } else {
        json.Null();
      }
    } else {
      json.Key("slices").BeginArray();
      for (const HashSlice& s : d.hash_slices()) {
        json.BeginObject().Key("from").String(FormatHash(s.lo)).Key("to");
        if (s.hi) {
          json.String(FormatHash(*s.hi));
        } else {
          json.Null();
        }
        json.Key("shard").String(map.shard(s.shard).name).EndObject();
      }
      for (const RangeSlice& s : d.range_slices()) {
        json.BeginObject().Key("from");
        JsonBound(json, s.from);
        json.Key("to");
        JsonBound(json, s.to);
        json.Key("shard").String(map.shard(s.shard).name).EndObject();
      }
      json.EndArray();
    }
    json.EndObject();
  }
  json.EndArray().Key("tables").BeginArray();
  for (const Table& t : map.tables()) {
    json.BeginObject().Key("name").String(t.name).Key("reference").Bool(
        t.reference);
    if (!t.reference) {
      json.Key("distribution").String(map.DistributionOf(t).name());
      json.Key("key").String(t.key_column);
      if (!t.hash_key_column.empty()) {
        json.Key("hash_key").String(t.hash_key_column);
      }
    }
    json.EndObject();
  }
  json.EndArray().EndObject();
  out << json.str() << "\n";
}

void PrintDistribution(const ShardMap& map, const Distribution& d,
                       std::ostream& out) {
  out << "\nDistribution " << d.name() << ": " << StrategyName(d.strategy())
      << " on " << KeyTypeName(d.key_type());
  std::vector<std::vector<std::string>> rows;
  switch (d.strategy()) {
    case Strategy::kHash:
      out << ", " << d.hash_slices().size() << " slices of the XXH3 hash\n";
      for (const HashSlice& s : d.hash_slices()) {
        rows.push_back({FormatHash(s.lo), s.hi ? FormatHash(*s.hi) : "end",
                        absl::StrFormat("%.2f%%", HashShare(s)),
                        map.shard(s.shard).name});
      }
      PrintTable(out, {"from", "to", "share", "shard"}, rows);
      break;
    case Strategy::kRange:
      out << ", " << d.range_slices().size() << " slices\n";
      for (const RangeSlice& s : d.range_slices()) {
        rows.push_back({s.from ? s.from->ToString() : "start",
                        s.to ? s.to->ToString() : "end",
                        map.shard(s.shard).name});
      }
      PrintTable(out, {"from", "to", "shard"}, rows);
      break;
    case Strategy::kRegion:
      out << ", " << d.regions().size() << " regions\n";
      for (const Region& r : d.regions()) {
        std::string shards = ShardList(map, r.shards);
        if (r.shards.size() > 1) {
          shards += " (even slices of the hash of the " +
                    std::string(KeyTypeName(*d.hash_key_type())) +
                    " hash key)";
        }
        rows.push_back({r.name, shards});
      }
      if (d.default_shard()) {
        rows.push_back({"(any other)", map.shard(*d.default_shard()).name});
      }
      PrintTable(out, {"region", "shards"}, rows);
      break;
  }
}

void PrintText(const Config& config, bool live, std::ostream& out) {
  const ShardMap& map = config.map;
  if (live) {
    out << "Live shard map from the catalog (epoch " << map.epoch()
        << "), over " << config.source << "\n";
  } else {
    out << "Shard map from " << config.source << " (epoch " << map.epoch()
        << ")\n";
  }
  out << "Catalog: "
      << (config.catalog ? MaskDsnPassword(config.catalog->dsn)
                         : "none (this file is the map)")
      << "\n\nShards\n";
  std::vector<std::vector<std::string>> rows;
  bool any_replica = false;
  for (const Shard& s : map.shards()) any_replica |= !s.replicas.empty();
  if (!any_replica) {
    for (const Shard& s : map.shards()) rows.push_back({s.name, s.MaskedDsn()});
    PrintTable(out, {"name", "dsn"}, rows);
  } else {
    for (const Shard& s : map.shards()) {
      rows.push_back({s.name, "primary", "", s.MaskedDsn()});
      for (const Backend& r : s.replicas) {
        rows.push_back({"", r.name, std::to_string(r.weight), r.MaskedDsn()});
      }
    }
    PrintTable(out, {"name", "backend", "weight", "dsn"}, rows);
  }
  for (const Distribution& d : map.distributions()) {
    PrintDistribution(map, d, out);
  }
  if (!map.moves().empty()) {
    out << "\nMoves under way (`shardctl moves status ID`)\n";
    rows.clear();
    for (const internal::LiveState::Move& m :
         internal::LiveStateOf(map).moves) {
      rows.push_back({std::to_string(m.id), m.distribution, MoveSliceText(m),
                      m.source, m.destination,
                      std::string(MovePhaseName(m.phase))});
    }
    PrintTable(out, {"id", "distribution", "slice", "from", "to", "phase"},
               rows);
  }
  out << "\nTables\n";
  rows.clear();
  for (const Table& t : map.tables()) {
    if (t.reference) {
      rows.push_back({t.name, "(reference: on every shard)", "", ""});
    } else {
      rows.push_back({t.name, map.DistributionOf(t).name(), t.key_column,
                      t.hash_key_column});
    }
  }
  PrintTable(out, {"table", "distribution", "key", "hash_key"}, rows);
}

}  // namespace

void RegisterMap(CLI::App& app, CommandContext& ctx) {
  CLI::App* map = app.add_subcommand("map", "Inspect the shard map.");
  map->require_subcommand(1);
  auto args = std::make_shared<MapArgs>();
  CLI::App* show = map->add_subcommand(
      "show",
      "Print the shards and their replicas (passwords masked), each "
      "distribution's slices and "
      "their owners, and the tables with their distribution and key column.");
  AddConfigOption(show, &args->config);
  AddFormatOption(show, &args->format);
  show->add_flag("--configured", args->configured,
                 "Show the configuration file's map, not the live map in "
                 "the [catalog]");
  show->footer(
      "With a [catalog], shows the live map kept there (slices moved, "
      "primaries failed over, moves under way: what every program using the "
      "cluster routes by); if the catalog cannot be read, says so on stderr "
      "and shows the file's map. --configured shows the file's map only.");
  show->callback([args, &ctx] {
    std::optional<Config> config = LoadConfigOrFail(ctx, args->config);
    if (!config) return;
    bool live = false;
    if (config->catalog && !args->configured) {
      internal::ExecOptions exec;
      exec.connect_timeout = config->timeouts.connect;
      exec.statement_timeout = config->timeouts.statement;
      internal::Catalog catalog(*config->catalog, exec);
      absl::StatusOr<std::optional<internal::LiveState>> latest =
          catalog.Latest();
      absl::Status problem = latest.status();
      if (latest.ok() && latest->has_value()) {
        absl::StatusOr<ShardMap> applied =
            internal::ApplyLiveState(config->map, **latest);
        problem = applied.status();
        if (applied.ok()) {
          config->map = *std::move(applied);
          live = true;
        }
      }
      if (!problem.ok()) {
        *ctx.err << "shardctl: warning: cannot read the live map from the "
                    "catalog ("
                 << problem.message() << "); showing the map of "
                 << config->source
                 << ", which moves and failovers may have changed "
                    "(--configured shows it without asking the catalog)\n";
      }
    }
    if (args->format == Format::kJson) {
      PrintJson(*config, live, *ctx.out);
    } else {
      PrintText(*config, live, *ctx.out);
    }
  });
}

}  // namespace shardkit::cli
