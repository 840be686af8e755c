// The ring of sections (SE-MoE) over one tier's slots, as a plan only: which slots form the
// pinned hot set, how the other slots divide into sections, which section each layer loads
// into, and which slot a new load should take. It moves no bytes, owns no memory and takes
// no lock, so the host tier (reads from the model file) and the GPU tier (copies from the
// host) share it: the tier describes its slots through slot_facts and carries out the
// choice. Sections are roles of slot indices, not address ranges, so changing the hot set
// re-plans the ring without moving or dropping a single resident expert.
//
// Geometry (plan_ring): `hot` slots hold the hot set (the experts a profile or the
// statistics say nearly every token uses); the other slots form R sections. A layer wants
// about `slots_per_layer` slots at once (the tier is told 2 x experts used per token: the
// predicted top-2k of a layer, so a prefetch of the next layer has room while the current
// layer computes). When the ring holds a full share for every layer (ring >= n_layer x
// slots_per_layer), R = n_layer: each layer keeps its own section, and whatever of it stays
// resident from one token to the next is a hit. Otherwise R = ring / slots_per_layer, at
// least 2 (one section computes while the next loads) and at most n_layer, and layers share
// sections round-robin: layer l loads into section l mod R, so a lookahead of up to R - 1
// layers never lands in the section being computed. Slots that do not divide evenly go to
// the first sections.
//
// Slot choice (choose_slot): a load takes, in this order of preference, a free slot of its
// layer's section, a free slot elsewhere in the ring, then replaces the resident expert of
// lowest predicted need (oldest use breaking ties) in its own section. A prefetch stops
// there, and only replaces an expert whose need and chance of use are both below its own
// score, never one guarded
// for the layer being computed: a prediction never pushes out what other layers keep. A
// demand load (the layer being computed needs it now) goes on to the rest of the ring, then
// the hot set's spare slots, then guarded experts, and last hot experts, so it always finds
// a slot while any is not busy. A hot load (an expert of the hot set) only fills hot
// slots that do not hold a hot expert. Busy slots (held by a handle, or loading) are never
// chosen.
//
// Slot classes (storage/slot_classes.h): when experts differ in size by layer, the tier's
// slots come in classes, each a contiguous run of slots for the layers whose experts share a
// slot size. Each class is a ring of its own, by the rules above over its own slots and its
// own layers (ranked in layer order within the class): its hot slots, its sections, and a
// load of an expert of layer l chooses among the slots of l's class only, so it never evicts
// an expert of another class. With one class (every expert alike) it is the ring above.
//
// Threads: none of its own; the owning tier calls it under its lock.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "storage/slot_classes.h"

namespace moed::storage {

enum class slot_load_kind : std::uint8_t {
    demand = 0,    // needed by the layer being computed
    prefetch = 1,  // predicted for a coming layer, with a score
    hot = 2,       // an expert of the pinned hot set
};

// What the tier says about a slot when a load looks for room.
enum class slot_availability : std::uint8_t {
    free = 0,         // holds nothing
    reclaimable = 1,  // holds an expert nobody holds or waits for: may be replaced
    guarded = 2,      // reclaimable, but acquired or demanded for the layer being computed
    busy = 3,         // held by a handle, or loading: never replaced
};

struct slot_facts {
    slot_availability availability = slot_availability::busy;
    float need = 0.0f;          // predicted need of the resident expert (higher: keep longer)
    std::uint64_t last_use = 0; // when it was last used, in the tier's ticks (lower: older)
    bool hot_expert = false;    // the resident expert belongs to the hot set
    // The chance it is used when its layer next runs, however far off that is (need may be
    // scaled down by that distance to order victims): what a prefetch's score must beat too.
    float chance = 0.0f;
};

struct ring_plan {
    std::uint32_t hot_slots = 0;
    std::vector<std::uint32_t> section_slots;  // slots of each section; sums to n_slots - hot
};

// The geometry described above. `hot_slots` is clamped to n_slots; slots_per_layer and
// n_layer of 0 count as 1.
ring_plan plan_ring(std::uint32_t n_slots, std::uint32_t n_layer, std::uint32_t slots_per_layer,
                    std::uint32_t hot_slots);

class section_ring {
public:
    // The section number of hot-set slots.
    static constexpr std::uint32_t hot = std::numeric_limits<std::uint32_t>::max();

