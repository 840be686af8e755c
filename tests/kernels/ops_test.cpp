// Layer ops: every vectorised path (forced AVX2 / AVX-512, where the CPU has them) against
// the scalar references in kernels::reference on random data of awkward lengths (1, 3, 7,
// 16, 17, 33, 100, 2048), with relative-error thresholds (a few ulp: the vector exp and the
// summation order are the only differences; RoPE uses the same float operations and must
// match exactly: the plain reference at the scalar and AVX-512 levels, the FMA-contracted
// one, as llama.cpp's AVX2 build rotates, at the AVX2 level). The references themselves are checked on known values and against
// independent formulas (RMSNorm by definition, RoPE with theta computed in double, softmax
// sums to 1, SwiGLU at extremes), and attention on hand-built caches (one position, a
// constant V per KV head to check the grouped-query head mapping, uniform keys); the
// grouped attention (all query heads of a KV head at once) against the same references.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/fp16.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::available_isas;
using test::isa_scope;

const std::int64_t lengths[] = {1, 3, 7, 16, 17, 33, 100, 2048};

void expect_rel_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs_floor, const std::string& what) {
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double tol = rel * std::fabs(want[i]) + abs_floor;
        ASSERT_LE(std::fabs(static_cast<double>(got[i]) - want[i]), tol) << what << " at " << i << ": " << got[i] << " vs " << want[i];
    }
}

TEST(ops, rms_norm_reference_known_values) {
    const float x[2] = {3.0f, 4.0f};
    const float w[2] = {2.0f, 0.5f};
    float y[2];
    reference::rms_norm(x, w, y, 2, 0.0f);
    const float scale = 1.0f / std::sqrt(12.5f);
    EXPECT_EQ(y[0], 3.0f * scale * 2.0f);
    EXPECT_EQ(y[1], 4.0f * scale * 0.5f);
    reference::rms_norm(x, nullptr, y, 2, 1e-6f);
    EXPECT_EQ(y[0], 3.0f * (1.0f / std::sqrt(12.5f + 1e-6f)));
}

TEST(ops, rms_norm_matches_reference) {
    std::mt19937 rng(31);
    for (std::int64_t n : lengths) {
        const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), 3.0f);
        const std::vector<float> w = test::random_floats(rng, static_cast<std::size_t>(n));
        for (bool with_weight : {false, true}) {
            std::vector<float> want(x.size());
            reference::rms_norm(x.data(), with_weight ? w.data() : nullptr, want.data(), n, 1e-6f);
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> got = x;  // in place: y aliases x
                rms_norm(got.data(), with_weight ? w.data() : nullptr, got.data(), n, 1e-6f);
                expect_rel_close(got, want, 1e-6, 0.0, "rms_norm " + test::isa_label(level) + " n=" + std::to_string(n));
            }
        }
    }
}

TEST(ops, rope_reference_against_double_formula) {
    std::mt19937 rng(32);
    const int n_heads = 3, head_dim = 128;
    for (int n_rot : {128, 64}) {
        for (std::int64_t pos : {0, 1, 17, 1000}) {
            std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_heads * head_dim));
            std::vector<float> got = x;
            reference::rope_neox(got.data(), n_heads, head_dim, n_rot, pos, 10000.0f);
            for (int h = 0; h < n_heads; ++h) {
                const float* v = x.data() + h * head_dim;
                const float* g = got.data() + h * head_dim;
                for (int i = 0; i < n_rot / 2; ++i) {
                    const double theta = static_cast<double>(pos) * std::pow(10000.0, -2.0 * i / n_rot);
                    const double a = v[i] * std::cos(theta) - v[i + n_rot / 2] * std::sin(theta);
                    const double b = v[i] * std::sin(theta) + v[i + n_rot / 2] * std::cos(theta);
                    ASSERT_NEAR(g[i], a, 1e-3) << "pos " << pos << " i " << i;
                    ASSERT_NEAR(g[i + n_rot / 2], b, 1e-3) << "pos " << pos << " i " << i;
                }
                for (int i = n_rot; i < head_dim; ++i) ASSERT_EQ(g[i], v[i]) << "beyond n_rot must not change";
            }
            if (pos == 0) {
                EXPECT_EQ(got, x);
            }
        }
    }
}

