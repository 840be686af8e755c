#include "daemon/http_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>
#include <random>
#include <set>
#include <unordered_set>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "common/log.h"
#include "daemon/connection_limits.h"
#include "daemon/job_channel.h"
#include "daemon/listener.h"
#include "engine/chat_reply.h"

namespace moed::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using stream_protocol = asio::generic::stream_protocol;
using socket_stream = beast::basic_stream<stream_protocol>;
using request = http::request<http::string_body>;
using boost::system::error_code;

namespace {

// The access log's status for a request whose client left before the answer was complete
// (nginx's convention; never sent on the wire).
constexpr unsigned status_client_gone = 499;
constexpr std::string_view json_type = "application/json";

void log_exception(std::exception_ptr e) noexcept {
    if (!e) return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        MOED_LOG_ERROR("http", "connection ended by an error: {}", x.what());
    } catch (...) {
        MOED_LOG_ERROR("http", "connection ended by an unknown error");
    }
}

std::uint64_t random_u64() {
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

// Beast 1.74 speaks boost::string_view.
std::string_view sv(beast::string_view s) noexcept { return {s.data(), s.size()}; }

// The path without a query string.
std::string_view route_of(std::string_view target) {
    if (auto q = target.find('?'); q != std::string_view::npos) target = target.substr(0, q);
    return target;
}

// Why a request's Transfer-Encoding is refused, or nullopt when there is none or it is
// "chunked" alone: the only coding this server decodes. Anything else (a compression coding,
// "chunked" not last, or "chunked" twice) leaves the body's length or meaning unknown, so
// reading it as plain bytes would serve something the client did not send. Several
// Transfer-Encoding fields count as one comma-separated list; empty list elements are
// ignored, as RFC 9110 asks.
std::optional<std::string> unsupported_transfer_coding(const request::header_type& header) {
    auto [begin, end] = header.equal_range(http::field::transfer_encoding);
    if (begin == end) return std::nullopt;
    std::string value;
    std::size_t codings = 0;
    bool chunked_alone = true;
    for (auto it = begin; it != end; ++it) {
        const std::string_view field = sv(it->value());
        if (!value.empty()) value += ", ";
        value += field;
        std::size_t pos = 0;
        while (pos <= field.size()) {
            std::size_t comma = field.find(',', pos);
            if (comma == std::string_view::npos) comma = field.size();
            std::string_view coding = field.substr(pos, comma - pos);
            while (!coding.empty() && (coding.front() == ' ' || coding.front() == '\t')) coding.remove_prefix(1);
            while (!coding.empty() && (coding.back() == ' ' || coding.back() == '\t')) coding.remove_suffix(1);
            if (!coding.empty()) {
                ++codings;
                if (!beast::iequals(beast::string_view(coding.data(), coding.size()), "chunked")) chunked_alone = false;
            }
            pos = comma + 1;
        }
    }
    if (codings == 1 && chunked_alone) return std::nullopt;
    return fmt::format("Transfer-Encoding '{}' is not supported", value);
}

constexpr std::string_view transfer_coding_hint =
    "; a request body must come with Content-Length or with 'Transfer-Encoding: chunked' alone";

// True when the peer has closed its end entirely (POLLHUP), not only its sending half: on a
// Unix socket a shutdown(SHUT_WR) shows as end-of-stream with POLLRDHUP alone, and a close
// or shutdown(SHUT_RDWR) as POLLHUP as well.
bool peer_hung_up(int fd) noexcept {
    pollfd p{fd, POLLIN | POLLRDHUP, 0};
    const int n = ::poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLHUP | POLLERR | POLLNVAL)) != 0;
}

}  // namespace

struct http_server::state {
    state(asio::io_context& io_, std::vector<server_listener> listeners_, server_context ctx_,
          const http_options& options_, api_keys keys_, server_phase phase)
        : io(io_), listeners(std::move(listeners_)), ctx(std::move(ctx_)), options(options_), keys(std::move(keys_)),
          ready(phase == server_phase::serving), load_started(std::chrono::steady_clock::now()),
          limits(options_.max_connections, connections_per_uid(options_)), id_prefix(random_u64()),
          seeds(random_u64()) {}

    asio::io_context& io;
    std::vector<server_listener> listeners;
    server_context ctx;
    http_options options;
    const api_keys keys;  // required on TCP listeners when not empty
    bool ready;           // false while the model loads (server_phase::loading)
    double load_progress = 0.0;
    std::chrono::steady_clock::time_point load_started;
    http_counters counters;
    connection_limits limits;  // of the sessions being served (not those being refused)
    std::unordered_set<session*> sessions;
    bool shutting_down = false;
    bool engine_alive = true;
    std::uint64_t next_request = 0;
    std::uint64_t id_prefix;  // random per run, so the ids of two runs do not collide
    std::mt19937_64 seeds;    // seeds of requests that give none
    std::set<std::string, std::less<>> creating;  // profiles being created now

    void close_acceptors() {
        for (auto& l : listeners) {
            error_code ec;
            l.acceptor.close(ec);
        }
    }

