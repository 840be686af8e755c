// Which resident expert leaves a cache when a slot is needed: the demand-only baselines the
// replay measures moed's own placement against (LRU here; LFU and Belady's optimum in
// scheduler/replay.cpp). moed's tiers place by storage/section_ring.h instead.
// The residency table tells the policy about every slot's life (insert, access, removal)
// and asks it for a victim among slots that are evictable (ready, no holder). A slot in use
// or loading is never offered.
// Threads: called with the residency table's lock held; implementations need no locking.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "common/ids.h"

namespace moed::storage {

class eviction_policy {
public:
    virtual ~eviction_policy() = default;
    virtual const char* name() const noexcept = 0;
    // The table has `n_slots` slots, numbered 0..n_slots-1.
    virtual void reset(std::uint32_t n_slots) = 0;
    // `slot` now holds `id` (ready to use).
    virtual void on_insert(std::uint32_t slot, ExpertId id) = 0;
    // `slot` was used (acquired) again.
    virtual void on_access(std::uint32_t slot) = 0;
    // `slot` became free (evicted, or its load failed).
    virtual void on_remove(std::uint32_t slot) = 0;
    // A slot becomes evictable (no holder) / stops being evictable (acquired).
    virtual void on_evictable(std::uint32_t slot, bool evictable) = 0;
    // The slot to evict among evictable ones; nullopt when none is.
    virtual std::optional<std::uint32_t> choose_victim() = 0;
};

// Least recently used, O(1) per event (an intrusive list over slots).
std::unique_ptr<eviction_policy> make_lru_policy();

}  // namespace moed::storage
