// Fuzzes the chat template renderer (engine/chat_template.cpp) on the path a chat request
// takes: the input is the "messages" JSON of a /v1/chat/completions body, turned into
// messages by the API's own parser (daemon/api.cpp), then rendered as text (apply) and as
// token ids (encode) with the bundled vocabulary. Checked: apply and encode accept and
// refuse the same messages; the ids decode (special tokens as text) to exactly the rendered
// text; and when no message holds a special token's text (all of this vocabulary's start
// with '<'), the ids equal tokenizing the rendered text with special tokens parsed.
// The template's text itself is not parsed by moed (its family is recognised by markers);
// that detection runs on every file the GGUF fuzz program opens.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/log.h"
#include "daemon/api.h"
#include "engine/chat_template.h"
#include "fuzz/fuzz_support.h"
#include "fuzz/vocabulary.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    (void)moed::fuzz::vocabulary();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace moed;
    const engine::tokenizer& vocab = fuzz::vocabulary();
    static const engine::chat_template chat = [] {
        auto t = engine::chat_template::from_gguf(fuzz::vocabulary_file());
        if (!t) fuzz::fail("the vocabulary's chat template: {}", t.error().message);
        return *t;
    }();

    std::string body = "{\"messages\":";
    body.append(reinterpret_cast<const char*>(data), size);
    body += '}';
    auto request = daemon::parse_generation_request(daemon::api_kind::chat, body, daemon::api_limits{});
    if (!request) return 0;

    for (const bool generation_prompt : {true, false}) {
        auto text = chat.apply(request->messages, generation_prompt);
        auto ids = chat.encode(vocab, request->messages, generation_prompt);
        MOED_FUZZ_CHECK(text.has_value() == ids.has_value(), "apply {} but encode {}", text ? "accepts" : "refuses",
                        ids ? "accepts" : "refuses");
        if (!text) {
            MOED_FUZZ_CHECK(text.error().message == ids.error().message, "apply says {:?}, encode {:?}",
                            text.error().message, ids.error().message);
            continue;
        }
        const std::string decoded = vocab.decode(*ids, /*special=*/true);
        MOED_FUZZ_CHECK(decoded == *text, "the ids decode to {:?}, the template renders {:?}", decoded, *text);
        bool plain = true;
        for (const auto& m : request->messages)
            plain = plain && m.content.find('<') == std::string::npos && m.role.find('<') == std::string::npos;
        if (plain)
            MOED_FUZZ_CHECK(*ids == vocab.encode(*text, /*parse_special=*/true),
                            "encode differs from tokenizing the rendered text {:?}", *text);
    }
    return 0;
}
