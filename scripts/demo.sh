#!/usr/bin/env bash
# The main job on a fresh machine: installs dependencies, builds, and answers one request
# with the bundled small model (models/tinymoe-qwen3moe-Q4_K_M.gguf).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh release
./build/tools/moe-run -m models/tinymoe-qwen3moe-Q4_K_M.gguf -p "int main(int argc, char **argv) {" -n 48 -t 2
