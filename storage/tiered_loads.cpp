// The load path of the tiered expert source: slot allocation and eviction, reads and their
// resumption, the completion thread, and the end of a load (ready, or failed and freed).
// See tiered_state.h for the slot state machine.
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

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
        // Reads never submitted need no draining; reads in flight do, so the completion
        // thread keeps reaping until none remain.
        pending.clear();
    }
    work_cv.notify_all();
    reader->wake();
    completion_thread.join();
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
    slot_entry& e = slots[v];
    MOED_ASSERT(e.state == slot_state::ready && e.refs == 0);
    const std::size_t idx = table_index(e.id);
    residency[idx] = no_slot;
    const std::uint64_t bytes = layout.expert_bytes(e.id.layer);
    resident_bytes -= bytes;
    --resident_experts;
    ++evictions;
    if (e.prefetched_unused) {
        ++pf_wasted;
        pf_wasted_bytes += bytes;
    }
    e.prefetched_unused = false;
    e.predicted = false;
    e.state = slot_state::free;
    // A hot expert pushed out (only a demand load does that, as its last resort) comes back
    // at warmup priority.
    if (!hot.empty() && hot[idx] != 0) enqueue_locked(prefetch_request{e.id, prefetch_class::warmup, 1.0f});
}

void tiered_expert_source::impl::start_load_locked(std::uint32_t slot, ExpertId id, std::uint32_t refs) {
    slot_entry& e = slots[slot];
    MOED_ASSERT(e.state == slot_state::free && e.refs == 0);
    e.state = slot_state::loading;
    e.id = id;
    e.refs = refs;
    e.matrices_pending = 3;
    e.load_failed = false;
    e.failure = moed::error{};
    e.admitted = false;
    e.prefetched_unused = false;
    e.predicted = false;
    e.guard_epoch = 0;
    residency[table_index(id)] = slot;
    const std::uint32_t section = ring.section_of_slot(slot);
    if (section != section_ring::hot && section < section_last_layer.size()) section_last_layer[section] = id.layer;
    if (fits_inflight_locked(layout.expert_bytes(id.layer))) {
        admit_locked(slot);
    } else {
        deferred.push_back(slot);  // capacity n_slots: a slot is deferred at most once
    }
}

bool tiered_expert_source::impl::fits_inflight_locked(std::uint64_t bytes) const noexcept {
    const std::uint64_t limit = options.max_inflight_bytes;
    return limit == 0 || inflight_bytes == 0 || inflight_bytes + bytes <= limit;
}

bool tiered_expert_source::impl::fits_prefetch_locked(std::uint64_t bytes) const noexcept {
    const std::uint64_t limit = options.max_prefetch_inflight_bytes;
    return fits_inflight_locked(bytes) && (limit == 0 || inflight_bytes == 0 || inflight_bytes + bytes <= limit);
}

void tiered_expert_source::impl::admit_locked(std::uint32_t slot) {
    slot_entry& e = slots[slot];
    MOED_ASSERT(e.state == slot_state::loading && !e.admitted);
    e.admitted = true;
    e.load_start = clock_type::now();
    inflight_bytes += layout.expert_bytes(e.id.layer);
    inflight_bytes_max = std::max(inflight_bytes_max, inflight_bytes);
    if (loads_in_flight++ == 0) busy_since = e.load_start;
    const auto ms = matrices_of(layout.layers[e.id.layer]);
    for (std::size_t m = 0; m < 3; ++m) {
        matrix_read& r = e.reads[m];
        const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(e.id.expert) * ms[m].bytes;
        r.file_offset = align_down(start, region_alignment);
        r.needed = start - r.file_offset + ms[m].bytes;
        r.length = align_up(r.needed, region_alignment);
        MOED_ASSERT(r.length <= geometry[e.id.layer].region_bytes[m]);
        r.done = 0;
        r.eio_retries = 0;
        r.transient_retries = 0;
        queue_read_locked(slot, m);
    }
}

void tiered_expert_source::impl::admit_deferred_locked() {
    std::size_t k = 0;
    for (; k < deferred.size(); ++k) {
        const std::uint32_t slot = deferred[k];
        if (!fits_inflight_locked(layout.expert_bytes(slots[slot].id.layer))) break;
        admit_locked(slot);
    }
    deferred.erase(deferred.begin(), deferred.begin() + static_cast<std::ptrdiff_t>(k));
}

// Queues the read of what is still missing of matrix `m`, from the last reader-aligned
// offset at or below what has arrived (O_DIRECT needs aligned offsets; bytes read twice are
// the same bytes).
void tiered_expert_source::impl::queue_read_locked(std::uint32_t slot, std::size_t m) {
    slot_entry& e = slots[slot];
    matrix_read& r = e.reads[m];
    const std::uint64_t start = align_down(r.done, reader_alignment);
    MOED_ASSERT(start < r.length);
    r.op_start = start;
    r.op_length = std::min(r.length - start, read_chunk_bytes_max);
    MOED_ASSERT(pending.size() < pending.capacity());  // the 3 * n_slots bound
    pending.push_back(read_op{r.file_offset + start, static_cast<std::uint32_t>(r.op_length),
                              slab->slot(slot) + geometry[e.id.layer].region_offset[m] + start,
                              (static_cast<std::uint64_t>(slot) << 2) | m});
}

