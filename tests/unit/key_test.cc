#include "shardkit/key.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace shardkit {
namespace {

using ::testing::HasSubstr;

Key MustParse(KeyType type, std::string_view text) {
  absl::StatusOr<Key> key = Key::Parse(type, text);
  EXPECT_TRUE(key.ok()) << key.status();
  return key.ok() ? *key : Key::Integer(0);
}

// The on-disk contract: these bytes and hashes must never change. The hashes
// were computed independently with the reference tool (`xxhsum -H3`) over
// the encoded bytes.
struct Vector {
  KeyType type;
  std::string text;
  std::string encoded;
  uint64_t hash;
};

TEST(KeyEncodingTest, GoldenVectors) {
  const std::vector<Vector> vectors = {
      {KeyType::kInt8, "42", std::string("\x2a\0\0\0\0\0\0\0", 8),
       0xd5a6f8c838df27c8ull},
      {KeyType::kInt8, "-1", std::string(8, '\xff'), 0x5111c7e47d784413ull},
      {KeyType::kInt2, "7", std::string("\x07\0\0\0\0\0\0\0", 8),
       0x81671e58d6b596afull},
      {KeyType::kInt4, "7", std::string("\x07\0\0\0\0\0\0\0", 8),
       0x81671e58d6b596afull},
      {KeyType::kText, "alice", "alice", 0x4da10dd61a0116b0ull},
      {KeyType::kText, "h\xc3\xa9llo", "h\xc3\xa9llo", 0x6a45b79a7b549b1full},
      {KeyType::kText, "", "", 0x2d06800538d394c2ull},
      {KeyType::kUuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
       "\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11",
       0x55df69482c6d3767ull},
  };
  for (const Vector& v : vectors) {
    SCOPED_TRACE(std::string(KeyTypeName(v.type)) + " " + v.text);
    const Key key = MustParse(v.type, v.text);
    EXPECT_EQ(EncodeKey(key), v.encoded);
    EXPECT_EQ(HashKey(key), v.hash);
    EXPECT_EQ(FormatHash(HashKey(key)).size(), 18u);
  }
}

TEST(KeyParseTest, AcceptsPostgresUuidForms) {
  const Key canonical =
      MustParse(KeyType::kUuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  for (const char* form :
       {"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
        "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
        "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}"}) {
    SCOPED_TRACE(form);
    EXPECT_EQ(MustParse(KeyType::kUuid, form), canonical);
  }
  EXPECT_EQ(canonical.ToString(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
}

TEST(KeyParseTest, RejectsWithSpecificMessages) {
  struct Case {
    KeyType type;
    std::string text;
    std::string message;
  };
  const std::vector<Case> cases = {
      {KeyType::kInt8, "abc", "invalid int8 value \"abc\": expected a decimal integer"},
      {KeyType::kInt8, "12.5", "invalid int8 value \"12.5\""},
      {KeyType::kInt8, "9223372036854775808", "invalid int8 value"},
      {KeyType::kInt2, "32768", "int2 value 32768 is out of range [-32768, 32767]"},
      {KeyType::kInt4, "-2147483649", "int4 value -2147483649 is out of range"},
      {KeyType::kUuid, "a0eebc99", "invalid uuid \"a0eebc99\""},
      {KeyType::kUuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g", "invalid uuid"},
      {KeyType::kUuid, "-a0eebc999c0b4ef8bb6d6bb9bd380a11", "invalid uuid"},
      {KeyType::kUuid, "a0eebc99--9c0b4ef8bb6d6bb9bd380a11", "invalid uuid"},
      {KeyType::kUuid, "a0e-ebc999c0b4ef8bb6d6bb9bd380a11", "invalid uuid"},
      {KeyType::kUuid, "{a0eebc999c0b4ef8bb6d6bb9bd380a11", "invalid uuid"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text);
    absl::StatusOr<Key> key = Key::Parse(c.type, c.text);
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(key.status().message()), HasSubstr(c.message));
  }
}

TEST(KeyTest, IntegerBoundsOfEachWidth) {
  EXPECT_TRUE(MustParse(KeyType::kInt2, "-32768").FitsType(KeyType::kInt2));
  EXPECT_TRUE(MustParse(KeyType::kInt8, "-9223372036854775808")
                  .FitsType(KeyType::kInt8));
  EXPECT_FALSE(Key::Integer(40000).FitsType(KeyType::kInt2));
  EXPECT_TRUE(Key::Integer(40000).FitsType(KeyType::kInt4));
  EXPECT_FALSE(Key::Integer(1).FitsType(KeyType::kText));
  EXPECT_FALSE(Key::Text("1").FitsType(KeyType::kInt8));
}

TEST(KeyTest, OrderMatchesPostgres) {
  EXPECT_LT(Key::Integer(-5), Key::Integer(3));
  // Byte order ("C" collation): upper case before lower case, and a byte
  // above 0x7f after every ASCII byte.
  EXPECT_LT(Key::Text("Zebra"), Key::Text("apple"));
  EXPECT_LT(Key::Text("abc"), Key::Text("abcd"));
  EXPECT_LT(Key::Text("z"), Key::Text("\xc3\xa9"));
  EXPECT_LT(MustParse(KeyType::kUuid, "00000000-0000-0000-0000-0000000000ff"),
            MustParse(KeyType::kUuid, "80000000-0000-0000-0000-000000000000"));
}

TEST(HashBoundTest, ParseAndFormat) {
  EXPECT_EQ(*ParseHash("0x8000000000000000"), 0x8000000000000000ull);
  EXPECT_EQ(*ParseHash("0XfF"), 0xffull);
  EXPECT_EQ(*ParseHash("0xffffffffffffffff"), ~0ull);
  EXPECT_EQ(FormatHash(0x40), "0x0000000000000040");
  for (const char* bad : {"", "0x", "8000", "0x10000000000000000", "0xg1",
                          "-0x1", "0x 1"}) {
    SCOPED_TRACE(bad);
    absl::StatusOr<uint64_t> v = ParseHash(bad);
    ASSERT_FALSE(v.ok());
    EXPECT_THAT(std::string(v.status().message()),
                HasSubstr("expected \"0x\" and 1 to 16 hex digits"));
  }
}

TEST(KeyTypeTest, NamesRoundTrip) {
  for (KeyType t : {KeyType::kInt2, KeyType::kInt4, KeyType::kInt8,
                    KeyType::kText, KeyType::kUuid}) {
    EXPECT_EQ(KeyTypeFromName(KeyTypeName(t)), t);
  }
  EXPECT_EQ(KeyTypeFromName("bigint"), std::nullopt);
}

}  // namespace
}  // namespace shardkit
