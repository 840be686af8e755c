// AVX-512 (F, BW, VL, DQ, VNNI) matmul kernels (activation conversions: quantize_avx512.cpp).
//
// Integer types use VNNI `vpdpbusd` (u8 x s8 -> s32, four products per lane):
// - Q4_K: the nibbles are unsigned already; the per-sub-block int32 sums are scaled with
//   `vpmaddwd` (a dpbusd lane of 4 products fits in int16, so madd with the 6-bit scale in
//   the low half of each 32-bit lane multiplies exactly), and the minimums are applied once
//   per block from the activation's bsums.
// - Q6_K: the 6-bit codes are used unsigned (0..63) and the -32 offset is applied through
//   the bsums (-32 * sum(scale_j * bsum_j)); 4 * 63 * 127 still fits in int16 for the madd.
// - Q8_0: signs move from the weights to the activations (|w| x sign(w)*a).
// Each weight block is unpacked once per tile and reused across up to 4 tokens; float types
// tile 4 rows x 4 tokens. Batch invariance (see matmul.h): accumulators belong to one row
// and one token and run the same operations in every tile shape, and the Q4_K decode row
// and tiles share q4_k_accumulate / q4_k_reduce. Everything here is internal (anonymous
// namespace) except the functions declared in kernel_impl.h, and no std:: inline code is
// used (see kernel_impl.h).
// GCC 12's AVX-512 headers build "undefined" vectors as `__m512i __Y = __Y;`, which trips
// -W(maybe-)uninitialized when inlined; the diagnostic is located in the header, so
// silencing it around the include keeps the warnings live for this file's own code.
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

static_assert(sizeof(block_q4_k) == 144 && sizeof(block_q6_k) == 210 && sizeof(block_q8_k) == 292);

inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

// Horizontal reductions written out by hand: GCC 12's _mm512_reduce_* helpers trip
// -Wuninitialized inside its own headers.
inline float hsum_ps256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float hsum_ps(__m512 v) {
    return hsum_ps256(_mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1)));
}

// ---------------------------------------------------------------------------------------
// Q4_K x Q8_K

// Batch invariance: a token decoded alone must give the same bits as inside a prefill batch,
// so every Q4_K path (the decode row, the tiles, the unpacked-rows prefill) hands each
// block's integer sums to the same float routines in one layout: 8 int32 lanes, lane i =
// sum over the 8 sub-blocks j of scale_j * (dot product of values 4i..4i+3 of sub-block j),
// and the minimums' 8 madd lanes. Integer sums are exact, so each path may form them in its
// own order; the float multiply-adds per block, their order across blocks and the final
// reduction are then the same everywhere.
inline void q4_k_accumulate(__m256i isum, __m256i msum, float d, float dmin, float xd, __m256* acc, __m256* acc_min) {
    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(d * xd), *acc);
    *acc_min = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin * xd), *acc_min);
}

inline float q4_k_reduce(__m256 acc, __m256 acc_min) { return hsum_ps256(acc) - hsum_ps256(acc_min); }

