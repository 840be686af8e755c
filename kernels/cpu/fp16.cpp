// Half and bfloat16 conversions in plain integer arithmetic, so they give the same bits on
// every CPU and under any floating-point environment (no FTZ/DAZ dependence). They agree
// bit for bit with the F16C instructions ggml uses on x86 (round to nearest even; a NaN
// keeps its sign and top payload bits and becomes quiet).
#include "kernels/cpu/fp16.h"

#include <cstring>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/ops_impl.h"

namespace moed::kernels {

namespace {

std::uint32_t bits_of(float f) noexcept {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

float float_of(std::uint32_t u) noexcept {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

}  // namespace

float fp16_to_fp32(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) {  // inf, or NaN made quiet (as vcvtph2ps does), payload kept
        return float_of(sign | 0x7f800000u | (mant << 13) | (mant != 0 ? 0x400000u : 0u));
    }
    if (exp != 0) return float_of(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return float_of(sign);
    // Subnormal half: normalise the mantissa into a normal float.
    std::uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --e;
    }
    return float_of(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

std::uint16_t fp32_to_fp16(float f) noexcept {
    const std::uint32_t u = bits_of(f);
    const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) {  // NaN: quiet it, keep the top payload bits
        return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    }
    if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
    if (a >= 0x38800000u) {  // normal half
        std::uint32_t r = (a >> 13) - (112u << 10);
        const std::uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carries into the exponent
        return static_cast<std::uint16_t>(sign | r);
    }
    if (a <= 0x33000000u) return sign;  // <= 2^-25 rounds (to even) to zero
    // Subnormal half: value = m * 2^(e - 150); one half unit is 2^-24.
    const std::uint32_t e = a >> 23;
    const std::uint32_t m = (a & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - e;  // 14..24
    std::uint32_t r = m >> shift;
    const std::uint32_t rem = m & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<std::uint16_t>(sign | r);
}

float bf16_to_fp32(std::uint16_t h) noexcept {
    return float_of(static_cast<std::uint32_t>(h) << 16);
}

std::uint16_t fp32_to_bf16(float f) noexcept {
    const std::uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: force quiet
        return static_cast<std::uint16_t>((u >> 16) | 64u);
    }
    return static_cast<std::uint16_t>((u + (0x7fffu + ((u >> 16) & 1u))) >> 16);
}

void fp32_to_fp16_row(const float* x, std::uint16_t* y, std::int64_t n) noexcept {
    if (active_isa() == isa::avx512) return detail::fp32_to_fp16_row_avx512(x, y, n);
    for (std::int64_t i = 0; i < n; ++i) y[i] = fp32_to_fp16(x[i]);
}

}  // namespace moed::kernels
