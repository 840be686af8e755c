#include "bench/soak_request.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <string_view>

#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

namespace moed::bench::soak {

namespace http = boost::beast::http;
using json = nlohmann::json;

namespace {

// A streamed answer is small (max_tokens chunks of a few hundred bytes); anything near this
// is a runaway answer.
constexpr std::uint64_t max_body_bytes = 16u << 20;
constexpr std::size_t read_chunk_bytes = 16 * 1024;

enum class io_status : std::uint8_t { ok, eof, failed, timeout };

// Waits up to `timeout` for `events` on fd.
io_status wait_fd(int fd, short events, std::chrono::milliseconds timeout, std::string& error) {
    pollfd p{fd, events, 0};
    for (;;) {
        const int n = ::poll(&p, 1, static_cast<int>(timeout.count()));
        if (n > 0) return io_status::ok;
        if (n == 0) {
            error = fmt::format("nothing from moed for {} s", timeout.count() / 1000);
            return io_status::timeout;
        }
        if (errno == EINTR) continue;
        error = fmt::format("poll(): {}", std::strerror(errno));
        return io_status::failed;
    }
}

io_status send_all(int fd, std::string_view data, std::chrono::milliseconds timeout, std::string& error) {
    while (!data.empty()) {
        const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n > 0) {
            data.remove_prefix(static_cast<std::size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (auto s = wait_fd(fd, POLLOUT, timeout, error); s != io_status::ok) return s;
            continue;
        }
        error = fmt::format("send: {}", n < 0 ? std::strerror(errno) : "wrote nothing");
        return io_status::failed;
    }
    return io_status::ok;
}

// Appends what arrives next (at most read_chunk_bytes) to `out`.
io_status recv_some(int fd, std::string& out, std::chrono::milliseconds timeout, std::string& error) {
    char buf[read_chunk_bytes];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n > 0) {
            out.append(buf, static_cast<std::size_t>(n));
            return io_status::ok;
        }
        if (n == 0) return io_status::eof;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (auto s = wait_fd(fd, POLLIN, timeout, error); s != io_status::ok) return s;
            continue;
        }
        error = fmt::format("recv: {}", std::strerror(errno));
        return io_status::failed;
    }
}

// The checks every finished answer must pass: a finish reason of "stop" or "length", no
// more tokens than asked for, no stop string in the text, and the profile it named.
std::string check_finished(const request_plan& p, const std::string& text, const std::string& finish_reason,
                           std::int64_t completion_tokens, const std::string& profile_used) {
    if (finish_reason != "stop" && finish_reason != "length")
        return fmt::format("finish_reason '{}' (expected stop or length)", finish_reason);
    if (p.max_tokens && completion_tokens > *p.max_tokens)
        return fmt::format("{} completion tokens for max_tokens {}", completion_tokens, *p.max_tokens);
    for (const std::string& s : p.stop) {
        if (text.find(s) != std::string::npos) return fmt::format("the text contains stop string {}", json(s).dump());
    }
    if (!p.profile.empty() && profile_used != p.profile)
        return fmt::format("named profile '{}' but moed used '{}'", p.profile, profile_used);
    return {};
}

std::string choice_text(const json& choice) {
    if (auto t = choice.find("text"); t != choice.end() && t->is_string()) return t->get<std::string>();
    for (const char* key : {"message", "delta"}) {
        auto m = choice.find(key);
        if (m == choice.end() || !m->is_object()) continue;
        if (auto c = m->find("content"); c != m->end() && c->is_string()) return c->get<std::string>();
    }
    return {};
}

std::string moed_profile(const json& j) {
    auto m = j.find("moed");
    if (m == j.end() || !m->is_object()) return {};
    auto p = m->find("profile");
    return p != m->end() && p->is_string() ? p->get<std::string>() : std::string();
}

std::int64_t completion_tokens(const json& j) {
    auto u = j.find("usage");
    if (u == j.end() || !u->is_object()) return -1;
    auto c = u->find("completion_tokens");
    return c != u->end() && c->is_number_integer() ? c->get<std::int64_t>() : -1;
}

// The SSE events of a streamed body as they arrive; stops at [DONE], an error event, a
// malformed event, or our cut.
class stream_reader {
public:
    stream_reader(const request_plan& plan, request_result& r) : plan_(plan), r_(r) {}

    // Handles the body bytes from `offset` on; returns false once the stream is over for us.
    bool feed(const std::string& body) {
        for (;;) {
            const std::size_t end = body.find("\n\n", offset_);
            if (end == std::string::npos) return true;
            const std::string_view event(body.data() + offset_, end - offset_);
            offset_ = end + 2;
            if (!event_done(event)) return false;
        }
    }
    // After the body ended: the bytes after [DONE] must be nothing.
    void finish(const std::string& body) {
        if (r_.facts.saw_done && offset_ < body.size() && body.find_first_not_of("\r\n", offset_) != std::string::npos)
            malformed(fmt::format("bytes after [DONE]: {}", json(body.substr(offset_, 80)).dump()));
    }
    bool cut() const noexcept { return cut_; }

private:
    void malformed(std::string why) {
        r_.facts.malformed = true;
        if (r_.message.empty()) r_.message = std::move(why);
    }

