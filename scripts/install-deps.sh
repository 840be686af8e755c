#!/usr/bin/env bash
# Installs the Debian 12 packages moed builds and tests with. Safe to run again.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  liburing-dev libhwloc-dev libboost-dev libjemalloc-dev libfmt-dev nlohmann-json3-dev
  libsystemd-dev libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev libtomlplusplus-dev
  fio
  # The fuzz flavour: clang with libFuzzer and the sanitizers' runtime.
  clang libclang-rt-14-dev
  curl systemd procps
)
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
