// Batch invariance: continuous batching promises that a user's greedy output equals the same
// request run alone, so a token's results must be bitwise the same whatever else is in the
// batch. Checked here, for every ISA level this CPU has (and both AVX-512 BF16 kernels):
// - matmul, every weight type (F32, F16, BF16, Q8_0, Q4_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1,
//   IQ4_NL, MXFP4, Q2_K, Q3_K, Q5_K, IQ4_XS), 1, 2 and 3 threads and
//   n in {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64} tokens: every token's row of the batched
//   result equals, bit for bit, the same token multiplied alone (n = 1, one thread). Tokens
//   are picked at a rotating offset so each lands at different positions within the token
//   tiles; shapes cover the decode and prefill paths (Q4_K's unpacked-rows prefill for rows
//   of at most 32 super-blocks, the per-tile kernels for wider rows), row counts that split
//   into several chunks per thread, and float rows with vector tails. Each token has a
//   sum order of its own (sum_order.h, drawn at random), passed alone and in every batch.
// - the element-wise ops, over lengths with vector tails: SwiGLU and axpy give every element
//   the value of a one-element call (so neither n nor the element's position relative to a
//   vector tail matters), except SwiGLU at the AVX2 level, which ends a call as llama.cpp
//   ends a row (its body elements equal their 8-value call, its tail elements a one-element
//   call; the engine calls it once per row); softmax of a row is unchanged by padding it
//   with -inf (causal masking) except at the AVX2 level, whose softmax is llama.cpp's for a
//   row of exactly n values (attention pads inside its kernel); RMSNorm's weighted output is its unweighted output times the weight for every
//   element (tail elements go through the body's operations) and does not depend on where
//   the row sits in memory; RoPE of several heads equals each head rotated alone.
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quantize.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::isa_scope;

const std::int64_t token_counts[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33, 64};
constexpr std::int64_t max_tokens = 64;
const int thread_counts[] = {1, 2, 3};

// An ISA level, plus whether AVX-512 may use AVX512-BF16 (its two BF16 kernels).
struct isa_variant {
    isa level;
    bool avx512_bf16;
    std::string label() const {
        return test::isa_label(level) + (level == isa::avx512 && !avx512_bf16 ? " (no avx512bf16)" : "");
    }
};

std::vector<isa_variant> isa_variants() {
    std::vector<isa_variant> out;
    for (isa level : test::available_isas()) out.push_back({level, true});
    if (detect_isa() == isa::avx512) out.push_back({isa::avx512, false});
    return out;
}

// Selects an ISA variant for the guard's lifetime.
class variant_scope {
public:
    explicit variant_scope(const isa_variant& v) : isa_(v.level) { detail::allow_avx512_bf16(v.avx512_bf16); }
    ~variant_scope() { detail::allow_avx512_bf16(true); }
    variant_scope(const variant_scope&) = delete;
    variant_scope& operator=(const variant_scope&) = delete;

private:
    isa_scope isa_;
};

bool is_float_type(tensor_type t) {
    return t == tensor_type::f32 || t == tensor_type::f16 || t == tensor_type::bf16;
}

struct shape {
    std::int64_t rows, cols;
};

// Decode and prefill paths, several row chunks per thread, and (float types) vector tails;
// for quantized types also rows wider than the Q4_K prefill buffer (32 super-blocks) and,
// for the 32-value block types, an odd number of blocks (the AVX-512 kernels pair blocks).
std::vector<shape> shapes_for(tensor_type type) {
    std::vector<shape> s{{512, 256}, {129, 2304}};
    if (is_float_type(type)) {
        s.push_back({37, 100});
        s.push_back({19, 7});
    } else {
        s.push_back({40, 33 * 256});
    }
    if (type == tensor_type::q8_0 || type == tensor_type::q4_0 || type == tensor_type::q4_1 ||
        type == tensor_type::q5_0 || type == tensor_type::q5_1 || type == tensor_type::iq4_nl ||
        type == tensor_type::mxfp4) {
        s.push_back({96, 96});
    }
    return s;
}

