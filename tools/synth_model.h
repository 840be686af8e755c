// The model synthesizer behind moe-synth, as a library so tests can make models too:
// random-weight qwen3moe GGUF files of any shape and storage type, with a byte-level BPE
// vocabulary of lowercase words (llama.cpp loads these files as well).
#pragma once

#include <cstdint>
#include <string>

#include "common/result.h"

namespace moed::tools {

struct synth_shape {
    std::uint32_t layers = 2;
    std::int64_t embd = 256;
    std::int64_t heads = 4;
    std::int64_t kv_heads = 2;
    std::int64_t head_dim = 64;
    std::int64_t experts = 8;
    std::int64_t experts_used = 2;
    std::int64_t ff = 256;
    std::int64_t vocab = 512;
    std::int64_t ctx = 512;
};

// `type` is F32, F16, BF16, Q8_0, Q4_K, Q6_K or Q4_K_M (llama.cpp's mix: Q6_K for the
// output head and for attn_v / ffn_down on some layers). Errors name the bad parameter.
result<void> synthesize_model(const std::string& path, const synth_shape& shape,
                              const std::string& type, std::uint64_t seed);

}  // namespace moed::tools
