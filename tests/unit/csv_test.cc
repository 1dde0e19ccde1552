// The CSV reader of bulk loads (router/csv.h): records split where
// PostgreSQL's COPY (FORMAT csv) splits them, original bytes kept, fields
// unquoted as PostgreSQL unquotes them; and the line numbers of CopyBatch.

#include "router/csv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "router/copy_writer.h"

namespace shardkit::internal {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

using Fields = std::vector<std::optional<std::string>>;

struct Read {
  std::string raw;
  Fields fields;
  int64_t line = 0;
  int64_t end_line = 0;
  bool operator==(const Read& o) const {
    return raw == o.raw && fields == o.fields && line == o.line &&
           end_line == o.end_line;
  }
};

std::ostream& operator<<(std::ostream& os, const Read& r) {
  os << "{raw=\"" << r.raw << "\" line=" << r.line << "-" << r.end_line
     << " fields=[";
  for (const auto& f : r.fields) os << (f ? "\"" + *f + "\"" : "NULL") << " ";
  return os << "]}";
}

// Every record of `input`, or the error, read `chunk` bytes at a time.
absl::StatusOr<std::vector<Read>> ReadAll(const std::string& input,
                                          size_t chunk,
                                          CsvOptions options = {}) {
  std::istringstream in(input);
  CsvReader reader(in, options, chunk);
  CsvRecord record;
  std::vector<Read> out;
  while (true) {
    absl::StatusOr<bool> more = reader.Next(record);
    if (!more.ok()) return more.status();
    if (!*more) return out;
    out.push_back(Read{std::string(record.raw), record.fields, record.line,
                       record.end_line});
  }
}

// As ReadAll, checking that every chunk size gives the same answer.
absl::StatusOr<std::vector<Read>> ReadAllChunked(const std::string& input,
                                                 CsvOptions options = {}) {
  absl::StatusOr<std::vector<Read>> whole = ReadAll(input, 1 << 16, options);
  for (size_t chunk : {1, 2, 3, 5, 8}) {
    absl::StatusOr<std::vector<Read>> part = ReadAll(input, chunk, options);
    EXPECT_EQ(part.ok(), whole.ok()) << "chunk " << chunk;
    if (part.ok() && whole.ok()) {
      EXPECT_EQ(*part, *whole) << "chunk " << chunk;
    } else if (!part.ok() && !whole.ok()) {
      EXPECT_EQ(part.status(), whole.status()) << "chunk " << chunk;
    }
  }
  return whole;
}

std::optional<std::string> S(const char* s) { return std::string(s); }
const std::optional<std::string> kNull;

struct Case {
  std::string name;
  std::string input;
  std::vector<Read> expected;
};

TEST(CsvReaderTest, SplitsAsPostgresDoes) {
  const std::vector<Case> cases = {
      {"plain", "a,b\n1,2\n",
       {{"a,b\n", {S("a"), S("b")}, 1, 1}, {"1,2\n", {S("1"), S("2")}, 2, 2}}},
      {"no final line break", "1,2\n3,4",
       {{"1,2\n", {S("1"), S("2")}, 1, 1}, {"3,4", {S("3"), S("4")}, 2, 2}}},
      {"empty input", "", {}},
      {"quoted delimiter and doubled quote", "1,\"a, \"\"b\"\"\"\n",
       {{"1,\"a, \"\"b\"\"\"\n", {S("1"), S("a, \"b\"")}, 1, 1}}},
      {"line breaks inside quotes", "1,\"x\ny\n\"\n2,z\n",
       {{"1,\"x\ny\n\"\n", {S("1"), S("x\ny\n")}, 1, 3},
        {"2,z\n", {S("2"), S("z")}, 4, 4}}},
      {"NULL and empty string", ",\"\",x\n",
       {{",\"\",x\n", {kNull, S(""), S("x")}, 1, 1}}},
      {"blank line is one NULL field", "\n1\n",
       {{"\n", {kNull}, 1, 1}, {"1\n", {S("1")}, 2, 2}}},
      {"quote in the middle of a field", "a\"b,c\"d,e\n",
       {{"a\"b,c\"d,e\n", {S("ab,cd"), S("e")}, 1, 1}}},
      {"trailing delimiter", "1,\n", {{"1,\n", {S("1"), kNull}, 1, 1}}},
      {"crlf", "1,\"a\r\nb\"\r\n2,c\r\n",
       {{"1,\"a\r\nb\"\r\n", {S("1"), S("a\r\nb")}, 1, 2},
        {"2,c\r\n", {S("2"), S("c")}, 3, 3}}},
      {"cr only", "1,a\r2,b\r",
       {{"1,a\r", {S("1"), S("a")}, 1, 1}, {"2,b\r", {S("2"), S("b")}, 2, 2}}},
      {"cr at the very end", "1,a\r", {{"1,a\r", {S("1"), S("a")}, 1, 1}}},
      {"utf-8 byte-order mark skipped", "\xEF\xBB\xBFid\n1\n",
       {{"id\n", {S("id")}, 1, 1}, {"1\n", {S("1")}, 2, 2}}},
      {"backslash-dot inside a value", "\\.x\n\"\\.\"\n",
       {{"\\.x\n", {S("\\.x")}, 1, 1}, {"\"\\.\"\n", {S("\\.")}, 2, 2}}},
      {"utf-8 text", "1,\"é, ü\"\n", {{"1,\"é, ü\"\n", {S("1"), S("é, ü")}, 1, 1}}},
  };
  for (const Case& c : cases) {
    absl::StatusOr<std::vector<Read>> got = ReadAllChunked(c.input);
    ASSERT_TRUE(got.ok()) << c.name << ": " << got.status();
    EXPECT_EQ(*got, c.expected) << c.name;
  }
}

TEST(CsvReaderTest, OptionsDelimiterAndNullString) {
  CsvOptions options;
  options.delimiter = '\t';
  options.null_string = "\\N";
  absl::StatusOr<std::vector<Read>> got =
      ReadAllChunked("1\t\\N\t\t\"\\N\"\ta,b\n", options);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 1u);
  EXPECT_THAT((*got)[0].fields, ElementsAre(S("1"), kNull, S(""), S("\\N"), S("a,b")));
}

