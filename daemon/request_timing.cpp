#include "daemon/request_timing.h"

#include <algorithm>
#include <cmath>

#include "common/assert.h"

namespace moed::daemon {

seconds_histogram::seconds_histogram(std::span<const double> le_s) noexcept : le_s_(le_s) {
    MOED_ASSERT(le_s_.size() <= max_histogram_buckets);
    MOED_ASSERT(std::is_sorted(le_s_.begin(), le_s_.end()));
}

void seconds_histogram::observe(double seconds) noexcept {
    if (!(seconds > 0.0)) seconds = 0.0;
    // The first bound at or above the value; past the last bound only the +Inf bucket counts it.
    const auto at = static_cast<std::size_t>(std::lower_bound(le_s_.begin(), le_s_.end(), seconds) - le_s_.begin());
    if (at < le_s_.size()) ++in_bucket_[at];
    ++count_;
    sum_s_ += seconds;
}

void seconds_histogram::fill(histogram_stats& out) const {
    out.le_s.assign(le_s_.begin(), le_s_.end());
    out.counts.resize(le_s_.size());
    std::uint64_t below = 0;
    for (std::size_t i = 0; i < le_s_.size(); ++i) {
        below += in_bucket_[i];
        out.counts[i] = below;
    }
    out.count = count_;
    out.sum_s = sum_s_;
}

request_timings::request_timings() noexcept
    : time_to_first_token(time_to_first_token_le_s),
      request_latency(request_le_s),
      prompt(request_le_s),
      generation(request_le_s) {}

void request_timings::fill(request_timing_stats& out) const {
    time_to_first_token.fill(out.time_to_first_token);
    request_latency.fill(out.request_latency);
    prompt.fill(out.prompt);
    generation.fill(out.generation);
}

}  // namespace moed::daemon
