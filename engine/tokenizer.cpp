// Loading, byte-level BPE (`tokenizer.ggml.model = gpt2`) and decoding, as llama.cpp does
// them; SentencePiece encoding (`llama`) is in tokenizer_spm.cpp.
//
// Loading copies the token texts into one arena and indexes them by string_view; merges are
// indexed by the pair of token ids they join (every merge must name two tokens, which the
// loader checks), so the merge loop never hashes strings. Encoding: special tokens split the
// text first (tokenizer_st_partition in llama.cpp: each special token in turn, longest
// first, over every fragment left), the pre-tokenizer splits each remaining fragment into
// words, and each word's bytes start as one symbol per byte (the byte-level alphabet maps
// bytes one to one) and are merged lowest rank first, leftmost on ties.
#include "engine/tokenizer.h"

#include <algorithm>
#include <array>
#include <limits>
#include <unordered_map>

#include "common/log.h"
#include "engine/tokenizer_impl.h"
#include "engine/tokenizer_pretok.h"
#include "engine/unicode_utf8.h"
#include "storage/gguf.h"

namespace moed::engine {

using namespace tokenizer_detail;

namespace {

// tokenizer.ggml.token_type values (llama_token_type).
std::uint8_t attr_from_type(std::int64_t type) noexcept {
    switch (type) {
        case 1: return attr_normal;
        case 2: return attr_unknown;
        case 3: return attr_control;
        case 4: return attr_user_defined;
        case 5: return attr_unused;
        case 6: return attr_byte;
        default: return attr_undefined;  // 0: undefined
    }
}
constexpr std::int64_t max_token_type = 6;


constexpr std::string_view key_model = "tokenizer.ggml.model";
constexpr std::string_view key_pre = "tokenizer.ggml.pre";
constexpr std::string_view key_tokens = "tokenizer.ggml.tokens";
constexpr std::string_view key_token_type = "tokenizer.ggml.token_type";
constexpr std::string_view key_merges = "tokenizer.ggml.merges";
constexpr std::string_view key_scores = "tokenizer.ggml.scores";
constexpr std::string_view key_add_bos = "tokenizer.ggml.add_bos_token";
constexpr std::string_view key_add_space_prefix = "tokenizer.ggml.add_space_prefix";

// Token texts llama.cpp recognises when the file does not name the token (see
// llama_vocab::impl::load); a token found this way is forced to CONTROL.
constexpr std::string_view eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
    "<end_of_utterance>"};
constexpr std::string_view eom_texts[] = {"<|eom_id|>"};
constexpr std::string_view fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>",
    "<PRE>", "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>"};
constexpr std::string_view fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>",
    "<SUF>", "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>"};
constexpr std::string_view fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>",
    "<MID>", "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>"};
constexpr std::string_view fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>",
                                                                   "<PAD>", "[PAD]"};
constexpr std::string_view fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>",
                                                                   "<fim-repo>", "<REPO>", "<reponame>"};
constexpr std::string_view fim_sep_texts[] = {"<|file_sep|>"};
// Every token with one of these texts ends generation.
constexpr std::string_view eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>", "[e~["};
// gpt-oss: always rendered, never split as control tokens.
constexpr std::string_view forced_user_defined_texts[] = {
    "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"};

std::uint64_t pair_key(token_id left, token_id right) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) |
           static_cast<std::uint32_t>(right);
}

// Heap order: lowest rank first, then leftmost (llama.cpp's llm_bigram_bpe::comparator).
struct bigram_after {
    bool operator()(const bpe_bigram& a, const bpe_bigram& b) const noexcept {
        return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
};

}  // namespace


