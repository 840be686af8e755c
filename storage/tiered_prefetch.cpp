// The prefetch pipeline and placement of the tiered expert source: scored requests, their
// priority queue, staleness (superseded and passed layers), the in-flight bound, the hot set
// and the need scores the ring reclaims slots by. See tiered_expert_source.h for the
// contract and tiered_state.h for the slot state machine.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/log.h"
#include "storage/tiered_state.h"

namespace moed::storage {

using namespace tiered_detail;

// --- need, facts, guards (mutex held) ---

float tiered_expert_source::impl::need_of(const slot_entry& e) const noexcept {
    float base = expert_scores.empty() ? 0.0f : expert_scores[table_index(e.id)];
    if (e.predicted && e.pred_gen == layer_gen[e.id.layer]) return std::max(base, e.pred_score);
    // Layers run in a cycle, so an expert with no prediction is next wanted when its layer
    // comes round again: soonest for the layer being computed and those just ahead, latest
    // for the layer just passed. Its need is the chance of reuse scaled by that nearness
    // (what Belady's rule would look at on a cyclic pattern, where LRU picks the worst).
    const std::uint32_t n = layout.n_layer;
    const std::uint32_t distance = (e.id.layer + n - current_layer) % n;
    const float nearness = static_cast<float>(n - distance) / static_cast<float>(n);
    base = std::max(base, static_cast<float>(options.reuse_prior) * nearness);
    return base;
}

slot_facts tiered_expert_source::impl::facts_of(std::uint32_t s) const noexcept {
    const slot_entry& e = slots[s];
    slot_facts f;
    switch (e.state) {
        case slot_state::free: f.availability = slot_availability::free; return f;
        case slot_state::ready:
            f.availability = e.guard_epoch == layer_epoch ? slot_availability::guarded : slot_availability::reclaimable;
            break;
        default: return f;  // busy
    }
    f.need = need_of(e);
    f.last_use = e.last_use;
    f.hot_expert = hot_count > 0 && hot[table_index(e.id)] != 0;
    return f;
}

void tiered_expert_source::impl::guard_locked(std::uint32_t slot) noexcept {
    if (slots[slot].id.layer == current_layer) slots.guard(slot, layer_epoch);
}

void tiered_expert_source::impl::set_current_layer_locked(std::uint32_t layer) noexcept {
    if (layer == current_layer) return;
    current_layer = layer;
    ++layer_epoch;  // the previous layer's guards lapse at once
    demand_requested = false;
}

void tiered_expert_source::impl::lapse_touched_layers_locked() noexcept {
    for (const std::uint32_t l : queue.touched_layers()) ++layer_gen[l];
}

void tiered_expert_source::impl::dispatch_locked() noexcept {
    if (queue.empty() || stopping || file_broken) return;  // broken: the queue waits for the file
    bool bound_reached = false;
    queue.serve(current_layer, [&](const load_queue::queued_request& q) {
        const std::size_t idx = table_index(q.id);
        const bool is_hot = hot_count > 0 && hot[idx] != 0;
        if (const std::uint32_t where = slots.find(q.id); where != slot_table::no_slot) {
            // Loaded meanwhile (by an acquire or another request). A hot expert found in a
            // ring slot joins the hot set where it lies: the slot trades roles with a hot slot
            // that holds no hot expert.
            if (is_hot && ring.section_of_slot(where) != section_ring::hot) {
                std::optional<std::uint32_t> spare;
                for (std::uint32_t h : ring.hot_members()) {
                    const slot_entry& he = slots[h];
                    if (he.state == slot_state::free) {
                        spare = h;
                        break;
                    }
                    if (!spare && hot[table_index(he.id)] == 0) spare = h;
                }
                if (spare) ring.swap_roles(where, *spare);
            }
            return true;
        }
        if (options.prefetch_after_demand && !demand_requested && q.cls != prefetch_class::demand &&
            q.id.layer != current_layer) {
            return false;  // waits for the current layer's reads to go first
        }
        if (bound_reached) return false;
        if (!queue.fits_prefetch(expert_bytes(q.id))) {
            bound_reached = true;  // later requests wait too: the queue is in priority order
            return false;
        }
        const slot_load_kind kind = q.cls == prefetch_class::demand ? slot_load_kind::demand : slot_load_kind::prefetch;
        std::optional<std::uint32_t> slot;
        if (is_hot) slot = take_slot_locked(q.id, slot_load_kind::hot, q.score);
        if (!slot && (!is_hot || q.cls != prefetch_class::warmup)) slot = take_slot_locked(q.id, kind, q.score);
        if (!slot) return false;
        start_load_locked(*slot, q.id, 0);
        slots.set_prefetched_unused(*slot, true);
        slots.predict(*slot, q.score, layer_gen[q.id.layer]);
        if (q.cls == prefetch_class::demand) guard_locked(*slot);
        ++counters.pf_issued;
        return true;
    });
}

// --- public side ---

void tiered_expert_source::prefetch(std::span<const prefetch_request> requests) {
    impl& d = *impl_;
    bool submit = false;
    {
        std::lock_guard lock(d.mutex);
        if (d.stopping) return;
        // Requests still queued for the layers this call predicts, and not repeated, are
        // superseded; those layers' earlier predictions lapse, and this call renews its own.
        d.counters.pf_cancelled += d.queue.supersede(requests);
        d.lapse_touched_layers_locked();
        for (const prefetch_request& r : requests) {
            if (!d.in_range(r.id)) continue;
            ++d.counters.pf_requested;
            if (const std::uint32_t where = d.slots.find(r.id); where != slot_table::no_slot) {
                d.slots.predict(where, r.score, d.layer_gen[r.id.layer]);
                if (r.cls == prefetch_class::demand) d.guard_locked(where);
                // A hot expert still in a ring slot is adopted by the dispatch below.
                if (d.hot_count > 0 && d.hot[d.table_index(r.id)] != 0 &&
                    d.ring.section_of_slot(where) != section_ring::hot) {
                    d.queue.push(r);
                }
                continue;
            }
            d.queue.push(r);
        }
        d.dispatch_locked();
        submit = d.take_submit_locked();
    }
    if (submit) d.mover->submit();
}

void tiered_expert_source::begin_layer(std::uint32_t layer, std::uint64_t n_tokens) {
    impl& d = *impl_;
    bool submit = false;
    {
        std::lock_guard lock(d.mutex);
        if (layer >= d.layout.n_layer) return;
        if (layer == 0) d.counters.tokens += n_tokens;
        d.layer_began = clock_type::now();
        d.layer_began_io_wait_ns = d.counters.io_wait_ns;
        d.layer_open = true;
        if (layer != d.current_layer) {
            // The layers passed since the last call, cyclically: [current, layer).
            d.counters.pf_cancelled += d.queue.drop_passed(d.current_layer, layer);
            d.lapse_touched_layers_locked();
            d.set_current_layer_locked(layer);
            d.queue.invalidate_order();
        }
        d.dispatch_locked();
        submit = d.take_submit_locked();
    }
    if (submit) d.mover->submit();
}

void tiered_expert_source::end_layer(std::uint32_t layer) {
    impl& d = *impl_;
    std::lock_guard lock(d.mutex);
    if (!d.layer_open || layer != d.current_layer) return;  // no begin_layer for it: nothing to time
    d.layer_open = false;
    const auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - d.layer_began).count();
    const std::uint64_t waited = d.counters.io_wait_ns - d.layer_began_io_wait_ns;
    d.counters.layer_computed(std::max(0.0, static_cast<double>(elapsed) - static_cast<double>(waited)));
}