TEST(ops, rope_matches_reference_exactly) {
    std::mt19937 rng(33);
    for (int head_dim : {64, 128, 40}) {
        for (int n_rot : {head_dim, head_dim / 2}) {
            if (n_rot % 2 != 0) continue;
            for (std::int64_t pos : {0, 5, 4095}) {
                const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(4 * head_dim));
                std::vector<float> want = x;
                reference::rope_neox(want.data(), 4, head_dim, n_rot, pos, 1000000.0f);
                // The AVX2 level rotates as llama.cpp's AVX2 build (with FMA contraction).
                std::vector<float> want_contracted = x;
                reference::rope_neox_contracted(want_contracted.data(), 4, head_dim, n_rot, pos, 1000000.0f);
                for (isa level : available_isas()) {
                    isa_scope scope(level);
                    std::vector<float> got = x;
                    rope_neox(got.data(), 4, head_dim, n_rot, pos, 1000000.0f);
                    ASSERT_EQ(got, level == isa::avx2 ? want_contracted : want)
                        << test::isa_label(level) << " head_dim " << head_dim << " n_rot " << n_rot;
                }
            }
        }
    }
}

TEST(ops, softmax_reference_properties) {
    std::vector<float> x = {1.0f, 2.0f, 3.0f, -std::numeric_limits<float>::infinity()};
    reference::softmax(x.data(), 4);
    const double e1 = std::exp(-2.0), e2 = std::exp(-1.0);
    const double sum = e1 + e2 + 1.0;
    EXPECT_NEAR(x[0], e1 / sum, 1e-7);
    EXPECT_NEAR(x[1], e2 / sum, 1e-7);
    EXPECT_NEAR(x[2], 1.0 / sum, 1e-7);
    EXPECT_EQ(x[3], 0.0f);
}

TEST(ops, softmax_matches_reference) {
    std::mt19937 rng(34);
    for (std::int64_t n : lengths) {
        for (float spread : {0.1f, 5.0f, 40.0f}) {
            std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), spread);
            if (n > 3) x[2] = -std::numeric_limits<float>::infinity();  // a masked entry
            std::vector<float> want = x;
            reference::softmax(want.data(), n);
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> got = x;
                softmax(got.data(), n);
                expect_rel_close(got, want, 4e-6, 1e-37, "softmax " + test::isa_label(level) + " n=" + std::to_string(n));
                double s = 0.0;
                for (float v : got) s += v;
                EXPECT_NEAR(s, 1.0, 1e-5);
            }
        }
    }
}

TEST(ops, top_k_routing_known_values) {
    const float probs[8] = {0.05f, 0.2f, 0.1f, 0.2f, 0.05f, 0.3f, 0.0f, 0.1f};
    std::int32_t experts[4];
    float weights[4];
    top_k_routing(probs, 8, 4, experts, weights);
    // Ties (0.2 at 1 and 3, 0.1 at 2 and 7): lower index first.
    EXPECT_EQ(experts[0], 5);
    EXPECT_EQ(experts[1], 1);
    EXPECT_EQ(experts[2], 3);
    EXPECT_EQ(experts[3], 2);
    const float total = 0.3f + 0.2f + 0.2f + 0.1f;
    EXPECT_FLOAT_EQ(weights[0], 0.3f / total);
    EXPECT_FLOAT_EQ(weights[3], 0.1f / total);
    top_k_routing(probs, 8, 1, experts, weights);
    EXPECT_EQ(experts[0], 5);
    EXPECT_EQ(weights[0], 1.0f);
}

