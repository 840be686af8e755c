// Block layouts of Q2_K, Q3_K, Q5_K and IQ4_XS: hand-built blocks with chosen scales,
// minimums and codes (every scale bit and every high/sign bit position used) dequantize to
// the values the block definitions give. The blocks are packed here the way ggml's
// dequantize_row_* walk them (pointer loops over 128-value halves and 32/16-value runs), and
// the Q3_K scales are checked against ggml's 32-bit-word unpacking too, so a layout slip in
// moed's code and in this file alike would need the same slip twice. (Outside the suite,
// tools/llama_parity/kquant_parity.cpp compares dequantize_row with llama.cpp's own to_float
// on random blocks, bit for bit.) Also: the four types declare moed's geometry and support,
// take Q8_K activations, and a quantized row of each is valid for matmul (see the round-trip
// and matmul tests for accuracy).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/quantize.h"

namespace moed::kernels {
namespace {

// ggml-common.h's kvalues_iq4nl, copied here rather than taken from quant_blocks.h.
constexpr int iq4nl_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

TEST(quantize_kquant, geometry_and_activation_type) {
    struct geometry {
        tensor_type type;
        const char* name;
        std::uint32_t bytes;
    };
    for (const geometry& g : {geometry{tensor_type::q2_k, "Q2_K", 84}, geometry{tensor_type::q3_k, "Q3_K", 110},
                              geometry{tensor_type::q5_k, "Q5_K", 176}, geometry{tensor_type::iq4_xs, "IQ4_XS", 136}}) {
        const auto traits = traits_of(static_cast<std::uint32_t>(g.type));
        ASSERT_TRUE(traits);
        EXPECT_EQ(traits->name, g.name);
        EXPECT_EQ(traits->block_elems, 256u);
        EXPECT_EQ(traits->block_bytes, g.bytes);
        EXPECT_TRUE(traits->supported);
        EXPECT_EQ(activation_type_for(g.type), tensor_type::q8_k) << g.name;
        EXPECT_EQ(row_bytes(g.type, 512), 2u * g.bytes);
    }
    EXPECT_EQ(sizeof(block_q2_k), 84u);
    EXPECT_EQ(sizeof(block_q3_k), 110u);
    EXPECT_EQ(sizeof(block_q5_k), 176u);
    EXPECT_EQ(sizeof(block_iq4_xs), 136u);
}

TEST(quantize_kquant, q2_k_known_values) {
    block_q2_k b{};
    b.d = fp32_to_fp16(0.25f);
    b.dmin = fp32_to_fp16(0.125f);
    int sc[16], mn[16], codes[256];
    for (int g = 0; g < 16; ++g) {
        sc[g] = (g * 7 + 3) % 16;  // every value 0..15 once
        mn[g] = 15 - (g * 5) % 16;
        b.scales[g] = static_cast<std::uint8_t>(sc[g] | (mn[g] << 4));
    }
    for (int i = 0; i < 256; ++i) codes[i] = (i * 3 + i / 64) % 4;
    // ggml: for each 128-value half, shifts 0, 2, 4, 6 take 32 values from the half's 32 bytes.
    std::uint8_t* q = b.qs;
    const int* c = codes;
    for (int half = 0; half < 2; ++half, q += 32) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int l = 0; l < 32; ++l) q[l] |= static_cast<std::uint8_t>(*c++ << shift);
        }
    }
    std::vector<float> out(256);
    dequantize_row(tensor_type::q2_k, &b, out.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const float dl = 0.25f * static_cast<float>(sc[i / 16]);
        const float ml = 0.125f * static_cast<float>(mn[i / 16]);
        EXPECT_EQ(out[i], dl * static_cast<float>(codes[i]) - ml) << i;
    }
}

