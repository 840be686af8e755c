// The real `moed` binary as a child process for the daemon's process tests: started on a
// temporary socket with the bundled model (later flags override), waited for through
// /healthz, its log in a file; plus request bodies and error checks the tests share.
#pragma once

#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/daemon/http_test_client.h"
#include "tests/support/spawn_daemon.h"
#include "tests/support/test_paths.h"

namespace moed::test {

using json = nlohmann::json;

// A safety net for waits on the daemon (start-up, exit, a sequence being freed): far above
// anything a working build needs, so only a hang trips it.
inline constexpr auto give_up_after = std::chrono::seconds(120);
inline constexpr auto poll_interval = std::chrono::milliseconds(20);

inline std::string moed_binary() { return std::string(MOED_BINARY_DIR) + "/daemon/moed"; }
inline std::string bundled_model() { return models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

inline std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// One moed child process with its stderr in a file.
class moed_process {
public:
    explicit moed_process(std::vector<std::string> args, bool wait_ready = true) {
        static int counter = 0;
        const int n = ++counter;
        socket_path_ = (temp_dir() / fmt::format("moed{}.sock", n)).string();
        log_path_ = temp_dir() / fmt::format("moed{}.log", n);
        std::vector<std::string> argv{moed_binary(),        "--model-path",      bundled_model(), "--socket-path",
                                      socket_path_,         "--engine-threads",  "2",             "--daemon-log-level",
                                      "info"};
        argv.insert(argv.end(), args.begin(), args.end());
        spawn(argv);
        if (wait_ready) ready_ = wait_until_ready();
    }
    // Runs moed with exactly `argv` (after the binary) and no defaults.
    static moed_process raw(std::vector<std::string> argv) { return moed_process(std::move(argv), raw_tag{}); }

    moed_process(moed_process&& o) noexcept
        : pid_(std::exchange(o.pid_, -1)), socket_path_(std::move(o.socket_path_)), log_path_(std::move(o.log_path_)),
          exit_code_(o.exit_code_), ready_(o.ready_) {}
    ~moed_process() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
    }

    bool ready() const { return ready_; }
    const std::string& socket() const { return socket_path_; }
    std::string log() const { return read_file(log_path_); }
    pid_t pid() const { return pid_; }
    void signal(int signo) { ::kill(pid_, signo); }

    // Waits for the process to end; its exit code, or 128 + signal.
    int wait_exit() {
        if (pid_ <= 0) return exit_code_;
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        int status = 0;
        while (::waitpid(pid_, &status, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ADD_FAILURE() << "moed did not exit; log:\n" << log();
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(poll_interval);
        }
        pid_ = -1;
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_code_;
    }

    json status() { return get(socket_path_, "/v1/status").json(); }

    // Polls /v1/status until `pred` holds; false when the daemon never gets there.
    template <typename Pred>
    bool wait_status(Pred pred) {
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (std::chrono::steady_clock::now() < deadline) {
            auto s = status();
            if (s.is_object() && pred(s)) return true;
            std::this_thread::sleep_for(poll_interval);
        }
        return false;
    }

private:
    struct raw_tag {};
    moed_process(std::vector<std::string> args, raw_tag) {
        static int counter = 0;
        log_path_ = temp_dir() / fmt::format("raw{}.log", ++counter);
        args.insert(args.begin(), moed_binary());
        spawn(args);
    }

    void spawn(const std::vector<std::string>& argv) {
        const int rc = moed::test::spawn_daemon(argv, log_path_, pid_);
        if (rc != 0) {
            ADD_FAILURE() << "cannot start " << argv[0] << ": " << std::strerror(rc);
        }
    }

    bool wait_until_ready() {
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (std::chrono::steady_clock::now() < deadline) {
            int status = 0;
            if (pid_ <= 0 || ::waitpid(pid_, &status, WNOHANG) == pid_) {
                if (pid_ > 0) exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                pid_ = -1;
                ADD_FAILURE() << "moed exited during start-up; log:\n" << log();
                return false;
            }
            if (std::filesystem::exists(socket_path_) && get(socket_path_, "/healthz").status == 200) return true;
            std::this_thread::sleep_for(poll_interval);
        }
        ADD_FAILURE() << "moed never answered /healthz; log:\n" << log();
        return false;
    }

    pid_t pid_ = -1;
    std::string socket_path_;
    std::filesystem::path log_path_;
    int exit_code_ = -1;
    bool ready_ = false;
};

inline void expect_error(const http_reply& r, unsigned status, const std::string& type, const std::string& message) {
    EXPECT_EQ(r.status, status) << r.body << r.error;
    EXPECT_EQ(r.content_type, "application/json");
    EXPECT_EQ(r.error_type(), type) << r.body;
    EXPECT_EQ(r.error_message(), message) << r.body;
}

inline std::string completion_body(const std::string& prompt, int max_tokens, bool stream, const std::string& extra = "") {
    json j{{"model", "tinymoe"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}, {"stream", stream}};
    std::string s = j.dump();
    if (!extra.empty()) s = s.substr(0, s.size() - 1) + "," + extra + "}";
    return s;
}

inline std::string chat_body(const std::string& content, int max_tokens, bool stream) {
    return json{{"model", "tinymoe"},
                {"messages", json::array({json{{"role", "user"}, {"content", content}}})},
                {"max_tokens", max_tokens},
                {"temperature", 0},
                {"stream", stream}}
        .dump();
}

// Sends a streaming request on `c` and reads up to the first event.
inline std::string start_stream(http_connection& c, const std::string& body) {
    c.send_raw(fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: {}\r\n\r\n{}",
                           body.size(), body));
    return c.read_until("data: ");
}

}  // namespace moed::test
