// Block layouts of the quantized types, byte for byte as llama.cpp's ggml stores them in
// GGUF files (QK_K = 256). Scales are IEEE halves stored as raw bits.
#pragma once

#include <cstdint>

namespace moed::kernels {

inline constexpr int qk8_0 = 32;
inline constexpr int qk_k = 256;
inline constexpr int k_scale_size = 12;

struct block_q8_0 {
    std::uint16_t d;  // delta (fp16)
    std::int8_t qs[qk8_0];
};
static_assert(sizeof(block_q8_0) == 34);

// 4-bit K-quant: 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed in
// `scales`; value = d * scale * q - dmin * min.
struct block_q4_k {
    std::uint16_t d;
    std::uint16_t dmin;
    std::uint8_t scales[k_scale_size];
    std::uint8_t qs[qk_k / 2];
};
static_assert(sizeof(block_q4_k) == 144);

// 6-bit K-quant: 16 sub-blocks of 16 with int8 scales; value = d * scale * (q - 32).
struct block_q6_k {
    std::uint8_t ql[qk_k / 2];
    std::uint8_t qh[qk_k / 4];
    std::int8_t scales[qk_k / 16];
    std::uint16_t d;
};
static_assert(sizeof(block_q6_k) == 210);

// Activations for K-quant dot products: float scale, 256 int8 values, and the sums of each
// group of 16 values (used to apply the q4_K minimums without touching the values).
struct block_q8_k {
    float d;
    std::int8_t qs[qk_k];
    std::int16_t bsums[qk_k / 16];
};
static_assert(sizeof(block_q8_k) == 292);

}  // namespace moed::kernels
