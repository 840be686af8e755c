// Integration tests of the real `moed` binary's TCP listener and of what it answers while the
// model loads. TCP: with a keys file, a request with either key gets 200, one without a key,
// with a wrong key or another scheme gets 401 with WWW-Authenticate: Bearer and an
// OpenAI-style invalid_api_key error; /healthz is open, /metrics needs the key; the Unix
// socket needs none; the per-peer connection limit counts a TCP host as one peer and leaves
// the Unix socket's users their own share. A keys file others can read, and bad server.listen values, stop the
// daemon with exit code 2 and a message naming the file or key. IPv6 loopback serves without
// keys. Loading: with a load slowed on purpose (model.inject_slow_load), /healthz answers 503
// {"status":"loading"} with a progress that rises, a chat request 503 with Retry-After,
// /metrics 200, on both listeners; then 200 for all once the model is loaded. Free ports
// come from the kernel (bind to port 0); waits poll with a generous safety limit and nothing
// asserts on wall time.
#include <sys/stat.h>

#include <boost/asio/ip/tcp.hpp>

#include "tests/daemon/moed_process.h"

namespace moed::test {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

struct tcp_reply {
    http_reply reply;
    std::string www_authenticate;
};

// One request on a new TCP connection to `host`:`port`.
tcp_reply tcp_request(const std::string& host, std::uint16_t port, http::verb method, const std::string& target,
                      const std::string& body = "", const std::string& authorization = "") {
    tcp_reply out;
    asio::io_context io;
    tcp::socket socket(io);
    boost::system::error_code ec;
    socket.connect(tcp::endpoint(asio::ip::make_address(host), port), ec);
    if (ec) {
        out.reply.error = "connect: " + ec.message();
        return out;
    }
    set_timeouts(socket.native_handle());
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, host);
    if (!authorization.empty()) req.set(http::field::authorization, authorization);
    if (method == http::verb::post) {
        req.set(http::field::content_type, "application/json");
        req.body() = body;
        req.prepare_payload();
    }
    http::write(socket, req, ec);
    boost::beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    http::read(socket, buffer, parser, ec);
    if (ec) out.reply.error = ec.message();
    if (!parser.is_header_done()) return out;
    const auto& res = parser.get();
    out.reply.status = res.result_int();
    out.reply.body = res.body();
    out.reply.content_type = std::string(res[http::field::content_type]);
    out.reply.retry_after = std::string(res[http::field::retry_after]);
    out.www_authenticate = std::string(res[http::field::www_authenticate]);
    return out;
}

// A port nothing listens on now (the kernel's pick; another process could take it before
// moed binds it, which would fail the test loudly rather than pass it wrongly).
std::uint16_t free_port(const std::string& host) {
    asio::io_context io;
    tcp::acceptor a(io, tcp::endpoint(asio::ip::make_address(host), 0));
    return a.local_endpoint().port();
}

bool ipv6_loopback_available() {
    asio::io_context io;
    boost::system::error_code ec;
    tcp::acceptor a(io);
    a.open(tcp::v6(), ec);
    if (!ec) a.bind(tcp::endpoint(asio::ip::make_address("::1"), 0), ec);
    return !ec;
}

std::string keys_file(const std::string& name, const std::string& text, mode_t mode) {
    const std::string path = (temp_dir() / name).string();
    std::ofstream(path, std::ios::trunc) << text;
    EXPECT_EQ(::chmod(path.c_str(), mode), 0);
    return path;
}

void expect_unauthorized(const tcp_reply& r, const std::string& message) {
    EXPECT_EQ(r.reply.status, 401u) << r.reply.body << r.reply.error;
    EXPECT_EQ(r.www_authenticate, "Bearer");
    EXPECT_EQ(r.reply.content_type, "application/json");
    const auto j = r.reply.json();
    ASSERT_TRUE(j.is_object() && j.contains("error")) << r.reply.body;
    EXPECT_EQ(j["error"]["type"], "invalid_request_error");
    EXPECT_EQ(j["error"]["code"], "invalid_api_key");
    EXPECT_EQ(j["error"]["message"], message);
}

