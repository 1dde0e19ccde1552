#include "shardkit/shard_map.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <iostream>
#include <random>

#include "config/map_builder.h"

#include "shardkit/config.h"

namespace shardkit {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kShards[] = R"(
[shards.s1]
dsn = "host=127.0.0.1 port=6001 dbname=app"
[shards.s2]
dsn = "host=127.0.0.1 port=6002 dbname=app"
[shards.s3]
dsn = "host=127.0.0.1 port=6003 dbname=app"
)";

// A test map that does not parse is a broken test: stop at once, loudly,
// rather than index into an empty map.
Config MustParse(const std::string& body) {
  absl::StatusOr<Config> config =
      ParseConfig(std::string(kShards) + body, "test.toml");
  if (!config.ok()) {
    std::cerr << "test map does not parse:\n" << config.status() << "\n";
    std::abort();
  }
  return *std::move(config);
}

std::string ShardOf(const ShardMap& map, std::string_view table,
                    const Key& key, const Key* hash_key = nullptr) {
  absl::StatusOr<Placement> p = map.Place(table, key, hash_key);
  if (!p.ok()) return "error: " + std::string(p.status().message());
  return map.shard(p->shard).name;
}

// Slice i of n is [floor(i * 2^64 / n), floor((i + 1) * 2^64 / n)).
uint64_t EvenLo(uint64_t i, uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(i) << 64) / n);
}

TEST(HashDistributionTest, EvenSlicesFollowTheFormula) {
  const Config config = MustParse(R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2", "s3"]
)");
  const Distribution& d = config.map.distributions()[0];
  ASSERT_EQ(d.hash_slices().size(), 3u);
  EXPECT_EQ(d.hash_slices()[0].lo, 0u);
  EXPECT_EQ(d.hash_slices()[1].lo, 0x5555555555555555ull);
  EXPECT_EQ(d.hash_slices()[2].lo, 0xaaaaaaaaaaaaaaaaull);
  EXPECT_EQ(d.hash_slices()[0].hi, 0x5555555555555555ull);
  EXPECT_EQ(d.hash_slices()[2].hi, std::nullopt);
  // Boundaries belong to the slice they start.
  EXPECT_EQ(d.PlaceHash(0x5555555555555554ull).shard, 0u);
  EXPECT_EQ(d.PlaceHash(0x5555555555555555ull).shard, 1u);
  EXPECT_EQ(d.PlaceHash(0xaaaaaaaaaaaaaaa9ull).shard, 1u);
  EXPECT_EQ(d.PlaceHash(0xaaaaaaaaaaaaaaaaull).shard, 2u);
  EXPECT_EQ(d.PlaceHash(~0ull).shard, 2u);
  EXPECT_EQ(d.PlaceHash(0).shard, 0u);
}

TEST(HashDistributionTest, PlacementAgreesWithSliceBoundsForManyKeys) {
  const Config config = MustParse(R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
slices = [ { to = "0x2000000000000000", shard = "s2" },
           { from = "0x2000000000000000", to = "0x9000000000000000", shard = "s1" },
           { from = "0x9000000000000000", shard = "s3" } ]
[tables.users]
distribution = "users"
key = "id"
[tables.orders]
distribution = "users"
key = "user_id"
)");
  const Distribution& d = config.map.distributions()[0];
  std::mt19937_64 rng(7);
  for (int i = 0; i < 10000; ++i) {
    const Key key = Key::Integer(static_cast<int64_t>(rng()));
    absl::StatusOr<Placement> p = d.Place(key);
    ASSERT_TRUE(p.ok());
    ASSERT_EQ(*p->hash, HashKey(key));
    const HashSlice& slice = d.hash_slices()[*p->slice];
    ASSERT_TRUE(slice.Contains(*p->hash));
    ASSERT_EQ(p->shard, slice.shard);
    // Colocation: the same key of another table of the distribution.
    ASSERT_EQ(ShardOf(config.map, "orders", key),
              ShardOf(config.map, "users", key));
  }
  // A fixed vector: int8 42 hashes to 0xd5a6f8c838df27c8, in the s3 slice.
  EXPECT_EQ(ShardOf(config.map, "users", Key::Integer(42)), "s3");
}

