// Internal to shardctl: how a running move shows itself.
//
// On a terminal, a progress line on stderr that redraws in place:
//
//   move 4 backfill public.users [#########-----------]  45%  90,000 rows
//   12,800 rows/s  ETA 0:07
//
// Elsewhere (a log file, a pipe, CI), plain lines: each phase as it starts
// and, during the backfill, one line per table at most every few seconds
// and when the table is done.

#ifndef SHARDKIT_CLI_MOVE_PROGRESS_H_
#define SHARDKIT_CLI_MOVE_PROGRESS_H_

#include <ostream>
#include <string>
#include <string_view>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "rebalancer/mover.h"

namespace shardkit::cli {

class MoveProgressDisplay {
 public:
  // `terminal`: whether `out` is a terminal (redraw in place).
  MoveProgressDisplay(std::ostream& out, bool terminal)
      : out_(out), terminal_(terminal) {}
  ~MoveProgressDisplay() { EndLine(); }

  // Whether standard error is a terminal (and TERM is not "dumb").
  static bool StderrIsTerminal();

  // A mover event ("move 4: backfill").
  void Log(std::string_view line);
  // A progress report.
  void Progress(const internal::MoveProgress& progress);

  // Hooks both into `options`. The display must outlive the mover's use.
  void Attach(internal::MoverOptions& options);

 private:
  // Ends a progress line drawn in place, if any.
  void EndLine();
  std::string Describe(const internal::MoveProgress& p, double rate) const;

  std::ostream& out_;
  const bool terminal_;
  bool line_open_ = false;
  // The table being reported on, when it started, and when last shown.
  std::string table_;
  absl::Time table_start_ = absl::InfinitePast();
  absl::Time last_shown_ = absl::InfinitePast();
};

// "1,234,567".
std::string GroupedNumber(int64_t n);

}  // namespace shardkit::cli

#endif  // SHARDKIT_CLI_MOVE_PROGRESS_H_
