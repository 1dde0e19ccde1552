#include "tests/integration/fake_postgres.h"

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
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shardkit::testing {
namespace {

// Protocol 3.0 codes of the first packet a client sends.
constexpr uint32_t kProtocolVersion3 = 196608;
constexpr uint32_t kCancelRequestCode = 80877102;
constexpr uint32_t kSslRequestCode = 80877103;
constexpr uint32_t kGssEncRequestCode = 80877104;
// The backend key the fake hands out; cancel requests must carry it.
constexpr uint32_t kBackendPid = 4242;
constexpr uint32_t kBackendKey = 0x5eed5eed;
constexpr uint32_t kMaxPacket = 1 << 20;

std::string Int32(uint32_t value) {
  const uint32_t network = htonl(value);
  return std::string(reinterpret_cast<const char*>(&network), 4);
}

uint32_t ReadInt32(const char* data) {
  uint32_t network = 0;
  std::memcpy(&network, data, 4);
  return ntohl(network);
}

std::string Message(char type, const std::string& body) {
  return absl::StrCat(std::string(1, type),
                      Int32(static_cast<uint32_t>(body.size() + 4)), body);
}

std::string CString(const std::string& text) {
  return text + std::string(1, '\0');
}

std::string ParameterStatus(const std::string& name, const std::string& value) {
  return Message('S', CString(name) + CString(value));
}

std::string ReadyForQuery() { return Message('Z', "I"); }

// What PostgreSQL sends for a statement that a cancel request stopped.
std::string QueryCanceled() {
  return Message('E', CString("SERROR") + CString("VERROR") +
                          CString("C57014") +
                          CString("Mcanceling statement due to user request") +
                          std::string(1, '\0')) +
         ReadyForQuery();
}

// Errors are ignored: a client that went away needs no answer.
void WriteAll(int fd, const std::string& data) {
  size_t written = 0;
  while (written < data.size()) {
    const ssize_t n =
        send(fd, data.data() + written, data.size() - written, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    written += static_cast<size_t>(n);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<FakePostgres>> FakePostgres::Start(
    OnCancel on_cancel, bool hold_cancels) {
  const int listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd < 0) {
    return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  }
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (bind(listen_fd, reinterpret_cast<sockaddr*>(&address), length) != 0 ||
      listen(listen_fd, 16) != 0 ||
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
  std::unique_ptr<FakePostgres> fake(new FakePostgres(
      on_cancel, hold_cancels, listen_fd, ntohs(address.sin_port), stop_fd));
  fake->acceptor_ =
      std::thread([server = fake.get()] { server->AcceptLoop(); });
  return fake;
}

FakePostgres::FakePostgres(OnCancel on_cancel, bool hold_cancels, int listen_fd,
                           int port, int stop_fd)
    : on_cancel_(on_cancel),
      port_(port),
      stop_fd_(stop_fd),
      listen_fd_(listen_fd),
      hold_cancels_(hold_cancels) {}

FakePostgres::~FakePostgres() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t ignored = write(stop_fd_, &one, sizeof(one));
  acceptor_.join();
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    threads = std::move(connection_threads_);
    if (listen_fd_ >= 0) close(listen_fd_);
    listen_fd_ = -1;
  }
  for (std::thread& thread : threads) thread.join();
  close(stop_fd_);
}

std::string FakePostgres::dsn() const {
  return absl::StrCat("host=127.0.0.1 port=", port_,
                      " dbname=fake user=fake sslmode=disable "
                      "gssencmode=disable");
}

void FakePostgres::ReleaseCancels() {
  absl::MutexLock lock(&mu_);
  hold_cancels_ = false;
}

bool FakePostgres::WaitForCancelRequests(int count, absl::Duration limit) {
  absl::MutexLock lock(&mu_);
  auto arrived = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cancel_requests_ >= count;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&arrived), limit);
}

void FakePostgres::AcceptLoop() {
  while (true) {
    int listen_fd = -1;
    {
      absl::MutexLock lock(&mu_);
      listen_fd = listen_fd_;
    }
    if (listen_fd < 0) return;
    pollfd fds[] = {{listen_fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    const int client = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    absl::MutexLock lock(&mu_);
    if (on_cancel_ == OnCancel::kRefuse) {
      // Before the client can send anything: its cancel request will find
      // nobody listening.
      close(listen_fd_);
      listen_fd_ = -1;
    }
    connection_threads_.emplace_back([this, client] { Serve(client); });
  }
}

bool FakePostgres::ReadFully(int fd, void* data, size_t size) const {
  char* out = static_cast<char*>(data);
  size_t done = 0;
  while (done < size) {
    pollfd fds[] = {{fd, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (fds[1].revents != 0) return false;
    const ssize_t n = recv(fd, out + done, size - done, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

void FakePostgres::Serve(int fd) {
  // The first packet: a startup message, or a request that precedes or
  // replaces one. It has no type byte.
  while (true) {
    char header[4];
    if (!ReadFully(fd, header, sizeof(header))) break;
    const uint32_t length = ReadInt32(header);
    if (length < 8 || length > kMaxPacket) break;
    std::string body(length - 4, '\0');
    if (!ReadFully(fd, body.data(), body.size())) break;
    const uint32_t code = ReadInt32(body.data());
    if (code == kSslRequestCode || code == kGssEncRequestCode) {
      WriteAll(fd, "N");  // not supported; the client goes on in the clear
      continue;
    }
    if (code == kCancelRequestCode && body.size() == 12) {
      ServeCancel(fd, ReadInt32(body.data() + 4), ReadInt32(body.data() + 8));
    } else if (code == kProtocolVersion3) {
      ServeSession(fd);
    }
    break;
  }
  close(fd);
}

void FakePostgres::ServeSession(int fd) {
  WriteAll(fd, Message('R', Int32(0)) +  // AuthenticationOk
                   ParameterStatus("server_version", "15.0") +
                   ParameterStatus("server_encoding", "UTF8") +
                   ParameterStatus("client_encoding", "UTF8") +
                   ParameterStatus("standard_conforming_strings", "on") +
                   ParameterStatus("integer_datetimes", "on") +
                   ParameterStatus("DateStyle", "ISO, MDY") +
                   Message('K', Int32(kBackendPid) + Int32(kBackendKey)) +
                   ReadyForQuery());
  while (true) {
    char header[5];
    if (!ReadFully(fd, header, sizeof(header))) break;
    const uint32_t length = ReadInt32(header + 1);
    if (length < 4 || length > kMaxPacket) break;
    std::string body(length - 4, '\0');
    if (!ReadFully(fd, body.data(), body.size())) break;
    if (header[0] == 'X') break;  // Terminate
    if (header[0] == 'Q') {
      absl::MutexLock lock(&mu_);
      statement_fd_ = fd;  // never answered, unless a cancel confirms
    }
  }
  absl::MutexLock lock(&mu_);
  if (statement_fd_ == fd) statement_fd_ = -1;
}

void FakePostgres::ServeCancel(int fd, uint32_t pid, uint32_t key) {
  if (pid != kBackendPid || key != kBackendKey) return;
  {
    absl::MutexLock lock(&mu_);
    ++cancel_requests_;
    auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !hold_cancels_ || stopping_;
    };
    mu_.Await(absl::Condition(&released));
    if (stopping_) return;
  }
  // The end of the cancel connection is PQcancel's sign that the request was
  // received, as with the postmaster.
  shutdown(fd, SHUT_RDWR);
  if (on_cancel_ != OnCancel::kConfirm) return;
  absl::MutexLock lock(&mu_);
  if (statement_fd_ >= 0) {
    WriteAll(statement_fd_, QueryCanceled());
    statement_fd_ = -1;
  }
}

}  // namespace shardkit::testing
