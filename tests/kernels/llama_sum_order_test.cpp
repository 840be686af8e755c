// The AVX2 kernels against plain scalar models of llama.cpp's AVX2 sums, bit for bit. The
// AVX2 level promises llama.cpp's AVX2 results to the last bit (its golden files pass only
// so), so here each kernel is compared with a scalar transcription of the order in which
// llama.cpp rounds: lane by lane accumulators written as arrays and std::fma, the same
// horizontal-sum trees, the same int-to-float points. Random data of awkward sizes:
// - the vector expf through softmax (rows of 1..40, 100 and 256 values, spreads reaching the
//   |n| > 126 and > 192 paths and -inf entries) and SwiGLU (rows with tails);
// - F32 and F16 matrix products in both sum orders (vec_dot for a token alone, tinyBLAS in
//   a prompt), lengths that are and are not multiples of 8 and 32;
// - Q4_K in its three ways: repacked gemv (rows a multiple of 8, alone and a prompt's last
//   n % 4), repacked gemm (a prompt's whole groups of four), vec_dot (other row counts),
//   with orders mixed within token tiles, as a prompt has them, and one decode token;
// - attention (KQ, softmax, KQV) for a token alone and in a prompt, head sizes 64 and 40,
//   plain and with a sliding window and attention sinks;
// - NORM RoPE with YaRN (deepseek2), whose C llama.cpp's build contracts into FMAs.
// The scalar references of every op (double sums) are checked elsewhere; these models
// document what llama.cpp does and fail on any change of rounding order.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::isa_scope;

bool has_avx2() { return static_cast<int>(detect_isa()) >= static_cast<int>(isa::avx2); }

std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
float from_bits(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// Bitwise equality of two arrays; the first difference as a message.
::testing::AssertionResult same_bits(const float* got, const float* want, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        if (bits_of(got[i]) != bits_of(want[i])) {
            return ::testing::AssertionFailure() << "index " << i << ": " << got[i] << " vs model " << want[i];
        }
    }
    return ::testing::AssertionSuccess();
}

