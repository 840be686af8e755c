// Private to kernels/cpu: the vectorised ops (ops_avx2.cpp, ops_avx512.cpp) that ops.cpp
// dispatches to, and limits shared by all versions.
#pragma once

#include <cstdint>

#include "kernels/cpu/ops.h"

namespace moed::kernels::detail {

// Bounds that let the ops keep their per-call tables on the stack (no allocation).
inline constexpr int max_rope_dims = 1024;
// MLA's absorbed heads are kv_lora_rank + rope dims wide (576 for DeepSeek-V2/V3).
inline constexpr int max_head_dim = 1024;

// cos/sin of theta_i = pos * base^(-2i/n_rot) for i < n_rot/2, with YaRN's interpolation
// and magnitude scaling when `scaling` is set, computed as ggml does. `fused`: as llama.cpp's
// x86 builds compile ggml's C (with FMA contraction: the interpolation
// fma(interp, 1 - ramp, theta * ramp) and the magnitude fma(0.1, ln(1 / freq_scale), 1)),
// the AVX2 level's cache; else unfused, the other levels'.
void rope_cache(int n_rot, std::int64_t pos, float freq_base, const rope_scaling* scaling, float* cos_theta,
                float* sin_theta, bool fused);

void rms_norm_avx2(const float* x, const float* weight, float* y, std::int64_t n, float eps);
void rope_apply_avx2(float* x, int n_heads, int head_dim, int n_rot, const float* cos_theta, const float* sin_theta);
// `sink`: a logit that joins the max and the sum but has no value (-inf: none).
void softmax_avx2(float* x, std::int64_t n, float sink = -__builtin_inff());
void swiglu_avx2(const float* gate, const float* up, float* out, std::int64_t n);
void axpy_avx2(float a, const float* x, float* y, std::int64_t n);
void attention_head_avx2(const attention_args& args, int head, float* scratch);

void rms_norm_avx512(const float* x, const float* weight, float* y, std::int64_t n, float eps);
void rope_apply_avx512(float* x, int n_heads, int head_dim, int n_rot, const float* cos_theta, const float* sin_theta);
void softmax_avx512(float* x, std::int64_t n, float sink = -__builtin_inff());
void swiglu_avx512(const float* gate, const float* up, float* out, std::int64_t n);
void axpy_avx512(float a, const float* x, float* y, std::int64_t n);
void attention_head_avx512(const attention_args& args, int head, float* scratch);
std::int64_t argmax_avx512(const float* x, std::int64_t n);
void fp32_to_fp16_row_avx512(const float* x, std::uint16_t* y, std::int64_t n) noexcept;
// Returns false when it has no kernel for this group size (the caller loops over heads).
bool attention_group_avx512(const attention_args& args, int kv_head, float* scratch);

}  // namespace moed::kernels::detail
