// AVX2 (+FMA, F16C) matmul kernels of Q2_K, Q3_K, Q5_K and IQ4_XS weights with Q8_K
// activations.
//
// The float arithmetic is llama.cpp's (ggml-cpu/arch/x86/quants.c, ggml_vec_dot_*_q8_K,
// which its AVX2 and AVX-512 builds both run for these types), so a row gives its bits:
// per super-block, 8 int32 lanes where lane i holds sum over the block's eight 32-value
// chunks c of scale(c, i) * (dot product of values 4i..4i+3 of chunk c) (scale(c, i): the
// chunk's scale, or for the 16-value sub-blocks of Q2_K/Q3_K the scale of value 4i's half);
// those lanes are converted to float and joined to an 8-lane accumulator with one FMA by
// d * x.d, and the row ends in the 8-lane horizontal sum. On top of that:
// - Q2_K: before the sums, an FMA of -dmin * x.d with the minimums' 8 madd lanes
//   (lane k: min[2k] * bsum[2k] + min[2k+1] * bsum[2k+1]).
// - Q5_K: the minimums go into a scalar: s = fma(-dmin * x.d, sum_k min[k] * (the sum of
//   the 32 activations of sub-block k), s) per block (the fused multiply-add that GCC
//   contracts llama.cpp's `summs += dmin * x` into), added after the horizontal sum.
// Integer sums are exact, so the lanes may be formed in any order; no pair sum of
// `vpmaddubsw` can saturate (Q2_K 2*3*127, Q3_K 2*4*127, Q5_K 2*31*127, IQ4_XS 2*127*127).
// Each chunk of a weight block is unpacked once per tile and used for up to 4 tokens.
// Internal linkage throughout; see kernel_impl.h.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/simd_avx2.h"

namespace moed::kernels::detail {

namespace {

static_assert(sizeof(block_q2_k) == 84 && sizeof(block_q3_k) == 110 && sizeof(block_q5_k) == 176 &&
              sizeof(block_iq4_xs) == 136 && sizeof(block_q8_k) == 292);

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// For 16-value sub-blocks: the madd scale vector of 32-value chunk c, scale 2c in its low 8
// int16 and 2c+1 in its high 8. `lo` holds scales 0..7 as int16 in both 128-bit lanes, `hi`
// scales 8..15.
inline __m256i chunk_scales_16(__m256i lo, __m256i hi, int c) {
    const int k = c % 4;
    // int16 element e is the byte pair (2e, 2e+1): 0x0100 + 0x0202 * e as a shuffle.
    const __m256i pick = _mm256_set_m128i(_mm_set1_epi16(static_cast<short>(0x0100 + 0x0202 * (2 * k + 1))),
                                          _mm_set1_epi16(static_cast<short>(0x0100 + 0x0202 * (2 * k))));
    return _mm256_shuffle_epi8(c < 4 ? lo : hi, pick);
}

template <int T>
void token_blocks(const gemm_args& a, std::int64_t t0, const block_q8_k** xb) {
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    }
}

// The tiles below walk each block chunk by chunk: a chunk's codes and scale are unpacked
// and at once multiplied with the tile's tokens, so nothing unpacked outlives the chunk.

// ---------------------------------------------------------------------------------------
// Q2_K x Q8_K

template <int T>
void q2_k_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q2_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
    token_blocks<T>(a, t0, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q2_k& w = wb[b];
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(packed, m4));
        const __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        const __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        __m256i sum[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) sum[t] = _mm256_setzero_si256();
        // Chunk 4h + k: bits 2k..2k+1 of qs[32h..32h+31].
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i bits = load256(w.qs + 32 * h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
                const int c = 4 * h + k;
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                const __m256i sc = chunk_scales_16(sc_lo, sc_hi, c);
#pragma GCC unroll 8
                for (int t = 0; t < T; ++t) {
                    const __m256i p16 = _mm256_maddubs_epi16(q, load256(xb[t][b].qs + 32 * c));
                    sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(sc, p16));
                }
            }
        }
        const float d = half_to_float(w.d);
        const float dmin = half_to_float(w.dmin);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const __m256i prod_min = _mm256_madd_epi16(mins16, load256(x.bsums));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-x.d * dmin), _mm256_cvtepi32_ps(prod_min), acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * d), _mm256_cvtepi32_ps(sum[t]), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------
