// AVX-512 (F, BW, VL, DQ, VNNI) matmul kernels of the 32-value block types: Q4_0, Q5_0,
// IQ4_NL and MXFP4 weights with Q8_0 activations, Q4_1 and Q5_1 weights with Q8_1.
//
// Integer part: two consecutive blocks per 512-bit vector. A row's pair of blocks is
// unpacked once per tile into 64 unsigned bytes in value order: the codes plus an offset
// that makes them unsigned (Q4_0 nibbles are q - 8 + 8, Q5_0 codes q - 16 + 16, the IQ4_NL
// and MXFP4 table entries + 128; Q4_1/Q5_1 codes are unsigned already). `vpdpbusd` then
// multiplies them with the signed activations, and the offset's contribution,
// offset * (sum of each 4 activations), is removed by starting the accumulation at minus
// that sum: one `vpdpbusd` per token and block pair, shared by the rows of the tile. Lane i
// of each 256-bit half is then the exact sum of the products of values 4i..4i+3 of its
// block, the same lanes as the AVX2 kernels'.
//
// Float part: the same operations as matmul_q32_avx2.cpp (llama.cpp's AVX2 vec_dot order,
// described there), so both levels give the same bits:
// - IQ4_NL, MXFP4: llama.cpp's two accumulators, even and odd blocks, are the two halves
//   of one 512-bit accumulator: one FMA per block pair.
// - Q4_0, Q5_0, Q4_1, Q5_1: one 256-bit accumulator takes the pair's halves in turn (two
//   FMAs); Q4_1/Q5_1's scalar minimum sums of a tile's rows share one 128-bit FMA per
//   token and block (a lane per row).
// The f16 scales of a block pair are converted together ([d0, m0, d1, m1]).
// An odd last block is done with 256-bit vectors. Tiles: 4 rows x 1 token (decode), 4 rows
// x 4 tokens (prefill); each (row, token) runs the same operations in every tile shape, so
// results are batch invariant (matmul.h). Internal linkage throughout (see kernel_impl.h).
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized inside themselves; see
// matmul_avx512.cpp.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstddef>
#include <cstring>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

inline float hsum_ps256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x55));
    return _mm_cvtsi128_si32(s);
}

inline float fma_ss(float a, float b, float c) {
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

// The scales of a block pair as [d0, m0, d1, m1] (m: Q4_1/Q5_1's minimum or Q8_1's sum s,
// else 0), converted with one vcvtph2ps. Every block with f16 scales starts with d, then m
// or s where it has one (static_asserts below).
inline __m128 halves_d(const void* block0, const void* block1) {
    std::uint16_t a, b;
    std::memcpy(&a, block0, sizeof a);
    std::memcpy(&b, block1, sizeof b);
    return _mm_cvtph_ps(_mm_insert_epi16(_mm_cvtsi32_si128(a), b, 2));
}

inline __m128 halves_dm(const void* block0, const void* block1) {
    std::uint32_t a, b;
    std::memcpy(&a, block0, sizeof a);
    std::memcpy(&b, block1, sizeof b);
    return _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(a)), static_cast<int>(b), 1));
}

static_assert(offsetof(block_q4_0, d) == 0 && offsetof(block_q5_0, d) == 0 && offsetof(block_iq4_nl, d) == 0 &&
              offsetof(block_q8_0, d) == 0);
static_assert(offsetof(block_q4_1, m) == 2 && offsetof(block_q5_1, m) == 2 && offsetof(block_q8_1, s) == 2);

// [d0 x 8 | d1 x 8] from [d0, m0, d1, m1].
inline __m512 pair_scale(__m128 v) {
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2), _mm512_castps128_ps512(v));
}

// The nibble bytes of two blocks -> 64 bytes 0..15 in value order: [low nibbles of the
// first | its high nibbles | low of the second | high of the second].
inline __m512i unpack_nibbles_pair(const std::uint8_t* qs0, const std::uint8_t* qs1) {
    const __m512i v = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs0)))),
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs1))), 1);
    return _mm512_and_si512(_mm512_srlv_epi64(v, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0)), _mm512_set1_epi8(0x0F));
}

inline __m256i unpack_nibbles(const std::uint8_t* qs) {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(0x0F));
}

