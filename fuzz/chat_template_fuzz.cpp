// Fuzzes the chat template renderers (engine/chat_template.cpp, chat_render.cpp) on the path a
// chat request takes: the input is the "messages" JSON of a /v1/chat/completions body, turned
// into messages by the API's own parser (daemon/api.cpp), then rendered by every family moed
// supports as text (apply) and as token ids (encode, prompt) with the bundled vocabulary,
// with thinking on and off. Checked: apply and encode accept and refuse the same messages;
// the ids decode (special tokens as text) to exactly the rendered text; when no message holds
// a special token's text (all of this vocabulary's start with '<'), the ids equal tokenizing
// the rendered text with special tokens parsed; prompt() gives encode()'s ids.
// The template's text itself is not parsed by moed (its family is recognised by markers);
// that detection runs on every file the GGUF fuzz program opens. Each family is recognised
// here from the markers its detection looks for.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

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

namespace {

// The markers each family is recognised by (the real templates are in
// tests/engine/fixtures/chat; these are the smallest texts detection accepts).
const std::vector<moed::engine::chat_template>& templates() {
    using moed::engine::chat_template;
    static const std::vector<chat_template> all = [] {
        const char* sources[] = {
            "",
            "<|im_start|>system\\nYou are a helpful assistant.<|im_end|> <tool_response>",
            "<|im_start|><|im_end|><think></think> last_query_index reasoning_content enable_thinking",
            "[INST] '[INST] ' + message['content'] + ' [/INST]' {{ message['content'] + eos_token}}",
            "[INST] ' [INST] ' + system_message",
            "[INST] [AVAILABLE_TOOLS]",
            "\"[INST]\" [AVAILABLE_TOOLS]",
            "[SYSTEM_PROMPT] '[SYSTEM_PROMPT] ' '[INST] '",
            ("<|start|><|channel|><|message|>You are ChatGPT, a large language model trained by OpenAI. "
             "Knowledge cutoff: 2024-06"),
            "[gMASK]<sop> /nothink <think></think>",
            "[gMASK]<sop> clear_thinking",
            "<｜User｜><｜Assistant｜> is_last_user <think></think>",
            "<｜User｜><｜Assistant｜><think>\\n enable_thinking",
            "<｜User｜><｜Assistant｜> flush_tool_outputs",
        };
        std::vector<chat_template> out;
        for (const char* source : sources) {
            auto t = chat_template::detect(source, "fuzz");
            if (!t) moed::fuzz::fail("the family markers {:?}: {}", source, t.error().message);
            out.push_back(*t);
        }
        return out;
    }();
    return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace moed;
    const engine::tokenizer& vocab = fuzz::vocabulary();

    std::string body = "{\"messages\":";
    body.append(reinterpret_cast<const char*>(data), size);
    body += '}';
    auto request = daemon::parse_generation_request(daemon::api_kind::chat, body, daemon::api_limits{});
    if (!request) return 0;
    bool plain = true;
    for (const auto& m : request->messages)
        plain = plain && m.content.find('<') == std::string::npos && m.role.find('<') == std::string::npos;

    for (const engine::chat_template& chat : templates()) {
        for (const bool thinking : {true, false}) {
            engine::chat_options options;
            options.enable_thinking = thinking;
            options.date = "2025-06-01";
            for (const bool generation_prompt : {true, false}) {
                auto text = chat.apply(request->messages, generation_prompt, options);
                auto ids = chat.encode(vocab, request->messages, generation_prompt, options);
                MOED_FUZZ_CHECK(text.has_value() == ids.has_value(), "{}: apply {} but encode {}", chat.name(),
                                text ? "accepts" : "refuses", ids ? "accepts" : "refuses");
                if (!text) {
                    MOED_FUZZ_CHECK(text.error().message == ids.error().message, "{}: apply says {:?}, encode {:?}",
                                    chat.name(), text.error().message, ids.error().message);
                    continue;
                }
                const std::string decoded = vocab.decode(*ids, /*special=*/true);
                MOED_FUZZ_CHECK(decoded == *text, "{}: the ids decode to {:?}, the template renders {:?}", chat.name(),
                                decoded, *text);
                if (plain)
                    MOED_FUZZ_CHECK(*ids == vocab.encode(*text, /*parse_special=*/true),
                                    "{}: encode differs from tokenizing the rendered text {:?}", chat.name(), *text);
                if (generation_prompt) {
                    auto p = chat.prompt(vocab, request->messages, options);
                    MOED_FUZZ_CHECK(p && p->tokens == *ids, "{}: prompt() differs from encode()", chat.name());
                }
            }
        }
    }
    return 0;
}