// ggml_v_expf for one lane.
float model_expf(float x) {
    const float shift = 0x1.8p23f;
    const float z = std::fma(x, 0x1.715476p+0f, shift);
    const float n = z - shift;
    const float b = std::fma(-n, 0x1.7f7d1cp-20f, std::fma(-n, 0x1.62e4p-1f, x));
    const std::uint32_t e = bits_of(z) << 23;
    const float k = from_bits(e + bits_of(1.0f));
    const float u = b * b;
    const float j = std::fma(std::fma(std::fma(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, std::fma(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                             0x1.ffffecp-1f * b);
    if (!(std::fabs(n) > 126.0f)) return std::fma(j, k, k);
    const std::uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = from_bits(g + 0x7f000000u);
    const float s2 = from_bits(e - g);
    if (std::fabs(n) > 192.0f) return s1 * s1;
    return std::fma(s2, j, s2) * s1;
}

// The horizontal sum of 8 lanes as _mm256 -> two halves added -> movehl -> movehdup.
float model_hsum8(const float* v) {
    const float s0 = v[0] + v[4], s1 = v[1] + v[5], s2 = v[2] + v[6], s3 = v[3] + v[7];
    return (s0 + s2) + (s1 + s3);
}

// vec_dot's reduction of four 8-lane accumulators (lanes a[0..31], accumulator j = a[8j..]).
float model_reduce_vec_dot(const float* a) {
    float v[8];
    for (int l = 0; l < 8; ++l) v[l] = (a[l] + a[16 + l]) + (a[8 + l] + a[24 + l]);
    const float t0 = v[0] + v[4], t1 = v[1] + v[5], t2 = v[2] + v[6], t3 = v[3] + v[7];
    return (t0 + t1) + (t2 + t3);
}

void model_softmax(float* x, std::int64_t n) {
    float max = -INFINITY;
    for (std::int64_t i = 0; i < n; ++i) max = x[i] > max ? x[i] : max;
    double sum = 0.0;
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int l = 0; l < 8; ++l) x[i + l] = model_expf(x[i + l] - max);
        sum += static_cast<double>(model_hsum8(x + i));
    }
    for (; i < n; ++i) {
        x[i] = std::exp(x[i] - max);
        sum += static_cast<double>(x[i]);
    }
    const auto inv = static_cast<float>(1.0 / sum);
    for (i = 0; i < n; ++i) x[i] *= inv;
}

// llama.cpp's NORM RoPE (ggml_rope_cache_init, rope_yarn, rotate_pairs) as its x86 builds
// compile it, with FMA contraction: the YaRN angle fma(interp, 1 - ramp, theta * ramp), the
// magnitude attn_factor * fma(0.1, ln(1 / freq_scale), 1), and the rotation
// fma(x0, cos, -(x1 sin)), fma(x0, sin, x1 cos).
void model_rope_norm(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float base, const rope_scaling& sc) {
    const float theta_scale = std::pow(base, -2.0f / static_cast<float>(n_rot));
    float theta = static_cast<float>(pos);
    for (int i = 0; i < n_rot / 2; ++i) {
        const float interp = sc.freq_scale * theta;
        const float y = (static_cast<float>(i) - sc.corr_low) / std::max(0.001f, sc.corr_high - sc.corr_low);
        const float ramp = (1.0f - std::min(1.0f, std::max(0.0f, y))) * sc.ext_factor;
        const float angle = std::fma(interp, 1.0f - ramp, theta * ramp);
        const float mscale = sc.attn_factor * std::fma(0.1f, std::log(1.0f / sc.freq_scale), 1.0f);
        const float c = std::cos(angle) * mscale, s = std::sin(angle) * mscale;
        for (int h = 0; h < n_heads; ++h) {
            float* v = x + static_cast<std::int64_t>(h) * head_dim;
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = std::fma(x0, c, -(x1 * s));
            v[2 * i + 1] = std::fma(x0, s, x1 * c);
        }
        theta *= theta_scale;
    }
}

TEST(llama_sum_order, rope_norm_with_yarn_rounds_as_llamas_contracted_c) {
    if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
    isa_scope scope(isa::avx2);
    std::mt19937 rng(23);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // DeepSeek-V2-Lite's rotary part: 64 dims, base 10000, YaRN factor 40 from 4096.
    const int n_heads = 4, head_dim = 96, n_rot = 64;
    const rope_scaling sc = make_yarn(n_rot, 10000.0f, 40.0f, 4096, 32.0f, 1.0f, 1.0f, 0.707f, 0.707f);
    for (std::int64_t pos : {0, 1, 7, 126, 190, 511, 4097}) {
        std::vector<float> x(static_cast<std::size_t>(n_heads * head_dim));
        for (float& v : x) v = normal(rng);
        std::vector<float> got = x, want = x;
        rope_norm(got.data(), n_heads, head_dim, n_rot, pos, 10000.0f, &sc);
        model_rope_norm(want.data(), n_heads, head_dim, n_rot, pos, 10000.0f, sc);
        EXPECT_TRUE(same_bits(got.data(), want.data(), got.size())) << "pos " << pos;
    }
}

TEST(llama_sum_order, softmax_and_swiglu_use_llamas_expf) {
    if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
    isa_scope scope(isa::avx2);
    std::mt19937 rng(61);
    std::vector<std::int64_t> lengths;
    for (std::int64_t n = 1; n <= 40; ++n) lengths.push_back(n);
    lengths.push_back(100);
    lengths.push_back(256);
    for (std::int64_t n : lengths) {
        for (float spread : {1.0f, 30.0f, 120.0f}) {
            std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), spread);
            if (n > 5) x[3] = -INFINITY;
            std::vector<float> want = x, got = x;
            model_softmax(want.data(), n);
            softmax(got.data(), n);
            ASSERT_TRUE(same_bits(got.data(), want.data(), static_cast<std::size_t>(n))) << "softmax n=" << n << " spread " << spread;

            const std::vector<float> gate = test::random_floats(rng, static_cast<std::size_t>(n), spread);
            const std::vector<float> up = test::random_floats(rng, static_cast<std::size_t>(n));
            std::vector<float> out(static_cast<std::size_t>(n)), model(static_cast<std::size_t>(n));
            swiglu(gate.data(), up.data(), out.data(), n);
            for (std::int64_t i = 0; i < n; ++i) {
                const float g = gate[i];
                const float e = i < n / 8 * 8 ? model_expf(0.0f - g) : std::exp(-g);
                model[i] = g / (1.0f + e) * up[i];
            }
            ASSERT_TRUE(same_bits(out.data(), model.data(), out.size())) << "swiglu n=" << n << " spread " << spread;
        }
    }
}

