#!/usr/bin/env bash
# Makes the per-architecture golden files: for every architecture and weight type that
# tests/engine/arch_golden_test.cpp checks, synthesizes the random-weight model (the same
# recipe as the test's, so the same bytes) and records what llama.cpp generates for
# models/golden/arch-prompts.jsonl with scripts/make-golden.py.
#   scripts/make-arch-goldens.sh LLAMA_BUILD_DIR ISA [ARCH...]
# LLAMA_BUILD_DIR: a llama.cpp build (GGML_NATIVE=OFF, the ISA's flags) with bin/llama-server;
# ISA: avx2 or avx512, the folder under models/golden/ the files go to. Needs build/tools/moe-synth.
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:?llama.cpp build dir}
isa=${2:?isa (avx2 or avx512)}
shift 2
# Each model: ARCH[:VARIANT[:SEED]] (seed 11 unless said; deepseek2 takes 13, see the test).
# llama:spm is Mixtral's shape with its SentencePiece vocabulary (models/tokenizer/).
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(qwen3moe llama llama:spm qwen2moe olmoe gpt-oss glm4moe:air deepseek2:v2-lite:13 deepseek2:v3:13)
types=(${MOED_GOLDEN_TYPES:-F32 F16 Q8_0 Q4_K_M Q6_K Q5_K Q3_K Q2_K IQ4_XS Q5_0 Q5_1 Q4_0 Q4_1 IQ4_NL MXFP4})
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "models/golden/$isa"
for spec in "${archs[@]}"; do
  IFS=: read -r arch variant seed <<< "$spec"
  seed=${seed:-11}
  # olmoe normalises the whole q/k projections, which needs heads x head_dim = embd and
  # kv_heads = heads.
  kv=2
  [ "$arch" = olmoe ] && kv=4
  for type in "${types[@]}"; do
    name="synth-$arch${variant:+-$variant}-$type"
    if [ "$variant" = spm ]; then
      vocab=(--vocab-from models/tokenizer/llama-spm-vocab.gguf)
    else
      vocab=(--vocab 512 ${variant:+--variant "$variant"})
    fi
    build/tools/moe-synth -o "$work/$name.gguf" --arch "$arch" "${vocab[@]}" --type "$type" \
      --layers 2 --embd 256 --heads 4 --kv-heads "$kv" --head-dim 64 --experts 8 --experts-used 2 --ff 256 \
      --ctx 512 --seed "$seed" > /dev/null
    python3 "${MAKE_GOLDEN:-scripts/make-golden.py}" --llama-build "$llama" --model "$work/$name.gguf" \
      --prompts models/golden/arch-prompts.jsonl --name "$name" --out "models/golden/$isa/$name.json" ||
      echo "make-arch-goldens: no golden for $name (make-golden.py said why above)" >&2
  done
done
