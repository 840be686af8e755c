#!/usr/bin/env bash
# The user's comparison: a model bigger than the memory the whole process may use.
# Runs llama.cpp (mmap, no weight repacking: the only way it runs under the limit) and moed
# (dense weights resident, experts through a host slab that fits the limit) one after the
# other in the same cgroup v1 memory group, each after dropping the model file from the page
# cache, and prints one JSON object with both decode speeds, their ratio and each run's peak
# memory as the cgroup counted it (page cache included).
#
#   LLAMA_COMPLETION=/path/to/llama-completion bench/compare-memlimit.sh MODEL [LIMIT] [HOST_BUDGET] [N_GEN]
#   (defaults: LIMIT 2G, HOST_BUDGET 1100MiB, N_GEN 16; needs root and cgroup v1 memory)
set -euo pipefail
model=${1:?usage: compare-memlimit.sh MODEL [LIMIT] [HOST_BUDGET] [N_GEN]}
limit=${2:-2G}
budget=${3:-1100MiB}
n_gen=${4:-16}
here=$(cd "$(dirname "$0")/.." && pwd)
moed_bench=${MOED_BENCH_DECODE:-$here/build/bench/bench-decode}
llama=${LLAMA_COMPLETION:?set LLAMA_COMPLETION to llama.cpp\'s llama-completion}
root=/sys/fs/cgroup/memory
[ -d "$root" ] || { echo "cgroup v1 memory controller not found at $root" >&2; exit 2; }
cg=$root/moed-memlimit-$$
mkdir "$cg"
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
echo "$limit" > "$cg/memory.limit_in_bytes"

drop_cache() {
  python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$model"
}
# Runs a command as a member of the cgroup and prints its output; records the peak.
run_limited() {
  echo 0 > "$cg/memory.max_usage_in_bytes" || true
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@"
}

drop_cache
llama_out=$(run_limited "$llama" -m "$model" -p "The" -n "$n_gen" -t 2 --no-repack -no-cnv --temp 0 \
  --ignore-eos -c 256 --no-warmup 2>&1 < /dev/null || true)
llama_peak=$(cat "$cg/memory.max_usage_in_bytes")
drop_cache
moed_out=$(run_limited "$moed_bench" -m "$model" -t 2 -p 8 -n "$n_gen" -r 1 --host-budget "$budget" 2>/dev/null)
moed_peak=$(cat "$cg/memory.max_usage_in_bytes")

python3 - "$llama_out" "$moed_out" "$llama_peak" "$moed_peak" "$limit" "$model" <<'PY'
import json, re, sys
llama_out, moed_out, llama_peak, moed_peak, limit, model = sys.argv[1:7]
m = re.search(r"eval time =.*?([0-9.]+) tokens per second", llama_out.split("prompt eval time")[-1])
if m is None:
    sys.exit("could not find llama.cpp's eval speed in its output:\n" + llama_out[-2000:])
llama_tps = float(m.group(1))
moed = json.loads(moed_out)
print(json.dumps({
    "model": model, "limit": limit,
    "llama_cpp": {"decode_tokens_per_s": llama_tps, "peak_cgroup_bytes": int(llama_peak),
                  "mode": "mmap, --no-repack"},
    "moed": {"decode_tokens_per_s": round(moed["decode_tokens_per_s"], 3),
             "peak_cgroup_bytes": int(moed_peak), "peak_rss_bytes": moed["peak_rss_bytes"],
             "host_budget_bytes": moed.get("host_budget_bytes"), "io_mode": moed["tiers"]["io_mode"],
             "host_hits": moed["tiers"]["host"]["hits"], "host_misses": moed["tiers"]["host"]["misses"],
             "read_bytes_per_s": moed["tiers"]["host"]["read_bytes_per_s"]},
    "decode_ratio": round(moed["decode_tokens_per_s"] / llama_tps, 2),
}))
PY
