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
// Taken first by the scripts that replace shardkit's shared functions
// and triggers (until their implicit transaction ends): two movers
// preparing at once on one shard would otherwise fail with "tuple
// concurrently updated". The key is "shardkit" in ASCII.
constexpr std::string_view kInstallLockSql =
    "SELECT pg_advisory_xact_lock(8316003855878547828);";

constexpr std::string_view kCreateSchemaSql =
    "DO $schema$ BEGIN IF to_regnamespace('shardkit') IS NULL THEN "
    "CREATE SCHEMA IF NOT EXISTS shardkit; END IF; END $schema$;";

}  // namespace

std::string CreateMoveTablesSql(uint64_t move_id, KeyType type) {
  // The application's sessions read and write these (hiding, dual-write)
  // with their own rights, as whatever role they connect as: granted to
  // all, with the schema when the mover may grant it.
  return StrCat(
      kCreateSchemaSql, " CREATE TABLE IF NOT EXISTS ", MoveKeysTable(move_id),
      " (key ", KeySqlType(type), " PRIMARY KEY); CREATE TABLE IF NOT EXISTS ",
      MovePendingTable(move_id), " (xid xid8 NOT NULL, key ", KeySqlType(type),
      " NOT NULL); GRANT SELECT, INSERT ON ", MoveKeysTable(move_id), ", ",
      MovePendingTable(move_id),
      " TO PUBLIC; DO $usage$ BEGIN IF pg_has_role((SELECT nspowner FROM "
      "pg_namespace WHERE nspname = 'shardkit'), 'USAGE') THEN GRANT USAGE "
      "ON SCHEMA shardkit TO PUBLIC; END IF; END $usage$");
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
  return StrCat(kInstallLockSql, kCreateSchemaSql, R"sql(
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
CREATE OR REPLACE FUNCTION shardkit.guard_sequence(guarded text)
RETURNS text LANGUAGE sql IMMUTABLE AS
$seq$ SELECT 'shardkit.' || quote_ident('guard_' || md5(guarded)) $seq$;
CREATE OR REPLACE FUNCTION shardkit.guarding_move(guarded text)
RETURNS int8 LANGUAGE plpgsql STABLE AS $guarding$
DECLARE
  sequence regclass := to_regclass(shardkit.guard_sequence(guarded));
BEGIN
  -- As it is now, not through the snapshot (as the fence's sequence).
  RETURN CASE WHEN sequence IS NULL THEN 0
              ELSE coalesce(pg_sequence_last_value(sequence), 0) END;
END
$guarding$;
CREATE OR REPLACE FUNCTION shardkit.add_write_guard(guarded text,
                                                    guarding int8)
RETURNS void LANGUAGE plpgsql AS $add$
DECLARE
  sequence text := shardkit.guard_sequence(guarded);
BEGIN
  EXECUTE format('CREATE SEQUENCE IF NOT EXISTS %s MINVALUE 0', sequence);
  PERFORM setval(sequence::regclass, guarding, true);
  INSERT INTO shardkit.write_guards (table_name, move_id)
  VALUES (guarded, guarding) ON CONFLICT DO NOTHING;
END
$add$;
CREATE OR REPLACE FUNCTION shardkit.remove_write_guards(guarding int8)
RETURNS void LANGUAGE plpgsql AS $remove$
DECLARE
  g record;
BEGIN
  FOR g IN SELECT table_name FROM shardkit.write_guards
            WHERE move_id = guarding LOOP
    IF shardkit.guarding_move(g.table_name) = guarding THEN
      PERFORM setval(shardkit.guard_sequence(g.table_name)::regclass, 0,
                     true);
    END IF;
  END LOOP;
  DELETE FROM shardkit.write_guards WHERE move_id = guarding;
END
$remove$;
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fence$
DECLARE
  fenced text := CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                      ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END;
  required int8;
  sequence regclass := to_regclass(shardkit.fence_sequence(fenced));
  setting text := nullif(current_setting('shardkit.epoch', true), '');
  guarding int8;
  statement text;
  marked text;
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
  IF current_setting('shardkit.mover', true) IS NOT DISTINCT FROM 'on' THEN
    RETURN NULL;  -- the mover's own
  END IF;
  statement := coalesce(current_query(), '');
  IF pg_trigger_depth() = 1 AND
     starts_with(statement, shardkit.write_mark(fenced)) THEN
    RETURN NULL;  -- the router's write of this table
  END IF;
  guarding := shardkit.guarding_move(fenced);
  IF guarding = 0 THEN
    RETURN NULL;
  END IF;
  IF pg_trigger_depth() > 1 THEN
    -- A trigger's or a foreign key's write, which passes when the client's
    -- statement is the router's write of a table this move guards too.
    marked := substring(statement from '^/\* shardkit writes (.*?) \*/ ');
    IF marked IS NOT NULL AND shardkit.guarding_move(marked) = guarding THEN
      RETURN NULL;
    END IF;
  END IF;
  RAISE EXCEPTION USING
    ERRCODE = '55000',
    MESSAGE = format('table %s is under move %s, which copies only the '
                     'writes shardkit routes as writes of it; this one '
                     'comes from a function, a rule, a trigger or a client '
                     'that shardkit did not route as such (statement: %s)',
                     fenced, guarding, left(statement, 200)),
    HINT = format('write the table with INSERT, UPDATE or DELETE '
                  'statements through shardkit, or wait until the move '
                  'has finished (shardctl moves status %s)', guarding);
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
    sequences.push_back(StrCat("'guard_' || md5(", EscapedString(table), ")"));
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
      "'fences', 'write_guards', ",
      absl::StrJoin(sequences, ", "),
      ") "
      "UNION ALL SELECT 'FUNCTION', p.oid::regprocedure::text FROM pg_proc p "
      "WHERE p.pronamespace = n.oid AND NOT pg_has_role(p.proowner, 'USAGE') "
      "AND p.proname IN ('write_mark', 'fence_sequence', 'raise_fence', "
      "'check_epoch', 'guard_sequence', 'guarding_move', 'add_write_guard', "
      "'remove_write_guards')) AS theirs (kind, name))), "
      "(SELECT string_agg(format('%s (owner %I)', c.oid::regclass, "
      "pg_get_userbyid(c.relowner)), ', ' ORDER BY c.oid::regclass::text) "
      "FROM pg_class c WHERE c.oid IN (",
      absl::StrJoin(quoted, ", "),
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
  return StrCat("SELECT shardkit.add_write_guard(", table_literal, ", ",
                move_id, ")");
}

std::string RemoveWriteGuardsSql(uint64_t move_id) {
  // A shard the move never prepared has no function for it.
  return StrCat(
      "DO $guards$ BEGIN IF to_regprocedure("
      "'shardkit.remove_write_guards(int8)') IS NOT NULL THEN PERFORM "
      "shardkit.remove_write_guards(",
      move_id, "); END IF; END $guards$");
}

std::string InstallDdlGuardSql() {
  // The event triggers' functions name a table as the shard map does (bare
  // in schema public), like the fence trigger; an index or a rule stands
  // for its table. They run on every DDL in the database, for any role:
  // as their owner (SECURITY DEFINER), so that a role without rights on
  // schema shardkit can still run DDL, and they refuse only while a guard
  // is up (shardkit.guarding_move, read as it is now).
  return StrCat(kInstallLockSql, R"sql(
CREATE SCHEMA IF NOT EXISTS shardkit;
CREATE OR REPLACE FUNCTION shardkit.refuse_ddl(guarded text, move_id int8,
                                               command text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $refuse$
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
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $ddl$
DECLARE
  hit record;
BEGIN
  SELECT g.table_name, g.move_id, c.command_tag INTO hit
    FROM pg_event_trigger_ddl_commands() c
    JOIN pg_class r
      ON r.oid = CASE c.classid
                   WHEN 'pg_class'::regclass THEN
                     coalesce((SELECT i.indrelid FROM pg_index i
                                WHERE i.indexrelid = c.objid), c.objid)
                   WHEN 'pg_rewrite'::regclass THEN
                     (SELECT w.ev_class FROM pg_rewrite w
                       WHERE w.oid = c.objid)
                 END
    JOIN pg_namespace n ON n.oid = r.relnamespace
    JOIN shardkit.write_guards g
      ON g.table_name = CASE WHEN n.nspname = 'public' THEN r.relname::text
                             ELSE n.nspname || '.' || r.relname END
   WHERE shardkit.guarding_move(g.table_name) = g.move_id
   LIMIT 1;
  IF FOUND THEN
    PERFORM shardkit.refuse_ddl(hit.table_name, hit.move_id, hit.command_tag);
  END IF;
END
$ddl$;
CREATE OR REPLACE FUNCTION shardkit.guard_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $drop$
DECLARE
  hit record;
BEGIN
  -- A guarded table, one of its columns (DROP TYPE ... CASCADE), or a
  -- fence trigger while any guard is up.
  SELECT g.table_name, g.move_id, upper(d.object_type) AS what INTO hit
    FROM pg_event_trigger_dropped_objects() d
    JOIN shardkit.write_guards g
      ON (d.object_type IN ('table', 'table column') AND
          g.table_name = CASE WHEN d.schema_name = 'public'
                              THEN d.address_names[2]
                              ELSE d.schema_name || '.' || d.address_names[2]
                         END)
      OR (d.object_type = 'trigger' AND
          d.object_identity LIKE 'shardkit_epoch_fence on %')
   WHERE shardkit.guarding_move(g.table_name) = g.move_id
   LIMIT 1;
  IF FOUND THEN
    PERFORM shardkit.refuse_ddl(hit.table_name, hit.move_id,
                                'DROP ' || hit.what);
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
  ALTER EVENT TRIGGER shardkit_guard_ddl ENABLE ALWAYS;
  ALTER EVENT TRIGGER shardkit_guard_drop ENABLE ALWAYS;
END $install$;
)sql");
}

std::string InstallFenceTriggerSql(std::string_view quoted_table) {
  return StrCat(
      "CREATE OR REPLACE TRIGGER shardkit_epoch_fence BEFORE INSERT OR UPDATE "
      "OR DELETE OR TRUNCATE ON ",
      quoted_table,
      " FOR EACH STATEMENT EXECUTE FUNCTION shardkit.check_epoch(); "
      // Also in sessions that apply rows as replication does (the mover's
      // own: session_replication_role = replica).
      "ALTER TABLE ",
      quoted_table, " ENABLE ALWAYS TRIGGER shardkit_epoch_fence");
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
