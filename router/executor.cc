#include "router/executor.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "router/pool.h"
#include "router/shard_connection.h"

namespace shardkit::internal {

// The executor's access to a ShardSession's insides.
struct SessionAccess {
  static bool& started(ShardSession& s) { return s.started_; }
  static absl::Status& lost(ShardSession& s) { return s.lost_; }
  static PoolLease& lease(ShardSession& s) { return s.lease_; }
  static std::unique_ptr<ShardConnection>& conn(ShardSession& s) {
    return s.conn_;
  }
};

bool ShardSession::InTransaction() const {
  return conn_ != nullptr && conn_->InTransactionBlock();
}

void ShardSession::Release() {
  if (!lease_.empty()) {
    lease_.Release(std::move(conn_), /*statement_completed=*/true);
  } else if (conn_ != nullptr) {
    conn_->Close();
  }
  conn_.reset();
}

namespace {

enum class Phase {
  kWaitingForSlot,  // queued in the shard's pool; deadline: connect timeout
  kConnecting,      // waiting for the connection; deadline: connect timeout
  kRunning,         // statement sent; deadline: statement timeout
  kCancelling,      // cancel requested; deadline: cancel grace
  kDone,
};

std::string ErrnoText(int err) {
  char buffer[128];
  // GNU strerror_r: thread-safe, unlike strerror, as RunOnShards must be.
  return strerror_r(err, buffer, sizeof(buffer));
}

// Wakes the poll loop when a cancel request's sending thread is done, so
// that a request that could not be sent is reported at once, and when a
// pool grants a queued task its connection. Shared with those threads and
// the pools' callbacks, which may outlive RunOnShards.
class Waker {
 public:
  static absl::StatusOr<std::shared_ptr<Waker>> Create() {
    const int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("eventfd: ", ErrnoText(errno)));
    }
    return std::shared_ptr<Waker>(new Waker(fd));
  }
  ~Waker() { close(fd_); }
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;

  int fd() const { return fd_; }
  // Async-signal-safe and thread-safe; a full counter is still readable.
  void Wake() const {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t ignored = write(fd_, &one, sizeof(one));
  }
  void Drain() const {
    uint64_t count = 0;
    [[maybe_unused]] ssize_t ignored = read(fd_, &count, sizeof(count));
  }

 private:
  explicit Waker(int fd) : fd_(fd) {}
  const int fd_;
};

// One task in flight.
struct TaskRun {
  const ShardTask* task = nullptr;
  // With pools: the slot of the shard's pool the task holds or waits for.
  PoolLease lease;
  // Null while kWaitingForSlot, and once kDone.
  std::unique_ptr<ShardConnection> conn;
  // `conn` came from the pool and this task has not sent on it yet.
  bool reused = false;
  // The task had to wait for a slot of its pool.
  bool waited_for_slot = false;
  // The statement's outcome was read in full without a cancel: the pool
  // may take the connection back.
  bool completed = false;
  // kRunning: what runs is the `SET shardkit.epoch` sent before the
  // statement (ShardTask::epoch), not the statement yet.
  bool setting_epoch = false;
  Phase phase = Phase::kConnecting;
  absl::Time deadline = absl::InfiniteFuture();
  // While kCancelling: the cancel request, possibly still being sent.
  std::optional<PendingCancel> cancel;
  // The shard whose failure this task is cancelled for
  // (ExecOptions::cancel_others_on_failure); empty when it is cancelled for
  // its statement timeout, or not at all.
  std::string cancelled_for;
  TaskOutcome outcome;
};

