// Internal: splitting CSV input into records exactly where PostgreSQL's
// COPY ... FROM STDIN (FORMAT csv) splits it, keeping each record's bytes.
//
// A bulk load sends every record, unchanged, to the shard that owns its key,
// and lets PostgreSQL parse the values. So this reader must agree with the
// server on two things only: where a record ends, and the text of the
// fields that decide placement (the shard key). It follows the server's
// CSV rules (src/backend/commands/copyfromparse.c, PostgreSQL 15), which
// are RFC 4180 and a little more:
//   - A record ends at an unquoted line break: "\n", "\r\n" or "\r", the
//     first one seen deciding for the whole input (PostgreSQL refuses a
//     mix, and so does this reader, naming the line).
//   - A quote character anywhere in a field starts a quoted section, which
//     may hold delimiters and line breaks; inside it a doubled quote stands
//     for one quote; another single quote ends the section, and the field
//     goes on: `a"b,c"d` is the field `ab,cd`.
//   - A field that is unquoted and equal to the NULL string (by default the
//     empty string) is NULL; `""` is an empty string.
//   - A line holding only `\.` marks the end of data for PostgreSQL, which
//     would silently drop every record after it: it is refused here.
// A UTF-8 byte-order mark at the very start of the input is skipped.
//
//   std::istringstream in("id,name\n1,\"a, b\"\n");
//   CsvReader reader(in, CsvOptions{});
//   CsvRecord record;
//   while (true) {
//     absl::StatusOr<bool> more = reader.Next(record);
//     if (!more.ok()) return more.status();   // "line 7: ..."
//     if (!*more) break;
//     ... record.raw, record.fields, record.line ...
//   }
//
// Memory: the reader holds one chunk of input and the record being read;
// a record longer than CsvOptions::max_record_bytes is refused.
//
// Thread-safety: a CsvReader is not thread-safe; one thread reads it.

#ifndef SHARDKIT_ROUTER_CSV_H_
#define SHARDKIT_ROUTER_CSV_H_

#include <cstddef>
#include <cstdint>
#include <istream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shardkit::internal {

struct CsvOptions {
  // The field separator. REQUIRES: one byte, not the quote, '\r' or '\n'
  // (ValidateCsvOptions checks).
  char delimiter = ',';
  // The quote, which is also the escape character (PostgreSQL's default).
  char quote = '"';
  // An unquoted field equal to this is NULL.
  std::string null_string;
  // A record (all its lines) longer than this is refused: it is most likely
  // an unbalanced quote that swallowed the rest of the input.
  size_t max_record_bytes = size_t{64} << 20;
};

// Fails with kInvalidArgument, saying why, for options PostgreSQL's COPY
// would refuse or this reader cannot honour: a delimiter that is the quote,
// a line break or not ASCII; a NULL string with a line break or the
// delimiter in it.
absl::Status ValidateCsvOptions(const CsvOptions& options);

// How the input's lines end; decided by the first unquoted line break.
enum class LineEnding { kUnknown, kLf, kCrLf, kCr };

// One record. Its views are valid until the next call to CsvReader::Next.
struct CsvRecord {
  // The record's bytes as they were in the input, its line break included
  // (only a last record may have none).
  std::string_view raw;
  // The fields, unquoted; nullopt for NULL. A blank line is one NULL field.
  std::vector<std::optional<std::string>> fields;
  // The 1-based lines of the input where the record starts and ends
  // (they differ when a quoted field holds line breaks).
  int64_t line = 0;
  int64_t end_line = 0;
  // Line feeds and carriage returns inside quoted sections: PostgreSQL
  // counts one or the other when it numbers the lines of a COPY stream.
  int64_t quoted_lf = 0;
  int64_t quoted_cr = 0;
};

class CsvReader {
 public:
  // Reads from `in`, `chunk_bytes` at a time. `in` must outlive the reader.
  // REQUIRES: ValidateCsvOptions(options).ok(), chunk_bytes > 0.
  CsvReader(std::istream& in, CsvOptions options,
            size_t chunk_bytes = size_t{64} << 10);

  CsvReader(const CsvReader&) = delete;
  CsvReader& operator=(const CsvReader&) = delete;

  // Reads the next record into `record`. Returns true when it did, false at
  // the end of the input. Fails with kInvalidArgument "line N: ..." for
  // input PostgreSQL would refuse or misread (a quoted field not closed at
  // the end of the input, a line break of another kind than the first, a
  // line holding only \.), or a record longer than max_record_bytes, and
  // with kDataLoss when reading `in` fails. After a failure, or false, the
  // reader stays at the end.
  [[nodiscard]] absl::StatusOr<bool> Next(CsvRecord& record);

  // The line ending of the input, once the first line break was read.
  LineEnding line_ending() const { return ending_; }

 private:
  // Appends the next chunk of input to buffer_; sets eof_ at its end.
  absl::Status ReadChunk();
  // Scans buffer_ from scan_ for the end of the record that starts at
  // start_. When found, sets *content_end to its line break and *end past
  // it, and returns true; returns false when more input is needed.
  absl::StatusOr<bool> FindRecordEnd(size_t* content_end, size_t* end);
  // Fills `record` from buffer_[start_, end), whose fields end at
  // content_end.
  absl::Status BuildRecord(size_t content_end, size_t end, CsvRecord& record);
  absl::Status Fail(absl::Status status);

  std::istream& in_;
  const CsvOptions options_;
  const size_t chunk_bytes_;

  std::string buffer_;
  // The record being read starts at start_; its bytes up to scan_ were
  // scanned with this state.
  size_t start_ = 0;
  size_t scan_ = 0;
  bool in_quote_ = false;
  int64_t quoted_lf_ = 0;
  int64_t quoted_cr_ = 0;

  LineEnding ending_ = LineEnding::kUnknown;
  int64_t line_ = 1;  // where the next record starts
  bool eof_ = false;
  bool at_start_ = true;
  bool done_ = false;
};

}  // namespace shardkit::internal

#endif  // SHARDKIT_ROUTER_CSV_H_