TEST(CsvReaderTest, RefusesWhatPostgresWouldRefuseOrMisread) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"1,\"open\n2,x\n",
       "line 1: a quoted field in the row that starts here is not closed by "
       "the end of the input"},
      {"1\n2\r\n",
       "line 2: a carriage return (\\r) outside quotes, but the input's lines "
       "end with \\n"},
      {"1\r\n2\n3\r\n",
       "line 2: a line feed (\\n) outside quotes, but the input's lines end "
       "with \\r\\n"},
      {"1\r\n2\r3\r\n", "line 2: a carriage return (\\r) outside quotes"},
      {"1\r2\r\n", "line 3: a line feed (\\n) outside quotes, but the input's "
                   "lines end with \\r"},
      {"1\n\\.\n2\n",
       "line 2: a line holding only \\. marks the end of the data for "
       "PostgreSQL"},
      {"1\n\"a\nb\"\n\\.", "line 4: a line holding only \\."},
  };
  for (const auto& [input, error] : cases) {
    absl::StatusOr<std::vector<Read>> got = ReadAllChunked(input);
    ASSERT_FALSE(got.ok()) << input;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(got.status().message(), HasSubstr(error)) << input;
  }
}

TEST(CsvReaderTest, RecordSizeIsBounded) {
  CsvOptions options;
  options.max_record_bytes = 100;
  std::string input = "1,ok\n2,\"" + std::string(500, 'x');
  absl::StatusOr<std::vector<Read>> got = ReadAll(input, 16, options);
  ASSERT_FALSE(got.ok());
  EXPECT_THAT(got.status().message(),
              HasSubstr("line 2: the row that starts here is longer than 100 "
                        "bytes; is a quote unbalanced"));
  // A long record that fits is fine.
  options.max_record_bytes = 1000;
  got = ReadAll(input + "\"\n", 16, options);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), 2u);
}

TEST(CsvReaderTest, AfterAnErrorStaysAtTheEnd) {
  std::istringstream in("1\n\\.\n2\n");
  CsvReader reader(in, CsvOptions{});
  CsvRecord record;
  EXPECT_TRUE(*reader.Next(record));
  EXPECT_FALSE(reader.Next(record).ok());
  absl::StatusOr<bool> after = reader.Next(record);
  ASSERT_TRUE(after.ok());
  EXPECT_FALSE(*after);
}