// A 512-bit tile's sums (lanes 0..7: even sub-blocks, 8..15: odd, same value positions)
// folded into that layout. On CPUs that split 512-bit operations (Zen 4) the fold and the
// 256-bit convert and FMA cost what a 512-bit convert and FMA did.
inline __m256i q4_k_fold(__m512i s) {
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

// R rows x T tokens of Q4_K. Per block and row: the nibbles are unpacked once into four
// vectors of two sub-blocks each (value order), the scales into four madd vectors; then per
// token: 4 x vpdpbusd (products) and 4 x vpdpwssd (times the sub-block scale, summed),
// folded to 8 lanes, one float FMA with d * x.d, and the minimums from the bsums
// (q4_k_accumulate, shared with the other Q4_K paths).
template <int R, int T>
void q4_k_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const block_q4_k* wb[R];
    const block_q8_k* xb[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wb[i] = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_k;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // Lane i of s[k] holds the scale of sub-block 2k (i < 8) or 2k+1 (i >= 8), in the low
    // 16 bits (vpdpwssd then multiplies each dpbusd lane, which fits in int16, exactly).
    const __m512i idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i idx1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i idx2 = _mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4);
    const __m512i idx3 = _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m256 acc[R][T];
    __m256 acc_min[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            acc[i][t] = _mm256_setzero_ps();
            acc_min[i][t] = _mm256_setzero_ps();
        }
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        __m512i w[R][4], s[R][4];
        __m256i mins16[R];
        float d[R], dmin[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const block_q4_k& blk = wb[i][b];
            std::uint64_t scales, mins;
            q4_k_unpack_scales(blk.scales, &scales, &mins);
            const __m512i sc32 = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(scales)));
            mins16[i] = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(mins)), dup));
            s[i][0] = _mm512_permutexvar_epi32(idx0, sc32);
            s[i][1] = _mm512_permutexvar_epi32(idx1, sc32);
            s[i][2] = _mm512_permutexvar_epi32(idx2, sc32);
            s[i][3] = _mm512_permutexvar_epi32(idx3, sc32);
            const __m512i q0 = _mm512_loadu_si512(blk.qs);
            const __m512i q1 = _mm512_loadu_si512(blk.qs + 64);
            const __m512i lo0 = _mm512_and_si512(q0, m4);
            const __m512i hi0 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4);
            const __m512i lo1 = _mm512_and_si512(q1, m4);
            const __m512i hi1 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4);
            // Sub-blocks in value order: [0|1], [2|3], [4|5], [6|7] (32 values each).
            w[i][0] = _mm512_shuffle_i64x2(lo0, hi0, 0x44);
            w[i][1] = _mm512_shuffle_i64x2(lo0, hi0, 0xEE);
            w[i][2] = _mm512_shuffle_i64x2(lo1, hi1, 0x44);
            w[i][3] = _mm512_shuffle_i64x2(lo1, hi1, 0xEE);
            d[i] = half_to_float(blk.d);
            dmin[i] = half_to_float(blk.dmin);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const __m512i x0 = _mm512_loadu_si512(x.qs);
            const __m512i x1 = _mm512_loadu_si512(x.qs + 64);
            const __m512i x2 = _mm512_loadu_si512(x.qs + 128);
            const __m512i x3 = _mm512_loadu_si512(x.qs + 192);
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
            const __m512i zero = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int i = 0; i < R; ++i) {
                __m512i sum = _mm512_dpwssd_epi32(zero, _mm512_dpbusd_epi32(zero, w[i][0], x0), s[i][0]);
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w[i][1], x1), s[i][1]);
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w[i][2], x2), s[i][2]);
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w[i][3], x3), s[i][3]);
                q4_k_accumulate(q4_k_fold(sum), _mm256_madd_epi16(bs, mins16[i]), d[i], dmin[i], x.d, &acc[i][t], &acc_min[i][t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = q4_k_reduce(acc[i][t], acc_min[i][t]);
    }
}

// Prefill of Q4_K from unpacked weights: a group of rows is unpacked once (nibbles in
// value order, madd scale vectors, minimums) into an L1-sized buffer, then every token tile
// reads it back instead of unpacking each block again per tile.
struct q4_k_unpacked {
    __m512i w[4];
    __m512i s[4];
    __m256i mins16;
    float d, dmin;
};
// Blocks the buffer holds (about 18 KiB: it shares L1 with a token tile's activations).
constexpr int q4_k_unpacked_blocks = 32;

void q4_k_unpack_block(const block_q4_k& blk, q4_k_unpacked* out) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i idx1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i idx2 = _mm512_set_epi32(5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 4, 4, 4, 4, 4);
    const __m512i idx3 = _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    std::uint64_t scales, mins;
    q4_k_unpack_scales(blk.scales, &scales, &mins);
    const __m512i sc32 = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(scales)));
    out->mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(mins)), dup));
    out->s[0] = _mm512_permutexvar_epi32(idx0, sc32);
    out->s[1] = _mm512_permutexvar_epi32(idx1, sc32);
    out->s[2] = _mm512_permutexvar_epi32(idx2, sc32);
    out->s[3] = _mm512_permutexvar_epi32(idx3, sc32);
    const __m512i q0 = _mm512_loadu_si512(blk.qs);
    const __m512i q1 = _mm512_loadu_si512(blk.qs + 64);
    const __m512i lo0 = _mm512_and_si512(q0, m4);
    const __m512i hi0 = _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4);
    const __m512i lo1 = _mm512_and_si512(q1, m4);
    const __m512i hi1 = _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4);
    out->w[0] = _mm512_shuffle_i64x2(lo0, hi0, 0x44);
    out->w[1] = _mm512_shuffle_i64x2(lo0, hi0, 0xEE);
    out->w[2] = _mm512_shuffle_i64x2(lo1, hi1, 0x44);
    out->w[3] = _mm512_shuffle_i64x2(lo1, hi1, 0xEE);
    out->d = half_to_float(blk.d);
    out->dmin = half_to_float(blk.dmin);
}

