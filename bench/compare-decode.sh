#!/usr/bin/env bash
# Side by side: moed's bench-decode and llama.cpp's llama-bench on the same model, threads
# and token counts, in one run on this machine. Prints one JSON object with both figures
# and the ratios (moed / llama.cpp). llama.cpp is not part of moed: build it outside the
# tree and point LLAMA_BENCH at its llama-bench binary.
#
#   LLAMA_BENCH=/path/to/llama-bench bench/compare-decode.sh MODEL [THREADS] [PROMPT] [GEN] [REPS]
set -euo pipefail
model=${1:?usage: compare-decode.sh MODEL [THREADS] [PROMPT] [GEN] [REPS]}
threads=${2:-2}
n_prompt=${3:-512}
n_gen=${4:-128}
reps=${5:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
moed_bench=${MOED_BENCH_DECODE:-$here/build/bench/bench-decode}
llama_bench=${LLAMA_BENCH:?set LLAMA_BENCH to llama.cpp\'s llama-bench}

moed_json=$("$moed_bench" -m "$model" -t "$threads" -p "$n_prompt" -n "$n_gen" -r "$reps")
# llama-bench: CPU only, mmap on, flash attention off, one ubatch of the whole prompt.
llama_json=$("$llama_bench" -m "$model" -t "$threads" -p "$n_prompt" -n "$n_gen" -r "$reps" \
  -ngl 0 -fa 0 -b "$n_prompt" -ub "$n_prompt" -o json 2>/dev/null)

python3 - "$moed_json" "$llama_json" <<'PY'
import json, sys
moed = json.loads(sys.argv[1])
llama = json.loads(sys.argv[2])
pp = next(r["avg_ts"] for r in llama if r["n_prompt"] > 0 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in llama if r["n_gen"] > 0 and r["n_prompt"] == 0)
print(json.dumps({
    "model": moed["model"], "threads": moed["threads"],
    "moed": {"prefill_tokens_per_s": round(moed["prefill_tokens_per_s"], 2),
             "decode_tokens_per_s": round(moed["decode_tokens_per_s"], 2),
             "peak_rss_bytes": moed["peak_rss_bytes"], "model_bytes": moed["model_bytes"],
             "kv_cache_bytes": moed["kv_cache_bytes"]},
    "llama_cpp": {"prefill_tokens_per_s": round(pp, 2), "decode_tokens_per_s": round(tg, 2),
                  "build": llama[0].get("build_commit")},
    "prefill_ratio": round(moed["prefill_tokens_per_s"] / pp, 3),
    "decode_ratio": round(moed["decode_tokens_per_s"] / tg, 3),
}))
PY
