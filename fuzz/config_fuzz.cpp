// Fuzzes moed's configuration (daemon/config.cpp): the TOML file and the command line. The
// input is TOML text, optionally followed by a NUL byte and command-line arguments separated
// by NUL bytes. The text goes through apply_toml and validate; the arguments through
// parse_command_line, then load_config reads the text from a file in memory (whatever
// --config the arguments name: the fuzzer must not open files of its own choosing) and
// applies the flags over it. Either may refuse; neither may crash, and a config it accepts
// passes validate.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/log.h"
#include "daemon/config.h"
#include "fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::off);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace moed;
    static fuzz::memory_file file("config-fuzz");
    const std::string_view input(reinterpret_cast<const char*>(data), size);
    const std::size_t split = input.find('\0');
    const std::string_view toml = input.substr(0, split);

    daemon::daemon_config config;
    if (daemon::apply_toml(config, toml, "fuzz.toml")) ignore_error(daemon::validate(config));

    if (split == std::string_view::npos) return 0;
    std::vector<std::string> args{"moed"};
    std::string_view rest = input.substr(split + 1);
    for (;;) {
        const std::size_t end = rest.find('\0');
        args.emplace_back(rest.substr(0, end));
        if (end == std::string_view::npos) break;
        rest.remove_prefix(end + 1);
    }
    std::vector<const char*> argv;
    for (const auto& a : args) argv.push_back(a.c_str());
    auto cmd = daemon::parse_command_line(static_cast<int>(argv.size()), argv.data());
    if (!cmd) return 0;
    for (const auto& [key, value] : cmd->overrides)
        MOED_FUZZ_CHECK(daemon::flag_for_key(key).starts_with("--"), "flag of key '{}'", key);
    cmd->config_path = file.path();
    file.assign({data, toml.size()});
    if (auto loaded = daemon::load_config(*cmd); loaded) {
        auto valid = daemon::validate(*loaded);
        MOED_FUZZ_CHECK(valid.has_value(), "load_config accepted a config validate refuses");
    }
    return 0;
}