// One unpacked row x T tokens.
template <int T>
void q4_k_unpacked_row(const gemm_args& a, const q4_k_unpacked* u, std::int64_t r, std::int64_t t0) {
    const block_q8_k* xb[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_k;
    __m256 acc[T];
    __m256 acc_min[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        acc[t] = _mm256_setzero_ps();
        acc_min[t] = _mm256_setzero_ps();
    }
    const __m512i zero = _mm512_setzero_si512();
    for (std::int64_t b = 0; b < nb; ++b) {
        const q4_k_unpacked& w = u[b];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            __m512i sum = _mm512_dpwssd_epi32(zero, _mm512_dpbusd_epi32(zero, w.w[0], _mm512_loadu_si512(x.qs)), w.s[0]);
            sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w.w[1], _mm512_loadu_si512(x.qs + 64)), w.s[1]);
            sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w.w[2], _mm512_loadu_si512(x.qs + 128)), w.s[2]);
            sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, w.w[3], _mm512_loadu_si512(x.qs + 192)), w.s[3]);
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
            q4_k_accumulate(q4_k_fold(sum), _mm256_madd_epi16(bs, w.mins16), w.d, w.dmin, x.d, &acc[t], &acc_min[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = q4_k_reduce(acc[t], acc_min[t]);
}

template <int N>
void q4_k_unpacked_tail(const gemm_args& a, const q4_k_unpacked* u, std::int64_t r, std::int64_t t0, std::int64_t left) {
    if constexpr (N >= 1) {
        if (left == N) {
            q4_k_unpacked_row<N>(a, u, r, t0);
        } else {
            q4_k_unpacked_tail<N - 1>(a, u, r, t0, left);
        }
    }
}

// Rows r0..r1 for a batch of tokens (n_tokens >= 2, rows of at most q4_k_unpacked_blocks).
void q4_k_prefill(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    constexpr int tile = 4;
    alignas(64) q4_k_unpacked buf[q4_k_unpacked_blocks];
    const std::int64_t nb = a.cols / qk_k;
    const std::int64_t group = q4_k_unpacked_blocks / nb;
    for (std::int64_t g0 = r0; g0 < r1; g0 += group) {
        const std::int64_t g1 = g0 + group < r1 ? g0 + group : r1;
        for (std::int64_t r = g0; r < g1; ++r) {
            const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
            for (std::int64_t b = 0; b < nb; ++b) q4_k_unpack_block(wb[b], &buf[(r - g0) * nb + b]);
        }
        std::int64_t t0 = 0;
        for (; t0 + tile <= a.n_tokens; t0 += tile) {
            for (std::int64_t r = g0; r < g1; ++r) q4_k_unpacked_row<tile>(a, &buf[(r - g0) * nb], r, t0);
        }
        if (t0 < a.n_tokens) {
            for (std::int64_t r = g0; r < g1; ++r) q4_k_unpacked_tail<tile - 1>(a, &buf[(r - g0) * nb], r, t0, a.n_tokens - t0);
        }
    }
}

// One row x one token of Q4_K with 256-bit vectors (decode). Each 32-byte group of nibbles
// already holds whole sub-blocks in value order (low nibbles: sub-block 2j, high: 2j+1), so
// unlike the 512-bit tile nothing crosses lanes; on CPUs that split 512-bit operations in
// two (AMD Zen 4) this does the same arithmetic with fewer shuffles. Its 8 lanes are the
// tiles' folded sums, so it gives their bits.
void q4_k_decode_row(const gemm_args& a, std::int64_t r) {
    const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const auto* xb = reinterpret_cast<const block_q8_k*>(a.x);
    const std::int64_t nb = a.cols / qk_k;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m256 acc = _mm256_setzero_ps();
    __m256 acc_min = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q4_k& w = wb[b];
        const block_q8_k& x = xb[b];
        std::uint64_t scales, mins;
        q4_k_unpack_scales(w.scales, &scales, &mins);
        // Byte j of the scales into the low byte of every 32-bit lane, zeros above.
        const __m256i sc = _mm256_set1_epi64x(static_cast<long long>(scales));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(mins)), dup));
        const __m256i zero = _mm256_setzero_si256();
        __m256i sum = zero;
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * j));
            const __m256i lo = _mm256_and_si256(q, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i s_lo = _mm256_shuffle_epi8(sc, _mm256_set1_epi32(static_cast<int>(0x80808000u | (2 * j))));
            const __m256i s_hi = _mm256_shuffle_epi8(sc, _mm256_set1_epi32(static_cast<int>(0x80808000u | (2 * j + 1))));
            const __m256i p_lo = _mm256_dpbusd_epi32(zero, lo, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * j)));
            const __m256i p_hi = _mm256_dpbusd_epi32(zero, hi, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * j + 32)));
            sum = _mm256_dpwssd_epi32(sum, p_lo, s_lo);
            sum = _mm256_dpwssd_epi32(sum, p_hi, s_hi);
        }
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
        q4_k_accumulate(sum, _mm256_madd_epi16(bs, mins16), half_to_float(w.d), half_to_float(w.dmin), x.d, &acc, &acc_min);
    }
    a.y[r] = q4_k_reduce(acc, acc_min);
}