    // The load's remaining time as its progress so far predicts (elapsed * left / done),
    // within [retry_after_loading_min, retry_after_loading_max].
    std::chrono::seconds loading_retry_after() const {
        const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - load_started).count();
        if (load_progress <= 0.0) return retry_after_loading_max;
        const double left_s = elapsed_s * (1.0 - load_progress) / load_progress;
        const double bounded = std::clamp(std::ceil(left_s), static_cast<double>(retry_after_loading_min.count()),
                                          static_cast<double>(retry_after_loading_max.count()));
        return std::chrono::seconds(static_cast<std::int64_t>(bounded));
    }

    std::string next_id(api_kind kind) {
        return fmt::format("{}-{:016x}", kind == api_kind::chat ? "chatcmpl" : "cmpl", id_prefix + ++next_request);
    }

    // A generation request turned into a job: validated, templated, tokenized and fitted to
    // the context, with how its reply reads (chat: reasoning split from content). Errors
    // carry the code whose HTTP status they answer with.
    struct prepared_job {
        job_params params;
        engine::reply_format reply;
    };

    result<prepared_job> prepare(const generation_request& req, const std::string& peer, const std::string& id) {
        if (!req.model.empty() && req.model != ctx.model_id)
            return make_error(errc::not_found, "model '{}' is not served; available: {}", req.model, ctx.model_id);
        prepared_job prepared;
        job_params& p = prepared.params;
        if (req.kind == api_kind::chat) {
            if (!ctx.chat) return make_error(errc::unsupported, "{}", ctx.chat_error);
            // The template's markers become control tokens while message contents stay plain
            // text, so a message cannot forge a turn (a "<|im_end|>\n<|im_start|>system" in
            // the content is just text).
            auto chat = ctx.chat->prompt(*ctx.vocab, req.messages, req.chat);
            if (!chat) return make_error(errc::invalid_argument, "{}", chat.error().message);
            p.prompt = std::move(chat->tokens);
            if (req.split_reasoning) {
                prepared.reply = chat->reply;
                // The reply's markers must reach the parser as text, control tokens or not.
                p.kept_control_tokens = ctx.chat->reply_control_tokens(*ctx.vocab);
            }
        } else {
            // Control-token texts in a raw prompt (<|im_start|> of a template the client wrote
            // itself) become their ids, as llama-server does.
            p.prompt = ctx.vocab->encode(req.prompt, /*parse_special=*/true);
        }
        if (ctx.vocab->add_bos() && ctx.vocab->bos_id() >= 0) p.prompt.insert(p.prompt.begin(), ctx.vocab->bos_id());
        const char* what = req.kind == api_kind::chat ? "messages" : "prompt";
        const auto n_prompt = static_cast<std::int64_t>(p.prompt.size());
        if (n_prompt == 0) return make_error(errc::invalid_argument, "{}: must not be empty", what);
        if (n_prompt >= ctx.n_ctx)
            return make_error(errc::invalid_argument,
                              "{}: {} tokens leave no room in the context of {} tokens per sequence", what, n_prompt,
                              ctx.n_ctx);
        if (req.max_tokens) {
            if (n_prompt + *req.max_tokens > ctx.n_ctx)
                return make_error(errc::invalid_argument,
                                  "max_tokens: the prompt ({} tokens) plus max_tokens ({}) exceeds the context of {} "
                                  "tokens per sequence",
                                  n_prompt, *req.max_tokens, ctx.n_ctx);
            p.max_tokens = *req.max_tokens;
        } else {
            p.max_tokens = static_cast<std::int32_t>(
                std::min<std::int64_t>(ctx.limits.default_max_tokens, ctx.n_ctx - n_prompt));
        }
        p.sampling = req.sampling;
        if (!req.seed_given) p.sampling.seed = seeds();
        p.stop = req.stop;
        p.stop_at_eog = !req.ignore_eos;
        p.trace_tag = req.trace_tag;
        p.logprobs = req.logprobs;
        p.json = req.json;
        p.id = id;
        p.peer = peer;
        if (!req.profile.empty()) {
            p.profile = ctx.profiles ? ctx.profiles->find(req.profile) : nullptr;
            if (!p.profile)
                return make_error(errc::invalid_argument, "profile: no profile named '{}' (GET /v1/profiles lists them)",
                                  req.profile);
        } else if (ctx.profiles) {
            auto matcher = ctx.profiles->matcher();
            if (!matcher->empty()) p.matcher = std::move(matcher);
        }
        p.prune_experts_per_layer = req.prune_experts_per_layer;
        if (p.prune_experts_per_layer != 0 && !p.profile && !p.matcher)
            return make_error(errc::invalid_argument,
                              "prune: needs a task profile: name one with \"profile\", or create profiles (POST "
                              "/v1/profiles) for the prompt to be matched to; none is stored");
        return prepared;
    }
};

class http_server::session : public std::enable_shared_from_this<session> {
public:
    session(std::shared_ptr<state> st, stream_protocol::socket socket, listener_kind kind)
        : st_(std::move(st)), stream_(std::move(socket)), kind_(kind),
          identity_(kind == listener_kind::unix_socket ? peer_of(stream_.socket().native_handle()) : std::nullopt),
          peer_(describe(stream_.socket().native_handle(), kind, identity_, key_)) {
        st_->sessions.insert(this);
        ++st_->counters.connections_open;
        // Tokens of a stream are small writes that must leave at once, not wait for the
        // previous one's acknowledgement (Nagle's algorithm with delayed ACKs).
        if (kind_ == listener_kind::tcp) {
            const int on = 1;
            if (::setsockopt(stream_.socket().native_handle(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on)) != 0)
                MOED_LOG_DEBUG("http", "{}: TCP_NODELAY: {}", peer_, std::strerror(errno));
        }
    }

    ~session() {
        if (admitted_) st_->limits.release(peer_key());
        st_->sessions.erase(this);
        --st_->counters.connections_open;
        // Ended with a job still running (an exception, or the io_context stopped): the
        // job must not outlive its client.
        if (channel_) {
            channel_->mark_gone();
            if (st_->engine_alive) st_->ctx.engine->cancel(job_);
        }
    }

    bool idle() const noexcept { return idle_; }

    // The peer the per-peer limit counts: the uid on the Unix socket, the remote address on TCP.
    connection_limits::peer_key peer_key() const noexcept {
        if (kind_ == listener_kind::tcp) return key_;
        return connection_limits::key_of(identity_ ? std::optional<uid_t>(identity_->uid) : std::nullopt);
    }
    // The connection counts against the limits (admitted by accept_loop) until it ends.
    void hold_slot() noexcept { admitted_ = true; }

    void close() noexcept {
        error_code ec;
        stream_.socket().shutdown(stream_protocol::socket::shutdown_both, ec);
        stream_.close();
    }

