#include "kernels/cpu/cpu_features.h"

#include <cpuid.h>

#include <atomic>
#include <cstdlib>

#include "common/log.h"
#include "kernels/cpu/kernel_impl.h"

namespace moed::kernels {

namespace {

// F16C from CPUID leaf 1 (ECX bit 29): clang's __builtin_cpu_supports does not know "f16c".
bool has_f16c() noexcept {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
}

isa probe() noexcept {
    __builtin_cpu_init();
    // AVX-512 kernels use BW byte ops, VL on 256-bit vectors and VNNI dot products; they also
    // rely on the AVX2/FMA/F16C subset, which every AVX-512 CPU has.
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && has_f16c()) {
        return isa::avx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c()) {
        return isa::avx2;
    }
    return isa::scalar;
}

// -1: not chosen yet. Relaxed order is enough: every thread computes the same value.
std::atomic<int> g_active{-1};

}  // namespace

isa detect_isa() noexcept {
    static const isa detected = probe();
    return detected;
}

std::optional<isa> parse_isa(std::string_view name) noexcept {
    if (name == "scalar") return isa::scalar;
    if (name == "avx2") return isa::avx2;
    if (name == "avx512") return isa::avx512;
    return std::nullopt;
}

result<isa> isa_from_setting(std::string_view value, isa detected) {
    if (value.empty()) return detected;
    const std::optional<isa> named = parse_isa(value);
    if (!named) {
        return make_error(errc::invalid_argument, "{}='{}' is not a level: use scalar, avx2 or avx512", isa_env_var,
                          value);
    }
    return static_cast<int>(*named) <= static_cast<int>(detected) ? *named : detected;
}

result<void> check_isa_env() {
    const char* value = std::getenv(isa_env_var);
    if (value == nullptr) return {};
    auto chosen = isa_from_setting(value, detect_isa());
    if (!chosen) return unexpected(chosen.error());
    return {};
}

isa env_isa() noexcept {
    // A function-local static: read and reported once, whichever thread asks first.
    static const isa chosen = [] {
        const isa detected = detect_isa();
        const char* value = std::getenv(isa_env_var);
        if (value == nullptr) return detected;
        auto from_env = isa_from_setting(value, detected);
        if (!from_env) {
            MOED_LOG_WARN("kernels", "{}; using {}", from_env.error().message, isa_name(detected));
            return detected;
        }
        if (*from_env != detected || parse_isa(value) != detected) {
            MOED_LOG_INFO("kernels", "{}={}: kernels use {} (the CPU has {})", isa_env_var, value,
                          isa_name(*from_env), isa_name(detected));
        }
        return *from_env;
    }();
    return chosen;
}

isa active_isa() noexcept {
    int v = g_active.load(std::memory_order_relaxed);
    if (v < 0) {
        v = static_cast<int>(env_isa());
        g_active.store(v, std::memory_order_relaxed);
    }
    return static_cast<isa>(v);
}

isa force_isa(isa level) noexcept {
    const isa best = detect_isa();
    const isa chosen = static_cast<int>(level) <= static_cast<int>(best) ? level : best;
    g_active.store(static_cast<int>(chosen), std::memory_order_relaxed);
    return chosen;
}

namespace detail {

namespace {
std::atomic<bool> g_bf16_allowed{true};
}  // namespace

bool use_avx512_bf16() noexcept {
    static const bool has = [] {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512bf16") != 0;
    }();
    return has && g_bf16_allowed.load(std::memory_order_relaxed);
}

void allow_avx512_bf16(bool allowed) noexcept { g_bf16_allowed.store(allowed, std::memory_order_relaxed); }

}  // namespace detail

std::string_view isa_name(isa level) noexcept {
    switch (level) {
        case isa::scalar: return "scalar";
        case isa::avx2: return "avx2";
        case isa::avx512: return "avx512";
    }
    return "unknown";
}

}  // namespace moed::kernels
