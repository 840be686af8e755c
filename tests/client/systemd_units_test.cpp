// Checks the systemd files under systemd/: `systemd-analyze verify` accepts moed.service
// (as generated into the build tree) and moed.socket without a single message about them,
// and reports a deliberately broken copy (so a clean run means something); the service
// has the settings the design asks for; its system-call filter, expanded group by group
// with `systemd-analyze syscall-filter`, allows io_uring_setup/enter/register, mlock and
// mbind; and, as root, systemd-sysusers and systemd-tmpfiles apply the snippets to a
// scratch root (user and group moed, /run/moed and /var/lib/moed owned by them).
//
// verify needs ExecStart's program to exist: the copy it checks runs the built daemon
// (build/daemon/moed) when it exists, else a stand-in script; only the path changes.
// Skipped with a reason where systemd-analyze is absent.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/test_paths.h"

namespace {

namespace fs = std::filesystem;

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

std::string read_file(const fs::path& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

bool have(const char* tool) { return shell(std::string("command -v ") + tool).exit_code == 0; }

const fs::path unit_build_dir = fs::path(MOED_BINARY_DIR) / "systemd";

// The source tree's systemd/ (MOED_MODELS_DIR is <source>/models).
fs::path systemd_source_dir() { return fs::path(MOED_MODELS_DIR).parent_path() / "systemd"; }

// A copy of the generated units in `dir` with ExecStart's program replaced by one that
// exists here; returns the service path. `extra` is appended to [Service] (for the broken copy).
fs::path stage_units(const fs::path& dir, const std::string& extra = {}) {
    fs::create_directories(dir);
    std::string program = std::string(MOED_BINARY_DIR) + "/daemon/moed";
    if (::access(program.c_str(), X_OK) != 0) {
        program = (dir / "moed-stand-in").string();
        std::ofstream(program) << "#!/bin/sh\nexit 0\n";
        fs::permissions(program, fs::perms::owner_all);
    }
    std::string service = read_file(unit_build_dir / "moed.service");
    const std::size_t exec = service.find("\nExecStart=");
    EXPECT_NE(exec, std::string::npos) << "moed.service has no ExecStart";
    if (exec != std::string::npos) {
        const std::size_t from = exec + std::string("\nExecStart=").size();
        service.replace(from, service.find_first_of(" \n", from) - from, program);
    }
    if (!extra.empty()) {
        const std::string anchor = "[Service]\n";
        service.insert(service.find(anchor) + anchor.size(), extra);
    }
    std::ofstream(dir / "moed.service") << service;
    fs::copy_file(unit_build_dir / "moed.socket", dir / "moed.socket", fs::copy_options::overwrite_existing);
    return dir / "moed.service";
}

// verify's messages that name our units.
std::vector<std::string> messages_about_our_units(const std::string& output) {
    std::vector<std::string> lines;
    std::istringstream in(output);
    for (std::string line; std::getline(in, line);) {
        if (line.find("moed.service") != std::string::npos || line.find("moed.socket") != std::string::npos) {
            lines.push_back(line);
        }
    }
    return lines;
}

shell_result verify(const fs::path& dir) {
    return shell("cd '" + dir.string() + "' && systemd-analyze verify --man=no ./moed.service ./moed.socket");
}

TEST(systemd_units, verify_passes_cleanly) {
    if (!have("systemd-analyze")) GTEST_SKIP() << "systemd-analyze is not installed (package systemd)";
    const fs::path dir = moed::test::temp_dir() / "units";
    stage_units(dir);
    const shell_result r = verify(dir);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    const auto ours = messages_about_our_units(r.output);
    EXPECT_TRUE(ours.empty()) << "systemd-analyze verify complained:\n" << r.output;
}

TEST(systemd_units, verify_reports_a_broken_copy) {
    if (!have("systemd-analyze")) GTEST_SKIP() << "systemd-analyze is not installed (package systemd)";
    const fs::path dir = moed::test::temp_dir() / "units-broken";
    stage_units(dir, "NoSuchSetting=1\nProtectSystem=sometimes\n");
    const shell_result r = verify(dir);
    const auto ours = messages_about_our_units(r.output);
    EXPECT_GE(ours.size(), 2u) << "the check cannot see errors; output:\n" << r.output;
}

TEST(systemd_units, service_and_socket_settings) {
    const std::string service = read_file(unit_build_dir / "moed.service");
    const std::string socket = read_file(unit_build_dir / "moed.socket");
    for (const char* want :
         {"Type=notify\n", "/sbin/moed --config /etc/moed/moed.toml\n", "User=moed\n", "Group=moed\n",
          "LimitMEMLOCK=infinity\n", "WatchdogSec=", "NoNewPrivileges=yes\n", "ProtectSystem=strict\n",
          "ProtectHome=yes\n", "PrivateTmp=yes\n", "StateDirectory=moed\n", "RuntimeDirectory=moed\n",
          "ConfigurationDirectory=moed\n", "ProtectKernelTunables=yes\n", "RestrictAddressFamilies=AF_UNIX\n",
          "Requires=moed.socket\n", "WantedBy=multi-user.target\n", "RestartPreventExitStatus=2\n",
          "UMask=0027\n"}) {
        EXPECT_NE(service.find(want), std::string::npos) << "moed.service lacks " << want;
    }
    for (const char* want : {"ListenStream=/run/moed/moed.sock\n", "SocketMode=0660\n", "SocketGroup=moed\n",
                             "WantedBy=sockets.target\n"}) {
        EXPECT_NE(socket.find(want), std::string::npos) << "moed.socket lacks " << want;
    }
}

// The names a filter entry stands for, groups expanded recursively.
void expand(const std::string& entry, std::set<std::string>& out, std::set<std::string>& seen) {
    if (entry.empty() || entry[0] != '@') {
        out.insert(entry);
        return;
    }
    if (!seen.insert(entry).second) return;
    const shell_result r = shell("systemd-analyze syscall-filter " + entry);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::istringstream in(r.output);
    std::string line;
    std::getline(in, line);  // the group's own name
    while (std::getline(in, line)) {
        const auto start = line.find_first_not_of(' ');
        if (start == std::string::npos || line[start] == '#') continue;
        expand(line.substr(start), out, seen);
    }
}

TEST(systemd_units, system_call_filter_keeps_io_uring) {
    if (!have("systemd-analyze")) GTEST_SKIP() << "systemd-analyze is not installed (package systemd)";
    const std::string service = read_file(unit_build_dir / "moed.service");
    std::set<std::string> allowed, denied, seen;
    bool any_filter = false;
    std::istringstream in(service);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind("SystemCallFilter=", 0) != 0) continue;
        any_filter = true;
        std::string value = line.substr(std::string("SystemCallFilter=").size());
        const bool deny = !value.empty() && value[0] == '~';
        if (deny) value.erase(0, 1);
        std::istringstream entries(value);
        for (std::string e; entries >> e;) expand(e, deny ? denied : allowed, seen);
    }
    if (!any_filter) GTEST_SKIP() << "no SystemCallFilter in moed.service: nothing can block io_uring";
    for (const char* call : {"io_uring_setup", "io_uring_enter", "io_uring_register", "mlock", "mbind",
                             "set_mempolicy", "sched_setaffinity", "ioctl", "eventfd2", "epoll_wait"}) {
        EXPECT_TRUE(allowed.count(call) == 1 && denied.count(call) == 0) << call << " is not allowed";
    }
}

