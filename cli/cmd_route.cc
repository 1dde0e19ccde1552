// shardctl route: which shard owns a key of a table.

#include "cli/commands.h"

namespace shardkit::cli {
namespace {

struct RouteArgs {
  std::string config;
  std::string table;
  std::vector<std::string> keys;
  std::string hash_key;
  Format format = Format::kTable;
};

// Prints where `key_text` lives; false (after Fail) on an error.
bool RouteOne(const RouteArgs& args, const ShardMap& map,
              const std::string& key_text, CommandContext& ctx);

void RunRoute(const RouteArgs& args, CommandContext& ctx) {
  std::optional<Config> config = LoadConfigOrFail(ctx, args.config);
  if (!config) return;
  for (const std::string& key : args.keys) {
    if (!RouteOne(args, config->map, key, ctx)) return;
  }
}

bool RouteOne(const RouteArgs& args, const ShardMap& map,
              const std::string& key_text, CommandContext& ctx) {
  const Table* table = map.FindTable(args.table);
  if (table == nullptr) {
    std::string names;
    for (const Table& t : map.tables()) names += (names.empty() ? "" : ", ") + t.name;
    Fail(ctx, "table '" + args.table + "' is not in the shard map (tables: " +
                  (names.empty() ? "none" : names) + ")");
    return false;
  }
  if (table->reference) {
    Fail(ctx, "table '" + args.table +
                  "' is a reference table: every shard holds all of its rows");
    return false;
  }
  const Distribution& dist = map.DistributionOf(*table);
  absl::StatusOr<Key> key = Key::Parse(dist.key_type(), key_text);
  if (!key.ok()) {
    Fail(ctx, key.status());
    return false;
  }
  std::optional<Key> hash_key;
  if (!args.hash_key.empty()) {
    if (!dist.hash_key_type()) {
      Fail(ctx, "--hash-key is only for region distributions that spread a "
                "region over several shards; '" + dist.name() +
                "' does not");
      return false;
    }
    absl::StatusOr<Key> parsed = Key::Parse(*dist.hash_key_type(), args.hash_key);
    if (!parsed.ok()) {
      Fail(ctx, "--hash-key: " + std::string(parsed.status().message()));
      return false;
    }
    hash_key = *parsed;
  }
  absl::StatusOr<Placement> where =
      dist.Place(*key, hash_key ? &*hash_key : nullptr);
  if (!where.ok()) {
    std::string message(where.status().message());
    if (dist.strategy() == Strategy::kRegion && !hash_key && dist.hash_key_type()) {
      message += " (give it with --hash-key)";
    }
    Fail(ctx, message);
    return false;
  }
  const std::string& shard = map.shard(where->shard).name;
  if (args.format == Format::kTable) {
    *ctx.out << shard << "\n";
    return true;
  }
  JsonWriter json;
  json.BeginObject()
      .Key("table").String(table->name)
      .Key("key").String(key->ToString())
      .Key("distribution").String(dist.name())
      .Key("strategy").String(StrategyName(dist.strategy()))
      .Key("shard").String(shard)
      .Key("epoch").Int(static_cast<int64_t>(map.epoch()));
  if (where->hash) json.Key("hash").String(FormatHash(*where->hash));
  if (dist.strategy() == Strategy::kHash) {
    const HashSlice& s = dist.hash_slices()[*where->slice];
    json.Key("slice").BeginObject().Key("from").String(FormatHash(s.lo)).Key("to");
    if (s.hi) {
      json.String(FormatHash(*s.hi));
    } else {
      json.Null();
    }
    json.EndObject();
  } else if (dist.strategy() == Strategy::kRange) {
    const RangeSlice& s = dist.range_slices()[*where->slice];
    json.Key("slice").BeginObject().Key("from");
    s.from ? json.String(s.from->ToString()) : json.Null();
    json.Key("to");
    s.to ? json.String(s.to->ToString()) : json.Null();
    json.EndObject();
  } else {
    json.Key("region").String(key->text());
    json.Key("default").Bool(!where->slice.has_value());
  }
  json.EndObject();
  *ctx.out << json.str() << "\n";
  return true;
}

}  // namespace

void RegisterRoute(CLI::App& app, CommandContext& ctx) {
  auto args = std::make_shared<RouteArgs>();
  CLI::App* cmd = app.add_subcommand(
      "route",
      "Print the shard that owns KEY of TABLE. With --format json, an object "
      "per key with the shard, the distribution, the key's 64-bit hash "
      "(\"0x%016x\") and the owning slice's bounds.");
  AddConfigOption(cmd, &args->config);
  cmd->add_option("TABLE", args->table, "A sharded table of the map")
      ->required();
  cmd->add_option("KEY", args->keys,
                  "The shard-key value, as text (e.g. 42, alice, or a uuid). "
                  "Several keys print one line each, in order.")
      ->required();
  cmd->add_option("--hash-key", args->hash_key,
                  "For a region spread over several shards: the row's "
                  "hash-key value");
  AddFormatOption(cmd, &args->format);
  cmd->callback([args, &ctx] { RunRoute(*args, ctx); });
}

}  // namespace shardkit::cli