// One F32 or F16 dot product in llama.cpp's order for `order`. x holds the activation as
// the kernel sees it (rounded to f16 for F16 weights).
float model_float_dot(const float* w, const float* x, std::int64_t n, sum_order order) {
    if (order != sum_order::alone && n % 8 == 0) {
        float lane[8] = {};
        for (std::int64_t c = 0; c < n; ++c) lane[c % 8] = std::fma(w[c], x[c], lane[c % 8]);
        return model_hsum8(lane);
    }
    float lane[32] = {};
    const std::int64_t whole = n / 32 * 32;
    for (std::int64_t c = 0; c < whole; ++c) lane[c % 32] = std::fma(w[c], x[c], lane[c % 32]);
    double sum = static_cast<double>(model_reduce_vec_dot(lane));
    for (std::int64_t c = whole; c < n; ++c) sum += static_cast<double>(w[c] * x[c]);
    return static_cast<float>(sum);
}

TEST(llama_sum_order, float_products_sum_as_vec_dot_alone_and_tinyblas_in_a_prompt) {
    if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
    isa_scope scope(isa::avx2);
    std::mt19937 rng(62);
    compute_pool pool(2);
    activation_buffer act;
    const sum_order orders[] = {sum_order::alone, sum_order::batched, sum_order::batched_in_four};
    for (tensor_type type : {tensor_type::f32, tensor_type::f16}) {
        for (std::int64_t cols : {256, 264, 100, 7, 32, 2048 + 40}) {
            const std::int64_t rows = 13;
            const std::int64_t n = 6;
            const std::vector<float> wf = test::random_floats(rng, static_cast<std::size_t>(rows * cols));
            const std::vector<float> xf = test::random_floats(rng, static_cast<std::size_t>(n * cols));
            const std::size_t stride = row_bytes(type, cols);
            std::vector<std::byte> w(stride * static_cast<std::size_t>(rows));
            std::vector<float> w_seen(wf.size()), x_seen(xf.size());
            for (std::int64_t r = 0; r < rows; ++r) {
                quantize_row(type, wf.data() + r * cols, w.data() + static_cast<std::size_t>(r) * stride, cols);
                dequantize_row(type, w.data() + static_cast<std::size_t>(r) * stride, w_seen.data() + r * cols, cols);
            }
            for (std::size_t i = 0; i < xf.size(); ++i) x_seen[i] = type == tensor_type::f16 ? fp16_to_fp32(fp32_to_fp16(xf[i])) : xf[i];
            std::vector<sum_order> token_orders(static_cast<std::size_t>(n));
            for (std::int64_t t = 0; t < n; ++t) token_orders[static_cast<std::size_t>(t)] = orders[t % 3];
            std::vector<float> y(static_cast<std::size_t>(n * rows));
            matmul(matrix_view{type, w.data(), rows, cols, stride}, xf.data(), n, y.data(), rows, pool, act, token_orders.data());
            for (std::int64_t t = 0; t < n; ++t) {
                for (std::int64_t r = 0; r < rows; ++r) {
                    const float want = model_float_dot(w_seen.data() + r * cols, x_seen.data() + t * cols, cols, orders[t % 3]);
                    ASSERT_EQ(bits_of(y[static_cast<std::size_t>(t * rows + r)]), bits_of(want))
                        << type_name(type) << " cols " << cols << " token " << t << " row " << r << ": "
                        << y[static_cast<std::size_t>(t * rows + r)] << " vs model " << want;
                }
            }
        }
    }
}

