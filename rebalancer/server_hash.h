// Internal: shardkit's hash functions on a shard (extension/shardkit_pg.c).
//
// A shard that can compute HashKey itself, as shardkit.hash_key_v1(key),
// lets an online move of a hash slice tell the slice's rows apart in SQL,
// as a range slice does: no key lists, so the backfill and the dual-writes
// do a third of the work (rebalancer/shard_objects.h, "Keys of a moving
// slice"). The mover uses the functions only after checking, on both
// shards, that they hash sample keys exactly as the library does.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<MoveSession> s, MoveSession::Open(...));
//   RETURN_IF_ERROR(InstallServerHash(*s, "$libdir/shardkit_pg"));
//   absl::Status usable = CheckServerHash(*s, KeyType::kInt8);
//
// Thread-safety: uses only the session given.

#ifndef SHARDKIT_REBALANCER_SERVER_HASH_H_
#define SHARDKIT_REBALANCER_SERVER_HASH_H_

#include <string_view>

#include "absl/status/status.h"
#include "rebalancer/move_session.h"
#include "shardkit/key.h"

namespace shardkit::internal {

// Where the module is once installed in the server's library directory
// (`pg_config --pkglibdir`), as CREATE FUNCTION names it.
inline constexpr std::string_view kServerHashModule = "$libdir/shardkit_pg";

// Creates (or replaces) shardkit.hash_key_v1 for every key type on the
// session's shard from the module at `module_path`, then checks them
// (CheckServerHash, every key type). Fails with the server's error, and
// what to do, when the server cannot load the module or the user may not
// create C functions (a superuser is needed).
[[nodiscard]] absl::Status InstallServerHash(MoveSession& session,
                                             std::string_view module_path);

// OK when the session's shard has shardkit.hash_key_v1 for keys of `type`
// and it hashes sample keys (negative and large integers, empty and
// non-ASCII text, a uuid) exactly as HashKey does. kFailedPrecondition
// saying why otherwise (missing, not loadable, or hashing differently).
[[nodiscard]] absl::Status CheckServerHash(MoveSession& session,
                                           KeyType type);

// CheckServerHash for each function (int8, text, uuid).
[[nodiscard]] absl::Status CheckServerHashOfEveryType(MoveSession& session);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_SERVER_HASH_H_
