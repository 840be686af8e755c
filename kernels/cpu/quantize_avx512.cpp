// AVX-512 activation conversions (f32 -> Q8_0 / Q8_1 / Q8_K / f16 / bf16), bit-identical with the
// scalar versions in quantize.cpp: the same float operations, and conversions to integers
// with the default rounding mode (to nearest, ties to even) as llama.cpp's x86 code uses.
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized inside themselves; see
// matmul_avx512.cpp.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

inline float hmax_ps(__m512 v) {
    __m256 m8 = _mm256_max_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline int hsum_epi32(__m512i v) {
    __m256i s8 = _mm256_add_epi32(_mm512_extracti64x4_epi64(v, 0), _mm512_extracti64x4_epi64(v, 1));
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x55));
    return _mm_cvtsi128_si32(s);
}

inline __m128i pack_i32_to_i8(__m512i v) { return _mm512_cvtsepi32_epi8(v); }

}  // namespace

void quantize_q8_0_act_avx512(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_0*>(dst);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < n / qk8_0; ++b, x += qk8_0) {
        const __m512 v0 = _mm512_loadu_ps(x);
        const __m512 v1 = _mm512_loadu_ps(x + 16);
        const float amax = hmax_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m512 mul = _mm512_set1_ps(id);
        // cvtps rounds with MXCSR's default mode: to nearest, ties to even.
        const __m128i q0 = pack_i32_to_i8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, mul)));
        const __m128i q1 = pack_i32_to_i8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, mul)));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs), q0);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16), q1);
    }
}

// Q8_0's quants and d, plus s = d * (sum of the quants) (see quantize_q8_1_act_avx2).
void quantize_q8_1_act_avx512(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_1*>(dst);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        const __m512 v0 = _mm512_loadu_ps(x);
        const __m512 v1 = _mm512_loadu_ps(x + 16);
        const float amax = hmax_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        const __m512 mul = _mm512_set1_ps(id);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, mul));
        const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, mul));
        const int sum = hsum_epi32(_mm512_add_epi32(q0, q1));
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        y[b].s = _cvtss_sh(d * static_cast<float>(sum), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs), pack_i32_to_i8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16), pack_i32_to_i8(q1));
    }
}

void quantize_q8_k_act_avx512(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_k*>(dst);
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        __m512 vmax = _mm512_setzero_ps();
        for (int j = 0; j < qk_k; j += 16) vmax = _mm512_max_ps(vmax, _mm512_andnot_ps(sign, _mm512_loadu_ps(x + j)));
        const float amax = hmax_ps(vmax);
        if (amax == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_k));
            continue;
        }
        // The signed value of largest magnitude, first occurrence (as the scalar loop's `>`).
        float max = 0.0f;
        const __m512 va = _mm512_set1_ps(amax);
        for (int j = 0; j < qk_k; j += 16) {
            const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, _mm512_loadu_ps(x + j)), va, _CMP_EQ_OQ);
            if (hit != 0) {
                max = x[j + __builtin_ctz(hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m512 mul = _mm512_set1_ps(iscale);
        for (int j = 0; j < qk_k; j += 16) {
            const __m512i q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + j), mul)),
                                               _mm512_set1_epi32(127));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + j), pack_i32_to_i8(q));
            y[b].bsums[j / 16] = static_cast<std::int16_t>(hsum_epi32(q));
        }
        y[b].d = 1 / iscale;
    }
}

void convert_f16_avx512(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<std::uint8_t*>(dst);
    std::int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + 2 * i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    if (i < n) {
        const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(y + 2 * i, m,
                                 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
}

namespace {
inline __m256i bf16_round(__m512 v) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000), _MM_CMPINT_NLE);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(64));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet));
}
}  // namespace

void convert_bf16_avx512(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<std::uint8_t*>(dst);
    std::int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + 2 * i), bf16_round(_mm512_loadu_ps(x + i)));
    }
    if (i < n) {
        const auto m = static_cast<__mmask16>((1u << (n - i)) - 1u);
        _mm256_mask_storeu_epi16(y + 2 * i, m, bf16_round(_mm512_maskz_loadu_ps(m, x + i)));
    }
}

}  // namespace moed::kernels::detail
