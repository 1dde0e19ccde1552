#include "cli/dev_cluster.h"

#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "cli/process.h"
#include "common/status_macros.h"
#include "router/executor.h"
#include "router/shard_connection.h"

namespace shardkit::dev {
namespace {

namespace fs = std::filesystem;

constexpr char kPgBinDir[] = "/usr/lib/postgresql/15/bin";
constexpr char kSettingsFile[] = "shardkit.conf";
constexpr char kIncludeLine[] = "include = 'shardkit.conf'";
constexpr char kServerUser[] = "postgres";
constexpr char kSuggestedDir[] = "/tmp/shardkit-dev";

std::string PgTool(absl::string_view name) {
  return absl::StrCat(kPgBinDir, "/", name);
}

// The last `max_lines` non-empty lines of `text`, joined into one line so
// that an error message stays one line.
std::string Tail(absl::string_view text, size_t max_lines = 6) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    absl::string_view trimmed = absl::StripAsciiWhitespace(line);
    if (!trimmed.empty()) lines.emplace_back(trimmed);
  }
  if (lines.size() > max_lines) {
    lines.erase(lines.begin(), lines.end() - max_lines);
  }
  return absl::StrJoin(lines, " | ");
}

absl::StatusOr<std::string> ReadFile(const fs::path& path,
                                     std::streamoff from = 0) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return ErrnoError(errno, absl::StrCat("cannot read ", path.string()));
  in.seekg(from);
  std::ostringstream content;
  content << in.rdbuf();
  return content.str();
}

// --- Who runs the servers ---------------------------------------------------

// PostgreSQL refuses to run as root: when we are root, its tools run as the
// postgres system user (through runuser) and own the instance directories.
struct ServerUser {
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
  std::string runuser;  // path of runuser(1) when switch_user
};

absl::StatusOr<ServerUser> CurrentServerUser() {
  ServerUser user;
  if (geteuid() != 0) return user;
  user.switch_user = true;
  std::vector<char> buffer(16384);
  passwd entry;
  passwd* found = nullptr;
  getpwnam_r(kServerUser, &entry, buffer.data(), buffer.size(), &found);
  if (found == nullptr) {
    return absl::FailedPreconditionError(
        "shardctl runs as root, so the PostgreSQL servers must run as the "
        "'postgres' system user, which does not exist; install PostgreSQL "
        "(apt-get install postgresql-15) or run as an ordinary user");
  }
  user.uid = entry.pw_uid;
  user.gid = entry.pw_gid;
  int count = 64;
  user.groups.resize(count);
  if (getgrouplist(kServerUser, user.gid, user.groups.data(), &count) < 0) {
    user.groups.resize(count);
    getgrouplist(kServerUser, user.gid, user.groups.data(), &count);
  }
  user.groups.resize(count);
  for (const char* path : {"/usr/sbin/runuser", "/sbin/runuser"}) {
    if (access(path, X_OK) == 0) {
      user.runuser = path;
      break;
    }
  }
  if (user.runuser.empty()) {
    return absl::FailedPreconditionError(
        "shardctl runs as root and needs runuser(1) to start PostgreSQL as "
        "the 'postgres' user, but it is missing; install util-linux or run "
        "as an ordinary user");
  }
  return user;
}

absl::Status ChownToServerUser(const ServerUser& user, const fs::path& path) {
  if (!user.switch_user) return absl::OkStatus();
  if (chown(path.c_str(), user.uid, user.gid) != 0) {
    return ErrnoError(errno, absl::StrCat("cannot give ", path.string(),
                                          " to the postgres user"));
  }
  return absl::OkStatus();
}

bool CanTraverse(const ServerUser& user, const struct stat& st) {
  if (st.st_uid == user.uid) return st.st_mode & S_IXUSR;
  if (std::find(user.groups.begin(), user.groups.end(), st.st_gid) !=
      user.groups.end()) {
    return st.st_mode & S_IXGRP;
  }
  return st.st_mode & S_IXOTH;
}

// The servers open files below `dir` as the postgres user, so it must be
// able to enter `dir` and every directory above it.
absl::Status CheckServerUserCanReach(const ServerUser& user,
                                     const fs::path& dir) {
  if (!user.switch_user) return absl::OkStatus();
  for (fs::path p = dir; !p.empty(); p = p.parent_path()) {
    struct stat st;
    if (stat(p.c_str(), &st) != 0) {
      // Not created yet: it gets the umask's mode, checked once it exists.
      if (errno == ENOENT) continue;
      return ErrnoError(errno, absl::StrCat("cannot inspect ", p.string()));
    }
    if (!CanTraverse(user, st)) {
      return absl::PermissionDeniedError(absl::StrFormat(
          "the PostgreSQL servers run as the 'postgres' user (shardctl runs "
          "as root), and that user cannot enter %s (mode %04o, owner uid "
          "%d); use a directory it can reach, such as %s, or allow it in "
          "(chmod o+x %s)",
          p.string(), st.st_mode & 07777, st.st_uid, kSuggestedDir,
          p.string()));
    }
    if (p.parent_path() == p) break;
  }
  return absl::OkStatus();
}