    asio::awaitable<void> run() {
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.header_limit(max_header_bytes);
            parser.body_limit(st_->options.max_body_bytes);
            idle_ = true;
            if (st_->shutting_down) break;
            error_code ec;
            stream_.expires_after(st_->options.read_timeout);
            co_await http::async_read_header(stream_, buffer_, parser, asio::redirect_error(asio::use_awaitable, ec));
            if (!ec) {
                if (auto refused = unsupported_transfer_coding(parser.get().base())) {
                    stream_.expires_never();
                    co_await refuse_request(parser, 501, *refused + std::string(transfer_coding_hint));
                    co_return;
                }
            }
            // A client that asks first (curl does for bodies over 1 MiB) gets its go-ahead
            // now instead of waiting a second for it; an oversize Content-Length has
            // already failed the header read (body_limit) and is answered 413 below. The
            // expectation is HTTP/1.1's: an HTTP/1.0 client would take the interim answer
            // for the response, so it is ignored there (RFC 9110, 10.1.1).
            if (!ec && !parser.is_done() && parser.get().version() >= 11 &&
                beast::iequals(parser.get()[http::field::expect], "100-continue")) {
                http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
                co_await http::async_write(stream_, go_on, asio::redirect_error(asio::use_awaitable, ec));
            }
            if (!ec && !parser.is_done())
                co_await http::async_read(stream_, buffer_, parser, asio::redirect_error(asio::use_awaitable, ec));
            stream_.expires_never();
            idle_ = false;
            start_ = std::chrono::steady_clock::now();
            log_status_ = 0;
            log_bytes_ = 0;
            if (ec) {
                if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
                    ec == asio::error::bad_descriptor || ec == asio::error::connection_reset ||
                    ec == beast::error::timeout)
                    break;  // the client closed, went quiet, or the server is closing idle connections
                unsigned status = 400;
                std::string message = fmt::format("malformed HTTP request: {}", ec.message());
                if (ec == http::error::body_limit) {
                    status = 413;
                    message = fmt::format("request body is larger than the {} bytes allowed (http.max_body_bytes)",
                                          st_->options.max_body_bytes);
                } else if (ec == http::error::header_limit) {
                    status = 431;
                    message = fmt::format("request headers are larger than the {} bytes allowed", max_header_bytes);
                } else if (ec == http::error::bad_transfer_encoding &&
                           parser.get().count(http::field::content_length) == 0) {
                    // The parser stops at a Transfer-Encoding field after one that ended in
                    // "chunked" (with a Content-Length before it, the request is malformed:
                    // two framings at once).
                    status = 501;
                    message = "Transfer-Encoding: a coding after 'chunked' is not supported" +
                              std::string(transfer_coding_hint);
                }
                co_await refuse_request(parser, status, std::move(message));
                co_return;
            }
            request req = parser.release();
            version_ = req.version();
            keep_alive_ = req.keep_alive() && !st_->shutting_down;
            co_await handle(req);
            access_log(sv(req.method_string()), sv(req.target()));
            if (!keep_alive_) break;
        }
        close();
    }

    // Over a connection limit: answer 503 without reading a request, then close.
    asio::awaitable<void> reject(connection_limits::verdict why) {
        keep_alive_ = false;
        start_ = std::chrono::steady_clock::now();
        std::string message;
        if (why == connection_limits::verdict::over_total)
            message = fmt::format("too many connections (http.max_connections is {}); retry later",
                                  st_->limits.max_total());
        else if (identity_)
            message = fmt::format("too many connections from uid {} (http.max_connections_per_uid is {}); retry later",
                                  identity_->uid, st_->limits.max_per_peer());
        else if (kind_ == listener_kind::tcp && key_ != connection_limits::unknown_peer)
            message = fmt::format("too many connections from this address (http.max_connections_per_uid is {}); "
                                  "retry later",
                                  st_->limits.max_per_peer());
        else
            message = fmt::format("too many connections from peers without credentials "
                                  "(http.max_connections_per_uid is {}); retry later",
                                  st_->limits.max_per_peer());
        co_await send_error(503, std::move(message), retry_after_busy);
        access_log("-", "-");
        co_await linger_close();
    }

