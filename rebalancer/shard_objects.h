// Internal: what an online move installs on the shards it involves, and the
// contract between the mover (rebalancer/) and the router (router/).
//
// ## Epoch fence
//
// Every connection a Cluster uses carries the epoch of the map it routes
// by, as the session setting `shardkit.epoch` (a custom GUC: any name with
// a dot may be SET). A shard under a move holds
//
//   shardkit.fences (table_name text PRIMARY KEY, min_epoch int8 NOT NULL)
//
// (table_name: the table's name in the shard map, i.e. bare for a table of
// schema public, "schema.table" otherwise: the trigger function derives it
// from TG_TABLE_SCHEMA / TG_TABLE_NAME)
// and each table of the moving distribution has a BEFORE INSERT OR UPDATE
// OR DELETE OR TRUNCATE ... FOR EACH STATEMENT trigger
// (`shardkit_epoch_fence`, function shardkit.check_epoch()) that raises
// SQLSTATE kStaleEpochSqlState when the session's shardkit.epoch is below
// the table's fence (or unset while a fence exists). The mover raises the
// fence with shardkit.raise_fence(table_name, epoch) in a transaction that
// first takes LOCK TABLE ... IN SHARE ROW EXCLUSIVE MODE, so it waits out
// every write in flight (and prepared transactions) and every later write
// sees the new fence. The fence is kept twice: as min_epoch in
// shardkit.fences (for people and tests to read) and as the last value of
// a sequence per table, shardkit.fence_<md5 of table_name>. The trigger
// takes the greater. A sequence is read as it is now, not through the
// transaction's snapshot: a REPEATABLE READ or SERIALIZABLE transaction
// whose snapshot predates the fence still sees it (the fences table alone
// would show it the older value). So once the fence for epoch E is committed,
// no write routed by a map older than E can land on that table: a router learns
// it from the error, refreshes its map (LiveMap::Refresh), sets its
// connections' epoch, and retries the statement. Inside a transaction it
// does so when the statement was the transaction's first on every shard
// it ran on (rolling back those parts first) and the transaction holds
// nothing elsewhere, or the newer map is known already; otherwise (the
// refusal has aborted work of the transaction on that shard, or its work
// elsewhere would stay locked while it waits for the map) the transaction
// is rolled back on every shard before it waits for the newer map, and
// fails with the retryable error, message saying to retry it.
//
// ## Keys of a moving slice
//
// Rows of a moving slice exist on both its source and its destination from
// the first dual-write until the cleanup has deleted them from the source
// (or, for an aborted move, until the abort has deleted them from the
// destination). One side hides them:
//   - phase kDualWrite: the destination (the source owns the slice);
//   - phase kCutOver: the source (the destination owns it), until the
//     cleanup has deleted them and the move leaves the map.
// How a side tells the slice's rows apart depends on the strategy.
//
// Range and region slices: by their SQL condition (SliceConditionSql
// below): `key >= from AND key < to` for a range slice (an open side
// omitted; text compared under COLLATE "C", the key order), `key = region`
// for a region slice (only a region held by one shard moves: plan.cc).
// Every row of that side in the condition is the slice's (the shard owns
// no other rows in it), so nothing is listed: the backfill and the
// dual-writes add no key anywhere, the cleanup and the abort delete the
// rows in the condition, in primary-key batches.
//
// Hash slices, when both shards have shardkit's hash functions
// (extension/shardkit_pg.c, created by `shardctl hash install`; the mover
// checks at plan time that they agree with HashKey and records the answer
// in the move, `server_hash`): by their SQL condition too,
//   shardkit.hash_key_v1(key) >= lo AND shardkit.hash_key_v1(key) < hi
// (HashSliceConditionSql; the function returns the hash minus 2^63, so
// the bounds are the slice's minus 2^63), and nothing is listed either.
//
// Hash slices without them: the server cannot compute XXH3 (shardkit
// does), so each side keeps the list of the slice's keys it holds:
//
//   shardkit.move_<id>_keys (key <the distribution's key type> PRIMARY KEY)
//
// filled by the backfill (both sides, in each chunk's transactions) and by
// dual-writes (both sides, in the write's transaction). A key in the list
// may have no row (deleted since); a row of the slice always has its key
// listed. The cleanup and the abort delete the listed keys' rows.
// MoveListsKeys says which applies.
//
// Hiding: in a statement sent to the hiding shard, each reference to a
// table T of the distribution (alias A, or T) reads as
//   (SELECT * FROM T WHERE <visible>) AS A
// in FROM clauses, and UPDATE / DELETE of T get <visible> ANDed to their
// WHERE, where <visible> is, per move the shard hides,
//   NOT COALESCE(<the slice's condition on T.<key column>>, false)
// for a range or region slice (not "(...) IS NOT TRUE": libpg_query's
// deparser drops the parentheses around an AND under IS NOT TRUE, which
// then binds to the last comparison only), and
//   NOT EXISTS (SELECT 1 FROM shardkit.move_<id>_keys h
//               WHERE h.key = T.<key column>)
// for a hash slice.
//
// ## Dual-write (phase kDualWrite)
//
// A write that reaches the source shard of a kDualWrite move on a table of
// its distribution runs in a distributed transaction with the destination.
// On the source it returns the row images it wrote (RETURNING *, beside
// the user's own RETURNING, after a marker column holding the source
// transaction's id); the rows whose key is in the slice are applied on the
// destination: an INSERT or UPDATE as an upsert of the whole image, keyed
// by the table's primary key (INSERT ... ON CONFLICT (pk) DO UPDATE SET
// every column), a DELETE as a DELETE by primary key. For a hash slice
// (MoveListsKeys) the keys are listed where a row of the slice may be that
// nothing else lists: on the destination for an INSERT or UPDATE (the row
// it receives; a DELETE leaves none), on the source for an INSERT (a new
// row; every row that existed when the backfill passed its place in key
// order is listed by the backfill); a range or region slice lists none. A
// table under move must have a primary key that includes the shard key
// (the mover checks at plan time).
//
// A transaction (Cluster::Begin) commits the two sides by two-phase commit.
// A single statement (Cluster::Execute) that wrote the source and one
// move's destination commits without it, in two round trips: COMMIT on the
// destination first, whose statement also records each key copied with
// the source transaction's id in
//
//   shardkit.move_<id>_pending (xid xid8, key <key type>)
//
// then COMMIT on the source. The source's row locks, held until its
// commit, order the destination's copies as the source ordered the writes
// (a later write of the same row waits for them). A source that rolls
// back after the destination committed (its COMMIT failed, or the process
// died between the two) leaves a copy on the destination that the source
// never had: the mover finds it by asking the source how each recorded
// transaction ended (pg_xact_status) and puts the source's rows of those
// keys back, with the source's tables locked before verify and under the
// cutover's fences (rebalancer/pending_copies.h). The destination is
// fenced at the cutover's epoch right after the source, like it waiting
// for the writes in flight (LOCK TABLE), so that a copy already under way
// there has committed or rolled back before that check, and a copy sent
// later is refused. A transaction that a fence refused holds nothing
// while it waits for the newer map (it rolls back its parts on every
// shard first), so the cutover does not wait for it.
//
// ## Write guard (from the plan until the cutover)
//
// The router dual-writes what it sees as a write of a table: an INSERT,
// UPDATE or DELETE it routed. A write the shard makes on its own inside a
// statement the router saw as something else (a function called by a
// SELECT, a rule, a data-modifying function in an UPDATE of another
// table) would reach one side only: lost on the destination at the
// cutover, or changing a hidden copy. So every write statement the library
// sends to a table of the map starts with the comment WriteMark(table)
// ("/* shardkit writes <table> */ "), and while a move is being prepared
// and dual-written, each of its two shards marks each of its tables as
// guarded by it: the last value of a sequence per table,
// shardkit.guard_<md5 of table_name>, is the move's id (0: none), read as
// it is now like the fence's (a REPEATABLE READ transaction older than the
// guard still meets it); shardkit.write_guards (table_name, move_id) lists
// what each move guarded, for its removal and the DDL guard. The fence
// trigger then refuses (SQLSTATE 55000, kMoveUnderWaySqlState) a write of
// a guarded table unless
//   - it is the client's statement itself (trigger depth 1) and that
//     statement (current_query()) starts with the table's mark; or
//   - it is made by a trigger or a foreign key's cascade (depth > 1) and
//     the client's statement starts with the mark of a table the same move
//     guards (its dual-written row reaches the destination, whose triggers
//     and cascades run there too); or
//   - the session is the mover's (kMoverSetting = on).
// So a function or rule called by a statement, or a trigger fired by a
// write of another table, or a client that is not shardkit's, is refused.
// Not seen: a function called by the router's own write of the same table
// (UPDATE t SET x = f(id), f writing other rows of t) writes at depth 1
// under the table's mark. The mover adds the guard when it prepares a
// move and removes it once the cutover is published (the destination
// owns the slice then: nothing is dual-written) or the move is aborted.
// A marked write costs a string comparison; an unmarked one, a sequence
// read. The trigger function runs as its owner (SECURITY DEFINER, with a
// fixed search_path), so a writer needs no rights on schema shardkit. The
// fence trigger and the DDL guard's event triggers are ENABLE ALWAYS: they
// fire in sessions with session_replication_role = replica too (the
// mover's sessions, when it is a superuser, copy rows that way: no user
// trigger fires and no foreign key is checked for a copied row).
//
// Schema changes too: the move copies a table by the columns it had when
// it started (the backfill, the verify, the dual-write's upserts), so a
// column added or changed meanwhile would be lost or refused on the
// destination. The router refuses DDL of a moving table while the move is
// in its map (router/move_guard.h); on the shards, where the mover's user
// is a superuser, event triggers refuse DDL of a guarded table (an index
// or a rule on it, one of its columns dropped by a cascade, a fence
// trigger) from any other session (InstallDdlGuardSql); otherwise the
// mover says so in the move's journal. They know a table by its name: a
// table renamed or moved to another schema is not recognised (nor is it by
// the fence); CREATE INDEX CONCURRENTLY is refused only once its index is
// built (an invalid index remains, to drop).
//
// ## The mover's user
//
// Need not be a superuser: the owner of the moving tables (the fence is a
// trigger on them), who may create schema shardkit (CREATE on the
// database) or has been given it, and owns the objects in it that
// InstallFenceFunctionSql replaces and the fence writes. Created by a
// superuser (a move run as one; `shardctl hash install` creates the
// schema), they are not its: the mover checks both shards before it
// installs anything on either (MissingPrivilegesSql) and stops with the
// statements that would give it what it lacks. The fence trigger and the
// dual-write use schema shardkit with the privileges of the writing
// session, so the routers connect as a role that may too.
//
// ## Backfill
//
// Chunks in primary-key order. Each chunk: on the source, in a transaction,
// SELECT the chunk's rows FOR SHARE (a concurrent dual-write of those rows
// waits until the chunk is on the destination, so the chunk's image is
// never older than one already dual-written and a delete cannot slip
// between read and copy), keep those in the slice (a range or region
// slice: by its condition, in the SELECT), COPY them into T on the
// destination (into a temporary staging table, then INSERT INTO T SELECT
// ... FROM staging ON CONFLICT DO NOTHING, when one is already there: a
// row already dual-written is newer: kept), for a hash slice add the keys
// to the destination's list, commit the destination, then the source, then
// for a hash slice list the keys on the source (rebalancer/backfill.h says
// why after, and how the backfill's lock waits are bounded).

