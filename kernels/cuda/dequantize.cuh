// Dequantization on the GPU: one storage-type row block -> f32, with the same block layouts
// as kernels/cpu/quant_blocks.h. The CPU path (kernels::dequantize_row) is the reference the
// GPU test compares with.
#pragma once

#include <cstdint>
#include <string>

#include "common/tensor_type.h"

namespace moed::kernels::cuda {

// Dequantizes `n` values of `type` from host memory `src` into host memory `dst` through
// device buffers (a test and warm-up path; the engine's GPU tier keeps data resident).
// Returns an empty string on success, else the CUDA error.
std::string dequantize_on_device(tensor_type type, const void* src, float* dst, std::int64_t n);

}  // namespace moed::kernels::cuda
