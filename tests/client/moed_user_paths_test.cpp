// moed run as an unprivileged user with no system directories: given only HOME and
// XDG_RUNTIME_DIR (a clean environment, no config keys for paths), it chooses
// $XDG_RUNTIME_DIR/moed/moed.sock and ~/.local/state/moed, says so in its log, makes both
// directories private to the user, and serves; moectl run as the same user with no --socket
// finds that socket; SIGTERM ends it with exit 0 and removes the socket. A config error
// (engine.queue_length = 0) ends it with exit 2 naming the key, before any model is loaded.
//
// How the user is unprivileged: when the tests run as root, moed and moectl run as nobody
// (uid/gid 65534) through setpriv with no supplementary groups, so /run/moed and
// /var/lib/moed cannot be written even if they exist; otherwise they run as the test's own
// (already unprivileged) user. Skipped as root without setpriv.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/daemon/http_test_client.h"
#include "tests/support/spawn_daemon.h"
#include "tests/support/test_paths.h"

namespace moed::test {
namespace {

namespace fs = std::filesystem;

// A safety net for start-up and exit: far above what a working build needs.
constexpr auto give_up_after = std::chrono::seconds(120);
constexpr uid_t nobody = 65534;

std::string read_text(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

struct shell_result {
    int exit_code = -1;
    std::string output;
};

shell_result shell(const std::string& command) {
    shell_result r;
    FILE* p = ::popen((command + " 2>&1").c_str(), "r");
    if (p == nullptr) return r;
    std::array<char, 4096> buf;
    std::size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
    const int status = ::pclose(p);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

class moed_user_paths : public ::testing::Test {
protected:
    void SetUp() override {
        as_root_ = ::geteuid() == 0;
        if (as_root_) {
            const shell_result which = shell("command -v setpriv");
            if (which.exit_code != 0) GTEST_SKIP() << "running as root and setpriv (util-linux) is absent";
            setpriv_ = which.output.substr(0, which.output.find('\n'));
        }
        base_ = temp_dir() / "user";
        home_ = base_ / "home";
        runtime_ = base_ / "run";
        fs::create_directories(home_);
        fs::create_directories(runtime_);
        // The test's scratch directories must be reachable by the user moed runs as.
        for (const fs::path& p : {temp_dir(), base_}) ::chmod(p.c_str(), 0755);
        ::chmod(runtime_.c_str(), 0700);  // as a login's /run/user/UID
        if (as_root_) {
            for (const fs::path& p : {home_, runtime_}) ASSERT_EQ(::chown(p.c_str(), nobody, nobody), 0) << p;
        }
        config_ = base_ / "empty.toml";  // so this machine's /etc/moed/moed.toml is not read
        std::ofstream(config_) << "# no paths: moed chooses them\n";
        ::chmod(config_.c_str(), 0644);
    }

    // The command prefix that runs a program as the test user in a clean environment.
    std::vector<std::string> as_user(const fs::path& xdg_runtime_dir) const {
        std::vector<std::string> argv;
        if (as_root_) argv = {setpriv_, "--reuid=65534", "--regid=65534", "--clear-groups", "--"};
        argv.insert(argv.end(), {"/usr/bin/env", "-i", "HOME=" + home_.string(),
                                 "XDG_RUNTIME_DIR=" + xdg_runtime_dir.string(), "PATH=/usr/bin:/bin"});
        return argv;
    }

    std::string as_user_shell(const fs::path& xdg_runtime_dir) const {
        std::string s;
        for (const auto& a : as_user(xdg_runtime_dir)) s += quote(a) + " ";
        return s;
    }

    std::vector<std::string> moed_argv(std::vector<std::string> extra) const {
        std::vector<std::string> argv = as_user(runtime_);
        argv.insert(argv.end(), {std::string(MOED_BINARY_DIR) + "/daemon/moed", "--config", config_.string(),
                                 "--model-path", models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf", "--engine-threads",
                                 "2"});
        argv.insert(argv.end(), extra.begin(), extra.end());
        return argv;
    }

    static int wait_exit(pid_t pid) {
        const auto deadline = std::chrono::steady_clock::now() + give_up_after;
        int status = 0;
        while (::waitpid(pid, &status, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(pid, SIGKILL);
                ::waitpid(pid, &status, 0);
                return -1;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }

    void expect_owned_private_dir(const fs::path& dir) const {
        struct stat st {};
        ASSERT_EQ(::stat(dir.c_str(), &st), 0) << dir << " was not made";
        EXPECT_TRUE(S_ISDIR(st.st_mode)) << dir;
        EXPECT_EQ(st.st_mode & 0077, 0u) << dir << " is open to others: " << std::oct << (st.st_mode & 07777);
        EXPECT_EQ(st.st_uid, as_root_ ? nobody : ::geteuid()) << dir;
    }

    bool as_root_ = false;
    std::string setpriv_;
    fs::path base_, home_, runtime_, config_;
};

TEST_F(moed_user_paths, chooses_user_directories_and_moectl_finds_the_socket) {
    const fs::path log = base_ / "moed.log";
    pid_t pid = -1;
    ASSERT_EQ(spawn_daemon(moed_argv({}), log, pid), 0);
    const fs::path socket = runtime_ / "moed" / "moed.sock";
    const fs::path state = home_ / ".local" / "state" / "moed";

    bool ready = false;
    const auto deadline = std::chrono::steady_clock::now() + give_up_after;
    while (!ready && std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            pid = -1;
            break;
        }
        ready = fs::exists(socket) && get(socket.string(), "/healthz").status == 200;
        if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!ready) {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
        FAIL() << "moed never served on " << socket << "; log:\n" << read_text(log);
    }

    const std::string text = read_text(log);
    EXPECT_NE(text.find("not configured, chose the user defaults: socket.path " + socket.string() +
                        " (from $XDG_RUNTIME_DIR), daemon.state_dir " + state.string() + " (from $HOME)"),
              std::string::npos)
        << text;
    expect_owned_private_dir(socket.parent_path());
    expect_owned_private_dir(state);

    // moectl as the same user, told nothing, connects to that daemon.
    const std::string moectl = quote(std::string(MOED_BINARY_DIR) + "/client/moectl");
    const shell_result health = shell(as_user_shell(runtime_) + moectl + " health");
    EXPECT_EQ(health.exit_code, 0) << health.output;
    const shell_result models = shell(as_user_shell(runtime_) + moectl + " models");
    EXPECT_EQ(models.exit_code, 0) << models.output;
    EXPECT_NE(models.output.find("tinymoe"), std::string::npos) << models.output;
    // Where the user has no daemon of its own, moectl looks for the system one.
    if (!fs::exists("/run/moed/moed.sock")) {
        const fs::path elsewhere = base_ / "run-elsewhere";
        fs::create_directories(elsewhere);
        if (as_root_) {
            ASSERT_EQ(::chown(elsewhere.c_str(), nobody, nobody), 0);
        }
        const shell_result none = shell(as_user_shell(elsewhere) + moectl + " health");
        EXPECT_EQ(none.exit_code, 3) << none.output;
        EXPECT_NE(none.output.find("/run/moed/moed.sock"), std::string::npos) << none.output;
    }

    ::kill(pid, SIGTERM);
    EXPECT_EQ(wait_exit(pid), 0) << read_text(log);
    EXPECT_FALSE(fs::exists(socket)) << "the socket file outlived moed";
}

TEST_F(moed_user_paths, a_config_error_is_exit_2_before_the_load) {
    const fs::path log = base_ / "bad.log";
    pid_t pid = -1;
    ASSERT_EQ(spawn_daemon(moed_argv({"--engine-queue-length", "0"}), log, pid), 0);
    EXPECT_EQ(wait_exit(pid), 2);
    const std::string text = read_text(log);
    EXPECT_NE(text.find("--engine-queue-length: 0 is out of range [1, 65536]"), std::string::npos) << text;
    EXPECT_EQ(text.find("loading"), std::string::npos) << "moed began loading before refusing its config:\n" << text;
    EXPECT_FALSE(fs::exists(runtime_ / "moed" / "moed.sock"));
}

}  // namespace
}  // namespace moed::test
