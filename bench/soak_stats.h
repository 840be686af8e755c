// The pure logic of bench/soak, kept apart so tests can check it without a daemon: reading
// a duration ("90s", "10m", "1h30m"), deciding what one request's outcome was (ok, expected,
// unexpected), the least-squares slope of RSS over the last half of the run, and the verdict.
// Header-only: the test program includes it without linking the bench.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace moed::bench::soak {

// A duration: one or more <number><unit> parts with units h, m, s ("1h", "10m", "90s",
// "1h30m"), or a bare number of seconds. The total must be positive and at most a week.
[[nodiscard]] inline result<std::int64_t> parse_duration_s(std::string_view text) {
    constexpr std::int64_t max_s = 7 * 24 * 3600;
    if (text.empty()) return make_error(errc::invalid_argument, "empty duration (give e.g. 90s, 10m, 1h)");
    std::int64_t total = 0;
    std::size_t i = 0;
    while (i < text.size()) {
        std::int64_t number = 0;
        const std::size_t digits_at = i;
        while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
            number = number * 10 + (text[i] - '0');
            if (number > max_s) return make_error(errc::invalid_argument, "duration '{}' is longer than a week", text);
            ++i;
        }
        if (i == digits_at)
            return make_error(errc::invalid_argument, "duration '{}': expected a number at offset {}", text, digits_at);
        std::int64_t unit_s = 1;
        if (i < text.size()) {
            switch (text[i]) {
                case 'h': unit_s = 3600; break;
                case 'm': unit_s = 60; break;
                case 's': unit_s = 1; break;
                default:
                    return make_error(errc::invalid_argument, "duration '{}': unknown unit '{}' (use h, m or s)", text,
                                      text[i]);
            }
            ++i;
        } else if (digits_at != 0) {
            return make_error(errc::invalid_argument, "duration '{}': the last number has no unit", text);
        }
        total += number * unit_s;
        if (total > max_s) return make_error(errc::invalid_argument, "duration '{}' is longer than a week", text);
    }
    if (total <= 0) return make_error(errc::invalid_argument, "duration '{}' must be positive", text);
    return total;
}

// What became of one request. The expected kinds are what a healthy daemon does under this
// load; every unexpected kind is a failure of the soak.
enum class outcome : std::uint8_t {
    ok,
    back_pressure,     // 429: the request queue was full
    disconnect,        // we closed the connection mid-stream on purpose
    profile_churn,     // named the profile being deleted and recreated, while it was gone
    http_error,        // another non-2xx answer (4xx to a request we made valid, or 5xx)
    stream_error,      // an error event inside a 200 stream
    malformed,         // an answer that breaks the protocol or the request's terms
    truncated,         // a stream that ended without [DONE], not cut by us
    connection,        // refused, reset or closed before a whole answer
    timeout,           // no byte from moed within the request timeout
};

inline constexpr outcome all_outcomes[] = {outcome::ok,           outcome::back_pressure, outcome::disconnect,
                                           outcome::profile_churn, outcome::http_error,    outcome::stream_error,
                                           outcome::malformed,    outcome::truncated,     outcome::connection,
                                           outcome::timeout};

inline const char* outcome_name(outcome o) noexcept {
    switch (o) {
        case outcome::ok: return "ok";
        case outcome::back_pressure: return "expected_back_pressure";
        case outcome::disconnect: return "expected_disconnect";
        case outcome::profile_churn: return "expected_profile_churn";
        case outcome::http_error: return "unexpected_http_error";
        case outcome::stream_error: return "unexpected_stream_error";
        case outcome::malformed: return "unexpected_malformed";
        case outcome::truncated: return "unexpected_truncated";
        case outcome::connection: return "unexpected_connection";
        case outcome::timeout: return "unexpected_timeout";
    }
    return "unknown";
}

inline bool is_unexpected(outcome o) noexcept {
    return o != outcome::ok && o != outcome::back_pressure && o != outcome::disconnect && o != outcome::profile_churn;
}

enum class transport : std::uint8_t {
    none,     // every byte of the answer arrived
    failed,   // connect refused, reset, or the connection closed early
    timeout,  // moed sent nothing for the request timeout
};

// The facts about one request, as the client saw them.
struct attempt {
    transport io = transport::none;
    int http_status = 0;          // 0: no status line arrived
    int stream_error_status = 0;  // the "code" of an error event in a 200 stream (0: none)
    bool stream = false;
    bool saw_done = false;        // the stream's "data: [DONE]" arrived
    bool cut_by_us = false;       // we closed the connection before [DONE]
    bool malformed = false;       // something in the answer broke the protocol or the request
    // The request named the profile that is being deleted and recreated, and that profile
    // was absent at some point between sending and the answer.
    bool profile_may_be_missing = false;
};

