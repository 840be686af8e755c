// Block layouts and conversions:
// - known values: hand-built Q8_0, Q4_K (both halves of the 6-bit scale packing), Q6_K and
//   Q8_K blocks dequantize to the values their definitions give (Q2_K, Q3_K, Q5_K and
//   IQ4_XS: quantize_kquant_test.cpp);
// - round trips: quantize_row then dequantize_row stays within per-type error bounds (per
//   value, relative to the block's range, and NMSE on Gaussian data), also on degenerate
//   rows (zeros, constants, one spike, huge dynamic range);
// - activation quantization: at every ISA level the bytes equal those of a plain scalar
//   re-implementation of llama.cpp's x86 quantize_row_q8_0 and quantize_row_q8_K_ref
//   (including exact .5 ties, which round to even), and f16/bf16 activations equal
//   fp32_to_fp16/fp32_to_bf16 per element for every tail length.
#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/quant_blocks.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::available_isas;
using test::isa_scope;

// --- known values --------------------------------------------------------------------

TEST(quantize, q8_0_known_values) {
    block_q8_0 b{};
    b.d = fp32_to_fp16(0.5f);
    for (int i = 0; i < qk8_0; ++i) b.qs[i] = static_cast<std::int8_t>(i * 8 - 128);
    std::vector<float> out(qk8_0);
    dequantize_row(tensor_type::q8_0, &b, out.data(), qk8_0);
    for (int i = 0; i < qk8_0; ++i) EXPECT_EQ(out[i], 0.5f * static_cast<float>(i * 8 - 128)) << i;
}

