// AVX2 (+FMA, F16C) matmul kernels (activation conversions: quantize_avx2.cpp).
//
// Integer types use `vpmaddubsw` (u8 x s8 -> pairs summed into s16) then `vpmaddwd` with
// the sub-block scale (s16 x s16 -> pairs summed into s32). No pair sum can saturate:
// Q4_K 2*15*127, Q6_K 2*63*127 (codes used unsigned, the -32 offset applied through the
// bsums), Q8_0 2*128*127 (signs moved from the weights to the activations).
// Each weight block is unpacked once per tile and reused across up to 4 tokens (quantized)
// or tiled 4 rows x 2 tokens (float types).
// Numerics: every sum rounds as in llama.cpp's AVX2 build, bit for bit, so that greedy
// output on an AVX2 machine is llama.cpp's there (models/golden/avx2/). Q8_0 and Q6_K
// already sum as its vec_dot and tinyBLAS kernels do; Q4_K and the float types follow its
// kernel choice per token (sum_order.h; the Q4_K and float sections say how), and
// tests/kernels/llama_sum_order_test.cpp holds scalar models of each.
// Internal linkage throughout; see kernel_impl.h for why no shared inline code may be
// instantiated here.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/simd_avx2.h"

namespace moed::kernels::detail {

namespace {

// ---------------------------------------------------------------------------------------
// Q4_K x Q8_K
//
// llama.cpp's AVX2 build multiplies a Q4_K matrix in one of two ways, and the sums round
// differently: a matrix whose row count is a multiple of 8 (every matrix of a real model)
// is repacked at load and goes through its gemv/gemm kernels, anything else through
// vec_dot_q4_K_q8_K. Both are followed here (q4_k_block_sums gives the integers both
// start from):
// - repacked: exact integer sums sum_j sc_j (q_j . x_j) and sum_j m_j bsum_j, each
//   converted to float and multiplied-added into one running sum per row and token, per
//   block of 256 values (its gemv kernel, tokens alone and the last n % 4 of a batch) or
//   per 64 values (its gemm kernel, a batch's whole groups of four: sum_order.h); the
//   result is the difference of the two sums.
// - vec_dot: 8 lanes of partial sums per block into an 8-lane float accumulator, the
//   minimums in 4 lanes (pairs of sub-blocks) with -dmin, both summed horizontally at the
//   end and added.

// The unpacked weights of one block: nibbles of the 8 sub-blocks, scale vectors, minimums.
struct q4_k_unpacked {
    __m256i q[8];
    __m256i s[8];
    __m256i mins16;    // each 32-value sub-block's minimum twice, for its two 16-value bsums
    __m128i mins_u16;  // the 8 minimums
    float d, dmin;
};

inline void q4_k_unpack(const block_q4_k& w, q4_k_unpacked* u) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    std::uint64_t scales, mins;
    q4_k_unpack_scales(w.scales, &scales, &mins);
    // Both 128-bit lanes hold the 8 scales as int16; shuffles pick one per sub-block.
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(scales))));
    u->mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(mins)), dup));
    u->mins_u16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(mins)));
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) u->s[j] = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(static_cast<short>(0x0100 + 0x0202 * j)));
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * j));
        u->q[2 * j] = _mm256_and_si256(raw, m4);
        u->q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    }
    u->d = half_to_float(w.d);
    u->dmin = half_to_float(w.dmin);
}

// Lane i: sum over the 8 sub-blocks j of sc_j * (values 4i..4i+3 of sub-block j) . x; exact.
inline __m256i q4_k_block_sums(const q4_k_unpacked& u, const block_q8_k& x) {
    __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(u.q[j], xv), u.s[j]));
    }
    return sum;
}

// One row x T tokens. A token of the gemv kind adds one integer sum per block; one of the
// gemm kind (batched_in_four) one per 64 values.
template <int T>
void q4_k_repacked_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
    bool in_four[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
        in_four[t] = a.orders != nullptr && a.orders[t0 + t] == sum_order::batched_in_four;
    }
    const std::int64_t nb = a.cols / qk_k;
    const __m256i zero = _mm256_setzero_si256();
    float acc[T] = {};
    float acc_min[T] = {};
    q4_k_unpacked u;
    for (std::int64_t b = 0; b < nb; ++b) {
        q4_k_unpack(wb[b], &u);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            const float scale = u.d * x.d;
            const float scale_min = u.dmin * x.d;
            // Lane j: m_j * (sub-block j's activation sum).
            const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)), u.mins16);
            if (!in_four[t]) {
                alignas(16) float sums[4];
                _mm_store_ps(sums, _mm_cvtepi32_ps(hsum4_epi32(q4_k_block_sums(u, x), mins, zero, zero)));
                acc[t] = __builtin_fmaf(sums[0], scale, acc[t]);
                acc_min[t] = __builtin_fmaf(sums[1], scale_min, acc_min[t]);
                continue;
            }
            __m256i part[4];
