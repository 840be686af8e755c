#!/usr/bin/env bash
# Runs every libFuzzer program of fuzz/ for DURATION each: fuzz.sh DURATION [NAME...]
# DURATION is seconds or a number with s, m or h (60s, 30m, 2h); NAMEs pick programs
# (gguf, http, ...; default all). Builds the fuzz flavour first (scripts/build.sh fuzz).
# Each program runs on a copy of its seed corpus (fuzz/corpus/NAME/ is never written) with
# its dictionary (fuzz/NAME.dict) when there is one, `nproc` programs at a time
# (MOED_FUZZ_JOBS overrides). Work goes to build-fuzz/runs/<time>/NAME/ (MOED_FUZZ_WORK
# overrides): the grown corpus, the log and any crash, timeout, leak or out-of-memory input.
# Prints one JSON line per program: executions, coverage (libFuzzer's cov: and ft:), corpus
# size, and for a failure the input that caused it and the end of the log. Exits 1 when any
# program failed (crash, sanitizer report, leak, timeout, out of memory).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: $0 DURATION [NAME...]   (DURATION: 60s, 30m, 2h or seconds)" >&2; exit 2; }
[ $# -ge 1 ] || usage
duration=$1
shift
case "$duration" in
  *[0-9]s) seconds=${duration%s} ;;
  *[0-9]m) seconds=${duration%m}; [[ $seconds =~ ^[0-9]+$ ]] && seconds=$((seconds * 60)) ;;
  *[0-9]h) seconds=${duration%h}; [[ $seconds =~ ^[0-9]+$ ]] && seconds=$((seconds * 3600)) ;;
  *) seconds=$duration ;;
esac
[[ $seconds =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || usage

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for src in fuzz/*_fuzz.cpp; do
    n=${src#fuzz/}
    names+=("${n%_fuzz.cpp}")
  done
fi
for n in "${names[@]}"; do
  [ -f "fuzz/${n}_fuzz.cpp" ] || { echo "$0: no fuzz program '$n' (fuzz/${n}_fuzz.cpp)" >&2; exit 2; }
done

./scripts/build.sh fuzz "${names[@]/%/_fuzz}"

work=${MOED_FUZZ_WORK:-build-fuzz/runs/$(date +%Y%m%d-%H%M%S)}
jobs=${MOED_FUZZ_JOBS:-$(nproc)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
echo "fuzz: ${#names[@]} programs, ${seconds}s each, $jobs at a time; work in $work" >&2

# One program: a copy of its seeds, then libFuzzer until the time is up or it finds a failure.
run_one() {
  local name=$1 dir=$work/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  if [ -d "fuzz/corpus/$name" ]; then cp -R "fuzz/corpus/$name/." "$dir/corpus/"; fi
  local args=(-max_total_time="$seconds" -print_final_stats=1 -timeout=30 -rss_limit_mb=2048
              -artifact_prefix="$dir/artifacts/")
  if [ -f "fuzz/$name.dict" ]; then args+=(-dict="fuzz/$name.dict"); fi
  local rc=0
  UBSAN_OPTIONS=print_stacktrace=1 "build-fuzz/fuzz/${name}_fuzz" "${args[@]}" "$dir/corpus" > "$dir/log" 2>&1 || rc=$?
  echo "$rc" > "$dir/rc"
}

running=0
for n in "${names[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_one "$n" &
  running=$((running + 1))
done
wait || true

json_string() {  # a JSON string of $1: quotes, backslashes and control characters escaped
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/}
  s=${s//$'\n'/\\n}
  printf '"%s"' "$(printf '%s' "$s" | tr -d '\000-\010\013-\037')"
}

failed=0
for n in "${names[@]}"; do
  dir=$work/$n
  rc=$(cat "$dir/rc" 2>/dev/null || echo 1)
  log=$dir/log
  execs=$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  speed=$(grep -aoE 'stat::average_exec_per_sec: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  cov=$(grep -aoE 'cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  ft=$(grep -aoE 'ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  files=$(find "$dir/corpus" -type f | wc -l)
  bytes=$(find "$dir/corpus" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  line=$(printf '{"target":"%s","status":"%s","seconds":%s,"executions":%s,"exec_per_sec":%s,"cov":%s,"ft":%s,"corpus_files":%s,"corpus_bytes":%s' \
    "$n" "$([ "$rc" = 0 ] && echo ok || echo failed)" "$seconds" "${execs:-0}" "${speed:-0}" "${cov:-0}" "${ft:-0}" \
    "$files" "$bytes")
  if [ "$rc" != 0 ]; then
    failed=1
    # libFuzzer names the saved input: "Test unit written to PATH" (crash-, leak-, timeout-, oom-).
    input=$(grep -aoE 'Test unit written to .*' "$log" | tail -1 | sed 's/^Test unit written to //' || true)
    [ -n "$input" ] || input=$(find "$dir/artifacts" -type f -name '*-*' ! -name 'slow-unit-*' | head -1)
    line+=",\"exit_code\":$rc,\"input\":$(json_string "$input"),\"log\":$(json_string "$log")"
    line+=",\"log_tail\":$(json_string "$(grep -avE '^#[0-9]+' "$log" | tail -40)")"
  fi
  echo "$line}"
done
exit "$failed"
