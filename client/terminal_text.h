// Text that moectl prints to a terminal but did not write itself (names, sources, messages
// and status fields from moed, arguments echoed back): terminal_safe() makes it inert, so a
// string can neither drive the terminal (escape sequences, C1 controls) nor forge output
// (a newline or carriage return inside a field starting a fake row, NUL truncating it).
// Every such byte becomes a visible escape; valid UTF-8 text otherwise passes unchanged.
//   C0 controls, DEL      \n \r \t, else \xHH (ESC is \x1b, NUL \x00)
//   backslash             \\ (so an escape in the output always means an escaped byte)
//   C1 controls U+0080-U+009F, line and paragraph separators U+2028/U+2029, bidirectional
//   embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069)   \u{HHHH}
//   a byte that is not part of valid UTF-8 (stray continuation, overlong form, surrogate,
//   past U+10FFFF, truncated sequence)   \xHH
// Also: where the first invalid UTF-8 sequence of a text starts, to refuse input that
// cannot go into JSON with a message naming the byte offset.
// Header-only and free of moed's code, so the tests check it directly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moed::moectl {

// The length (1-4) of the valid UTF-8 sequence starting at text[at], or 0 when the bytes
// there are not one (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF).
// `code_point` receives the decoded value when the result is not 0.
inline std::size_t utf8_sequence(std::string_view text, std::size_t at, std::uint32_t& code_point) noexcept {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const unsigned char b0 = byte(at);
    if (b0 < 0x80) {
        code_point = b0;
        return 1;
    }
    std::size_t n = 0;
    std::uint32_t cp = 0;
    std::uint32_t min = 0;
    if ((b0 & 0xE0) == 0xC0) {
        n = 2, cp = b0 & 0x1Fu, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
        n = 3, cp = b0 & 0x0Fu, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
        n = 4, cp = b0 & 0x07u, min = 0x10000;
    } else {
        return 0;  // a continuation byte or 0xF8..0xFF
    }
    if (text.size() - at < n) return 0;
    for (std::size_t i = 1; i < n; ++i) {
        const unsigned char b = byte(at + i);
        if ((b & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (b & 0x3Fu);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    code_point = cp;
    return n;
}

// The byte offset where the first invalid UTF-8 sequence starts; nullopt when valid.
inline std::optional<std::size_t> first_invalid_utf8(std::string_view text) noexcept {
    std::uint32_t cp = 0;
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t n = utf8_sequence(text, at, cp);
        if (n == 0) return at;
        at += n;
    }
    return std::nullopt;
}

// Whether a code point that is valid UTF-8 must still be shown escaped.
inline bool is_unsafe_code_point(std::uint32_t cp) noexcept {
    return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029 ||
           (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069);
}

// `text` with every unsafe byte or character replaced by a visible escape (see above).
inline std::string terminal_safe(std::string_view text) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(text.size());
    std::uint32_t cp = 0;
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t n = utf8_sequence(text, at, cp);
        if (n == 0) {
            const auto b = static_cast<unsigned char>(text[at]);
            out += "\\x";
            out += hex[b >> 4];
            out += hex[b & 0xF];
            ++at;
            continue;
        }
        if (cp == '\\') {
            out += "\\\\";
        } else if (cp == '\n') {
            out += "\\n";
        } else if (cp == '\r') {
            out += "\\r";
        } else if (cp == '\t') {
            out += "\\t";
        } else if (cp < 0x20 || cp == 0x7F) {
            out += "\\x";
            out += hex[cp >> 4];
            out += hex[cp & 0xF];
        } else if (is_unsafe_code_point(cp)) {
            out += "\\u{";
            for (int shift = 12; shift >= 0; shift -= 4) out += hex[(cp >> shift) & 0xF];
            out += '}';
        } else {
            out.append(text.substr(at, n));
        }
        at += n;
    }
    return out;
}

}  // namespace moed::moectl