void tiered_expert_source::cancel_prefetches_before(std::uint32_t layer) {
    impl& d = *impl_;
    bool submit = false;
    {
        std::lock_guard lock(d.mutex);
        d.counters.pf_cancelled += d.queue.drop_before(layer);
        d.lapse_touched_layers_locked();
        d.dispatch_locked();
        submit = d.take_submit_locked();
    }
    if (submit) d.mover->submit();
}

void tiered_expert_source::cancel_prefetches() {
    impl& d = *impl_;
    std::lock_guard lock(d.mutex);
    d.counters.pf_cancelled += d.queue.drop_all();
}

std::uint32_t tiered_expert_source::set_hot_set(std::span<const ExpertId> ids) {
    impl& d = *impl_;
    std::unique_lock lock(d.mutex);
    const std::uint32_t n_slots = d.n_slots();
    // Leave at least one ring slot; the fraction caps the rest.
    const auto cap = static_cast<std::uint32_t>(std::min<double>(
        std::floor(std::clamp(d.options.hot_fraction_max, 0.0, 1.0) * n_slots), n_slots - 1));
    std::fill(d.hot.begin(), d.hot.end(), 0);
    std::vector<ExpertId> members;
    members.reserve(std::min<std::size_t>(ids.size(), cap));
    for (const ExpertId& id : ids) {
        if (members.size() >= cap) break;
        if (!d.in_range(id) || d.hot[d.table_index(id)] != 0) continue;
        d.hot[d.table_index(id)] = 1;
        members.push_back(id);
    }
    d.hot_count = static_cast<std::uint32_t>(members.size());
    // Warmup requests for experts that left the hot set are stale.
    d.counters.pf_cancelled += d.queue.drop_warmup_not_in(d.hot);

    // The hot slots: first those already holding hot experts (adopted in place), then slots
    // of the old hot set that hold no hot expert, then free slots, then the ring slots whose
    // experts are needed least. Roles only: nothing is evicted or read here.
    std::vector<std::uint32_t> chosen;
    chosen.reserve(d.hot_count);
    std::vector<std::uint8_t> taken(n_slots, 0);
    auto take = [&](std::uint32_t s) {
        if (taken[s] != 0 || chosen.size() >= d.hot_count) return;
        taken[s] = 1;
        chosen.push_back(s);
    };
    for (const ExpertId& id : members) {
        if (const std::uint32_t where = d.slots.find(id); where != slot_table::no_slot) take(where);
    }
    for (std::uint32_t s : d.ring.hot_members()) {
        if (d.slots[s].state == slot_state::free || d.hot[d.table_index(d.slots[s].id)] == 0) take(s);
    }
    for (std::uint32_t s = 0; s < n_slots; ++s) {
        if (d.slots[s].state == slot_state::free) take(s);
    }
    if (chosen.size() < d.hot_count) {
        std::vector<std::uint32_t> rest;
        for (std::uint32_t s = 0; s < n_slots; ++s) {
            if (taken[s] == 0) rest.push_back(s);
        }
        std::sort(rest.begin(), rest.end(), [&](std::uint32_t a, std::uint32_t b) {
            const float na = d.need_of(d.slots[a]), nb = d.need_of(d.slots[b]);
            if (na != nb) return na < nb;
            return d.slots[a].last_use < d.slots[b].last_use;
        });
        for (std::uint32_t s : rest) take(s);
    }
    MOED_ASSERT(chosen.size() == d.hot_count);
    d.ring.assign_hot(chosen);
    d.section_last_layer.assign(d.ring.n_sections(), -1);
    for (const ExpertId& id : members) {
        if (d.slots.find(id) == slot_table::no_slot) d.queue.push(prefetch_request{id, prefetch_class::warmup, 1.0f});
    }
    MOED_LOG_DEBUG(component, "{}: hot set of {} experts; ring of {} sections over {} slots", d.path, d.hot_count,
                   d.ring.n_sections(), n_slots - d.hot_count);
    d.dispatch_locked();
    const std::uint32_t taken_count = d.hot_count;
    const bool submit = d.take_submit_locked();
    lock.unlock();
    if (submit) d.mover->submit();
    return taken_count;
}

void tiered_expert_source::set_expert_scores(std::span<const float> per_expert_score) {
    impl& d = *impl_;
    const std::size_t want = static_cast<std::size_t>(d.layout.n_layer) * d.layout.n_expert;
    if (!per_expert_score.empty() && per_expert_score.size() != want) {
        MOED_LOG_WARN(component, "{}: {} expert scores given for {} experts ({} layers x {}); ignored", d.path,
                      per_expert_score.size(), want, d.layout.n_layer, d.layout.n_expert);
        return;
    }
    std::lock_guard lock(d.mutex);
    d.expert_scores.assign(per_expert_score.begin(), per_expert_score.end());
}

}  // namespace moed::storage