#pragma GCC unroll 4
            for (int h = 0; h < 4; ++h) {
                const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * h));
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * h + 32));
                part[h] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u.q[2 * h], x0), u.s[2 * h]),
                                           _mm256_madd_epi16(_mm256_maddubs_epi16(u.q[2 * h + 1], x1), u.s[2 * h + 1]));
            }
            // Pairs of lanes: [m0 + m1, m2 + m3, ., . | m4 + m5, m6 + m7, ., .].
            const __m256i min_pairs = _mm256_hadd_epi32(mins, mins);
            const __m128i min_four = _mm_unpacklo_epi64(_mm256_castsi256_si128(min_pairs), _mm256_extracti128_si256(min_pairs, 1));
            alignas(16) float isums[4], msums[4];
            _mm_store_ps(isums, _mm_cvtepi32_ps(hsum4_epi32(part[0], part[1], part[2], part[3])));
            _mm_store_ps(msums, _mm_cvtepi32_ps(min_four));
#pragma GCC unroll 4
            for (int h = 0; h < 4; ++h) {
                acc[t] = __builtin_fmaf(isums[h], scale, acc[t]);
                acc_min[t] = __builtin_fmaf(msums[h], scale_min, acc_min[t]);
            }
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = acc[t] - acc_min[t];
}

// Four rows x one token of the gemv kind (decode, and every expert product): the four rows'
// block sums come out of one horizontal add tree and their running floats are the lanes of
// one vector (lane-wise FMAs round as the scalar ones above).
void q4_k_repacked_rows4_alone(const gemm_args& a, std::int64_t r0, std::int64_t t) {
    const block_q8_k* xb = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_k;
    __m128 acc = _mm_setzero_ps(), acc_min = _mm_setzero_ps();
    q4_k_unpacked u;
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q8_k& x = xb[b];
        const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
        __m256i isum[4], msum[4];
        alignas(16) float d[4], dmin[4];
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) {
            const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
            q4_k_unpack(wb[b], &u);
            isum[i] = q4_k_block_sums(u, x);
            msum[i] = _mm256_madd_epi16(bs, u.mins16);
            d[i] = u.d;
            dmin[i] = u.dmin;
        }
        const __m128 xd = _mm_set1_ps(x.d);
        acc = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_epi32(isum[0], isum[1], isum[2], isum[3])), _mm_mul_ps(_mm_load_ps(d), xd), acc);
        acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(hsum4_epi32(msum[0], msum[1], msum[2], msum[3])), _mm_mul_ps(_mm_load_ps(dmin), xd),
                               acc_min);
    }
    alignas(16) float out[4];
    _mm_store_ps(out, _mm_sub_ps(acc, acc_min));
    for (int i = 0; i < 4; ++i) a.y[t * a.y_stride + r0 + i] = out[i];
}

// One row x four tokens of the gemm kind (a prompt's whole groups of four, the bulk of a
// prefill): each token's four per-64-value sums are transposed so that lane t holds token
// t, and each running float is a lane of one vector.
void q4_k_repacked_four_tokens_in_four(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[4];
    for (int t = 0; t < 4; ++t) xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_k;
    __m128 acc = _mm_setzero_ps(), acc_min = _mm_setzero_ps();
    q4_k_unpacked u;
    for (std::int64_t b = 0; b < nb; ++b) {
        q4_k_unpack(wb[b], &u);
        __m128 isum[4], msum[4];  // [token][64-value part]
        alignas(16) float xd[4];
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t) {
            const block_q8_k& x = xb[t][b];
            xd[t] = x.d;
            __m256i part[4];
#pragma GCC unroll 4
            for (int h = 0; h < 4; ++h) {
                const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * h));
                const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 64 * h + 32));
                part[h] = _mm256_add_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(u.q[2 * h], x0), u.s[2 * h]),
                                           _mm256_madd_epi16(_mm256_maddubs_epi16(u.q[2 * h + 1], x1), u.s[2 * h + 1]));
            }
            isum[t] = _mm_cvtepi32_ps(hsum4_epi32(part[0], part[1], part[2], part[3]));
            const __m256i mins = _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums)), u.mins16);
            const __m256i min_pairs = _mm256_hadd_epi32(mins, mins);
            msum[t] = _mm_cvtepi32_ps(_mm_unpacklo_epi64(_mm256_castsi256_si128(min_pairs), _mm256_extracti128_si256(min_pairs, 1)));
        }
        _MM_TRANSPOSE4_PS(isum[0], isum[1], isum[2], isum[3]);
        _MM_TRANSPOSE4_PS(msum[0], msum[1], msum[2], msum[3]);
        const __m128 x_scale = _mm_load_ps(xd);
        const __m128 scale = _mm_mul_ps(_mm_set1_ps(u.d), x_scale);
        const __m128 scale_min = _mm_mul_ps(_mm_set1_ps(u.dmin), x_scale);
