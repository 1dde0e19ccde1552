// Internal to shardctl: printing tables and JSON.

#ifndef SHARDKIT_CLI_OUTPUT_H_
#define SHARDKIT_CLI_OUTPUT_H_

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace shardkit::cli {

// Output formats of commands that print data.
enum class Format { kTable, kJson };

// Prints `rows` under `header` as aligned, space-separated columns with a
// dashed rule below the header. Every row has header.size() cells.
void PrintTable(std::ostream& out, const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows);

// A value as one table cell: newline, carriage return and tab escaped as
// \n, \r, \t so that a row stays on one line; SQL NULL as "NULL".
std::string TableCell(std::string_view value);
std::string TableCell(const std::optional<std::string>& value);
inline std::string TableCell(const std::string& value) {
  return TableCell(std::string_view(value));
}

// Rows as `psql --csv` prints them, byte for byte: a header line, then one
// line per row; a field is quoted ("" for a quote inside) when it holds a
// comma, a quote, CR or LF, or is exactly \. ; NULL is an empty field.
void PrintCsv(std::ostream& out, const std::vector<std::string>& header,
              const std::vector<std::vector<std::optional<std::string>>>& rows);

// A small streaming JSON writer: well-formed output as long as Begin/End
// calls pair up and every object member is preceded by Key().
class JsonWriter {
 public:
  JsonWriter& BeginObject();
  JsonWriter& EndObject();
  JsonWriter& BeginArray();
  JsonWriter& EndArray();
  JsonWriter& Key(std::string_view key);
  JsonWriter& String(std::string_view value);
  JsonWriter& Int(int64_t value);
  // `value` with up to 6 significant digits ("0.412", "12.5", "1e+06");
  // null when it is not finite (JSON has no NaN or infinity).
  JsonWriter& Double(double value);
  JsonWriter& Bool(bool value);
  JsonWriter& Null();

  // The document so far.
  const std::string& str() const { return out_; }

 private:
  void BeforeValue();

  std::string out_;
  // One entry per open container: whether it has a member yet.
  std::vector<bool> has_member_;
  bool after_key_ = false;
};

// `value` as a JSON string literal, quotes included.
std::string JsonQuote(std::string_view value);

}  // namespace shardkit::cli

#endif  // SHARDKIT_CLI_OUTPUT_H_