TEST(MoedTcp, KeysGuardTcpAndTheSocketNeedsNone) {
    const std::string keys = keys_file("tcp-keys", "# two clients\nsk-alpha-0123456789\n\nsk-beta-9876543210\n", 0600);
    const std::uint16_t port = free_port("127.0.0.1");
    moed_process moed({"--server-listen", fmt::format("127.0.0.1:{}", port), "--server-api-keys-file", keys});
    ASSERT_TRUE(moed.ready());

    auto with_key = tcp_request("127.0.0.1", port, http::verb::post, "/v1/completions",
                                completion_body("int main(", 4, false), "Bearer sk-alpha-0123456789");
    ASSERT_EQ(with_key.reply.status, 200u) << with_key.reply.body << with_key.reply.error;
    EXPECT_EQ(with_key.reply.json()["object"], "text_completion");
    auto other_key = tcp_request("127.0.0.1", port, http::verb::get, "/v1/models", "", "Bearer sk-beta-9876543210");
    ASSERT_EQ(other_key.reply.status, 200u) << other_key.reply.body;
    EXPECT_EQ(other_key.reply.json()["data"][0]["id"], "tinymoe");
    auto streamed = tcp_request("127.0.0.1", port, http::verb::post, "/v1/chat/completions",
                                chat_body("Hi", 4, true), "bearer sk-beta-9876543210");
    ASSERT_EQ(streamed.reply.status, 200u) << streamed.reply.body;
    EXPECT_TRUE(read_stream(streamed.reply.body).done_last) << streamed.reply.body;

    expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::post, "/v1/completions",
                                    completion_body("int main(", 4, false)),
                        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.");
    expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::post, "/v1/completions",
                                    completion_body("int main(", 4, false), "Bearer sk-alpha-012345678"),
                        "Incorrect API key provided.");
    expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::get, "/v1/models", "", "Bearer sk-alpha-01234567890"),
                        "Incorrect API key provided.");
    expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::get, "/v1/models", "", "Basic c2stYWxwaGE="),
                        "The Authorization header must be 'Bearer YOUR_KEY'.");
    // Unknown paths are not revealed without a key either.
    expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::get, "/nope"),
                        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.");

    // /healthz is open; /metrics and /v1/status need the key.
    auto health = tcp_request("127.0.0.1", port, http::verb::get, "/healthz");
    EXPECT_EQ(health.reply.status, 200u) << health.reply.body;
    EXPECT_EQ(health.reply.json()["status"], "ok");
    expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::get, "/metrics"),
                        "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.");
    auto metrics = tcp_request("127.0.0.1", port, http::verb::get, "/metrics", "", "Bearer sk-alpha-0123456789");
    EXPECT_EQ(metrics.reply.status, 200u);
    EXPECT_NE(metrics.reply.body.find("moed_http_responses_total{code=\"401\"}"), std::string::npos)
        << metrics.reply.body;

    // The Unix socket serves the same API without a key.
    auto local = post(moed.socket(), "/v1/completions", completion_body("int main(", 4, false));
    EXPECT_EQ(local.status, 200u) << local.body;
    EXPECT_EQ(get(moed.socket(), "/metrics").status, 200u);

    const std::string log = moed.log();
    EXPECT_NE(log.find(fmt::format("serving 'tinymoe' on {} and tcp 127.0.0.1:{}", moed.socket(), port)),
              std::string::npos)
        << log;
    EXPECT_NE(log.find("requests need one of 2 API keys"), std::string::npos) << log;
    EXPECT_NE(log.find("tcp 127.0.0.1:"), std::string::npos) << "TCP peers in the access log";
    EXPECT_NE(log.find("\"POST /v1/completions\" 401"), std::string::npos) << log;
    EXPECT_EQ(log.find("sk-alpha-0123456789"), std::string::npos) << "a key never reaches the log";
    EXPECT_EQ(log.find("sk-alpha-012345678\""), std::string::npos) << "nor a presented one";

    moed.signal(SIGTERM);
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

