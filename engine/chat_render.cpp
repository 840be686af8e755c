#include "engine/chat_render.h"

#include <ctime>

#include <fmt/format.h>

namespace moed::engine::chat_detail {

void prompt_builder::marker(std::string_view text) {
    pieces_.push_back({text_.size(), text.size(), true});
    text_ += text;
}

void prompt_builder::text(std::string_view text) {
    if (text.empty()) return;
    pieces_.push_back({text_.size(), text.size(), false});
    text_ += text;
}

namespace {

using messages_t = std::vector<chat_message>;

// --- Python string methods, as the templates use them ---

// The code point starting at s[i] (0xFFFD for a malformed sequence) and its length.
char32_t decode_at(std::string_view s, std::size_t i, std::size_t& len) noexcept {
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    std::size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > s.size()) {
        len = 1;
        return 0xFFFD;
    }
    char32_t cp = n == 1 ? c : c & (0x7F >> n);
    for (std::size_t k = 1; k < n; ++k) {
        if ((b(i + k) & 0xC0) != 0x80) {
            len = 1;
            return 0xFFFD;
        }
        cp = (cp << 6) | (b(i + k) & 0x3F);
    }
    len = n;
    return cp;
}

// Python's str.isspace() for one code point.
bool py_space(char32_t c) noexcept {
    if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string_view lstrip_newlines(std::string_view s) noexcept {
    const std::size_t i = s.find_first_not_of('\n');
    return i == std::string_view::npos ? std::string_view() : s.substr(i);
}

std::string_view rstrip_newlines(std::string_view s) noexcept {
    const std::size_t i = s.find_last_not_of('\n');
    return i == std::string_view::npos ? std::string_view() : s.substr(0, i + 1);
}

// s.split(sep)[0] and s.split(sep)[-1]
std::string_view before_first(std::string_view s, std::string_view sep) noexcept {
    return s.substr(0, s.find(sep));
}
std::string_view after_last(std::string_view s, std::string_view sep) noexcept {
    const std::size_t at = s.rfind(sep);
    return at == std::string_view::npos ? s : s.substr(at + sep.size());
}

constexpr std::string_view k_think_open = "<think>";
constexpr std::string_view k_think_close = "</think>";

// What Qwen3 and GLM read out of an assistant message that carries its reasoning inline:
// reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
// content = content.split('</think>')[-1].lstrip('\n'), when the content has a </think>.
struct inline_reasoning {
    std::string_view reasoning;
    std::string_view content;
};
inline_reasoning split_reasoning(std::string_view content) noexcept {
    if (content.find(k_think_close) == std::string_view::npos) return {{}, content};
    return {lstrip_newlines(after_last(rstrip_newlines(before_first(content, k_think_close)), k_think_open)),
            lstrip_newlines(after_last(content, k_think_close))};
}

bool ends_with(std::string_view s, std::string_view tail) noexcept {
    return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

unexpected refused(std::size_t index, std::string_view rule) {
    return make_error(errc::invalid_argument, "messages[{}]: the model's chat template does not allow this: {}", index,
                      rule);
}

// --- ChatML: Qwen2, Qwen2.5 and every plain ChatML template ---

constexpr std::string_view k_im_start = "<|im_start|>";
constexpr std::string_view k_im_end = "<|im_end|>";
constexpr std::string_view k_tool_response = "<tool_response>";
constexpr std::string_view k_tool_response_end = "</tool_response>";

void chatml_turn(prompt_builder& out, std::string_view role, std::string_view content) {
    out.marker(k_im_start);
    out.text(std::string(role) + "\n" + std::string(content));
    out.marker(k_im_end);
    out.text("\n");
}

// Qwen2.5/Qwen3: consecutive tool messages share one user turn of <tool_response> blocks.
void qwen_tool_turn(prompt_builder& out, const messages_t& m, std::size_t i) {
    if (i == 0 || m[i - 1].role != "tool") {
        out.marker(k_im_start);
        out.text("user");
    }
    out.text("\n");
    out.marker(k_tool_response);
    out.text("\n" + m[i].content + "\n");
    out.marker(k_tool_response_end);
    if (i + 1 == m.size() || m[i + 1].role != "tool") {
        out.marker(k_im_end);
        out.text("\n");
    }
}

result<void> render_chatml(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    if (!in.default_system.empty() && m[0].role != "system") chatml_turn(out, "system", in.default_system);
    for (std::size_t i = 0; i < m.size(); ++i) {
        if (in.qwen_tool_turns && m[i].role == "tool") qwen_tool_turn(out, m, i);
        else chatml_turn(out, m[i].role, m[i].content);
    }
    if (in.add_generation_prompt) {
        out.marker(k_im_start);
        out.text("assistant\n");
    }
    return {};
}

// Qwen3: ChatML whose assistant turns after the last user query keep their reasoning in a
// <think> block; earlier turns lose it.
result<void> render_qwen3(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    if (m[0].role == "system") chatml_turn(out, "system", m[0].content);
    // The last user message that is a query rather than a tool response written as one.
    std::size_t last_query = m.size() - 1;
    for (std::size_t k = m.size(); k-- > 0;) {
        const std::string_view c = m[k].content;
        if (m[k].role == "user" && !(c.starts_with(k_tool_response) && ends_with(c, k_tool_response_end))) {
            last_query = k;
            break;
        }
    }
    for (std::size_t i = 0; i < m.size(); ++i) {
        const std::string& role = m[i].role;
        if (role == "user" || (role == "system" && i != 0)) {
            chatml_turn(out, role, m[i].content);
        } else if (role == "assistant") {
            const inline_reasoning r = split_reasoning(m[i].content);
            out.marker(k_im_start);
            if (i > last_query && (i + 1 == m.size() || !r.reasoning.empty())) {
                out.text("assistant\n");
                out.marker(k_think_open);
                std::string_view reasoning = lstrip_newlines(rstrip_newlines(r.reasoning));
                out.text("\n" + std::string(reasoning) + "\n");
                out.marker(k_think_close);
                out.text("\n\n" + std::string(lstrip_newlines(r.content)));
            } else {
                out.text("assistant\n" + std::string(r.content));
            }
            out.marker(k_im_end);
            out.text("\n");
        } else if (role == "tool") {
            qwen_tool_turn(out, m, i);
        }
    }
    if (in.add_generation_prompt) {
        out.marker(k_im_start);
        out.text("assistant\n");
        if (!in.options.enable_thinking) {
            out.marker(k_think_open);
            out.text("\n\n");
            out.marker(k_think_close);
            out.text("\n\n");
        }
    }
    return {};
}

// --- Mistral [INST] ---

constexpr std::string_view k_inst = "[INST]";
constexpr std::string_view k_inst_end = "[/INST]";
constexpr std::string_view k_system_prompt = "[SYSTEM_PROMPT]";
constexpr std::string_view k_system_prompt_end = "[/SYSTEM_PROMPT]";
constexpr std::string_view k_alternate = "conversation roles must alternate user/assistant/user/assistant/...";
constexpr std::string_view k_alternate_after_system =
    "after the optional system message, conversation roles must alternate user/assistant/user/assistant/...";
constexpr std::string_view k_user_assistant_only =
    "only user and assistant roles are supported, with the exception of an initial optional system message";

// Mixtral-8x7B-Instruct as first published: user and assistant alternating, nothing else.
result<void> render_mistral_v0(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    out.marker(in.bos);
    for (std::size_t i = 0; i < m.size(); ++i) {
        if ((m[i].role == "user") != (i % 2 == 0)) return refused(i, k_alternate);
        if (m[i].role == "user") {
            out.marker(k_inst);
            out.text(" " + m[i].content + " ");
            out.marker(k_inst_end);
        } else if (m[i].role == "assistant") {
            out.text(m[i].content);
            out.marker(in.eos);
        } else {
            return refused(i, "only user and assistant roles are supported");
        }
    }
    return {};
}

// "v1" (Mixtral-8x7B-Instruct's later template): the system message joins the first turn.
result<void> render_mistral_v1(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    const bool has_system = m[0].role == "system";
    const std::size_t first = has_system ? 1 : 0;
    out.marker(in.bos);
    for (std::size_t i = first; i < m.size(); ++i) {
        if ((m[i].role == "user") != ((i - first) % 2 == 0)) return refused(i, k_alternate_after_system);
        if (m[i].role == "user") {
            out.text(" ");
            out.marker(k_inst);
            std::string turn = " ";
            if (i == first && has_system) turn += m[0].content + "\n\n";
            out.text(turn + m[i].content + " ");
            out.marker(k_inst_end);
        } else if (m[i].role == "assistant") {
            out.text(" " + m[i].content);
            out.marker(in.eos);
        } else {
            return refused(i, k_user_assistant_only);
        }
    }
    return {};
}

// "v3" and "v3-tekken": the system message joins the last turn when that is a user's; tool
// messages would need tool-call ids, which the API does not carry.
result<void> render_mistral_v3(const render_input& in, bool tekken, prompt_builder& out) {
    const messages_t& m = in.messages;
    const bool has_system = m[0].role == "system";
    const std::size_t first = has_system ? 1 : 0;
    // The template checks the alternation (tool messages aside) before writing anything.
    std::size_t turn = 0;
    for (std::size_t i = first; i < m.size(); ++i) {
        if (m[i].role == "tool") continue;
        if ((m[i].role == "user") != (turn % 2 == 0)) return refused(i, k_alternate_after_system);
        ++turn;
    }
    const std::string_view space = tekken ? "" : " ";
    out.marker(in.bos);
    for (std::size_t i = first; i < m.size(); ++i) {
        const std::string& role = m[i].role;
        if (role == "user") {
            out.marker(k_inst);
            std::string text(space);
            if (i + 1 == m.size() && has_system) text += m[0].content + "\n\n";
            out.text(text + m[i].content);
            out.marker(k_inst_end);
        } else if (role == "assistant") {
            out.text(tekken ? std::string(m[i].content) : " " + std::string(py_strip(m[i].content)));
            out.marker(in.eos);
        } else if (role == "tool") {
            return refused(i, "tool results need the id of the tool call they answer");
        } else {
            return refused(i, k_user_assistant_only);
        }
    }
    return {};
}

// "v7" (Mistral-Large-2411): system prompts are turns of their own.
result<void> render_mistral_v7(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    out.marker(in.bos);
    for (std::size_t i = 0; i < m.size(); ++i) {
        const std::string& role = m[i].role;
        if (role == "user") {
            out.marker(k_inst);
            out.text(" " + m[i].content);
            out.marker(k_inst_end);
        } else if (role == "system") {
            out.marker(k_system_prompt);
            out.text(" " + m[i].content);
            out.marker(k_system_prompt_end);
        } else if (role == "assistant") {
            out.text(" " + m[i].content);
            out.marker(in.eos);
        } else {
            return refused(i, "only user, system and assistant roles are supported");
        }
    }
    return {};
}

// --- gpt-oss harmony ---

constexpr std::string_view k_start = "<|start|>";
constexpr std::string_view k_message = "<|message|>";
constexpr std::string_view k_end = "<|end|>";
constexpr std::string_view k_channel = "<|channel|>";
constexpr std::string_view k_return = "<|return|>";

std::string today() {
    const std::time_t now = std::time(nullptr);
    std::tm local{};
    if (localtime_r(&now, &local) == nullptr) return "1970-01-01";
    return fmt::format("{:04}-{:02}-{:02}", local.tm_year + 1900, local.tm_mon + 1, local.tm_mday);
}

void harmony_message(prompt_builder& out, std::string_view role, std::string_view channel, std::string_view body,
                     std::string_view end) {
    out.marker(k_start);
    out.text(role);
    if (!channel.empty()) {
        out.marker(k_channel);
        out.text(channel);
    }
    out.marker(k_message);
    out.text(body);
    out.marker(end);
}

result<void> render_gpt_oss(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    const std::string date = in.options.date.empty() ? today() : in.options.date;
    harmony_message(out, "system", {},
                    fmt::format("You are ChatGPT, a large language model trained by OpenAI.\n"
                                "Knowledge cutoff: 2024-06\nCurrent date: {}\n\nReasoning: {}\n\n"
                                "# Valid channels: analysis, commentary, final. Channel must be included for every "
                                "message.",
                                date, in.options.reasoning_effort),
                    k_end);
    // The first system message is the developer message; later ones are dropped.
    const std::size_t first = m[0].role == "system" ? 1 : 0;
    if (first == 1 && !m[0].content.empty())
        harmony_message(out, "developer", {}, "# Instructions\n\n" + m[0].content + "\n\n", k_end);
    for (std::size_t i = first; i < m.size(); ++i) {
        const std::string& role = m[i].role;
        if (role == "assistant") {
            const std::string_view c = m[i].content;
            if (c.find("<|channel|>analysis<|message|>") != std::string_view::npos ||
                c.find("<|channel|>final<|message|>") != std::string_view::npos)
                return refused(i, "an assistant message's content must not carry <|channel|> tags");
            // Only a last assistant turn without a generation prompt (training) ends in <|return|>.
            const bool last = i + 1 == m.size() && !in.add_generation_prompt;
            harmony_message(out, "assistant", "final", c, last ? k_return : k_end);
        } else if (role == "tool") {
            return refused(i, "a tool message needs an earlier assistant message with a tool call");
        } else if (role == "user") {
            harmony_message(out, "user", {}, m[i].content, k_end);
        }
    }
    if (in.add_generation_prompt) {
        out.marker(k_start);
        out.text("assistant");
    }
    return {};
}

// --- GLM-4.5/4.6 and GLM-4.7 ---

constexpr std::string_view k_gmask = "[gMASK]";
constexpr std::string_view k_sop = "<sop>";
constexpr std::string_view k_glm_user = "<|user|>";
constexpr std::string_view k_glm_assistant = "<|assistant|>";
constexpr std::string_view k_glm_system = "<|system|>";
constexpr std::string_view k_glm_observation = "<|observation|>";
constexpr std::string_view k_nothink = "/nothink";

// GLM-4.5/4.6 put a newline after each role marker; GLM-4.7 writes turns back to back, opens
// <think> in the generation prompt and marks an assistant turn without reasoning with a lone
// </think>. GLM-4.5 asks for no reasoning by ending user messages in /nothink.
result<void> render_glm(const render_input& in, bool glm47, prompt_builder& out) {
    const messages_t& m = in.messages;
    const std::string_view nl = glm47 ? "" : "\n";
    std::size_t last_user = m.size();  // none
    for (std::size_t i = 0; i < m.size(); ++i) {
        if (m[i].role == "user") last_user = i;
    }
    out.marker(k_gmask);
    out.marker(k_sop);
    for (std::size_t i = 0; i < m.size(); ++i) {
        const std::string& role = m[i].role;
        const std::string& c = m[i].content;
        if (role == "user") {
            out.marker(k_glm_user);
            std::string text = std::string(nl) + c;
            if (!glm47 && !in.options.enable_thinking && !ends_with(c, k_nothink)) text += k_nothink;
            out.text(text);
        } else if (role == "assistant") {
            out.marker(k_glm_assistant);
            const inline_reasoning r = split_reasoning(c);
            const bool after_last_user = last_user == m.size() || i > last_user;
            out.text(nl);
            if (after_last_user && !r.reasoning.empty()) {
                out.marker(k_think_open);
                out.text(py_strip(r.reasoning));
                out.marker(k_think_close);
            } else {
                if (!glm47) out.marker(k_think_open);
                out.marker(k_think_close);
            }
            if (const std::string_view body = py_strip(r.content); !body.empty()) out.text(std::string(nl) + std::string(body));
        } else if (role == "tool") {
            if (i == 0 || m[i - 1].role != "tool") out.marker(k_glm_observation);
            out.text(nl);
            out.marker(k_tool_response);
            out.text(std::string(nl) + c + std::string(nl));
            out.marker(k_tool_response_end);
        } else if (role == "system") {
            out.marker(k_glm_system);
            out.text(std::string(nl) + c);
        }
    }
    if (in.add_generation_prompt) {
        out.marker(k_glm_assistant);
        if (glm47) {
            out.marker(in.options.enable_thinking ? k_think_open : k_think_close);
        } else if (!in.options.enable_thinking) {
            out.text("\n");
            out.marker(k_think_open);
            out.marker(k_think_close);
        }
    }
    return {};
}

// --- DeepSeek ---

constexpr std::string_view k_ds_user = "<｜User｜>";
constexpr std::string_view k_ds_assistant = "<｜Assistant｜>";
constexpr std::string_view k_ds_eos = "<｜end▁of▁sentence｜>";
constexpr std::string_view k_ds_output_begin = "<｜tool▁output▁begin｜>";
constexpr std::string_view k_ds_output_end = "<｜tool▁output▁end｜>";
constexpr std::string_view k_ds_outputs_begin = "<｜tool▁outputs▁begin｜>";
constexpr std::string_view k_ds_outputs_end = "<｜tool▁outputs▁end｜>";
constexpr std::string_view k_ds_calls_begin = "<｜tool▁calls▁begin｜>";
constexpr std::string_view k_ds_calls_end = "<｜tool▁calls▁end｜>";

// V3.1: all system messages first, joined; "<think></think>" closes the reasoning of
// earlier turns; thinking decides whether the generation prompt opens <think>. A reply to
// tool output gets no generation prompt (the model goes on after it).
result<void> render_deepseek_v3_1(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    std::string system;
    bool first_system = true;
    for (const chat_message& msg : m) {
        if (msg.role != "system") continue;
        if (!first_system) system += "\n\n";
        system += msg.content;
        first_system = false;
    }
    out.marker(in.bos);
    out.text(system);
    bool after_user = false;
    bool after_tool = false;
    for (const chat_message& msg : m) {
        if (msg.role == "user") {
            after_tool = false;
            after_user = true;
            out.marker(k_ds_user);
            out.text(msg.content);
        } else if (msg.role == "assistant") {
            if (after_user) {
                out.marker(k_ds_assistant);
                out.marker(k_think_open);
                out.marker(k_think_close);
            }
            after_user = false;
            std::string_view content = msg.content;
            if (after_tool) {
                after_tool = false;
            } else if (const std::size_t at = content.find(k_think_close); at != std::string_view::npos) {
                content = content.substr(at + k_think_close.size());
            }
            out.text(content);
            out.marker(k_ds_eos);
        } else if (msg.role == "tool") {
            after_user = false;
            after_tool = true;
            out.marker(k_ds_output_begin);
            out.text(msg.content);
            out.marker(k_ds_output_end);
        }
    }
    if (in.add_generation_prompt && after_user && !after_tool) {
        out.marker(k_ds_assistant);
        out.marker(k_think_open);
        if (!in.options.enable_thinking) out.marker(k_think_close);
    }
    return {};
}

// R1 as published: the last system message first; the generation prompt opens "<think>\n".
result<void> render_deepseek_r1(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    std::string_view system;
    for (const chat_message& msg : m) {
        if (msg.role == "system") system = msg.content;
    }
    out.marker(in.bos);
    out.text(system);
    bool in_tool_outputs = false;
    bool first_output = true;  // the template never resets it
    for (const chat_message& msg : m) {
        if (msg.role == "user") {
            in_tool_outputs = false;
            out.marker(k_ds_user);
            out.text(msg.content);
        } else if (msg.role == "assistant") {
            if (in_tool_outputs) {
                out.marker(k_ds_outputs_end);
                out.text(msg.content);
                in_tool_outputs = false;
            } else {
                out.marker(k_ds_assistant);
                out.text(after_last(msg.content, k_think_close));
            }
            out.marker(k_ds_eos);
        } else if (msg.role == "tool") {
            in_tool_outputs = true;
            if (first_output) {
                out.marker(k_ds_outputs_begin);
                first_output = false;
            } else {
                out.text("\n");
            }
            out.marker(k_ds_output_begin);
            out.text(msg.content);
            out.marker(k_ds_output_end);
        }
    }
    if (in_tool_outputs) out.marker(k_ds_outputs_end);
    if (in.add_generation_prompt && !in_tool_outputs) {
        out.marker(k_ds_assistant);
        out.marker(k_think_open);
        out.text("\n");
        if (in.closes_think_when_off && !in.options.enable_thinking) out.marker(k_think_close);
    }
    return {};
}

// llama.cpp's corrected R1 template: user turns end in end-of-sentence, tool outputs are
// closed before the next turn, and an empty assistant message is an (empty) tool call.
result<void> render_deepseek_r1_fixed(const render_input& in, prompt_builder& out) {
    const messages_t& m = in.messages;
    std::string_view system;
    for (const chat_message& msg : m) {
        if (msg.role == "system") system = msg.content;
    }
    out.marker(in.bos);
    out.text(system);
    bool in_tool_outputs = false;
    bool first_output = true;
    const auto flush_tool_outputs = [&] {
        if (!in_tool_outputs) return;
        out.marker(k_ds_outputs_end);
        out.marker(k_ds_eos);
        in_tool_outputs = false;
    };
    for (const chat_message& msg : m) {
        if (msg.role != "tool") flush_tool_outputs();
        if (msg.role == "user") {
            out.marker(k_ds_user);
            out.text(msg.content);
            out.marker(k_ds_eos);
        } else if (msg.role == "assistant" && msg.content.empty()) {
            out.marker(k_ds_assistant);
            out.marker(k_ds_calls_begin);
            out.marker(k_ds_calls_end);
            out.marker(k_ds_eos);
        } else if (msg.role == "assistant") {
            out.marker(k_ds_assistant);
            out.text(after_last(msg.content, k_think_close));
            out.marker(k_ds_eos);
        } else if (msg.role == "tool") {
            in_tool_outputs = true;
            if (first_output) {
                out.marker(k_ds_outputs_begin);
                first_output = false;
            }
            out.text("\n");
            out.marker(k_ds_output_begin);
            out.text(msg.content);
            out.marker(k_ds_output_end);
        }
    }
    flush_tool_outputs();
    if (in.add_generation_prompt) {
        out.marker(k_ds_assistant);
        out.marker(k_think_open);
        out.text("\n");
    }
    return {};
}

}  // namespace

std::string_view py_strip(std::string_view s) noexcept {
    std::size_t begin = 0;
    while (begin < s.size()) {
        std::size_t len = 0;
        if (!py_space(decode_at(s, begin, len))) break;
        begin += len;
    }
    std::size_t end = s.size();
    while (end > begin) {
        // Step back to the start of the last code point.
        std::size_t start = end - 1;
        while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && end - start < 4) --start;
        std::size_t len = 0;
        const char32_t c = decode_at(s, start, len);
        if (start + len != end || !py_space(c)) break;
        end = start;
    }
    return s.substr(begin, end - begin);
}

result<void> render(chat_family family, const render_input& in, prompt_builder& out) {
    switch (family) {
        case chat_family::chatml: return render_chatml(in, out);
        case chat_family::qwen3: return render_qwen3(in, out);
        case chat_family::mistral_v0: return render_mistral_v0(in, out);
        case chat_family::mistral_v1: return render_mistral_v1(in, out);
        case chat_family::mistral_v3: return render_mistral_v3(in, false, out);
        case chat_family::mistral_v3_tekken: return render_mistral_v3(in, true, out);
        case chat_family::mistral_v7: return render_mistral_v7(in, out);
        case chat_family::gpt_oss: return render_gpt_oss(in, out);
        case chat_family::glm_4_5: return render_glm(in, false, out);
        case chat_family::glm_4_7: return render_glm(in, true, out);
        case chat_family::deepseek_v3_1: return render_deepseek_v3_1(in, out);
        case chat_family::deepseek_r1: return render_deepseek_r1(in, out);
        case chat_family::deepseek_r1_fixed: return render_deepseek_r1_fixed(in, out);
    }
    return make_error(errc::internal, "chat family {} has no renderer", static_cast<int>(family));
}

}  // namespace moed::engine::chat_detail
