// The element-wise and small ops of a transformer layer, each with llama.cpp's numerics:
// RMSNorm, RoPE (NEOX and NORM layouts), softmax with top-k routing, SwiGLU, and attention over an
// f16 KV cache. Each has a scalar reference (namespace `reference`) that tests compare the
// vectorised path with.
// Element-wise results (axpy, RMSNorm's scaling, RoPE) do not depend on the length of the
// call or on an element's place in it: vector tails use the body's operations, so a call
// over several tokens' rows gives each row's values alone (batch invariance). SwiGLU and
// softmax at the AVX2 level end a call as llama.cpp ends a row (the last n % 8 values
// through libm's expf), so callers apply them one row at a time.
#pragma once

#include <cstdint>

#include "kernels/cpu/sum_order.h"

namespace moed::kernels {

// y = x / sqrt(mean(x^2) + eps) * weight   (weight may be null: no scaling). y may alias x.
void rms_norm(const float* x, const float* weight, float* y, std::int64_t n, float eps);

// Context-length scaling of RoPE as ggml applies it (ggml_rope_ext): theta is interpolated
// by freq_scale; with ext_factor != 0 (YaRN) the dims between corr_low and corr_high ramp
// from interpolation to extrapolation and cos/sin are scaled by attn_factor x
// (1 + 0.1 ln(1 / freq_scale)). make_yarn() computes corr_low/high as ggml does.
struct rope_scaling {
    float freq_scale = 1.0f;
    float ext_factor = 0.0f;
    float attn_factor = 1.0f;
    float corr_low = 0.0f;
    float corr_high = 0.0f;
};
// YaRN for a model trained at n_ctx_orig and scaled by `factor` (freq_scale = 1 / factor),
// with llama.cpp's attention factor (its magnitude correction cancelled, times attn_factor)
// and correction dims from beta_fast / beta_slow. With mscale_all_dims != 0 (DeepSeek's
// rope.scaling.yarn_log_multiplier) the magnitude is get_mscale(mscale) /
// get_mscale(mscale_all_dims) instead of get_mscale(1), get_mscale(m) = 0.1 m ln(factor) + 1.
rope_scaling make_yarn(int n_rot, float freq_base, float factor, int n_ctx_orig, float beta_fast, float beta_slow,
                       float attn_factor, float mscale = 1.0f, float mscale_all_dims = 0.0f);

// Rotates `n_heads` heads of `head_dim` values in place at position `pos`: NEOX layout,
// pairs (i, i + n_rot/2) for i < n_rot/2, theta_i = pos * base^(-2i/n_rot); `scaling` null:
// none.
void rope_neox(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
               const rope_scaling* scaling = nullptr);

// The same in NORM layout: adjacent pairs (2i, 2i + 1) for 2i < n_rot turn by theta_i. At
// the AVX2 level the rotation and the YaRN cache round as llama.cpp's AVX2 build (its C
// contracted into FMAs), at the other levels without fusion.
void rope_norm(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
               const rope_scaling* scaling = nullptr);

// In-place softmax over n values. `sink`: a logit that joins the max and the sum but has no
// value of its own (an attention sink; -inf: none). At the AVX2 level its sums follow
// llama.cpp's soft_max of a row of exactly n values (the last n % 8 values through libm's
// expf), so padding a row with -inf may change the last bits there; the other levels are
// unchanged by -inf padding.
void softmax(float* x, std::int64_t n, float sink = -__builtin_inff());

// Picks the k largest of probs[0..n) (ties: lower index first), writes their indices in
// decreasing order and their probabilities renormalised to sum to 1.
void top_k_routing(const float* probs, int n, int k, std::int32_t* experts, float* weights);

// out[i] = silu(gate[i]) * up[i]. out may alias gate or up. Call it once per row (see
// above).
void swiglu(const float* gate, const float* up, float* out, std::int64_t n);

// gpt-oss's clamped SwiGLU as ggml_swiglu_oai (alpha 1.702, limit 7): g = min(gate, 7),
// u = clamp(up, -7, 7), out = g / (1 + exp(-1.702 g)) * (u + 1). Scalar with libm's expf on
// every ISA, as ggml computes it. out may alias gate or up.
void swiglu_oai(const float* gate, const float* up, float* out, std::int64_t n);

// The index of the largest of x[0..n) (n > 0); the first one on ties, NaNs skipped (0 when
// every value is NaN). Greedy sampling over a whole vocabulary, once per token and sequence.
std::int64_t argmax(const float* x, std::int64_t n);

// y += a * x
void axpy(float a, const float* x, float* y, std::int64_t n);

// Attention of one query token over an f16 KV cache, causal up to n_kv positions.
// q: [n_head][head_dim] f32; k_cache: [n_ctx][n_head_kv][head_dim] f16 bits and v_cache:
// [n_ctx][n_head_kv][v_dim], position-major (a position's row `k_stride` / `v_stride`
// values after the previous one; 0: packed); out: [n_head][v_dim]. Head h reads KV head
// h / (n_head / n_head_kv). v_dim 0 is head_dim. V may lie inside the K rows (MLA: v_cache
// = k_cache, v_dim < head_dim, the values are each key row's first v_dim).
// Numerics as llama.cpp without flash attention: q is rounded to f16 for q.k, scores are
// scaled then soft-maxed in f32, probabilities are rounded to f16 for the sum over V. At the
// AVX2 level both products sum in the order `order` names (sum_order.h), as llama.cpp's
// AVX2 build does for a prompt token or a token alone.
// Positions before kv_start are masked (a sliding window), and a head's sink logit (gpt-oss)
// joins the softmax's max and sum with no value. `scratch` holds at least n_kv floats.
struct attention_args {
    const float* q = nullptr;
    const std::uint16_t* k_cache = nullptr;
    const std::uint16_t* v_cache = nullptr;
    std::int64_t n_kv = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    float scale = 1.0f;
    float* out = nullptr;
    std::int64_t kv_start = 0;     // first position attended (sliding window), < n_kv
    const float* sinks = nullptr;  // [n_head] sink logits, or null
    sum_order order = sum_order::alone;
    int v_dim = 0;                 // values per head (0: head_dim)
    std::int64_t k_stride = 0;     // f16 values from one position's key row to the next (0: n_head_kv * head_dim)
    std::int64_t v_stride = 0;     // the same for values (0: n_head_kv * v_dim)