absl::Status CheckPostgresInstalled() {
  for (const char* tool : {"initdb", "pg_ctl", "postgres"}) {
    std::string path = PgTool(tool);
    if (access(path.c_str(), X_OK) != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "PostgreSQL 15 is not installed (", path,
          " is missing); install it with `apt-get install postgresql-15`"));
    }
  }
  return absl::OkStatus();
}

// Runs a PostgreSQL tool as the server's user, from "/" because the
// caller's working directory may be closed to that user.
absl::StatusOr<ProcessResult> RunServerTool(const ServerUser& user,
                                            std::vector<std::string> argv) {
  if (user.switch_user) {
    argv.insert(argv.begin(), {user.runuser, "-u", kServerUser, "--"});
  }
  ProcessOptions options;
  options.working_dir = "/";
  return RunProcess(argv, options);
}

std::string ToolFailure(absl::string_view what, const ProcessResult& result) {
  return absl::StrFormat("%s failed (exit %d): %s", what, result.exit_code,
                         Tail(absl::StrCat(result.out, "\n", result.err)));
}

// --- One instance -----------------------------------------------------------

DevInstance DescribeInstance(const fs::path& dir, int index, int port,
                             const std::string& database) {
  DevInstance instance;
  instance.name = absl::StrCat("s", index);
  instance.data_dir = (dir / instance.name).string();
  instance.log_file = (dir / absl::StrCat(instance.name, ".log")).string();
  instance.port = port;
  instance.dsn = InstanceDsn(port, database);
  return instance;
}

// Replica `replica` (1-based) of shard `index`.
DevInstance DescribeReplica(const fs::path& dir, int index, int replica,
                            int port, const std::string& database) {
  DevInstance instance = DescribeInstance(dir, index, port, database);
  instance.replica_of = instance.name;
  instance.name = absl::StrCat(instance.name, "-r", replica);
  instance.data_dir = (dir / instance.name).string();
  instance.log_file = (dir / absl::StrCat(instance.name, ".log")).string();
  return instance;
}

// The catalog instance (see the file comment of dev_cluster.h).
DevInstance DescribeCatalog(const fs::path& dir, int port,
                            const std::string& database) {
  DevInstance instance;
  instance.name = kCatalogName;
  instance.data_dir = (dir / instance.name).string();
  instance.log_file = (dir / absl::StrCat(instance.name, ".log")).string();
  instance.port = port;
  instance.dsn = InstanceDsn(port, database);
  return instance;
}

// How messages name an instance: "shard s1", "replica s1-r1".
std::string Label(const DevInstance& instance) {
  return absl::StrCat(instance.replica_of.empty() ? "shard " : "replica ",
                      instance.name);
}

std::string PortInUseMessage(const DevInstance& instance) {
  return absl::StrFormat(
      "port %d (%s) is already in use by another program; choose "
      "other ports with --port (shard i listens on port + i - 1%s)",
      instance.port, Label(instance),
      instance.replica_of.empty() ? ""
                                  : ", the replicas on the ports after the "
                                    "shards'");
}

// Whether a server could not listen on 127.0.0.1:port. SO_REUSEADDR as
// PostgreSQL sets it, so connections in TIME_WAIT from a server we stopped
// do not count, while any listener does.
absl::StatusOr<bool> PortInUse(int port) {
  ScopedFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return ErrnoError(errno, "cannot create a socket");
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&address),
           sizeof(address)) == 0) {
    return false;
  }
  if (errno == EADDRINUSE) return true;
  return ErrnoError(errno, absl::StrFormat("cannot check port %d", port));
}

bool IsInitialized(const DevInstance& instance) {
  std::error_code ec;
  return fs::exists(fs::path(instance.data_dir) / "PG_VERSION", ec);
}

absl::StatusOr<bool> IsRunningAs(const ServerUser& user,
                                 const DevInstance& instance) {
  if (!IsInitialized(instance)) return false;
  ASSIGN_OR_RETURN(ProcessResult result,
                   RunServerTool(user, {PgTool("pg_ctl"), "-D",
                                        instance.data_dir, "status"}));
  // pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
  switch (result.exit_code) {
    case 0:
      return true;
    case 3:
    case 4:
      return false;
    default:
      return absl::FailedPreconditionError(ToolFailure(
          absl::StrCat("pg_ctl status for ", Label(instance)), result));
  }
}

// The port a running server listens on: line 4 of postmaster.pid.
absl::StatusOr<int> RunningPort(const DevInstance& instance) {
  ASSIGN_OR_RETURN(std::string pid_file,
                   ReadFile(fs::path(instance.data_dir) / "postmaster.pid"));
  std::vector<std::string> lines = absl::StrSplit(pid_file, '\n');
  int port = 0;
  if (lines.size() < 4 || !absl::SimpleAtoi(lines[3], &port)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot tell which port ", Label(instance),
                     " listens on from ", instance.data_dir,
                     "/postmaster.pid; stop it with `shardctl dev down`"));
  }
  return port;
}

