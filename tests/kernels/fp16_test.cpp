// fp16/bf16 conversions: exhaustive over all 65536 bit patterns against an independent
// reference (IEEE decoding by formula with ldexp; and, where the CPU has F16C, the hardware
// conversion instructions ggml uses on x86). fp32->fp16 is checked on every half, on every
// midpoint between neighbouring halves (ties to even), just above/below each midpoint, and on
// random floats; fp32->bf16 against a round-to-nearest-even reference built from doubles.
#include "kernels/cpu/fp16.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <gtest/gtest.h>
#include <immintrin.h>

#include "kernels/cpu/cpu_features.h"
#include "tests/kernels/kernel_test_util.h"

namespace moed::kernels {
namespace {

std::uint32_t bits_of(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}
float float_of(std::uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// IEEE half decoded by its definition.
double half_value(std::uint16_t h) {
    const int sign = h >> 15, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    double v;
    if (exp == 0) {
        v = std::ldexp(static_cast<double>(mant), -24);
    } else if (exp == 31) {
        v = mant == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
    } else {
        v = std::ldexp(static_cast<double>(mant + 1024), exp - 25);
    }
    return sign ? -v : v;
}

__attribute__((target("f16c"))) float hw_half_to_float(std::uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) std::uint16_t hw_float_to_half(float f) {
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
bool have_f16c() { return detect_isa() != isa::scalar; }

TEST(fp16, to_fp32_exhaustive) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto hh = static_cast<std::uint16_t>(h);
        const float got = fp16_to_fp32(hh);
        const double want = half_value(hh);
        if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(got)) << h;
            // Payload kept and made quiet (as F16C does): the top mantissa bit is set.
            ASSERT_EQ((bits_of(got) >> 13) & 0x3ff, (h & 0x3ffu) | 0x200u) << h;
            ASSERT_EQ(bits_of(got) >> 31, h >> 15) << h;
        } else {
            ASSERT_EQ(static_cast<double>(got), want) << h;
            ASSERT_EQ(std::signbit(got), (h >> 15) != 0) << h;
        }
        if (have_f16c()) {
            ASSERT_EQ(bits_of(got), bits_of(hw_half_to_float(hh))) << h;
        }
    }
}

TEST(fp16, from_fp32_round_trips_every_half) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto hh = static_cast<std::uint16_t>(h);
        const float f = fp16_to_fp32(hh);
        const std::uint16_t back = fp32_to_fp16(f);
        if (std::isnan(f)) {
            ASSERT_EQ(back & 0x7e00, 0x7e00) << h;  // stays a quiet NaN
        } else {
            ASSERT_EQ(back, hh) << h;
        }
        if (have_f16c()) {
            ASSERT_EQ(back, hw_float_to_half(f)) << h;
        }
    }
}

TEST(fp16, from_fp32_ties_and_neighbours) {
    // Midpoints between consecutive finite halves (and just either side of them).
    for (std::uint32_t h = 0; h < 0x7c00; ++h) {
        const double lo = half_value(static_cast<std::uint16_t>(h));
        const double hi = h + 1 == 0x7c00 ? 65536.0 : half_value(static_cast<std::uint16_t>(h + 1));
        const float mid = static_cast<float>((lo + hi) / 2);  // exact: halves have 11 bits
        ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
        for (float sign : {1.0f, -1.0f}) {
            const std::uint16_t s = sign < 0 ? 0x8000 : 0;
            const std::uint32_t even = (h & 1) == 0 ? h : h + 1;
            ASSERT_EQ(fp32_to_fp16(sign * mid), s | even) << h;
            ASSERT_EQ(fp32_to_fp16(sign * std::nextafter(mid, 0.0f)), s | h) << h;
            ASSERT_EQ(fp32_to_fp16(sign * std::nextafter(mid, 1e9f)), s | (h + 1)) << h;
            if (have_f16c()) {
                for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
                    ASSERT_EQ(fp32_to_fp16(sign * f), hw_float_to_half(sign * f)) << h;
                }
            }
        }
    }
}

