// AVX-512 versions of the layer ops. Numerics follow the scalar references in ops.cpp:
// the same float operations where that is cheap (RMSNorm's squares, RoPE without FMA), a
// vector exp accurate to about 2 ulp where libm's expf would dominate (softmax, SwiGLU).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <limits>
#pragma GCC diagnostic pop

#include "kernels/cpu/ops_impl.h"

namespace moed::kernels::detail {

namespace {

inline float hsum_ps256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float hsum_ps(__m512 v) {
    return hsum_ps256(_mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1)));
}

inline double hsum_pd(__m512d v) {
    __m256d s4 = _mm256_add_pd(_mm512_extractf64x4_pd(v, 0), _mm512_extractf64x4_pd(v, 1));
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
}

inline float hmax_ps(__m512 v) {
    __m256 m8 = _mm256_max_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline __mmask16 tail_mask(std::int64_t left) {
    return static_cast<__mmask16>(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
}

// e^x: Cody-Waite reduction x = n ln2 + r, a degree-6 polynomial for e^r, scaled by 2^n
// with vscalefps (which also gives 0 and inf outside the float range).
inline __m512 exp_ps(__m512 x) {
    // Clamp so that -inf gives 0 and +inf gives inf without NaNs from the reduction.
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
    // e^89 overflows to inf and e^-104 underflows to 0 in the scaling, as expf does.
    return _mm512_scalef_ps(e, n);
}

inline __m512 load_half16(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_half16_masked(const std::uint16_t* p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}
inline __m512 round_to_half(__m512 v) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

}  // namespace

void rms_norm_avx512(const float* x, const float* weight, float* y, std::int64_t n, float eps) {
    // Squares in float (as ggml), accumulated in double.
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    std::int64_t i = 0;
    for (; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m512 sq = _mm512_mul_ps(v, v);
        acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_extractf32x8_ps(sq, 0)));
        acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(sq, 1)));
    }
    const double sum = hsum_pd(_mm512_add_pd(acc0, acc1));
    const float mean = static_cast<float>(sum / static_cast<double>(n));
    const float scale = 1.0f / __builtin_sqrtf(mean + eps);
    const __m512 vs = _mm512_set1_ps(scale);
    for (i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs);
        if (weight != nullptr) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, weight + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

void rope_apply_avx512(float* x, int n_heads, int head_dim, int n_rot, const float* cos_theta, const float* sin_theta) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + static_cast<std::int64_t>(h) * head_dim;
        for (int i = 0; i < half; i += 16) {
            const __mmask16 m = tail_mask(half - i);
            const __m512 x0 = _mm512_maskz_loadu_ps(m, v + i);
            const __m512 x1 = _mm512_maskz_loadu_ps(m, v + i + half);
            const __m512 c = _mm512_maskz_loadu_ps(m, cos_theta + i);
            const __m512 s = _mm512_maskz_loadu_ps(m, sin_theta + i);
            // Separate multiplies and adds, as the scalar reference (no FMA contraction).
            _mm512_mask_storeu_ps(v + i, m, _mm512_sub_ps(_mm512_mul_ps(x0, c), _mm512_mul_ps(x1, s)));
            _mm512_mask_storeu_ps(v + i + half, m, _mm512_add_ps(_mm512_mul_ps(x0, s), _mm512_mul_ps(x1, c)));
        }
    }
}

void softmax_avx512(float* x, std::int64_t n, float sink) {
    __m512 vmax = _mm512_set1_ps(-__builtin_inff());
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, x + i));
    }
    const float row_max = hmax_ps(vmax);
    const float max = sink > row_max ? sink : row_max;
    const __m512 mx = _mm512_set1_ps(max);
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 e = _mm512_maskz_mov_ps(m, exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx)));
        _mm512_mask_storeu_ps(x + i, m, e);
        sum += static_cast<double>(hsum_ps(e));
    }
    sum += static_cast<double>(__builtin_expf(sink - max));
    const __m512 inv = _mm512_set1_ps(static_cast<float>(1.0 / sum));
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

void swiglu_avx512(const float* gate, const float* up, float* out, std::int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
        const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, u));
    }
}

