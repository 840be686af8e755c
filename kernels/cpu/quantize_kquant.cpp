// Row conversions of Q2_K, Q3_K, Q5_K and IQ4_XS (block layouts in quant_blocks.h).
// dequantize_kquant gives the values the block definitions give, as ggml's dequantize_row_*
// computes them. quantize_kquant is a simple but sound quantizer for the model synthesizer
// and the tests, not llama.cpp's importance-weighted search: scales from each sub-block's
// range (min-max for the types with minimums, the value of largest magnitude for the
// symmetric ones), then the nearest code. Called through dequantize_row / quantize_row.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/assert.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

// --- dequantization ------------------------------------------------------------------------

void dequantize_q2_k(const block_q2_k* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        for (int i = 0; i < qk_k; ++i) {
            const int h = i / 128, k = (i / 32) % 4, l = i % 32;
            const int q = (x[b].qs[32 * h + l] >> (2 * k)) & 3;
            const std::uint8_t sc = x[b].scales[i / 16];
            y[i] = d * static_cast<float>(sc & 0xF) * static_cast<float>(q) - dmin * static_cast<float>(sc >> 4);
        }
        y += qk_k;
    }
}

void dequantize_q3_k(const block_q3_k* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        std::int8_t scales[16];
        q3_k_unpack_scales(x[b].scales, scales);
        for (int i = 0; i < qk_k; ++i) {
            const int h = i / 128, k = (i / 32) % 4, l = i % 32;
            const int low = (x[b].qs[32 * h + l] >> (2 * k)) & 3;
            const int high = (x[b].hmask[l] >> (4 * h + k)) & 1;
            y[i] = d * static_cast<float>(scales[i / 16]) * static_cast<float>(low + 4 * high - 4);
        }
        y += qk_k;
    }
}

void dequantize_q5_k(const block_q5_k* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        for (int s = 0; s < 8; ++s) {
            std::uint8_t sc, m;
            q4_k_scale_min(s, x[b].scales, &sc, &m);
            const float scale = d * sc, offset = dmin * m;
            const std::uint8_t* qs = x[b].qs + 32 * (s / 2);
            for (int l = 0; l < 32; ++l) {
                const int low = s % 2 == 0 ? qs[l] & 0xF : qs[l] >> 4;
                const int high = (x[b].qh[l] >> s) & 1;
                y[32 * s + l] = scale * static_cast<float>(low + 16 * high) - offset;
            }
        }
        y += qk_k;
    }
}

void dequantize_iq4_xs(const block_iq4_xs* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        for (int s = 0; s < 8; ++s) {
            const float scale = d * static_cast<float>(iq4_xs_scale(x[b].scales_h, x[b].scales_l, s));
            const std::uint8_t* qs = x[b].qs + 16 * s;
            for (int l = 0; l < 16; ++l) {
                y[32 * s + l] = scale * static_cast<float>(kvalues_iq4nl[qs[l] & 0xF]);
                y[32 * s + 16 + l] = scale * static_cast<float>(kvalues_iq4nl[qs[l] >> 4]);
            }
        }
        y += qk_k;
    }
}

// --- quantization -------------------------------------------------------------------------

// Scales and minimums of the min-max types (Q2_K: 16 groups of 16, 2-bit codes, 4-bit
// scales; Q5_K: 8 groups of 32, 5-bit codes, 6-bit scales). Each group's range, widened to
// include 0 (the minimum is subtracted, so it must be >= 0), spans levels - 1 steps; d and
// dmin map the largest step and minimum to the top scale code. Scales round up so the range
// still fits; minimums round to nearest. Codes are then the nearest level.
struct min_max_plan {
    float d, dmin;
    std::uint8_t scale[16], min[16];
};

min_max_plan plan_min_max(const float* x, int groups, int group_size, int levels, int scale_max) {
    min_max_plan p{};
    float step[16], offset[16];
    float max_step = 0.0f, max_offset = 0.0f;
    for (int g = 0; g < groups; ++g) {
        float lo = 0.0f, hi = 0.0f;
        for (int i = 0; i < group_size; ++i) {
            lo = std::min(lo, x[g * group_size + i]);
            hi = std::max(hi, x[g * group_size + i]);
        }
        step[g] = (hi - lo) / static_cast<float>(levels - 1);
        offset[g] = -lo;
        max_step = std::max(max_step, step[g]);
        max_offset = std::max(max_offset, offset[g]);
    }
    const std::uint16_t d16 = fp32_to_fp16(max_step / static_cast<float>(scale_max));
    const std::uint16_t dmin16 = fp32_to_fp16(max_offset / static_cast<float>(scale_max));
    p.d = fp16_to_fp32(d16);
    p.dmin = fp16_to_fp32(dmin16);
    for (int g = 0; g < groups; ++g) {
        const int scale = p.d > 0.0f ? static_cast<int>(std::ceil(step[g] / p.d - 1e-4f)) : 0;
        const int min = p.dmin > 0.0f ? static_cast<int>(std::lround(offset[g] / p.dmin)) : 0;
        p.scale[g] = static_cast<std::uint8_t>(std::clamp(scale, 0, scale_max));
        p.min[g] = static_cast<std::uint8_t>(std::clamp(min, 0, scale_max));
    }
    return p;
}

