// The counters of one tier (hits, misses, evictions, bytes read, the prefetch pipeline's
// outcomes, time lost waiting), the time it spent with loads in flight, the recent load
// latencies, and how they fill the status wire types (tier_stats, prefetch_stats in
// common/status.h). Counters are totals since the tier was created; what they mean is
// written once, at their fields in common/status.h.
//
// Threads: none of its own and no lock inside; the owning tier updates it under its lock
// and calls fill() under it too; summarize() runs after the lock is released (it sorts).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/status.h"

namespace moed::storage {

class tier_counters {
public:
    using clock = std::chrono::steady_clock;
    // Recent load latencies kept for the percentiles.
    static constexpr std::size_t latency_samples_max = 4096;

    tier_counters() : latency_us_(latency_samples_max, 0) {}

    // Acquires and loads (tier_stats).
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;
    std::uint64_t evictions = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t read_errors = 0;
    // The prefetch pipeline (prefetch_stats).
    std::uint64_t pf_requested = 0;
    std::uint64_t pf_issued = 0;
    std::uint64_t pf_cancelled = 0;
    std::uint64_t pf_hits = 0;
    std::uint64_t pf_late = 0;
    std::uint64_t pf_wasted = 0;
    std::uint64_t pf_wasted_bytes = 0;
    std::uint64_t demand_misses = 0;
    std::uint64_t io_wait_ns = 0;
    std::uint64_t io_waits = 0;
    std::uint64_t tokens = 0;
    // The layer clock (the evaluator's begin_layer/end_layer): layers timed, and the recent
    // mean compute time of one (I/O waits left out; each layer moves it 1/16).
    std::uint64_t layers_computed = 0;
    double layer_compute_ns = 0.0;
    void layer_computed(double compute_ns) noexcept;
    // The recent mean of load latencies (each load moves it 1/16).
    double latency_mean_us() const noexcept { return latency_mean_us_; }

    // An acquire waited `ns` for reads or slots (nothing counted for 0).
    void add_io_wait(std::uint64_t ns) noexcept;
    // A load was admitted / ended at `now`: the tier counts as reading while any is in flight.
    void load_started(clock::time_point now) noexcept;
    void load_ended(clock::time_point now) noexcept;
    std::uint32_t loads_in_flight() const noexcept { return loads_in_flight_; }
    // Seconds with at least one load in flight, up to `now`.
    double read_seconds(clock::time_point now) const noexcept;
    // A load that succeeded took `latency` from admission to ready.
    void record_latency(clock::duration latency) noexcept;
    std::uint64_t latency_count() const noexcept { return latency_count_; }

    // Copies the counters into `host` and `pf` and the recent latencies into `samples`.
    void fill(tier_stats& host, prefetch_stats& pf, std::vector<std::uint32_t>& samples, clock::time_point now) const;
    // The figures derived from what fill() copied: rates, and the latency percentiles
    // (nearest rank) from `samples`, which it sorts.
    static void summarize(tier_stats& host, prefetch_stats& pf, std::vector<std::uint32_t>& samples);

private:
    std::uint32_t loads_in_flight_ = 0;
    clock::time_point busy_since_{};
    double busy_seconds_ = 0.0;
    std::vector<std::uint32_t> latency_us_;  // a ring of latency_samples_max
    std::uint64_t latency_count_ = 0;        // samples ever recorded
    double latency_sum_us_ = 0.0;            // and their total
    double latency_mean_us_ = 0.0;
};

}  // namespace moed::storage
