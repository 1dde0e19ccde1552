#!/usr/bin/env bash
# The shardkit demo, on a fresh Debian 12 machine (as root): installs what is
# missing, builds shardctl, starts three local PostgreSQL shards and a
# catalog, loads sample data on the shards that own it, and shows the map and
# where keys live; adds a fourth shard and rebalances onto it online while a
# workload keeps writing; then a second cluster with streaming replicas,
# whose primary is killed under writes and replaced by a replica.
#
#   SHARDKIT_DEMO_DIR (default /tmp/shardkit-demo)  where the shards live
#   SHARDKIT_DEMO_PORT (default 6001)               port of shard s1
#
# Stop the shards with: build/shardctl dev down --dir /tmp/shardkit-demo
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${SHARDKIT_DEMO_DIR:-/tmp/shardkit-demo}
port=${SHARDKIT_DEMO_PORT:-6001}
shards=3
users=1000
orders=3000

step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

step "Build (installs missing Debian packages first)"
scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target shardctl shardkit_pg
shardctl=build/shardctl
cfg=$dir/shards.toml

step "Start $shards PostgreSQL shards and a catalog on 127.0.0.1"
# Afresh on every run: the demo grows the cluster to 4 shards further on,
# and the catalog remembers where every slice went.
if [[ -d $dir ]]; then
  $shardctl dev down --dir "$dir" >/dev/null
  rm -rf "$dir"
fi
show $shardctl dev up --shards $shards --catalog --dir "$dir" --port "$port"

step "The shard map"
show $shardctl validate -c "$cfg"
show $shardctl map show -c "$cfg"

step "Create the tables on every shard"
show $shardctl exec -c "$cfg" --all "
  CREATE TABLE IF NOT EXISTS users (id int8 PRIMARY KEY, name text NOT NULL, country text NOT NULL);
  CREATE TABLE IF NOT EXISTS orders (id int8, user_id int8 NOT NULL, amount numeric(10,2) NOT NULL,
                                     PRIMARY KEY (user_id, id));
  CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY, name text NOT NULL);
  TRUNCATE users, orders, countries"

step "Load $users users through the router, $orders orders with shardctl load"
# shardctl sql --stdin runs one statement per line through one open cluster;
# each INSERT's rows are split by key and every row lands on the shard that
# owns it. The reference table countries gets the same rows on every shard.
codes=(de fr us jp br)
{
  for ((start = 1; start <= users; start += 250)); do
    rows=()
    for ((id = start; id < start + 250 && id <= users; id++)); do
      rows+=("($id,'user $id','${codes[id % 5]}')")
    done
    (IFS=,; echo "INSERT INTO users (id, name, country) VALUES ${rows[*]}")
  done
  echo "INSERT INTO countries (code, name) VALUES ('de','Germany'),('fr','France'),('us','United States'),('jp','Japan'),('br','Brazil')"
} | $shardctl sql -c "$cfg" --stdin
# shardctl load streams CSV rows with COPY to the shards that own their keys.
# orders are colocated with users (same distribution): order k belongs to
# user (k*7 mod users)+1 and lands on that user's shard.
printf '$ ... | %s load -c %s orders\n' "$shardctl" "$cfg"
{
  echo "id,user_id,amount"
  for ((k = 1; k <= orders; k++)); do
    echo "$k,$(((k * 7) % users + 1)),$((k % 97)).$((k % 100))"
  done
} | $shardctl load -c "$cfg" orders

step "How the rows spread over the shards"
show $shardctl exec -c "$cfg" --all \
  "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM orders) AS orders,
          (SELECT count(*) FROM countries) AS countries"

step "Colocation: every order finds its user on its own shard (a local join)"
show $shardctl exec -c "$cfg" --all \
  "SELECT count(*) AS orders, count(u.id) AS with_user_here
     FROM orders o LEFT JOIN users u ON u.id = o.user_id"

step "A query across shards, through the router: three users, their orders and country"
show $shardctl sql -c "$cfg" -e "SELECT u.id, u.name, c.name AS country, o.id AS order_id, o.amount
  FROM users u JOIN orders o ON o.user_id = u.id JOIN countries c ON c.code = u.country
  WHERE u.id IN (7, 42, 99)"

step "Aggregates across shards: each shard's partial groups, combined, sorted and limited as one database would"
show $shardctl sql -c "$cfg" -e "SELECT u.country, count(*) AS orders, sum(o.amount) AS total, avg(o.amount) AS average
  FROM users u JOIN orders o ON o.user_id = u.id
  GROUP BY u.country HAVING count(*) > 100 ORDER BY total DESC LIMIT 3"

