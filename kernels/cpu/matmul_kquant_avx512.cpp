// AVX-512 (F, BW, VL, DQ, VNNI) matmul kernels of Q2_K, Q3_K, Q5_K and IQ4_XS weights with
// Q8_K activations.
//
// The float arithmetic is that of llama.cpp's AVX-512 build, so a row gives its bits:
// - Q3_K, Q5_K, IQ4_XS: the build runs the AVX2 dot products of ggml-cpu/arch/x86/quants.c
//   (see matmul_kquant_avx2.cpp for their lane layout and float order). Here the integer
//   sums come from 512-bit vectors of 64 values in value order, lane i of chunk c holding
//   values 64c + 4i..4i+3; adding lane i + 8 to lane i (the fold) gives exactly the AVX2
//   kernels' 8 lanes, and the float steps that follow are theirs.
// - Q2_K: the build repacks Q2_K matrices (whose row count is a multiple of 8, as every
//   model matrix's is) and multiplies them with ggml_gemv/gemm_q2_K_8x8_q8_K
//   (ggml-cpu/arch/x86/repack.cpp), which keep one float lane per (row, token): per block
//   acc = fma(block sum, d * x.d, acc) and acc_min = fma(minimum sum, dmin * x.d, acc_min),
//   and the result acc - acc_min. Here the block sums of up to 4 (row, token) pairs are
//   reduced into the lanes of one vector and carried through the same operations.
// Integer products use VNNI `vpdpbusd` (u8 x s8, four products per int32 lane) and the
// sub-block scales `vpdpwssd`: a lane of four products fits in int16 (Q2_K 4*3*127, Q3_K
// 4*4*127, Q5_K 4*31*127), so vpdpwssd with the scale in the low 16 bits of the lane (high
// 16 bits zero, which also cancels a negative lane's sign bits) multiplies it exactly.
// Q3_K's -4 offset starts each lane at -4 * (its four activations' sum); IQ4_XS values reach
// +-127, so their four-product sums do not fit in int16: the signs move to the activations
// and `vpmaddubsw` forms pair sums, which vpdpwssd scales (scale in both halves).
// Batch invariance: every tile shape runs the same per-(row, token) operations.
// Internal linkage throughout; see kernel_impl.h. GCC 12's AVX-512 headers trip
// -W(maybe-)uninitialized; see matmul_avx512.cpp.
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

static_assert(sizeof(block_q2_k) == 84 && sizeof(block_q3_k) == 110 && sizeof(block_q5_k) == 176 &&
              sizeof(block_iq4_xs) == 136 && sizeof(block_q8_k) == 292);

inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

// llama.cpp's hsum_float_8 (its high + low is this low + high: float addition commutes).
inline float hsum_ps256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Lane i + 8 added to lane i: the 8-lane layout of the AVX2 kernels.
inline __m256i fold(__m512i v) { return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)); }

// The totals of four 8-lane vectors, in lanes 0..3.
inline __m128i hsum4_epi32(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// A 512-bit vector of two 256-bit halves.
inline __m512i halves(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

// Bit 2c of each byte in the low half, bit 2c+1 in the high half: selects the high bits of
// chunk c's two 32-value halves in Q3_K's hmask and Q5_K's qh (broadcast to both halves).
inline __m512i chunk_bits(int c) {
    return halves(_mm256_set1_epi8(static_cast<char>(1 << (2 * c))), _mm256_set1_epi8(static_cast<char>(1 << (2 * c + 1))));
}

// The 2-bit codes of Q2_K/Q3_K in value order: chunk c holds values 64c..64c+63. Values
// 128h + 32k + l are bits 2k..2k+1 of qs[32h + l].
inline void two_bit_codes(const std::uint8_t* qs, __m512i* w) {
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m512i bits = _mm512_loadu_si512(qs);
    const __m512i v0 = _mm512_and_si512(bits, m3);
    const __m512i v1 = _mm512_and_si512(_mm512_srli_epi16(bits, 2), m3);
    const __m512i v2 = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m3);
    const __m512i v3 = _mm512_and_si512(_mm512_srli_epi16(bits, 6), m3);
    // v_k = [32-value chunk k | chunk 4 + k].
    w[0] = _mm512_shuffle_i64x2(v0, v1, 0x44);
    w[1] = _mm512_shuffle_i64x2(v2, v3, 0x44);
    w[2] = _mm512_shuffle_i64x2(v0, v1, 0xEE);
    w[3] = _mm512_shuffle_i64x2(v2, v3, 0xEE);
}

// The scale vectors of 16-value sub-blocks: lane i of s[c] holds the scale of sub-block
// 4c + i/4 in its low 16 bits. `scales32` holds the 16 scales, one per lane, high 16 bits 0.
inline void scales_per_lane_16(__m512i scales32, __m512i* s) {
    const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) s[c] = _mm512_permutexvar_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(4 * c)), scales32);
}

