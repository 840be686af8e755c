// AVX2 (+FMA, F16C) versions of the layer ops; numerics as ops_avx512.cpp describes.
// libm is reached through __builtin_* rather than <cmath>, whose inline wrappers would be
// instantiated here with AVX2 encodings (see kernel_impl.h).
#include <immintrin.h>


#include "kernels/cpu/ops_impl.h"

namespace moed::kernels::detail {

namespace {

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline double hsum_pd(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
    return _mm_cvtsd_f64(s);
}

inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// e^x as in ops_avx512.cpp, with 2^n built in the exponent field. x is clamped so n stays
// in [-125, 128]: results below e^-86.64 (near the smallest normal float) flush to 0, and
// n = 128 overflows to inf in the last multiply, as expf does above 88.72.
inline __m256 exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-86.64f);
    const __m256 underflow = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(89.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    // 2^n = 2^(n-1) * 2, so that n = 128 still has an exponent field (254).
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256 pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(126)), 23));
    const __m256 result = _mm256_mul_ps(_mm256_mul_ps(e, pow2), _mm256_set1_ps(2.0f));
    return _mm256_andnot_ps(underflow, result);
}

inline __m256 round_to_half(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline __m256 load_half8(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

// Lanes 0..left-1 set (left < 8): the tail of an element-wise op is done with the body's
// vector operations on masked loads and stores, so an element's result does not depend on
// whether it falls in a tail (that is, on the length of the call or the element's place in
// it: batch invariance when a call covers several tokens' rows). libm's expf or a scalar
// a*x+y without FMA would round differently from the vector body.
inline __m256i tail_mask(std::int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(left)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// silu(g) * u, the whole of SwiGLU for 8 values.
inline __m256 swiglu8(__m256 g, __m256 u) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g));
    return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u);
}
inline float round_to_half(float f) {
    return _cvtsh_ss(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

}  // namespace

void rms_norm_avx2(const float* x, const float* weight, float* y, std::int64_t n, float eps) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(x + i);
        const __m256 sq = _mm256_mul_ps(v, v);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    double sum = hsum_pd(_mm256_add_pd(acc0, acc1));
    for (std::int64_t k = i; k < n; ++k) sum += static_cast<double>(x[k] * x[k]);
    const float mean = static_cast<float>(sum / static_cast<double>(n));
    const float scale = 1.0f / __builtin_sqrtf(mean + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        if (weight != nullptr) v = _mm256_mul_ps(v, _mm256_loadu_ps(weight + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; ++i) y[i] = weight != nullptr ? x[i] * scale * weight[i] : x[i] * scale;
}

void rope_apply_avx2(float* x, int n_heads, int head_dim, int n_rot, const float* cos_theta, const float* sin_theta) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + static_cast<std::int64_t>(h) * head_dim;
        int i = 0;
        for (; i + 8 <= half; i += 8) {
            const __m256 x0 = _mm256_loadu_ps(v + i);
            const __m256 x1 = _mm256_loadu_ps(v + i + half);
            const __m256 c = _mm256_loadu_ps(cos_theta + i);
            const __m256 s = _mm256_loadu_ps(sin_theta + i);
            _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(x0, c), _mm256_mul_ps(x1, s)));
            _mm256_storeu_ps(v + i + half, _mm256_add_ps(_mm256_mul_ps(x0, s), _mm256_mul_ps(x1, c)));
        }
        for (; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cos_theta[i] - x1 * sin_theta[i];
            v[i + half] = x0 * sin_theta[i] + x1 * cos_theta[i];
        }
    }
}

// The tail is a masked vector whose unused lanes hold -inf for the maximum and 0 in the sum,
// so padding a row with -inf (as causal masking does) changes none of its results.
void softmax_avx2(float* x, std::int64_t n, float sink) {
    const __m256 minus_inf = _mm256_set1_ps(-__builtin_inff());
    __m256 vmax = minus_inf;
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    const __m256i tail = tail_mask(n - i);
    if (i < n) vmax = _mm256_max_ps(vmax, _mm256_blendv_ps(minus_inf, _mm256_maskload_ps(x + i, tail), _mm256_castsi256_ps(tail)));
    const float row_max = hmax_ps(vmax);
    const float max = sink > row_max ? sink : row_max;
    const __m256 mx = _mm256_set1_ps(max);
    double sum = 0.0;
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx));
        _mm256_storeu_ps(x + i, e);
        sum += static_cast<double>(hsum_ps(e));
    }
    if (i < n) {
        const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, tail), mx)), _mm256_castsi256_ps(tail));
        _mm256_maskstore_ps(x + i, tail, e);
        sum += static_cast<double>(hsum_ps(e));
    }
    sum += static_cast<double>(__builtin_expf(sink - max));
    const __m256 vinv = _mm256_set1_ps(static_cast<float>(1.0 / sum));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    if (i < n) _mm256_maskstore_ps(x + i, tail, _mm256_mul_ps(_mm256_maskload_ps(x + i, tail), vinv));
}