step "A point query goes to the one shard that owns the key"
show $shardctl sql -c "$cfg" -e 'SELECT * FROM users WHERE id = $1' -p 42 --format json

step "Where does user 42 live?"
show $shardctl route -c "$cfg" users 42 --format json
owner=$($shardctl route -c "$cfg" users 42)
show $shardctl exec -c "$cfg" --all "SELECT id, name, country FROM users WHERE id = 42"
echo "(only $owner has it)"

step "A transfer across shards: both accounts change, or neither (two-phase commit)"
# accounts is colocated with users (same distribution, key user_id): each
# account lives on its user's shard. A config of its own adds it to the map.
bank=$dir/bank.toml
{ cat "$cfg"; printf '\n[tables.accounts]\ndistribution = "users"\nkey = "user_id"\n'; } >"$bank"
show $shardctl sql -c "$bank" -e "CREATE TABLE IF NOT EXISTS accounts (user_id int8 PRIMARY KEY,
  balance numeric(10,2) NOT NULL CHECK (balance >= 0))"
show $shardctl sql -c "$bank" -e "INSERT INTO accounts (user_id, balance) VALUES (7, 100), (42, 100)
  ON CONFLICT (user_id) DO UPDATE SET balance = excluded.balance"
echo "(user 7's account is on $($shardctl route -c "$bank" accounts 7), user 42's on $($shardctl route -c "$bank" accounts 42))"
# --stdin runs BEGIN ... COMMIT as one transaction through the router.
transfer() {
  local lines=$'BEGIN\n'"UPDATE accounts SET balance = balance + $3 WHERE user_id = $2"$'\n'
  lines+="UPDATE accounts SET balance = balance - $3 WHERE user_id = $1"$'\nCOMMIT'
  printf '$ %s sql -c %s --stdin <<EOF\n%s\nEOF\n' "$shardctl" "$bank" "$lines"
  printf '%s\n' "$lines" | $shardctl sql -c "$bank" --stdin
}
transfer 7 42 30
show $shardctl exec -c "$bank" --all "SELECT user_id, balance FROM accounts"
echo "Now 500 from user 7, who has 70: the credit to 42 runs, the debit of 7 fails its CHECK, and COMMIT rolls both back"
transfer 7 42 500 || true
show $shardctl sql -c "$bank" -e "SELECT user_id, balance FROM accounts ORDER BY user_id"

step "Online rebalance: a 4th shard, filled while a workload keeps writing"
# dev up --shards 4 starts s4 and lists it in shards.toml, keeping the
# placement: s4 owns nothing yet. The tables are created on it; bank.toml
# (the map plus accounts) is written again, since a move carries every
# table of the distribution that the mover's configuration names.
show $shardctl dev up --shards 4 --catalog --dir "$dir" --port "$port"
{ cat "$cfg"; printf '\n[tables.accounts]\ndistribution = "users"\nkey = "user_id"\n'; } >"$bank"
show $shardctl exec -c "$bank" --all "
  CREATE TABLE IF NOT EXISTS users (id int8 PRIMARY KEY, name text NOT NULL, country text NOT NULL);
  CREATE TABLE IF NOT EXISTS orders (id int8, user_id int8 NOT NULL, amount numeric(10,2) NOT NULL,
                                     PRIMARY KEY (user_id, id));
  CREATE TABLE IF NOT EXISTS countries (code text PRIMARY KEY, name text NOT NULL);
  CREATE TABLE IF NOT EXISTS accounts (user_id int8 PRIMARY KEY,
                                       balance numeric(10,2) NOT NULL CHECK (balance >= 0))"
