#!/usr/bin/env bash
# Builds the fuzz targets with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer in a build of their own (BUILD_DIR/fuzz-build,
# configured with SHARDKIT_BUILD_FUZZERS=ON), then runs each for a bounded
# time on a copy of its seed corpus. Fails, naming the reproducer, on any
# crash, sanitizer report, leak or timeout.
#
#   tests/fuzz/run_fuzzers.sh BUILD_DIR SOURCE_DIR
#
# SHARDKIT_FUZZ_SECONDS (default 30) is each fuzzer's time. To replay a
# reproducer: BUILD_DIR/fuzz-build/tests/fuzz/<name>_fuzz <file>
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2
  exit 2
fi
build_dir=$(realpath "$1")
source_dir=$(realpath "$2")
fuzz_dir="$source_dir/tests/fuzz"
fuzz_build="$build_dir/fuzz-build"
seconds="${SHARDKIT_FUZZ_SECONDS:-30}"

for tool in clang clang++; do
  if ! command -v "$tool" >/dev/null; then
    echo "fuzz: $tool is not installed; run scripts/setup.sh" >&2
    exit 1
  fi
done

start=$SECONDS
echo "fuzz: building in $fuzz_build"
CC=clang CXX=clang++ cmake -S "$source_dir" -B "$fuzz_build" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHARDKIT_BUILD_FUZZERS=ON \
  -DSHARDKIT_BUILD_TESTS=OFF -DSHARDKIT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$fuzz_build" --target analyzer_fuzz config_fuzz
echo "fuzz: built in $((SECONDS - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts="$fuzz_build/artifacts"
mkdir -p "$artifacts"

# The first report ends the run. Leaks are checked too (no suppression is
# needed: libpg_query's and Abseil's static state stays reachable).
export ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
unset LSAN_OPTIONS

failed=()
for name in analyzer config; do
  binary="$fuzz_build/tests/fuzz/${name}_fuzz"
  corpus="$work/$name"
  cp -r "$fuzz_dir/corpus/$name" "$corpus"
  rm -f "$artifacts/$name-"*
  dict=()
  [ -f "$fuzz_dir/$name.dict" ] && dict=("-dict=$fuzz_dir/$name.dict")
  log="$work/$name.log"
  echo "fuzz: running $name for $seconds s"
  set +e
  "$binary" "$corpus" "${dict[@]}" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=25 \
    -max_len=8192 -len_control=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$name-" >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb)' \
    "$log" || true
  if [ $rc -ne 0 ]; then
    tail -n 80 "$log"
    reproducers=$(ls "$artifacts/$name-"* 2>/dev/null || true)
    echo "fuzz: FAILED: $name (exit $rc); reproducer: ${reproducers:-none}"
    echo "fuzz: replay with: $binary <reproducer>"
    failed+=("$name")
  else
    echo "fuzz: $name: no finding in $(ls "$corpus" | wc -l) corpus inputs"
  fi
done
echo "fuzz: done in $((SECONDS - start)) s"
[ ${#failed[@]} -eq 0 ]
