#include "rebalancer/server_hash.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"

namespace shardkit::internal {
namespace {

// Sample keys of each kind, in the text form Key::Parse reads.
std::vector<std::string> Samples(KeyType type) {
  switch (type) {
    case KeyType::kInt2:
    case KeyType::kInt4:
    case KeyType::kInt8:
      return {"0", "1", "-1", "42", "9223372036854775807",
              "-9223372036854775808"};
    case KeyType::kText:
      return {"", "alice", "h\xc3\xa9llo", "\xe6\x9d\xb1\xe4\xba\xac"};
    case KeyType::kUuid:
      return {"00000000-0000-0000-0000-000000000000",
              "3f2b8c1e-9a4d-4e7b-8c2f-1d5e6a7b8c9d"};
  }
  return {};
}

// The key type whose function hashes keys of `type`: int2 and int4 keys
// are hashed as 64-bit integers (key.h).
KeyType HashedAs(KeyType type) {
  return type == KeyType::kInt2 || type == KeyType::kInt4 ? KeyType::kInt8
                                                          : type;
}

}  // namespace

absl::Status CheckServerHash(MoveSession& session, KeyType type) {
  const std::vector<std::string> samples = Samples(type);
  const std::string_view argument = KeySqlType(HashedAs(type));
  std::vector<std::optional<std::string>> params;
  std::string sql = "SELECT ";
  for (size_t i = 0; i < samples.size(); ++i) {
    StrAppend(&sql, i ? ", " : "", kServerHashFunction, "($", i + 1, "::",
              argument, ")::text");
    params.push_back(samples[i]);
  }
  absl::StatusOr<std::vector<MoveSession::Row>> rows =
      session.Query(sql, params, "checking shardkit's hash functions");
  if (!rows.ok()) {
    return absl::FailedPreconditionError(StrCat(
        "shard ", session.shard_name(), " cannot hash ", KeyTypeName(type),
        " keys itself (", rows.status().message(),
        "); `shardctl hash install` creates shardkit's hash functions"));
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    absl::StatusOr<Key> key = Key::Parse(HashedAs(type), samples[i]);
    if (!key.ok()) return key.status();
    const uint64_t want = HashKey(*key) ^ (uint64_t{1} << 63);
    int64_t got = 0;
    const std::optional<std::string>& value = rows->at(0).at(i);
    if (!value || !absl::SimpleAtoi(*value, &got) ||
        static_cast<uint64_t>(got) != want) {
      return absl::FailedPreconditionError(StrCat(
          "shard ", session.shard_name(), ": ", kServerHashFunction, "(",
          argument, ") hashes '", samples[i], "' to ",
          value.value_or("NULL"), ", not ", static_cast<int64_t>(want),
          " as this shardkit does; install the shardkit_pg module of this "
          "version (`shardctl hash install`)"));
    }
  }
  return absl::OkStatus();
}

absl::Status InstallServerHash(MoveSession& session,
                               std::string_view module_path) {
  absl::StatusOr<std::vector<int64_t>> created = session.Run(
      InstallServerHashSql(module_path), "creating shardkit's hash functions");
  if (!created.ok()) {
    return absl::FailedPreconditionError(StrCat(
        created.status().message(),
        "; the server must be able to read the module (give --module a path "
        "its user can read, or copy shardkit_pg.so into the directory "
        "`pg_config --pkglibdir` prints and use $libdir/shardkit_pg), and "
        "creating C functions needs a superuser"));
  }
  return CheckServerHashOfEveryType(session);
}

absl::Status CheckServerHashOfEveryType(MoveSession& session) {
  for (KeyType type : {KeyType::kInt8, KeyType::kText, KeyType::kUuid}) {
    RETURN_IF_ERROR(CheckServerHash(session, type));
  }
  return absl::OkStatus();
}

}  // namespace shardkit::internal
