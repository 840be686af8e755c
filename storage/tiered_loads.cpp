// The threaded side of the tiered expert source's loads: the completion thread that reaps
// the block mover and reports each ended load to the tier core, releases, and shutdown.
// The decisions are the core's (storage/tier_core.h); storage/block_mover.h does the reads.
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
    for (std::uint32_t l = 0; l < layout.layers.size(); ++l) most = std::max(most, layer_slot_bytes(layout, l, alignment));
    return most;
}

std::uint64_t tiered_every_expert_bytes(const expert_layout& layout, std::uint32_t alignment) {
    MOED_ASSERT(is_power_of_two(alignment));
    std::uint64_t total = 0;
    for (std::uint32_t l = 0; l < layout.layers.size(); ++l) {
        total += layer_slot_bytes(layout, l, alignment) * layout.n_expert;
    }
    return total;
}

result<slot_classes> tiered_slot_classes(const expert_layout& layout, std::uint32_t alignment,
                                         std::uint64_t budget_bytes, std::uint32_t min_slots) {
    MOED_ASSERT(is_power_of_two(alignment) && !layout.layers.empty() && layout.n_expert > 0);
    std::vector<std::uint64_t> bytes;
    bytes.reserve(layout.layers.size());
    for (std::uint32_t l = 0; l < layout.layers.size(); ++l) bytes.push_back(layer_slot_bytes(layout, l, alignment));
    return plan_slot_classes(bytes, layout.n_expert, budget_bytes, min_slots);
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
            MOED_ASSERT(core.slots()[s].refs == 0);
        }
        core.stop();
    }
    // Loads not yet submitted are dropped; the completion thread drains the reads in flight.
    mover->stop();
    completion_thread.join();
}

void tiered_expert_source::impl::submit_unlocked_if_due(std::unique_lock<counted_mutex>& lock) {
    if (!core.take_submit()) return;
    lock.unlock();
    mover->submit();
    lock.lock();
}

void tiered_expert_source::impl::on_load_end_locked(move_result& r) {
    MOED_ASSERT(r.slot < n_slots());
    if (core.stopping()) {
        core.load_ended(r.slot, false, {}, r.bytes, r.errors);
        return;
    }
    const ExpertId id = core.slots()[r.slot].id;
    moed::error failure;
    switch (r.status) {
        case move_status::ok: core.load_ended(r.slot, true, {}, r.bytes, r.errors); return;
        case move_status::failed: failure = std::move(r.error); break;
        case move_status::source_ended:
            mark_file_broken_locked(std::move(r.source_error));
            failure = std::move(r.error);
            break;
        case move_status::source_changed:
            mark_file_broken_locked(std::move(r.source_error));
            failure = error_noexcept(errc::io, "{}; expert {}/{} not loaded", file_error.message, id.layer, id.expert);
            break;
    }
    MOED_LOG_WARN(component, "{}", failure.message);
    core.load_ended(r.slot, false, std::move(failure), r.bytes, r.errors);
}

void tiered_expert_source::impl::release_locked(ExpertId id, std::uint32_t slot) noexcept {
    if (core.release(id, slot)) slot_cv.notify_all();
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
                core.after_loads();
            } catch (const std::exception& ex) {
                MOED_LOG_ERROR(component, "{}: completion thread: {}", path, ex.what());
            } catch (...) {
                MOED_LOG_ERROR(component, "{}: completion thread: unknown exception", path);
            }
            submit = core.take_submit();
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
        submit = d.core.take_submit();
    }
    if (submit) d.mover->submit();
}

}  // namespace moed::storage