#ifndef SHARDKIT_REBALANCER_SHARD_OBJECTS_H_
#define SHARDKIT_REBALANCER_SHARD_OBJECTS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shardkit/key.h"
#include "shardkit/shard_map.h"

namespace shardkit::internal {

// Raised by the epoch fence: the statement was routed by a stale map.
inline constexpr std::string_view kStaleEpochSqlState = "SK001";

// The session setting that carries a connection's map epoch.
inline constexpr std::string_view kEpochSetting = "shardkit.epoch";

// The session setting the mover's sessions set to "on": their writes of a
// guarded table pass the write guard (see "Write guard").
inline constexpr std::string_view kMoverSetting = "shardkit.mover";

// The comment that starts every write statement the library sends to
// `table` (its name in the shard map): "/* shardkit writes <table> */ ",
// with '*' and '/' of the name read as '_'. See "Write guard".
std::string WriteMark(std::string_view table);

// The WriteMark `sql` starts with, or "" when it starts with none.
std::string_view LeadingWriteMark(std::string_view sql);

// Guards `table_literal` (the table's map name as an SQL string literal)
// for move `move_id` on the shard it runs on (idempotent).
std::string AddWriteGuardSql(std::string_view table_literal, uint64_t move_id);

// Removes move `move_id`'s write guards from the shard it runs on.
std::string RemoveWriteGuardsSql(uint64_t move_id);

// "shardkit.move_<id>_keys".
std::string MoveKeysTable(uint64_t move_id);

// "shardkit.move_<id>_pending" (see "Dual-write of a single statement").
std::string MovePendingTable(uint64_t move_id);

// SQL type of a key column of `type` for the keys table ("int8", "text",
// "uuid", ...).
std::string_view KeySqlType(KeyType type);

// Creates (idempotently) the schema shardkit, and move `move_id`'s keys
// table and pending table for keys of `type`.
std::string CreateMoveTablesSql(uint64_t move_id, KeyType type);

// Whether a move of a distribution of `strategy` keeps the lists of its
// keys (hash, unless the shards compute the hash themselves:
// `server_hash`) or is hidden, cleaned up and aborted by its SQL condition
// (range, region, hash with server_hash); see "Keys of a moving slice"
// above.
bool MoveListsKeys(Strategy strategy, bool server_hash);

// The SQL function, on a shard, that hashes a key as HashKey does, minus
// 2^63 (extension/shardkit_pg.c): "shardkit.hash_key_v1".
inline constexpr std::string_view kServerHashFunction = "shardkit.hash_key_v1";

// Creates (idempotently) shardkit.hash_key_v1(int8 | text | uuid) from the
// module at `module_path` (a path the server can read, or
// "$libdir/shardkit_pg" once installed in the server's library directory).
// Creating C functions needs a superuser.
std::string InstallServerHashSql(std::string_view module_path);

// The SQL condition that holds for exactly the keys of the hash slice
// [hash_lo, hash_hi) (hash_hi nullopt: to 2^64), by kServerHashFunction;
// "true" for the whole hash space. `column` as for SliceConditionSql.
std::string HashSliceConditionSql(uint64_t hash_lo,
                                  const std::optional<uint64_t>& hash_hi,
                                  std::string_view column);

// The SQL condition that holds for exactly the rows of a range or region
// slice (see "Keys of a moving slice"), `column` being the key column as
// the statement names it (quoted, perhaps qualified by an alias):
//   range [from, to)   column >= from AND column < to (an open side
//                      omitted; "true" when both are open)
//   region r           column = r
// A text column is compared under COLLATE "C" (the key order of key.h, and
// byte equality for a region); literals are typed ('..'::int8, E'..'::text,
// '..'::uuid) and escaped for any standard_conforming_strings. The mover
// (backfill, verify, cleanup, abort) and the routers (hiding) use this one
// condition, so they agree on the slice's rows.
// REQUIRES: strategy is kRange or kRegion.
std::string SliceConditionSql(Strategy strategy, KeyType key_type,
                              const std::optional<Key>& from,
                              const std::optional<Key>& to,
                              std::string_view region,
                              std::string_view column);

// Creates (idempotently) shardkit.fences, shardkit.write_guards,
// shardkit.check_epoch() (the fence and the write guard),
// shardkit.write_mark(table_name text) and
// shardkit.raise_fence(table_name text, epoch int8).
std::string InstallFenceFunctionSql();

// One row on the shard it runs on, about what keeps the session's user from
// preparing a move of `tables` (their map names) there: the user; the
// statements that a superuser (or the owner of what they name) would run
// to let it install the fence and the write guard (CREATE SCHEMA shardkit
// AUTHORIZATION, GRANT USAGE, CREATE ON SCHEMA shardkit, ALTER ... OWNER
// TO for the objects of InstallFenceFunctionSql and the tables' fence
// sequences that another role owns), "" when none; and the moving tables
// the user does not own, as "users (owner app)", NULL when none (adding
// the fence trigger needs their owner). Installed once by a superuser (a
// move run as one, `shardctl hash install`), those belong to it.
// REQUIRES: `tables` is not empty and each exists on the shard.
std::string MissingPrivilegesSql(const std::vector<std::string>& tables);

// Creates (idempotently) the event triggers shardkit_guard_ddl and
// shardkit_guard_drop and their functions, which refuse (SQLSTATE 55000)
// DDL that changes or drops a table (or an index of it) guarded by
// shardkit.write_guards, except in the mover's sessions (see "Write
// guard"). Event triggers need a superuser. REQUIRES: InstallFenceFunctionSql
// ran (the guards table).
std::string InstallDdlGuardSql();

// Creates (idempotently) the fence trigger on `table` (a quoted, possibly
// qualified name).
std::string InstallFenceTriggerSql(std::string_view quoted_table);

// Drops the fence trigger on `table`, its fences row and its sequence.
std::string RemoveFenceSql(std::string_view quoted_table,
                           std::string_view table_name);

}  // namespace shardkit::internal

#endif  // SHARDKIT_REBALANCER_SHARD_OBJECTS_H_
