// Statistics of the expert tiers, as a plain struct (the daemon serves it; moe-run --json
// prints it). Counters are totals since the tier was created.
#pragma once

#include <cstdint>
#include <string>

namespace moed::storage {

struct latency_summary {
    std::uint64_t count = 0;
    double p50_us = 0.0;
    double p90_us = 0.0;
    double p99_us = 0.0;
    double max_us = 0.0;
};

struct tier_stats {
    std::string name;                   // "host", "nvme"
    std::uint64_t capacity_bytes = 0;
    std::uint64_t capacity_experts = 0;
    std::uint64_t resident_bytes = 0;   // bytes of experts resident now
    std::uint64_t resident_experts = 0;
    std::uint64_t hits = 0;             // acquires served without a read
    std::uint64_t misses = 0;           // acquires that had to read (or wait for a read)
    std::uint64_t evictions = 0;
    std::uint64_t bytes_read = 0;       // from the tier below
    std::uint64_t read_errors = 0;
    double read_seconds = 0.0;          // wall time with at least one read in flight
    double read_bytes_per_s = 0.0;      // bytes_read / read_seconds
    latency_summary load_latency;       // request -> ready, per expert
};

struct expert_cache_stats {
    std::string io_mode;  // io_mode_name() of the block reader
    std::uint32_t queue_depth = 0;
    std::uint64_t expert_bytes_total = 0;  // all routed experts of the model
    tier_stats host;
    tier_stats nvme;
};

}  // namespace moed::storage
