// Runs the real moed binary with `--trace FILE --trace-lookahead 3` on the bundled model,
// makes two completions (one with "trace_tag", one without) and a request with a bad
// trace_tag, stops it with SIGTERM and reads the trace: the daemon exits 0, the file is
// complete (the reader checks the footer), each request's tokens appear once per layer
// under its own sequence id with its tag, prompt tokens flagged prefill, and the lookahead
// depth is 3. A trace path that cannot be created stops the daemon at start-up (exit 1).
// Waits poll with a generous safety limit; nothing asserts on wall time.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "scheduler/trace.h"
#include "tests/daemon/http_test_client.h"
#include "tests/support/spawn_daemon.h"
#include "tests/support/test_paths.h"

extern char** environ;

namespace moed::test {
namespace {

using json = nlohmann::json;
constexpr auto give_up_after = std::chrono::seconds(120);
constexpr auto poll_interval = std::chrono::milliseconds(20);

std::string read_text(const std::filesystem::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

// moed as a child process, its stderr in a file.
struct moed_child {
    pid_t pid = -1;
    std::string socket;
    std::filesystem::path log;

    explicit moed_child(const std::vector<std::string>& extra) {
        static int counter = 0;
        const int n = ++counter;
        socket = (temp_dir() / fmt::format("trace{}.sock", n)).string();
        log = temp_dir() / fmt::format("trace{}.log", n);
        std::vector<std::string> argv{std::string(MOED_BINARY_DIR) + "/daemon/moed",
                                      "--model-path", models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf",
                                      "--socket-path", socket, "--engine-threads", "2", "--daemon-watchdog", "false"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        (void)moed::test::spawn_daemon(argv, log, pid);  // pid stays -1 on failure; the wait below reports it
    }
    ~moed_child() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            int status = 0;
            ::waitpid(pid, &status, 0);
        }
    }

    // True once /healthz answers; false if the process exits or never answers.
    bool wait_ready() {
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (std::chrono::steady_clock::now() < deadline) {
            int status = 0;
            if (pid <= 0 || ::waitpid(pid, &status, WNOHANG) == pid) {
                exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                pid = -1;
                return false;
            }
            if (std::filesystem::exists(socket) && get(socket, "/healthz").status == 200) return true;
            std::this_thread::sleep_for(poll_interval);
        }
        return false;
    }

    int wait_exit() {
        if (pid <= 0) return exit_code;
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        int status = 0;
        while (::waitpid(pid, &status, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, &status, 0);
                break;
            }
            std::this_thread::sleep_for(poll_interval);
        }
        pid = -1;
        exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        return exit_code;
    }
    int exit_code = -1;
};

TEST(moed_trace, records_tagged_requests_and_closes_on_sigterm) {
    const std::string trace_path = (temp_dir() / "moed.trace").string();
    moed_child moed({"--trace", trace_path, "--trace-lookahead", "3"});
    ASSERT_TRUE(moed.wait_ready()) << read_text(moed.log);

    auto tagged = post(moed.socket, "/v1/completions",
                       json{{"prompt", "int main(void) {"}, {"max_tokens", 4}, {"temperature", 0}, {"ignore_eos", true},
                            {"trace_tag", "c/demo"}}.dump());
    ASSERT_EQ(tagged.status, 200u) << tagged.body;
    auto plain = post(moed.socket, "/v1/completions",
                      json{{"prompt", "The river"}, {"max_tokens", 2}, {"temperature", 0}, {"ignore_eos", true}}.dump());
    ASSERT_EQ(plain.status, 200u) << plain.body;
    auto bad = post(moed.socket, "/v1/completions", json{{"prompt", "x"}, {"trace_tag", 7}}.dump());
    EXPECT_EQ(bad.status, 400u);
    EXPECT_NE(bad.body.find("trace_tag"), std::string::npos) << bad.body;
    auto too_long = post(moed.socket, "/v1/completions", json{{"prompt", "x"}, {"trace_tag", std::string(300, 'a')}}.dump());
    EXPECT_EQ(too_long.status, 400u);

    ::kill(moed.pid, SIGTERM);
    ASSERT_EQ(moed.wait_exit(), 0) << read_text(moed.log);

    scheduler::trace_info info;
    std::vector<std::string> tags;
    auto records = scheduler::read_trace(trace_path, info, &tags);
    ASSERT_TRUE(records) << records.error().message << "\nlog:\n" << read_text(moed.log);
    EXPECT_EQ(info.lookahead_depth, 3u);
    EXPECT_EQ(info.n_layer, 6u);
    ASSERT_EQ(tags.size(), 2u);
    EXPECT_EQ(tags[0], "c/demo");
    EXPECT_EQ(tags[1], "") << "a request without trace_tag gets the empty tag";

    const auto usage_a = tagged.json()["usage"];
    const auto usage_b = plain.json()["usage"];
    // Each request: prompt tokens + generated - 1 (the last token is never fed back).
    const std::int64_t tokens_a = usage_a["prompt_tokens"].get<std::int64_t>() + 4 - 1;
    const std::int64_t tokens_b = usage_b["prompt_tokens"].get<std::int64_t>() + 2 - 1;
    std::map<std::uint64_t, std::map<std::pair<std::int64_t, std::uint32_t>, int>> per_seq;
    std::map<std::uint64_t, std::uint32_t> seq_tag;
    std::map<std::uint64_t, std::int64_t> prefill_tokens;
    for (const auto& r : *records) {
        ++per_seq[r.seq][{r.pos, r.layer}];
        seq_tag[r.seq] = r.tag;
        if (r.prefill && r.layer == 0) ++prefill_tokens[r.seq];
        EXPECT_EQ(r.lookahead.size(), 3u * info.n_expert);
    }
    ASSERT_EQ(per_seq.size(), 2u) << "two requests, two sequence ids";
    auto first = per_seq.begin();
    auto second = std::next(first);
    EXPECT_LT(first->first, second->first) << "job ids grow";
    EXPECT_EQ(seq_tag[first->first], 0u);
    EXPECT_EQ(seq_tag[second->first], 1u);
    EXPECT_EQ(first->second.size(), static_cast<std::size_t>(tokens_a * 6));
    EXPECT_EQ(second->second.size(), static_cast<std::size_t>(tokens_b * 6));
    for (const auto& [seq, cells] : per_seq) {
        for (const auto& [cell, count] : cells) EXPECT_EQ(count, 1) << "seq " << seq << " pos " << cell.first;
    }
    EXPECT_EQ(prefill_tokens[first->first], usage_a["prompt_tokens"].get<std::int64_t>());
    EXPECT_EQ(prefill_tokens[second->first], usage_b["prompt_tokens"].get<std::int64_t>());
    EXPECT_NE(read_text(moed.log).find("routing trace"), std::string::npos);
}

TEST(moed_trace, an_uncreatable_trace_stops_start_up) {
    moed_child moed({"--trace", "/nonexistent-dir/moed.trace"});
    EXPECT_FALSE(moed.wait_ready());
    EXPECT_EQ(moed.wait_exit(), 1);
    const std::string log = read_text(moed.log);
    EXPECT_NE(log.find("/nonexistent-dir/moed.trace"), std::string::npos) << log;
}

}  // namespace
}  // namespace moed::test
