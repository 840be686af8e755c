// The tiered expert source: routed experts live in the model file (the NVMe tier, always
// complete) and a working set lives in the host slab (the host tier, a byte budget).
// acquire_many() requests every missing expert of a layer at once (one batched submission),
// then waits only for those; prefetch() requests experts without waiting (the scheduler's
// hook). A residency table keeps each slot's state (free, loading, ready, in use,
// evicting); handles are reference counted, so a slot in use is never evicted; the eviction
// policy picks victims among ready, unheld slots.
//
// I/O runs on the block reader; a completion thread reaps it, resumes short reads, retries
// EINTR/EAGAIN and EIO (a bounded number of times), then marks the slot ready or failed and
// wakes the waiters. A failed load fails the acquire with an error naming the expert and the
// file; the slot returns to the free list and the next request tries again.
// Threads: acquire/acquire_many/prefetch/release and stats() may be called from any thread;
// the completion thread is private. Callers together must not hold more than slot_count()
// experts: an acquire that finds every slot held waits for a release (and logs a warning
// every 10 s); one call asking for more distinct experts than there are slots is an error.
// Every handle must be released before the source is destroyed (checked by an assertion);
// destruction waits for reads still in flight (prefetches) before freeing the slab.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "storage/block_reader.h"
#include "storage/eviction_policy.h"
#include "storage/expert_source.h"
#include "storage/host_slab.h"
#include "storage/tier_stats.h"

namespace moed::storage {

struct tiered_options {
    std::uint64_t host_budget_bytes = 0;  // must hold at least max_experts_per_acquire slots
    std::uint32_t queue_depth = 32;
    bool allow_uring = true;
    bool allow_direct = true;
    memory_lock lock = memory_lock::best_effort;
    int numa_node = -1;
    std::uint32_t eio_retries = 3;
    // The budget must hold at least this many slots. The engine acquires in groups of at
    // most max_held_experts() (= slot_count()), so 1 is enough for correctness.
    std::uint32_t min_slots = 1;
};

class tiered_expert_source final : public expert_source {
public:
    // `path` is the model file `layout` was read from. `reader` may be supplied (tests
    // inject faults); otherwise open_block_reader() is used with `options`.
    static result<std::unique_ptr<tiered_expert_source>> create(
        const std::string& path, const expert_layout& layout, const tiered_options& options,
        std::unique_ptr<eviction_policy> policy = nullptr,
        std::unique_ptr<block_reader> reader = nullptr);
    ~tiered_expert_source() override;

    result<expert_handle> acquire(ExpertId id) override;
    result<void> acquire_many(std::span<const ExpertId> ids, std::vector<expert_handle>& handles) override;
    // Starts loading those of `ids` that are not resident or loading, while free or
    // evictable slots remain; never waits and never evicts a slot in use.
    void prefetch(std::span<const ExpertId> ids);

    expert_cache_stats stats() const;
    std::uint32_t slot_count() const noexcept;
    std::uint32_t max_held_experts() const noexcept override { return slot_count(); }
    // Bytes one host slot takes (the largest expert of any layer, each matrix aligned).
    std::uint64_t slot_bytes() const noexcept;

protected:
    void release(ExpertId id, std::uint64_t token) noexcept override;

private:
    struct impl;
    explicit tiered_expert_source(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

// The slot size the tiered source will use for `layout` at a given alignment; lets callers
// turn "25% of expert bytes" into a budget before creating it.
std::uint64_t tiered_slot_bytes(const expert_layout& layout, std::uint32_t alignment);

}  // namespace moed::storage
