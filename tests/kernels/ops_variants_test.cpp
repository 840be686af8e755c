// The op variants the architectures need beyond qwen3moe's: NORM-layout RoPE, YaRN scaling
// (with DeepSeek's mscale), attention with a sliding window and sink logits (gpt-oss),
// attention over latent rows whose values are the first part of each key row (DeepSeek's
// MLA), a softmax with a sink, and the clamped SwiGLU. Each is checked against a formula
// written out in double here, and every ISA level against the scalar reference.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::available_isas;
using test::isa_scope;

TEST(ops_variants, rope_norm_rotates_adjacent_pairs) {
    std::mt19937 rng(5);
    const int n_heads = 2, head_dim = 64;
    for (int n_rot : {64, 32}) {
        for (std::int64_t pos : {0, 3, 500}) {
            const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_heads * head_dim));
            std::vector<float> got = x;
            rope_norm(got.data(), n_heads, head_dim, n_rot, pos, 10000.0f);
            for (int h = 0; h < n_heads; ++h) {
                const float* v = x.data() + h * head_dim;
                const float* g = got.data() + h * head_dim;
                for (int i = 0; i < n_rot / 2; ++i) {
                    const double theta = static_cast<double>(pos) * std::pow(10000.0, -2.0 * i / n_rot);
                    ASSERT_NEAR(g[2 * i], v[2 * i] * std::cos(theta) - v[2 * i + 1] * std::sin(theta), 1e-3);
                    ASSERT_NEAR(g[2 * i + 1], v[2 * i] * std::sin(theta) + v[2 * i + 1] * std::cos(theta), 1e-3);
                }
                for (int i = n_rot; i < head_dim; ++i) ASSERT_EQ(g[i], v[i]) << "beyond n_rot must not change";
            }
        }
    }
}

// YaRN as the paper and ggml define it, in double: dims below corr_low extrapolate (plain
// theta), above corr_high interpolate (theta x freq_scale), linear in between; magnitudes
// scale by attn_factor x (1 + 0.1 ln(factor)).
TEST(ops_variants, yarn_matches_its_formula) {
    const int n_rot = 64;
    const float base = 150000.0f, factor = 32.0f;
    const rope_scaling sc = make_yarn(n_rot, base, factor, 4096, 32.0f, 1.0f, 1.0f);
    EXPECT_FLOAT_EQ(sc.freq_scale, 1.0f / factor);
    EXPECT_EQ(sc.ext_factor, 1.0f);
    // llama.cpp's attention factor cancels the magnitude correction: close to 1.
    EXPECT_NEAR(sc.attn_factor, 1.0f, 1e-6f);
    auto corr = [&](double rotations) {
        return n_rot * std::log(4096.0 / (rotations * 2 * std::numbers::pi)) / (2 * std::log(static_cast<double>(base)));
    };
    EXPECT_EQ(sc.corr_low, std::max(0.0, std::floor(corr(32.0))));
    EXPECT_EQ(sc.corr_high, std::min(n_rot - 1.0, std::ceil(corr(1.0))));
    ASSERT_LT(sc.corr_low, sc.corr_high);

    const std::int64_t pos = 777;
    std::vector<float> x(static_cast<std::size_t>(n_rot), 0.0f);
    for (int i = 0; i < n_rot / 2; ++i) x[static_cast<std::size_t>(i)] = 1.0f;  // (1, 0) pairs
    std::vector<float> want(x.size());
    const double mscale = sc.attn_factor * (1.0 + 0.1 * std::log(factor));
    for (int i = 0; i < n_rot / 2; ++i) {
        const double extrap = static_cast<double>(pos) * std::pow(static_cast<double>(base), -2.0 * i / n_rot);
        const double y = (i - sc.corr_low) / std::max(0.001, static_cast<double>(sc.corr_high - sc.corr_low));
        const double ramp = 1.0 - std::min(1.0, std::max(0.0, y));
        const double theta = extrap / factor * (1.0 - ramp) + extrap * ramp;
        want[static_cast<std::size_t>(i)] = static_cast<float>(std::cos(theta) * mscale);
        want[static_cast<std::size_t>(i + n_rot / 2)] = static_cast<float>(std::sin(theta) * mscale);
    }
    for (isa level : available_isas()) {
        isa_scope scope(level);
        std::vector<float> got = x;
        rope_neox(got.data(), 1, n_rot, n_rot, pos, base, &sc);
        for (int i = 0; i < n_rot; ++i) {
            // float theta accumulates ~1e-7 relative error per pair; at pos 777 that is ~1e-3 rad.
            ASSERT_NEAR(got[static_cast<std::size_t>(i)], want[static_cast<std::size_t>(i)], 5e-3)
                << test::isa_label(level) << " i " << i;
        }
    }
    // Without scaling the same call is plain RoPE.
    std::vector<float> plain = x, none = x;
    rope_neox(plain.data(), 1, n_rot, n_rot, pos, base);
    rope_neox(none.data(), 1, n_rot, n_rot, pos, base, nullptr);
    EXPECT_EQ(plain, none);
}

