// Splitting a chat reply into its reasoning and its content, as the reply streams in.
// Reasoning models write their thinking in markup the chat template defines: Qwen3,
// DeepSeek R1/V3.1 and GLM a "<think>...</think>" block at the start of the reply (which the
// prompt may already have opened), gpt-oss harmony messages on channels
// ("<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...").
// The OpenAI-style response carries the first as `reasoning_content` and the rest as
// `content`, without the markup, as llama-server does.
// The parser is incremental: each piece of generated text settles what it can and holds
// back only what may still be the start of a marker (or whitespace that trimming may drop),
// so a stream of deltas concatenates to what one parse of the whole reply gives.
// Threads: one parser per reply, used by one thread at a time.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moed::engine {

enum class reasoning_syntax : std::uint8_t {
    none = 0,        // everything is content
    think_tags = 1,  // an optional <think>...</think> block first; reasoning and content trimmed
    harmony = 2,     // gpt-oss messages: the analysis channel is reasoning, the others content
};

struct reply_format {
    reasoning_syntax syntax = reasoning_syntax::none;
    bool starts_in_reasoning = false;  // think_tags: the prompt ended inside an opened <think>
};

// What a piece of the reply added to each part.
struct reply_text {
    std::string reasoning;
    std::string content;

    void clear() noexcept {
        reasoning.clear();
        content.clear();
    }
};

class reply_parser {
public:
    explicit reply_parser(reply_format format) noexcept;

    // Reads the next piece of the reply and appends to `out` what it settles.
    void push(std::string_view text, reply_text& out);
    // The reply ended: appends what was held back (a marker's start that never finished is
    // text; an unfinished harmony header is dropped).
    void finish(reply_text& out);

private:
    enum class state : std::uint8_t {
        before_reply,     // think_tags: leading whitespace, then <think> or content
        reasoning_lead,   // think_tags: inside <think>, dropping leading whitespace
        reasoning,        // think_tags: inside <think>
        content_lead,     // think_tags: after </think>, dropping leading whitespace
        content,          // everything else is content
        header,           // harmony: between messages, reading up to <|message|>
        message,          // harmony: a message's body, up to <|end|>
    };

    void push_think(reply_text& out);
    void push_harmony(reply_text& out);

    reply_format format_;
    state state_;
    bool analysis_ = false;  // harmony: the current message is on the analysis channel
    std::string held_;       // text read but not yet settled
};

}  // namespace moed::engine
