// Row conversions between f32 and the storage types (see quantize.h), plus the scalar
// activation quantizers. Activation quantization follows what llama.cpp's CPU backend runs
// on x86 (ggml-cpu/arch/x86/quants.c), because the integer dot products must see the same
// int8 values as llama.cpp to reproduce its logits:
// - Q8_0: d = amax / 127 (stored as f16), multiplier 127 / amax, round half to even. (The
//   portable ggml reference uses 1/d and roundf; x86 builds use this variant.)
// - Q8_K: iscale = -127 / (the value of largest magnitude), q = min(127, nearest_even(iscale
//   * x)), d = 1 / iscale, plus the sums of each 16 quants.
#include "kernels/cpu/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/assert.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels {

namespace detail {

void quantize_q8_0_act_scalar(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_0*>(dst);
    for (std::int64_t b = 0; b < n / qk8_0; ++b, x += qk8_0) {
        float amax = 0.0f;
        for (int j = 0; j < qk8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.f;
        const float id = amax != 0.0f ? 127.f / amax : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < qk8_0; ++j) {
            y[b].qs[j] = static_cast<std::int8_t>(round_nearest_even(x[j] * id));
        }
    }
}

void quantize_q8_k_act_scalar(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<block_q8_k*>(dst);
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        float max = 0.0f;
        float amax = 0.0f;
        for (int j = 0; j < qk_k; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_k));
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < qk_k; ++j) {
            y[b].qs[j] = static_cast<std::int8_t>(std::min(127, round_nearest_even(iscale * x[j])));
        }
        for (int g = 0; g < qk_k / 16; ++g) {
            int sum = 0;
            for (int i = 0; i < 16; ++i) sum += y[b].qs[g * 16 + i];
            y[b].bsums[g] = static_cast<std::int16_t>(sum);
        }
        y[b].d = 1 / iscale;
    }
}

void convert_f16_scalar(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<std::uint16_t*>(dst);
    for (std::int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

void convert_bf16_scalar(const float* x, void* dst, std::int64_t n) {
    auto* y = static_cast<std::uint16_t*>(dst);
    for (std::int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16(x[i]);
}

}  // namespace detail

namespace {

using detail::round_nearest_even;

void dequantize_q8_0(const block_q8_0* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk8_0; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < qk8_0; ++j) *y++ = d * static_cast<float>(x[b].qs[j]);
    }
}

void dequantize_q8_k(const block_q8_k* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        for (int j = 0; j < qk_k; ++j) *y++ = x[b].d * static_cast<float>(x[b].qs[j]);
    }
}

void dequantize_q4_k(const block_q4_k* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        const std::uint8_t* q = x[b].qs;
        for (int j = 0; j < qk_k / 64; ++j) {
            std::uint8_t sc, m;
            detail::q4_k_scale_min(2 * j, x[b].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            detail::q4_k_scale_min(2 * j + 1, x[b].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
            q += 32;
        }
    }
}

void dequantize_q6_k(const block_q6_k* x, float* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const std::uint8_t* ql = x[b].ql;
        const std::uint8_t* qh = x[b].qh;
        const std::int8_t* sc = x[b].scales;
        for (int half = 0; half < 2; ++half) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is + 0] * static_cast<float>(q1);
                y[l + 32] = d * sc[is + 2] * static_cast<float>(q2);
                y[l + 64] = d * sc[is + 4] * static_cast<float>(q3);
                y[l + 96] = d * sc[is + 6] * static_cast<float>(q4);
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

// Weight quantizers: simple and sound (every value within half a step of its code, except
// where a sub-block's range must be clipped to fit the 6-bit scale), not llama.cpp's
// importance-weighted search.
void quantize_q8_0_weights(const float* x, block_q8_0* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk8_0; ++b, x += qk8_0) {
        float amax = 0.0f;
        for (int j = 0; j < qk8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < qk8_0; ++j) {
            y[b].qs[j] = static_cast<std::int8_t>(std::clamp(static_cast<int>(std::lround(x[j] * id)), -127, 127));
        }
    }
}

