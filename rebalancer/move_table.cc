#include "rebalancer/move_table.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"

namespace shardkit::internal {
namespace {

// One row per live column: name, type, identity, generated, and its
// 1-based position in the primary key (NULL when not in it). Generated
// columns are listed so that the two shards' tables can be compared whole.
constexpr char kColumnsSql[] = R"sql(
SELECT a.attname,
       format_type(a.atttypid, a.atttypmod),
       a.attidentity <> '',
       a.attgenerated <> '',
       (SELECT k.ord
          FROM pg_index i,
               unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
         WHERE i.indrelid = a.attrelid AND i.indisprimary
           AND k.attnum = a.attnum)
  FROM pg_attribute a
 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum)sql";

struct RawColumn {
  std::string name;
  std::string type;
  bool identity = false;
  bool generated = false;
  int pk_position = 0;  // 0: not in the primary key

  bool SameShape(const RawColumn& o) const {
    return name == o.name && type == o.type && generated == o.generated &&
           pk_position == o.pk_position;
  }
  std::string Describe() const {
    return StrCat(name, " ", type, generated ? " (generated)" : "",
                  pk_position ? StrCat(" (primary key #", pk_position, ")")
                              : "");
  }
};

absl::StatusOr<std::vector<RawColumn>> ReadColumns(MoveSession& session,
                                                   const std::string& quoted,
                                                   std::string_view table) {
  ASSIGN_OR_RETURN(
      std::vector<MoveSession::Row> rows,
      session.Query(kColumnsSql, {quoted},
                    StrCat("reading the columns of table ", table)));
  if (rows.empty()) {
    return absl::NotFoundError(
        StrCat("shard ", session.shard_name(), ": table ", table,
               " does not exist; create it (with the same columns as on the "
               "other shards) before moving it"));
  }
  std::vector<RawColumn> columns;
  for (const MoveSession::Row& row : rows) {
    RawColumn c;
    c.name = *row[0];
    c.type = *row[1];
    c.identity = *row[2] == "t";
    c.generated = *row[3] == "t";
    c.pk_position = row[4] ? std::stoi(*row[4]) : 0;
    columns.push_back(std::move(c));
  }
  return columns;
}

std::string Compare(const MoveSession& session, const TableShape& shape,
                    const std::vector<std::string>& bound, const char* op) {
  std::vector<std::string> values;
  for (size_t i = 0; i < shape.primary_key.size(); ++i) {
    const TableShape::Column& c = shape.columns[shape.primary_key[i]];
    values.push_back(StrCat(session.Literal(bound[i]), "::", c.type));
  }
  return StrCat("(", shape.PrimaryKeyList(), ") ", op, " (",
                absl::StrJoin(values, ", "), ")");
}

}  // namespace

MoveSlice MoveSlice::FromMovingSlice(const Distribution& distribution,
                                     const MovingSlice& moving) {
  MoveSlice slice;
  slice.move_id = moving.move_id;
  slice.strategy = distribution.strategy();
  slice.key_type = distribution.key_type();
  slice.hash_lo = moving.hash_lo;
  slice.hash_hi = moving.hash_hi;
  slice.from = moving.from;
  slice.to = moving.to;
  slice.region = moving.region;
  slice.server_hash = moving.server_hash;
  return slice;
}

std::string MoveSlice::ToString() const {
  switch (strategy) {
    case Strategy::kHash:
      return StrCat("hash [", FormatHash(hash_lo), ", ",
                    hash_hi ? FormatHash(*hash_hi) : "2^64", ")");
    case Strategy::kRange:
      return StrCat("range [", from ? from->ToString() : "-inf", ", ",
                    to ? to->ToString() : "+inf", ")");
    case Strategy::kRegion:
      return StrCat("region ", region);
  }
  return "?";
}

std::string TableShape::ColumnList() const {
  std::vector<std::string> names;
  for (const Column& c : columns) names.push_back(c.quoted);
  return absl::StrJoin(names, ", ");
}

std::string TableShape::PrimaryKeyList() const {
  std::vector<std::string> names;
  for (size_t i : primary_key) names.push_back(columns[i].quoted);
  return absl::StrJoin(names, ", ");
}

std::string TableShape::After(const MoveSession& session,
                              const std::vector<std::string>& bound) const {
  return Compare(session, *this, bound, ">");
}

std::string TableShape::At(const MoveSession& session,
                           const std::vector<std::string>& key) const {
  return Compare(session, *this, key, "=");
}

std::string TableShape::AtOrBefore(const MoveSession& session,
                                   const std::vector<std::string>& bound) const {
  return Compare(session, *this, bound, "<=");
}

