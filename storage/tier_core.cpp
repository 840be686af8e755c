// The tier core's decisions: slot choice and eviction, the start of a load (admitted against
// the in-flight bound, or deferred), the end of a load, releases, the prefetch pipeline
// (scored requests, staleness, dispatch), the hot set, the need scores the ring reclaims
// slots by, the layer clock, and the figures. See storage/tier_core.h for the contract.
#include "storage/tier_core.h"

#include <algorithm>
#include <cmath>

#include "common/assert.h"

namespace moed::storage {

void tier_core::reset(const expert_layout& layout, const tiered_options& options, std::uint32_t n_slots,
                      mover* loads, clock_fn now) {
    reset(layout, options, slot_classes::uniform(n_slots, 0, layout.n_layer), loads, std::move(now));
}

void tier_core::reset(const expert_layout& layout, const tiered_options& options, const slot_classes& classes,
                      mover* loads, clock_fn now) {
    const std::uint32_t n_slots = classes.n_slots();
    MOED_ASSERT(loads != nullptr && n_slots > 0);
    for (const slot_class& c : classes.classes()) MOED_ASSERT(c.n_slots > 0);  // every layer has somewhere to load
    classes_ = classes;
    layout_ = layout;
    options_ = options;
    mover_ = loads;
    now_ = std::move(now);
    std::vector<std::uint64_t> layer_bytes;
    expert_bytes_total_ = 0;
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        layer_bytes.push_back(layout.expert_bytes(l));
        expert_bytes_total_ += static_cast<std::uint64_t>(layout.expert_bytes(l)) * layout.n_expert;
    }
    slots_.reset(n_slots, layout.n_expert, layer_bytes);
    // Without the ring every slot is one section; the ring's rules then reduce to least
    // recently used among unpredicted experts.
    const std::uint32_t per_layer =
        options.slots_per_layer > 0 ? options.slots_per_layer : std::max<std::uint32_t>(1, layout.n_expert / 4);
    ring_.reset(classes_, per_layer, options.ring);
    section_last_layer_.assign(ring_.n_sections(), -1);
    layer_gen_.assign(layout.n_layer, 0);
    hot_.assign(static_cast<std::size_t>(layout.n_layer) * layout.n_expert, 0);
    hot_count_ = 0;
    pass_.assign(layout.n_layer, 0);
    last_pass_.assign(static_cast<std::size_t>(layout.n_layer) * layout.n_expert, 0);
    age_count_.assign(static_cast<std::size_t>(layout.n_layer) * reuse_ages, 0);
    exposed_.fill(0);
    reused_.fill(0);
    queue_.reset(layout.n_layer, layout.n_expert, n_slots,
                 load_queue::limits{options.max_inflight_bytes, options.max_prefetch_inflight_bytes});
}

// --- need, facts, guards ---

// --- reuse by age ---

void tier_core::begin_pass(std::uint32_t layer) {
    const std::uint32_t p = ++pass_[layer];
    std::uint32_t* counts = age_count_.data() + static_cast<std::size_t>(layer) * reuse_ages;
    // The experts last used a passes ago (a < reuse_ages) are exposed to this pass at age a.
    for (std::uint32_t a = 1; a < reuse_ages && a < p; ++a) exposed_[a] += counts[(p - a) % reuse_ages];
    counts[p % reuse_ages] = 0;  // the ring entry now counts this pass's uses
}

void tier_core::note_use(ExpertId id) {
    const std::uint32_t p = pass_[id.layer];
    std::uint32_t& last = last_pass_[table_index(id)];
    if (p == 0 || last == p) return;  // no pass begun (a caller without the layer clock), or counted
    std::uint32_t* counts = age_count_.data() + static_cast<std::size_t>(id.layer) * reuse_ages;
    if (last != 0 && p - last < reuse_ages) {
        ++reused_[p - last];
        --counts[last % reuse_ages];
    }
    last = p;
    ++counts[p % reuse_ages];
}

