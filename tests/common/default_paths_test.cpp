// Checks the default socket and state paths (common/default_paths.h) as pure functions of an
// environment: root and systemd services keep the system paths (or systemd's directories),
// any other user gets $XDG_RUNTIME_DIR / $XDG_STATE_HOME / ~/.local/state, relative values
// are ignored, and a client picks its user's socket only when that socket exists.
#include <gtest/gtest.h>

#include "common/default_paths.h"

namespace moed {
namespace {

path_environment user_env() {
    path_environment env;
    env.root = false;
    env.xdg_runtime_dir = "/run/user/1000";
    env.xdg_state_home = "/home/alice/.state";
    env.home = "/home/alice";
    return env;
}

TEST(default_paths, root_gets_the_system_paths) {
    path_environment env = user_env();  // XDG variables of a root shell do not count
    env.root = true;
    const default_paths p = resolve_default_paths(env);
    EXPECT_EQ(p.scope, path_scope::system);
    EXPECT_EQ(p.socket_path, "/run/moed/moed.sock");
    EXPECT_EQ(p.state_dir, "/var/lib/moed");
    EXPECT_EQ(p.socket_from, "root");
}

TEST(default_paths, a_systemd_service_gets_its_directories) {
    path_environment env = user_env();  // User=moed: not root
    env.runtime_directory = "/run/moed";
    env.state_directory = "/var/lib/moed:/var/lib/other";
    const default_paths p = resolve_default_paths(env);
    EXPECT_EQ(p.scope, path_scope::system);
    EXPECT_EQ(p.socket_path, "/run/moed/moed.sock");
    EXPECT_EQ(p.state_dir, "/var/lib/moed");
    EXPECT_NE(p.socket_from.find("RuntimeDirectory"), std::string::npos);
    EXPECT_NE(p.state_from.find("StateDirectory"), std::string::npos);
}

TEST(default_paths, a_user_gets_xdg_directories) {
    const default_paths p = resolve_default_paths(user_env());
    EXPECT_EQ(p.scope, path_scope::user);
    EXPECT_EQ(p.socket_path, "/run/user/1000/moed/moed.sock");
    EXPECT_EQ(p.state_dir, "/home/alice/.state/moed");
    EXPECT_EQ(p.socket_from, "$XDG_RUNTIME_DIR");
    EXPECT_EQ(p.state_from, "$XDG_STATE_HOME");
}

TEST(default_paths, a_user_without_xdg_variables_uses_home) {
    path_environment env = user_env();
    env.xdg_runtime_dir.clear();
    env.xdg_state_home = "relative/state";  // invalid by the XDG specification: ignored
    env.home = "/home/alice/";
    const default_paths p = resolve_default_paths(env);
    EXPECT_EQ(p.scope, path_scope::user);
    EXPECT_EQ(p.state_dir, "/home/alice/.local/state/moed");
    EXPECT_EQ(p.socket_path, "/home/alice/.local/state/moed/moed.sock");
    EXPECT_EQ(p.state_from, "$HOME");
}

TEST(default_paths, a_user_with_nothing_usable_falls_back_to_the_system_paths) {
    path_environment env;
    env.home = "nowhere";
    const default_paths p = resolve_default_paths(env);
    EXPECT_EQ(p.scope, path_scope::system);
    EXPECT_EQ(p.socket_path, "/run/moed/moed.sock");
    EXPECT_EQ(p.state_dir, "/var/lib/moed");
}

std::string existing_socket;
bool exists_stub(const std::string& path) { return path == existing_socket; }

TEST(default_paths, client_prefers_its_users_running_daemon) {
    const path_environment env = user_env();
    existing_socket = "/run/user/1000/moed/moed.sock";
    EXPECT_EQ(client_default_socket(env, exists_stub), "/run/user/1000/moed/moed.sock");
    existing_socket.clear();
    EXPECT_EQ(client_default_socket(env, exists_stub), "/run/moed/moed.sock");

    // The client and the daemon agree on the user's socket without $XDG_RUNTIME_DIR too.
    path_environment no_runtime = env;
    no_runtime.xdg_runtime_dir.clear();
    existing_socket = resolve_default_paths(no_runtime).socket_path;
    EXPECT_EQ(client_default_socket(no_runtime, exists_stub), existing_socket);

    // A client inside some service: systemd's directories are that service's, not moed's.
    path_environment in_service = env;
    in_service.runtime_directory = "/run/other";
    existing_socket = "/run/other/moed.sock";
    EXPECT_EQ(client_default_socket(in_service, exists_stub), "/run/moed/moed.sock");
}

TEST(default_paths, root_client_uses_the_system_socket) {
    path_environment env = user_env();
    env.root = true;
    existing_socket = "/run/user/1000/moed/moed.sock";
    EXPECT_EQ(client_default_socket(env, exists_stub), "/run/moed/moed.sock");
}

}  // namespace
}  // namespace moed
