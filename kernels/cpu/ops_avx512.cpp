// avx512 ops: first stage forwards to the scalar references (vectorised versions follow).
#include "kernels/cpu/ops_impl.h"

namespace moed::kernels::detail {

void rms_norm_avx512(const float* x, const float* weight, float* y, std::int64_t n, float eps) {
    reference::rms_norm(x, weight, y, n, eps);
}
void rope_apply_avx512(float* x, int n_heads, int head_dim, int n_rot, const float* cos_theta, const float* sin_theta) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + static_cast<std::int64_t>(h) * head_dim;
        for (int i = 0; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cos_theta[i] - x1 * sin_theta[i];
            v[i + half] = x0 * sin_theta[i] + x1 * cos_theta[i];
        }
    }
}
void softmax_avx512(float* x, std::int64_t n) { reference::softmax(x, n); }
void swiglu_avx512(const float* gate, const float* up, float* out, std::int64_t n) { reference::swiglu(gate, up, out, n); }
void axpy_avx512(float a, const float* x, float* y, std::int64_t n) {
    for (std::int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
void attention_head_avx512(const attention_args& args, int head, float* scratch) {
    reference::attention_head(args, head, scratch);
}

}  // namespace moed::kernels::detail
