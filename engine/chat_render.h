// The renderers behind chat_template: one function per template family, each writing the
// prompt its Jinja template writes, as marker pieces (special tokens' texts, which
// chat_template::encode() turns into token ids) and text pieces (template text and message
// contents, tokenized as plain text). Internal to engine/; chat_template.h is the interface.
// Threads: pure functions.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/chat_template.h"

namespace moed::engine::chat_detail {

// A prompt as it is written: its text, and which spans of it are markers.
class prompt_builder {
public:
    struct piece {
        std::size_t begin = 0;
        std::size_t size = 0;
        bool marker = false;
    };

    void marker(std::string_view text);
    void text(std::string_view text);

    const std::string& str() const noexcept { return text_; }
    std::span<const piece> pieces() const noexcept { return pieces_; }
    std::string take() && { return std::move(text_); }

private:
    std::string text_;
    std::vector<piece> pieces_;
};

// What a renderer reads besides the family.
struct render_input {
    const std::vector<chat_message>& messages;  // roles already checked; never empty
    bool add_generation_prompt = true;
    const chat_options& options;
    std::string_view bos;             // the template's bos_token
    std::string_view eos;             // and eos_token
    std::string_view default_system;  // ChatML
    bool qwen_tool_turns = false;     // ChatML
    bool closes_think_when_off = false;  // DeepSeek R1
};

// Writes the prompt of `family` into `out`. Errors (errc::invalid_argument): a conversation
// the template refuses, naming the message and the template's rule.
result<void> render(chat_family family, const render_input& in, prompt_builder& out);

// Python's str.strip(): Unicode whitespace off both ends (what Jinja's strip() and trim do).
std::string_view py_strip(std::string_view s) noexcept;

}  // namespace moed::engine::chat_detail
