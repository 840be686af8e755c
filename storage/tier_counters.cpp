#include "storage/tier_counters.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/assert.h"

namespace moed::storage {

void tier_counters::add_io_wait(std::uint64_t ns) noexcept {
    if (ns == 0) return;
    io_wait_ns += ns;
    ++io_waits;
}

void tier_counters::load_started(clock::time_point now) noexcept {
    if (loads_in_flight_++ == 0) busy_since_ = now;
}

void tier_counters::load_ended(clock::time_point now) noexcept {
    MOED_ASSERT(loads_in_flight_ > 0);
    if (--loads_in_flight_ == 0) busy_seconds_ += std::chrono::duration<double>(now - busy_since_).count();
}

double tier_counters::read_seconds(clock::time_point now) const noexcept {
    double s = busy_seconds_;
    if (loads_in_flight_ > 0) s += std::chrono::duration<double>(now - busy_since_).count();
    return s;
}

void tier_counters::record_latency(clock::duration latency) noexcept {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(latency).count();
    latency_us_[latency_count_ % latency_samples_max] =
        static_cast<std::uint32_t>(std::clamp<std::int64_t>(us, 0, std::numeric_limits<std::uint32_t>::max()));
    latency_sum_us_ += static_cast<double>(std::max<std::int64_t>(us, 0));
    latency_mean_us_ = latency_count_ == 0 ? static_cast<double>(us)
                                           : latency_mean_us_ + (static_cast<double>(us) - latency_mean_us_) / 16.0;
    ++latency_count_;
}

void tier_counters::layer_computed(double compute_ns) noexcept {
    constexpr double weight = 1.0 / 16.0;
    layer_compute_ns = layers_computed == 0 ? compute_ns : layer_compute_ns + weight * (compute_ns - layer_compute_ns);
    ++layers_computed;
}

void tier_counters::fill(tier_stats& host, prefetch_stats& pf, std::vector<std::uint32_t>& samples,
                         clock::time_point now) const {
    host.hits = hits;
    host.misses = misses;
    host.evictions = evictions;
    host.bytes_read = bytes_read;
    host.read_errors = read_errors;
    host.read_seconds = read_seconds(now);
    host.load_latency.count = latency_count_;
    host.load_latency.sum_us = latency_sum_us_;
    pf.requested = pf_requested;
    pf.issued = pf_issued;
    pf.cancelled = pf_cancelled;
    pf.hits = pf_hits;
    pf.late = pf_late;
    pf.wasted = pf_wasted;
    pf.wasted_bytes = pf_wasted_bytes;
    pf.demand_misses = demand_misses;
    pf.io_wait_ns = io_wait_ns;
    pf.io_waits = io_waits;
    pf.tokens = tokens;
    pf.layers_computed = layers_computed;
    pf.layer_compute_us = layer_compute_ns / 1e3;
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(latency_count_, latency_samples_max));
    samples.assign(latency_us_.begin(), latency_us_.begin() + static_cast<std::ptrdiff_t>(n));
}

void tier_counters::summarize(tier_stats& host, prefetch_stats& pf, std::vector<std::uint32_t>& samples) {
    const std::uint64_t needed = pf.hits + pf.late + pf.demand_misses;
    pf.hit_rate = needed > 0 ? static_cast<double>(pf.hits) / static_cast<double>(needed) : 0.0;
    pf.io_wait_ns_per_token =
        pf.tokens > 0 ? static_cast<double>(pf.io_wait_ns) / static_cast<double>(pf.tokens) : 0.0;
    host.read_bytes_per_s = host.read_seconds > 0.0 ? static_cast<double>(host.bytes_read) / host.read_seconds : 0.0;
    if (samples.empty()) return;
    std::sort(samples.begin(), samples.end());
    // Nearest-rank percentiles over the recent samples.
    auto pct = [&](double p) {
        const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(samples.size())));
        return static_cast<double>(samples[std::clamp<std::size_t>(rank, 1, samples.size()) - 1]);
    };
    host.load_latency.p50_us = pct(0.50);
    host.load_latency.p90_us = pct(0.90);
    host.load_latency.p99_us = pct(0.99);
    host.load_latency.max_us = static_cast<double>(samples.back());
}

}  // namespace moed::storage