private:
    // The peer for logs, and for TCP the key of its address (unknown_peer when the kernel
    // does not say).
    static std::string describe(int fd, listener_kind kind, const std::optional<peer_identity>& identity,
                                connection_limits::peer_key& key) {
        key = connection_limits::unknown_peer;
        if (kind == listener_kind::unix_socket) return describe_peer(identity);
        std::uint64_t address_key = 0;
        std::string text = tcp_peer(fd, address_key);
        if (text.empty()) return "tcp ?";
        key = address_key;
        return text;
    }

    // A TCP request without a valid key when keys are configured: the answer, or nullopt
    // when the request may go on. /healthz is open (supervisors and load balancers probe it).
    std::optional<std::string> refused_key(const request& req, std::string_view path) const {
        if (kind_ != listener_kind::tcp || st_->keys.empty() || path == "/healthz") return std::nullopt;
        const auto header = req.find(http::field::authorization);
        if (header == req.end())
            return std::string("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.");
        const auto token = bearer_token(sv(header->value()));
        if (!token) return std::string("The Authorization header must be 'Bearer YOUR_KEY'.");
        if (!st_->keys.accepts(*token)) return std::string("Incorrect API key provided.");
        return std::nullopt;
    }

    // A request refused before its body was read (the body may still be arriving): answer,
    // log, and close after draining a little of what follows.
    asio::awaitable<void> refuse_request(http::request_parser<http::string_body>& parser, unsigned status,
                                         std::string message) {
        keep_alive_ = false;
        version_ = parser.is_header_done() ? parser.get().version() : 11;
        start_ = std::chrono::steady_clock::now();
        idle_ = false;
        log_status_ = 0;
        log_bytes_ = 0;
        co_await send_error(status, std::move(message));
        if (parser.is_header_done())
            access_log(sv(parser.get().method_string()), sv(parser.get().target()));
        else
            access_log("-", "-");
        co_await linger_close();
    }

    asio::awaitable<void> handle(request& req) {
        std::string failure;
        try {
            co_await route(req);
        } catch (const std::exception& e) {
            failure = e.what();
        }
        if (!failure.empty()) {
            MOED_LOG_ERROR("http", "{} {}: {}", sv(req.method_string()), sv(req.target()), failure);
            keep_alive_ = false;
            // Only when nothing was sent yet can an error response still be written.
            if (log_status_ == 0) co_await send_error(500, fmt::format("internal error: {}", failure));
        }
    }

    asio::awaitable<void> route(request& req) {
        const std::string_view path = route_of(sv(req.target()));
        const auto method = req.method();
        allow_text_.clear();
        if (auto refused = refused_key(req, path)) {
            MOED_LOG_DEBUG("http", "{}: {} {}: refused: {}", peer_, sv(req.method_string()), path, *refused);
            co_await send(401, invalid_api_key_body(*refused), std::string(json_type));
            co_return;
        }
        if (path == "/v1/profiles" || path.starts_with("/v1/profiles/")) {
            if (!st_->ready) co_await send_loading();
            else co_await profiles_route(req, path);
            co_return;
        }
        if (path.starts_with("/v1/models/")) {
            co_await model_route(req, path);
            co_return;
        }
        struct endpoint {
            std::string_view path;
            http::verb verb;
        };
        static constexpr endpoint endpoints[] = {
            {"/v1/completions", http::verb::post}, {"/v1/chat/completions", http::verb::post},
            {"/v1/models", http::verb::get},       {"/v1/status", http::verb::get},
            {"/metrics", http::verb::get},         {"/healthz", http::verb::get},
        };
        const endpoint* found = nullptr;
        for (const auto& e : endpoints)
            if (e.path == path) found = &e;
        if (!found) {
            co_await send_error(404, fmt::format("no such endpoint: {}", path));
            co_return;
        }
        if (method != found->verb) {
            allow_ = found->verb;
            co_await send_error(405, fmt::format("{} does not accept {}; use {}", path,
                                                 sv(req.method_string()), sv(http::to_string(found->verb))));
            co_return;
        }
        if (!st_->ready) {
            if (path == "/healthz") {
                co_await send(503, loading_health_body(), std::string(json_type), st_->loading_retry_after());
            } else if (path == "/v1/status") {
                co_await send(200, status_body(), std::string(json_type));
            } else if (path == "/metrics") {
                co_await send(200, metrics_body(), std::string("text/plain; version=0.0.4; charset=utf-8"));
            } else {
                co_await send_loading();
            }
            co_return;
        }
        if (path == "/v1/completions") co_await generate(req, api_kind::completion);
        else if (path == "/v1/chat/completions") co_await generate(req, api_kind::chat);
        else if (path == "/v1/models") co_await send(200, models_body(st_->ctx.model_id, st_->ctx.started_unix), std::string(json_type));
        else if (path == "/v1/status") co_await send(200, status_body(), std::string(json_type));
        else if (path == "/metrics") co_await send(200, metrics_body(), std::string("text/plain; version=0.0.4; charset=utf-8"));
        else if (st_->shutting_down) co_await send(503, R"({"status":"draining"})", std::string(json_type));
        else co_await send_health();
    }

    // GET /v1/models/{id}: the served model's object, or a 404 as OpenAI's for any other id.
    asio::awaitable<void> model_route(request& req, std::string_view path) {
        if (req.method() != http::verb::get) {
            allow_ = http::verb::get;
            co_await send_error(405, fmt::format("{} does not accept {}; use GET", path, sv(req.method_string())));
            co_return;
        }
        if (!st_->ready) {
            co_await send_loading();
            co_return;
        }
        const std::string id(path.substr(std::string_view("/v1/models/").size()));
        if (id == st_->ctx.model_id) {
            co_await send(200, model_body(st_->ctx.model_id, st_->ctx.started_unix), std::string(json_type));
            co_return;
        }
        co_await send_error(404, fmt::format("model '{}' is not served; available: {}", id, st_->ctx.model_id), {},
                            "model_not_found", "model");
    }

    // A braced json temporary inside a coroutine's co_await trips g++ 12 ("array used as
    // initializer"), so the body is made here.
    std::string loading_health_body() const {
        const double progress = std::round(st_->load_progress * 1000.0) / 1000.0;
        return nlohmann::json{{"status", "loading"}, {"progress", progress}}.dump();
    }

    // An API request while the model loads: 503 with the time the load still needs.
    asio::awaitable<void> send_loading() {
        co_await send_error(503,
                            fmt::format("the model is loading ({:.0f}% done); retry later", st_->load_progress * 100.0),
                            st_->loading_retry_after(), "model_loading");
    }

    // /healthz while serving: ok, or broken with the reason (the model file changed under a tier).
    asio::awaitable<void> send_health() {
        const std::string problem = st_->ctx.model_problem ? st_->ctx.model_problem() : std::string();
        if (problem.empty()) {
            co_await send(200, R"({"status":"ok"})", std::string(json_type));
            co_return;
        }
        std::string body = nlohmann::json{{"status", "broken"}, {"error", problem}}.dump(
            -1, ' ', false, nlohmann::json::error_handler_t::replace);
        co_await send(503, std::move(body), std::string(json_type));
    }

    std::string status_body() {
        server_status s;
        st_->ctx.fill_status(s);
        return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }

    std::string metrics_body() {
        server_status s;
        st_->ctx.fill_status(s);
        return prometheus_text(s, st_->counters);
    }

    asio::awaitable<void> generate(request& req, api_kind kind) {
        if (st_->shutting_down) {
            co_await send_error(503, std::string("the server is shutting down"));
            co_return;
        }
        auto parsed = parse_generation_request(kind, req.body(), st_->ctx.limits);
        if (!parsed) {
            co_await send_error(http_status_for(parsed.error().code), parsed.error().message);
            co_return;
        }
        response_meta meta{kind, st_->next_id(kind), static_cast<std::int64_t>(std::time(nullptr)), st_->ctx.model_id};
        meta.logprobs = parsed->logprobs.has_value();
        meta.include_usage = parsed->include_usage;
        auto prepared = st_->prepare(*parsed, peer_, meta.id);
        if (!prepared) {
            // The only not_found here is a model the request names and moed does not serve.
            if (prepared.error().code == errc::not_found)
                co_await send_error(404, prepared.error().message, {}, "model_not_found", "model");
            else
                co_await send_error(http_status_for(prepared.error().code), prepared.error().message);
            co_return;
        }
        const engine::reply_format reply = prepared->reply;
        auto channel = std::make_shared<job_channel>(st_->io.get_executor(), st_->options.max_pending_bytes);
        auto submitted = st_->ctx.engine->submit(std::move(prepared->params), channel);
        if (!submitted) {
            const error& err = submitted.error();
            const unsigned status = http_status_for(err.code);
            if (err.code == errc::out_of_memory) {
                co_await send_error(429, fmt::format("the request queue is full (engine.queue_length is {}); retry "
                                                     "later",
                                                     queue_capacity()));
            } else if (err.code == errc::cancelled) {
                co_await send_error(503, std::string("the server is shutting down"));
            } else {
                co_await send_error(status, err.message);
            }
            co_return;
        }
        channel_ = channel;
        job_ = *submitted;
        watch(channel, job_);
        if (parsed->stream) co_await stream_job(*channel, meta, reply);
        else co_await plain_job(*channel, meta, reply);
        stop_watching();
        channel_.reset();
    }

    // /v1/profiles and /v1/profiles/NAME.
    asio::awaitable<void> profiles_route(request& req, std::string_view path) {
        scheduler::profile_store* store = st_->ctx.profiles;
        const auto method = req.method();
        if (path == "/v1/profiles") {
            if (method == http::verb::get) {
                // No conditional operator making a class temporary in a coroutine: g++ 12
                // destroys such a temporary twice (see accept_loop).
                std::string body;
                if (store) body = profiles_list_body(store->list(), store->problems());
                else body = profiles_list_body({}, {});
                co_await send(200, std::move(body), std::string(json_type));
            } else if (method == http::verb::post) {
                co_await create_profile(req);
            } else {
                allow_text_ = "GET, POST";
                co_await send_error(405, fmt::format("{} does not accept {}; use GET or POST", path,
                                                     sv(req.method_string())));
            }
            co_return;
        }
        const std::string name(path.substr(std::string_view("/v1/profiles/").size()));
        if (method != http::verb::get && method != http::verb::delete_) {
            allow_text_ = "GET, DELETE";
            co_await send_error(405, fmt::format("{} does not accept {}; use GET or DELETE", path,
                                                 sv(req.method_string())));
            co_return;
        }
        if (auto ok = scheduler::check_profile_name(name); !ok) {
            co_await send_error(400, ok.error().message);
            co_return;
        }
        if (method == http::verb::get) {
            std::shared_ptr<const scheduler::profile> p;
            if (store) p = store->find(name);
            if (!p) co_await send_error(404, fmt::format("no profile named '{}'", name));
            // Twice the experts each token uses: the set a hot set or a pruning would pick from.
            else co_await send(200, profile_detail_body(*p, 2 * p->shape.n_expert_used), std::string(json_type));
            co_return;
        }
        if (st_->creating.contains(name)) {
            co_await send_error(409, fmt::format("profile '{}' is being created; delete it once that finishes", name));
            co_return;
        }
        if (store == nullptr) {
            co_await send_error(404, fmt::format("no profile named '{}'", name));
            co_return;
        }
        if (auto removed = store->remove(name); !removed) {
            const unsigned status = removed.error().code == errc::not_found ? 404 : 500;
            co_await send_error(status, removed.error().message);
            co_return;
        }
        MOED_LOG_INFO("profiles", "{}: deleted profile '{}'", peer_, name);
        co_await send(200, profile_deleted_body(name), std::string(json_type));
    }

    // POST /v1/profiles: runs every prompt's prefill through the engine as a prefill-only
    // job, one at a time (other requests keep their share of every step), accumulates the
    // routing, then stores the profile.
    asio::awaitable<void> create_profile(request& req) {
        if (st_->shutting_down) {
            co_await send_error(503, std::string("the server is shutting down"));
            co_return;
        }
        auto parsed = parse_profile_create(req.body());
        if (!parsed) {
            co_await send_error(400, parsed.error().message);
            co_return;
        }
        scheduler::profile_store* store = st_->ctx.profiles;
        if (store == nullptr) {
            co_await send_error(501, std::string("task profiles are not available: this moed has no state directory"));
            co_return;
        }
        const std::string& name = parsed->name;
        if (st_->creating.contains(name)) {
            co_await send_error(409, fmt::format("profile '{}' is already being created", name));
            co_return;
        }
        if (!parsed->replace && store->find(name)) {
            co_await send_error(409, fmt::format("profile '{}' exists; send \"replace\": true to overwrite it", name));
            co_return;
        }
        // A full store is told before any engine work; add() checks again at the end.
        if (auto room = store->check_room(name); !room) {
            co_await send_error(http_status_for(room.error().code), room.error().message);
            co_return;
        }
        // Every prompt is tokenized and checked before any engine work.
        std::vector<std::vector<engine::token_id>> prompts;
        prompts.reserve(parsed->prompts.size());
        for (std::size_t i = 0; i < parsed->prompts.size(); ++i) {
            std::vector<engine::token_id> ids = st_->ctx.vocab->encode(parsed->prompts[i], /*parse_special=*/true);
            if (st_->ctx.vocab->add_bos() && st_->ctx.vocab->bos_id() >= 0) ids.insert(ids.begin(), st_->ctx.vocab->bos_id());
            if (static_cast<std::int64_t>(ids.size()) >= st_->ctx.n_ctx) {
                co_await send_error(400, fmt::format("prompts[{}]: {} tokens do not fit the context of {} tokens per "
                                                     "sequence",
                                                     i, ids.size(), st_->ctx.n_ctx));
                co_return;
            }
            prompts.push_back(std::move(ids));
        }

        st_->creating.insert(name);
        struct creating_guard {
            std::shared_ptr<state> st;
            std::string name;
            ~creating_guard() { st->creating.erase(name); }
        } guard{st_, name};
        auto stats = std::make_shared<scheduler::routing_accumulator>(store->shape());
        for (std::size_t i = 0; i < prompts.size(); ++i) {
            job_params p;
            p.prompt = std::move(prompts[i]);
            p.max_tokens = 1;
            p.prefill_only = true;
            p.routing_out = stats;
            p.id = fmt::format("profile-{}-{}", name, i);
            p.peer = peer_;
            auto channel = std::make_shared<job_channel>(st_->io.get_executor(), st_->options.max_pending_bytes);
            auto submitted = st_->ctx.engine->submit(std::move(p), channel);
            if (!submitted) {
                const error& err = submitted.error();
                if (err.code == errc::out_of_memory)
                    co_await send_error(429, fmt::format("prompts[{}]: the request queue is full; retry later", i));
                else if (err.code == errc::cancelled)
                    co_await send_error(503, std::string("the server is shutting down"));
                else
                    co_await send_error(http_status_for(err.code), fmt::format("prompts[{}]: {}", i, err.message));
                co_return;
            }
            channel_ = channel;
            job_ = *submitted;
            watch(channel, job_);
            job_channel::events ev;
            for (;;) {
                channel->take(ev);
                if (ev.done) break;
                co_await channel->wait();
            }
            stop_watching();
            channel_.reset();
            if (client_gone_) {
                log_status_ = status_client_gone;
                MOED_LOG_INFO("profiles", "{}: client went away; profile '{}' not created", peer_, name);
                co_return;
            }
            const job_channel::finish& f = *ev.done;
            if (f.failed) {
                co_await send_error(http_status_for(f.code) == 400 ? 400 : 500,
                                    fmt::format("prompts[{}]: the prefill failed: {}", i, f.reason));
                co_return;
            }
            if (f.reason == "cancelled") {
                co_await send_error(503, std::string("profile creation was cancelled: the server is shutting down"));
                co_return;
            }
        }
        const std::uint32_t n_prompts = static_cast<std::uint32_t>(parsed->prompts.size());
        std::string source = parsed->source;
        if (source.empty()) source = fmt::format("api: {} prompts", n_prompts);
        scheduler::profile made = scheduler::make_profile(name, store->model_identity(), st_->ctx.model_id,
                                                          std::move(source), n_prompts,
                                                          static_cast<std::int64_t>(std::time(nullptr)), *stats);
        auto added = store->add(std::move(made), parsed->replace);
        if (!added) {
            const unsigned status = added.error().code == errc::no_space ? 507 : 500;
            co_await send_error(status, added.error().message);
            co_return;
        }
        if (*added == scheduler::add_outcome::exists) {
            co_await send_error(409, fmt::format("profile '{}' exists; send \"replace\": true to overwrite it", name));
            co_return;
        }
        auto stored = store->find(name);
        MOED_LOG_INFO("profiles", "{}: {} profile '{}' from {} prompts ({} tokens)", peer_,
                      *added == scheduler::add_outcome::replaced ? "replaced" : "created", name, n_prompts,
                      stored ? stored->n_tokens : 0);
        if (!stored) co_await send_error(500, fmt::format("profile '{}' vanished after it was stored", name));
        else co_await send(201, profile_summary_body(*stored), std::string(json_type));
    }

    std::uint32_t queue_capacity() const {
        server_status s;
        st_->ctx.engine->snapshot(s);
        return s.queue_capacity;
    }

    asio::awaitable<void> plain_job(job_channel& channel, const response_meta& meta, engine::reply_format reply) {
        engine::reply_parser parser(reply);
        engine::reply_text text;
        job_channel::events ev;
        std::optional<profile_report> report;
        std::vector<logprob_entry> logprobs;
        for (;;) {
            channel.take(ev);
            if (ev.profile) report = std::move(ev.profile);
            add_logprobs(ev.logprobs, logprobs);
            for (const auto& piece : ev.pieces) parser.push(piece, text);
            if (ev.done) break;
            co_await channel.wait();
        }
        parser.finish(text);
        const job_channel::finish& f = *ev.done;
        if (client_gone_) {
            log_status_ = status_client_gone;
            co_return;
        }
        if (f.failed && f.code == errc::invalid_argument) {
            // The request could not be served as asked (prune without a matching profile).
            co_await send_error(400, f.reason);
        } else if (f.failed) {
            co_await send_error(500, fmt::format("generation failed: {}", f.reason));
        } else if (f.reason == "cancelled") {
            co_await send_error(503, fmt::format("the request was cancelled after {} tokens: the server is shutting down",
                                                 f.usage.completion_tokens));
        } else {
            co_await send(200,
                          completion_body(meta, text.content, f.reason,
                                          {f.usage.prompt_tokens, f.usage.completion_tokens},
                                          report ? &*report : nullptr, text.reasoning, &logprobs),
                          std::string(json_type));
        }
    }

    // The events as the body of a 200: in chunks (HTTP/1.1), or for an HTTP/1.0 client, which
    // knows no chunked coding, as plain bytes ended by closing the connection.
    asio::awaitable<void> stream_job(job_channel& channel, const response_meta& meta, engine::reply_format reply) {
        const bool close_delimited = version_ < 11;
        http::response<http::empty_body> res{http::status::ok, version_};
        res.set(http::field::server, "moed");
        res.set(http::field::content_type, "text/event-stream");
        res.set(http::field::cache_control, "no-cache");
        if (close_delimited) keep_alive_ = false;
        set_connection(res);
        if (!close_delimited) res.chunked(true);
        http::response_serializer<http::empty_body> serializer{res};
        error_code ec;
        stream_.expires_after(st_->options.write_timeout);
        co_await http::async_write_header(stream_, serializer, asio::redirect_error(asio::use_awaitable, ec));
        stream_.expires_never();
        log_status_ = 200;
        ++st_->counters.responses[200];
        if (ec) client_left(channel);

        job_channel::events ev;
        bool first = true;
        std::optional<profile_report> report;
        engine::reply_parser parser(reply);
        engine::reply_text delta;
        std::string payload;
        // Logprob entries not sent yet: they ride on the next chunk (the last one at the
        // latest); `logprob_offset`: the bytes of the tokens already reported (text_offset).
        std::vector<logprob_entry> logprobs;
        std::size_t logprob_offset = 0;
        const auto sent_logprobs = [&] {
            for (const logprob_entry& e : logprobs) logprob_offset += e.bytes.size();
            logprobs.clear();
        };
        // One chunk per part of the reply a piece settled; the first chunk carries the "moed"
        // object. A piece that settled nothing yet (a marker's start) makes no chunk.
        const auto add_delta = [&] {
            for (const reply_part part : {reply_part::reasoning, reply_part::content}) {
                const std::string& text = part == reply_part::reasoning ? delta.reasoning : delta.content;
                if (text.empty()) continue;
                payload += stream_event(meta, text, first, report ? &*report : nullptr, first, part, &logprobs,
                                        logprob_offset);
                sent_logprobs();
                first = false;
            }
        };
        for (;;) {
            channel.take(ev);
            if (ev.profile) report = std::move(ev.profile);
            add_logprobs(ev.logprobs, logprobs);
            payload.clear();
            for (const auto& piece : ev.pieces) {
                delta.clear();
                parser.push(piece, delta);
                add_delta();
            }
            if (ev.done) {
                delta.clear();
                parser.finish(delta);
                add_delta();
                const auto& f = *ev.done;
                if (f.failed && f.code == errc::invalid_argument)
                    payload += stream_error_events(400, f.reason);
                else if (f.failed)
                    payload += stream_error_events(500, fmt::format("generation failed: {}", f.reason));
                else
                    payload += stream_final_events(meta, f.reason, {f.usage.prompt_tokens, f.usage.completion_tokens},
                                                   report ? &*report : nullptr, first, &logprobs, logprob_offset);
            }
            if (!payload.empty() && !client_gone_) {
                stream_.expires_after(st_->options.write_timeout);
                if (close_delimited)
                    co_await asio::async_write(stream_, asio::buffer(payload),
                                               asio::redirect_error(asio::use_awaitable, ec));
                else
                    co_await asio::async_write(stream_, http::make_chunk(asio::buffer(payload)),
                                               asio::redirect_error(asio::use_awaitable, ec));
                stream_.expires_never();
                if (ec) client_left(channel);
                else count_bytes(payload.size());
            }
            if (ev.done) break;
            co_await channel.wait();
        }
        // A close-delimited body ends when run() closes the connection (keep_alive_ is false).
        if (!client_gone_ && !close_delimited) {
            stream_.expires_after(st_->options.write_timeout);
            co_await asio::async_write(stream_, http::make_chunk_last(), asio::redirect_error(asio::use_awaitable, ec));
            stream_.expires_never();
            if (ec) client_left(channel);
        }
        if (client_gone_) log_status_ = status_client_gone;
    }

    // The engine's log-probabilities as a response reports them: each token as its bytes.
    void add_logprobs(const std::vector<engine::token_logprob>& in, std::vector<logprob_entry>& out) const {
        const engine::tokenizer& vocab = *st_->ctx.vocab;
        for (const engine::token_logprob& lp : in) {
            logprob_entry e;
            e.bytes = vocab.token_bytes(lp.token);
            e.logprob = lp.logprob;
            for (const auto& [id, logprob] : lp.top) e.top.push_back({vocab.token_bytes(id), logprob});
            out.push_back(std::move(e));
        }
    }

    // The client closed its end or a write failed: cancel its job (the loop frees the
    // sequence), stop writing, and close the connection once the job's finish arrives.
    void client_left(job_channel& channel) {
        if (client_gone_) return;
        client_gone_ = true;
        keep_alive_ = false;
        channel.mark_gone();
        if (st_->engine_alive) st_->ctx.engine->cancel(job_);
        MOED_LOG_DEBUG("http", "{}: client went away; job cancelled", peer_);
    }

    // Watches the socket while a job runs: readable with nothing to read is the client's
    // close, unless it closed only its sending half (shutdown(SHUT_WR) after its request,
    // as some clients do) and still reads: then the watch waits for the full close (a
    // hang-up) instead. Bytes to read (a pipelined request) end the watch, as the client is
    // alive.
    void watch(std::shared_ptr<job_channel> channel, job_id id) {
        watching_ = true;
        stream_.socket().async_wait(
            stream_protocol::socket::wait_read,
            [self = shared_from_this(), channel = std::move(channel), id](const error_code& ec) mutable {
                if (ec || !self->watching_ || self->job_ != id || self->client_gone_) return;
                const int fd = self->stream_.socket().native_handle();
                char byte = 0;
                const ssize_t n = ::recv(fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
                if (n > 0) {
                    self->watching_ = false;
                    return;
                }
                if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                    self->watch(std::move(channel), id);
                    return;
                }
                if (n == 0 && !peer_hung_up(fd)) {
                    MOED_LOG_DEBUG("http", "{}: client half-closed after its request; answering", self->peer_);
                    self->watch_hang_up(std::move(channel), id);
                    return;
                }
                self->client_left(*channel);
            });
    }

    // After a half-close: Asio completes an error wait on a hang-up (EPOLLHUP), which a
    // full close of the client's end raises; the half-close's end-of-stream does not.
    void watch_hang_up(std::shared_ptr<job_channel> channel, job_id id) {
        stream_.socket().async_wait(
            stream_protocol::socket::wait_error,
            [self = shared_from_this(), channel = std::move(channel), id](const error_code& ec) mutable {
                if (ec || !self->watching_ || self->job_ != id || self->client_gone_) return;
                if (peer_hung_up(self->stream_.socket().native_handle())) self->client_left(*channel);
                else self->watch_hang_up(std::move(channel), id);
            });
    }

    void stop_watching() {
        if (!watching_) return;
        watching_ = false;
        // Cancels the wait; no other operation is pending on the socket at this point.
        error_code ec;
        stream_.socket().cancel(ec);
    }

    // Coroutine parameters are owned strings, not views: a view of a caller's temporary is
    // one compiler bug away from dangling across the suspension.
    // A 429 or 503 says when to try again: `retry_after` when given, else by its status (a
    // full queue is busy, a 503 otherwise means the daemon is draining).
    // `code` and `param` empty: error_body derives them from the status and message.
    asio::awaitable<void> send_error(unsigned status, std::string message, std::chrono::seconds retry_after = {},
                                     std::string code = {}, std::string param = {}) {
        co_await send(status, error_body(status, message, code, param), std::string(json_type), retry_after);
    }

    asio::awaitable<void> send(unsigned status, std::string body, std::string content_type,
                               std::chrono::seconds retry_after = {}) {
        http::response<http::string_body> res{static_cast<http::status>(status), version_};
        res.set(http::field::server, "moed");
        res.set(http::field::content_type, content_type);
        if (status == 405) {
            if (allow_text_.empty()) res.set(http::field::allow, http::to_string(allow_));
            else res.set(http::field::allow, allow_text_);
        }
        if (status == 401) res.set(http::field::www_authenticate, "Bearer");
        if (status == 429 || status == 503) {
            if (retry_after.count() <= 0) retry_after = status == 429 ? retry_after_busy : retry_after_draining;
            res.set(http::field::retry_after, fmt::format("{}", retry_after.count()));
        }
        set_connection(res);
        const std::size_t bytes = body.size();
        res.body() = std::move(body);
        res.prepare_payload();
        log_status_ = status;
        ++st_->counters.responses[status];
        error_code ec;
        stream_.expires_after(st_->options.write_timeout);
        co_await http::async_write(stream_, res, asio::redirect_error(asio::use_awaitable, ec));
        stream_.expires_never();
        if (ec) {
            keep_alive_ = false;
            log_status_ = status_client_gone;
        } else {
            count_bytes(bytes);
        }
    }

    // Connection: keep-alive or close. Beast writes nothing for an HTTP/1.0 close (it is that
    // version's default); it is said anyway so no client has to know the default.
    template <typename Response>
    void set_connection(Response& res) {
        res.keep_alive(keep_alive_);
        if (!keep_alive_ && version_ < 11) res.set(http::field::connection, "close");
    }

    void count_bytes(std::size_t n) {
        log_bytes_ += n;
        st_->counters.bytes_sent_total += n;
    }

    // After an error that leaves unread input (an oversize body), stop sending and drop what
    // the client still sends for a while, so it reads the answer rather than a reset.
    asio::awaitable<void> linger_close() {
        error_code ec;
        stream_.socket().shutdown(stream_protocol::socket::shutdown_send, ec);
        std::array<char, 16384> sink;
        std::uint64_t dropped = 0;
        stream_.expires_after(linger_timeout);
        while (!ec && dropped < linger_max_bytes) {
            const std::size_t n =
                co_await stream_.async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
            dropped += n;
        }
        stream_.expires_never();
        close();
    }

    void access_log(std::string_view method, std::string_view target) {
        const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
        MOED_LOG_INFO("access", "{} \"{} {}\" {} {}B {:.1f}ms", peer_, method, target, log_status_, log_bytes_, ms);
    }

    std::shared_ptr<state> st_;
    socket_stream stream_;
    beast::flat_buffer buffer_;
    const listener_kind kind_;
    const std::optional<peer_identity> identity_;  // Unix socket peers only
    connection_limits::peer_key key_ = connection_limits::unknown_peer;  // TCP: the address's key
    const std::string peer_;  // identity_ or the TCP address, for logs
    bool admitted_ = false;   // holds a slot of st_->limits
    bool idle_ = true;
    bool keep_alive_ = true;
    unsigned version_ = 11;
    http::verb allow_ = http::verb::get;
    std::string allow_text_;  // an Allow of several methods (overrides allow_ when set)
    // The running job, if any.
    std::shared_ptr<job_channel> channel_;
    job_id job_ = 0;
    bool watching_ = false;
    bool client_gone_ = false;
    // For the access log line of the current request.
    std::chrono::steady_clock::time_point start_{};
    unsigned log_status_ = 0;
    std::uint64_t log_bytes_ = 0;
};