// Many uneven slices (random bounds, clustered and spread): the indexed
// search must agree with a linear scan, including at every boundary.
TEST(HashDistributionTest, IndexedSearchAgreesWithALinearScan) {
  std::mt19937_64 rng(11);
  for (int n : {1, 2, 7, 300, 5000}) {
    std::vector<uint64_t> bounds;
    for (int i = 1; i < n; ++i) {
      // Half the bounds crowd into one small region of the hash space.
      bounds.push_back(i % 2 ? rng() : 0x1234000000000000ull + rng() % 100000);
    }
    std::sort(bounds.begin(), bounds.end());
    bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());
    bounds.erase(std::remove(bounds.begin(), bounds.end(), 0ull), bounds.end());
    std::string body =
        "[distributions.d]\nstrategy = \"hash\"\nkey_type = \"int8\"\n"
        "slices = [\n";
    for (size_t i = 0; i <= bounds.size(); ++i) {
      body += "{ ";
      if (i > 0) body += "from = \"" + FormatHash(bounds[i - 1]) + "\", ";
      if (i < bounds.size()) body += "to = \"" + FormatHash(bounds[i]) + "\", ";
      body += "shard = \"s" + std::to_string(i % 3 + 1) + "\" },\n";
    }
    body += "]\n";
    const Config config = MustParse(body);
    const Distribution& d = config.map.distributions()[0];
    ASSERT_EQ(d.hash_slices().size(), bounds.size() + 1);
    std::vector<uint64_t> probes = {0, ~0ull};
    for (uint64_t b : bounds) {
      probes.push_back(b);
      probes.push_back(b - 1);
      probes.push_back(b + 1);
    }
    for (int i = 0; i < 20000; ++i) probes.push_back(rng());
    for (uint64_t h : probes) {
      size_t expected = 0;
      while (expected + 1 < d.hash_slices().size() &&
             d.hash_slices()[expected + 1].lo <= h) {
        ++expected;
      }
      ASSERT_EQ(*d.PlaceHash(h).slice, expected) << FormatHash(h) << " n=" << n;
    }
  }
}

