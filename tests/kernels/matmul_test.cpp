// Matmul parity and determinism. For every weight type (F32, F16, BF16, Q8_0, Q4_K, Q6_K,
// Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4, Q2_K, Q3_K, Q5_K, IQ4_XS) and every ISA level this CPU has (forced scalar / AVX2 / AVX-512), matmul on random data
// is compared with matmul_reference (dequantize, then double sums with the same activation
// conversion) over awkward shapes: rows 1, 3, 17, 33 (not multiples of the row tiles),
// 1..9 tokens (not multiples of the token tiles), columns 256 and 2304 (float types also
// 1, 7, 33, 100 for the vector tails; Q8_0 and the 32-value block types also 32, 96, 288:
// odd block counts, which the AVX-512 kernels finish alone), and rows of 8448 columns (wider than the Q4_K prefill buffer, so the per-tile kernels run).
// Thresholds: NMSE <= 1e-10 and every output within 1e-5 of the typical output magnitude
// (sqrt(cols) * rms(w) * rms(x)); the only differences allowed are float summation order.
// Also checked: padded row strides and y strides (untouched gaps), x strides, results
// bitwise equal for 1, 2 and 3 threads, an activation buffer that does not reallocate once
// sized, one Q8_K conversion serving both Q4_K and Q6_K weights, and both AVX-512 BF16
// kernels (with and without AVX512-BF16).
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quantize.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::available_isas;
using test::isa_scope;

const tensor_type all_types[] = {tensor_type::f32,  tensor_type::f16,  tensor_type::bf16,   tensor_type::q8_0,
                                 tensor_type::q4_k, tensor_type::q6_k, tensor_type::q4_0,   tensor_type::q4_1,
                                 tensor_type::q5_0, tensor_type::q5_1, tensor_type::iq4_nl, tensor_type::mxfp4,
                                 tensor_type::q2_k, tensor_type::q3_k, tensor_type::q5_k,   tensor_type::iq4_xs};

bool is_float_type(tensor_type t) {
    return t == tensor_type::f32 || t == tensor_type::f16 || t == tensor_type::bf16;
}

// Types of 32-value blocks, whose AVX-512 kernels pair blocks (and finish an odd one alone).
bool pairs_blocks(tensor_type t) {
    return t == tensor_type::q8_0 || t == tensor_type::q4_0 || t == tensor_type::q4_1 || t == tensor_type::q5_0 ||
           t == tensor_type::q5_1 || t == tensor_type::iq4_nl || t == tensor_type::mxfp4;
}

struct weights {
    tensor_type type;
    std::int64_t rows, cols;
    std::size_t stride;
    std::vector<std::byte> data;
    matrix_view view() const { return matrix_view{type, data.data(), rows, cols, stride}; }
};

weights make_weights(std::mt19937& rng, tensor_type type, std::int64_t rows, std::int64_t cols, std::size_t pad = 0) {
    weights w{type, rows, cols, row_bytes(type, cols) + pad, {}};
    w.data.resize(w.stride * static_cast<std::size_t>(rows), std::byte{0x5A});
    const std::vector<float> values = test::random_floats(rng, static_cast<std::size_t>(rows * cols), 0.5f);
    for (std::int64_t r = 0; r < rows; ++r) {
        quantize_row(type, values.data() + r * cols, w.data.data() + static_cast<std::size_t>(r) * w.stride, cols);
    }
    return w;
}

double rms(const std::vector<float>& v) {
    double s = 0.0;
    for (float x : v) s += static_cast<double>(x) * x;
    return std::sqrt(s / static_cast<double>(v.size()));
}

// Q4_1/Q5_1 kernels (as llama.cpp's) sum the codes' part and the minimums' part of a
// product separately, two sums each of about the output's typical magnitude that largely
// cancel; an output near zero then has a float error that is small only against that
// magnitude. For these types the NMSE is taken against at least the typical magnitude.
bool has_block_minimum(tensor_type t) { return t == tensor_type::q4_1 || t == tensor_type::q5_1; }

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double magnitude, const std::string& what,
                  bool against_magnitude = false) {
    double err = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
        err += d * d;
        norm += static_cast<double>(want[i]) * static_cast<double>(want[i]);
    }
    if (against_magnitude) norm = std::max(norm, static_cast<double>(got.size()) * magnitude * magnitude);
    EXPECT_LE(norm > 0.0 ? err / norm : err, 1e-10) << what;
    EXPECT_LE(test::max_abs_diff(got.data(), want.data(), got.size()), 1e-5 * magnitude + 1e-30) << what;
}

