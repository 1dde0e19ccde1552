// Shard keys: their types, values, the fixed encoding that hashing uses, and
// their order for range distributions.
//
// A shard key is the value of a table's shard-key column. A distribution
// declares its `KeyType`; a `Key` holds one value of one of three kinds
// (integer, text, uuid). Integer keys of every width share one kind: the
// width only bounds what a distribution accepts.
//
// Example:
//
//   absl::StatusOr<shardkit::Key> key =
//       shardkit::Key::Parse(shardkit::KeyType::kInt8, "42");
//   if (!key.ok()) return key.status();
//   uint64_t h = shardkit::HashKey(*key);   // 0x... (see the encoding below)
//
// ## The hash encoding (an on-disk contract, version 1)
//
// Hash distributions place a key by `XXH3_64bits(EncodeKey(key), seed = 0)`,
// read as an unsigned 64-bit value. `EncodeKey` is:
//
//   int2 / int4 / int8   the value as a signed 64-bit integer, 8 bytes,
//                        little endian (so int2 7 and int8 7 hash alike)
//   text / varchar       its UTF-8 bytes, no terminator, no length prefix
//   uuid                 its 16 bytes in RFC 4122 order (as printed)
//
// This encoding decides where every row of every hash-distributed table
// lives. It never changes silently: a change would be a new version with a
// migration. Golden vectors in tests/unit/key_test.cc pin it.
//
// ## Order (range distributions)
//
// Integers compare by value, text by unsigned byte order (PostgreSQL's "C"
// collation), uuids by their 16 bytes (as PostgreSQL orders uuid).
//
// Thread-safety: `Key` is a value type; const methods may be called
// concurrently.

#ifndef SHARDKIT_KEY_H_
#define SHARDKIT_KEY_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "absl/status/statusor.h"

namespace shardkit {

// The SQL type of a shard-key column.
enum class KeyType { kInt2, kInt4, kInt8, kText, kUuid };

// "int2", "int4", "int8", "text", "uuid".
std::string_view KeyTypeName(KeyType type);

// The inverse of KeyTypeName; nullopt for any other string.
std::optional<KeyType> KeyTypeFromName(std::string_view name);

// True for kInt2, kInt4 and kInt8.
bool IsIntegerKeyType(KeyType type);

// One shard-key value.
class Key {
 public:
  enum class Kind { kInteger, kText, kUuid };
  using Uuid = std::array<uint8_t, 16>;

  static Key Integer(int64_t value) { return Key(value); }
  static Key Text(std::string bytes) { return Key(std::move(bytes)); }
  static Key FromUuid(const Uuid& bytes) { return Key(bytes); }

  // Parses the text form of a value of `type`: a decimal integer within the
  // type's range, any string for text, or a uuid in PostgreSQL's accepted
  // input forms (hex digits, optional hyphens, optional braces).
  // Fails with kInvalidArgument naming the type and the value.
  [[nodiscard]] static absl::StatusOr<Key> Parse(KeyType type,
                                                 std::string_view text);

  Kind kind() const { return static_cast<Kind>(value_.index()); }

  // REQUIRES: kind() == Kind::kInteger.
  int64_t integer() const { return std::get<int64_t>(value_); }
  // REQUIRES: kind() == Kind::kText.
  const std::string& text() const { return std::get<std::string>(value_); }
  // REQUIRES: kind() == Kind::kUuid.
  const Uuid& uuid() const { return std::get<Uuid>(value_); }

  // Whether this key can be a value of `type`: the kind matches and an
  // integer fits the type's width.
  bool FitsType(KeyType type) const;

  // The text form PostgreSQL would print: "42", the text itself, or a
  // lower-case hyphenated uuid.
  std::string ToString() const;

  // Total order within one kind (see "Order" above); keys of different kinds
  // order by kind. Returns <0, 0, >0.
  int Compare(const Key& other) const;

  friend bool operator==(const Key& a, const Key& b) {
    return a.value_ == b.value_;
  }
  friend bool operator<(const Key& a, const Key& b) {
    return a.Compare(b) < 0;
  }

 private:
  explicit Key(int64_t v) : value_(v) {}
  explicit Key(std::string v) : value_(std::move(v)) {}
  explicit Key(const Uuid& v) : value_(v) {}

  std::variant<int64_t, std::string, Uuid> value_;
};

// The smallest value of `type`: the type's minimum integer, "" for text,
// the all-zero uuid.
Key MinKey(KeyType type);

// The bytes that are hashed for `key` (see "The hash encoding" above).
std::string EncodeKey(const Key& key);

// XXH3_64bits(EncodeKey(key), seed 0).
uint64_t HashKey(const Key& key);

// Formats a hash value as "0x%016x", the form used in configs and output.
std::string FormatHash(uint64_t hash);

// Parses "0x" followed by 1 to 16 hex digits (either case).
// Fails with kInvalidArgument otherwise.
[[nodiscard]] absl::StatusOr<uint64_t> ParseHash(std::string_view text);

}  // namespace shardkit

#endif  // SHARDKIT_KEY_H_
