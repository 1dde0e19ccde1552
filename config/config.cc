// The TOML reader: syntax, value types, unknown settings and ${ENV}
// substitution here; what the map itself must satisfy in map_builder.cc.

#include "shardkit/config.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "absl/strings/str_join.h"
#include "config/dsn.h"
#include "config/map_builder.h"

#include <toml++/toml.h>

namespace shardkit {

using internal::BackendSpec;
using internal::DistributionSpec;
using internal::HashSliceSpec;
using internal::RangeSliceSpec;
using internal::RegionSpec;
using internal::ShardRef;
using internal::ShardSpec;
using internal::SourcePos;
using internal::TableSpec;

std::string ConfigProblem::ToString() const {
  if (line <= 0) return StrCat(file, ": ", message);
  return StrCat(file, ":", line, ":", column, ": ", message);
}

EnvLookup ProcessEnvironment() {
  return [](std::string_view name) -> std::optional<std::string> {
    const char* v = std::getenv(std::string(name).c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

namespace {

constexpr std::string_view kRootKeys[] = {
    "catalog", "shards",   "distributions", "tables",  "router",
    "pool",    "timeouts", "transactions",  "replicas"};
constexpr std::string_view kRouterKeys[] = {"default_shard"};
constexpr std::string_view kCatalogKeys[] = {"dsn"};
constexpr std::string_view kShardKeys[] = {
    "dsn", "replicas", "max_lag", "heartbeat_interval", "failure_threshold"};
constexpr std::string_view kReplicaKeys[] = {"dsn", "weight", "name"};
constexpr std::string_view kReplicaSettingKeys[] = {
    "max_lag", "heartbeat_interval", "failure_threshold"};
constexpr int kMaxWeight = 10000;
constexpr int kMaxFailureThreshold = 1000;
constexpr std::string_view kDistributionKeys[] = {
    "strategy", "key_type", "shards", "slices", "regions", "default",
    "hash_key_type"};
constexpr std::string_view kSliceKeys[] = {"from", "to", "shard"};
constexpr std::string_view kTableKeys[] = {"distribution", "key", "hash_key",
                                           "reference"};
constexpr std::string_view kPoolKeys[] = {"max_connections_per_shard",
                                          "idle_timeout"};
constexpr std::string_view kTimeoutKeys[] = {"connect", "statement"};
constexpr std::string_view kTransactionKeys[] = {"recovery_grace",
                                                 "recovery_interval"};

// toml++ makes, and frees, one table per part of a dotted key or table
// name, by recursion: "[a.a.a...]" of 100,000 parts (200 KB) overflows the
// stack. A key cannot span lines, so a bound on the dots of each line
// bounds that nesting (with toml++'s own bound on nested inline values).
constexpr size_t kMaxDotsPerLine = 4096;

// The first line (1-based) with more than kMaxDotsPerLine dots.
std::optional<int> LineWithTooManyDots(std::string_view text) {
  int line = 1;
  size_t dots = 0;
  for (char c : text) {
    if (c == '\n') {
      ++line;
      dots = 0;
    } else if (c == '.' && ++dots > kMaxDotsPerLine) {
      return line;
    }
  }
  return std::nullopt;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1,
                         diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string_view TypeName(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    default: return "nothing";
  }
}

SourcePos PosOf(const toml::source_region& region) {
  return SourcePos{static_cast<int>(region.begin.line),
                   static_cast<int>(region.begin.column)};
}

class Reader {
 public:
  Reader(std::string file, const EnvLookup& env,
         std::vector<ConfigProblem>* problems)
      : file_(std::move(file)), env_(env), problems_(problems) {}

  std::optional<Config> Read(std::string_view text) {
    if (std::optional<int> line = LineWithTooManyDots(text)) {
      Report(SourcePos{*line, 1},
             StrCat("more than ", kMaxDotsPerLine,
                    " dots in one line: a key or table name of that many "
                    "parts nests too deeply"));
      return std::nullopt;
    }
    toml::table root;
    try {
      root = toml::parse(text, std::string_view(file_));
    } catch (const toml::parse_error& e) {
      Report(PosOf(e.source()),
             StrCat("TOML syntax error: ", e.description()));
      return std::nullopt;
    }
    Config config;
    config.source = file_;
    CheckKeys(root, "", kRootKeys);
    ReadCatalog(root, config);
    ReadReplicaDefaults(root, config.replicas);
    ReadShards(root, config.replicas);
    ReadDistributions(root);
    ReadTables(root);
    ReadPool(root, config.pool);
    ReadTimeouts(root, config.timeouts);
    ReadTransactions(root, config.transactions);
    ReadRouter(root);
    // toml++ keeps a table's keys sorted; the map keeps the file's order.
    SortByPosition(spec_.shards);
    SortByPosition(spec_.distributions);
    SortByPosition(spec_.tables);
    std::optional<ShardMap> map = internal::ShardMapBuilder::Build(
        spec_, [this](SourcePos pos, std::string message) {
          Report(pos, std::move(message));
        });
    if (!map || failed_) return std::nullopt;
    config.map = std::move(*map);
    return config;
  }

 private:
  void Report(SourcePos pos, std::string message) {
    failed_ = true;
    problems_->push_back(
        ConfigProblem{file_, pos.line, pos.column, std::move(message)});
  }

  template <typename T>
  static void SortByPosition(std::vector<T>& items) {
    std::stable_sort(items.begin(), items.end(), [](const T& a, const T& b) {
      return std::tie(a.pos.line, a.pos.column) <
             std::tie(b.pos.line, b.pos.column);
    });
  }

  static std::string Join(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : StrCat(path, ".", key);
  }

  template <size_t N>
  void CheckKeys(const toml::table& table, std::string_view path,
                 const std::string_view (&allowed)[N]) {
    for (auto&& [key, node] : table) {
      const std::string_view name = key.str();
      if (std::find(std::begin(allowed), std::end(allowed), name) !=
          std::end(allowed)) {
        continue;
      }
      std::string hint;
      size_t best = 3;
      for (std::string_view candidate : allowed) {
        const size_t d = EditDistance(name, candidate);
        if (d < best) {
          best = d;
          hint = StrCat(" (did you mean '", candidate, "'?)");
        }
      }
      if (hint.empty()) {
        std::vector<std::string> names(std::begin(allowed), std::end(allowed));
        hint = StrCat(" (allowed here: ", absl::StrJoin(names, ", "), ")");
      }
      Report(PosOf(key.source()),
             StrCat(Join(path, name), ": unknown setting", hint));
    }
  }

  void WrongType(const toml::node& node, std::string_view path,
                 std::string_view expected) {
    Report(PosOf(node.source()), StrCat(path, ": expected ", expected,
                                              ", found ", TypeName(node)));
  }

  // The table at `table[key]`, or nullptr when absent or not a table
  // (reported).
  const toml::table* SubTable(const toml::table& table, std::string_view key,
                              std::string_view path) {
    const toml::node* node = table.get(key);
    if (node == nullptr) return nullptr;
    if (!node->is_table()) {
      WrongType(*node, Join(path, key), "a table");
      return nullptr;
    }
    return node->as_table();
  }

  // A string setting; nullopt when absent (reported if `required`) or not a
  // string (reported).
  std::optional<std::string> String(const toml::table& table,
                                    std::string_view key,
                                    std::string_view path, bool required,
                                    SourcePos* pos = nullptr) {
    const toml::node* node = table.get(key);
    if (node == nullptr) {
      if (required) {
        Report(PosOf(table.source()),
               StrCat(path, ": missing required setting '", key, "'"));
      }
      return std::nullopt;
    }
    if (pos != nullptr) *pos = PosOf(node->source());
    if (!node->is_string()) {
      WrongType(*node, Join(path, key), "a string");
      return std::nullopt;
    }
    return node->as_string()->get();
  }

  std::optional<ShardRef> ShardName(const toml::node& node,
                                    std::string_view path) {
    if (!node.is_string()) {
      WrongType(node, path, "a shard name (a string)");
      return std::nullopt;
    }
    return ShardRef{node.as_string()->get(), PosOf(node.source())};
  }

  std::optional<ShardRef> StringRef(const toml::table& table,
                                    std::string_view key,
                                    std::string_view path, bool required) {
    SourcePos pos;
    std::optional<std::string> s = String(table, key, path, required, &pos);
    if (!s) return std::nullopt;
    return ShardRef{*s, pos};
  }

  // Replaces ${NAME} with the environment variable NAME, escaped for where
  // it stands (see EscapeConnValue: a value cannot break out of its place
  // and change another setting), and $$ with $.
  std::optional<std::string> SubstituteEnv(const std::string& value,
                                           std::string_view path,
                                           SourcePos pos) {
    const bool uri = internal::IsUriDsn(value);
    std::string out;
    bool ok = true;
    bool in_quotes = false;  // inside a 'quoted' keyword value
    for (size_t i = 0; i < value.size(); ++i) {
      const char c = value[i];
      if (c != '$' || i + 1 >= value.size()) {
        if (!uri && c == '\\' && in_quotes && i + 1 < value.size()) {
          out += c;
          out += value[++i];
          continue;
        }
        if (!uri && c == '\'') in_quotes = !in_quotes;
        out += c;
      } else if (value[i + 1] == '$') {
        out += '$';
        ++i;
      } else if (value[i + 1] == '{') {
        const size_t end = value.find('}', i + 2);
        if (end == std::string::npos) {
          Report(pos, StrCat(path, ": unterminated ${...}; write "
                                   "${NAME}, or $$ for a literal $"));
          return std::nullopt;
        }
        const std::string name = value.substr(i + 2, end - i - 2);
        std::optional<std::string> v = env_(name);
        if (name.empty()) {
          Report(pos, StrCat(path, ": empty ${}; write ${NAME}"));
          ok = false;
        } else if (!v) {
          Report(pos, StrCat(path, ": environment variable ", name,
                             " is not set; export it, or write $$ for a "
                             "literal $"));
          ok = false;
        } else {
          out += internal::EscapeConnValue(*v, uri, in_quotes);
        }
        i = end;
      } else {
        out += c;
      }
    }
    if (!ok) return std::nullopt;
    return out;
  }

  // A connection string: ${ENV} substituted, then checked by libpq's parser.
  std::optional<std::string> Dsn(const toml::table& table,
                                 std::string_view path, SourcePos* pos) {
    std::optional<std::string> raw = String(table, "dsn", path, true, pos);
    if (!raw) return std::nullopt;
    const std::string dsn_path = Join(path, "dsn");
    std::optional<std::string> dsn = SubstituteEnv(*raw, dsn_path, *pos);
    if (!dsn) return std::nullopt;
    if (absl::StatusOr<internal::ConnInfo> info = internal::ParseConnInfo(*dsn);
        !info.ok()) {
      Report(*pos, StrCat(dsn_path, ": ", info.status().message()));
      return std::nullopt;
    }
    return dsn;
  }

  void ReadCatalog(const toml::table& root, Config& config) {
    const toml::table* catalog = SubTable(root, "catalog", "");
    if (catalog == nullptr) return;
    CheckKeys(*catalog, "catalog", kCatalogKeys);
    SourcePos pos;
    if (std::optional<std::string> dsn = Dsn(*catalog, "catalog", &pos)) {
      config.catalog = CatalogSettings{*dsn};
    }
  }

  void ReadShards(const toml::table& root, const ReplicaSettings& defaults) {
    const toml::table* shards = SubTable(root, "shards", "");
    if (shards == nullptr || shards->empty()) {
      if (!root.contains("shards") || shards != nullptr) {
        Report({}, "no shards: add at least one [shards.NAME] with a dsn");
      }
      return;
    }
    for (auto&& [key, node] : *shards) {
      const std::string path = StrCat("shards.", key.str());
      if (!node.is_table()) {
        WrongType(node, path, "a table with a `dsn`");
        continue;
      }
      const toml::table& shard = *node.as_table();
      CheckKeys(shard, path, kShardKeys);
      ShardSpec spec;
      spec.name = std::string(key.str());
      spec.pos = PosOf(shard.source());
      // A shard whose dsn is wrong is still declared, so that slices naming
      // it are not also reported as naming an unknown shard.
      std::optional<std::string> dsn = Dsn(shard, path, &spec.pos);
      spec.dsn = dsn.value_or("");
      spec.replica_settings = defaults;
      ReadReplicaSettings(shard, path, spec.replica_settings);
      ReadReplicas(shard, path, spec);
      spec_.shards.push_back(std::move(spec));
    }
  }

  // [replicas]: the defaults of every shard's ReplicaSettings.
  void ReadReplicaDefaults(const toml::table& root, ReplicaSettings& settings) {
    const toml::table* table = SubTable(root, "replicas", "");
    if (table == nullptr) return;
    CheckKeys(*table, "replicas", kReplicaSettingKeys);
    ReadReplicaSettings(*table, "replicas", settings);
  }

  // max_lag, heartbeat_interval and failure_threshold of `table`, where set.
  void ReadReplicaSettings(const toml::table& table, std::string_view path,
                           ReplicaSettings& settings) {
    if (auto d = Duration(table, "max_lag", path)) settings.max_lag = *d;
    if (auto d = Duration(table, "heartbeat_interval", path)) {
      settings.heartbeat_interval = *d;
    }
    if (auto n =
            Integer(table, "failure_threshold", path, 1, kMaxFailureThreshold,
                    " (consecutive failed heartbeats)")) {
      settings.failure_threshold = *n;
    }
  }

  // `replicas = [ { dsn = "...", weight = 1, name = "r1" }, ... ]`.
  void ReadReplicas(const toml::table& shard, const std::string& path,
                    ShardSpec& spec) {
    const toml::node* replicas = shard.get("replicas");
    if (replicas == nullptr) return;
    if (!replicas->is_array()) {
      WrongType(*replicas, path + ".replicas",
                "an array of replicas [ { dsn = \"...\", weight = 1 } ]");
      return;
    }
    size_t i = 0;
    for (const toml::node& n : *replicas->as_array()) {
      const std::string replica_path = StrCat(path, ".replicas[", i++, "]");
      if (!n.is_table()) {
        WrongType(n, replica_path, "a replica table { dsn, weight, name }");
        continue;
      }
      const toml::table& replica = *n.as_table();
      CheckKeys(replica, replica_path, kReplicaKeys);
      BackendSpec backend;
      backend.name = StrCat("r", i);
      backend.pos = PosOf(replica.source());
      backend.dsn = Dsn(replica, replica_path, &backend.pos).value_or("");
      if (auto w = Integer(replica, "weight", replica_path, 1, kMaxWeight,
                           " (a replica's share of its shard's reads)")) {
        backend.weight = *w;
      }
      if (std::optional<std::string> name =
              String(replica, "name", replica_path, false, &backend.name_pos)) {
        if (IsBackendName(*name)) {
          backend.name = *name;
        } else {
          Report(backend.name_pos,
                 StrCat(replica_path, ".name: '", *name,
                        "' is not a replica name: use letters, digits, '_' "
                        "and '-' (at most 63), and not \"primary\""));
        }
      }
      spec.replicas.push_back(std::move(backend));
    }
  }

  static bool IsBackendName(std::string_view name) {
    if (name.empty() || name.size() > 63 || name == "primary") return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
  }

  // An integer setting in [min, max]; nullopt when absent or wrong
  // (reported, saying what `what` is for).
  std::optional<int> Integer(const toml::table& table, std::string_view key,
                             std::string_view path, int64_t min, int64_t max,
                             std::string_view what) {
    const toml::node* node = table.get(key);
    if (node == nullptr) return std::nullopt;
    if (!node->is_integer() || node->as_integer()->get() < min ||
        node->as_integer()->get() > max) {
      Report(PosOf(node->source()),
             StrCat(Join(path, key), ": expected an integer from ", min, " to ",
                    max, what));
      return std::nullopt;
    }
    return static_cast<int>(node->as_integer()->get());
  }

  std::optional<KeyType> ReadKeyType(const toml::table& table,
                                     std::string_view key,
                                     std::string_view path, bool required,
                                     SourcePos* pos) {
    std::optional<std::string> name = String(table, key, path, required, pos);
    if (!name) return std::nullopt;
    std::optional<KeyType> type = KeyTypeFromName(*name);
    if (!type) {
      Report(*pos, StrCat(Join(path, key), ": unknown key type '", *name,
                                "' (use int2, int4, int8, text or uuid)"));
    }
    return type;
  }

  void ReadDistributions(const toml::table& root) {
    const toml::table* dists = SubTable(root, "distributions", "");
    if (dists == nullptr) return;
    for (auto&& [key, node] : *dists) {
      const std::string path = StrCat("distributions.", key.str());
      if (!node.is_table()) {
        WrongType(node, path, "a table");
        continue;
      }
      ReadDistribution(std::string(key.str()), *node.as_table(), path);
    }
  }

  void ReadDistribution(std::string name, const toml::table& table,
                        const std::string& path) {
    CheckKeys(table, path, kDistributionKeys);
    // A distribution with errors is still known by name, so that tables
    // using it are not also reported as naming an unknown distribution.
    broken_distributions_.push_back(name);
    DistributionSpec spec;
    spec.name = std::move(name);
    spec.pos = PosOf(table.source());
    bool ok = true;

    SourcePos strategy_pos;
    std::optional<std::string> strategy =
        String(table, "strategy", path, true, &strategy_pos);
    if (!strategy) return;
    if (*strategy == "hash") {
      spec.strategy = Strategy::kHash;
    } else if (*strategy == "range") {
      spec.strategy = Strategy::kRange;
    } else if (*strategy == "region") {
      spec.strategy = Strategy::kRegion;
    } else {
      Report(strategy_pos, StrCat(path, ".strategy: unknown strategy '",
                                        *strategy,
                                        "' (use hash, range or region)"));
      return;
    }
    std::optional<KeyType> key_type =
        ReadKeyType(table, "key_type", path, true, &spec.key_type_pos);
    if (!key_type) return;
    spec.key_type = *key_type;
    if (table.contains("hash_key_type")) {
      spec.hash_key_type = ReadKeyType(table, "hash_key_type", path, false,
                                       &spec.hash_key_type_pos);
      if (!spec.hash_key_type) ok = false;
    }

    auto refuse = [&](std::string_view setting, std::string_view why) {
      if (const toml::node* n = table.get(setting)) {
        Report(PosOf(n->source()),
               StrCat(path, ".", setting, ": not used by ",
                            *strategy, " distributions; ", why));
        ok = false;
      }
    };
    switch (spec.strategy) {
      case Strategy::kHash:
        refuse("regions", "regions belong to strategy = \"region\"");
        refuse("default", "`default` belongs to strategy = \"region\"");
        refuse("hash_key_type", "the key itself is hashed");
        ok &= ReadHashLayout(table, path, spec);
        break;
      case Strategy::kRange:
        refuse("shards", "give explicit `slices` with key bounds");
        refuse("regions", "regions belong to strategy = \"region\"");
        refuse("default", "`default` belongs to strategy = \"region\"");
        refuse("hash_key_type", "range keys are not hashed");
        ok &= ReadRangeSlices(table, path, spec);
        break;
      case Strategy::kRegion:
        refuse("shards", "list each region's shards in `regions`");
        refuse("slices", "list each region's shards in `regions`");
        if (spec.key_type != KeyType::kText) {
          Report(spec.key_type_pos,
                 StrCat(path, ".key_type: strategy region cannot use "
                                    "key type ",
                              KeyTypeName(spec.key_type),
                              ": region keys are names; use key_type = "
                              "\"text\""));
          ok = false;
        }
        ok &= ReadRegions(table, path, spec);
        break;
    }
    if (ok) {
      broken_distributions_.pop_back();
      spec_.distributions.push_back(std::move(spec));
    }
  }

  bool ReadHashLayout(const toml::table& table, const std::string& path,
                      DistributionSpec& spec) {
    const toml::node* shards = table.get("shards");
    const toml::node* slices = table.get("slices");
    if ((shards == nullptr) == (slices == nullptr)) {
      Report(PosOf(table.source()),
             StrCat(path, ": give either `shards` (even slices, one per "
                                "shard) or explicit `slices`",
                          shards != nullptr ? ", not both" : ""));
      return false;
    }
    if (shards != nullptr) {
      spec.even_shards_pos = PosOf(shards->source());
      if (!shards->is_array()) {
        WrongType(*shards, path + ".shards", "an array of shard names");
        return false;
      }
      std::vector<ShardRef> refs;
      bool ok = true;
      size_t i = 0;
      for (const toml::node& n : *shards->as_array()) {
        std::optional<ShardRef> ref =
            ShardName(n, StrCat(path, ".shards[", i++, "]"));
        if (ref) refs.push_back(*ref);
        ok &= ref.has_value();
      }
      spec.even_shards = std::move(refs);
      return ok;
    }
    bool ok = true;
    ForEachSlice(*slices, path, [&](const toml::table& slice,
                                    const std::string& slice_path) {
      HashSliceSpec s;
      s.pos = PosOf(slice.source());
      std::optional<uint64_t> from = HashBound(slice, "from", slice_path);
      std::optional<uint64_t> to = HashBound(slice, "to", slice_path);
      std::optional<ShardRef> shard = StringRef(slice, "shard", slice_path, true);
      if ((slice.contains("from") && !from) || (slice.contains("to") && !to) ||
          !shard) {
        ok = false;
        return;
      }
      s.lo = from.value_or(0);
      s.hi = to;
      s.shard = *shard;
      spec.hash_slices.push_back(s);
    }, ok);
    return ok;
  }

  std::optional<uint64_t> HashBound(const toml::table& slice,
                                    std::string_view key,
                                    const std::string& path) {
    const toml::node* node = slice.get(key);
    if (node == nullptr) return std::nullopt;
    const std::string bound_path = Join(path, key);
    if (!node->is_string()) {
      Report(PosOf(node->source()),
             StrCat(bound_path, ": hash bounds are hex strings such as "
                                      "\"0x8000000000000000\", found ",
                          TypeName(*node)));
      return std::nullopt;
    }
    absl::StatusOr<uint64_t> v = ParseHash(node->as_string()->get());
    if (!v.ok()) {
      Report(PosOf(node->source()),
             StrCat(bound_path, ": ", v.status().message()));
      return std::nullopt;
    }
    return *v;
  }

  // Calls `fn` for each table of the `slices` array; reports non-tables and
  // unknown settings.
  template <typename Fn>
  void ForEachSlice(const toml::node& slices, const std::string& path, Fn fn,
                    bool& ok) {
    if (!slices.is_array()) {
      WrongType(slices, path + ".slices", "an array of slices");
      ok = false;
      return;
    }
    if (slices.as_array()->empty()) {
      Report(PosOf(slices.source()),
             StrCat(path, ".slices: the list is empty; give at least "
                                "one slice"));
      ok = false;
      return;
    }
    size_t i = 0;
    for (const toml::node& n : *slices.as_array()) {
      const std::string slice_path = StrCat(path, ".slices[", i++, "]");
      if (!n.is_table()) {
        WrongType(n, slice_path, "a slice table { from, to, shard }");
        ok = false;
        continue;
      }
      CheckKeys(*n.as_table(), slice_path, kSliceKeys);
      fn(*n.as_table(), slice_path);
    }
  }

  bool ReadRangeSlices(const toml::table& table, const std::string& path,
                       DistributionSpec& spec) {
    const toml::node* slices = table.get("slices");
    if (slices == nullptr) {
      Report(PosOf(table.source()),
             StrCat(path, ": missing required setting 'slices'"));
      return false;
    }
    bool ok = true;
    ForEachSlice(*slices, path, [&](const toml::table& slice,
                                    const std::string& slice_path) {
      RangeSliceSpec s;
      s.pos = PosOf(slice.source());
      bool slice_ok = true;
      for (std::string_view side : {"from", "to"}) {
        const toml::node* node = slice.get(side);
        if (node == nullptr) continue;
        std::optional<Key> bound = RangeBound(*node, Join(slice_path, side),
                                              spec.key_type);
        slice_ok &= bound.has_value();
        (side == "from" ? s.from : s.to) = std::move(bound);
      }
      std::optional<ShardRef> shard = StringRef(slice, "shard", slice_path, true);
      if (!slice_ok || !shard) {
        ok = false;
        return;
      }
      s.shard = *shard;
      spec.range_slices.push_back(std::move(s));
    }, ok);
    return ok;
  }

  std::optional<Key> RangeBound(const toml::node& node,
                                const std::string& path, KeyType type) {
    if (IsIntegerKeyType(type)) {
      if (!node.is_integer()) {
        WrongType(node, path,
                  StrCat("an integer (the key type is ",
                               KeyTypeName(type), ")"));
        return std::nullopt;
      }
      Key key = Key::Integer(node.as_integer()->get());
      if (!key.FitsType(type)) {
        Report(PosOf(node.source()),
               StrCat(path, ": ", key.integer(), " is out of range for ",
                            KeyTypeName(type)));
        return std::nullopt;
      }
      return key;
    }
    if (!node.is_string()) {
      WrongType(node, path,
                StrCat("a string (the key type is ", KeyTypeName(type),
                             ")"));
      return std::nullopt;
    }
    absl::StatusOr<Key> key = Key::Parse(type, node.as_string()->get());
    if (!key.ok()) {
      Report(PosOf(node.source()),
             StrCat(path, ": ", key.status().message()));
      return std::nullopt;
    }
    return *key;
  }

  bool ReadRegions(const toml::table& table, const std::string& path,
                   DistributionSpec& spec) {
    bool ok = true;
    const toml::node* regions = table.get("regions");
    if (regions == nullptr) {
      Report(PosOf(table.source()),
             StrCat(path, ": missing required setting 'regions', e.g. "
                                "regions = { eu = \"s1\", us = [\"s2\", "
                                "\"s3\"] }"));
      return false;
    }
    if (!regions->is_table()) {
      WrongType(*regions, path + ".regions",
                "a table of region = shard or [shards]");
      return false;
    }
    for (auto&& [key, node] : *regions->as_table()) {
      const std::string region_path =
          StrCat(path, ".regions.", key.str());
      RegionSpec region;
      region.name = std::string(key.str());
      region.pos = PosOf(node.source());
      if (node.is_string()) {
        region.shards.push_back(*ShardName(node, region_path));
      } else if (node.is_array()) {
        size_t i = 0;
        for (const toml::node& n : *node.as_array()) {
          std::optional<ShardRef> ref =
              ShardName(n, StrCat(region_path, "[", i++, "]"));
          if (ref) region.shards.push_back(*ref);
          ok &= ref.has_value();
        }
      } else {
        WrongType(node, region_path, "a shard name or an array of them");
        ok = false;
        continue;
      }
      spec.regions.push_back(std::move(region));
    }
    SortByPosition(spec.regions);
    if (table.contains("default")) {
      spec.default_shard = StringRef(table, "default", path, false);
      ok &= spec.default_shard.has_value();
    }
    return ok;
  }

  void ReadTables(const toml::table& root) {
    const toml::table* tables = SubTable(root, "tables", "");
    if (tables == nullptr) return;
    for (auto&& [key, node] : *tables) {
      const std::string path = StrCat("tables.", key.str());
      if (!node.is_table()) {
        WrongType(node, path, "a table");
        continue;
      }
      const toml::table& table = *node.as_table();
      CheckKeys(table, path, kTableKeys);
      TableSpec spec;
      spec.name = std::string(key.str());
      spec.pos = PosOf(table.source());
      if (const toml::node* ref = table.get("reference")) {
        if (!ref->is_boolean()) {
          WrongType(*ref, path + ".reference", "a boolean (true or false)");
          continue;
        }
        spec.reference = ref->as_boolean()->get();
      }
      if (spec.reference) {
        bool ok = true;
        for (std::string_view setting : {"distribution", "key", "hash_key"}) {
          if (const toml::node* n = table.get(setting)) {
            Report(PosOf(n->source()),
                   StrCat(path, ".", setting,
                                ": a reference table is copied to every "
                                "shard and has no ",
                                setting));
            ok = false;
          }
        }
        if (ok) spec_.tables.push_back(std::move(spec));
        continue;
      }
      if (!table.contains("distribution") && !table.contains("key")) {
        Report(spec.pos,
               StrCat(path, ": a table needs `distribution` and `key` "
                                  "(a sharded table) or `reference = true`"));
        continue;
      }
      spec.distribution = StringRef(table, "distribution", path, true);
      std::optional<std::string> key_column = String(table, "key", path, true);
      std::optional<std::string> hash_key;
      if (table.contains("hash_key")) {
        hash_key = String(table, "hash_key", path, false, &spec.hash_key_pos);
        if (!hash_key) continue;
        spec.hash_key = *hash_key;
      }
      if (!spec.distribution || !key_column) continue;
      spec.key = *key_column;
      if (std::find(broken_distributions_.begin(),
                    broken_distributions_.end(),
                    spec.distribution->name) != broken_distributions_.end()) {
        continue;
      }
      spec_.tables.push_back(std::move(spec));
    }
  }

  std::optional<absl::Duration> Duration(const toml::table& table,
                                         std::string_view key,
                                         std::string_view path) {
    const toml::node* node = table.get(key);
    if (node == nullptr) return std::nullopt;
    const std::string setting = Join(path, key);
    absl::Duration d;
    if (!node->is_string() ||
        !absl::ParseDuration(node->as_string()->get(), &d) ||
        d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      Report(PosOf(node->source()),
             StrCat(setting, ": expected a positive duration string "
                                   "such as \"5s\", \"250ms\" or \"1m30s\""));
      return std::nullopt;
    }
    return d;
  }

  void ReadPool(const toml::table& root, PoolSettings& pool) {
    const toml::table* table = SubTable(root, "pool", "");
    if (table == nullptr) return;
    CheckKeys(*table, "pool", kPoolKeys);
    if (const toml::node* n = table->get("max_connections_per_shard")) {
      if (!n->is_integer() || n->as_integer()->get() < 1 ||
          n->as_integer()->get() > 10000) {
        Report(PosOf(n->source()),
               "pool.max_connections_per_shard: expected an integer from 1 "
               "to 10000");
      } else {
        pool.max_connections_per_shard =
            static_cast<int>(n->as_integer()->get());
      }
    }
    if (auto d = Duration(*table, "idle_timeout", "pool")) pool.idle_timeout = *d;
  }

  void ReadRouter(const toml::table& root) {
    const toml::table* table = SubTable(root, "router", "");
    if (table == nullptr) return;
    CheckKeys(*table, "router", kRouterKeys);
    if (table->contains("default_shard")) {
      spec_.default_shard = StringRef(*table, "default_shard", "router", false);
    }
  }

  void ReadTimeouts(const toml::table& root, TimeoutSettings& timeouts) {
    const toml::table* table = SubTable(root, "timeouts", "");
    if (table == nullptr) return;
    CheckKeys(*table, "timeouts", kTimeoutKeys);
    if (auto d = Duration(*table, "connect", "timeouts")) timeouts.connect = *d;
    if (auto d = Duration(*table, "statement", "timeouts")) {
      timeouts.statement = *d;
    }
  }

  void ReadTransactions(const toml::table& root,
                        TransactionSettings& transactions) {
    const toml::table* table = SubTable(root, "transactions", "");
    if (table == nullptr) return;
    CheckKeys(*table, "transactions", kTransactionKeys);
    if (auto d = Duration(*table, "recovery_grace", "transactions")) {
      transactions.recovery_grace = *d;
    }
    if (auto d = Duration(*table, "recovery_interval", "transactions")) {
      transactions.recovery_interval = *d;
    }
  }

  const std::string file_;
  const EnvLookup& env_;
  std::vector<ConfigProblem>* problems_;
  internal::ShardMapSpec spec_;
  std::vector<std::string> broken_distributions_;
  bool failed_ = false;
};

absl::Status ProblemsToStatus(const std::vector<ConfigProblem>& problems) {
  std::vector<std::string> lines;
  for (const ConfigProblem& p : problems) lines.push_back(p.ToString());
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

}  // namespace

absl::StatusOr<Config> ParseConfig(std::string_view toml,
                                   std::string_view source_name,
                                   std::vector<ConfigProblem>* problems,
                                   const EnvLookup& env) {
  std::vector<ConfigProblem> local;
  std::vector<ConfigProblem>& out = problems != nullptr ? *problems : local;
  out.clear();
  Reader reader(std::string(source_name), env, &out);
  std::optional<Config> config = reader.Read(toml);
  std::stable_sort(out.begin(), out.end(),
                   [](const ConfigProblem& a, const ConfigProblem& b) {
                     return std::tie(a.line, a.column) <
                            std::tie(b.line, b.column);
                   });
  if (!config) return ProblemsToStatus(out);
  return std::move(*config);
}

absl::StatusOr<Config> LoadConfig(const std::string& path,
                                  std::vector<ConfigProblem>* problems,
                                  const EnvLookup& env) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    ConfigProblem p{path, 0, 0,
                    "cannot read the configuration: it is a directory; give "
                    "the path of a .toml file"};
    if (problems != nullptr) *problems = {p};
    return absl::InvalidArgumentError(p.ToString());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    ConfigProblem p{path, 0, 0,
                    StrCat("cannot read the configuration: ",
                                 std::strerror(err))};
    if (problems != nullptr) *problems = {p};
    if (err == EACCES) return absl::PermissionDeniedError(p.ToString());
    return absl::NotFoundError(p.ToString());
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseConfig(buffer.str(), path, problems, env);
}

}  // namespace shardkit
