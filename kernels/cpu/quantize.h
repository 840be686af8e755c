// Conversions between floats and storage types.
// - dequantize_row: any supported type -> f32 (embedding lookups, tests, references).
// - quantize_row: f32 -> a weight type (F32/F16/BF16/Q8_0/Q4_K/Q6_K, Q4_0/Q4_1/Q5_0/Q5_1/
//   IQ4_NL/MXFP4, Q2_K/Q3_K/Q5_K/IQ4_XS), for the model synthesizer and tests. The quantized
//   types use a simple but sound search for scales; they need not match llama.cpp's
//   quantizer bit for bit, only produce valid blocks.
// - quantize_activation_row: f32 -> the type a weight type's dot product consumes, exactly
//   as llama.cpp does it (its vec_dot_type: Q8_0 for Q8_0/Q4_0/Q5_0/IQ4_NL/MXFP4, Q8_1 for
//   Q4_1/Q5_1, Q8_K for the K-quants and IQ4_XS, F16 for F16, BF16 for BF16, F32 for F32),
//   so integer dot products give llama.cpp's results.
// All `n` must be multiples of the type's block size; entry points assert it.
#pragma once

#include <cstdint>

#include "common/tensor_type.h"

namespace moed::kernels {

void dequantize_row(tensor_type type, const void* src, float* dst, std::int64_t n);
void quantize_row(tensor_type type, const float* src, void* dst, std::int64_t n);

// The activation type that weights of `weight_type` are multiplied with.
tensor_type activation_type_for(tensor_type weight_type) noexcept;
void quantize_activation_row(tensor_type weight_type, const float* src, void* dst, std::int64_t n);

}  // namespace moed::kernels
