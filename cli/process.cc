#include "cli/process.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

extern char** environ;

namespace shardkit::dev {

absl::Status ErrnoError(int err, absl::string_view what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

void ScopedFd::Reset() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

namespace {

// Feeds `input` to `in` and drains `out` and `err` until all are closed.
absl::Status Pump(ScopedFd& in, absl::string_view input, ScopedFd& out,
                  ScopedFd& err, ProcessResult& result) {
  size_t written = 0;
  if (in.get() >= 0) {
    fcntl(in.get(), F_SETFL, fcntl(in.get(), F_GETFL) | O_NONBLOCK);
  }
  char buffer[65536];
  while (in.get() >= 0 || out.get() >= 0 || err.get() >= 0) {
    std::vector<pollfd> fds;
    if (in.get() >= 0) fds.push_back({in.get(), POLLOUT, 0});
    if (out.get() >= 0) fds.push_back({out.get(), POLLIN, 0});
    if (err.get() >= 0) fds.push_back({err.get(), POLLIN, 0});
    if (poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, "poll on a child process");
    }
    for (const pollfd& p : fds) {
      if (p.revents == 0) continue;
      if (p.fd == in.get()) {
        ssize_t n =
            write(in.get(), input.data() + written, input.size() - written);
        if (n > 0) written += n;
        // EPIPE too: the child stopped reading.
        if ((n < 0 && errno != EAGAIN && errno != EINTR) ||
            written == input.size()) {
          in.Reset();
        }
        continue;
      }
      ScopedFd& source = p.fd == out.get() ? out : err;
      ssize_t n = read(source.get(), buffer, sizeof(buffer));
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n > 0) {
        (&source == &out ? result.out : result.err).append(buffer, n);
      } else {
        source.Reset();
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ProcessResult> RunProcess(const std::vector<std::string>& argv,
                                         const ProcessOptions& options) {
  if (argv.empty()) {
    return absl::InvalidArgumentError("RunProcess needs a program to run");
  }
  int in_pipe[2] = {-1, -1};
  int out_pipe[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};
  bool feed_stdin = !options.stdin_text.empty();
  bool piped = (!feed_stdin || pipe2(in_pipe, O_CLOEXEC) == 0) &&
               pipe2(out_pipe, O_CLOEXEC) == 0 &&
               pipe2(err_pipe, O_CLOEXEC) == 0;
  int pipe_error = errno;
  ScopedFd in_read(in_pipe[0]), in_write(in_pipe[1]);
  ScopedFd out_read(out_pipe[0]), out_write(out_pipe[1]);
  ScopedFd err_read(err_pipe[0]), err_write(err_pipe[1]);
  if (!piped) {
    return ErrnoError(pipe_error, "cannot create pipes for a child process");
  }

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (feed_stdin) {
    posix_spawn_file_actions_adddup2(&actions, in_read.get(), 0);
  } else {
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  }
  posix_spawn_file_actions_adddup2(&actions, out_write.get(), 1);
  posix_spawn_file_actions_adddup2(&actions, err_write.get(), 2);
  if (!options.working_dir.empty()) {
    posix_spawn_file_actions_addchdir_np(&actions, options.working_dir.c_str());
  }
  // The child starts with default signal handling even if we ignore SIGPIPE.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t no_signals, default_signals;
  sigemptyset(&no_signals);
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  posix_spawnattr_setsigmask(&attr, &no_signals);
  posix_spawnattr_setsigdefault(&attr, &default_signals);
  posix_spawnattr_setflags(&attr,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  std::vector<char*> c_argv;
  for (const std::string& arg : argv) {
    c_argv.push_back(const_cast<char*>(arg.c_str()));
  }
  c_argv.push_back(nullptr);
  pid_t pid = 0;
  int spawn_error = posix_spawnp(&pid, argv[0].c_str(), &actions, &attr,
                                 c_argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (spawn_error != 0) {
    return ErrnoError(spawn_error, absl::StrCat("cannot run ", argv[0]));
  }
  in_read.Reset();
  out_write.Reset();
  err_write.Reset();

  // A child that exits without reading its input would raise SIGPIPE on
  // our write: block it for this thread and discard it afterwards.
  sigset_t pipe_signal, old_mask;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, &old_mask);
  ProcessResult result;
  absl::Status pumped =
      Pump(in_write, options.stdin_text, out_read, err_read, result);
  in_write.Reset();
  out_read.Reset();
  err_read.Reset();
  timespec no_wait{};
  while (sigtimedwait(&pipe_signal, nullptr, &no_wait) > 0) {
  }
  pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);

  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) return ErrnoError(errno, "waitpid");
  }
  RETURN_IF_ERROR(pumped);
  if (WIFEXITED(wait_status)) {
    result.exit_code = WEXITSTATUS(wait_status);
  } else if (WIFSIGNALED(wait_status)) {
    result.exit_code = 128 + WTERMSIG(wait_status);
  }
  return result;
}

}  // namespace shardkit::dev