void tiered_expert_source::impl::flush_pending_locked() {
    if (pending.empty() || stopping) return;
    auto accepted = reader->submit(pending);
    if (accepted && *accepted == 0 && submitted == 0) {
        // Nothing in flight, so the queue is empty, yet nothing was taken: waiting for
        // completions that cannot come would hang the acquirers.
        accepted = make_error(errc::internal, "the block reader accepted no read with its queue empty");
    }
    if (!accepted) {
        MOED_LOG_ERROR(component, "{}: submitting {} reads failed: {}", path, pending.size(),
                       accepted.error().message);
        // Each pending read fails its load; the slots finish once their other reads do.
        for (const read_op& op : pending) {
            const auto slot = static_cast<std::uint32_t>(op.user_data >> 2);
            const auto m = static_cast<std::size_t>(op.user_data & 3);
            const moed::error failure = read_error(slot, m, accepted.error().message);
            finish_matrix_locked(slot, &failure);
        }
        pending.clear();
        load_cv.notify_all();
        slot_cv.notify_all();
        return;
    }
    const std::size_t n = std::min(*accepted, pending.size());
    submitted += n;
    pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(n));
    if (n > 0) work_cv.notify_one();
}

moed::error tiered_expert_source::impl::read_error(std::uint32_t slot, std::size_t m,
                                                   std::string_view what) const noexcept {
    const slot_entry& e = slots[slot];
    const auto ms = matrices_of(layout.layers[e.id.layer]);
    const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(e.id.expert) * ms[m].bytes;
    return error_noexcept(errc::io, "{}: reading expert {}/{} ({} matrix, {} bytes at offset {}): {}", path,
                          e.id.layer, e.id.expert, matrix_names[m], ms[m].bytes, start, what);
}

void tiered_expert_source::impl::on_completion_locked(const read_completion& c) {
    MOED_ASSERT(submitted > 0);
    --submitted;
    const auto slot = static_cast<std::uint32_t>(c.user_data >> 2);
    const auto m = static_cast<std::size_t>(c.user_data & 3);
    MOED_ASSERT(slot < n_slots() && m < 3);
    slot_entry& e = slots[slot];
    MOED_ASSERT(e.state == slot_state::loading);
    matrix_read& r = e.reads[m];
    if (stopping) {
        // Only draining: the slab is about to go, nobody waits for this load.
        finish_matrix_locked(slot, nullptr);
        return;
    }
    if (c.result < 0) {
        const int err = static_cast<int>(-c.result);
        if ((err == EINTR || err == EAGAIN) && r.transient_retries < transient_retries_max) {
            ++r.transient_retries;
            queue_read_locked(slot, m);
            return;
        }
        ++read_errors;
        if (err == EIO && r.eio_retries < options.eio_retries) {
            ++r.eio_retries;
            MOED_LOG_DEBUG(component, "{}: EIO reading expert {}/{}, retry {} of {}", path, e.id.layer,
                           e.id.expert, r.eio_retries, options.eio_retries);
            queue_read_locked(slot, m);
            return;
        }
        const std::uint32_t retries = r.eio_retries + r.transient_retries;
        const moed::error failure =
            read_error(slot, m, error_noexcept(errc::io, "{} after {} retries", std::strerror(err), retries).message);
        finish_matrix_locked(slot, &failure);
        return;
    }
    if (c.result == 0) {
        // End of file before the matrix ended: the file is shorter than its header says, so
        // it was shortened after it was opened (create() checked every expert was inside it).
        ++read_errors;
        mark_file_broken_locked(error_noexcept(errc::io, "{}: shortened since it was opened (end of file at offset {})",
                                               path, r.file_offset + r.done));
        const moed::error failure = read_error(
            slot, m,
            error_noexcept(errc::io, "end of file at offset {}; the file is truncated", r.file_offset + r.done)
                .message);
        finish_matrix_locked(slot, &failure);
        return;
    }
    const std::uint64_t got = std::min(static_cast<std::uint64_t>(c.result), r.op_length);
    bytes_read += got;
    r.done = std::max(r.done, r.op_start + got);
    if (r.done >= r.needed) {
        finish_matrix_locked(slot, nullptr);
        return;
    }
    // A short read (or the end of one chunk): resume with the remainder. A reader that keeps
    // returning less than one aligned block would have us reissue the same read forever.
    if (align_down(r.done, reader_alignment) <= r.op_start) {
        if (++r.transient_retries > transient_retries_max) {
            ++read_errors;
            const moed::error failure = read_error(
                slot, m,
                error_noexcept(errc::io, "short reads made no progress at offset {} after {} retries",
                               r.file_offset + r.done, transient_retries_max)
                    .message);
            finish_matrix_locked(slot, &failure);
            return;
        }
    }
    queue_read_locked(slot, m);
}

