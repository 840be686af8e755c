#include "engine/chat_reply.h"

#include <algorithm>

namespace moed::engine {

namespace {

constexpr std::string_view k_think_open = "<think>";
constexpr std::string_view k_think_close = "</think>";
constexpr std::string_view k_start = "<|start|>";
constexpr std::string_view k_channel = "<|channel|>";
constexpr std::string_view k_message = "<|message|>";
constexpr std::string_view k_end = "<|end|>";
constexpr std::string_view k_analysis = "analysis";
// A harmony header ("<|start|>assistant<|channel|>final<|constrain|>json") is short; text
// that runs longer without a <|message|> is not one, and is shown as content rather than
// held back for ever.
constexpr std::size_t k_header_bytes_max = 256;

// Trimming follows llama.cpp's (ASCII whitespace), which decides what its parser keeps.
bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::size_t first_non_space(std::string_view s) noexcept {
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (!is_space(s[i])) return i;
    }
    return std::string_view::npos;
}

// The length of `s` without its trailing whitespace.
std::size_t trimmed_end(std::string_view s) noexcept {
    std::size_t n = s.size();
    while (n > 0 && is_space(s[n - 1])) --n;
    return n;
}

// The length of the longest suffix of `s` that is a proper prefix of `marker`: text that
// may become the marker once more arrives.
std::size_t partial_marker(std::string_view s, std::string_view marker) noexcept {
    for (std::size_t n = std::min(s.size(), marker.size() - 1); n > 0; --n) {
        if (s.substr(s.size() - n) == marker.substr(0, n)) return n;
    }
    return 0;
}

// Whether `s` starts with `marker` or is a start of it.
bool opens_with(std::string_view s, std::string_view marker) noexcept {
    const std::size_t n = std::min(s.size(), marker.size());
    return s.substr(0, n) == marker.substr(0, n);
}

// The channel a harmony header names ("<|start|>assistant<|channel|>final to=x" -> final).
std::string_view header_channel(std::string_view header) noexcept {
    const std::size_t at = header.find(k_channel);
    if (at == std::string_view::npos) return {};
    std::string_view name = header.substr(at + k_channel.size());
    return name.substr(0, name.find_first_of(" <"));
}

}  // namespace

reply_parser::reply_parser(reply_format format) noexcept : format_(format), state_(state::content) {
    switch (format.syntax) {
        case reasoning_syntax::none: state_ = state::content; break;
        case reasoning_syntax::think_tags:
            state_ = format.starts_in_reasoning ? state::reasoning_lead : state::before_reply;
            break;
        case reasoning_syntax::harmony: state_ = state::header; break;
    }
}

void reply_parser::push(std::string_view text, reply_text& out) {
    if (state_ == state::content) {
        out.content += text;
        return;
    }
    held_ += text;
    if (format_.syntax == reasoning_syntax::harmony) push_harmony(out);
    else push_think(out);
}

void reply_parser::push_think(reply_text& out) {
    for (;;) {
        switch (state_) {
            case state::before_reply: {
                const std::size_t i = first_non_space(held_);
                if (i == std::string::npos) return;  // only whitespace so far
                const std::string_view rest = std::string_view(held_).substr(i);
                if (rest.starts_with(k_think_open)) {
                    held_.erase(0, i + k_think_open.size());
                    state_ = state::reasoning_lead;
                    continue;
                }
                if (opens_with(rest, k_think_open)) return;  // "<thi": may still become <think>
                held_.erase(0, i);
                state_ = state::content;
                continue;
            }
            case state::reasoning_lead:
            case state::content_lead: {
                const std::size_t i = first_non_space(held_);
                if (i == std::string::npos) {
                    held_.clear();
                    return;
                }
                held_.erase(0, i);
                state_ = state_ == state::reasoning_lead ? state::reasoning : state::content;
                continue;
            }
            case state::reasoning: {
                const std::string_view h = held_;
                if (const std::size_t at = h.find(k_think_close); at != std::string_view::npos) {
                    out.reasoning.append(h.substr(0, trimmed_end(h.substr(0, at))));
                    held_.erase(0, at + k_think_close.size());
                    state_ = state::content_lead;
                    continue;
                }
                // Settle all but a possible start of </think> and the whitespace before it,
                // which is dropped if </think> follows.
                const std::size_t ready = trimmed_end(h.substr(0, h.size() - partial_marker(h, k_think_close)));
                out.reasoning.append(h.substr(0, ready));
                held_.erase(0, ready);
                return;
            }
            case state::content:
                out.content += held_;
                held_.clear();
                return;
            case state::header:
            case state::message: return;  // harmony states; not reached with think tags
        }
    }
}

void reply_parser::push_harmony(reply_text& out) {
    for (;;) {
        switch (state_) {
            case state::header: {
                // A header opens with <|channel|> (the prompt wrote "<|start|>assistant") or
                // <|start|>, and ends with <|message|> within the bound; anything else is
                // text the model wrote outside the format. The bound is on the header's end,
                // so a reply read whole or in pieces splits the same way.
                const std::string_view h = held_;
                const bool header_like = opens_with(h, k_channel) || opens_with(h, k_start);
                const std::size_t at = h.find(k_message);
                if (header_like && at != std::string_view::npos && at + k_message.size() <= k_header_bytes_max) {
                    analysis_ = header_channel(h.substr(0, at)) == k_analysis;
                    held_.erase(0, at + k_message.size());
                    state_ = state::message;
                    continue;
                }
                if (header_like && at == std::string_view::npos && h.size() <= k_header_bytes_max) return;
                state_ = state::content;
                continue;
            }
            case state::message: {
                const std::string_view h = held_;
                std::string& to = analysis_ ? out.reasoning : out.content;
                if (const std::size_t at = h.find(k_end); at != std::string_view::npos) {
                    to.append(h.substr(0, at));
                    held_.erase(0, at + k_end.size());
                    state_ = state::header;
                    continue;
                }
                const std::size_t ready = h.size() - partial_marker(h, k_end);
                to.append(h.substr(0, ready));
                held_.erase(0, ready);
                return;
            }
            case state::content:
                out.content += held_;
                held_.clear();
                return;
            case state::before_reply:
            case state::reasoning_lead:
            case state::reasoning:
            case state::content_lead: return;  // think-tag states; not reached with harmony
        }
    }
}

void reply_parser::finish(reply_text& out) {
    switch (state_) {
        case state::before_reply:
            // Whitespace, perhaps with a start of "<think>" that never finished: that is text.
            if (const std::size_t i = first_non_space(held_); i != std::string::npos) out.content.append(held_, i);
            break;
        case state::reasoning: out.reasoning.append(held_, 0, trimmed_end(held_)); break;
        case state::message: (analysis_ ? out.reasoning : out.content) += held_; break;
        case state::content: out.content += held_; break;
        case state::reasoning_lead:
        case state::content_lead:
        case state::header: break;  // whitespace, or a harmony header without its message
    }
    held_.clear();
}

}  // namespace moed::engine
