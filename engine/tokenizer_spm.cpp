// SentencePiece BPE (`tokenizer.ggml.model = llama`) as llama.cpp's llm_tokenizer_spm runs it.
//
// One fragment of raw text (special tokens already split out) gets its leading space when it
// follows the start of the text or a special token, spaces become U+2581, and the bytes start
// as one symbol per UTF-8 character, its length read from the lead byte alone (as llama.cpp
// does: invalid UTF-8 is not repaired, its bytes simply fall back to byte tokens). Every
// adjacent pair whose text is a token is a candidate; the candidate whose token has the
// highest score merges first, the leftmost on equal scores, and the pairs around the merged
// symbol become candidates. A symbol left that is no token is written as the byte token of
// each of its bytes.
//
// llama.cpp also keeps a map from pair texts back to pairs to split such a symbol again; it
// never applies, because every merged symbol is a token by construction, and an unmerged
// symbol (one character) can never have the text of a pair (two characters or more), so it
// is left out here.
#include <algorithm>

#include "engine/tokenizer_impl.h"

namespace moed::engine {

using namespace tokenizer_detail;

namespace {

constexpr std::string_view escaped_space = "\xE2\x96\x81";  // U+2581

// llama.cpp's unicode_len_utf8: the length a lead byte announces (1 for a stray
// continuation byte).
std::uint32_t utf8_length_of_lead(unsigned char lead) noexcept {
    if (lead < 0xC0) return 1;
    if (lead < 0xE0) return 2;
    if (lead < 0xF0) return 3;
    return 4;
}

// Heap order (std::push_heap keeps the greatest first): highest score first, then leftmost,
// as llama.cpp's llm_bigram_spm::comparator.
struct spm_bigram_before {
    bool operator()(const spm_bigram& a, const spm_bigram& b) const noexcept {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};

}  // namespace

void tokenizer::impl::encode_spm(std::string_view fragment_text, bool space_prefix, std::vector<token_id>& out,
                                 encode_scratch& s) const {
    std::string& text = s.encoded;
    text.clear();
    if (space_prefix) text.append(escaped_space);
    for (const char c : fragment_text) {
        if (c == ' ') {
            text.append(escaped_space);
        } else {
            text.push_back(c);
        }
    }
    // Symbol indices are 32-bit, as in llama.cpp (which would overflow): beyond
    // max_word_bytes, far above any request the daemon accepts, encode in slices cut at
    // character starts.
    const std::string_view all = text;
    for (std::size_t at = 0; at < all.size();) {
        std::size_t end = std::min(all.size(), at + max_word_bytes);
        while (end < all.size() && end > at + 1 && (static_cast<unsigned char>(all[end]) & 0xC0) == 0x80) --end;
        encode_spm_escaped(all.substr(at, end - at), out, s);
        at = end;
    }
}

void tokenizer::impl::encode_spm_escaped(std::string_view text, std::vector<token_id>& out, encode_scratch& s) const {
    auto& symbols = s.symbols;
    auto& queue = s.spm_queue;
    symbols.clear();
    queue.clear();
    for (std::size_t at = 0; at < text.size();) {
        const auto length = static_cast<std::uint32_t>(
            std::min<std::size_t>(utf8_length_of_lead(static_cast<unsigned char>(text[at])), text.size() - at));
        const auto index = static_cast<std::int32_t>(symbols.size());
        at += length;
        symbols.push_back(bpe_symbol{static_cast<std::uint32_t>(at - length), length, index - 1,
                                     at < text.size() ? index + 1 : -1, -1});
    }

    if (symbols.empty()) return;

    const auto add_bigram = [&](std::int32_t left, std::int32_t right) {
        if (left < 0 || right < 0) return;
        const bpe_symbol& l = symbols[left];
        const bpe_symbol& r = symbols[right];
        const std::uint32_t size = l.length + r.length;
        const token_id merged = lookup(text.substr(l.begin, size));
        if (merged < 0) return;
        queue.push_back(spm_bigram{scores[merged], left, right, size, merged});
        std::push_heap(queue.begin(), queue.end(), spm_bigram_before{});
    };
    for (std::int32_t i = 1; i < static_cast<std::int32_t>(symbols.size()); ++i) add_bigram(i - 1, i);

    while (!queue.empty()) {
        std::pop_heap(queue.begin(), queue.end(), spm_bigram_before{});
        const spm_bigram top = queue.back();
        queue.pop_back();
        bpe_symbol& l = symbols[top.left];
        bpe_symbol& r = symbols[top.right];
        // Stale: one side was merged away, or grew (symbols only grow, so equal total size
        // means neither changed).
        if (l.length == 0 || r.length == 0 || l.length + r.length != top.size) continue;
        join_symbols(symbols, top.left, top.right, top.merged);
        add_bigram(l.prev, top.left);
        add_bigram(top.left, l.next);
    }

    for (std::int32_t i = 0; i >= 0; i = symbols[i].next) {
        const bpe_symbol& sym = symbols[i];
        const token_id id = sym.id >= 0 ? sym.id : lookup(text.substr(sym.begin, sym.length));
        if (id >= 0) {
            out.push_back(id);
            continue;
        }
        // Byte fallback. A vocabulary without the byte's token (llama.cpp throws there) gets
        // the unknown token, or nothing when it has none either.
        for (std::uint32_t b = 0; b < sym.length; ++b) {
            const token_id byte = byte_tokens[static_cast<unsigned char>(text[sym.begin + b])];
            if (byte >= 0) {
                out.push_back(byte);
            } else if (unk >= 0) {
                out.push_back(unk);
            }
        }
    }
}

}  // namespace moed::engine
