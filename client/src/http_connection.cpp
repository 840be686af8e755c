#include "client/src/http_connection.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>

#include <sys/un.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <fmt/format.h>

#include "moed/client.h"

namespace moed::client_detail {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using unix_stream = beast::basic_stream<net::local::stream_protocol>;

namespace {

// Bytes asked of the socket per streamed read; SSE events are far smaller.
constexpr std::size_t stream_read_bytes = 16 * 1024;

std::string seconds_text(std::chrono::milliseconds ms) {
    return fmt::format("{:g} s", static_cast<double>(ms.count()) / 1000.0);
}

client_error make(client_errc code, std::string message) {
    client_error e;
    e.code = code;
    e.message = std::move(message);
    return e;
}

}  // namespace

struct http_connection::impl {
    explicit impl(const client_options& o) : options(o), stream(ioc) {}

    // Starts an operation through `initiate` (which receives the completion handler), runs
    // the io_context until it completes and returns its error code. The handler only
    // stores the result, so nothing can throw out of it.
    template <typename Initiate>
    beast::error_code run(Initiate&& initiate) {
        beast::error_code result = net::error::would_block;
        bool done = false;
        initiate([&result, &done](beast::error_code ec, auto&&...) {
            result = ec;
            done = true;
        });
        ioc.restart();
        ioc.run();
        if (!done) return net::error::operation_aborted;
        return result;
    }

    // Maps an error while reading or writing to what a caller can act on.
    client_error io_error(beast::error_code ec, const char* doing) const {
        if (ec == beast::error::timeout) {
            return make(client_errc::timeout, fmt::format("moed sent nothing for {} while {} on {} (read timeout)",
                                                          seconds_text(options.read_timeout), doing,
                                                          options.socket_path));
        }
        if (ec == http::error::body_limit || ec == http::error::header_limit) {
            return make(client_errc::protocol,
                        fmt::format("moed's answer on {} is larger than the client accepts ({} bytes of body at most)",
                                    options.socket_path, options.max_response_bytes));
        }
        if (ec == net::error::eof || ec == http::error::end_of_stream || ec == http::error::partial_message ||
            ec == net::error::connection_reset || ec == net::error::broken_pipe) {
            return make(client_errc::connection,
                        fmt::format("moed closed the connection on {} while {} ({})", options.socket_path, doing,
                                    ec.message()));
        }
        if (ec.category() == http::make_error_code(http::error::end_of_stream).category()) {
            return make(client_errc::protocol,
                        fmt::format("malformed HTTP from moed on {} while {}: {}", options.socket_path, doing,
                                    ec.message()));
        }
        return make(client_errc::connection,
                    fmt::format("connection to moed on {} failed while {}: {}", options.socket_path, doing,
                                ec.message()));
    }

