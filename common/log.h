// Logging: one line per event on stderr (journald picks it up under systemd), with a level
// and a component tag. Formats are checked at compile time through fmt.
// Thread-safe: lines from different threads never interleave.
#pragma once

#include <cstdint>
#include <string_view>

#include <fmt/format.h>

namespace moed {

enum class log_level : std::uint8_t { debug = 0, info = 1, warn = 2, error = 3, off = 4 };

void set_log_level(log_level level) noexcept;
log_level get_log_level() noexcept;
// Parses "debug", "info", "warn", "error", "off"; returns false on anything else.
bool parse_log_level(std::string_view text, log_level& out) noexcept;

namespace detail {
void log_write(log_level level, std::string_view component, std::string_view message) noexcept;
}

template <typename... Args>
void log(log_level level, std::string_view component, fmt::format_string<Args...> format,
         Args&&... args) noexcept {
    if (level < get_log_level()) return;
    try {
        detail::log_write(level, component, fmt::format(format, std::forward<Args>(args)...));
    } catch (...) {
        // Formatting failed (out of memory); dropping one log line is the only safe choice.
    }
}

#define MOED_LOG_DEBUG(component, ...) ::moed::log(::moed::log_level::debug, component, __VA_ARGS__)
#define MOED_LOG_INFO(component, ...) ::moed::log(::moed::log_level::info, component, __VA_ARGS__)
#define MOED_LOG_WARN(component, ...) ::moed::log(::moed::log_level::warn, component, __VA_ARGS__)
#define MOED_LOG_ERROR(component, ...) ::moed::log(::moed::log_level::error, component, __VA_ARGS__)

}  // namespace moed
