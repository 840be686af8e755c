// The pre-tokenizer of byte-level BPE: splits text into words with the regular expressions
// that `tokenizer.ggml.pre` selects, matching llama.cpp's word boundaries.
//
// llama.cpp applies a list of expressions in turn: each one splits every piece the previous
// ones produced into its matches and the gaps between them. For the common expressions
// (gpt-2, llama3, qwen2, kimi-k2) it uses hand-written splitters; for the rest std::regex over
// a text whose non-ASCII code points are "collapsed" to one byte per Unicode category, or,
// for expressions without a Unicode class (deepseek-llm, deepseek-coder), std::wregex over a
// text whose non-ASCII whitespace became a vertical tab. These differ from a standard engine
// in small, fixed ways (U+0085 counts as whitespace, whitespace never matches a literal
// class, '~' is no symbol in a collapsed \p{S}, every non-ASCII letter is both upper and
// lower case in a collapsed class, kimi-k2 keeps mixed-case words whole); the patterns here
// are written for PCRE2 with those differences built in, so a standard engine gives
// llama.cpp's splits (tests/engine/tokenizer_fixture_test.cpp compares them on recorded
// splits of llama.cpp itself).
// Text is first decoded the lenient way llama.cpp decodes it (invalid bytes become U+FFFD,
// overlong forms are shortened), so invalid input splits and encodes as it does there too.
// Remaining known difference: the Unicode version of the character tables (PCRE2's vs
// llama.cpp's generated ones) for code points assigned in between.
// Threads: immutable after create(); split() may run on any number of threads at once (each
// thread keeps its own PCRE2 match data).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace moed::engine {

// One word: bytes [begin, end) of the text split() returned.
struct word_span {
    std::size_t begin = 0;
    std::size_t end = 0;
};

// Working storage for split(), reused across calls to avoid allocating per fragment.
struct pretok_scratch {
    std::string repaired;  // the text after lenient decoding, when the input was not valid
    std::string subject;   // what the regex engine sees, when it must differ from `repaired`
    std::vector<word_span> words;
    std::vector<word_span> next;
};

class pre_tokenizer {
public:
    // `name` is the value of tokenizer.ggml.pre ("" when absent, which means "default").
    // An unknown name is errc::unsupported.
    static result<std::unique_ptr<pre_tokenizer>> create(std::string_view name);
    ~pre_tokenizer();
    pre_tokenizer(const pre_tokenizer&) = delete;
    pre_tokenizer& operator=(const pre_tokenizer&) = delete;

    const std::string& name() const noexcept { return name_; }
    // llama.cpp's ignore_merges: a word that is itself a token is emitted whole.
    bool ignore_merges() const noexcept { return ignore_merges_; }
    // The add_bos default of this pre-tokenizer when the file does not say.
    bool add_bos_default() const noexcept { return add_bos_default_; }

    // Splits one fragment of text (no special tokens in it) into words, left in
    // scratch.words. Returns the bytes the words index: `text` itself when it is valid UTF-8,
    // else scratch.repaired (llama.cpp's repaired form, which BPE must then encode).
    std::string_view split(std::string_view text, pretok_scratch& scratch) const;

private:
    pre_tokenizer() = default;
    struct stage;
    std::string name_;
    bool ignore_merges_ = false;
    bool add_bos_default_ = false;
    std::vector<std::unique_ptr<stage>> stages_;
};

}  // namespace moed::engine
