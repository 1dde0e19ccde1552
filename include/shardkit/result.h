// The result of a statement run on one or more shards.
//
// Values are PostgreSQL's text form, exactly as the server sent them; a SQL
// NULL is an empty std::optional.
//
// Thread-safety: a Result is a value type.

#ifndef SHARDKIT_RESULT_H_
#define SHARDKIT_RESULT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "shardkit/shard_map.h"

namespace shardkit {

struct Column {
  std::string name;
  // The PostgreSQL type OID of the column (e.g. 20 for int8, 25 for text).
  uint32_t type_oid = 0;
  // When the column is a table's column as it is: the table's OID (on the
  // shard that answered) and the column's number in it; 0 otherwise.
  uint32_t table_oid = 0;
  int table_column = 0;
};

using Row = std::vector<std::optional<std::string>>;

struct Result {
  // Empty for a statement that returns no rows (DDL, INSERT without
  // RETURNING, ...).
  std::vector<Column> columns;
  std::vector<Row> rows;
  // The server's command tag, e.g. "CREATE TABLE" or "INSERT 0 3".
  std::string command_tag;
  // Rows inserted, updated, deleted, fetched or copied, as the command tag
  // reports them; 0 for a command that reports none.
  int64_t rows_affected = 0;
  // The shards the statement ran on, ascending.
  std::vector<ShardId> shards;
};

}  // namespace shardkit

#endif  // SHARDKIT_RESULT_H_