inline std::uint32_t load_u32(const std::uint8_t* p) {
    std::uint32_t v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// Bit j of qh (and bit j of the second block's qh at 32 + j) -> 0x10 in byte j.
inline __m512i high_bits_pair(const std::uint8_t* qh0, const std::uint8_t* qh1) {
    const auto m = static_cast<__mmask64>(load_u32(qh0) | static_cast<std::uint64_t>(load_u32(qh1)) << 32);
    return _mm512_maskz_mov_epi8(m, _mm512_set1_epi8(0x10));
}

inline __m256i high_bits(const std::uint8_t* qh) {
    return _mm256_maskz_mov_epi8(static_cast<__mmask32>(load_u32(qh)), _mm256_set1_epi8(0x10));
}

// A 16-entry signed table + 128 (unsigned), in every 128-bit lane.
inline __m512i offset_table(const std::int8_t* table) {
    return _mm512_broadcast_i32x4(_mm_xor_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(table)), _mm_set1_epi8(static_cast<char>(0x80))));
}

enum class float_order { single, single_min, paired };

// Per type: the blocks, the offset that makes codes unsigned, the unpacking of a pair and
// of a single block, the weight scale and (single_min) minimum, and the float order.
struct q4_0_t {
    using block = block_q4_0;
    using act = block_q8_0;
    static constexpr int offset = 8;
    static constexpr float_order order = float_order::single;
    static __m512i codes(const block& b0, const block& b1) { return unpack_nibbles_pair(b0.qs, b1.qs); }
    static __m256i codes(const block& b) { return unpack_nibbles(b.qs); }
    static __m128 scales(const block& b0, const block& b1) { return halves_d(&b0, &b1); }
};
struct q5_0_t {
    using block = block_q5_0;
    using act = block_q8_0;
    static constexpr int offset = 16;
    static constexpr float_order order = float_order::single;
    static __m512i codes(const block& b0, const block& b1) {
        return _mm512_or_si512(unpack_nibbles_pair(b0.qs, b1.qs), high_bits_pair(b0.qh, b1.qh));
    }
    static __m256i codes(const block& b) { return _mm256_or_si256(unpack_nibbles(b.qs), high_bits(b.qh)); }
    static __m128 scales(const block& b0, const block& b1) { return halves_d(&b0, &b1); }
};
struct q4_1_t {
    using block = block_q4_1;
    using act = block_q8_1;
    static constexpr int offset = 0;
    static constexpr float_order order = float_order::single_min;
    static __m512i codes(const block& b0, const block& b1) { return unpack_nibbles_pair(b0.qs, b1.qs); }
    static __m256i codes(const block& b) { return unpack_nibbles(b.qs); }
    static __m128 scales(const block& b0, const block& b1) { return halves_dm(&b0, &b1); }
};
struct q5_1_t {
    using block = block_q5_1;
    using act = block_q8_1;
    static constexpr int offset = 0;
    static constexpr float_order order = float_order::single_min;
    static __m512i codes(const block& b0, const block& b1) {
        return _mm512_or_si512(unpack_nibbles_pair(b0.qs, b1.qs), high_bits_pair(b0.qh, b1.qh));
    }
    static __m256i codes(const block& b) { return _mm256_or_si256(unpack_nibbles(b.qs), high_bits(b.qh)); }
    static __m128 scales(const block& b0, const block& b1) { return halves_dm(&b0, &b1); }
};
struct iq4_nl_t {
    using block = block_iq4_nl;
    using act = block_q8_0;
    static constexpr int offset = 128;
    static constexpr float_order order = float_order::paired;
    static __m512i codes(const block& b0, const block& b1) {
        return _mm512_shuffle_epi8(offset_table(kvalues_iq4nl), unpack_nibbles_pair(b0.qs, b1.qs));
    }
    static __m256i codes(const block& b) {
        return _mm256_shuffle_epi8(_mm512_castsi512_si256(offset_table(kvalues_iq4nl)), unpack_nibbles(b.qs));
    }
    static __m128 scales(const block& b0, const block& b1) { return halves_d(&b0, &b1); }
};
struct mxfp4_t {
    using block = block_mxfp4;
    using act = block_q8_0;
    static constexpr int offset = 128;
    static constexpr float_order order = float_order::paired;
    static __m512i codes(const block& b0, const block& b1) {
        return _mm512_shuffle_epi8(offset_table(kvalues_mxfp4), unpack_nibbles_pair(b0.qs, b1.qs));
    }
    static __m256i codes(const block& b) {
        return _mm256_shuffle_epi8(_mm512_castsi512_si256(offset_table(kvalues_mxfp4)), unpack_nibbles(b.qs));
    }
    static __m128 scales(const block& b0, const block& b1) {
        return _mm_setr_ps(e8m0_to_fp32_half(b0.e), 0.0f, e8m0_to_fp32_half(b1.e), 0.0f);
    }
};

