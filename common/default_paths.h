// Where moed keeps its socket and its state when the configuration names neither, and where
// a client looks for the socket when it is given none: one rule, compiled into both moed and
// libmoeclient, so the two sides agree.
//
// System scope (root, or a systemd service that has RuntimeDirectory= / StateDirectory=):
//   socket  $RUNTIME_DIRECTORY/moed.sock, else /run/moed/moed.sock
//   state   $STATE_DIRECTORY, else /var/lib/moed
// User scope (any other user, e.g. moed started from a shell without root):
//   socket  $XDG_RUNTIME_DIR/moed/moed.sock, else <user state dir>/moed.sock
//   state   $XDG_STATE_HOME/moed, else $HOME/.local/state/moed
// Only absolute values of the variables count (the XDG base directory specification says a
// relative one is invalid and must be ignored). Without any usable variable a user gets the
// system paths, and moed's own errors then say what it could not open.
//
// A client (moectl, libmoeclient) given no socket and no $MOED_SOCKET uses its user's daemon
// when that socket exists, else the system daemon's /run/moed/moed.sock; root always uses
// the system socket.
//
// Pure functions of a path_environment, so tests drive them without changing the process's
// environment or uid. Thread-safe; path_environment::of_process reads the environment.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace moed {

inline constexpr std::string_view system_socket_path = "/run/moed/moed.sock";
inline constexpr std::string_view system_state_dir = "/var/lib/moed";
// The socket file's name inside a runtime directory.
inline constexpr std::string_view socket_file_name = "moed.sock";

// What the resolution reads: the effective uid's rootness and six environment variables.
struct path_environment {
    bool root = false;              // effective uid 0
    std::string runtime_directory;  // $RUNTIME_DIRECTORY (systemd RuntimeDirectory=)
    std::string state_directory;    // $STATE_DIRECTORY (systemd StateDirectory=)
    std::string xdg_runtime_dir;    // $XDG_RUNTIME_DIR
    std::string xdg_state_home;     // $XDG_STATE_HOME
    std::string home;               // $HOME, else the passwd entry's home directory

    // The running process: geteuid() and its environment.
    static path_environment of_process();
};

enum class path_scope : std::uint8_t { system, user };

struct default_paths {
    path_scope scope = path_scope::system;
    std::string socket_path;
    std::string state_dir;
    // What chose each, for the log: "$XDG_RUNTIME_DIR", "$HOME", "systemd RuntimeDirectory=", "root"...
    std::string socket_from;
    std::string state_from;
};

// The daemon's defaults for socket.path and daemon.state_dir.
default_paths resolve_default_paths(const path_environment& env);

// The socket a client connects to when given none and $MOED_SOCKET is unset.
// `socket_exists` says whether a path names a socket file (injectable for tests).
std::string client_default_socket(const path_environment& env, bool (*socket_exists)(const std::string& path));
// The same with the real file system (stat).
std::string client_default_socket(const path_environment& env);

const char* path_scope_name(path_scope scope) noexcept;

}  // namespace moed
