// Installs the client, moectl, daemon and systemd components with `cmake --install` into a
// temporary prefix and uses the result as an outside project would: the expected files are
// there (library with its SONAME link, headers, CMake package, pkg-config file, moectl, moed,
// units), the installed moed.service runs the installed moed (ExecStart inside the prefix,
// whatever prefix the build was configured with), does not restart on a config error and
// sets a umask, and `systemd-analyze verify` accepts the installed units as they are
// (skipped with a reason without systemd-analyze),
// both public headers compile on their own (C++17 and C99, no include path but the
// prefix's), and two consumers build and run against the installed library, one through
// find_package(moedclient) and one through pkg-config. Skipped in sanitizer builds (an
// instrumented library cannot be linked by an uninstrumented consumer).
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
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

std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) {
        if (c == '\'') q += "'\\''";
        else q += c;
    }
    return q + "'";
}

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

void write_file(const fs::path& path, const std::string& text) {
    fs::create_directories(path.parent_path());
    std::ofstream(path) << text;
}

// A consumer using both APIs; run against a socket nobody listens on, it must report
// "not running" through each.
constexpr const char* consumer_source = R"(#include <moed/client.h>
#include <moed/client.hpp>
#include <cstdio>
int main(int argc, char** argv) {
    moed::client c(argc > 1 ? argv[1] : "");
    auto h = c.health();
    moe_client* cc = moe_client_open(argc > 1 ? argv[1] : nullptr);
    const int code = moe_health(cc);
    std::printf("%s|%s|%s|%s\n", moed::client_version(), h ? "up" : moed::client_errc_name(h.error().code),
                moe_strerror(code), moe_last_error(cc));
    moe_client_close(cc);
    return h ? 1 : 0;
}
)";

class install : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        prefix_ = moed::test::temp_dir() / "prefix";
        fs::remove_all(prefix_);
        for (const char* component : {"client", "moectl", "daemon", "systemd"}) {
            const shell_result r = shell(quote(MOED_CMAKE_COMMAND) + " --install " + quote(MOED_BINARY_DIR) +
                                         " --prefix " + quote(prefix_.string()) + " --component " + component);
            install_ok_ = install_ok_ && r.exit_code == 0;
            install_log_ += r.output;
        }
    }

    void SetUp() override { ASSERT_TRUE(install_ok_) << install_log_; }

    static fs::path prefix_;
    static bool install_ok_;
    static std::string install_log_;
};

fs::path install::prefix_;
bool install::install_ok_ = true;
std::string install::install_log_;

TEST_F(install, layout) {
    const fs::path p = prefix_;
    for (const char* f : {"include/moed/client.hpp", "include/moed/client.h", "lib/libmoeclient.so.0.2.0",
                          "lib/cmake/moedclient/moedclientConfig.cmake",
                          "lib/cmake/moedclient/moedclientConfigVersion.cmake",
                          "lib/cmake/moedclient/moedclientTargets.cmake", "lib/pkgconfig/libmoeclient.pc",
                          "bin/moectl", "sbin/moed", "lib/systemd/system/moed.service", "lib/systemd/system/moed.socket",
                          "lib/sysusers.d/moed.conf", "lib/tmpfiles.d/moed.conf"}) {
        EXPECT_TRUE(fs::exists(p / f)) << f << " missing; installed:\n" << install_log_;
    }
    // The development link and the SONAME link.
    EXPECT_TRUE(fs::is_symlink(p / "lib/libmoeclient.so"));
    EXPECT_TRUE(fs::is_symlink(p / "lib/libmoeclient.so.0"));
    EXPECT_EQ(fs::read_symlink(p / "lib/libmoeclient.so.0"), "libmoeclient.so.0.2.0");
    const shell_result soname = shell("readelf -d " + quote((p / "lib/libmoeclient.so.0.2.0").string()));
    if (soname.exit_code == 0) {
        EXPECT_NE(soname.output.find("[libmoeclient.so.0]"), std::string::npos) << soname.output;
    }
    // Symbols added after 0.1 carry the node of their release, the older ones keep theirs, so
    // a program built against 0.1 runs unchanged and one that needs 0.2 is refused at start by
    // a 0.1 library.
    const shell_result syms = shell("readelf --dyn-syms -W " + quote((p / "lib/libmoeclient.so.0.2.0").string()) +
                                    " | c++filt");
    if (syms.exit_code == 0) {
        EXPECT_NE(syms.output.find("moed::client::status() const@@MOECLIENT_0\n"), std::string::npos) << syms.output;
        EXPECT_NE(syms.output.find("moed::client::status(moed::daemon_status_extra&) const@@MOECLIENT_0.2\n"),
                  std::string::npos)
            << syms.output;
    }
    // Only the public headers are installed.
    std::size_t headers = 0;
    for (const auto& e : fs::recursive_directory_iterator(p / "include")) headers += e.is_regular_file();
    EXPECT_EQ(headers, 2u);
    // The installed moectl runs (it links the client statically).
    const shell_result help = shell(quote((p / "bin/moectl").string()) + " --version");
    EXPECT_EQ(help.exit_code, 0) << help.output;
}

std::string read_text(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
}

