#include "rebalancer/pending_copies.h"

#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"

namespace shardkit::internal {
namespace {

// "{1,2,3}": an array literal of xid8 values (digits only).
std::string XidArray(const std::vector<std::string>& xids) {
  return StrCat("{", absl::StrJoin(xids, ","), "}");
}

// "ARRAY['a', 'b']::text[]": `keys` as an array of the key type.
std::string KeyArray(const MoveSession& session, KeyType type,
                     const std::vector<std::string>& keys) {
  std::vector<std::string> literals;
  literals.reserve(keys.size());
  for (const std::string& key : keys) literals.push_back(session.Literal(key));
  return StrCat("ARRAY[", absl::StrJoin(literals, ", "), "]::",
                KeySqlType(type), "[]");
}

}  // namespace

absl::StatusOr<PendingCopies> FindPendingCopies(MoveSession& source,
                                                MoveSession& destination,
                                                uint64_t move_id,
                                                KeyType key_type,
                                                bool forget_committed) {
  PendingCopies out;
  out.move_id = move_id;
  out.key_type = key_type;
  const std::string pending = MovePendingTable(move_id);
  ASSIGN_OR_RETURN(std::vector<MoveSession::Row> listed,
                   destination.Query(StrCat("SELECT DISTINCT xid::text FROM ",
                                            pending),
                                     {}, "reading the pending copies"));
  if (listed.empty()) return out;
  std::vector<std::string> xids;
  for (const MoveSession::Row& row : listed) {
    if (row[0]) xids.push_back(*row[0]);
  }
  // NULL: too old for the source to tell; treated as rolled back (the
  // repair only puts the source's rows back).
  ASSIGN_OR_RETURN(
      std::vector<MoveSession::Row> states,
      source.Query("SELECT x::text, pg_xact_status(x) FROM "
                   "unnest($1::xid8[]) AS x",
                   {XidArray(xids)},
                   "asking how the pending copies' transactions ended"));
  std::vector<std::string> committed;
  for (const MoveSession::Row& row : states) {
    if (!row[0]) continue;
    if (row[1] == "committed") {
      committed.push_back(*row[0]);
    } else if (row[1] == "in progress") {
      ++out.in_progress;
    } else {
      out.rolled_back.push_back(*row[0]);
    }
  }
  out.committed = static_cast<int64_t>(committed.size());
  if (forget_committed && !committed.empty()) {
    RETURN_IF_ERROR(
        destination
            .Run(StrCat("DELETE FROM ", pending, " WHERE xid = ANY(",
                        destination.Literal(XidArray(committed)), "::xid8[])"),
                 "forgetting the committed pending copies")
            .status());
  }
  if (!out.rolled_back.empty()) {
    ASSIGN_OR_RETURN(
        std::vector<MoveSession::Row> keys,
        destination.Query(StrCat("SELECT DISTINCT key::text FROM ", pending,
                                 " WHERE xid = ANY($1::xid8[])"),
                          {XidArray(out.rolled_back)},
                          "reading the keys of rolled-back copies"));
    for (const MoveSession::Row& row : keys) {
      if (row[0]) out.keys.push_back(*row[0]);
    }
  }
  return out;
}

absl::Status RepairPendingCopies(MoveSession& source, MoveSession& destination,
                                 const std::vector<TableShape>& tables,
                                 const PendingCopies& pending) {
  if (pending.keys.empty() && pending.rolled_back.empty()) {
    return absl::OkStatus();
  }
  absl::Status status = [&]() -> absl::Status {
    RETURN_IF_ERROR(destination.Run("BEGIN").status());
    for (const TableShape& table : tables) {
      if (pending.keys.empty()) break;
      const std::string key_column = table.columns[table.key_column].quoted;
      const std::string context =
          StrCat("putting the source's rows of ", pending.keys.size(),
                 " keys back on the destination (", table.name, ")");
      RETURN_IF_ERROR(
          destination
              .Run(StrCat("DELETE FROM ", table.quoted, " WHERE ", key_column,
                          " = ANY(",
                          KeyArray(destination, pending.key_type, pending.keys),
                          ")"),
                   context)
              .status());
      std::string rows;
      RETURN_IF_ERROR(source.CopyOut(
          StrCat("COPY (SELECT ", table.ColumnList(), " FROM ", table.quoted,
                 " WHERE ", key_column, " = ANY(",
                 KeyArray(source, pending.key_type, pending.keys),
                 ")) TO STDOUT"),
          [&](std::string_view line) {
            rows.append(line);
            rows.push_back('\n');
          },
          context));
      if (!rows.empty()) {
        RETURN_IF_ERROR(destination
                            .CopyIn(StrCat("COPY ", table.quoted, " (",
                                           table.ColumnList(), ") FROM STDIN"),
                                    rows, context)
                            .status());
      }
    }
    RETURN_IF_ERROR(
        destination
            .Run(StrCat("DELETE FROM ", MovePendingTable(pending.move_id),
                        " WHERE xid = ANY(",
                        destination.Literal(XidArray(pending.rolled_back)),
                        "::xid8[])"),
                 "forgetting the repaired pending copies")
            .status());
    return destination.Run("COMMIT").status();
  }();
  if (!status.ok()) destination.RollbackQuietly();
  return status;
}

}  // namespace shardkit::internal
