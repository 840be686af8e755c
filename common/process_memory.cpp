#include "common/process_memory.h"

#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

namespace moed {

namespace {

// "   1234 kB" -> 1234 * 1024; false on anything else.
bool parse_kib(std::string_view text, std::uint64_t& bytes) {
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    std::uint64_t kib = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), kib);
    if (ec != std::errc() || end == text.data()) return false;
    std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
    while (!unit.empty() && (unit.back() == ' ' || unit.back() == '\r')) unit.remove_suffix(1);
    if (unit != " kB") return false;
    if (kib > std::numeric_limits<std::uint64_t>::max() / 1024) return false;
    bytes = kib * 1024;
    return true;
}

}  // namespace

result<process_memory> parse_process_memory(std::string_view proc_status) {
    struct field {
        std::string_view name;
        std::uint64_t process_memory::*value;
    };
    static constexpr field fields[] = {
        {"VmRSS:", &process_memory::rss_bytes},
        {"VmHWM:", &process_memory::rss_peak_bytes},
        {"VmLck:", &process_memory::locked_bytes},
    };
    process_memory out;
    while (!proc_status.empty()) {
        const std::size_t eol = proc_status.find('\n');
        const std::string_view line = proc_status.substr(0, eol);
        proc_status.remove_prefix(eol == std::string_view::npos ? proc_status.size() : eol + 1);
        for (const field& f : fields) {
            if (!line.starts_with(f.name)) continue;
            if (!parse_kib(line.substr(f.name.size()), out.*f.value)) {
                return make_error(errc::invalid_argument, "process status line '{}' is not '{} <number> kB'", line,
                                  f.name);
            }
        }
    }
    return out;
}

result<process_memory> read_process_memory() {
    std::ifstream in("/proc/self/status");
    if (!in) return make_error(errc::io, "/proc/self/status: cannot open: {}", std::strerror(errno));
    std::ostringstream text;
    text << in.rdbuf();
    auto parsed = parse_process_memory(text.str());
    if (!parsed) return make_error(errc::io, "/proc/self/status: {}", parsed.error().message);
    return parsed;
}

std::uint64_t physical_memory_bytes() noexcept {
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_bytes = ::sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page_bytes <= 0) return 0;
    return static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_bytes);
}

}  // namespace moed
