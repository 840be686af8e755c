// AVX2 (+FMA, F16C) matmul kernels of the 32-value block types: Q4_0, Q5_0, IQ4_NL and
// MXFP4 weights with Q8_0 activations, Q4_1 and Q5_1 weights with Q8_1 activations.
//
// Integer part: a block's 32 weights are unpacked once per tile into 32 bytes in value
// order, then per token `vpmaddubsw` + `vpmaddwd` with ones give 8 int32 lanes, lane i the
// exact sum of the products of values 4i..4i+3. Signed weights (Q4_0: q - 8, Q5_0: q - 16,
// the IQ4_NL and MXFP4 tables) go in as |w| with their signs moved onto the activations,
// so no pair sum can saturate (2 * 127 * 127); Q4_1/Q5_1 codes are unsigned already.
//
// Float part, exactly llama.cpp's AVX2 order for each type (so that greedy ids match
// llama.cpp at near ties). llama.cpp repacks Q4_0, IQ4_NL and MXFP4 matrices whose row count
// is a multiple of 8 at load (8 rows interleaved) and multiplies them with its gemv and gemm
// kernels (ggml-cpu/arch/x86/repack.cpp), which round alike: per row and token one running
// float, acc = fma(the block's exact integer sum, d_w * d_x, acc) per block, in block order;
// so every token of such a matrix, alone or in a batch, sums that way (no sum_order needed).
// Any other matrix (a repackable type's matrix of other row counts, or a per-head slice that
// llama.cpp does not repack: matrix_view::repackable) goes through vec_dot for a token alone
// and, for Q4_0, Q5_0 and IQ4_NL, through tinyBLAS (llamafile's sgemm) for the tokens of a
// batch (sum_order.h); tinyBLAS sums them as vec_dot sums Q4_0 (one accumulator), which is
// vec_dot's own order but for IQ4_NL. vec_dot, per row and token:
// - Q4_0, Q5_0: acc = fma(d_w * d_x, lanes, acc) per block; result hsum(acc).
// - Q4_1, Q5_1: the same, plus a scalar summs = fma(m_w, s_x, summs) per block (GCC
//   contracts llama.cpp's `summs += m * s`; the product of two halves is exact, so fused
//   or not, the bits are the same); result hsum(acc) + summs. The scalar sums of a tile's
//   (row, token) pairs share one 128-bit FMA per block, a lane each.
// - IQ4_NL, MXFP4: even blocks into acc1, odd blocks into acc2 (d_x * d_w, MXFP4's d_w the
//   halved E8M0 scale); result hsum(acc1 + acc2), then a last odd block added as
//   fma(d, its integer sum, result).
// (IQ4_NL in a batch: the single accumulator of Q4_0, the last odd block included in it.)
// The lanes are exact, so these float operations are the whole of the rounding. The AVX-512
// kernels (matmul_q32_avx512.cpp) keep vec_dot's order for every matrix, so the levels give
// the same bits where llama.cpp does not repack. Tiles: 4 rows x 1 token (decode) and 1 row
// x 4 tokens (prefill); each (row, token) runs the same operations in every tile shape, so
// results are batch invariant (matmul.h).
// Internal linkage throughout (see kernel_impl.h).
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/simd_avx2.h"

namespace moed::kernels::detail {

namespace {

inline float fma_ss(float a, float b, float c) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

// 16 nibble bytes -> 32 bytes 0..15 in value order (low nibbles, then high nibbles).
inline __m256i unpack_nibbles(const std::uint8_t* qs) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

// Bit j of the little-endian 32-bit qh -> 0x10 in byte j.
inline __m256i unpack_high_bits(const std::uint8_t* qh) {
    std::uint32_t bits;
    std::memcpy(&bits, qh, sizeof bits);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)),
                                               _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                                                 0x0101010101010101, 0x0000000000000000));
    const __m256i bit = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

inline __m256i lookup(const std::int8_t* table, __m256i codes) {
    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)));
    return _mm256_shuffle_epi8(t, codes);
}

enum class float_order { single, single_min, paired };