absl::Status InitDb(const ServerUser& user, const DevInstance& instance) {
  std::error_code ec;
  fs::create_directories(instance.data_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", instance.data_dir, ": ", ec.message(),
                     "; choose a directory you can write with --dir"));
  }
  fs::permissions(instance.data_dir, fs::perms::owner_all, ec);
  RETURN_IF_ERROR(ChownToServerUser(user, instance.data_dir));
  // --no-sync: throwaway dev data, and it halves initdb's time.
  ASSIGN_OR_RETURN(
      ProcessResult result,
      RunServerTool(user, {PgTool("initdb"), "-D", instance.data_dir,
                           "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                           "--locale=C", "--no-sync", "--no-instructions"}));
  if (result.exit_code != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        ToolFailure(absl::StrCat("initdb for shard ", instance.name), result),
        "; if ", instance.data_dir,
        " holds nothing you need, remove it and run again"));
  }
  return absl::OkStatus();
}

// Writes `content` to `path` through a temporary file and rename, so that a
// reader sees the old or the new file, never half of one.
absl::Status WriteFileAtomically(const fs::path& path,
                                 absl::string_view content,
                                 const ServerUser* owner = nullptr) {
  fs::path temp = path;
  temp += absl::StrCat(".tmp", getpid());
  ScopedFd fd(
      open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return ErrnoError(errno, absl::StrCat("cannot write ", temp.string()));
  }
  for (size_t done = 0; done < content.size();) {
    ssize_t n = write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      unlink(temp.c_str());
      return ErrnoError(err, absl::StrCat("cannot write ", temp.string()));
    }
    done += n;
  }
  if (owner != nullptr && owner->switch_user) {
    if (fchown(fd.get(), owner->uid, owner->gid) != 0) {
      int err = errno;
      unlink(temp.c_str());
      return ErrnoError(err, absl::StrCat("cannot chown ", temp.string()));
    }
  }
  if (fsync(fd.get()) != 0 || rename(temp.c_str(), path.c_str()) != 0) {
    int err = errno;
    unlink(temp.c_str());
    return ErrnoError(err, absl::StrCat("cannot write ", path.string()));
  }
  return absl::OkStatus();
}

// With `replication`, a primary can serve streaming replicas and a replica
// answers reads while it replays (PostgreSQL 15's defaults, made explicit
// and kept should those change), and the primary keeps WAL for a replica
// that was stopped a while.
constexpr char kReplicationSettings[] =
    "wal_level = replica\n"
    "max_wal_senders = 10\n"
    "wal_keep_size = '512MB'\n"
    "hot_standby = on\n";

std::string SettingsFileText(const DevInstance& instance,
                             const std::vector<std::string>& extra_settings,
                             bool replication) {
  std::string text = absl::StrFormat(
      "# Written by `shardctl dev up` on every run: edits here are lost.\n"
      "# A throwaway development instance: durability is off (fsync,\n"
      "# synchronous_commit, full_page_writes), so a machine crash may\n"
      "# corrupt it. Never use these settings for data you need.\n"
      "listen_addresses = '127.0.0.1'\n"
      "port = %d\n"
      "unix_socket_directories = ''\n"
      "max_prepared_transactions = 64\n"
      "max_connections = 100\n"
      "fsync = off\n"
      "synchronous_commit = off\n"
      "full_page_writes = off\n"
      "logging_collector = off\n",
      instance.port);
  if (replication) absl::StrAppend(&text, kReplicationSettings);
  for (const std::string& line : extra_settings) {
    absl::StrAppend(&text, line, "\n");
  }
  return text;
}

// Our settings live in their own file so that Up can rewrite them without
// editing the rest of postgresql.conf; postgresql.conf includes it last.
absl::Status WriteSettings(const ServerUser& user, const DevInstance& instance,
                           const std::vector<std::string>& extra_settings,
                           bool replication) {
  fs::path data_dir(instance.data_dir);
  RETURN_IF_ERROR(WriteFileAtomically(
      data_dir / kSettingsFile,
      SettingsFileText(instance, extra_settings, replication), &user));
  fs::path conf = data_dir / "postgresql.conf";
  ASSIGN_OR_RETURN(std::string text, ReadFile(conf));
  if (absl::StrContains(text, kIncludeLine)) return absl::OkStatus();
  std::ofstream out(conf, std::ios::app | std::ios::binary);
  out << "\n# shardctl dev up: its settings, which override the above.\n"
      << kIncludeLine << "\n";
  out.close();
  if (!out) {
    return ErrnoError(errno, absl::StrCat("cannot append to ", conf.string()));
  }
  return absl::OkStatus();
}