float tier_core::reuse_need(ExpertId id) const noexcept {
    const std::uint32_t last = last_pass_[table_index(id)];
    // Its next chance is its layer's next pass (the current one, for the layer computed now).
    const std::uint32_t next = pass_[id.layer] + (id.layer == current_layer_ ? 0 : 1);
    const std::uint32_t age = last == 0 ? reuse_ages : next - last;
    if (age == 0) return 1.0f;  // used in the pass under way
    if (age < reuse_ages && exposed_[age] >= reuse_samples_min) {
        return static_cast<float>(reused_[age]) / static_cast<float>(exposed_[age]);
    }
    if (age >= reuse_ages && exposed_[reuse_ages - 1] >= reuse_samples_min) {
        return static_cast<float>(reused_[reuse_ages - 1]) / static_cast<float>(exposed_[reuse_ages - 1]);
    }
    return static_cast<float>(options_.reuse_prior);
}

float tier_core::need_of(const slot_entry& e) const noexcept {
    float base = expert_scores_.empty() ? 0.0f : expert_scores_[table_index(e.id)];
    if (e.predicted && e.pred_gen == layer_gen_[e.id.layer]) return std::max(base, e.pred_score);
    // Layers run in a cycle, so an expert with no prediction is next wanted when its layer
    // comes round again: soonest for the layer being computed and those just ahead, latest
    // for the layer just passed. Its need is its measured chance of reuse at the age it will
    // have then, scaled by that nearness (what Belady's rule would look at on a cyclic
    // pattern, where LRU picks the worst).
    const std::uint32_t n = layout_.n_layer;
    const std::uint32_t distance = (e.id.layer + n - current_layer_) % n;
    const float nearness = static_cast<float>(n - distance) / static_cast<float>(n);
    base = std::max(base, reuse_need(e.id) * nearness);
    return base;
}

slot_facts tier_core::facts_of(std::uint32_t s) const noexcept {
    const slot_entry& e = slots_[s];
    slot_facts f;
    switch (e.state) {
        case slot_state::free: f.availability = slot_availability::free; return f;
        case slot_state::ready:
            f.availability = e.guard_epoch == layer_epoch_ ? slot_availability::guarded : slot_availability::reclaimable;
            break;
        default: return f;  // busy
    }
    f.need = need_of(e);
    f.chance = std::max(f.need, reuse_need(e.id));
    f.last_use = e.last_use;
    f.hot_expert = is_hot(e.id);
    return f;
}

void tier_core::guard(std::uint32_t slot) noexcept {
    if (slots_[slot].id.layer == current_layer_) slots_.guard(slot, layer_epoch_);
}

void tier_core::set_current_layer(std::uint32_t layer) noexcept {
    if (layer == current_layer_) return;
    current_layer_ = layer;
    begin_pass(layer);
    ++layer_epoch_;  // the previous layer's guards lapse at once
    demand_requested_ = false;
}

void tier_core::lapse_touched_layers() noexcept {
    for (const std::uint32_t l : queue_.touched_layers()) ++layer_gen_[l];
}

// --- slots and loads ---

std::optional<std::uint32_t> tier_core::take_slot(ExpertId id, slot_load_kind kind, float score) {
    const std::optional<std::uint32_t> chosen =
        ring_.choose_slot(id.layer, kind, score, [this](std::uint32_t s) { return facts_of(s); });
    if (!chosen) return std::nullopt;
    if (slots_[*chosen].state != slot_state::free) evict(*chosen);
    return chosen;
}

void tier_core::evict(std::uint32_t v) {
    const slot_entry& e = slots_[v];
    const ExpertId id = e.id;
    const std::uint64_t bytes = expert_bytes(id);
    ++counters_.evictions;
    if (e.prefetched_unused) {
        ++counters_.pf_wasted;
        counters_.pf_wasted_bytes += bytes;
    }
    slots_.evict(v);
    // A hot expert pushed out (only a demand load does that, as its last resort) comes back
    // at warmup priority.
    if (is_hot(id)) queue_.push(prefetch_request{id, prefetch_class::warmup, 1.0f});
}

void tier_core::start_load(std::uint32_t slot, ExpertId id, std::uint32_t refs) {
    slots_.begin_load(slot, id, refs);
    const std::uint32_t section = ring_.section_of_slot(slot);
    if (section != section_ring::hot && section < section_last_layer_.size()) section_last_layer_[section] = id.layer;
    if (queue_.fits(expert_bytes(id))) {
        admit(slot);
    } else {
        queue_.defer(slot);
    }
}

