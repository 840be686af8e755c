#include "engine/tokenizer_pretok.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <atomic>

#include "common/log.h"
#include "engine/unicode_utf8.h"

namespace moed::engine {

namespace {

// The expressions, written for PCRE2 (UTF + UCP) so that they split exactly where llama.cpp
// splits. Differences from the tokenizer.json originals, each on purpose:
// - `\s` becomes [\s\x{85}]: llama.cpp's whitespace set includes U+0085 (NEL), PCRE2's does
//   not; `\S` correspondingly becomes [^\s\x{85}].
// - llama.cpp's adapted contractions ('[sS] ...) replace (?i:'s ...): with PCRE2's Unicode
//   case folding (?i) would also accept U+017F for 's'.
// - gpt-2 gains the trailing `|\s+` that its hand-written splitter implements without the
//   expression saying so (a lone whitespace before a non-space).
#define MOED_WS "[\\s\\x{85}]"
#define MOED_NOT_WS "[^\\s\\x{85}]"
#define MOED_CONTRACTIONS_CI "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
#define MOED_WS_TAIL MOED_WS "*[\\r\\n]+|" MOED_WS "+(?!" MOED_NOT_WS ")|" MOED_WS "+"

constexpr const char* pattern_gpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\x{85}\\p{L}\\p{N}]+|" MOED_WS
    "+(?!" MOED_NOT_WS ")|" MOED_WS "+";

constexpr const char* pattern_llama3 =
    MOED_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\x{85}\\p{L}\\p{N}]+[\\r\\n]*|" MOED_WS_TAIL;

constexpr const char* pattern_qwen2 =
    MOED_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\x{85}\\p{L}\\p{N}]+[\\r\\n]*|" MOED_WS_TAIL;

// Qwen3.5: letter runs also take combining marks.
constexpr const char* pattern_qwen35 =
    MOED_CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\x{85}\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|" MOED_WS_TAIL;

// DeepSeek-V3 (three expressions). llama.cpp runs the third through its collapsed-category
// std::regex path, whose \p{S} misses ASCII '~': so '~' may prefix a letter run like any
// non-letter, and never joins a punctuation run.
constexpr const char* pattern_deepseek3_digits = "\\p{N}{1,3}";
constexpr const char* pattern_deepseek3_cjk = "[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+";
constexpr const char* pattern_deepseek3_main =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|(?:~|[^\\r\\n\\p{L}\\p{P}\\p{S}])?[\\p{L}\\p{M}]+|"
    " ?(?:(?!~)[\\p{P}\\p{S}])+[\\r\\n]*|" MOED_WS_TAIL;

// llama.cpp's default (pre-tokenizer missing or "default").
constexpr const char* pattern_default_punct = "[\\p{P}$+<=>^~|]+";
constexpr const char* pattern_digits = "\\p{N}+";
constexpr const char* pattern_digit_triples = "[0-9][0-9][0-9]";
constexpr const char* pattern_one_digit = "\\p{N}";

#undef MOED_WS_TAIL
#undef MOED_CONTRACTIONS_CI
#undef MOED_NOT_WS
#undef MOED_WS

struct pre_family {
    std::vector<const char*> names;
    std::vector<const char*> patterns;
    bool ignore_merges;
    bool add_bos;
};

// Names as llama.cpp's llama-vocab.cpp maps them; only families whose other settings do not
// change encoding are listed.
const std::array<pre_family, 8>& families() {
    static const std::array<pre_family, 8> table = {{
        {{"", "default"},
         {pattern_default_punct, pattern_gpt2, pattern_digits, pattern_digit_triples},
         false, false},
        {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
          "mellum", "modern-bert", "mpt", "olmo", "jais", "exaone4", "trillion"},
         {pattern_gpt2}, false, false},
        {{"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
          "jina-v5-nano"},
         {pattern_llama3}, true, true},
        {{"dbrx", "smaug-bpe"}, {pattern_llama3}, false, false},
        {{"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2"},
         {pattern_qwen2}, false, false},
        {{"qwen35"}, {pattern_qwen35}, false, false},
        {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
         {pattern_one_digit, pattern_gpt2}, false, false},
        {{"deepseek-v3"},
         {pattern_deepseek3_digits, pattern_deepseek3_cjk, pattern_deepseek3_main}, false, false},
    }};
    return table;
}

// PCRE2 match data, match context and JIT stack belong to one thread; the compiled
// expressions are shared. One set per thread serves every pre_tokenizer.
struct thread_match_state {
    pcre2_match_data* data = nullptr;
    pcre2_match_context* context = nullptr;
    pcre2_jit_stack* jit_stack = nullptr;

    // Deep enough for long whitespace runs; the interpreter is the fallback beyond it.
    static constexpr std::size_t jit_stack_start_bytes = 32 * 1024;
    static constexpr std::size_t jit_stack_max_bytes = 1024 * 1024;
    // Our expressions have at most two groups; more pairs keep rc > 0 regardless.
    static constexpr std::uint32_t ovector_pairs = 8;

    thread_match_state() {
        data = pcre2_match_data_create(ovector_pairs, nullptr);
        context = pcre2_match_context_create(nullptr);
        jit_stack = pcre2_jit_stack_create(jit_stack_start_bytes, jit_stack_max_bytes, nullptr);
        MOED_ASSERT(data != nullptr && context != nullptr);
        if (jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
    }
    ~thread_match_state() {
        pcre2_jit_stack_free(jit_stack);
        pcre2_match_context_free(context);
        pcre2_match_data_free(data);
    }
    thread_match_state(const thread_match_state&) = delete;
    thread_match_state& operator=(const thread_match_state&) = delete;
};

thread_match_state& match_state() {
    thread_local thread_match_state state;
    return state;
}

std::string pcre_message(int code) {
    std::array<PCRE2_UCHAR, 256> buffer{};
    pcre2_get_error_message(code, buffer.data(), buffer.size());
    return std::string(reinterpret_cast<const char*>(buffer.data()));
}

}  // namespace

