// Block layouts and conversions:
// - known values: hand-built Q8_0, Q4_K (both halves of the 6-bit scale packing), Q6_K,
//   Q8_K, Q4_0, Q4_1, Q5_0, Q5_1 (both halves of qh), Q8_1, IQ4_NL and MXFP4 blocks
//   dequantize to the values their definitions give; MXFP4 is decoded from the OCP E2M1
//   bit fields and E8M0 exponents (0 and 1: subnormal scales, 255 as ggml reads it), not
//   from the kernel's table (Q2_K, Q3_K, Q5_K and IQ4_XS: quantize_kquant_test.cpp);
// - round trips: quantize_row then dequantize_row stays within per-type error bounds (per
//   value, relative to the block's range, and NMSE on Gaussian data), also on degenerate
//   rows (zeros, constants, one spike, huge dynamic range);
// - activation quantization: at every ISA level the bytes equal those of a plain scalar
//   re-implementation of llama.cpp's x86 quantize_row_q8_0, quantize_row_q8_1 and
//   quantize_row_q8_K_ref (including exact .5 ties, which round to even), f16/bf16
//   activations equal fp32_to_fp16/fp32_to_bf16 per element for every tail length, and
//   each weight type converts its activations to llama.cpp's vec_dot_type.
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

// --- known values of the 32-value block types ---

TEST(quantize, block_geometry_of_the_32_value_types) {
    struct geometry {
        tensor_type type;
        std::size_t bytes;
    };
    const geometry types[] = {{tensor_type::q4_0, sizeof(block_q4_0)},    {tensor_type::q4_1, sizeof(block_q4_1)},
                              {tensor_type::q5_0, sizeof(block_q5_0)},    {tensor_type::q5_1, sizeof(block_q5_1)},
                              {tensor_type::q8_1, sizeof(block_q8_1)},    {tensor_type::iq4_nl, sizeof(block_iq4_nl)},
                              {tensor_type::mxfp4, sizeof(block_mxfp4)}};
    for (const geometry& g : types) {
        const auto traits = traits_of(static_cast<std::uint32_t>(g.type));
        ASSERT_TRUE(traits.has_value());
        EXPECT_TRUE(traits->supported) << traits->name;
        EXPECT_EQ(traits->block_elems, 32u) << traits->name;
        EXPECT_EQ(traits->block_bytes, g.bytes) << traits->name;
        EXPECT_EQ(row_bytes(g.type, 96), 3 * g.bytes) << traits->name;
    }
}

// Nibble bytes for 32 codes: byte j holds code j (low) and code j + 16 (high).
void pack_codes(const int* codes, std::uint8_t* qs) {
    for (int j = 0; j < 16; ++j) qs[j] = static_cast<std::uint8_t>(codes[j] | (codes[j + 16] << 4));
}

// Bit 4 of code j at bit j of the little-endian 32-bit qh.
void pack_high_bits(const int* codes, std::uint8_t* qh) {
    std::uint32_t bits = 0;
    for (int j = 0; j < 32; ++j) bits |= static_cast<std::uint32_t>((codes[j] >> 4) & 1) << j;
    for (int k = 0; k < 4; ++k) qh[k] = static_cast<std::uint8_t>(bits >> (8 * k));
}

std::vector<float> dequantized(tensor_type type, const void* block) {
    std::vector<float> out(32);
    dequantize_row(type, block, out.data(), 32);
    return out;
}

TEST(quantize, q4_0_known_values) {
    block_q4_0 b{};
    b.d = fp32_to_fp16(-0.75f);
    int codes[32];
    for (int j = 0; j < 32; ++j) codes[j] = (j * 5 + 3) % 16;  // every code, both nibbles
    pack_codes(codes, b.qs);
    const auto out = dequantized(tensor_type::q4_0, &b);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], static_cast<float>(codes[j] - 8) * -0.75f) << j;
}

TEST(quantize, q4_1_known_values) {
    block_q4_1 b{};
    b.d = fp32_to_fp16(0.125f);
    b.m = fp32_to_fp16(-1.5f);
    int codes[32];
    for (int j = 0; j < 32; ++j) codes[j] = (j * 7) % 16;
    pack_codes(codes, b.qs);
    const auto out = dequantized(tensor_type::q4_1, &b);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], static_cast<float>(codes[j]) * 0.125f - 1.5f) << j;
}