// ggml's unpacking of the 16 Q3_K scales through 32-bit words (dequantize_row_q3_K).
void ggml_q3_k_scales(const std::uint8_t* packed, int* scales) {
    std::uint32_t aux[4];
    std::memcpy(aux, packed, 12);
    const std::uint32_t kmask1 = 0x03030303u, kmask2 = 0x0f0f0f0fu;
    const std::uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    std::int8_t s[16];
    std::memcpy(s, aux, 16);
    for (int j = 0; j < 16; ++j) scales[j] = s[j] - 32;
}

TEST(quantize_kquant, q3_k_known_values_scale_packing_and_high_bits) {
    block_q3_k b{};
    b.d = fp32_to_fp16(-0.5f);  // the super-block scale may be negative
    // Both ends of -32..31 and values with each of the two high bits set.
    const int sc[16] = {-32, 31, -1, 0, 17, -17, 5, -5, 16, -16, 30, -30, 1, 2, -31, 15};
    // 6-bit u = scale + 32: low nibble in byte j (j < 8) or the high nibble of byte j - 8;
    // bits 4..5 at bit 2 * (j / 4) of byte 8 + j % 4.
    for (int j = 0; j < 16; ++j) {
        const int u = sc[j] + 32;
        b.scales[j % 8] |= static_cast<std::uint8_t>((u & 0xF) << (j < 8 ? 0 : 4));
        b.scales[8 + j % 4] |= static_cast<std::uint8_t>((u >> 4) << (2 * (j / 4)));
    }
    int unpacked[16];
    ggml_q3_k_scales(b.scales, unpacked);
    for (int j = 0; j < 16; ++j) ASSERT_EQ(unpacked[j], sc[j]) << "scale packing of " << j;

    int codes[256];  // -4..3; value = d * scale * code
    for (int i = 0; i < 256; ++i) codes[i] = (i * 5 + i / 32) % 8 - 4;
    // ggml: per 128-value half, shifts 0..6 take 32 values; the high bit of value l of the
    // j-th run (counting over both halves) is bit j of hmask[l], set when the code is >= 0.
    std::uint8_t* q = b.qs;
    const int* c = codes;
    std::uint8_t m = 1;
    for (int half = 0; half < 2; ++half, q += 32) {
        for (int shift = 0; shift < 8; shift += 2, m = static_cast<std::uint8_t>(m << 1)) {
            for (int l = 0; l < 32; ++l, ++c) {
                const int u = *c + 4;
                q[l] |= static_cast<std::uint8_t>((u & 3) << shift);
                if (u >= 4) b.hmask[l] |= m;
            }
        }
    }
    std::vector<float> out(256);
    dequantize_row(tensor_type::q3_k, &b, out.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const float dl = -0.5f * static_cast<float>(sc[i / 16]);
        EXPECT_EQ(out[i], dl * static_cast<float>(codes[i])) << i;
    }
}