absl::Status EnsureLogFile(const ServerUser& user,
                           const DevInstance& instance) {
  ScopedFd fd(open(instance.log_file.c_str(),
                   O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return ErrnoError(
        errno, absl::StrCat("cannot create the log ", instance.log_file));
  }
  if (user.switch_user && fchown(fd.get(), user.uid, user.gid) != 0) {
    return ErrnoError(errno, absl::StrCat("cannot chown ", instance.log_file));
  }
  return absl::OkStatus();
}

absl::Status StartServer(const ServerUser& user, const DevInstance& instance) {
  ASSIGN_OR_RETURN(bool in_use, PortInUse(instance.port));
  if (in_use) return absl::FailedPreconditionError(PortInUseMessage(instance));
  RETURN_IF_ERROR(EnsureLogFile(user, instance));
  std::error_code ec;
  std::streamoff log_start =
      static_cast<std::streamoff>(fs::file_size(instance.log_file, ec));
  if (ec) log_start = 0;
  ASSIGN_OR_RETURN(
      ProcessResult result,
      RunServerTool(user, {PgTool("pg_ctl"), "-D", instance.data_dir, "-l",
                           instance.log_file, "-w", "-t", "30", "start"}));
  if (result.exit_code == 0) return absl::OkStatus();
  std::string log = ReadFile(instance.log_file, log_start).value_or("");
  if (absl::StrContains(log, "Address already in use")) {
    return absl::FailedPreconditionError(PortInUseMessage(instance));
  }
  return absl::FailedPreconditionError(absl::StrCat(
      ToolFailure(absl::StrCat("starting ", Label(instance)), result),
      "; server log (", instance.log_file, "): ", Tail(log)));
}

absl::Status StopServer(const ServerUser& user, const DevInstance& instance) {
  ASSIGN_OR_RETURN(
      ProcessResult result,
      RunServerTool(user, {PgTool("pg_ctl"), "-D", instance.data_dir, "-m",
                           "fast", "-w", "-t", "60", "stop"}));
  if (result.exit_code == 0) return absl::OkStatus();
  // It may have stopped between our status check and the stop.
  ASSIGN_OR_RETURN(bool running, IsRunningAs(user, instance));
  if (!running) return absl::OkStatus();
  return absl::FailedPreconditionError(
      ToolFailure(absl::StrCat("stopping ", Label(instance)), result));
}

// Checks, before Up changes anything, that `instance` can be brought up: a
// running server listens where asked, a stopped one's port is free. Returns
// whether it is running.
absl::StatusOr<bool> CheckInstance(const ServerUser& user,
                                   const DevClusterOptions& options,
                                   const DevInstance& instance) {
  ASSIGN_OR_RETURN(bool running, IsRunningAs(user, instance));
  if (!running) {
    ASSIGN_OR_RETURN(bool in_use, PortInUse(instance.port));
    if (in_use) {
      return absl::FailedPreconditionError(PortInUseMessage(instance));
    }
    return false;
  }
  ASSIGN_OR_RETURN(int port, RunningPort(instance));
  if (port != instance.port) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s (%s) is already running on port %d, not %d as asked; "
        "pass --port %d, or stop the cluster first with `shardctl dev down "
        "--dir %s`",
        Label(instance), instance.data_dir, port, instance.port,
        port - (instance.port - options.base_port), options.dir));
  }
  return true;
}

// The pg_hba.conf line that lets the replicas stream from a primary.
constexpr char kReplicationHbaLine[] =
    "host    replication     all             127.0.0.1/32            trust";

// initdb --auth=trust already allows replication from 127.0.0.1; a
// pg_hba.conf edited since may not: adds the line then.
absl::Status EnsureReplicationHba(const DevInstance& primary) {
  fs::path hba = fs::path(primary.data_dir) / "pg_hba.conf";
  ASSIGN_OR_RETURN(std::string text, ReadFile(hba));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (fields.size() >= 5 && fields[0] == "host" &&
        fields[1] == "replication" && fields[2] == "all" &&
        fields[3] == "127.0.0.1/32" && fields[4] == "trust") {
      return absl::OkStatus();
    }
  }
  // Appending keeps the file's owner (the server's user).
  std::ofstream out(hba, std::ios::app | std::ios::binary);
  out << "\n# shardctl dev up --replicas: streaming replicas on loopback.\n"
      << kReplicationHbaLine << "\n";
  out.close();
  if (!out) {
    return ErrnoError(errno, absl::StrCat("cannot append to ", hba.string()));
  }
  return absl::OkStatus();
}

// Makes a running server re-read its configuration files.
absl::Status ReloadServer(const ServerUser& user, const DevInstance& instance) {
  ASSIGN_OR_RETURN(ProcessResult result,
                   RunServerTool(user, {PgTool("pg_ctl"), "-D",
                                        instance.data_dir, "reload"}));
  if (result.exit_code == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(
      ToolFailure(absl::StrCat("reloading ", Label(instance)), result));
}

// Copies the running `primary` into `replica`'s data directory with
// pg_basebackup -R (standby.signal, primary_conninfo), over a streaming
// replication connection on loopback.
absl::Status BaseBackup(const ServerUser& user, const DevInstance& primary,
                        const DevInstance& replica) {
  std::error_code ec;
  fs::create_directories(replica.data_dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", replica.data_dir, ": ", ec.message(),
                     "; choose a directory you can write with --dir"));
  }
  fs::permissions(replica.data_dir, fs::perms::owner_all, ec);
  RETURN_IF_ERROR(ChownToServerUser(user, replica.data_dir));
  // --no-sync as initdb's: throwaway dev data. --checkpoint=fast: do not
  // wait for the primary's next checkpoint.
  ASSIGN_OR_RETURN(
      ProcessResult result,
      RunServerTool(user, {PgTool("pg_basebackup"), "-h", "127.0.0.1", "-p",
                           absl::StrCat(primary.port), "-U", kServerUser, "-D",
                           replica.data_dir, "-R", "-X", "stream",
                           "--checkpoint=fast", "--no-sync"}));
  if (result.exit_code != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        ToolFailure(absl::StrCat("pg_basebackup of ", Label(primary), " for ",
                                 Label(replica)),
                    result),
        "; see ", primary.log_file));
  }
  return absl::OkStatus();
}