TEST(ops_variants, softmax_sink_joins_max_and_sum) {
    std::mt19937 rng(7);
    for (std::int64_t n : {1, 5, 8, 19, 64}) {
        const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), 3.0f);
        for (float sink : {-2.0f, 0.5f, 9.0f}) {
            double max = sink, sum = 0.0;
            for (float v : x) max = std::max(max, static_cast<double>(v));
            for (float v : x) sum += std::exp(v - max);
            sum += std::exp(sink - max);
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> got = x;
                softmax(got.data(), n, sink);
                double total = 0.0;
                for (std::int64_t i = 0; i < n; ++i) {
                    const double want = std::exp(x[static_cast<std::size_t>(i)] - max) / sum;
                    ASSERT_NEAR(got[static_cast<std::size_t>(i)], want, 1e-6 + 1e-5 * want) << test::isa_label(level);
                    total += got[static_cast<std::size_t>(i)];
                }
                // The sink takes its share: the values sum to less than one.
                EXPECT_NEAR(total, 1.0 - std::exp(sink - max) / sum, 1e-5);
            }
            // A sink of -inf is no sink at all, bit for bit.
            std::vector<float> a = x, b = x;
            softmax(a.data(), n);
            softmax(b.data(), n, -INFINITY);
            EXPECT_EQ(a, b);
        }
    }
}

struct tiny_cache {
    std::vector<std::uint16_t> k, v;
};

// Attention with a window and sinks: positions before kv_start get no weight, and each head's
// sink logit takes part of the softmax with no value. Checked against a double formula and
// between ISAs.
TEST(ops_variants, attention_window_and_sinks) {
    std::mt19937 rng(11);
    const int n_head = 4, n_head_kv = 2, dim = 64;
    const std::int64_t n_kv = 37;
    tiny_cache cache;
    const std::size_t cells = static_cast<std::size_t>(n_kv * n_head_kv * dim);
    for (auto* buf : {&cache.k, &cache.v}) {
        const std::vector<float> f = test::random_floats(rng, cells);
        buf->resize(cells);
        for (std::size_t i = 0; i < cells; ++i) (*buf)[i] = fp32_to_fp16(f[i]);
    }
    const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(n_head * dim), 2.0f);
    const std::vector<float> sinks = {0.3f, -1.0f, 4.0f, 1.5f};
    for (std::int64_t kv_start : {std::int64_t{0}, std::int64_t{21}}) {
        for (const float* sink_ptr : {static_cast<const float*>(nullptr), sinks.data()}) {
            attention_args args;
            args.q = q.data();
            args.k_cache = cache.k.data();
            args.v_cache = cache.v.data();
            args.n_kv = n_kv;
            args.n_head = n_head;
            args.n_head_kv = n_head_kv;
            args.head_dim = dim;
            args.scale = 0.125f;
            args.kv_start = kv_start;
            args.sinks = sink_ptr;
            std::vector<float> want(q.size());
            for (int h = 0; h < n_head; ++h) {
                const int kvh = h / (n_head / n_head_kv);
                std::vector<double> score(static_cast<std::size_t>(n_kv));
                double max = sink_ptr != nullptr ? sink_ptr[h] : -INFINITY;
                for (std::int64_t p = kv_start; p < n_kv; ++p) {
                    double s = 0.0;
                    for (int d = 0; d < dim; ++d) {
                        s += static_cast<double>(q[static_cast<std::size_t>(h * dim + d)]) *
                             fp16_to_fp32(cache.k[static_cast<std::size_t>((p * n_head_kv + kvh) * dim + d)]);
                    }
                    score[static_cast<std::size_t>(p)] = s * args.scale;
                    max = std::max(max, s * args.scale);
                }
                double sum = sink_ptr != nullptr ? std::exp(sink_ptr[h] - max) : 0.0;
                for (std::int64_t p = kv_start; p < n_kv; ++p) sum += std::exp(score[static_cast<std::size_t>(p)] - max);
                for (int d = 0; d < dim; ++d) {
                    double acc = 0.0;
                    for (std::int64_t p = kv_start; p < n_kv; ++p) {
                        acc += std::exp(score[static_cast<std::size_t>(p)] - max) / sum *
                               fp16_to_fp32(cache.v[static_cast<std::size_t>((p * n_head_kv + kvh) * dim + d)]);
                    }
                    want[static_cast<std::size_t>(h * dim + d)] = static_cast<float>(acc);
                }
            }
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> got(q.size());
                std::vector<float> scratch(static_cast<std::size_t>(n_kv * n_head));
                args.out = got.data();
                for (int kvh = 0; kvh < n_head_kv; ++kvh) attention_group(args, kvh, scratch.data());
                for (std::size_t i = 0; i < got.size(); ++i) {
                    // q and the probabilities are rounded to halves, as llama.cpp does.
                    ASSERT_NEAR(got[i], want[i], 4e-3 + 4e-3 * std::abs(want[i]))
                        << test::isa_label(level) << " kv_start " << kv_start << " sinks " << (sink_ptr != nullptr);
                }
            }
        }
    }
}