    int value_dim() const noexcept { return v_dim > 0 ? v_dim : head_dim; }
    std::int64_t key_stride() const noexcept { return k_stride > 0 ? k_stride : std::int64_t{n_head_kv} * head_dim; }
    std::int64_t value_stride() const noexcept { return v_stride > 0 ? v_stride : std::int64_t{n_head_kv} * value_dim(); }
};
void attention_head(const attention_args& args, int head, float* scratch);

// The same for every query head that reads KV head `kv_head` (heads kv_head * g to
// kv_head * g + g - 1, g = n_head / n_head_kv): each K and V row is converted from f16 once
// for the whole group instead of once per head, which makes grouped-query attention about
// 1.6x cheaper. Numerics as attention_head; groups of 2 and 4 heads give its exact bits,
// larger groups (multiples of 8) may differ from it in the last bits (summation order).
// `scratch` holds at least g * n_kv floats.
void attention_group(const attention_args& args, int kv_head, float* scratch);

namespace reference {
void rms_norm(const float* x, const float* weight, float* y, std::int64_t n, float eps);
void rope_neox(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
               const rope_scaling* scaling = nullptr);
// NEOX RoPE as llama.cpp's AVX2 build rotates (its C compiled with FMA contraction): the
// AVX2 level's reference.
void rope_neox_contracted(float* x, int n_heads, int head_dim, int n_rot, std::int64_t pos, float freq_base,
                          const rope_scaling* scaling = nullptr);
void softmax(float* x, std::int64_t n, float sink = -__builtin_inff());
void swiglu(const float* gate, const float* up, float* out, std::int64_t n);
void attention_head(const attention_args& args, int head, float* scratch);
std::int64_t argmax(const float* x, std::int64_t n);
}  // namespace reference

}  // namespace moed::kernels
