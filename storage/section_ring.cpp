#include "storage/section_ring.h"

#include <algorithm>

#include "common/assert.h"

namespace moed::storage {

ring_plan plan_ring(std::uint32_t n_slots, std::uint32_t n_layer, std::uint32_t slots_per_layer,
                    std::uint32_t hot_slots) {
    n_layer = std::max<std::uint32_t>(n_layer, 1);
    slots_per_layer = std::max<std::uint32_t>(slots_per_layer, 1);
    ring_plan plan;
    plan.hot_slots = std::min(hot_slots, n_slots);
    const std::uint32_t ring = n_slots - plan.hot_slots;
    if (ring == 0) return plan;
    std::uint32_t sections = 0;
    if (static_cast<std::uint64_t>(ring) >= static_cast<std::uint64_t>(n_layer) * slots_per_layer) {
        sections = n_layer;  // a section per layer
    } else {
        sections = std::clamp<std::uint32_t>(ring / slots_per_layer, std::min<std::uint32_t>(2, ring), n_layer);
    }
    plan.section_slots.assign(sections, ring / sections);
    for (std::uint32_t s = 0; s < ring % sections; ++s) ++plan.section_slots[s];
    return plan;
}

void section_ring::reset(std::uint32_t n_slots, std::uint32_t n_layer, std::uint32_t slots_per_layer) {
    classes_plan_ = slot_classes::uniform(n_slots, 0, n_layer);
    layer_sections_ = true;
    reset_classes(slots_per_layer);
}

void section_ring::reset(const slot_classes& classes, std::uint32_t slots_per_layer, bool layer_sections) {
    classes_plan_ = classes;
    layer_sections_ = layer_sections;
    reset_classes(slots_per_layer);
}

void section_ring::reset_classes(std::uint32_t slots_per_layer) {
    slots_per_layer_ = std::max<std::uint32_t>(slots_per_layer, 1);
    const std::uint32_t n = classes_plan_.n_slots();
    classes_.clear();
    for (const slot_class& c : classes_plan_.classes()) {
        class_ring r;
        r.first_slot = c.first_slot;
        r.n_slots = c.n_slots;
        r.n_layer = layer_sections_ ? std::max<std::uint32_t>(c.n_layer, 1) : 1;
        classes_.push_back(r);
    }
    role_.assign(n, 0);
    position_.assign(n, 0);
    hot_members_.clear();
    place_rings(std::vector<std::uint8_t>(n, 0));
}

void section_ring::assign_hot(std::span<const std::uint32_t> slots) {
    std::vector<std::uint8_t> is_hot(n_slots(), 0);
    for (std::uint32_t s : slots) {
        MOED_ASSERT(s < n_slots() && is_hot[s] == 0);
        is_hot[s] = 1;
    }
    // Hot slots are listed class by class (each class's in the order given), so each class's
    // hot set is one run of the list.
    hot_members_.clear();
    for (std::uint32_t c = 0; c < classes_.size(); ++c) {
        class_ring& r = classes_[c];
        r.first_hot = static_cast<std::uint32_t>(hot_members_.size());
        for (std::uint32_t s : slots) {
            if (s < r.first_slot || s >= r.first_slot + r.n_slots) continue;
            position_[s] = static_cast<std::uint32_t>(hot_members_.size());
            role_[s] = hot;
            hot_members_.push_back(s);
        }
        r.n_hot = static_cast<std::uint32_t>(hot_members_.size()) - r.first_hot;
    }
    place_rings(is_hot);
}

void section_ring::place_rings(std::span<const std::uint8_t> is_hot) {
    members_.clear();
    std::vector<std::uint32_t> ring_slots;
    for (class_ring& r : classes_) {
        ring_slots.clear();
        for (std::uint32_t s = r.first_slot; s < r.first_slot + r.n_slots; ++s) {
            if (is_hot[s] == 0) ring_slots.push_back(s);
        }
        const ring_plan plan = plan_ring(static_cast<std::uint32_t>(ring_slots.size()), r.n_layer, slots_per_layer_, 0);
        r.first_section = static_cast<std::uint32_t>(members_.size());
        r.n_sections = static_cast<std::uint32_t>(plan.section_slots.size());
        std::size_t next = 0;
        for (std::uint32_t k = 0; k < plan.section_slots.size(); ++k) {
            const auto sec = static_cast<std::uint32_t>(members_.size());
            std::vector<std::uint32_t>& members = members_.emplace_back();
            members.reserve(plan.section_slots[k]);
            for (std::uint32_t i = 0; i < plan.section_slots[k]; ++i) {
                const std::uint32_t s = ring_slots[next++];
                role_[s] = sec;
                position_[s] = i;
                members.push_back(s);
            }
        }
        MOED_ASSERT(next == ring_slots.size());
    }
}

void section_ring::swap_roles(std::uint32_t a, std::uint32_t b) {
    MOED_ASSERT(a < n_slots() && b < n_slots());
    if (a == b) return;
    MOED_ASSERT(class_of_slot(a) == class_of_slot(b));  // a slot's size is its class's
    auto list_of = [&](std::uint32_t role) -> std::vector<std::uint32_t>& {
        return role == hot ? hot_members_ : members_[role];
    };
    const std::uint32_t ra = role_[a], rb = role_[b];
    const std::uint32_t pa = position_[a], pb = position_[b];
    list_of(ra)[pa] = b;
    list_of(rb)[pb] = a;
    role_[a] = rb;
    role_[b] = ra;
    position_[a] = pb;
    position_[b] = pa;
}

std::uint32_t section_ring::section_of_layer(std::uint32_t layer) const noexcept {
    const class_ring& r = classes_[class_of_layer(layer)];
    if (r.n_sections == 0) return hot;
    return r.first_section + classes_plan_.rank_in_class(layer) % r.n_sections;
}

std::span<const std::uint32_t> section_ring::section_members(std::uint32_t section) const noexcept {
    if (section == hot) return hot_members_;
    MOED_ASSERT(section < members_.size());
    return members_[section];
}

std::span<const std::uint32_t> section_ring::hot_members_of_class(std::uint32_t cls) const noexcept {
    MOED_ASSERT(cls < classes_.size());
    return std::span<const std::uint32_t>(hot_members_).subspan(classes_[cls].first_hot, classes_[cls].n_hot);
}

std::uint8_t section_ring::rank(std::uint32_t slot, std::uint32_t own, slot_load_kind kind, float score,
                                const slot_facts& f) const noexcept {
    const std::uint32_t role = role_[slot];
    const bool in_hot = role == hot;
    const bool mine = role == own;
    switch (f.availability) {
        case slot_availability::busy: return no_rank;
        case slot_availability::free:
            if (kind == slot_load_kind::hot) return in_hot ? 0 : no_rank;
            if (in_hot) return kind == slot_load_kind::demand ? 4 : no_rank;
            return mine ? 0 : 1;
        case slot_availability::reclaimable:
        case slot_availability::guarded: {
            const bool guarded = f.availability == slot_availability::guarded;
            if (kind == slot_load_kind::hot) return in_hot && !f.hot_expert && !guarded ? 1 : no_rank;
            if (kind == slot_load_kind::prefetch) {
                // Only within its own section: a prediction never pushes out what another
                // layer keeps (which it would need back later, at the price of a read).
                if (!mine || guarded || f.hot_expert || !(std::max(f.need, f.chance) < score)) return no_rank;
                return 2;
            }
            // demand
            if (f.hot_expert) return 7;
            if (guarded) return 6;
            if (in_hot) return 5;
            return mine ? 2 : 3;
        }
    }
    return no_rank;
}

}  // namespace moed::storage
