#!/usr/bin/env bash
# Configures and builds one flavour of moed: build.sh [release|asan|tsan|fuzz] [TARGET...]
# (default release, all targets). Each flavour has its own folder: build/, build-asan/,
# build-tsan/, build-fuzz/. The fuzz flavour (clang, libFuzzer with ASan+UBSan) builds only
# the fuzz programs and the libraries they link unless targets are named.
set -euo pipefail
cd "$(dirname "$0")/.."
flavour=${1:-release}
shift || true
jobs=${MOED_JOBS:-$(nproc)}
case "$flavour" in
  release) dir=build; args=(-DCMAKE_BUILD_TYPE=Release) ;;
  # Sanitizer flavours: -O1 with line tables only; they compile about twice as fast as
  # RelWithDebInfo and still give symbolised reports.
  asan) dir=build-asan; args=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" -DMOED_SANITIZE=address -DMOED_CUDA=OFF -DMOED_BUILD_BENCH=OFF) ;;
  tsan) dir=build-tsan; args=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" -DMOED_SANITIZE=thread -DMOED_CUDA=OFF -DMOED_BUILD_BENCH=OFF) ;;
  fuzz) dir=build-fuzz; args=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug
          "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g1" -DMOED_FUZZ=ON -DMOED_CUDA=OFF -DMOED_BUILD_TESTS=OFF -DMOED_BUILD_BENCH=OFF)
        if [ $# -eq 0 ]; then set -- moed_fuzz; fi ;;
  *) echo "usage: $0 [release|asan|tsan|fuzz] [TARGET...]" >&2; exit 2 ;;
esac
cmake -S . -B "$dir" -G Ninja -DMOED_WERROR=ON "${args[@]}" > /dev/null
if [ $# -gt 0 ]; then
  cmake --build "$dir" -j "$jobs" --target "$@"
else
  cmake --build "$dir" -j "$jobs"
fi