#pragma GCC unroll 4
        for (int h = 0; h < 4; ++h) {
            acc = _mm_fmadd_ps(isum[h], scale, acc);
            acc_min = _mm_fmadd_ps(msum[h], scale_min, acc_min);
        }
    }
    alignas(16) float out[4];
    _mm_store_ps(out, _mm_sub_ps(acc, acc_min));
    for (int t = 0; t < 4; ++t) a.y[(t0 + t) * a.y_stride + r] = out[t];
}

void gemm_q4_k_repacked(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    if (a.n_tokens == 1 && (a.orders == nullptr || a.orders[0] != sum_order::batched_in_four)) {
        std::int64_t r = r0;
        for (; r + 4 <= r1; r += 4) q4_k_repacked_rows4_alone(a, r, 0);
        for (; r < r1; ++r) q4_k_repacked_tile<1>(a, r, 0);
        return;
    }
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) {
        const bool all_in_four = a.orders != nullptr && a.orders[t0] == sum_order::batched_in_four &&
                                 a.orders[t0 + 1] == sum_order::batched_in_four &&
                                 a.orders[t0 + 2] == sum_order::batched_in_four &&
                                 a.orders[t0 + 3] == sum_order::batched_in_four;
        if (all_in_four) {
            for (std::int64_t r = r0; r < r1; ++r) q4_k_repacked_four_tokens_in_four(a, r, t0);
        } else {
            for (std::int64_t r = r0; r < r1; ++r) q4_k_repacked_tile<4>(a, r, t0);
        }
    }
    switch (a.n_tokens - t0) {
        case 3: for (std::int64_t r = r0; r < r1; ++r) q4_k_repacked_tile<3>(a, r, t0); break;
        case 2: for (std::int64_t r = r0; r < r1; ++r) q4_k_repacked_tile<2>(a, r, t0); break;
        case 1: for (std::int64_t r = r0; r < r1; ++r) q4_k_repacked_tile<1>(a, r, t0); break;
        default: break;
    }
}

template <int T>
void q4_k_tile_vec_dot(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    }
    const std::int64_t nb = a.cols / qk_k;
    __m256 acc[T];
    __m128 acc_min[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        acc[t] = _mm256_setzero_ps();
        acc_min[t] = _mm_setzero_ps();
    }
    q4_k_unpacked u;
    for (std::int64_t b = 0; b < nb; ++b) {
        q4_k_unpack(wb[b], &u);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(x.d * u.d), _mm256_cvtepi32_ps(q4_k_block_sums(u, x)), acc[t]);
            // The bsums of each 32-value sub-block (pairs of 16-value sums), times its minimum,
            // two sub-blocks per lane.
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
            const __m128i pair_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
            const __m128i prod = _mm_madd_epi16(u.mins_u16, pair_sums);
            acc_min[t] = _mm_fmadd_ps(_mm_set1_ps(-x.d * u.dmin), _mm_cvtepi32_ps(prod), acc_min[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        __m128 m = _mm_add_ps(acc_min[t], _mm_movehl_ps(acc_min[t], acc_min[t]));
        m = _mm_add_ss(m, _mm_movehdup_ps(m));
        a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]) + _mm_cvtss_f32(m);
    }
}

// ---------------------------------------------------------------------------------------
// Q6_K x Q8_K

