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

// Percentiles over recent samples; count and sum_us cover every sample since start (the
// Prometheus summary's _count and _sum).
struct latency_summary {
    std::uint64_t count = 0;
    double p50_us = 0.0;
    double p90_us = 0.0;
    double p99_us = 0.0;
    double max_us = 0.0;
    double sum_us = 0.0;
};

// The lock a tier takes for its bookkeeping (slot table, queue, counters): how often it was
// taken, how often a taker found it held and waited, and for how long. Reads never happen
// under it, so waits here are bookkeeping, not I/O.
struct lock_stats {
    std::uint64_t acquisitions = 0;
    std::uint64_t contended = 0;     // acquisitions that found the lock held and waited
    std::uint64_t wait_ns = 0;       // total time those waited
    std::uint64_t wait_ns_max = 0;   // the longest single wait
    std::uint64_t hold_ns = 0;       // total time the lock was held
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
    lock_stats lock;                    // the tier's own lock
};

// The prefetch pipeline of a tier.
struct prefetch_stats {
    std::uint64_t requested = 0;       // prefetch requests received
    std::uint64_t issued = 0;          // loads started by prefetch requests
    std::uint64_t cancelled = 0;       // requests dropped before their read started (stale or superseded)
    std::uint64_t hits = 0;            // acquires that found a prefetched expert ready (before it was needed)
    std::uint64_t late = 0;            // acquires that found a prefetched expert still loading
    std::uint64_t wasted = 0;          // prefetched experts evicted without ever being used
    std::uint64_t wasted_bytes = 0;
    std::uint64_t demand_misses = 0;   // acquires that had to start the read themselves
    double hit_rate = 0.0;             // hits / (hits + late + demand_misses)
    std::uint64_t queued = 0;          // requests waiting now
    std::uint64_t inflight_bytes = 0;  // bytes of loads in flight now
    std::uint64_t inflight_bytes_max = 0;    // the most ever in flight at once
    std::uint64_t inflight_bytes_limit = 0;  // the bound (0: none)
    std::uint64_t io_wait_ns = 0;      // time acquires spent waiting for reads or slots
    std::uint64_t io_waits = 0;        // acquires that waited
    std::uint64_t tokens = 0;          // tokens the engine reported (begin_layer at layer 0)
    double io_wait_ns_per_token = 0.0; // io_wait_ns / tokens (0 without tokens)
    // The layer clock (the evaluator's begin_layer/end_layer): layers computed, and the
    // recent mean time one layer computes for, I/O waits left out (what a prefetch issued at
    // the start of a layer has before the next one asks).
    std::uint64_t layers_computed = 0;
    double layer_compute_us = 0.0;
    // The prefetch planner's predictions (filled by whoever runs one; 0 without).
    std::uint64_t routed = 0;            // experts the routers chose (once per layer and batch)
    std::uint64_t predicted_routed = 0;  // of them, requested for their layer beforehand
    double recall = 0.0;                 // predicted_routed / routed
    // The planner's prefetch gate (0 before the link is measured): the probability a
    // prefetch for the next layer needs, demand reads' share of the link, the back-off.
    double gate_threshold = 0.0;
    double link_busy = 0.0;
    double waste_factor = 0.0;
};

// One section of the ring.
struct ring_section_stats {
    std::uint32_t slots = 0;
    std::vector<std::uint32_t> layers;  // the layers that load into it (l mod sections)
    std::int64_t layer = -1;            // the layer of the latest load into it (-1: none yet)
    std::uint32_t resident = 0;         // experts resident in it now
};

struct ring_stats {
    bool enabled = false;               // false: one pool, least recently used first
    std::uint32_t slots_per_layer = 0;  // the share the sections were sized for
    std::uint32_t hot_slots = 0;        // slots of the pinned hot set
    std::uint32_t hot_set = 0;          // experts in the hot set
    std::uint32_t hot_resident = 0;     // of them resident in hot slots now
    std::vector<ring_section_stats> sections;
};

// A run of host slots of one size: the slots of the layers whose experts need that many
// bytes (one class when every layer's experts are alike). capacity = the sum over classes.
struct slot_class_stats {
    std::uint64_t slot_bytes = 0;
    std::uint32_t slots = 0;
    std::vector<std::uint32_t> layers;  // whose experts load into these slots
    std::uint32_t resident = 0;         // experts resident in them now
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
    prefetch_stats prefetch;
    ring_stats ring;
    std::vector<slot_class_stats> slot_classes;  // of the host tier
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
    // "ok", or "broken" while the model file changed under a tier and requests that need a
    // read from it fail (error says why); the tier checks the file and recovers on its own.
    std::string state = "ok";
    std::string error;
};

