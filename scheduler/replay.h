// Replays a routing trace through a simulated host cache of expert slots under a demand-only
// baseline policy and counts what it costs: demand misses (a chosen expert not resident when
// its layer runs) and bytes read. The cache is a residency table whose loads finish at once;
// the layer's experts are held (not evictable) until the layer is done.
//
// Policies: lru and lfu, and belady (the offline optimum: evict the resident expert whose
// next use is farthest in the future; it reads the trace ahead and is the physical limit on
// loads for any demand-only policy). Scopes: per_layer (the slots are split evenly among
// layers, each layer its own cache) or global (one pool). What moed itself runs (its
// prefetch planner and tier core) is replayed by scheduler/tier_replay.h.
// Threads: none of its own; one call runs on the caller's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "scheduler/trace_data.h"
#include "storage/slot_classes.h"

namespace moed::scheduler {

enum class replay_policy : std::uint8_t { lru, lfu, belady };
enum class cache_scope : std::uint8_t { per_layer, global };
const char* policy_name(replay_policy p) noexcept;
const char* scope_name(cache_scope s) noexcept;

struct replay_options {
    replay_policy policy = replay_policy::lru;
    cache_scope scope = cache_scope::per_layer;
    // Slots in the whole cache; per_layer gives each layer slots / n_layer of them. Each
    // cache must hold at least n_expert_used experts.
    std::uint32_t slots = 0;
    // The host tier's slot classes (storage/slot_classes.h), when the layers' experts differ
    // in size: then `slots` is not used; global is a cache per class (its slots, for its
    // layers' experts), per_layer gives each layer its class's slots / the class's layers.
    storage::slot_classes classes;
};

struct replay_result {
    std::uint64_t steps = 0;          // layer steps (tokens x layers)
    std::uint64_t accesses = 0;       // chosen experts needed
    std::uint64_t demand_misses = 0;  // needed and not resident when the layer ran
    std::uint64_t demand_bytes = 0;
    std::uint64_t bytes_read() const noexcept { return demand_bytes; }
};

// Bytes of one expert of `layer`: trace.info.expert_bytes, or 1 when the trace has none
// (then bytes count expert loads).
std::uint64_t expert_bytes_of(const trace_info& info, std::uint32_t layer) noexcept;

// Errors: a cache smaller than one layer's selection (invalid_argument), a bad trace.
result<replay_result> replay_trace(const trace_data& trace, std::span<const decode_token> order,
                                   const replay_options& options);

}  // namespace moed::scheduler
