// A small blocking HTTP/1.1 client over a Unix socket for the daemon's tests (Beast), plus
// server-sent-event parsing. Every socket gets a receive/send timeout so a daemon that hangs
// fails the test with an error instead of blocking it (the timeout is a safety net, never
// asserted on).
#pragma once

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

namespace moed::test {

namespace http = boost::beast::http;
using unix_socket = boost::asio::local::stream_protocol::socket;

// Seconds a test waits on one socket operation before calling the daemon hung.
inline constexpr int client_io_timeout_s = 120;

struct http_reply {
    unsigned status = 0;
    std::string body;
    std::string content_type;
    std::string connection;  // the Connection header ("close", "keep-alive" or "")
    std::string allow;
    std::string retry_after;  // the Retry-After header, "" when absent
    bool chunked = false;
    std::string error;  // a transport error, empty when the exchange worked

    nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
    std::string error_type() const {
        auto j = json();
        return j.is_object() && j.contains("error") ? j["error"].value("type", "") : "";
    }
    std::string error_message() const {
        auto j = json();
        return j.is_object() && j.contains("error") ? j["error"].value("message", "") : "";
    }
};

inline void set_timeouts(int fd) {
    timeval tv{client_io_timeout_s, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// One connection; requests on it use keep-alive.
class http_connection {
public:
    explicit http_connection(const std::string& socket_path) : socket_(io_) {
        boost::system::error_code ec;
        socket_.connect(boost::asio::local::stream_protocol::endpoint(socket_path), ec);
        if (ec) connect_error_ = ec.message();
        else set_timeouts(socket_.native_handle());
    }
    bool connected() const { return connect_error_.empty(); }
    const std::string& connect_error() const { return connect_error_; }
    unix_socket& socket() { return socket_; }

    http_reply request(http::verb method, const std::string& target, const std::string& body = "",
                       const std::vector<std::pair<std::string, std::string>>& headers = {}) {
        http_reply reply;
        if (!connected()) {
            reply.error = "connect: " + connect_error_;
            return reply;
        }
        http::request<http::string_body> req{method, target, 11};
        req.set(http::field::host, "localhost");
        req.keep_alive(true);
        for (const auto& [k, v] : headers) req.set(k, v);
        if (!body.empty() || method == http::verb::post) {
            req.set(http::field::content_type, "application/json");
            req.body() = body;
            req.prepare_payload();
        }
        boost::system::error_code ec;
        http::write(socket_, req, ec);
        // A server may refuse a body before reading it (413): read the answer regardless.
        return read_reply();
    }

    http_reply read_reply() {
        http_reply reply;
        boost::system::error_code ec;
        http::response_parser<http::string_body> parser;
        parser.body_limit(64u << 20);
        http::read(socket_, buffer_, parser, ec);
        if (ec) {
            reply.error = ec.message();
            if (!parser.is_header_done()) return reply;
        }
        const auto& res = parser.get();
        reply.status = res.result_int();
        reply.body = res.body();
        reply.content_type = std::string(res[http::field::content_type]);
        reply.connection = std::string(res[http::field::connection]);
        reply.allow = std::string(res[http::field::allow]);
        reply.retry_after = std::string(res[http::field::retry_after]);
        reply.chunked = res.chunked();
        return reply;
    }

    // Sends raw bytes (a hand-written request).
    bool send_raw(const std::string& bytes) {
        boost::system::error_code ec;
        boost::asio::write(socket_, boost::asio::buffer(bytes), ec);
        return !ec;
    }
    // Reads raw bytes until `needle` appears (or the connection ends); returns what came.
    std::string read_until(const std::string& needle) {
        std::string got;
        char chunk[4096];
        while (got.find(needle) == std::string::npos) {
            boost::system::error_code ec;
            const std::size_t n = socket_.read_some(boost::asio::buffer(chunk), ec);
            if (ec) break;
            got.append(chunk, n);
        }
        return got;
    }
    // Reads raw bytes until the server closes the connection (or a read fails).
    std::string read_all() {
        std::string got;
        char chunk[4096];
        for (;;) {
            boost::system::error_code ec;
            const std::size_t n = socket_.read_some(boost::asio::buffer(chunk), ec);
            got.append(chunk, n);
            if (ec) break;
        }
        return got;
    }
    // Half-closes: the server sees the end of the request stream, the client still reads.
    void shutdown_send() {
        boost::system::error_code ec;
        socket_.shutdown(unix_socket::shutdown_send, ec);
    }
    // True when the server closes the connection (reads, dropping any bytes still coming,
    // end in EOF).
    bool closed_by_peer() {
        char chunk[4096];
        boost::system::error_code ec;
        while (!ec) socket_.read_some(boost::asio::buffer(chunk), ec);
        return ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset;
    }
    void close() {
        boost::system::error_code ec;
        socket_.shutdown(unix_socket::shutdown_both, ec);
        socket_.close(ec);
    }

private:
    boost::asio::io_context io_;
    unix_socket socket_;
    boost::beast::flat_buffer buffer_;
    std::string connect_error_;
};

inline http_reply get(const std::string& socket_path, const std::string& target) {
    http_connection c(socket_path);
    return c.request(http::verb::get, target);
}

inline http_reply post(const std::string& socket_path, const std::string& target, const std::string& body) {
    http_connection c(socket_path);
    return c.request(http::verb::post, target, body);
}

// The data fields of a server-sent-event body, in order ("[DONE]" included). `framing_ok`
// is false when the body is not a sequence of "data: ...\n\n" events.
struct sse_events {
    std::vector<std::string> data;
    bool framing_ok = true;
};

inline sse_events parse_sse(const std::string& body) {
    sse_events out;
    std::size_t pos = 0;
    while (pos < body.size()) {
        const std::size_t end = body.find("\n\n", pos);
        if (end == std::string::npos) {
            out.framing_ok = false;
            break;
        }
        const std::string event = body.substr(pos, end - pos);
        if (event.rfind("data: ", 0) != 0 || event.find('\n') != std::string::npos) out.framing_ok = false;
        out.data.push_back(event.substr(event.rfind("data: ", 0) == 0 ? 6 : 0));
        pos = end + 2;
    }
    return out;
}

// The text a stream carried: choices[0].text (completions) or choices[0].delta.content
// (chat) of every chunk, concatenated, and delta.reasoning_content apart; finish_reason and
// usage from the chunk that carries it (with stream_options.include_usage: the last one, with
// "choices": []).
struct stream_result {
    std::string text;
    std::string reasoning;
    std::string finish_reason;
    nlohmann::json usage;
    std::size_t chunks = 0;       // JSON chunks before [DONE]
    std::size_t usage_chunks = 0; // chunks with "choices": [] (include_usage)
    bool done_last = false;       // "[DONE]" was the last event
    bool framing_ok = false;
    std::string error;            // an error event's message
};

inline stream_result read_stream(const std::string& body) {
    stream_result r;
    const auto events = parse_sse(body);
    r.framing_ok = events.framing_ok;
    r.done_last = !events.data.empty() && events.data.back() == "[DONE]";
    for (const auto& d : events.data) {
        if (d == "[DONE]") continue;
        auto j = nlohmann::json::parse(d, nullptr, false);
        if (j.is_discarded()) {
            r.framing_ok = false;
            continue;
        }
        ++r.chunks;
        if (j.contains("error")) {
            r.error = j["error"].value("message", "");
            continue;
        }
        if (j.contains("usage") && !j["usage"].is_null()) r.usage = j["usage"];
        if (j.contains("choices") && j["choices"].is_array() && j["choices"].empty()) {
            ++r.usage_chunks;
            continue;
        }
        const auto& c = j["choices"][0];
        if (c.contains("text")) r.text += c["text"].get<std::string>();
        if (c.contains("delta") && c["delta"].contains("content")) r.text += c["delta"]["content"].get<std::string>();
        if (c.contains("delta") && c["delta"].contains("reasoning_content"))
            r.reasoning += c["delta"]["reasoning_content"].get<std::string>();
        if (c.contains("finish_reason") && !c["finish_reason"].is_null()) r.finish_reason = c["finish_reason"];
    }
    return r;
}

}  // namespace moed::test
