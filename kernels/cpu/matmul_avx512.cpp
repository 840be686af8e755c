// avx512 matmul kernels: first stage has none (the dispatcher falls back to scalar).
#include "kernels/cpu/kernel_impl.h"

namespace moed::kernels::detail {

gemm_fn gemm_avx512(tensor_type) noexcept { return nullptr; }

void quantize_q8_0_act_avx512(const float* x, void* dst, std::int64_t n) { quantize_q8_0_act_scalar(x, dst, n); }
void quantize_q8_k_act_avx512(const float* x, void* dst, std::int64_t n) { quantize_q8_k_act_scalar(x, dst, n); }
void convert_f16_avx512(const float* x, void* dst, std::int64_t n) { convert_f16_scalar(x, dst, n); }
void convert_bf16_avx512(const float* x, void* dst, std::int64_t n) { convert_bf16_scalar(x, dst, n); }

}  // namespace moed::kernels::detail