// Q4_K: the integer sums of one block of a weight row with one Q8_K block.
struct q4_k_block_ints {
    int sub[8];   // scale_j * (q_j . x_j) per 32-value sub-block
    int mins[8];  // min_j * (the sub-block's activation sum)
    int lane[8];  // vec_dot's lanes: lane i = sum_j scale_j * (values 4i..4i+3 of sub-block j) . x
};

q4_k_block_ints q4_k_ints(const block_q4_k& w, const block_q8_k& x) {
    q4_k_block_ints out{};
    for (int j = 0; j < 8; ++j) {
        std::uint8_t sc, m;
        detail::q4_k_scale_min(j, w.scales, &sc, &m);
        int dot = 0;
        for (int v = 0; v < 32; ++v) {
            const int q = j % 2 == 0 ? (w.qs[32 * (j / 2) + v] & 0xF) : (w.qs[32 * (j / 2) + v] >> 4);
            const int prod = q * x.qs[32 * j + v];
            dot += prod;
            out.lane[v / 4] += sc * prod;
        }
        out.sub[j] = sc * dot;
        out.mins[j] = m * (x.bsums[2 * j] + x.bsums[2 * j + 1]);
    }
    return out;
}

float model_q4_k_dot(const block_q4_k* w, const block_q8_k* x, std::int64_t nb, bool repacked, sum_order order) {
    if (repacked) {
        // One running float per row and token, fed per 256 values (gemv) or per 64 (gemm).
        const int step = order == sum_order::batched_in_four ? 2 : 8;
        float acc = 0.0f, acc_min = 0.0f;
        for (std::int64_t b = 0; b < nb; ++b) {
            const q4_k_block_ints s = q4_k_ints(w[b], x[b]);
            const float d = fp16_to_fp32(w[b].d) * x[b].d;
            const float dmin = fp16_to_fp32(w[b].dmin) * x[b].d;
            for (int j = 0; j < 8; j += step) {
                int isum = 0, msum = 0;
                for (int k = j; k < j + step; ++k) {
                    isum += s.sub[k];
                    msum += s.mins[k];
                }
                acc = std::fma(static_cast<float>(isum), d, acc);
                acc_min = std::fma(static_cast<float>(msum), dmin, acc_min);
            }
        }
        return acc - acc_min;
    }
    float acc[8] = {}, acc_m[4] = {};
    for (std::int64_t b = 0; b < nb; ++b) {
        const q4_k_block_ints s = q4_k_ints(w[b], x[b]);
        const float d = x[b].d * fp16_to_fp32(w[b].d);
        const float dmin = -x[b].d * fp16_to_fp32(w[b].dmin);
        for (int l = 0; l < 8; ++l) acc[l] = std::fma(d, static_cast<float>(s.lane[l]), acc[l]);
        for (int k = 0; k < 4; ++k) acc_m[k] = std::fma(dmin, static_cast<float>(s.mins[2 * k] + s.mins[2 * k + 1]), acc_m[k]);
    }
    return model_hsum8(acc) + ((acc_m[0] + acc_m[2]) + (acc_m[1] + acc_m[3]));
}

