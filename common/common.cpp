#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

#include "common/assert.h"
#include "common/log.h"
#include "common/result.h"

namespace moed {

namespace detail {
void assert_fail(const char* expr, const char* file, int line) noexcept {
    std::fprintf(stderr, "moed: assertion failed: %s at %s:%d\n", expr, file, line);
    std::fflush(stderr);
    std::abort();
}
}  // namespace detail

const char* errc_name(errc code) noexcept {
    switch (code) {
        case errc::invalid_argument: return "invalid_argument";
        case errc::bad_file: return "bad_file";
        case errc::unsupported: return "unsupported";
        case errc::io: return "io";
        case errc::not_found: return "not_found";
        case errc::out_of_memory: return "out_of_memory";
        case errc::cancelled: return "cancelled";
        case errc::internal: return "internal";
        case errc::no_space: return "no_space";
    }
    return "unknown";
}

namespace {
std::atomic<log_level> g_level{log_level::info};
std::mutex g_log_mutex;
}  // namespace

void set_log_level(log_level level) noexcept { g_level.store(level, std::memory_order_relaxed); }
log_level get_log_level() noexcept { return g_level.load(std::memory_order_relaxed); }

bool parse_log_level(std::string_view text, log_level& out) noexcept {
    if (text == "debug") out = log_level::debug;
    else if (text == "info") out = log_level::info;
    else if (text == "warn") out = log_level::warn;
    else if (text == "error") out = log_level::error;
    else if (text == "off") out = log_level::off;
    else return false;
    return true;
}

namespace detail {
void log_write(log_level level, std::string_view component, std::string_view message) noexcept {
    // "<N>" prefixes are the sd-daemon(3) priority levels journald understands on stderr.
    static constexpr const char* prefix[] = {"<7>debug", "<6>info", "<4>warn", "<3>error", ""};
    std::lock_guard lock(g_log_mutex);
    std::fprintf(stderr, "%s [%.*s] %.*s\n", prefix[static_cast<int>(level)],
                 static_cast<int>(component.size()), component.data(),
                 static_cast<int>(message.size()), message.data());
}
}  // namespace detail

}  // namespace moed
