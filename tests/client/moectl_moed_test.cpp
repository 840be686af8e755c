// moectl against the real moed (bundled tinymoe, temporary socket): a generation that moed
// cancels in its shutdown drain (SIGTERM with a 1 ms drain, sent once the first text has
// reached moectl's stdout, so the sequence is running with most of its 250 tokens to go)
// makes `moectl generate` exit 1 with a message saying the text is incomplete, after the
// partial text; moed itself exits 0. The same generation left alone exits 0.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/client/moectl_runner.h"
#include "tests/daemon/http_test_client.h"
#include "tests/support/spawn_daemon.h"
#include "tests/support/test_paths.h"

namespace moed::test {
namespace {

namespace fs = std::filesystem;

// A safety net for start-up and exit: far above what a working build needs.
constexpr auto give_up_after = std::chrono::seconds(120);

class moed_child {
public:
    explicit moed_child(const std::vector<std::string>& extra) {
        static int counter = 0;
        const int n = ++counter;
        socket_ = (temp_dir() / fmt::format("moectl-moed{}.sock", n)).string();
        log_ = temp_dir() / fmt::format("moectl-moed{}.log", n);
        std::vector<std::string> argv{std::string(MOED_BINARY_DIR) + "/daemon/moed",
                                      "--model-path", models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf",
                                      "--socket-path", socket_, "--engine-threads", "2"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        (void)spawn_daemon(argv, log_, pid_);  // pid stays -1 on failure; the wait below reports it
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (pid_ > 0 && std::chrono::steady_clock::now() < deadline) {
            if (fs::exists(socket_) && get(socket_, "/healthz").status == 200) {
                ready_ = true;
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        if (!ready_) ADD_FAILURE() << "moed did not start; log:\n" << log();
    }
    ~moed_child() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            int status = 0;
            ::waitpid(pid_, &status, 0);
        }
    }
    bool ready() const { return ready_; }
    const std::string& socket() const { return socket_; }
    void signal(int signo) const { ::kill(pid_, signo); }
    std::string log() const {
        std::ifstream in(log_);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }
    int wait_exit() {
        int status = 0;
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        while (::waitpid(pid_, &status, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ADD_FAILURE() << "moed did not exit; log:\n" << log();
                ::kill(pid_, SIGKILL);
                ::waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

private:
    pid_t pid_ = -1;
    std::string socket_;
    fs::path log_;
    bool ready_ = false;
};

// "The" at temperature 0 runs to the 250-token limit on tinymoe (no end-of-text token).
const std::vector<std::string> k_generate{"generate", "--temperature", "0", "--max-tokens", "250", "The"};

TEST(moectl_moed, a_generation_cancelled_by_the_drain_exits_1) {
    moed_child moed({"--daemon-drain-timeout-s", "0.001"});
    ASSERT_TRUE(moed.ready());
    bool signalled = false;
    const moectl_result r = run_moectl(k_generate, moed.socket(), {}, [&](const std::string& out) {
        if (!signalled && !out.empty()) {
            moed.signal(SIGTERM);
            signalled = true;
        }
        return true;
    });
    ASSERT_TRUE(signalled) << r.err;
    EXPECT_EQ(r.exit_code, 1) << r.err << "\nmoed's log:\n" << moed.log();
    EXPECT_NE(r.err.find("moed cancelled the generation before it finished"), std::string::npos) << r.err;
    EXPECT_FALSE(r.out.empty());
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

TEST(moectl_moed, the_same_generation_left_alone_exits_0) {
    moed_child moed({});
    ASSERT_TRUE(moed.ready());
    const moectl_result r = run_moectl(k_generate, moed.socket());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_FALSE(r.out.empty());
    moed.signal(SIGTERM);
    EXPECT_EQ(moed.wait_exit(), 0) << moed.log();
}

}  // namespace
}  // namespace moed::test