# shardkit's hash functions on every shard (the shardkit_pg module, copied
# where the servers' user can read it): the moves of hash slices then keep
# no key lists.
install -m 644 build/shardkit_pg.so "$dir/shardkit_pg.so.new"
mv -f "$dir/shardkit_pg.so.new" "$dir/shardkit_pg.so"  # a new file: servers may have the old one loaded
show $shardctl hash install -c "$bank" --module "$dir/shardkit_pg.so"
show $shardctl rebalance -c "$bank" --dry-run
# The workload: new orders and renamed users, one statement per line
# through one open cluster, until the rebalance is done.
workload=$dir/workload.log
stop=$dir/workload.stop
rm -f "$stop"
{
  k=0
  while [[ ! -e $stop ]]; do
    k=$((k + 1))
    echo "INSERT INTO orders (id, user_id, amount) VALUES ($((orders + k)), $((k % users + 1)), 1.00)"
    echo "UPDATE users SET name = name || '+' WHERE id = $(((k * 13) % users + 1))"
    sleep 0.01
  done
} | $shardctl sql -c "$bank" --stdin >"$workload" 2>&1 &
writer=$!
sleep 1
show $shardctl rebalance -c "$bank"
touch "$stop"
wait "$writer" || true
# One output line per statement, in order: inserts on odd lines.
inserts=$(awk 'NR % 2 == 1 && /^OK/' "$workload" | wc -l)
renames=$(awk 'NR % 2 == 0 && /^OK 1/' "$workload" | wc -l)
failed=$(grep -c '^ERROR' "$workload" || true)
echo "The workload during the rebalance: $inserts orders inserted, $renames users renamed, $failed writes failed"
show $shardctl map show -c "$bank"
show $shardctl exec -c "$bank" --all \
  "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM orders) AS orders,
          (SELECT count(*) FROM accounts) AS accounts, (SELECT count(*) FROM countries) AS countries"
echo "Every acknowledged write is there, once, on the shard that owns it now"
echo "(expected: $((orders + inserts)) orders, $users users, $renames renames):"
show $shardctl sql -c "$bank" -e "SELECT count(*) AS orders, count(DISTINCT id) AS distinct_orders FROM orders"
show $shardctl sql -c "$bank" -e "SELECT count(*) AS users, sum(length(name) - length(replace(name, '+', ''))) AS renames FROM users"
show $shardctl moves list -c "$bank"

step "Replicas and automatic failover: 2 shards with 2 streaming replicas each, and a catalog"
# A cluster of its own (started afresh on every run: a failover retires a
# primary for good). The catalog instance holds the live shard map.
rdir=$dir-replicas
rport=$((port + 20))
rcfg=$rdir/shards.toml
if [[ -d $rdir ]]; then
  $shardctl dev down --dir "$rdir" >/dev/null
  rm -rf "$rdir"
fi
show $shardctl dev up --shards 2 --replicas 2 --dir "$rdir" --port "$rport"
show $shardctl exec -c "$rcfg" --all "CREATE TABLE users (id int8 PRIMARY KEY, name text NOT NULL)"
show $shardctl health -c "$rcfg"

step "Writes through one open cluster while shard s1's primary is killed (SIGKILL)"
writes=$rdir/writes.log
{
  for ((id = 1; id <= 60; id++)); do
    echo "INSERT INTO users (id, name) VALUES ($id, 'user $id')"
    sleep 0.1
  done
} | $shardctl sql -c "$rcfg" --stdin >"$writes" 2>&1 &
writer=$!
sleep 2
primary=$(head -n 1 "$rdir/s1/postmaster.pid")
echo "\$ kill -KILL $primary   # s1's postmaster, and its server processes"
pkill -KILL -P "$primary" || true
kill -KILL "$primary"
wait "$writer" || true
echo "$(grep -c '^OK' "$writes") of 60 writes succeeded; failed: $(grep -c '^ERROR' "$writes" || true) (in flight when the primary died: they may have run, so they are not retried)"
show $shardctl health -c "$rcfg"
show $shardctl sql -c "$rcfg" -e "SELECT count(*) FROM users"
printf '(writes that never reached the dead primary waited for the promoted replica and ran there)\n'

printf '\nThe shards keep running. Try:\n'
printf '  %s sql -c %s -e "SELECT * FROM orders WHERE user_id = 42"\n' "$shardctl" "$cfg"
printf '  %s route -c %s orders 42\n' "$shardctl" "$cfg"
printf '  %s exec -c %s --all "SELECT count(*) FROM users"\n' "$shardctl" "$cfg"
printf '  %s recover -c %s        # resolve transactions a crash left in doubt\n' "$shardctl" "$bank"
printf '  %s switchover -c %s s2   # planned change of primary, no lost write\n' "$shardctl" "$rcfg"
printf '  %s moves status 1 -c %s   # what a move did, phase by phase\n' "$shardctl" "$bank"
printf '  %s move -c %s --distribution users --slice 0x0000000000000000:0x1000000000000000 --to s4\n' "$shardctl" "$bank"
printf '  %s dev down --dir %s; %s dev down --dir %s\n' "$shardctl" "$dir" "$shardctl" "$rdir"
