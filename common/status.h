// The daemon's status as it crosses the wire (GET /v1/status), shared by moed, which fills
// it, and libmoeclient / moectl, which read it. Plain structs with JSON conversions; every
// field has a default so older or newer peers still parse what they can.
// Counters are totals since start; sizes are bytes; times carry their unit in the name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moed {

struct latency_summary {
    std::uint64_t count = 0;
    double p50_us = 0.0;
    double p90_us = 0.0;
    double p99_us = 0.0;
    double max_us = 0.0;
};

struct tier_stats {
    std::string name;                   // "host", "nvme" (later "gpu")
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
    std::string io_mode;  // how expert bytes are read: uring_direct, pread_buffered, ...
    std::uint32_t queue_depth = 0;
    std::uint64_t expert_bytes_total = 0;  // all routed experts of the model
    tier_stats host;
    tier_stats nvme;
    // Per layer, one character per expert: '#' resident, '+' resident and in use,
    // '~' loading, '.' only on disk.
    std::vector<std::string> layer_residency;
};

struct model_status {
    std::string id;            // the name clients use in "model"
    std::string path;
    std::string architecture;
    std::uint32_t n_layer = 0;
    std::uint32_t n_expert = 0;
    std::uint32_t n_expert_used = 0;
    std::int64_t n_ctx = 0;    // context per sequence
    std::int64_t n_vocab = 0;
    std::uint64_t file_bytes = 0;
    std::uint64_t dense_bytes = 0;
    std::uint64_t expert_bytes = 0;
};

// One request known to the batch loop.
struct request_status {
    std::string id;
    std::string state;  // queued, prefill, decode
    std::int64_t prompt_tokens = 0;
    std::int64_t generated_tokens = 0;
    std::int64_t max_tokens = 0;
    std::string peer;   // "pid=123 uid=1000 gid=1000"
    // Task profile: the profile's name ("" none), how it was chosen ("request": named by
    // the request, "matched": matched after the prefill, "none": nothing matched, "" not
    // known yet), the prompt's similarity to it (or to the closest profile), and the experts
    // per layer routing is pruned to (0: not pruned).
    std::string profile;
    std::string profile_source;
    double profile_similarity = 0.0;
    std::uint32_t pruned_experts_per_layer = 0;
};

struct server_status {
    std::string version;
    double uptime_s = 0.0;
    model_status model;
    std::uint32_t threads = 0;
    std::string isa;
    // Queue and batch.
    std::uint32_t queue_waiting = 0;
    std::uint32_t queue_capacity = 0;
    std::uint32_t running_sequences = 0;
    std::uint32_t max_sequences = 0;
    std::uint32_t max_batch_tokens = 0;
    std::uint64_t steps_total = 0;
    std::uint64_t requests_total = 0;
    std::uint64_t requests_failed = 0;
    std::uint64_t requests_cancelled = 0;
    std::uint64_t prompt_tokens_total = 0;
    std::uint64_t generated_tokens_total = 0;
    double decode_tokens_per_s = 0.0;  // recent, all sequences together
    std::optional<expert_cache_stats> tiers;  // absent when every expert is resident
    std::vector<request_status> requests;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(latency_summary, count, p50_us, p90_us, p99_us, max_us)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(tier_stats, name, capacity_bytes, capacity_experts, resident_bytes,
                                                resident_experts, hits, misses, evictions, bytes_read, read_errors,
                                                read_seconds, read_bytes_per_s, load_latency)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(expert_cache_stats, io_mode, queue_depth, expert_bytes_total, host,
                                                nvme, layer_residency)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(model_status, id, path, architecture, n_layer, n_expert,
                                                n_expert_used, n_ctx, n_vocab, file_bytes, dense_bytes, expert_bytes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(request_status, id, state, prompt_tokens, generated_tokens,
                                                max_tokens, peer, profile, profile_source, profile_similarity,
                                                pruned_experts_per_layer)

void to_json(nlohmann::json& j, const server_status& s);
void from_json(const nlohmann::json& j, server_status& s);

}  // namespace moed