    client_options options;
    net::io_context ioc{1};
    unix_stream stream;
    beast::flat_buffer buffer;
    std::optional<http::response_parser<http::buffer_body>> stream_parser;
};

http_connection::http_connection(const client_options& options) : impl_(std::make_unique<impl>(options)) {}

http_connection::~http_connection() { close(); }

void http_connection::close() noexcept {
    beast::error_code ignored;
    impl_->stream.socket().shutdown(net::socket_base::shutdown_both, ignored);
    impl_->stream.socket().close(ignored);
}

std::optional<client_error> http_connection::send(std::string_view method, std::string_view target,
                                                  std::string_view body, std::string_view accept) {
    impl& s = *impl_;
    const std::string& path = s.options.socket_path;
    // sockaddr_un holds 108 bytes including the terminating NUL.
    if (path.empty() || path.size() >= sizeof(sockaddr_un::sun_path)) {
        return make(client_errc::unreachable,
                    fmt::format("cannot connect to moed: the socket path '{}' is {}", path,
                                path.empty() ? "empty" : "longer than 107 bytes"));
    }

    s.stream.expires_after(s.options.connect_timeout);
    const net::local::stream_protocol::endpoint endpoint(path);
    beast::error_code ec = s.run([&](auto handler) { s.stream.async_connect(endpoint, std::move(handler)); });
    if (ec == beast::error::timeout) {
        return make(client_errc::timeout, fmt::format("moed did not accept a connection on {} within {}", path,
                                                      seconds_text(s.options.connect_timeout)));
    }
    if (ec) {
        const int code = ec.value();
        if (ec.category() == boost::system::system_category() && (code == ENOENT || code == ECONNREFUSED)) {
            return make(client_errc::not_running,
                        fmt::format("moed is not running: cannot connect to {} ({})", path, ec.message()));
        }
        if (ec.category() == boost::system::system_category() && (code == EACCES || code == EPERM)) {
            return make(client_errc::unreachable,
                        fmt::format("cannot connect to moed at {} ({}): join the socket's group (moed by default) "
                                    "or use a socket you may open",
                                    path, ec.message()));
        }
        return make(client_errc::unreachable, fmt::format("cannot connect to moed at {} ({})", path, ec.message()));
    }

    http::request<http::string_body> request;
    request.method_string(beast::string_view(method.data(), method.size()));
    request.target(beast::string_view(target.data(), target.size()));
    request.version(11);
    request.set(http::field::host, "localhost");
    request.set(http::field::user_agent, std::string("libmoeclient/") + moe_version());
    request.set(http::field::accept, beast::string_view(accept.data(), accept.size()));
    request.set(http::field::connection, "close");
    if (!body.empty()) {
        request.set(http::field::content_type, "application/json");
        request.body().assign(body.data(), body.size());
    }
    request.prepare_payload();

    s.stream.expires_after(s.options.read_timeout);
    ec = s.run([&](auto handler) { http::async_write(s.stream, request, std::move(handler)); });
    if (ec) return s.io_error(ec, "sending the request");
    return std::nullopt;
}

client_result<http_reply> http_connection::read_reply() {
    impl& s = *impl_;
    http::response_parser<http::string_body> parser;
    parser.body_limit(s.options.max_response_bytes);
    // The head first, then the body: Boost 1.74's eager parsing (what async_read does) drops
    // the body_limit error for a Content-Length that arrives together with its body, so the
    // length is checked here, before any of the body is stored.
    s.stream.expires_after(s.options.read_timeout);
    beast::error_code ec =
        s.run([&](auto handler) { http::async_read_header(s.stream, s.buffer, parser, std::move(handler)); });
    if (!ec && parser.content_length() && *parser.content_length() > s.options.max_response_bytes) {
        ec = http::error::body_limit;
    }
    if (!ec && !parser.is_done()) {
        s.stream.expires_after(s.options.read_timeout);
        ec = s.run([&](auto handler) { http::async_read(s.stream, s.buffer, parser, std::move(handler)); });
    }
    if (ec) return s.io_error(ec, "reading the answer");
    http_reply reply;
    const auto& message = parser.get();
    reply.head.status = message.result_int();
    reply.head.reason = std::string(message.reason());
    reply.head.content_type = std::string(message[http::field::content_type]);
    reply.body = std::move(parser.release().body());
    return reply;
}

client_result<http_head> http_connection::read_head() {
    impl& s = *impl_;
    s.stream_parser.emplace();
    // A stream is as long as the generation. Not boost::none: Boost 1.74 compares the
    // Content-Length with an empty optional and reports body_limit for every length.
    s.stream_parser->body_limit(std::numeric_limits<std::uint64_t>::max());
    s.stream.expires_after(s.options.read_timeout);
    const beast::error_code ec =
        s.run([&](auto handler) { http::async_read_header(s.stream, s.buffer, *s.stream_parser, std::move(handler)); });
    if (ec) return s.io_error(ec, "reading the answer's header");
    const auto& message = s.stream_parser->get();
    http_head head;
    head.status = message.result_int();
    head.reason = std::string(message.reason());
    head.content_type = std::string(message[http::field::content_type]);
    return head;
}

client_result<bool> http_connection::read_body_some(std::string& out) {
    impl& s = *impl_;
    out.clear();
    auto& parser = *s.stream_parser;
    std::array<char, stream_read_bytes> chunk;
    // A read may parse only framing (a chunk header) and no body bytes: go on until bytes
    // arrive or the body ends.
    while (!parser.is_done()) {
        auto& body = parser.get().body();
        body.data = chunk.data();
        body.size = chunk.size();
        body.more = true;
        s.stream.expires_after(s.options.read_timeout);
        beast::error_code ec =
            s.run([&](auto handler) { http::async_read_some(s.stream, s.buffer, parser, std::move(handler)); });
        if (ec == http::error::need_buffer) ec = {};
        if (ec) return s.io_error(ec, "reading the stream");
        const std::size_t n = chunk.size() - parser.get().body().size;
        if (n > 0) {
            out.assign(chunk.data(), n);
            return true;
        }
    }
    return false;
}

client_result<std::string> http_connection::read_body_rest() {
    std::string all;
    std::string piece;
    for (;;) {
        auto more = read_body_some(piece);
        if (!more) return std::move(more).error();
        if (!*more) return all;
        if (all.size() + piece.size() > impl_->options.max_response_bytes) {
            return impl_->io_error(http::error::body_limit, "reading the answer");
        }
        all += piece;
    }
}

}  // namespace moed::client_detail
