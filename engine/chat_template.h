// Chat templates: turning a list of messages into the prompt text a model was trained on.
// The template comes from the model (`tokenizer.chat_template`, a Jinja text); moed does not
// run Jinja, it recognises the families it supports by their markers and formats them in
// code. ChatML (Qwen2/Qwen3: <|im_start|>role\ncontent<|im_end|>\n) first. A model without
// a template gets ChatML, as llama.cpp does; a template of an unknown family is an error
// that names it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "engine/tokenizer.h"

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
    // The same prompt as token ids: the template's markers become their special tokens (as
    // vocab.encode(apply(...), true) makes them) while message contents are tokenized as plain
    // text, so a message that contains "<|im_end|>" cannot forge a turn of another role.
    // Equal to vocab.encode(apply(...), true) when the vocabulary has the markers and no
    // content contains a special token's text. A marker missing from the vocabulary is
    // tokenized as text on its own. Errors: as apply().
    result<std::vector<token_id>> encode(const tokenizer& vocab, const std::vector<chat_message>& messages,
                                         bool add_generation_prompt = true) const;

private:
    explicit chat_template(chat_family f) : family_(f) {}
    chat_family family_;
};

}  // namespace moed::engine