std::vector<std::byte> make_weights(std::mt19937& rng, tensor_type type, const shape& s) {
    const std::size_t stride = row_bytes(type, s.cols);
    std::vector<std::byte> data(stride * static_cast<std::size_t>(s.rows));
    const std::vector<float> values = test::random_floats(rng, static_cast<std::size_t>(s.rows * s.cols), 0.5f);
    for (std::int64_t r = 0; r < s.rows; ++r) {
        quantize_row(type, values.data() + r * s.cols, data.data() + static_cast<std::size_t>(r) * stride, s.cols);
    }
    return data;
}

// Token rows with different magnitudes (as real activations have), so that the tokens of a
// batch do not share scales.
std::vector<float> make_tokens(std::mt19937& rng, std::int64_t n, std::int64_t cols) {
    std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n * cols));
    std::uniform_real_distribution<float> scale(0.05f, 4.0f);
    for (std::int64_t t = 0; t < n; ++t) {
        const float s = scale(rng);
        for (std::int64_t c = 0; c < cols; ++c) x[static_cast<std::size_t>(t * cols + c)] *= s;
    }
    return x;
}

class batch_invariance : public ::testing::TestWithParam<tensor_type> {};

TEST_P(batch_invariance, batched_rows_equal_single_token_rows_bitwise) {
    const tensor_type type = GetParam();
    std::mt19937 rng(31 + static_cast<unsigned>(type));
    compute_pool single_pool(1);
    std::vector<std::unique_ptr<compute_pool>> pools;
    for (int threads : thread_counts) pools.push_back(std::make_unique<compute_pool>(threads));
    activation_buffer act;

    for (const shape& s : shapes_for(type)) {
        const std::vector<std::byte> w_data = make_weights(rng, type, s);
        const matrix_view w{type, w_data.data(), s.rows, s.cols, row_bytes(type, s.cols)};
        const std::vector<float> x = make_tokens(rng, max_tokens, s.cols);
        const auto cols = static_cast<std::size_t>(s.cols);
        const auto rows = static_cast<std::size_t>(s.rows);

        // Each token keeps one sum order (sum_order.h) wherever it sits in a batch.
        std::vector<sum_order> token_order(max_tokens);
        for (std::int64_t t = 0; t < max_tokens; ++t) token_order[static_cast<std::size_t>(t)] = static_cast<sum_order>(rng() % 3);
        for (const isa_variant& variant : isa_variants()) {
            variant_scope scope(variant);
            // Every token alone (the decode path), one thread.
            std::vector<float> alone(max_tokens * rows);
            for (std::int64_t t = 0; t < max_tokens; ++t) {
                matmul(w, x.data() + t * s.cols, 1, alone.data() + t * s.rows, s.rows, single_pool, act,
                       &token_order[static_cast<std::size_t>(t)]);
            }
            for (std::size_t p = 0; p < pools.size(); ++p) {
                for (std::int64_t n : token_counts) {
                    // Tokens offset, offset + 1, ... (mod 64): each token sits at a different
                    // place within the token tiles from one batch size to the next.
                    const std::int64_t offset = (n * 5 + static_cast<std::int64_t>(p) * 11) % max_tokens;
                    std::vector<float> xb(static_cast<std::size_t>(n) * cols);
                    std::vector<sum_order> orders(static_cast<std::size_t>(n));
                    for (std::int64_t i = 0; i < n; ++i) {
                        const std::int64_t t = (offset + i) % max_tokens;
                        std::memcpy(xb.data() + i * s.cols, x.data() + t * s.cols, cols * sizeof(float));
                        orders[static_cast<std::size_t>(i)] = token_order[static_cast<std::size_t>(t)];
                    }
                    std::vector<float> y(static_cast<std::size_t>(n) * rows, std::nanf(""));
                    matmul(w, xb.data(), n, y.data(), s.rows, *pools[p], act, orders.data());
                    for (std::int64_t i = 0; i < n; ++i) {
                        const std::int64_t t = (offset + i) % max_tokens;
                        const float* got = y.data() + i * s.rows;
                        const float* want = alone.data() + t * s.rows;
                        if (std::memcmp(got, want, rows * sizeof(float)) == 0) continue;
                        std::size_t r = 0;
                        while (got[r] == want[r] && std::signbit(got[r]) == std::signbit(want[r])) ++r;
                        FAIL() << type_name(type) << " " << variant.label() << " threads=" << thread_counts[p]
                               << " rows=" << s.rows << " cols=" << s.cols << " n=" << n << ": token " << t
                               << " at batch position " << i << ", row " << r << ": " << got[r] << " batched vs "
                               << want[r] << " alone (max |diff| over the row "
                               << test::max_abs_diff(got, want, rows) << ")";
                    }
                }
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(types, batch_invariance,
                         ::testing::Values(tensor_type::f32, tensor_type::f16, tensor_type::bf16, tensor_type::q8_0,
                                           tensor_type::q4_k, tensor_type::q6_k, tensor_type::q4_0, tensor_type::q4_1,
                                           tensor_type::q5_0, tensor_type::q5_1, tensor_type::iq4_nl,
                                           tensor_type::mxfp4, tensor_type::q2_k, tensor_type::q3_k,
                                           tensor_type::q5_k, tensor_type::iq4_xs),
                         [](const ::testing::TestParamInfo<tensor_type>& param) {
                             return std::string(type_name(param.param));
                         });

// Lengths around the AVX2 (8) and AVX-512 (16) vector widths, and longer rows with tails.
std::vector<std::int64_t> op_lengths() {
    std::vector<std::int64_t> n;
    for (std::int64_t i = 1; i <= 40; ++i) n.push_back(i);
    for (std::int64_t i : {63, 64, 65, 100, 128, 255, 2048, 3 * 768 + 5}) n.push_back(i);
    return n;
}

bool bitwise_equal(float a, float b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

TEST(batch_invariance_ops, swiglu_elements_do_not_depend_on_length_or_position) {
    std::mt19937 rng(41);
    for (isa level : test::available_isas()) {
        isa_scope scope(level);
        for (std::int64_t n : op_lengths()) {
            // Gates spread wide enough to reach exp's clamps and both signs.
            const std::vector<float> gate = test::random_floats(rng, static_cast<std::size_t>(n), 8.0f);
            const std::vector<float> up = test::random_floats(rng, static_cast<std::size_t>(n));
            std::vector<float> out(static_cast<std::size_t>(n));
            swiglu(gate.data(), up.data(), out.data(), n);
            const std::int64_t body = level == isa::avx2 ? n / 8 * 8 : 0;
            for (std::int64_t i = 0; i < body; ++i) {
                float eight[8];
                const std::int64_t at = i / 8 * 8;
                swiglu(&gate[at], &up[at], eight, 8);
                ASSERT_TRUE(bitwise_equal(out[i], eight[i - at])) << "avx2 n=" << n << " i=" << i;
            }
            for (std::int64_t i = body; i < n; ++i) {
                float one = 0.0f;
                swiglu(&gate[i], &up[i], &one, 1);
                ASSERT_TRUE(bitwise_equal(out[i], one)) << test::isa_label(level) << " n=" << n << " i=" << i << ": "
                                                         << out[i] << " vs " << one << " alone";
            }
        }
    }
}

TEST(batch_invariance_ops, axpy_elements_do_not_depend_on_length_or_position) {
    std::mt19937 rng(42);
    for (isa level : test::available_isas()) {
        isa_scope scope(level);
        for (std::int64_t n : op_lengths()) {
            const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n));
            const std::vector<float> y0 = test::random_floats(rng, static_cast<std::size_t>(n));
            const float a = 0.37f;
            std::vector<float> y = y0;
            axpy(a, x.data(), y.data(), n);
            for (std::int64_t i = 0; i < n; ++i) {
                float one = y0[i];
                axpy(a, &x[i], &one, 1);
                ASSERT_TRUE(bitwise_equal(y[i], one)) << test::isa_label(level) << " n=" << n << " i=" << i;
            }
        }
    }
}

TEST(batch_invariance_ops, softmax_unchanged_by_minus_infinity_padding) {
    std::mt19937 rng(43);
    const float minus_inf = -std::numeric_limits<float>::infinity();
    for (isa level : test::available_isas()) {
        if (level == isa::avx2) continue;  // a row of exactly n values there (see above)
        isa_scope scope(level);
        for (std::int64_t n : op_lengths()) {
            const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), 3.0f);
            std::vector<float> plain = x;
            softmax(plain.data(), n);
            for (std::int64_t pad : {1, 5, 8, 16, 23}) {
                std::vector<float> padded = x;
                padded.resize(static_cast<std::size_t>(n + pad), minus_inf);
                softmax(padded.data(), n + pad);
                for (std::int64_t i = 0; i < n; ++i) {
                    ASSERT_TRUE(bitwise_equal(padded[i], plain[i]))
                        << test::isa_label(level) << " n=" << n << " pad=" << pad << " i=" << i << ": " << padded[i]
                        << " vs " << plain[i];
                }
                for (std::int64_t i = n; i < n + pad; ++i) ASSERT_EQ(padded[i], 0.0f);
            }
        }
    }
}

TEST(batch_invariance_ops, rms_norm_same_operations_for_every_element_and_placement) {
    std::mt19937 rng(44);
    for (isa level : test::available_isas()) {
        isa_scope scope(level);
        for (std::int64_t n : op_lengths()) {
            const auto un = static_cast<std::size_t>(n);
            const std::vector<float> x = test::random_floats(rng, un);
            const std::vector<float> weight = test::random_floats(rng, un);
            std::vector<float> y(un), unweighted(un);
            rms_norm(x.data(), weight.data(), y.data(), n, 1e-6f);
            rms_norm(x.data(), nullptr, unweighted.data(), n, 1e-6f);
            for (std::size_t i = 0; i < un; ++i) {
                ASSERT_TRUE(bitwise_equal(y[i], unweighted[i] * weight[i])) << test::isa_label(level) << " n=" << n << " i=" << i;
            }
            // The same row at other offsets (as row t of a batch would be), and in place.
            for (std::size_t shift : {1u, 3u, 13u}) {
                std::vector<float> buf(un + shift);
                std::memcpy(buf.data() + shift, x.data(), un * sizeof(float));
                rms_norm(buf.data() + shift, weight.data(), buf.data() + shift, n, 1e-6f);
                ASSERT_EQ(0, std::memcmp(buf.data() + shift, y.data(), un * sizeof(float)))
                    << test::isa_label(level) << " n=" << n << " shift=" << shift;
            }
        }
    }
}

TEST(batch_invariance_ops, rope_heads_together_equal_heads_alone) {
    std::mt19937 rng(45);
    for (isa level : test::available_isas()) {
        isa_scope scope(level);
        for (int head_dim : {2, 10, 34, 64, 128}) {
            for (int n_rot : {2, head_dim / 2 * 2, 8}) {
                if (n_rot > head_dim || n_rot % 2 != 0) continue;
                const int n_heads = 5;
                std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_heads * head_dim));
                std::vector<float> together = x;
                rope_neox(together.data(), n_heads, head_dim, n_rot, 1234, 1e6f);
                for (int h = 0; h < n_heads; ++h) {
                    std::vector<float> alone(x.begin() + h * head_dim, x.begin() + (h + 1) * head_dim);
                    rope_neox(alone.data(), 1, head_dim, n_rot, 1234, 1e6f);
                    ASSERT_EQ(0, std::memcmp(alone.data(), together.data() + h * head_dim, alone.size() * sizeof(float)))
                        << test::isa_label(level) << " head_dim=" << head_dim << " n_rot=" << n_rot << " head " << h;
                }
            }
        }
    }
}

}  // namespace
}  // namespace moed::kernels
