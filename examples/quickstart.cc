// quickstart: statements through the router, from a program built against
// the installed library.
//
//   shardctl dev up --shards 3 --dir /tmp/shardkit-dev
//   quickstart /tmp/shardkit-dev/shards.toml
//
// It takes the shards of SHARDS.TOML, and shards a table of its own,
// `quickstart_accounts` (dropped and created afresh), by hash of its id
// over all of them; it spreads rows over the shards, and runs a point
// query, a cross-shard aggregate, a transfer between accounts on different
// shards in one transaction (two-phase commit), and a streamed
// cross-shard ORDER BY.

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "shardkit/cluster.h"
#include "shardkit/config.h"

namespace {

// Prints a result's rows, one line each, values separated by " | ".
void Print(const shardkit::Result& result) {
  for (const shardkit::Row& row : result.rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      if (i > 0) line += " | ";
      line += row[i].value_or("NULL");
    }
    std::cout << "  " << line << "\n";
  }
}

// `text` as a TOML basic string.
std::string TomlString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

absl::Status Run(const std::string& path) {
  // The shards of the given file, and a map of our own over them.
  absl::StatusOr<shardkit::Config> given = shardkit::LoadConfig(path);
  if (!given.ok()) return given.status();
  std::string toml;
  std::string names;
  for (const shardkit::Shard& shard : given->map.shards()) {
    toml += "[shards." + shard.name + "]\ndsn = " + TomlString(shard.dsn) + "\n";
    names += (names.empty() ? "" : ", ") + TomlString(shard.name);
  }
  toml += "[distributions.accounts]\nstrategy = \"hash\"\nkey_type = \"int8\"\n"
          "shards = [" + names + "]\n"
          "[tables.quickstart_accounts]\ndistribution = \"accounts\"\nkey = \"id\"\n";
  absl::StatusOr<shardkit::Config> config = shardkit::ParseConfig(toml, "quickstart");
  if (!config.ok()) return config.status();
  absl::StatusOr<std::unique_ptr<shardkit::Cluster>> opened =
      shardkit::Cluster::Open(*std::move(config));
  if (!opened.ok()) return opened.status();
  const shardkit::Cluster& cluster = **opened;

  for (const char* ddl : {"DROP TABLE IF EXISTS quickstart_accounts",
                          "CREATE TABLE quickstart_accounts (id int8 PRIMARY KEY, "
                          "name text, balance int8 NOT NULL CHECK (balance >= 0))"}) {
    absl::StatusOr<shardkit::Result> r = cluster.Execute(ddl);
    if (!r.ok()) return r.status();
  }
  absl::StatusOr<shardkit::Result> r = cluster.Execute(
      "INSERT INTO quickstart_accounts (id, name, balance) VALUES (1, 'ada', 100), "
      "(2, 'bob', 100), (3, 'cy', 100), (4, 'dee', 100), (5, 'eve', 100)");
  if (!r.ok()) return r.status();
  std::cout << r->command_tag << " (on " << r->shards.size() << " shards)\n";

  r = cluster.Execute("SELECT name FROM quickstart_accounts WHERE id = $1", {"3"});
  if (!r.ok()) return r.status();
  std::cout << "account 3 (one shard):\n";
  Print(*r);

  r = cluster.Execute("SELECT count(*), sum(balance) FROM quickstart_accounts");
  if (!r.ok()) return r.status();
  std::cout << "count and sum over every shard:\n";
  Print(*r);

  // A transfer from account 1 to an account on another shard: both change
  // or neither does.
  const std::shared_ptr<const shardkit::ShardMap> map = cluster.map();
  auto shard_of = [&](int64_t id) {
    return map->Place("quickstart_accounts", shardkit::Key::Integer(id))->shard;
  };
  int64_t to = 2;
  while (to < 5 && shard_of(to) == shard_of(1)) ++to;
  absl::StatusOr<std::unique_ptr<shardkit::Transaction>> txn = cluster.Begin();
  if (!txn.ok()) return txn.status();
  for (const auto& [id, delta] : std::vector<std::pair<std::string, std::string>>{
           {"1", "-30"}, {std::to_string(to), "30"}}) {
    r = (*txn)->Execute(
        "UPDATE quickstart_accounts SET balance = balance + $2 WHERE id = $1",
        {id, delta});
    if (!r.ok()) return r.status();
  }
  const size_t participants = (*txn)->participants().size();
  if (absl::Status committed = (*txn)->Commit(); !committed.ok()) {
    return committed;
  }
  std::cout << "moved 30 from account 1 to account " << to
            << ", a transaction on " << participants
            << (participants == 1 ? " shard\n" : " shards\n");

  // Rows one at a time, in bounded memory, merged across the shards.
  absl::StatusOr<shardkit::RowStream> rows =
      cluster.Stream("SELECT id, name, balance FROM quickstart_accounts ORDER BY balance DESC, id");
  if (!rows.ok()) return rows.status();
  std::cout << "every account by balance (streamed):\n";
  shardkit::Row row;
  while (true) {
    absl::StatusOr<bool> more = rows->Next(&row);
    if (!more.ok()) return more.status();
    if (!*more) break;
    std::cout << "  " << *row[0] << " | " << *row[1] << " | " << *row[2] << "\n";
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: quickstart SHARDS.TOML\n";
    return 2;
  }
  absl::Status status = Run(argv[1]);
  if (!status.ok()) {
    std::cerr << "quickstart: " << status.message() << "\n";
    return 1;
  }
  return 0;
}