// ---------------------------------------------------------------------------------------
// Q6_K x Q8_K

// R rows x T tokens of Q6_K: per half block, one 512-bit load of ql and a broadcast of qh
// give the codes of 128 values in value order; per token 4 x vpdpbusd + 4 x vpdpwssd.
template <int R, int T>
void q6_k_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const block_q6_k* wb[R];
    const block_q8_k* xb[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wb[i] = reinterpret_cast<const block_q6_k*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_k;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    const __m512i low16 = _mm512_set1_epi32(0xFFFF);
    // Low 256 bits hold values l, high 256 bits values l + 32 of a 64-value quarter pair.
    const __m512i shl_lo = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i shr_hi = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    // Lane i of s[k]: the scale of sub-block 4k + i/4 (16 values = 4 lanes per sub-block).
    const __m512i idx0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i idx1 = _mm512_add_epi32(idx0, _mm512_set1_epi32(4));
    const __m512i idx2 = _mm512_add_epi32(idx0, _mm512_set1_epi32(8));
    const __m512i idx3 = _mm512_add_epi32(idx0, _mm512_set1_epi32(12));
    __m512 acc[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        __m512i q[R][4], s[R][4];
        __m256i sc16[R];
        float d[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const block_q6_k& w = wb[i][b];
            const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
            const __m512i sc32 = _mm512_and_si512(_mm512_cvtepi8_epi32(sc8), low16);
            sc16[i] = _mm256_cvtepi8_epi16(sc8);
            s[i][0] = _mm512_permutexvar_epi32(idx0, sc32);
            s[i][1] = _mm512_permutexvar_epi32(idx1, sc32);
            s[i][2] = _mm512_permutexvar_epi32(idx2, sc32);
            s[i][3] = _mm512_permutexvar_epi32(idx3, sc32);
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const __m512i l = _mm512_loadu_si512(w.ql + 64 * h);
                const __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qh + 32 * h)));
                q[i][2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(hb, shl_lo), m30));
                q[i][2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                                  _mm512_and_si512(_mm512_srlv_epi16(hb, shr_hi), m30));
            }
            d[i] = half_to_float(w.d);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const __m512i x0 = _mm512_loadu_si512(x.qs);
            const __m512i x1 = _mm512_loadu_si512(x.qs + 64);
            const __m512i x2 = _mm512_loadu_si512(x.qs + 128);
            const __m512i x3 = _mm512_loadu_si512(x.qs + 192);
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
            const __m512i zero = _mm512_setzero_si512();
#pragma GCC unroll 8
            for (int i = 0; i < R; ++i) {
                // The -32 offset of every code: 32 * sum_j scale_j * bsum_j, subtracted first.
                const __m256i bias = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16[i]), 5);
                __m512i sum = _mm512_sub_epi32(zero, _mm512_zextsi256_si512(bias));
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, q[i][0], x0), s[i][0]);
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, q[i][1], x1), s[i][1]);
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, q[i][2], x2), s[i][2]);
                sum = _mm512_dpwssd_epi32(sum, _mm512_dpbusd_epi32(zero, q[i][3], x3), s[i][3]);
                acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(d[i] * x.d), acc[i][t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps(acc[i][t]);
    }
}

