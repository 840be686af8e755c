// Making the expert tiers: the options of the host tier (routed experts read from the model
// file into a host slab of a byte budget) and the factory the engine calls. What comes back
// is an expert_source whose control() is the tier's control interface; nothing above
// storage/ names the class behind it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/result.h"
#include "storage/block_reader.h"
#include "storage/expert_source.h"
#include "storage/host_slab.h"
#include "storage/slot_classes.h"

namespace moed::storage {

struct tiered_options {
    std::uint64_t host_budget_bytes = 0;  // must hold at least max_experts_per_acquire slots
    std::uint32_t queue_depth = 32;
    bool allow_uring = true;
    bool allow_direct = true;
    memory_lock lock = memory_lock::best_effort;
    int numa_node = -1;
    std::uint32_t eio_retries = 3;
    // The budget must hold at least this many slots of every slot class (storage/
    // slot_classes.h; one class when every layer's experts are alike). The engine acquires
    // in groups of at most max_held_experts() (the fewest slots of any class), so 1 is
    // enough for correctness.
    std::uint32_t min_slots = 1;
    // Bytes of expert reads in flight at once, demand and prefetch together (0: no bound).
    // It bounds how long a demand read can queue behind prefetches on the disk.
    std::uint64_t max_inflight_bytes = std::uint64_t{256} << 20;
    // A prefetch starts only while all reads in flight stay within this (0: max_inflight_bytes
    // alone), so on a disk that is the bottleneck prefetches use the time it would idle while
    // compute runs, and a demand read never queues behind more than this of them.
    std::uint64_t max_prefetch_inflight_bytes = 0;
    // Slots one layer's loads want at once, which sizes the ring's sections (0: a quarter of
    // the layer's experts, at least 1). The engine passes 2 x the experts used per token.
    std::uint32_t slots_per_layer = 0;
    // Prefetches for layers after the one being computed wait until that layer's own reads
    // were requested (its acquire), so on a disk that serves reads in order they queue behind
    // the reads compute needs first, at the cost of a later start.
    bool prefetch_after_demand = false;
    // The chance that an expert with no prediction is used again when its layer next runs
    // (the need it keeps, scaled down the further away that layer is); prefetches only
    // replace experts whose need is below their score.
    double reuse_prior = 0.3;
    // The most of the slots the hot set may take (set_hot_set()).
    double hot_fraction_max = 0.25;
    // false: one section (plain least-recently-used placement, no hot set), to compare with.
    bool ring = true;
    // The model file is checked this often by a thread of the source (0: no thread; a read
    // that finds the file changed still marks it broken, and check_file() checks on demand).
    std::chrono::milliseconds file_check_interval{1000};
    // Bytes at the start of the file (the GGUF header: metadata and tensor infos) that must be
    // unchanged for a changed file to count as the same model again; 0: not compared.
    std::uint64_t header_bytes = 0;
    // When set, wraps the block reader create() opens (a fault_reader for a fake slow disk in
    // benchmarks); not used for a reader passed to create().
    std::function<result<std::unique_ptr<block_reader>>(std::unique_ptr<block_reader>)> wrap_reader;
};

// The host tier over the model file at `path` (the NVMe tier, always complete), whose
// routed experts `layout` describes, with a working set in host memory of
// options.host_budget_bytes. Errors: a budget below options.min_slots slots of each slot class
// (naming the least budget that works), a layout that runs past the end of the file, I/O setup failures.
result<std::unique_ptr<expert_source>> create_tiered_source(const std::string& path, const expert_layout& layout,
                                                            const tiered_options& options);

// The largest slot the tiered source will use for `layout` at a given alignment (every
// slot's size when the layers' experts are alike).
std::uint64_t tiered_slot_bytes(const expert_layout& layout, std::uint32_t alignment);
// The bytes of the slots of every layer's experts at a given alignment (sum over layers of
// n_expert x the layer's slot): the budget that holds every expert, each in a slot of its
// layer's size; lets callers cap "P% of expert bytes" before creating the source.
std::uint64_t tiered_every_expert_bytes(const expert_layout& layout, std::uint32_t alignment);
// The slot classes the tiered source makes of `budget_bytes` for `layout` at a given
// alignment (storage/slot_classes.h), with at least max(min_slots, 1) slots per class; the
// replay of a trace (scheduler/tier_replay.h) takes the same. Errors as plan_slot_classes().
result<slot_classes> tiered_slot_classes(const expert_layout& layout, std::uint32_t alignment,
                                         std::uint64_t budget_bytes, std::uint32_t min_slots);

}  // namespace moed::storage