void Finish(TaskRun& run, absl::Status status, Result result = {}) {
  run.outcome.status = std::move(status);
  if (run.outcome.status.ok()) {
    run.outcome.result = std::move(result);
    run.outcome.result.shards = {run.task->shard};
  }
  run.phase = Phase::kDone;
  if (ShardSession* session = run.task->session; session != nullptr) {
    if (run.completed && run.conn != nullptr &&
        run.conn->state() == ShardConnection::State::kIdle) {
      // The session keeps the connection (and its slot) for its next task.
      SessionAccess::conn(*session) = std::move(run.conn);
      SessionAccess::lease(*session) = std::move(run.lease);
      return;
    }
    if (SessionAccess::started(*session) &&
        SessionAccess::lost(*session).ok()) {
      SessionAccess::lost(*session) = absl::Status(
          run.outcome.status.ok() ? absl::StatusCode::kUnavailable
                                  : run.outcome.status.code(),
          absl::StrCat("shard ", run.task->shard_name,
                       ": the session's connection was lost (",
                       run.outcome.status.ok() ? "closed"
                                               : run.outcome.status.message(),
                       "), and with it what the session held there (its "
                       "transaction, its cursors)"));
    }
  }
  // Free the server's backend (or hand the connection on) now rather than
  // when the slowest shard is done.
  if (!run.lease.empty()) {
    run.lease.Release(std::move(run.conn), run.completed);
  } else if (run.conn != nullptr) {
    run.conn->Close();
  }
}

// Sends the task's statement, or its pipeline (ShardTask::then).
absl::Status SendTask(ShardConnection& conn, const ShardTask& task) {
  if (task.then.empty() && !task.prepare) {
    return conn.SendStatement(task.sql, task.params);
  }
  std::vector<Statement> statements;
  statements.reserve(task.then.size() + 1);
  statements.push_back(Statement{task.sql, task.params, task.prepare});
  statements.insert(statements.end(), task.then.begin(), task.then.end());
  return conn.SendPipeline(statements);
}

// Starts a new connection for the task (with pools: in its lease's slot).
void ConnectFresh(TaskRun& run) {
  run.reused = false;
  run.conn =
      std::make_unique<ShardConnection>(run.task->shard_name, run.task->dsn);
  absl::Status started = run.conn->StartConnect();
  if (!started.ok()) Finish(run, std::move(started));
}

void Progress(TaskRun& run, const ExecOptions& options);

// The task holds a slot of its pool: reuses an idle connection (sending the
// statement at once), or opens one.
void StartWithSlot(TaskRun& run, const ExecOptions& options) {
  run.phase = Phase::kConnecting;
  run.conn = run.lease.TakeIdleConnection();
  if (run.conn == nullptr) {
    ConnectFresh(run);
    return;
  }
  run.reused = true;
  Progress(run, options);
}

std::string StatementTimeoutMessage(const TaskRun& run,
                                    const ExecOptions& options) {
  return absl::StrCat("shard ", run.task->shard_name,
                      ": the statement did not finish within the statement "
                      "timeout (",
                      absl::FormatDuration(options.statement_timeout),
                      ") and was cancelled");
}

std::string CancelledForFailureMessage(const TaskRun& run) {
  return absl::StrCat("shard ", run.task->shard_name,
                      ": cancelled because shard ", run.cancelled_for,
                      " failed");
}

// Why the task's statement was cancelled, as the start of its message.
std::string CancelledMessage(const TaskRun& run, const ExecOptions& options) {
  return run.cancelled_for.empty() ? StatementTimeoutMessage(run, options)
                                   : CancelledForFailureMessage(run);
}

// A cancelled task's status: kDeadlineExceeded for its statement timeout,
// kCancelled for another shard's failure.
absl::Status CancelledStatus(const TaskRun& run, absl::string_view message) {
  return absl::Status(run.cancelled_for.empty()
                          ? absl::StatusCode::kDeadlineExceeded
                          : absl::StatusCode::kCancelled,
                      message);
}

// Only a statement timeout is the user's to raise.
const char* RaiseStatementTimeoutHint(const TaskRun& run) {
  return run.cancelled_for.empty()
             ? "; raise [timeouts] statement in the configuration if it "
               "needs longer"
             : "";
}

