// Parity with llama.cpp: Q2_K, Q3_K, Q5_K and IQ4_XS matrix products, and at the AVX2 level
// Q4_0, IQ4_NL and MXFP4 ones (which llama.cpp repacks: its gemv/gemm_*_8x8_q8_0 order),
// give, bit for bit, the outputs llama.cpp's CPU backend computed for the same inputs
// (kquant_parity_data.h: 8 rows of 512 random-byte weights with finite scales, 5 tokens of
// activations). The expected bits come from tools/llama_parity/kquant_parity.cpp run against
// llama.cpp 34af94cd9 built with GGML_NATIVE=OFF for AVX2 (ggml_vec_dot_*_q8_K, and the
// repacked 32-value types) and for AVX-512 (the same dot products, and for Q2_K the repacked
// ggml_gemv_q2_K_8x8_q8_K, whose one-token order moed keeps for every token), one thread. The AVX2 level is checked against the AVX2 build and the AVX-512 level
// against the AVX-512 build (they agree except for Q2_K), each for the whole batch and for
// every token alone. A different lane layout or float order in a kernel changes some of these
// bits; the scalar kernels are not held to them (their order is their own).
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/matmul.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/kernels/kquant_parity_data.h"

namespace moed::kernels {
namespace {

using test::parity_cols;
using test::parity_rows;
using test::parity_tokens;

// llama.cpp's outputs y[token * rows + row] as float bits.
const std::uint32_t want_q2_k_avx2[parity_rows * parity_tokens] = {
    0xbd8901d0, 0xc02ca287, 0x3fa61e26, 0x3fa1e56f, 0x3e639dc0, 0xbf0f00fe, 0x3fc15a34, 0x3fd6bd8b,
    0xbfd4c85e, 0xc0de8afb, 0x40c11e9c, 0xc0444b8e, 0x3f83e5b0, 0xc0d6f2bc, 0x408e3ae0, 0x404336df,
    0x3fca3264, 0xc02d350c, 0xbee9f950, 0xbf84d0aa, 0x4005eab1, 0xbeed2c14, 0x3f7bfdd8, 0x3fd93af8,
    0xbf569aea, 0x3fe49920, 0x3ff7b21b, 0x3f8472d0, 0x3da98210, 0x3f57764a, 0xbf0bceca, 0x4021c31e,
    0xc0564ae9, 0x3ff564a6, 0x3f55cc1f, 0xc102f13c, 0x3fd20d3a, 0xc0f1389f, 0x4094e2cc, 0x4045113a,
};
const std::uint32_t want_q2_k_avx512[parity_rows * parity_tokens] = {
    0xbd8901d0, 0xc02ca288, 0x3fa61e28, 0x3fa1e570, 0x3e639dc2, 0xbf0f00fa, 0x3fc15a33, 0x3fd6bd8a,
    0xbfd4c85e, 0xc0de8afc, 0x40c11e9a, 0xc0444b90, 0x3f83e5b2, 0xc0d6f2bd, 0x408e3ae1, 0x404336e0,
    0x3fca3264, 0xc02d350b, 0xbee9f956, 0xbf84d0a8, 0x4005eab1, 0xbeed2c16, 0x3f7bfdd5, 0x3fd93af9,
    0xbf569aec, 0x3fe4991e, 0x3ff7b21a, 0x3f8472cc, 0x3da98210, 0x3f577648, 0xbf0bcecc, 0x4021c31e,
    0xc0564aea, 0x3ff564a4, 0x3f55cc18, 0xc102f13c, 0x3fd20d3c, 0xc0f1389e, 0x4094e2cc, 0x4045113b,
};
const std::uint32_t want_q3_k[parity_rows * parity_tokens] = {
    0x409524e0, 0xc0a918df, 0x3fa27182, 0xc160e941, 0x3f6b518a, 0xc10188ac, 0x3e88afa4, 0xc04dff37,
    0x403bacf4, 0xc1083fa9, 0x41217216, 0xc17952c9, 0xc028faba, 0xc129450f, 0x419b6967, 0xc1138ee4,
    0x40b063f6, 0xc1772a79, 0x3f54be5c, 0xc1ab549c, 0x3f9fa000, 0xc16ec652, 0x406bd7b3, 0xbe32a1e0,
    0xc0ef6164, 0xc1354f88, 0xc0a5b724, 0x40452358, 0x3f326b14, 0xc00751f0, 0xbe89a9f8, 0xc0a10a1c,
    0x41a17d40, 0xc18e2e0a, 0x408817d4, 0x3fea60c6, 0xc120887f, 0xc211f0c7, 0x40dc0fb5, 0xc1929d46,
};
const std::uint32_t want_q5_k[parity_rows * parity_tokens] = {
    0x4177ff64, 0x411a5c7a, 0xc2905dfc, 0xc22cec68, 0xc2953fd7, 0xc3814cfa, 0xc1b1bfe3, 0xc10f66cb,
    0x4417decc, 0x43d4fc5d, 0xc1440b6a, 0x4298a507, 0x438e7987, 0x42bf3391, 0x41c6d5db, 0x41bd5dd9,
    0xc3b2841a, 0xc2500450, 0xc2c17361, 0xc313251e, 0x41c243be, 0xc2b0b78c, 0xc2a26dee, 0x422913a6,
    0x438530ac, 0x4281a434, 0x4306b6a5, 0x42f2c89b, 0x432b1bcc, 0x4259865c, 0x42cca1ac, 0x421063c1,
    0x43a10348, 0x43be33bb, 0x4184eebf, 0x42caa376, 0xc30ec03d, 0xc25c7fa4, 0x4379a9ec, 0x414a1c0d,
};
const std::uint32_t want_iq4_xs[parity_rows * parity_tokens] = {
    0xc27a4742, 0xc2e61bd6, 0x4242f89a, 0xc1c91456, 0x42d8aa4e, 0x42e2eca3, 0xc228a02e, 0x40f9de70,
    0x43493066, 0x42e32200, 0xc318eb95, 0xc2d071c0, 0x438e9af2, 0x43a88a1c, 0xc3088038, 0x3f860780,
    0xc3ae424e, 0xc35019d1, 0x43312f92, 0x441ef382, 0xc30ca0c0, 0xc2936f18, 0x43760c8a, 0x438f08c8,
    0xc3355374, 0xc2f16176, 0xc2524893, 0xc3a2e3eb, 0xc3788792, 0x420a6573, 0x42861eb5, 0xc358be5e,
    0xc3b62dc8, 0xc40f3e1f, 0x44203529, 0x42b2e6f4, 0x43385e86, 0xc33156a1, 0x439d3c6e, 0x4442039a,
};
const std::uint32_t want_q4_0_avx2[parity_rows * parity_tokens] = {
    0xbbe2a11e, 0xbfbd1760, 0xbe5d84c1, 0xbf5e13c1, 0x3f1b9537, 0x3fa42f60, 0x3be637d8, 0x3e66b111,
    0x403cc539, 0xbf593730, 0x3fe4edb8, 0x3eace420, 0xbea70719, 0x3fe36ea5, 0x4015888d, 0x3eed24cc,
    0xbe3e84c3, 0x3ff75dff, 0xc001f273, 0xbe915104, 0x3edfbc25, 0xbfd122e4, 0xbfe3e1a3, 0x3f565031,
    0xbf4a5ea3, 0xbeae4469, 0x3e1b3e56, 0x3f3a7a74, 0x3f4ac749, 0x3efb562d, 0x3dcda36c, 0xbe917df6,
    0x3fac267f, 0xbedec829, 0xbf798aed, 0xbe7d2b2c, 0x3fb29b11, 0xc0921acc, 0x3f05c08d, 0xbf7f792c,
};
const std::uint32_t want_iq4_nl_avx2[parity_rows * parity_tokens] = {
    0xbf04b71a, 0xc1a50f25, 0xc08f4038, 0xc15a3e78, 0x4106bd22, 0x419a86f0, 0x3f998fe4, 0x4048071a,
    0x4230aac5, 0xc10ebd68, 0x41da7185, 0x409932ea, 0xc0a3821d, 0x41d60632, 0x4206a2d8, 0x412325b2,
    0xbfbc63c6, 0x41dc69a7, 0xc1e5bc6f, 0xc00d8c30, 0x40efcfd6, 0xc1b6673b, 0xc1dde278, 0x4133f37d,
    0xc13a24f0, 0xc097cd4f, 0x403a64a4, 0x41227911, 0x414704b9, 0x40bedb1c, 0x40494265, 0xc04a1a28,
    0x41a1c763, 0xc0d2e162, 0xc1659bbc, 0xbf7e9ca0, 0x41884aba, 0xc28850d0, 0x41052936, 0xc18916c1,
};
const std::uint32_t want_mxfp4_avx2[parity_rows * parity_tokens] = {
    0x4199125e, 0xc0a76125, 0x416ebc6c, 0xc0f61461, 0x411eacac, 0xc1ea0779, 0xc09be7b9, 0x4091f6a6,
    0x42a55132, 0xc1a6d949, 0x4161a9d3, 0x3f710372, 0xc24975f4, 0x41218778, 0x4056381c, 0xc060c330,
    0xc155d2ea, 0xc167b2a1, 0x411aedca, 0xc0449f4e, 0xc1d7e169, 0x40e83f32, 0x403afdd5, 0x3f7dd118,
    0x40da328c, 0xc0d440cf, 0xc08a50f6, 0x3f919fc4, 0x3faa8b2c, 0x40a512b0, 0xc0c8a5bf, 0x3eb86190,
    0xc146a800, 0x41f3bf78, 0x3f56a428, 0xc27c260b, 0x3f9135a8, 0x427ca27f, 0x417d98cf, 0x41deb218,
};
// The outputs of the repacked types at `level`, or null where moed does not follow llama.cpp
// (AVX-512: both builds repack these types, moed's AVX-512 kernels keep vec_dot's order).
const std::uint32_t* expected(tensor_type type, isa level) {
    switch (type) {
        case tensor_type::q2_k: return level == isa::avx512 ? want_q2_k_avx512 : want_q2_k_avx2;
        case tensor_type::q3_k: return want_q3_k;
        case tensor_type::q5_k: return want_q5_k;
        case tensor_type::iq4_xs: return want_iq4_xs;
        case tensor_type::q4_0: return level == isa::avx2 ? want_q4_0_avx2 : nullptr;
        case tensor_type::iq4_nl: return level == isa::avx2 ? want_iq4_nl_avx2 : nullptr;
        case tensor_type::mxfp4: return level == isa::avx2 ? want_mxfp4_avx2 : nullptr;
        default: return nullptr;
    }
}

std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

TEST(kquant_llama_parity, outputs_equal_llama_cpp_bitwise) {
    compute_pool pool(2);
    activation_buffer act;
    const std::vector<float> x = test::parity_activations(parity_tokens * parity_cols, 13 + parity_tokens);
    for (tensor_type type : {tensor_type::q2_k, tensor_type::q3_k, tensor_type::q5_k, tensor_type::iq4_xs, tensor_type::q4_0,
                             tensor_type::iq4_nl, tensor_type::mxfp4}) {
        const std::vector<std::byte> w = test::parity_blocks(type, parity_rows * parity_cols, 11 + parity_rows + parity_cols);
        const matrix_view view{type, w.data(), parity_rows, parity_cols, row_bytes(type, parity_cols)};
        for (isa level : test::available_isas()) {
            if (level == isa::scalar) continue;
            test::isa_scope scope(level);
            const std::uint32_t* want = expected(type, level);
            if (want == nullptr) continue;
            std::vector<float> batched(parity_rows * parity_tokens);
            matmul(view, x.data(), parity_tokens, batched.data(), parity_rows, pool, act);
            for (std::int64_t t = 0; t < parity_tokens; ++t) {
                std::vector<float> alone(parity_rows);
                matmul(view, x.data() + t * parity_cols, 1, alone.data(), parity_rows, pool, act);
                for (std::int64_t r = 0; r < parity_rows; ++r) {
                    const std::size_t i = static_cast<std::size_t>(t * parity_rows + r);
                    const std::string where = std::string(type_name(type)) + " " + test::isa_label(level) +
                                              " token " + std::to_string(t) + " row " + std::to_string(r);
                    EXPECT_EQ(bits_of(batched[i]), want[i]) << where << " in the batch: " << batched[i];
                    EXPECT_EQ(bits_of(alone[static_cast<std::size_t>(r)]), want[i]) << where << " alone";
                }
            }
        }
    }
}

// The inputs themselves (FNV-1a of their bytes, taken when the expected bits were made): a
// change to the generator would make those bits meaningless, and this says so directly.
TEST(kquant_llama_parity, inputs_are_unchanged) {
    const std::vector<float> x = test::parity_activations(parity_tokens * parity_cols, 13 + parity_tokens);
    const std::vector<std::byte> w = test::parity_blocks(tensor_type::q3_k, parity_rows * parity_cols, 11 + parity_rows + parity_cols);
    std::uint64_t hx = 1469598103934665603ull, hw = 1469598103934665603ull;
    for (float v : x) hx = (hx ^ bits_of(v)) * 1099511628211ull;
    for (std::byte b : w) hw = (hw ^ static_cast<std::uint64_t>(b)) * 1099511628211ull;
    EXPECT_EQ(hx, 8168049908210002444ull);
    EXPECT_EQ(hw, 3272761177983578670ull);
}

}  // namespace
}  // namespace moed::kernels
