#!/usr/bin/env bash
# The soak run: bench-soak starts moed on the bundled model (models/tinymoe-qwen3moe-Q4_K_M.gguf)
# with a 25% host budget and prefetching on, drives CLIENTS clients with the mixed load for
# DURATION, stops moed with SIGTERM and prints bench-soak's JSON (config, totals, samples,
# summary, verdict). Exit status: bench-soak's (0 only when the verdict passes).
# Prompts: ../shared/models/traces/domain-prompts.jsonl next to the source tree when present
# (MOED_SOAK_PROMPTS overrides), else bench-soak's built-in list. Extra arguments go to
# bench-soak (e.g. --seed 7 --max-growth-mib-per-hour 4); daemon flags after -- follow (and
# so override) the budget and prefetch flags given here.
#
#   bench/soak.sh [DURATION=1h] [CLIENTS=16] [BENCH-SOAK FLAGS...] [-- DAEMON FLAGS...]
# Needs a release build: ./scripts/build.sh release moed bench-soak
set -euo pipefail
duration=${1:-1h}
clients=${2:-16}
shift $(( $# < 2 ? $# : 2 ))
here=$(cd "$(dirname "$0")/.." && pwd)
build=${MOED_BUILD_DIR:-$here/build}
model=${MOED_SOAK_MODEL:-$here/models/tinymoe-qwen3moe-Q4_K_M.gguf}
prompts=${MOED_SOAK_PROMPTS:-$here/../shared/models/traces/domain-prompts.jsonl}

soak_flags=()
daemon_flags=(--tiers-host-budget 25% --tiers-prefetch true)
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then
    shift
    daemon_flags+=("$@")
    break
  fi
  soak_flags+=("$1")
  shift
done
[ -f "$prompts" ] && soak_flags+=(--prompts "$prompts")

exec "$build/bench/bench-soak" --moed "$build/daemon/moed" --model "$model" \
  --clients "$clients" --duration "$duration" --sample-interval 10s "${soak_flags[@]}" -- "${daemon_flags[@]}"