// A statement that ended while a cancel was pending.
void FinishCancelled(TaskRun& run, const ExecOptions& options,
                     absl::StatusOr<Result> outcome) {
  if (outcome.ok() && run.setting_epoch) {
    Finish(run, CancelledStatus(
                    run, absl::StrCat(CancelledMessage(run, options),
                                      " before the statement was sent",
                                      RaiseStatementTimeoutHint(run))));
    return;
  }
  if (outcome.ok()) {
    // It completed before the cancel arrived: it did happen on this shard,
    // and saying otherwise would mislead whoever reconciles the shards.
    Finish(run, absl::OkStatus(), *std::move(outcome));
    return;
  }
  if (SqlStateOf(outcome.status()) == "57014") {
    Finish(run,
           CancelledStatus(run, absl::StrCat(CancelledMessage(run, options),
                                             RaiseStatementTimeoutHint(run))));
    return;
  }
  Finish(run, outcome.status());
}

// Sends the task's statement once connected, and finishes the task when its
// outcome is in. Called after every Advance().
void Progress(TaskRun& run, const ExecOptions& options) {
  ShardConnection& conn = *run.conn;
  if (conn.state() == ShardConnection::State::kFailed) {
    if (run.phase == Phase::kCancelling) {
      Finish(run, CancelledStatus(
                      run, absl::StrCat(CancelledMessage(run, options),
                                        "; then the connection failed: ",
                                        conn.failure().message(),
                                        RaiseStatementTimeoutHint(run))));
    } else {
      Finish(run, conn.failure());
    }
    return;
  }
  if (conn.state() != ShardConnection::State::kIdle) return;
  switch (run.phase) {
    case Phase::kConnecting: {
      // From here on the session may hold something on the server.
      if (run.task->session != nullptr) {
        SessionAccess::started(*run.task->session) = true;
      }
      // The map epoch first, when this connection does not carry it yet:
      // a shard fencing a move must see it with the statement.
      const bool set_epoch =
          run.task->epoch != 0 && conn.epoch() != run.task->epoch;
      absl::Status sent =
          set_epoch
              ? conn.SendStatement(
                    absl::StrCat("SET shardkit.epoch = ", run.task->epoch), {})
              : SendTask(conn, *run.task);
      if (!sent.ok()) {
        if (run.reused && conn.failed_before_sending()) {
          // A pooled connection the server ended since it was checked:
          // nothing ran, so a new connection may carry the statement.
          ConnectFresh(run);
          return;
        }
        Finish(run, std::move(sent));
        return;
      }
      run.reused = false;
      run.setting_epoch = set_epoch;
      run.phase = Phase::kRunning;
      run.deadline = absl::Now() + options.statement_timeout;
      // Sending may already have read the whole outcome.
      if (conn.state() == ShardConnection::State::kIdle) {
        Progress(run, options);
      }
      return;
    }
    case Phase::kRunning: {
      if (run.setting_epoch) {
        run.setting_epoch = false;
        absl::StatusOr<Result> set = conn.TakeResult();
        if (!set.ok()) {
          run.completed = true;
          Finish(run, set.status());
          return;
        }
        conn.NoteEpochSet(run.task->epoch);
        run.phase = Phase::kConnecting;  // now the statement itself
        Progress(run, options);
        return;
      }
      absl::StatusOr<Result> outcome = conn.TakeResult();
      run.completed = true;
      if (outcome.ok()) {
        Finish(run, absl::OkStatus(), *std::move(outcome));
      } else {
        Finish(run, outcome.status());
      }
      return;
    }
    case Phase::kCancelling:
      FinishCancelled(run, options, conn.TakeResult());
      return;
    case Phase::kWaitingForSlot:
    case Phase::kDone:
      return;
  }
}

absl::Status CancelFailedStatus(const TaskRun& run, const ExecOptions& options,
                                const absl::Status& why) {
  constexpr char kMayStillRun[] =
      "; the statement may still be running there: check pg_stat_activity "
      "on that shard";
  if (!run.cancelled_for.empty()) {
    return absl::CancelledError(absl::StrCat(
        "shard ", run.task->shard_name, ": shard ", run.cancelled_for,
        " failed, and cancelling the statement here failed: ", why.message(),
        kMayStillRun));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "shard ", run.task->shard_name,
      ": the statement did not finish within the statement timeout (",
      absl::FormatDuration(options.statement_timeout),
      ") and cancelling it failed: ", why.message(), kMayStillRun));
}