// Q3_K x Q8_K: signed codes q in -4..3 (low bits plus 4 * high bit, minus 4); their signs
// move to the activations (maddubs(|q|, sign(x, q))), which gives llama.cpp's
// maddubs(low, x) - maddubs(4 * (1 - high), x) pair for pair.

template <int T>
void q3_k_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q3_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
    token_blocks<T>(a, t0, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i four = _mm256_set1_epi8(4);
    const __m256i zero = _mm256_setzero_si256();
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q3_k& w = wb[b];
        std::uint32_t words[4];
        q3_k_scale_words(w.scales, words);
        const __m128i scales8 = _mm_sub_epi8(_mm_setr_epi32(static_cast<int>(words[0]), static_cast<int>(words[1]),
                                                            static_cast<int>(words[2]), static_cast<int>(words[3])),
                                             _mm_set1_epi8(32));
        const __m256i sc16 = _mm256_cvtepi8_epi16(scales8);
        const __m256i sc_lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
        const __m256i sc_hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
        const __m256i hbits = load256(w.hmask);
        __m256i sum[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) sum[t] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i bits = load256(w.qs + 32 * h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
                const int c = 4 * h + k;
                const __m256i low = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                // Bit c of hmask: 4 where it is clear, subtracted.
                const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << c));
                const __m256i off = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit), zero), four);
                const __m256i q = _mm256_sub_epi8(low, off);
                const __m256i qabs = _mm256_sign_epi8(q, q);
                const __m256i sc = chunk_scales_16(sc_lo, sc_hi, c);
#pragma GCC unroll 8
                for (int t = 0; t < T; ++t) {
                    const __m256i p16 = _mm256_maddubs_epi16(qabs, _mm256_sign_epi8(load256(xb[t][b].qs + 32 * c), q));
                    sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(sc, p16));
                }
            }
        }
        const float d = half_to_float(w.d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(xb[t][b].d * d), _mm256_cvtepi32_ps(sum[t]), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------
// Q5_K x Q8_K

// The minimums' integer sum of a block: sum_k min[k] * (bsum[2k] + bsum[2k+1]).
inline int q5_k_min_sum(__m128i mins16, const std::int16_t* bsums) {
    const __m128i bs = _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bsums)),
                                      _mm_loadu_si128(reinterpret_cast<const __m128i*>(bsums + 8)));
    __m128i p = _mm_madd_epi16(mins16, bs);
    p = _mm_add_epi32(p, _mm_unpackhi_epi64(p, p));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, 0x55));
    return _mm_cvtsi128_si32(p);
}

template <int T>
void q5_k_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q5_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
    token_blocks<T>(a, t0, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i zero = _mm256_setzero_si256();
    const __m256i sixteen = _mm256_set1_epi8(16);
    __m256 acc[T];
    __m128 min_acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        acc[t] = _mm256_setzero_ps();
        min_acc[t] = _mm_setzero_ps();
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q5_k& w = wb[b];
        std::uint64_t scales, mins;
        q4_k_unpack_scales(w.scales, &scales, &mins);
        const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(scales))));
        const __m128i mins16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(mins)));
        const __m256i hbits = load256(w.qh);
        __m256i sum[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) sum[t] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const __m256i raw = load256(w.qs + 32 * j);
#pragma GCC unroll 2
            for (int half = 0; half < 2; ++half) {
                // Chunk 2j + half: low (half 0) or high nibbles, fifth bit 2j + half of qh.
                const int c = 2 * j + half;
                const __m256i nibbles = _mm256_and_si256(half == 0 ? raw : _mm256_srli_epi16(raw, 4), m4);
                const __m256i bit = _mm256_set1_epi8(static_cast<char>(1 << c));
                const __m256i fifth = _mm256_andnot_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit), zero), sixteen);
                const __m256i q = _mm256_or_si256(nibbles, fifth);
                const __m256i sc = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(static_cast<short>(0x0100 + 0x0202 * c)));
