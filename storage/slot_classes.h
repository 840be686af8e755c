// Slot classes: how a tier's memory is cut into expert slots when experts differ in size by
// layer. A quantizer's mixes (Q4_K_M puts Q6_K in about half the layers' ffn_down; Q2_K,
// Q3_K_M and IQ4_XS mix types too; rows that do not divide into 256 fall back to Q5_0/Q8_0)
// give layers experts of different bytes. Slots sized for the largest expert of any layer
// would waste the difference in every slot, so layers whose slots need the same bytes
// (slot_geometry.h: each matrix aligned) share a class, and each class owns a contiguous run
// of slots of its own size in the tier's memory. A load of an expert of layer l takes a slot
// of l's class only, and only that class's experts are its victims.
//
// plan_slot_classes() splits a byte budget over the classes in proportion to what each
// class's experts need (layers x n_expert x slot bytes), every class getting at least a
// minimum of slots, without the class runs together ever exceeding the budget. A model whose
// layers all need the same bytes has one class, of budget / slot bytes slots: the same tier
// as before classes existed. The host tier (tiered_expert_source), the block mover (which
// places bytes by slot), the tier core and section ring (placement within a class), and the
// tier replay (scheduler/tier_replay.h, which must forecast the same capacities) all read
// one plan; a device tier can cut device memory by the same rules.
// Threads: an immutable value once planned; any thread may read it.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/assert.h"
#include "common/result.h"

namespace moed::storage {

struct slot_class {
    std::uint64_t slot_bytes = 0;    // of each of its slots
    std::uint32_t first_slot = 0;    // its slots are [first_slot, first_slot + n_slots)
    std::uint32_t n_slots = 0;
    std::uint64_t offset_bytes = 0;  // where its run starts in the tier's memory
    std::uint32_t n_layer = 0;       // layers whose experts it holds
};

class slot_classes {
public:
    slot_classes() = default;
    // One class of `n_slots` slots of `slot_bytes` for the `n_layer` layers: a tier whose
    // experts are alike (or one that knows no sizes, with slot_bytes 0). Keeps no layer
    // table: every layer maps to it, ranked as itself.
    static slot_classes uniform(std::uint32_t n_slots, std::uint64_t slot_bytes, std::uint32_t n_layer = 0);

    std::uint32_t n_classes() const noexcept { return static_cast<std::uint32_t>(classes_.size()); }
    std::span<const slot_class> classes() const noexcept { return classes_; }
    const slot_class& operator[](std::uint32_t c) const noexcept {
        MOED_ASSERT(c < classes_.size());
        return classes_[c];
    }
    // Slots and bytes of every class together.
    std::uint32_t n_slots() const noexcept { return n_slots_; }
    std::uint64_t bytes() const noexcept { return bytes_; }
    // The largest slot of any class.
    std::uint64_t slot_bytes_max() const noexcept;
    // The fewest slots of any class: what one caller may hold of a single layer at once.
    std::uint32_t n_slots_min() const noexcept;

    // Layers the plan was made for (0 for a uniform plan, which serves any layer).
    std::uint32_t n_layer() const noexcept { return static_cast<std::uint32_t>(class_of_layer_.size()); }

    // The class of `layer`'s experts (0 for every layer of a uniform plan).
    std::uint32_t class_of_layer(std::uint32_t layer) const noexcept {
        if (class_of_layer_.empty()) return 0;
        MOED_ASSERT(layer < class_of_layer_.size());
        return class_of_layer_[layer];
    }
    // `layer`'s position among its class's layers, in layer order (the layer itself for a
    // uniform plan).
    std::uint32_t rank_in_class(std::uint32_t layer) const noexcept {
        if (rank_in_class_.empty()) return layer;
        MOED_ASSERT(layer < rank_in_class_.size());
        return rank_in_class_[layer];
    }
    std::uint32_t class_of_slot(std::uint32_t slot) const noexcept;
    // Where `slot` starts in the tier's memory, and how many bytes it has.
    std::uint64_t slot_offset(std::uint32_t slot) const noexcept;
    std::uint64_t slot_bytes(std::uint32_t slot) const noexcept { return classes_[class_of_slot(slot)].slot_bytes; }
    // The slot whose bytes hold `offset` (which must lie inside bytes()).
    std::uint32_t slot_at(std::uint64_t offset) const noexcept;

private:
    friend result<slot_classes> plan_slot_classes(std::span<const std::uint64_t> layer_slot_bytes,
                                                  std::uint32_t n_expert, std::uint64_t budget_bytes,
                                                  std::uint32_t min_slots);
    void finish() noexcept;  // sets first_slot, offset_bytes and the totals from n_slots

    std::vector<slot_class> classes_;
    std::vector<std::uint32_t> class_of_layer_;
    std::vector<std::uint32_t> rank_in_class_;
    std::uint32_t n_slots_ = 0;
    std::uint64_t bytes_ = 0;
};

// The classes of a tier whose layer l needs slots of layer_slot_bytes[l] (each non-zero) for
// experts of `n_expert` per layer, in a budget of `budget_bytes`. Classes are numbered by
// their first layer. Each class gets floor(budget x its need / all classes' need / its slot
// bytes) slots, at least max(min_slots, 1) (the others then share what is left in the same
// proportion); bytes the rounding leaves go to further slots, largest remainder first, where
// they fit. So bytes() <= budget_bytes always, and one class gets budget / slot bytes slots.
// Errors (out_of_memory): a budget below max(min_slots, 1) slots of every class; the message
// names the bytes needed (and, for one class, the slots the budget holds), as "the budget
// must be at least N (B bytes)".
result<slot_classes> plan_slot_classes(std::span<const std::uint64_t> layer_slot_bytes, std::uint32_t n_expert,
                                       std::uint64_t budget_bytes, std::uint32_t min_slots);

}  // namespace moed::storage