TEST(HashDistributionTest, EverySliceCountSpreadsKeys) {
  for (const char* shards : {"[\"s1\"]", "[\"s1\", \"s2\"]",
                             "[\"s3\", \"s1\", \"s2\"]"}) {
    const Config config = MustParse(std::string(R"(
[distributions.d]
strategy = "hash"
key_type = "text"
shards = )") + shards + "\n");
    const Distribution& d = config.map.distributions()[0];
    const uint64_t n = d.hash_slices().size();
    for (int i = 0; i < 1000; ++i) {
      const Key key = Key::Text("user-" + std::to_string(i));
      const uint64_t h = HashKey(key);
      uint64_t expected = 0;
      while (expected + 1 < n && h >= EvenLo(expected + 1, n)) ++expected;
      ASSERT_EQ(*d.Place(key)->slice, expected);
    }
  }
}

TEST(RangeDistributionTest, IntegerBoundaries) {
  const Config config = MustParse(R"(
[distributions.events]
strategy = "range"
key_type = "int8"
slices = [ { to = 0, shard = "s1" },
           { from = 0, to = 100, shard = "s2" },
           { from = 100, shard = "s3" } ]
[tables.events]
distribution = "events"
key = "id"
)");
  const ShardMap& map = config.map;
  struct Case { int64_t key; const char* shard; };
  for (const Case& c : {Case{INT64_MIN, "s1"}, Case{-1, "s1"}, Case{0, "s2"},
                        Case{99, "s2"}, Case{100, "s3"},
                        Case{INT64_MAX, "s3"}}) {
    SCOPED_TRACE(c.key);
    EXPECT_EQ(ShardOf(map, "events", Key::Integer(c.key)), c.shard);
  }
}

TEST(RangeDistributionTest, TextUsesByteOrder) {
  const Config config = MustParse(R"(
[distributions.names]
strategy = "range"
key_type = "text"
slices = [ { to = "m", shard = "s1" },
           { from = "m", shard = "s2" } ]
[tables.people]
distribution = "names"
key = "name"
)");
  EXPECT_EQ(ShardOf(config.map, "people", Key::Text("")), "s1");
  EXPECT_EQ(ShardOf(config.map, "people", Key::Text("lzzz")), "s1");
  EXPECT_EQ(ShardOf(config.map, "people", Key::Text("m")), "s2");
  EXPECT_EQ(ShardOf(config.map, "people", Key::Text("Zebra")), "s1");
  EXPECT_EQ(ShardOf(config.map, "people", Key::Text("\xc3\xa9t\xc3\xa9")), "s2");
}

TEST(RangeDistributionTest, ExplicitDomainStartCountsAsTheStart) {
  const Config config = MustParse(R"(
[distributions.small]
strategy = "range"
key_type = "int2"
slices = [ { from = -32768, to = 10, shard = "s1" }, { from = 10, shard = "s2" } ]
[distributions.ids]
strategy = "range"
key_type = "uuid"
slices = [ { from = "00000000-0000-0000-0000-000000000000", to = "80000000-0000-0000-0000-000000000000", shard = "s1" },
           { from = "80000000-0000-0000-0000-000000000000", shard = "s2" } ]
[tables.t]
distribution = "ids"
key = "id"
)");
  const Key low = *Key::Parse(KeyType::kUuid, "7fffffff-ffff-ffff-ffff-ffffffffffff");
  const Key high = *Key::Parse(KeyType::kUuid, "80000000-0000-0000-0000-000000000000");
  EXPECT_EQ(ShardOf(config.map, "t", low), "s1");
  EXPECT_EQ(ShardOf(config.map, "t", high), "s2");
}

class RangeLookupTest : public ::testing::Test {
 protected:
  RangeLookupTest()
      : config_(MustParse(R"(
[distributions.events]
strategy = "range"
key_type = "int4"
slices = [ { to = 0, shard = "s1" },
           { from = 0, to = 100, shard = "s2" },
           { from = 100, to = 200, shard = "s3" },
           { from = 200, shard = "s1" } ]
)")) {}

  std::vector<std::string> Shards(std::optional<KeyBound> lower,
                                  std::optional<KeyBound> upper) {
    absl::StatusOr<std::vector<ShardId>> ids =
        config_.map.distributions()[0].ShardsForRange(KeyRange{lower, upper});
    EXPECT_TRUE(ids.ok()) << ids.status();
    std::vector<std::string> names;
    if (ids.ok()) {
      for (ShardId id : *ids) names.push_back(config_.map.shard(id).name);
    }
    return names;
  }

  static KeyBound In(int64_t v) { return KeyBound{Key::Integer(v), true}; }
  static KeyBound Ex(int64_t v) { return KeyBound{Key::Integer(v), false}; }

  Config config_;
};

TEST_F(RangeLookupTest, BoundsSelectIntersectingSlices) {
  EXPECT_THAT(Shards(In(50), In(150)), ElementsAre("s2", "s3"));
  EXPECT_THAT(Shards(In(0), In(0)), ElementsAre("s2"));
  EXPECT_THAT(Shards(std::nullopt, Ex(0)), ElementsAre("s1"));
  EXPECT_THAT(Shards(std::nullopt, In(0)), ElementsAre("s1", "s2"));
  EXPECT_THAT(Shards(Ex(99), std::nullopt), ElementsAre("s1", "s3"));
  EXPECT_THAT(Shards(In(99), In(100)), ElementsAre("s2", "s3"));
  EXPECT_THAT(Shards(Ex(99), Ex(100)), IsEmpty());  // no integer in (99, 100)
  EXPECT_THAT(Shards(In(10), In(5)), IsEmpty());
  EXPECT_THAT(Shards(In(120), In(180)), ElementsAre("s3"));
  EXPECT_THAT(Shards(std::nullopt, std::nullopt), ElementsAre("s1", "s2", "s3"));
  EXPECT_THAT(Shards(Ex(2147483647), std::nullopt), IsEmpty());
  EXPECT_THAT(Shards(std::nullopt, Ex(-2147483648)), IsEmpty());
}

TEST_F(RangeLookupTest, ClampsBoundsBeyondANarrowType) {
  // int4: 1 << 40 is above every key, -(1 << 40) below every key.
  EXPECT_THAT(Shards(In(int64_t{1} << 40), std::nullopt), IsEmpty());
  EXPECT_THAT(Shards(std::nullopt, Ex(-(int64_t{1} << 40))), IsEmpty());
  EXPECT_THAT(Shards(std::nullopt, In(int64_t{1} << 40)),
              ElementsAre("s1", "s2", "s3"));
  EXPECT_THAT(Shards(Ex(-(int64_t{1} << 40)), In(50)), ElementsAre("s1", "s2"));
}

TEST(RangeLookupExtremesTest, Int8TextAndUuid) {
  const Config config = MustParse(R"(
[distributions.big]
strategy = "range"
key_type = "int8"
slices = [ { to = 0, shard = "s1" }, { from = 0, shard = "s2" } ]
[distributions.names]
strategy = "range"
key_type = "text"
slices = [ { to = "m", shard = "s1" }, { from = "m", to = "m\u0000", shard = "s2" },
           { from = "m\u0000", shard = "s3" } ]
[distributions.ids]
strategy = "range"
key_type = "uuid"
slices = [ { to = "80000000-0000-0000-0000-000000000000", shard = "s1" },
           { from = "80000000-0000-0000-0000-000000000000", shard = "s2" } ]
)");
  auto shards = [&](int d, std::optional<KeyBound> lo, std::optional<KeyBound> hi) {
    absl::StatusOr<std::vector<ShardId>> ids =
        config.map.distributions()[d].ShardsForRange(KeyRange{lo, hi});
    EXPECT_TRUE(ids.ok()) << ids.status();
    std::vector<std::string> names;
    for (ShardId id : ids.value_or(std::vector<ShardId>{})) {
      names.push_back(config.map.shard(id).name);
    }
    return names;
  };
  const Key max = Key::Integer(INT64_MAX);
  const Key min = Key::Integer(INT64_MIN);
  EXPECT_THAT(shards(0, KeyBound{max, false}, std::nullopt), IsEmpty());
  EXPECT_THAT(shards(0, KeyBound{max, true}, std::nullopt), ElementsAre("s2"));
  EXPECT_THAT(shards(0, std::nullopt, KeyBound{min, false}), IsEmpty());
  EXPECT_THAT(shards(0, std::nullopt, KeyBound{min, true}), ElementsAre("s1"));
  // Text: (\"m\", ...) starts just above "m", at "m\0", owned by s3.
  EXPECT_THAT(shards(1, KeyBound{Key::Text("m"), false}, std::nullopt),
              ElementsAre("s3"));
  EXPECT_THAT(shards(1, KeyBound{Key::Text("m"), true}, std::nullopt),
              ElementsAre("s2", "s3"));
  EXPECT_THAT(shards(1, std::nullopt, KeyBound{Key::Text(""), false}), IsEmpty());
  EXPECT_THAT(shards(1, std::nullopt, KeyBound{Key::Text("m"), false}),
              ElementsAre("s1"));
  const Key top = *Key::Parse(KeyType::kUuid, "ffffffff-ffff-ffff-ffff-ffffffffffff");
  const Key mid = *Key::Parse(KeyType::kUuid, "7fffffff-ffff-ffff-ffff-ffffffffffff");
  EXPECT_THAT(shards(2, KeyBound{top, false}, std::nullopt), IsEmpty());
  EXPECT_THAT(shards(2, KeyBound{mid, false}, std::nullopt), ElementsAre("s2"));
  EXPECT_THAT(shards(2, KeyBound{mid, true}, std::nullopt), ElementsAre("s1", "s2"));
}

TEST(EvenSliceTest, BoundariesBelongToTheSliceTheyStart) {
  using internal::ShardMapBuilder;
  for (uint64_t n : {1, 2, 3, 5, 7, 64, 1000}) {
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t lo = ShardMapBuilder::EvenSliceLo(i, n);
      EXPECT_EQ(lo, static_cast<uint64_t>(
                        (static_cast<unsigned __int128>(i) << 64) / n));
      EXPECT_EQ(ShardMapBuilder::EvenSliceOf(lo, n), i) << n;
      if (i > 0) EXPECT_EQ(ShardMapBuilder::EvenSliceOf(lo - 1, n), i - 1) << n;
      if (lo + 1 != 0 && (i + 1 == n || lo + 1 < ShardMapBuilder::EvenSliceLo(i + 1, n))) {
        EXPECT_EQ(ShardMapBuilder::EvenSliceOf(lo + 1, n), i) << n;
      }
    }
    EXPECT_EQ(ShardMapBuilder::EvenSliceOf(~0ull, n), n - 1);
  }
  // floor(h * 3 / 2^64) is 0 for the first hash of slice 1: the correction.
  EXPECT_EQ(ShardMapBuilder::EvenSliceOf(0x5555555555555555ull, 3), 1u);
}

TEST_F(RangeLookupTest, RefusesKeysOfAnotherType) {
  absl::StatusOr<std::vector<ShardId>> ids =
      config_.map.distributions()[0].ShardsForRange(
          KeyRange{KeyBound{Key::Text("1"), true}, std::nullopt});
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ids.status().message()),
              HasSubstr("key 1 does not fit distribution 'events', whose key "
                        "type is int4"));
}