TEST(fp16, from_fp32_special_and_random) {
    EXPECT_EQ(fp32_to_fp16(0.0f), 0x0000);
    EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
    EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
    EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7bff);
    EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);
    EXPECT_EQ(fp32_to_fp16(1e10f), 0x7c00);
    EXPECT_EQ(fp32_to_fp16(-std::numeric_limits<float>::infinity()), 0xfc00);
    EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie to even (zero)
    EXPECT_EQ(fp32_to_fp16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
    EXPECT_EQ(fp32_to_fp16(1e-30f), 0x0000);
    EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()) & 0x7e00, 0x7e00);
    if (!have_f16c()) GTEST_SKIP() << "no F16C to compare random floats with";
    std::mt19937 rng(11);
    std::uniform_int_distribution<std::uint32_t> any_bits;
    for (int i = 0; i < 2000000; ++i) {
        const float f = float_of(any_bits(rng));
        ASSERT_EQ(fp32_to_fp16(f), hw_float_to_half(f)) << std::hex << bits_of(f);
    }
}

// The row conversion (the KV cache's stores) gives fp32_to_fp16's bits on every ISA and at
// every length, tails included; the input mixes random bit patterns (NaNs, infinities,
// subnormals) with ordinary activations.
TEST(fp16, row_conversion_matches_scalar) {
    std::mt19937 rng(12);
    std::uniform_int_distribution<std::uint32_t> any_bits;
    std::normal_distribution<float> normal(0.0f, 4.0f);
    for (std::int64_t n : {1, 15, 16, 17, 128, 1000}) {
        std::vector<float> x(static_cast<std::size_t>(n));
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % 3 == 0) ? float_of(any_bits(rng)) : normal(rng);
        for (isa level : test::available_isas()) {
            test::isa_scope scope(level);
            std::vector<std::uint16_t> got(x.size() + 1, 0xabcd);
            fp32_to_fp16_row(x.data(), got.data(), n);
            for (std::size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], fp32_to_fp16(x[i])) << "n " << n << " i " << i;
            EXPECT_EQ(got.back(), 0xabcd) << "wrote past the end";
        }
    }
}

// bf16 by definition: the nearest bf16 (ties to even) of the float, computed with doubles.
std::uint16_t bf16_reference(float f) {
    const std::uint32_t u = bits_of(f);
    if (std::isnan(f)) return static_cast<std::uint16_t>((u >> 16) | 0x40);
    const std::uint32_t down = u & 0xffff0000u;
    const std::uint32_t up = down + 0x10000u;
    const double dd = std::fabs(static_cast<double>(float_of(down)) - static_cast<double>(f));
    // `up` may step to infinity; the double distance treats it as 2^128.
    const double up_val = ((up & 0x7fffffffu) == 0x7f800000u) ? std::copysign(std::ldexp(1.0, 128), f)
                                                              : static_cast<double>(float_of(up));
    const double du = std::fabs(up_val - static_cast<double>(f));
    if (dd < du) return static_cast<std::uint16_t>(down >> 16);
    if (du < dd) return static_cast<std::uint16_t>(up >> 16);
    return static_cast<std::uint16_t>(((down >> 16) & 1) ? up >> 16 : down >> 16);
}

TEST(bf16, to_fp32_exhaustive_and_round_trip) {
    for (std::uint32_t h = 0; h < 65536; ++h) {
        const auto hh = static_cast<std::uint16_t>(h);
        const float f = bf16_to_fp32(hh);
        ASSERT_EQ(bits_of(f), h << 16);
        if (!std::isnan(f)) {
            ASSERT_EQ(fp32_to_bf16(f), hh) << h;
        } else {
            ASSERT_EQ(fp32_to_bf16(f), hh | 0x40) << h;
        }
    }
}

TEST(bf16, from_fp32_matches_reference) {
    std::mt19937 rng(12);
    std::uniform_int_distribution<std::uint32_t> any_bits;
    for (int i = 0; i < 2000000; ++i) {
        const float f = float_of(any_bits(rng));
        ASSERT_EQ(fp32_to_bf16(f), bf16_reference(f)) << std::hex << bits_of(f);
    }
    for (std::uint32_t h = 0; h < 65536; ++h) {  // every tie
        const float tie = float_of((h << 16) | 0x8000u);
        if (!std::isnan(tie)) {
            ASSERT_EQ(fp32_to_bf16(tie), bf16_reference(tie)) << h;
        }
    }
}

}  // namespace
}  // namespace moed::kernels