TEST(ops, top_k_routing_matches_sort) {
    std::mt19937 rng(35);
    for (int n : {16, 128}) {
        for (int k : {1, 4, 8, n}) {
            std::vector<float> p = test::random_floats(rng, static_cast<std::size_t>(n));
            for (auto& v : p) v = std::round(std::fabs(v) * 8.0f) / 8.0f;  // many ties
            std::vector<int> order(static_cast<std::size_t>(n));
            for (int i = 0; i < n; ++i) order[i] = i;
            std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
            std::vector<std::int32_t> experts(static_cast<std::size_t>(k));
            std::vector<float> weights(static_cast<std::size_t>(k));
            top_k_routing(p.data(), n, k, experts.data(), weights.data());
            double sum = 0.0;
            for (int j = 0; j < k; ++j) {
                ASSERT_EQ(experts[j], order[j]) << "n=" << n << " k=" << k << " j=" << j;
                sum += weights[j];
            }
            if (sum > 0) {
                EXPECT_NEAR(sum, 1.0, 1e-6);
            }
        }
    }
}

TEST(ops, swiglu_matches_reference) {
    std::mt19937 rng(36);
    for (std::int64_t n : lengths) {
        std::vector<float> g = test::random_floats(rng, static_cast<std::size_t>(n), 4.0f);
        const std::vector<float> u = test::random_floats(rng, static_cast<std::size_t>(n));
        if (n >= 7) {
            g[0] = -100.0f;
            g[1] = 100.0f;
            g[2] = -88.5f;
            g[3] = 0.0f;
        }
        std::vector<float> want(g.size());
        reference::swiglu(g.data(), u.data(), want.data(), n);
        for (isa level : available_isas()) {
            isa_scope scope(level);
            std::vector<float> got = g;  // out aliases gate
            swiglu(got.data(), u.data(), got.data(), n);
            expect_rel_close(got, want, 4e-6, 1e-37, "swiglu " + test::isa_label(level) + " n=" + std::to_string(n));
        }
    }
    const float gate[2] = {2.0f, -3.0f}, up[2] = {1.5f, 2.0f};
    float out[2];
    reference::swiglu(gate, up, out, 2);
    EXPECT_FLOAT_EQ(out[0], 2.0f / (1.0f + std::exp(-2.0f)) * 1.5f);
    EXPECT_FLOAT_EQ(out[1], -3.0f / (1.0f + std::exp(3.0f)) * 2.0f);
}

TEST(ops, axpy_matches_scalar) {
    std::mt19937 rng(37);
    for (std::int64_t n : lengths) {
        const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n));
        const std::vector<float> y0 = test::random_floats(rng, static_cast<std::size_t>(n));
        std::vector<float> want = y0;
        for (std::int64_t i = 0; i < n; ++i) want[i] += 0.37f * x[i];
        for (isa level : available_isas()) {
            isa_scope scope(level);
            std::vector<float> got = y0;
            axpy(0.37f, x.data(), got.data(), n);
            expect_rel_close(got, want, 1e-6, 1e-6, "axpy " + test::isa_label(level));
        }
    }
}

// --- attention --------------------------------------------------------------------------

struct kv_cache {
    int n_head_kv, head_dim;
    std::int64_t n_ctx;
    std::vector<std::uint16_t> k, v;
    std::uint16_t* at(std::vector<std::uint16_t>& c, std::int64_t pos, int h) { return &c[(pos * n_head_kv + h) * head_dim]; }
};

kv_cache random_cache(std::mt19937& rng, std::int64_t n_ctx, int n_head_kv, int head_dim) {
    kv_cache c{n_head_kv, head_dim, n_ctx, {}, {}};
    const auto n = static_cast<std::size_t>(n_ctx * n_head_kv * head_dim);
    const std::vector<float> kf = test::random_floats(rng, n), vf = test::random_floats(rng, n);
    c.k.resize(n);
    c.v.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
        c.k[i] = fp32_to_fp16(kf[i]);
        c.v[i] = fp32_to_fp16(vf[i]);
    }
    return c;
}