// Ends a cancelling task whose cancel request could not be sent: no
// confirmation can come, so waiting out the grace would only delay it.
void CheckCancelSent(TaskRun& run, const ExecOptions& options) {
  if (run.phase != Phase::kCancelling || !run.cancel.has_value()) return;
  std::optional<absl::Status> sent = run.cancel->outcome();
  if (sent.has_value() && !sent->ok()) {
    Finish(run, CancelFailedStatus(run, options, *sent));
  }
}

// Sends the cancel request of a running task (past its statement timeout,
// or for another shard's failure), from a thread of its own (see
// ShardConnection::StartCancel); `waker` is created on first use and shared
// with that thread.
void StartCancel(TaskRun& run, const ExecOptions& options,
                 std::shared_ptr<Waker>& waker) {
  if (waker == nullptr) {
    absl::StatusOr<std::shared_ptr<Waker>> created = Waker::Create();
    if (!created.ok()) {
      Finish(run,
             CancelFailedStatus(run, options,
                                absl::ResourceExhaustedError(absl::StrCat(
                                    "cannot watch for the cancel request: ",
                                    created.status().message()))));
      return;
    }
    waker = *std::move(created);
  }
  absl::StatusOr<PendingCancel> cancel =
      run.conn->StartCancel([waker] { waker->Wake(); });
  if (!cancel.ok()) {
    Finish(run, CancelFailedStatus(run, options, cancel.status()));
    return;
  }
  run.cancel = *std::move(cancel);
  run.phase = Phase::kCancelling;
  // The grace covers sending the request too, so that a host that has gone
  // away delays the outcome by no more than cancel_grace.
  run.deadline = absl::Now() + options.cancel_grace;
}

// Starts the task: with pools, takes a lease on its shard's pool, and
// queues it (kWaitingForSlot) when the pool has no connection to spare;
// `waker`, created on first use, tells the loop when it is granted one.
void StartTask(TaskRun& run, const ExecOptions& options,
               std::shared_ptr<Waker>& waker) {
  if (ShardSession* session = run.task->session; session != nullptr) {
    if (!SessionAccess::lost(*session).ok()) {
      Finish(run, SessionAccess::lost(*session));
      return;
    }
    if (SessionAccess::conn(*session) != nullptr) {
      // The session's own connection: the statement goes out at once.
      run.conn = std::move(SessionAccess::conn(*session));
      run.lease = std::move(SessionAccess::lease(*session));
      run.reused = false;  // what the session holds would not survive a retry
      run.phase = Phase::kConnecting;
      Progress(run, options);
      return;
    }
    // Its first task: a connection the usual way. Until the statement
    // completes, nothing is held on the server, so a failure to connect
    // leaves the session free to try again.
  }
  if (options.pools == nullptr) {
    ConnectFresh(run);
    return;
  }
  run.lease = options.pools->Acquire(run.task->shard, run.task->shard_name,
                                     run.task->dsn);
  if (run.lease.granted()) {
    StartWithSlot(run, options);
    return;
  }
  if (waker == nullptr) {
    absl::StatusOr<std::shared_ptr<Waker>> created = Waker::Create();
    if (!created.ok()) {
      Finish(run, absl::ResourceExhaustedError(absl::StrCat(
                      "shard ", run.task->shard_name,
                      ": cannot wait for a connection of the pool: ",
                      created.status().message())));
      return;
    }
    waker = *std::move(created);
  }
  run.phase = Phase::kWaitingForSlot;
  run.waited_for_slot = true;
  run.lease.OnGranted([waker] { waker->Wake(); });
}

absl::Status PoolExhaustedStatus(const TaskRun& run,
                                 const ExecOptions& options) {
  const int limit = options.pools->settings().max_connections_per_shard;
  return absl::ResourceExhaustedError(absl::StrCat(
      "shard ", run.task->shard_name,
      ": no pooled connection became free within the connect timeout (",
      absl::FormatDuration(options.connect_timeout),
      "): this process already has ", limit,
      limit == 1 ? " connection" : " connections",
      " to it, all busy, the most [pool] max_connections_per_shard allows; "
      "raise [pool] max_connections_per_shard in the configuration, or "
      "[timeouts] connect to wait longer"));
}