TEST(quantize, q5_0_known_values) {
    block_q5_0 b{};
    b.d = fp32_to_fp16(0.25f);
    // Every code once, so bit 4 is set in both halves of qh in an irregular pattern.
    int codes[32];
    for (int j = 0; j < 32; ++j) codes[j] = (j * 13 + 7) % 32;
    for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<std::uint8_t>((codes[j] & 15) | ((codes[j + 16] & 15) << 4));
    pack_high_bits(codes, b.qh);
    const auto out = dequantized(tensor_type::q5_0, &b);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], static_cast<float>(codes[j] - 16) * 0.25f) << j;
}

TEST(quantize, q5_1_known_values) {
    block_q5_1 b{};
    b.d = fp32_to_fp16(0.0625f);
    b.m = fp32_to_fp16(0.5f);
    int codes[32];
    for (int j = 0; j < 32; ++j) codes[j] = 31 - j;  // 31..0: every code once
    for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<std::uint8_t>((codes[j] & 15) | ((codes[j + 16] & 15) << 4));
    pack_high_bits(codes, b.qh);
    const auto out = dequantized(tensor_type::q5_1, &b);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], static_cast<float>(codes[j]) * 0.0625f + 0.5f) << j;
}

TEST(quantize, q8_1_known_values) {
    block_q8_1 b{};
    b.d = fp32_to_fp16(0.5f);
    b.s = fp32_to_fp16(1234.0f);  // not part of the values
    for (int j = 0; j < 32; ++j) b.qs[j] = static_cast<std::int8_t>(j * 8 - 127);
    const auto out = dequantized(tensor_type::q8_1, &b);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], 0.5f * static_cast<float>(j * 8 - 127)) << j;
}

TEST(quantize, iq4_nl_known_values) {
    // The IQ4_NL grid as ggml-common.h defines it.
    const int grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    block_iq4_nl b{};
    b.d = fp32_to_fp16(-0.03125f);
    int codes[32];
    for (int j = 0; j < 32; ++j) codes[j] = (j * 9 + 4) % 16;
    pack_codes(codes, b.qs);
    const auto out = dequantized(tensor_type::iq4_nl, &b);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(out[j], -0.03125f * static_cast<float>(grid[codes[j]])) << j;
}

// An OCP FP4 E2M1 code: sign bit 3, exponent bits 2..1 (bias 1), mantissa bit 0; exponent 0
// is subnormal (0 or 0.5).
double e2m1(int code) {
    const int sign = code >> 3, exp = (code >> 1) & 3, mant = code & 1;
    const double mag = exp == 0 ? 0.5 * mant : std::ldexp(1.0 + 0.5 * mant, exp - 1);
    return sign ? -mag : mag;
}

