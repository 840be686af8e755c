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

// 2-bit K-quant: 16 sub-blocks of 16; scales[i] holds sub-block i's 4-bit scale (low
// nibble) and 4-bit min (high nibble); value = d * scale * q - dmin * min, q in 0..3. The
// codes of values 128h + 32k + l (h < 2, k < 4, l < 32) are bits 2k..2k+1 of qs[32h + l].
struct block_q2_k {
    std::uint8_t scales[qk_k / 16];
    std::uint8_t qs[qk_k / 4];
    std::uint16_t d;
    std::uint16_t dmin;
};
static_assert(sizeof(block_q2_k) == 84);

// 3-bit K-quant: 16 sub-blocks of 16 with signed 6-bit scales (stored + 32, packed in 12
// bytes: low 4 bits in bytes 0..7, high 2 bits in bytes 8..11); value = d * (scale - 32) *
// (q - 4), q in 0..7. Value 128h + 32k + l: low 2 bits of q as in Q2_K, bit 2 is bit
// 4h + k of hmask[l].
struct block_q3_k {
    std::uint8_t hmask[qk_k / 8];
    std::uint8_t qs[qk_k / 4];
    std::uint8_t scales[12];
    std::uint16_t d;
};
static_assert(sizeof(block_q3_k) == 110);

// 5-bit K-quant: Q4_K's layout (8 sub-blocks of 32, 6-bit scales and mins packed alike)
// plus a fifth bit per value: value 64j + l (l < 32) has bit 2j of qh[l], value 64j + 32 + l
// bit 2j + 1; value = d * scale * q - dmin * min, q in 0..31.
struct block_q5_k {
    std::uint16_t d;
    std::uint16_t dmin;
    std::uint8_t scales[k_scale_size];
    std::uint8_t qh[qk_k / 8];
    std::uint8_t qs[qk_k / 2];
};
static_assert(sizeof(block_q5_k) == 176);

// 4-bit non-linear quant on 256-value super-blocks: 8 sub-blocks of 32 with 6-bit scales
// (low 4 bits: nibble j % 2 of scales_l[j / 2]; high 2 bits: bits 2j..2j+1 of scales_h);
// value = d * (scale - 32) * kvalues_iq4nl[code]. Sub-block j's codes: values 0..15 in the
// low nibbles of qs[16j..16j+15], values 16..31 in the high nibbles.
struct block_iq4_xs {
    std::uint16_t d;
    std::uint16_t scales_h;
    std::uint8_t scales_l[qk_k / 64];
    std::uint8_t qs[qk_k / 2];
};
static_assert(sizeof(block_iq4_xs) == 136);

// The 16 levels of IQ4_NL / IQ4_XS codes (ggml's kvalues_iq4nl).
inline constexpr std::int8_t kvalues_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                  1,    13,   25,  38,  53,  69,  89,  113};

// Activations for K-quant dot products: float scale, 256 int8 values, and the sums of each
// group of 16 values (used to apply the q4_K minimums without touching the values).
struct block_q8_k {
    float d;
    std::int8_t qs[qk_k];
    std::int16_t bsums[qk_k / 16];
};
static_assert(sizeof(block_q8_k) == 292);

// ---------------------------------------------------------------------------------------
// The 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4) and the Q8_1 activations
// that Q4_1/Q5_1 dot products consume. In every one, byte j of the 16 nibble bytes holds
// value j in its low nibble and value j + 16 in its high nibble.

inline constexpr int qk_q32 = 32;

// value = (q - 8) * d
struct block_q4_0 {
    std::uint16_t d;
    std::uint8_t qs[qk_q32 / 2];
};
static_assert(sizeof(block_q4_0) == 18);

// value = q * d + m
struct block_q4_1 {
    std::uint16_t d;
    std::uint16_t m;
    std::uint8_t qs[qk_q32 / 2];
};
static_assert(sizeof(block_q4_1) == 20);

// 5-bit codes: the low 4 bits in nibbles, bit 4 of value j in bit j of the little-endian
// 32-bit qh; value = (q - 16) * d.
struct block_q5_0 {
    std::uint16_t d;
    std::uint8_t qh[4];
    std::uint8_t qs[qk_q32 / 2];
};
static_assert(sizeof(block_q5_0) == 22);

// value = q * d + m, codes as in block_q5_0.
struct block_q5_1 {
    std::uint16_t d;
    std::uint16_t m;
    std::uint8_t qh[4];
    std::uint8_t qs[qk_q32 / 2];
};
static_assert(sizeof(block_q5_1) == 24);

// Activations for Q4_1/Q5_1: d as in Q8_0, and s = d * (sum of qs) so the weights' m can be
// applied once per block.
struct block_q8_1 {
    std::uint16_t d;
    std::uint16_t s;
    std::int8_t qs[qk_q32];
};
static_assert(sizeof(block_q8_1) == 36);

// value = d * kvalues_iq4nl[q]
struct block_iq4_nl {
    std::uint16_t d;
    std::uint8_t qs[qk_q32 / 2];
};
static_assert(sizeof(block_iq4_nl) == 18);

// value = kvalues_mxfp4[q] * 2^(e - 128): the table holds the FP4 E2M1 values doubled, so
// the E8M0 scale 2^(e - 127) is applied halved (e8m0_to_fp32_half in kernel_impl.h).
struct block_mxfp4 {
    std::uint8_t e;
    std::uint8_t qs[qk_q32 / 2];
};
static_assert(sizeof(block_mxfp4) == 17);

// (kvalues_iq4nl, IQ4_NL's levels, is defined above with IQ4_XS, which shares them.)
inline constexpr std::int8_t kvalues_mxfp4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

}  // namespace moed::kernels
