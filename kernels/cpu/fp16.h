// IEEE half and bfloat16 conversions, bit-exact with llama.cpp's (round to nearest even;
// bf16 keeps NaNs quiet).
#pragma once

#include <cstdint>

namespace moed::kernels {

float fp16_to_fp32(std::uint16_t h) noexcept;
std::uint16_t fp32_to_fp16(float f) noexcept;
// n values at once (the KV cache's stores): fp32_to_fp16's bits, with F16C where the CPU
// has AVX-512.
void fp32_to_fp16_row(const float* x, std::uint16_t* y, std::int64_t n) noexcept;
float bf16_to_fp32(std::uint16_t h) noexcept;
std::uint16_t fp32_to_bf16(float f) noexcept;

}  // namespace moed::kernels
