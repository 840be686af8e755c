// Helpers shared by the CPU kernel tests: the ISA levels this machine can run, a guard that
// forces a level for one scope, random data and error measures.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"

namespace moed::kernels::test {

// Every level up to the detected one (scalar is always there).
inline std::vector<isa> available_isas() {
    std::vector<isa> out{isa::scalar};
    if (static_cast<int>(detect_isa()) >= static_cast<int>(isa::avx2)) out.push_back(isa::avx2);
    if (detect_isa() == isa::avx512) out.push_back(isa::avx512);
    return out;
}

// Forces a level for the guard's lifetime and restores the detected one afterwards.
class isa_scope {
public:
    explicit isa_scope(isa level) { force_isa(level); }
    ~isa_scope() { force_isa(detect_isa()); }
    isa_scope(const isa_scope&) = delete;
    isa_scope& operator=(const isa_scope&) = delete;
};

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float stddev = 1.0f) {
    std::normal_distribution<float> normal(0.0f, stddev);
    std::vector<float> v(n);
    for (auto& x : v) x = normal(rng);
    return v;
}

// Normalised mean squared error of `got` against `want`: sum (g - w)^2 / sum w^2.
inline double nmse(const float* got, const float* want, std::size_t n) {
    double err = 0.0, norm = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
        err += d * d;
        norm += static_cast<double>(want[i]) * static_cast<double>(want[i]);
    }
    return norm > 0.0 ? err / norm : err;
}

inline double max_abs_diff(const float* a, const float* b, std::size_t n) {
    double m = 0.0;
    for (std::size_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    return m;
}

inline std::string isa_label(isa level) { return std::string(isa_name(level)); }

}  // namespace moed::kernels::test
