#include "common/units.h"

#include <cctype>
#include <charconv>
#include <cmath>

namespace moed {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
    }
    return true;
}

// Splits "1.5GiB" into 1.5 and "GiB"; false when no number leads.
bool split_number(std::string_view s, double& value, std::string_view& unit) {
    const char* begin = s.data();
    const char* end = s.data() + s.size();
    auto [ptr, ec] = std::from_chars(begin, end, value);
    if (ec != std::errc() || ptr == begin) return false;
    unit = trim(std::string_view(ptr, static_cast<std::size_t>(end - ptr)));
    return true;
}

}  // namespace

result<std::uint64_t> parse_bytes(std::string_view text) {
    const std::string_view s = trim(text);
    double value = 0.0;
    std::string_view unit;
    if (!split_number(s, value, unit) || !std::isfinite(value) || value < 0.0) {
        return make_error(errc::invalid_argument, "'{}' is not a byte size (examples: 4GiB, 512MiB, 1000000)", text);
    }
    struct unit_scale {
        std::string_view name;
        double scale;
    };
    static constexpr unit_scale units[] = {
        {"", 1.0},         {"b", 1.0},
        {"k", 1024.0},     {"kib", 1024.0},     {"kb", 1e3},
        {"m", 1048576.0},  {"mib", 1048576.0},  {"mb", 1e6},
        {"g", 1073741824.0}, {"gib", 1073741824.0}, {"gb", 1e9},
        {"t", 1099511627776.0}, {"tib", 1099511627776.0}, {"tb", 1e12},
    };
    for (const auto& u : units) {
        if (iequals(unit, u.name)) {
            const double bytes = value * u.scale;
            if (bytes > 1.8e19) return make_error(errc::invalid_argument, "byte size '{}' is too large", text);
            return static_cast<std::uint64_t>(std::llround(bytes));
        }
    }
    return make_error(errc::invalid_argument, "'{}' has an unknown unit '{}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)",
                      text, unit);
}

result<budget_spec> parse_budget(std::string_view text) {
    const std::string_view s = trim(text);
    double value = 0.0;
    std::string_view unit;
    if (split_number(s, value, unit)) {
        if (unit == "%") {
            if (!(value > 0.0 && value <= 100.0)) {
                return make_error(errc::invalid_argument, "budget '{}' must be a percentage in (0, 100]", text);
            }
            return budget_spec{0, value / 100.0, true};
        }
        if (unit.empty() && value > 0.0 && value <= 1.0 && s.find('.') != std::string_view::npos) {
            return budget_spec{0, value, true};
        }
    }
    auto bytes = parse_bytes(s);
    if (!bytes) {
        return make_error(errc::invalid_argument,
                          "budget '{}' is neither a size (4GiB, 512MiB) nor a share of the experts (25%, 0.25)", text);
    }
    if (*bytes == 0) return make_error(errc::invalid_argument, "budget '{}' is zero", text);
    return budget_spec{*bytes, 0.0, false};
}

std::string format_bytes(std::uint64_t bytes) {
    static constexpr const char* names[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = static_cast<double>(bytes);
    int i = 0;
    while (v >= 1024.0 && i < 4) {
        v /= 1024.0;
        ++i;
    }
    return i == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, names[i]);
}

}  // namespace moed