absl::StatusOr<TableShape> DescribeTableForMove(MoveSession& source,
                                                MoveSession& destination,
                                                std::string_view table,
                                                std::string_view key_column) {
  TableShape shape;
  shape.name = std::string(table);
  shape.quoted = QuoteQualifiedName(table);
  ASSIGN_OR_RETURN(std::vector<RawColumn> on_source,
                   ReadColumns(source, shape.quoted, table));
  ASSIGN_OR_RETURN(std::vector<RawColumn> on_destination,
                   ReadColumns(destination, shape.quoted, table));

  std::vector<std::pair<int, size_t>> pk;  // (position, index in columns)
  bool key_found = false;
  bool key_in_pk = false;
  for (const RawColumn& raw : on_source) {
    if (raw.name == key_column) {
      key_found = true;
      key_in_pk = raw.pk_position > 0;
    }
    if (raw.generated) continue;
    if (raw.pk_position > 0) pk.emplace_back(raw.pk_position, shape.columns.size());
    if (raw.name == key_column) shape.key_column = shape.columns.size();
    shape.columns.push_back({raw.name, QuoteIdentifier(raw.name), raw.type,
                             raw.identity});
  }
  if (!key_found) {
    return absl::FailedPreconditionError(
        StrCat("shard ", source.shard_name(), ": table ", table,
               " has no column ", key_column,
               ", its shard key in the map; fix the map or the table"));
  }
  if (pk.empty() || !key_in_pk) {
    return absl::FailedPreconditionError(StrCat(
        "shard ", source.shard_name(), ": table ", table,
        pk.empty() ? " has no primary key"
                   : StrCat(" has a primary key without its shard key ",
                            key_column),
        ": a table under move needs a primary key that includes the shard "
        "key (the mover copies and compares rows in key order, and the "
        "destination keeps a newer row by it); add one, e.g. ALTER TABLE ",
        shape.quoted, " ADD PRIMARY KEY (", QuoteIdentifier(key_column),
        ", ...)"));
  }
  std::sort(pk.begin(), pk.end());
  for (const auto& [position, index] : pk) shape.primary_key.push_back(index);

  bool same = on_source.size() == on_destination.size();
  for (size_t i = 0; same && i < on_source.size(); ++i) {
    same = on_source[i].SameShape(on_destination[i]);
  }
  if (!same) {
    std::vector<std::string> a, b;
    for (const RawColumn& c : on_source) a.push_back(c.Describe());
    for (const RawColumn& c : on_destination) b.push_back(c.Describe());
    return absl::FailedPreconditionError(StrCat(
        "table ", table, " differs between shard ", source.shard_name(),
        " (", absl::StrJoin(a, ", "), ") and shard ",
        destination.shard_name(), " (", absl::StrJoin(b, ", "),
        "); give the destination's table the source's columns, in the same "
        "order, and its primary key"));
  }
  // The inserts run on the destination: its identity columns decide.
  for (const RawColumn& c : on_destination) {
    if (c.identity && !c.generated) shape.has_identity = true;
  }
  return shape;
}

std::string SliceCondition(const TableShape& shape, const MoveSlice& slice) {
  // The routers hide the slice by this same condition (shard_objects.h).
  const std::string& column = shape.columns[shape.key_column].quoted;
  if (slice.strategy == Strategy::kHash) {
    return slice.server_hash
               ? HashSliceConditionSql(slice.hash_lo, slice.hash_hi, column)
               : "";
  }
  return SliceConditionSql(slice.strategy, slice.key_type, slice.from,
                           slice.to, slice.region, column);
}

absl::StatusOr<bool> RowInSlice(const TableShape& shape,
                                const MoveSlice& slice,
                                const std::vector<std::string_view>& fields) {
  if (slice.strategy != Strategy::kHash || slice.server_hash ||
      slice.IsWholeHashSpace()) {
    return true;
  }
  const std::string_view raw = fields[shape.key_column];
  absl::StatusOr<Key> key =
      raw.find('\\') == std::string_view::npos
          ? Key::Parse(slice.key_type, raw)
          : Key::Parse(slice.key_type, UnescapeCopyField(raw).value_or(""));
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        StrCat("table ", shape.name, ": shard key ",
               shape.columns[shape.key_column].name,
               " holds a value that is not a ", KeyTypeName(slice.key_type),
               ": ", key.status().message()));
  }
  const uint64_t hash = HashKey(*key);
  return hash >= slice.hash_lo && (!slice.hash_hi || hash < *slice.hash_hi);
}

std::vector<std::string> PrimaryKeyOf(
    const TableShape& shape, const std::vector<std::string_view>& fields) {
  std::vector<std::string> values;
  values.reserve(shape.primary_key.size());
  for (size_t i : shape.primary_key) {
    values.push_back(UnescapeCopyField(fields[i]).value_or(""));
  }
  return values;
}

}  // namespace shardkit::internal
