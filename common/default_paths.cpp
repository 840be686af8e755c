#include "common/default_paths.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

namespace moed {

namespace {

std::string env_or_empty(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr ? std::string(v) : std::string();
}

// systemd passes a colon-separated list when a unit names several directories; moed's unit
// names one, and the first is the one that holds moed's files.
std::string first_absolute(std::string_view list) {
    const auto colon = list.find(':');
    const std::string_view first = list.substr(0, colon);
    if (first.empty() || first.front() != '/') return {};
    return std::string(first);
}

std::string join(std::string_view dir, std::string_view name) {
    std::string out(dir);
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    if (out != "/") out += '/';
    out += name;
    return out;
}

// The user's state directory and what chose it; empty when no variable is usable.
std::pair<std::string, std::string> user_state_dir(const path_environment& env) {
    if (auto d = first_absolute(env.xdg_state_home); !d.empty()) return {join(d, "moed"), "$XDG_STATE_HOME"};
    if (auto h = first_absolute(env.home); !h.empty()) return {join(h, ".local/state/moed"), "$HOME"};
    return {};
}

std::pair<std::string, std::string> user_socket(const path_environment& env) {
    if (auto d = first_absolute(env.xdg_runtime_dir); !d.empty())
        return {join(join(d, "moed"), socket_file_name), "$XDG_RUNTIME_DIR"};
    if (auto [state, from] = user_state_dir(env); !state.empty()) return {join(state, socket_file_name), from};
    return {};
}

bool is_socket(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

}  // namespace

path_environment path_environment::of_process() {
    path_environment env;
    env.root = ::geteuid() == 0;
    env.runtime_directory = env_or_empty("RUNTIME_DIRECTORY");
    env.state_directory = env_or_empty("STATE_DIRECTORY");
    env.xdg_runtime_dir = env_or_empty("XDG_RUNTIME_DIR");
    env.xdg_state_home = env_or_empty("XDG_STATE_HOME");
    env.home = env_or_empty("HOME");
    if (env.home.empty()) {
        // getpwuid_r with a buffer of the size sysconf suggests (at most 64 KiB).
        long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
        if (size <= 0 || size > 65536) size = 16384;
        std::vector<char> buf(static_cast<std::size_t>(size));
        passwd pw{};
        passwd* found = nullptr;
        if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr &&
            found->pw_dir != nullptr)
            env.home = found->pw_dir;
    }
    return env;
}

default_paths resolve_default_paths(const path_environment& env) {
    default_paths out;
    const std::string runtime = first_absolute(env.runtime_directory);
    const std::string state = first_absolute(env.state_directory);
    // A systemd service with its own directories, or root: the system paths (or systemd's).
    if (env.root || !runtime.empty() || !state.empty()) {
        out.scope = path_scope::system;
        const char* who = env.root ? "root" : "systemd";
        if (!runtime.empty()) {
            out.socket_path = join(runtime, socket_file_name);
            out.socket_from = "systemd RuntimeDirectory= ($RUNTIME_DIRECTORY)";
        } else {
            out.socket_path = std::string(system_socket_path);
            out.socket_from = who;
        }
        if (!state.empty()) {
            out.state_dir = state;
            out.state_from = "systemd StateDirectory= ($STATE_DIRECTORY)";
        } else {
            out.state_dir = std::string(system_state_dir);
            out.state_from = who;
        }
        return out;
    }
    auto [state_dir, state_from] = user_state_dir(env);
    auto [socket, socket_from] = user_socket(env);
    if (state_dir.empty() || socket.empty()) {
        // No usable home or XDG directory: nothing user-writable is known.
        out.scope = path_scope::system;
        out.socket_path = socket.empty() ? std::string(system_socket_path) : socket;
        out.socket_from = socket.empty() ? "no $XDG_RUNTIME_DIR or $HOME" : socket_from;
        out.state_dir = state_dir.empty() ? std::string(system_state_dir) : state_dir;
        out.state_from = state_dir.empty() ? "no $XDG_STATE_HOME or $HOME" : state_from;
        return out;
    }
    out.scope = path_scope::user;
    out.socket_path = std::move(socket);
    out.socket_from = std::move(socket_from);
    out.state_dir = std::move(state_dir);
    out.state_from = std::move(state_from);
    return out;
}

std::string client_default_socket(const path_environment& env, bool (*socket_exists)(const std::string& path)) {
    if (!env.root) {
        // A client is not the service: systemd's directories of whatever runs it say nothing
        // about where moed is.
        auto [socket, from] = user_socket(env);
        if (!socket.empty() && socket_exists(socket)) return socket;
    }
    return std::string(system_socket_path);
}

std::string client_default_socket(const path_environment& env) { return client_default_socket(env, is_socket); }

const char* path_scope_name(path_scope scope) noexcept {
    switch (scope) {
        case path_scope::system: return "system";
        case path_scope::user: return "user";
    }
    return "unknown";
}

}  // namespace moed