    // Plans a ring of one class with no hot slots; slots join sections in index order.
    void reset(std::uint32_t n_slots, std::uint32_t n_layer, std::uint32_t slots_per_layer);
    // Plans a ring per class of `classes` with no hot slots. With `layer_sections` each
    // class's sections are planned for its layers as above; without, each class is one
    // section (the ring off: least recently used among unpredicted experts).
    void reset(const slot_classes& classes, std::uint32_t slots_per_layer, bool layer_sections);
    // Makes exactly `slots` (distinct, in range) the hot set and re-plans each class's
    // sections over its remaining slots (in index order). Contents are the tier's business:
    // nothing moves.
    void assign_hot(std::span<const std::uint32_t> slots);
    // Exchanges the roles of two slots of one class (a hot slot adopting a hot expert that a
    // ring slot holds, without reading it again).
    void swap_roles(std::uint32_t a, std::uint32_t b);

    std::uint32_t n_slots() const noexcept { return static_cast<std::uint32_t>(role_.size()); }
    std::uint32_t slots_per_layer() const noexcept { return slots_per_layer_; }
    // Sections of every class together, numbered class by class.
    std::uint32_t n_sections() const noexcept { return static_cast<std::uint32_t>(members_.size()); }
    // hot when the layer's class has no ring slot (all of them hot).
    std::uint32_t section_of_layer(std::uint32_t layer) const noexcept;
    // hot for a slot of the hot set.
    std::uint32_t section_of_slot(std::uint32_t slot) const noexcept { return role_[slot]; }
    std::span<const std::uint32_t> section_members(std::uint32_t section) const noexcept;
    // The hot slots of every class, class by class; and those of one class.
    std::span<const std::uint32_t> hot_members() const noexcept { return hot_members_; }
    std::span<const std::uint32_t> hot_members_of_class(std::uint32_t cls) const noexcept;
    std::uint32_t n_classes() const noexcept { return static_cast<std::uint32_t>(classes_.size()); }
    std::uint32_t class_of_layer(std::uint32_t layer) const noexcept { return classes_plan_.class_of_layer(layer); }
    std::uint32_t class_of_slot(std::uint32_t slot) const noexcept { return classes_plan_.class_of_slot(slot); }

    // The slot a load of an expert of `layer` should take, by the rules above; nullopt when
    // none may be taken. `score` matters for prefetches only. `facts(slot)` returns the
    // slot's slot_facts.
    template <typename Facts>
    std::optional<std::uint32_t> choose_slot(std::uint32_t layer, slot_load_kind kind, float score,
                                             Facts&& facts) const;

private:
    struct class_ring {
        std::uint32_t first_slot = 0;
        std::uint32_t n_slots = 0;
        std::uint32_t n_layer = 1;        // layers its sections are planned for
        std::uint32_t first_section = 0;  // its sections are [first_section, first_section + n_sections)
        std::uint32_t n_sections = 0;
        std::uint32_t first_hot = 0;      // its hot slots are hot_members_[first_hot, first_hot + n_hot)
        std::uint32_t n_hot = 0;
    };
    void reset_classes(std::uint32_t slots_per_layer);
    // Re-plans every class's sections over its slots that are not hot.
    void place_rings(std::span<const std::uint8_t> is_hot);
    // Preference class of a slot for a load (lower first), or no_rank when it may not be taken.
    static constexpr std::uint8_t no_rank = 0xff;
    std::uint8_t rank(std::uint32_t slot, std::uint32_t own, slot_load_kind kind, float score,
                      const slot_facts& f) const noexcept;

    slot_classes classes_plan_;
    std::vector<class_ring> classes_;
    bool layer_sections_ = true;
    std::uint32_t slots_per_layer_ = 1;
    std::vector<std::uint32_t> role_;                  // slot -> section, or hot
    std::vector<std::uint32_t> position_;              // slot -> index within its member list
    std::vector<std::vector<std::uint32_t>> members_;  // section -> its slots
    std::vector<std::uint32_t> hot_members_;
};

template <typename Facts>
std::optional<std::uint32_t> section_ring::choose_slot(std::uint32_t layer, slot_load_kind kind, float score,
                                                       Facts&& facts) const {
    const std::uint32_t own = section_of_layer(layer);
    const class_ring& cls = classes_[class_of_layer(layer)];
    std::optional<std::uint32_t> best;
    std::uint8_t best_rank = no_rank;
    float best_need = 0.0f;
    std::uint64_t best_use = 0;
    for (std::uint32_t s = cls.first_slot; s < cls.first_slot + cls.n_slots; ++s) {
        const slot_facts f = facts(s);
        const std::uint8_t r = rank(s, own, kind, score, f);
        if (r == no_rank) continue;
        const bool better = !best || r < best_rank ||
                            (r == best_rank && (f.need < best_need || (f.need == best_need && f.last_use < best_use)));
        if (better) {
            best = s;
            best_rank = r;
            best_need = f.need;
            best_use = f.last_use;
            if (r == 0 && f.availability == slot_availability::free) break;  // nothing beats it
        }
    }
    return best;
}

}  // namespace moed::storage
