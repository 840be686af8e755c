// Row conversions of the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4) and
// the scalar Q8_1 activation quantizer (see quantize.h for the contracts).
// - Dequantization computes what ggml's dequantize_row_* computes, operation for operation
//   (a product, then a separate add for the minimum: no fused multiply-add), so embedding
//   rows read from these types equal llama.cpp's.
// - Q8_1 activations follow llama.cpp's x86 quantize_row_q8_1: Q8_0's quants and d, plus
//   s = fp16(d * sum of the quants) with the unrounded d.
// - The weight quantizers are simple and sound, not llama.cpp's importance-weighted
//   searches: codes are the nearest to each value for the stored (f16-rounded) scale.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/assert.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

void quantize_q8_1_act_scalar(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_1*>(dst);
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        float amax = 0.0f;
        for (int j = 0; j < qk_q32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < qk_q32; ++j) {
            const int q = round_nearest_even(x[j] * id);
            y[b].qs[j] = static_cast<std::int8_t>(q);
            sum += q;
        }
        y[b].d = fp32_to_fp16(d);
        y[b].s = fp32_to_fp16(d * static_cast<float>(sum));
    }
}

namespace {

// The 32 codes of a block from its 16 nibble bytes (value j low, value j + 16 high).
void unpack_nibbles(const std::uint8_t* qs, int* codes) {
    for (int j = 0; j < qk_q32 / 2; ++j) {
        codes[j] = qs[j] & 0xF;
        codes[j + qk_q32 / 2] = qs[j] >> 4;
    }
}

void pack_nibbles(const int* codes, std::uint8_t* qs) {
    for (int j = 0; j < qk_q32 / 2; ++j) {
        qs[j] = static_cast<std::uint8_t>(codes[j] | (codes[j + qk_q32 / 2] << 4));
    }
}

// Adds bit 4 of each code from qh (bit j for value j).
void add_high_bits(const std::uint8_t* qh_bytes, int* codes) {
    std::uint32_t qh;
    std::memcpy(&qh, qh_bytes, sizeof qh);
    for (int j = 0; j < qk_q32; ++j) codes[j] |= static_cast<int>((qh >> j) & 1u) << 4;
}

std::uint32_t high_bits(const int* codes) {
    std::uint32_t qh = 0;
    for (int j = 0; j < qk_q32; ++j) qh |= static_cast<std::uint32_t>(codes[j] >> 4) << j;
    return qh;
}

// --- dequantization ---

void dequantize_q4_0(const block_q4_0* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = fp16_to_fp32(x[b].d);
        int q[qk_q32];
        unpack_nibbles(x[b].qs, q);
        for (int j = 0; j < qk_q32; ++j) y[j] = static_cast<float>(q[j] - 8) * d;
    }
}

void dequantize_q4_1(const block_q4_1* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = fp16_to_fp32(x[b].d);
        const float m = fp16_to_fp32(x[b].m);
        int q[qk_q32];
        unpack_nibbles(x[b].qs, q);
        for (int j = 0; j < qk_q32; ++j) y[j] = static_cast<float>(q[j]) * d + m;
    }
}

void dequantize_q5_0(const block_q5_0* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = fp16_to_fp32(x[b].d);
        int q[qk_q32];
        unpack_nibbles(x[b].qs, q);
        add_high_bits(x[b].qh, q);
        for (int j = 0; j < qk_q32; ++j) y[j] = static_cast<float>(q[j] - 16) * d;
    }
}

void dequantize_q5_1(const block_q5_1* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = fp16_to_fp32(x[b].d);
        const float m = fp16_to_fp32(x[b].m);
        int q[qk_q32];
        unpack_nibbles(x[b].qs, q);
        add_high_bits(x[b].qh, q);
        for (int j = 0; j < qk_q32; ++j) y[j] = static_cast<float>(q[j]) * d + m;
    }
}

void dequantize_q8_1(const block_q8_1* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < qk_q32; ++j) y[j] = static_cast<float>(x[b].qs[j]) * d;
    }
}

