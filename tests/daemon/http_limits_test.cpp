// Checks how moed's HTTP server (daemon/http_server.h) meets clients at the edges of the
// protocol and of its limits, in-process with the fake engine of http_server_fixture.h over
// a real Unix socket, reading the raw bytes where the framing itself is the subject:
//   - HTTP/1.0: a stream is close-delimited (no chunked coding, no Content-Length,
//     Connection: close, the connection closed after [DONE]); other answers carry
//     Content-Length and close unless the client asked for keep-alive; no 100 Continue;
//   - a Transfer-Encoding other than exactly "chunked" is 501 naming the header, and the
//     connection closes (its body framing is unknown);
//   - a client that half-closes after a complete request gets its whole answer, and a
//     client that then closes fully still has its job cancelled;
//   - connection limits count per peer uid: one user's stalled connections get 503 with
//     Retry-After while another uid is served (run as root: a forked child connects as
//     uid 65534; skipped otherwise, ConnectionLimits covers the accounting);
//   - the per-uid accounting itself (connection_limits), without root;
//   - Retry-After on every 429 and 503.
// Waits are on condition variables or on the server's answer; nothing asserts on wall time.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <cctype>
#include <cstring>
#include <filesystem>
#include <memory>

#include <gtest/gtest.h>

#include "daemon/connection_limits.h"
#include "tests/daemon/http_server_fixture.h"

namespace moed::daemon {
namespace {

class HttpLimits : public HttpServer {
protected:
    // Round trips through the io thread after a client's half-close, so the server has seen
    // the end of the request stream while the fake engine still holds the job: a server that
    // took the half-close for a disconnect has cancelled the job before it is released.
    void let_the_server_see_the_half_close() {
        for (int i = 0; i < 3; ++i) on_io([] {});
    }
};

// A response read as raw bytes: the status line, the header fields (names in lower case)
// and whatever came after the header block.
struct raw_response {
    std::string status_line;
    std::vector<std::pair<std::string, std::string>> fields;
    std::string body;
    bool complete = false;  // the header block ended (CRLF CRLF)

