// How long generation requests take, as histograms users graph: time to first token, the
// whole request, the prompt's evaluation and the generation after it (request_timing_stats
// in common/status.h says what each measures). Buckets are fixed at compile time, so
// observing allocates nothing and the engine thread can do it on every request.
// Threads: none of its own and no lock; the batch loop's engine thread observes into its own
// copy and publishes it under the loop's lock, as it does its counters.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "common/status.h"

namespace moed::daemon {

// The most buckets one histogram has (the +Inf bucket not counted).
inline constexpr std::size_t max_histogram_buckets = 16;

// A histogram of seconds over fixed upper bounds (ascending, at most max_histogram_buckets).
class seconds_histogram {
public:
    // `le_s` must outlive the histogram (the bounds below are static).
    explicit seconds_histogram(std::span<const double> le_s) noexcept;
    // A negative or NaN duration counts as 0 (a clock that went backwards is not a reason to
    // lose the observation).
    void observe(double seconds) noexcept;
    std::uint64_t count() const noexcept { return count_; }
    void fill(histogram_stats& out) const;

private:
    std::span<const double> le_s_;
    std::array<std::uint64_t, max_histogram_buckets> in_bucket_{};  // not cumulative
    std::uint64_t count_ = 0;
    double sum_s_ = 0.0;
};

// The bucket bounds, in seconds. The first token comes after the queue and the prompt, so
// its buckets reach from tens of milliseconds (a short prompt on a warm model) to minutes
// (a long prompt with cold experts on a CPU); a whole request and its generation run longer.
inline constexpr double time_to_first_token_le_s[] = {0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
inline constexpr double request_le_s[] = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800};

class request_timings {
public:
    request_timings() noexcept;
    seconds_histogram time_to_first_token;
    seconds_histogram request_latency;
    seconds_histogram prompt;
    seconds_histogram generation;
    void fill(request_timing_stats& out) const;
};

}  // namespace moed::daemon
