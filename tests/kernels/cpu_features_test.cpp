// The MOED_ISA setting: which level a value selects on CPUs of each level (named levels are
// clamped to the CPU's, an empty value means no cap, anything else is an error naming the
// value and the accepted names), and the names round-trip through isa_name. How moed and
// moe-run react to the variable itself is checked by tests/tools/moe_run_test.cpp.
#include "kernels/cpu/cpu_features.h"

#include <gtest/gtest.h>

namespace moed::kernels {
namespace {

TEST(cpu_features, names_round_trip) {
    for (isa level : {isa::scalar, isa::avx2, isa::avx512}) {
        const auto parsed = parse_isa(isa_name(level));
        ASSERT_TRUE(parsed.has_value()) << isa_name(level);
        EXPECT_EQ(*parsed, level);
    }
    EXPECT_FALSE(parse_isa("AVX2").has_value());
    EXPECT_FALSE(parse_isa("avx").has_value());
    EXPECT_FALSE(parse_isa("").has_value());
}

TEST(cpu_features, setting_is_clamped_to_the_cpu) {
    struct row {
        const char* value;
        isa cpu;
        isa want;
    };
    const row rows[] = {
        {"scalar", isa::avx512, isa::scalar}, {"avx2", isa::avx512, isa::avx2},   {"avx512", isa::avx512, isa::avx512},
        {"avx512", isa::avx2, isa::avx2},     {"avx2", isa::avx2, isa::avx2},     {"avx512", isa::scalar, isa::scalar},
        {"avx2", isa::scalar, isa::scalar},   {"", isa::avx512, isa::avx512},     {"", isa::avx2, isa::avx2},
    };
    for (const row& r : rows) {
        const auto got = isa_from_setting(r.value, r.cpu);
        ASSERT_TRUE(got.has_value()) << "'" << r.value << "': " << got.error().message;
        EXPECT_EQ(*got, r.want) << "'" << r.value << "' on " << isa_name(r.cpu);
    }
}

TEST(cpu_features, unknown_setting_is_an_error_naming_it) {
    for (const char* value : {"AVX2", "sse4", "avx-512", " avx2"}) {
        const auto got = isa_from_setting(value, isa::avx512);
        ASSERT_FALSE(got.has_value()) << value;
        EXPECT_EQ(got.error().code, errc::invalid_argument);
        EXPECT_NE(got.error().message.find(value), std::string::npos) << got.error().message;
        EXPECT_NE(got.error().message.find("MOED_ISA"), std::string::npos) << got.error().message;
        EXPECT_NE(got.error().message.find("avx512"), std::string::npos) << got.error().message;
    }
}

TEST(cpu_features, active_level_never_exceeds_the_cpu) {
    EXPECT_LE(static_cast<int>(active_isa()), static_cast<int>(detect_isa()));
    EXPECT_LE(static_cast<int>(env_isa()), static_cast<int>(detect_isa()));
}

}  // namespace
}  // namespace moed::kernels