// DeepSeek's YaRN: with a log multiplier the magnitude is get_mscale(mscale) /
// get_mscale(mscale_all_dims), get_mscale(m) = 0.1 m ln(factor) + 1, still with llama.cpp's
// correction cancelled; without one it is get_mscale(1), as before.
TEST(ops_variants, yarn_mscale_ratio) {
    const float factor = 40.0f;
    const double correction = 1.0 / (1.0 + 0.1 * std::log(40.0));
    const rope_scaling plain = make_yarn(64, 10000.0f, factor, 4096, 32.0f, 1.0f, 1.0f);
    EXPECT_NEAR(plain.attn_factor, (0.1 * std::log(40.0) + 1.0) * correction, 1e-6);
    // DeepSeek-V2-Lite: mscale = mscale_all_dim = 0.707: the ratio is 1.
    const rope_scaling same = make_yarn(64, 10000.0f, factor, 4096, 32.0f, 1.0f, 1.0f, 0.707f, 0.707f);
    EXPECT_NEAR(same.attn_factor, correction, 1e-6);
    const rope_scaling ratio = make_yarn(64, 10000.0f, factor, 4096, 32.0f, 1.0f, 2.0f, 1.0f, 0.5f);
    EXPECT_NEAR(ratio.attn_factor, 2.0 * (0.1 * std::log(40.0) + 1.0) / (0.05 * std::log(40.0) + 1.0) * correction, 1e-5);
    // The interpolation does not depend on the magnitude.
    EXPECT_EQ(same.corr_low, plain.corr_low);
    EXPECT_EQ(same.corr_high, plain.corr_high);
    EXPECT_EQ(same.freq_scale, plain.freq_scale);
}

