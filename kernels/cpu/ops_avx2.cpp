// AVX2 (+FMA, F16C) versions of the layer ops. Numerics: llama.cpp's AVX2 build's, bit for
// bit (its vector expf, the order of its sums, where its compiler fuses a multiply and an
// add), so that greedy output on an AVX2 machine is llama.cpp's there; each function says
// what it follows, and tests/kernels/llama_sum_order_test.cpp holds scalar models.
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

inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

// e^x exactly as llama.cpp's AVX2 build computes it (ggml_v_expf, after Arm's optimized
// routines): x = n ln2 + b with n = round(x / ln2) found by adding 1.5 * 2^23 (the sum's
// low mantissa bits are n), ln2 split in two parts so that b is exact, e^b - 1 as a degree-5
// polynomial in b evaluated with FMAs, and 2^n built from n's bits in the exponent field.
// |n| > 126 (results near or beyond the float range) takes a slower path that splits 2^n
// into two factors; |n| > 192 gives 0 or inf. The constants and the order of every rounding
// must stay as they are: softmax and SwiGLU results are compared with llama.cpp bit for bit.
inline __m256 exp_ps(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    const __m256 n = _mm256_sub_ps(z, shift);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1.0f))));
    const __m256 abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 big = _mm256_cmp_ps(abs_n, _mm256_set1_ps(126.0f), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 odd = _mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f));
    const __m256 even = _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f));
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(odd, u, even), u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    const __m256 normal = _mm256_fmadd_ps(j, k, k);
    if (_mm256_movemask_ps(big) == 0) return normal;
    // 2^n = s1 * s2 with s1 = 2^(+-127) (by sign of n) and s2 the rest; beyond |n| = 192
    // s1 * s1 (0 or inf) is the answer.
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32(static_cast<int>(0x82000000u)));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 huge = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 scaled = _mm256_blendv_ps(normal, _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1), big);
    return _mm256_blendv_ps(scaled, _mm256_mul_ps(s1, s1), huge);
}

inline __m256 round_to_half(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline __m256 load_half8(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline float half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }

// Lanes 0..left-1 set (left < 8).
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

// llama.cpp's vec_dot reduction of four 8-lane accumulators: (a0 + a2) + (a1 + a3) lane by
// lane, the two halves added, then two horizontal adds.
inline float reduce_vec_dot(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 v = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    return _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
}

// The softmax of a row as llama.cpp's soft_max over a row padded with -inf to a multiple of
// 8 (the attention rows: its KV length is padded to 256): the last partial vector's unused
// lanes hold -inf for the maximum and 0 in the sum; a sink joins the maximum, and its exp
// (libm's) the sum after the row's.
void softmax_padded(float* x, std::int64_t n, float sink) {
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

// q.k for one key (f16) as llama.cpp sums it: batched (a prompt; tinyBLAS) one accumulator
// over 8 values at a time and its horizontal sum; alone (decode; vec_dot_f16) four
// accumulators over 32 values at a time, reduced as reduce_vec_dot, the values past the
// last 32 added one by one in double. tinyBLAS takes only lengths that are multiples of 8,
// so other lengths are summed as vec_dot does in both cases.
float dot_q_k(const __m256* q, const float* q_rest, const std::uint16_t* k, int dim, sum_order order) {
    if (order != sum_order::alone && dim % 8 == 0) {
        __m256 acc = _mm256_setzero_ps();
        for (int v = 0; v < dim / 8; ++v) acc = _mm256_fmadd_ps(load_half8(k + 8 * v), q[v], acc);
        return hsum_ps(acc);
    }
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    const int whole = dim / 32 * 32;
    for (int d = 0; d < whole; d += 32) {
        for (int j = 0; j < 4; ++j) acc[j] = _mm256_fmadd_ps(load_half8(k + d + 8 * j), q[d / 8 + j], acc[j]);
    }
    double sum = static_cast<double>(reduce_vec_dot(acc[0], acc[1], acc[2], acc[3]));
    for (int d = whole; d < dim; ++d) sum += static_cast<double>(half_to_float(k[d]) * q_rest[d]);
    return static_cast<float>(sum);
}

}  // namespace

void rms_norm_avx2(const float* x, const float* weight, float* y, std::int64_t n, float eps) {
    // As llama.cpp: the squares in float, summed in double one after the other (a double
    // sum in another order may round differently).
    double sum = 0.0;
    for (std::int64_t k = 0; k < n; ++k) sum += static_cast<double>(x[k] * x[k]);
    const float mean = static_cast<float>(sum / static_cast<double>(n));
    const float scale = 1.0f / __builtin_sqrtf(mean + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), vs);
        if (weight != nullptr) v = _mm256_mul_ps(v, _mm256_loadu_ps(weight + i));
        _mm256_storeu_ps(y + i, v);
    }
    for (; i < n; ++i) y[i] = weight != nullptr ? x[i] * scale * weight[i] : x[i] * scale;
}

// llama.cpp's RoPE rotation is plain C that its build compiles with FMA contraction:
// x0 cos - x1 sin becomes fma(x0, cos, -(x1 sin)) and x0 sin + x1 cos becomes
// fma(x0, sin, x1 cos) (read from the AVX2 build's machine code), so the same is done here.
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
            _mm256_storeu_ps(v + i, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
            _mm256_storeu_ps(v + i + half, _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c)));
        }
        for (; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = __builtin_fmaf(x0, cos_theta[i], -(x1 * sin_theta[i]));
            v[i + half] = __builtin_fmaf(x0, sin_theta[i], x1 * cos_theta[i]);
        }
    }
}

