// The slot table of one tier: what each slot of the tier's memory holds, in which state, who
// holds it, and the residency map from expert to slot. The host tier keeps one over the host
// slab; a device tier keeps one over device memory. The table moves no bytes and chooses no
// slot (section_ring does): it records what the tier decided, and every transition asserts
// its preconditions, so a tier that breaks the state machine aborts at once instead of
// handing out a slot twice.
//
// Slot states:
//   free --begin_load--> loading --end_load_ok--> in_use (refs > 0) or ready (refs 0)
//   ready --pin--> in_use --unpin (last ref)--> ready
//   loading --end_load_failed--> failed (refs > 0: waiters still read the error) or free
//   failed --unpin (last ref)--> free
//   ready --evict--> free
// A slot holds a clean copy of the level below, so an eviction writes nothing back.
// `refs` counts handles plus acquirers waiting for a load; a loading slot may hold refs.
//
// Threads: none of its own and no lock inside; the owning tier calls every method under
// its own lock.
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "common/ids.h"
#include "common/result.h"

namespace moed::storage {

enum class slot_state : std::uint8_t { free, loading, ready, in_use, failed };
const char* slot_state_name(slot_state s) noexcept;

struct slot_entry {
    slot_state state = slot_state::free;
    ExpertId id;                     // the expert held or loading (meaningless when free)
    std::uint32_t refs = 0;          // handles plus acquirers waiting for the load
    bool admitted = false;           // loading: its bytes count against the in-flight bound
    bool prefetched_unused = false;  // loaded by a prefetch and not acquired since
    bool predicted = false;          // pred_score holds while pred_gen is its layer's generation
    float pred_score = 0.0f;
    std::uint32_t pred_gen = 0;
    std::uint64_t guard_epoch = 0;   // equal to the tier's layer epoch: guarded for the layer computed now
    std::uint64_t last_use = 0;      // the table's tick at the last pin, release or load
    moed::error failure;             // failed: why the load failed (read by the waiters)
    std::chrono::steady_clock::time_point load_start;  // when the load was admitted
};

class slot_table {
public:
    static constexpr std::uint32_t no_slot = std::numeric_limits<std::uint32_t>::max();

    // `n_slots` free slots for experts of `layer_expert_bytes.size()` layers x `n_expert`;
    // layer_expert_bytes[l] is the size of one expert of layer l (what residency counts).
    void reset(std::uint32_t n_slots, std::uint32_t n_expert, std::span<const std::uint64_t> layer_expert_bytes);

    std::uint32_t n_slots() const noexcept { return static_cast<std::uint32_t>(slots_.size()); }
    const slot_entry& operator[](std::uint32_t slot) const noexcept { return slots_[slot]; }
    // The slot holding or loading `id`, or no_slot.
    std::uint32_t find(ExpertId id) const noexcept { return residency_[index(id)]; }
    std::uint64_t resident_bytes() const noexcept { return resident_bytes_; }
    std::uint64_t resident_experts() const noexcept { return resident_experts_; }
    // True for ready and in-use slots: the expert's bytes are there.
    bool holds_bytes(std::uint32_t slot) const noexcept {
        return slots_[slot].state == slot_state::ready || slots_[slot].state == slot_state::in_use;
    }

    // --- transitions (each asserts the state it starts from) ---
    // free (no refs) -> loading `id` with `refs` waiters; `id` becomes findable at once, so
    // a second request joins this load. Clears the prediction, guard and admission.
    void begin_load(std::uint32_t slot, ExpertId id, std::uint32_t refs);
    // loading -> in_use (refs) or ready (none); the expert counts as resident.
    void end_load_ok(std::uint32_t slot);
    // loading -> failed (refs: freed when the last waiter unpins) or free; `id` is no longer
    // findable, so the next request reads it afresh.
    void end_load_failed(std::uint32_t slot, moed::error why);
    // One more ref on a resident or loading slot (ready -> in_use). Returns the state it
    // had before.
    slot_state pin(std::uint32_t slot);
    // One ref fewer on the slot holding `id`. The last ref turns in_use -> ready (a use) and
    // failed -> free; a loading slot stays loading (its load finishes into a ready slot).
    // Returns the state after.
    slot_state unpin(std::uint32_t slot, ExpertId id);
    // ready (no refs) -> free; the expert is no longer resident.
    void evict(std::uint32_t slot);

    // --- bookkeeping of the tier (no state change) ---
    // Marks a use now (last_use takes the next tick).
    void touch(std::uint32_t slot) noexcept { slots_[slot].last_use = ++tick_; }
    // loading, not yet admitted -> admitted at `now`.
    void admit(std::uint32_t slot, std::chrono::steady_clock::time_point now);
    void set_prefetched_unused(std::uint32_t slot, bool v) noexcept { slots_[slot].prefetched_unused = v; }
    // A prediction of need `score` (clamped to [0, 1]) for generation `gen` of the slot's
    // layer; a second prediction of the same generation keeps the higher score.
    void predict(std::uint32_t slot, float score, std::uint32_t gen) noexcept;
    void guard(std::uint32_t slot, std::uint64_t epoch) noexcept { slots_[slot].guard_epoch = epoch; }

private:
    std::size_t index(ExpertId id) const noexcept { return static_cast<std::size_t>(id.layer) * n_expert_ + id.expert; }

    std::vector<slot_entry> slots_;
    std::vector<std::uint32_t> residency_;  // layer * n_expert + expert -> slot or no_slot
    std::vector<std::uint64_t> layer_bytes_;
    std::uint32_t n_expert_ = 0;
    std::uint64_t tick_ = 0;  // advances at every use, for last_use
    std::uint64_t resident_bytes_ = 0;
    std::uint64_t resident_experts_ = 0;
};

}  // namespace moed::storage