namespace {

std::vector<server_listener> one_unix_listener(generic_acceptor acceptor) {
    std::vector<server_listener> out;
    out.push_back(server_listener{std::move(acceptor), listener_kind::unix_socket});
    return out;
}

}  // namespace

http_server::http_server(asio::io_context& io, generic_acceptor acceptor, server_context context,
                         const http_options& options)
    : http_server(io, one_unix_listener(std::move(acceptor)), std::move(context), options, api_keys(),
                  server_phase::serving) {}

http_server::http_server(asio::io_context& io, std::vector<server_listener> listeners, server_context context,
                         const http_options& options, api_keys keys, server_phase phase)
    : state_(std::make_shared<state>(io, std::move(listeners), std::move(context), options, std::move(keys), phase)) {}

http_server::~http_server() { state_->close_acceptors(); }

void http_server::start() {
    auto st = state_;
    for (std::size_t i = 0; i < st->listeners.size(); ++i) asio::co_spawn(st->io, accept_loop(st, i), log_exception);
}

void http_server::set_load_progress(double fraction) { state_->load_progress = std::clamp(fraction, 0.0, 1.0); }

void http_server::set_ready(server_context context) {
    state_->ctx = std::move(context);
    state_->load_progress = 1.0;
    state_->ready = true;
}