TEST(RangeLookupOnHashTest, IsAPreconditionFailure) {
  const Config config = MustParse(R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
)");
  absl::StatusOr<std::vector<ShardId>> ids =
      config.map.distributions()[0].ShardsForRange(KeyRange{});
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(ids.status().message()),
              HasSubstr("only range distributions"));
}

class RegionTest : public ::testing::Test {
 protected:
  RegionTest()
      : config_(MustParse(R"(
[distributions.geo]
strategy = "region"
key_type = "text"
hash_key_type = "int8"
regions = { eu = "s1", us = ["s2", "s3"] }
default = "s3"
[distributions.strict]
strategy = "region"
key_type = "text"
regions = { eu = "s1" }
[tables.customers]
distribution = "geo"
key = "region"
hash_key = "id"
[tables.accounts]
distribution = "strict"
key = "region"
)")) {}
  Config config_;
};

TEST_F(RegionTest, SingleShardRegionAndDefault) {
  EXPECT_EQ(ShardOf(config_.map, "customers", Key::Text("eu")), "s1");
  EXPECT_EQ(ShardOf(config_.map, "customers", Key::Text("apac")), "s3");
  EXPECT_EQ(ShardOf(config_.map, "accounts", Key::Text("eu")), "s1");
}

TEST_F(RegionTest, SpreadRegionUsesEvenSlicesOfTheHashKey) {
  int on_s2 = 0;
  for (int64_t id = 0; id < 2000; ++id) {
    const Key hash_key = Key::Integer(id);
    const bool lower_half = HashKey(hash_key) < EvenLo(1, 2);
    const std::string shard =
        ShardOf(config_.map, "customers", Key::Text("us"), &hash_key);
    ASSERT_EQ(shard, lower_half ? "s2" : "s3") << id;
    on_s2 += shard == "s2";
  }
  EXPECT_GT(on_s2, 800);
  EXPECT_LT(on_s2, 1200);
}

TEST_F(RegionTest, Errors) {
  EXPECT_EQ(ShardOf(config_.map, "customers", Key::Text("us")),
            "error: region 'us' of distribution 'geo' is spread over 2 shards "
            "by hash key: a hash-key value is needed to place a row");
  EXPECT_EQ(ShardOf(config_.map, "accounts", Key::Text("us")),
            "error: region 'us' is not listed in distribution 'strict' and it "
            "has no default shard; add it to `regions` or set `default`");
  const Key bad = Key::Text("x");
  EXPECT_EQ(ShardOf(config_.map, "customers", Key::Text("us"), &bad),
            "error: hash key: key x does not fit distribution 'geo', whose "
            "key type is int8");
}

TEST(ShardMapTest, TableErrors) {
  const Config config = MustParse(R"(
[distributions.users]
strategy = "hash"
key_type = "int8"
shards = ["s1", "s2"]
[tables.users]
distribution = "users"
key = "id"
[tables.countries]
reference = true
)");
  EXPECT_EQ(ShardOf(config.map, "nope", Key::Integer(1)),
            "error: table 'nope' is not in the shard map");
  EXPECT_EQ(ShardOf(config.map, "countries", Key::Integer(1)),
            "error: table 'countries' is a reference table: every shard "
            "holds all of its rows");
  EXPECT_EQ(ShardOf(config.map, "users", Key::Text("1")),
            "error: key 1 does not fit distribution 'users', whose key type "
            "is int8");
  EXPECT_EQ(config.map.epoch(), 1u);
  EXPECT_THAT(config.map.distributions()[0].shards(), ElementsAre(0u, 1u));
}

TEST(MaskDsnTest, HidesPasswords) {
  EXPECT_EQ(MaskDsnPassword("host=h port=5 dbname=app user=u password=secret"),
            MaskDsnPassword("host=h port=5 dbname=app user=u password=other"));
  EXPECT_THAT(MaskDsnPassword("host=h password='s e c' dbname=app"),
              HasSubstr("password=********"));
  EXPECT_THAT(MaskDsnPassword("host=h password='s e c' dbname=app"),
              ::testing::Not(HasSubstr("s e c")));
  EXPECT_EQ(MaskDsnPassword("postgresql://u:secret@h:5/app?password=x&sslmode=off"),
            "postgresql://u:********@h:5/app?password=********&sslmode=off");
  EXPECT_EQ(MaskDsnPassword("host=h dbname=app"), "host=h dbname=app");
  // With a secret, the string is rebuilt from libpq's parse (its order).
  EXPECT_EQ(MaskDsnPassword("host=h sslpassword=keypass dbname=x"),
            "dbname=x host=h sslpassword=********");
  EXPECT_EQ(MaskDsnPassword("postgresql://u:pa/ss@h/db"),
            "postgresql://u:********@h/db");
  EXPECT_EQ(MaskDsnPassword("postgresql://u@h/db?sslpassword=k"),
            "postgresql://u@h/db?sslpassword=********");
  EXPECT_EQ(MaskDsnPassword("host=h sslpassword='unterminated"),
            "host=h password=********");
  EXPECT_EQ(MaskDsnPassword("host=h password='unterminated"),
            "host=h password=********");
}

}  // namespace
}  // namespace shardkit