// As llama.cpp's soft_max of one row of n values: 8 at a time with the vector exp, each
// vector's horizontal sum added to a double; the last n % 8 values with libm's expf, added
// one by one; a sink joins the maximum, and its exp the sum last.
void softmax_avx2(float* x, std::int64_t n, float sink) {
    float max = -__builtin_inff();
    for (std::int64_t i = 0; i < n; ++i) max = x[i] > max ? x[i] : max;
    max = sink > max ? sink : max;
    const __m256 mx = _mm256_set1_ps(max);
    double sum = 0.0;
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mx));
        _mm256_storeu_ps(x + i, e);
        sum += static_cast<double>(hsum_ps(e));
    }
    for (std::int64_t k = i; k < n; ++k) {
        x[k] = __builtin_expf(x[k] - max);
        sum += static_cast<double>(x[k]);
    }
    sum += static_cast<double>(__builtin_expf(sink - max));
    const float inv = static_cast<float>(1.0 / sum);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
    for (; i < n; ++i) x[i] *= inv;
}

// As llama.cpp's swiglu of one row: 8 at a time with the vector exp, the last n % 8 values
// with libm's expf.
void swiglu_avx2(const float* gate, const float* up, float* out, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, swiglu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    for (; i < n; ++i) out[i] = gate[i] / (1.0f + __builtin_expf(-gate[i])) * up[i];
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

// Attention as llama.cpp without flash attention: KQ and KQV are matrix products with f16
// operands (q and the probabilities rounded to f16), summed in the order args.order names
// (dot_q_k; for KQV the dot product runs over positions, so a position's lane is its index
// mod 8 (batched) or its place in a group of 32 (alone)), and the softmax scales and masks
// a row that llama.cpp pads with -inf (positions before kv_start masked, a sink joining it).
void attention_head_avx2(const attention_args& args, int head, float* scratch) {
    const int dim = args.head_dim;
    const int v_dim = args.value_dim();
    const int kv_head = head / (args.n_head / args.n_head_kv);
    const std::int64_t k_stride = args.key_stride();
    const std::int64_t v_stride = args.value_stride();
    const int n_vec = dim / 8;  // full vectors; a tail of dim % 8 values is done in scalar
    const float* qsrc = args.q + static_cast<std::int64_t>(head) * dim;
    __m256 q[max_head_dim / 8];
    float q_rest[max_head_dim];
    for (int v = 0; v < n_vec; ++v) q[v] = round_to_half(_mm256_loadu_ps(qsrc + 8 * v));
    for (int d = 0; d < dim; ++d) q_rest[d] = round_to_half(qsrc[d]);
    const std::uint16_t* k_base = args.k_cache + static_cast<std::int64_t>(kv_head) * dim;
    for (std::int64_t p = 0; p < args.n_kv; ++p) {
        scratch[p] = dot_q_k(q, q_rest, k_base + p * k_stride, dim, args.order) * args.scale;
    }
    // Positions before the window are masked (their exp is 0, as ggml's -inf mask gives).
    for (std::int64_t p = 0; p < args.kv_start; ++p) scratch[p] = -__builtin_inff();
    softmax_padded(scratch, args.n_kv, args.sinks != nullptr ? args.sinks[head] : -__builtin_inff());
    // One set of accumulators per lane: 8 (batched) or 32 (alone), each over the head's
    // values, filled position by position with FMAs as the lane's running sum.
    const bool batched = args.order != sum_order::alone;
    const int n_vec_v = v_dim / 8;
    const int lanes = batched ? 8 : 32;
    alignas(32) float acc[32][max_head_dim];
    for (int l = 0; l < lanes; ++l) {
        for (int d = 0; d < v_dim; ++d) acc[l][d] = 0.0f;
    }
    const std::uint16_t* v_base = args.v_cache + static_cast<std::int64_t>(kv_head) * v_dim;
    for (std::int64_t p = 0; p < args.n_kv; ++p) {
        const float prob = round_to_half(scratch[p]);
        const __m256 vp = _mm256_set1_ps(prob);
        const std::uint16_t* vrow = v_base + p * v_stride;
        float* a = acc[p % lanes];
        for (int v = 0; v < n_vec_v; ++v) {
            _mm256_store_ps(a + 8 * v, _mm256_fmadd_ps(load_half8(vrow + 8 * v), vp, _mm256_load_ps(a + 8 * v)));
        }
        for (int d = 8 * n_vec_v; d < v_dim; ++d) a[d] = __builtin_fmaf(half_to_float(vrow[d]), prob, a[d]);
    }
    float* dst = args.out + static_cast<std::int64_t>(head) * v_dim;
    for (int d = 0; d < v_dim; ++d) {
        // Lane l's sum sits at acc[l][d] (batched) or acc[8 * j + l][d] (alone, accumulator j).
        alignas(32) float lane[32];
        for (int l = 0; l < lanes; ++l) lane[l] = acc[l][d];
        if (batched) {
            dst[d] = hsum_ps(_mm256_load_ps(lane));
        } else {
            dst[d] = reduce_vec_dot(_mm256_load_ps(lane), _mm256_load_ps(lane + 8), _mm256_load_ps(lane + 16),
                                    _mm256_load_ps(lane + 24));
        }
    }
}

}  // namespace moed::kernels::detail
