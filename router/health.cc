#include "router/health.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/strings.h"
#include "router/shard_connection.h"

namespace shardkit::internal {
namespace {

// pg_current_wal_lsn() and pg_is_wal_replay_paused() fail on the other
// role, hence the CASEs (pg_is_in_recovery() is volatile: never folded).
constexpr char kProbeQuery[] =
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn() END, "
    "pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(), "
    "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END, "
    "extract(epoch FROM now() - pg_last_xact_replay_timestamp())";

enum class Phase { kConnecting, kQuerying, kDone };

struct Probe {
  const ProbeTarget* target = nullptr;
  std::unique_ptr<ShardConnection> conn;
  Phase phase = Phase::kConnecting;
  absl::Time started;
  absl::Time sent;
  BackendHealth health;
};

// How messages name a backend, after "shard ": "s1" for a primary,
// "s1 replica r2".
std::string Label(const ProbeTarget& target) {
  if (target.configured_primary) return target.shard_name;
  return StrCat(target.shard_name, " replica ", target.backend);
}

void Finish(Probe& probe, absl::Status status) {
  probe.health.status = std::move(status);
  probe.phase = Phase::kDone;
  probe.conn->Close();
}

std::optional<std::string> Cell(const Row& row, size_t i) {
  return i < row.size() ? row[i] : std::nullopt;
}

// Reads the probe query's one row into `health`.
absl::Status ReadReport(const Result& result, BackendHealth& health) {
  if (result.rows.size() != 1 || result.rows[0].size() != 6 ||
      !result.rows[0][0]) {
    return absl::InternalError(
        StrCat("shard ", Label(health.target),
               ": the health query returned an unexpected result"));
  }
  const Row& row = result.rows[0];
  const bool in_recovery = *row[0] == "t";
  health.role = in_recovery ? BackendRole::kReplica : BackendRole::kPrimary;
  auto lsn = [&](size_t i) -> std::optional<uint64_t> {
    std::optional<std::string> text = Cell(row, i);
    return text ? ParseLsn(*text) : std::nullopt;
  };
  if (in_recovery) {
    health.lsn = lsn(3);
    health.receive_lsn = lsn(2);
    health.replay_paused = Cell(row, 4).value_or("f") == "t";
    double seconds = 0;
    if (std::optional<std::string> age = Cell(row, 5);
        age && absl::SimpleAtod(*age, &seconds)) {
      // The replica's clock against the primary's commit timestamps: a
      // little skew must not make it negative.
      health.since_last_replay =
          std::max(absl::ZeroDuration(), absl::Seconds(seconds));
    }
  } else {
    health.lsn = lsn(1);
  }
  return absl::OkStatus();
}

void StartProbe(Probe& probe) {
  probe.started = absl::Now();
  probe.health.target = *probe.target;
  probe.conn = std::make_unique<ShardConnection>(Label(*probe.target),
                                                 probe.target->dsn);
  if (absl::Status s = probe.conn->StartConnect(); !s.ok()) {
    Finish(probe, std::move(s));
  }
}

// Moves `probe` on after its socket was ready, or its deadline checked.
void Step(Probe& probe, absl::Time now) {
  ShardConnection& conn = *probe.conn;
  if (conn.state() == ShardConnection::State::kFailed) {
    Finish(probe, conn.failure());
    return;
  }
  if (probe.phase == Phase::kConnecting &&
      conn.state() == ShardConnection::State::kIdle) {
    probe.health.connect_time = now - probe.started;
    probe.sent = now;
    probe.phase = Phase::kQuerying;
    if (absl::Status s = conn.SendStatement(kProbeQuery, {}); !s.ok()) {
      Finish(probe, std::move(s));
    }
    return;
  }
  if (probe.phase == Phase::kQuerying &&
      conn.state() == ShardConnection::State::kIdle) {
    probe.health.latency = now - probe.sent;
    absl::StatusOr<Result> result = conn.TakeResult();
    Finish(probe,
           result.ok() ? ReadReport(*result, probe.health) : result.status());
  }
}

absl::Time DeadlineOf(const Probe& probe, const ProbeOptions& options) {
  return probe.phase == Phase::kConnecting
             ? probe.started + options.connect_timeout
             : probe.sent + options.query_timeout;
}

void OnDeadline(Probe& probe, const ProbeOptions& options) {
  const std::string where = StrCat("shard ", Label(*probe.target), " (",
                                   probe.conn->MaskedDsn(), ")");
  if (probe.phase == Phase::kConnecting) {
    Finish(probe, absl::DeadlineExceededError(
                      StrCat(where, " is unreachable: no connection within ",
                             absl::FormatDuration(options.connect_timeout))));
  } else {
    Finish(probe, absl::DeadlineExceededError(
                      StrCat(where, " did not answer the health query within ",
                             absl::FormatDuration(options.query_timeout))));
  }
}

}  // namespace

std::string_view BackendRoleName(BackendRole role) {
  switch (role) {
    case BackendRole::kPrimary:
      return "primary";
    case BackendRole::kReplica:
      return "replica";
    case BackendRole::kUnknown:
      return "unknown";
  }
  return "unknown";
}

std::optional<uint64_t> ParseLsn(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto half = [](std::string_view hex) -> std::optional<uint64_t> {
    if (hex.empty() || hex.size() > 8) return std::nullopt;
    uint64_t value = 0;
    for (char c : hex) {
      int digit;
      if (c >= '0' && c <= '9') {
        digit = c - '0';
      } else if (c >= 'A' && c <= 'F') {
        digit = c - 'A' + 10;
      } else if (c >= 'a' && c <= 'f') {
        digit = c - 'a' + 10;
      } else {
        return std::nullopt;
      }
      value = value * 16 + digit;
    }
    return value;
  };
  std::optional<uint64_t> high = half(text.substr(0, slash));
  std::optional<uint64_t> low = half(text.substr(slash + 1));
  if (!high || !low) return std::nullopt;
  return *high << 32 | *low;
}

std::string FormatLsn(uint64_t lsn) {
  return absl::StrFormat("%X/%X", lsn >> 32, lsn & 0xffffffffu);
}

std::vector<BackendHealth> ProbeBackends(
    const std::vector<ProbeTarget>& targets, const ProbeOptions& options) {
  std::vector<Probe> probes(targets.size());
  for (size_t i = 0; i < targets.size(); ++i) {
    probes[i].target = &targets[i];
    StartProbe(probes[i]);
  }
  std::vector<pollfd> fds;
  std::vector<Probe*> polled;
  while (true) {
    fds.clear();
    polled.clear();
    absl::Time next_deadline = absl::InfiniteFuture();
    for (Probe& probe : probes) {
      if (probe.phase == Phase::kDone) continue;
      next_deadline = std::min(next_deadline, DeadlineOf(probe, options));
      fds.push_back(
          pollfd{probe.conn->socket(), probe.conn->WantedEvents(), 0});
      polled.push_back(&probe);
    }
    if (polled.empty()) break;
    const int64_t wait_ms = std::max<int64_t>(
        0, absl::ToInt64Milliseconds(next_deadline - absl::Now()) + 1);
    const int ready = poll(fds.data(), fds.size(),
                           static_cast<int>(std::min<int64_t>(wait_ms, 60000)));
    if (ready < 0 && errno != EINTR) {
      for (Probe* probe : polled) {
        Finish(*probe, absl::InternalError(
                           StrCat("shard ", Label(*probe->target),
                                  ": poll() failed: ", std::strerror(errno))));
      }
      break;
    }
    const absl::Time now = absl::Now();
    for (size_t i = 0; i < polled.size(); ++i) {
      Probe& probe = *polled[i];
      if (fds[i].revents != 0) {
        probe.conn->Advance();
        Step(probe, now);
      }
      if (probe.phase != Phase::kDone && now >= DeadlineOf(probe, options)) {
        OnDeadline(probe, options);
      }
    }
  }
  std::vector<BackendHealth> health;
  health.reserve(probes.size());
  for (Probe& probe : probes) health.push_back(std::move(probe.health));
  return health;
}

std::vector<ProbeTarget> BackendsOf(const ShardMap& map) {
  std::vector<ProbeTarget> targets;
  for (ShardId id = 0; id < map.shards().size(); ++id) {
    const Shard& shard = map.shard(id);
    targets.push_back(ProbeTarget{id, shard.name, "primary", true, shard.dsn});
    for (const Backend& replica : shard.replicas) {
      targets.push_back(
          ProbeTarget{id, shard.name, replica.name, false, replica.dsn});
    }
  }
  return targets;
}

void ComputeReplicaLag(std::vector<BackendHealth*>& shard_backends) {
  const BackendHealth* primary = nullptr;
  for (const BackendHealth* b : shard_backends) {
    if (!b->up() || b->role != BackendRole::kPrimary || !b->lsn) continue;
    if (primary == nullptr || b->target.configured_primary) primary = b;
  }
  for (BackendHealth* b : shard_backends) {
    if (!b->up() || b->role != BackendRole::kReplica) continue;
    if (primary != nullptr && b->lsn) {
      b->lag_bytes = *primary->lsn > *b->lsn ? *primary->lsn - *b->lsn : 0;
    }
    const bool caught_up =
        b->lag_bytes ? *b->lag_bytes == 0
                     : (primary == nullptr && b->lsn &&
                        (!b->receive_lsn || *b->lsn >= *b->receive_lsn));
    if (caught_up) {
      b->lag = absl::ZeroDuration();
    } else {
      b->lag = b->since_last_replay;
    }
  }
}

std::vector<BackendHealth> CheckHealth(const ShardMap& map,
                                       const ProbeOptions& options) {
  std::vector<BackendHealth> health = ProbeBackends(BackendsOf(map), options);
  std::vector<std::vector<BackendHealth*>> by_shard(map.shards().size());
  for (BackendHealth& b : health) by_shard[b.target.shard].push_back(&b);
  for (std::vector<BackendHealth*>& shard : by_shard) ComputeReplicaLag(shard);
  return health;
}

}  // namespace shardkit::internal