// The scale vectors of 32-value sub-blocks: lane i of s[c] holds the scale of sub-block
// 2c + i/8. `scales32` holds the 8 scales in lanes 0..7.
inline void scales_per_lane_32(__m512i scales32, __m512i* s) {
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) s[c] = _mm512_permutexvar_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(2 * c)), scales32);
}

struct q8_k_quants {
    __m512i x[4];
};

inline q8_k_quants load_quants(const block_q8_k& b) {
    q8_k_quants q;
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) q.x[c] = _mm512_loadu_si512(b.qs + 64 * c);
    return q;
}

template <int R, int T, class W>
void row_and_token_blocks(const gemm_args& a, std::int64_t r0, std::int64_t t0, const W** wb, const block_q8_k** xb) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wb[i] = reinterpret_cast<const W*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
}

// ---------------------------------------------------------------------------------------
// Q2_K x Q8_K: R rows x T tokens, R * T <= 4 (pair p = i * T + t is lane p of the sums).

template <int R, int T>
void q2_k_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    static_assert(R * T <= 4);
    const block_q2_k* wb[R];
    const block_q8_k* xb[T];
    row_and_token_blocks<R, T>(a, r0, t0, wb, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m128i m4 = _mm_set1_epi8(0xF);
    const __m512i zero = _mm512_setzero_si512();
    __m128 acc = _mm_setzero_ps();
    __m128 acc_min = _mm_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        if constexpr (T == 1 && R > 1) {
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) prefetch_next_tile(wb[i] + b, R * a.w_stride, sizeof(*wb[i]));
        }
        __m512i w[R][4], s[R][4];
        __m256i mins16[R];
        float d[R], dmin[R];
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
            const block_q2_k& blk = wb[i][b];
            const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk.scales));
            mins16[i] = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), m4));
            scales_per_lane_16(_mm512_cvtepu8_epi32(_mm_and_si128(packed, m4)), s[i]);
            two_bit_codes(blk.qs, w[i]);
            d[i] = half_to_float(blk.d);
            dmin[i] = half_to_float(blk.dmin);
        }
        __m256i isum[4], msum[4];
        float dy[4] = {}, dx[4] = {}, dmx[4] = {};
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) isum[p] = msum[p] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const q8_k_quants q = load_quants(x);
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) {
                __m512i sum = zero;
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w[i][c], q.x[c]), s[i][c]);
                const int p = i * T + t;
                isum[p] = fold(sum);
                msum[p] = _mm256_madd_epi16(mins16[i], bs);
                dy[p] = x.d;
                dx[p] = d[i];
                dmx[p] = dmin[i];
            }
        }
        const __m128 y_scale = _mm_loadu_ps(dy);
        const __m128i itotal = hsum4_epi32(isum[0], isum[1], isum[2], isum[3]);
        const __m128i mtotal = hsum4_epi32(msum[0], msum[1], msum[2], msum[3]);
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(itotal), _mm_mul_ps(_mm_loadu_ps(dx), y_scale), acc);
        acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(mtotal), _mm_mul_ps(_mm_loadu_ps(dmx), y_scale), acc_min);
    }
    float out[4];
    _mm_storeu_ps(out, _mm_sub_ps(acc, acc_min));
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = out[i * T + t];
    }
}

// ---------------------------------------------------------------------------------------
// Q3_K x Q8_K: codes 0..7 (low bits plus 4 * high bit), each lane started at -4 times the
// sum of its four activations (shared by the rows of a tile).

