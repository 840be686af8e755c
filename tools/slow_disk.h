// `--slow-disk LAT_US,MBPS` for the command-line programs: wraps the tiered source's block
// reader in a fault_reader that adds LAT_US microseconds to every read and caps the total
// bandwidth at MBPS megabytes (10^6 bytes) per second, so the cost of expert I/O shows even
// when the model file sits in the page cache. 0 turns either part off.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "storage/fault_reader.h"
#include "storage/tiers.h"

namespace moed::tools {

struct slow_disk_spec {
    std::uint64_t latency_us = 0;
    std::uint64_t mb_per_s = 0;
};

// Parses "LAT_US,MBPS" (both non-negative integers).
inline result<slow_disk_spec> parse_slow_disk(const std::string& text) {
    const auto comma = text.find(',');
    slow_disk_spec s;
    auto number = [&](const std::string& part, std::uint64_t& out) {
        if (part.empty() || part.find_first_not_of("0123456789") != std::string::npos || part.size() > 12) return false;
        out = std::stoull(part);
        return true;
    };
    if (comma == std::string::npos || !number(text.substr(0, comma), s.latency_us) ||
        !number(text.substr(comma + 1), s.mb_per_s)) {
        return make_error(errc::invalid_argument, "--slow-disk wants LAT_US,MBPS (e.g. 200,2000), not '{}'", text);
    }
    return s;
}

inline void apply_slow_disk(const slow_disk_spec& spec, storage::tiered_options& tier) {
    tier.wrap_reader = [spec](std::unique_ptr<storage::block_reader> inner)
        -> result<std::unique_ptr<storage::block_reader>> {
        auto faults = storage::fault_reader::create(std::move(inner));
        if (!faults) return unexpected(std::move(faults).error());
        (*faults)->set_latency(std::chrono::microseconds(spec.latency_us));
        (*faults)->set_bandwidth_cap(spec.mb_per_s * 1000000);
        return std::unique_ptr<storage::block_reader>(std::move(faults).value());
    };
}

}  // namespace moed::tools