void tier_core::admit(std::uint32_t slot) {
    const time_point t = now();
    slots_.admit(slot, t);
    const ExpertId id = slots_[slot].id;
    queue_.add_inflight(expert_bytes(id));
    counters_.load_started(t);
    mover_->queue(slot, id);
    submit_due_ = true;
}

void tier_core::admit_deferred() {
    while (queue_.has_deferred()) {
        const std::uint32_t slot = queue_.next_deferred();
        if (!queue_.fits(expert_bytes(slots_[slot].id))) break;
        queue_.pop_deferred();
        admit(slot);
    }
}

void tier_core::load_ended(std::uint32_t slot, bool ok, moed::error failure, std::uint64_t bytes,
                           std::uint32_t errors) {
    MOED_ASSERT(slot < n_slots());
    const slot_entry& e = slots_[slot];
    MOED_ASSERT(e.state == slot_state::loading && e.admitted);
    const time_point t = now();
    counters_.bytes_read += bytes;
    counters_.read_errors += errors;
    counters_.load_ended(t);
    queue_.remove_inflight(expert_bytes(e.id));
    if (stopping_) return;
    if (ok) {
        counters_.record_latency(t - e.load_start);
        slots_.end_load_ok(slot);
        return;
    }
    // The next request reads it afresh; waiters still holding refs read the error first.
    slots_.end_load_failed(slot, std::move(failure));
}

void tier_core::after_loads() {
    if (stopping_) return;
    // Bytes drained: demand loads waiting for the bound go first, then prefetches.
    admit_deferred();
    dispatch();
}

void tier_core::set_paused(bool paused) {
    paused_ = paused;
    if (!paused_) dispatch();
}

// --- demand ---

std::uint32_t tier_core::pin_present(ExpertId id) {
    const std::uint32_t where = slots_.find(id);
    if (where == slot_table::no_slot) return where;
    const bool prefetched = slots_[where].prefetched_unused;
    switch (slots_.pin(where)) {
        case slot_state::ready:
            ++counters_.hits;
            if (prefetched) ++counters_.pf_hits;
            break;
        case slot_state::in_use: ++counters_.hits; break;
        case slot_state::loading:
            ++counters_.misses;  // the wait is the cost a miss has
            if (prefetched) ++counters_.pf_late;
            break;
        default: MOED_ASSERT(false && "the residency map points at a free or failed slot");
    }
    slots_.set_prefetched_unused(where, false);
    slots_.touch(where);
    guard(where);
    note_use(id);
    return where;
}

std::uint32_t tier_core::start_demand(ExpertId id) {
    const std::optional<std::uint32_t> slot = take_slot(id, slot_load_kind::demand, 0.0f);
    if (!slot) return slot_table::no_slot;
    start_load(*slot, id, 1);
    ++counters_.misses;
    ++counters_.demand_misses;
    guard(*slot);
    note_use(id);
    return *slot;
}

void tier_core::demand_requested(std::uint32_t layer) {
    if (layer != current_layer_ || demand_requested_) return;
    demand_requested_ = true;
    if (options_.prefetch_after_demand) dispatch();
}

bool tier_core::release(ExpertId id, std::uint32_t slot) noexcept {
    MOED_ASSERT(slot < n_slots());
    const slot_state before = slots_[slot].state;
    const slot_state after = slots_.unpin(slot, id);
    if (slots_[slot].refs > 0) return false;
    // A queued prefetch may fit now.
    if (!queue_.empty() && after != slot_state::loading) dispatch();
    // in_use -> ready or failed -> free: a slot became reclaimable or free. A loading slot
    // (an acquirer gave up because another expert of its call failed) finishes into a
    // ready, reclaimable slot.
    return after != before;
}

// --- the prefetch pipeline ---