// ---------------------------------------------------------------------------------------
// Q8_0 x Q8_0

// Two consecutive Q8_0 blocks (34 bytes each) as one 512-bit vector of their 64 quants.
inline __m512i q8_0_pair_quants(const block_q8_0* b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[0].qs))),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[1].qs)), 1);
}

// The scales of two consecutive Q8_0 blocks as [d0 x 8 | d1 x 8]: one 64-byte load from
// the first block's d covers the second's (34 bytes on), and vpermw picks both halves.
inline __m512 q8_0_pair_scales(const block_q8_0* b) {
    const __m512i idx = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         17, 17, 17, 17, 17, 17, 17, 17, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i raw = _mm512_loadu_si512(b);
    return _mm512_cvtph_ps(_mm512_extracti64x4_epi64(_mm512_permutexvar_epi16(idx, raw), 0));
}

// R rows x T tokens of Q8_0, two blocks per 512-bit vector. vpdpbusd wants unsigned
// weights, so they are offset by 128 (w ^ 0x80 = w + 128) and the offset's contribution,
// 128 * sum(x), is removed by starting each accumulation at -128 * sum(x): one vpdpbusd
// per token pair, shared by the R rows. The activation scales of a block pair are also
// built once per token. An odd last block is done with 256-bit vectors.
template <int R, int T>
void q8_0_run(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const block_q8_0* wb[R];
    const block_q8_0* xb[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wb[i] = reinterpret_cast<const block_q8_0*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const block_q8_0*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk8_0;
    __m512 acc[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
    }
    const __m512i zero = _mm512_setzero_si512();
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    std::int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i wu[R];
        __m512 dw[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            if constexpr (T == 1 && R > 1) prefetch_next_tile(wb[i] + b, R * a.w_stride, 2 * sizeof(block_q8_0));
            wu[i] = _mm512_xor_si512(q8_0_pair_quants(wb[i] + b), bias);
            dw[i] = q8_0_pair_scales(wb[i] + b);
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const __m512i xq = q8_0_pair_quants(xb[t] + b);
            const __m512 dx = q8_0_pair_scales(xb[t] + b);
            const __m512i start = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, xq));
#pragma GCC unroll 8
            for (int i = 0; i < R; ++i) {
                const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, wu[i], xq));
                acc[i][t] = _mm512_fmadd_ps(_mm512_mul_ps(p, dx), dw[i], acc[i][t]);
            }
        }
    }
    __m256 tail[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) tail[i][t] = _mm256_setzero_ps();
    }
    if (b < nb) {
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[i][b].qs));
            const __m256i wabs = _mm256_abs_epi8(wq);
            const __mmask32 neg = _mm256_movepi8_mask(wq);
            const float dw = half_to_float(wb[i][b].d);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) {
                const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb[t][b].qs));
                const __m256i xs = _mm256_mask_sub_epi8(xq, neg, _mm256_setzero_si256(), xq);
                const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wabs, xs);
                tail[i][t] = _mm256_mul_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * half_to_float(xb[t][b].d)));
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps(acc[i][t]) + hsum_ps256(tail[i][t]);
    }
}

// ---------------------------------------------------------------------------------------
// F16 / BF16 / F32: R rows x T tokens of fused multiply-adds, 16 values at a time.

