#include "bench/soak_daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

#include <fmt/format.h>

#include "bench/soak_request.h"
#include "moed/client.hpp"

namespace moed::bench::soak {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

namespace {

// How long a started daemon gets to answer /healthz, and to exit after SIGTERM (its drain
// timeout is 30 s by default).
constexpr auto daemon_start_timeout = std::chrono::seconds(180);
constexpr auto daemon_stop_timeout = std::chrono::seconds(120);
constexpr auto daemon_poll = std::chrono::milliseconds(100);
// How much of its log a failure quotes.
constexpr std::size_t log_tail_bytes = 4000;

std::string tail_of(const fs::path& file, std::size_t bytes) {
    std::ifstream in(file, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text.size() > bytes ? text.substr(text.size() - bytes) : text;
}

}  // namespace

proc_sample read_proc(pid_t pid) {
    proc_sample s;
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    if (!in) return s;
    s.alive = true;
    std::string line;
    auto number = [](const std::string& l) {
        const auto at = l.find_first_of("0123456789");
        return at == std::string::npos ? std::int64_t{-1} : std::stoll(l.substr(at));
    };
    while (std::getline(in, line)) {
        if (line.starts_with("VmRSS:")) s.rss_bytes = number(line) * 1024;
        else if (line.starts_with("VmHWM:")) s.hwm_bytes = number(line) * 1024;
        else if (line.starts_with("Threads:")) s.threads = number(line);
        else if (line.starts_with("State:") && line.find("Z (zombie)") != std::string::npos) s.alive = false;
    }
    std::error_code ec;
    std::int64_t fds = 0;
    for (fs::directory_iterator it(fmt::format("/proc/{}/fd", pid), ec), end; !ec && it != end; it.increment(ec)) ++fds;
    if (!ec) s.fds = fds;
    return s;
}

result<pid_t> socket_peer_pid(const std::string& path) {
    std::string error;
    unique_fd fd = connect_unix(path, error);
    if (fd.get() < 0) return make_error(errc::io, "{}", error);
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0)
        return make_error(errc::io, "cannot read the pid behind {} ({}); give --pid", path, std::strerror(errno));
    return cred.pid;
}

std::string exit_text(int status) {
    if (WIFEXITED(status)) return fmt::format("exit {}", WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return fmt::format("signal {} ({})", WTERMSIG(status), ::strsignal(WTERMSIG(status)));
    return fmt::format("status {}", status);
}

result<std::unique_ptr<daemon_process>> daemon_process::start(const std::string& moed_path,
                                                              const std::string& model_path,
                                                              const std::vector<std::string>& flags) {
    std::unique_ptr<daemon_process> d(new daemon_process());
    char dir_template[] = "/tmp/moed-soak-XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) return make_error(errc::io, "mkdtemp: {}", std::strerror(errno));
    d->dir_ = dir_template;
    d->socket_ = (d->dir_ / "moed.sock").string();
    d->log_ = d->dir_ / "moed.log";
    d->args_ = {moed_path, "--socket-path", d->socket_, "--daemon-state-dir", (d->dir_ / "state").string(),
                "--daemon-log-level", "warn"};
    if (!model_path.empty()) {
        d->args_.push_back("--model-path");
        d->args_.push_back(model_path);
    }
    d->args_.insert(d->args_.end(), flags.begin(), flags.end());
    std::error_code ec;
    fs::create_directories(d->dir_ / "state", ec);
    if (ec) return make_error(errc::io, "{}: {}", (d->dir_ / "state").string(), ec.message());
    std::vector<char*> argv;
    for (std::string& a : d->args_) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int log_fd = ::open(d->log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) return make_error(errc::io, "{}: {}", d->log_.string(), std::strerror(errno));
    d->pid_ = ::fork();
    if (d->pid_ == 0) {
        ::dup2(log_fd, STDOUT_FILENO);
        ::dup2(log_fd, STDERR_FILENO);
        ::execv(argv[0], argv.data());
        std::fprintf(stderr, "exec %s: %s\n", argv[0], std::strerror(errno));
        ::_exit(127);
    }
    const int fork_errno = errno;
    ::close(log_fd);  // the child holds its own copy
    if (d->pid_ < 0) return make_error(errc::io, "fork: {}", std::strerror(fork_errno));
    return d;
}

daemon_process::~daemon_process() {
    if (pid_ > 0 && !status_) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        ::waitpid(pid_, &status, 0);
    }
    std::error_code ec;
    fs::remove_all(dir_, ec);  // a leftover temporary folder is not worth failing over
}

std::optional<int> daemon_process::exited() {
    if (status_) return status_;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) status_ = status;
    return status_;
}

result<void> daemon_process::wait_ready() {
    const moed::client c(socket_);
    const auto deadline = clock_type::now() + daemon_start_timeout;
    while (clock_type::now() < deadline) {
        if (auto h = c.health(); h && *h == "ok") return {};
        if (auto s = exited()) {
            return make_error(errc::io, "moed exited while starting ({}); its log:\n{}", exit_text(*s),
                              tail_of(log_, log_tail_bytes));
        }
        std::this_thread::sleep_for(daemon_poll);
    }
    return make_error(errc::io, "moed did not answer /healthz within {} s; its log:\n{}", daemon_start_timeout.count(),
                      tail_of(log_, log_tail_bytes));
}

std::optional<int> daemon_process::stop() {
    if (!exited()) ::kill(pid_, SIGTERM);
    const auto deadline = clock_type::now() + daemon_stop_timeout;
    while (!exited() && clock_type::now() < deadline) std::this_thread::sleep_for(daemon_poll);
    if (status_) return status_;
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    status_ = status;
    return std::nullopt;
}

std::string daemon_process::log_tail() const { return tail_of(log_, log_tail_bytes); }

}  // namespace moed::bench::soak
