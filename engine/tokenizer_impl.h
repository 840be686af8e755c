// The tokenizer's internals, shared by its two encoders: tokenizer.cpp (loading, byte-level
// BPE for `gpt2` vocabularies, decoding) and tokenizer_spm.cpp (SentencePiece for `llama`
// vocabularies). Not part of the engine's interface: only those two files include it.
// Threads: as tokenizer.h (immutable after loading).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer.h"
#include "engine/tokenizer_pretok.h"

namespace moed::engine::tokenizer_detail {

// Token attributes, as llama.cpp derives them from tokenizer.ggml.token_type (a bit set,
// because its text-based overrides add CONTROL to tokens of other types).
enum token_attr : std::uint8_t {
    attr_undefined = 0,
    attr_unknown = 1 << 0,
    attr_unused = 1 << 1,
    attr_normal = 1 << 2,
    attr_control = 1 << 3,
    attr_user_defined = 1 << 4,
    attr_byte = 1 << 5,
};

// tokenizer.ggml.model: which encoder runs.
enum class vocab_kind : std::uint8_t {
    byte_level_bpe,  // "gpt2": pre-tokenizer words, byte-level alphabet, merges by rank
    sentencepiece,   // "llama": one symbol per character, merges by token score, byte fallback
};

struct merge_rule {
    std::int32_t rank = 0;
    token_id merged = -1;  // the token the pair becomes; -1 when that text is no token
};

// One piece of text after special-token splitting: a special token, or raw text.
struct fragment {
    token_id id = -1;  // >= 0: this special token; -1: raw bytes [begin, end)
    std::size_t begin = 0;
    std::size_t end = 0;
};

// Symbols and bigrams index one word with 32 bits, as llama.cpp does (words are cut at
// max_word_bytes, far above any request the daemon accepts).
struct bpe_symbol {
    std::uint32_t begin = 0;
    std::uint32_t length = 0;  // 0 once merged into its left neighbour
    std::int32_t prev = -1;
    std::int32_t next = -1;
    token_id id = -1;  // the token this symbol is, when known (always after a merge)
};

// Joins symbol `right` into its left neighbour `left`, which becomes token `merged` (both
// tokenizers' merge step; each then queues the new pairs on either side of `left`).
inline void join_symbols(std::vector<bpe_symbol>& symbols, std::int32_t left, std::int32_t right, token_id merged) {
    bpe_symbol& l = symbols[static_cast<std::size_t>(left)];
    bpe_symbol& r = symbols[static_cast<std::size_t>(right)];
    l.id = merged;
    l.length += r.length;
    r.length = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<std::size_t>(r.next)].prev = left;
}

struct bpe_bigram {
    std::int32_t rank = 0;
    std::int32_t left = 0;
    std::int32_t right = 0;
    // Lengths when queued: a bigram whose symbols changed since is stale.
    std::uint32_t left_length = 0;
    std::uint32_t right_length = 0;
    token_id merged = -1;
};

// A SentencePiece candidate merge: the pair's text is the token `merged`, whose score ranks it.
struct spm_bigram {
    float score = 0.0F;
    std::int32_t left = 0;
    std::int32_t right = 0;
    std::uint32_t size = 0;  // bytes of the pair when queued: a changed pair is stale
    token_id merged = -1;
};

inline constexpr std::size_t max_word_bytes = std::size_t{1} << 30;

// Working storage for one encode() call.
struct encode_scratch {
    std::vector<fragment> fragments;
    std::vector<fragment> fragments_next;
    pretok_scratch pretok;
    std::vector<bpe_symbol> symbols;
    std::vector<bpe_bigram> queue;
    std::vector<spm_bigram> spm_queue;
    std::string encoded;
};

}  // namespace moed::engine::tokenizer_detail

namespace moed::engine {

struct tokenizer::impl {
    using encode_scratch = tokenizer_detail::encode_scratch;

    tokenizer_detail::vocab_kind kind = tokenizer_detail::vocab_kind::byte_level_bpe;
    std::string texts;                      // every token's text, back to back
    std::vector<std::size_t> text_offsets;  // n + 1 offsets into `texts`
    std::vector<std::uint8_t> attrs;
    std::vector<float> scores;              // SentencePiece: merge priority of each token
    std::unordered_map<std::string_view, token_id> ids;  // keys view `texts`
    std::unordered_map<std::uint64_t, tokenizer_detail::merge_rule> merges;
    // Byte-level BPE: the token of each byte's one-character text. SentencePiece: the byte
    // fallback token of each byte ("<0xAB>", else the byte itself as text). -1 when none.
    std::array<token_id, 256> byte_tokens{};
    std::string pieces;                      // bytes each token stands for (special = true)
    std::vector<std::size_t> piece_offsets;  // n + 1
    std::vector<token_id> specials;          // split before BPE, longest text first
    std::vector<std::uint8_t> eog;
    token_id bos = -1;
    token_id eos = -1;
    token_id unk = -1;
    bool add_bos = false;
    // SentencePiece: a space goes in front of the text and after every special token, and
    // decode() drops the one in front of the first token.
    bool add_space_prefix = false;
    std::unique_ptr<pre_tokenizer> pre;  // byte-level BPE only

    token_id n_tokens() const noexcept { return static_cast<token_id>(attrs.size()); }
    std::string_view text(token_id id) const noexcept {
        return std::string_view(texts).substr(text_offsets[id], text_offsets[id + 1] - text_offsets[id]);
    }
    std::string_view piece(token_id id) const noexcept {
        return std::string_view(pieces).substr(piece_offsets[id], piece_offsets[id + 1] - piece_offsets[id]);
    }
    token_id lookup(std::string_view s) const noexcept {
        const auto it = ids.find(s);
        return it == ids.end() ? -1 : it->second;
    }
    // The lowest id among tokens whose text is in `candidates`, or -1.
    token_id lookup_any(std::span<const std::string_view> candidates) const noexcept {
        token_id best = -1;
        for (const auto c : candidates) {
            const token_id id = lookup(c);
            if (id >= 0 && (best < 0 || id < best)) best = id;
        }
        return best;
    }

    // Loading steps of tokenizer::from_gguf that need the token list first.
    result<void> load_merges(const storage::gguf_file& file);
    result<void> load_scores(const storage::gguf_file& file);

    void partition(std::string_view text, bool parse_special, encode_scratch& s) const;
    // Byte-level BPE of one pre-tokenizer word.
    void encode_word(std::string_view word, std::vector<token_id>& out, encode_scratch& s) const;
    // llama.cpp's fallback for a symbol that is no token: each byte of its byte-level text
    // becomes the token of that single byte, when the vocabulary has one (usually none).
    void encode_unknown(std::string_view bytes, std::vector<token_id>& out, encode_scratch& s) const;
    // SentencePiece of one raw-text fragment (tokenizer_spm.cpp); `space_prefix` puts the
    // space in front that follows the start of the text or a special token.
    void encode_spm(std::string_view text, bool space_prefix, std::vector<token_id>& out, encode_scratch& s) const;
    // The merge loop over text already escaped (U+2581 for spaces).
    void encode_spm_escaped(std::string_view text, std::vector<token_id>& out, encode_scratch& s) const;
    std::string piece_for(token_id id) const;
};

}  // namespace moed::engine