void axpy_avx512(float a, const float* x, float* y, std::int64_t n) {
    const __m512 va = _mm512_set1_ps(a);
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

void attention_head_avx512(const attention_args& args, int head, float* scratch) {
    const int dim = args.head_dim;
    const int v_dim = args.value_dim();
    const int kv_head = head / (args.n_head / args.n_head_kv);
    const std::int64_t k_stride = args.key_stride();
    const std::int64_t v_stride = args.value_stride();
    const int n_vec = (dim + 15) / 16;
    // q rounded to f16 as the f16 K matmul does; kept in registers-sized chunks on the stack.
    __m512 q[max_head_dim / 16];
    for (int v = 0; v < n_vec; ++v) {
        const __mmask16 m = tail_mask(dim - 16 * v);
        q[v] = round_to_half(_mm512_maskz_loadu_ps(m, args.q + static_cast<std::int64_t>(head) * dim + 16 * v));
    }
    const std::uint16_t* k_base = args.k_cache + static_cast<std::int64_t>(kv_head) * dim;
    std::int64_t p = 0;
    // Four positions at a time: independent accumulators hide the FMA latency.
    for (; p + 4 <= args.n_kv; p += 4) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int v = 0; v < n_vec; ++v) {
            const __mmask16 m = tail_mask(dim - 16 * v);
            for (int j = 0; j < 4; ++j) {
                const std::uint16_t* k = k_base + (p + j) * k_stride + 16 * v;
                acc[j] = _mm512_fmadd_ps(q[v], load_half16_masked(k, m), acc[j]);
            }
        }
        for (int j = 0; j < 4; ++j) scratch[p + j] = hsum_ps(acc[j]) * args.scale;
    }
    for (; p < args.n_kv; ++p) {
        __m512 acc = _mm512_setzero_ps();
        for (int v = 0; v < n_vec; ++v) {
            const __mmask16 m = tail_mask(dim - 16 * v);
            acc = _mm512_fmadd_ps(q[v], load_half16_masked(k_base + p * k_stride + 16 * v, m), acc);
        }
        scratch[p] = hsum_ps(acc) * args.scale;
    }
    // Positions before the window are masked (their exp is 0, as ggml's -inf mask gives).
    for (p = 0; p < args.kv_start; ++p) scratch[p] = -__builtin_inff();
    softmax_avx512(scratch, args.n_kv, args.sinks != nullptr ? args.sinks[head] : -__builtin_inff());
    // Probabilities rounded to f16 (the f16 V matmul converts them), accumulated in f32.
    const int n_vec_v = (v_dim + 15) / 16;
    __m512 out[max_head_dim / 16];
    for (int v = 0; v < n_vec_v; ++v) out[v] = _mm512_setzero_ps();
    const std::uint16_t* v_base = args.v_cache + static_cast<std::int64_t>(kv_head) * v_dim;
    for (p = 0; p < args.n_kv; ++p) {
        const __m512 prob = round_to_half(_mm512_set1_ps(scratch[p]));
        const std::uint16_t* vrow = v_base + p * v_stride;
        if (v_dim % 16 == 0) {
            for (int v = 0; v < n_vec_v; ++v) out[v] = _mm512_fmadd_ps(prob, load_half16(vrow + 16 * v), out[v]);
        } else {
            for (int v = 0; v < n_vec_v; ++v) {
                out[v] = _mm512_fmadd_ps(prob, load_half16_masked(vrow + 16 * v, tail_mask(v_dim - 16 * v)), out[v]);
            }
        }
    }
    float* dst = args.out + static_cast<std::int64_t>(head) * v_dim;
    for (int v = 0; v < n_vec_v; ++v) _mm512_mask_storeu_ps(dst + 16 * v, tail_mask(v_dim - 16 * v), out[v]);
}

