// Transformer-layer ops with llama.cpp's CPU numerics (ggml-cpu/ops.cpp, vec.h), the scalar
// references, and the dispatch to the vectorised versions.
#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>

#include "common/assert.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/ops_impl.h"

namespace moed::kernels {

namespace reference {

void rms_norm(const float* x, const float* weight, float* y, std::int64_t n, float eps) {
    MOED_ASSERT(n > 0);
    // As ggml: squares in float, summed in double; mean rounded to float.
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
    const float mean = static_cast<float>(sum / static_cast<double>(n));
    const float scale = 1.0f / std::sqrt(mean + eps);
    if (weight != nullptr) {
        for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * weight[i];
    } else {
        for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] * scale;
    }
}

void rope_neox(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
               const rope_scaling* scaling) {
    MOED_ASSERT(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim && n_rot <= detail::max_rope_dims);
    float cos_theta[detail::max_rope_dims / 2];
    float sin_theta[detail::max_rope_dims / 2];
    detail::rope_cache(n_rot, pos, freq_base, scaling, cos_theta, sin_theta, false);
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + static_cast<std::int64_t>(h) * head_dim;
        for (int i = 0; i < half; ++i) {
            const float x0 = v[i];
            const float x1 = v[i + half];
            v[i] = x0 * cos_theta[i] - x1 * sin_theta[i];
            v[i + half] = x0 * sin_theta[i] + x1 * cos_theta[i];
        }
    }
}

void rope_neox_contracted(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
                          const rope_scaling* scaling) {
    MOED_ASSERT(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim && n_rot <= detail::max_rope_dims);
    float cos_theta[detail::max_rope_dims / 2];
    float sin_theta[detail::max_rope_dims / 2];
    detail::rope_cache(n_rot, pos, freq_base, scaling, cos_theta, sin_theta, true);
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + static_cast<std::int64_t>(h) * head_dim;
        for (int i = 0; i < half; ++i) {
            const float x0 = v[i];
            const float x1 = v[i + half];
            v[i] = std::fma(x0, cos_theta[i], -(x1 * sin_theta[i]));
            v[i + half] = std::fma(x0, sin_theta[i], x1 * cos_theta[i]);
        }
    }
}