void quantize_q4_k_weights(const float* x, block_q4_k* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        float sub_scale[8], sub_min[8];
        float max_scale = 0.0f, max_min = 0.0f;
        for (int s = 0; s < 8; ++s) {
            float lo = 0.0f, hi = 0.0f;  // the range always includes 0: mins are >= 0
            for (int i = 0; i < 32; ++i) {
                lo = std::min(lo, x[s * 32 + i]);
                hi = std::max(hi, x[s * 32 + i]);
            }
            sub_scale[s] = (hi - lo) / 15.0f;
            sub_min[s] = -lo;
            max_scale = std::max(max_scale, sub_scale[s]);
            max_min = std::max(max_min, sub_min[s]);
        }
        std::memset(&y[b], 0, sizeof(block_q4_k));
        y[b].d = fp32_to_fp16(max_scale / 63.0f);
        y[b].dmin = fp32_to_fp16(max_min / 63.0f);
        const float d = fp16_to_fp32(y[b].d);
        const float dmin = fp16_to_fp32(y[b].dmin);
        std::uint8_t sc[8], mn[8];
        for (int s = 0; s < 8; ++s) {
            // Round the scale up so the sub-block's range fits in 15 steps.
            sc[s] = d > 0.0f ? static_cast<std::uint8_t>(std::clamp(static_cast<int>(std::ceil(sub_scale[s] / d - 1e-4f)), 0, 63)) : 0;
            mn[s] = dmin > 0.0f ? static_cast<std::uint8_t>(std::clamp(static_cast<int>(std::lround(sub_min[s] / dmin)), 0, 63)) : 0;
            if (s < 4) {
                y[b].scales[s] = sc[s];
                y[b].scales[s + 4] = mn[s];
            } else {
                y[b].scales[s + 4] = static_cast<std::uint8_t>((sc[s] & 0xF) | ((mn[s] & 0xF) << 4));
                y[b].scales[s - 4] |= static_cast<std::uint8_t>((sc[s] >> 4) << 6);
                y[b].scales[s] |= static_cast<std::uint8_t>((mn[s] >> 4) << 6);
            }
        }
        std::uint8_t q[qk_k];
        for (int s = 0; s < 8; ++s) {
            const float step = d * sc[s];
            const float offset = dmin * mn[s];
            for (int i = 0; i < 32; ++i) {
                const int l = step > 0.0f ? static_cast<int>(std::lround((x[s * 32 + i] + offset) / step)) : 0;
                q[s * 32 + i] = static_cast<std::uint8_t>(std::clamp(l, 0, 15));
            }
        }
        for (int j = 0; j < 4; ++j) {
            for (int l = 0; l < 32; ++l) {
                y[b].qs[32 * j + l] = static_cast<std::uint8_t>(q[64 * j + l] | (q[64 * j + 32 + l] << 4));
            }
        }
    }
}