void tier_core::dispatch() noexcept {
    if (queue_.empty() || stopping_ || paused_) return;  // paused: the queue waits for the file
    bool bound_reached = false;
    queue_.serve(current_layer_, [&](const load_queue::queued_request& q) {
        const bool hot = is_hot(q.id);
        if (const std::uint32_t where = slots_.find(q.id); where != slot_table::no_slot) {
            // Loaded meanwhile (by an acquire or another request). A hot expert found in a
            // ring slot joins the hot set where it lies: the slot trades roles with a hot slot
            // that holds no hot expert.
            if (hot && ring_.section_of_slot(where) != section_ring::hot) {
                std::optional<std::uint32_t> spare;
                for (std::uint32_t h : ring_.hot_members_of_class(classes_.class_of_slot(where))) {
                    const slot_entry& he = slots_[h];
                    if (he.state == slot_state::free) {
                        spare = h;
                        break;
                    }
                    if (!spare && !is_hot(he.id)) spare = h;
                }
                if (spare) ring_.swap_roles(where, *spare);
            }
            return true;
        }
        if (options_.prefetch_after_demand && !demand_requested_ && q.cls != prefetch_class::demand &&
            q.id.layer != current_layer_) {
            return false;  // waits for the current layer's reads to go first
        }
        if (bound_reached) return false;
        if (!queue_.fits_prefetch(expert_bytes(q.id))) {
            bound_reached = true;  // later requests wait too: the queue is in priority order
            return false;
        }
        const slot_load_kind kind = q.cls == prefetch_class::demand ? slot_load_kind::demand : slot_load_kind::prefetch;
        std::optional<std::uint32_t> slot;
        if (hot) slot = take_slot(q.id, slot_load_kind::hot, q.score);
        if (!slot && (!hot || q.cls != prefetch_class::warmup)) slot = take_slot(q.id, kind, q.score);
        if (!slot) return false;
        start_load(*slot, q.id, 0);
        slots_.set_prefetched_unused(*slot, true);
        slots_.predict(*slot, q.score, layer_gen_[q.id.layer]);
        if (q.cls == prefetch_class::demand) guard(*slot);
        ++counters_.pf_issued;
        return true;
    });
}

void tier_core::prefetch(std::span<const prefetch_request> requests) {
    if (stopping_) return;
    // Requests still queued for the layers this call predicts, and not repeated, are
    // superseded; those layers' earlier predictions lapse, and this call renews its own.
    counters_.pf_cancelled += queue_.supersede(requests);
    lapse_touched_layers();
    for (const prefetch_request& r : requests) {
        if (!in_range(r.id)) continue;
        ++counters_.pf_requested;
        if (const std::uint32_t where = slots_.find(r.id); where != slot_table::no_slot) {
            slots_.predict(where, r.score, layer_gen_[r.id.layer]);
            if (r.cls == prefetch_class::demand) guard(where);
            // A hot expert still in a ring slot is adopted by the dispatch below.
            if (is_hot(r.id) && ring_.section_of_slot(where) != section_ring::hot) queue_.push(r);
            continue;
        }
        queue_.push(r);
    }
    dispatch();
}

void tier_core::begin_layer(std::uint32_t layer, std::uint64_t n_tokens) {
    if (layer >= layout_.n_layer) return;
    if (layer == 0) counters_.tokens += n_tokens;
    layer_began_ = now();
    layer_began_io_wait_ns_ = counters_.io_wait_ns;
    layer_open_ = true;
    if (layer != current_layer_) {
        // The layers passed since the last call, cyclically: [current, layer).
        counters_.pf_cancelled += queue_.drop_passed(current_layer_, layer);
        lapse_touched_layers();
        set_current_layer(layer);  // begins the layer's pass
        queue_.invalidate_order();
    } else {
        begin_pass(layer);  // the same layer again (a one-layer model's next token)
    }
    dispatch();
}

void tier_core::end_layer(std::uint32_t layer) {
    if (!layer_open_ || layer != current_layer_) return;  // no begin_layer for it: nothing to time
    layer_open_ = false;
    const auto elapsed = std::chrono::duration_cast<std::chrono::nanoseconds>(now() - layer_began_).count();
    const std::uint64_t waited = counters_.io_wait_ns - layer_began_io_wait_ns_;
    counters_.layer_computed(std::max(0.0, static_cast<double>(elapsed) - static_cast<double>(waited)));
}

void tier_core::cancel_prefetches_before(std::uint32_t layer) {
    counters_.pf_cancelled += queue_.drop_before(layer);
    lapse_touched_layers();
    dispatch();
}

void tier_core::cancel_prefetches() { counters_.pf_cancelled += queue_.drop_all(); }

