// Chat templates: turning a list of messages into the prompt text a model was trained on.
// The template comes from the model (`tokenizer.chat_template`, a Jinja text); moed does not
// run Jinja, it recognises the families it supports by their markers and formats them in
// code. ChatML (Qwen2/Qwen3: <|im_start|>role\ncontent<|im_end|>\n) first. A model without
// a template gets ChatML, as llama.cpp does; a template of an unknown family is an error
// that names it.
#pragma once

#include <string>
#include <vector>

#include "common/result.h"

namespace moed::storage {
class gguf_file;
}

namespace moed::engine {

struct chat_message {
    std::string role;  // system, user, assistant, tool
    std::string content;
};

enum class chat_family : std::uint8_t { chatml = 0 };

class chat_template {
public:
    // Detects the family from the file's tokenizer.chat_template (absent: ChatML).
    static result<chat_template> from_gguf(const storage::gguf_file& file);
    static chat_template chatml() { return chat_template(chat_family::chatml); }

    chat_family family() const noexcept { return family_; }
    const char* name() const noexcept;
    // The prompt text, ending with the assistant turn opened when add_generation_prompt.
    // Errors: unknown role, empty message list.
    result<std::string> apply(const std::vector<chat_message>& messages, bool add_generation_prompt = true) const;

private:
    explicit chat_template(chat_family f) : family_(f) {}
    chat_family family_;
};

}  // namespace moed::engine
