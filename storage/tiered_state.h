// The inside of tiered_expert_source: the threaded shell around the tier core. Private to
// storage/; shared by tiered_expert_source.cpp (create, acquire, control, stats),
// tiered_loads.cpp (the completion thread, releases, shutdown) and tiered_file_check.cpp
// (file health).
//
// Every decision (slot states, placement, the load queue, counters) is the tier core's
// (storage/tier_core.h); the shell adds the lock (a counted_mutex, so stats report how
// contended it is), the waits, the host slab, the block mover and the model file's health.
// It moves no bytes under its lock: the core queues loads to the mover under the lock, and
// whoever takes the core's submit duty (take_submit()) submits after releasing it; the
// completion thread reaps the mover without the lock and reports the results under it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "storage/block_mover.h"
#include "storage/counted_mutex.h"
#include "storage/slot_geometry.h"
#include "storage/tier_core.h"
#include "storage/tiered_expert_source.h"

namespace moed::storage {

namespace tiered_detail {

inline constexpr const char* component = "tiers";
// An acquirer that cannot find a slot for this long logs a warning (it keeps waiting).
constexpr auto slot_wait_warn = std::chrono::seconds(10);
// Results taken from the mover per reap call.
constexpr std::size_t results_per_reap = 64;

using clock_type = std::chrono::steady_clock;

}  // namespace tiered_detail

struct tiered_expert_source::impl {
    // Immutable after create().
    tiered_expert_source* owner = nullptr;  // the source handles are made for
    std::string path;
    expert_layout layout;
    tiered_options options;
    std::vector<layer_geometry> geometry;
    std::uint32_t region_alignment = min_region_alignment;
    bool reader_opened_here = false;  // create() opened the reader (so a check may reopen it)
    // The fingerprint taken at create().
    std::uint64_t header_digest = 0;
    std::vector<std::uint64_t> tensor_digests;  // per layer and matrix: head and tail samples
    // Destroyed in reverse order: the mover (whose reader may have registered the slab and
    // waits for its reads) goes before the slab.
    std::unique_ptr<host_slab> slab;
    std::unique_ptr<block_mover> mover;

    // Everything below is under `mutex` unless noted.
    mutable counted_mutex mutex;
    std::condition_variable_any load_cv;  // a load ended (ready or failed)
    std::condition_variable_any slot_cv;  // a slot became free or reclaimable
    tier_core core;

    // The model file's health (tiered_file_check.cpp).
    file_identity identity;  // what loads are checked against (the mover keeps a copy)
    bool file_broken = false;
    moed::error file_error;
    std::uint64_t file_breaks = 0, file_recoveries = 0;
    std::optional<file_identity> file_last_seen;  // the path's identity at the previous check while broken
    std::optional<file_identity> file_rejected;   // a version of the file found to be another model
    std::uint64_t path_inode_logged = 0;           // a replacement at the path already logged
    bool check_stop = false;                       // the checker thread ends
    std::condition_variable_any check_cv;          // the checker thread: stop
    std::thread check_thread;
    std::mutex check_mutex;  // one check at a time (the thread, or a caller of check_file()); before `mutex`

    std::thread completion_thread;

    ~impl() { shutdown(); }

    std::uint32_t n_slots() const noexcept { return core.n_slots(); }
    bool in_range(ExpertId id) const noexcept { return id.layer < layout.n_layer && id.expert < layout.n_expert; }

    memory_kind memory() const noexcept {
        return slab->locked() ? memory_kind::host_locked : memory_kind::host_pageable;
    }

    expert_weights weights_of(std::uint32_t slot, ExpertId id) const noexcept {
        return weights_in_slot(slab->slot(slot), layout, geometry[id.layer], id, region_alignment);
    }
    // The slot a handle made by this source points into: its gate matrix lies inside exactly
    // one slot (the handle's token is private to expert_handle).
    std::uint32_t slot_of(const expert_handle& h) const noexcept {
        return slab->slot_of(static_cast<const std::byte*>(h.weights().gate.data));
    }

    void shutdown() noexcept;
    void completion_main() noexcept;
    void check_main() noexcept;
    // Marks the file broken (once; later calls keep the first reason) and logs it.
    void mark_file_broken_locked(moed::error why) noexcept;
    tier_file_health health_locked() const;
    // Whether the file at `path` (opened as `fd`, `now` its identity) holds the model opened
    // at create(); a clear reason when not.
    result<void> verify_same_model(int fd, const file_identity& now) const;
    // The fingerprint of the file open as `fd`: header digest and tensor samples.
    result<std::pair<std::uint64_t, std::vector<std::uint64_t>>> fingerprint(int fd) const;
    // Makes the tier healthy again: the file (reopened or not) holds the model opened; its
    // identity now is what loads are checked against from here on.
    void recover_locked(bool reopened);
    // acquire_many's work: fills out[i] for ids[i] (out has ids.size() empty handles); on
    // error every handle it made is released again.
    // With `wait` false it returns once every read is requested (handles of loading experts
    // are valid but their bytes are not there yet: wait_loaded() first).
    result<void> acquire_into(std::span<const ExpertId> ids, std::span<expert_handle> out, bool wait = true);
    // Waits until the load behind `slot` ended; false when it failed (error in `failure`).
    // Adds the time waited to `waited_ns`. `lock` holds `mutex`.
    bool wait_loaded(std::unique_lock<counted_mutex>& lock, std::uint32_t slot, std::uint64_t& waited_ns,
                     moed::error& failure);
    // Submits what the core queued, when the caller took that duty; `lock` (holding `mutex`)
    // is released meanwhile.
    void submit_unlocked_if_due(std::unique_lock<counted_mutex>& lock);
    // Reports how a load the mover ended went to the core (marking the file broken when the
    // mover found it changed).
    void on_load_end_locked(move_result& r);
    void release_locked(ExpertId id, std::uint32_t slot) noexcept;
    // Runs `step(core)` under the lock, then submits what it queued without the lock.
    template <typename Step>
    void with_core(Step&& step) {
        bool submit = false;
        {
            std::lock_guard lock(mutex);
            step(core);
            submit = core.take_submit();
        }
        if (submit) mover->submit();
    }
};

}  // namespace moed::storage
