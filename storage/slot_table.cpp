#include "storage/slot_table.h"

#include <algorithm>

#include "common/assert.h"

namespace moed::storage {

const char* slot_state_name(slot_state s) noexcept {
    switch (s) {
        case slot_state::free: return "free";
        case slot_state::loading: return "loading";
        case slot_state::ready: return "ready";
        case slot_state::in_use: return "in_use";
        case slot_state::failed: return "failed";
    }
    return "unknown";
}

void slot_table::reset(std::uint32_t n_slots, std::uint32_t n_expert, std::span<const std::uint64_t> layer_expert_bytes) {
    slots_.assign(n_slots, slot_entry{});
    n_expert_ = n_expert;
    layer_bytes_.assign(layer_expert_bytes.begin(), layer_expert_bytes.end());
    residency_.assign(layer_bytes_.size() * n_expert, no_slot);
    tick_ = 0;
    resident_bytes_ = 0;
    resident_experts_ = 0;
}

void slot_table::begin_load(std::uint32_t slot, ExpertId id, std::uint32_t refs) {
    MOED_ASSERT(slot < n_slots() && id.layer < layer_bytes_.size() && id.expert < n_expert_);
    slot_entry& e = slots_[slot];
    MOED_ASSERT(e.state == slot_state::free && e.refs == 0);
    MOED_ASSERT(residency_[index(id)] == no_slot);  // one slot per expert
    e.state = slot_state::loading;
    e.id = id;
    e.refs = refs;
    e.admitted = false;
    e.prefetched_unused = false;
    e.predicted = false;
    e.guard_epoch = 0;
    e.failure = moed::error{};
    residency_[index(id)] = slot;
}

void slot_table::admit(std::uint32_t slot, std::chrono::steady_clock::time_point now) {
    slot_entry& e = slots_[slot];
    MOED_ASSERT(e.state == slot_state::loading && !e.admitted);
    e.admitted = true;
    e.load_start = now;
}

void slot_table::end_load_ok(std::uint32_t slot) {
    slot_entry& e = slots_[slot];
    MOED_ASSERT(e.state == slot_state::loading && e.admitted);
    resident_bytes_ += layer_bytes_[e.id.layer];
    ++resident_experts_;
    touch(slot);
    e.state = e.refs > 0 ? slot_state::in_use : slot_state::ready;
}

void slot_table::end_load_failed(std::uint32_t slot, moed::error why) {
    slot_entry& e = slots_[slot];
    MOED_ASSERT(e.state == slot_state::loading);
    MOED_ASSERT(residency_[index(e.id)] == slot);
    residency_[index(e.id)] = no_slot;
    e.prefetched_unused = false;
    e.failure = std::move(why);
    e.state = e.refs > 0 ? slot_state::failed : slot_state::free;
}

slot_state slot_table::pin(std::uint32_t slot) {
    slot_entry& e = slots_[slot];
    const slot_state before = e.state;
    MOED_ASSERT(before == slot_state::ready || before == slot_state::in_use || before == slot_state::loading);
    if (before == slot_state::ready) e.state = slot_state::in_use;
    ++e.refs;
    return before;
}

slot_state slot_table::unpin(std::uint32_t slot, ExpertId id) {
    MOED_ASSERT(slot < n_slots());
    slot_entry& e = slots_[slot];
    MOED_ASSERT(e.refs > 0 && e.id == id);
    if (--e.refs > 0) return e.state;
    if (e.state == slot_state::in_use) {
        e.state = slot_state::ready;
        touch(slot);
    } else if (e.state == slot_state::failed) {
        e.state = slot_state::free;
    }
    return e.state;
}

void slot_table::evict(std::uint32_t slot) {
    slot_entry& e = slots_[slot];
    MOED_ASSERT(e.state == slot_state::ready && e.refs == 0);
    MOED_ASSERT(residency_[index(e.id)] == slot);
    residency_[index(e.id)] = no_slot;
    resident_bytes_ -= layer_bytes_[e.id.layer];
    --resident_experts_;
    e.prefetched_unused = false;
    e.predicted = false;
    e.state = slot_state::free;
}

void slot_table::predict(std::uint32_t slot, float score, std::uint32_t gen) noexcept {
    slot_entry& e = slots_[slot];
    // Scores above 1 count as certain.
    score = std::clamp(score, 0.0f, 1.0f);
    if (e.predicted && e.pred_gen == gen) score = std::max(score, e.pred_score);
    e.predicted = true;
    e.pred_score = score;
    e.pred_gen = gen;
}

}  // namespace moed::storage