bool http_server::serving() const noexcept { return state_->ready; }

void http_server::begin_shutdown() {
    state_->shutting_down = true;
    state_->close_acceptors();
    // Closing completes their pending reads with operation_aborted; nothing runs inline,
    // so the set is not changed while this loop walks it.
    for (session* s : state_->sessions)
        if (s->idle()) s->close();
}

void http_server::engine_stopped() {
    state_->engine_alive = false;
    for (session* s : state_->sessions)
        if (s->idle()) s->close();
}

void http_server::set_options(const http_options& options) {
    state_->options = options;
    state_->limits.set_limits(options.max_connections, connections_per_uid(options));
}

std::uint32_t connections_per_uid(const http_options& options) noexcept {
    const std::uint32_t total = std::max<std::uint32_t>(options.max_connections, 1);
    if (options.max_connections_per_uid != 0) return std::min(options.max_connections_per_uid, total);
    return std::max<std::uint32_t>(total / 4, 1);
}

std::size_t http_server::open_connections() const noexcept { return state_->sessions.size(); }
const http_counters& http_server::counters() const noexcept { return state_->counters; }

asio::awaitable<void> http_server::accept_loop(std::shared_ptr<state> st, std::size_t index) {
    asio::steady_timer pause(st->io);
    generic_acceptor& acceptor = st->listeners[index].acceptor;
    const listener_kind kind = st->listeners[index].kind;
    for (;;) {
        error_code ec;
        stream_protocol::socket socket = co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (st->shutting_down || !acceptor.is_open() || ec == asio::error::operation_aborted) co_return;
        if (ec) {
            // Out of descriptors or buffers: a pause lets connections finish and free them.
            MOED_LOG_WARN("http", "accept failed: {}; retrying", ec.message());
            pause.expires_after(accept_retry_delay);
            co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            continue;
        }
        ++st->counters.connections_total;
        auto s = std::make_shared<session>(st, std::move(socket), kind);
        // Only served connections count: one being refused holds no slot while its 503 is
        // written and it lingers, so a flood of refused ones cannot lock others out.
        const connection_limits::verdict verdict = st->limits.admit(s->peer_key());
        const bool over = verdict != connection_limits::verdict::admitted;
        if (over) ++st->counters.connections_rejected;
        else s->hold_slot();
        // Two spawns rather than `co_await (over ? a : b)`: g++ 12 destroys the awaitable
        // temporary of a conditional operator twice inside a coroutine.
        if (over)
            asio::co_spawn(st->io, [s, verdict]() -> asio::awaitable<void> { co_await s->reject(verdict); },
                           log_exception);
        else
            asio::co_spawn(st->io, [s]() -> asio::awaitable<void> { co_await s->run(); }, log_exception);
    }
}

}  // namespace moed::daemon
