// Checks byte-size and budget parsing: every unit, decimal vs binary scales, percentages and
// fractions, and that malformed text is an error naming the text.
#include <gtest/gtest.h>

#include "common/units.h"

namespace moed {
namespace {

TEST(units, byte_sizes) {
    EXPECT_EQ(*parse_bytes("8192"), 8192u);
    EXPECT_EQ(*parse_bytes("4GiB"), 4ull << 30);
    EXPECT_EQ(*parse_bytes("4 gib"), 4ull << 30);
    EXPECT_EQ(*parse_bytes("512MiB"), 512ull << 20);
    EXPECT_EQ(*parse_bytes("1.5G"), 3ull << 29);
    EXPECT_EQ(*parse_bytes("300MB"), 300000000u);
    EXPECT_EQ(*parse_bytes("2k"), 2048u);
    EXPECT_EQ(*parse_bytes("1TB"), 1000000000000u);
    EXPECT_EQ(*parse_bytes("7B"), 7u);
}

TEST(units, bad_sizes_name_the_text) {
    for (const char* bad : {"", "GiB", "-1GiB", "4 parsecs", "abc", "1e30TiB"}) {
        auto r = parse_bytes(bad);
        ASSERT_FALSE(r) << bad;
        EXPECT_EQ(r.error().code, errc::invalid_argument);
        EXPECT_NE(r.error().message.find(std::string("'") + bad + "'"), std::string::npos) << r.error().message;
    }
}

TEST(units, budgets) {
    auto pct = parse_budget("25%");
    ASSERT_TRUE(pct);
    EXPECT_TRUE(pct->relative);
    EXPECT_EQ(pct->resolve(1000), 250u);
    auto frac = parse_budget("0.1");
    ASSERT_TRUE(frac);
    EXPECT_TRUE(frac->relative);
    EXPECT_EQ(frac->resolve(1000), 100u);
    auto abs = parse_budget("2GiB");
    ASSERT_TRUE(abs);
    EXPECT_FALSE(abs->relative);
    EXPECT_EQ(abs->resolve(1), 2ull << 30);
    EXPECT_FALSE(parse_budget("0%"));
    EXPECT_FALSE(parse_budget("150%"));
    EXPECT_FALSE(parse_budget("0"));
    EXPECT_FALSE(parse_budget("lots"));
}

TEST(units, format) {
    EXPECT_EQ(format_bytes(512), "512 B");
    EXPECT_EQ(format_bytes(3ull << 29), "1.50 GiB");
    EXPECT_EQ(format_bytes(12ull << 20), "12.00 MiB");
}

}  // namespace
}  // namespace moed
