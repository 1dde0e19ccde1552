// Bulk loading: CSV rows into a sharded or reference table, each row sent to
// the shard that owns its key, streamed with COPY.
//
// Example:
//
//   std::ifstream csv("users.csv");   // id,name\n1,Ada\n2,"Lovelace, A."\n
//   absl::StatusOr<shardkit::LoadReport> report =
//       shardkit::LoadCsv(*cluster, "users", csv);
//   if (!report.ok()) {
//     std::cerr << report.status().message() << "\n";  // names shard, line
//     return 1;
//   }
//   for (const shardkit::ShardRows& s : report->shards) {
//     std::cout << s.shard_name << " " << s.rows << "\n";
//   }
//
// ## What is sent where
//
// The input is CSV as PostgreSQL's `COPY ... (FORMAT csv)` reads it
// (RFC 4180: fields quoted with ", a quote inside doubled, delimiters and
// line breaks allowed inside quotes; an unquoted field equal to the NULL
// string is NULL, so by default an unquoted empty field is NULL and "" is
// an empty string). It must be UTF-8: the connections to the shards use
// client_encoding UTF8, and text keys are hashed as UTF-8 bytes.
//
// LoadCsv splits the input into records, reads the shard key of each
// record (the table's key column; for a region distribution spread over
// several shards, its hash-key column too), places it with the cluster's
// current map (Cluster::map(), taken once at the start), and sends the
// record's original bytes, unchanged, to the owning shard with
// `COPY table (columns) FROM STDIN (FORMAT csv, DELIMITER ..., NULL ...)`:
// PostgreSQL itself parses and converts the values. A row of a reference
// table goes to every shard; a table that is not in the map goes to the
// map's default shard ([router] default_shard) when there is one.
//
// Rows are buffered per shard and sent in batches of about
// LoadOptions::batch_bytes, one COPY statement per batch, by one thread and
// one connection per shard, so that the shards load in parallel and memory
// stays bounded (a few batches per shard), whatever the size of the input.
//
// ## All or nothing
//
// Every shard loads inside one transaction. Only when every shard has
// copied every row sent to it, and its deferred constraints hold
// (SET CONSTRAINTS ALL IMMEDIATE), are the shards committed: with a plain
// COMMIT when the table lives on one shard, else with two-phase commit, as
// a Transaction commits (include/shardkit/transaction.h): every shard
// keeps its rows or none does, even if this process dies mid-commit
// (recovery then finishes or undoes it). Any failure before that (a row
// the CSV reader refuses, a key that is missing or does not parse, a shard
// that is down, a row a shard refuses: duplicate key, bad value, ...)
// rolls every shard back: nothing was loaded anywhere. The shards need
// max_prepared_transactions > 0 when the table lives on several. Loading
// while a move of the table's slices is under way is not fenced yet
// (moves come with issue 5).
//
// Thread-safety: LoadCsv may run concurrently with other calls on the same
// Cluster, including other loads; it reads `csv` on the calling thread only.

#ifndef SHARDKIT_LOAD_H_
#define SHARDKIT_LOAD_H_

#include <cstddef>
#include <cstdint>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "shardkit/cluster.h"
#include "shardkit/shard_map.h"

namespace shardkit {

struct LoadOptions {
  // Whether the first row of the CSV is a header. When it is, and `columns`
  // is empty, its fields name the columns of the rows that follow, in
  // their order (exact, case-sensitive column names), as with psql's
  // `\copy ... CSV HEADER`.
  bool header = true;
  // The columns of the CSV rows, in order. When given, a header row is
  // skipped unread. When empty and there is no header, the rows hold every
  // column of the table in the table's order (generated columns excluded),
  // as read from the first shard's catalog.
  std::vector<std::string> columns;
  // The field separator: one ASCII character other than '"' and a line
  // break.
  char delimiter = ',';
  // An unquoted field equal to this is NULL (PostgreSQL's CSV default: the
  // empty string). It may not hold the delimiter or a line break.
  std::string null_string;
  // A shard's buffered rows go out as one COPY once they reach this many
  // bytes. REQUIRES: > 0.
  size_t batch_bytes = size_t{1} << 20;
};

// How many rows one shard received.
struct ShardRows {
  ShardId shard = 0;
  std::string shard_name;
  int64_t rows = 0;
};

struct LoadReport {
  // The table, as the map names it.
  std::string table;
  // The columns loaded, in the order of the CSV's fields.
  std::vector<std::string> columns;
  // Data rows of the CSV (the header not counted). For a reference table
  // each of them went to every shard.
  int64_t rows = 0;
  // Every shard the table lives on, in shard order, with the rows each
  // stored (as its COPY reported them); a shard that owned no row of the
  // input is listed with 0.
  std::vector<ShardRows> shards;
};

// Loads the CSV rows read from `csv` into `table` (see the overview above)
// and returns what went where. Reads `csv` to its end, or until the first
// failure. An input without rows (empty, or a header only) loads nothing
// and succeeds, once the table was found on the first shard.
//
// Fails, having committed nothing, with
//   - kNotFound for a table that is not in the map (and no default shard),
//     or that does not exist on a shard (SQLSTATE 42P01, naming the shard);
//   - kInvalidArgument for unusable options or input, with what to do:
//     a header or column list naming a column the table does not have, or
//     a column twice; no shard-key column among the columns; a row whose
//     key is NULL (by default: an unquoted empty field; a text key written
//     "" is the empty string, a value like any other), or is not a value
//     of the key's type, or a row with another number of fields than there
//     are columns ("line 17: ..."); CSV that PostgreSQL would refuse or
//     misread: a quoted field still open at the end of the input, line
//     breaks of two kinds ("\n" and "\r\n"), a line holding only \.
//     (PostgreSQL's end-of-data mark, which would drop the rows after it),
//     a row longer than 64 MiB;
//   - kDataLoss when reading `csv` fails (not at its end);
//   - kUnavailable for a shard that cannot be reached within the connect
//     timeout ([timeouts] connect) or whose connection breaks, naming it;
//   - the shard's own error, naming the shard, carrying the SQLSTATE
//     (SqlStateOf) and the CSV line of the row it refused, e.g.
//     "shard s2: ERROR 23505: duplicate key value violates unique
//     constraint "users_pkey"; detail: Key (id)=(7) already exists.
//     (CSV line 9); nothing was loaded". A statement (one batch's COPY,
//     the commit) that runs past [timeouts] statement is cancelled by the
//     shard (57014).
// Fails after committing some shards only in the commit window described
// above; the message then names the shards that committed.
[[nodiscard]] absl::StatusOr<LoadReport> LoadCsv(
    const Cluster& cluster, std::string_view table, std::istream& csv,
    const LoadOptions& options = {});

}  // namespace shardkit

#endif  // SHARDKIT_LOAD_H_