// MLA's absorbed attention: one KV "head" of rank + rope values per position whose values
// are the first `rank` of the key row (v_cache = k_cache, v_dim < head_dim, the strides of
// the key row), for every head count the kernels group differently (8 and 16: the eight-head
// kernel; 4 and 2: the small groups; 3: one head at a time), and DeepSeek's real width (512 +
// 64, beyond the 512 the other architectures need). Checked against a double formula and
// between ISAs.
TEST(ops_variants, attention_over_latent_rows) {
    std::mt19937 rng(13);
    struct shape {
        int rank, rope, n_head;
    };
    for (const shape sh : {shape{128, 32, 16}, shape{128, 32, 8}, shape{64, 32, 4}, shape{64, 16, 2}, shape{32, 16, 3},
                           shape{512, 64, 8}}) {
        const int row = sh.rank + sh.rope;
        const std::int64_t n_kv = 29;
        std::vector<std::uint16_t> cache(static_cast<std::size_t>(n_kv * row));
        const std::vector<float> f = test::random_floats(rng, cache.size());
        for (std::size_t i = 0; i < cache.size(); ++i) cache[i] = fp32_to_fp16(f[i]);
        const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(sh.n_head * row), 0.5f);
        attention_args args;
        args.q = q.data();
        args.k_cache = cache.data();
        args.v_cache = cache.data();
        args.n_kv = n_kv;
        args.n_head = sh.n_head;
        args.n_head_kv = 1;
        args.head_dim = row;
        args.v_dim = sh.rank;
        args.k_stride = row;
        args.v_stride = row;
        args.scale = 0.07f;
        std::vector<float> want(static_cast<std::size_t>(sh.n_head * sh.rank));
        for (int h = 0; h < sh.n_head; ++h) {
            std::vector<double> score(static_cast<std::size_t>(n_kv));
            double max = -INFINITY;
            for (std::int64_t p = 0; p < n_kv; ++p) {
                double s = 0.0;
                for (int d = 0; d < row; ++d) {
                    s += static_cast<double>(q[static_cast<std::size_t>(h * row + d)]) *
                         fp16_to_fp32(cache[static_cast<std::size_t>(p * row + d)]);
                }
                score[static_cast<std::size_t>(p)] = s * args.scale;
                max = std::max(max, s * args.scale);
            }
            double sum = 0.0;
            for (double s : score) sum += std::exp(s - max);
            for (int d = 0; d < sh.rank; ++d) {
                double acc = 0.0;
                for (std::int64_t p = 0; p < n_kv; ++p) {
                    acc += std::exp(score[static_cast<std::size_t>(p)] - max) / sum *
                           fp16_to_fp32(cache[static_cast<std::size_t>(p * row + d)]);
                }
                want[static_cast<std::size_t>(h * sh.rank + d)] = static_cast<float>(acc);
            }
        }
        std::vector<float> reference_out;
        for (isa level : available_isas()) {
            isa_scope scope(level);
            // A guard after the last head: nothing may write past n_head x v_dim.
            std::vector<float> got(want.size() + 16, 12345.0f);
            std::vector<float> scratch(static_cast<std::size_t>(n_kv * sh.n_head));
            args.out = got.data();
            attention_group(args, 0, scratch.data());
            for (std::size_t i = 0; i < want.size(); ++i) {
                ASSERT_NEAR(got[i], want[i], 4e-3 + 4e-3 * std::abs(want[i]))
                    << test::isa_label(level) << " rank " << sh.rank << " heads " << sh.n_head << " i " << i;
            }
            for (std::size_t i = want.size(); i < got.size(); ++i) ASSERT_EQ(got[i], 12345.0f) << test::isa_label(level);
            got.resize(want.size());
            if (level == isa::scalar) {
                reference_out = got;
            } else {
                EXPECT_LT(test::nmse(got.data(), reference_out.data(), got.size()), 1e-10) << test::isa_label(level);
            }
            // One head at a time gives the same as the group.
            std::vector<float> single(want.size());
            args.out = single.data();
            for (int h = 0; h < sh.n_head; ++h) attention_head(args, h, scratch.data());
            EXPECT_LT(test::nmse(single.data(), got.data(), got.size()), 1e-10) << test::isa_label(level);
        }
    }
}

TEST(ops_variants, swiglu_oai_clamps_as_ggml) {
    const std::vector<float> gate = {-20.0f, -1.0f, 0.0f, 0.5f, 6.9f, 7.0f, 30.0f};
    const std::vector<float> up = {3.0f, -9.0f, 1.0f, 2.0f, 8.0f, -7.5f, 0.25f};
    std::vector<float> got(gate.size());
    swiglu_oai(gate.data(), up.data(), got.data(), static_cast<std::int64_t>(gate.size()));
    for (std::size_t i = 0; i < gate.size(); ++i) {
        const double g = std::min(static_cast<double>(gate[i]), 7.0);
        const double u = std::clamp(static_cast<double>(up[i]), -7.0, 7.0);
        const double want = g / (1.0 + std::exp(-1.702 * g)) * (u + 1.0);
        EXPECT_NEAR(got[i], want, 1e-5 * (1.0 + std::abs(want))) << "i " << i;
    }
    // The clamp is the point: a gate of 30 counts as 7, an up of 8 as 7.
    EXPECT_NEAR(got[6], 7.0 / (1.0 + std::exp(-1.702 * 7.0)) * 1.25, 1e-4);
    EXPECT_NEAR(got[4], 6.9 / (1.0 + std::exp(-1.702 * 6.9)) * 8.0, 1e-4);
}

}  // namespace
}  // namespace moed::kernels
