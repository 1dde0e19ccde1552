#include "router/csv.h"

#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {
namespace {

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

std::string_view EndingName(LineEnding ending) {
  switch (ending) {
    case LineEnding::kLf: return "\\n";
    case LineEnding::kCrLf: return "\\r\\n";
    case LineEnding::kCr: return "\\r";
    case LineEnding::kUnknown: break;
  }
  return "?";
}

std::string Printable(char c) {
  if (c == '\t') return "\\t";
  if (c == '\r') return "\\r";
  if (c == '\n') return "\\n";
  return std::string(1, c);
}

}  // namespace

absl::Status ValidateCsvOptions(const CsvOptions& options) {
  const char d = options.delimiter;
  if (d == '\r' || d == '\n' || static_cast<unsigned char>(d) >= 0x80 ||
      d == '\0') {
    return absl::InvalidArgumentError(
        StrCat("the delimiter '", Printable(d),
               "' cannot be used: it must be one ASCII character other than "
               "a line break"));
  }
  if (d == options.quote) {
    return absl::InvalidArgumentError(StrCat(
        "the delimiter cannot be the quote character '", Printable(d), "'"));
  }
  if (options.null_string.find_first_of("\r\n") != std::string::npos) {
    return absl::InvalidArgumentError(
        "the NULL string cannot hold a line break");
  }
  if (options.null_string.find(d) != std::string::npos) {
    return absl::InvalidArgumentError(
        StrCat("the NULL string \"", options.null_string,
               "\" cannot hold the delimiter '", Printable(d), "'"));
  }
  return absl::OkStatus();
}

CsvReader::CsvReader(std::istream& in, CsvOptions options, size_t chunk_bytes)
    : in_(in), options_(std::move(options)), chunk_bytes_(chunk_bytes) {}

absl::Status CsvReader::Fail(absl::Status status) {
  done_ = true;
  return status;
}

absl::Status CsvReader::ReadChunk() {
  const size_t old_size = buffer_.size();
  buffer_.resize(old_size + chunk_bytes_);
  in_.read(buffer_.data() + old_size, static_cast<std::streamsize>(chunk_bytes_));
  const size_t got = static_cast<size_t>(in_.gcount());
  buffer_.resize(old_size + got);
  if (in_.bad()) {
    return Fail(absl::DataLossError(
        StrCat("reading the CSV input failed after line ", line_)));
  }
  if (got == 0 || in_.eof()) eof_ = true;
  return absl::OkStatus();
}

absl::StatusOr<bool> CsvReader::FindRecordEnd(size_t* content_end,
                                              size_t* end) {
  const char quote = options_.quote;
  // The line of the character at hand, for errors.
  auto line_here = [&] {
    return line_ + (ending_ == LineEnding::kCr ? quoted_cr_ : quoted_lf_);
  };
  auto mixed = [&](std::string_view what) {
    return Fail(absl::InvalidArgumentError(StrCat(
        "line ", line_here(), ": ", what,
        " outside quotes, but the input's lines end with ",
        EndingName(ending_),
        "; quote the field that holds it, or end every line alike "
        "(PostgreSQL refuses a mix)")));
  };
  for (size_t i = scan_; i < buffer_.size(); ++i) {
    const char c = buffer_[i];
    if (c == quote) {
      // With the escape character equal to the quote, a doubled quote
      // toggles twice: the section stays open, as in PostgreSQL.
      in_quote_ = !in_quote_;
      continue;
    }
    if (in_quote_) {
      if (c == '\n') ++quoted_lf_;
      if (c == '\r') ++quoted_cr_;
      continue;
    }
    if (c == '\n') {
      if (ending_ == LineEnding::kUnknown) ending_ = LineEnding::kLf;
      if (ending_ != LineEnding::kLf) return mixed("a line feed (\\n)");
      *content_end = i;
      *end = i + 1;
      return true;
    }
    if (c == '\r') {
      if (i + 1 == buffer_.size() && !eof_) {
        scan_ = i;  // look at what follows once it is read
        return false;
      }
      const bool lf_next = i + 1 < buffer_.size() && buffer_[i + 1] == '\n';
      switch (ending_) {
        case LineEnding::kUnknown:
          ending_ = lf_next ? LineEnding::kCrLf : LineEnding::kCr;
          break;
        case LineEnding::kLf:
          return mixed("a carriage return (\\r)");
        case LineEnding::kCrLf:
          if (!lf_next) return mixed("a carriage return (\\r)");
          break;
        case LineEnding::kCr:
          break;  // a "\n" after it starts the next record, and fails there
      }
      *content_end = i;
      *end = ending_ == LineEnding::kCrLf ? i + 2 : i + 1;
      return true;
    }
  }
  scan_ = buffer_.size();
  return false;
}