TEST(CsvReaderTest, ValidatesOptions) {
  const std::vector<std::pair<CsvOptions, std::string>> cases = {
      {{'"', '"', "", 1}, "the delimiter cannot be the quote character"},
      {{'\n', '"', "", 1}, "it must be one ASCII character other than a line"},
      {{'\xe9', '"', "", 1}, "it must be one ASCII character"},
      {{',', '"', "a,b", 1}, "the NULL string \"a,b\" cannot hold the delimiter"},
      {{',', '"', "a\nb", 1}, "the NULL string cannot hold a line break"},
  };
  for (const auto& [options, error] : cases) {
    absl::Status status = ValidateCsvOptions(options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << error;
    EXPECT_THAT(status.message(), HasSubstr(error));
  }
  EXPECT_TRUE(ValidateCsvOptions(CsvOptions{}).ok());
  EXPECT_TRUE(ValidateCsvOptions({'\t', '"', "\\N", 1}).ok());
}

// Random fields, written the way any CSV writer would (quoted when needed,
// sometimes when not), read back exactly, whatever the chunk size; the
// records' bytes put together are the input.
TEST(CsvReaderTest, RandomRoundTrip) {
  std::mt19937 rng(20240601);
  const std::string alphabet = "ab,\"\n\r x";
  for (int round = 0; round < 300; ++round) {
    std::vector<Fields> rows;
    std::string input;
    const int columns = 1 + static_cast<int>(rng() % 4);
    const int count = static_cast<int>(rng() % 6);
    for (int r = 0; r < count; ++r) {
      Fields row;
      for (int c = 0; c < columns; ++c) {
        if (c > 0) input += ',';
        if (rng() % 5 == 0) {
          row.push_back(std::nullopt);  // an unquoted empty field
          continue;
        }
        std::string value;
        const int length = static_cast<int>(rng() % 6);
        for (int i = 0; i < length; ++i) value += alphabet[rng() % alphabet.size()];
        const bool needs_quotes =
            value.empty() || value.find_first_of(",\"\r\n") != std::string::npos;
        if (needs_quotes || rng() % 3 == 0) {
          input += '"';
          for (char ch : value) {
            if (ch == '"') input += '"';
            input += ch;
          }
          input += '"';
        } else {
          input += value;
        }
        row.push_back(value);
      }
      if (columns == 1 && !row[0].has_value() && r + 1 == count) {
        // A last blank line is no record at all.
        row[0] = "";
        input += "\"\"";
      }
      input += r + 1 < count || rng() % 2 ? "\n" : "";
      rows.push_back(std::move(row));
    }
    absl::StatusOr<std::vector<Read>> got = ReadAllChunked(input);
    ASSERT_TRUE(got.ok()) << got.status() << " in " << input;
    ASSERT_EQ(got->size(), rows.size()) << input;
    std::string joined;
    for (size_t r = 0; r < rows.size(); ++r) {
      EXPECT_EQ((*got)[r].fields, rows[r]) << input;
      joined += (*got)[r].raw;
    }
    EXPECT_EQ(joined, input);
  }
}

// PostgreSQL names a COPY row by its last line, counting line breaks inside
// quotes as lines: "\r" in the first record of a COPY, then "\n" for a
// stream whose lines end with "\n".
TEST(CopyBatchTest, NumbersLinesAsPostgresDoes) {
  const std::string input = "1,\"a\nb\"\n2,c\n3,\"d\ne\nf\"\n4,\"g\r\nh\"\n";
  std::istringstream in(input);
  CsvReader reader(in, CsvOptions{});
  CsvRecord record;
  CopyBatch batch;
  while (*reader.Next(record)) batch.Add(record, reader.line_ending());
  EXPECT_EQ(batch.data, input);
  ASSERT_EQ(batch.rows.size(), 4u);
  // CSV lines 1, 3, 4, 7; PostgreSQL: record 1 is line 1 (its "\n" not
  // counted yet), record 2 line 2, record 3 lines 3-5, record 4 lines 6-7.
  EXPECT_EQ(batch.rows[0].csv_line, 1);
  EXPECT_EQ(batch.rows[0].copy_line, 1);
  EXPECT_EQ(batch.rows[1].csv_line, 3);
  EXPECT_EQ(batch.rows[1].copy_line, 2);
  EXPECT_EQ(batch.rows[2].csv_line, 4);
  EXPECT_EQ(batch.rows[2].copy_line, 5);
  EXPECT_EQ(batch.rows[3].csv_line, 7);
  EXPECT_EQ(batch.rows[3].copy_line, 7);
  EXPECT_EQ(batch.CsvLineOf(1), 1);
  EXPECT_EQ(batch.CsvLineOf(2), 3);
  EXPECT_EQ(batch.CsvLineOf(5), 4);
  EXPECT_EQ(batch.CsvLineOf(4), 4);  // within a record: that record
  EXPECT_EQ(batch.CsvLineOf(7), 7);
  EXPECT_EQ(batch.CsvLineOf(8), std::nullopt);
}

TEST(CopyBatchTest, CrLfStreamsCountCarriageReturns) {
  const std::string input = "1,\"a\r\nb\"\r\n2,\"c\nd\"\r\n3\r\n";
  std::istringstream in(input);
  CsvReader reader(in, CsvOptions{});
  CsvRecord record;
  CopyBatch batch;
  while (*reader.Next(record)) batch.Add(record, reader.line_ending());
  ASSERT_EQ(batch.rows.size(), 3u);
  EXPECT_EQ(batch.rows[0].copy_line, 2);  // "\r" counted
  EXPECT_EQ(batch.rows[1].copy_line, 3);  // a lone "\n" is not
  EXPECT_EQ(batch.rows[2].copy_line, 4);
  EXPECT_EQ(batch.rows[1].csv_line, 3);   // but it is a line to an editor
  EXPECT_EQ(batch.rows[2].csv_line, 5);
}

}  // namespace
}  // namespace shardkit::internal