void dequantize_iq4_nl(const block_iq4_nl* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = fp16_to_fp32(x[b].d);
        int q[qk_q32];
        unpack_nibbles(x[b].qs, q);
        for (int j = 0; j < qk_q32; ++j) y[j] = d * static_cast<float>(kvalues_iq4nl[q[j]]);
    }
}

void dequantize_mxfp4(const block_mxfp4* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, y += qk_q32) {
        const float d = e8m0_to_fp32_half(x[b].e);
        int q[qk_q32];
        unpack_nibbles(x[b].qs, q);
        for (int j = 0; j < qk_q32; ++j) y[j] = static_cast<float>(kvalues_mxfp4[q[j]]) * d;
    }
}

// --- weight quantization ---

// The value of largest magnitude (its sign kept), the first one on ties.
float signed_amax(const float* x) {
    float max = 0.0f, amax = 0.0f;
    for (int j = 0; j < qk_q32; ++j) {
        if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    return max;
}

// Symmetric codes 0..2*half-1 with value (q - half) * d: d = max / -half maps the extreme
// value to code 0 exactly; the opposite extreme may clip to 2*half-1 (one step off).
template <int Half>
void quantize_symmetric(const float* x, std::uint16_t* d_out, int* codes) {
    const float max = signed_amax(x);
    *d_out = fp32_to_fp16(max / -static_cast<float>(Half));
    const float d = fp16_to_fp32(*d_out);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < qk_q32; ++j) {
        codes[j] = std::clamp(static_cast<int>(std::lround(x[j] * id)) + Half, 0, 2 * Half - 1);
    }
}

// Codes 0..levels-1 with value q * d + m over the block's range [min, max].
template <int Levels>
void quantize_affine(const float* x, std::uint16_t* d_out, std::uint16_t* m_out, int* codes) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < qk_q32; ++j) {
        lo = std::min(lo, x[j]);
        hi = std::max(hi, x[j]);
    }
    *d_out = fp32_to_fp16((hi - lo) / static_cast<float>(Levels - 1));
    *m_out = fp32_to_fp16(lo);
    const float d = fp16_to_fp32(*d_out);
    const float m = fp16_to_fp32(*m_out);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < qk_q32; ++j) {
        codes[j] = std::clamp(static_cast<int>(std::lround((x[j] - m) * id)), 0, Levels - 1);
    }
}

void quantize_q4_0_weights(const float* x, block_q4_0* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        int q[qk_q32];
        quantize_symmetric<8>(x, &y[b].d, q);
        pack_nibbles(q, y[b].qs);
    }
}

void quantize_q4_1_weights(const float* x, block_q4_1* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        int q[qk_q32];
        quantize_affine<16>(x, &y[b].d, &y[b].m, q);
        pack_nibbles(q, y[b].qs);
    }
}

void quantize_q5_0_weights(const float* x, block_q5_0* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        int q[qk_q32];
        quantize_symmetric<16>(x, &y[b].d, q);
        const std::uint32_t qh = high_bits(q);
        std::memcpy(y[b].qh, &qh, sizeof qh);
        for (int& c : q) c &= 0xF;
        pack_nibbles(q, y[b].qs);
    }
}

void quantize_q5_1_weights(const float* x, block_q5_1* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        int q[qk_q32];
        quantize_affine<32>(x, &y[b].d, &y[b].m, q);
        const std::uint32_t qh = high_bits(q);
        std::memcpy(y[b].qh, &qh, sizeof qh);
        for (int& c : q) c &= 0xF;
        pack_nibbles(q, y[b].qs);
    }
}

// The index of the entry of an ascending 16-entry grid nearest to v, the lower one on ties:
// the number of midpoints between neighbours that v exceeds (no branches: the quantizers
// call this in their inner loops, with unpredictable outcomes).
int nearest_in_grid(const float* midpoints, float v) {
    int index = 0;
    for (int k = 0; k < 15; ++k) index += v > midpoints[k] ? 1 : 0;
    return index;
}

