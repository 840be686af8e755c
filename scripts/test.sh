#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs dependencies, builds the release flavour
# (CUDA kernels too when nvcc is present) and runs every test, then builds with ASan+UBSan
# and runs the unit tests again under the sanitizers.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh release
ctest --test-dir build --output-on-failure -j "$(nproc)"
./scripts/build.sh asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -L unit
echo "moed: all tests passed"