    bool event_done(std::string_view event) {
        std::string data;
        bool has_data = false;
        std::size_t pos = 0;
        while (pos <= event.size()) {
            std::size_t eol = event.find('\n', pos);
            if (eol == std::string_view::npos) eol = event.size();
            const std::string_view line = event.substr(pos, eol - pos);
            pos = eol + 1;
            if (line.starts_with("data: ")) {
                if (has_data) data += '\n';
                data += line.substr(6);
                has_data = true;
            } else if (!line.empty() && !line.starts_with(":") && !line.starts_with("event:")) {
                malformed(fmt::format("a stream line that is not an SSE field: {}", json(std::string(line)).dump()));
                return false;
            }
        }
        if (!has_data) return true;
        if (r_.facts.saw_done) {
            malformed("an event after [DONE]");
            return false;
        }
        if (data == "[DONE]") {
            r_.facts.saw_done = true;
            if (r_.facts.stream_error_status == 0 && !r_.facts.malformed) {
                if (std::string why = check_finished(plan_, text_, finish_reason_, r_.tokens, profile_); !why.empty())
                    malformed(std::move(why));
            }
            return true;  // read on: the body must end now
        }
        const json j = json::parse(data, nullptr, /*allow_exceptions=*/false);
        if (!j.is_object()) {
            malformed(fmt::format("a stream event that is not a JSON object: {}", json(data.substr(0, 120)).dump()));
            return false;
        }
        if (auto e = j.find("error"); e != j.end()) {
            int code = 500;
            if (e->is_object()) {
                if (auto c = e->find("code"); c != e->end() && c->is_number_integer()) code = c->get<int>();
            }
            r_.facts.stream_error_status = code;
            r_.message = "error event in the stream: " + data.substr(0, 300);
            return true;  // [DONE] follows
        }
        if (profile_.empty()) profile_ = moed_profile(j);
        if (const std::int64_t t = completion_tokens(j); t >= 0) usage_tokens_ = t;
        auto choices = j.find("choices");
        if (choices == j.end() || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) {
            malformed("a stream event without choices");
            return false;
        }
        const json& c = (*choices)[0];
        if (auto f = c.find("finish_reason"); f != c.end() && f->is_string()) {
            finish_reason_ = f->get<std::string>();
            r_.tokens = usage_tokens_ >= 0 ? usage_tokens_ : chunks_;
        }
        const std::string piece = choice_text(c);
        if (piece.empty()) return true;
        text_ += piece;
        ++chunks_;
        r_.tokens = chunks_;
        if (plan_.cut_after_chunks > 0 && chunks_ >= plan_.cut_after_chunks) {
            cut_ = true;
            return false;
        }
        return true;
    }

    const request_plan& plan_;
    request_result& r_;
    std::size_t offset_ = 0;
    std::string text_;
    std::string finish_reason_;
    std::string profile_;
    std::int64_t chunks_ = 0;
    std::int64_t usage_tokens_ = -1;
    bool cut_ = false;
};

void check_whole_answer(const request_plan& p, const std::string& body, request_result& r) {
    const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    auto bad = [&](std::string why) {
        r.facts.malformed = true;
        r.message = std::move(why);
    };
    if (!j.is_object())
        return bad(fmt::format("an answer that is not a JSON object: {}", json(body.substr(0, 120)).dump()));
    auto choices = j.find("choices");
    if (choices == j.end() || !choices->is_array() || choices->size() != 1 || !(*choices)[0].is_object())
        return bad("an answer without exactly one choice");
    const json& c = (*choices)[0];
    const bool has_text = p.chat ? (c.contains("message") && c["message"].is_object() &&
                                    c["message"].contains("content") && c["message"]["content"].is_string())
                                 : (c.contains("text") && c["text"].is_string());
    if (!has_text) return bad(p.chat ? "a chat answer without message.content" : "a completion without text");
    std::string finish;
    if (auto f = c.find("finish_reason"); f != c.end() && f->is_string()) finish = f->get<std::string>();
    r.tokens = completion_tokens(j);
    if (r.tokens < 0) return bad("an answer without usage.completion_tokens");
    if (std::string why = check_finished(p, choice_text(c), finish, r.tokens, moed_profile(j)); !why.empty())
        return bad(std::move(why));
}

std::string error_message(int status, const std::string& body) {
    const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("error") && j["error"].is_object() && j["error"].contains("message") &&
        j["error"]["message"].is_string())
        return fmt::format("HTTP {}: {}", status, j["error"]["message"].get<std::string>());
    return fmt::format("HTTP {}: {}", status, body.substr(0, 200));
}

}  // namespace