struct grid_midpoints {
    float v[15];
};

grid_midpoints iq4_nl_midpoints() {
    grid_midpoints m{};
    for (int k = 0; k < 15; ++k) m.v[k] = 0.5f * static_cast<float>(kvalues_iq4nl[k] + kvalues_iq4nl[k + 1]);
    return m;
}

// MXFP4: the nearest code to v (in units of the doubled table), ties to the smaller
// magnitude; zero is code 0.
int nearest_mxfp4_code(float v) {
    // Midpoints between the doubled magnitudes 0, 1, 2, 3, 4, 6, 8, 12.
    static constexpr float mid[7] = {0.5f, 1.5f, 2.5f, 3.5f, 5.0f, 7.0f, 10.0f};
    const float mag = v < 0.0f ? -v : v;
    int k = 0;
    for (float m : mid) k += mag > m ? 1 : 0;
    return v < 0.0f && k != 0 ? 8 + k : k;
}

// IQ4_NL: a few candidate scales that put the extreme value at or near an end of the
// table; for each, the nearest codes and then the least-squares scale for those codes.
// The candidate explaining the most of the block (largest sumqx^2 / sumq2) wins.
void quantize_iq4_nl_weights(const float* x, block_iq4_nl* y, std::int64_t n) {
    constexpr int tries = 7;
    const grid_midpoints mid = iq4_nl_midpoints();
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        const float max = signed_amax(x);
        int q[qk_q32];
        float best_d = 0.0f;
        if (max != 0.0f) {
            float best = -1.0f;
            for (int t = -tries - 1; t <= tries; ++t) {
                // t = -tries - 1: the extreme value at the top of the table (113 < 127).
                const float id = t < -tries ? 127.0f / max : static_cast<float>(kvalues_iq4nl[0] + t) / max;
                float sumqx = 0.0f, sumq2 = 0.0f;
                for (int j = 0; j < qk_q32; ++j) {
                    const float v = static_cast<float>(kvalues_iq4nl[nearest_in_grid(mid.v, x[j] * id)]);
                    sumqx += v * x[j];
                    sumq2 += v * v;
                }
                if (sumq2 > 0.0f && sumqx * sumqx / sumq2 > best) {
                    best = sumqx * sumqx / sumq2;
                    best_d = sumqx / sumq2;
                }
            }
        }
        y[b].d = fp32_to_fp16(best_d);
        const float d = fp16_to_fp32(y[b].d);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        // With d = 0 every code is 8 (table value 1, times 0).
        for (int j = 0; j < qk_q32; ++j) q[j] = d != 0.0f ? nearest_in_grid(mid.v, x[j] * id) : 8;
        pack_nibbles(q, y[b].qs);
    }
}

// MXFP4: the smallest power-of-two scale whose largest code (6) covers the block's
// magnitude, or the next smaller one (finer steps, the extremes clipped) when that gives
// the smaller squared error.
void quantize_mxfp4_weights(const float* x, block_mxfp4* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_q32; ++b, x += qk_q32) {
        float amax = 0.0f;
        for (int j = 0; j < qk_q32; ++j) amax = std::max(amax, std::fabs(x[j]));
        int e = 0;
        if (amax > 0.0f) {
            // 2^(e - 128) is the step of the doubled table: 12 * 2^(e - 128) >= amax.
            int k = 0;
            std::frexp(amax / 12.0f, &k);  // amax / 12 < 2^k
            while (k > -200 && std::ldexp(12.0f, k - 1) >= amax) --k;
            while (std::ldexp(12.0f, k) < amax) ++k;
            e = std::clamp(k + 128, 0, 254);
        }
        int best_codes[qk_q32] = {};
        int best_e = e;
        double best_err = -1.0;
        for (int cand = e; cand >= std::max(0, e - 1); --cand) {
            const float step = e8m0_to_fp32_half(static_cast<std::uint8_t>(cand));
            int codes[qk_q32];
            double err = 0.0;
            for (int j = 0; j < qk_q32; ++j) {
                codes[j] = nearest_mxfp4_code(x[j] / step);
                const double diff = static_cast<double>(kvalues_mxfp4[codes[j]]) * step - x[j];
                err += diff * diff;
            }
            if (best_err < 0.0 || err < best_err) {
                best_err = err;
                best_e = cand;
                std::memcpy(best_codes, codes, sizeof codes);
            }
        }
        y[b].e = static_cast<std::uint8_t>(best_e);
        pack_nibbles(best_codes, y[b].qs);
    }
}

}  // namespace

