// One completion request of bench/soak on its own connection to moed's Unix socket, read
// strictly: the status line, the headers, every SSE event of a stream up to "data: [DONE]"
// and nothing after it, or the whole JSON answer; the finish reason, the token count against
// max_tokens, stop strings absent from the text and the profile named. What it saw goes
// into an `attempt` for classify() (bench/soak_stats.h). Any thread may call run_request;
// it shares nothing.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/soak_stats.h"

namespace moed::bench::soak {

// Owns a file descriptor (a socket here); closes it when dropped.
class unique_fd {
public:
    explicit unique_fd(int fd = -1) noexcept : fd_(fd) {}
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_fd& operator=(unique_fd&&) = delete;
    ~unique_fd() { reset(); }
    int get() const noexcept { return fd_; }
    void reset() noexcept {
        if (fd_ >= 0) ::close(fd_);  // closing a socket we are done with cannot lose data we need
        fd_ = -1;
    }

private:
    int fd_;
};

// One request of the mixed load (next_plan in soak.cpp draws them).
struct request_plan {
    bool chat = false;
    bool stream = false;
    std::optional<int> max_tokens;  // none: moed's default, capped by the context
    std::vector<std::string> stop;
    std::string profile;  // empty: moed matches the prompt to its profiles
    std::optional<std::uint32_t> prune;
    int cut_after_chunks = 0;  // streams: close after this many text chunks (0: read to the end)
    double temperature = 0.0;
    std::optional<std::uint64_t> seed;
    std::string system;  // chat: an optional system message
    std::string prompt;
};

// What one request came to: the facts to classify, the completion tokens it produced,
// and a message naming what went wrong.
struct request_result {
    attempt facts;
    std::int64_t tokens = 0;
    std::string message;  // what went wrong (empty when ok)
};

// The request's JSON body.
nlohmann::json plan_body(const request_plan& p);

// Connects to the Unix socket (non-blocking); an fd of -1 with `error` set when it cannot.
unique_fd connect_unix(const std::string& path, std::string& error);

// Sends the request and reads the answer, waiting at most `timeout` for each next byte;
// closes the connection after plan.cut_after_chunks text chunks of a stream.
request_result run_request(const std::string& socket_path, const request_plan& plan, std::chrono::milliseconds timeout);

}  // namespace moed::bench::soak
