// The float order of the 32-value block kernels (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4).
// matmul_test.cpp checks them against the double reference within rounding; this file
// checks the rounding itself, bit for bit, because greedy ids match llama.cpp's at near ties
// only if every float operation matches:
// - AVX2 and AVX-512 give what llama.cpp's AVX2 vec_dot gives (ggml-cpu/arch/x86/quants.c,
//   which its AVX-512 builds use for these types too), re-implemented plainly below from
//   the block definitions: exact integer sums of each 4 consecutive products (8 lanes),
//   then per block a fused multiply-add of d_w * d_x into the lanes (Q4_0/Q5_0/Q4_1/Q5_1
//   one accumulator; IQ4_NL/MXFP4 even blocks into one, odd into another, a last odd block
//   added after the reduction), Q4_1/Q5_1's minimums as a scalar fused sum of m * s, and
//   llama.cpp's horizontal sum.
// - except that AVX2 gives, for Q4_0, IQ4_NL and MXFP4 matrices of a multiple of 8 rows,
//   what llama.cpp's repacked gemv and gemm give (ggml-cpu/arch/x86/repack.cpp): one float
//   per row and token, a fused multiply-add of each block's integer sum with d_w * d_x.
// - the scalar kernels give ggml's portable vec_dot (*_generic) with no fusion.
// Weights are random bytes (every code, every Q5 high bit) with random finite scales, MXFP4
// exponents from 0 (subnormal scales) to 140; rows of 1, 3, 8 and 9 blocks (odd counts end
// in the kernels' single-block paths); 9 and 16 rows (4-row tiles and a lone row; repacked
// or not); one token alone and six in a batch.
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/quantize.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

using test::available_isas;
using test::isa_scope;

const tensor_type q32_types[] = {tensor_type::q4_0, tensor_type::q4_1,   tensor_type::q5_0,
                                 tensor_type::q5_1, tensor_type::iq4_nl, tensor_type::mxfp4};

// A weight block decoded from its definition: 32 integer values, the scale, the minimum.
struct decoded_block {
    int w[32];
    float d;
    float m;
};

int nibble(const std::uint8_t* qs, int j) { return j < 16 ? qs[j] & 0xF : qs[j - 16] >> 4; }

int high_bit(const std::uint8_t* qh, int j) { return (qh[j / 8] >> (j % 8)) & 1; }

// The doubled OCP E2M1 value of a 4-bit code (sign, 2 exponent bits, 1 mantissa bit).
int doubled_e2m1(int code) {
    const int exp = (code >> 1) & 3, mant = code & 1;
    const int mag = exp == 0 ? mant : (2 + mant) << (exp - 1);
    return code & 8 ? -mag : mag;
}

decoded_block decode(tensor_type type, const std::byte* row, int b) {
    static const int iq4_nl_grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    decoded_block out{};
    switch (type) {
        case tensor_type::q4_0: {
            const auto& blk = reinterpret_cast<const block_q4_0*>(row)[b];
            for (int j = 0; j < 32; ++j) out.w[j] = nibble(blk.qs, j) - 8;
            out.d = fp16_to_fp32(blk.d);
            break;
        }
        case tensor_type::q4_1: {
            const auto& blk = reinterpret_cast<const block_q4_1*>(row)[b];
            for (int j = 0; j < 32; ++j) out.w[j] = nibble(blk.qs, j);
            out.d = fp16_to_fp32(blk.d);
            out.m = fp16_to_fp32(blk.m);
            break;
        }
        case tensor_type::q5_0: {
            const auto& blk = reinterpret_cast<const block_q5_0*>(row)[b];
            for (int j = 0; j < 32; ++j) out.w[j] = (nibble(blk.qs, j) | high_bit(blk.qh, j) << 4) - 16;
            out.d = fp16_to_fp32(blk.d);
            break;
        }
        case tensor_type::q5_1: {
            const auto& blk = reinterpret_cast<const block_q5_1*>(row)[b];
            for (int j = 0; j < 32; ++j) out.w[j] = nibble(blk.qs, j) | high_bit(blk.qh, j) << 4;
            out.d = fp16_to_fp32(blk.d);
            out.m = fp16_to_fp32(blk.m);
            break;
        }
        case tensor_type::iq4_nl: {
            const auto& blk = reinterpret_cast<const block_iq4_nl*>(row)[b];
            for (int j = 0; j < 32; ++j) out.w[j] = iq4_nl_grid[nibble(blk.qs, j)];
            out.d = fp16_to_fp32(blk.d);
            break;
        }
        case tensor_type::mxfp4: {
            const auto& blk = reinterpret_cast<const block_mxfp4*>(row)[b];
            for (int j = 0; j < 32; ++j) out.w[j] = doubled_e2m1(nibble(blk.qs, j));
            out.d = std::ldexp(1.0f, blk.e - 128);  // the E8M0 scale, halved for the doubled values
            break;
        }
        default: ADD_FAILURE() << "not a 32-value block type";
    }
    return out;
}