void OnDeadline(TaskRun& run, const ExecOptions& options,
                std::shared_ptr<Waker>& waker) {
  switch (run.phase) {
    case Phase::kWaitingForSlot:
      Finish(run, PoolExhaustedStatus(run, options));
      return;
    case Phase::kConnecting:
      Finish(run,
             absl::UnavailableError(absl::StrCat(
                 "shard ", run.task->shard_name, " (", run.conn->MaskedDsn(),
                 ") is unreachable: no connection within the connect "
                 "timeout (",
                 absl::FormatDuration(options.connect_timeout), ")",
                 run.waited_for_slot
                     ? ", part of which went to waiting for a connection "
                       "of the pool"
                     : "",
                 "; check that the server is running and reachable "
                 "from this host, or raise [timeouts] connect in the "
                 "configuration")));
      return;
    case Phase::kRunning:
      StartCancel(run, options, waker);
      return;
    case Phase::kCancelling:
      // Whether the request is still on its way or arrived and had no
      // effect yet, the shard has not confirmed it.
      Finish(run, CancelledStatus(
                      run, absl::StrCat(
                               CancelledMessage(run, options),
                               ", but the shard did not confirm the cancel "
                               "within ",
                               absl::FormatDuration(options.cancel_grace),
                               "; the statement may still be running there: "
                               "check pg_stat_activity on that shard")));
      return;
    case Phase::kDone:
      return;
  }
}

// With ExecOptions::cancel_others_on_failure: once a task has failed, ends
// every other task that has not sent its statement, and cancels every
// running statement, as a statement timeout would. Returns whether it
// acted, which it does once per call of RunOnShards: the tasks it ends
// fail too, but for this failure.
bool CancelOthersOnFailure(std::vector<TaskRun>& runs,
                           const ExecOptions& options,
                           std::shared_ptr<Waker>& waker) {
  const TaskRun* failed = nullptr;
  for (const TaskRun& run : runs) {
    if (run.phase == Phase::kDone && !run.outcome.status.ok()) {
      failed = &run;
      break;
    }
  }
  if (failed == nullptr) return false;
  const std::string& failed_shard = failed->task->shard_name;
  for (TaskRun& run : runs) {
    switch (run.phase) {
      case Phase::kWaitingForSlot:
      case Phase::kConnecting:
        run.cancelled_for = failed_shard;
        Finish(run, absl::CancelledError(
                        absl::StrCat(CancelledForFailureMessage(run),
                                     ", before the statement was sent")));
        break;
      case Phase::kRunning:
        run.cancelled_for = failed_shard;
        StartCancel(run, options, waker);
        break;
      case Phase::kCancelling:  // already ending, for its statement timeout
      case Phase::kDone:
        break;
    }
  }
  return true;
}

// Milliseconds from `now` until `deadline`, rounded up, for poll().
int PollTimeoutMs(absl::Time now, absl::Time deadline) {
  if (deadline == absl::InfiniteFuture()) return -1;
  if (deadline <= now) return 0;
  const int64_t ms = absl::ToInt64Milliseconds(
      absl::Ceil(deadline - now, absl::Milliseconds(1)));
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

}  // namespace

