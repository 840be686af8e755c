// Fuzzes the tokenizer (engine/tokenizer.cpp, tokenizer_spm.cpp, tokenizer_pretok.cpp,
// unicode_utf8.cpp) on the bundled Qwen3 byte-level BPE vocabulary (fuzz/vocabulary.h;
// MOED_FUZZ_MODEL names another GGUF file) and the bundled Llama-2 / Mixtral SentencePiece one.
// The input is text as a client sends it. Checked, with and without special-token parsing:
// every id is in the vocabulary; decoding the ids gives the text back byte for byte, and so
// does feeding the tokens' bytes through utf8_stream (after SentencePiece's leading space),
// for valid UTF-8, unless (SentencePiece) the text has U+2581, its space mark, or a special
// token came out (a space follows it); for any bytes, utf8_stream's output is valid UTF-8. The input read as token
// ids (4 bytes each, any values) must decode without a crash too.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/log.h"
#include "engine/tokenizer.h"
#include "engine/unicode_utf8.h"
#include "fuzz/fuzz_support.h"
#include "fuzz/vocabulary.h"

namespace {

using namespace moed;

void round_trip(const engine::tokenizer& vocab, std::string_view text, bool special) {
    const std::vector<engine::token_id> ids = vocab.encode(text, special);
    for (std::size_t i = 0; i < ids.size(); ++i)
        MOED_FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab.n_vocab(), "token {} has id {}, outside 0..{}", i, ids[i],
                        vocab.n_vocab() - 1);
    const bool valid = engine::utf8::is_valid(text);
    MOED_FUZZ_CHECK(!valid || !text.empty() == !ids.empty(), "{} ids for {} bytes of text", ids.size(), text.size());
    const bool sentencepiece = vocab.add_space_prefix();
    // SentencePiece: U+2581 in the text reads back as a space, a space follows each special
    // token, and the spaces it inserts can merge into the bytes of an invalid sequence.
    const bool exact =
        valid && (!sentencepiece ||
                  (text.find("\xE2\x96\x81") == std::string_view::npos &&
                   std::none_of(ids.begin(), ids.end(), [&](engine::token_id id) { return vocab.is_special(id); })));
    const std::string decoded = vocab.decode(ids, special);
    if (exact)
        MOED_FUZZ_CHECK(decoded == text, "decode(encode(text)) differs from the text (parse_special {}): {:?} -> {:?}",
                        special, text, decoded);
    engine::utf8_stream stream;
    std::string streamed;
    for (const engine::token_id id : ids) streamed += stream.push(vocab.token_bytes(id, special));
    streamed += stream.finish();
    MOED_FUZZ_CHECK(engine::utf8::is_valid(streamed), "utf8_stream gave invalid UTF-8");
    const std::string expected_stream = (sentencepiece && !text.empty() ? " " : "") + std::string(text);
    if (exact)
        MOED_FUZZ_CHECK(streamed == expected_stream, "utf8_stream over the tokens differs from the text: {:?}", streamed);
}

// Any ids: out-of-range ones decode to nothing.
void fuzz_ids(const engine::tokenizer& vocab, const std::uint8_t* data, std::size_t size) {
    (void)vocab.find_token(std::string_view(reinterpret_cast<const char*>(data), size));
    std::vector<engine::token_id> ids(size / sizeof(engine::token_id));
    if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * sizeof(engine::token_id));
    for (const bool special : {false, true}) {
        (void)vocab.decode(ids, special);
        engine::utf8_stream stream;
        std::string streamed;
        for (const auto id : ids) {
            (void)vocab.is_eog(id);
            streamed += stream.push(vocab.token_bytes(id, special));
        }
        streamed += stream.finish();
        MOED_FUZZ_CHECK(engine::utf8::is_valid(streamed), "utf8_stream gave invalid UTF-8 for arbitrary ids");
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    (void)moed::fuzz::vocabulary();  // loaded before the first input, not counted in its time
    (void)moed::fuzz::sentencepiece_vocabulary();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    for (const moed::engine::tokenizer* v : {&moed::fuzz::vocabulary(), &moed::fuzz::sentencepiece_vocabulary()}) {
        round_trip(*v, text, false);
        round_trip(*v, text, true);
        fuzz_ids(*v, data, size);
    }
    return 0;
}
