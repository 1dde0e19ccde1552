#include "shardkit/load.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "common/strings.h"
#include "rebalancer/shard_objects.h"
#include "router/copy_writer.h"
#include "router/csv.h"
#include "router/transaction.h"

namespace shardkit {
namespace {

using internal::CopyBatch;
using internal::CopyWriter;
using internal::CsvOptions;
using internal::CsvReader;
using internal::CsvRecord;
using internal::FirstFailure;
using internal::WithMessageSuffix;

std::string QuoteIdentifier(std::string_view name) {
  std::string out = "\"";
  for (char c : name) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

// A string literal that means the same whatever standard_conforming_strings
// says: E'...' with backslashes doubled when there are any.
std::string QuoteLiteral(std::string_view value) {
  const bool backslash = value.find('\\') != std::string_view::npos;
  std::string out = backslash ? "E'" : "'";
  for (char c : value) {
    if (c == '\'' || (backslash && c == '\\')) out += c;
    out += c;
  }
  return out + "'";
}

// Where the rows go.
struct Target {
  std::string table;              // as the map names it
  const Table* spec = nullptr;    // nullptr: not in the map (default shard)
  std::vector<ShardId> shards;    // ascending
  std::string relation;           // quoted for SQL: "schema"."name" or "name"
  std::string relname;            // as a COPY's error context prints it
};

absl::StatusOr<Target> ResolveTarget(const ShardMap& map,
                                     std::string_view name) {
  Target target;
  const Table* table = map.FindTable(name);
  if (table == nullptr && name.substr(0, 7) == "public.") {
    table = map.FindTable(name.substr(7));
  }
  if (table != nullptr) {
    target.table = table->name;
    target.spec = table;
    if (table->reference) {
      for (ShardId id = 0; id < map.shards().size(); ++id) {
        target.shards.push_back(id);
      }
    } else {
      target.shards = map.DistributionOf(*table).shards();
    }
  } else if (map.default_shard().has_value()) {
    target.table = std::string(name);
    target.shards = {*map.default_shard()};
  } else {
    std::vector<std::string> names;
    for (const Table& t : map.tables()) names.push_back(t.name);
    return absl::NotFoundError(StrCat(
        "table \"", name, "\" is not in the shard map (its tables: ",
        names.empty() ? "none" : absl::StrJoin(names, ", "),
        "); add it to [tables] in the configuration, or set [router] "
        "default_shard for tables that live unsharded on one shard"));
  }
  const size_t dot = target.table.find('.');
  if (dot == std::string::npos) {
    target.relation = QuoteIdentifier(target.table);
    target.relname = target.table;
  } else {
    target.relation =
        StrCat(QuoteIdentifier(std::string_view(target.table).substr(0, dot)),
               ".",
               QuoteIdentifier(std::string_view(target.table).substr(dot + 1)));
    target.relname = target.table.substr(dot + 1);
  }
  return target;
}

struct TableColumn {
  std::string name;
  bool generated = false;
};

absl::StatusOr<std::vector<TableColumn>> ReadTableColumns(
    CopyWriter& writer, const Target& target) {
  absl::StatusOr<Result> result = writer.Query(
      "SELECT attname, attgenerated <> '' FROM pg_catalog.pg_attribute "
      "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped "
      "ORDER BY attnum",
      {target.relation});
  if (!result.ok()) {
    if (SqlStateOf(result.status()) == "42P01") {
      return WithMessageSuffix(
          result.status(),
          StrCat("; create table ", target.table,
                 " on every shard first (e.g. shardctl sql -c FILE -e "
                 "\"CREATE TABLE ...\" runs DDL on every shard)"));
    }
    return result.status();
  }
  std::vector<TableColumn> columns;
  for (const Row& row : result->rows) {
    columns.push_back(TableColumn{row[0].value_or(""), row[1] == "t"});
  }
  return columns;
}

// The columns of the CSV's fields: `named` (from the header or the
// caller), checked against the table, or else the table's own.
absl::StatusOr<std::vector<std::string>> ResolveColumns(
    std::vector<std::string> named, std::string_view source,
    const std::vector<TableColumn>& table_columns, const Target& target) {
  if (named.empty()) {
    for (const TableColumn& c : table_columns) {
      if (!c.generated) named.push_back(c.name);
    }
    return named;
  }
  std::vector<std::string> all;
  for (const TableColumn& c : table_columns) all.push_back(c.name);
  for (size_t i = 0; i < named.size(); ++i) {
    const std::string& name = named[i];
    if (std::find(named.begin(), named.begin() + i, name) !=
        named.begin() + i) {
      return absl::InvalidArgumentError(
          StrCat(source, " names column \"", name, "\" twice"));
    }
    if (std::find(all.begin(), all.end(), name) != all.end()) continue;
    std::string suggestion;
    for (const std::string& c : all) {
      if (absl::EqualsIgnoreCase(c, name)) {
        suggestion = StrCat(" (did you mean \"", c, "\"? names are exact)");
      }
    }
    return absl::InvalidArgumentError(StrCat(
        source, " names column \"", name, "\", which table ", target.table,
        " does not have", suggestion, "; its columns: ",
        absl::StrJoin(all, ", ")));
  }
  return named;
}

// Places each row of a sharded table by its key field(s).
class RowPlacer {
 public:
  RowPlacer(const Target& target, const Distribution& distribution,
            size_t key_index, std::optional<size_t> hash_key_index)
      : target_(target),
        distribution_(distribution),
        key_index_(key_index),
        hash_key_index_(hash_key_index) {}

  absl::StatusOr<ShardId> Place(const CsvRecord& record) const {
    const std::optional<std::string>& field = record.fields[key_index_];
    if (!field.has_value()) {
      return absl::InvalidArgumentError(StrCat(
          "line ", record.line, ": the row has no shard key: column \"",
          target_.spec->key_column, "\" is NULL (an unquoted empty field, or "
          "the NULL string); every row of sharded table ", target_.table,
          " needs a key"));
    }
    absl::StatusOr<Key> key = Key::Parse(distribution_.key_type(), *field);
    if (!key.ok()) {
      return absl::InvalidArgumentError(
          StrCat("line ", record.line, ": column \"", target_.spec->key_column,
                 "\", the shard key of table ", target_.table, ": ",
                 key.status().message()));
    }
    std::optional<Key> hash_key;
    if (hash_key_index_.has_value() && distribution_.hash_key_type()) {
      const std::optional<std::string>& h = record.fields[*hash_key_index_];
      if (h.has_value()) {
        absl::StatusOr<Key> parsed =
            Key::Parse(*distribution_.hash_key_type(), *h);
        if (!parsed.ok()) {
          return absl::InvalidArgumentError(StrCat(
              "line ", record.line, ": column \"",
              target_.spec->hash_key_column, "\", the hash key of table ",
              target_.table, ": ", parsed.status().message()));
        }
        hash_key = *std::move(parsed);
      }
    }
    absl::StatusOr<Placement> placement = distribution_.Place(
        *key, hash_key.has_value() ? &*hash_key : nullptr);
    if (!placement.ok()) {
      return absl::Status(placement.status().code(),
                          StrCat("line ", record.line, ": ",
                                 placement.status().message()));
    }
    return placement->shard;
  }

 private:
  const Target& target_;
  const Distribution& distribution_;
  const size_t key_index_;
  const std::optional<size_t> hash_key_index_;
};

std::optional<size_t> IndexOf(const std::vector<std::string>& columns,
                              const std::string& name) {
  auto it = std::find(columns.begin(), columns.end(), name);
  if (it == columns.end()) return std::nullopt;
  return static_cast<size_t>(it - columns.begin());
}

absl::Status MissingKeyColumn(const Target& target, const std::string& column,
                              std::string_view what,
                              const std::vector<std::string>& columns) {
  return absl::InvalidArgumentError(StrCat(
      "the CSV has no column \"", column, "\", the ", what, " of table ",
      target.table, ", so its rows cannot be placed (its columns: ",
      absl::StrJoin(columns, ", "),
      "); add that column to the CSV and to its header or column list"));
}

// The command tag a statement of the commit ends with.
std::string_view TagOf(std::string_view sql) {
  for (std::string_view tag : {"PREPARE TRANSACTION", "COMMIT PREPARED",
                               "ROLLBACK PREPARED"}) {
    if (sql.substr(0, tag.size()) == tag) return tag;
  }
  return sql;  // COMMIT
}

// Commits every shard: a plain COMMIT for one, two-phase commit for
// several (the rows land on every shard or on none; see Transaction).
absl::Status CommitAll(const Cluster& cluster, const std::vector<ShardId>& shards,
                       std::vector<std::unique_ptr<CopyWriter>>& writers) {
  // Deferred constraints are checked now, on every shard, so that one
  // failing cannot fail the commit after others committed.
  for (size_t i = 0; i < writers.size(); ++i) {
    absl::Status checked =
        writers[i]->Run("SET CONSTRAINTS ALL IMMEDIATE", "SET CONSTRAINTS");
    if (!checked.ok()) {
      for (auto& w : writers) w->Rollback();
      return WithMessageSuffix(checked, "; nothing was loaded");
    }
  }
  if (writers.size() == 1) {
    absl::Status committed = writers[0]->Run("COMMIT", "COMMIT");
    if (committed.ok()) return committed;
    return WithMessageSuffix(
        committed, committed.code() == absl::StatusCode::kUnavailable
                       ? "; whether the rows were loaded is unknown (the "
                         "connection broke during COMMIT): check the table"
                       : "; nothing was loaded");
  }
  internal::ExecOptions options;
  options.connect_timeout = cluster.config().timeouts.connect;
  options.statement_timeout = cluster.config().timeouts.statement;
  const internal::RunStatements run = [&](const std::vector<size_t>& which,
                                          const std::vector<std::string>& sql) {
    std::vector<absl::Status> out;
    for (size_t k = 0; k < which.size(); ++k) {
      out.push_back(writers[which[k]]->Run(sql[k].c_str(), TagOf(sql[k])));
    }
    return out;
  };
  absl::Status committed = internal::TwoPhaseCommit(
      0, shards, run, internal::DecisionLogOf(cluster), options);
  if (!committed.ok()) {
    for (auto& w : writers) w->Rollback();
  }
  return committed;
}

}  // namespace

absl::StatusOr<LoadReport> LoadCsv(const Cluster& cluster,
                                   std::string_view table, std::istream& csv,
                                   const LoadOptions& options) {
  const std::shared_ptr<const ShardMap> map = cluster.map();
  ASSIGN_OR_RETURN(const Target target, ResolveTarget(*map, table));
  // COPY rows do not come back to be dual-written to a move's destination,
  // so a load into a distribution under a move would leave the destination
  // short of them.
  for (const MovingSlice& move : map->moves()) {
    if (target.spec != nullptr && !target.spec->reference &&
        move.distribution == target.spec->distribution) {
      return absl::FailedPreconditionError(StrCat(
          "table ", target.table, " belongs to distribution ",
          map->distributions()[move.distribution].name(),
          ", which move ", move.move_id,
          " is changing; load it once the move is done (shardctl moves "
          "status ", move.move_id, "), or insert the rows with Execute"));
    }
  }
  if (options.batch_bytes == 0) {
    return absl::InvalidArgumentError("the batch size must be at least 1 byte");
  }
  CsvOptions csv_options;
  csv_options.delimiter = options.delimiter;
  csv_options.null_string = options.null_string;
  RETURN_IF_ERROR(internal::ValidateCsvOptions(csv_options));
  CsvReader reader(csv, csv_options);
  CsvRecord record;

  std::vector<std::string> named = options.columns;
  std::string source = "the column list";
  if (options.header) {
    ASSIGN_OR_RETURN(const bool has_header, reader.Next(record));
    if (has_header && named.empty()) {
      source = StrCat("the header (line ", record.line, ")");
      for (size_t i = 0; i < record.fields.size(); ++i) {
        if (!record.fields[i].has_value() || record.fields[i]->empty()) {
          return absl::InvalidArgumentError(StrCat(
              source, ": field ", i + 1,
              " is empty; name every column in the header, or give the "
              "column list"));
        }
        named.push_back(*record.fields[i]);
      }
    }
  }

  // One writer per shard the table lives on; the first one, connected
  // here, tells the table's columns.
  FirstFailure failure;
  std::vector<std::unique_ptr<CopyWriter>> writers;
  std::vector<int> writer_of(map->shards().size(), -1);
  for (ShardId id : target.shards) {
    writer_of[id] = static_cast<int>(writers.size());
    writers.push_back(std::make_unique<CopyWriter>(
        CopyWriter::Settings{map->shard(id).name, map->shard(id).dsn,
                             cluster.config().timeouts.connect,
                             cluster.config().timeouts.statement,
                             map->epoch()},
        failure));
  }
  if (writers.empty()) {
    return absl::FailedPreconditionError(
        StrCat("table ", target.table, " lives on no shard of the map"));
  }
  RETURN_IF_ERROR(writers.front()->Open());
  ASSIGN_OR_RETURN(const std::vector<TableColumn> table_columns,
                   ReadTableColumns(*writers.front(), target));
  ASSIGN_OR_RETURN(
      const std::vector<std::string> columns,
      ResolveColumns(std::move(named), source, table_columns, target));

  std::optional<RowPlacer> placer;
  if (target.spec != nullptr && !target.spec->reference) {
    const std::optional<size_t> key_index =
        IndexOf(columns, target.spec->key_column);
    if (!key_index) {
      return MissingKeyColumn(target, target.spec->key_column, "shard key",
                              columns);
    }
    std::optional<size_t> hash_key_index;
    if (!target.spec->hash_key_column.empty()) {
      hash_key_index = IndexOf(columns, target.spec->hash_key_column);
      if (!hash_key_index) {
        return MissingKeyColumn(target, target.spec->hash_key_column,
                                "hash key", columns);
      }
    }
    placer.emplace(target, map->DistributionOf(*target.spec), *key_index,
                   hash_key_index);
  }

  std::vector<std::string> quoted;
  for (const std::string& c : columns) quoted.push_back(QuoteIdentifier(c));
  // Marked as the library's write of the table, as the router's are
  // (rebalancer/shard_objects.h, "Write guard").
  const std::string mark = target.spec != nullptr && !target.spec->reference
                               ? internal::WriteMark(target.spec->name)
                               : std::string();
  const std::string copy_sql =
      StrCat(mark, "COPY ", target.relation, " (", absl::StrJoin(quoted, ", "),
             ") FROM STDIN (FORMAT csv, DELIMITER ",
             QuoteLiteral(std::string_view(&options.delimiter, 1)), ", NULL ",
             QuoteLiteral(options.null_string), ")");
  for (auto& w : writers) w->Start(copy_sql, target.relname);

  std::vector<CopyBatch> batches(writers.size());
  auto send = [&](size_t w) {
    const bool sent = writers[w]->Send(std::move(batches[w]));
    batches[w] = CopyBatch{};
    return sent;
  };
  int64_t rows = 0;
  while (!failure.failed()) {
    absl::StatusOr<bool> more = reader.Next(record);
    if (!more.ok()) {
      failure.Set(more.status());
      break;
    }
    if (!*more) break;
    if (record.fields.size() != columns.size()) {
      failure.Set(absl::InvalidArgumentError(StrCat(
          "line ", record.line, ": the row has ", record.fields.size(),
          record.fields.size() == 1 ? " field" : " fields", " but there are ",
          columns.size(), " columns (", absl::StrJoin(columns, ", "),
          "); check the delimiter and the quoting of that row")));
      break;
    }
    size_t first = 0;
    size_t last = writers.size();
    if (placer.has_value()) {
      absl::StatusOr<ShardId> shard = placer->Place(record);
      if (!shard.ok()) {
        failure.Set(shard.status());
        break;
      }
      if (writer_of[*shard] < 0) {
        failure.Set(absl::InternalError(StrCat(
            "line ", record.line, ": the map placed the row on shard ",
            map->shard(*shard).name, ", which is not one of table ",
            target.table, "'s shards; please report this as a shardkit bug")));
        break;
      }
      first = static_cast<size_t>(writer_of[*shard]);
      last = first + 1;
    }
    for (size_t w = first; w < last; ++w) {
      batches[w].Add(record, reader.line_ending());
      if (batches[w].data.size() >= options.batch_bytes && !send(w)) break;
    }
    ++rows;
  }
  for (size_t w = 0; w < writers.size() && !failure.failed(); ++w) {
    if (!batches[w].rows.empty()) send(w);
  }
  if (!failure.failed()) {
    for (auto& w : writers) {
      if (!w->Finish().ok()) break;
    }
  }
  if (failure.failed()) {
    for (auto& w : writers) w->Stop();
    for (auto& w : writers) w->Rollback();
    return WithMessageSuffix(failure.status(), "; nothing was loaded");
  }
  RETURN_IF_ERROR(CommitAll(cluster, target.shards, writers));

  LoadReport report;
  report.table = target.table;
  report.columns = columns;
  report.rows = rows;
  for (size_t w = 0; w < writers.size(); ++w) {
    report.shards.push_back(ShardRows{target.shards[w],
                                      writers[w]->shard_name(),
                                      writers[w]->rows_copied()});
  }
  return report;
}

}  // namespace shardkit