inline __m128 act_scales(const block_q8_0& x0, const block_q8_0& x1) { return halves_d(&x0, &x1); }
inline __m128 act_scales(const block_q8_1& x0, const block_q8_1& x1) { return halves_dm(&x0, &x1); }

// Lanes i < R of the results: the second entries (m0) and fourth entries (m1) of v[i].
template <int R>
inline void row_minimums(const __m128* v, __m128* m0, __m128* m1) {
    if constexpr (R == 4) {
        const __m128 lo01 = _mm_unpacklo_ps(v[0], v[1]), lo23 = _mm_unpacklo_ps(v[2], v[3]);
        const __m128 hi01 = _mm_unpackhi_ps(v[0], v[1]), hi23 = _mm_unpackhi_ps(v[2], v[3]);
        *m0 = _mm_movehl_ps(lo23, lo01);
        *m1 = _mm_movehl_ps(hi23, hi01);
    } else {
        static_assert(R == 1);
        *m0 = _mm_permute_ps(v[0], 0x55);
        *m1 = _mm_permute_ps(v[0], 0xFF);
    }
}

// The quants of two consecutive activation blocks as one vector.
template <class X>
inline __m512i act_pair(const X* x) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[0].qs))),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[1].qs)), 1);
}

// The accumulation start that removes the offset: -offset * (sum of each 4 activations).
template <class K>
inline __m512i start_pair(__m512i xq) {
    if constexpr (K::offset == 0) {
        return _mm512_setzero_si512();
    } else {
        const __m512i off = _mm512_set1_epi8(static_cast<char>(K::offset));
        return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, xq));
    }
}

template <class K>
inline __m256i start_one(__m256i xq) {
    if constexpr (K::offset == 0) {
        return _mm256_setzero_si256();
    } else {
        const __m256i off = _mm256_set1_epi8(static_cast<char>(K::offset));
        return _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_dpbusd_epi32(_mm256_setzero_si256(), off, xq));
    }
}

inline __m256 lo256(__m512 v) { return _mm512_castps512_ps256(v); }
inline __m256 hi256(__m512 v) { return _mm512_extractf32x8_ps(v, 1); }

// R rows x T tokens. The float state of (row i, token t) is acc[i][t] (llama.cpp's
// [acc1 | acc2] for the paired types; the others use its low half) and, for Q4_1/Q5_1,
// lane i of summs[t]: the minimums' sums of the tile's rows go through one vector FMA per
// token and block, each lane the scalar fma(m, s, summs) of its row.
template <class K, int R, int T>
void tile(const gemm_args& a, std::int64_t r0, std::int64_t t0) {
    using wblock = typename K::block;
    using xblock = typename K::act;
    constexpr bool with_min = K::order == float_order::single_min;
    const wblock* wb[R];
    const xblock* xb[T];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) wb[i] = reinterpret_cast<const wblock*>(a.w + static_cast<std::size_t>(r0 + i) * a.w_stride);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) xb[t] = reinterpret_cast<const xblock*>(a.x + static_cast<std::size_t>(t0 + t) * a.x_stride);
    const std::int64_t nb = a.cols / qk_q32;
    __m512 acc[R][T];
    __m128 summs[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        summs[t] = _mm_setzero_ps();
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) acc[i][t] = _mm512_setzero_ps();
    }
    std::int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i w[R];
        __m512 dw[R];
        __m128 sc[R];
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            if constexpr (T == 1 && R > 1) prefetch_next_tile(wb[i] + b, R * a.w_stride, 2 * sizeof(wblock));
            w[i] = K::codes(wb[i][b], wb[i][b + 1]);
            sc[i] = K::scales(wb[i][b], wb[i][b + 1]);
            dw[i] = pair_scale(sc[i]);
        }
        __m128 m0 = _mm_setzero_ps(), m1 = _mm_setzero_ps();
        if constexpr (with_min) row_minimums<R>(sc, &m0, &m1);