namespace {

// Eight sums of eight vectors, as one 256-bit vector (lane h = sum of v[h]).
inline __m256 hsum8(const __m512* v) {
    __m256 s[8];
    for (int h = 0; h < 8; ++h) s[h] = _mm256_add_ps(_mm512_extractf32x8_ps(v[h], 0), _mm512_extractf32x8_ps(v[h], 1));
    const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(s[4], s[5]), _mm256_hadd_ps(s[6], s[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
}

// Heads h0 .. h0+7 of one KV group (all sharing the same K and V rows).
void attention_eight_heads(const attention_args& args, int kv_head, int h0, float* scratch) {
    constexpr int heads = 8;
    const int dim = args.head_dim;
    const int v_dim = args.value_dim();
    const int n_vec = (dim + 15) / 16;
    const int n_vec_v = (v_dim + 15) / 16;
    const std::int64_t n_kv = args.n_kv;
    const std::int64_t k_stride = args.key_stride();
    const std::int64_t v_stride = args.value_stride();
    // q rounded to f16 (as attention_head), zero-padded to whole vectors.
    alignas(64) float q[heads][max_head_dim];
    for (int h = 0; h < heads; ++h) {
        const float* src = args.q + static_cast<std::int64_t>(h0 + h) * dim;
        for (int v = 0; v < n_vec; ++v) {
            _mm512_store_ps(&q[h][16 * v], round_to_half(_mm512_maskz_loadu_ps(tail_mask(dim - 16 * v), src + 16 * v)));
        }
    }
    const std::uint16_t* k_base = args.k_cache + static_cast<std::int64_t>(kv_head) * dim;
    const std::uint16_t* v_base = args.v_cache + static_cast<std::int64_t>(kv_head) * v_dim;
    for (std::int64_t p = 0; p < n_kv; ++p) {
        __m512 acc[heads];
        for (int h = 0; h < heads; ++h) acc[h] = _mm512_setzero_ps();
        const std::uint16_t* k = k_base + p * k_stride;
        for (int v = 0; v < n_vec; ++v) {
            const __m512 kv = load_half16_masked(k + 16 * v, tail_mask(dim - 16 * v));
            for (int h = 0; h < heads; ++h) acc[h] = _mm512_fmadd_ps(_mm512_load_ps(&q[h][16 * v]), kv, acc[h]);
        }
        alignas(32) float s[heads];
        _mm256_store_ps(s, _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(args.scale)));
        for (int h = 0; h < heads; ++h) scratch[h * n_kv + p] = s[h];
    }
    // Softmax per head, then the probabilities rounded to f16 (as the f16 V matmul does).
    for (int h = 0; h < heads; ++h) {
        float* prob = scratch + h * n_kv;
        softmax_avx512(prob, n_kv);
        for (std::int64_t p = 0; p < n_kv; p += 16) {
            const __mmask16 m = tail_mask(n_kv - p);
            _mm512_mask_storeu_ps(prob + p, m, round_to_half(_mm512_maskz_loadu_ps(m, prob + p)));
        }
    }
    // One output vector of every head at a time: V converted once for the eight heads.
    for (int v = 0; v < n_vec_v; ++v) {
        const __mmask16 m = tail_mask(v_dim - 16 * v);
        __m512 acc[heads];
        for (int h = 0; h < heads; ++h) acc[h] = _mm512_setzero_ps();
        for (std::int64_t p = 0; p < n_kv; ++p) {
            const __m512 vv = load_half16_masked(v_base + p * v_stride + 16 * v, m);
            for (int h = 0; h < heads; ++h) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(scratch[h * n_kv + p]), vv, acc[h]);
        }
        for (int h = 0; h < heads; ++h) _mm512_mask_storeu_ps(args.out + static_cast<std::int64_t>(h0 + h) * v_dim + 16 * v, m, acc[h]);
    }
}

// Heads h0 .. h0+G-1 of one KV group for small groups (G of 2 or 4, as Qwen3-style models
// with few query heads per KV head have): each K and V vector is converted from f16 once for
// the G heads. Per head and position the operations and their order are attention_head's
// (the same FMAs over the head's vectors, the same horizontal sum, the same V sum), so the
// results are its bits: only the loads are shared.
template <int G>
void attention_small_group(const attention_args& args, int h0, int kv_head, float* scratch) {
    constexpr int tile = G <= 2 ? 4 : 2;  // positions per step: accumulators fit the registers
    const int dim = args.head_dim;
    const int v_dim = args.value_dim();
    const int n_vec = (dim + 15) / 16;
    const int n_vec_v = (v_dim + 15) / 16;
    const std::int64_t n_kv = args.n_kv;
    const std::int64_t k_stride = args.key_stride();
    const std::int64_t v_stride = args.value_stride();
    __m512 q[G][max_head_dim / 16];
    for (int h = 0; h < G; ++h) {
        for (int v = 0; v < n_vec; ++v) {
            const __mmask16 m = tail_mask(dim - 16 * v);
            q[h][v] = round_to_half(_mm512_maskz_loadu_ps(m, args.q + static_cast<std::int64_t>(h0 + h) * dim + 16 * v));
        }
    }
    const std::uint16_t* k_base = args.k_cache + static_cast<std::int64_t>(kv_head) * dim;
    const std::uint16_t* v_base = args.v_cache + static_cast<std::int64_t>(kv_head) * v_dim;
    std::int64_t p = 0;
    for (; p + tile <= n_kv; p += tile) {
        __m512 acc[G][tile];
        for (int h = 0; h < G; ++h) {
            for (int j = 0; j < tile; ++j) acc[h][j] = _mm512_setzero_ps();
        }
        for (int v = 0; v < n_vec; ++v) {
            const __mmask16 m = tail_mask(dim - 16 * v);
            for (int j = 0; j < tile; ++j) {
                const __m512 k = load_half16_masked(k_base + (p + j) * k_stride + 16 * v, m);
                for (int h = 0; h < G; ++h) acc[h][j] = _mm512_fmadd_ps(q[h][v], k, acc[h][j]);
            }
        }
        for (int h = 0; h < G; ++h) {
            for (int j = 0; j < tile; ++j) scratch[h * n_kv + p + j] = hsum_ps(acc[h][j]) * args.scale;
        }
    }
    for (; p < n_kv; ++p) {
        __m512 acc[G];
        for (int h = 0; h < G; ++h) acc[h] = _mm512_setzero_ps();
        for (int v = 0; v < n_vec; ++v) {
            const __m512 k = load_half16_masked(k_base + p * k_stride + 16 * v, tail_mask(dim - 16 * v));
            for (int h = 0; h < G; ++h) acc[h] = _mm512_fmadd_ps(q[h][v], k, acc[h]);
        }
        for (int h = 0; h < G; ++h) scratch[h * n_kv + p] = hsum_ps(acc[h]) * args.scale;
    }
    for (int h = 0; h < G; ++h) softmax_avx512(scratch + h * n_kv, n_kv);
    __m512 out[G][max_head_dim / 16];
    for (int h = 0; h < G; ++h) {
        for (int v = 0; v < n_vec_v; ++v) out[h][v] = _mm512_setzero_ps();
    }
    for (p = 0; p < n_kv; ++p) {
        __m512 prob[G];
        for (int h = 0; h < G; ++h) prob[h] = round_to_half(_mm512_set1_ps(scratch[h * n_kv + p]));
        const std::uint16_t* vrow = v_base + p * v_stride;
        for (int v = 0; v < n_vec_v; ++v) {
            const __m512 vv = load_half16_masked(vrow + 16 * v, tail_mask(v_dim - 16 * v));
            for (int h = 0; h < G; ++h) out[h][v] = _mm512_fmadd_ps(prob[h], vv, out[h][v]);
        }
    }
    for (int h = 0; h < G; ++h) {
        float* dst = args.out + static_cast<std::int64_t>(h0 + h) * v_dim;
        for (int v = 0; v < n_vec_v; ++v) _mm512_mask_storeu_ps(dst + 16 * v, tail_mask(v_dim - 16 * v), out[h][v]);
    }
}

}  // namespace