TEST(MoedTcp, ConnectionLimitsCoverTcpPeersByAddress) {
    const std::uint16_t port = free_port("127.0.0.1");
    moed_process moed({"--server-listen", fmt::format("127.0.0.1:{}", port), "--http-max-connections-per-uid", "1"});
    ASSERT_TRUE(moed.ready());
    // One idle TCP connection holds this address's only slot (the kernel hands connections
    // to accept() in order, so it is admitted before the next one).
    asio::io_context io;
    tcp::socket holder(io);
    holder.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    auto refused = tcp_request("127.0.0.1", port, http::verb::get, "/v1/models");
    EXPECT_EQ(refused.reply.status, 503u) << refused.reply.body;
    EXPECT_EQ(refused.reply.json()["error"]["message"],
              "too many connections from this address (http.max_connections_per_uid is 1); retry later");
    EXPECT_EQ(refused.reply.retry_after, "1");
    // The Unix socket's user is another peer.
    EXPECT_EQ(get(moed.socket(), "/v1/models").status, 200u);
    holder.close();
    bool served = false;
    const auto deadline = std::chrono::steady_clock::now() + give_up_after;
    while (!served && std::chrono::steady_clock::now() < deadline) {
        served = tcp_request("127.0.0.1", port, http::verb::get, "/v1/models").reply.status == 200;
        if (!served) std::this_thread::sleep_for(poll_interval);
    }
    EXPECT_TRUE(served) << "the slot frees when the holder closes";
}

TEST(MoedTcp, Ipv6LoopbackWithoutKeys) {
    if (!ipv6_loopback_available()) GTEST_SKIP() << "no IPv6 loopback on this machine";
    const std::uint16_t port = free_port("::1");
    moed_process moed({"--server-listen", fmt::format("[::1]:{}", port)});
    ASSERT_TRUE(moed.ready());
    auto r = tcp_request("::1", port, http::verb::post, "/v1/completions", completion_body("int main(", 4, false));
    EXPECT_EQ(r.reply.status, 200u) << r.reply.body << r.reply.error;
    EXPECT_EQ(tcp_request("::1", port, http::verb::get, "/metrics").reply.status, 200u);
    EXPECT_NE(moed.log().find("no server.api_keys_file, requests need no key"), std::string::npos) << moed.log();
}

TEST(MoedTcp, ConfigErrorsExitTwoNamingFileOrKey) {
    const std::string readable = keys_file("tcp-keys-world", "sk-world-readable\n", 0644);
    {
        moed_process moed({"--server-listen", "127.0.0.1:8077", "--server-api-keys-file", readable}, false);
        EXPECT_EQ(moed.wait_exit(), 2) << moed.log();
        EXPECT_NE(moed.log().find("moed: server.api_keys_file: '" + readable +
                                  "' is readable by other users (mode 0644); keys must be private: chmod o-rwx"),
                  std::string::npos)
            << moed.log();
        EXPECT_EQ(moed.log().find("sk-world-readable"), std::string::npos);
    }
    for (const auto& [value, message] : std::vector<std::pair<std::string, std::string>>{
             {"127.0.0.1", "moed: --server-listen: '127.0.0.1': missing port"},
             {"127.0.0.1:70000", "moed: --server-listen: '127.0.0.1:70000': port 70000 is out of range [1, 65535]"},
             {"::1:8077", "moed: --server-listen: '::1:8077': an IPv6 address needs brackets: [::1]:8077"},
             {"0.0.0.0:8077", "moed: server.listen: '0.0.0.0:8077' is not a loopback address and "
                              "server.api_keys_file is not set"}}) {
        moed_process moed({"--server-listen", value}, false);
        EXPECT_EQ(moed.wait_exit(), 2) << value << "\n" << moed.log();
        EXPECT_NE(moed.log().find(message), std::string::npos) << moed.log();
    }
}

TEST(MoedTcp, NonLoopbackWithExplicitOptOutIsAWarning) {
    const std::uint16_t port = free_port("0.0.0.0");
    moed_process moed({"--server-listen", fmt::format("0.0.0.0:{}", port), "--server-allow-unauthenticated", "true"});
    ASSERT_TRUE(moed.ready());
    EXPECT_NE(moed.log().find(fmt::format("server.listen 0.0.0.0:{} is not a loopback address: other hosts can "
                                          "reach the API without a key",
                                          port)),
              std::string::npos)
        << moed.log();
    EXPECT_EQ(tcp_request("127.0.0.1", port, http::verb::get, "/v1/models").reply.status, 200u);
}