struct load_f32 {
    static constexpr std::size_t elem_bytes = 4;
    static __m512 load(const std::byte* p) { return _mm512_loadu_ps(p); }
    static __m512 load_tail(const std::byte* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
};
struct load_f16 {
    static constexpr std::size_t elem_bytes = 2;
    static __m512 load(const std::byte* p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
    static __m512 load_tail(const std::byte* p, __mmask16 m) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
    }
};
struct load_bf16 {
    static constexpr std::size_t elem_bytes = 2;
    static __m512 widen(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }
    static __m512 load(const std::byte* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
    static __m512 load_tail(const std::byte* p, __mmask16 m) { return widen(_mm256_maskz_loadu_epi16(m, p)); }
};

template <class L, int R, int T>
void float_tile(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const std::byte* w[R];
    const std::byte* x[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) w[i] = a.w + static_cast<std::size_t>(r0 + i) * a.w_stride;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) x[t] = a.x + static_cast<std::size_t>(t0 + t) * a.x_stride;
    __m512 acc[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
    }
    const std::int64_t n = a.cols;
    std::int64_t c = 0;
    for (; c + 16 <= n; c += 16) {
        const std::size_t off = static_cast<std::size_t>(c) * L::elem_bytes;
        __m512 xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = L::load(x[t] + off);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const __m512 wv = L::load(w[i] + off);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) acc[i][t] = _mm512_fmadd_ps(wv, xv[t], acc[i][t]);
        }
    }
    if (c < n) {
        const auto m = static_cast<__mmask16>((1u << (n - c)) - 1u);
        const std::size_t off = static_cast<std::size_t>(c) * L::elem_bytes;
        __m512 xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = L::load_tail(x[t] + off, m);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const __m512 wv = L::load_tail(w[i] + off, m);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) acc[i][t] = _mm512_fmadd_ps(wv, xv[t], acc[i][t]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps(acc[i][t]);
    }
}

// ---------------------------------------------------------------------------------------
// BF16 with AVX512-BF16: vdpbf16ps multiplies pairs of bf16 (exactly, in f32) and adds
// them to f32 accumulators, 32 values per instruction. Compiled for that extension only
// here (a target attribute, which GCC and clang both take) and called only when CPUID
// reports it (use_avx512_bf16).
#define MOED_TARGET_AVX512BF16 __attribute__((target("avx512bf16")))

template <int R, int T>
MOED_TARGET_AVX512BF16 void bf16_dp_tile(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const std::byte* w[R];
    const std::byte* x[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) w[i] = a.w + static_cast<std::size_t>(r0 + i) * a.w_stride;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) x[t] = a.x + static_cast<std::size_t>(t0 + t) * a.x_stride;
    __m512 acc[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
    }
    const std::int64_t n = a.cols;
    for (std::int64_t c = 0; c < n; c += 32) {
        const std::int64_t left = n - c;
        const __mmask32 m = left >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((1u << left) - 1u);
        const std::size_t off = static_cast<std::size_t>(c) * 2;
        __m512bh xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = (__m512bh)_mm512_maskz_loadu_epi16(m, x[t] + off);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(m, w[i] + off);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) acc[i][t] = _mm512_dpbf16_ps(acc[i][t], wv, xv[t]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = hsum_ps(acc[i][t]);
    }
}

template <int T>
MOED_TARGET_AVX512BF16 void bf16_dp_rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) bf16_dp_tile<4, T>(a, r, t0);
    for (; r < r1; ++r) bf16_dp_tile<1, T>(a, r, t0);
}

MOED_TARGET_AVX512BF16 void gemm_bf16_dp(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) bf16_dp_rows<4>(a, r0, r1, t0);
    switch (a.n_tokens - t0) {
        case 3: bf16_dp_rows<3>(a, r0, r1, t0); break;
        case 2: bf16_dp_rows<2>(a, r0, r1, t0); break;
        case 1: bf16_dp_rows<1>(a, r0, r1, t0); break;
        default: break;
    }
}

#undef MOED_TARGET_AVX512BF16

// ---------------------------------------------------------------------------------------
// Drivers: token tiles of up to 4 (the activations of a tile stay in L1 while the rows of
// the chunk stream past), rows one at a time (quantized) or 4 at a time (float).

// Row x token tiles for the quantized kernels. Decode (one token) uses the kernel's own
// row routine when it has one, else tiles of decode_rows rows; prefill walks token tiles of
// `tokens` (the activations of a tile stay in L1 while the rows of the chunk stream past),
// each weight block unpacked once per tile of prefill_rows rows and reused across tokens.
template <template <int, int> class K, int T>
void quant_rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    constexpr int rows = K<1, 1>::prefill_rows;
    std::int64_t r = r0;
    for (; r + rows <= r1; r += rows) K<rows, T>::run(a, r, t0);
    for (; r < r1; ++r) K<1, T>::run(a, r, t0);
}