// Per type: the blocks, the 32 weights of a block as bytes in value order (signed or
// unsigned), the weight scale and (single_min) minimum, and the float order above.
struct q4_0_t {
    using block = block_q4_0;
    using act = block_q8_0;
    static constexpr bool is_signed = true;
    static constexpr float_order order = float_order::single;
    static constexpr bool repacked_by_llama = true;
    static constexpr bool single_in_batches = false;
    static __m256i values(const block& b) { return _mm256_sub_epi8(unpack_nibbles(b.qs), _mm256_set1_epi8(8)); }
    static float scale(const block& b) { return half_to_float(b.d); }
    static float min(const block&) { return 0.0f; }
};
struct q5_0_t {
    using block = block_q5_0;
    using act = block_q8_0;
    static constexpr bool is_signed = true;
    static constexpr float_order order = float_order::single;
    static constexpr bool repacked_by_llama = false;
    static constexpr bool single_in_batches = false;
    static __m256i values(const block& b) {
        return _mm256_sub_epi8(_mm256_or_si256(unpack_nibbles(b.qs), unpack_high_bits(b.qh)), _mm256_set1_epi8(16));
    }
    static float scale(const block& b) { return half_to_float(b.d); }
    static float min(const block&) { return 0.0f; }
};
struct q4_1_t {
    using block = block_q4_1;
    using act = block_q8_1;
    static constexpr bool is_signed = false;
    static constexpr float_order order = float_order::single_min;
    static constexpr bool repacked_by_llama = false;
    static constexpr bool single_in_batches = false;
    static __m256i values(const block& b) { return unpack_nibbles(b.qs); }
    static float scale(const block& b) { return half_to_float(b.d); }
    static float min(const block& b) { return half_to_float(b.m); }
};
struct q5_1_t {
    using block = block_q5_1;
    using act = block_q8_1;
    static constexpr bool is_signed = false;
    static constexpr float_order order = float_order::single_min;
    static constexpr bool repacked_by_llama = false;
    static constexpr bool single_in_batches = false;
    static __m256i values(const block& b) { return _mm256_or_si256(unpack_nibbles(b.qs), unpack_high_bits(b.qh)); }
    static float scale(const block& b) { return half_to_float(b.d); }
    static float min(const block& b) { return half_to_float(b.m); }
};
struct iq4_nl_t {
    using block = block_iq4_nl;
    using act = block_q8_0;
    static constexpr bool is_signed = true;
    static constexpr float_order order = float_order::paired;
    static constexpr bool repacked_by_llama = true;
    static constexpr bool single_in_batches = true;
    static __m256i values(const block& b) { return lookup(kvalues_iq4nl, unpack_nibbles(b.qs)); }
    static float scale(const block& b) { return half_to_float(b.d); }
    static float min(const block&) { return 0.0f; }
};
struct mxfp4_t {
    using block = block_mxfp4;
    using act = block_q8_0;
    static constexpr bool is_signed = true;
    static constexpr float_order order = float_order::paired;
    static constexpr bool repacked_by_llama = true;
    static constexpr bool single_in_batches = false;
    static __m256i values(const block& b) { return lookup(kvalues_mxfp4, unpack_nibbles(b.qs)); }
    static float scale(const block& b) { return e8m0_to_fp32_half(b.e); }
    static float min(const block&) { return 0.0f; }
};

inline float act_sum(const block_q8_1& x) { return half_to_float(x.s); }
[[maybe_unused]] inline float act_sum(const block_q8_0&) { return 0.0f; }

// One row's block, unpacked for the tokens of a tile.
struct unpacked {
    __m256i w;  // |w| for signed types, else w
    __m256i sign;  // w (its signs), signed types only
    float d, m;
};

template <class K>
inline unpacked unpack(const typename K::block& b) {
    unpacked u;
    const __m256i v = K::values(b);
    u.w = K::is_signed ? _mm256_sign_epi8(v, v) : v;
    u.sign = v;
    u.d = K::scale(b);
    u.m = K::min(b);
    return u;
}

// The 8 exact int32 lanes of a block's products.
template <class K>
inline __m256i lanes(const unpacked& u, __m256i x) {
    const __m256i xs = K::is_signed ? _mm256_sign_epi8(x, u.sign) : x;
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u.w, xs), _mm256_set1_epi16(1));
}

// The float state of one (row, token). Q4_1/Q5_1's minimum sums live apart, in the lanes
// of one vector per tile (tiles are R x 1 or 1 x T with R, T <= 4: lane i + t), so a tile's
// scalar fma(m, s, summs) per block are one vector FMA.
struct acc_state {
    __m256 acc, acc2;
};

