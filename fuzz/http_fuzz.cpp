// Fuzzes the HTTP request path of moed: the input is the raw bytes a client writes on a
// connection (any number of pipelined requests, or garbage). They go over a real Unix socket
// (an abstract address, no file) to moed's own http_server (daemon/http_server.cpp: Beast's
// request parser with the server's limits, routing, methods) and on through the API's
// validation (daemon/api.cpp) of /v1/completions, /v1/chat/completions and /v1/profiles
// bodies, the chat template and the tokenizer, to an engine stand-in that checks every job
// it receives is one the batch loop accepts and then finishes it at once (tokens, stop,
// length or a failure, by the prompt's length). The client half-closes after its bytes and
// reads until the server closes. Every complete response must parse as HTTP, and every JSON
// body as JSON. One thread runs the server's io_context and the client in turn, so a run is
// deterministic.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "common/log.h"
#include "daemon/http_server.h"
#include "fuzz/fuzz_support.h"
#include "fuzz/vocabulary.h"

namespace {

using namespace moed;
namespace asio = boost::asio;
namespace http = boost::beast::http;
using stream_protocol = asio::local::stream_protocol;

constexpr std::int64_t fuzz_n_ctx = 256;

// Finishes every job as soon as it is submitted, in one of four ways picked by the prompt's
// length, after checking it as batch_loop::submit would (the server promises to hand the
// engine only jobs that pass).
class instant_engine final : public daemon::engine_port {
public:
    instant_engine(std::int32_t n_vocab, const daemon::api_limits& limits) : n_vocab_(n_vocab), limits_(limits) {}

    result<daemon::job_id> submit(daemon::job_params p, std::shared_ptr<daemon::job_sink> sink) override {
        MOED_FUZZ_CHECK(!p.prompt.empty(), "the server submitted an empty prompt");
        for (std::size_t i = 0; i < p.prompt.size(); ++i)
            MOED_FUZZ_CHECK(p.prompt[i] >= 0 && p.prompt[i] < n_vocab_, "prompt token {} has id {}", i, p.prompt[i]);
        MOED_FUZZ_CHECK(p.max_tokens >= 1 && p.max_tokens <= limits_.max_tokens, "max_tokens {}", p.max_tokens);
        MOED_FUZZ_CHECK(static_cast<std::int64_t>(p.prompt.size()) + p.max_tokens <= fuzz_n_ctx,
                        "{} prompt tokens plus max_tokens {} exceed the context", p.prompt.size(), p.max_tokens);
        MOED_FUZZ_CHECK(p.sampling.validate().has_value(), "sampling parameters the engine refuses");
        MOED_FUZZ_CHECK(p.stop.size() <= limits_.max_stop_strings, "{} stop strings", p.stop.size());
        for (const auto& s : p.stop)
            MOED_FUZZ_CHECK(!s.empty() && s.size() <= daemon::max_stop_string_bytes, "a stop string of {} bytes",
                            s.size());
        const daemon::job_id id = ++next_id_;
        const daemon::job_usage usage{static_cast<std::int64_t>(p.prompt.size()), 1};
        if (!p.prefill_only) sink->on_profile(daemon::profile_report{});
        switch (p.prompt.size() % 4) {
            case 0:
                if (!p.prefill_only) sink->on_token(1, "ok");
                sink->on_done("length", usage);
                break;
            case 1: sink->on_done("stop", usage); break;
            case 2: sink->on_failed(error{errc::invalid_argument, "no task profile matched the prompt"}, usage); break;
            default: sink->on_failed(error{errc::io, "expert read failed"}, usage); break;
        }
        return id;
    }
    void cancel(daemon::job_id) noexcept override {}
    void snapshot(server_status& s) const override {
        s.queue_capacity = 4;
        s.max_sequences = 2;
        s.requests_total = next_id_;
    }

private:
    std::int32_t n_vocab_;
    daemon::api_limits limits_;
    daemon::job_id next_id_ = 0;
};

struct fixture {
    asio::io_context io;
    std::string address;  // abstract: starts with a NUL byte
    std::unique_ptr<instant_engine> engine;
    std::unique_ptr<daemon::http_server> server;

