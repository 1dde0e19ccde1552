#include "rebalancer/shard_objects.h"

#include <string>
#include <string_view>

#include "common/strings.h"

namespace shardkit::internal {

std::string MoveKeysTable(uint64_t move_id) {
  return StrCat("shardkit.move_", move_id, "_keys");
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

std::string InstallFenceFunctionSql() {
  // The fence row is keyed by the table's name in the shard map: bare in
  // schema public (as the map names it), qualified elsewhere. The SELECT
  // runs in the writer's statement after it took its table lock, so under
  // READ COMMITTED it sees any fence committed before that lock was
  // granted (see the header).
  return R"sql(
CREATE SCHEMA IF NOT EXISTS shardkit;
CREATE TABLE IF NOT EXISTS shardkit.fences (
  table_name text PRIMARY KEY,
  min_epoch int8 NOT NULL
);
CREATE OR REPLACE FUNCTION shardkit.check_epoch() RETURNS trigger
LANGUAGE plpgsql AS $fence$
DECLARE
  fenced text := CASE WHEN TG_TABLE_SCHEMA = 'public' THEN TG_TABLE_NAME
                      ELSE TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME END;
  required int8;
  setting text := nullif(current_setting('shardkit.epoch', true), '');
BEGIN
  SELECT min_epoch INTO required FROM shardkit.fences
   WHERE table_name = fenced;
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
  RETURN NULL;
END
$fence$;
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
                literal);
}

}  // namespace shardkit::internal
