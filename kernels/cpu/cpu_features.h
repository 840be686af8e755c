// Which SIMD path the CPU kernels take. Chosen once at run time from CPUID and the MOED_ISA
// environment variable; tests may force a lower level to compare every path with the scalar
// reference on the same machine.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "common/result.h"

namespace moed::kernels {

enum class isa : std::uint8_t { scalar = 0, avx2 = 1, avx512 = 2 };

// The environment variable that caps the level: "scalar", "avx2" or "avx512" (unset or
// empty: no cap). A level above what the CPU has is clamped to detect_isa(). Its use: to run
// on an AVX-512 machine exactly what an AVX2-only machine computes (numerics differ between
// levels in the last bits, so greedy output can differ at near-ties).
inline constexpr const char* isa_env_var = "MOED_ISA";

// The best level this CPU supports (AVX-512 needs F, BW, VL and VNNI; AVX2 needs FMA, F16C).
isa detect_isa() noexcept;
// The level kernels use now: env_isa() unless forced.
isa active_isa() noexcept;
// Forces a level (clamped to detect_isa()); returns the level actually set.
isa force_isa(isa level) noexcept;
std::string_view isa_name(isa level) noexcept;
std::optional<isa> parse_isa(std::string_view name) noexcept;

// What a MOED_ISA value selects on a CPU whose best level is `detected`: the named level
// clamped to `detected`, `detected` when the value is empty, and an invalid_argument error
// naming the value and the accepted names otherwise.
result<isa> isa_from_setting(std::string_view value, isa detected);
// The level MOED_ISA selects on this CPU, read once (a later change of the environment is
// not seen). An unknown value falls back to detect_isa() with a warning in the log; programs
// that start from a command line call check_isa_env() first to refuse it instead.
isa env_isa() noexcept;
// The error for an unknown MOED_ISA value (what env_isa() would warn about), or nothing.
result<void> check_isa_env();

}  // namespace moed::kernels
