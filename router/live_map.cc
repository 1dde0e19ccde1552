#include "router/live_map.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <utility>

#include "common/status_macros.h"
#include "common/strings.h"

namespace shardkit::internal {

absl::StatusOr<std::unique_ptr<LiveMap>> LiveMap::Open(
    const Config& config, ExecOptions catalog_options,
    absl::Duration poll_interval) {
  if (!config.catalog) {
    return std::unique_ptr<LiveMap>(
        new LiveMap(config.map, nullptr, poll_interval));
  }
  auto catalog = std::make_unique<Catalog>(*config.catalog, catalog_options);
  absl::StatusOr<std::optional<LiveState>> latest = catalog->Latest();
  if (!latest.ok()) {
    return absl::Status(
        latest.status().code() == absl::StatusCode::kInternal
            ? absl::StatusCode::kInternal
            : absl::StatusCode::kUnavailable,
        StrCat("cannot read the live shard map from the catalog (",
               MaskDsnPassword(config.catalog->dsn),
               "): ", latest.status().message(),
               "; the cluster does not route by the configuration alone "
               "while a catalog is configured, since the map may have "
               "changed (a failover, a move)"));
  }
  std::unique_ptr<LiveMap> live(
      new LiveMap(config.map, std::move(catalog), poll_interval));
  if (*latest) RETURN_IF_ERROR(live->Install(**latest));
  live->watcher_ = std::thread([raw = live.get()] { raw->Watch(); });
  return live;
}

LiveMap::LiveMap(const ShardMap& configured, std::unique_ptr<Catalog> catalog,
                 absl::Duration poll_interval)
    : configured_(configured),
      catalog_(std::move(catalog)),
      poll_interval_(poll_interval),
      wake_fd_(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      map_(std::make_shared<const ShardMap>(configured)) {}

LiveMap::~LiveMap() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  const uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (watcher_.joinable()) watcher_.join();
  close(wake_fd_);
}

std::shared_ptr<const ShardMap> LiveMap::current() const {
  absl::MutexLock lock(&mu_);
  return map_;
}

void LiveMap::AddListener(Listener listener) {
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(listener));
}

absl::Status LiveMap::Install(const LiveState& state) {
  absl::MutexLock install(&install_mu_);
  if (current()->epoch() >= state.epoch) return absl::OkStatus();
  ASSIGN_OR_RETURN(ShardMap map, ApplyLiveState(configured_, state));
  auto shared = std::make_shared<const ShardMap>(std::move(map));
  std::vector<Listener> listeners;
  {
    absl::MutexLock lock(&mu_);
    map_ = shared;
    listeners = listeners_;
  }
  for (const Listener& listener : listeners) listener(shared);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ShardMap>> LiveMap::Refresh() {
  if (catalog_ == nullptr) return current();
  ASSIGN_OR_RETURN(std::optional<LiveState> latest, catalog_->Latest());
  if (latest) RETURN_IF_ERROR(Install(*latest));
  return current();
}

absl::Status LiveMap::AwaitEpoch(uint64_t epoch, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (current()->epoch() < epoch) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          StrCat("the live shard map did not reach epoch ", epoch, " within ",
                 absl::FormatDuration(timeout), " (it is at ",
                 current()->epoch(), ")"));
    }
    absl::StatusOr<std::shared_ptr<const ShardMap>> map = Refresh();
    if (map.ok() && (*map)->epoch() >= epoch) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::OkStatus();
}

void LiveMap::Watch() {
  PGconn* conn = nullptr;
  auto stopped = [&] {
    absl::MutexLock lock(&mu_);
    return stop_;
  };
  absl::Duration backoff = absl::Milliseconds(100);
  while (!stopped()) {
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
      if (conn != nullptr) PQfinish(conn);
      conn = PQconnectdb(catalog_->dsn().c_str());
      if (PQstatus(conn) == CONNECTION_OK) {
        PGresult* listen = PQexec(
            conn, StrCat("LISTEN ", kLiveMapChannel).c_str());
        PQclear(listen);
        backoff = absl::Milliseconds(100);
      }
    }
    // Whatever was missed while not listening.
    Refresh().IgnoreError();
    const int sock = conn != nullptr && PQstatus(conn) == CONNECTION_OK
                         ? PQsocket(conn)
                         : -1;
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {sock, POLLIN, 0}};
    const absl::Duration wait = sock >= 0 ? poll_interval_ : backoff;
    poll(fds, sock >= 0 ? 2 : 1,
         static_cast<int>(absl::ToInt64Milliseconds(wait)));
    if (sock < 0) backoff = std::min(backoff * 2, poll_interval_);
    if (fds[0].revents != 0) {
      uint64_t drained = 0;
      (void)!read(wake_fd_, &drained, sizeof(drained));
    }
    if (sock >= 0 && (fds[1].revents & POLLIN) != 0) {
      if (PQconsumeInput(conn) == 0) {
        PQfinish(conn);
        conn = nullptr;
      } else {
        while (PGnotify* n = PQnotifies(conn)) PQfreemem(n);
      }
    }
  }
  if (conn != nullptr) PQfinish(conn);
}

}  // namespace shardkit::internal
