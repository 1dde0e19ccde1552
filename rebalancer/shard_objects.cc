#include "rebalancer/shard_objects.h"

#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/strings.h"
#include "rebalancer/move_session.h"

namespace shardkit::internal {

std::string MoveKeysTable(uint64_t move_id) {
  return StrCat("shardkit.move_", move_id, "_keys");
}

std::string MovePendingTable(uint64_t move_id) {
  return StrCat("shardkit.move_", move_id, "_pending");
}

std::string_view KeySqlType(KeyType type) {
  switch (type) {
    case KeyType::kInt2: return "int2";
    case KeyType::kInt4: return "int4";
    case KeyType::kInt8: return "int8";
    case KeyType::kText: return "text";
    case KeyType::kUuid: return "uuid";
  }
  return "text";
}

namespace {

// CREATE SCHEMA IF NOT EXISTS asks for CREATE on the database even when the
// schema exists: a mover's user given the schema, not the database, would
// be refused.
constexpr std::string_view kCreateSchemaSql =
    "DO $schema$ BEGIN IF to_regnamespace('shardkit') IS NULL THEN "
    "CREATE SCHEMA IF NOT EXISTS shardkit; END IF; END $schema$;";

}  // namespace

std::string CreateMoveTablesSql(uint64_t move_id, KeyType type) {
  return StrCat(kCreateSchemaSql,
                " CREATE TABLE IF NOT EXISTS ", MoveKeysTable(move_id),
                " (key ", KeySqlType(type), " PRIMARY KEY); "
                "CREATE TABLE IF NOT EXISTS ", MovePendingTable(move_id),
                " (xid xid8 NOT NULL, key ", KeySqlType(type), " NOT NULL)");
}

bool MoveListsKeys(Strategy strategy, bool server_hash) {
  return strategy == Strategy::kHash && !server_hash;
}

namespace {

// E'...': the same string whatever standard_conforming_strings says.
std::string EscapedString(std::string_view text) {
  std::string out = "E'";
  for (char c : text) {
    if (c == '\\' || c == '\'') out += c;
    out += c;
  }
  out += '\'';
  return out;
}

std::string KeyLiteral(KeyType type, const Key& key) {
  switch (type) {
    case KeyType::kInt2:
    case KeyType::kInt4:
    case KeyType::kInt8:
      // int8 compares with int2 and int4 columns by the integer operator
      // family, so an index on the column still serves.
      return StrCat("'", key.ToString(), "'::int8");
    case KeyType::kText:
      return StrCat(EscapedString(key.ToString()), "::text");
    case KeyType::kUuid:
      return StrCat("'", key.ToString(), "'::uuid");
  }
  return "NULL";
}

}  // namespace

std::string SliceConditionSql(Strategy strategy, KeyType key_type,
                              const std::optional<Key>& from,
                              const std::optional<Key>& to,
                              std::string_view region,
                              std::string_view column) {
  // Range slices order text by bytes (key.h), which is the "C" collation;
  // regions are told apart by their bytes (a nondeterministic collation
  // could make two regions equal).
  const std::string ref = key_type == KeyType::kText
                              ? StrCat(column, " COLLATE \"C\"")
                              : std::string(column);
  if (strategy == Strategy::kRegion) {
    return StrCat(ref, " = ", EscapedString(region), "::text");
  }
  std::string out;
  if (from) StrAppend(&out, ref, " >= ", KeyLiteral(key_type, *from));
  if (to) {
    StrAppend(&out, out.empty() ? "" : " AND ", ref, " < ",
              KeyLiteral(key_type, *to));
  }
  return out.empty() ? "true" : out;
}

std::string InstallServerHashSql(std::string_view module_path) {
  std::string out = "CREATE SCHEMA IF NOT EXISTS shardkit;";
  for (std::string_view type : {"int8", "text", "uuid"}) {
    StrAppend(&out, " CREATE OR REPLACE FUNCTION ", kServerHashFunction, "(",
              type, ") RETURNS int8 AS ", EscapedString(module_path), ", ",
              "'shardkit_hash_key_v1_", type,
              "' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;");
  }
  return out;
}

std::string HashSliceConditionSql(uint64_t hash_lo,
                                  const std::optional<uint64_t>& hash_hi,
                                  std::string_view column) {
  // The function returns the hash with its top bit flipped (the hash minus
  // 2^63 as an int8), so that int8 order is the hash's unsigned order.
  auto bound = [](uint64_t hash) {
    return StrCat("'", static_cast<int64_t>(hash ^ (uint64_t{1} << 63)),
                  "'::int8");
  };
  const std::string hashed = StrCat(kServerHashFunction, "(", column, ")");
  std::string out;
  if (hash_lo != 0) StrAppend(&out, hashed, " >= ", bound(hash_lo));
  if (hash_hi) {
    StrAppend(&out, out.empty() ? "" : " AND ", hashed, " < ",
              bound(*hash_hi));
  }
  return out.empty() ? "true" : out;
}

std::string InstallFenceFunctionSql() {
  // The fence row is keyed by the table's name in the shard map: bare in
  // schema public (as the map names it), qualified elsewhere. The SELECT
  // runs in the writer's statement after it took its table lock, so under
  // READ COMMITTED it sees any fence committed before that lock was
  // granted (see the header).
  return StrCat(kCreateSchemaSql, R"sql(
CREATE TABLE IF NOT EXISTS shardkit.fences (
  table_name text PRIMARY KEY,
  min_epoch int8 NOT NULL
);
CREATE TABLE IF NOT EXISTS shardkit.write_guards (
  table_name text NOT NULL,
  move_id int8 NOT NULL,
  PRIMARY KEY (table_name, move_id)
);
CREATE OR REPLACE FUNCTION shardkit.write_mark(written text)
RETURNS text LANGUAGE sql IMMUTABLE AS
$mark$ SELECT '/* shardkit writes ' || translate(written, '*/', '__') || ' */ ' $mark$;
CREATE OR REPLACE FUNCTION shardkit.fence_sequence(fenced text)
RETURNS text LANGUAGE sql IMMUTABLE AS
$seq$ SELECT 'shardkit.' || quote_ident('fence_' || md5(fenced)) $seq$;
CREATE OR REPLACE FUNCTION shardkit.raise_fence(fenced text, epoch int8)
RETURNS void LANGUAGE plpgsql AS $raise$
DECLARE
  sequence text := shardkit.fence_sequence(fenced);
BEGIN
  EXECUTE format('CREATE SEQUENCE IF NOT EXISTS %s MINVALUE 0', sequence);
  PERFORM setval(sequence::regclass,
                 greatest(epoch, coalesce(pg_sequence_last_value(
                                            sequence::regclass), 0)),
                 true);
  INSERT INTO shardkit.fences (table_name, min_epoch) VALUES (fenced, epoch)
  ON CONFLICT (table_name) DO UPDATE
    SET min_epoch = greatest(shardkit.fences.min_epoch, EXCLUDED.min_epoch);
END
$raise$;
CREATE OR REPLACE FUNCTION shardkit.check_epoch() RETURNS trigger
LANGUAGE plpgsql AS $fence$
DECLARE
  fenced text := CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                      ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END;
  required int8;
  sequence regclass := to_regclass(shardkit.fence_sequence(fenced));
  setting text := nullif(current_setting('shardkit.epoch', true), '');
  guarding int8;
  statement text;
BEGIN
  SELECT min_epoch INTO required FROM shardkit.fences
   WHERE table_name = fenced;
  -- The table is read through this transaction's snapshot, the sequence
  -- as it is now (see rebalancer/shard_objects.h).
  IF sequence IS NOT NULL THEN
    required := greatest(required, pg_sequence_last_value(sequence));
  END IF;
  IF required IS NOT NULL AND
     (setting IS NULL OR setting::int8 < required) THEN
    RAISE EXCEPTION USING
      ERRCODE = 'SK001',
      MESSAGE = format('table %s is under a move: this session routes by '
                       'shard map epoch %s, the table requires epoch %s or '
                       'later', fenced, coalesce(setting, '(unset)'),
                       required),
      HINT = 'refresh the shard map from the catalog and retry the '
             'statement (shardkit clients do so on their own)';
  END IF;
  -- The write guard (see "Write guard" in the header): a write of a table
  -- under a move that its router did not route as one.
  statement := coalesce(current_query(), '');
  IF pg_trigger_depth() = 1 AND
     NOT starts_with(statement, shardkit.write_mark(fenced)) AND
     current_setting('shardkit.mover', true) IS DISTINCT FROM 'on' THEN
    SELECT min(move_id) INTO guarding FROM shardkit.write_guards
     WHERE table_name = fenced;
    IF guarding IS NOT NULL THEN
      RAISE EXCEPTION USING
        ERRCODE = '55000',
        MESSAGE = format('table %s is under move %s, which copies only the '
                         'writes shardkit routes as writes of it; this one '
                         'comes from a function, a rule or a client that '
                         'shardkit did not route as such (statement: %s)',
                         fenced, guarding, left(statement, 200)),
        HINT = format('write the table with INSERT, UPDATE or DELETE '
                      'statements through shardkit, or wait until the move '
                      'has finished (shardctl moves status %s)', guarding);
    END IF;
  END IF;
  RETURN NULL;
END
$fence$;
)sql");
}

std::string MissingPrivilegesSql(const std::vector<std::string>& tables) {
  // What InstallFenceFunctionSql replaces (its functions: only their owner
  // may) and writes (its tables, the tables' fence sequences), and the
  // moving tables (their triggers: only their owner may add one). A role
  // the user belongs to counts as the user.
  std::vector<std::string> sequences, quoted;
  for (const std::string& table : tables) {
    sequences.push_back(StrCat("'fence_' || md5(", EscapedString(table), ")"));
    quoted.push_back(StrCat(EscapedString(QuoteQualifiedName(table)),
                            "::regclass"));
  }
  return StrCat(
      "SELECT current_user::text, concat_ws(' ', "
      "CASE WHEN n.oid IS NULL AND NOT has_database_privilege("
      "current_database(), 'CREATE') THEN format('CREATE SCHEMA shardkit "
      "AUTHORIZATION %I;', current_user) END, "
      "CASE WHEN n.oid IS NOT NULL AND NOT (has_schema_privilege(n.oid, "
      "'USAGE') AND has_schema_privilege(n.oid, 'CREATE')) THEN format("
      "'GRANT USAGE, CREATE ON SCHEMA shardkit TO %I;', current_user) END, "
      "(SELECT string_agg(format('ALTER %s %s OWNER TO %I;', kind, name, "
      "current_user), ' ' ORDER BY kind, name) FROM ("
      "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, "
      "c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = n.oid "
      "AND NOT pg_has_role(c.relowner, 'USAGE') AND c.relname IN ("
      "'fences', 'write_guards', ", absl::StrJoin(sequences, ", "), ") "
      "UNION ALL SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p "
      "WHERE p.pronamespace = n.oid AND NOT pg_has_role(p.proowner, 'USAGE') "
      "AND p.proname IN ('write_mark', 'fence_sequence', 'raise_fence', "
      "'check_epoch')) AS theirs (kind, name))), "
      "(SELECT string_agg(format('%s (owner %I)', c.oid::regclass, "
      "pg_get_userbyid(c.relowner)), ', ' ORDER BY c.oid::regclass::text) "
      "FROM pg_class c WHERE c.oid IN (", absl::StrJoin(quoted, ", "),
      ") AND NOT pg_has_role(c.relowner, 'USAGE')) "
      "FROM (VALUES (1)) AS one (x) "
      "LEFT JOIN pg_namespace n ON n.nspname = 'shardkit'");
}

std::string WriteMark(std::string_view table) {
  std::string out = "/* shardkit writes ";
  for (char c : table) out += (c == '*' || c == '/') ? '_' : c;
  out += " */ ";
  return out;
}

std::string_view LeadingWriteMark(std::string_view sql) {
  constexpr std::string_view kStart = "/* shardkit writes ";
  if (sql.substr(0, kStart.size()) != kStart) return {};
  const size_t end = sql.find(" */ ", kStart.size());
  return end == std::string_view::npos ? std::string_view()
                                       : sql.substr(0, end + 4);
}

std::string AddWriteGuardSql(std::string_view table_literal, uint64_t move_id) {
  return StrCat(
      "INSERT INTO shardkit.write_guards (table_name, move_id) "
      "VALUES (",
      table_literal, ", ", move_id, ") ON CONFLICT DO NOTHING");
}

std::string RemoveWriteGuardsSql(uint64_t move_id) {
  // A shard prepared by a shardkit without guards has no table for them.
  return StrCat(
      "DO $guards$ BEGIN IF to_regclass('shardkit.write_guards') "
      "IS NOT NULL THEN DELETE FROM shardkit.write_guards WHERE "
      "move_id = ",
      move_id, "; END IF; END $guards$");
}

std::string InstallDdlGuardSql() {
  // The event triggers' functions name a table as the shard map does (bare
  // in schema public), like the fence trigger. An index stands for its
  // table.
  return R"sql(
CREATE SCHEMA IF NOT EXISTS shardkit;
CREATE OR REPLACE FUNCTION shardkit.refuse_ddl(guarded text, move_id int8,
                                               command text)
RETURNS void LANGUAGE plpgsql AS $refuse$
BEGIN
  IF current_setting('shardkit.mover', true) IS NOT DISTINCT FROM 'on' THEN
    RETURN;  -- the mover's own
  END IF;
  RAISE EXCEPTION USING
    ERRCODE = '55000',
    MESSAGE = format('%s of table %s cannot run while move %s copies it: '
                     'the move copies the columns the table had when it '
                     'started', command, guarded, move_id),
    HINT = format('run it once the move has cut over (shardctl moves '
                  'status %s), or abort the move (shardctl moves abort %s)',
                  move_id, move_id);
END
$refuse$;
CREATE OR REPLACE FUNCTION shardkit.guard_ddl() RETURNS event_trigger
LANGUAGE plpgsql AS $ddl$
DECLARE
  hit record;
BEGIN
  SELECT g.table_name, g.move_id, c.command_tag INTO hit
    FROM pg_event_trigger_ddl_commands() c
    JOIN pg_class r
      ON c.classid = 'pg_class'::regclass
     AND r.oid = coalesce((SELECT i.indrelid FROM pg_index i
                            WHERE i.indexrelid = c.objid), c.objid)
    JOIN pg_namespace n ON n.oid = r.relnamespace
    JOIN shardkit.write_guards g
      ON g.table_name = CASE WHEN n.nspname = 'public' THEN r.relname::text
                             ELSE n.nspname || '.' || r.relname END
   LIMIT 1;
  IF FOUND THEN
    PERFORM shardkit.refuse_ddl(hit.table_name, hit.move_id, hit.command_tag);
  END IF;
END
$ddl$;
CREATE OR REPLACE FUNCTION shardkit.guard_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $drop$
DECLARE
  hit record;
BEGIN
  SELECT g.table_name, g.move_id INTO hit
    FROM pg_event_trigger_dropped_objects() d
    JOIN shardkit.write_guards g
      ON g.table_name = CASE WHEN d.schema_name = 'public' THEN d.object_name
                             ELSE d.schema_name || '.' || d.object_name END
   WHERE d.object_type = 'table'
   LIMIT 1;
  IF FOUND THEN
    PERFORM shardkit.refuse_ddl(hit.table_name, hit.move_id, 'DROP');
  END IF;
END
$drop$;
DO $install$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger
                  WHERE evtname = 'shardkit_guard_ddl') THEN
    CREATE EVENT TRIGGER shardkit_guard_ddl ON ddl_command_end
      EXECUTE FUNCTION shardkit.guard_ddl();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_event_trigger
                  WHERE evtname = 'shardkit_guard_drop') THEN
    CREATE EVENT TRIGGER shardkit_guard_drop ON sql_drop
      EXECUTE FUNCTION shardkit.guard_drop();
  END IF;
END $install$;
)sql";
}

std::string InstallFenceTriggerSql(std::string_view quoted_table) {
  return StrCat(
      "CREATE OR REPLACE TRIGGER shardkit_epoch_fence BEFORE INSERT OR UPDATE "
      "OR DELETE OR TRUNCATE ON ",
      quoted_table,
      " FOR EACH STATEMENT EXECUTE FUNCTION shardkit.check_epoch()");
}

std::string RemoveFenceSql(std::string_view quoted_table,
                           std::string_view table_name) {
  std::string literal = "'";
  for (char c : table_name) {
    if (c == '\'') literal += '\'';
    literal += c;
  }
  literal += "'";
  return StrCat("DROP TRIGGER IF EXISTS shardkit_epoch_fence ON ",
                quoted_table, "; DELETE FROM shardkit.fences WHERE table_name = ",
                literal, "; DO $drop$ BEGIN EXECUTE 'DROP SEQUENCE IF EXISTS ' "
                "|| shardkit.fence_sequence(", literal, "); END $drop$");
}

}  // namespace shardkit::internal
