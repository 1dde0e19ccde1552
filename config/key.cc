#include "shardkit/key.h"

#include <bit>
#include <cstring>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/strings.h"
#include "absl/strings/str_format.h"

#define XXH_INLINE_ALL  // no symbol clash with libpg_query's bundled xxHash
#include <xxhash.h>

namespace shardkit {
namespace {

struct IntRange {
  int64_t min;
  int64_t max;
};

IntRange RangeOf(KeyType type) {
  switch (type) {
    case KeyType::kInt2:
      return {std::numeric_limits<int16_t>::min(),
              std::numeric_limits<int16_t>::max()};
    case KeyType::kInt4:
      return {std::numeric_limits<int32_t>::min(),
              std::numeric_limits<int32_t>::max()};
    default:
      return {std::numeric_limits<int64_t>::min(),
              std::numeric_limits<int64_t>::max()};
  }
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// PostgreSQL's uuid input: 32 hex digits, optionally in braces, with an
// optional hyphen after any group of four digits.
absl::StatusOr<Key::Uuid> ParseUuid(std::string_view text) {
  auto invalid = [&] {
    return absl::InvalidArgumentError(StrCat(
        "invalid uuid \"", text,
        "\": expected 32 hex digits such as "
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
  };
  std::string_view s = text;
  if (!s.empty() && s.front() == '{') {
    if (s.size() < 2 || s.back() != '}') return invalid();
    s = s.substr(1, s.size() - 2);
  }
  Key::Uuid out{};
  int digits = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '-') {
      if (digits == 0 || digits % 4 != 0 || digits == 32 || s[i - 1] == '-') {
        return invalid();
      }
      continue;
    }
    int v = HexValue(s[i]);
    if (v < 0 || digits == 32) return invalid();
    out[digits / 2] = static_cast<uint8_t>(out[digits / 2] | (digits % 2 == 0 ? v << 4 : v));
    ++digits;
  }
  if (digits != 32) return invalid();
  return out;
}

}  // namespace

std::string_view KeyTypeName(KeyType type) {
  switch (type) {
    case KeyType::kInt2: return "int2";
    case KeyType::kInt4: return "int4";
    case KeyType::kInt8: return "int8";
    case KeyType::kText: return "text";
    case KeyType::kUuid: return "uuid";
  }
  return "?";
}

std::optional<KeyType> KeyTypeFromName(std::string_view name) {
  for (KeyType t : {KeyType::kInt2, KeyType::kInt4, KeyType::kInt8,
                    KeyType::kText, KeyType::kUuid}) {
    if (KeyTypeName(t) == name) return t;
  }
  return std::nullopt;
}

bool IsIntegerKeyType(KeyType type) {
  return type == KeyType::kInt2 || type == KeyType::kInt4 ||
         type == KeyType::kInt8;
}

absl::StatusOr<Key> Key::Parse(KeyType type, std::string_view text) {
  switch (type) {
    case KeyType::kText:
      return Key::Text(std::string(text));
    case KeyType::kUuid: {
      absl::StatusOr<Uuid> uuid = ParseUuid(text);
      if (!uuid.ok()) return uuid.status();
      return Key::FromUuid(*uuid);
    }
    default:
      break;
  }
  int64_t value = 0;
  if (!absl::SimpleAtoi(absl::string_view(text.data(), text.size()), &value)) {
    return absl::InvalidArgumentError(
        StrCat("invalid ", KeyTypeName(type), " value \"", text,
                     "\": expected a decimal integer"));
  }
  IntRange range = RangeOf(type);
  if (value < range.min || value > range.max) {
    return absl::InvalidArgumentError(StrCat(
        KeyTypeName(type), " value ", value, " is out of range [", range.min,
        ", ", range.max, "]"));
  }
  return Key::Integer(value);
}

bool Key::FitsType(KeyType type) const {
  switch (kind()) {
    case Kind::kInteger: {
      if (!IsIntegerKeyType(type)) return false;
      IntRange range = RangeOf(type);
      return integer() >= range.min && integer() <= range.max;
    }
    case Kind::kText:
      return type == KeyType::kText;
    case Kind::kUuid:
      return type == KeyType::kUuid;
  }
  return false;
}

std::string Key::ToString() const {
  switch (kind()) {
    case Kind::kInteger:
      return std::to_string(integer());
    case Kind::kText:
      return text();
    case Kind::kUuid: {
      std::string out;
      const Uuid& u = uuid();
      for (size_t i = 0; i < u.size(); ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
        absl::StrAppendFormat(&out, "%02x", u[i]);
      }
      return out;
    }
  }
  return "";
}

int Key::Compare(const Key& other) const {
  if (kind() != other.kind()) {
    return static_cast<int>(kind()) < static_cast<int>(other.kind()) ? -1 : 1;
  }
  switch (kind()) {
    case Kind::kInteger:
      return integer() < other.integer() ? -1 : integer() > other.integer();
    case Kind::kText: {
      // std::string::compare uses char_traits<char>, which compares as
      // unsigned char: byte order, as PostgreSQL's "C" collation.
      int c = text().compare(other.text());
      return c < 0 ? -1 : c > 0;
    }
    case Kind::kUuid: {
      int c = std::memcmp(uuid().data(), other.uuid().data(), 16);
      return c < 0 ? -1 : c > 0;
    }
  }
  return 0;
}

namespace {

void EncodeInteger(int64_t value, unsigned char out[8]) {
  const uint64_t u = static_cast<uint64_t>(value);
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(out, &u, 8);  // one store; the loop below is not folded
  } else {
    for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(u >> (8 * i));
  }
}

}  // namespace

std::string EncodeKey(const Key& key) {
  switch (key.kind()) {
    case Key::Kind::kInteger: {
      unsigned char buf[8];
      EncodeInteger(key.integer(), buf);
      return std::string(reinterpret_cast<const char*>(buf), 8);
    }
    case Key::Kind::kText:
      return key.text();
    case Key::Kind::kUuid:
      return std::string(reinterpret_cast<const char*>(key.uuid().data()), 16);
  }
  return "";
}

uint64_t HashKey(const Key& key) {
  switch (key.kind()) {
    case Key::Kind::kInteger: {
      unsigned char buf[8];
      EncodeInteger(key.integer(), buf);
      return XXH3_64bits(buf, 8);
    }
    case Key::Kind::kText:
      return XXH3_64bits(key.text().data(), key.text().size());
    case Key::Kind::kUuid:
      return XXH3_64bits(key.uuid().data(), 16);
  }
  return 0;
}

Key MinKey(KeyType type) {
  switch (type) {
    case KeyType::kText:
      return Key::Text("");
    case KeyType::kUuid:
      return Key::FromUuid(Key::Uuid{});
    default:
      return Key::Integer(RangeOf(type).min);
  }
}

std::string FormatHash(uint64_t hash) {
  return absl::StrFormat("0x%016x", hash);
}

absl::StatusOr<uint64_t> ParseHash(std::string_view text) {
  auto invalid = [&] {
    return absl::InvalidArgumentError(StrCat(
        "invalid hash bound \"", text,
        "\": expected \"0x\" and 1 to 16 hex digits, e.g. "
        "\"0x8000000000000000\""));
  };
  if (text.size() < 3 || text.size() > 18 || text[0] != '0' ||
      (text[1] != 'x' && text[1] != 'X')) {
    return invalid();
  }
  uint64_t value = 0;
  for (char c : text.substr(2)) {
    int v = HexValue(c);
    if (v < 0) return invalid();
    value = (value << 4) | static_cast<uint64_t>(v);
  }
  return value;
}

}  // namespace shardkit
