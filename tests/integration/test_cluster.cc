#include "tests/integration/test_cluster.h"

#include <dirent.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "rebalancer/server_hash.h"

namespace shardkit::testing {
namespace {

namespace fs = std::filesystem;

constexpr int kStartAttempts = 3;
constexpr char kDatabase[] = "app";

struct PgConnDeleter {
  void operator()(PGconn* conn) const { PQfinish(conn); }
};
struct PgResultDeleter {
  void operator()(PGresult* result) const { PQclear(result); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;
using PgResultPtr = std::unique_ptr<PGresult, PgResultDeleter>;

// Whether 127.0.0.1:port can be bound right now. No SO_REUSEADDR: a port
// with lingering connections is not "free" for our purpose either.
bool PortIsFree(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool free = bind(fd, reinterpret_cast<const sockaddr*>(&address),
                   sizeof(address)) == 0;
  close(fd);
  return free;
}

}  // namespace

absl::StatusOr<std::string> MakeTempDirForTest() {
  std::string pattern = "/tmp/shardkit-test-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat(
        "cannot create a temporary directory under /tmp: ", strerror(errno)));
  }
  // mkdtemp makes it 0700; the servers run as postgres when tests run as
  // root and must be able to enter it.
  chmod(pattern.c_str(), 0755);
  return pattern;
}

void RemoveDirForTest(const std::string& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
}

absl::StatusOr<int> FindFreePortsForTest(int count) {
  std::random_device seed;
  std::mt19937 random(seed());
  std::uniform_int_distribution<int> base_port(20000, 60000);
  for (int attempt = 0; attempt < 200; ++attempt) {
    int base = base_port(random);
    bool all_free = true;
    for (int port = base; port < base + count && all_free; ++port) {
      all_free = PortIsFree(port);
    }
    if (all_free) return base;
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "found no %d consecutive free ports on 127.0.0.1 in 20000..60000; "
      "stop leftover servers (e.g. `ps -u postgres`)",
      count));
}

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::Start(
    int shards, std::vector<std::string> extra_settings) {
  return StartCluster(shards, 0, std::move(extra_settings), false);
}

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::StartWithReplicas(
    int shards, int replicas, std::vector<std::string> extra_settings,
    bool synchronous) {
  return StartCluster(shards, replicas, std::move(extra_settings),
                      synchronous);
}

absl::StatusOr<std::unique_ptr<TestCluster>> TestCluster::StartCluster(
    int shards, int replicas, std::vector<std::string> extra_settings,
    bool synchronous) {
  absl::Status last_error;
  for (int attempt = 0; attempt < kStartAttempts; ++attempt) {
    ASSIGN_OR_RETURN(std::string dir, MakeTempDirForTest());
    // With replicas, the catalog instance takes the port before the shards'.
    const int catalog_ports = replicas > 0 ? 1 : 0;
    ASSIGN_OR_RETURN(int first_port, FindFreePortsForTest(
                                         catalog_ports + shards * (1 + replicas)));
    const int base_port = first_port + catalog_ports;
    dev::DevClusterOptions options;
    options.dir = dir;
    options.shards = shards;
    options.replicas = replicas;
    options.base_port = base_port;
    options.database = kDatabase;
    options.extra_settings = extra_settings;
    options.synchronous = synchronous;
    absl::StatusOr<dev::DevCluster> cluster = dev::Up(options);
    if (cluster.ok()) {
      return std::unique_ptr<TestCluster>(new TestCluster(*std::move(cluster)));
    }
    static_cast<void>(dev::Down(dir));
    RemoveDirForTest(dir);
    last_error = cluster.status();
    // Another process may have taken a port between our check and the
    // server's bind; anything else will not get better by retrying.
    if (!absl::StrContains(last_error.message(), "already in use")) break;
  }
  return last_error;
}

TestCluster::~TestCluster() {
  absl::StatusOr<dev::DownResult> stopped = dev::Down(cluster_.dir);
  if (!stopped.ok()) {
    std::fprintf(stderr, "TestCluster: stopping %s: %s\n", cluster_.dir.c_str(),
                 std::string(stopped.status().message()).c_str());
  }
  if (getenv("SHARDKIT_KEEP_TEST_CLUSTER") != nullptr) {
    std::fprintf(
        stderr,
        "TestCluster: kept %s (SHARDKIT_KEEP_TEST_CLUSTER); restart "
        "it with `shardctl dev up --dir %s --shards %d --port "
        "%d%s`\n",
        cluster_.dir.c_str(), cluster_.dir.c_str(), size(),
        cluster_.instances.front().port,
        replicas_per_shard() == 0
            ? ""
            : absl::StrCat(" --replicas ", replicas_per_shard()).c_str());
    return;
  }
  RemoveDirForTest(cluster_.dir);
}

std::string TestCluster::dsn(int index) const {
  return cluster_.instances.at(index).dsn;
}

