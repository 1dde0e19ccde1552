// A fault-injecting TCP proxy in front of a real PostgreSQL server, for the
// cancel paths that a healthy server cannot be made to take on demand: a
// cancel request that is lost, one that hangs, one that cannot be sent.
//
//   absl::StatusOr<std::unique_ptr<FaultProxy>> proxy = FaultProxy::Start(
//       "127.0.0.1", cluster.cluster().instances[0].port,
//       {.on_cancel = FaultProxy::OnCancel::kDrop});
//   ASSERT_TRUE(proxy.ok()) << proxy.status();
//   task.dsn = dev::InstanceDsn((*proxy)->port(), "app");
//   ... RunOnShards with a short statement timeout ...
//   EXPECT_TRUE((*proxy)->WaitForCancelRequests(1, absl::Seconds(30)));
//
// It listens on a free 127.0.0.1 port and forwards every connection byte for
// byte to the target, each over a connection of its own, in both directions
// until both sides have closed. It looks only at a connection's first
// packet: a CancelRequest (length 16, code 80877102) is counted and handled
// as Options::on_cancel says. Anything else (an SSLRequest or GSSENCRequest,
// a startup packet) is forwarded untouched, with all that follows; the
// server answers it as usual.
//
// Thread-safety: thread-safe. One thread per connection, all joined by the
// destructor.

#ifndef SHARDKIT_TESTS_INTEGRATION_FAULT_PROXY_H_
#define SHARDKIT_TESTS_INTEGRATION_FAULT_PROXY_H_

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

class FaultProxy {
 public:
  // What becomes of a connection whose first packet is a CancelRequest.
  enum class OnCancel {
    // Forward it like any other connection: the server cancels.
    kForward,
    // Read it, then close the connection without forwarding it. The client
    // sees the end of the connection, as when the server has received a
    // request (libpq's PQcancel reports success), but the server never
    // gets it: the statement goes on running.
    kDrop,
    // Read it and leave it unanswered, with the connection open (so that
    // PQcancel blocks), until ReleaseHungCancels() forwards it, or the
    // destructor closes it without forwarding it.
    kHang,
  };

  struct Options {
    OnCancel on_cancel = OnCancel::kForward;
    // If positive: accept this many connections, then stop listening, so
    // that every later connection is refused (ECONNREFUSED), as when the
    // server's host has gone away. With 1, a client's session gets through
    // and its cancel request cannot be sent. (A reset, SO_LINGER 0, would
    // not do: PQcancel has sent the request before the proxy can read it,
    // and it ignores errors after that.) Connections already accepted go
    // on being forwarded.
    int accept_limit = 0;
  };

  // Starts listening on a free port of 127.0.0.1, forwarding to
  // `target_host` (an IPv4 address) port `target_port`. Options{} forwards
  // everything.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<FaultProxy>> Start(
      const std::string& target_host, int target_port, Options options);

  FaultProxy(const FaultProxy&) = delete;
  FaultProxy& operator=(const FaultProxy&) = delete;
  // Stops listening, closes every connection (hung cancel requests without
  // forwarding them) and joins every thread.
  ~FaultProxy();

  // The port it listens on (127.0.0.1).
  int port() const { return port_; }

  // With OnCancel::kHang: forwards the cancel requests held so far, and
  // from now on every later one at once.
  void ReleaseHungCancels();

  // Waits until at least `count` cancel requests have arrived (whatever
  // became of them); false if `limit` passes first.
  [[nodiscard]] bool WaitForCancelRequests(int count, absl::Duration limit);

  // The backend process ids that the cancel requests so far named, in the
  // order they arrived.
  std::vector<uint32_t> CancelRequestPids() const;

 private:
  FaultProxy(uint32_t target_address, int target_port, Options options,
             int listen_fd, int port, int stop_fd);

  void AcceptLoop();
  void Serve(int client);
  // Connects to the target; -1 on failure.
  int ConnectToTarget() const;
  // Forwards in both directions until both sides have closed, one fails,
  // or the proxy stops.
  void Pump(int client, int server) const;
  // Reads exactly `size` bytes; false on end of stream, error or stop.
  bool ReadFully(int fd, char* data, size_t size) const;
  // Writes all of `data`; false on error or stop.
  bool WriteFully(int fd, const char* data, size_t size) const;
  // Waits until `fd` has `events` (POLLIN / POLLOUT); false on stop.
  bool WaitFor(int fd, short events) const;

  // Constant after construction.
  const uint32_t target_address_;  // network byte order
  const int target_port_;
  const Options options_;
  const int port_;
  const int stop_fd_;  // eventfd, readable once the destructor runs
  int listen_fd_;      // used by the acceptor only, then the destructor

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool hung_cancels_released_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<uint32_t> cancel_pids_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> connection_threads_ ABSL_GUARDED_BY(mu_);

  std::thread acceptor_;
};

}  // namespace shardkit::testing

#endif  // SHARDKIT_TESTS_INTEGRATION_FAULT_PROXY_H_