TEST_F(install, installed_units_run_the_installed_moed) {
    const fs::path units = prefix_ / "lib/systemd/system";
    const std::string service = read_text(units / "moed.service");
    ASSERT_FALSE(service.empty()) << "no installed moed.service; installed:\n" << install_log_;
    // The test's prefix is not the configured CMAKE_INSTALL_PREFIX: the unit must still name
    // the moed of this install.
    const std::string moed = (prefix_ / "sbin/moed").string();
    EXPECT_NE(service.find("\nExecStart=" + moed + " --config /etc/moed/moed.toml\n"), std::string::npos) << service;
    EXPECT_EQ(::access(moed.c_str(), X_OK), 0) << moed << " is not installed";
    EXPECT_TRUE(fs::exists(prefix_ / "share/moed/models/tinymoe-qwen3moe-Q4_K_M.gguf"));
    EXPECT_TRUE(fs::exists(prefix_ / "share/moed/moed.toml.example"));
    for (const char* want : {"\nRestartPreventExitStatus=2\n", "\nUMask=0027\n", "\nRestart=on-failure\n"})
        EXPECT_NE(service.find(want), std::string::npos) << "installed moed.service lacks " << want;
    const shell_result version = shell(quote(moed) + " --version");
    EXPECT_EQ(version.exit_code, 0) << version.output;

    if (shell("command -v systemd-analyze").exit_code != 0)
        GTEST_SKIP() << "systemd-analyze is not installed (package systemd): the units were not verified";
    const shell_result verify = shell("systemd-analyze verify --man=no " + quote((units / "moed.service").string()) +
                                      " " + quote((units / "moed.socket").string()));
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    std::istringstream lines(verify.output);
    for (std::string line; std::getline(lines, line);) {
        EXPECT_TRUE(line.find("moed.service") == std::string::npos && line.find("moed.socket") == std::string::npos)
            << "systemd-analyze verify complained about the installed units:\n" << verify.output;
    }
}

TEST_F(install, headers_compile_standalone) {
    const std::string include = "-I" + quote((prefix_ / "include").string());
    const shell_result cxx = shell("echo '#include <moed/client.hpp>' | " + quote(MOED_CXX_COMPILER) +
                                   " -std=c++17 -fsyntax-only -Wall -Wextra -Wshadow -Werror -pedantic " + include +
                                   " -x c++ -");
    EXPECT_EQ(cxx.exit_code, 0) << cxx.output;
    const shell_result c = shell("echo '#include <moed/client.h>' | " + quote(MOED_C_COMPILER) +
                                 " -std=c99 -fsyntax-only -Wall -Wextra -Werror -pedantic " + include + " -x c -");
    EXPECT_EQ(c.exit_code, 0) << c.output;
}

TEST_F(install, find_package_consumer) {
    if (std::string(MOED_SANITIZE) != "") GTEST_SKIP() << "sanitizer build: the installed library is instrumented";
    const fs::path dir = moed::test::temp_dir() / "cmake-consumer";
    fs::remove_all(dir);
    write_file(dir / "main.cpp", consumer_source);
    write_file(dir / "CMakeLists.txt", "cmake_minimum_required(VERSION 3.16)\nproject(consumer CXX)\n"
                                       "find_package(moedclient 0.1 REQUIRED)\n"
                                       "add_executable(consumer main.cpp)\n"
                                       "target_link_libraries(consumer PRIVATE moed::client)\n");
    const shell_result configure =
        shell(quote(MOED_CMAKE_COMMAND) + " -S " + quote(dir.string()) + " -B " + quote((dir / "build").string()) +
              " -G " + quote(MOED_CMAKE_GENERATOR) + " -DCMAKE_CXX_COMPILER=" + quote(MOED_CXX_COMPILER) +
              " -DCMAKE_PREFIX_PATH=" + quote(prefix_.string()));
    ASSERT_EQ(configure.exit_code, 0) << configure.output;
    const shell_result build = shell(quote(MOED_CMAKE_COMMAND) + " --build " + quote((dir / "build").string()));
    ASSERT_EQ(build.exit_code, 0) << build.output;
    const std::string missing = (moed::test::temp_dir() / "consumer-missing.sock").string();
    const shell_result run = shell(quote((dir / "build/consumer").string()) + " " + quote(missing));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_EQ(run.output, "0.2.0|not_running|not_running|moed is not running: cannot connect to " + missing +
                              " (No such file or directory)\n");
}

TEST_F(install, pkg_config_consumer) {
    if (std::string(MOED_SANITIZE) != "") GTEST_SKIP() << "sanitizer build: the installed library is instrumented";
    if (shell("pkg-config --version").exit_code != 0) GTEST_SKIP() << "pkg-config is not installed";
    const std::string env = "PKG_CONFIG_PATH=" + quote((prefix_ / "lib/pkgconfig").string()) + " ";
    const shell_result version = shell(env + "pkg-config --modversion libmoeclient");
    ASSERT_EQ(version.exit_code, 0) << version.output;
    EXPECT_EQ(version.output, "0.2.0\n");
    const shell_result libdir = shell(env + "pkg-config --variable=libdir libmoeclient");
    ASSERT_EQ(libdir.exit_code, 0);
    std::string lib = libdir.output;
    while (!lib.empty() && lib.back() == '\n') lib.pop_back();

    const fs::path dir = moed::test::temp_dir() / "pc-consumer";
    fs::create_directories(dir);
    write_file(dir / "main.cpp", consumer_source);
    const std::string exe = (dir / "consumer").string();
    const shell_result build = shell(quote(MOED_CXX_COMPILER) + " -std=c++17 " + quote((dir / "main.cpp").string()) +
                                     " -o " + quote(exe) + " $(" + env + "pkg-config --cflags --libs libmoeclient)" +
                                     " -Wl,-rpath," + quote(lib));
    ASSERT_EQ(build.exit_code, 0) << build.output;
    const std::string missing = (moed::test::temp_dir() / "pc-missing.sock").string();
    const shell_result run = shell(quote(exe) + " " + quote(missing));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("0.2.0|not_running|not_running|moed is not running"), std::string::npos) << run.output;
}

}  // namespace