template <int R, int T>
void q3_k_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const block_q3_k* wb[R];
    const block_q8_k* xb[T];
    row_and_token_blocks<R, T>(a, r0, t0, wb, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i four = _mm512_set1_epi8(4);
    const __m512i low16 = _mm512_set1_epi32(0xFFFF);
    __m256 acc[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        if constexpr (T == 1 && R > 1) {
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) prefetch_next_tile(wb[i] + b, R * a.w_stride, sizeof(*wb[i]));
        }
        __m512i w[R][4], s[R][4];
        float d[R];
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
            const block_q3_k& blk = wb[i][b];
            std::uint32_t words[4];
            q3_k_scale_words(blk.scales, words);
            const __m128i scales8 = _mm_sub_epi8(_mm_setr_epi32(static_cast<int>(words[0]), static_cast<int>(words[1]),
                                                                static_cast<int>(words[2]), static_cast<int>(words[3])),
                                                 _mm_set1_epi8(32));
            const __m512i sc32 = _mm512_and_si512(_mm512_cvtepi8_epi32(scales8), low16);
            scales_per_lane_16(sc32, s[i]);
            two_bit_codes(blk.qs, w[i]);
            const __m512i hbits = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.hmask)));
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) {
                w[i][c] = _mm512_mask_add_epi8(w[i][c], _mm512_test_epi8_mask(hbits, chunk_bits(c)), w[i][c], four);
            }
            d[i] = half_to_float(blk.d);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const q8_k_quants q = load_quants(x);
            __m512i start[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) start[c] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, four, q.x[c]));
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) {
                __m512i sum = zero;
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(start[c], w[i][c], q.x[c]), s[i][c]);
                acc[i][t] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * d[i]), _mm256_cvtepi32_ps(fold(sum)), acc[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps256(acc[i][t]);
    }
}

// ---------------------------------------------------------------------------------------
// Q5_K x Q8_K

template <int R, int T>
void q5_k_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const block_q5_k* wb[R];
    const block_q8_k* xb[T];
    row_and_token_blocks<R, T>(a, r0, t0, wb, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i sixteen = _mm512_set1_epi8(16);
    __m256 acc[R][T];
    __m128 min_acc[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            acc[i][t] = _mm256_setzero_ps();
            min_acc[i][t] = _mm_setzero_ps();
        }
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        if constexpr (T == 1 && R > 1) {
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) prefetch_next_tile(wb[i] + b, R * a.w_stride, sizeof(*wb[i]));
        }
        __m512i w[R][4], s[R][4];
        __m128i mins16[R];
        float d[R], dmin[R];
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
            const block_q5_k& blk = wb[i][b];
            std::uint64_t scales, mins;
            q4_k_unpack_scales(blk.scales, &scales, &mins);
            scales_per_lane_32(_mm512_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(scales))), s[i]);
            mins16[i] = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(mins)));
            const __m512i hbits = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk.qh)));
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const __m512i raw = _mm512_loadu_si512(blk.qs + 64 * h);
                const __m512i lo = _mm512_and_si512(raw, m4);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                // Values 64c..64c+31 are the low nibbles of qs[32c..], 64c+32.. the high ones.
                w[i][2 * h] = _mm512_shuffle_i64x2(lo, hi, 0x44);
                w[i][2 * h + 1] = _mm512_shuffle_i64x2(lo, hi, 0xEE);
            }
#pragma GCC unroll 4
            for (int c = 0; c < 4; ++c) {
                w[i][c] = _mm512_mask_add_epi8(w[i][c], _mm512_test_epi8_mask(hbits, chunk_bits(c)), w[i][c], sixteen);
            }
            d[i] = half_to_float(blk.d);
            dmin[i] = half_to_float(blk.dmin);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const q8_k_quants q = load_quants(x);
            // The sums of the 8 sub-blocks of 32 activations.
            const __m128i bs32 = _mm_hadd_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bsums)),
                                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(x.bsums + 8)));
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) {
                __m512i sum = zero;
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w[i][c], q.x[c]), s[i][c]);
                acc[i][t] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * d[i]), _mm256_cvtepi32_ps(fold(sum)), acc[i][t]);
                __m128i m = _mm_madd_epi16(mins16[i], bs32);
                m = _mm_add_epi32(m, _mm_unpackhi_epi64(m, m));
                m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0x55));
                min_acc[i][t] = _mm_fmadd_ss(_mm_set_ss(-x.d * dmin[i]), _mm_cvtepi32_ps(m), min_acc[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps256(acc[i][t]) + _mm_cvtss_f32(min_acc[i][t]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// IQ4_XS x Q8_K

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

template <int R, int T>
void iq4_xs_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const block_iq4_xs* wb[R];
    const block_q8_k* xb[T];
    row_and_token_blocks<R, T>(a, r0, t0, wb, xb);
    const std::int64_t nb = a.cols / qk_k;
    const __m512i zero = _mm512_setzero_si512();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i values = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(kvalues_iq4nl)));
    // Sub-block j's 16 low-nibble values are 128-bit lane j of `lo`, its high-nibble values
    // lane j of `hi`: chunk 0 (sub-blocks 0, 1) interleaves lanes 0, 1 of both, chunk 1 lanes 2, 3.
    const __m512i first = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    const __m512i second = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    __m256 acc[R][T];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        if constexpr (T == 1 && R > 1) {
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) prefetch_next_tile(wb[i] + b, R * a.w_stride, sizeof(*wb[i]));
        }
        __m512i wabs[R][4], s[R][4];
        __mmask64 neg[R][4];
        float d[R];