namespace {

// Appends the byte-level alphabet text of `bytes` to `out`.
void byte_level_encode(std::string_view bytes, std::string& out) {
    for (const char c : bytes) out.append(utf8::byte_to_unicode(static_cast<std::uint8_t>(c)));
}

template <typename... Args>
unexpected file_error(errc code, const storage::gguf_file& file, fmt::format_string<Args...> format,
                      Args&&... args) {
    return unexpected(code, fmt::format("{}: {}", file.path(), fmt::format(format, std::forward<Args>(args)...)));
}

enum class element_kind : std::uint8_t { strings, integers, floats };

// An array under `key` whose elements all have the given kind of type.
result<const storage::gguf_array*> typed_array(const storage::gguf_file& file, std::string_view key,
                                               element_kind want) {
    const storage::gguf_value* v = file.find(key);
    if (v == nullptr) return file_error(errc::bad_file, file, "missing required key '{}'", key);
    auto array = v->as_array(key);
    if (!array) return file_error(errc::bad_file, file, "{}", array.error().message);
    const auto type = (*array)->element_type;
    using vt = storage::gguf_value_type;
    bool ok = false;
    std::string_view expected;
    switch (want) {
        case element_kind::strings:
            ok = type == vt::string;
            expected = "strings";
            break;
        case element_kind::integers:
            ok = type == vt::u8 || type == vt::i8 || type == vt::u16 || type == vt::i16 || type == vt::u32 ||
                 type == vt::i32 || type == vt::u64 || type == vt::i64;
            expected = "integers";
            break;
        case element_kind::floats:
            ok = type == vt::f32;
            expected = "32-bit floats";
            break;
    }
    if (!ok) {
        return file_error(errc::bad_file, file, "key '{}' is an array of {}, expected {}", key,
                          storage::value_type_name(type), expected);
    }
    return *array;
}

// An optional boolean under `key`: `fallback` when absent.
result<bool> optional_bool(const storage::gguf_file& file, std::string_view key, bool fallback) {
    const storage::gguf_value* v = file.find(key);
    if (v == nullptr) return fallback;
    auto b = v->as_bool(key);
    if (!b) return file_error(errc::bad_file, file, "{}", b.error().message);
    return *b;
}

// An optional token id under `key`: -1 when absent, an error when malformed or out of range.
result<token_id> optional_token_id(const storage::gguf_file& file, std::string_view key, token_id n_tokens) {
    const storage::gguf_value* v = file.find(key);
    if (v == nullptr) return token_id{-1};
    auto id = v->as_uint(key);
    if (!id) return file_error(errc::bad_file, file, "{}", id.error().message);
    if (*id >= static_cast<std::uint64_t>(n_tokens)) {
        return file_error(errc::bad_file, file, "{} = {} is out of range (the vocabulary has {} tokens)", key,
                          *id, n_tokens);
    }
    return static_cast<token_id>(*id);
}

}  // namespace

// tokenizer.ggml.merges: "left right", rank = index; both halves must be tokens.
result<void> tokenizer::impl::load_merges(const storage::gguf_file& file) {
    impl& m = *this;
    auto merge_array = typed_array(file, key_merges, element_kind::strings);
    if (!merge_array) return unexpected(std::move(merge_array).error());
    const auto& merge_values = (*merge_array)->values;
    if (merge_values.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max())) {
        return file_error(errc::bad_file, file, "{} has {} entries", key_merges, merge_values.size());
    }
    m.merges.reserve(merge_values.size());
    std::string joined;
    for (std::size_t i = 0; i < merge_values.size(); ++i) {
        const std::string& rule = std::get<std::string>(merge_values[i].data);
        // As llama.cpp: the split is the first space after the first byte.
        const std::size_t space = rule.find(' ', 1);
        if (space == std::string::npos) {
            return file_error(errc::bad_file, file, "{}[{}] = '{}' is not two tokens separated by a space",
                              key_merges, i, rule);
        }
        const std::string_view left = std::string_view(rule).substr(0, space);
        const std::string_view right = std::string_view(rule).substr(space + 1);
        const token_id left_id = m.lookup(left);
        const token_id right_id = m.lookup(right);
        if (left_id < 0 || right_id < 0) {
            return file_error(errc::bad_file, file, "{}[{}] = '{}' references unknown token '{}'", key_merges, i,
                              rule, left_id < 0 ? left : right);
        }
        joined.assign(left);
        joined.append(right);
        // emplace keeps the first (lowest rank) rule for a pair, as llama.cpp's map does.
        m.merges.emplace(pair_key(left_id, right_id),
                         merge_rule{static_cast<std::int32_t>(i), m.lookup(joined)});
    }
    return {};
}

