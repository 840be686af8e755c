// An incremental parser for server-sent events (the WHATWG "event stream" format), fed
// bytes as they come off the socket: an event may arrive split across reads anywhere, even
// between the CR and LF of a line ending.
// Lines end in LF, CRLF or CR; a line starting with ':' is a comment; "data:" lines append
// to the event's data (joined with '\n'); "event:" names it; a blank line dispatches it
// (an event with no data is dropped, as the standard says). Other fields are ignored.
// Bounded: an event (or a single line) longer than max_event_bytes is an error.
// Threads: one parser per stream, used by one thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace moed::client_detail {

struct sse_event {
    std::string type;  // "event:" field; empty means "message"
    std::string data;
};

class sse_parser {
public:
    explicit sse_parser(std::size_t max_event_bytes) : max_event_bytes_(max_event_bytes) {}

    // Parses `bytes`, calling on_event(const sse_event&) for every event completed; on_event
    // returns false to stop parsing (the rest of `bytes` is dropped). Returns false when an
    // event grew past the limit (the parser is then unusable) or when on_event stopped.
    template <typename OnEvent>
    bool feed(std::string_view bytes, OnEvent&& on_event) {
        if (overflow_) return false;
        for (const char c : bytes) {
            if (skip_lf_) {
                skip_lf_ = false;
                if (c == '\n') continue;
            }
            if (c == '\r' || c == '\n') {
                skip_lf_ = (c == '\r');
                if (!end_line(on_event)) return false;
                continue;
            }
            line_.push_back(c);
            if (line_.size() + event_.data.size() > max_event_bytes_) {
                overflow_ = true;
                return false;
            }
        }
        return true;
    }

    bool overflowed() const noexcept { return overflow_; }
    // True when bytes of an unfinished event are buffered (a stream cut mid-event).
    bool pending() const noexcept { return !line_.empty() || has_data_; }

private:
    template <typename OnEvent>
    bool end_line(OnEvent& on_event) {
        if (line_.empty()) {  // blank line: dispatch
            bool go_on = true;
            if (has_data_) {
                event_.data.pop_back();  // the '\n' after the last data line
                go_on = on_event(static_cast<const sse_event&>(event_));
            }
            event_.type.clear();
            event_.data.clear();
            has_data_ = false;
            return go_on;
        }
        const std::string_view line(line_);
        if (line.front() != ':') {
            const std::size_t colon = line.find(':');
            const std::string_view field = line.substr(0, colon);
            std::string_view value;
            if (colon != std::string_view::npos) {
                value = line.substr(colon + 1);
                if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
            }
            if (field == "data") {
                event_.data.append(value);
                event_.data.push_back('\n');
                has_data_ = true;
                if (event_.data.size() > max_event_bytes_) {
                    overflow_ = true;
                    return false;
                }
            } else if (field == "event") {
                event_.type.assign(value);
            }
        }
        line_.clear();
        return true;
    }

    std::size_t max_event_bytes_;
    std::string line_;
    sse_event event_;
    bool has_data_ = false;
    bool skip_lf_ = false;
    bool overflow_ = false;
};

}  // namespace moed::client_detail
