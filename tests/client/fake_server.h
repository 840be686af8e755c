// A scripted HTTP/1.1 server on a temporary Unix socket, standing in for moed in the client
// tests. Each accepted connection is handed to the test's handler on the server's thread,
// one connection at a time; the handler reads the request and writes whatever bytes the
// test wants, in as many writes as it likes (to split responses across the client's reads).
// Requests are recorded for the test to inspect. Raw POSIX sockets, so the tests do not share the client's HTTP code.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/support/test_paths.h"

namespace moed::test {

struct recorded_request {
    std::string method;
    std::string target;
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
};

class fake_connection {
public:
    fake_connection(int fd, std::function<void(const recorded_request&)> record)
        : fd_(fd), record_(std::move(record)) {}

    // Reads one request: the head, then a Content-Length body. nullopt when the peer
    // closed or sent garbage.
    std::optional<recorded_request> read_request() {
        std::string data;
        std::size_t head_end;
        while ((head_end = data.find("\r\n\r\n")) == std::string::npos) {
            if (!read_more(data)) return std::nullopt;
        }
        recorded_request r;
        std::string_view head(data.data(), head_end);
        std::size_t line_end = head.find("\r\n");
        const std::string_view first = head.substr(0, line_end);
        const std::size_t sp1 = first.find(' ');
        const std::size_t sp2 = first.find(' ', sp1 + 1);
        if (sp1 == std::string_view::npos || sp2 == std::string_view::npos) return std::nullopt;
        r.method = std::string(first.substr(0, sp1));
        r.target = std::string(first.substr(sp1 + 1, sp2 - sp1 - 1));
        while (line_end != std::string_view::npos) {
            const std::size_t next = head.find("\r\n", line_end + 2);
            const std::string_view line = head.substr(line_end + 2, next == std::string_view::npos ? std::string_view::npos
                                                                                                    : next - line_end - 2);
            line_end = next;
            const std::size_t colon = line.find(':');
            if (colon == std::string_view::npos) continue;
            std::string name(line.substr(0, colon));
            for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            std::string_view value = line.substr(colon + 1);
            while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
            r.headers[name] = std::string(value);
        }
        std::size_t length = 0;
        if (auto it = r.headers.find("content-length"); it != r.headers.end()) length = std::stoul(it->second);
        r.body = data.substr(head_end + 4);
        while (r.body.size() < length) {
            if (!read_more(r.body)) return std::nullopt;
        }
        if (record_) record_(r);
        return r;
    }

    // Writes all of `bytes`; false when the peer is gone.
    bool write(std::string_view bytes) {
        while (!bytes.empty()) {
            const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            bytes.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    // Writes `bytes` one piece at a time with a pause between, so the client most likely
    // reads them separately (correctness must not depend on it either way).
    bool write_pieces(const std::vector<std::string>& pieces) {
        for (const std::string& p : pieces) {
            if (!write(p)) return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return true;
    }

    // Blocks until the peer closes its end (reads return 0 or fail); drains what it sends.
    // Returns false if `limit` passed first (a hang guard, never a timing assertion).
    bool wait_peer_closed(std::chrono::milliseconds limit = std::chrono::seconds(60)) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        char buf[4096];
        while (std::chrono::steady_clock::now() < deadline) {
            pollfd p{fd_, POLLIN, 0};
            const int ready = ::poll(&p, 1, 100);
            if (ready < 0 && errno != EINTR) return true;
            if (ready <= 0) continue;
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) return true;
        }
        return false;
    }

private:
    bool read_more(std::string& data) {
        char buf[4096];
        for (;;) {
            const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            data.append(buf, static_cast<std::size_t>(n));
            return true;
        }
    }

    int fd_;
    std::function<void(const recorded_request&)> record_;
};

class fake_server {
public:
    using handler = std::function<void(fake_connection&)>;

    // Listens on a fresh socket path under the test's temp directory.
    explicit fake_server(handler h) : handler_(std::move(h)) {
        static std::atomic<int> counter{0};
        path_ = (temp_dir() / ("fake-" + std::to_string(counter++) + ".sock")).string();
        std::filesystem::remove(path_);
        listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listen_fd_ < 0) throw std::runtime_error("socket() failed");
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        if (path_.size() >= sizeof(addr.sun_path)) throw std::runtime_error("socket path too long");
        std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
        if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, 16) != 0) {
            ::close(listen_fd_);
            throw std::runtime_error("bind/listen failed on " + path_ + ": " + std::strerror(errno));
        }
        thread_ = std::thread([this] { serve(); });
    }

    ~fake_server() {
        stopping_ = true;
        ::shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
        thread_.join();
        ::close(listen_fd_);
        std::filesystem::remove(path_);
    }

    fake_server(const fake_server&) = delete;
    fake_server& operator=(const fake_server&) = delete;

    const std::string& path() const { return path_; }
    int connections() const { return connections_.load(); }
    // The requests read so far, in order.
    std::vector<recorded_request> requests() const {
        const std::lock_guard lock(mutex_);
        return requests_;
    }

private:
    void serve() {
        while (!stopping_) {
            const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR) continue;
                return;  // shut down
            }
            ++connections_;
            fake_connection conn(fd, [this](const recorded_request& r) {
                const std::lock_guard lock(mutex_);
                requests_.push_back(r);
            });
            handler_(conn);
            ::close(fd);
        }
    }

    handler handler_;
    std::string path_;
    int listen_fd_ = -1;
    std::atomic<bool> stopping_{false};
    std::atomic<int> connections_{0};
    mutable std::mutex mutex_;
    std::vector<recorded_request> requests_;
    std::thread thread_;
};

// A whole response with Content-Length.
inline std::string http_response(int status, std::string_view reason, std::string_view content_type,
                                 std::string_view body) {
    std::string r = "HTTP/1.1 " + std::to_string(status) + " " + std::string(reason) + "\r\n";
    r += "Content-Type: " + std::string(content_type) + "\r\n";
    r += "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
    r += body;
    return r;
}

inline std::string json_response(std::string_view body, int status = 200, std::string_view reason = "OK") {
    return http_response(status, reason, "application/json", body);
}

// The head of an SSE response: chunked, or ended by closing the connection.
inline std::string sse_head(bool chunked) {
    std::string h = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
    h += chunked ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n";
    return h + "\r\n";
}

// One chunk of a chunked body ("" gives the last chunk).
inline std::string http_chunk(std::string_view data) {
    if (data.empty()) return "0\r\n\r\n";
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    return std::string(size) + std::string(data) + "\r\n";
}

}  // namespace moed::test