absl::Status CsvReader::BuildRecord(size_t content_end, size_t end,
                                    CsvRecord& record) {
  const std::string_view content(buffer_.data() + start_,
                                 content_end - start_);
  record.raw = std::string_view(buffer_.data() + start_, end - start_);
  record.line = line_;
  record.quoted_lf = quoted_lf_;
  record.quoted_cr = quoted_cr_;
  record.end_line =
      line_ + (ending_ == LineEnding::kCr ? quoted_cr_ : quoted_lf_);
  if (content == "\\.") {
    return Fail(absl::InvalidArgumentError(StrCat(
        "line ", line_,
        ": a line holding only \\. marks the end of the data for "
        "PostgreSQL, which would drop every row after it; remove it, or "
        "quote it (\"\\.\") if it is a value")));
  }

  // PostgreSQL's CopyReadAttributesCSV, with the escape equal to the quote.
  const char delimiter = options_.delimiter;
  const char quote = options_.quote;
  size_t count = 0;
  size_t p = 0;
  while (true) {
    if (count == record.fields.size()) record.fields.emplace_back();
    std::optional<std::string>& field = record.fields[count++];
    if (!field.has_value()) field.emplace();
    field->clear();
    const size_t field_start = p;
    size_t field_end = content.size();
    bool saw_quote = false;
    bool found_delimiter = false;
    while (p < content.size()) {
      const char c = content[p++];
      if (c == delimiter) {
        found_delimiter = true;
        field_end = p - 1;
        break;
      }
      if (c != quote) {
        field->push_back(c);
        continue;
      }
      saw_quote = true;
      while (true) {
        if (p >= content.size()) {
          // FindRecordEnd saw the quotes balanced; this cannot happen.
          return Fail(absl::InternalError(StrCat(
              "line ", line_,
              ": unterminated quoted field; please report this as a "
              "shardkit bug")));
        }
        const char q = content[p++];
        if (q == quote) {
          if (p < content.size() && content[p] == quote) {
            field->push_back(quote);
            ++p;
            continue;
          }
          break;
        }
        field->push_back(q);
      }
    }
    if (!saw_quote &&
        content.substr(field_start, field_end - field_start) ==
            options_.null_string) {
      field.reset();
    }
    if (!found_delimiter) break;
  }
  record.fields.resize(count);
  return absl::OkStatus();
}

absl::StatusOr<bool> CsvReader::Next(CsvRecord& record) {
  if (done_) return false;
  if (at_start_) {
    while (buffer_.size() < kUtf8Bom.size() && !eof_) {
      RETURN_IF_ERROR(ReadChunk());
    }
    if (std::string_view(buffer_).substr(0, kUtf8Bom.size()) == kUtf8Bom) {
      start_ = scan_ = kUtf8Bom.size();
    }
    at_start_ = false;
  }
  while (true) {
    size_t content_end = 0;
    size_t end = 0;
    ASSIGN_OR_RETURN(const bool found, FindRecordEnd(&content_end, &end));
    if (!found && eof_) {
      if (start_ == buffer_.size()) {
        done_ = true;
        return false;
      }
      if (in_quote_) {
        return Fail(absl::InvalidArgumentError(
            StrCat("line ", line_,
                   ": a quoted field in the row that starts here is not "
                   "closed by the end of the input; close it with ",
                   std::string(1, options_.quote))));
      }
      content_end = end = buffer_.size();
    }
    if (found || eof_) {
      RETURN_IF_ERROR(BuildRecord(content_end, end, record));
      line_ = record.end_line + 1;
      start_ = scan_ = end;
      in_quote_ = false;
      quoted_lf_ = quoted_cr_ = 0;
      return true;
    }
    if (buffer_.size() - start_ > options_.max_record_bytes) {
      return Fail(absl::InvalidArgumentError(StrCat(
          "line ", line_, ": the row that starts here is longer than ",
          options_.max_record_bytes,
          " bytes; is a quote unbalanced (a quoted field runs on to the "
          "end)?")));
    }
    if (start_ > 0) {
      buffer_.erase(0, start_);
      scan_ -= start_;
      start_ = 0;
    }
    RETURN_IF_ERROR(ReadChunk());
  }
}

}  // namespace shardkit::internal