std::string TestCluster::WriteConfig(std::string_view name,
                                     std::string_view body) const {
  std::string path = (fs::path(cluster_.dir) / fs::path(name)).string();
  std::string text = dev::ShardsTomlSection(cluster_.instances);
  text.append(body);
  text.append("\n");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) {
    std::fprintf(stderr, "TestCluster::WriteConfig: cannot write %s: %s\n",
                 path.c_str(), strerror(errno));
  }
  return path;
}

absl::StatusOr<std::vector<std::vector<std::string>>> TestCluster::Query(
    int index, const std::string& sql) const {
  return QueryInstance(cluster_.instances.at(index), sql);
}

absl::StatusOr<std::string> TestCluster::WriteMoveConfig(
    std::string_view name, std::string_view body,
    const std::string& schema) const {
  RETURN_IF_ERROR(Query(0, "CREATE DATABASE movecat").status());
  const std::string path = WriteConfig(
      name,
      absl::StrCat("[catalog]\ndsn = \"", dsn(0), " dbname=movecat\"\n",
                   absl::string_view(body.data(), body.size())));
  if (!schema.empty()) {
    for (int s = 0; s < size(); ++s) RETURN_IF_ERROR(Query(s, schema).status());
  }
  return path;
}

absl::StatusOr<std::string> TestCluster::ServerHashModule() const {
  // A copy in the cluster's directory, which the servers' user can read
  // (the build tree may sit where it cannot, e.g. under /root).
  // Copied once: overwriting a module that servers have loaded (mapped)
  // would crash them.
  const std::string module = cluster_.dir + "/shardkit_pg.so";
  if (std::filesystem::exists(module)) return module;
  const std::string temporary = module + ".tmp";
  std::error_code error;
  std::filesystem::copy_file(SHARDKIT_PG_MODULE, temporary,
                             std::filesystem::copy_options::overwrite_existing,
                             error);
  if (!error) {
    std::filesystem::permissions(temporary, std::filesystem::perms(0644),
                                 error);
  }
  if (!error) std::filesystem::rename(temporary, module, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot copy ", SHARDKIT_PG_MODULE,
                                            " to ", module, ": ",
                                            error.message()));
  }
  return module;
}

absl::Status TestCluster::InstallServerHash(int index) const {
  ASSIGN_OR_RETURN(const std::string module, ServerHashModule());
  ASSIGN_OR_RETURN(
      std::unique_ptr<internal::MoveSession> session,
      internal::MoveSession::Open({absl::StrCat("s", index + 1), dsn(index)},
                                  absl::Seconds(30)));
  return internal::InstallServerHash(*session, module);
}

absl::StatusOr<std::vector<std::vector<std::string>>> TestCluster::QueryReplica(
    int index, int replica, const std::string& sql) const {
  return QueryInstance(cluster_.instances.at(index).replicas.at(replica), sql);
}

std::string TestCluster::replica_dsn(int index, int replica) const {
  return cluster_.instances.at(index).replicas.at(replica).dsn;
}

absl::Status TestCluster::StopReplica(int index, int replica) {
  return dev::StopInstance(cluster_.instances.at(index).replicas.at(replica));
}

absl::Status TestCluster::StartReplica(int index, int replica) {
  return dev::StartInstance(cluster_.instances.at(index).replicas.at(replica));
}

absl::StatusOr<std::vector<std::vector<std::string>>>
TestCluster::QueryInstance(const dev::DevInstance& instance,
                           const std::string& sql) {
  PgConnPtr conn(
      PQconnectdb(absl::StrCat(instance.dsn, " connect_timeout=10").c_str()));
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    return absl::UnavailableError(
        absl::StrCat("shard ", instance.name, " (", instance.dsn,
                     "): cannot connect: ", PQerrorMessage(conn.get())));
  }
  PgResultPtr result(PQexec(conn.get(), sql.c_str()));
  ExecStatusType status = PQresultStatus(result.get());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    const char* sqlstate = PQresultErrorField(result.get(), PG_DIAG_SQLSTATE);
    const char* message =
        PQresultErrorField(result.get(), PG_DIAG_MESSAGE_PRIMARY);
    return absl::UnknownError(absl::StrCat(
        "shard ", instance.name, ": ERROR ", sqlstate ? sqlstate : "?????",
        ": ", message ? message : PQerrorMessage(conn.get())));
  }
  std::vector<std::vector<std::string>> rows;
  for (int r = 0; r < PQntuples(result.get()); ++r) {
    std::vector<std::string>& row = rows.emplace_back();
    for (int c = 0; c < PQnfields(result.get()); ++c) {
      row.push_back(PQgetisnull(result.get(), r, c)
                        ? "NULL"
                        : PQgetvalue(result.get(), r, c));
    }
  }
  return rows;
}

absl::Status TestCluster::StopShard(int index) {
  return dev::StopInstance(cluster_.instances.at(index));
}

