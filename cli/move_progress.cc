#include "cli/move_progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace shardkit::cli {

namespace {

constexpr int kBarWidth = 20;
// How often a plain (non-terminal) progress line is written per table.
constexpr absl::Duration kPlainEvery = absl::Seconds(5);
// How often the terminal line is redrawn at most.
constexpr absl::Duration kRedrawEvery = absl::Milliseconds(100);

std::string Clock(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) {
    return absl::StrFormat("%d:%02d:%02d", s / 3600, (s / 60) % 60, s % 60);
  }
  return absl::StrFormat("%d:%02d", s / 60, s % 60);
}

}  // namespace

std::string GroupedNumber(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

bool MoveProgressDisplay::StderrIsTerminal() {
  const char* term = std::getenv("TERM");
  return isatty(STDERR_FILENO) == 1 &&
         (term == nullptr || std::strcmp(term, "dumb") != 0);
}

void MoveProgressDisplay::Attach(internal::MoverOptions& options) {
  options.log = [this](std::string_view line) { Log(line); };
  options.progress = [this](const internal::MoveProgress& p) { Progress(p); };
}

void MoveProgressDisplay::EndLine() {
  if (line_open_) {
    out_ << "\n";
    out_.flush();
    line_open_ = false;
  }
}

void MoveProgressDisplay::Log(std::string_view line) {
  EndLine();
  out_ << line << "\n";
  out_.flush();
}

std::string MoveProgressDisplay::Describe(const internal::MoveProgress& p,
                                          double rate) const {
  if (p.phase == "cleanup") {
    return absl::StrCat("move ", p.move_id, " cleanup on ", p.table, ": ",
                        GroupedNumber(p.rows_copied), " rows deleted");
  }
  std::string text = absl::StrCat("move ", p.move_id, " ", p.phase, " ",
                                  p.table);
  const bool known = p.rows_to_scan > 0;
  const double fraction =
      known ? std::min(1.0, static_cast<double>(p.rows_scanned) /
                                static_cast<double>(p.rows_to_scan))
            : 0.0;
  if (terminal_ && known) {
    const int filled = static_cast<int>(fraction * kBarWidth + 0.5);
    absl::StrAppend(&text, " [", std::string(filled, '#'),
                    std::string(kBarWidth - filled, '-'), "]");
  }
  if (known) absl::StrAppend(&text, absl::StrFormat(" %3d%%", static_cast<int>(fraction * 100)));
  absl::StrAppend(&text, "  ", GroupedNumber(p.rows_copied), " rows copied");
  if (p.rows_scanned != p.rows_copied) {
    absl::StrAppend(&text, " (", GroupedNumber(p.rows_scanned), " scanned)");
  }
  if (rate > 0) {
    absl::StrAppend(&text, "  ", GroupedNumber(static_cast<int64_t>(rate)),
                    " rows/s");
    if (known && p.rows_scanned < p.rows_to_scan) {
      absl::StrAppend(
          &text, "  ETA ",
          Clock(static_cast<double>(p.rows_to_scan - p.rows_scanned) / rate));
    }
  }
  return text;
}

void MoveProgressDisplay::Progress(const internal::MoveProgress& p) {
  const absl::Time now = absl::Now();
  const std::string key = absl::StrCat(p.phase, "/", p.table);
  bool first = false;
  if (key != table_) {
    table_ = key;
    table_start_ = now;
    last_shown_ = absl::InfinitePast();
    first = true;
  }
  const double seconds = absl::ToDoubleSeconds(now - table_start_);
  const double rate =
      seconds > 0.2 ? static_cast<double>(p.rows_scanned) / seconds : 0.0;
  const bool finished = p.rows_to_scan > 0 && p.rows_scanned >= p.rows_to_scan;
  if (terminal_) {
    if (!first && !finished && now - last_shown_ < kRedrawEvery) return;
    if (!first) out_ << "\r\033[K";
    if (first) EndLine();
    out_ << Describe(p, rate);
    out_.flush();
    line_open_ = true;
  } else {
    if (!first && !finished && now - last_shown_ < kPlainEvery) return;
    out_ << Describe(p, rate) << "\n";
    out_.flush();
  }
  last_shown_ = now;
}

}  // namespace shardkit::cli