// The nearest of `levels` codes for x in a group of the plan.
int min_max_code(float x, const min_max_plan& p, int g, int levels) {
    const float step = p.d * p.scale[g];
    const float offset = p.dmin * p.min[g];
    const int l = step > 0.0f ? static_cast<int>(std::lround((x + offset) / step)) : 0;
    return std::clamp(l, 0, levels - 1);
}

void quantize_q2_k(const float* x, block_q2_k* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        const min_max_plan p = plan_min_max(x, 16, 16, 4, 15);
        std::memset(&y[b], 0, sizeof(block_q2_k));
        y[b].d = fp32_to_fp16(p.d);
        y[b].dmin = fp32_to_fp16(p.dmin);
        for (int g = 0; g < 16; ++g) y[b].scales[g] = static_cast<std::uint8_t>(p.scale[g] | (p.min[g] << 4));
        for (int i = 0; i < qk_k; ++i) {
            const int h = i / 128, k = (i / 32) % 4, l = i % 32;
            y[b].qs[32 * h + l] |= static_cast<std::uint8_t>(min_max_code(x[i], p, i / 16, 4) << (2 * k));
        }
    }
}

void quantize_q5_k(const float* x, block_q5_k* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        const min_max_plan p = plan_min_max(x, 8, 32, 32, 63);
        std::memset(&y[b], 0, sizeof(block_q5_k));
        y[b].d = fp32_to_fp16(p.d);
        y[b].dmin = fp32_to_fp16(p.dmin);
        // The 6-bit packing of Q4_K (see q4_k_scale_min).
        for (int s = 0; s < 8; ++s) {
            const std::uint8_t sc = p.scale[s], mn = p.min[s];
            if (s < 4) {
                y[b].scales[s] |= sc;
                y[b].scales[s + 4] |= mn;
            } else {
                y[b].scales[s + 4] = static_cast<std::uint8_t>((sc & 0xF) | ((mn & 0xF) << 4));
                y[b].scales[s - 4] |= static_cast<std::uint8_t>((sc >> 4) << 6);
                y[b].scales[s] |= static_cast<std::uint8_t>((mn >> 4) << 6);
            }
        }
        for (int i = 0; i < qk_k; ++i) {
            const int s = i / 32, l = i % 32;
            const int q = min_max_code(x[i], p, s, 32);
            y[b].qs[32 * (s / 2) + l] |= static_cast<std::uint8_t>((q & 0xF) << (4 * (s % 2)));
            y[b].qh[l] |= static_cast<std::uint8_t>((q >> 4) << s);
        }
    }
}

// Scales of the symmetric types: each group's scale maps its value of largest magnitude to
// the code `extreme` (negative: the side with one more level), and the super-block scale d
// maps the group scale of largest magnitude to the scale code -32. Returns false for a
// block of zeros. `scale` gets the 6-bit signed scale codes.
bool plan_symmetric(const float* x, int groups, int group_size, float extreme, float* d, int* scale) {
    float group_scale[16];
    float max_scale = 0.0f, max_abs_scale = 0.0f;
    for (int g = 0; g < groups; ++g) {
        float max = 0.0f, amax = 0.0f;
        for (int i = 0; i < group_size; ++i) {
            const float v = x[g * group_size + i];
            if (std::fabs(v) > amax) {
                amax = std::fabs(v);
                max = v;
            }
        }
        group_scale[g] = max / extreme;
        if (std::fabs(group_scale[g]) > max_abs_scale) {
            max_abs_scale = std::fabs(group_scale[g]);
            max_scale = group_scale[g];
        }
    }
    if (max_abs_scale == 0.0f) return false;
    *d = fp16_to_fp32(fp32_to_fp16(max_scale / -32.0f));
    for (int g = 0; g < groups; ++g) {
        scale[g] = *d != 0.0f ? std::clamp(static_cast<int>(std::lround(group_scale[g] / *d)), -32, 31) : 0;
    }
    return true;
}