// Creates and starts one instance as far as needed; sets created/started.
absl::Status BringUp(const ServerUser& user, const DevClusterOptions& options,
                     bool running, DevInstance& instance) {
  if (!IsInitialized(instance)) {
    RETURN_IF_ERROR(InitDb(user, instance));
    instance.created = true;
  }
  RETURN_IF_ERROR(WriteSettings(user, instance, options.extra_settings,
                                options.replicas > 0));
  RETURN_IF_ERROR(EnsureLogFile(user, instance));
  if (options.replicas > 0) {
    RETURN_IF_ERROR(EnsureReplicationHba(instance));
    // A server that ran already takes the new pg_hba.conf and
    // wal_keep_size now; wal_level and max_wal_senders need a restart, and
    // PostgreSQL 15's defaults already allow streaming.
    if (running) RETURN_IF_ERROR(ReloadServer(user, instance));
  }
  if (!running) {
    RETURN_IF_ERROR(StartServer(user, instance));
    instance.started = true;
  }
  return absl::OkStatus();
}

// Creates (from its running primary) and starts one replica as far as
// needed; sets created/started.
absl::Status BringUpReplica(const ServerUser& user,
                            const DevClusterOptions& options,
                            const DevInstance& primary, bool running,
                            DevInstance& replica) {
  if (!IsInitialized(replica)) {
    RETURN_IF_ERROR(BaseBackup(user, primary, replica));
    replica.created = true;
  }
  RETURN_IF_ERROR(WriteSettings(user, replica, options.extra_settings,
                                /*replication=*/true));
  RETURN_IF_ERROR(EnsureLogFile(user, replica));
  if (!running) {
    RETURN_IF_ERROR(StartServer(user, replica));
    replica.started = true;
  }
  return absl::OkStatus();
}