// An activation block: its quants, d and (Q8_1) s.
struct act_block {
    const std::int8_t* q;
    float d, s;
};

act_block act_of(tensor_type act, const std::byte* row, int b) {
    if (act == tensor_type::q8_1) {
        const auto& blk = reinterpret_cast<const block_q8_1*>(row)[b];
        return {blk.qs, fp16_to_fp32(blk.d), fp16_to_fp32(blk.s)};
    }
    const auto& blk = reinterpret_cast<const block_q8_0*>(row)[b];
    return {blk.qs, fp16_to_fp32(blk.d), 0.0f};
}

// llama.cpp's hsum_float_8: high half plus low half, then pairs, then the last two.
float hsum8(const float* v) {
    float s[4];
    for (int k = 0; k < 4; ++k) s[k] = v[k + 4] + v[k];
    const float s0 = s[0] + s[2], s1 = s[1] + s[3];
    return s0 + s1;
}

bool paired(tensor_type t) { return t == tensor_type::iq4_nl || t == tensor_type::mxfp4; }
bool with_min(tensor_type t) { return t == tensor_type::q4_1 || t == tensor_type::q5_1; }

float llama_avx2_dot(tensor_type type, const std::byte* w, const std::byte* x, int nb) {
    const tensor_type act = activation_type_for(type);
    float acc[2][8] = {};
    float summs = 0.0f;
    const int nb_lanes = paired(type) ? nb / 2 * 2 : nb;
    for (int b = 0; b < nb_lanes; ++b) {
        const decoded_block wb = decode(type, w, b);
        const act_block xb = act_of(act, x, b);
        const float d = wb.d * xb.d;
        float* a = acc[paired(type) ? b % 2 : 0];
        for (int i = 0; i < 8; ++i) {
            int lane = 0;
            for (int k = 0; k < 4; ++k) lane += wb.w[4 * i + k] * xb.q[4 * i + k];
            a[i] = std::fma(d, static_cast<float>(lane), a[i]);
        }
        if (with_min(type)) summs = std::fma(wb.m, xb.s, summs);
    }
    if (!paired(type)) return with_min(type) ? hsum8(acc[0]) + summs : hsum8(acc[0]);
    float both[8];
    for (int i = 0; i < 8; ++i) both[i] = acc[0][i] + acc[1][i];
    float sum = hsum8(both);
    if (nb_lanes < nb) {
        const decoded_block wb = decode(type, w, nb - 1);
        const act_block xb = act_of(act, x, nb - 1);
        int isum = 0;
        for (int j = 0; j < 32; ++j) isum += wb.w[j] * xb.q[j];
        sum = std::fma(xb.d * wb.d, static_cast<float>(isum), sum);
    }
    return sum;
}

// llama.cpp's AVX2 gemv/gemm of a repacked matrix (Q4_0, IQ4_NL, MXFP4 with rows a multiple
// of 8): one running float per row and token, a fused multiply-add per block of the block's
// integer sum with d_w * d_x.
bool repacked_by_llama(tensor_type t) {
    return t == tensor_type::q4_0 || t == tensor_type::iq4_nl || t == tensor_type::mxfp4;
}

float llama_avx2_repacked_dot(tensor_type type, const std::byte* w, const std::byte* x, int nb) {
    const tensor_type act = activation_type_for(type);
    float acc = 0.0f;
    for (int b = 0; b < nb; ++b) {
        const decoded_block wb = decode(type, w, b);
        const act_block xb = act_of(act, x, b);
        int isum = 0;
        for (int j = 0; j < 32; ++j) isum += wb.w[j] * xb.q[j];
        acc = std::fma(static_cast<float>(isum), wb.d * xb.d, acc);
    }
    return acc;
}

