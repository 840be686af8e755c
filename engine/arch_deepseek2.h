// llama.cpp's deepseek2 (DeepSeek-V2, V2-Lite, V2.5, V3, R1, Kimi-K2): multi-head latent
// attention in the absorbed form (model_hparams::mla; q-LoRA when the file has
// attention.q_lora_rank > 0, as V3 and V2 but not V2-Lite), NORM RoPE on the rotary part
// with YaRN and DeepSeek's mscale in the attention scale; leading dense layers; softmax
// (V2) or sigmoid with a selection bias and group-limited top-k (V3) routing, weights
// optionally renormalised and scaled; ungated shared experts. Files from older converters
// (no key_length_mla, one attn_kv_b tensor per layer) run decompressed, as llama.cpp runs
// them (mla_config::absorbed).
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& deepseek2_architecture();

}  // namespace moed::engine
