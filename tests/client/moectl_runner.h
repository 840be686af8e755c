// Runs the built moectl as a script would: arguments, optional MOED_SOCKET and stdin; its
// exit code, stdout and stderr. Shared by the moectl tests.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

extern char** environ;

namespace moed::test {

struct moectl_result {
    int exit_code = -1;
    std::string out;
    std::string err;
};

// Called after each read of moectl's stdout with everything read so far. Returning false
// closes the read end of the pipe, as a reader that went away (`moectl ... | head -c 5`);
// the test may also act on the daemon at that moment (a signal once text has arrived).
using stdout_watch = std::function<bool(const std::string& out_so_far)>;

// `socket_env` non-empty sets MOED_SOCKET, empty removes it.
inline moectl_result run_moectl(const std::vector<std::string>& args, const std::string& socket_env = {},
                                const std::string& stdin_text = {}, const stdout_watch& watch = {}) {
    const std::string binary = std::string(MOED_BINARY_DIR) + "/client/moectl";
    int out_pipe[2], err_pipe[2], in_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0 || ::pipe2(in_pipe, O_CLOEXEC) != 0) {
        ADD_FAILURE() << "pipe failed";
        return {};
    }
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(binary.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    // Built before fork: a fake server's thread may hold the malloc lock at that moment, so
    // the child calls only async-signal-safe functions.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
        if (std::string_view(*e).rfind("MOED_SOCKET=", 0) != 0) env_strings.emplace_back(*e);
    }
    if (!socket_env.empty()) env_strings.push_back("MOED_SOCKET=" + socket_env);
    std::vector<char*> envp;
    for (std::string& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
        ::dup2(in_pipe[0], 0);
        ::dup2(out_pipe[1], 1);
        ::dup2(err_pipe[1], 2);
        ::execve(binary.c_str(), argv.data(), envp.data());
        ::_exit(127);
    }
    ::close(in_pipe[0]);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    if (!stdin_text.empty()) {
        const ssize_t n = ::write(in_pipe[1], stdin_text.data(), stdin_text.size());
        EXPECT_EQ(n, static_cast<ssize_t>(stdin_text.size()));
    }
    ::close(in_pipe[1]);
    moectl_result r;
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    std::string* sinks[2] = {&r.out, &r.err};
    int open_fds = 2;
    while (open_fds > 0) {
        if (::poll(fds, 2, -1) < 0) break;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) continue;
            char buf[4096];
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n > 0) {
                sinks[i]->append(buf, static_cast<std::size_t>(n));
                if (i == 0 && watch && !watch(r.out)) {
                    ::close(fds[i].fd);
                    fds[i].fd = -1;
                    --open_fds;
                }
            } else {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
            }
        }
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

}  // namespace moed::test
