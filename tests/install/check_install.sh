#!/usr/bin/env bash
# Installs shardkit from BUILD_DIR into a scratch prefix, then builds
# examples/ against the installed package twice: with find_package(shardkit)
# and with pkg-config. Runs both programs and checks their output.
#   check_install.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
work=$(mktemp -d /tmp/shardkit-install-XXXXXX)
chmod 755 "$work"  # the dev cluster's servers run as postgres when this runs as root
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

cmake --install "$build" --prefix "$prefix" >/dev/null
for f in bin/shardctl include/shardkit/cluster.h include/shardkit/shard_map.h \
         lib/cmake/shardkit/shardkitConfig.cmake lib/pkgconfig/shardkit.pc; do
  [ -e "$prefix/$f" ] || { echo "FAIL: $f was not installed"; exit 1; }
done
# The public headers must not need anything but Abseil and the C++ library.
if grep -rE '#include [<"](libpq|pg_query|toml|CLI|xxhash)' "$prefix/include"; then
  echo "FAIL: a public header includes a private dependency"; exit 1
fi

export APP_PASSWORD=x
expected="users 42 -> s3 (hash 0xd5a6f8c838df27c8)"

"$prefix/bin/shardctl" validate -c "$src/examples/shards.toml" | grep -qx ok

# 1. CMake: find_package(shardkit) -> shardkit::shardkit
cmake -S "$src/examples" -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/cmake-build" >/dev/null
out=$("$work/cmake-build/where_is" "$src/examples/shards.toml" users 42)
[ "$out" = "$expected" ] || { echo "FAIL (cmake): got '$out'"; exit 1; }

# 2. pkg-config
flags=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs shardkit)
# shellcheck disable=SC2086
g++ -o "$work/where_is_pc" "$src/examples/where_is.cc" $flags \
    -Wl,-rpath,"$prefix/lib"
out=$("$work/where_is_pc" "$src/examples/shards.toml" users 42)
[ "$out" = "$expected" ] || { echo "FAIL (pkg-config): got '$out'"; exit 1; }

# quickstart: statements through the router, from a program built against
# the installed package, on a dev cluster started by the installed shardctl.
dev=$work/dev
for attempt in 1 2 3 4 5; do
  port=$(( 20000 + RANDOM % 30000 ))
  if "$prefix/bin/shardctl" dev up --shards 3 --dir "$dev" --port "$port" \
       >"$work/dev-up.log" 2>&1; then
    break
  fi
  "$prefix/bin/shardctl" dev down --dir "$dev" >/dev/null 2>&1 || true
  rm -rf "$dev"
  [ "$attempt" = 5 ] && { echo "FAIL: shardctl dev up"; cat "$work/dev-up.log"; exit 1; }
done
trap '"$prefix/bin/shardctl" dev down --dir "$dev" >/dev/null 2>&1; rm -rf "$work"' EXIT
out=$("$work/cmake-build/quickstart" "$dev/shards.toml") || {
  echo "FAIL: quickstart"; echo "$out"; exit 1; }
for line in "INSERT 0 5 (on 3 shards)" "  5 | 500" "  1 | ada | 70"; do
  grep -qxF -- "$line" <<<"$out" || { echo "FAIL: quickstart printed no '$line':"; echo "$out"; exit 1; }
done
grep -q "a transaction on 2 shards" <<<"$out" || { echo "FAIL: quickstart's transfer:"; echo "$out"; exit 1; }

echo "installed package OK: shardctl, headers, CMake package, pkg-config, quickstart on a dev cluster"