json plan_body(const request_plan& p) {
    json j = json::object();
    if (p.chat) {
        json messages = json::array();
        if (!p.system.empty()) messages.push_back({{"role", "system"}, {"content", p.system}});
        messages.push_back({{"role", "user"}, {"content", p.prompt}});
        j["messages"] = std::move(messages);
    } else {
        j["prompt"] = p.prompt;
    }
    j["stream"] = p.stream;
    if (p.max_tokens) j["max_tokens"] = *p.max_tokens;
    if (!p.stop.empty()) j["stop"] = p.stop;
    if (!p.profile.empty()) j["profile"] = p.profile;
    if (p.prune) j["prune"] = {{"experts_per_layer", *p.prune}};
    j["temperature"] = p.temperature;
    if (p.seed) j["seed"] = *p.seed;
    return j;
}

unique_fd connect_unix(const std::string& path, std::string& error) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) {
        error = "socket path too long: " + path;
        return unique_fd();
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (fd.get() < 0) {
        error = fmt::format("socket(): {}", std::strerror(errno));
        return unique_fd();
    }
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        error = fmt::format("connect {}: {}", path, std::strerror(errno));
        return unique_fd();
    }
    return fd;
}

request_result run_request(const std::string& socket_path, const request_plan& plan,
                           std::chrono::milliseconds timeout) {
    request_result r;
    r.facts.stream = plan.stream;
    std::string error;
    unique_fd fd = connect_unix(socket_path, error);
    if (fd.get() < 0) {
        r.facts.io = transport::failed;
        r.message = error;
        return r;
    }
    const std::string body = plan_body(plan).dump();
    const std::string target = plan.chat ? "/v1/chat/completions" : "/v1/completions";
    const std::string head = fmt::format(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAccept: {}\r\n"
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        target, plan.stream ? "text/event-stream" : "application/json", body.size());
    if (auto s = send_all(fd.get(), head + body, timeout, error); s != io_status::ok) {
        r.facts.io = s == io_status::timeout ? transport::timeout : transport::failed;
        r.message = error;
        return r;
    }

    http::response_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(max_body_bytes);
    stream_reader sse(plan, r);
    std::string pending;
    bool header_seen = false;
    bool ok_stream = false;
    for (;;) {
        const io_status s = recv_some(fd.get(), pending, timeout, error);
        if (s == io_status::failed || s == io_status::timeout) {
            r.facts.io = s == io_status::timeout ? transport::timeout : transport::failed;
            r.message = error;
            break;
        }
        boost::beast::error_code ec;
        while (!pending.empty() && !parser.is_done()) {
            const std::size_t used = parser.put(boost::asio::buffer(pending), ec);
            pending.erase(0, used);
            if (ec == http::error::need_more) {
                ec = {};
                break;
            }
            if (ec || used == 0) break;
        }
        // An answer without a length ends at the close; any other ends early. (Beast takes
        // an end before the first byte for an empty complete message: not here.)
        if (!ec && s == io_status::eof && !parser.is_done()) {
            if (parser.is_header_done()) parser.put_eof(ec);
            else ec = http::error::partial_message;
        }
        if (ec) {
            if (ec == http::error::partial_message) {
                r.facts.io = transport::failed;
                r.message = "moed closed the connection before the whole answer";
            } else {
                r.facts.malformed = true;
                r.message = "malformed HTTP: " + ec.message();
            }
            break;
        }
        if (!header_seen && parser.is_header_done()) {
            header_seen = true;
            r.facts.http_status = static_cast<int>(parser.get().result_int());
            const auto type = parser.get()[http::field::content_type];
            ok_stream = plan.stream && r.facts.http_status == 200;
            const char* want_type = plan.stream ? "text/event-stream" : "application/json";
            if (r.facts.http_status == 200 && !type.starts_with(want_type)) {
                r.facts.malformed = true;
                r.message = fmt::format("Content-Type '{}' for a {} request", std::string(type),
                                        plan.stream ? "streaming" : "whole");
                break;
            }
        }
        if (ok_stream && !sse.feed(parser.get().body())) break;  // malformed, or our cut
        if (parser.is_done()) break;
        if (s == io_status::eof) {
            r.facts.io = transport::failed;
            r.message = "moed closed the connection before the whole answer";
            break;
        }
    }
    if (sse.cut() && !r.facts.saw_done) {
        r.facts.cut_by_us = true;
        return r;  // fd closes here, mid-stream: moed must notice and cancel
    }
    if (!parser.is_done()) {
        if (ok_stream && r.message.empty()) r.message = "the stream ended without [DONE]";
        return r;
    }
    const int status = r.facts.http_status;
    if (status != 200) {
        r.message = error_message(status, parser.get().body());
    } else if (plan.stream) {
        sse.finish(parser.get().body());
        if (!r.facts.saw_done && r.message.empty()) r.message = "the stream ended without [DONE]";
    } else {
        check_whole_answer(plan, parser.get().body(), r);
    }
    return r;
}

}  // namespace moed::bench::soak