void softmax(float* x, std::int64_t n, float sink) {
    MOED_ASSERT(n > 0);
    float max = -INFINITY;
    for (std::int64_t i = 0; i < n; ++i) max = std::max(max, x[i]);
    max = std::max(max, sink);
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
        const float e = std::exp(x[i] - max);
        x[i] = e;
        sum += static_cast<double>(e);
    }
    sum += static_cast<double>(std::exp(sink - max));
    const auto inv = static_cast<float>(1.0 / sum);
    for (std::int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void swiglu(const float* gate, const float* up, float* out, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) {
        const float g = gate[i];
        out[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

void attention_head(const attention_args& args, int head, float* scratch) {
    MOED_ASSERT(args.n_head > 0 && args.n_head_kv > 0 && args.n_head % args.n_head_kv == 0);
    MOED_ASSERT(head >= 0 && head < args.n_head && args.n_kv > 0 && args.head_dim > 0);
    MOED_ASSERT(args.head_dim <= detail::max_head_dim && args.value_dim() <= detail::max_head_dim);
    const int dim = args.head_dim;
    const int v_dim = args.value_dim();
    const int kv_head = head / (args.n_head / args.n_head_kv);
    const std::int64_t k_stride = args.key_stride();
    const std::int64_t v_stride = args.value_stride();
    // q rounded to f16 (the f16 K matmul converts its f32 operand to f16).
    float q[detail::max_head_dim];
    for (int d = 0; d < dim; ++d) q[d] = fp16_to_fp32(fp32_to_fp16(args.q[static_cast<std::int64_t>(head) * dim + d]));
    for (std::int64_t p = 0; p < args.n_kv; ++p) {
        const std::uint16_t* k = args.k_cache + p * k_stride + static_cast<std::int64_t>(kv_head) * dim;
        double s = 0.0;  // products of two halves are exact in f32
        for (int d = 0; d < dim; ++d) s += static_cast<double>(q[d] * fp16_to_fp32(k[d]));
        scratch[p] = p < args.kv_start ? -INFINITY : static_cast<float>(s) * args.scale;
    }
    softmax(scratch, args.n_kv, args.sinks != nullptr ? args.sinks[head] : -INFINITY);
    float* out = args.out + static_cast<std::int64_t>(head) * v_dim;
    double acc[detail::max_head_dim] = {};
    for (std::int64_t p = 0; p < args.n_kv; ++p) {
        const float prob = fp16_to_fp32(fp32_to_fp16(scratch[p]));
        const std::uint16_t* v = args.v_cache + p * v_stride + static_cast<std::int64_t>(kv_head) * v_dim;
        for (int d = 0; d < v_dim; ++d) acc[d] += static_cast<double>(prob * fp16_to_fp32(v[d]));
    }
    for (int d = 0; d < v_dim; ++d) out[d] = static_cast<float>(acc[d]);
}

std::int64_t argmax(const float* x, std::int64_t n) {
    std::int64_t best = -1;
    for (std::int64_t i = 0; i < n; ++i) {
        if (std::isnan(x[i])) continue;
        if (best < 0 || x[i] > x[best]) best = i;
    }
    return best < 0 ? 0 : best;
}

}  // namespace reference

namespace detail {

void rope_cache(int n_rot, std::int64_t pos, float freq_base, const rope_scaling* scaling, float* cos_theta,
                float* sin_theta, bool fused) {
    // As ggml_rope_cache_init: theta starts at pos and is multiplied by theta_scale per pair,
    // in float; rope_yarn() interpolates and scales it. Without scaling (freq_scale 1,
    // ext_factor 0, attn_factor 1) this is plain cos/sin of theta.
    const rope_scaling none;
    const rope_scaling& sc = scaling != nullptr ? *scaling : none;
    const float theta_scale = std::pow(freq_base, -2.0f / static_cast<float>(n_rot));
    float theta = static_cast<float>(pos);
    for (int i = 0; i < n_rot / 2; ++i) {
        const float interp = sc.freq_scale * theta;
        float angle = interp;
        float mscale = sc.attn_factor;
        if (sc.ext_factor != 0.0f) {
            const float y = (static_cast<float>(i) - sc.corr_low) / std::max(0.001f, sc.corr_high - sc.corr_low);
            const float ramp = (1.0f - std::min(1.0f, std::max(0.0f, y))) * sc.ext_factor;
            if (fused) {
                angle = std::fma(interp, 1.0f - ramp, theta * ramp);
                mscale *= std::fma(0.1f, std::log(1.0f / sc.freq_scale), 1.0f);
            } else {
                angle = interp * (1.0f - ramp) + theta * ramp;
                mscale *= 1.0f + 0.1f * std::log(1.0f / sc.freq_scale);
            }
        }
        cos_theta[i] = std::cos(angle) * mscale;
        sin_theta[i] = std::sin(angle) * mscale;
        theta *= theta_scale;
    }
}

}  // namespace detail

void rms_norm(const float* x, const float* weight, float* y, std::int64_t n, float eps) {
    switch (active_isa()) {
        case isa::avx512: return detail::rms_norm_avx512(x, weight, y, n, eps);
        case isa::avx2: return detail::rms_norm_avx2(x, weight, y, n, eps);
        case isa::scalar: break;
    }
    reference::rms_norm(x, weight, y, n, eps);
}

rope_scaling make_yarn(int n_rot, float freq_base, float factor, int n_ctx_orig, float beta_fast, float beta_slow,
                       float attn_factor, float mscale, float mscale_all_dims) {
    MOED_ASSERT(factor > 0.0f && n_rot > 0 && n_ctx_orig > 0);
    rope_scaling sc;
    sc.freq_scale = 1.0f / factor;
    sc.ext_factor = 1.0f;
    // llama.cpp's context: get_mscale(factor, 1) = 0.1 ln(factor) + 1 (1 at factor <= 1), or
    // with a log multiplier get_mscale(mscale) / get_mscale(mscale_all_dims); times the
    // inverse of the correction rope_yarn applies again, times the file's attention factor.
    const float scale = 1.0f / sc.freq_scale;
    const auto get_mscale = [scale](float m) { return scale <= 1.0f ? 1.0f : 0.1f * m * std::log(scale) + 1.0f; };
    float attn = mscale_all_dims != 0.0f ? get_mscale(mscale) / get_mscale(mscale_all_dims) : get_mscale(1.0f);
    attn *= 1.0f / (1.0f + 0.1f * std::log(scale));
    sc.attn_factor = attn * attn_factor;
    // ggml_rope_yarn_corr_dims.
    const auto corr_dim = [&](float n_rotations) {
        return static_cast<float>(n_rot) *
               std::log(static_cast<float>(n_ctx_orig) / (n_rotations * 2.0f * static_cast<float>(M_PI))) /
               (2.0f * std::log(freq_base));
    };
    sc.corr_low = std::max(0.0f, std::floor(corr_dim(beta_fast)));
    sc.corr_high = std::min(static_cast<float>(n_rot - 1), std::ceil(corr_dim(beta_slow)));
    return sc;
}

void rope_norm(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
               const rope_scaling* scaling) {
    MOED_ASSERT(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim && n_rot <= detail::max_rope_dims);
    float cos_theta[detail::max_rope_dims / 2];
    float sin_theta[detail::max_rope_dims / 2];
    // The AVX2 level rotates as llama.cpp's AVX2 build, whose C is compiled with FMA
    // contraction (rope_neox's AVX2 kernel says how; the cache as rope_cache says; checked
    // bit for bit against its deepseek2 dumps with tools/layer_parity.cpp). The AVX-512 and
    // scalar levels keep the plain operations: llama.cpp's AVX-512 build is not matched here,
    // and a changed rounding there flips a deepseek2-v3 Q3_K routing near-tie in its golden.
    const bool fused = active_isa() == isa::avx2;
    detail::rope_cache(n_rot, pos, freq_base, scaling, cos_theta, sin_theta, fused);
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + static_cast<std::int64_t>(h) * head_dim;
        for (int i = 0; i < n_rot / 2; ++i) {
            const float x0 = v[2 * i];
            const float x1 = v[2 * i + 1];
            if (fused) {
                v[2 * i] = std::fma(x0, cos_theta[i], -(x1 * sin_theta[i]));
                v[2 * i + 1] = std::fma(x0, sin_theta[i], x1 * cos_theta[i]);
            } else {
                v[2 * i] = x0 * cos_theta[i] - x1 * sin_theta[i];
                v[2 * i + 1] = x0 * sin_theta[i] + x1 * cos_theta[i];
            }
        }
    }
}

void rope_neox(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
               const rope_scaling* scaling) {
    MOED_ASSERT(n_rot > 0 && n_rot % 2 == 0 && n_rot <= head_dim && n_rot <= detail::max_rope_dims);
    float cos_theta[detail::max_rope_dims / 2];
    float sin_theta[detail::max_rope_dims / 2];
    // Fused at the AVX2 level as rope_norm's; the scalar level's reference computes its own.
    detail::rope_cache(n_rot, pos, freq_base, scaling, cos_theta, sin_theta, active_isa() == isa::avx2);
    switch (active_isa()) {
        case isa::avx512: return detail::rope_apply_avx512(x, n_heads, head_dim, n_rot, cos_theta, sin_theta);
        case isa::avx2: return detail::rope_apply_avx2(x, n_heads, head_dim, n_rot, cos_theta, sin_theta);
        case isa::scalar: break;
    }
    reference::rope_neox(x, n_heads, head_dim, n_rot, pos, freq_base, scaling);
}

void softmax(float* x, std::int64_t n, float sink) {
    switch (active_isa()) {
        case isa::avx512: return detail::softmax_avx512(x, n, sink);
        case isa::avx2: return detail::softmax_avx2(x, n, sink);
        case isa::scalar: break;
    }
    reference::softmax(x, n, sink);
}

void top_k_routing(const float* probs, int n, int k, std::int32_t* experts, float* weights) {
    MOED_ASSERT(k > 0 && k <= n);
    // Insertion into a sorted list of the k best; strict `>` keeps lower indices first on ties.
    int count = 0;
    for (int i = 0; i < n; ++i) {
        const float p = probs[i];
        if (count == k && !(p > probs[experts[k - 1]])) continue;
        int j = count < k ? count++ : k - 1;
        while (j > 0 && p > probs[experts[j - 1]]) {
            experts[j] = experts[j - 1];
            --j;
        }
        experts[j] = i;
    }
    double sum = 0.0;  // as ggml_vec_sum_f32: accumulated in double, rounded to float
    for (int j = 0; j < k; ++j) sum += static_cast<double>(probs[experts[j]]);
    const auto total = static_cast<float>(sum);
    for (int j = 0; j < k; ++j) weights[j] = probs[experts[j]] / total;
}

void swiglu(const float* gate, const float* up, float* out, std::int64_t n) {
    switch (active_isa()) {
        case isa::avx512: return detail::swiglu_avx512(gate, up, out, n);
        case isa::avx2: return detail::swiglu_avx2(gate, up, out, n);
        case isa::scalar: break;
    }
    reference::swiglu(gate, up, out, n);
}

void swiglu_oai(const float* gate, const float* up, float* out, std::int64_t n) {
    constexpr float alpha = 1.702f;
    constexpr float limit = 7.0f;
    for (std::int64_t i = 0; i < n; ++i) {
        const float g = std::min(gate[i], limit);
        const float u = std::clamp(up[i], -limit, limit);
        out[i] = g / (1.0f + std::exp(alpha * (-g))) * (u + 1.0f);
    }
}

std::int64_t argmax(const float* x, std::int64_t n) {
    MOED_ASSERT(n > 0);
    if (active_isa() == isa::avx512) return detail::argmax_avx512(x, n);
    return reference::argmax(x, n);
}

void axpy(float a, const float* x, float* y, std::int64_t n) {
    switch (active_isa()) {
        case isa::avx512: return detail::axpy_avx512(a, x, y, n);
        case isa::avx2: return detail::axpy_avx2(a, x, y, n);
        case isa::scalar: break;
    }
    for (std::int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void attention_head(const attention_args& args, int head, float* scratch) {
    MOED_ASSERT(args.n_head > 0 && args.n_head_kv > 0 && args.n_head % args.n_head_kv == 0);
    MOED_ASSERT(head >= 0 && head < args.n_head && args.n_kv > 0 && args.head_dim > 0);
    MOED_ASSERT(args.head_dim <= detail::max_head_dim && args.value_dim() <= detail::max_head_dim);
    switch (active_isa()) {
        case isa::avx512: return detail::attention_head_avx512(args, head, scratch);
        case isa::avx2: return detail::attention_head_avx2(args, head, scratch);
        case isa::scalar: break;
    }
    reference::attention_head(args, head, scratch);
}

void attention_group(const attention_args& args, int kv_head, float* scratch) {
    MOED_ASSERT(args.n_head > 0 && args.n_head_kv > 0 && args.n_head % args.n_head_kv == 0);
    MOED_ASSERT(kv_head >= 0 && kv_head < args.n_head_kv && args.n_kv > 0 && args.head_dim > 0);
    MOED_ASSERT(args.head_dim <= detail::max_head_dim && args.value_dim() <= detail::max_head_dim);
    // The grouped kernel has no window or sinks; heads one by one do.
    const bool plain = args.kv_start == 0 && args.sinks == nullptr;
    if (plain && active_isa() == isa::avx512 && detail::attention_group_avx512(args, kv_head, scratch)) return;
    const int group = args.n_head / args.n_head_kv;
    for (int h = 0; h < group; ++h) attention_head(args, kv_head * group + h, scratch + h * args.n_kv);
}

}  // namespace moed::kernels