// Runs `work(i)` for every i in [0, n) on a few threads and returns the
// first error in index order. The work is mostly child processes (initdb
// takes a core for ~0.6 s), so more threads than about twice the cores only
// add memory pressure for 64 shards.
template <typename Work>
absl::Status ForEachInParallel(size_t n, Work work) {
  std::vector<absl::Status> statuses(n);
  std::atomic<size_t> next{0};
  size_t workers = std::min<size_t>(
      n, std::max<size_t>(4, 2 * std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  threads.reserve(workers);
  for (size_t t = 0; t < workers; ++t) {
    threads.emplace_back([&] {
      for (size_t i = next++; i < n; i = next++) statuses[i] = work(i);
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (absl::Status& status : statuses) {
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

std::string QuoteIdentifier(absl::string_view name) {
  return absl::StrCat("\"", absl::StrReplaceAll(name, {{"\"", "\"\""}}), "\"");
}

absl::Status EnsureDatabases(const std::vector<DevInstance>& instances,
                             const std::string& database) {
  std::vector<internal::ShardTask> lookups;
  for (size_t i = 0; i < instances.size(); ++i) {
    internal::ShardTask task;
    task.shard = static_cast<ShardId>(i);
    task.shard_name = instances[i].name;
    task.dsn = InstanceDsn(instances[i].port, "postgres");
    task.sql = "SELECT 1 FROM pg_database WHERE datname = $1";
    task.params = {database};
    lookups.push_back(std::move(task));
  }
  std::vector<internal::TaskOutcome> found =
      internal::RunOnShards(lookups, internal::ExecOptions());
  std::vector<internal::ShardTask> creates;
  for (size_t i = 0; i < found.size(); ++i) {
    RETURN_IF_ERROR(found[i].status);
    if (!found[i].result.rows.empty()) continue;
    internal::ShardTask task = lookups[i];
    task.sql = absl::StrCat("CREATE DATABASE ", QuoteIdentifier(database));
    task.params.clear();
    creates.push_back(std::move(task));
  }
  for (const internal::TaskOutcome& outcome :
       internal::RunOnShards(creates, internal::ExecOptions())) {
    // 42P04 duplicate_database: another Up created it meanwhile.
    if (!outcome.status.ok() &&
        SqlStateOf(outcome.status) != "42P04") {
      return outcome.status;
    }
  }
  return absl::OkStatus();
}

std::string TomlString(absl::string_view value);

// The `shards = [...]` line of [distributions.users] in a shards.toml that
// `dev up` wrote before, if any.
std::optional<std::string> PreviousUsersShards(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  bool in_users = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '[') {
      in_users = line == "[distributions.users]";
    } else if (in_users && absl::StartsWith(line, "shards = [")) {
      return line;
    }
  }
  return std::nullopt;
}

std::string ShardsToml(const std::vector<DevInstance>& instances,
                       const std::optional<DevInstance>& catalog,
                       const std::optional<std::string>& previous_shards) {
  std::string text = absl::StrFormat(
      "# Written by `shardctl dev up`: %d local PostgreSQL instances on "
      "loopback.\n",
      instances.size());
  if (!instances.empty() && !instances.front().replicas.empty()) {
    const size_t replicas = instances.front().replicas.size();
    absl::StrAppendFormat(&text,
                          "# Each shard has %d streaming replica%s "
                          "(pg_basebackup -R), listed under `replicas`.\n",
                          replicas, replicas == 1 ? "" : "s");
  }
  absl::StrAppend(&text, ShardsTomlSection(instances));
  std::vector<std::string> names;
  for (const DevInstance& instance : instances) {
    names.push_back(absl::StrCat("\"", instance.name, "\""));
  }
  // A cluster that grows keeps its placement: the keys stay where they
  // are, and the new shards own nothing until data moves onto them.
  std::string shards_line =
      absl::StrCat("shards = [", absl::StrJoin(names, ", "), "]");
  // (Only when every shard it names is still there: --shards may shrink
  // a cluster that holds no data.)
  bool previous_fits = previous_shards.has_value();
  if (previous_fits) {
    const std::vector<std::string> quoted =
        absl::StrSplit(*previous_shards, '"');
    for (size_t i = 1; i < quoted.size(); i += 2) {
      previous_fits &= std::any_of(
          instances.begin(), instances.end(),
          [&](const DevInstance& d) { return d.name == quoted[i]; });
    }
  }
  if (previous_fits && *previous_shards != shards_line) {
    absl::StrAppend(&text,
                    "# Shards added since the data was placed own nothing "
                    "yet: `shardctl rebalance -c\n# <this file>` moves data "
                    "onto them (it needs the [catalog]: dev up --catalog).\n");
    shards_line = *previous_shards;
  }
  absl::StrAppend(&text,
                  "[distributions.users]\n"
                  "strategy = \"hash\"\n"
                  "key_type = \"int8\"\n",
                  shards_line,
                  "\n"
                  "\n"
                  "[tables.users]\n"
                  "distribution = \"users\"\n"
                  "key = \"id\"\n"
                  "\n"
                  "[tables.orders]\n"
                  "distribution = \"users\"\n"
                  "key = \"user_id\"\n"
                  "\n"
                  "[tables.countries]\n"
                  "reference = true\n");
  if (catalog) {
    absl::StrAppend(&text,
                    "\n# The live shard map (failovers), leases and the "
                    "two-phase commit log,\n# on an instance of its own so "
                    "that a shard's failover keeps it.\n[catalog]\ndsn = ",
                    TomlString(catalog->dsn), "\n");
  }
  return text;
}

bool IsPlainIdentifier(absl::string_view name) {
  if (name.empty() || name.size() > 63) return false;
  if (!absl::ascii_isalpha(name[0]) && name[0] != '_') return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return absl::ascii_isalnum(c) || c == '_'; });
}

// The ports the instances of `options` take: the shards', then the
// replicas'.
int PortCount(const DevClusterOptions& options) {
  return options.shards * (1 + options.replicas);
}

// Replica j's of all shards follow replica j - 1's, so that a replica
// keeps its port when --replicas grows.
int ReplicaPort(const DevClusterOptions& options, int shard, int replica) {
  return options.base_port + replica * options.shards + (shard - 1);
}

absl::Status ValidateOptions(const DevClusterOptions& options) {
  if (options.dir.empty()) {
    return absl::InvalidArgumentError(
        "no directory for the dev cluster; pass one with --dir");
  }
  if (options.shards < 1 || options.shards > kMaxShards) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a dev cluster has 1 to %d shards, not %d; change --shards", kMaxShards,
        options.shards));
  }
  if (options.replicas < 0 || options.replicas > kMaxReplicas) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "a dev cluster has 0 to %d replicas per shard, not %d; change "
        "--replicas",
        kMaxReplicas, options.replicas));
  }
  int last_port = options.base_port + PortCount(options) - 1;
  int first_port = options.WithCatalog() ? CatalogPort(options.base_port)
                                         : options.base_port;
  if (first_port < kMinPort || last_port > kMaxPort) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ports %d..%d are outside %d..%d; choose another --port", first_port,
        last_port, kMinPort, kMaxPort));
  }
  if (options.synchronous && options.replicas < 1) {
    return absl::InvalidArgumentError(
        "--sync needs replicas to wait for; add --replicas (2 or more keep a "
        "shard writable after a failover)");
  }
  if (!IsPlainIdentifier(options.database)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "database name '%s' is not a plain identifier; choose one (--database) "
        "of letters, digits and underscores, at most 63, not starting with a "
        "digit",
        absl::CEscape(options.database)));
  }
  for (const std::string& line : options.extra_settings) {
    if (line.find_first_of("\r\n") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("an extra PostgreSQL setting spans several lines: '",
                       absl::CEscape(line), "'; give one setting per entry"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<fs::path> AbsoluteDir(const std::string& dir) {
  std::error_code ec;
  fs::path path = fs::absolute(dir, ec);
  if (ec) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resolve directory ", dir, ": ", ec.message()));
  }
  path = path.lexically_normal();
  if (path.has_parent_path() && !path.has_filename()) {
    path = path.parent_path();  // drop a trailing slash
  }
  return path;
}

// The instances under `dir` with a data directory: shards s1, s2, ... and
// replicas s1-r1, ..., in shard order, each shard's replicas after it.
std::vector<DevInstance> FindInstances(const fs::path& dir) {
  std::vector<std::pair<std::pair<int, int>, DevInstance>> found;
  std::error_code ec;
  for (const fs::directory_entry& entry : fs::directory_iterator(dir, ec)) {
    std::string name = entry.path().filename().string();
    if (name == kCatalogName) {
      DevInstance catalog = DescribeCatalog(dir, 0, "postgres");
      // Sorted after every shard: stopped with the primaries.
      if (IsInitialized(catalog)) {
        found.emplace_back(std::make_pair(kMaxShards + 1, 0), catalog);
      }
      continue;
    }
    std::vector<std::string> parts = absl::StrSplit(name, "-r");
    int index = 0;
    int replica = 0;
    if (parts.size() > 2 || parts[0].size() < 2 || parts[0][0] != 's' ||
        !absl::SimpleAtoi(parts[0].substr(1), &index) || index < 1 ||
        (parts.size() == 2 &&
         (!absl::SimpleAtoi(parts[1], &replica) || replica < 1))) {
      continue;
    }
    DevInstance instance =
        replica == 0 ? DescribeInstance(dir, index, 0, "postgres")
                     : DescribeReplica(dir, index, replica, 0, "postgres");
    if (instance.name != name) continue;  // "s01", "s1-r+1", ...
    if (IsInitialized(instance)) {
      found.emplace_back(std::make_pair(index, replica), instance);
    }
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<DevInstance> instances;
  for (auto& [index, instance] : found) instances.push_back(instance);
  return instances;
}

// `value` as a TOML basic string, quotes included.
std::string TomlString(absl::string_view value) {
  std::string out = "\"";
  for (char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      absl::StrAppendFormat(&out, "\\u%04X",
                            static_cast<int>(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  out += '"';
  return out;
}

}  // namespace

int CatalogPort(int base_port) { return base_port - 1; }

std::string InstanceDsn(int port, const std::string& database) {
  return absl::StrFormat("host=127.0.0.1 port=%d dbname=%s user=postgres", port,
                         database);
}

std::string ShardsTomlSection(const std::vector<DevInstance>& instances) {
  std::string text;
  for (const DevInstance& instance : instances) {
    absl::StrAppend(&text, "[shards.", instance.name,
                    "]\ndsn = ", TomlString(instance.dsn), "\n");
    if (!instance.replicas.empty()) {
      std::vector<std::string> entries;
      for (const DevInstance& replica : instance.replicas) {
        entries.push_back(
            absl::StrCat("{ dsn = ", TomlString(replica.dsn), " }"));
      }
      absl::StrAppend(&text, "replicas = [ ",
                      absl::StrJoin(entries, ",\n             "), " ]\n");
    }
    absl::StrAppend(&text, "\n");
  }
  return text;
}

absl::StatusOr<DevCluster> Up(const DevClusterOptions& options) {
  RETURN_IF_ERROR(ValidateOptions(options));
  RETURN_IF_ERROR(CheckPostgresInstalled());
  ASSIGN_OR_RETURN(ServerUser user, CurrentServerUser());
  ASSIGN_OR_RETURN(fs::path dir, AbsoluteDir(options.dir));
  RETURN_IF_ERROR(CheckServerUserCanReach(user, dir));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", dir.string(), ": ", ec.message(),
                     "; choose a directory you can write with --dir"));
  }
  RETURN_IF_ERROR(CheckServerUserCanReach(user, dir));

  DevCluster cluster;
  cluster.dir = dir.string();
  cluster.config_path = (dir / "shards.toml").string();
  for (int i = 1; i <= options.shards; ++i) {
    DevInstance primary =
        DescribeInstance(dir, i, options.base_port + i - 1, options.database);
    for (int j = 1; j <= options.replicas; ++j) {
      primary.replicas.push_back(DescribeReplica(
          dir, i, j, ReplicaPort(options, i, j), options.database));
    }
    cluster.instances.push_back(std::move(primary));
  }
  if (options.WithCatalog()) {
    cluster.catalog = DescribeCatalog(dir, CatalogPort(options.base_port),
                                      options.database);
  }
  // Synchronous replication is for the shards' primaries (and the replicas
  // one of which becomes primary), never the catalog.
  DevClusterOptions shard_options = options;
  if (options.synchronous) {
    shard_options.extra_settings.push_back("synchronous_commit = on");
    shard_options.extra_settings.push_back(
        "synchronous_standby_names = 'ANY 1 (*)'");
  }
  DevClusterOptions catalog_options = options;
  catalog_options.replicas = 0;
  size_t n = cluster.instances.size();
  // Every replica, with the index of its primary in cluster.instances.
  std::vector<std::pair<size_t, DevInstance*>> replicas;
  for (size_t i = 0; i < n; ++i) {
    for (DevInstance& replica : cluster.instances[i].replicas) {
      replicas.emplace_back(i, &replica);
    }
  }
  std::vector<char> running(n, false);  // not vector<bool>: written in parallel
  std::vector<char> replica_running(replicas.size(), false);
  RETURN_IF_ERROR(ForEachInParallel(n, [&](size_t i) -> absl::Status {
    ASSIGN_OR_RETURN(running[i],
                     CheckInstance(user, options, cluster.instances[i]));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(
      ForEachInParallel(replicas.size(), [&](size_t k) -> absl::Status {
        ASSIGN_OR_RETURN(replica_running[k],
                         CheckInstance(user, options, *replicas[k].second));
        return absl::OkStatus();
      }));
  bool catalog_running = false;
  if (cluster.catalog) {
    ASSIGN_OR_RETURN(catalog_running,
                     CheckInstance(user, options, *cluster.catalog));
  }
  RETURN_IF_ERROR(ForEachInParallel(n, [&](size_t i) {
    return BringUp(user, shard_options, running[i], cluster.instances[i]);
  }));
  std::vector<DevInstance> with_database = cluster.instances;
  if (cluster.catalog) {
    RETURN_IF_ERROR(
        BringUp(user, catalog_options, catalog_running, *cluster.catalog));
    with_database.push_back(*cluster.catalog);
  }
  RETURN_IF_ERROR(EnsureDatabases(with_database, options.database));
  // After the databases, so that the replicas' copies hold them.
  RETURN_IF_ERROR(ForEachInParallel(replicas.size(), [&](size_t k) {
    const auto& [primary, replica] = replicas[k];
    return BringUpReplica(user, shard_options, cluster.instances[primary],
                          replica_running[k], *replica);
  }));
  RETURN_IF_ERROR(WriteFileAtomically(
      cluster.config_path,
      ShardsToml(cluster.instances, cluster.catalog,
                 PreviousUsersShards(cluster.config_path))));
  return cluster;
}

absl::StatusOr<DownResult> Down(const std::string& dir) {
  ASSIGN_OR_RETURN(fs::path path, AbsoluteDir(dir));
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    return absl::NotFoundError(absl::StrCat(
        "no dev cluster at ", path.string(),
        " (no such directory); pass the --dir given to `shardctl dev up`"));
  }
  RETURN_IF_ERROR(CheckPostgresInstalled());
  ASSIGN_OR_RETURN(ServerUser user, CurrentServerUser());
  std::vector<DevInstance> instances = FindInstances(path);
  std::vector<char> stopped(instances.size(), false);  // written in parallel
  // Replicas first: a primary stopped before its replicas leaves them
  // retrying to connect, filling their logs.
  for (bool replicas : {true, false}) {
    RETURN_IF_ERROR(ForEachInParallel(instances.size(), [&](size_t i) {
      if (instances[i].replica_of.empty() == replicas) return absl::OkStatus();
      ASSIGN_OR_RETURN(bool running, IsRunningAs(user, instances[i]));
      if (!running) return absl::OkStatus();
      RETURN_IF_ERROR(StopServer(user, instances[i]));
      stopped[i] = true;
      return absl::OkStatus();
    }));
  }
  DownResult result;
  result.dir = path.string();
  for (size_t i = 0; i < instances.size(); ++i) {
    if (stopped[i]) result.stopped.push_back(instances[i].name);
  }
  return result;
}

absl::Status StopInstance(const DevInstance& instance) {
  RETURN_IF_ERROR(CheckPostgresInstalled());
  ASSIGN_OR_RETURN(ServerUser user, CurrentServerUser());
  ASSIGN_OR_RETURN(bool running, IsRunningAs(user, instance));
  if (!running) return absl::OkStatus();
  return StopServer(user, instance);
}

absl::Status StartInstance(const DevInstance& instance) {
  RETURN_IF_ERROR(CheckPostgresInstalled());
  ASSIGN_OR_RETURN(ServerUser user, CurrentServerUser());
  if (!IsInitialized(instance)) {
    return absl::FailedPreconditionError(
        absl::StrCat(Label(instance), " has no data directory at ",
                     instance.data_dir, "; create it with `shardctl dev up`"));
  }
  ASSIGN_OR_RETURN(bool running, IsRunningAs(user, instance));
  if (running) return absl::OkStatus();
  return StartServer(user, instance);
}

absl::StatusOr<bool> IsRunning(const DevInstance& instance) {
  RETURN_IF_ERROR(CheckPostgresInstalled());
  ASSIGN_OR_RETURN(ServerUser user, CurrentServerUser());
  return IsRunningAs(user, instance);
}

}  // namespace shardkit::dev