// tokenizer.ggml.scores (SentencePiece merge priorities): optional, as in llama.cpp, where a
// file without them merges with every score 0; never shorter than the token list.
result<void> tokenizer::impl::load_scores(const storage::gguf_file& file) {
    impl& m = *this;
    m.scores.assign(m.attrs.size(), 0.0F);
    if (file.find(key_scores) == nullptr) return {};
    auto array = typed_array(file, key_scores, element_kind::floats);
    if (!array) return unexpected(std::move(array).error());
    const auto& values = (*array)->values;
    if (values.size() < m.attrs.size()) {
        return file_error(errc::bad_file, file, "{} has {} entries but {} has {}", key_scores, values.size(),
                          key_tokens, m.attrs.size());
    }
    for (std::size_t i = 0; i < m.scores.size(); ++i) {
        auto score = values[i].as_float(key_scores);
        if (!score) return file_error(errc::bad_file, file, "{}", score.error().message);
        m.scores[i] = static_cast<float>(*score);
    }
    return {};
}

tokenizer::tokenizer() : impl_(std::make_unique<impl>()) {}
tokenizer::~tokenizer() = default;

result<std::unique_ptr<tokenizer>> tokenizer::from_gguf(const storage::gguf_file& file) {
    // --- model and pre-tokenizer ---
    const storage::gguf_value* model_value = file.find(key_model);
    if (model_value == nullptr) return file_error(errc::bad_file, file, "missing required key '{}'", key_model);
    auto model = model_value->as_string(key_model);
    if (!model) return file_error(errc::bad_file, file, "{}", model.error().message);
    vocab_kind kind = vocab_kind::byte_level_bpe;
    if (*model == "llama") {
        kind = vocab_kind::sentencepiece;
    } else if (*model != "gpt2") {
        return file_error(errc::unsupported, file,
                          "{} = '{}' is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are)", key_model,
                          *model);
    }
    std::string_view pre_name;
    if (const storage::gguf_value* pre_value = file.find(key_pre)) {
        auto s = pre_value->as_string(key_pre);
        if (!s) return file_error(errc::bad_file, file, "{}", s.error().message);
        pre_name = *s;
    }

    std::unique_ptr<tokenizer> tok(new tokenizer());
    impl& m = *tok->impl_;
    m.kind = kind;
    // SentencePiece has no pre-tokenizer: llama.cpp ignores tokenizer.ggml.pre there.
    if (kind == vocab_kind::byte_level_bpe) {
        auto pre = pre_tokenizer::create(pre_name);
        if (!pre) return file_error(pre.error().code, file, "{}", pre.error().message);
        m.pre = std::move(pre).value();
    }

    // --- tokens ---
    auto tokens = typed_array(file, key_tokens, element_kind::strings);
    if (!tokens) return unexpected(std::move(tokens).error());
    const auto& token_values = (*tokens)->values;
    if (token_values.empty() ||
        token_values.size() > static_cast<std::size_t>(std::numeric_limits<token_id>::max())) {
        return file_error(errc::bad_file, file, "{} has {} entries", key_tokens, token_values.size());
    }
    const auto n = static_cast<token_id>(token_values.size());
    // The array's element type is string, so every value holds one.
    const auto token_string = [&](token_id i) -> const std::string& {
        return std::get<std::string>(token_values[static_cast<std::size_t>(i)].data);
    };
    std::size_t total_bytes = 0;
    for (token_id i = 0; i < n; ++i) total_bytes += token_string(i).size();
    m.texts.reserve(total_bytes);
    m.text_offsets.reserve(token_values.size() + 1);
    m.text_offsets.push_back(0);
    for (token_id i = 0; i < n; ++i) {
        const std::string& s = token_string(i);
        if (s.empty()) {
            // As llama.cpp: an empty token gets a name, so it can neither match nor vanish.
            m.texts += fmt::format("[EMPTY_{}]", i);
        } else {
            m.texts += s;
        }
        m.text_offsets.push_back(m.texts.size());
    }
    m.ids.reserve(token_values.size());
    for (token_id i = 0; i < n; ++i) {
        const auto [it, inserted] = m.ids.emplace(m.text(i), i);
        if (!inserted) {
            return file_error(errc::bad_file, file, "{}[{}] repeats the text of token {}", key_tokens, i,
                              it->second);
        }
    }

    // --- token types (optional: all normal without them) ---
    m.attrs.assign(token_values.size(), attr_normal);
    if (file.find(key_token_type) != nullptr) {
        auto types = typed_array(file, key_token_type, element_kind::integers);
        if (!types) return unexpected(std::move(types).error());
        const auto& type_values = (*types)->values;
        if (type_values.size() != token_values.size()) {
            return file_error(errc::bad_file, file, "{} has {} entries but {} has {}", key_token_type,
                              type_values.size(), key_tokens, token_values.size());
        }
        for (token_id i = 0; i < n; ++i) {
            auto type = type_values[i].as_int(key_token_type);
            if (!type || *type < 0 || *type > max_token_type) {
                return file_error(errc::bad_file, file, "{}[{}] is not a token type (0..{})", key_token_type, i,
                                  max_token_type);
            }
            m.attrs[i] = attr_from_type(*type);
        }
    }

    if (m.kind == vocab_kind::byte_level_bpe) {
        // Kimi-K2's files may come without merges; llama.cpp then merges nothing.
        if (file.find(key_merges) != nullptr || m.pre->name() != "kimi-k2") {
            if (auto loaded = m.load_merges(file); !loaded) return unexpected(std::move(loaded).error());
        }
        for (unsigned b = 0; b < 256; ++b) {
            m.byte_tokens[b] = m.lookup(utf8::byte_to_unicode(static_cast<std::uint8_t>(b)));
        }
    } else {
        if (auto loaded = m.load_scores(file); !loaded) return unexpected(std::move(loaded).error());
        // llama.cpp's byte_to_token: "<0xAB>" (upper-case hex), else the byte as a text.
        constexpr std::string_view hex = "0123456789ABCDEF";
        for (unsigned b = 0; b < 256; ++b) {
            const char name[] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            token_id id = m.lookup(std::string_view(name, sizeof(name)));
            if (id < 0) {
                const char c = static_cast<char>(b);
                id = m.lookup(std::string_view(&c, 1));
            }
            m.byte_tokens[b] = id;
        }
    }

    // --- special token ids ---
    token_id eot = -1;
    token_id eom = -1;
    token_id fim_pre = -1;
    token_id fim_suf = -1;
    token_id fim_mid = -1;
    token_id fim_pad = -1;
    token_id fim_rep = -1;
    token_id fim_sep = -1;
    if (m.kind == vocab_kind::sentencepiece) {
        // llama.cpp's defaults for SentencePiece files that do not name them.
        const auto in_range = [n](token_id id) { return id < n ? id : token_id{-1}; };
        m.unk = in_range(0);
        m.bos = in_range(1);
        m.eos = in_range(2);
    }
    const std::pair<std::string_view, token_id*> id_keys[] = {
        {"tokenizer.ggml.bos_token_id", &m.bos},
        {"tokenizer.ggml.eos_token_id", &m.eos},
        {"tokenizer.ggml.unknown_token_id", &m.unk},
        {"tokenizer.ggml.eot_token_id", &eot},
        {"tokenizer.ggml.eom_token_id", &eom},
        {"tokenizer.ggml.fim_pre_token_id", &fim_pre},
        {"tokenizer.ggml.fim_suf_token_id", &fim_suf},
        {"tokenizer.ggml.fim_mid_token_id", &fim_mid},
        {"tokenizer.ggml.fim_pad_token_id", &fim_pad},
        {"tokenizer.ggml.fim_rep_token_id", &fim_rep},
        {"tokenizer.ggml.fim_sep_token_id", &fim_sep},
        // Deprecated spellings of the first three FIM ids; they win when present, as there.
        {"tokenizer.ggml.prefix_token_id", &fim_pre},
        {"tokenizer.ggml.suffix_token_id", &fim_suf},
        {"tokenizer.ggml.middle_token_id", &fim_mid},
    };
    for (const auto& [key, slot] : id_keys) {
        auto id = optional_token_id(file, key, n);
        if (!id) return unexpected(std::move(id).error());
        if (*id >= 0) *slot = *id;
    }
    // Checked for range only: the tokenizer has no use for them yet.
    for (const std::string_view key : {"tokenizer.ggml.seperator_token_id",
                                       "tokenizer.ggml.padding_token_id", "tokenizer.ggml.mask_token_id"}) {
        auto id = optional_token_id(file, key, n);
        if (!id) return unexpected(std::move(id).error());
    }
    // Defaults as llama.cpp's: SentencePiece adds BOS and a leading space; byte-level BPE
    // adds what its pre-tokenizer says and no space. The file's keys win.
    const bool spm = m.kind == vocab_kind::sentencepiece;
    auto add_bos = optional_bool(file, key_add_bos, spm || m.pre->add_bos_default());
    if (!add_bos) return unexpected(std::move(add_bos).error());
    m.add_bos = *add_bos;
    auto add_space_prefix = optional_bool(file, key_add_space_prefix, spm);
    if (!add_space_prefix) return unexpected(std::move(add_space_prefix).error());
    m.add_space_prefix = *add_space_prefix;

    // --- llama.cpp's text-based fix-ups: find unnamed EOT/EOM/FIM tokens, force them to
    // CONTROL, and collect the end-of-generation set ---
    const auto detect = [&](token_id& slot, std::span<const std::string_view> texts) {
        if (slot >= 0) return;
        slot = m.lookup_any(texts);
        if (slot >= 0) m.attrs[slot] |= attr_control;
    };
    detect(eot, eot_texts);
    detect(eom, eom_texts);
    detect(fim_pre, fim_pre_texts);
    detect(fim_suf, fim_suf_texts);
    detect(fim_mid, fim_mid_texts);
    detect(fim_pad, fim_pad_texts);
    detect(fim_rep, fim_rep_texts);
    detect(fim_sep, fim_sep_texts);
    m.eog.assign(token_values.size(), 0);
    for (const token_id id : {fim_pad, fim_rep, fim_sep}) {
        if (id >= 0) m.eog[id] = 1;
    }
    for (const auto t : eog_texts) {
        const token_id id = m.lookup(t);
        if (id < 0) continue;
        m.eog[id] = 1;
        m.attrs[id] |= attr_control;
    }
    for (const auto t : forced_user_defined_texts) {
        const token_id id = m.lookup(t);
        if (id >= 0) m.attrs[id] = attr_user_defined;
    }
    for (const token_id id : {m.eos, eot, eom}) {
        if (id >= 0) m.eog[id] = 1;
    }
    {
        // Harmony (gpt-oss) and solar-open use "<|end|>" between turns, not at the end.
        const auto in_eog = [&](std::string_view t) {
            const token_id id = m.lookup(t);
            return id >= 0 && m.eog[id] != 0;
        };
        const bool has_call = in_eog("<|call|>") || in_eog("<|calls|>");
        if (in_eog("<|end|>") && ((in_eog("<|return|>") && has_call) || (has_call && in_eog("<|flush|>")))) {
            const token_id end = m.lookup("<|end|>");
            m.eog[end] = 0;
            m.attrs[end] = attr_user_defined;
        }
        // Gemma 4: with "<|tool_response>" present, "</s>" is an ordinary token.
        if (in_eog("<|tool_response>") && in_eog("</s>")) {
            const token_id s = m.lookup("</s>");
            m.eog[s] = 0;
            m.attrs[s] = attr_normal;
        }
    }

    // --- special tokens to split on, longest first (ties by id, for a stable order) ---
    for (token_id i = 0; i < n; ++i) {
        if (m.attrs[i] & (attr_control | attr_user_defined | attr_unknown)) m.specials.push_back(i);
    }
    std::stable_sort(m.specials.begin(), m.specials.end(),
                     [&](token_id a, token_id b) { return m.text(a).size() > m.text(b).size(); });

    // --- what each token decodes to ---
    m.piece_offsets.reserve(token_values.size() + 1);
    m.piece_offsets.push_back(0);
    m.pieces.reserve(m.texts.size());
    for (token_id i = 0; i < n; ++i) {
        m.pieces += m.piece_for(i);
        m.piece_offsets.push_back(m.pieces.size());
    }
    return tok;
}