TEST(llama_sum_order, q4_k_sums_as_repacked_gemv_gemm_or_vec_dot) {
    if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
    isa_scope scope(isa::avx2);
    std::mt19937 rng(63);
    compute_pool pool(2);
    activation_buffer act;
    const sum_order orders[] = {sum_order::alone, sum_order::batched, sum_order::batched_in_four};
    // 16 and 40 rows: repacked in llama.cpp; 13: not.
    for (std::int64_t rows : {16, 40, 13}) {
        for (std::int64_t cols : {256, 3 * 256}) {
            const std::int64_t n = 7;
            const std::vector<float> wf = test::random_floats(rng, static_cast<std::size_t>(rows * cols), 0.5f);
            const std::vector<float> xf = test::random_floats(rng, static_cast<std::size_t>(n * cols), 2.0f);
            const std::size_t stride = row_bytes(tensor_type::q4_k, cols);
            std::vector<std::byte> w(stride * static_cast<std::size_t>(rows));
            for (std::int64_t r = 0; r < rows; ++r) {
                quantize_row(tensor_type::q4_k, wf.data() + r * cols, w.data() + static_cast<std::size_t>(r) * stride, cols);
            }
            const std::int64_t nb = cols / qk_k;
            std::vector<block_q8_k> xq(static_cast<std::size_t>(n * nb));
            for (std::int64_t t = 0; t < n; ++t) quantize_activation_row(tensor_type::q4_k, xf.data() + t * cols, xq.data() + t * nb, cols);
            // Orders mixed within token tiles, and as a prompt of 7 has them (a whole group
            // of four, then three), and a decode token alone.
            for (int pattern = 0; pattern < 3; ++pattern) {
                const std::int64_t m = pattern == 2 ? 1 : n;
                std::vector<sum_order> token_orders(static_cast<std::size_t>(m));
                for (std::int64_t t = 0; t < m; ++t) {
                    token_orders[static_cast<std::size_t>(t)] = pattern == 0 ? orders[t % 3] : prompt_token_order(t, m);
                }
                std::vector<float> y(static_cast<std::size_t>(m * rows));
                matmul(matrix_view{tensor_type::q4_k, w.data(), rows, cols, stride}, xf.data(), m, y.data(), rows, pool, act,
                       token_orders.data());
                for (std::int64_t t = 0; t < m; ++t) {
                    for (std::int64_t r = 0; r < rows; ++r) {
                        const auto* wr = reinterpret_cast<const block_q4_k*>(w.data() + static_cast<std::size_t>(r) * stride);
                        const float want = model_q4_k_dot(wr, xq.data() + t * nb, nb, rows % 8 == 0, token_orders[static_cast<std::size_t>(t)]);
                        ASSERT_EQ(bits_of(y[static_cast<std::size_t>(t * rows + r)]), bits_of(want))
                            << "rows " << rows << " cols " << cols << " pattern " << pattern << " token " << t << " row " << r
                            << ": " << y[static_cast<std::size_t>(t * rows + r)] << " vs model " << want;
                    }
                }
            }
        }
    }
}