    fixture() {
        const engine::tokenizer& vocab = fuzz::vocabulary();
        address = std::string(1, '\0') + fmt::format("moed-http-fuzz-{}", ::getpid());
        stream_protocol::acceptor acceptor(io, stream_protocol::endpoint(address));
        daemon::server_context ctx;
        ctx.vocab = &vocab;
        auto chat = engine::chat_template::from_gguf(fuzz::vocabulary_file());
        if (chat) ctx.chat = *chat;
        else ctx.chat_error = chat.error().message;
        ctx.model_id = "fuzz";
        ctx.n_ctx = fuzz_n_ctx;
        engine = std::make_unique<instant_engine>(vocab.n_vocab(), ctx.limits);
        ctx.engine = engine.get();
        ctx.fill_status = [this](server_status& s) {
            s.model.id = "fuzz";
            engine->snapshot(s);
        };
        daemon::http_options options;
        options.max_body_bytes = 64u << 10;
        server = std::make_unique<daemon::http_server>(io, std::move(acceptor), std::move(ctx), options);
        server->start();
    }

    int connect() {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) fuzz::fail("socket: {}", std::strerror(errno));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, address.data(), address.size());
        const auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
        while (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
            if (errno != EAGAIN && errno != EINTR) fuzz::fail("connect: {}", std::strerror(errno));
            io.poll();  // the backlog is full: let the server accept
        }
        return fd;
    }
};

// Every complete response parses; a JSON body is JSON. The last response may be cut short:
// a streaming response ends early when the server takes the half-close for a client gone.
void check_responses(std::string_view bytes) {
    while (!bytes.empty()) {
        http::response_parser<http::string_body> parser;
        parser.eager(true);
        boost::beast::error_code ec;
        const std::size_t used = parser.put(asio::buffer(bytes.data(), bytes.size()), ec);
        if (ec == http::error::need_more || (!ec && !parser.is_done())) {
            parser.put_eof(ec);
            if (ec == http::error::partial_message) return;
        }
        MOED_FUZZ_CHECK(!ec, "the server's response does not parse: {} (in {:?})", ec.message(), bytes);
        MOED_FUZZ_CHECK(parser.is_done(), "a response is not complete: {:?}", bytes);
        const auto& res = parser.get();
        const unsigned status = res.result_int();
        MOED_FUZZ_CHECK(status >= 100 && status <= 599, "status {}", status);
        if (res[http::field::content_type] == "application/json")
            MOED_FUZZ_CHECK(nlohmann::json::accept(res.body()), "a JSON response body does not parse: {:?}", res.body());
        bytes.remove_prefix(used);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    (void)moed::fuzz::vocabulary();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static fixture* f = new fixture();  // lives until exit: the server's coroutines may outlive a run's end
    const int fd = f->connect();
    std::size_t sent = 0;
    bool write_closed = false;
    bool eof = false;
    std::string received;
    std::array<char, 16384> buffer;
    // Until the server has closed the connection and dropped its session.
    while (!eof || f->server->open_connections() > 0) {
        bool progress = false;
        if (!write_closed) {
            if (sent < size) {
                const ssize_t n = ::send(fd, data + sent, size - sent, MSG_NOSIGNAL);
                if (n > 0) {
                    sent += static_cast<std::size_t>(n);
                    progress = true;
                } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    sent = size;  // the server closed its end: nothing more can be sent
                }
            }
            if (sent == size) {
                ::shutdown(fd, SHUT_WR);
                write_closed = true;
                progress = true;
            }
        }
        if (!eof) {
            const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
            if (n > 0) {
                received.append(buffer.data(), static_cast<std::size_t>(n));
                progress = true;
            } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                eof = true;
                progress = true;
            }
        }
        if (f->io.poll() > 0) progress = true;
        if (!progress) f->io.run_one_for(std::chrono::milliseconds(1));
    }
    ::close(fd);
    check_responses(received);
    return 0;
}