float ggml_generic_dot(tensor_type type, const std::byte* w, const std::byte* x, int nb) {
    const tensor_type act = activation_type_for(type);
    float sum = 0.0f;
    for (int b = 0; b < nb; ++b) {
        const decoded_block wb = decode(type, w, b);
        const act_block xb = act_of(act, x, b);
        int isum = 0;
        for (int j = 0; j < 32; ++j) isum += wb.w[j] * xb.q[j];
        const float fsum = static_cast<float>(isum);
        switch (type) {
            case tensor_type::q4_0: sum += fsum * wb.d * xb.d; break;
            case tensor_type::q5_0: sum += (wb.d * xb.d) * fsum; break;
            case tensor_type::q4_1:
            case tensor_type::q5_1: sum += (wb.d * xb.d) * fsum + wb.m * xb.s; break;
            default: sum += (xb.d * wb.d) * fsum; break;
        }
    }
    return sum;
}

// Random blocks: every byte random, then finite scales of varied size (MXFP4: exponents
// 0..140, the first blocks 0, 1 and 2).
std::vector<std::byte> random_rows(std::mt19937& rng, tensor_type type, int rows, int nb) {
    const std::size_t stride = row_bytes(type, 32 * nb);
    std::vector<std::byte> data(stride * static_cast<std::size_t>(rows));
    for (auto& v : data) v = static_cast<std::byte>(rng() & 0xFF);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const std::size_t block = stride / static_cast<std::size_t>(nb);
    for (std::size_t off = 0, k = 0; off < data.size(); off += block, ++k) {
        std::byte* blk = data.data() + off;
        if (type == tensor_type::mxfp4) {
            blk[0] = static_cast<std::byte>(k < 3 ? k : rng() % 141);
            continue;
        }
        const std::uint16_t d = fp32_to_fp16(0.01f * normal(rng));
        std::memcpy(blk, &d, 2);
        if (with_min(type)) {
            const std::uint16_t m = fp32_to_fp16(0.05f * normal(rng));
            std::memcpy(blk + 2, &m, 2);
        }
    }
    return data;
}

std::string bits(float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    char buf[16];
    std::snprintf(buf, sizeof buf, "%08x", u);
    return buf;
}

TEST(matmul_q32, float_order_is_llama_cpp_s) {
    std::mt19937 rng(61);
    compute_pool pool(2);
    activation_buffer act_buf;
    const int n_tokens = 6;
    for (tensor_type type : q32_types) {
        for (int rows : {9, 16}) {
            for (int nb : {1, 3, 8, 9}) {
                const int cols = 32 * nb;
                const std::vector<std::byte> w = random_rows(rng, type, rows, nb);
                const matrix_view view{type, w.data(), rows, cols, row_bytes(type, cols)};
                std::vector<float> x = test::random_floats(rng, static_cast<std::size_t>(n_tokens * cols));
                for (int t = 0; t < n_tokens; ++t) {
                    for (int c = 0; c < cols; ++c) x[static_cast<std::size_t>(t * cols + c)] *= std::ldexp(1.0f, 3 * t - 6);
                }
                for (isa level : available_isas()) {
                    isa_scope scope(level);
                    // The activations every level converts to are the same bytes (quantize_test).
                    act_buf.quantize(type, x.data(), n_tokens, cols, cols, &pool);
                    std::vector<float> batched(static_cast<std::size_t>(rows * n_tokens)), alone(batched.size());
                    matmul(view, act_buf, batched.data(), rows, pool);
                    for (int t = 0; t < n_tokens; ++t) {
                        activation_buffer one;
                        matmul(view, x.data() + t * cols, 1, alone.data() + t * rows, rows, pool, one);
                    }
                    for (int t = 0; t < n_tokens; ++t) {
                        for (int r = 0; r < rows; ++r) {
                            const std::byte* wr = w.data() + static_cast<std::size_t>(r) * view.row_stride_bytes;
                            const bool repacked = level == isa::avx2 && repacked_by_llama(type) && rows % 8 == 0;
                            const float want = level == isa::scalar ? ggml_generic_dot(type, wr, act_buf.row(t), nb)
                                               : repacked           ? llama_avx2_repacked_dot(type, wr, act_buf.row(t), nb)
                                                                    : llama_avx2_dot(type, wr, act_buf.row(t), nb);
                            const std::size_t i = static_cast<std::size_t>(t * rows + r);
                            const std::string where = std::string(type_name(type)) + " " + test::isa_label(level) +
                                                      " rows=" + std::to_string(rows) + " blocks=" + std::to_string(nb) +
                                                      " token " + std::to_string(t) + " row " + std::to_string(r);
                            ASSERT_EQ(bits(batched[i]), bits(want)) << where << " (batched): " << batched[i] << " vs " << want;
                            ASSERT_EQ(bits(alone[i]), bits(want)) << where << " (alone): " << alone[i] << " vs " << want;
                        }
                    }
                }
            }
        }
    }
}

}  // namespace
}  // namespace moed::kernels