std::string tokenizer::impl::piece_for(token_id id) const {
    const std::uint8_t attr = attrs[id];
    const std::string_view t = text(id);
    if (attr & (attr_unknown | attr_control | attr_user_defined)) return std::string(t);
    std::string out;
    if ((attr & attr_normal) && kind == vocab_kind::sentencepiece) {
        // U+2581 stands for a space (llama_unescape_whitespace).
        constexpr std::string_view escaped_space = "\xE2\x96\x81";
        for (std::size_t pos = 0; pos < t.size();) {
            if (t.substr(pos, escaped_space.size()) == escaped_space) {
                out.push_back(' ');
                pos += escaped_space.size();
            } else {
                out.push_back(t[pos++]);
            }
        }
        return out;
    }
    if (attr & attr_normal) {
        // Map the byte-level alphabet back to bytes. A character outside the alphabet is kept
        // as itself (llama.cpp writes an "[UNK_BYTE_..]" marker instead).
        std::size_t pos = 0;
        while (pos < t.size()) {
            char32_t cp = utf8::decode_lenient(t, pos);
            const int b = utf8::unicode_to_byte(cp);
            if (b >= 0) {
                out.push_back(static_cast<char>(b));
            } else {
                if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = utf8::replacement_char;
                utf8::append(out, cp);
            }
        }
        return out;
    }
    if (attr & attr_byte) {
        // "<0xAB>"
        if (t.size() == 6 && t.substr(0, 3) == "<0x" && t[5] == '>') {
            const auto hex = [](char c) -> int {
                if (c >= '0' && c <= '9') return c - '0';
                if (c >= 'A' && c <= 'F') return c - 'A' + 10;
                if (c >= 'a' && c <= 'f') return c - 'a' + 10;
                return -1;
            };
            const int hi = hex(t[3]);
            const int lo = hex(t[4]);
            if (hi >= 0 && lo >= 0) out.push_back(static_cast<char>(hi * 16 + lo));
        }
        return out;
    }
    return out;  // unused and undefined tokens decode to nothing
}

