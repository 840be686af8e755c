#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#  1. installs dependencies;
#  2. builds the release flavour (CUDA kernels too when nvcc is present; GPU tests skip
#     without a GPU) and runs every test;
#  3. builds with ASan+UBSan and runs the unit tests under the sanitizers;
#  4. builds the concurrency tests with ThreadSanitizer and runs them;
#  5. builds the libFuzzer programs (clang) and runs each for 45 seconds from its seed corpus
#     (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh release
ctest --test-dir build --output-on-failure -j "$(nproc)"

./scripts/build.sh asan
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$(nproc)" -L unit

cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" -DMOED_SANITIZE=thread \
  -DMOED_CUDA=OFF -DMOED_BUILD_BENCH=OFF -DMOED_WERROR=ON > /dev/null
mapfile -t tsan_targets < <(ninja -C build-tsan -t targets all | grep -oE '^test_[a-z0-9_]*concurrency_test' | sort -u)
if [ ${#tsan_targets[@]} -gt 0 ]; then
  ./scripts/build.sh tsan "${tsan_targets[@]}"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir build-tsan --output-on-failure -j "$(nproc)" -R concurrency_test
fi

./scripts/fuzz.sh 45s
echo "moed: all tests passed"