// Block b of R rows, unpacked for a tile; the first step of a tile's decode walk asks for
// the next tile's bytes (`blocks` blocks of them, the step's length).
template <class K, int R, int T>
inline void unpack_rows(const typename K::block* const* wb, std::int64_t b, unpacked* u, std::size_t tile_bytes,
                        std::size_t blocks) {
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
        if constexpr (T == 1 && R > 1) {
            if (blocks > 0) prefetch_next_tile(wb[i] + b, tile_bytes, blocks * sizeof(typename K::block));
        }
        u[i] = unpack<K>(wb[i][b]);
    }
}

// Block b of R rows times T tokens, into acc (Second: acc2, or acc for the tokens whose
// `single` is set).
template <class K, int R, int T, bool Second>
inline void block_step(const typename K::block* const* wb, const typename K::act* const* xb, std::int64_t b,
                       acc_state (*st)[T], __m128* summs, std::size_t tile_bytes, const bool* single) {
    static_assert((R == 1 || T == 1) && R <= 4 && T <= 4);
    unpacked u[R];
    // The paired types step two blocks at a time; the first step asks for both.
    unpack_rows<K, R, T>(wb, b, u, tile_bytes, Second ? 0 : K::order == float_order::paired ? 2 : 1);
    if constexpr (K::order == float_order::single_min) {
        alignas(16) float m[4] = {}, s[4] = {};
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) m[i] = u[i].m;
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) s[t] = act_sum(xb[t][b]);
        const __m128 mv = R == 1 ? _mm_set1_ps(m[0]) : _mm_load_ps(m);
        const __m128 sv = T == 1 ? _mm_set1_ps(s[0]) : _mm_load_ps(s);
        *summs = _mm_fmadd_ps(mv, sv, *summs);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        const typename K::act& x = xb[t][b];
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs));
        const float dx = half_to_float(x.d);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            const __m256 p = _mm256_cvtepi32_ps(lanes<K>(u[i], xq));
            const __m256 d = _mm256_set1_ps(u[i].d * dx);
            if constexpr (Second) {
                if (single[t]) {
                    st[i][t].acc = _mm256_fmadd_ps(d, p, st[i][t].acc);
                } else {
                    st[i][t].acc2 = _mm256_fmadd_ps(d, p, st[i][t].acc2);
                }
            } else {
                st[i][t].acc = _mm256_fmadd_ps(d, p, st[i][t].acc);
            }
        }
    }
}

// Block b of R rows times T tokens in llama.cpp's repacked order: each (row, token)'s exact
// block sum, converted to float, multiplied-added into its running float, lane i + t of
// `chain` (a lane-wise FMA rounds as the scalar one).
template <class K, int R, int T>
inline void chained_step(const typename K::block* const* wb, const typename K::act* const* xb, std::int64_t b,
                         __m128* chain, std::size_t tile_bytes) {
    static_assert((R == 1 || T == 1) && R <= 4 && T <= 4);
    unpacked u[R];
    unpack_rows<K, R, T>(wb, b, u, tile_bytes, 1);
    __m256i isum[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    alignas(16) float scale[4] = {};
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        const typename K::act& x = xb[t][b];
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs));
        const float dx = half_to_float(x.d);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            isum[i + t] = lanes<K>(u[i], xq);
            scale[i + t] = u[i].d * dx;
        }
    }
    const __m128 sums = _mm_cvtepi32_ps(hsum4_epi32(isum[0], isum[1], isum[2], isum[3]));
    *chain = _mm_fmadd_ps(sums, _mm_load_ps(scale), *chain);
}