TEST(matmul, matches_reference_every_type_and_isa) {
    std::mt19937 rng(21);
    compute_pool pool(2);
    activation_buffer act;
    for (tensor_type type : all_types) {
        std::vector<std::int64_t> col_sizes{256, 2304};
        if (is_float_type(type)) col_sizes.insert(col_sizes.end(), {1, 7, 33, 100});
        if (pairs_blocks(type)) col_sizes.insert(col_sizes.end(), {32, 96, 288});  // odd block counts
        for (std::int64_t cols : col_sizes) {
            for (std::int64_t rows : {1, 3, 17, 33}) {
                const weights w = make_weights(rng, type, rows, cols);
                std::vector<float> wf(static_cast<std::size_t>(rows * cols));
                for (std::int64_t r = 0; r < rows; ++r) dequantize_row(type, w.data.data() + r * w.stride, wf.data() + r * cols, cols);
                for (std::int64_t n_tokens : {1, 2, 3, 4, 5, 9}) {
                    const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_tokens * cols));
                    std::vector<float> want(static_cast<std::size_t>(n_tokens * rows));
                    matmul_reference(w.view(), x.data(), n_tokens, want.data(), rows);
                    const double magnitude = std::sqrt(static_cast<double>(cols)) * rms(wf) * rms(x);
                    for (isa level : available_isas()) {
                        isa_scope scope(level);
                        std::vector<float> got(want.size(), std::nanf(""));
                        matmul(w.view(), x.data(), n_tokens, got.data(), rows, pool, act);
                        expect_close(got, want, magnitude,
                                     std::string(type_name(type)) + " " + test::isa_label(level) + " rows=" + std::to_string(rows) +
                                         " cols=" + std::to_string(cols) + " tokens=" + std::to_string(n_tokens),
                                     has_block_minimum(type));
                    }
                }
            }
        }
    }
}

// AVX-512 has two BF16 kernels: vdpbf16ps where the CPU has AVX512-BF16, FMAs elsewhere;
// both are compared with the reference here (the main test reaches only the first).
TEST(matmul, bf16_with_and_without_avx512_bf16) {
    if (detect_isa() != isa::avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
    std::mt19937 rng(28);
    compute_pool pool(2);
    activation_buffer act;
    for (bool allowed : {false, true}) {
        detail::allow_avx512_bf16(allowed);
        for (std::int64_t cols : {7, 33, 100, 2304}) {
            const std::int64_t rows = 9;
            const weights w = make_weights(rng, tensor_type::bf16, rows, cols);
            for (std::int64_t n_tokens : {1, 3, 6}) {
                const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_tokens * cols));
                std::vector<float> want(static_cast<std::size_t>(n_tokens * rows)), got(want.size());
                matmul_reference(w.view(), x.data(), n_tokens, want.data(), rows);
                matmul(w.view(), x.data(), n_tokens, got.data(), rows, pool, act);
                EXPECT_LE(test::nmse(got.data(), want.data(), got.size()), 1e-10) << "avx512_bf16=" << allowed << " cols=" << cols;
            }
        }
    }
    detail::allow_avx512_bf16(true);
}

// Rows wider than the Q4_K prefill buffer (32 super-blocks) take the per-tile kernels.
TEST(matmul, wide_rows_match_reference) {
    std::mt19937 rng(27);
    compute_pool pool(2);
    activation_buffer act;
    for (tensor_type type : {tensor_type::q4_k, tensor_type::q6_k, tensor_type::q8_0, tensor_type::q4_1, tensor_type::mxfp4,
                             tensor_type::q2_k, tensor_type::q3_k, tensor_type::q5_k, tensor_type::iq4_xs}) {
        const std::int64_t rows = 5, cols = 33 * 256;
        const weights w = make_weights(rng, type, rows, cols);
        for (std::int64_t n_tokens : {1, 2, 6}) {
            const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_tokens * cols));
            std::vector<float> want(static_cast<std::size_t>(n_tokens * rows));
            matmul_reference(w.view(), x.data(), n_tokens, want.data(), rows);
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> got(want.size());
                matmul(w.view(), x.data(), n_tokens, got.data(), rows, pool, act);
                EXPECT_LE(test::nmse(got.data(), want.data(), got.size()), 1e-10) << type_name(type) << " " << test::isa_label(level);
            }
        }
    }
}

TEST(matmul, strides_and_gaps) {
    std::mt19937 rng(22);
    compute_pool pool(2);
    for (tensor_type type : all_types) {
        const std::int64_t rows = 13, cols = 512, n_tokens = 6, y_stride = 20, x_stride = 530;
        const weights w = make_weights(rng, type, rows, cols, /*pad=*/48);
        const std::vector<float> x_packed = test::random_floats(rng, static_cast<std::size_t>(n_tokens * cols));
        std::vector<float> x_strided(static_cast<std::size_t>(n_tokens * x_stride), std::nanf(""));
        for (std::int64_t t = 0; t < n_tokens; ++t) std::memcpy(&x_strided[t * x_stride], &x_packed[t * cols], cols * sizeof(float));
        std::vector<float> want(static_cast<std::size_t>(n_tokens * rows));
        matmul_reference(w.view(), x_packed.data(), n_tokens, want.data(), rows);
        for (isa level : available_isas()) {
            isa_scope scope(level);
            activation_buffer act;
            act.quantize(type, x_strided.data(), n_tokens, cols, x_stride, &pool);
            ASSERT_EQ(act.n_tokens(), n_tokens);
            ASSERT_EQ(act.cols(), cols);
            ASSERT_EQ(act.type(), activation_type_for(type));
            std::vector<float> y(static_cast<std::size_t>(n_tokens * y_stride), -7.0f);
            matmul(w.view(), act, y.data(), y_stride, pool);
            std::vector<float> got(want.size());
            for (std::int64_t t = 0; t < n_tokens; ++t) {
                for (std::int64_t r = 0; r < rows; ++r) got[t * rows + r] = y[t * y_stride + r];
                for (std::int64_t r = rows; r < y_stride; ++r) ASSERT_EQ(y[t * y_stride + r], -7.0f) << "gap written";
            }
            EXPECT_LE(test::nmse(got.data(), want.data(), got.size()), 1e-10) << type_name(type) << " " << test::isa_label(level);
        }
    }
}