// Attention of one query head: KQ (q and K as halves) summed as a float dot product of the
// head's values, the scores scaled and soft-maxed as llama.cpp's row padded with -inf, the
// probabilities rounded to halves, KQV summed over positions (lane = position mod 8 in a
// prompt, mod 32 alone).
void model_attention_head(const attention_args& a, int head, float* out) {
    const int dim = a.head_dim;
    const int kv_head = head / (a.n_head / a.n_head_kv);
    const std::int64_t stride = static_cast<std::int64_t>(a.n_head_kv) * dim;
    std::vector<float> q(static_cast<std::size_t>(dim)), k(static_cast<std::size_t>(dim));
    for (int d = 0; d < dim; ++d) q[static_cast<std::size_t>(d)] = fp16_to_fp32(fp32_to_fp16(a.q[head * dim + d]));
    const std::int64_t padded = (a.n_kv + 7) / 8 * 8;
    std::vector<float> p(static_cast<std::size_t>(padded), -INFINITY);
    for (std::int64_t pos = a.kv_start; pos < a.n_kv; ++pos) {
        for (int d = 0; d < dim; ++d) k[static_cast<std::size_t>(d)] = fp16_to_fp32(a.k_cache[pos * stride + kv_head * dim + d]);
        p[static_cast<std::size_t>(pos)] = model_float_dot(k.data(), q.data(), dim, a.order) * a.scale;
    }
    // The padded row's softmax: every block of 8 through the vector expf; a sink joins the
    // maximum, and its exp (libm's) the sum last.
    const float sink = a.sinks != nullptr ? a.sinks[head] : -INFINITY;
    float max = sink;
    for (float v : p) max = v > max ? v : max;
    double sum = 0.0;
    for (std::int64_t i = 0; i < padded; i += 8) {
        for (int l = 0; l < 8; ++l) p[static_cast<std::size_t>(i + l)] = model_expf(p[static_cast<std::size_t>(i + l)] - max);
        sum += static_cast<double>(model_hsum8(&p[static_cast<std::size_t>(i)]));
    }
    sum += static_cast<double>(std::exp(sink - max));
    const auto inv = static_cast<float>(1.0 / sum);
    for (float& v : p) v = fp16_to_fp32(fp32_to_fp16(v * inv));
    const bool batched = a.order != sum_order::alone;
    for (int d = 0; d < dim; ++d) {
        float lane[32] = {};
        for (std::int64_t pos = 0; pos < a.n_kv; ++pos) {
            const float v = fp16_to_fp32(a.v_cache[pos * stride + kv_head * dim + d]);
            float& acc = lane[pos % (batched ? 8 : 32)];
            acc = std::fma(v, p[static_cast<std::size_t>(pos)], acc);
        }
        out[d] = batched ? model_hsum8(lane) : model_reduce_vec_dot(lane);
    }
}

TEST(llama_sum_order, attention_sums_as_llama_alone_and_in_a_prompt) {
    if (!has_avx2()) GTEST_SKIP() << "no AVX2 on this CPU";
    isa_scope scope(isa::avx2);
    std::mt19937 rng(64);
    for (int head_dim : {64, 40}) {
        const int n_head = 4, n_head_kv = 2;
        const std::int64_t n_ctx = 80;
        const std::vector<float> kf = test::random_floats(rng, static_cast<std::size_t>(n_ctx * n_head_kv * head_dim));
        const std::vector<float> vf = test::random_floats(rng, static_cast<std::size_t>(n_ctx * n_head_kv * head_dim));
        std::vector<std::uint16_t> k(kf.size()), v(vf.size());
        for (std::size_t i = 0; i < kf.size(); ++i) {
            k[i] = fp32_to_fp16(kf[i]);
            v[i] = fp32_to_fp16(vf[i]);
        }
        const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(n_head * head_dim), 3.0f);
        const std::vector<float> sinks = test::random_floats(rng, static_cast<std::size_t>(n_head), 2.0f);
        for (std::int64_t n_kv : {1, 7, 8, 33, 80}) {
            // Plain; a sliding window with attention sinks (gpt-oss).
            for (int variant = 0; variant < 2; ++variant) {
                for (sum_order order : {sum_order::alone, sum_order::batched, sum_order::batched_in_four}) {
                    attention_args a;
                    a.q = q.data();
                    a.k_cache = k.data();
                    a.v_cache = v.data();
                    a.n_kv = n_kv;
                    a.n_head = n_head;
                    a.n_head_kv = n_head_kv;
                    a.head_dim = head_dim;
                    a.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
                    a.order = order;
                    if (variant == 1) {
                        a.kv_start = n_kv / 3;
                        a.sinks = sinks.data();
                    }
                    std::vector<float> got(q.size()), want(q.size()), scratch(static_cast<std::size_t>(n_kv * n_head));
                    a.out = got.data();
                    for (int g = 0; g < n_head_kv; ++g) attention_group(a, g, scratch.data());
                    for (int h = 0; h < n_head; ++h) model_attention_head(a, h, want.data() + h * head_dim);
                    ASSERT_TRUE(same_bits(got.data(), want.data(), got.size()))
                        << "head_dim " << head_dim << " n_kv " << n_kv << " order " << static_cast<int>(order) << " variant " << variant;
                }
            }
        }
    }
}

}  // namespace
}  // namespace moed::kernels
