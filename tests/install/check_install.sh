#!/usr/bin/env bash
# Installs shardkit from BUILD_DIR into a scratch prefix, then builds
# examples/ against the installed package twice: with find_package(shardkit)
# and with pkg-config. Runs both programs and checks their output.
#   check_install.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1
src=$2
work=$(mktemp -d /tmp/shardkit-install-XXXXXX)
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

echo "installed package OK: shardctl, headers, CMake package, pkg-config"