struct pre_tokenizer::stage {
    pcre2_code* code = nullptr;
    ~stage() { pcre2_code_free(code); }

    // Appends to `out` the pieces of subject[piece]: every match, and every gap between
    // matches, in order (llama.cpp's regex split).
    void split(std::string_view subject, word_span piece, std::vector<word_span>& out) const;
};

void pre_tokenizer::stage::split(std::string_view subject, word_span piece,
                                 std::vector<word_span>& out) const {
    auto& state = match_state();
    // The piece is the whole subject for the engine: lookaheads and \z see its end, exactly as
    // llama.cpp matches each piece on its own.
    const auto* base = reinterpret_cast<PCRE2_SPTR>(subject.data() + piece.begin);
    const std::size_t length = piece.end - piece.begin;
    std::size_t done = 0;  // end of the last piece emitted
    std::size_t pos = 0;   // where the next search starts
    while (pos < length) {
        int rc = pcre2_match(code, base, length, pos, PCRE2_NO_UTF_CHECK, state.data, state.context);
        if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
            // JIT stack or match limits: retry once with the interpreter, whose heap grows.
            rc = pcre2_match(code, base, length, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, state.data,
                             state.context);
            if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
                static std::atomic<bool> warned{false};
                if (!warned.exchange(true)) {
                    MOED_LOG_WARN("tokenizer", "pre-tokenizer match failed ({}); keeping {} bytes as one word",
                                  pcre_message(rc), length - done);
                }
            }
        }
        if (rc < 0) break;
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(state.data);
        const std::size_t match_begin = ovector[0];
        const std::size_t match_end = ovector[1];
        if (match_end <= match_begin) {
            // An empty match (none of our expressions makes one): step over one code point.
            pos = match_begin + 1;
            while (pos < length && (base[pos] & 0xC0) == 0x80) ++pos;
            continue;
        }
        if (match_begin > done) out.push_back({piece.begin + done, piece.begin + match_begin});
        out.push_back({piece.begin + match_begin, piece.begin + match_end});
        done = pos = match_end;
    }
    if (done < length) out.push_back({piece.begin + done, piece.end});
}

result<std::unique_ptr<pre_tokenizer>> pre_tokenizer::create(std::string_view name) {
    const pre_family* family = nullptr;
    for (const auto& f : families()) {
        for (const char* n : f.names) {
            if (name == n) family = &f;
        }
    }
    if (family == nullptr) {
        return make_error(errc::unsupported, "tokenizer.ggml.pre = '{}' is not a supported pre-tokenizer",
                          name);
    }
    std::unique_ptr<pre_tokenizer> pre(new pre_tokenizer());
    pre->name_ = name.empty() ? "default" : std::string(name);
    pre->ignore_merges_ = family->ignore_merges;
    pre->add_bos_default_ = family->add_bos;
    for (const char* pattern : family->patterns) {
        auto s = std::make_unique<stage>();
        int error_code = 0;
        PCRE2_SIZE error_offset = 0;
        s->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                                PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error_code, &error_offset,
                                nullptr);
        if (s->code == nullptr) {
            // Our own patterns: a failure means PCRE2 was built without Unicode support.
            return make_error(errc::unsupported, "pre-tokenizer '{}': PCRE2 cannot compile '{}' at {}: {}",
                              pre->name_, pattern, error_offset, pcre_message(error_code));
        }
        // JIT is an optimisation: without it (no JIT in this PCRE2 build) the interpreter runs.
        (void)pcre2_jit_compile(s->code, PCRE2_JIT_COMPLETE);
        pre->stages_.push_back(std::move(s));
    }
    return pre;
}

pre_tokenizer::~pre_tokenizer() = default;

std::string_view pre_tokenizer::split(std::string_view text, pretok_scratch& scratch) const {
    std::string_view bytes = text;
    std::string_view subject = text;
    if (!utf8::is_valid(text)) {
        // llama.cpp decodes leniently and re-encodes: invalid bytes turn into U+FFFD, overlong
        // forms into their short form, and BPE runs on that. Surrogates survive its decoder
        // but not PCRE2's checks, so the engine sees U+E000 (same length, and like a surrogate
        // in llama.cpp's tables neither letter, digit nor space) in their place.
        scratch.repaired.clear();
        scratch.subject.clear();
        bool has_surrogate = false;
        std::size_t pos = 0;
        while (pos < text.size()) {
            char32_t cp = utf8::decode_lenient(text, pos);
            if (cp > 0x10FFFF) cp = utf8::replacement_char;  // llama.cpp would throw here
            if (cp >= 0xD800 && cp <= 0xDFFF) {
                has_surrogate = true;
                scratch.repaired.push_back(static_cast<char>(0xE0 | (cp >> 12)));
                scratch.repaired.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
                scratch.repaired.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
                utf8::append(scratch.subject, 0xE000);
            } else {
                utf8::append(scratch.repaired, cp);
                utf8::append(scratch.subject, cp);
            }
        }
        bytes = scratch.repaired;
        subject = has_surrogate ? std::string_view(scratch.subject) : bytes;
    }

    scratch.words.clear();
    if (!bytes.empty()) scratch.words.push_back({0, bytes.size()});
    for (const auto& s : stages_) {
        scratch.next.clear();
        for (const word_span piece : scratch.words) s->split(subject, piece, scratch.next);
        scratch.words.swap(scratch.next);
    }
    return bytes;
}

}  // namespace moed::engine
