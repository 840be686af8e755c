// Private to kernels/cpu: the seams between the entry points (quantize.cpp, matmul.cpp,
// ops.cpp) and the per-ISA kernel files. The ISA files are compiled with -mavx2/-mavx512*
// flags, so everything they export is a plain function taking plain pointers, and the few
// helpers here are `static inline` (internal linkage): an ordinary inline function
// instantiated in an AVX-512 file could otherwise be picked by the linker for scalar callers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/tensor_type.h"
#include "kernels/cpu/sum_order.h"

namespace moed::kernels::detail {

// Decode reads each weight byte once, from memory, in tiles of a few rows that move down the
// matrix. The hardware prefetchers lose track of a tile's rows (short streams a row apart),
// and a 2880x2880 MXFP4 matrix then streams at half the speed of one that is read in order.
// So a decode tile asks for the bytes the next tile will read at the columns it works on
// now (`at` + `tile_bytes`), `bytes` of them (the tile's step along its row), one tile ahead.
// (Float weights stream at the memory's speed without it: their rows are long.)
static inline void prefetch_next_tile(const void* at, std::size_t tile_bytes, std::size_t bytes) noexcept {
    const char* p = static_cast<const char*>(at) + tile_bytes;
    for (std::size_t o = 0; o < bytes; o += 64) __builtin_prefetch(p + o, 0, 3);
}

// One matmul job: weights rows r0..r1 times all activation rows.
struct gemm_args {
    const std::byte* w = nullptr;  // row r at w + r * w_stride
    std::size_t w_stride = 0;
    std::int64_t cols = 0;
    const std::byte* x = nullptr;  // converted activation row t at x + t * x_stride
    std::size_t x_stride = 0;
    std::int64_t n_tokens = 0;
    float* y = nullptr;  // y[t * y_stride + r]
    std::int64_t y_stride = 0;
    std::int64_t rows = 0;  // of the whole matrix (a job covers a part of them)
    bool repackable = true;  // matrix_view::repackable
    // Per activation row, how float dot products sum (sum_order.h); null: every row alone.
    const sum_order* orders = nullptr;
};
using gemm_fn = void (*)(const gemm_args& args, std::int64_t r0, std::int64_t r1);

// Optional extensions within the AVX-512 level: AVX512-BF16 (vdpbf16ps) for BF16 weights.
// Tests may switch it off to reach the plain AVX-512 BF16 kernel on a CPU that has it.
bool use_avx512_bf16() noexcept;
void allow_avx512_bf16(bool allowed) noexcept;

// Kernels for a weight type; nullptr where a level has no kernel of its own for the type.
gemm_fn gemm_scalar(tensor_type weight_type) noexcept;
gemm_fn gemm_avx2(tensor_type weight_type) noexcept;
gemm_fn gemm_avx512(tensor_type weight_type) noexcept;

// The same for the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4; files
// matmul_q32*.cpp); the per-level dispatchers above hand those types on to these.
gemm_fn gemm_q32_scalar(tensor_type weight_type) noexcept;
gemm_fn gemm_q32_avx2(tensor_type weight_type) noexcept;
gemm_fn gemm_q32_avx512(tensor_type weight_type) noexcept;

// Row conversions of the 32-value block types and Q8_1 (quantize_q32.cpp); quantize.cpp's
// entry points hand those types, and only those, on to these.
void dequantize_q32_row(tensor_type type, const void* src, float* dst, std::int64_t n);
void quantize_q32_row(tensor_type type, const float* src, void* dst, std::int64_t n);
// Q4_1/Q5_1 rows as their two parts: q * d per value, and each block's m (for the reference,
// which applies m with the activation block's sum s, as the kernels and llama.cpp do).
void dequantize_q32_split(tensor_type type, const void* src, float* scaled, float* mins, std::int64_t n);

// Activation conversions (f32 -> the type a weight type consumes); all produce the same
// bits as the scalar versions. n is a multiple of the block size.
using convert_fn = void (*)(const float* x, void* dst, std::int64_t n);
void quantize_q8_0_act_scalar(const float* x, void* dst, std::int64_t n);
void quantize_q8_k_act_scalar(const float* x, void* dst, std::int64_t n);
void quantize_q8_1_act_scalar(const float* x, void* dst, std::int64_t n);
void convert_f16_scalar(const float* x, void* dst, std::int64_t n);
void convert_bf16_scalar(const float* x, void* dst, std::int64_t n);
void quantize_q8_0_act_avx2(const float* x, void* dst, std::int64_t n);
void quantize_q8_k_act_avx2(const float* x, void* dst, std::int64_t n);
void quantize_q8_1_act_avx2(const float* x, void* dst, std::int64_t n);
void convert_f16_avx2(const float* x, void* dst, std::int64_t n);
void convert_bf16_avx2(const float* x, void* dst, std::int64_t n);
void quantize_q8_0_act_avx512(const float* x, void* dst, std::int64_t n);
void quantize_q8_k_act_avx512(const float* x, void* dst, std::int64_t n);
void quantize_q8_1_act_avx512(const float* x, void* dst, std::int64_t n);
void convert_f16_avx512(const float* x, void* dst, std::int64_t n);
void convert_bf16_avx512(const float* x, void* dst, std::int64_t n);

// Q2_K, Q3_K, Q5_K and IQ4_XS: kernels in matmul_kquant{,_avx2,_avx512}.cpp, row
// conversions in quantize_kquant.cpp. The per-ISA dispatchers above forward these types here.
gemm_fn gemm_kquant_scalar(tensor_type weight_type) noexcept;
gemm_fn gemm_kquant_avx2(tensor_type weight_type) noexcept;
gemm_fn gemm_kquant_avx512(tensor_type weight_type) noexcept;
// n is a multiple of 256 and type one of the four.
void dequantize_kquant(tensor_type type, const void* src, float* dst, std::int64_t n);
void quantize_kquant(tensor_type type, const float* src, void* dst, std::int64_t n);

// The 16 scales of a q3_K block plus 32 (0..63) from their 12-byte packing, as ggml unpacks
// them: byte b of words[w] is scale 4w + b. Scale j has its low 4 bits in byte j (j < 8) or
// in the high nibble of byte j - 8, and its high 2 bits at bits 2 * (j / 4) of byte 8 + j % 4.
static inline void q3_k_scale_words(const std::uint8_t* packed, std::uint32_t* words) noexcept {
    std::uint32_t a[3];
    __builtin_memcpy(a, packed, 12);
    const std::uint32_t low4 = 0x0f0f0f0fu, low2 = 0x03030303u;
    words[0] = (a[0] & low4) | ((a[2] & low2) << 4);
    words[1] = (a[1] & low4) | (((a[2] >> 2) & low2) << 4);
    words[2] = ((a[0] >> 4) & low4) | (((a[2] >> 4) & low2) << 4);
    words[3] = ((a[1] >> 4) & low4) | (((a[2] >> 6) & low2) << 4);
}

// The 16 signed scales (stored value - 32, in -32..31) of a q3_K block.
static inline void q3_k_unpack_scales(const std::uint8_t* packed, std::int8_t* scales) noexcept {
    std::uint32_t words[4];
    q3_k_scale_words(packed, words);
    for (int j = 0; j < 16; ++j) scales[j] = static_cast<std::int8_t>(((words[j / 4] >> (8 * (j % 4))) & 0xFF) - 32);
}

// The scale of sub-block j (0..7) of an iq4_XS block, minus 32 (-32..31).
static inline int iq4_xs_scale(std::uint16_t scales_h, const std::uint8_t* scales_l, int j) noexcept {
    const int low = (scales_l[j / 2] >> (4 * (j % 2))) & 0xF;
    const int high = (scales_h >> (2 * j)) & 3;
    return (low | (high << 4)) - 32;
}

// Unpacks the 6-bit scale and min of sub-block j (0..7) of a q4_K block.
static inline void q4_k_scale_min(int j, const std::uint8_t* q, std::uint8_t* sc, std::uint8_t* m) noexcept {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = static_cast<std::uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

// The eight 6-bit scales and mins of a q4_K (or q5_K) block as bytes: scales[j] in byte j of
// *scales, mins[j] in byte j of *mins (what q4_k_scale_min gives one at a time).
static inline void q4_k_unpack_scales(const std::uint8_t* packed, std::uint64_t* scales, std::uint64_t* mins) noexcept {
    std::uint32_t u[3];
    __builtin_memcpy(u, packed, 12);
    const std::uint32_t k63 = 0x3f3f3f3fu, k15 = 0x0f0f0f0fu, k48 = 0x30303030u;
    const std::uint32_t sc_lo = u[0] & k63;
    const std::uint32_t m_lo = u[1] & k63;
    const std::uint32_t sc_hi = (u[2] & k15) | ((u[0] >> 2) & k48);
    const std::uint32_t m_hi = ((u[2] >> 4) & k15) | ((u[1] >> 2) & k48);
    *scales = sc_lo | (static_cast<std::uint64_t>(sc_hi) << 32);
    *mins = m_lo | (static_cast<std::uint64_t>(m_hi) << 32);
}

// Rounds to the nearest integer, ties to even, as ggml's nearest_int and the x86 `round`
// instructions do (valid for |v| < 2^22, which quantized values always are).
static inline int round_nearest_even(float v) noexcept {
    float t = v + 12582912.f;
    std::uint32_t u;
    __builtin_memcpy(&u, &t, sizeof u);
    return static_cast<int>(u & 0x007fffffu) - 0x00400000;
}

// The E8M0 scale of an MXFP4 block halved, 2^(e - 128), bit for bit as ggml's
// ggml_e8m0_to_fp32_half: e = 0 and 1 give the subnormals 2^-128 and 2^-127, and e = 255
// (NaN in the OCP format) gives 2^127 like any other exponent.
static inline float e8m0_to_fp32_half(std::uint8_t e) noexcept {
    const std::uint32_t bits = e < 2 ? 0x00200000u << e : static_cast<std::uint32_t>(e - 1) << 23;
    float f;
    __builtin_memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace moed::kernels::detail