TEST(MoedTcp, RequestsDuringASlowLoad) {
    const std::string keys = keys_file("tcp-keys-load", "sk-load\n", 0600);
    const std::uint16_t port = free_port("127.0.0.1");
    // The bundled model is about 13 MB: some 50 pieces of 256 KiB, each after a pause.
    moed_process moed({"--model-inject-slow-load", "delay_ms=40,piece=256KiB", "--server-listen",
                       fmt::format("127.0.0.1:{}", port), "--server-api-keys-file", keys},
                      false);
    std::vector<double> progress;
    bool saw_chat_refused = false;
    bool saw_tcp_loading = false;
    bool saw_metrics = false;
    bool saw_status_loading = false;
    bool loaded = false;
    const auto deadline = std::chrono::steady_clock::now() + give_up_after;
    while (!loaded && std::chrono::steady_clock::now() < deadline) {
        if (!std::filesystem::exists(moed.socket())) {
            std::this_thread::sleep_for(poll_interval);
            continue;
        }
        auto health = get(moed.socket(), "/healthz");
        if (health.status == 200) {
            loaded = true;
            break;
        }
        ASSERT_EQ(health.status, 503u) << health.body << health.error << moed.log();
        const auto j = health.json();
        ASSERT_EQ(j["status"], "loading") << health.body;
        const double p = j["progress"].get<double>();
        EXPECT_GE(p, 0.0);
        EXPECT_LE(p, 1.0);
        EXPECT_FALSE(health.retry_after.empty());
        progress.push_back(p);
        if (!saw_chat_refused) {
            auto chat = post(moed.socket(), "/v1/chat/completions", chat_body("Hi", 4, false));
            if (chat.status != 200) {  // the load may just have ended: then the next poll sees it
                EXPECT_EQ(chat.status, 503u) << chat.body;
                EXPECT_EQ(chat.error_type(), "unavailable_error") << chat.body;
                EXPECT_NE(chat.error_message().find("the model is loading ("), std::string::npos) << chat.body;
                ASSERT_FALSE(chat.retry_after.empty());
                const int seconds = std::stoi(chat.retry_after);
                EXPECT_GE(seconds, 1);
                EXPECT_LE(seconds, 60);
                saw_chat_refused = true;
            }
        }
        if (!saw_metrics) {
            auto m = get(moed.socket(), "/metrics");
            EXPECT_EQ(m.status, 200u) << m.body;
            saw_metrics = m.body.find("moed_uptime_seconds") != std::string::npos;
            auto s = get(moed.socket(), "/v1/status");
            saw_status_loading = s.status == 200 && s.json()["model"]["state"] == "loading";
        }
        if (!saw_tcp_loading) {
            auto open = tcp_request("127.0.0.1", port, http::verb::get, "/healthz");
            auto keyed = tcp_request("127.0.0.1", port, http::verb::get, "/v1/models", "", "Bearer sk-load");
            if (open.reply.status == 503 && keyed.reply.status == 503) {
                EXPECT_EQ(open.reply.json()["status"], "loading");
                EXPECT_FALSE(keyed.reply.retry_after.empty());
                // The key is checked while loading too.
                expect_unauthorized(tcp_request("127.0.0.1", port, http::verb::get, "/v1/models"),
                                    "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.");
                saw_tcp_loading = true;
            }
        }
        std::this_thread::sleep_for(poll_interval);
    }
    ASSERT_TRUE(loaded) << moed.log();
    EXPECT_TRUE(saw_chat_refused);
    EXPECT_TRUE(saw_tcp_loading);
    EXPECT_TRUE(saw_metrics);
    EXPECT_TRUE(saw_status_loading);
    ASSERT_GE(progress.size(), 2u);
    for (std::size_t i = 1; i < progress.size(); ++i) EXPECT_LE(progress[i - 1], progress[i]) << "never goes back";
    EXPECT_LT(progress.front(), progress.back()) << "progress rises during the load";

    auto chat = post(moed.socket(), "/v1/chat/completions", chat_body("Hi", 4, false));
    EXPECT_EQ(chat.status, 200u) << chat.body;
    auto over_tcp = tcp_request("127.0.0.1", port, http::verb::post, "/v1/completions",
                                completion_body("int main(", 4, false), "Bearer sk-load");
    EXPECT_EQ(over_tcp.reply.status, 200u) << over_tcp.reply.body;
    const std::string log = moed.log();
    EXPECT_NE(log.find("while the model loads"), std::string::npos) << log;
    EXPECT_NE(log.find("loading: 0% "), std::string::npos) << log;
    EXPECT_NE(log.find("loading: 100% "), std::string::npos) << log;
    EXPECT_NE(log.find("\"POST /v1/chat/completions\" 503"), std::string::npos) << log;
}

}  // namespace
}  // namespace moed::test