// Packs 8 six-bit scales and mins the way ggml's get_scale_min_k4 reads them.
void pack_k4_scales(const int* sc, const int* mn, std::uint8_t* q) {
    std::memset(q, 0, k_scale_size);
    for (int j = 0; j < 4; ++j) {
        q[j] = static_cast<std::uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = static_cast<std::uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
        q[j + 8] = static_cast<std::uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
}

TEST(quantize_kquant, q5_k_known_values_and_fifth_bits) {
    block_q5_k b{};
    b.d = fp32_to_fp16(0.25f);
    b.dmin = fp32_to_fp16(0.0625f);
    const int sc[8] = {63, 1, 32, 17, 0, 48, 21, 62};
    const int mn[8] = {5, 63, 40, 0, 31, 16, 59, 33};
    pack_k4_scales(sc, mn, b.scales);
    int codes[256];  // 0..31
    for (int i = 0; i < 256; ++i) codes[i] = (i * 13 + i / 32) % 32;
    // ggml: per 64 values, 32 low nibbles then 32 high nibbles of 32 bytes; the fifth bits
    // of the two runs are bits u1 = 1 << 2j and u2 = 2 << 2j of qh[l].
    std::uint8_t* ql = b.qs;
    for (int j = 0; j < 4; ++j, ql += 32) {
        for (int l = 0; l < 32; ++l) {
            const int lo = codes[64 * j + l], hi = codes[64 * j + 32 + l];
            ql[l] = static_cast<std::uint8_t>((lo & 15) | ((hi & 15) << 4));
            if (lo & 16) b.qh[l] |= static_cast<std::uint8_t>(1 << (2 * j));
            if (hi & 16) b.qh[l] |= static_cast<std::uint8_t>(2 << (2 * j));
        }
    }
    std::vector<float> out(256);
    dequantize_row(tensor_type::q5_k, &b, out.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const float d1 = 0.25f * static_cast<float>(sc[i / 32]);
        const float m1 = 0.0625f * static_cast<float>(mn[i / 32]);
        EXPECT_EQ(out[i], d1 * static_cast<float>(codes[i]) - m1) << i;
    }
}

TEST(quantize_kquant, iq4_xs_known_values) {
    block_iq4_xs b{};
    b.d = fp32_to_fp16(0.125f);
    const int ls[8] = {-32, 31, 0, -1, 16, -17, 7, -9};  // scale - 32
    for (int j = 0; j < 8; ++j) {
        const int u = ls[j] + 32;
        b.scales_l[j / 2] |= static_cast<std::uint8_t>((u & 0xF) << (4 * (j % 2)));
        b.scales_h |= static_cast<std::uint16_t>((u >> 4) << (2 * j));
    }
    int codes[256];
    for (int i = 0; i < 256; ++i) codes[i] = (i * 7 + i / 16) % 16;
    // ggml: sub-block j's values 0..15 are the low nibbles of its 16 bytes, 16..31 the high.
    for (int j = 0; j < 8; ++j) {
        for (int l = 0; l < 16; ++l) {
            b.qs[16 * j + l] = static_cast<std::uint8_t>(codes[32 * j + l] | (codes[32 * j + 16 + l] << 4));
        }
    }
    std::vector<float> out(256);
    dequantize_row(tensor_type::iq4_xs, &b, out.data(), 256);
    for (int i = 0; i < 256; ++i) {
        const float dl = 0.125f * static_cast<float>(ls[i / 32]);
        EXPECT_EQ(out[i], dl * static_cast<float>(iq4nl_levels[codes[i]])) << i;
    }
}

// Blocks are independent: a second super-block of a row is read from its own bytes.
TEST(quantize_kquant, rows_of_several_blocks) {
    for (tensor_type type : {tensor_type::q2_k, tensor_type::q3_k, tensor_type::q5_k, tensor_type::iq4_xs}) {
        std::vector<float> x(768);
        for (std::size_t i = 0; i < x.size(); ++i) {
            x[i] = static_cast<float>(static_cast<int>(i % 37) - 18) * (i < 256 ? 0.01f : i < 512 ? 1.0f : 100.0f);
        }
        std::vector<std::byte> row(row_bytes(type, 768));
        quantize_row(type, x.data(), row.data(), 768);
        std::vector<float> whole(768), part(256);
        dequantize_row(type, row.data(), whole.data(), 768);
        for (int b = 0; b < 3; ++b) {
            dequantize_row(type, row.data() + b * row_bytes(type, 256), part.data(), 256);
            EXPECT_EQ(0, std::memcmp(part.data(), whole.data() + 256 * b, 256 * sizeof(float))) << type_name(type) << " block " << b;
        }
        // Each block keeps its own scale: the small first block is not flattened to zeros.
        float amax0 = 0.0f;
        for (int i = 0; i < 256; ++i) amax0 = std::max(amax0, std::abs(whole[static_cast<std::size_t>(i)]));
        EXPECT_GT(amax0, 0.1f) << type_name(type);
    }
}

}  // namespace
}  // namespace moed::kernels
