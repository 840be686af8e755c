// Replays a routing trace through a simulated host cache of expert slots and counts what an
// eviction policy costs: demand misses (a chosen expert not resident when its layer runs)
// and bytes read. The cache is a residency table like storage's tiered source (the same
// event order reaches the same storage::eviction_policy objects: a hit is on_access then
// on_evictable(false); a miss takes a free slot or the policy's victim; the layer's experts
// are held, so not evictable, until the layer is done), with loads that finish at once.
//
// Policies: lru and lfu (demand only), belady (demand only, the offline optimum: evict the
// resident expert whose next use is farthest in the future; it reads the trace ahead and is
// the physical limit on loads for any policy), and scored (scheduler/eviction_scoring.h:
// value by predicted need, fed by the expert predictor, which may also prefetch).
// Scopes: per_layer (the slots are split evenly among layers, each layer its own cache) or
// global (one pool).
//
// The scored policy sees the trace only as the engine would, step by step: at the start of
// layer j of a token it gets that record's lookahead rows, may prefetch the predicted
// experts of layers j..j+window-1 (replacing a resident expert only when the candidate is
// worth more, and at most max_per_step loads per layer step, which bounds bytes in flight),
// then the router's choice for j arrives and the layer's demand loads run. A prefetch for
// layer j itself is issued before its router runs (the engine overlaps it with attention);
// min_distance 2 or more leaves at least one whole layer's compute for every read.
// Bytes read = demand loads + prefetch loads; a prefetched expert evicted (or left at the
// end) without having been used counts as wasted.
// Threads: none of its own; one call runs on the caller's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "scheduler/eviction_scoring.h"
#include "scheduler/predictor.h"
#include "scheduler/trace_data.h"

namespace moed::scheduler {

enum class replay_policy : std::uint8_t { lru, lfu, belady, scored };
enum class cache_scope : std::uint8_t { per_layer, global };
const char* policy_name(replay_policy p) noexcept;
const char* scope_name(cache_scope s) noexcept;

struct prefetch_params {
    bool enabled = true;
    // Targets at step j are layers j + min_distance - 1 .. j + max_distance - 1.
    std::uint32_t min_distance = 1;
    std::uint32_t max_distance = 1;
    // A candidate needs at least this calibrated probability of being chosen ...
    float min_probability = 0.5f;
    // ... and a value above margin x the value of the expert it would replace.
    float value_margin = 1.0f;
    std::uint32_t max_per_step = 8;
};

struct replay_options {
    replay_policy policy = replay_policy::lru;
    cache_scope scope = cache_scope::per_layer;
    // Slots in the whole cache; per_layer gives each layer slots / n_layer of them. Each
    // cache must hold at least n_expert_used experts.
    std::uint32_t slots = 0;
    // For the scored policy: its predictor (n_layer, n_expert, n_expert_used and
    // lookahead_depth are taken from the trace), value and prefetch settings.
    predictor_config predictor;
    expert_value_params value;
    prefetch_params prefetch;
    // The task profile for a sequence (by tag): [n_layer * n_expert] or empty for none.
    std::function<std::span<const float>(std::uint32_t tag)> profile_of;
};

struct replay_result {
    std::uint64_t steps = 0;          // layer steps (tokens x layers)
    std::uint64_t accesses = 0;       // chosen experts needed
    std::uint64_t demand_misses = 0;  // needed and not resident when the layer ran
    std::uint64_t demand_bytes = 0;
    std::uint64_t prefetch_loads = 0;
    std::uint64_t prefetch_bytes = 0;
    std::uint64_t prefetch_used = 0;  // prefetched experts used before eviction
    std::uint64_t wasted_prefetches = 0;
    std::uint64_t wasted_prefetch_bytes = 0;
    std::uint64_t bytes_read() const noexcept { return demand_bytes + prefetch_bytes; }
};

// Bytes of one expert of `layer`: trace.info.expert_bytes, or 1 when the trace has none
// (then bytes count expert loads).
std::uint64_t expert_bytes_of(const trace_info& info, std::uint32_t layer) noexcept;

// Errors: a cache smaller than one layer's selection (invalid_argument), a bad trace.
result<replay_result> replay_trace(const trace_data& trace, std::span<const decode_token> order,
                                   const replay_options& options);

}  // namespace moed::scheduler
