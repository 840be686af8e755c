// Chat templates: turning a list of messages into the prompt text a model was trained on.
// The template comes from the model (`tokenizer.chat_template`, a Jinja text); moed does not
// run Jinja. It recognises the templates of the families it supports by their markers, as
// llama.cpp's built-in table does, and renders them in code, byte for byte as the Jinja
// template renders (tests/engine/fixtures/chat holds each real template and its renderings):
//   ChatML (Qwen2, Qwen2.5: optional default system message and <tool_response> turns),
//   Qwen3 (ChatML with <think> blocks: earlier turns' reasoning dropped, enable_thinking),
//   Mistral [INST] (Mixtral-8x7B's original and "v1", "v3", "v3-tekken", "v7"),
//   gpt-oss harmony (<|start|>role<|message|>...<|end|>, channels),
//   GLM-4.5/4.6 and GLM-4.7 ([gMASK]<sop><|user|>..., /nothink, <think></think>),
//   DeepSeek V3.1 and R1 (<｜User｜>, <｜Assistant｜>, the R1 <think> opening).
// A model without a template gets ChatML, as llama.cpp does; a template that is none of
// these (or a variant of a family whose rendering moed cannot reproduce) is an error naming
// the model and what was seen.
// Where a Jinja template would raise (Mistral's alternation of user and assistant, a tool
// message gpt-oss cannot place), apply() fails with errc::invalid_argument instead.
// Threads: immutable after construction; any thread may call it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/chat_reply.h"
#include "engine/tokenizer.h"

namespace moed::storage {
class gguf_file;
}

namespace moed::engine {

namespace chat_detail {
class prompt_builder;
}

struct chat_message {
    std::string role;  // system, user, assistant, tool
    std::string content;
};

// What a request may set that templates read besides the messages. The defaults are
// llama.cpp's: thinking on, the template's own reasoning effort.
struct chat_options {
    // Templates that can switch reasoning off read it (Qwen3, GLM, DeepSeek V3.1 and R1).
    bool enable_thinking = true;
    // gpt-oss's "Reasoning: " line: low, medium or high.
    std::string reasoning_effort = "medium";
    // gpt-oss's "Current date: " line, YYYY-MM-DD; empty: today in local time.
    std::string date;
};

// Each template moed renders. The names (name()) are llama.cpp's where it has one.
enum class chat_family : std::uint8_t {
    chatml = 0,
    qwen3 = 1,
    mistral_v0 = 2,         // Mixtral-8x7B-Instruct as first published: no system role
    mistral_v1 = 3,         // " [INST] " with a system message in the first turn
    mistral_v3 = 4,         // "[INST] " with the system message in the last turn
    mistral_v3_tekken = 5,  // "[INST]" without spaces (Mistral-Nemo)
    mistral_v7 = 6,         // [SYSTEM_PROMPT] (Mistral-Large-2411)
    gpt_oss = 7,
    glm_4_5 = 8,            // GLM-4.5 and 4.6
    glm_4_7 = 9,
    deepseek_v3_1 = 10,
    deepseek_r1 = 11,       // R1 as published (its distills carry the same)
    deepseek_r1_fixed = 12, // llama.cpp's corrected R1 template (models/templates)
};

// A rendered prompt with the generation prompt, ready for the engine.
struct chat_prompt {
    std::vector<token_id> tokens;  // without a leading BOS when vocab.add_bos() (callers add it)
    reply_format reply;            // how to split the reply into reasoning and content
};

class chat_template {
public:
    // Recognises tokenizer.chat_template in `file` (absent or empty: ChatML). The BOS and
    // EOS texts templates print come from the file's vocabulary, else the family's usual
    // ones. Errors: errc::bad_file for a template that is not a string, errc::unsupported
    // for a template moed does not render (naming the file, general.name and what was seen).
    static result<chat_template> from_gguf(const storage::gguf_file& file);
    // The same for a template text; `model` names it in errors.
    static result<chat_template> detect(std::string_view source, std::string_view model, std::string_view bos_text = {},
                                        std::string_view eos_text = {});
    static chat_template chatml();

    chat_family family() const noexcept { return family_; }
    const char* name() const noexcept;

    // The prompt text, ending with the assistant turn opened when add_generation_prompt,
    // as the model's Jinja template renders it (bos_token included where it prints it).
    // Errors (errc::invalid_argument): unknown role, empty message list, or a conversation
    // the template refuses (the message says why).
    result<std::string> apply(const std::vector<chat_message>& messages, bool add_generation_prompt = true,
                              const chat_options& options = {}) const;
    // The same prompt as token ids: the template's markers become their special tokens (as
    // vocab.encode(apply(...), true) makes them) while message contents are tokenized as plain
    // text, so a message that contains "<|im_end|>" cannot forge a turn of another role.
    // Equal to vocab.encode(apply(...), true) when no content contains a special token's
    // text, except that a leading BOS marker is left out when vocab.add_bos() (the caller
    // prepends bos_id() to every prompt). A marker that is not a special token of the
    // vocabulary is tokenized as text with its neighbours. Errors: as apply().
    result<std::vector<token_id>> encode(const tokenizer& vocab, const std::vector<chat_message>& messages,
                                         bool add_generation_prompt = true, const chat_options& options = {}) const;
    // encode() with the generation prompt, and how the reply reads: whether reasoning is
    // split out, and whether the prompt already opened it (R1, GLM-4.7, DeepSeek V3.1 with
    // thinking end the prompt inside <think>). Errors: as apply().
    result<chat_prompt> prompt(const tokenizer& vocab, const std::vector<chat_message>& messages,
                               const chat_options& options = {}) const;

    // The texts of the markers reply_parser reads in this family's replies. Tokens with these
    // texts must be detokenized with their text even when they are control tokens (as
    // llama.cpp's preserved tokens are), or the reply cannot be split.
    std::span<const std::string_view> reply_markers() const noexcept;
    // The ids of those markers that are control tokens of `vocab` (sorted; end-of-generation
    // tokens left out, as they end the reply and write nothing): the tokens a generator must
    // detokenize with their text. The others write their text anyway or are not tokens.
    std::vector<token_id> reply_control_tokens(const tokenizer& vocab) const;

private:
    explicit chat_template(chat_family f) : family_(f) {}
    // Checks the messages and writes the prompt; errors name the template.
    result<void> render(const std::vector<chat_message>& messages, bool add_generation_prompt,
                        const chat_options& options, chat_detail::prompt_builder& out) const;

    chat_family family_;
    std::string bos_;             // what the template's bos_token is
    std::string eos_;             // and eos_token
    std::string default_system_;  // ChatML: the system message used when the conversation has none
    bool qwen_tool_turns_ = false;    // ChatML: tool messages as <tool_response> in a user turn
    bool closes_think_when_off_ = false;  // R1: "</think>" after the opening when thinking is off
};

}  // namespace moed::engine