void tokenizer::impl::partition(std::string_view text, bool parse_special, encode_scratch& s) const {
    s.fragments.clear();
    if (text.empty()) return;
    s.fragments.push_back({-1, 0, text.size()});
    for (const token_id id : specials) {
        // Without parse_special only user-defined tokens split the text.
        if (!parse_special && (attrs[id] & (attr_control | attr_unknown))) continue;
        const std::string_view needle = this->text(id);
        s.fragments_next.clear();
        for (const fragment& f : s.fragments) {
            if (f.id >= 0 || f.end - f.begin < needle.size()) {
                s.fragments_next.push_back(f);
                continue;
            }
            const std::string_view hay = text.substr(0, f.end);
            std::size_t pos = f.begin;
            while (true) {
                const std::size_t match = hay.find(needle, pos);
                if (match == std::string_view::npos) break;
                if (match > pos) s.fragments_next.push_back({-1, pos, match});
                s.fragments_next.push_back({id, match, match + needle.size()});
                pos = match + needle.size();
            }
            if (pos < f.end) s.fragments_next.push_back({-1, pos, f.end});
        }
        s.fragments.swap(s.fragments_next);
    }
}

void tokenizer::impl::encode_unknown(std::string_view bytes, std::vector<token_id>& out,
                                     encode_scratch& s) const {
    s.encoded.clear();
    byte_level_encode(bytes, s.encoded);
    for (const char c : s.encoded) {
        const token_id id = lookup(std::string_view(&c, 1));
        if (id >= 0) out.push_back(id);
    }
}

