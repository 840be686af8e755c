// UTF-8 helpers for the tokenizer: strict sequence checks (for utf8_stream), the lenient
// decoding llama.cpp applies to text before pre-tokenizing (so invalid input yields the same
// ids), and GPT-2's byte-level alphabet (each byte stands for one printable code point).
// Threads: pure functions over immutable tables; any thread may call them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moed::engine::utf8 {

inline constexpr char32_t replacement_char = 0xFFFD;

enum class sequence_status : std::uint8_t {
    valid,       // a complete, well-formed sequence of `length` bytes
    incomplete,  // a well-formed prefix that runs into the end of the data
    invalid,     // the byte at `pos` can never start a well-formed sequence here
};

// Classifies the bytes at `pos` by the Unicode well-formedness table (no overlongs, no
// surrogates, nothing above U+10FFFF). `length` is set for `valid` only.
sequence_status check_sequence(std::string_view text, std::size_t pos, std::size_t& length) noexcept;

// True when all of `text` is well-formed UTF-8.
bool is_valid(std::string_view text) noexcept;

// Appends the UTF-8 form of `cp` (which must be at most U+10FFFF).
void append(std::string& out, char32_t cp);

// llama.cpp's decoder: checks only lead bits and continuation markers, so it accepts
// overlong forms and surrogates; a byte that does not start such a sequence yields U+FFFD
// and decoding resumes at the next byte. May return values above U+10FFFF (F5..F7 leads).
char32_t decode_lenient(std::string_view text, std::size_t& pos) noexcept;

// GPT-2's bytes_to_unicode(): the UTF-8 text (1 or 2 bytes) of the code point byte `b`
// stands for in byte-level BPE vocabularies.
std::string_view byte_to_unicode(std::uint8_t b) noexcept;
// The inverse: the byte a code point stands for, or -1 when it is not in the alphabet.
int unicode_to_byte(char32_t cp) noexcept;

}  // namespace moed::engine::utf8
