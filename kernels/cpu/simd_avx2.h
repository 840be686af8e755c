// Private to kernels/cpu, for the files compiled with -mavx2 -mfma -mf16c only (the
// *_avx2.cpp kernels): small horizontal sums and conversions that several of them use.
// `static inline` (internal linkage) for the reason kernel_impl.h gives. Each sum's tree is
// part of the kernels' rounding order, so a change here changes their bits.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace moed::kernels::detail {

static inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

// The sum of 8 floats: high half + low half, then pairs (llama.cpp's hsum_float_8; its
// high + low is this low + high, and float addition commutes).
static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// The sum of 8 int32 lanes (exact, so any tree will do).
static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x55));
    return _mm_cvtsi128_si32(s);
}

// The sums of four 8-lane int32 vectors, in the lanes of one 128-bit vector.
static inline __m128i hsum4_epi32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

}  // namespace moed::kernels::detail