void tokenizer::impl::encode_word(std::string_view word, std::vector<token_id>& out, encode_scratch& s) const {
    if (word.empty()) return;
    if (word.size() > max_word_bytes) {
        // Beyond what 32-bit symbol indices cover: encode in slices (llama.cpp would overflow).
        for (std::size_t at = 0; at < word.size(); at += max_word_bytes) {
            encode_word(word.substr(at, max_word_bytes), out, s);
        }
        return;
    }
    if (pre->ignore_merges()) {
        s.encoded.clear();
        byte_level_encode(word, s.encoded);
        const token_id whole = lookup(s.encoded);
        if (whole >= 0) {
            out.push_back(whole);
            return;
        }
    }
    if (word.size() == 1) {
        const token_id id = byte_tokens[static_cast<std::uint8_t>(word[0])];
        if (id >= 0) {
            out.push_back(id);
        } else {
            encode_unknown(word, out, s);
        }
        return;
    }

    // One symbol per byte: the byte-level alphabet gives every byte its own character.
    auto& symbols = s.symbols;
    auto& queue = s.queue;
    symbols.clear();
    queue.clear();
    const auto count = static_cast<std::int32_t>(word.size());
    for (std::int32_t i = 0; i < count; ++i) {
        symbols.push_back(bpe_symbol{static_cast<std::uint32_t>(i), 1, i - 1, i + 1 < count ? i + 1 : -1,
                                     byte_tokens[static_cast<std::uint8_t>(word[i])]});
    }
    const auto add_bigram = [&](std::int32_t left, std::int32_t right) {
        if (left < 0 || right < 0) return;
        const bpe_symbol& l = symbols[left];
        const bpe_symbol& r = symbols[right];
        if (l.id < 0 || r.id < 0) return;  // merges name tokens only
        const auto it = merges.find(pair_key(l.id, r.id));
        if (it == merges.end()) return;
        queue.push_back(bpe_bigram{it->second.rank, left, right, l.length, r.length, it->second.merged});
        std::push_heap(queue.begin(), queue.end(), bigram_after{});
    };
    for (std::int32_t i = 1; i < count; ++i) add_bigram(i - 1, i);

    while (!queue.empty()) {
        std::pop_heap(queue.begin(), queue.end(), bigram_after{});
        const bpe_bigram top = queue.back();
        queue.pop_back();
        bpe_symbol& l = symbols[top.left];
        bpe_symbol& r = symbols[top.right];
        // Stale: one side was merged away or grew since this pair was queued.
        if (l.length == 0 || r.length == 0 || l.length != top.left_length || r.length != top.right_length) {
            continue;
        }
        join_symbols(symbols, top.left, top.right, top.merged);
        add_bigram(l.prev, top.left);
        add_bigram(top.left, l.next);
    }

    for (std::int32_t i = 0; i >= 0; i = symbols[i].next) {
        const bpe_symbol& sym = symbols[i];
        if (sym.id >= 0) {
            out.push_back(sym.id);
        } else {
            encode_unknown(word.substr(sym.begin, sym.length), out, s);
        }
    }
}