void fp32_to_fp16_row_avx512(const float* x, std::uint16_t* y, std::int64_t n) noexcept {
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(y + i, m, h);
    }
}

std::int64_t argmax_avx512(const float* x, std::int64_t n) {
    // Pass 1: the maximum (max_ps returns its second operand when either is NaN, so NaN
    // values never enter the accumulator). Pass 2: the first index holding it.
    __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = tail_mask(n - i);
        best = _mm512_max_ps(_mm512_mask_loadu_ps(best, m, x + i), best);
    }
    const __m512 target = _mm512_set1_ps(_mm512_reduce_max_ps(best));
    for (std::int64_t i = 0; i < n; i += 16) {
        const __mmask16 hit = _mm512_mask_cmpeq_ps_mask(tail_mask(n - i), _mm512_maskz_loadu_ps(tail_mask(n - i), x + i), target);
        if (hit != 0) return i + __builtin_ctz(hit);
    }
    return 0;
}

bool attention_group_avx512(const attention_args& args, int kv_head, float* scratch) {
    const int group = args.n_head / args.n_head_kv;
    if (group == 2) {
        attention_small_group<2>(args, kv_head * 2, kv_head, scratch);
        return true;
    }
    if (group == 4) {
        attention_small_group<4>(args, kv_head * 4, kv_head, scratch);
        return true;
    }
    if (group % 8 != 0) return false;
    for (int h = 0; h < group; h += 8) attention_eight_heads(args, kv_head, kv_head * group + h, scratch + h * args.n_kv);
    return true;
}

}  // namespace moed::kernels::detail
