// where_is: prints which shard owns each key of a table.
//
//   where_is shards.toml users 1 2 42
//
// Built against the installed library (see CMakeLists.txt here).

#include <iostream>
#include <string>

#include "shardkit/config.h"
#include "shardkit/key.h"
#include "shardkit/shard_map.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: where_is CONFIG TABLE KEY...\n";
    return 2;
  }
  absl::StatusOr<shardkit::Config> config = shardkit::LoadConfig(argv[1]);
  if (!config.ok()) {
    std::cerr << config.status().message() << "\n";
    return 1;
  }
  const shardkit::ShardMap& map = config->map;
  const shardkit::Table* table = map.FindTable(argv[2]);
  if (table == nullptr || table->reference) {
    std::cerr << "where_is: " << argv[2] << " is not a sharded table\n";
    return 1;
  }
  const shardkit::Distribution& dist = map.DistributionOf(*table);
  for (int i = 3; i < argc; ++i) {
    absl::StatusOr<shardkit::Key> key =
        shardkit::Key::Parse(dist.key_type(), argv[i]);
    if (!key.ok()) {
      std::cerr << key.status().message() << "\n";
      return 1;
    }
    absl::StatusOr<shardkit::Placement> where = dist.Place(*key);
    if (!where.ok()) {
      std::cerr << where.status().message() << "\n";
      return 1;
    }
    std::cout << table->name << " " << key->ToString() << " -> "
              << map.shard(where->shard).name;
    if (where->hash) std::cout << " (hash " << shardkit::FormatHash(*where->hash) << ")";
    std::cout << "\n";
  }
  return 0;
}