template <class K, int R, int T, bool Repacked>
void tile(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    using wblock = typename K::block;
    using xblock = typename K::act;
    const wblock* wb[R];
    const xblock* xb[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wb[i] = reinterpret_cast<const wblock*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const xblock*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_q32;
    const std::size_t tile_bytes = R * a.w_stride;
    // Tokens of a paired type that llama.cpp multiplies with tinyBLAS (sum_order.h: in a
    // batch) rather than vec_dot: one accumulator for every block.
    bool single[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        single[t] = K::single_in_batches && a.orders != nullptr && a.orders[t0 + t] != sum_order::alone;
    }
    acc_state st[R][T];
    __m128 summs = _mm_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) st[i][t] = acc_state{_mm256_setzero_ps(), _mm256_setzero_ps()};
    }
    if constexpr (Repacked) {
        __m128 chain = _mm_setzero_ps();
        for (std::int64_t b = 0; b < nb; ++b) chained_step<K, R, T>(wb, xb, b, &chain, tile_bytes);
        alignas(16) float out[4];
        _mm_store_ps(out, chain);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
            for (int t = 0; t < T; ++t) a.y[(t0 + t) * a.y_stride + r0 + i] = out[i + t];
        }
        return;
    } else if constexpr (K::order == float_order::paired) {
        for (std::int64_t b = 0; b + 1 < nb; b += 2) {
            block_step<K, R, T, false>(wb, xb, b, st, &summs, tile_bytes, single);
            block_step<K, R, T, true>(wb, xb, b + 1, st, &summs, tile_bytes, single);
        }
    } else {
        for (std::int64_t b = 0; b < nb; ++b) block_step<K, R, T, false>(wb, xb, b, st, &summs, tile_bytes, single);
    }
    alignas(16) float mins[4];
    _mm_store_ps(mins, summs);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            float out;
            if (K::order == float_order::paired && single[t]) {
                // tinyBLAS: a last odd block joins the one accumulator like the others.
                __m256 acc = st[i][t].acc;
                if (nb % 2 != 0) {
                    const xblock& x = xb[t][nb - 1];
                    const unpacked u = unpack<K>(wb[i][nb - 1]);
                    const __m256 p = _mm256_cvtepi32_ps(lanes<K>(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs))));
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(u.d * half_to_float(x.d)), p, acc);
                }
                out = hsum_ps(acc);
            } else if constexpr (K::order == float_order::paired) {
                out = hsum_ps(_mm256_add_ps(st[i][t].acc, st[i][t].acc2));
                if (nb % 2 != 0) {
                    // The last odd block, as llama.cpp's scalar tail: fma(d, its integer sum, out).
                    const xblock& x = xb[t][nb - 1];
                    const unpacked u = unpack<K>(wb[i][nb - 1]);
                    const int isum = hsum_epi32(lanes<K>(u, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs))));
                    out = fma_ss(half_to_float(x.d) * u.d, static_cast<float>(isum), out);
                }
            } else {
                out = hsum_ps(st[i][t].acc);
                if constexpr (K::order == float_order::single_min) out += mins[i + t];
            }
            a.y[(t0 + t) * a.y_stride + r0 + i] = out;
        }
    }
}

template <class K, int T, bool Repacked>
void rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    std::int64_t r = r0;
    if constexpr (T == 1) {
        for (; r + 4 <= r1; r += 4) tile<K, 4, 1, Repacked>(a, r, t0);
    }
    for (; r < r1; ++r) tile<K, 1, T, Repacked>(a, r, t0);
}

template <class K, bool Repacked>
void gemm_tiles(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) rows<K, 4, Repacked>(a, r0, r1, t0);
    switch (a.n_tokens - t0) {
        case 3: rows<K, 3, Repacked>(a, r0, r1, t0); break;
        case 2: rows<K, 2, Repacked>(a, r0, r1, t0); break;
        case 1: rows<K, 1, Repacked>(a, r0, r1, t0); break;
        default: break;
    }
}

// The way llama.cpp multiplies the matrix: repacked when the type is one it repacks, the
// matrix one it may repack and the row count a multiple of 8
// (ggml_repack_get_optimal_repack_type), else vec_dot.
template <class K>
void gemm(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    if constexpr (K::repacked_by_llama) {
        if (a.repackable && a.rows % 8 == 0) {
            gemm_tiles<K, true>(a, r0, r1);
            return;
        }
    }
    gemm_tiles<K, false>(a, r0, r1);
}

}  // namespace

gemm_fn gemm_q32_avx2(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q4_0: return &gemm<q4_0_t>;
        case tensor_type::q4_1: return &gemm<q4_1_t>;
        case tensor_type::q5_0: return &gemm<q5_0_t>;
        case tensor_type::q5_1: return &gemm<q5_1_t>;
        case tensor_type::iq4_nl: return &gemm<iq4_nl_t>;
        case tensor_type::mxfp4: return &gemm<mxfp4_t>;
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