template <int T>
void q6_k_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q6_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    }
    const std::int64_t nb = a.cols / qk_k;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q6_k& w = wb[b];
        const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales));
        const __m256i sc16_all = _mm256_cvtepi8_epi16(sc8);
        // 32 values = two sub-blocks of 16: lane 0 takes scale 2j, lane 1 scale 2j+1.
        __m256i s[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
            const __m128i lo = _mm_set1_epi16(static_cast<short>(w.scales[2 * j]));
            const __m128i hi = _mm_set1_epi16(static_cast<short>(w.scales[2 * j + 1]));
            s[j] = _mm256_set_m128i(hi, lo);
        }
        __m256i q[8];
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
            const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.ql + 64 * h));
            const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.ql + 64 * h + 32));
            const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qh + 32 * h));
            q[4 * h + 0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
            q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                           _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
        }
        const float d = half_to_float(w.d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j) {
                const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xv), s[j]));
            }
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
            sum = _mm256_sub_epi32(sum, _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16_all), 5));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * x.d), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------
// Q8_0 x Q8_0

template <int T>
void q8_0_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q8_0*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_0* xb[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xb[t] = reinterpret_cast<const block_q8_0*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    }
    const std::int64_t nb = a.cols / qk8_0;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
    for (std::int64_t b = 0; b < nb; ++b) {
        const __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb[b].qs));
        const __m256i wabs = _mm256_sign_epi8(wq, wq);
        const float dw = half_to_float(wb[b].d);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb[t][b].qs));
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(xq, wq)), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * half_to_float(xb[t][b].d)), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]);
}

// ---------------------------------------------------------------------------------------
// F16 / BF16 / F32
//
// Two orders (sum_order.h). batched (llama.cpp's tinyBLAS, for a prompt's plain matrix
// products): float_tile, one 8-lane FMA accumulator per row and token and its horizontal
// sum. alone (its vec_dot_f32 / vec_dot_f16, for a token alone and for every expert
// product): float_row_vec_dot, four accumulators over 32 values at a time, reduced lane by
// lane and then with two horizontal adds, the values past the last 32 added one by one in
// double. tinyBLAS takes only lengths that are multiples of 8; other lengths are summed the
// vec_dot way in both orders. BF16 keeps the tile order for both (not matched to llama.cpp).

struct load_f32 {
    static constexpr std::size_t elem_bytes = 4;
    static constexpr bool vec_dot_order = true;
    static __m256 load(const std::byte* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
    static float scalar(const std::byte* p) {
        float f;
        std::memcpy(&f, p, sizeof f);
        return f;
    }
};
struct load_f16 {
    static constexpr std::size_t elem_bytes = 2;
    static constexpr bool vec_dot_order = true;
    static __m256 load(const std::byte* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static float scalar(const std::byte* p) {
        std::uint16_t h;
        std::memcpy(&h, p, sizeof h);
        return _cvtsh_ss(h);
    }
};
struct load_bf16 {
    static constexpr std::size_t elem_bytes = 2;
    static constexpr bool vec_dot_order = false;
    static __m256 load(const std::byte* p) {
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
    }
    static float scalar(const std::byte* p) {
        std::uint16_t h;
        std::memcpy(&h, p, sizeof h);
        const std::uint32_t u = static_cast<std::uint32_t>(h) << 16;
        float f;
        std::memcpy(&f, &u, sizeof f);
        return f;
    }
};

template <class L, int R, int T>
void float_tile(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    const std::byte* w[R];
    const std::byte* x[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) w[i] = a.w + static_cast<std::size_t>(r0 + i) * a.w_stride;
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) x[t] = a.x + static_cast<std::size_t>(t0 + t) * a.x_stride;
    __m256 acc[R][T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) acc[i][t] = _mm256_setzero_ps();
    }
    const std::int64_t n = a.cols;
    std::int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        const std::size_t off = static_cast<std::size_t>(c) * L::elem_bytes;
        __m256 xv[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) xv[t] = L::load(x[t] + off);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const __m256 wv = L::load(w[i] + off);
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) acc[i][t] = _mm256_fmadd_ps(wv, xv[t], acc[i][t]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            float s = hsum_ps(acc[i][t]);
            for (std::int64_t k = c; k < n; ++k) {
                const std::size_t off = static_cast<std::size_t>(k) * L::elem_bytes;
                s += L::scalar(w[i] + off) * L::scalar(x[t] + off);
            }
            a.y[(t0 + t) * a.y_stride + r0 + i] = s;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Drivers

template <template <int> class Tile>
void gemm_quant(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
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

template <int T> struct q4_k_vec_dot_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q4_k_tile_vec_dot<T>(a, r, t0); } };
template <int T> struct q6_k_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q6_k_tile<T>(a, r, t0); } };
template <int T> struct q8_0_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q8_0_tile<T>(a, r, t0); } };