void swiglu_avx2(const float* gate, const float* up, float* out, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(out + i, m, swiglu8(_mm256_maskload_ps(gate + i, m), _mm256_maskload_ps(up + i, m)));
    }
}

void axpy_avx2(float a, const float* x, float* y, std::int64_t n) {
    const __m256 va = _mm256_set1_ps(a);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i m = tail_mask(n - i);
        _mm256_maskstore_ps(y + i, m, _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
    }
}

void attention_head_avx2(const attention_args& args, int head, float* scratch) {
    const int dim = args.head_dim;
    const int v_dim = args.value_dim();
    const int kv_head = head / (args.n_head / args.n_head_kv);
    const std::int64_t k_stride = args.key_stride();
    const std::int64_t v_stride = args.value_stride();
    const int n_vec = dim / 8;  // full vectors; a tail of dim % 8 values is done in scalar
    const float* qsrc = args.q + static_cast<std::int64_t>(head) * dim;
    __m256 q[max_head_dim / 8];
    for (int v = 0; v < n_vec; ++v) q[v] = round_to_half(_mm256_loadu_ps(qsrc + 8 * v));
    float q_tail[8] = {};
    for (int d = 8 * n_vec; d < dim; ++d) q_tail[d - 8 * n_vec] = round_to_half(qsrc[d]);
    const std::uint16_t* k_base = args.k_cache + static_cast<std::int64_t>(kv_head) * dim;
    for (std::int64_t p = 0; p < args.n_kv; ++p) {
        const std::uint16_t* k = k_base + p * k_stride;
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int v = 0;
        for (; v + 2 <= n_vec; v += 2) {
            acc0 = _mm256_fmadd_ps(q[v], load_half8(k + 8 * v), acc0);
            acc1 = _mm256_fmadd_ps(q[v + 1], load_half8(k + 8 * v + 8), acc1);
        }
        if (v < n_vec) acc0 = _mm256_fmadd_ps(q[v], load_half8(k + 8 * v), acc0);
        float s = hsum_ps(_mm256_add_ps(acc0, acc1));
        for (int d = 8 * n_vec; d < dim; ++d) s += q_tail[d - 8 * n_vec] * half_to_float(k[d]);
        scratch[p] = s * args.scale;
    }
    // Positions before the window are masked (their exp is 0, as ggml's -inf mask gives).
    for (std::int64_t p = 0; p < args.kv_start; ++p) scratch[p] = -__builtin_inff();
    softmax_avx2(scratch, args.n_kv, args.sinks != nullptr ? args.sinks[head] : -__builtin_inff());
    const int n_vec_v = v_dim / 8;
    __m256 out[max_head_dim / 8];
    for (int v = 0; v < n_vec_v; ++v) out[v] = _mm256_setzero_ps();
    float out_tail[8] = {};
    const std::uint16_t* v_base = args.v_cache + static_cast<std::int64_t>(kv_head) * v_dim;
    for (std::int64_t p = 0; p < args.n_kv; ++p) {
        const float prob = round_to_half(scratch[p]);
        const __m256 vp = _mm256_set1_ps(prob);
        const std::uint16_t* vrow = v_base + p * v_stride;
        for (int v = 0; v < n_vec_v; ++v) out[v] = _mm256_fmadd_ps(vp, load_half8(vrow + 8 * v), out[v]);
        for (int d = 8 * n_vec_v; d < v_dim; ++d) out_tail[d - 8 * n_vec_v] += prob * half_to_float(vrow[d]);
    }
    float* dst = args.out + static_cast<std::int64_t>(head) * v_dim;
    for (int v = 0; v < n_vec_v; ++v) _mm256_storeu_ps(dst + 8 * v, out[v]);
    for (int d = 8 * n_vec_v; d < v_dim; ++d) dst[d] = out_tail[d - 8 * n_vec_v];
}

}  // namespace moed::kernels::detail