#pragma GCC unroll 8
                for (int t = 0; t < T; ++t) {
                    const __m256i p16 = _mm256_maddubs_epi16(q, load256(xb[t][b].qs + 32 * c));
                    sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(sc, p16));
                }
            }
        }
        const float d = half_to_float(w.d);
        const float dmin = half_to_float(w.dmin);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const float min_sum = static_cast<float>(q5_k_min_sum(mins16, x.bsums));
            min_acc[t] = _mm_fmadd_ss(_mm_set_ss(-x.d * dmin), _mm_set_ss(min_sum), min_acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * d), _mm256_cvtepi32_ps(sum[t]), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]) + _mm_cvtss_f32(min_acc[t]);
}

// ---------------------------------------------------------------------------------------
// IQ4_XS x Q8_K: codes looked up in kvalues_iq4nl; the signs of the (signed) values move to
// the activations, as llama.cpp's mul_add_epi8 does.

// The 8 scales (-32..31) of an iq4_XS block, each as an int16 pair filling its int32 lane.
inline __m256i iq4_xs_scale_pairs(const block_iq4_xs& w) {
    std::uint32_t low_bits;
    std::memcpy(&low_bits, w.scales_l, sizeof low_bits);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i l = _mm_cvtsi32_si128(static_cast<int>(low_bits));
    // Byte j: the low 4 bits of scale j (nibble j % 2 of scales_l[j / 2]).
    const __m128i low = _mm_unpacklo_epi8(_mm_and_si128(l, m4), _mm_and_si128(_mm_srli_epi16(l, 4), m4));
    const __m256i high = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(w.scales_h), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)),
                                          _mm256_set1_epi32(3));
    const __m256i sc = _mm256_sub_epi32(_mm256_or_si256(_mm256_cvtepu8_epi32(low), _mm256_slli_epi32(high, 4)), _mm256_set1_epi32(32));
    return _mm256_or_si256(_mm256_and_si256(sc, _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(sc, 16));
}

template <int T>
void iq4_xs_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_iq4_xs*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
    token_blocks<T>(a, t0, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m128i values = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kvalues_iq4nl));
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_iq4_xs& w = wb[b];
        const __m256i pairs = iq4_xs_scale_pairs(w);
        __m256i sum[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) sum[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int c = 0; c < 8; ++c) {
            const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qs + 16 * c));
            const __m256i v = _mm256_set_m128i(_mm_shuffle_epi8(values, _mm_and_si128(_mm_srli_epi16(bits, 4), m4)),
                                               _mm_shuffle_epi8(values, _mm_and_si128(bits, m4)));
            const __m256i vabs = _mm256_sign_epi8(v, v);
            const __m256i sc = _mm256_permutevar8x32_epi32(pairs, _mm256_set1_epi32(c));
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) {
                const __m256i p16 = _mm256_maddubs_epi16(vabs, _mm256_sign_epi8(load256(xb[t][b].qs + 32 * c), v));
                sum[t] = _mm256_add_epi32(sum[t], _mm256_madd_epi16(p16, sc));
            }
        }
        const float d = half_to_float(w.d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb[t][b].d), _mm256_cvtepi32_ps(sum[t]), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------
// Driver: token tiles of 4 (then 3, 2 or 1), each weight row unpacked once per tile.

template <template <int> class Tile>
void gemm_tiles(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) {
        for (std::int64_t r = r0; r < r1; ++r) Tile<4>::run(a, r, t0);
    }
    switch (a.n_tokens - t0) {
        case 3: for (std::int64_t r = r0; r < r1; ++r) Tile<3>::run(a, r, t0); break;
        case 2: for (std::int64_t r = r0; r < r1; ++r) Tile<2>::run(a, r, t0); break;
        case 1: for (std::int64_t r = r0; r < r1; ++r) Tile<1>::run(a, r, t0); break;
        default: break;
    }
}

template <int T> struct q2_k_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q2_k_tile<T>(a, r, t0); } };
template <int T> struct q3_k_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q3_k_tile<T>(a, r, t0); } };
template <int T> struct q5_k_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q5_k_tile<T>(a, r, t0); } };
template <int T> struct iq4_xs_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { iq4_xs_tile<T>(a, r, t0); } };

}  // namespace

gemm_fn gemm_kquant_avx2(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q2_k: return &gemm_tiles<q2_k_kernel>;
        case tensor_type::q3_k: return &gemm_tiles<q3_k_kernel>;
        case tensor_type::q5_k: return &gemm_tiles<q5_k_kernel>;
        case tensor_type::iq4_xs: return &gemm_tiles<iq4_xs_kernel>;
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