void quantize_q6_k_weights(const float* x, block_q6_k* y, std::int64_t n) {
    for (std::int64_t b = 0; b < n / qk_k; ++b, x += qk_k) {
        float sub_scale[16];
        float max_scale = 0.0f, max_abs_scale = 0.0f;
        for (int s = 0; s < 16; ++s) {
            float max = 0.0f, amax = 0.0f;
            for (int i = 0; i < 16; ++i) {
                const float v = x[s * 16 + i];
                if (std::fabs(v) > amax) {
                    amax = std::fabs(v);
                    max = v;
                }
            }
            sub_scale[s] = max / -32.0f;  // the extreme value maps to code -32
            if (std::fabs(sub_scale[s]) > max_abs_scale) {
                max_abs_scale = std::fabs(sub_scale[s]);
                max_scale = sub_scale[s];
            }
        }
        std::memset(&y[b], 0, sizeof(block_q6_k));
        std::uint8_t q[qk_k];
        if (max_abs_scale == 0.0f) {
            std::memset(q, 32, sizeof q);
        } else {
            y[b].d = fp32_to_fp16(max_scale / -128.0f);
            const float d = fp16_to_fp32(y[b].d);
            for (int s = 0; s < 16; ++s) {
                const int sc = d != 0.0f ? std::clamp(static_cast<int>(std::lround(sub_scale[s] / d)), -128, 127) : 0;
                y[b].scales[s] = static_cast<std::int8_t>(sc);
                const float step = d * static_cast<float>(sc);
                for (int i = 0; i < 16; ++i) {
                    const int l = step != 0.0f ? static_cast<int>(std::lround(x[s * 16 + i] / step)) : 0;
                    q[s * 16 + i] = static_cast<std::uint8_t>(std::clamp(l, -32, 31) + 32);
                }
            }
        }
        for (int half = 0; half < 2; ++half) {
            const std::uint8_t* qq = q + 128 * half;
            std::uint8_t* ql = y[b].ql + 64 * half;
            std::uint8_t* qh = y[b].qh + 32 * half;
            for (int l = 0; l < 32; ++l) {
                const int q1 = qq[l], q2 = qq[l + 32], q3 = qq[l + 64], q4 = qq[l + 96];
                ql[l] = static_cast<std::uint8_t>((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = static_cast<std::uint8_t>((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = static_cast<std::uint8_t>((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

std::int64_t block_elems(tensor_type type) {
    const auto traits = traits_of(static_cast<std::uint32_t>(type));
    MOED_ASSERT(traits && traits->supported);
    return traits->block_elems;
}

}  // namespace

void dequantize_row(tensor_type type, const void* src, float* dst, std::int64_t n) {
    MOED_ASSERT(n >= 0 && n % block_elems(type) == 0);
    switch (type) {
        case tensor_type::f32: std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float)); return;
        case tensor_type::f16: {
            const auto* s = static_cast<const std::uint16_t*>(src);
            for (std::int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(s[i]);
            return;
        }
        case tensor_type::bf16: {
            const auto* s = static_cast<const std::uint16_t*>(src);
            for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(s[i]);
            return;
        }
        case tensor_type::q8_0: dequantize_q8_0(static_cast<const block_q8_0*>(src), dst, n); return;
        case tensor_type::q8_k: dequantize_q8_k(static_cast<const block_q8_k*>(src), dst, n); return;
        case tensor_type::q4_k: dequantize_q4_k(static_cast<const block_q4_k*>(src), dst, n); return;
        case tensor_type::q6_k: dequantize_q6_k(static_cast<const block_q6_k*>(src), dst, n); return;
        case tensor_type::q4_0:
        case tensor_type::q4_1:
        case tensor_type::q5_0:
        case tensor_type::q5_1:
        case tensor_type::q8_1:
        case tensor_type::iq4_nl:
        case tensor_type::mxfp4: detail::dequantize_q32_row(type, src, dst, n); return;
        case tensor_type::q2_k:
        case tensor_type::q3_k:
        case tensor_type::q5_k:
        case tensor_type::iq4_xs: detail::dequantize_kquant(type, src, dst, n); return;
        default: break;
    }
    MOED_ASSERT(!"dequantize_row: unsupported type");
}

void quantize_row(tensor_type type, const float* src, void* dst, std::int64_t n) {
    MOED_ASSERT(n >= 0 && n % block_elems(type) == 0);
    switch (type) {
        case tensor_type::f32: std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float)); return;
        case tensor_type::f16: detail::convert_f16_scalar(src, dst, n); return;
        case tensor_type::bf16: detail::convert_bf16_scalar(src, dst, n); return;
        case tensor_type::q8_0: quantize_q8_0_weights(src, static_cast<block_q8_0*>(dst), n); return;
        case tensor_type::q4_k: quantize_q4_k_weights(src, static_cast<block_q4_k*>(dst), n); return;
        case tensor_type::q6_k: quantize_q6_k_weights(src, static_cast<block_q6_k*>(dst), n); return;
        case tensor_type::q8_k: detail::quantize_q8_k_act_scalar(src, dst, n); return;
        case tensor_type::q4_0:
        case tensor_type::q4_1:
        case tensor_type::q5_0:
        case tensor_type::q5_1:
        case tensor_type::q8_1:
        case tensor_type::iq4_nl:
        case tensor_type::mxfp4: detail::quantize_q32_row(type, src, dst, n); return;
        case tensor_type::q2_k:
        case tensor_type::q3_k:
        case tensor_type::q5_k:
        case tensor_type::iq4_xs: detail::quantize_kquant(type, src, dst, n); return;
        default: break;
    }
    MOED_ASSERT(!"quantize_row: unsupported type");
}

tensor_type activation_type_for(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q8_0:
        case tensor_type::q4_0:
        case tensor_type::q5_0:
        case tensor_type::iq4_nl:
        case tensor_type::mxfp4: return tensor_type::q8_0;
        case tensor_type::q4_1:
        case tensor_type::q5_1: return tensor_type::q8_1;
        case tensor_type::q4_k:
        case tensor_type::q6_k:
        case tensor_type::q2_k:
        case tensor_type::q3_k:
        case tensor_type::q5_k:
        case tensor_type::iq4_xs: return tensor_type::q8_k;
        case tensor_type::f16: return tensor_type::f16;
        case tensor_type::bf16: return tensor_type::bf16;
        default: return tensor_type::f32;
    }
}

void quantize_activation_row(tensor_type weight_type, const float* src, void* dst, std::int64_t n) {
    const tensor_type act = activation_type_for(weight_type);
    MOED_ASSERT(n >= 0 && n % block_elems(act) == 0 && n % block_elems(weight_type) == 0);
    const isa level = active_isa();
    switch (act) {
        case tensor_type::f32: std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float)); return;
        case tensor_type::f16:
            if (level == isa::avx512) return detail::convert_f16_avx512(src, dst, n);
            if (level == isa::avx2) return detail::convert_f16_avx2(src, dst, n);
            return detail::convert_f16_scalar(src, dst, n);
        case tensor_type::bf16:
            if (level == isa::avx512) return detail::convert_bf16_avx512(src, dst, n);
            if (level == isa::avx2) return detail::convert_bf16_avx2(src, dst, n);
            return detail::convert_bf16_scalar(src, dst, n);
        case tensor_type::q8_0:
            if (level == isa::avx512) return detail::quantize_q8_0_act_avx512(src, dst, n);
            if (level == isa::avx2) return detail::quantize_q8_0_act_avx2(src, dst, n);
            return detail::quantize_q8_0_act_scalar(src, dst, n);
        case tensor_type::q8_1:
            if (level == isa::avx512) return detail::quantize_q8_1_act_avx512(src, dst, n);
            if (level == isa::avx2) return detail::quantize_q8_1_act_avx2(src, dst, n);
            return detail::quantize_q8_1_act_scalar(src, dst, n);
        case tensor_type::q8_k:
            if (level == isa::avx512) return detail::quantize_q8_k_act_avx512(src, dst, n);
            if (level == isa::avx2) return detail::quantize_q8_k_act_avx2(src, dst, n);
            return detail::quantize_q8_k_act_scalar(src, dst, n);
        default: break;
    }
    MOED_ASSERT(!"quantize_activation_row: unsupported type");
}

}  // namespace moed::kernels