void quantize_q3_k(const float* x, block_q3_k* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        std::memset(&y[b], 0, sizeof(block_q3_k));
        float d = 0.0f;
        int scale[16] = {};
        const bool nonzero = plan_symmetric(x, 16, 16, -4.0f, &d, scale);
        y[b].d = fp32_to_fp16(d);
        // Scale j + 32: low 4 bits in byte j (j < 8) or the high nibble of byte j - 8, high 2
        // bits at bit 2 * (j / 4) of byte 8 + j % 4 (see q3_k_unpack_scales).
        for (int j = 0; j < 16; ++j) {
            const int u = scale[j] + 32;
            if (j < 8) {
                y[b].scales[j] |= static_cast<std::uint8_t>(u & 0xF);
            } else {
                y[b].scales[j - 8] |= static_cast<std::uint8_t>((u & 0xF) << 4);
            }
            y[b].scales[8 + j % 4] |= static_cast<std::uint8_t>((u >> 4) << (2 * (j / 4)));
        }
        for (int i = 0; i < qk_k; ++i) {
            const float step = d * static_cast<float>(scale[i / 16]);
            const int q = nonzero && step != 0.0f ? std::clamp(static_cast<int>(std::lround(x[i] / step)), -4, 3) : 0;
            const int u = q + 4;
            const int h = i / 128, k = (i / 32) % 4, l = i % 32;
            y[b].qs[32 * h + l] |= static_cast<std::uint8_t>((u & 3) << (2 * k));
            y[b].hmask[l] |= static_cast<std::uint8_t>((u >> 2) << (4 * h + k));
        }
    }
}

// The code whose level is nearest to v (levels ascend; ties go to the lower level).
int nearest_iq4nl(float v) {
    int best = 0;
    float best_err = std::fabs(v - kvalues_iq4nl[0]);
    for (int c = 1; c < 16; ++c) {
        const float err = std::fabs(v - kvalues_iq4nl[c]);
        if (err < best_err) {
            best_err = err;
            best = c;
        }
    }
    return best;
}

void quantize_iq4_xs(const float* x, block_iq4_xs* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        std::memset(&y[b], 0, sizeof(block_iq4_xs));
        float d = 0.0f;
        int scale[16] = {};
        plan_symmetric(x, 8, 32, static_cast<float>(kvalues_iq4nl[0]), &d, scale);
        y[b].d = fp32_to_fp16(d);
        for (int s = 0; s < 8; ++s) {
            const int u = scale[s] + 32;
            y[b].scales_l[s / 2] |= static_cast<std::uint8_t>((u & 0xF) << (4 * (s % 2)));
            y[b].scales_h |= static_cast<std::uint16_t>((u >> 4) << (2 * s));
            const float step = d * static_cast<float>(scale[s]);
            for (int l = 0; l < 32; ++l) {
                // A zero step gives zeros whatever the code; pick the level nearest zero.
                const int c = step != 0.0f ? nearest_iq4nl(x[32 * s + l] / step) : 8;
                y[b].qs[16 * s + l % 16] |= static_cast<std::uint8_t>(c << (4 * (l / 16)));
            }
        }
    }
}

}  // namespace

void dequantize_kquant(tensor_type type, const void* src, float* dst, std::int64_t n) {
    MOED_ASSERT(n >= 0 && n % qk_k == 0);
    switch (type) {
        case tensor_type::q2_k: return dequantize_q2_k(static_cast<const block_q2_k*>(src), dst, n);
        case tensor_type::q3_k: return dequantize_q3_k(static_cast<const block_q3_k*>(src), dst, n);
        case tensor_type::q5_k: return dequantize_q5_k(static_cast<const block_q5_k*>(src), dst, n);
        case tensor_type::iq4_xs: return dequantize_iq4_xs(static_cast<const block_iq4_xs*>(src), dst, n);
        default: break;
    }
    MOED_ASSERT(!"dequantize_kquant: not a K-quant type of this file");
}

void quantize_kquant(tensor_type type, const float* src, void* dst, std::int64_t n) {
    MOED_ASSERT(n >= 0 && n % qk_k == 0);
    switch (type) {
        case tensor_type::q2_k: return quantize_q2_k(src, static_cast<block_q2_k*>(dst), n);
        case tensor_type::q3_k: return quantize_q3_k(src, static_cast<block_q3_k*>(dst), n);
        case tensor_type::q5_k: return quantize_q5_k(src, static_cast<block_q5_k*>(dst), n);
        case tensor_type::iq4_xs: return quantize_iq4_xs(src, static_cast<block_iq4_xs*>(dst), n);
        default: break;
    }
    MOED_ASSERT(!"quantize_kquant: not a K-quant type of this file");
}

}  // namespace moed::kernels::detail
