#!/usr/bin/env bash
# The main job on a fresh machine: installs dependencies, builds, starts moed on the bundled
# small model (models/tinymoe-qwen3moe-Q4_K_M.gguf) on a private socket, and answers a
# request through moectl; then stops the daemon (SIGTERM: it drains and exits 0).
# It builds only what it runs (the target moed_programs: moed, moectl, libmoeclient), not the
# tests, tools and benchmarks that scripts/test.sh builds.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh release moed_programs
run=$(mktemp -d)
socket="$run/moed.sock"
./build/daemon/moed --socket-path "$socket" --daemon-log-level warn &
moed_pid=$!
trap 'kill -TERM "$moed_pid" 2>/dev/null || true; wait "$moed_pid" 2>/dev/null || true; rm -rf "$run"' EXIT
for _ in $(seq 1 120); do
  ./build/client/moectl --socket "$socket" health > /dev/null 2>&1 && break
  sleep 0.5
done
./build/client/moectl --socket "$socket" generate --max-tokens 48 "int main(int argc, char **argv) {"
echo
./build/client/moectl --socket "$socket" status
