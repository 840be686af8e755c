// The HTTP/1.1 server on the daemon's sockets (Boost.Beast over Asio, C++20 coroutines,
// one io_context thread): the Unix socket, and the TCP socket when server.listen asks for
// one. Both serve the same API through the same code; on TCP, when API keys are configured,
// every request but GET /healthz needs "Authorization: Bearer <key>" (401 with
// WWW-Authenticate: Bearer and an OpenAI-style invalid_api_key error otherwise). /metrics
// stays behind the key (a Prometheus scrape can send one); /healthz is open so that load
// balancers and supervisors can probe without a secret. The Unix socket needs no key.
//
// A server made in the loading phase answers before the model is ready: GET /healthz 503
// {"status":"loading","progress":0..1}, /v1/status and /metrics as usual (the status says
// the model is "loading"), every other endpoint 503 with Retry-After (the time the load
// still needs, as its progress so far predicts, within [1, 60] s). set_ready() switches it
// to serving; nothing is queued before then, so nothing waits on an engine not yet there.
//
// One coroutine per connection reads requests (keep-alive, header and body limits, read
// and write timeouts) and answers them:
//   POST /v1/completions, POST /v1/chat/completions  (OpenAI-compatible; "stream": true as
//        server-sent events ending in "data: [DONE]")
//   GET /v1/models, GET /v1/status (common/status.h as JSON), GET /metrics (Prometheus),
//   GET /healthz (200 {"status":"ok"}; 503 "draining", or "broken" with an "error" while the
//        model file changed under a tier)
//   GET /v1/profiles (list), POST /v1/profiles (create: the prompts run as prefill-only jobs
//        through the engine, one at a time between other requests' steps; 201 with the
//        summary), GET /v1/profiles/NAME (with each layer's top experts), DELETE
//        /v1/profiles/NAME. Errors: 400 bad name or body, 404 unknown profile, 409 a
//        profile of that name exists (unless "replace": true) or is being created.
// Completions may name a task profile ("profile") and ask for pruning ("prune"); every
// response carries a top-level "moed" object saying which profile was used and how it was
// chosen (api.h, moed_object_json); a stream carries it on its first chunk.
// Errors are JSON {"error":{"type","message","code"}} with the matching status: 400 bad
// request body, 404 unknown path or model, 405 wrong method, 413 body over the limit, 429
// queue full, 501 a Transfer-Encoding other than "chunked" alone, 503 loading, shutting down
// or over a connection limit, 500 engine failure; 401 on TCP without a valid key (its own
// OpenAI-shaped body, see api_keys.h). Every 429 and 503 carries Retry-After.
//
// HTTP/1.0 clients get HTTP/1.0 answers: a stream's body is delimited by the connection's
// close (HTTP/1.0 has no chunked coding), other bodies carry Content-Length, and the
// connection closes unless the client asked for keep-alive. A client that half-closes after
// its request (shutdown(SHUT_WR)) still reads: it gets the whole answer, then the close.
//
// Connection limits: http_options::max_connections in all (both listeners together) and
// max_connections_per_uid for each peer: the uid on the Unix socket (SO_PEERCRED), the
// remote address on TCP, so one user's or host's idle or stalled connections cannot lock
// out another (connection_limits.h). A connection that has sent nothing, or part of a
// header, holds its slot for read_timeout like an idle keep-alive one, with no shorter
// header timeout: any timeout only shortens each hold, and a client dropped by it
// reconnects at once and holds the slot again; what bounds a user's share is the per-uid
// limit.
//
// Generation goes through the engine_port; tokens come back through a job_channel (posted
// to this io_context, never blocking the engine). While a job runs the connection watches
// its socket: a client that closes it (or fails a write) has its job cancelled, which frees
// the sequence's KV cache at the loop's next step.
// Every request ends with one access-log line: peer credentials, method, path, status,
// body bytes, duration. Status 499 in the log means the client went away first.
//
// Threads: every member function runs on the io_context thread (start() may also run
// before io_context::run()).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <utility>  // std::exchange: Boost 1.74's awaitable.hpp uses it without the include

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>

#include "common/status.h"
#include "daemon/api.h"
#include "daemon/api_keys.h"
#include "daemon/engine_port.h"
#include "daemon/listener.h"
#include "daemon/metrics.h"
#include "engine/chat_template.h"
#include "engine/tokenizer.h"
#include "scheduler/profile_store.h"

