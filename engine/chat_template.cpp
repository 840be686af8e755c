#include "engine/chat_template.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <optional>

#include "common/log.h"
#include "engine/chat_render.h"
#include "storage/gguf.h"

namespace moed::engine {

namespace {

constexpr std::string_view k_component = "chat";
constexpr std::string_view k_template_key = "tokenizer.chat_template";
// How much of an unrecognised template an error quotes: enough to tell the family apart
// (most templates open with their first marker or a distinctive Jinja preamble).
constexpr std::size_t k_hint_bytes = 60;
constexpr std::string_view k_supported =
    "ChatML (<|im_start|>role ... <|im_end|>: Qwen2, Qwen2.5), Qwen3, Mistral [INST] (Mixtral-8x7B v0.1, v1, v3, "
    "v3-tekken, v7), gpt-oss harmony, GLM-4.5/4.6/4.7 and DeepSeek V3.1/R1";

constexpr std::array<std::string_view, 4> k_roles = {"system", "user", "assistant", "tool"};

// The BOS and EOS texts of the families whose templates print them, for files without a
// vocabulary to read them from.
constexpr std::string_view k_mistral_bos = "<s>";
constexpr std::string_view k_mistral_eos = "</s>";
constexpr std::string_view k_deepseek_bos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view k_deepseek_eos = "<｜end▁of▁sentence｜>";

constexpr std::array<std::string_view, 2> k_think_markers = {"<think>", "</think>"};
constexpr std::array<std::string_view, 5> k_harmony_markers = {"<|channel|>", "<|message|>", "<|start|>", "<|end|>",
                                                               "<|constrain|>"};

// The first k_hint_bytes of `text`, cut on a UTF-8 character boundary.
std::string_view family_hint(std::string_view text) noexcept {
    if (text.size() <= k_hint_bytes) return text;
    std::size_t n = k_hint_bytes;
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
    return text.substr(0, n);
}

bool contains(std::string_view text, std::string_view part) noexcept { return text.find(part) != std::string_view::npos; }

result<void> check_messages(const std::vector<chat_message>& messages) {
    if (messages.empty()) return make_error(errc::invalid_argument, "messages is empty");
    for (std::size_t i = 0; i < messages.size(); ++i) {
        const std::string& role = messages[i].role;
        if (std::find(k_roles.begin(), k_roles.end(), role) == k_roles.end()) {
            return make_error(errc::invalid_argument,
                              "messages[{}] has role {:?}; the roles are system, user, assistant and tool", i, role);
        }
    }
    return {};
}

// A ChatML template's own system message for conversations without one, as Qwen2 and
// Qwen2.5 write it: a Jinja string literal '<|im_start|>system\nTEXT<|im_end|>\n' with the
// text inline (the Qwen3 form '<|im_start|>system\n' + messages[0].content has none).
std::string chatml_default_system(std::string_view source) {
    for (const char quote : {'\'', '"'}) {
        const std::string open = std::string(1, quote) + "<|im_start|>system\\n";
        for (std::size_t at = source.find(open); at != std::string_view::npos; at = source.find(open, at + 1)) {
            const std::size_t begin = at + open.size();
            const std::size_t end = source.find("<|im_end|>", begin);
            const std::size_t closing = source.find(quote, begin);
            if (end == std::string_view::npos || closing < end || end == begin) continue;
            // Undo the Jinja string escapes such a literal may hold.
            std::string text;
            const std::string_view raw = source.substr(begin, end - begin);
            for (std::size_t i = 0; i < raw.size(); ++i) {
                if (raw[i] == '\\' && i + 1 < raw.size()) {
                    const char e = raw[++i];
                    text += e == 'n' ? '\n' : e == 't' ? '\t' : e;
                } else {
                    text += raw[i];
                }
            }
            return text;
        }
    }
    return {};
}

// The family of a template, or why moed cannot render it.
struct detection {
    std::optional<chat_family> family;
    std::string_view why;  // when no family: what moed saw
};

detection detect_family(std::string_view s) {
    constexpr std::string_view other = "of a family moed does not support";
    if (contains(s, "<|im_start|>")) {
        if (!contains(s, "<|im_end|>")) return {std::nullopt, other};
        // llama.cpp's table: these look like ChatML but are not.
        if (contains(s, "<|im_sep|>") || contains(s, "<end_of_utterance>")) return {std::nullopt, other};
        if (contains(s, "<think>") || contains(s, "</think>")) {
            if (contains(s, "last_query_index") && contains(s, "reasoning_content") && contains(s, "enable_thinking"))
                return {chat_family::qwen3, {}};
            return {std::nullopt, "a ChatML template with <think> handling other than Qwen3's"};
        }
        return {chat_family::chatml, {}};
    }
    if (s.starts_with("mistral") || contains(s, "[INST]")) {
        if (contains(s, "default_system_message"))
            return {std::nullopt, "a Mistral [INST] template with a default system message of its own"};
        if (contains(s, "[SYSTEM_PROMPT]")) {
            if (contains(s, "'[SYSTEM_PROMPT] '") && contains(s, "'[INST] '") && !contains(s, "[AVAILABLE_TOOLS]"))
                return {chat_family::mistral_v7, {}};
            return {std::nullopt, "a Mistral [SYSTEM_PROMPT] template other than v7's"};
        }
        if (contains(s, "' [INST] ' + system_message")) return {chat_family::mistral_v1, {}};
        if (contains(s, "[AVAILABLE_TOOLS]"))
            return {contains(s, "\"[INST]\"") ? chat_family::mistral_v3_tekken : chat_family::mistral_v3, {}};
        if (contains(s, "'[INST] ' + message['content'] + ' [/INST]'") &&
            contains(s, "{{ message['content'] + eos_token") && !contains(s, "<<SYS>>"))
            return {chat_family::mistral_v0, {}};
        return {std::nullopt, "an [INST] template of the Llama 2 kind, not one of Mistral's"};
    }
    if (contains(s, "[gMASK]<sop>")) {
        if (contains(s, "clear_thinking")) return {chat_family::glm_4_7, {}};
        if (contains(s, "/nothink") && contains(s, "<think></think>")) return {chat_family::glm_4_5, {}};
        return {std::nullopt, "a GLM template other than GLM-4.5/4.6/4.7's"};
    }
    if (contains(s, "<｜Assistant｜>") && contains(s, "<｜User｜>")) {
        if (contains(s, "flush_tool_outputs")) return {chat_family::deepseek_r1_fixed, {}};
        if (contains(s, "is_last_user") && contains(s, "<think></think>")) return {chat_family::deepseek_v3_1, {}};
        if (contains(s, "<｜Assistant｜><think>\\n")) return {chat_family::deepseek_r1, {}};
        return {std::nullopt, "a DeepSeek template other than V3.1's or R1's"};
    }
    if (contains(s, "<|start|>") && contains(s, "<|channel|>")) {
        if (contains(s, "<|message|>") && contains(s, "You are ChatGPT, a large language model trained by OpenAI.") &&
            contains(s, "Knowledge cutoff: 2024-06"))
            return {chat_family::gpt_oss, {}};
        return {std::nullopt, "a harmony template other than gpt-oss's"};
    }
    return {std::nullopt, other};
}

// A marker as its token when the vocabulary has it as a special token (one encode() splits
// out of text); otherwise it is text, tokenized with its neighbours.
token_id special_id(const tokenizer& vocab, std::string_view marker) noexcept {
    const token_id id = vocab.find_token(marker);
    return id >= 0 && vocab.is_special(id) ? id : -1;
}

std::vector<token_id> encode_pieces(const tokenizer& vocab, const chat_detail::prompt_builder& prompt) {
    std::vector<token_id> out;
    const std::string_view all = prompt.str();
    const auto pieces = prompt.pieces();
    std::size_t i = 0;
    // The caller prepends BOS to every prompt; the template's own would make two.
    if (!pieces.empty() && pieces[0].marker && vocab.add_bos() &&
        special_id(vocab, all.substr(pieces[0].begin, pieces[0].size)) == vocab.bos_id())
        i = 1;
    std::size_t run_begin = std::string_view::npos;  // start of the text not yet tokenized
    std::size_t run_end = 0;
    const auto flush = [&] {
        if (run_begin == std::string_view::npos) return;
        const std::vector<token_id> ids = vocab.encode(all.substr(run_begin, run_end - run_begin), false);
        out.insert(out.end(), ids.begin(), ids.end());
        run_begin = std::string_view::npos;
    };
    for (; i < pieces.size(); ++i) {
        const auto& p = pieces[i];
        if (p.size == 0) continue;
        if (p.marker) {
            if (const token_id id = special_id(vocab, all.substr(p.begin, p.size)); id >= 0) {
                flush();
                out.push_back(id);
                continue;
            }
        }
        if (run_begin == std::string_view::npos) run_begin = p.begin;
        run_end = p.begin + p.size;
    }
    flush();
    return out;
}

// Whether a think-tag prompt ends inside an opened <think> (whitespace aside).
bool ends_in_open_think(std::string_view prompt) noexcept {
    std::size_t n = prompt.size();
    while (n > 0 && (prompt[n - 1] == '\n' || prompt[n - 1] == ' ' || prompt[n - 1] == '\t' || prompt[n - 1] == '\r'))
        --n;
    return prompt.substr(0, n).ends_with(k_think_markers[0]);
}

}  // namespace

chat_template chat_template::chatml() { return chat_template(chat_family::chatml); }

result<chat_template> chat_template::detect(std::string_view source, std::string_view model, std::string_view bos_text,
                                            std::string_view eos_text) {
    if (source.empty()) return chatml();
    const detection d = detect_family(source);
    if (!d.family) {
        return make_error(errc::unsupported, "{}: the chat template ({} starting {:?}) is {}; moed supports {}", model,
                          k_template_key, family_hint(source), d.why, k_supported);
    }
    chat_template t(*d.family);
    switch (t.family_) {
        case chat_family::mistral_v0:
        case chat_family::mistral_v1:
        case chat_family::mistral_v3:
        case chat_family::mistral_v3_tekken:
        case chat_family::mistral_v7:
            t.bos_ = bos_text.empty() ? k_mistral_bos : bos_text;
            t.eos_ = eos_text.empty() ? k_mistral_eos : eos_text;
            break;
        case chat_family::deepseek_v3_1:
        case chat_family::deepseek_r1:
        case chat_family::deepseek_r1_fixed:
            t.bos_ = bos_text.empty() ? k_deepseek_bos : bos_text;
            t.eos_ = eos_text.empty() ? k_deepseek_eos : eos_text;
            t.closes_think_when_off_ = contains(source, "enable_thinking");
            break;
        case chat_family::chatml:
            t.default_system_ = chatml_default_system(source);
            t.qwen_tool_turns_ = contains(source, "<tool_response>");
            break;
        case chat_family::qwen3:
        case chat_family::gpt_oss:
        case chat_family::glm_4_5:
        case chat_family::glm_4_7: break;
    }
    return t;
}

result<chat_template> chat_template::from_gguf(const storage::gguf_file& file) {
    const storage::gguf_value* value = file.find(k_template_key);
    std::string_view text;
    if (value != nullptr) {
        auto s = value->as_string(k_template_key);
        if (!s) {
            return make_error(errc::bad_file, "{}: {}", file.path(), s.error().message);
        }
        text = *s;
    }
    if (text.empty()) {
        // llama.cpp falls back to ChatML too; said once, not per model load or request.
        static std::atomic<bool> logged{false};
        if (!logged.exchange(true)) {
            MOED_LOG_INFO(k_component, "{} has no {}; using ChatML", file.path(), k_template_key);
        }
        return chatml();
    }
    std::string model = file.path();
    if (const storage::gguf_value* name = file.find("general.name")) {
        if (auto s = name->as_string("general.name"); s && !s->empty()) model += fmt::format(" ({})", *s);
    }
    // The texts of the vocabulary's BOS and EOS, which templates print as bos_token/eos_token.
    const auto token_text = [&](std::string_view id_key) -> std::string_view {
        const storage::gguf_value* id = file.find(id_key);
        const storage::gguf_value* tokens = file.find("tokenizer.ggml.tokens");
        if (id == nullptr || tokens == nullptr) return {};
        auto n = id->as_uint(id_key);
        auto list = tokens->as_array("tokenizer.ggml.tokens");
        if (!n || !list || *n >= (*list)->values.size()) return {};
        auto t = (*list)->values[*n].as_string("tokenizer.ggml.tokens");
        return t ? *t : std::string_view();
    };
    return detect(text, model, token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id"));
}

const char* chat_template::name() const noexcept {
    switch (family_) {
        case chat_family::chatml: return "chatml";
        case chat_family::qwen3: return "qwen3";
        case chat_family::mistral_v0: return "mistral-v0";
        case chat_family::mistral_v1: return "mistral-v1";
        case chat_family::mistral_v3: return "mistral-v3";
        case chat_family::mistral_v3_tekken: return "mistral-v3-tekken";
        case chat_family::mistral_v7: return "mistral-v7";
        case chat_family::gpt_oss: return "gpt-oss";
        case chat_family::glm_4_5: return "glm-4.5";
        case chat_family::glm_4_7: return "glm-4.7";
        case chat_family::deepseek_v3_1: return "deepseek-v3.1";
        case chat_family::deepseek_r1: return "deepseek-r1";
        case chat_family::deepseek_r1_fixed: return "deepseek-r1-fixed";
    }
    return "unknown";
}

result<void> chat_template::render(const std::vector<chat_message>& messages, bool add_generation_prompt,
                                   const chat_options& options, chat_detail::prompt_builder& out) const {
    MOED_TRY(check_messages(messages));
    const chat_detail::render_input in{messages, add_generation_prompt, options, bos_, eos_, default_system_,
                                       qwen_tool_turns_, closes_think_when_off_};
    if (auto done = chat_detail::render(family_, in, out); !done)
        return make_error(done.error().code, "{} ({} template)", done.error().message, name());
    return {};
}

result<std::string> chat_template::apply(const std::vector<chat_message>& messages, bool add_generation_prompt,
                                         const chat_options& options) const {
    chat_detail::prompt_builder out;
    MOED_TRY(render(messages, add_generation_prompt, options, out));
    return std::move(out).take();
}

result<std::vector<token_id>> chat_template::encode(const tokenizer& vocab, const std::vector<chat_message>& messages,
                                                    bool add_generation_prompt, const chat_options& options) const {
    chat_detail::prompt_builder out;
    MOED_TRY(render(messages, add_generation_prompt, options, out));
    return encode_pieces(vocab, out);
}

result<chat_prompt> chat_template::prompt(const tokenizer& vocab, const std::vector<chat_message>& messages,
                                          const chat_options& options) const {
    chat_detail::prompt_builder out;
    MOED_TRY(render(messages, true, options, out));
    chat_prompt p;
    p.tokens = encode_pieces(vocab, out);
    switch (family_) {
        case chat_family::qwen3:
        case chat_family::glm_4_5:
        case chat_family::glm_4_7:
        case chat_family::deepseek_v3_1:
        case chat_family::deepseek_r1:
        case chat_family::deepseek_r1_fixed:
            p.reply = {reasoning_syntax::think_tags, ends_in_open_think(out.str())};
            break;
        case chat_family::gpt_oss: p.reply = {reasoning_syntax::harmony, false}; break;
        case chat_family::chatml:
        case chat_family::mistral_v0:
        case chat_family::mistral_v1:
        case chat_family::mistral_v3:
        case chat_family::mistral_v3_tekken:
        case chat_family::mistral_v7: p.reply = {reasoning_syntax::none, false}; break;
    }
    return p;
}

std::span<const std::string_view> chat_template::reply_markers() const noexcept {
    switch (family_) {
        case chat_family::qwen3:
        case chat_family::glm_4_5:
        case chat_family::glm_4_7:
        case chat_family::deepseek_v3_1:
        case chat_family::deepseek_r1:
        case chat_family::deepseek_r1_fixed: return k_think_markers;
        case chat_family::gpt_oss: return k_harmony_markers;
        case chat_family::chatml:
        case chat_family::mistral_v0:
        case chat_family::mistral_v1:
        case chat_family::mistral_v3:
        case chat_family::mistral_v3_tekken:
        case chat_family::mistral_v7: break;
    }
    return {};
}

std::vector<token_id> chat_template::reply_control_tokens(const tokenizer& vocab) const {
    std::vector<token_id> ids;
    for (const std::string_view marker : reply_markers()) {
        const token_id id = vocab.find_token(marker);
        // Text is written for every special token but control and unknown ones (those that
        // token_bytes() leaves out without `special`).
        if (id >= 0 && vocab.is_special(id) && vocab.token_bytes(id).empty() && !vocab.is_eog(id)) ids.push_back(id);
    }
    std::sort(ids.begin(), ids.end());
    return ids;
}

}  // namespace moed::engine
