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

// gpt-oss (o200k) and Llama 4: words split where lower case turns to upper case. llama.cpp
// runs this through its collapsed-category std::regex, where \p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}
// and \p{Ll}\p{Lm}\p{Lo}\p{M} become "a letter but not a-z" and "a letter but not A-Z": every
// non-ASCII letter is in both classes, and combining marks are in neither (they are no
// letters there). [^\P{L}a-z] and [^\P{L}A-Z] say exactly that.
#define MOED_UPPERISH "[^\\P{L}a-z]"
#define MOED_LOWERISH "[^\\P{L}A-Z]"
constexpr const char* pattern_gpt4o =
    "[^\\r\\n\\p{L}\\p{N}]?" MOED_UPPERISH "*" MOED_LOWERISH "+(?:" MOED_CONTRACTIONS_CI ")?|"
    "[^\\r\\n\\p{L}\\p{N}]?" MOED_UPPERISH "+" MOED_LOWERISH "*(?:" MOED_CONTRACTIONS_CI ")?|"
    "\\p{N}{1,3}| ?[^\\s\\x{85}\\p{L}\\p{N}]+[\\r\\n/]*|" MOED_WS_TAIL;
#undef MOED_LOWERISH
#undef MOED_UPPERISH

// Kimi-K2. llama.cpp's hand-written splitter for it takes every letter run whole (no case
// split, unlike the tokenizer.json expression) except Han characters, which form runs of
// their own; Han is its fixed list of CJK ideograph blocks, not Unicode's \p{Han}.
#define MOED_HAN \
    "\\x{3400}-\\x{4DBF}\\x{4E00}-\\x{9FFF}\\x{F900}-\\x{FAFF}\\x{20000}-\\x{2A6DF}\\x{2A700}-\\x{2EBEF}" \
    "\\x{2F800}-\\x{2FA1F}"
constexpr const char* pattern_kimi_k2 =
    "[" MOED_HAN "]+|[^\\r\\n\\p{L}\\p{N}]?[^\\P{L}" MOED_HAN "]+(?:" MOED_CONTRACTIONS_CI ")?|"
    "\\p{N}{1,3}| ?[^\\s\\x{85}\\p{L}\\p{N}]+[\\r\\n]*|" MOED_WS_TAIL;
#undef MOED_HAN

// DeepSeek LLM and DeepSeek-Coder (V2, V2-Lite, Coder-V2): six and five expressions applied in
// turn. llama.cpp matches those without a Unicode class by std::wregex over a text whose
// non-ASCII whitespace is replaced by a vertical tab, so a literal class never matches
// whitespace (U+3000 is not in the CJK punctuation range, nor U+2000..U+205F in the
// U+0800..U+4E00 one) and \s sees llama.cpp's whitespace; its `$` is the end of the piece.
// The letter class is the cased-letter set DeepSeek's tokenizer.json spells out literally.
constexpr const char* pattern_newline = "[\\r\\n]";
constexpr const char* pattern_deepseek_llm_letters =
    MOED_WS "?[A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}\\x{1C4}-\\x{293}"
    "\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}"
    "\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}"
    "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}"
    "\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}"
    "\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}\\x{1FBE}\\x{1FC2}-\\x{1FC4}"
    "\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}"
    "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}\\x{2128}\\x{212A}-\\x{212D}"
    "\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}"
    "\\x{2C7E}-\\x{2CE4}\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}\\x{A722}-\\x{A76F}"
    "\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}"
    "\\x{FF41}-\\x{FF5A}\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}"
    "\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}]+";
constexpr const char* pattern_deepseek_llm_punct =
    MOED_WS "?[!-/:-~\\x{FF01}-\\x{FF0F}\\x{FF1A}-\\x{FF5E}\\x{2018}-\\x{201F}\\x{3001}-\\x{3002}]+";
// A trailing whitespace run; the lookbehind starts it only where a run starts, which keeps a
// long run that does not end the piece linear instead of retried from each of its spaces.
constexpr const char* pattern_trailing_ws = "(?<!" MOED_WS ")" MOED_WS "+\\z";
constexpr const char* pattern_deepseek_cjk = "(?:(?!" MOED_WS ")[\\x{0800}-\\x{9FA5}\\x{AC00}-\\x{D7FF}])+";
constexpr const char* pattern_deepseek_coder_letters = MOED_WS "?\\p{L}+";
constexpr const char* pattern_deepseek_coder_punct = MOED_WS "?\\p{P}+";

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
const std::array<pre_family, 13>& families() {
    static const std::array<pre_family, 13> table = {{
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
        // GLM-4.5 / 4.6 / Air: llama3's expression without its ignore_merges or BOS.
        {{"glm4", "chatglm-bpe"}, {pattern_llama3}, false, false},
        {{"gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"}, {pattern_gpt4o}, false, false},
        {{"kimi-k2"}, {pattern_kimi_k2}, false, false},
        {{"deepseek-llm"},
         {pattern_newline, pattern_deepseek_llm_letters, pattern_deepseek_llm_punct, pattern_trailing_ws,
          pattern_deepseek_cjk, pattern_digits},
         false, false},
        {{"deepseek-coder"},
         {pattern_newline, pattern_deepseek_coder_letters, pattern_deepseek_coder_punct, pattern_deepseek_cjk,
          pattern_one_digit},
         false, false},
        {{"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open",
          "grok-2"},
         {pattern_qwen2}, false, false},
        {{"qwen35"}, {pattern_qwen35}, false, false},
        {{"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"},
         {pattern_one_digit, pattern_gpt2}, false, false},
        {{"deepseek-v3", "hunyuan-dense", "joyai-llm"},
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