namespace moed::daemon {

// Request line plus headers; Beast's default (8 KiB) is tight for long cookies or tokens
// some clients send, 16 KiB is what common proxies allow.
inline constexpr std::uint32_t max_header_bytes = 16u << 10;
// After refusing a body (413) the server reads and drops up to this much of it, for at most
// linger_timeout, so the client sees the response instead of a reset mid-upload.
inline constexpr std::uint64_t linger_max_bytes = 4u << 20;
inline constexpr std::chrono::milliseconds linger_timeout{2000};
// A failed accept (EMFILE, ENFILE, ENOBUFS) is retried after this pause instead of spinning.
inline constexpr std::chrono::milliseconds accept_retry_delay{100};
// Retry-After of a 429 (the request queue is full) and of a 503 over a connection limit: a
// slot frees as soon as any request ends, so trying again a second later is reasonable.
inline constexpr std::chrono::seconds retry_after_busy{1};
// Retry-After of a 503 while the daemon drains to stop: a supervisor (systemd) restarts it
// within a few seconds, and asking sooner would only meet the closed socket.
inline constexpr std::chrono::seconds retry_after_draining{5};
// Retry-After of a 503 while the model loads: the time left as the progress so far predicts,
// within these bounds (and the upper one until the progress says anything).
inline constexpr std::chrono::seconds retry_after_loading_min{1};
inline constexpr std::chrono::seconds retry_after_loading_max{60};

struct http_options {
    std::uint64_t max_body_bytes = 1u << 20;
    std::uint32_t max_connections = 256;
    // Connections one peer uid may hold; 0: a quarter of max_connections, at least 1
    // (see connections_per_uid).
    std::uint32_t max_connections_per_uid = 0;
    std::chrono::milliseconds read_timeout{60000};
    std::chrono::milliseconds write_timeout{60000};
    std::size_t max_pending_bytes = 4u << 20;  // per streaming job, see job_channel
};

// The per-uid connection limit `options` asks for: max_connections_per_uid, or when that is
// 0 a quarter of max_connections (at least 1); never more than max_connections.
std::uint32_t connections_per_uid(const http_options& options) noexcept;

// What the handlers need to know about the served model and the engine.
struct server_context {
    engine_port* engine = nullptr;                  // outlives the server's use (see engine_stopped)
    const engine::tokenizer* vocab = nullptr;
    std::optional<engine::chat_template> chat;      // absent: chat_error says why
    std::string chat_error;
    std::string model_id;
    std::int64_t n_ctx = 0;                         // context per sequence
    api_limits limits;
    std::int64_t started_unix = 0;                  // "created" of /v1/models
    // Fills the whole status (model, tiers, engine snapshot) for /v1/status and /metrics.
    std::function<void(server_status&)> fill_status;
    // Why the model cannot serve every request now (its file changed under a tier), or
    // empty when it can: /healthz answers 503 "broken" with it. Null: always healthy.
    std::function<std::string()> model_problem;
    // The served model's task profiles; null: none can be stored (creating one answers 501).
    scheduler::profile_store* profiles = nullptr;
};

// One socket the server accepts on, and which access rule applies there.
struct server_listener {
    generic_acceptor acceptor;
    listener_kind kind = listener_kind::unix_socket;
};

// Whether the model is still loading (see the file comment) or the server serves.
enum class server_phase : std::uint8_t { loading, serving };

class http_server {
public:
    // Serves at once on one Unix socket listener.
    http_server(boost::asio::io_context& io, generic_acceptor acceptor, server_context context,
                const http_options& options);
    // Serves on every listener; TCP ones require one of `keys` when it is not empty. In the
    // loading phase `context` needs only fill_status (for /v1/status and /metrics).
    http_server(boost::asio::io_context& io, std::vector<server_listener> listeners, server_context context,
                const http_options& options, api_keys keys, server_phase phase);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // Starts accepting.
    void start();
    // Loading phase: the share of the load done, 0..1, for /healthz and Retry-After.
    void set_load_progress(double fraction);
    // Loading -> serving with the loaded model's context.
    void set_ready(server_context context);
    bool serving() const noexcept;
    // Stops accepting, closes connections waiting for a request; requests in progress
    // finish (their connections then close), new requests on open connections get 503.
    void begin_shutdown();
    // The engine has stopped (its jobs all finished): no more cancel() calls into it, and
    // connections still idle are closed.
    void engine_stopped();

    // New limits and timeouts (a configuration reload); connections use them from their
    // next request or write on.
    void set_options(const http_options& options);

    std::size_t open_connections() const noexcept;
    const http_counters& counters() const noexcept;

private:
    struct state;
    class session;
    static boost::asio::awaitable<void> accept_loop(std::shared_ptr<state> st, std::size_t index);
    std::shared_ptr<state> state_;
};

}  // namespace moed::daemon