// The last tile of fewer than `tokens` tokens: instantiates tiles of 1..N tokens.
template <template <int, int> class K, int N>
void quant_tail(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0, std::int64_t left) {
    if constexpr (N >= 1) {
        if (left == N) {
            quant_rows<K, N>(a, r0, r1, t0);
        } else {
            quant_tail<K, N - 1>(a, r0, r1, t0, left);
        }
    }
}

template <template <int, int> class K>
void gemm_quant_rt(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    constexpr int decode_rows = K<1, 1>::decode_rows;
    constexpr int tokens = K<1, 1>::tokens;
    if (a.n_tokens == 1 && K<1, 1>::has_decode_row) {
        for (std::int64_t r = r0; r < r1; ++r) K<1, 1>::decode_row(a, r);
        return;
    }
    if (a.n_tokens == 1) {
        std::int64_t r = r0;
        for (; r + decode_rows <= r1; r += decode_rows) K<decode_rows, 1>::run(a, r, 0);
        for (; r < r1; ++r) K<1, 1>::run(a, r, 0);
        return;
    }
    std::int64_t t0 = 0;
    for (; t0 + tokens <= a.n_tokens; t0 += tokens) quant_rows<K, tokens>(a, r0, r1, t0);
    quant_tail<K, tokens - 1>(a, r0, r1, t0, a.n_tokens - t0);
}


template <int R, int T> struct q4_k_kernel {
    static constexpr int prefill_rows = 1;
    static constexpr int decode_rows = 1;
    static constexpr int tokens = 4;
    static constexpr bool has_decode_row = true;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q4_k_run<R, T>(a, r, t0); }
    static void decode_row(const gemm_args& a, std::int64_t r) { q4_k_decode_row(a, r); }
};
template <int R, int T> struct q6_k_kernel {
    static constexpr int prefill_rows = 1;
    static constexpr int decode_rows = 1;
    static constexpr int tokens = 4;
    static constexpr bool has_decode_row = false;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q6_k_run<R, T>(a, r, t0); }
    static void decode_row(const gemm_args&, std::int64_t) {}
};
template <int R, int T> struct q8_0_kernel {
    static constexpr int prefill_rows = 4;
    static constexpr int decode_rows = 2;
    static constexpr int tokens = 4;
    static constexpr bool has_decode_row = false;
    static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q8_0_run<R, T>(a, r, t0); }
    static void decode_row(const gemm_args&, std::int64_t) {}
};

template <class L, int T>
void float_rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) float_tile<L, 4, T>(a, r, t0);
    for (; r < r1; ++r) float_tile<L, 1, T>(a, r, t0);
}

template <class L>
void gemm_float(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) float_rows<L, 4>(a, r0, r1, t0);
    switch (a.n_tokens - t0) {
        case 3: float_rows<L, 3>(a, r0, r1, t0); break;
        case 2: float_rows<L, 2>(a, r0, r1, t0); break;
        case 1: float_rows<L, 1>(a, r0, r1, t0); break;
        default: break;
    }
}

// Q4_K: the unpacked-rows prefill for batches whose rows fit its buffer, else the tiles.
void gemm_q4_k(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    if (a.n_tokens >= 2 && a.cols / qk_k <= q4_k_unpacked_blocks) {
        q4_k_prefill(a, r0, r1);
    } else {
        gemm_quant_rt<q4_k_kernel>(a, r0, r1);
    }
}

}  // namespace

gemm_fn gemm_avx512(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q4_k: return &gemm_q4_k;
        case tensor_type::q6_k: return &gemm_quant_rt<q6_k_kernel>;
        case tensor_type::q2_k:
        case tensor_type::q3_k:
        case tensor_type::q5_k:
        case tensor_type::iq4_xs: return gemm_kquant_avx512(weight_type);
        case tensor_type::q8_0: return &gemm_quant_rt<q8_0_kernel>;
        case tensor_type::f16: return &gemm_float<load_f16>;
        case tensor_type::bf16: return use_avx512_bf16() ? &gemm_bf16_dp : &gemm_float<load_bf16>;
        case tensor_type::f32: return &gemm_float<load_f32>;
        case tensor_type::q4_0:
        case tensor_type::q4_1:
        case tensor_type::q5_0:
        case tensor_type::q5_1:
        case tensor_type::iq4_nl:
        case tensor_type::mxfp4: return gemm_q32_avx512(weight_type);
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
