// Cost of placing a key: ns per key for each strategy and slice count.
//
//   ninja -C build lookup_bench && build/tests/bench/lookup_bench
//
// Maps are built through the TOML loader, as an application builds them.

#include <benchmark/benchmark.h>

#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "shardkit/config.h"

namespace shardkit {
namespace {

constexpr int kShards = 16;
constexpr size_t kKeys = 4096;  // a power of two: index by mask

std::string ShardsToml() {
  std::string out;
  for (int s = 0; s < kShards; ++s) {
    absl::StrAppendFormat(&out,
                          "[shards.s%d]\ndsn = \"host=127.0.0.1 port=%d "
                          "dbname=app\"\n",
                          s, 7000 + s);
  }
  return out;
}

Config MustParse(const std::string& toml) {
  absl::StatusOr<Config> config = ParseConfig(toml, "bench.toml");
  if (!config.ok()) {
    fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    abort();
  }
  return *std::move(config);
}

// `n` even hash slices assigned round-robin over the shards.
Config HashConfig(int64_t n, std::string_view key_type = "int8") {
  std::string toml = ShardsToml();
  absl::StrAppend(&toml, "[distributions.d]\nstrategy = \"hash\"\nkey_type = \"",
                  absl::string_view(key_type.data(), key_type.size()),
                  "\"\nslices = [\n");
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t lo = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(i) << 64) / n);
    const uint64_t hi = static_cast<uint64_t>(
        (static_cast<unsigned __int128>(i + 1) << 64) / n);
    absl::StrAppendFormat(&toml, "{ from = \"0x%016x\", ", lo);
    if (i + 1 < n) absl::StrAppendFormat(&toml, "to = \"0x%016x\", ", hi);
    absl::StrAppendFormat(&toml, "shard = \"s%d\" },\n", i % kShards);
  }
  toml += "]\n[tables.t]\ndistribution = \"d\"\nkey = \"id\"\n";
  return MustParse(toml);
}

std::string TextBound(int64_t i) { return absl::StrFormat("k%08d", i); }

// `n` range slices over int8 keys [0, n * 1000) or text keys "k%08d".
Config RangeConfig(int64_t n, bool text) {
  std::string toml = ShardsToml();
  absl::StrAppend(&toml, "[distributions.d]\nstrategy = \"range\"\nkey_type = ",
                  text ? "\"text\"" : "\"int8\"", "\nslices = [\n");
  for (int64_t i = 0; i < n; ++i) {
    toml += "{ ";
    if (i > 0) {
      toml += text ? absl::StrCat("from = \"", TextBound(i), "\", ")
                   : absl::StrCat("from = ", i * 1000, ", ");
    }
    if (i + 1 < n) {
      toml += text ? absl::StrCat("to = \"", TextBound(i + 1), "\", ")
                   : absl::StrCat("to = ", (i + 1) * 1000, ", ");
    }
    absl::StrAppendFormat(&toml, "shard = \"s%d\" },\n", i % kShards);
  }
  toml += "]\n";
  return MustParse(toml);
}

Config RegionConfig(int64_t n) {
  std::string toml = ShardsToml();
  toml += "[distributions.d]\nstrategy = \"region\"\nkey_type = \"text\"\n"
          "[distributions.d.regions]\n";
  for (int64_t i = 0; i < n; ++i) {
    absl::StrAppendFormat(&toml, "r%d = \"s%d\"\n", i, i % kShards);
  }
  return MustParse(toml);
}

std::vector<Key> IntKeys(int64_t max) {
  std::mt19937_64 rng(42);
  std::vector<Key> keys;
  for (size_t i = 0; i < kKeys; ++i) {
    keys.push_back(Key::Integer(static_cast<int64_t>(rng() % max)));
  }
  return keys;
}

std::vector<Key> TextKeys(const std::vector<std::string>& pool) {
  std::mt19937_64 rng(42);
  std::vector<Key> keys;
  for (size_t i = 0; i < kKeys; ++i) keys.push_back(Key::Text(pool[rng() % pool.size()]));
  return keys;
}

void RunPlacements(benchmark::State& state, const Distribution& d,
                   const std::vector<Key>& keys) {
  // Measure placements, never the error path.
  for (const Key& key : keys) {
    if (!d.Place(key).ok()) {
      state.SkipWithError("a benchmark key does not fit its distribution");
      return;
    }
  }
  size_t i = 0;
  for (auto _ : state) {
    absl::StatusOr<Placement> p = d.Place(keys[i++ & (kKeys - 1)]);
    benchmark::DoNotOptimize(p);
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_HashInt8(benchmark::State& state) {
  const Config config = HashConfig(state.range(0));
  RunPlacements(state, config.map.distributions()[0], IntKeys(INT64_MAX));
}
BENCHMARK(BM_HashInt8)->Arg(16)->Arg(1024)->Arg(65536);

void BM_HashText(benchmark::State& state) {
  const Config config = HashConfig(state.range(0), "text");
  std::vector<std::string> pool;
  for (int i = 0; i < 1000; ++i) pool.push_back(absl::StrCat("user-", i * 7919));
  RunPlacements(state, config.map.distributions()[0], TextKeys(pool));
}
BENCHMARK(BM_HashText)->Arg(16)->Arg(1024)->Arg(65536);

// Through the table name, as the router will look keys up.
void BM_HashInt8ByTable(benchmark::State& state) {
  const Config config = HashConfig(state.range(0));
  const std::vector<Key> keys = IntKeys(INT64_MAX);
  size_t i = 0;
  for (auto _ : state) {
    absl::StatusOr<Placement> p = config.map.Place("t", keys[i++ & (kKeys - 1)]);
    benchmark::DoNotOptimize(p);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HashInt8ByTable)->Arg(16)->Arg(1024)->Arg(65536);

void BM_RangeInt8(benchmark::State& state) {
  const Config config = RangeConfig(state.range(0), /*text=*/false);
  RunPlacements(state, config.map.distributions()[0],
                IntKeys(state.range(0) * 1000));
}
BENCHMARK(BM_RangeInt8)->Arg(16)->Arg(1024)->Arg(65536);

void BM_RangeText(benchmark::State& state) {
  const Config config = RangeConfig(state.range(0), /*text=*/true);
  std::vector<std::string> pool;
  for (int64_t i = 0; i < state.range(0); ++i) pool.push_back(TextBound(i) + "x");
  RunPlacements(state, config.map.distributions()[0], TextKeys(pool));
}
BENCHMARK(BM_RangeText)->Arg(16)->Arg(1024)->Arg(65536);

void BM_Region(benchmark::State& state) {
  const Config config = RegionConfig(state.range(0));
  std::vector<std::string> pool;
  for (int64_t i = 0; i < state.range(0); ++i) pool.push_back(absl::StrCat("r", i));
  RunPlacements(state, config.map.distributions()[0], TextKeys(pool));
}
BENCHMARK(BM_Region)->Arg(16)->Arg(1024)->Arg(65536);

void BM_HashKeyInt8Only(benchmark::State& state) {
  const std::vector<Key> keys = IntKeys(INT64_MAX);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(HashKey(keys[i++ & (kKeys - 1)]));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HashKeyInt8Only);

void BM_HashKeyTextOnly(benchmark::State& state) {
  std::vector<std::string> pool;
  for (int i = 0; i < 1000; ++i) pool.push_back(absl::StrCat("user-", i * 7919));
  const std::vector<Key> keys = TextKeys(pool);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(HashKey(keys[i++ & (kKeys - 1)]));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HashKeyTextOnly);

}  // namespace
}  // namespace shardkit

BENCHMARK_MAIN();