std::uint32_t tier_core::set_hot_set(std::span<const ExpertId> ids) {
    const std::uint32_t n = n_slots();
    const std::uint32_t n_classes = classes_.n_classes();
    // Per class: leave at least one ring slot; the fraction caps the rest.
    std::vector<std::uint32_t> cap(n_classes), count(n_classes, 0);
    for (std::uint32_t c = 0; c < n_classes; ++c) {
        const std::uint32_t nc = classes_[c].n_slots;
        cap[c] = static_cast<std::uint32_t>(
            std::min<double>(std::floor(std::clamp(options_.hot_fraction_max, 0.0, 1.0) * nc), nc - 1));
    }
    std::fill(hot_.begin(), hot_.end(), 0);
    std::vector<ExpertId> members;
    members.reserve(std::min<std::size_t>(ids.size(), n));
    for (const ExpertId& id : ids) {
        if (!in_range(id) || hot_[table_index(id)] != 0) continue;
        const std::uint32_t c = classes_.class_of_layer(id.layer);
        if (count[c] >= cap[c]) continue;
        ++count[c];
        hot_[table_index(id)] = 1;
        members.push_back(id);
    }
    hot_count_ = static_cast<std::uint32_t>(members.size());
    // Warmup requests for experts that left the hot set are stale.
    counters_.pf_cancelled += queue_.drop_warmup_not_in(hot_);

    // Each class's hot slots, from its own slots: first those already holding hot experts
    // (adopted in place), then slots of the old hot set that hold no hot expert, then free
    // slots, then the ring slots whose experts are needed least. Roles only: nothing is
    // evicted or read here.
    std::vector<std::uint32_t> chosen;
    chosen.reserve(hot_count_);
    std::vector<std::uint8_t> taken(n, 0);
    for (std::uint32_t c = 0; c < n_classes; ++c) {
        const slot_class& sc = classes_[c];
        const std::uint32_t first = sc.first_slot, last = sc.first_slot + sc.n_slots;
        std::uint32_t picked = 0;
        auto take = [&](std::uint32_t s) {
            if (taken[s] != 0 || picked >= count[c]) return;
            taken[s] = 1;
            ++picked;
            chosen.push_back(s);
        };
        for (const ExpertId& id : members) {
            if (classes_.class_of_layer(id.layer) != c) continue;
            if (const std::uint32_t where = slots_.find(id); where != slot_table::no_slot) take(where);
        }
        for (std::uint32_t s : ring_.hot_members_of_class(c)) {
            if (slots_[s].state == slot_state::free || !is_hot(slots_[s].id)) take(s);
        }
        for (std::uint32_t s = first; s < last; ++s) {
            if (slots_[s].state == slot_state::free) take(s);
        }
        if (picked < count[c]) {
            std::vector<std::uint32_t> rest;
            for (std::uint32_t s = first; s < last; ++s) {
                if (taken[s] == 0) rest.push_back(s);
            }
            std::sort(rest.begin(), rest.end(), [&](std::uint32_t a, std::uint32_t b) {
                const float na = need_of(slots_[a]), nb = need_of(slots_[b]);
                if (na != nb) return na < nb;
                return slots_[a].last_use < slots_[b].last_use;
            });
            for (std::uint32_t s : rest) take(s);
        }
        MOED_ASSERT(picked == count[c]);
    }
    ring_.assign_hot(chosen);
    section_last_layer_.assign(ring_.n_sections(), -1);
    for (const ExpertId& id : members) {
        if (slots_.find(id) == slot_table::no_slot) queue_.push(prefetch_request{id, prefetch_class::warmup, 1.0f});
    }
    dispatch();
    return hot_count_;
}

bool tier_core::set_expert_scores(std::span<const float> per_expert_score) {
    const std::size_t want = static_cast<std::size_t>(layout_.n_layer) * layout_.n_expert;
    if (!per_expert_score.empty() && per_expert_score.size() != want) return false;
    expert_scores_.assign(per_expert_score.begin(), per_expert_score.end());
    return true;
}

void tier_core::set_prefetch_inflight_limit(std::uint64_t bytes) {
    if (queue_.set_scheduler_prefetch_limit(bytes)) dispatch();  // queued prefetches may fit now
}

// --- figures ---

