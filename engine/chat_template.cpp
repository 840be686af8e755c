#include "engine/chat_template.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <string_view>

#include "common/log.h"
#include "storage/gguf.h"

namespace moed::engine {

namespace {

constexpr std::string_view k_component = "chat";
constexpr std::string_view k_template_key = "tokenizer.chat_template";
constexpr std::string_view k_im_start = "<|im_start|>";
constexpr std::string_view k_im_end = "<|im_end|>";
// How much of an unrecognised template an error quotes: enough to tell the family apart
// (most templates open with their first marker or a distinctive Jinja preamble).
constexpr std::size_t k_hint_bytes = 60;
constexpr std::string_view k_supported = "ChatML (<|im_start|>role ... <|im_end|>, as Qwen2/Qwen3 use)";

constexpr std::array<std::string_view, 4> k_roles = {"system", "user", "assistant", "tool"};

// The first k_hint_bytes of `text`, cut on a UTF-8 character boundary.
std::string_view family_hint(std::string_view text) noexcept {
    if (text.size() <= k_hint_bytes) return text;
    std::size_t n = k_hint_bytes;
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
    return text.substr(0, n);
}

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

// A marker as its token when the vocabulary has it, else as text.
void append_marker(const tokenizer& vocab, std::string_view marker, std::vector<token_id>& out) {
    if (const token_id id = vocab.find_token(marker); id >= 0) {
        out.push_back(id);
        return;
    }
    const std::vector<token_id> ids = vocab.encode(marker, false);
    out.insert(out.end(), ids.begin(), ids.end());
}

void append_text(const tokenizer& vocab, std::string_view text, std::vector<token_id>& out) {
    const std::vector<token_id> ids = vocab.encode(text, false);
    out.insert(out.end(), ids.begin(), ids.end());
}

}  // namespace

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
    if (text.find(k_im_start) != std::string_view::npos && text.find(k_im_end) != std::string_view::npos) {
        return chatml();
    }
    return make_error(errc::unsupported, "{}: the chat template ({} starting {:?}) is of a family moed does not support; "
                      "moed supports {}",
                      file.path(), k_template_key, family_hint(text), k_supported);
}

const char* chat_template::name() const noexcept {
    switch (family_) {
        case chat_family::chatml: return "chatml";
    }
    return "unknown";
}

result<std::string> chat_template::apply(const std::vector<chat_message>& messages,
                                         bool add_generation_prompt) const {
    MOED_TRY(check_messages(messages));
    std::size_t bytes = 0;
    for (const chat_message& m : messages) bytes += m.role.size() + m.content.size() + 32;
    std::string out;
    out.reserve(bytes + 32);
    for (const chat_message& m : messages) {
        out += k_im_start;
        out += m.role;
        out += '\n';
        out += m.content;
        out += k_im_end;
        out += '\n';
    }
    if (add_generation_prompt) {
        out += k_im_start;
        out += "assistant\n";
    }
    return out;
}

result<std::vector<token_id>> chat_template::encode(const tokenizer& vocab, const std::vector<chat_message>& messages,
                                                    bool add_generation_prompt) const {
    MOED_TRY(check_messages(messages));
    // The fragments are those vocab.encode(apply(...), true) splits the text into at the
    // markers ("role\ncontent" between <|im_start|> and <|im_end|>, "\n" after it), so the
    // ids are the same whenever the contents hold no special-token text.
    std::vector<token_id> out;
    std::string turn;
    for (const chat_message& m : messages) {
        append_marker(vocab, k_im_start, out);
        turn.assign(m.role);
        turn += '\n';
        turn += m.content;
        append_text(vocab, turn, out);
        append_marker(vocab, k_im_end, out);
        append_text(vocab, "\n", out);
    }
    if (add_generation_prompt) {
        append_marker(vocab, k_im_start, out);
        append_text(vocab, "assistant\n", out);
    }
    return out;
}

}  // namespace moed::engine
