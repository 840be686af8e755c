// The load path of the tiered expert source: slot choice and eviction, the start of a load
// (admitted against the in-flight bound, or deferred), the completion thread, the end of a
// load (ready, or failed and freed) and releases. See storage/slot_table.h for the slot
// state machine and storage/block_mover.h for the reads themselves.
#include <pthread.h>

#include <algorithm>
#include <array>

#include "common/log.h"
#include "storage/tiered_state.h"

namespace moed::storage {

using namespace tiered_detail;

std::uint64_t tiered_slot_bytes(const expert_layout& layout, std::uint32_t alignment) {
    MOED_ASSERT(is_power_of_two(alignment));
    std::uint64_t most = 0;
    for (std::uint32_t l = 0; l < layout.layers.size(); ++l) {
        const layer_geometry g = geometry_of(layout, l, alignment);
        most = std::max(most, g.region_offset[2] + g.region_bytes[2]);
    }
    return most;
}

void tiered_expert_source::impl::shutdown() noexcept {
    if (check_thread.joinable()) {
        {
            std::lock_guard lock(mutex);
            check_stop = true;
        }
        check_cv.notify_all();
        check_thread.join();
    }
    if (!completion_thread.joinable()) return;
    {
        std::lock_guard lock(mutex);
        for (std::uint32_t s = 0; s < n_slots(); ++s) {
            // Handles point into the slab, which is about to be freed.
            MOED_ASSERT(slots[s].refs == 0);
        }
        stopping = true;
    }
    // Loads not yet submitted are dropped; the completion thread drains the reads in flight.
    mover->stop();
    completion_thread.join();
}

void tiered_expert_source::impl::submit_unlocked_if_due(std::unique_lock<counted_mutex>& lock) {
    if (!take_submit_locked()) return;
    lock.unlock();
    mover->submit();
    lock.lock();
}

std::optional<std::uint32_t> tiered_expert_source::impl::take_slot_locked(ExpertId id, slot_load_kind kind,
                                                                         float score) {
    const std::optional<std::uint32_t> chosen =
        ring.choose_slot(id.layer, kind, score, [this](std::uint32_t s) { return facts_of(s); });
    if (!chosen) return std::nullopt;
    if (slots[*chosen].state != slot_state::free) evict_locked(*chosen);
    return chosen;
}

void tiered_expert_source::impl::evict_locked(std::uint32_t v) {
    const slot_entry& e = slots[v];
    const ExpertId id = e.id;
    const std::uint64_t bytes = expert_bytes(id);
    ++counters.evictions;
    if (e.prefetched_unused) {
        ++counters.pf_wasted;
        counters.pf_wasted_bytes += bytes;
    }
    slots.evict(v);
    // A hot expert pushed out (only a demand load does that, as its last resort) comes back
    // at warmup priority.
    if (!hot.empty() && hot[table_index(id)] != 0) queue.push(prefetch_request{id, prefetch_class::warmup, 1.0f});
}

void tiered_expert_source::impl::start_load_locked(std::uint32_t slot, ExpertId id, std::uint32_t refs) {
    slots.begin_load(slot, id, refs);
    const std::uint32_t section = ring.section_of_slot(slot);
    if (section != section_ring::hot && section < section_last_layer.size()) section_last_layer[section] = id.layer;
    if (queue.fits(expert_bytes(id))) {
        admit_locked(slot);
    } else {
        queue.defer(slot);
    }
}

void tiered_expert_source::impl::admit_locked(std::uint32_t slot) {
    const auto now = clock_type::now();
    slots.admit(slot, now);
    const ExpertId id = slots[slot].id;
    queue.add_inflight(expert_bytes(id));
    counters.load_started(now);
    mover->queue(slot, id);
    submit_due = true;
}

void tiered_expert_source::impl::admit_deferred_locked() {
    while (queue.has_deferred()) {
        const std::uint32_t slot = queue.next_deferred();
        if (!queue.fits(expert_bytes(slots[slot].id))) break;
        queue.pop_deferred();
        admit_locked(slot);
    }
}

void tiered_expert_source::impl::on_load_end_locked(move_result& r) {
    const std::uint32_t slot = r.slot;
    MOED_ASSERT(slot < n_slots());
    const slot_entry& e = slots[slot];
    MOED_ASSERT(e.state == slot_state::loading && e.admitted);
    const auto now = clock_type::now();
    counters.bytes_read += r.bytes;
    counters.read_errors += r.errors;
    counters.load_ended(now);
    queue.remove_inflight(expert_bytes(e.id));
    if (stopping) return;

    moed::error failure;
    switch (r.status) {
        case move_status::ok:
            counters.record_latency(now - e.load_start);
            slots.end_load_ok(slot);
            return;
        case move_status::failed: failure = std::move(r.error); break;
        case move_status::source_ended:
            mark_file_broken_locked(std::move(r.source_error));
            failure = std::move(r.error);
            break;
        case move_status::source_changed:
            mark_file_broken_locked(std::move(r.source_error));
            failure = error_noexcept(errc::io, "{}; expert {}/{} not loaded", file_error.message, e.id.layer,
                                     e.id.expert);
            break;
    }
    MOED_LOG_WARN(component, "{}", failure.message);
    // The next request reads it afresh; waiters still holding refs read the error first.
    slots.end_load_failed(slot, std::move(failure));
}

void tiered_expert_source::impl::release_locked(ExpertId id, std::uint32_t slot) noexcept {
    MOED_ASSERT(slot < n_slots());
    const slot_state before = slots[slot].state;
    const slot_state after = slots.unpin(slot, id);
    if (slots[slot].refs > 0) return;
    // in_use -> ready or failed -> free: a slot became reclaimable or free. A loading slot
    // (an acquirer gave up because another expert of its call failed) finishes into a
    // ready, reclaimable slot.
    if (after != before) slot_cv.notify_all();
    // A queued prefetch may fit now.
    if (!queue.empty() && after != slot_state::loading) dispatch_locked();
}

void tiered_expert_source::impl::completion_main() noexcept {
    pthread_setname_np(pthread_self(), "moed-tier-io");
    std::array<move_result, results_per_reap> batch;
    for (;;) {
        std::size_t n = 0;
        try {
            n = mover->reap(batch, true);
        } catch (...) {
            // Nothing may leave a thread entry; a mover that throws is asked again.
            MOED_LOG_ERROR(component, "{}: the mover's reap threw", path);
        }
        if (n == 0) {
            if (mover->drained()) return;  // stopped, and nothing left in flight
            continue;
        }
        bool submit = false;
        {
            std::lock_guard lock(mutex);
            try {
                for (std::size_t k = 0; k < n; ++k) on_load_end_locked(batch[k]);
                // Bytes drained: demand loads waiting for the bound go first, then prefetches.
                if (!stopping) {
                    admit_deferred_locked();
                    dispatch_locked();
                }
            } catch (const std::exception& ex) {
                MOED_LOG_ERROR(component, "{}: completion thread: {}", path, ex.what());
            } catch (...) {
                MOED_LOG_ERROR(component, "{}: completion thread: unknown exception", path);
            }
            submit = take_submit_locked();
        }
        load_cv.notify_all();
        slot_cv.notify_all();
        if (submit) mover->submit();
    }
}

void tiered_expert_source::release(ExpertId id, std::uint64_t token) noexcept {
    impl& d = *impl_;
    bool submit = false;
    {
        std::lock_guard lock(d.mutex);
        d.release_locked(id, static_cast<std::uint32_t>(token));
        submit = d.take_submit_locked();
    }
    if (submit) d.mover->submit();
}

}  // namespace moed::storage
