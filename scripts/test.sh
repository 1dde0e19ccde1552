#!/usr/bin/env bash
# Builds shardkit and runs every test: unit, shardctl, integration against
# real throwaway PostgreSQL servers, and the installed package. Installs what
# is missing first (scripts/setup.sh). Ends with ctest's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build
cd build
ctest --output-on-failure --timeout 600 -j2