TEST(matmul, bitwise_equal_for_any_thread_count) {
    std::mt19937 rng(23);
    compute_pool pool1(1), pool2(2), pool3(3);
    for (tensor_type type : all_types) {
        for (std::int64_t n_tokens : {1, 7}) {
            // Enough rows that the work is split into several chunks.
            const std::int64_t rows = 203, cols = 768;
            const weights w = make_weights(rng, type, rows, cols);
            const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_tokens * cols));
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<float> y1(static_cast<std::size_t>(n_tokens * rows)), y2(y1.size()), y3(y1.size());
                activation_buffer a1, a2, a3;
                matmul(w.view(), x.data(), n_tokens, y1.data(), rows, pool1, a1);
                matmul(w.view(), x.data(), n_tokens, y2.data(), rows, pool2, a2);
                matmul(w.view(), x.data(), n_tokens, y3.data(), rows, pool3, a3);
                ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(float))) << type_name(type) << " " << test::isa_label(level);
                ASSERT_EQ(0, std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float))) << type_name(type) << " " << test::isa_label(level);
            }
        }
    }
}

TEST(matmul, activation_buffer_does_not_reallocate_once_sized) {
    std::mt19937 rng(24);
    compute_pool pool(2);
    const weights w = make_weights(rng, tensor_type::q4_k, 8, 1024);
    const std::vector<float> x = test::random_floats(rng, 16 * 1024);
    std::vector<float> y(16 * 8);
    activation_buffer act;
    act.reserve(16 * row_bytes(tensor_type::q8_k, 1024));
    matmul(w.view(), x.data(), 16, y.data(), 8, pool, act);
    const std::byte* first = act.row(0);
    for (std::int64_t n : {1, 5, 16, 2}) {
        matmul(w.view(), x.data(), n, y.data(), 8, pool, act);
        EXPECT_EQ(act.row(0), first) << "reallocated for " << n << " tokens";
    }
}

TEST(matmul, one_conversion_serves_weight_types_sharing_an_activation_type) {
    std::mt19937 rng(26);
    compute_pool pool(2);
    const weights w6 = make_weights(rng, tensor_type::q6_k, 9, 512);
    const std::vector<float> x = test::random_floats(rng, 3 * 512);
    activation_buffer for_q4k, for_q6k;
    for_q4k.quantize(tensor_type::q4_k, x.data(), 3, 512, 512, &pool);
    for_q6k.quantize(tensor_type::q6_k, x.data(), 3, 512, 512, &pool);
    std::vector<float> a(27), b(27);
    matmul(w6.view(), for_q4k, a.data(), 9, pool);
    matmul(w6.view(), for_q6k, b.data(), 9, pool);
    EXPECT_EQ(a, b);
    // Q8_0 activations serve Q8_0, Q4_0, Q5_0, IQ4_NL and MXFP4 weights; Q8_1 serves Q4_1
    // and Q5_1.
    const std::pair<tensor_type, tensor_type> sharing[] = {
        {tensor_type::q8_0, tensor_type::q4_0},  {tensor_type::q4_0, tensor_type::q5_0},
        {tensor_type::q5_0, tensor_type::iq4_nl}, {tensor_type::q8_0, tensor_type::mxfp4},
        {tensor_type::q4_1, tensor_type::q5_1}};
    for (const auto& [made_for, used_by] : sharing) {
        const weights w = make_weights(rng, used_by, 9, 512);
        activation_buffer shared, own;
        shared.quantize(made_for, x.data(), 3, 512, 512, &pool);
        own.quantize(used_by, x.data(), 3, 512, 512, &pool);
        EXPECT_EQ(shared.type(), own.type());
        matmul(w.view(), shared, a.data(), 9, pool);
        matmul(w.view(), own, b.data(), 9, pool);
        EXPECT_EQ(a, b) << type_name(made_for) << " activations for " << type_name(used_by) << " weights";
    }
}

TEST(matmul, zero_rows_or_tokens_do_nothing) {
    std::mt19937 rng(25);
    compute_pool pool(2);
    const weights w = make_weights(rng, tensor_type::q8_0, 4, 64);
    activation_buffer act;
    std::vector<float> y(4, 3.0f);
    matmul(w.view(), nullptr, 0, y.data(), 4, pool, act);
    for (float v : y) EXPECT_EQ(v, 3.0f);
}

}  // namespace
}  // namespace moed::kernels