// Packs 8 six-bit scales and mins the way ggml's get_scale_min_k4 reads them.
void pack_q4_k_scales(const int* sc, const int* mn, std::uint8_t* q) {
    std::memset(q, 0, k_scale_size);
    for (int j = 0; j < 4; ++j) {
        q[j] = static_cast<std::uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = static_cast<std::uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        q[j + 8] = static_cast<std::uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

TEST(quantize, q4_k_known_values) {
    block_q4_k b{};
    b.d = fp32_to_fp16(0.25f);
    b.dmin = fp32_to_fp16(0.125f);
    // Values above 15 exercise the high bits stored in the top of bytes 0..7.
    const int sc[8] = {1, 17, 33, 63, 0, 48, 21, 62};
    const int mn[8] = {63, 0, 5, 40, 31, 16, 59, 2};
    pack_q4_k_scales(sc, mn, b.scales);
    int codes[qk_k];
    for (int i = 0; i < qk_k; ++i) codes[i] = (i * 7 + i / 32) % 16;
    // Values 64j..64j+31 in the low nibbles of qs[32j..], 64j+32.. in the high nibbles.
    for (int j = 0; j < 4; ++j) {
        for (int l = 0; l < 32; ++l) b.qs[32 * j + l] = static_cast<std::uint8_t>(codes[64 * j + l] | (codes[64 * j + 32 + l] << 4));
    }
    std::vector<float> out(qk_k);
    dequantize_row(tensor_type::q4_k, &b, out.data(), qk_k);
    for (int i = 0; i < qk_k; ++i) {
        const int s = i / 32;
        EXPECT_EQ(out[i], 0.25f * static_cast<float>(sc[s]) * static_cast<float>(codes[i]) - 0.125f * static_cast<float>(mn[s])) << i;
    }
}

TEST(quantize, q6_k_known_values) {
    block_q6_k b{};
    b.d = fp32_to_fp16(0.5f);
    std::int8_t sc[16];
    for (int s = 0; s < 16; ++s) sc[s] = static_cast<std::int8_t>(s * 17 - 128);
    std::memcpy(b.scales, sc, 16);
    int codes[qk_k];  // 0..63, value = d * sc * (code - 32)
    for (int i = 0; i < qk_k; ++i) codes[i] = (i * 11 + 5) % 64;
    // Layout per 128-value half: ql[l] = low nibbles of values l / l+64, ql[l+32] of l+32 /
    // l+96; qh[l] = the 2 high bits of values l, l+32, l+64, l+96 at bits 0, 2, 4, 6.
    for (int h = 0; h < 2; ++h) {
        const int* c = codes + 128 * h;
        for (int l = 0; l < 32; ++l) {
            b.ql[64 * h + l] = static_cast<std::uint8_t>((c[l] & 15) | ((c[l + 64] & 15) << 4));
            b.ql[64 * h + l + 32] = static_cast<std::uint8_t>((c[l + 32] & 15) | ((c[l + 96] & 15) << 4));
            b.qh[32 * h + l] = static_cast<std::uint8_t>((c[l] >> 4) | ((c[l + 32] >> 4) << 2) | ((c[l + 64] >> 4) << 4) | ((c[l + 96] >> 4) << 6));
        }
    }
    std::vector<float> out(qk_k);
    dequantize_row(tensor_type::q6_k, &b, out.data(), qk_k);
    for (int i = 0; i < qk_k; ++i) {
        EXPECT_EQ(out[i], 0.5f * static_cast<float>(sc[i / 16]) * static_cast<float>(codes[i] - 32)) << i;
    }
}

TEST(quantize, q8_k_known_values) {
    block_q8_k b{};
    b.d = 0.03125f;
    for (int i = 0; i < qk_k; ++i) b.qs[i] = static_cast<std::int8_t>((i % 255) - 127);
    std::vector<float> out(qk_k);
    dequantize_row(tensor_type::q8_k, &b, out.data(), qk_k);
    for (int i = 0; i < qk_k; ++i) EXPECT_EQ(out[i], 0.03125f * static_cast<float>((i % 255) - 127)) << i;
}

TEST(quantize, f16_bf16_f32_rows) {
    const float v[4] = {1.0f, -2.5f, 65504.0f, 0.099976f};
    std::uint16_t h[4], bh[4];
    quantize_row(tensor_type::f16, v, h, 4);
    quantize_row(tensor_type::bf16, v, bh, 4);
    float back[4];
    dequantize_row(tensor_type::f16, h, back, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(back[i], fp16_to_fp32(fp32_to_fp16(v[i])));
    dequantize_row(tensor_type::bf16, bh, back, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(back[i], bf16_to_fp32(fp32_to_bf16(v[i])));
    dequantize_row(tensor_type::f32, v, back, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(back[i], v[i]);
}

// --- round trips -----------------------------------------------------------------------

struct round_trip_case {
    tensor_type type;
    int block;             // values per scale group used for the per-value bound
    float step_fraction;   // allowed |error| as a fraction of the group's range
    float super_fraction;  // plus this fraction of the 256-value super-block's max |x|
    double max_nmse;       // on Gaussian data
};

std::vector<float> round_trip(tensor_type type, const std::vector<float>& x) {
    const auto n = static_cast<std::int64_t>(x.size());
    std::vector<std::byte> q(row_bytes(type, n));
    quantize_row(type, x.data(), q.data(), n);
    std::vector<float> back(x.size());
    dequantize_row(type, q.data(), back.data(), n);
    return back;
}

void check_round_trip(const round_trip_case& c, const std::vector<float>& x, bool check_nmse) {
    const std::vector<float> back = round_trip(c.type, x);
    for (std::size_t g = 0; g < x.size(); g += static_cast<std::size_t>(c.block)) {
        float lo = 0.0f, hi = 0.0f, super_amax = 0.0f;
        for (int i = 0; i < c.block; ++i) {
            lo = std::min(lo, x[g + i]);
            hi = std::max(hi, x[g + i]);
        }
        const std::size_t super_start = g / 256 * 256;
        for (std::size_t i = super_start; i < std::min(x.size(), super_start + 256); ++i) super_amax = std::max(super_amax, std::fabs(x[i]));
        const float allowed = c.step_fraction * (hi - lo) + c.super_fraction * super_amax + 1e-30f;
        for (int i = 0; i < c.block; ++i) {
            ASSERT_TRUE(std::isfinite(back[g + i])) << type_name(c.type) << " at " << g + i;
            ASSERT_LE(std::fabs(back[g + i] - x[g + i]), allowed) << type_name(c.type) << " at " << g + i << " x=" << x[g + i];
        }
    }
    if (check_nmse) {
        EXPECT_LE(test::nmse(back.data(), x.data(), x.size()), c.max_nmse) << type_name(c.type);
    }
}

const round_trip_case round_trip_cases[] = {
    // Q8_0: half a step of amax/127 (range >= amax), plus the f16 rounding of d.
    {tensor_type::q8_0, 32, 0.5f / 127.0f * 1.01f + 1e-3f, 0.0f, 5e-5},
    // Q4_K: within one 15-level step of the widest sub-block range in its super-block
    // (the sub-block group here is the super-block, a generous but meaningful bound).
    {tensor_type::q4_k, 256, 1.0f / 15.0f, 0.0f, 1e-2},
    // Q6_K: one step of the 16-value sub-block (range / 32: rounding, or the clip of +32 to
    // 31), plus the error of the 8-bit sub-block scale (32 codes x d/2, d = amax / 4096).
    {tensor_type::q6_k, 16, 1.0f / 32.0f, 1.0f / 200.0f, 6e-4},
    // Q2_K: half a step of the 16-value group's range / 3 (the 4-bit scale rounds up by at
    // most d, and the minimum rounds by dmin / 2; d, dmin <= 2 * max|x| / 45, max|x| / 15).
    {tensor_type::q2_k, 16, 1.0f / 6.0f * 1.01f, 1.0f / 16.0f, 0.2},
    // Q3_K: the clip of the side opposite the largest magnitude from +4 to +3 steps (one
    // step, range / 4), plus the error of the 6-bit scale (4 codes x d / 2, d = max|x| / 128).
    {tensor_type::q3_k, 16, 1.0f / 4.0f * 1.01f, 1.0f / 50.0f, 0.04},
    // Q5_K: as Q4_K, within one 31-level step of the widest sub-block range (the rounding
    // and the 6-bit scale and minimum add up to about 0.75 of it).
    {tensor_type::q5_k, 256, 1.0f / 31.0f, 0.0f, 3e-3},
    // IQ4_XS: the widest gap of its levels is 24 of 254 (half: 12) and the side opposite the
    // largest magnitude ends at 113 of 127 (14 levels short): 14 / 127 of the group's
    // range, plus the 6-bit scale's error (127 x d / 2, d = max|x| / (127 * 32)).
    {tensor_type::iq4_xs, 32, 14.0f / 127.0f * 1.01f, 1.0f / 60.0f, 1.2e-2},
    {tensor_type::f16, 1, 0.0f, 0.0f, 1e-7},
    {tensor_type::bf16, 1, 0.0f, 0.0f, 2e-5},
    {tensor_type::f32, 1, 0.0f, 0.0f, 0.0},
};

TEST(quantize, round_trip_gaussian) {
    std::mt19937 rng(5);
    for (const auto& c : round_trip_cases) {
        for (std::int64_t n : {256, 512, 2304}) {
            const std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), 0.02f);
            if (c.block == 1) {
                const std::vector<float> back = round_trip(c.type, x);
                EXPECT_LE(test::nmse(back.data(), x.data(), x.size()), c.max_nmse) << type_name(c.type);
                for (std::size_t i = 0; i < x.size(); ++i) {
                    const float rel = c.type == tensor_type::bf16 ? 1.0f / 256 : c.type == tensor_type::f16 ? 1.0f / 2048 : 0.0f;
                    // Half precision is relative down to 2^-14; below, absolute (2^-25).
                    const float floor = c.type == tensor_type::f16 ? std::ldexp(1.0f, -25) : 0.0f;
                    ASSERT_LE(std::fabs(back[i] - x[i]), std::max(rel * std::fabs(x[i]), floor)) << type_name(c.type);
                }
            } else {
                check_round_trip(c, x, true);
            }
        }
    }
}

TEST(quantize, round_trip_degenerate_rows) {
    const std::int64_t n = 512;
    std::vector<std::vector<float>> rows;
    rows.emplace_back(n, 0.0f);
    rows.emplace_back(n, 3.25f);
    rows.emplace_back(n, -0.001f);
    std::vector<float> spike(n, 0.0f);
    spike[100] = 40.0f;
    rows.push_back(spike);
    std::vector<float> wide(n);
    for (std::int64_t i = 0; i < n; ++i) wide[i] = std::ldexp(1.0f, static_cast<int>(i % 24) - 12) * ((i & 1) ? -1.0f : 1.0f);
    rows.push_back(wide);
    for (const auto& c : round_trip_cases) {
        if (c.block == 1) continue;
        for (const auto& x : rows) check_round_trip(c, x, false);
    }
}

// --- activation quantization --------------------------------------------------------------

// llama.cpp's x86 quantize_row_q8_0, written out plainly.
std::vector<block_q8_0> llama_q8_0(const std::vector<float>& x) {
    std::vector<block_q8_0> out(x.size() / qk8_0);
    for (std::size_t b = 0; b < out.size(); ++b) {
        const float* v = x.data() + b * qk8_0;
        float amax = 0.0f;
        for (int j = 0; j < qk8_0; ++j) amax = std::max(amax, std::fabs(v[j]));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        out[b].d = fp32_to_fp16(d);
        for (int j = 0; j < qk8_0; ++j) out[b].qs[j] = static_cast<std::int8_t>(std::nearbyint(v[j] * id));
    }
    return out;
}

// llama.cpp's quantize_row_q8_K_ref, written out plainly.
std::vector<block_q8_k> llama_q8_k(const std::vector<float>& x) {
    std::vector<block_q8_k> out(x.size() / qk_k);
    std::memset(out.data(), 0, out.size() * sizeof(block_q8_k));
    for (std::size_t b = 0; b < out.size(); ++b) {
        const float* v = x.data() + b * qk_k;
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < qk_k; ++j) {
            if (std::fabs(v[j]) > amax) {
                amax = std::fabs(v[j]);
                max = v[j];
            }
        }
        if (amax == 0.0f) continue;  // d = 0, all quants 0 (moed also zeroes the sums)
        const float iscale = -127.f / max;
        for (int j = 0; j < qk_k; ++j) out[b].qs[j] = static_cast<std::int8_t>(std::min(127, static_cast<int>(std::nearbyint(iscale * v[j]))));
        for (int g = 0; g < qk_k / 16; ++g) {
            int sum = 0;
            for (int i = 0; i < 16; ++i) sum += out[b].qs[16 * g + i];
            out[b].bsums[g] = static_cast<std::int16_t>(sum);
        }
        out[b].d = 1 / iscale;
    }
    return out;
}

std::vector<std::vector<float>> activation_rows() {
    std::mt19937 rng(9);
    std::vector<std::vector<float>> rows;
    for (float scale : {1e-3f, 1.0f, 300.0f}) rows.push_back(test::random_floats(rng, 2304, scale));
    // Exact ties: amax 127 (q8_0 multiplier 1) and a leading -127 (q8_K iscale 1).
    std::vector<float> ties(512);
    for (std::size_t i = 0; i < ties.size(); ++i) ties[i] = static_cast<float>(static_cast<int>(i % 200) - 100) + 0.5f;
    for (std::size_t b = 0; b < ties.size(); b += 32) ties[b] = 127.0f;
    for (std::size_t b = 0; b < ties.size(); b += 256) ties[b] = -127.0f;
    rows.push_back(ties);
    // Zero blocks, and blocks where +amax and -amax both occur (the first one sets the sign).
    std::vector<float> special(768, 0.0f);
    for (std::size_t i = 256; i < 512; ++i) special[i] = (i % 3 == 0) ? 2.0f : (i % 3 == 1 ? -2.0f : 0.7f);
    for (std::size_t i = 512; i < 768; ++i) special[i] = (i == 600) ? -5.0f : (i == 601 ? 5.0f : 0.01f * static_cast<float>(i % 7));
    rows.push_back(special);
    return rows;
}

TEST(quantize, q8_0_activations_match_llama_formula) {
    for (const auto& x : activation_rows()) {
        const auto want = llama_q8_0(x);
        for (isa level : available_isas()) {
            isa_scope scope(level);
            std::vector<block_q8_0> got(want.size());
            quantize_activation_row(tensor_type::q8_0, x.data(), got.data(), static_cast<std::int64_t>(x.size()));
            for (std::size_t b = 0; b < want.size(); ++b) {
                ASSERT_EQ(got[b].d, want[b].d) << test::isa_label(level) << " block " << b;
                ASSERT_EQ(0, std::memcmp(got[b].qs, want[b].qs, qk8_0)) << test::isa_label(level) << " block " << b;
            }
        }
    }
}

TEST(quantize, q8_k_activations_match_llama_formula) {
    for (const auto& x : activation_rows()) {
        if (x.size() % qk_k != 0) continue;
        const auto want = llama_q8_k(x);
        for (tensor_type weight : {tensor_type::q4_k, tensor_type::q6_k, tensor_type::q2_k, tensor_type::q3_k,
                                   tensor_type::q5_k, tensor_type::iq4_xs}) {
            ASSERT_EQ(activation_type_for(weight), tensor_type::q8_k);
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<block_q8_k> got(want.size());
                quantize_activation_row(weight, x.data(), got.data(), static_cast<std::int64_t>(x.size()));
                for (std::size_t b = 0; b < want.size(); ++b) {
                    ASSERT_EQ(got[b].d, want[b].d) << test::isa_label(level) << " block " << b;
                    ASSERT_EQ(0, std::memcmp(got[b].qs, want[b].qs, qk_k)) << test::isa_label(level) << " block " << b;
                    ASSERT_EQ(0, std::memcmp(got[b].bsums, want[b].bsums, sizeof want[b].bsums)) << test::isa_label(level);
                }
            }
        }
    }
}

TEST(quantize, half_and_bf16_activations_every_tail) {
    std::mt19937 rng(10);
    EXPECT_EQ(activation_type_for(tensor_type::f16), tensor_type::f16);
    EXPECT_EQ(activation_type_for(tensor_type::bf16), tensor_type::bf16);
    EXPECT_EQ(activation_type_for(tensor_type::f32), tensor_type::f32);
    EXPECT_EQ(activation_type_for(tensor_type::q8_0), tensor_type::q8_0);
    for (std::int64_t n = 1; n <= 40; ++n) {
        std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n), 10.0f);
        for (isa level : available_isas()) {
            isa_scope scope(level);
            std::vector<std::uint16_t> h(static_cast<std::size_t>(n) + 1, 0xABCD), b(static_cast<std::size_t>(n) + 1, 0xABCD);
            std::vector<float> f(static_cast<std::size_t>(n));
            quantize_activation_row(tensor_type::f16, x.data(), h.data(), n);
            quantize_activation_row(tensor_type::bf16, x.data(), b.data(), n);
            quantize_activation_row(tensor_type::f32, x.data(), f.data(), n);
            for (std::int64_t i = 0; i < n; ++i) {
                ASSERT_EQ(h[i], fp32_to_fp16(x[i])) << test::isa_label(level) << " n=" << n;
                ASSERT_EQ(b[i], fp32_to_bf16(x[i])) << test::isa_label(level) << " n=" << n;
                ASSERT_EQ(f[i], x[i]);
            }
            ASSERT_EQ(h[n], 0xABCD) << "wrote past the end";
            ASSERT_EQ(b[n], 0xABCD) << "wrote past the end";
        }
    }
}

}  // namespace
}  // namespace moed::kernels
