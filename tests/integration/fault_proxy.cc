#include "tests/integration/fault_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shardkit::testing {
namespace {

// A CancelRequest: Int32 length 16, Int32 code 80877102, Int32 backend pid,
// Int32 secret key. It is the only packet of its connection.
constexpr uint32_t kCancelRequestLength = 16;
constexpr uint32_t kCancelRequestCode = 80877102;

uint32_t ReadInt32(const char* data) {
  uint32_t network = 0;
  std::memcpy(&network, data, 4);
  return ntohl(network);
}

}  // namespace

absl::StatusOr<std::unique_ptr<FaultProxy>> FaultProxy::Start(
    const std::string& target_host, int target_port, Options options) {
  in_addr target{};
  if (inet_pton(AF_INET, target_host.c_str(), &target) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("not an IPv4 address: ", target_host));
  }
  const int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;  // any free port
  socklen_t length = sizeof(address);
  if (bind(listen_fd, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listen_fd, 64) != 0 ||
      getsockname(listen_fd, reinterpret_cast<sockaddr*>(&address), &length) !=
          0) {
    absl::Status error = absl::InternalError(
        absl::StrCat("cannot listen on 127.0.0.1: ", strerror(errno)));
    close(listen_fd);
    return error;
  }
  const int stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) {
    absl::Status error =
        absl::InternalError(absl::StrCat("eventfd: ", strerror(errno)));
    close(listen_fd);
    return error;
  }
  std::unique_ptr<FaultProxy> proxy(
      new FaultProxy(target.s_addr, target_port, options, listen_fd,
                     ntohs(address.sin_port), stop_fd));
  proxy->acceptor_ = std::thread([p = proxy.get()] { p->AcceptLoop(); });
  return proxy;
}

FaultProxy::FaultProxy(uint32_t target_address, int target_port,
                       Options options, int listen_fd, int port, int stop_fd)
    : target_address_(target_address),
      target_port_(target_port),
      options_(options),
      port_(port),
      stop_fd_(stop_fd),
      listen_fd_(listen_fd) {}

FaultProxy::~FaultProxy() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;  // wakes hung cancel requests
  }
  // Wakes every poll(): the eventfd stays readable from now on.
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t ignored = write(stop_fd_, &one, sizeof(one));
  acceptor_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    threads = std::move(connection_threads_);
  }
  for (std::thread& thread : threads) thread.join();
  close(stop_fd_);
}

void FaultProxy::ReleaseHungCancels() {
  absl::MutexLock lock(&mu_);
  hung_cancels_released_ = true;
}

bool FaultProxy::WaitForCancelRequests(int count, absl::Duration limit) {
  absl::MutexLock lock(&mu_);
  auto arrived = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cancel_pids_.size() >= static_cast<size_t>(count);
  };
  return mu_.AwaitWithTimeout(absl::Condition(&arrived), limit);
}

std::vector<uint32_t> FaultProxy::CancelRequestPids() const {
  absl::MutexLock lock(&mu_);
  return cancel_pids_;
}

void FaultProxy::AcceptLoop() {
  int accepted = 0;
  while (options_.accept_limit <= 0 || accepted < options_.accept_limit) {
    if (!WaitFor(listen_fd_, POLLIN)) return;
    const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;  // EINTR, or the client gave up meanwhile
    ++accepted;
    absl::MutexLock lock(&mu_);
    try {
      connection_threads_.emplace_back([this, client] { Serve(client); });
    } catch (const std::system_error&) {
      close(client);  // the client sees its connection end
    }
  }
  // The limit is reached: from now on, connecting is refused.
  close(listen_fd_);
  listen_fd_ = -1;
}

void FaultProxy::Serve(int client) {
  // The first packet has no type byte: Int32 length, Int32 code. Every
  // packet a client may start with is at least 8 bytes long.
  std::string first(8, '\0');
  if (!ReadFully(client, first.data(), first.size())) {
    close(client);
    return;
  }
  if (ReadInt32(first.data()) == kCancelRequestLength &&
      ReadInt32(first.data() + 4) == kCancelRequestCode) {
    first.resize(kCancelRequestLength);
    if (!ReadFully(client, first.data() + 8, kCancelRequestLength - 8)) {
      close(client);
      return;
    }
    bool forward = true;
    {
      absl::MutexLock lock(&mu_);
      cancel_pids_.push_back(ReadInt32(first.data() + 8));
      switch (options_.on_cancel) {
        case OnCancel::kForward:
          break;
        case OnCancel::kDrop:
          forward = false;
          break;
        case OnCancel::kHang: {
          auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return hung_cancels_released_ || stopping_;
          };
          mu_.Await(absl::Condition(&released));
          forward = !stopping_;
          break;
        }
      }
    }
    if (!forward) {
      close(client);
      return;
    }
  }
  const int server = ConnectToTarget();
  if (server < 0) {
    close(client);
    return;
  }
  if (WriteFully(server, first.data(), first.size())) Pump(client, server);
  close(server);
  close(client);
}

int FaultProxy::ConnectToTarget() const {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = target_address_;
  address.sin_port = htons(static_cast<uint16_t>(target_port_));
  while (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) !=
         0) {
    if (errno == EINTR) continue;
    close(fd);
    return -1;
  }
  return fd;
}

void FaultProxy::Pump(int client, int server) const {
  struct Direction {
    int from;
    int to;
    bool open;
  };
  Direction directions[] = {{client, server, true}, {server, client, true}};
  char buffer[16384];
  while (directions[0].open || directions[1].open) {
    pollfd fds[3];
    Direction* polled[2];
    nfds_t count = 0;
    for (Direction& direction : directions) {
      if (!direction.open) continue;
      polled[count] = &direction;
      fds[count++] = {direction.from, POLLIN, 0};
    }
    fds[count] = {stop_fd_, POLLIN, 0};
    if (poll(fds, count + 1, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[count].revents != 0) return;
    for (nfds_t i = 0; i < count; ++i) {
      if (fds[i].revents == 0) continue;
      Direction& direction = *polled[i];
      const ssize_t n = recv(direction.from, buffer, sizeof(buffer),
                             MSG_DONTWAIT);
      if (n > 0) {
        if (!WriteFully(direction.to, buffer, static_cast<size_t>(n))) return;
      } else if (n == 0) {
        // End of stream: pass it on, keep forwarding the other way.
        shutdown(direction.to, SHUT_WR);
        direction.open = false;
      } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
        return;  // e.g. reset: closing both ends passes that on
      }
    }
  }
}

bool FaultProxy::WaitFor(int fd, short events) const {
  while (true) {
    pollfd fds[] = {{fd, events, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (fds[1].revents != 0) return false;
    if (fds[0].revents != 0) return true;
  }
}

bool FaultProxy::ReadFully(int fd, char* data, size_t size) const {
  size_t done = 0;
  while (done < size) {
    if (!WaitFor(fd, POLLIN)) return false;
    const ssize_t n = recv(fd, data + done, size - done, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
      continue;
    }
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

bool FaultProxy::WriteFully(int fd, const char* data, size_t size) const {
  size_t done = 0;
  while (done < size) {
    if (!WaitFor(fd, POLLOUT)) return false;
    const ssize_t n =
        send(fd, data + done, size - done, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
      continue;
    }
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace shardkit::testing
