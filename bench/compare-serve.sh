#!/usr/bin/env bash
# Side by side: moed (Unix socket) and llama.cpp's llama-server (loopback TCP, -np parallel
# slots) serving the same model file to the same load from bench-serve: N concurrent
# streaming clients for each N. Prints one JSON object with both servers' figures, moed's
# N=max / N=1 throughput ratio (batching must pay) and moed / llama-server at each N.
# llama.cpp is not part of moed: point LLAMA_SERVER at a llama-server built outside the tree.
#
#   LLAMA_SERVER=/path/to/llama-server bench/compare-serve.sh MODEL [CLIENTS] [MAX_TOKENS] [ROUNDS] [THREADS]
#   (defaults: CLIENTS 1,4,16; MAX_TOKENS 64; ROUNDS 2; THREADS 2)
set -euo pipefail
model=${1:?usage: compare-serve.sh MODEL [CLIENTS] [MAX_TOKENS] [ROUNDS] [THREADS]}
clients=${2:-1,4,16}
max_tokens=${3:-64}
rounds=${4:-2}
threads=${5:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
build=${MOED_BUILD_DIR:-$here/build}
llama_server=${LLAMA_SERVER:?set LLAMA_SERVER to llama.cpp\'s llama-server}
max_n=$(echo "$clients" | tr ',' '\n' | sort -n | tail -1)
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

wait_for() {  # wait_for CMD...: retries for up to 120 s
  for _ in $(seq 1 240); do "$@" > /dev/null 2>&1 && return 0; sleep 0.5; done
  echo "server did not come up" >&2
  return 1
}

# moed
"$build/daemon/moed" --model-path "$model" --socket-path "$tmp/moed.sock" --engine-threads "$threads" \
  --engine-max-sequences "$max_n" --engine-queue-length 256 --daemon-log-level warn 2> "$tmp/moed.log" &
pids+=($!)
wait_for curl -sf --unix-socket "$tmp/moed.sock" http://localhost/healthz
moed_json=$("$build/bench/bench-serve" --socket "$tmp/moed.sock" --clients "$clients" --max-tokens "$max_tokens" --rounds "$rounds")
kill -TERM "${pids[0]}"; wait "${pids[0]}" || true

# llama-server: the same file, CPU only, one slot per client, each slot with moed's context.
port=$((20000 + RANDOM % 20000))
ctx_per_slot=256
"$llama_server" -m "$model" -t "$threads" -np "$max_n" -c $((ctx_per_slot * max_n)) --host 127.0.0.1 --port "$port" \
  -ngl 0 -fa off --no-warmup > "$tmp/llama.log" 2>&1 &
pids+=($!)
wait_for curl -sf "http://127.0.0.1:$port/health"
llama_json=$("$build/bench/bench-serve" --tcp "127.0.0.1:$port" --clients "$clients" --max-tokens "$max_tokens" --rounds "$rounds")

python3 - "$moed_json" "$llama_json" "$model" <<'PY'
import json, sys
moed, llama, model = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
m = {r["clients"]: r for r in moed["results"]}
l = {r["clients"]: r for r in llama["results"]}
ns = sorted(m)
print(json.dumps({
    "model": model,
    "moed": moed["results"], "llama_server": llama["results"],
    "moed_batching_gain": round(m[ns[-1]]["total_tokens_per_s"] / m[ns[0]]["total_tokens_per_s"], 2),
    "moed_vs_llama_server": {str(n): round(m[n]["total_tokens_per_s"] / l[n]["total_tokens_per_s"], 2) for n in ns if n in l},
}))
PY
