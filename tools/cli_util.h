// Small helpers shared by the command-line programs (moe-run, moe-synth, bench-*): one way
// to fail with a message, to parse numeric flags and to read the process's peak RSS.
#pragma once

#include <sys/resource.h>

#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace moed::tools {

// Prints "<program>: <message>" to stderr and exits with status 2 (usage or input error).
[[noreturn]] inline void fail(std::string_view program, const std::string& message) {
    std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(program.size()), program.data(), message.c_str());
    std::exit(2);
}

enum class sign : std::uint8_t { any, positive };

// Parses the whole of `text` as a T (integers or floats); anything else fails naming the flag.
template <typename T>
T parse_number(std::string_view program, std::string_view flag, const char* text, sign must = sign::any) {
    T value{};
    const char* end = text + std::strlen(text);
    auto [ptr, ec] = std::from_chars(text, end, value);
    if (ec != std::errc() || ptr != end || (must == sign::positive && !(value > T{}))) {
        fail(program, "bad value for " + std::string(flag) + ": '" + text + "'");
    }
    return value;
}

inline std::int64_t peak_rss_bytes() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<std::int64_t>(usage.ru_maxrss) * 1024;
}

}  // namespace moed::tools
