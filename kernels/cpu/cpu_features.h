// Which SIMD path the CPU kernels take. Chosen once at run time from CPUID; tests may force
// a lower level to compare every path with the scalar reference on the same machine.
#pragma once

#include <cstdint>
#include <string_view>

namespace moed::kernels {

enum class isa : std::uint8_t { scalar = 0, avx2 = 1, avx512 = 2 };

// The best level this CPU supports (AVX-512 needs F, BW, VL and VNNI; AVX2 needs FMA, F16C).
isa detect_isa() noexcept;
// The level kernels use now: detect_isa() unless forced lower.
isa active_isa() noexcept;
// Forces a level (clamped to detect_isa()); returns the level actually set.
isa force_isa(isa level) noexcept;
std::string_view isa_name(isa level) noexcept;

}  // namespace moed::kernels