link_figures tier_core::link() const {
    link_figures f;
    const double busy = counters_.read_seconds(now());
    f.bytes_per_s = busy > 0.0 ? static_cast<double>(counters_.bytes_read) / busy : 0.0;
    f.load_latency_us = counters_.latency_mean_us();
    f.layer_compute_us = counters_.layer_compute_ns / 1e3;
    f.inflight_bytes = queue_.inflight_bytes();
    f.demand_loads = counters_.demand_misses;
    f.prefetch_loads = counters_.pf_issued;
    f.prefetch_wasted = counters_.pf_wasted;
    f.layers_computed = counters_.layers_computed;
    f.expert_bytes = static_cast<double>(expert_bytes_total_) /
                     (static_cast<double>(layout_.n_layer) * static_cast<double>(layout_.n_expert));
    return f;
}

void tier_core::fill(expert_cache_stats& out, std::vector<std::uint32_t>& samples) const {
    out.expert_bytes_total = expert_bytes_total_;
    tier_stats& h = out.host;
    prefetch_stats& pf = out.prefetch;
    h.name = "host";
    h.capacity_experts = n_slots();
    h.capacity_bytes = classes_.bytes();
    h.resident_bytes = slots_.resident_bytes();
    h.resident_experts = slots_.resident_experts();
    counters_.fill(h, pf, samples, now());
    // The residency map: one character per expert of each layer ('#' resident, '+' in
    // use, '~' loading, '.' only in the file).
    out.layer_residency.assign(layout_.n_layer, std::string(layout_.n_expert, '.'));
    for (std::uint32_t l = 0; l < layout_.n_layer; ++l) {
        for (std::uint32_t e = 0; e < layout_.n_expert; ++e) {
            const std::uint32_t slot = slots_.find(ExpertId{l, e});
            if (slot == slot_table::no_slot) continue;
            switch (slots_[slot].state) {
                case slot_state::ready: out.layer_residency[l][e] = '#'; break;
                case slot_state::in_use: out.layer_residency[l][e] = '+'; break;
                case slot_state::loading: out.layer_residency[l][e] = '~'; break;
                default: break;
            }
        }
    }
    pf.queued = queue_.size();
    pf.inflight_bytes = queue_.inflight_bytes();
    pf.inflight_bytes_max = queue_.inflight_bytes_max();
    pf.inflight_bytes_limit = options_.max_inflight_bytes;
    ring_stats& r = out.ring;
    r.enabled = options_.ring;
    r.slots_per_layer = ring_.slots_per_layer();
    r.hot_slots = static_cast<std::uint32_t>(ring_.hot_members().size());
    r.hot_set = hot_count_;
    for (std::uint32_t s : ring_.hot_members()) {
        if (slots_.holds_bytes(s) && is_hot(slots_[s].id)) ++r.hot_resident;
    }
    r.sections.resize(ring_.n_sections());
    for (std::uint32_t sec = 0; sec < ring_.n_sections(); ++sec) {
        ring_section_stats& rs = r.sections[sec];
        const auto members = ring_.section_members(sec);
        rs.slots = static_cast<std::uint32_t>(members.size());
        rs.layer = sec < section_last_layer_.size() ? section_last_layer_[sec] : -1;
        for (std::uint32_t s : members) {
            if (slots_.holds_bytes(s)) ++rs.resident;
        }
    }
    for (std::uint32_t l = 0; l < (r.enabled ? layout_.n_layer : 0); ++l) {
        const std::uint32_t sec = ring_.section_of_layer(l);
        if (sec != section_ring::hot) r.sections[sec].layers.push_back(l);
    }
    out.slot_classes.assign(classes_.n_classes(), slot_class_stats{});
    for (std::uint32_t c = 0; c < classes_.n_classes(); ++c) {
        slot_class_stats& cs = out.slot_classes[c];
        cs.slot_bytes = classes_[c].slot_bytes;
        cs.slots = classes_[c].n_slots;
        for (std::uint32_t s = classes_[c].first_slot; s < classes_[c].first_slot + classes_[c].n_slots; ++s) {
            if (slots_.holds_bytes(s)) ++cs.resident;
        }
    }
    for (std::uint32_t l = 0; l < layout_.n_layer; ++l) out.slot_classes[classes_.class_of_layer(l)].layers.push_back(l);
}

}  // namespace moed::storage
