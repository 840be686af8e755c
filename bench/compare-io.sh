#!/usr/bin/env bash
# Side by side: moed's bench-io (the block reader) and fio on the same file, block size and
# queue depths. Each depth runs REPS rounds of (moed, fio), alternating so both see the same
# disk state (a shared or virtual disk drifts by 2x within seconds); the figures are the
# medians over the rounds. Prints one JSON object: per depth both GB/s, IOPS and latencies
# and the ratio moed/fio, and the ratio at the best depth. fio runs io_uring, O_DIRECT, random reads of whole blocks at block-aligned
# offsets, as bench-io does.
#
#   bench/compare-io.sh [FILE]
#   env: SIZE=6G BLOCK_SIZE=1179648 DEPTHS="1 2 4 8 16 32 64" RUNTIME=5 (seconds per run)
#        REPS=3
#        MODE=uring_direct  MOED_BENCH_IO=build-io-rel/bench/bench-io  KEEP=1 (keep FILE)
# The file is created by bench-io when missing (pseudo-random bytes) and removed at the end
# unless KEEP=1 or it existed before.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
file=${1:-/var/tmp/moed-bench-io.dat}
size=${SIZE:-6G}
bs=${BLOCK_SIZE:-1179648}
depths=${DEPTHS:-1 2 4 8 16 32 64}
runtime=${RUNTIME:-5}
reps=${REPS:-3}
runtime_ms=$(awk -v s="$runtime" 'BEGIN { printf "%d", s * 1000 }')
mode=${MODE:-uring_direct}
bench=${MOED_BENCH_IO:-$here/build-io-rel/bench/bench-io}
command -v fio >/dev/null || { echo "compare-io.sh: fio not found (apt-get install fio)" >&2; exit 2; }
[ -x "$bench" ] || { echo "compare-io.sh: $bench not built (ninja bench-io)" >&2; exit 2; }

existed=0
[ -e "$file" ] && existed=1
cleanup() { if [ "$existed" = 0 ] && [ "${KEEP:-0}" != 1 ]; then rm -f "$file"; fi; }
trap cleanup EXIT

out=$(mktemp -d)
trap 'cleanup; rm -rf "$out"' EXIT
# Creates the file if needed (a short run at depth 1), so fio never lays it out itself.
"$bench" --file "$file" --size "$size" --block-size "$bs" --depths 1 --seconds 0.2 --mode "$mode" >/dev/null
file_bytes=$(stat -c %s "$file")
for d in $depths; do
  for r in $(seq "$reps"); do
    "$bench" --file "$file" --size "$size" --block-size "$bs" --depths "$d" --seconds "$runtime" --mode "$mode" \
      --seed "$r" > "$out/moed-$d-$r.json"
    fio --name=randread --filename="$file" --ioengine=io_uring --direct=1 --rw=randread --bs="$bs" \
      --iodepth="$d" --time_based --runtime="${runtime_ms}ms" --size="$file_bytes" --numjobs=1 \
      --norandommap --randrepeat=0 --output-format=json > "$out/fio-$d-$r.json"
  done
done

python3 - "$out" "$file" "$bs" "$runtime" "$mode" "$reps" $depths <<'PY'
import json, statistics, sys
out, path, bs, runtime, mode, reps = sys.argv[1:7]
depths = [int(d) for d in sys.argv[7:]]
med = statistics.median
rows = []
for d in depths:
    ms = [json.load(open(f"{out}/moed-{d}-{r}.json"))["results"][0] for r in range(1, int(reps) + 1)]
    fs = [json.load(open(f"{out}/fio-{d}-{r}.json"))["jobs"][0]["read"] for r in range(1, int(reps) + 1)]
    moed_gbps = med(m["gb_per_s"] for m in ms)
    fio_gbps = med(f["bw_bytes"] / 1e9 for f in fs)
    pct = lambda f, p: f["clat_ns"].get("percentile", {}).get(p, 0) / 1e3
    rows.append({
        "depth": d,
        "moed_gb_per_s": round(moed_gbps, 3),
        "fio_gb_per_s": round(fio_gbps, 3),
        "ratio": round(moed_gbps / fio_gbps, 3) if fio_gbps > 0 else None,
        # The best run of each: on a throttled (burst-credit) virtual disk the medians drift
        # with the credits, the maxima show what each reaches when the disk lets it.
        "moed_gb_per_s_max": round(max(m["gb_per_s"] for m in ms), 3),
        "fio_gb_per_s_max": round(max(f["bw_bytes"] / 1e9 for f in fs), 3),
        "moed_gb_per_s_runs": [round(m["gb_per_s"], 3) for m in ms],
        "fio_gb_per_s_runs": [round(f["bw_bytes"] / 1e9, 3) for f in fs],
        "moed_iops": round(med(m["iops"] for m in ms), 1),
        "fio_iops": round(med(f["iops"] for f in fs), 1),
        "moed_latency_us_p50": round(med(m["latency_us_p50"] for m in ms), 1),
        "moed_latency_us_p99": round(med(m["latency_us_p99"] for m in ms), 1),
        # fio's completion latency (submission to completion as the kernel saw it).
        "fio_clat_us_p50": round(med(pct(f, "50.000000") for f in fs), 1),
        "fio_clat_us_p99": round(med(pct(f, "99.000000") for f in fs), 1),
    })
best_moed = max(rows, key=lambda r: r["moed_gb_per_s"])
best_fio = max(rows, key=lambda r: r["fio_gb_per_s"])
at_fio_best = next(r for r in rows if r["depth"] == best_fio["depth"])
print(json.dumps({
    "file": path, "block_size": int(bs), "seconds_per_run": float(runtime), "runs_per_depth": int(reps),
    "moed_mode": mode,
    "fio": "ioengine=io_uring direct=1 rw=randread norandommap",
    "depths": rows,
    "best": {
        "moed_depth": best_moed["depth"], "moed_gb_per_s": best_moed["moed_gb_per_s"],
        "fio_depth": best_fio["depth"], "fio_gb_per_s": best_fio["fio_gb_per_s"],
        "ratio_best_to_best": round(best_moed["moed_gb_per_s"] / best_fio["fio_gb_per_s"], 3),
        "ratio_at_fio_best_depth": at_fio_best["ratio"],
        "moed_gb_per_s_max": max(r["moed_gb_per_s_max"] for r in rows),
        "fio_gb_per_s_max": max(r["fio_gb_per_s_max"] for r in rows),
        "ratio_of_maxima": round(max(r["moed_gb_per_s_max"] for r in rows) / max(r["fio_gb_per_s_max"] for r in rows), 3),
    },
}, indent=2))
PY