#pragma GCC unroll 8
        for (int t = 0; t < T; ++t) {
            const xblock* x = xb[t] + b;
            const __m512i xq = act_pair(x);
            const __m512i start = start_pair<K>(xq);
            const __m128 xsc = act_scales(x[0], x[1]);
            const __m512 dx = pair_scale(xsc);
            if constexpr (with_min) {
                summs[t] = _mm_fmadd_ps(m0, _mm_permute_ps(xsc, 0x55), summs[t]);
                summs[t] = _mm_fmadd_ps(m1, _mm_permute_ps(xsc, 0xFF), summs[t]);
            }
#pragma GCC unroll 8
            for (int i = 0; i < R; ++i) {
                const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, w[i], xq));
                const __m512 d = _mm512_mul_ps(dw[i], dx);
                if constexpr (K::order == float_order::paired) {
                    acc[i][t] = _mm512_fmadd_ps(d, p, acc[i][t]);
                } else {
                    const __m256 lo = _mm256_fmadd_ps(lo256(d), lo256(p), lo256(acc[i][t]));
                    acc[i][t] = _mm512_castps256_ps512(_mm256_fmadd_ps(hi256(d), hi256(p), lo));
                }
            }
        }
    }
    // An odd last block: the single types go on accumulating; the paired ones add it after
    // the reduction, as llama.cpp's scalar tail does.
    const bool tail = b < nb;
    __m256i w1[R];
    __m128 sc1[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
        w1[i] = _mm256_setzero_si256();
        sc1[i] = _mm_setzero_ps();
    }
    if (tail) {
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            w1[i] = K::codes(wb[i][b]);
            sc1[i] = K::scales(wb[i][b], wb[i][b]);
        }
    }
    __m128 m_tail = _mm_setzero_ps(), unused = _mm_setzero_ps();
    if (with_min && tail) row_minimums<R>(sc1, &m_tail, &unused);
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t) {
        __m128 xsc1 = _mm_setzero_ps();
        __m256i xq1 = _mm256_setzero_si256();
        if (tail) {
            xq1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb[t][b].qs));
            xsc1 = act_scales(xb[t][b], xb[t][b]);
            if constexpr (with_min) summs[t] = _mm_fmadd_ps(m_tail, _mm_permute_ps(xsc1, 0x55), summs[t]);
        }
        alignas(16) float mins[4];
        _mm_store_ps(mins, summs[t]);
#pragma GCC unroll 8
        for (int i = 0; i < R; ++i) {
            float out;
            const __m256i p1 = tail ? _mm256_dpbusd_epi32(start_one<K>(xq1), w1[i], xq1) : _mm256_setzero_si256();
            const float d1 = tail ? _mm_cvtss_f32(sc1[i]) * _mm_cvtss_f32(xsc1) : 0.0f;
            if constexpr (K::order == float_order::paired) {
                out = hsum_ps256(_mm256_add_ps(lo256(acc[i][t]), hi256(acc[i][t])));
                if (tail) out = fma_ss(d1, static_cast<float>(hsum_epi32(p1)), out);
            } else {
                __m256 acc1 = lo256(acc[i][t]);
                if (tail) acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1), _mm256_cvtepi32_ps(p1), acc1);
                out = hsum_ps256(acc1);
                if constexpr (with_min) out += mins[i];
            }
            a.y[(t0 + t) * a.y_stride + r0 + i] = out;
        }
    }
}

template <class K, int T>
void rows(const gemm_args& a, std::int64_t r0, std::int64_t r1, std::int64_t t0) {
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) tile<K, 4, T>(a, r, t0);
    for (; r < r1; ++r) tile<K, 1, T>(a, r, t0);
}

template <class K>
void gemm(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    std::int64_t t0 = 0;
    for (; t0 + 4 <= a.n_tokens; t0 += 4) rows<K, 4>(a, r0, r1, t0);
    switch (a.n_tokens - t0) {
        case 3: rows<K, 3>(a, r0, r1, t0); break;
        case 2: rows<K, 2>(a, r0, r1, t0); break;
        case 1: rows<K, 1>(a, r0, r1, t0); break;
        default: break;
    }
}

}  // namespace

gemm_fn gemm_q32_avx512(tensor_type weight_type) noexcept {
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