void dequantize_q32_row(tensor_type type, const void* src, float* dst, std::int64_t n) {
    switch (type) {
        case tensor_type::q4_0: return dequantize_q4_0(static_cast<const block_q4_0*>(src), dst, n);
        case tensor_type::q4_1: return dequantize_q4_1(static_cast<const block_q4_1*>(src), dst, n);
        case tensor_type::q5_0: return dequantize_q5_0(static_cast<const block_q5_0*>(src), dst, n);
        case tensor_type::q5_1: return dequantize_q5_1(static_cast<const block_q5_1*>(src), dst, n);
        case tensor_type::q8_1: return dequantize_q8_1(static_cast<const block_q8_1*>(src), dst, n);
        case tensor_type::iq4_nl: return dequantize_iq4_nl(static_cast<const block_iq4_nl*>(src), dst, n);
        case tensor_type::mxfp4: return dequantize_mxfp4(static_cast<const block_mxfp4*>(src), dst, n);
        default: break;
    }
    MOED_ASSERT(!"dequantize_q32_row: not a 32-value block type");
}

void dequantize_q32_split(tensor_type type, const void* src, float* scaled, float* mins, std::int64_t n) {
    MOED_ASSERT(type == tensor_type::q4_1 || type == tensor_type::q5_1);
    for (std::int64_t b = 0; b < n / qk_q32; ++b, scaled += qk_q32) {
        int q[qk_q32];
        float d;
        if (type == tensor_type::q4_1) {
            const block_q4_1& blk = static_cast<const block_q4_1*>(src)[b];
            unpack_nibbles(blk.qs, q);
            d = fp16_to_fp32(blk.d);
            mins[b] = fp16_to_fp32(blk.m);
        } else {
            const block_q5_1& blk = static_cast<const block_q5_1*>(src)[b];
            unpack_nibbles(blk.qs, q);
            add_high_bits(blk.qh, q);
            d = fp16_to_fp32(blk.d);
            mins[b] = fp16_to_fp32(blk.m);
        }
        for (int j = 0; j < qk_q32; ++j) scaled[j] = static_cast<float>(q[j]) * d;
    }
}

void quantize_q32_row(tensor_type type, const float* src, void* dst, std::int64_t n) {
    switch (type) {
        case tensor_type::q4_0: return quantize_q4_0_weights(src, static_cast<block_q4_0*>(dst), n);
        case tensor_type::q4_1: return quantize_q4_1_weights(src, static_cast<block_q4_1*>(dst), n);
        case tensor_type::q5_0: return quantize_q5_0_weights(src, static_cast<block_q5_0*>(dst), n);
        case tensor_type::q5_1: return quantize_q5_1_weights(src, static_cast<block_q5_1*>(dst), n);
        case tensor_type::q8_1: return quantize_q8_1_act_scalar(src, dst, n);
        case tensor_type::iq4_nl: return quantize_iq4_nl_weights(src, static_cast<block_iq4_nl*>(dst), n);
        case tensor_type::mxfp4: return quantize_mxfp4_weights(src, static_cast<block_mxfp4*>(dst), n);
        default: break;
    }
    MOED_ASSERT(!"quantize_q32_row: not a 32-value block type");
}

}  // namespace moed::kernels::detail