#pragma GCC unroll 4
        for (int i = 0; i < R; ++i) {
            const block_iq4_xs& blk = wb[i][b];
            scales_per_lane_32(_mm512_castsi256_si512(iq4_xs_scale_pairs(blk)), s[i]);
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const __m512i raw = _mm512_loadu_si512(blk.qs + 64 * h);
                const __m512i lo = _mm512_shuffle_epi8(values, _mm512_and_si512(raw, m4));
                const __m512i hi = _mm512_shuffle_epi8(values, _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
                const __m512i v0 = _mm512_permutex2var_epi64(lo, first, hi);
                const __m512i v1 = _mm512_permutex2var_epi64(lo, second, hi);
                wabs[i][2 * h] = _mm512_abs_epi8(v0);
                wabs[i][2 * h + 1] = _mm512_abs_epi8(v1);
                neg[i][2 * h] = _mm512_movepi8_mask(v0);
                neg[i][2 * h + 1] = _mm512_movepi8_mask(v1);
            }
            d[i] = half_to_float(blk.d);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const q8_k_quants q = load_quants(x);
#pragma GCC unroll 4
            for (int i = 0; i < R; ++i) {
                __m512i sum = zero;
#pragma GCC unroll 4
                for (int c = 0; c < 4; ++c) {
                    const __m512i xs = _mm512_mask_sub_epi8(q.x[c], neg[i][c], zero, q.x[c]);
                    sum = _mm512_dpwssd_epi32(sum, _mm512_maddubs_epi16(wabs[i][c], xs), s[i][c]);
                }
                acc[i][t] = _mm256_fmadd_ps(_mm256_set1_ps(d[i] * x.d), _mm256_cvtepi32_ps(fold(sum)), acc[i][t]);
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps256(acc[i][t]);
    }
}

// ---------------------------------------------------------------------------------------
// Drivers. Decode (one token): tiles of decode_rows rows. Prefill: token tiles of 4 (then
// the last 1..3), each weight block unpacked once per tile of prefill_rows rows.

template <template <int, int> class K, int R, int N>
void token_tail(const gemm_args& a, std::int64_t r, std::int64_t t0, std::int64_t left) {
    if constexpr (N >= 1) {
        if (left == N) {
            K<R, N>::run(a, r, t0);
        } else {
            token_tail<K, R, N - 1>(a, r, t0, left);
        }
    }
}

template <template <int, int> class K>
void gemm_tiles(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    constexpr int decode_rows = K<1, 1>::decode_rows;
    constexpr int prefill_rows = K<1, 1>::prefill_rows;
    if (a.n_tokens == 1) {
        std::int64_t r = r0;
        for (; r + decode_rows <= r1; r += decode_rows) K<decode_rows, 1>::run(a, r, 0);
        for (; r < r1; ++r) K<1, 1>::run(a, r, 0);
        return;
    }
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) {
        std::int64_t r = r0;
        for (; r + prefill_rows <= r1; r += prefill_rows) K<prefill_rows, 4>::run(a, r, t0);
        for (; r < r1; ++r) K<1, 4>::run(a, r, t0);
    }
    if (t0 < a.n_tokens) {
        for (std::int64_t r = r0; r < r1; ++r) token_tail<K, 1, 3>(a, r, t0, a.n_tokens - t0);
    }
}

template <int R, int T> struct q2_k_kernel {
    static constexpr int decode_rows = 4;
    static constexpr int prefill_rows = 1;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q2_k_run<R, T>(a, r, t0); }
};
template <int R, int T> struct q3_k_kernel {
    static constexpr int decode_rows = 2;
    static constexpr int prefill_rows = 2;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q3_k_run<R, T>(a, r, t0); }
};
template <int R, int T> struct q5_k_kernel {
    static constexpr int decode_rows = 2;
    static constexpr int prefill_rows = 2;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q5_k_run<R, T>(a, r, t0); }
};
template <int R, int T> struct iq4_xs_kernel {
    static constexpr int decode_rows = 2;
    static constexpr int prefill_rows = 2;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { iq4_xs_run<R, T>(a, r, t0); }
};

}  // namespace

gemm_fn gemm_kquant_avx512(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q2_k: return &gemm_tiles<q2_k_kernel>;
        case tensor_type::q3_k: return &gemm_tiles<q3_k_kernel>;
        case tensor_type::q5_k: return &gemm_tiles<q5_k_kernel>;
        case tensor_type::iq4_xs: return &gemm_tiles<iq4_xs_kernel>;
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