std::vector<token_id> tokenizer::encode(std::string_view text, bool parse_special) const {
    const impl& m = *impl_;
    encode_scratch s;
    std::vector<token_id> out;
    out.reserve(text.size() / 3 + 4);
    m.partition(text, parse_special, s);
    if (m.kind == vocab_kind::sentencepiece) {
        // The start of the text and every special token are followed by a space.
        bool after_special = true;
        for (const fragment& f : s.fragments) {
            if (f.id >= 0) {
                out.push_back(f.id);
                after_special = true;
                continue;
            }
            m.encode_spm(text.substr(f.begin, f.end - f.begin), m.add_space_prefix && after_special, out, s);
            after_special = false;
        }
        return out;
    }
    for (const fragment& f : s.fragments) {
        if (f.id >= 0) {
            out.push_back(f.id);
            continue;
        }
        const std::string_view bytes = m.pre->split(text.substr(f.begin, f.end - f.begin), s.pretok);
        for (const word_span w : s.pretok.words) {
            m.encode_word(bytes.substr(w.begin, w.end - w.begin), out, s);
        }
    }
    return out;
}

std::string tokenizer::token_bytes(token_id id, bool special) const {
    const impl& m = *impl_;
    if (id < 0 || id >= m.n_tokens()) return {};
    if (!special && (m.attrs[id] & (attr_control | attr_unknown))) return {};
    return std::string(m.piece(id));
}

std::string tokenizer::decode(std::span<const token_id> ids, bool special) const {
    const impl& m = *impl_;
    std::string out;
    // llama_detokenize: the space encode() put in front of the text is not the text's.
    bool strip_space = m.add_space_prefix;
    for (const token_id id : ids) {
        const bool first = strip_space;
        strip_space = false;
        if (id < 0 || id >= m.n_tokens()) continue;
        if (!special && (m.attrs[id] & (attr_control | attr_unknown))) continue;
        std::string_view piece = m.piece(id);
        if (first && !piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
        out.append(piece);
    }
    return out;
}

std::int32_t tokenizer::n_vocab() const noexcept { return impl_->n_tokens(); }
token_id tokenizer::bos_id() const noexcept { return impl_->bos; }
token_id tokenizer::eos_id() const noexcept { return impl_->eos; }
bool tokenizer::add_bos() const noexcept { return impl_->add_bos && impl_->bos >= 0; }
bool tokenizer::add_space_prefix() const noexcept { return impl_->add_space_prefix; }

bool tokenizer::is_eog(token_id id) const noexcept {
    return id >= 0 && id < impl_->n_tokens() && impl_->eog[id] != 0;
}

token_id tokenizer::find_token(std::string_view text) const noexcept { return impl_->lookup(text); }

bool tokenizer::is_special(token_id id) const noexcept {
    return id >= 0 && id < impl_->n_tokens() && (impl_->attrs[id] & (attr_control | attr_user_defined | attr_unknown)) != 0;
}

}  // namespace moed::engine
