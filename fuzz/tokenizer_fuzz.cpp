// Fuzzes the tokenizer (engine/tokenizer.cpp, tokenizer_pretok.cpp, unicode_utf8.cpp) on the
// bundled Qwen3 vocabulary (fuzz/vocabulary.h; MOED_FUZZ_MODEL names another GGUF file).
// The input is text as a client sends it. Checked, with and without special-token parsing:
// every id is in the vocabulary; for valid UTF-8, decoding the ids gives the text back byte
// for byte, and so does feeding the tokens' bytes through utf8_stream; for any bytes,
// utf8_stream's output is valid UTF-8. The input read as token ids (4 bytes each, any
// values) must decode without a crash too.
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
    const std::string decoded = vocab.decode(ids, special);
    if (valid)
        MOED_FUZZ_CHECK(decoded == text, "decode(encode(text)) differs from the text (parse_special {}): {:?} -> {:?}",
                        special, text, decoded);
    engine::utf8_stream stream;
    std::string streamed;
    for (const engine::token_id id : ids) streamed += stream.push(vocab.token_bytes(id, special));
    streamed += stream.finish();
    MOED_FUZZ_CHECK(engine::utf8::is_valid(streamed), "utf8_stream gave invalid UTF-8");
    if (valid) MOED_FUZZ_CHECK(streamed == text, "utf8_stream over the tokens differs from the text: {:?}", streamed);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    (void)moed::fuzz::vocabulary();  // loaded before the first input, not counted in its time
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const moed::engine::tokenizer& vocab = moed::fuzz::vocabulary();
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    round_trip(vocab, text, false);
    round_trip(vocab, text, true);
    (void)vocab.find_token(text);

    // Any ids: out-of-range ones decode to nothing.
    std::vector<moed::engine::token_id> ids(size / sizeof(moed::engine::token_id));
    if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * sizeof(moed::engine::token_id));
    for (const bool special : {false, true}) {
        (void)vocab.decode(ids, special);
        moed::engine::utf8_stream stream;
        std::string streamed;
        for (const auto id : ids) {
            (void)vocab.is_eog(id);
            streamed += stream.push(vocab.token_bytes(id, special));
        }
        streamed += stream.finish();
        MOED_FUZZ_CHECK(moed::engine::utf8::is_valid(streamed), "utf8_stream gave invalid UTF-8 for arbitrary ids");
    }
    return 0;
}