TEST(quantize, mxfp4_known_values_and_e8m0_edges) {
    // 0 and 1: subnormal scales 2^-127 / 2^-126 halved; 2: the first normal one; 127: 1;
    // 254: the largest; 255 (NaN in the OCP format) read as ggml reads it, 2^128 halved.
    for (int e : {0, 1, 2, 3, 100, 126, 127, 128, 200, 254, 255}) {
        block_mxfp4 b{};
        b.e = static_cast<std::uint8_t>(e);
        int codes[32];
        for (int j = 0; j < 32; ++j) codes[j] = (j * 3 + e) % 16;  // every code, negatives too
        pack_codes(codes, b.qs);
        const auto out = dequantized(tensor_type::mxfp4, &b);
        for (int j = 0; j < 32; ++j) {
            const double want = e2m1(codes[j]) * std::ldexp(1.0, e - 127);
            EXPECT_EQ(out[j], static_cast<float>(want)) << "e=" << e << " code " << codes[j];
        }
    }
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
    // Q4_0 / Q5_0: the extreme value is exact; the opposite one may clip by one step
    // d = amax / 8 (/ 16), the others are within half a step (plus the f16 rounding of d).
    {tensor_type::q4_0, 32, 1.0f / 8.0f * 1.01f, 0.0f, 1e-2},
    {tensor_type::q5_0, 32, 1.0f / 16.0f * 1.01f, 0.0f, 3e-3},
    // Q4_1 / Q5_1: half a step of the block's range / 15 (/ 31), plus the f16 roundings of d
    // (over up to 31 steps) and of m.
    {tensor_type::q4_1, 32, 0.5f / 15.0f * 1.03f, 1e-3f, 8e-3},
    {tensor_type::q5_1, 32, 0.5f / 31.0f * 1.03f, 1e-3f, 2e-3},
    // IQ4_NL: half the widest gap of the grid (24, between 89 and 113) times d, where d is
    // near amax / 127 (the extreme value sits at or near an end of the grid).
    {tensor_type::iq4_nl, 32, 0.11f, 0.0f, 8e-3},
    // MXFP4: half the widest gap of the E2M1 grid (2, between 4 and 6) times the power-of-two
    // scale (< amax / 3), or the clip of the extreme values when the next smaller scale
    // fits the block better.
    {tensor_type::mxfp4, 32, 0.5f, 0.0f, 2e-2},
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

// llama.cpp's x86 quantize_row_q8_1, written out plainly: Q8_0's d and quants, and
// s = fp16(d * sum of the quants) with the unrounded d.
std::vector<block_q8_1> llama_q8_1(const std::vector<float>& x) {
    std::vector<block_q8_1> out(x.size() / 32);
    for (std::size_t b = 0; b < out.size(); ++b) {
        const float* v = x.data() + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; ++j) {
            out[b].qs[j] = static_cast<std::int8_t>(std::nearbyint(v[j] * id));
            sum += out[b].qs[j];
        }
        out[b].d = fp32_to_fp16(d);
        out[b].s = fp32_to_fp16(d * static_cast<float>(sum));
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

TEST(quantize, q8_1_activations_match_llama_formula) {
    for (const auto& x : activation_rows()) {
        const auto want = llama_q8_1(x);
        for (tensor_type weight : {tensor_type::q4_1, tensor_type::q5_1}) {
            ASSERT_EQ(activation_type_for(weight), tensor_type::q8_1);
            for (isa level : available_isas()) {
                isa_scope scope(level);
                std::vector<block_q8_1> got(want.size());
                quantize_activation_row(weight, x.data(), got.data(), static_cast<std::int64_t>(x.size()));
                for (std::size_t b = 0; b < want.size(); ++b) {
                    ASSERT_EQ(got[b].d, want[b].d) << test::isa_label(level) << " block " << b;
                    ASSERT_EQ(got[b].s, want[b].s) << test::isa_label(level) << " block " << b;
                    ASSERT_EQ(0, std::memcmp(got[b].qs, want[b].qs, 32)) << test::isa_label(level) << " block " << b;
                }
            }
        }
    }
}

// The activation type of every weight type is llama.cpp's vec_dot_type for it, and the
// Q8_0 conversion is the same whichever of its weight types asks for it.
TEST(quantize, activation_types_are_llama_vec_dot_types) {
    EXPECT_EQ(activation_type_for(tensor_type::q4_0), tensor_type::q8_0);
    EXPECT_EQ(activation_type_for(tensor_type::q5_0), tensor_type::q8_0);
    EXPECT_EQ(activation_type_for(tensor_type::iq4_nl), tensor_type::q8_0);
    EXPECT_EQ(activation_type_for(tensor_type::mxfp4), tensor_type::q8_0);
    EXPECT_EQ(activation_type_for(tensor_type::q4_1), tensor_type::q8_1);
    EXPECT_EQ(activation_type_for(tensor_type::q5_1), tensor_type::q8_1);
    const std::vector<float> x = activation_rows()[1];
    const auto want = llama_q8_0(x);
    for (tensor_type weight : {tensor_type::q4_0, tensor_type::q5_0, tensor_type::iq4_nl, tensor_type::mxfp4}) {
        for (isa level : available_isas()) {
            isa_scope scope(level);
            std::vector<block_q8_0> got(want.size());
            quantize_activation_row(weight, x.data(), got.data(), static_cast<std::int64_t>(x.size()));
            ASSERT_EQ(0, std::memcmp(got.data(), want.data(), want.size() * sizeof(block_q8_0)))
                << type_name(weight) << " " << test::isa_label(level);
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
