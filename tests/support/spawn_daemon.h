// Starts a daemon process for a test as a user's shell would, but outside systemd: stdout
// and stderr go to `log`, and the systemd variables (NOTIFY_SOCKET, LISTEN_*, WATCHDOG_*)
// are removed from its environment so it neither notifies nor expects passed sockets.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace moed::test {

// argv[0] is the program's path. Returns posix_spawn's result (0, or an errno value);
// `pid` is the child's id, or -1 when it could not start.
int spawn_daemon(const std::vector<std::string>& argv, const std::filesystem::path& log, pid_t& pid);

}  // namespace moed::test