TEST(ops, attention_matches_reference) {
    std::mt19937 rng(38);
    for (int head_dim : {64, 128, 40}) {
        for (std::int64_t n_kv : {1, 5, 17, 100}) {
            const int n_head = 4, n_head_kv = 2;
            kv_cache cache = random_cache(rng, 128, n_head_kv, head_dim);
            const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(n_head * head_dim), 2.0f);
            attention_args args;
            args.q = q.data();
            args.k_cache = cache.k.data();
            args.v_cache = cache.v.data();
            args.n_kv = n_kv;
            args.n_head = n_head;
            args.n_head_kv = n_head_kv;
            args.head_dim = head_dim;
            args.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
            std::vector<float> want(q.size()), scratch(static_cast<std::size_t>(n_kv));
            args.out = want.data();
            for (int h = 0; h < n_head; ++h) reference::attention_head(args, h, scratch.data());
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> got(q.size());
                args.out = got.data();
                for (int h = 0; h < n_head; ++h) attention_head(args, h, scratch.data());
                // A score differing in its last bit may round its probability to the other
                // neighbouring half: at most 2^-11 of that probability, summed over positions.
                expect_rel_close(got, want, 0.0, 1.5e-3, "attention " + test::isa_label(level) + " dim=" + std::to_string(head_dim) +
                                                             " n_kv=" + std::to_string(n_kv));
            }
        }
    }
}

TEST(ops, attention_group_matches_reference) {
    std::mt19937 rng(40);
    for (auto [n_head, n_head_kv] : {std::pair{32, 4}, std::pair{16, 1}, std::pair{4, 2}}) {
        for (int head_dim : {128, 40}) {
            for (std::int64_t n_kv : {1, 17, 100}) {
                kv_cache cache = random_cache(rng, 128, n_head_kv, head_dim);
                const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(n_head * head_dim), 2.0f);
                attention_args args;
                args.q = q.data();
                args.k_cache = cache.k.data();
                args.v_cache = cache.v.data();
                args.n_kv = n_kv;
                args.n_head = n_head;
                args.n_head_kv = n_head_kv;
                args.head_dim = head_dim;
                args.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
                std::vector<float> want(q.size()), scratch(static_cast<std::size_t>(n_head * n_kv));
                args.out = want.data();
                for (int h = 0; h < n_head; ++h) reference::attention_head(args, h, scratch.data());
                for (isa level : available_isas()) {
                    isa_scope scope(level);
                    std::vector<float> got(q.size(), std::nanf(""));
                    args.out = got.data();
                    for (int g = 0; g < n_head_kv; ++g) attention_group(args, g, scratch.data());
                    expect_rel_close(got, want, 0.0, 1.5e-3, "attention_group " + test::isa_label(level) + " heads " + std::to_string(n_head) +
                                                                 "/" + std::to_string(n_head_kv) + " dim=" + std::to_string(head_dim) +
                                                                 " n_kv=" + std::to_string(n_kv));
                }
            }
        }
    }
}

// Groups of 2 and 4 query heads per KV head share the K/V conversions but must keep each
// head's arithmetic: the same bits as attention_head on every ISA.
TEST(ops, attention_small_groups_give_attention_head_bits) {
    std::mt19937 rng(41);
    for (auto [n_head, n_head_kv] : {std::pair{4, 2}, std::pair{8, 2}, std::pair{16, 8}}) {
        for (int head_dim : {64, 40}) {
            for (std::int64_t n_kv : {1, 3, 6, 37}) {
                kv_cache cache = random_cache(rng, 64, n_head_kv, head_dim);
                const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(n_head * head_dim), 2.0f);
                attention_args args;
                args.q = q.data();
                args.k_cache = cache.k.data();
                args.v_cache = cache.v.data();
                args.n_kv = n_kv;
                args.n_head = n_head;
                args.n_head_kv = n_head_kv;
                args.head_dim = head_dim;
                args.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
                std::vector<float> scratch(static_cast<std::size_t>(n_head * n_kv));
                for (isa level : available_isas()) {
                    isa_scope scope(level);
                    std::vector<float> want(q.size()), got(q.size(), std::nanf(""));
                    args.out = want.data();
                    for (int h = 0; h < n_head; ++h) attention_head(args, h, scratch.data());
                    args.out = got.data();
                    for (int g = 0; g < n_head_kv; ++g) attention_group(args, g, scratch.data());
                    ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
                        << test::isa_label(level) << " heads " << n_head << "/" << n_head_kv << " dim " << head_dim
                        << " n_kv " << n_kv;
                }
            }
        }
    }
}

