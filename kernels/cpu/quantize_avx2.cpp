// AVX2 (+F16C) activation conversions (f32 -> Q8_0 / Q8_1 / Q8_K / f16 / bf16), bit-identical with
// the scalar versions in quantize.cpp: the same float operations, and conversions to
// integers with the default rounding mode (to nearest, ties to even) as llama.cpp's x86
// code uses.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x55));
    return _mm_cvtsi128_si32(s);
}

inline __m128i pack_i32x16_to_i8(__m256i a, __m256i b) {
    // packs work within 128-bit lanes; the permute restores value order.
    const __m256i p16 = _mm256_packs_epi32(a, b);                                   // a0 b0 a1 b1 (by 4)
    const __m256i p16o = _mm256_permute4x64_epi64(p16, 0xD8);                       // a0 a1 b0 b1
    const __m128i p8 = _mm_packs_epi16(_mm256_castsi256_si128(p16o), _mm256_extracti128_si256(p16o, 1));
    return p8;
}

inline __m128i bf16_round(__m256 v) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
    // NaN: |u| > 0x7f800000 as signed ints (|u| is non-negative).
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
    const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
    const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
    // Values are < 2^16, so an unsigned saturating pack is exact.
    const __m256i p = _mm256_packus_epi32(r, r);
    return _mm256_castsi256_si128(_mm256_permute4x64_epi64(p, 0x08));
}

}  // namespace

void quantize_q8_0_act_avx2(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_0*>(dst);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < n / qk8_0; ++b, x += qk8_0) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        const float amax = hmax_ps(m);
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256 mul = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], mul));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs), pack_i32x16_to_i8(q[0], q[1]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16), pack_i32x16_to_i8(q[2], q[3]));
    }
}

// Q8_0's quants and d, plus s = d * (sum of the quants) as llama.cpp's x86
// quantize_row_q8_1 forms it (the int32 sum of the rounded values, times the unrounded d).
void quantize_q8_1_act_avx2(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_1*>(dst);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        __m256 v[4];
        __m256 m = _mm256_setzero_ps();
        for (int k = 0; k < 4; ++k) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        const float amax = hmax_ps(m);
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        const __m256 mul = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], mul));
        const int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        y[b].d = _cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        y[b].s = _cvtss_sh(d * static_cast<float>(sum), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs), pack_i32x16_to_i8(q[0], q[1]));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + 16), pack_i32x16_to_i8(q[2], q[3]));
    }
}

void quantize_q8_k_act_avx2(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_k*>(dst);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        __m256 vmax = _mm256_setzero_ps();
        for (int j = 0; j < qk_k; j += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
        const float amax = hmax_ps(vmax);
        if (amax == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_k));
            continue;
        }
        float max = 0.0f;
        const __m256 va = _mm256_set1_ps(amax);
        for (int j = 0; j < qk_k; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), va, _CMP_EQ_OQ));
            if (hit != 0) {
                max = x[j + __builtin_ctz(static_cast<unsigned>(hit))];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 mul = _mm256_set1_ps(iscale);
        const __m256i cap = _mm256_set1_epi32(127);
        for (int j = 0; j < qk_k; j += 16) {
            const __m256i q0 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), mul)), cap);
            const __m256i q1 = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), mul)), cap);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(y[b].qs + j), pack_i32x16_to_i8(q0, q1));
            y[b].bsums[j / 16] = static_cast<std::int16_t>(hsum_epi32(_mm256_add_epi32(q0, q1)));
        }
        y[b].d = 1 / iscale;
    }
}

void convert_f16_avx2(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<std::uint16_t*>(dst);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; i < n; ++i) y[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

void convert_bf16_avx2(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<std::uint16_t*>(dst);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i), bf16_round(_mm256_loadu_ps(x + i)));
    }
    if (i < n) convert_bf16_scalar(x + i, y + i, n - i);
}

}  // namespace moed::kernels::detail
