#include "engine/unicode_utf8.h"

#include <array>

#include "common/assert.h"
#include "engine/tokenizer.h"

namespace moed::engine::utf8 {

namespace {

// GPT-2 keeps the printable Latin-1 bytes as themselves and moves the other 68 bytes (controls,
// space, DEL, the C1 range, NBSP, soft hyphen) to U+0100 and up, in byte order, so that every
// byte has a visible stand-in and no token contains raw whitespace.
bool byte_is_printable(unsigned b) noexcept {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct byte_alphabet {
    // Each stand-in encoded as UTF-8 (at most 2 bytes), plus its length.
    std::array<std::array<char, 2>, 256> text{};
    std::array<std::uint8_t, 256> length{};
    // Code point -> byte; the alphabet lies below U+0144.
    std::array<std::int16_t, 0x144> byte_of{};

    byte_alphabet() {
        byte_of.fill(-1);
        unsigned extra = 0;
        for (unsigned b = 0; b < 256; ++b) {
            const char32_t cp = byte_is_printable(b) ? b : 256 + extra++;
            std::string s;
            append(s, cp);
            MOED_ASSERT(s.size() <= 2 && cp < byte_of.size());
            length[b] = static_cast<std::uint8_t>(s.size());
            for (std::size_t i = 0; i < s.size(); ++i) text[b][i] = s[i];
            byte_of[cp] = static_cast<std::int16_t>(b);
        }
    }
};

const byte_alphabet& alphabet() {
    static const byte_alphabet table;
    return table;
}

}  // namespace

sequence_status check_sequence(std::string_view text, std::size_t pos, std::size_t& length) noexcept {
    const auto at = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const unsigned b0 = at(pos);
    if (b0 < 0x80) {
        length = 1;
        return sequence_status::valid;
    }
    // Expected length and the range allowed for the second byte (Unicode table 3-7).
    std::size_t need = 0;
    unsigned lo = 0x80;
    unsigned hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 3;
        if (b0 == 0xE0) lo = 0xA0;  // no overlongs
        if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 4;
        if (b0 == 0xF0) lo = 0x90;  // no overlongs
        if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        return sequence_status::invalid;
    }
    for (std::size_t i = 1; i < need; ++i) {
        if (pos + i >= text.size()) return sequence_status::incomplete;
        const unsigned b = at(pos + i);
        const unsigned min = i == 1 ? lo : 0x80;
        const unsigned max = i == 1 ? hi : 0xBF;
        if (b < min || b > max) return sequence_status::invalid;
    }
    length = need;
    return sequence_status::valid;
}

bool is_valid(std::string_view text) noexcept {
    std::size_t pos = 0;
    while (pos < text.size()) {
        // ASCII runs are the common case; skip them without the table.
        if (static_cast<unsigned char>(text[pos]) < 0x80) {
            ++pos;
            continue;
        }
        std::size_t length = 0;
        if (check_sequence(text, pos, length) != sequence_status::valid) return false;
        pos += length;
    }
    return true;
}

void append(std::string& out, char32_t cp) {
    MOED_ASSERT(cp <= 0x10FFFF);
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

char32_t decode_lenient(std::string_view text, std::size_t& pos) noexcept {
    const auto at = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const auto continuation = [&](std::size_t i) { return i < text.size() && (at(i) & 0xC0) == 0x80; };
    const unsigned b0 = at(pos);
    if ((b0 & 0x80) == 0) {
        pos += 1;
        return b0;
    }
    if ((b0 & 0x40) != 0) {
        if ((b0 & 0x20) == 0) {
            if (continuation(pos + 1)) {
                const char32_t cp = ((b0 & 0x1Fu) << 6) | (at(pos + 1) & 0x3Fu);
                pos += 2;
                return cp;
            }
        } else if ((b0 & 0x10) == 0) {
            if (continuation(pos + 1) && continuation(pos + 2)) {
                const char32_t cp =
                    ((b0 & 0x0Fu) << 12) | ((at(pos + 1) & 0x3Fu) << 6) | (at(pos + 2) & 0x3Fu);
                pos += 3;
                return cp;
            }
        } else if ((b0 & 0x08) == 0) {
            if (continuation(pos + 1) && continuation(pos + 2) && continuation(pos + 3)) {
                const char32_t cp = ((b0 & 0x07u) << 18) | ((at(pos + 1) & 0x3Fu) << 12) |
                                    ((at(pos + 2) & 0x3Fu) << 6) | (at(pos + 3) & 0x3Fu);
                pos += 4;
                return cp;
            }
        }
    }
    pos += 1;
    return replacement_char;
}

std::string_view byte_to_unicode(std::uint8_t b) noexcept {
    const auto& t = alphabet();
    return std::string_view(t.text[b].data(), t.length[b]);
}

int unicode_to_byte(char32_t cp) noexcept {
    const auto& t = alphabet();
    return cp < t.byte_of.size() ? t.byte_of[cp] : -1;
}

}  // namespace moed::engine::utf8

namespace moed::engine {

// utf8_stream keeps back only a well-formed prefix that the next push may complete; any byte
// that cannot be part of a well-formed sequence becomes U+FFFD at once, so a stream never
// holds more than three bytes.
std::string utf8_stream::push(std::string_view bytes) {
    pending_.append(bytes);
    std::string out;
    out.reserve(pending_.size());
    std::size_t pos = 0;
    while (pos < pending_.size()) {
        std::size_t length = 0;
        const auto status = utf8::check_sequence(pending_, pos, length);
        if (status == utf8::sequence_status::incomplete) break;
        if (status == utf8::sequence_status::valid) {
            out.append(pending_, pos, length);
            pos += length;
        } else {
            utf8::append(out, utf8::replacement_char);
            pos += 1;
        }
    }
    pending_.erase(0, pos);
    return out;
}

std::string utf8_stream::finish() {
    // What is left is a prefix that never completed: each of its bytes is invalid.
    std::string out;
    for (std::size_t i = 0; i < pending_.size(); ++i) utf8::append(out, utf8::replacement_char);
    pending_.clear();
    return out;
}

}  // namespace moed::engine