// argmax: the first index of the largest value, NaNs skipped, on every ISA; lengths cover
// vector tails and the winner sits in the body, the tail and the first lane.
TEST(ops, argmax_first_largest_value) {
    std::mt19937 rng(42);
    for (std::int64_t n : {1, 5, 16, 17, 100, 4096, 4099}) {
        std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), 3.0f);
        for (std::int64_t at : {std::int64_t{0}, n / 2, n - 1}) {
            std::vector<float> y = x;
            y[static_cast<std::size_t>(at)] = 100.0f;
            if (at + 3 < n) y[static_cast<std::size_t>(at + 3)] = 100.0f;  // a tie: the first wins
            if (n > 2 && at != 1) y[1] = std::nanf("");
            for (isa level : available_isas()) {
                isa_scope scope(level);
                EXPECT_EQ(at, argmax(y.data(), n)) << test::isa_label(level) << " n " << n;
                EXPECT_EQ(at, reference::argmax(y.data(), n));
            }
        }
    }
    const std::vector<float> nans(20, std::nanf(""));
    EXPECT_EQ(0, argmax(nans.data(), 20));
    const std::vector<float> low(20, -std::numeric_limits<float>::infinity());
    EXPECT_EQ(0, argmax(low.data(), 20));
}

TEST(ops, attention_known_values) {
    std::mt19937 rng(39);
    const int n_head = 4, n_head_kv = 2, head_dim = 64;
    kv_cache cache = random_cache(rng, 8, n_head_kv, head_dim);
    // KV head 1 holds a constant V, and identical keys: heads 2 and 3 must read it.
    for (std::int64_t p = 0; p < 8; ++p) {
        for (int d = 0; d < head_dim; ++d) {
            cache.at(cache.v, p, 1)[d] = fp32_to_fp16(7.0f);
            cache.at(cache.k, p, 1)[d] = fp32_to_fp16(0.25f);
        }
    }
    const std::vector<float> q = test::random_floats(rng, static_cast<std::size_t>(n_head * head_dim));
    attention_args args;
    args.q = q.data();
    args.k_cache = cache.k.data();
    args.v_cache = cache.v.data();
    args.n_head = n_head;
    args.n_head_kv = n_head_kv;
    args.head_dim = head_dim;
    args.scale = 0.125f;
    std::vector<float> out(q.size()), scratch(8);
    args.out = out.data();
    for (isa level : available_isas()) {
        isa_scope scope(level);
        // One position: the output is that position's V exactly (probability 1).
        args.n_kv = 1;
        for (int h = 0; h < n_head; ++h) attention_head(args, h, scratch.data());
        for (int d = 0; d < head_dim; ++d) {
            ASSERT_EQ(out[d], fp16_to_fp32(cache.at(cache.v, 0, 0)[d])) << test::isa_label(level);
            ASSERT_EQ(out[head_dim + d], fp16_to_fp32(cache.at(cache.v, 0, 0)[d])) << "head 1 reads kv head 0";
            ASSERT_EQ(out[2 * head_dim + d], 7.0f) << "head 2 reads kv head 1";
        }
        // Eight positions with equal keys: probabilities 1/8 each (exact in f16).
        args.n_kv = 8;
        for (int h = 2; h < n_head; ++h) attention_head(args, h, scratch.data());
        for (int d = 0; d < head_dim; ++d) {
            ASSERT_NEAR(out[3 * head_dim + d], 7.0f, 1e-5) << test::isa_label(level);
        }
    }
}

}  // namespace
}  // namespace moed::kernels
