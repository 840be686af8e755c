#include "scheduler/prefetch_gate.h"

#include <algorithm>
#include <cmath>

namespace moed::scheduler {

void prefetch_gate::update(const link_figures& f) {
    last_ = f;
    measured_ = f.bytes_per_s > 0.0 && f.layer_compute_us > 0.0 && f.load_latency_us > 0.0 && f.expert_bytes > 0.0;
    if (!have_window_) {
        window_start_ = f;
        have_window_ = true;
        return;
    }
    const std::uint64_t layers = f.layers_computed - window_start_.layers_computed;
    if (layers < std::max<std::uint32_t>(options_.window_layers, 1)) return;

    if (measured_) {
        // Demand's share of the link: the time its reads take per layer against the time a
        // layer computes. Above 1 the link is the bottleneck and every wasted byte delays
        // compute.
        const double demand_loads = static_cast<double>(f.demand_loads - window_start_.demand_loads);
        const double link_us = demand_loads * f.expert_bytes / f.bytes_per_s * 1e6;
        const double per_layer = link_us / static_cast<double>(layers);
        const double measured_busy = std::clamp(per_layer / f.layer_compute_us, 0.0, 1.0);
        // The first window replaces the cautious start; later ones are averaged in.
        busy_ = busy_measured_ ? 0.5 * busy_ + 0.5 * measured_busy : measured_busy;
        busy_measured_ = true;
    }
    // Back-off: the waste seen over the waste the probabilities promised.
    const std::uint64_t loads = f.prefetch_loads - window_start_.prefetch_loads;
    const std::uint64_t wasted = f.prefetch_wasted - window_start_.prefetch_wasted;
    if (loads >= 8 && window_requested_ > 0) {
        const double seen = static_cast<double>(wasted) / static_cast<double>(loads);
        const double promised =
            std::clamp(1.0 - window_expected_used_ / static_cast<double>(window_requested_), 0.05, 1.0);
        const double factor = std::max(1.0, seen / promised);
        waste_factor_ = std::clamp(0.5 * waste_factor_ + 0.5 * factor, 1.0, 20.0);
    } else if (loads == 0) {
        // Nothing was issued: let the back-off relax so prefetching can be tried again.
        waste_factor_ = std::max(1.0, 0.75 * waste_factor_);
    }
    window_start_ = f;
    window_expected_used_ = 0.0;
    window_requested_ = 0;
}

float prefetch_gate::threshold(std::uint64_t bytes, std::uint32_t distance) const {
    if (!measured_) return std::max(options_.fallback, options_.floor);
    const double transfer_us = static_cast<double>(bytes) / last_.bytes_per_s * 1e6;
    // The measured load time already holds the latency and a typical queue; a larger expert
    // than the mean takes its extra bytes' time on top.
    const double load_us =
        last_.load_latency_us + std::max(0.0, (static_cast<double>(bytes) - last_.expert_bytes) / last_.bytes_per_s * 1e6);
    const double queued_us = static_cast<double>(last_.inflight_bytes) / last_.bytes_per_s * 1e6;
    const double until_us = (static_cast<double>(distance) + options_.attention_share) * last_.layer_compute_us;
    const double saved = load_us - std::max(0.0, load_us + queued_us - until_us);
    if (saved <= 0.0) return 1.0f + 1e-3f;  // it could never arrive in time: never
    const double cost = transfer_us * std::max(busy_, options_.idle_cost) * waste_factor_;
    const double p = cost / (saved + cost);
    return std::clamp(static_cast<float>(p), options_.floor, 1.0f);
}

std::uint64_t prefetch_gate::inflight_budget(std::uint32_t rows) const {
    if (!measured_) return 0;
    const double idle = std::max(0.0, 1.0 - busy_);
    const double bytes = idle * last_.bytes_per_s * last_.layer_compute_us * 1e-6 * std::max<std::uint32_t>(rows, 1);
    return static_cast<std::uint64_t>(std::max(bytes, last_.expert_bytes));
}

}  // namespace moed::scheduler