void tiered_expert_source::impl::finish_matrix_locked(std::uint32_t slot, const moed::error* failure) {
    slot_entry& e = slots[slot];
    if (failure != nullptr && !e.load_failed) {
        e.load_failed = true;
        e.failure = *failure;
    }
    MOED_ASSERT(e.matrices_pending > 0);
    if (--e.matrices_pending == 0) complete_load_locked(slot);
}

void tiered_expert_source::impl::complete_load_locked(std::uint32_t slot) {
    slot_entry& e = slots[slot];
    const auto now = clock_type::now();
    MOED_ASSERT(loads_in_flight > 0);
    if (--loads_in_flight == 0) busy_seconds += std::chrono::duration<double>(now - busy_since).count();
    const std::uint64_t bytes = layout.expert_bytes(e.id.layer);
    MOED_ASSERT(inflight_bytes >= bytes);
    inflight_bytes -= bytes;
    if (stopping) return;

    if (!e.load_failed) {
        // A file rewritten in place (same path, new contents) would hand out experts of
        // another model; fstat after the load catches size, mtime and inode changes.
        auto current = reader->identity();
        if (!current) {
            e.load_failed = true;
            e.failure = error_noexcept(errc::io, "{}: checking the file after reading expert {}/{}: {}", path,
                                       e.id.layer, e.id.expert, current.error().message);
        } else if (!(*current == identity)) {
            mark_file_broken_locked(error_noexcept(errc::io, "{}: changed since it was opened ({} then, {} now)", path,
                                                   identity_text(identity), identity_text(*current)));
            e.load_failed = true;
            e.failure = error_noexcept(errc::io, "{}; expert {}/{} not loaded", file_error.message, e.id.layer,
                                       e.id.expert);
        }
    }

    if (e.load_failed) {
        MOED_LOG_WARN(component, "{}", e.failure.message);
        residency[table_index(e.id)] = no_slot;  // the next request reads it afresh
        e.prefetched_unused = false;
        if (e.refs == 0) {
            e.state = slot_state::free;
        } else {
            e.state = slot_state::failed;  // freed when the last waiter has read the error
        }
        return;
    }

    resident_bytes += layout.expert_bytes(e.id.layer);
    ++resident_experts;
    const auto latency = std::chrono::duration_cast<std::chrono::microseconds>(now - e.load_start).count();
    latency_us[latency_count % latency_samples_max] =
        static_cast<std::uint32_t>(std::min<std::int64_t>(latency, std::numeric_limits<std::uint32_t>::max()));
    ++latency_count;
    touch_locked(e);
    if (e.refs > 0) {
        e.state = slot_state::in_use;
    } else {
        e.state = slot_state::ready;
    }
}

void tiered_expert_source::impl::release_locked(ExpertId id, std::uint32_t slot) noexcept {
    MOED_ASSERT(slot < n_slots());
    slot_entry& e = slots[slot];
    MOED_ASSERT(e.refs > 0 && e.id == id);
    if (--e.refs > 0) return;
    if (e.state == slot_state::in_use) {
        e.state = slot_state::ready;
        touch_locked(e);
        slot_cv.notify_all();
    } else if (e.state == slot_state::failed) {
        e.state = slot_state::free;
        slot_cv.notify_all();
    }
    // loading: an acquirer gave up (another expert of its call failed); the load finishes
    // into a ready, evictable slot.
    // A slot became reclaimable: a queued prefetch may fit now.
    if (!queue.empty() && e.state != slot_state::loading) dispatch_locked();
}

void tiered_expert_source::impl::completion_main() noexcept {
    pthread_setname_np(pthread_self(), "moed-tier-io");
    std::array<read_completion, reap_batch_max> batch;
    std::unique_lock lock(mutex);
    for (;;) {
        // Reap only while reads are in flight, so stopping never depends on wake().
        work_cv.wait(lock, [&] { return submitted > 0 || stopping; });
        if (submitted == 0) break;  // stopping, and nothing left to drain
        lock.unlock();
        std::size_t n = 0;
        try {
            n = reader->reap(batch, true);
        } catch (...) {
            // Nothing may leave a thread entry; a reader that throws is retried next loop.
            MOED_LOG_ERROR(component, "{}: the block reader's reap threw", path);
        }
        lock.lock();
        try {
            for (std::size_t k = 0; k < n; ++k) on_completion_locked(batch[k]);
            // Bytes drained: demand loads waiting for the bound go first, then prefetches.
            if (!stopping) {
                admit_deferred_locked();
                dispatch_locked();
            }
            flush_pending_locked();
        } catch (const std::exception& ex) {
            MOED_LOG_ERROR(component, "{}: completion thread: {}", path, ex.what());
        } catch (...) {
            MOED_LOG_ERROR(component, "{}: completion thread: unknown exception", path);
        }
        if (n > 0) {
            load_cv.notify_all();
            slot_cv.notify_all();
        }
    }
}

}  // namespace moed::storage
