#include "rebalancer/journal.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {

namespace {

constexpr std::string_view kPhaseNames[] = {
    "planned", "dual-write", "backfill", "verify", "cutover",
    "cleanup", "done",       "aborting", "aborted"};

constexpr std::string_view kMoveColumns =
    "id, distribution, slice_from, slice_to, region, source, destination, "
    "phase, past_point_of_no_return, error, created_at::text, "
    "updated_at::text, server_hash";

absl::StatusOr<MoveRecord> RecordOf(const Row& row) {
  MoveRecord m;
  auto text = [&](size_t i) { return row[i].value_or(""); };
  if (!absl::SimpleAtoi(text(0), &m.id)) {
    return absl::InternalError("move journal: unreadable id");
  }
  m.distribution = text(1);
  m.from = text(2);
  m.to = text(3);
  m.region = text(4);
  m.source = text(5);
  m.destination = text(6);
  std::optional<JournalPhase> phase = JournalPhaseFromName(text(7));
  if (!phase) {
    return absl::InternalError(
        StrCat("move journal: move ", m.id, " has unknown phase ", text(7)));
  }
  m.phase = *phase;
  m.past_point_of_no_return = text(8) == "t";
  m.error = text(9);
  m.created_at = text(10);
  m.updated_at = text(11);
  m.server_hash = text(12) == "t";
  return m;
}

}  // namespace

std::string_view JournalPhaseName(JournalPhase phase) {
  return kPhaseNames[static_cast<int>(phase)];
}

std::optional<JournalPhase> JournalPhaseFromName(std::string_view name) {
  for (size_t i = 0; i < std::size(kPhaseNames); ++i) {
    if (kPhaseNames[i] == name) return static_cast<JournalPhase>(i);
  }
  return std::nullopt;
}

absl::Status Journal::EnsureSchema() {
  RETURN_IF_ERROR(catalog_.EnsureSchema());
  return catalog_.EnsureTables(
      "the move journal", 7105846953277306882,
      "CREATE TABLE IF NOT EXISTS shardkit.moves ("
      "id bigserial PRIMARY KEY, distribution text NOT NULL, "
      "slice_from text NOT NULL, slice_to text NOT NULL, "
      "region text NOT NULL, source text NOT NULL, "
      "destination text NOT NULL, phase text NOT NULL, "
      "past_point_of_no_return bool NOT NULL DEFAULT false, "
      "error text NOT NULL DEFAULT '', "
      "created_at timestamptz NOT NULL DEFAULT now(), "
      "updated_at timestamptz NOT NULL DEFAULT now()); "
      // Journals written before moves recorded it.
      "ALTER TABLE shardkit.moves ADD COLUMN IF NOT EXISTS "
      "server_hash bool NOT NULL DEFAULT false; "
      "CREATE TABLE IF NOT EXISTS shardkit.move_progress ("
      "move_id int8 NOT NULL REFERENCES shardkit.moves, "
      "table_name text NOT NULL, bound text[] NOT NULL, "
      "rows_scanned int8 NOT NULL, rows_copied int8 NOT NULL, "
      "done bool NOT NULL, PRIMARY KEY (move_id, table_name)); "
      "CREATE TABLE IF NOT EXISTS shardkit.move_events ("
      "move_id int8 NOT NULL REFERENCES shardkit.moves, "
      "at timestamptz NOT NULL DEFAULT clock_timestamp(), "
      "message text NOT NULL)");
}

absl::StatusOr<MoveRecord> Journal::Create(const MoveRecord& move) {
  RETURN_IF_ERROR(EnsureSchema());
  ASSIGN_OR_RETURN(
      Result result,
      catalog_.Run(StrCat("INSERT INTO shardkit.moves (distribution, "
                          "slice_from, slice_to, region, source, destination, "
                          "phase) VALUES ($1, $2, $3, $4, $5, $6, 'planned') "
                          "RETURNING ",
                          kMoveColumns),
                   {move.distribution, move.from, move.to, move.region,
                    move.source, move.destination}));
  return RecordOf(result.rows.at(0));
}

absl::StatusOr<MoveRecord> Journal::Get(uint64_t id) {
  RETURN_IF_ERROR(EnsureSchema());
  ASSIGN_OR_RETURN(Result result,
                   catalog_.Run(StrCat("SELECT ", kMoveColumns,
                                       " FROM shardkit.moves WHERE id = $1"),
                                {StrCat(id)}));
  if (result.rows.empty()) {
    return absl::NotFoundError(StrCat("no move ", id,
                                      " in the catalog's journal; "
                                      "`shardctl moves list` shows the moves"));
  }
  return RecordOf(result.rows[0]);
}

absl::StatusOr<std::vector<MoveRecord>> Journal::List() {
  RETURN_IF_ERROR(EnsureSchema());
  ASSIGN_OR_RETURN(Result result,
                   catalog_.Run(StrCat("SELECT ", kMoveColumns,
                                       " FROM shardkit.moves ORDER BY id DESC")));
  std::vector<MoveRecord> moves;
  for (const Row& row : result.rows) {
    ASSIGN_OR_RETURN(MoveRecord m, RecordOf(row));
    moves.push_back(std::move(m));
  }
  return moves;
}

