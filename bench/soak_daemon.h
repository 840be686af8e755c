// The daemon side of bench/soak: reading a process's memory, threads and descriptors from
// /proc, finding the pid behind a Unix socket, and a moed started for the run (on a
// temporary socket and state folder, logging to a file there) that is stopped with SIGTERM.
// Threads: daemon_process is used from the main thread only; read_proc from any.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"

namespace moed::bench::soak {

struct proc_sample {
    bool alive = false;  // the process exists and is not a zombie
    std::int64_t rss_bytes = -1;  // VmRSS (-1: not read)
    std::int64_t hwm_bytes = -1;  // VmHWM, the peak RSS
    std::int64_t threads = -1;
    std::int64_t fds = -1;  // entries of /proc/PID/fd (-1: not readable)
};

proc_sample read_proc(pid_t pid);

// The pid of the process listening on a Unix socket (SO_PEERCRED of a connection to it).
result<pid_t> socket_peer_pid(const std::string& path);

// "exit 0", "signal 9 (Killed)": a wait status in words.
std::string exit_text(int status);

class daemon_process {
public:
    // Forks and execs `moed_path` with a temporary socket and state folder, `model_path`
    // (empty: moed's default) and then `flags` (so they override ours).
    static result<std::unique_ptr<daemon_process>> start(const std::string& moed_path, const std::string& model_path,
                                                         const std::vector<std::string>& flags);
    daemon_process(const daemon_process&) = delete;
    daemon_process& operator=(const daemon_process&) = delete;
    // Kills a daemon still running (after a failed run; a clean one was stop()ped) and
    // removes the temporary folder.
    ~daemon_process();

    pid_t pid() const noexcept { return pid_; }
    const std::string& socket() const noexcept { return socket_; }
    // The flags it was started with (without the program).
    std::vector<std::string> flags() const { return {args_.begin() + 1, args_.end()}; }

    // Its wait status once it has exited (reaped here), else none.
    std::optional<int> exited();
    // Waits until /healthz answers "ok"; an error with the log's tail when it exits first or
    // does not answer in time.
    result<void> wait_ready();
    // SIGTERM, then waits for the exit: its wait status, or none when it did not exit in
    // time (it is killed then).
    std::optional<int> stop();
    std::string log_tail() const;

private:
    daemon_process() = default;

    std::filesystem::path dir_;
    std::filesystem::path log_;
    std::string socket_;
    std::vector<std::string> args_;
    pid_t pid_ = -1;
    std::optional<int> status_;
};

}  // namespace moed::bench::soak
