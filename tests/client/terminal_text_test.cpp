// moectl's terminal escaping and UTF-8 check (client/terminal_text.h), byte by byte: plain
// and multi-byte text passes unchanged; C0 controls, DEL, backslash, C1 controls, line
// separators and bidirectional overrides become visible escapes; every kind of invalid
// UTF-8 (stray continuation, overlong form, surrogate, past U+10FFFF, truncated, 0xF8+) is
// escaped byte by byte and reported at its offset; and no output of the escaper holds a
// control byte or invalid UTF-8, for every single byte and every byte pair.
#include <string>

#include <gtest/gtest.h>

#include "client/terminal_text.h"

namespace moed::moectl {
namespace {

TEST(terminal_text, plain_text_passes_unchanged) {
    EXPECT_EQ(terminal_safe(""), "");
    EXPECT_EQ(terminal_safe("tinymoe qwen3moe:00aa 3 prompts from c.jsonl"),
              "tinymoe qwen3moe:00aa 3 prompts from c.jsonl");
    // Two, three and four byte sequences, including U+00A0 just past C1 and U+10FFFF.
    const std::string multi = "caf\xc3\xa9 \xc2\xa0 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    EXPECT_EQ(terminal_safe(multi), multi);
}

TEST(terminal_text, controls_become_visible_escapes) {
    EXPECT_EQ(terminal_safe(std::string("a\x1b[2Jb", 6)), "a\\x1b[2Jb");
    EXPECT_EQ(terminal_safe(std::string("a\0b", 3)), "a\\x00b");
    EXPECT_EQ(terminal_safe("row\nforged\rover\ttab"), "row\\nforged\\rover\\ttab");
    EXPECT_EQ(terminal_safe("\x7f\x07\x08"), "\\x7f\\x07\\x08");
    EXPECT_EQ(terminal_safe("C:\\path"), "C:\\\\path");
    EXPECT_EQ(terminal_safe("\xc2\x80\xc2\x9b\xc2\x9f"), "\\u{0080}\\u{009b}\\u{009f}");
    EXPECT_EQ(terminal_safe("\xe2\x80\xa8\xe2\x80\xa9"), "\\u{2028}\\u{2029}");
    EXPECT_EQ(terminal_safe("\xe2\x80\xae" "abc\xe2\x81\xa6"), "\\u{202e}abc\\u{2066}");
}

TEST(terminal_text, invalid_utf8_is_escaped_and_located) {
    struct bad {
        std::string text;
        std::string shown;
        std::size_t offset;
    };
    const bad cases[] = {
        {"\xff\xfe", "\\xff\\xfe", 0},
        {"ab\x80", "ab\\x80", 2},                         // stray continuation
        {"\xc0\xaf", "\\xc0\\xaf", 0},                     // overlong '/'
        {"x\xe0\x80\xaf", "x\\xe0\\x80\\xaf", 1},          // overlong, three bytes
        {"\xed\xa0\x80", "\\xed\\xa0\\x80", 0},            // a surrogate
        {"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80", 0},   // past U+10FFFF
        {"ok\xe2\x82", "ok\\xe2\\x82", 2},                 // truncated at the end
        {"\xc3(", "\\xc3(", 0},                            // truncated by an ASCII byte
        {"\xf8\x88\x80\x80\x80", "\\xf8\\x88\\x80\\x80\\x80", 0},
    };
    for (const bad& c : cases) {
        EXPECT_EQ(terminal_safe(c.text), c.shown);
        ASSERT_TRUE(first_invalid_utf8(c.text).has_value()) << c.shown;
        EXPECT_EQ(*first_invalid_utf8(c.text), c.offset) << c.shown;
    }
    EXPECT_FALSE(first_invalid_utf8("caf\xc3\xa9 \xf0\x9f\x98\x80").has_value());
    EXPECT_FALSE(first_invalid_utf8(std::string("nul\0inside", 10)).has_value());  // valid, if unprintable
}

// Whatever goes in, what comes out is valid UTF-8 without a control character.
void expect_inert(const std::string& in) {
    const std::string out = terminal_safe(in);
    ASSERT_FALSE(first_invalid_utf8(out).has_value()) << "from " << ::testing::PrintToString(in);
    for (std::size_t i = 0; i < out.size(); ++i) {
        const auto b = static_cast<unsigned char>(out[i]);
        ASSERT_TRUE(b >= 0x20 && b != 0x7f) << "byte " << int(b) << " from " << ::testing::PrintToString(in);
        if (b == 0xc2) {
            ASSERT_FALSE(static_cast<unsigned char>(out[i + 1]) < 0xa0) << ::testing::PrintToString(in);
        }
    }
}

TEST(terminal_text, every_byte_and_pair_comes_out_inert) {
    for (int a = 0; a < 256; ++a) {
        expect_inert(std::string(1, static_cast<char>(a)));
        for (int b = 0; b < 256; ++b) expect_inert(std::string{static_cast<char>(a), static_cast<char>(b)});
    }
}

}  // namespace
}  // namespace moed::moectl