namespace {

// The processes alive (not zombies) whose working directory is `dir`: a
// PostgreSQL server's processes all run in its data directory.
std::vector<int> LiveProcessesIn(const std::string& dir) {
  std::vector<int> found;
  std::error_code ec;
  const fs::path wanted = fs::canonical(dir, ec);
  if (ec) return found;
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return found;
  while (dirent* entry = readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    const fs::path cwd = fs::read_symlink(absl::StrCat("/proc/", pid, "/cwd"), ec);
    if (ec || cwd != wanted) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string text((std::istreambuf_iterator<char>(stat)), {});
    const size_t close = text.rfind(')');
    char state = 0;
    if (close != std::string::npos &&
        sscanf(text.c_str() + close + 1, " %c", &state) == 1 && state != 'Z') {
      found.push_back(pid);
    }
  }
  closedir(proc);
  return found;
}

}  // namespace

absl::Status TestCluster::KillShard(int index) {
  const dev::DevInstance& instance = cluster_.instances[index];
  std::ifstream pid_file(instance.data_dir + "/postmaster.pid");
  std::string line;
  std::getline(pid_file, line);
  int postmaster = 0;
  if (!absl::SimpleAtoi(line, &postmaster)) {
    return absl::FailedPreconditionError(
        absl::StrCat("no running server in ", instance.data_dir));
  }
  // Its children, found before the postmaster dies (they are reparented).
  std::vector<int> children;
  if (DIR* proc = opendir("/proc")) {
    while (dirent* entry = readdir(proc)) {
      int pid = 0;
      if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
      std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
      std::string text((std::istreambuf_iterator<char>(stat)), {});
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
      const size_t close = text.rfind(')');
      char state = 0;
      int ppid = 0;
      if (close != std::string::npos &&
          sscanf(text.c_str() + close + 1, " %c %d", &state, &ppid) == 2 &&
          ppid == postmaster) {
        children.push_back(pid);
      }
    }
    closedir(proc);
  }
  if (kill(postmaster, SIGKILL) != 0) {
    return absl::InternalError(absl::StrCat("kill ", postmaster, ": ",
                                            strerror(errno)));
  }
  for (int child : children) kill(child, SIGKILL);
  // A child forked after the scan outlives the postmaster for a moment:
  // kill whatever still runs in the data directory, until nothing does.
  // The dead postmaster stays a zombie until init reaps it, which may take
  // seconds here, and meanwhile `pg_ctl status` takes it for a running
  // server (kill(pid, 0) succeeds), so that StartShard started nothing.
  // A rebooted machine has no such process: its postmaster.pid is stale,
  // and PostgreSQL runs crash recovery. So remove it once all are dead.
  const bool all_dead = Eventually([&] {
    const std::vector<int> alive = LiveProcessesIn(instance.data_dir);
    for (int pid : alive) kill(pid, SIGKILL);
    return alive.empty();
  });
  if (!all_dead) {
    return absl::InternalError(absl::StrCat(
        "processes of the server in ", instance.data_dir,
        " still run after SIGKILL"));
  }
  std::error_code ec;
  fs::remove(fs::path(instance.data_dir) / "postmaster.pid", ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("removing ", instance.data_dir,
                                            "/postmaster.pid: ", ec.message()));
  }
  return absl::OkStatus();
}

absl::Status TestCluster::StartShard(int index) {
  return dev::StartInstance(cluster_.instances.at(index));
}

bool Eventually(absl::FunctionRef<bool()> condition, absl::Duration limit) {
  const absl::Time give_up = absl::Now() + limit;
  while (true) {
    if (condition()) return true;
    if (absl::Now() > give_up) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

Session::Session(const std::string& dsn) : conn_(PQconnectdb(dsn.c_str())) {}

void Session::Closer::operator()(pg_conn* conn) const { PQfinish(conn); }

bool Session::ok() const { return PQstatus(conn_.get()) == CONNECTION_OK; }

std::string Session::error() const { return PQerrorMessage(conn_.get()); }

std::string Session::Scalar(const std::string& sql) {
  PgResultPtr result(PQexec(conn_.get(), sql.c_str()));
  const ExecStatusType status = PQresultStatus(result.get());
  if (status == PGRES_TUPLES_OK) {
    return PQntuples(result.get()) > 0 ? PQgetvalue(result.get(), 0, 0) : "";
  }
  if (status == PGRES_COMMAND_OK) return "";
  return absl::StrCat("error: ", PQresultErrorMessage(result.get()));
}

CommandOutput RunCommand(const std::vector<std::string>& argv,
                         const std::string& stdin_text) {
  dev::ProcessOptions options;
  options.stdin_text = stdin_text;
  absl::StatusOr<dev::ProcessResult> result = dev::RunProcess(argv, options);
  CommandOutput output;
  if (!result.ok()) {
    output.err = std::string(result.status().message());
    return output;
  }
  output.exit_code = result->exit_code;
  output.out = std::move(result->out);
  output.err = std::move(result->err);
  return output;
}

}  // namespace shardkit::testing
