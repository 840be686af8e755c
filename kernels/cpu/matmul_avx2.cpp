// AVX2 (+FMA, F16C) matmul kernels (activation conversions: quantize_avx2.cpp).
//
// Integer types use `vpmaddubsw` (u8 x s8 -> pairs summed into s16) then `vpmaddwd` with
// the sub-block scale (s16 x s16 -> pairs summed into s32). No pair sum can saturate:
// Q4_K 2*15*127, Q6_K 2*63*127 (codes used unsigned, the -32 offset applied through the
// bsums), Q8_0 2*128*127 (signs moved from the weights to the activations).
// Each weight block is unpacked once per tile and reused across up to 4 tokens (quantized)
// or tiled 4 rows x 2 tokens (float types). Internal linkage throughout; see kernel_impl.h
// for why no shared inline code may be instantiated here.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline void q4_k_unpack_scales(const std::uint8_t* packed, std::uint64_t* scales, std::uint64_t* mins) {
    std::uint32_t u[3];
    std::memcpy(u, packed, 12);
    const std::uint32_t k63 = 0x3f3f3f3fu, k15 = 0x0f0f0f0fu, k48 = 0x30303030u;
    const std::uint32_t sc_lo = u[0] & k63;
    const std::uint32_t m_lo = u[1] & k63;
    const std::uint32_t sc_hi = (u[2] & k15) | ((u[0] >> 2) & k48);
    const std::uint32_t m_hi = ((u[2] >> 4) & k15) | ((u[1] >> 2) & k48);
    *scales = sc_lo | (static_cast<std::uint64_t>(sc_hi) << 32);
    *mins = m_lo | (static_cast<std::uint64_t>(m_hi) << 32);
}

// ---------------------------------------------------------------------------------------
// Q4_K x Q8_K

template <int T>
void q4_k_tile(const gemm_args& a, std::int64_t r, std::int64_t t0) {
    const auto* wb = reinterpret_cast<const block_q4_k*>(a.w + static_cast<std::size_t>(r) * a.w_stride);
    const block_q8_k* xb[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        xb[t] = reinterpret_cast<const block_q8_k*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    }
    const std::int64_t nb = a.cols / qk_k;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m128i dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    __m256 acc[T];
    __m256 acc_min[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        acc[t] = _mm256_setzero_ps();
        acc_min[t] = _mm256_setzero_ps();
    }
    for (std::int64_t b = 0; b < nb; ++b) {
        const block_q4_k& w = wb[b];
        std::uint64_t scales, mins;
        q4_k_unpack_scales(w.scales, &scales, &mins);
        // Both 128-bit lanes hold the 8 scales as int16; shuffles pick one per sub-block.
        const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<long long>(scales))));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_cvtsi64_si128(static_cast<long long>(mins)), dup));
        __m256i s[8];
        __m256i q[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) s[j] = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(static_cast<short>(0x0100 + 0x0202 * j)));
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j) {
            const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.qs + 32 * j));
            q[2 * j] = _mm256_and_si256(raw, m4);
            q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        }
        const float d = half_to_float(w.d);
        const float dmin = half_to_float(w.dmin);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const block_q8_k& x = xb[t][b];
            __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j) {
                const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs + 32 * j));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], xv), s[j]));
            }
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * x.d), acc[t]);
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.bsums));
            acc_min[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bs, mins16)), _mm256_set1_ps(dmin * x.d), acc_min[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r] = hsum_ps(acc[t]) - hsum_ps(acc_min[t]);
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

struct load_f32 {
    static constexpr std::size_t elem_bytes = 4;
    static __m256 load(const std::byte* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
    static float scalar(const std::byte* p) {
        float f;
        std::memcpy(&f, p, sizeof f);
        return f;
    }
};
struct load_f16 {
    static constexpr std::size_t elem_bytes = 2;
    static __m256 load(const std::byte* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
    static float scalar(const std::byte* p) {
        std::uint16_t h;
        std::memcpy(&h, p, sizeof h);
        return _cvtsh_ss(h);
    }
};
struct load_bf16 {
    static constexpr std::size_t elem_bytes = 2;
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

template <int T> struct q4_k_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q4_k_tile<T>(a, r, t0); } };
template <int T> struct q6_k_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q6_k_tile<T>(a, r, t0); } };
template <int T> struct q8_0_kernel { static void run(const gemm_args& a, std::int64_t r, std::int64_t t0) { q8_0_tile<T>(a, r, t0); } };

template <class L, int T>
void float_rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) float_tile<L, 4, T>(a, r, t0);
    for (; r < r1; ++r) float_tile<L, 1, T>(a, r, t0);
}

template <class L>
void gemm_float(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    std::int64_t t0 = 0;
    for (; t0 + 2 <= a.n_tokens; t0 += 2) float_rows<L, 2>(a, r0, r1, t0);
    if (t0 < a.n_tokens) float_rows<L, 1>(a, r0, r1, t0);
}

}  // namespace

gemm_fn gemm_avx2(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q4_k: return &gemm_quant<q4_k_kernel>;
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
