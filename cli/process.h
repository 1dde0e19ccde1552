// Running child processes without a shell: used by the dev cluster (initdb,
// pg_ctl) and by the tests that drive the shardctl binary.
//
// Thread-safety: RunProcess may be called from several threads at once.

#ifndef SHARDKIT_CLI_PROCESS_H_
#define SHARDKIT_CLI_PROCESS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shardkit::dev {

// Running a child process: shared with the integration tests, which drive
// the shardctl binary with it.
struct ProcessOptions {
  // Written to the child's standard input, which is then closed; the child
  // reads /dev/null when this is empty.
  std::string stdin_text;
  // The child's working directory; empty keeps the caller's.
  std::string working_dir;
};

struct ProcessResult {
  // The exit status, or 128 + the signal number if a signal killed it.
  int exit_code = 0;
  std::string out;  // everything it wrote to stdout
  std::string err;  // everything it wrote to stderr
};

// Runs argv[0] (looked up in PATH when it has no slash) with `argv`, the
// caller's environment and `options`, and waits for it. No shell is
// involved. Fails only if the process cannot be started (e.g. kNotFound for
// a missing program); a child that fails is an OK result with its
// exit_code. REQUIRES: !argv.empty().
[[nodiscard]] absl::StatusOr<ProcessResult> RunProcess(
    const std::vector<std::string>& argv, const ProcessOptions& options = {});

// A Status for a failed system call: kNotFound for ENOENT,
// kPermissionDenied for EACCES/EPERM, kInternal otherwise; the message is
// "<what>: <strerror(err)>".
absl::Status ErrnoError(int err, absl::string_view what);

// Closes a file descriptor on scope exit.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() { Reset(); }
  int get() const { return fd_; }
  void Reset();

 private:
  int fd_;
};

}  // namespace shardkit::dev

#endif  // SHARDKIT_CLI_PROCESS_H_
