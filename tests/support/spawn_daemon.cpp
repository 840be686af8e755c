#include "tests/support/spawn_daemon.h"

#include <fcntl.h>
#include <spawn.h>

#include <string_view>

extern char** environ;

namespace moed::test {

int spawn_daemon(const std::vector<std::string>& argv, const std::filesystem::path& log, pid_t& pid) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 2, 1);
    std::vector<char*> cargv;
    for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
    cargv.push_back(nullptr);
    std::vector<std::string> env_store;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view v(*e);
        if (v.starts_with("NOTIFY_SOCKET=") || v.starts_with("LISTEN_FDS=") || v.starts_with("LISTEN_PID=") ||
            v.starts_with("LISTEN_FDNAMES=") || v.starts_with("WATCHDOG_USEC=") || v.starts_with("WATCHDOG_PID=")) {
            continue;
        }
        env_store.emplace_back(v);
    }
    std::vector<char*> cenv;
    for (auto& e : env_store) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid, argv[0].c_str(), &actions, nullptr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) pid = -1;
    return rc;
}

}  // namespace moed::test