// Malformed input beats everything (it is what we saw); then our own cut; then how the
// answer began (status), then how it ended.
inline outcome classify(const attempt& a) noexcept {
    if (a.malformed) return outcome::malformed;
    if (a.cut_by_us) return outcome::disconnect;
    if (a.http_status == 0) return a.io == transport::timeout ? outcome::timeout : outcome::connection;
    if (a.http_status == 429) return outcome::back_pressure;
    // moed answers 400 for a request naming a profile it does not have (404 on its own path).
    if ((a.http_status == 400 || a.http_status == 404) && a.profile_may_be_missing) return outcome::profile_churn;
    if (a.http_status < 200 || a.http_status >= 300) return outcome::http_error;
    if (a.stream_error_status != 0)
        return a.stream_error_status == 429 ? outcome::back_pressure : outcome::stream_error;
    if (a.io == transport::timeout) return outcome::timeout;
    if (a.io == transport::failed) return a.stream ? outcome::truncated : outcome::connection;
    if (a.stream && !a.saw_done) return outcome::truncated;
    return outcome::ok;
}

struct point {
    double x = 0.0;
    double y = 0.0;
};

// The slope of the least-squares line through `points` (y per unit of x); none with fewer
// than two points or when every x is the same.
inline std::optional<double> least_squares_slope(std::span<const point> points) noexcept {
    if (points.size() < 2) return std::nullopt;
    double mean_x = 0.0;
    double mean_y = 0.0;
    for (const point& p : points) {
        mean_x += p.x;
        mean_y += p.y;
    }
    mean_x /= static_cast<double>(points.size());
    mean_y /= static_cast<double>(points.size());
    double sxy = 0.0;
    double sxx = 0.0;
    for (const point& p : points) {
        sxy += (p.x - mean_x) * (p.y - mean_y);
        sxx += (p.x - mean_x) * (p.x - mean_x);
    }
    if (sxx == 0.0) return std::nullopt;
    return sxy / sxx;
}

// RSS over the last half of the run: the samples at or after half the run's length.
struct rss_growth {
    std::size_t samples = 0;
    double from_s = 0.0;              // time of the first sample of the last half
    std::int64_t start_bytes = 0;     // RSS at that sample
    std::int64_t end_bytes = 0;       // RSS at the last sample
    std::int64_t growth_bytes = 0;    // end - start
    std::optional<double> slope_bytes_per_minute;  // least-squares; none with too few samples
};

// Fewer samples than this in the last half give no slope (two points are only a difference).
inline constexpr std::size_t min_slope_samples = 3;

// `points`: (seconds since the run started, RSS bytes), in time order.
inline rss_growth last_half_growth(std::span<const point> points, double run_s) {
    rss_growth g;
    std::vector<point> half;
    for (const point& p : points) {
        if (p.x >= run_s / 2.0) half.push_back(p);
    }
    g.samples = half.size();
    if (half.empty()) return g;
    g.from_s = half.front().x;
    g.start_bytes = static_cast<std::int64_t>(half.front().y);
    g.end_bytes = static_cast<std::int64_t>(half.back().y);
    g.growth_bytes = g.end_bytes - g.start_bytes;
    if (half.size() >= min_slope_samples) {
        if (auto per_s = least_squares_slope(half)) g.slope_bytes_per_minute = *per_s * 60.0;
    }
    return g;
}

struct verdict {
    bool rss_growth_last_half_ok = false;
    bool no_unexpected_errors = false;
    bool daemon_exit_ok = true;  // a daemon we started exited 0 on SIGTERM (true when attached)
    bool pass = false;
    std::string reason;  // why it failed, in a sentence; empty when it passed
};

inline verdict judge(const rss_growth& g, double max_growth_mib_per_hour, std::uint64_t unexpected_errors,
                     bool daemon_exit_ok) {
    verdict v;
    v.no_unexpected_errors = unexpected_errors == 0;
    v.daemon_exit_ok = daemon_exit_ok;
    const double max_bytes_per_minute = max_growth_mib_per_hour * 1024.0 * 1024.0 / 60.0;
    v.rss_growth_last_half_ok = g.slope_bytes_per_minute && *g.slope_bytes_per_minute < max_bytes_per_minute;
    v.pass = v.rss_growth_last_half_ok && v.no_unexpected_errors && v.daemon_exit_ok;
    std::string reason;
    auto add = [&](const std::string& part) { reason += (reason.empty() ? "" : "; ") + part; };
    if (!g.slope_bytes_per_minute) {
        add(fmt::format("{} samples in the last half of the run give no RSS slope (at least {} needed)", g.samples,
                        min_slope_samples));
    } else if (!v.rss_growth_last_half_ok) {
        add(fmt::format("RSS grew {:.2f} MiB/hour over the last half (limit {:.2f})",
                        *g.slope_bytes_per_minute * 60.0 / (1024.0 * 1024.0), max_growth_mib_per_hour));
    }
    if (!v.no_unexpected_errors) add(fmt::format("{} unexpected errors", unexpected_errors));
    if (!v.daemon_exit_ok) add("the daemon did not exit 0 on SIGTERM");
    v.reason = std::move(reason);
    return v;
}

// The longest prefix of `text` of at most `max_bytes` bytes that does not cut a UTF-8
// sequence (a prompt shortened to fit the context must stay valid JSON text).
inline std::string_view utf8_prefix(std::string_view text, std::size_t max_bytes) noexcept {
    if (text.size() <= max_bytes) return text;
    std::size_t end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    return text.substr(0, end);
}

}  // namespace moed::bench::soak