absl::StatusOr<std::vector<MoveRecord>> Journal::Active() {
  ASSIGN_OR_RETURN(std::vector<MoveRecord> all, List());
  std::vector<MoveRecord> active;
  for (MoveRecord& m : all) {
    if (m.phase != JournalPhase::kDone && m.phase != JournalPhase::kAborted) {
      active.push_back(std::move(m));
    }
  }
  return active;
}

absl::Status Journal::SetPhase(uint64_t id, JournalPhase phase,
                               std::string_view error) {
  RETURN_IF_ERROR(
      catalog_
          .Run("UPDATE shardkit.moves SET phase = $2, error = $3, "
               "updated_at = now() WHERE id = $1",
               {StrCat(id), std::string(JournalPhaseName(phase)),
                std::string(error)})
          .status());
  return Event(id, error.empty()
                       ? StrCat("phase ", JournalPhaseName(phase))
                       : StrCat("phase ", JournalPhaseName(phase), ": ", error));
}

absl::Status Journal::SetServerHash(uint64_t id, bool server_hash) {
  return catalog_
      .Run("UPDATE shardkit.moves SET server_hash = $2, updated_at = now() "
           "WHERE id = $1",
           {StrCat(id), server_hash ? "true" : "false"})
      .status();
}

absl::Status Journal::MarkPointOfNoReturn(uint64_t id) {
  return catalog_
      .Run("UPDATE shardkit.moves SET past_point_of_no_return = true, "
           "updated_at = now() WHERE id = $1",
           {StrCat(id)})
      .status();
}

absl::Status Journal::Event(uint64_t id, std::string_view message) {
  return catalog_
      .Run("INSERT INTO shardkit.move_events (move_id, message) "
           "VALUES ($1, $2)",
           {StrCat(id), std::string(message)})
      .status();
}

absl::StatusOr<std::vector<std::string>> Journal::Events(uint64_t id) {
  ASSIGN_OR_RETURN(
      Result result,
      catalog_.Run("SELECT to_char(at, 'YYYY-MM-DD HH24:MI:SS.MS') || '  ' || "
                   "message FROM shardkit.move_events WHERE move_id = $1 "
                   "ORDER BY at",
                   {StrCat(id)}));
  std::vector<std::string> events;
  for (const Row& row : result.rows) events.push_back(row[0].value_or(""));
  return events;
}

absl::StatusOr<std::vector<TableProgress>> Journal::Progress(uint64_t id) {
  ASSIGN_OR_RETURN(
      Result result,
      catalog_.Run("SELECT table_name, array_to_json(bound)::text, "
                   "rows_scanned, rows_copied, done FROM "
                   "shardkit.move_progress WHERE move_id = $1 "
                   "ORDER BY table_name",
                   {StrCat(id)}));
  std::vector<TableProgress> progress;
  for (const Row& row : result.rows) {
    TableProgress p;
    p.table = row[0].value_or("");
    // The bound comes back as a JSON array of strings; unnest it on the
    // server instead of parsing JSON here.
    ASSIGN_OR_RETURN(
        Result bound,
        catalog_.Run("SELECT unnest(bound) FROM shardkit.move_progress "
                     "WHERE move_id = $1 AND table_name = $2",
                     {StrCat(id), p.table}));
    for (const Row& b : bound.rows) p.bound.push_back(b[0].value_or(""));
    if (!absl::SimpleAtoi(row[2].value_or("0"), &p.rows_scanned) ||
        !absl::SimpleAtoi(row[3].value_or("0"), &p.rows_copied)) {
      return absl::InternalError("move journal: unreadable progress");
    }
    p.done = row[4].value_or("") == "t";
    progress.push_back(std::move(p));
  }
  return progress;
}

absl::Status Journal::SaveProgress(uint64_t id, const TableProgress& p) {
  // The bound travels as a text[] literal built by the server from a
  // JSON array, so no quoting of our own.
  std::string json = "[";
  for (size_t i = 0; i < p.bound.size(); ++i) {
    if (i > 0) json += ",";
    json += "\"";
    for (char c : p.bound[i]) {
      if (c == '"' || c == '\\') json += '\\';
      if (static_cast<unsigned char>(c) < 0x20) {
        json += absl::StrFormat("\\u%04x", static_cast<int>(c));
        continue;
      }
      json += c;
    }
    json += "\"";
  }
  json += "]";
  return catalog_
      .Run("INSERT INTO shardkit.move_progress AS p (move_id, table_name, "
           "bound, rows_scanned, rows_copied, done) VALUES ($1, $2, "
           "ARRAY(SELECT json_array_elements_text($3::json)), $4, $5, $6) "
           "ON CONFLICT (move_id, table_name) DO UPDATE SET "
           "bound = EXCLUDED.bound, rows_scanned = EXCLUDED.rows_scanned, "
           "rows_copied = EXCLUDED.rows_copied, done = EXCLUDED.done",
           {StrCat(id), p.table, json, StrCat(p.rows_scanned),
            StrCat(p.rows_copied), p.done ? "true" : "false"})
      .status();
}

}  // namespace shardkit::internal