std::vector<TaskOutcome> RunOnShards(const std::vector<ShardTask>& tasks,
                                     const ExecOptions& options) {
  std::vector<TaskRun> runs(tasks.size());
  const absl::Time start = absl::Now();
  // Outlives this call if a cancel request is still being sent on return.
  std::shared_ptr<Waker> waker;
  for (size_t i = 0; i < tasks.size(); ++i) {
    TaskRun& run = runs[i];
    run.task = &tasks[i];
    run.deadline = start + options.connect_timeout;
    StartTask(run, options, waker);
  }

  std::vector<pollfd> fds;
  std::vector<TaskRun*> fd_runs;
  bool others_cancelled = false;
  while (true) {
    const absl::Time now = absl::Now();
    for (TaskRun& run : runs) {
      CheckCancelSent(run, options);
      // Before the deadline: a slot granted in time is used.
      if (run.phase == Phase::kWaitingForSlot && run.lease.granted()) {
        StartWithSlot(run, options);
      }
      if (run.phase != Phase::kDone && now >= run.deadline) {
        OnDeadline(run, options, waker);
      }
    }
    // After this pass, so that a failure in it is acted on before polling.
    if (options.cancel_others_on_failure && !others_cancelled) {
      others_cancelled = CancelOthersOnFailure(runs, options, waker);
    }
    absl::Time next_deadline = absl::InfiniteFuture();
    fds.clear();
    fd_runs.clear();
    bool any_waiting = false;
    for (TaskRun& run : runs) {
      if (run.phase == Phase::kDone) continue;
      if (run.phase == Phase::kWaitingForSlot) {
        // Woken through `waker` (polled below) when granted.
        any_waiting = true;
        next_deadline = std::min(next_deadline, run.deadline);
        continue;
      }
      const int socket = run.conn->socket();
      const short events = run.conn->WantedEvents();
      if (socket < 0 || events == 0) {
        // Every live state waits on the socket; anything else is a bug that
        // would otherwise spin or hang here.
        Finish(run, absl::InternalError(absl::StrCat(
                        "shard ", run.task->shard_name,
                        ": the connection has nothing to wait for; please "
                        "report this as a shardkit bug")));
        continue;
      }
      fds.push_back(pollfd{socket, events, 0});
      fd_runs.push_back(&run);
      next_deadline = std::min(next_deadline, run.deadline);
    }
    if (fds.empty() && !any_waiting) break;
    if (waker != nullptr) fds.push_back(pollfd{waker->fd(), POLLIN, 0});

    const int ready =
        poll(fds.data(), fds.size(), PollTimeoutMs(absl::Now(), next_deadline));
    if (ready < 0) {
      if (errno == EINTR) continue;
      const std::string why = ErrnoText(errno);
      for (TaskRun& run : runs) {
        if (run.phase == Phase::kDone) continue;
        Finish(run, absl::InternalError(absl::StrCat(
                        "shard ", run.task->shard_name,
                        ": waiting for the shard failed: poll: ", why)));
      }
      break;
    }
    for (size_t i = 0; i < fd_runs.size(); ++i) {
      if (fds[i].revents == 0) continue;
      // Errors and hang-ups too: libpq reads the socket and reports them.
      fd_runs[i]->conn->Advance();
      Progress(*fd_runs[i], options);
    }
    // A cancel request's thread is done: CheckCancelSent, at the top of the
    // loop, reads its outcome.
    if (waker != nullptr && fds.back().revents != 0) waker->Drain();
  }

  std::vector<TaskOutcome> outcomes;
  outcomes.reserve(runs.size());
  for (TaskRun& run : runs) outcomes.push_back(std::move(run.outcome));
  return outcomes;
}

absl::StatusOr<Result> RunTask(const ShardTask& task,
                              const ExecOptions& options) {
  std::vector<TaskOutcome> done = RunOnShards({task}, options);
  RETURN_IF_ERROR(done[0].status);
  return std::move(done[0].result);
}

absl::StatusOr<std::vector<TaskOutcome>> RunAll(
    const std::vector<ShardTask>& tasks, ExecOptions options) {
  options.cancel_others_on_failure = true;
  std::vector<TaskOutcome> done = RunOnShards(tasks, options);
  const TaskOutcome* cancelled = nullptr;
  for (const TaskOutcome& outcome : done) {
    if (outcome.status.ok()) continue;
    if (outcome.status.code() != absl::StatusCode::kCancelled) {
      return outcome.status;
    }
    if (cancelled == nullptr) cancelled = &outcome;
  }
  if (cancelled != nullptr) return cancelled->status;
  return done;
}

}  // namespace shardkit::internal