template <class L, int T>
void float_rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) float_tile<L, 4, T>(a, r, t0);
    for (; r < r1; ++r) float_tile<L, 1, T>(a, r, t0);
}

// llama.cpp's vec_dot reduction of four 8-lane accumulators: (a0 + a2) + (a1 + a3) lane by
// lane, the two halves added, then two horizontal adds.
inline float reduce_vec_dot(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 v = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    return _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
}

template <class L>
void float_row_vec_dot(const gemm_args& a, std::int64_t r, std::int64_t t) {
    const std::byte* w = a.w + static_cast<std::size_t>(r) * a.w_stride;
    const std::byte* x = a.x + static_cast<std::size_t>(t) * a.x_stride;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const std::int64_t whole = a.cols / 32 * 32;
    for (std::int64_t c = 0; c < whole; c += 32) {
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const std::size_t off = static_cast<std::size_t>(c + 8 * j) * L::elem_bytes;
            acc[j] = _mm256_fmadd_ps(L::load(w + off), L::load(x + off), acc[j]);
        }
    }
    double sum = static_cast<double>(reduce_vec_dot(acc[0], acc[1], acc[2], acc[3]));
    for (std::int64_t k = whole; k < a.cols; ++k) {
        const std::size_t off = static_cast<std::size_t>(k) * L::elem_bytes;
        sum += static_cast<double>(L::scalar(w + off) * L::scalar(x + off));
    }
    a.y[t * a.y_stride + r] = static_cast<float>(sum);
}

template <class L>
void gemm_float_tiles(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t_begin, std::int64_t t_end) {
    std::int64_t t0 = t_begin;
    for (; t0 + 2 <= t_end; t0 += 2) float_rows<L, 2>(a, r0, r1, t0);
    if (t0 < t_end) float_rows<L, 1>(a, r0, r1, t0);
}

template <class L>
void gemm_float(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    if (L::vec_dot_order) {
        // Runs of tokens with the same order: tiles for the batched ones, rows for the others.
        auto tiled = [&a](std::int64_t t) {
            return a.cols % 8 == 0 && a.orders != nullptr && a.orders[t] != sum_order::alone;
        };
        std::int64_t t = 0;
        while (t < a.n_tokens) {
            const bool batched = tiled(t);
            std::int64_t end = t + 1;
            while (end < a.n_tokens && tiled(end) == batched) ++end;
            if (batched) {
                gemm_float_tiles<L>(a, r0, r1, t, end);
            } else {
                for (std::int64_t r = r0; r < r1; ++r) {
                    for (std::int64_t k = t; k < end; ++k) float_row_vec_dot<L>(a, r, k);
                }
            }
            t = end;
        }
        return;
    }
    gemm_float_tiles<L>(a, r0, r1, 0, a.n_tokens);
}

// The way llama.cpp multiplies the matrix (see the Q4_K section).
void gemm_q4_k(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    if (a.repackable && a.rows % 8 == 0) {
        gemm_q4_k_repacked(a, r0, r1);
    } else {
        gemm_quant<q4_k_vec_dot_kernel>(a, r0, r1);
    }
}

}  // namespace

gemm_fn gemm_avx2(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q4_k: return &gemm_q4_k;
        case tensor_type::q6_k: return &gemm_quant<q6_k_kernel>;
        case tensor_type::q2_k:
        case tensor_type::q3_k:
        case tensor_type::q5_k:
        case tensor_type::iq4_xs: return gemm_kquant_avx2(weight_type);
        case tensor_type::q8_0: return &gemm_quant<q8_0_kernel>;
        case tensor_type::f16: return &gemm_float<load_f16>;
        case tensor_type::bf16: return &gemm_float<load_bf16>;
        case tensor_type::f32: return &gemm_float<load_f32>;
        case tensor_type::q4_0:
        case tensor_type::q4_1:
        case tensor_type::q5_0:
        case tensor_type::q5_1:
        case tensor_type::iq4_nl:
        case tensor_type::mxfp4: return gemm_q32_avx2(weight_type);
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