// The memory moed holds, by kind, as a user counts it (bytes). The kinds are moed's own
// allocations; rss_bytes is what the kernel counts for the whole process, so the gap between
// the two is everything else (the tokenizer, profiles, libraries, allocator slack).
struct memory_stats {
    // tiers.host_budget as configured ("25%", "4.00 GiB"; "" when every expert is resident)
    // and the bytes it resolved to: a share of the expert bytes, capped at what holds every
    // expert (host_budget_capped when the configured budget asked for more).
    std::string host_budget;
    std::uint64_t host_budget_bytes = 0;
    bool host_budget_capped = false;
    std::uint64_t dense_bytes = 0;          // the owned copy of the dense weights
    std::uint64_t experts_bytes = 0;        // the owned copy of every expert (resident; 0 when tiered)
    std::uint64_t host_slab_bytes = 0;      // the host tier's slab (tiered; 0 when resident)
    std::uint64_t host_slab_slots = 0;
    bool host_slab_mlocked = false;         // the kernel counts the whole slab as locked
    std::uint64_t kv_cache_bytes = 0;       // allocated, every sequence's cache
    std::uint64_t kv_cache_used_bytes = 0;  // of them, holding positions of running sequences
    std::uint64_t kv_cache_cells = 0;       // positions allocated: max_sequences x context
    std::uint64_t kv_cache_cells_used = 0;  // of them, filled by running sequences
    std::uint64_t scratch_bytes = 0;        // per-batch buffers: activations, attention, logits
    std::uint64_t held_bytes = 0;           // the kinds above together (KV as allocated)
    std::uint64_t locked_bytes = 0;         // VmLck: memory the process has locked
    std::uint64_t rss_bytes = 0;            // VmRSS now
    std::uint64_t rss_peak_bytes = 0;       // VmHWM: the most resident at once since start
    std::uint64_t physical_bytes = 0;       // the machine's memory
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

// A histogram of seconds with fixed buckets, as Prometheus keeps one: counts[i] is the number
// of observations at most le_s[i] (cumulative); count is every observation (the +Inf
// bucket) and sum_s their total.
struct histogram_stats {
    std::vector<double> le_s;
    std::vector<std::uint64_t> counts;
    std::uint64_t count = 0;
    double sum_s = 0.0;
};

// How long generation requests took, from the batch loop's view (requests that only run a
// prompt, as profile creation does, are left out). Times start when the request is queued.
struct request_timing_stats {
    histogram_stats time_to_first_token;  // queued -> first token sampled (queue wait included)
    histogram_stats request_latency;      // queued -> finished, requests that ended with "stop" or "length"
    histogram_stats prompt;               // admitted -> first token: evaluating the prompt
    histogram_stats generation;           // first token -> finished, the same requests as request_latency
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
    memory_stats memory;
    request_timing_stats timing;
    std::vector<request_status> requests;
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(latency_summary, count, p50_us, p90_us, p99_us, max_us, sum_us)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(lock_stats, acquisitions, contended, wait_ns, wait_ns_max, hold_ns)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(tier_stats, name, capacity_bytes, capacity_experts, resident_bytes,
                                                resident_experts, hits, misses, evictions, bytes_read, read_errors,
                                                read_seconds, read_bytes_per_s, load_latency, lock)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(prefetch_stats, requested, issued, cancelled, hits, late, wasted,
                                                wasted_bytes, demand_misses, hit_rate, queued, inflight_bytes,
                                                inflight_bytes_max, inflight_bytes_limit, io_wait_ns, io_waits, tokens,
                                                io_wait_ns_per_token, layers_computed, layer_compute_us, routed, predicted_routed, recall,
                                                gate_threshold, link_busy, waste_factor)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ring_section_stats, slots, layers, layer, resident)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ring_stats, enabled, slots_per_layer, hot_slots, hot_set,
                                                hot_resident, sections)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(slot_class_stats, slot_bytes, slots, layers, resident)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(expert_cache_stats, io_mode, queue_depth, expert_bytes_total, host,
                                                nvme, layer_residency, prefetch, ring, slot_classes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(model_status, id, path, architecture, n_layer, n_expert,
                                                n_expert_used, n_ctx, n_vocab, file_bytes, dense_bytes, expert_bytes, state,
                                                error)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(memory_stats, host_budget, host_budget_bytes, host_budget_capped,
                                                dense_bytes, experts_bytes, host_slab_bytes, host_slab_slots,
                                                host_slab_mlocked, kv_cache_bytes, kv_cache_used_bytes, kv_cache_cells,
                                                kv_cache_cells_used, scratch_bytes, held_bytes, locked_bytes, rss_bytes,
                                                rss_peak_bytes, physical_bytes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(histogram_stats, le_s, counts, count, sum_s)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(request_timing_stats, time_to_first_token, request_latency, prompt,
                                                generation)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(request_status, id, state, prompt_tokens, generated_tokens,
                                                max_tokens, peer, profile, profile_source, profile_similarity,
                                                pruned_experts_per_layer)

void to_json(nlohmann::json& j, const server_status& s);
void from_json(const nlohmann::json& j, server_status& s);

}  // namespace moed
