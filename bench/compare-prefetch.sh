#!/usr/bin/env bash
# Prefetch on against prefetch off: bench-decode with the same host budget, alternating the
# two ROUNDS times (a busy machine drifts; alternating spreads the drift over both), once
# reading the model file as moed does (O_DIRECT unless the file system refuses) and once
# through a fake slow disk (fault_reader: LAT_US per read and an MBPS bandwidth cap, over the
# page cache, so the disk modelled is the only one that matters). Prints one JSON object per
# mode: the median decode tokens/s and compute's I/O wait per token of each side, the
# speed-up, the decode bytes and misses per token, and the prefetch counters of the last
# prefetch run. Extra arguments go to every bench-decode run (e.g. --lookahead 3).
#
#   bench/compare-prefetch.sh MODEL [BUDGET=25%] [SLOW_DISK=150,20000] [ROUNDS=3] [-- EXTRA...]
#
# Models: the bundled tinymoe model (trained, small), and at realistic size the two
# synthetic Qwen3-30B-A3B-shaped files of bench/make-bench-models.sh: synth-30b-random.gguf
# (routing unrelated to the text, so prefetch predictions have little to find) and
# synth-30b-realistic.gguf (routing with a trained model's reuse, skew and lookahead recall,
# bench/routing-stats.sh). Run each, e.g.
#   bench/make-bench-models.sh /tmp/bench-models
#   for m in random realistic; do bench/compare-prefetch.sh /tmp/bench-models/synth-30b-$m.gguf 25%; done
# bench-decode's prompt is pseudo-random token ids; decoding then follows the model's own
# greedy choices, so the realistic model's routing structure shows in the decoded tokens.
set -euo pipefail
model=${1:?usage: compare-prefetch.sh MODEL [BUDGET] [SLOW_DISK] [ROUNDS] [-- EXTRA...]}
budget=${2:-25%}
slow=${3:-150,20000}
rounds=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
[ "${1:-}" = "--" ] && shift
extra=("$@")
here=$(cd "$(dirname "$0")/.." && pwd)
bench=${MOED_BENCH_DECODE:-$here/build/bench/bench-decode}
# Small prompt, many decoded tokens: the figure is decode speed.
common=(-m "$model" -p "${PREFILL:-16}" -n "${GEN:-128}" -r 1 --host-budget "$budget")

run_mode() {
  local mode=$1; shift
  local out=()
  for ((i = 0; i < rounds; i++)); do
    for pf in off on; do
      out+=("$pf $("$bench" "${common[@]}" "$@" --prefetch "$pf" "${extra[@]}" 2>/dev/null)")
    done
  done
  printf '%s\n' "${out[@]}" | python3 -c '
import json, sys, statistics
mode = sys.argv[1]
runs = {"off": [], "on": []}
for line in sys.stdin:
    side, _, body = line.partition(" ")
    runs[side].append(json.loads(body))
def med(side, key):
    return statistics.median(r[key] for r in runs[side])
tg_off, tg_on = med("off", "decode_tokens_per_s"), med("on", "decode_tokens_per_s")
p = runs["on"][-1]["tiers"]["prefetch"]
print(json.dumps({
    "mode": mode, "model": runs["on"][0]["model"], "budget_fraction": round(runs["on"][0]["host_budget_fraction"], 3),
    "slow_disk": runs["on"][0]["slow_disk"], "rounds": len(runs["on"]),
    "decode_tokens_per_s": {"off": round(tg_off, 2), "on": round(tg_on, 2)},
    "speedup": round(tg_on / tg_off, 3),
    "decode_io_wait_us_per_token": {"off": round(med("off", "decode_io_wait_ns_per_token") / 1e3, 1),
                                    "on": round(med("on", "decode_io_wait_ns_per_token") / 1e3, 1)},
    "decode_bytes_read_per_token": {"off": round(med("off", "decode_bytes_read_per_token")),
                                    "on": round(med("on", "decode_bytes_read_per_token"))},
    "decode_misses_per_token": {"off": round(med("off", "decode_misses_per_token"), 2),
                                "on": round(med("on", "decode_misses_per_token"), 2)},
    "prefetch": {k: (round(p[k], 3) if isinstance(p[k], float) else p[k])
                 for k in ("issued", "cancelled", "hits", "late", "wasted", "wasted_bytes", "demand_misses",
                           "hit_rate", "recall", "inflight_bytes_max")},
}))' "$mode"
}

run_mode real
run_mode slow_disk --no-direct --slow-disk "$slow"
