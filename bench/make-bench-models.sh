#!/usr/bin/env bash
# Writes the synthetic benchmark models: Qwen3-30B-A3B's shape (128 experts, top-8, n_embd
# 2048, 32 query / 4 KV heads of 128, expert width 768, its 151,936-token vocabulary) with
# LAYERS layers (default 12: about 5 GB at Q4_K_M instead of 48 layers' 17 GB), in both
# routing modes of moe-synth:
#   DIR/synth-30b-random.gguf     random weights: routing unrelated to the text, a few
#                                 experts winning everywhere
#   DIR/synth-30b-realistic.gguf  routing with a trained MoE's statistics (reuse between
#                                 tokens, per-domain skew, lookahead recall; see
#                                 tools/moe_synth.cpp and bench/routing-stats.sh)
# Prefetch benchmarks run both, e.g. bench/compare-prefetch.sh DIR/synth-30b-realistic.gguf 25%.
#
#   bench/make-bench-models.sh DIR [random|realistic|both]   env: LAYERS, TYPE (Q4_K_M)
set -euo pipefail
dir=${1:?usage: make-bench-models.sh DIR [random|realistic|both]}
which=${2:-both}
here=$(cd "$(dirname "$0")/.." && pwd)
synth=${MOED_SYNTH:-$here/build/tools/moe-synth}
shape=(--type "${TYPE:-Q4_K_M}" --layers "${LAYERS:-12}" --embd 2048 --heads 32 --kv-heads 4 --head-dim 128
       --experts 128 --experts-used 8 --ff 768 --vocab 151936)
case "$which" in
  random|realistic|both) ;;
  *) echo "make-bench-models.sh: the mode must be random, realistic or both, not '$which'" >&2; exit 2 ;;
esac
mkdir -p "$dir"
for mode in random realistic; do
  if [ "$which" = both ] || [ "$which" = "$mode" ]; then
    "$synth" -o "$dir/synth-30b-$mode.gguf" "${shape[@]}" --routing "$mode"
  fi
done