    bool has(std::string_view name) const {
        for (const auto& [n, v] : fields)
            if (n == name) return true;
        return false;
    }
    std::string field(std::string_view name) const {
        for (const auto& [n, v] : fields)
            if (n == name) return v;
        return {};
    }
};

raw_response parse_raw(const std::string& bytes) {
    raw_response r;
    const std::size_t end = bytes.find("\r\n\r\n");
    if (end == std::string::npos) return r;
    r.complete = true;
    r.body = bytes.substr(end + 4);
    std::size_t pos = bytes.find("\r\n");
    r.status_line = bytes.substr(0, pos);
    while (pos < end) {
        const std::size_t next = bytes.find("\r\n", pos + 2);
        const std::string line = bytes.substr(pos + 2, next - pos - 2);
        const std::size_t colon = line.find(':');
        std::string name = line.substr(0, colon);
        for (char& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
        while (!value.empty() && value.front() == ' ') value.erase(0, 1);
        r.fields.emplace_back(std::move(name), std::move(value));
        pos = next;
    }
    return r;
}

// A POST /v1/completions as raw bytes, with `fields` (each ending in CRLF) before the
// Content-Length.
std::string completion_request(std::string_view version, std::string_view body, std::string_view fields = "") {
    return fmt::format("POST /v1/completions {}\r\nHost: x\r\nContent-Type: application/json\r\n{}Content-Length: "
                       "{}\r\n\r\n{}",
                       version, fields, body.size(), body);
}

std::string busy_s() { return std::to_string(retry_after_busy.count()); }
std::string draining_s() { return std::to_string(retry_after_draining.count()); }

// `body` in the chunked coding (one chunk, then the last).
std::string chunked(std::string_view body) { return fmt::format("{:x}\r\n{}\r\n0\r\n\r\n", body.size(), body); }

TEST_F(HttpLimits, Http10StreamIsCloseDelimited) {
    start();
    // With and without keep-alive asked for: a close-delimited body always ends the connection.
    for (const std::string_view connection : {"", "Connection: keep-alive\r\n"}) {
        SCOPED_TRACE(connection.empty() ? "no Connection field" : "Connection: keep-alive");
        http_connection c(socket_path_);
        ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.0", R"({"prompt":"Hi","stream":true})", connection)));
        // read_all() ends at the server's close: the end of the body.
        const raw_response r = parse_raw(c.read_all());
        ASSERT_TRUE(r.complete);
        EXPECT_EQ(r.status_line, "HTTP/1.0 200 OK");
        EXPECT_EQ(r.field("content-type"), "text/event-stream");
        EXPECT_FALSE(r.has("transfer-encoding")) << "HTTP/1.0 has no chunked coding";
        EXPECT_FALSE(r.has("content-length"));
        EXPECT_EQ(r.field("connection"), "close");
        const auto s = test::read_stream(r.body);
        EXPECT_TRUE(s.framing_ok) << r.body;
        EXPECT_TRUE(s.done_last) << r.body;
        EXPECT_EQ(s.text, "Hello world");
        if (HasFailure()) return;
    }
}

TEST_F(HttpLimits, Http10AnswersCarryContentLengthAndCloseUnlessKeepAliveWasAsked) {
    start();
    const std::string body = R"({"prompt":"Hi"})";
    {
        http_connection c(socket_path_);
        ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.0", body)));
        const raw_response r = parse_raw(c.read_all());
        ASSERT_TRUE(r.complete);
        EXPECT_EQ(r.status_line, "HTTP/1.0 200 OK");
        EXPECT_EQ(r.field("content-length"), std::to_string(r.body.size()));
        EXPECT_FALSE(r.has("transfer-encoding"));
        EXPECT_EQ(r.field("connection"), "close");
        EXPECT_EQ(nlohmann::json::parse(r.body, nullptr, false)["choices"][0]["text"], "Hello world") << r.body;
    }
    {
        // Keep-alive asked for: the connection serves a second request.
        http_connection c(socket_path_);
        for (int i = 0; i < 2; ++i) {
            ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.0", body, "Connection: keep-alive\r\n")));
            const http_reply r = c.read_reply();
            ASSERT_EQ(r.status, 200u) << i << r.error;
            EXPECT_EQ(r.connection, "keep-alive");
            EXPECT_FALSE(r.chunked);
            EXPECT_EQ(r.json()["choices"][0]["text"], "Hello world");
        }
    }
    {
        // Expect: 100-continue is HTTP/1.1's; an HTTP/1.0 client gets no interim response.
        http_connection c(socket_path_);
        ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.0", body, "Expect: 100-continue\r\n")));
        const raw_response r = parse_raw(c.read_all());
        EXPECT_EQ(r.status_line, "HTTP/1.0 200 OK");
    }
}

TEST_F(HttpLimits, TransferCodingsOtherThanChunkedAre501) {
    start();
    const std::string body = chunked(R"({"prompt":"Hi"})");
    const std::string alone = "; a request body must come with Content-Length or with 'Transfer-Encoding: chunked' alone";
    struct refused {
        std::string fields;
        std::string message;
    };
    const refused cases[] = {
        {"Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding 'gzip, chunked' is not supported" + alone},
        {"Transfer-Encoding: chunked, gzip\r\n", "Transfer-Encoding 'chunked, gzip' is not supported" + alone},
        {"Transfer-Encoding: gzip\r\n", "Transfer-Encoding 'gzip' is not supported" + alone},
        {"Transfer-Encoding: chunked, chunked\r\n", "Transfer-Encoding 'chunked, chunked' is not supported" + alone},
        {"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
         "Transfer-Encoding 'gzip, chunked' is not supported" + alone},
        {"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
         "Transfer-Encoding: a coding after 'chunked' is not supported" + alone},
    };
    for (const auto& [fields, message] : cases) {
        SCOPED_TRACE(fields);
        http_connection c(socket_path_);
        ASSERT_TRUE(c.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + fields +
                               "\r\n" + body));
        const http_reply r = c.read_reply();
        expect_error(r, 501, "not_supported_error", message);
        EXPECT_EQ(r.connection, "close");
        EXPECT_TRUE(c.closed_by_peer()) << "the body's framing is unknown: the connection cannot go on";
    }
    EXPECT_TRUE(engine_.jobs().empty()) << "no refused body reaches the engine";

    // "chunked" alone, in any case, is read.
    http_connection c(socket_path_);
    ASSERT_TRUE(c.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n" + body));
    const http_reply ok = c.read_reply();
    ASSERT_EQ(ok.status, 200u) << ok.body;
    EXPECT_EQ(ok.json()["choices"][0]["text"], "Hello world");

    // Both framings at once is a malformed request (a smuggling pattern), not a coding to support.
    http_connection both(socket_path_);
    ASSERT_TRUE(both.send_raw("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                              "Transfer-Encoding: chunked\r\n\r\n" + body));
    EXPECT_EQ(both.read_reply().status, 400u);
}

TEST_F(HttpLimits, HalfClosedClientGetsItsWholeAnswer) {
    start();
    engine_.set_hold(true);
    http_connection c(socket_path_);
    ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.1", R"({"prompt":"Hi"})")));
    c.shutdown_send();
    ASSERT_TRUE(engine_.wait_submitted(1));
    let_the_server_see_the_half_close();
    engine_.release_held();
    const http_reply r = c.read_reply();
    ASSERT_EQ(r.status, 200u) << r.error;
    EXPECT_EQ(r.json()["choices"][0]["text"], "Hello world");
    EXPECT_TRUE(c.closed_by_peer()) << "after the answer, the end of the request stream closes the connection";
}

TEST_F(HttpLimits, HalfClosedClientGetsItsWholeStream) {
    start();
    engine_.set_hold(true);
    http_connection c(socket_path_);
    ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.1", R"({"prompt":"Hi","stream":true})")));
    c.shutdown_send();
    ASSERT_TRUE(engine_.wait_submitted(1));
    let_the_server_see_the_half_close();
    engine_.release_held();
    const http_reply r = c.read_reply();
    ASSERT_EQ(r.status, 200u) << r.error;
    const auto s = test::read_stream(r.body);
    EXPECT_TRUE(s.framing_ok && s.done_last) << r.body;
    EXPECT_EQ(s.text, "Hello world");
    EXPECT_EQ(s.finish_reason, "length");
}

TEST_F(HttpLimits, FullCloseAfterAHalfCloseStillCancelsTheJob) {
    start();
    engine_.set_hold(true);
    http_connection c(socket_path_);
    ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.1", R"({"prompt":"Hi"})")));
    c.shutdown_send();
    ASSERT_TRUE(engine_.wait_submitted(1));
    let_the_server_see_the_half_close();
    c.close();
    ASSERT_EQ(engine_.jobs().size(), 1u);
    EXPECT_TRUE(engine_.wait_cancelled(engine_.jobs()[0].id));
}

// Connects to `socket_path` as `uid` from a forked child and returns the first line of the
// answer to GET /healthz (or what failed). The child makes only async-signal-safe calls, as
// this process has other threads.
std::string status_line_as_uid(const std::string& socket_path, uid_t uid) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, socket_path.c_str(), std::min(socket_path.size(), sizeof(addr.sun_path) - 1));
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return "pipe failed";
    const pid_t pid = ::fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
        auto fail = [&](const char* what) {
            (void)!::write(out[1], what, std::strlen(what));
            ::_exit(1);
        };
        const gid_t gid = static_cast<gid_t>(uid);
        if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) fail("setuid failed");
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0) fail("socket failed");
        timeval tv{test::client_io_timeout_s, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) fail("connect failed");
        static const char request[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        if (::write(fd, request, sizeof(request) - 1) != static_cast<ssize_t>(sizeof(request) - 1)) fail("write failed");
        char answer[256];
        std::size_t got = 0;
        while (got < sizeof(answer)) {
            const ssize_t n = ::read(fd, answer + got, sizeof(answer) - got);
            if (n <= 0) break;
            got += static_cast<std::size_t>(n);
        }
        std::size_t line = 0;
        while (line + 1 < got && !(answer[line] == '\r' && answer[line + 1] == '\n')) ++line;
        if (line == 0) fail("no answer");
        (void)!::write(out[1], answer, line);
        ::_exit(0);
    }
    ::close(out[1]);
    std::string line;
    char buf[256];
    for (;;) {
        const ssize_t n = ::read(out[0], buf, sizeof(buf));
        if (n <= 0) break;
        line.append(buf, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    return line;
}

TEST_F(HttpLimits, OneUsersStalledConnectionsDoNotLockOutAnother) {
    if (::geteuid() != 0)
        GTEST_SKIP() << "needs root to connect as a second uid (65534); ConnectionLimits.* check the per-uid "
                        "accounting without it";
    // The other uid must reach the socket: the folder traversable, the socket writable by all.
    namespace fs = std::filesystem;
    fs::permissions(test::temp_dir(), fs::perms::group_exec | fs::perms::others_exec, fs::perm_options::add);
    socket_mode_ = 0666;
    http_options o;
    o.max_connections = 8;  // and so 2 per uid
    start(o);
    // This uid (root) opens as many connections as the server takes in all, each sending one
    // byte of a request and then nothing.
    std::vector<std::unique_ptr<http_connection>> stalled;
    for (std::uint32_t i = 0; i < o.max_connections; ++i) {
        stalled.push_back(std::make_unique<http_connection>(socket_path_));
        ASSERT_TRUE(stalled.back()->send_raw("G"));
    }
    ASSERT_EQ(status_line_as_uid(socket_path_, 65534), "HTTP/1.1 200 OK") << "another user is still served";
    for (std::size_t i = 2; i < stalled.size(); ++i) {
        const http_reply r = stalled[i]->read_reply();
        expect_error(r, 503, "unavailable_error",
                     "too many connections from uid 0 (http.max_connections_per_uid is 2); retry later");
        EXPECT_EQ(r.retry_after, busy_s());
    }
    // The two within the limit were being served all along.
    for (std::size_t i = 0; i < 2; ++i) {
        ASSERT_TRUE(stalled[i]->send_raw("ET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        EXPECT_EQ(stalled[i]->read_reply().status, 200u) << i;
    }
}

TEST_F(HttpLimits, RetryAfterOnEvery429And503) {
    start();
    engine_.set_submit_error(error{errc::out_of_memory, "queue full"});
    const http_reply full = post("/v1/completions", R"({"prompt":"x"})");
    EXPECT_EQ(full.status, 429u);
    EXPECT_EQ(full.retry_after, busy_s());
    engine_.set_submit_error(error{errc::cancelled, "stopping"});
    const http_reply stopping = post("/v1/completions", R"({"prompt":"x"})");
    EXPECT_EQ(stopping.status, 503u);
    EXPECT_EQ(stopping.retry_after, draining_s());
    engine_.set_submit_error(std::nullopt);

    // A running request the drain cancels.
    engine_.set_hold(true);
    http_connection c(socket_path_);
    ASSERT_TRUE(c.send_raw(completion_request("HTTP/1.1", R"({"prompt":"Hi"})")));
    ASSERT_TRUE(engine_.wait_running(1));
    engine_.stop();
    const http_reply cancelled = c.read_reply();
    EXPECT_EQ(cancelled.status, 503u) << cancelled.body;
    EXPECT_EQ(cancelled.retry_after, draining_s());
}

TEST(ConnectionLimits, EachPeerHasItsOwnShareOfTheTotal) {
    using verdict = connection_limits::verdict;
    connection_limits limits(6, 2);
    const auto alice = connection_limits::key_of(1000u);
    const auto bob = connection_limits::key_of(1001u);
    const auto carol = connection_limits::key_of(1002u);
    const auto unknown = connection_limits::key_of(std::nullopt);
    EXPECT_NE(unknown, connection_limits::key_of(0u)) << "no credentials is not root";
    EXPECT_EQ(limits.admit(alice), verdict::admitted);
    EXPECT_EQ(limits.admit(alice), verdict::admitted);
    EXPECT_EQ(limits.admit(alice), verdict::over_peer) << "alice is at her share";
    EXPECT_EQ(limits.of(alice), 2u) << "a refused connection holds nothing";
    EXPECT_EQ(limits.admit(bob), verdict::admitted) << "bob is not locked out by alice";
    EXPECT_EQ(limits.admit(unknown), verdict::admitted);
    EXPECT_EQ(limits.admit(unknown), verdict::admitted);
    EXPECT_EQ(limits.admit(unknown), verdict::over_peer) << "peers without credentials share one key";
    EXPECT_EQ(limits.admit(carol), verdict::admitted);
    EXPECT_EQ(limits.total(), 6u);
    EXPECT_EQ(limits.admit(bob), verdict::over_total);
    limits.release(alice);
    EXPECT_EQ(limits.of(alice), 1u);
    EXPECT_EQ(limits.admit(bob), verdict::admitted) << "a released slot is free again";
    EXPECT_EQ(limits.of(bob), 2u);
    for (auto key : {alice, bob, bob, unknown, unknown, carol}) limits.release(key);
    EXPECT_EQ(limits.total(), 0u);
    EXPECT_EQ(limits.of(bob), 0u);
}

TEST(ConnectionLimits, PerUidDefaultIsAQuarterOfTheTotal) {
    http_options o;
    EXPECT_EQ(o.max_connections, 256u);
    EXPECT_EQ(connections_per_uid(o), 64u);
    o.max_connections = 3;
    EXPECT_EQ(connections_per_uid(o), 1u) << "at least one";
    o.max_connections_per_uid = 2;
    EXPECT_EQ(connections_per_uid(o), 2u);
    o.max_connections_per_uid = 10;
    EXPECT_EQ(connections_per_uid(o), 3u) << "never more than the total";
}

}  // namespace
}  // namespace moed::daemon
