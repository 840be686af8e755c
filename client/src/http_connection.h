// One HTTP/1.1 exchange with moed over a fresh Unix-socket connection (Boost.Beast), with a
// timeout on connecting and on every wait for bytes. Boost stays behind the pimpl so only
// http_connection.cpp compiles Beast.
// Threads: an http_connection is used by one thread at a time; it runs its own io_context
// on the calling thread for each operation, so completion handlers only store results and
// all parsing and user callbacks run in plain code, outside any Asio handler.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "moed/client.hpp"

namespace moed::client_detail {

struct http_head {
    unsigned status = 0;
    std::string reason;
    std::string content_type;
};

struct http_reply {
    http_head head;
    std::string body;
};

class http_connection {
public:
    explicit http_connection(const client_options& options);
    ~http_connection();
    http_connection(const http_connection&) = delete;
    http_connection& operator=(const http_connection&) = delete;

    // Connects to options.socket_path and writes one request ("Connection: close").
    // `body` empty: no body and no Content-Type.
    [[nodiscard]] std::optional<client_error> send(std::string_view method, std::string_view target,
                                                   std::string_view body, std::string_view accept);

    // Reads the whole response; the body is bounded by options.max_response_bytes.
    client_result<http_reply> read_reply();

    // Streaming: reads the status line and headers, then the body piece by piece.
    client_result<http_head> read_head();
    // Replaces `out` with the next body bytes as they arrive; false once the body has ended.
    client_result<bool> read_body_some(std::string& out);
    // The rest of the body after read_head (bounded by options.max_response_bytes).
    client_result<std::string> read_body_rest();

    // Closes the connection now (moed sees the peer go away and cancels the request).
    void close() noexcept;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace moed::client_detail