TEST(systemd_units, sysusers_and_tmpfiles_apply) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (systemd-tmpfiles chowns to the moed user)";
    if (!have("systemd-sysusers") || !have("systemd-tmpfiles")) GTEST_SKIP() << "systemd-sysusers/tmpfiles absent";
    const fs::path root = moed::test::temp_dir() / "sysroot";
    fs::remove_all(root);
    fs::create_directories(root / "etc");
    const fs::path src = systemd_source_dir();
    const shell_result users = shell("systemd-sysusers --root='" + root.string() + "' '" +
                                     (src / "sysusers.d/moed.conf").string() + "'");
    ASSERT_EQ(users.exit_code, 0) << users.output;
    // moed:x:UID:GID:GECOS:/var/lib/moed:SHELL
    std::vector<std::string> fields;
    {
        std::istringstream passwd(read_file(root / "etc/passwd"));
        for (std::string line; std::getline(passwd, line);) {
            if (line.rfind("moed:", 0) != 0) continue;
            std::istringstream parts(line);
            for (std::string f; std::getline(parts, f, ':');) fields.push_back(f);
        }
    }
    ASSERT_EQ(fields.size(), 7u) << read_file(root / "etc/passwd");
    EXPECT_EQ(fields[5], "/var/lib/moed");
    const unsigned uid = static_cast<unsigned>(std::stoul(fields[2]));
    const unsigned gid = static_cast<unsigned>(std::stoul(fields[3]));
    EXPECT_NE(read_file(root / "etc/group").find("moed:x:" + std::to_string(gid) + ":"), std::string::npos);

    const shell_result dirs = shell("systemd-tmpfiles --root='" + root.string() + "' --create '" +
                                    (src / "tmpfiles.d/moed.conf").string() + "'");
    ASSERT_EQ(dirs.exit_code, 0) << dirs.output;
    for (const auto& [path, mode] : {std::pair{"run/moed", 0755u}, std::pair{"var/lib/moed", 0750u}}) {
        struct stat st{};
        ASSERT_EQ(::stat((root / path).c_str(), &st), 0) << path;
        EXPECT_TRUE(S_ISDIR(st.st_mode)) << path;
        EXPECT_EQ(st.st_mode & 07777, mode) << path;
        EXPECT_EQ(st.st_uid, uid) << path;
        EXPECT_EQ(st.st_gid, gid) << path;
    }
}

}  // namespace
