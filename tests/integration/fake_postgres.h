// A fake PostgreSQL server, for the cancel paths that a real server cannot
// be made to take on demand: a cancel request that hangs, one that is
// refused, one that has no effect.
//
//   absl::StatusOr<std::unique_ptr<FakePostgres>> fake =
//       FakePostgres::Start(FakePostgres::OnCancel::kIgnore);
//   ASSERT_TRUE(fake.ok()) << fake.status();
//   task.dsn = (*fake)->dsn();  // a statement sent there never ends
//   ... RunOnShards with a short statement timeout ...
//   EXPECT_TRUE((*fake)->WaitForCancelRequests(1, absl::Seconds(30)));
//
// It listens on a free loopback port and speaks just enough of protocol 3.0
// for libpq: trust authentication, SSL and GSS encryption declined, a
// backend key, then queries that it reads and never answers. Cancel
// requests that carry its backend key are counted and handled as OnCancel
// says. It serves one client connection at a time (plus its cancel
// requests).
//
// Thread-safety: thread-safe.

#ifndef SHARDKIT_TESTS_INTEGRATION_FAKE_POSTGRES_H_
#define SHARDKIT_TESTS_INTEGRATION_FAKE_POSTGRES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace shardkit::testing {

class FakePostgres {
 public:
  enum class OnCancel {
    // Close the cancel connection, then fail the statement with SQLSTATE
    // 57014, as PostgreSQL does.
    kConfirm,
    // Close the cancel connection; the statement goes on forever.
    kIgnore,
    // Stop listening as soon as the client connects, so that the cancel
    // request's connection is refused.
    kRefuse,
  };

  // Starts listening on 127.0.0.1. With `hold_cancels`, a cancel request's
  // connection is kept open, unanswered (so PQcancel blocks), until
  // ReleaseCancels(); OnCancel applies then.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<FakePostgres>> Start(
      OnCancel on_cancel, bool hold_cancels = false);

  FakePostgres(const FakePostgres&) = delete;
  FakePostgres& operator=(const FakePostgres&) = delete;
  // Closes every connection and joins its threads; held cancel requests are
  // released unanswered.
  ~FakePostgres();

  // A libpq connection string for it (SSL and GSS encryption off).
  std::string dsn() const;

  // Lets held cancel requests go on (see Start).
  void ReleaseCancels();

  // Waits until at least `count` cancel requests with the right backend key
  // have arrived; false if `limit` passes first.
  bool WaitForCancelRequests(int count, absl::Duration limit);

 private:
  FakePostgres(OnCancel on_cancel, bool hold_cancels, int listen_fd, int port,
               int stop_fd);

  void AcceptLoop();
  void Serve(int fd);
  void ServeSession(int fd);
  void ServeCancel(int fd, uint32_t pid, uint32_t key);
  // Reads exactly `size` bytes; false on EOF, error or stop.
  bool ReadFully(int fd, void* data, size_t size) const;

  // Constant after construction.
  const OnCancel on_cancel_;
  const int port_;
  const int stop_fd_;  // eventfd, readable once the destructor runs

  mutable absl::Mutex mu_;
  int listen_fd_ ABSL_GUARDED_BY(mu_);  // -1 once closed
  bool hold_cancels_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int cancel_requests_ ABSL_GUARDED_BY(mu_) = 0;
  // The client connection with a statement in flight, -1 if none. Written
  // to only under mu_, and closed only after it is cleared here.
  int statement_fd_ ABSL_GUARDED_BY(mu_) = -1;
  std::vector<std::thread> connection_threads_ ABSL_GUARDED_BY(mu_);

  std::thread acceptor_;
};

}  // namespace shardkit::testing

#endif  // SHARDKIT_TESTS_INTEGRATION_FAKE_POSTGRES_H_
