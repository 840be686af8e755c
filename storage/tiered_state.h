// The inside of tiered_expert_source: how the host tier composes the tier core's pieces.
// Private to storage/; shared by tiered_expert_source.cpp (create, acquire, release, stats),
// tiered_loads.cpp (slot choice, loads, the completion thread), tiered_prefetch.cpp (the
// prefetch pipeline, the hot set, need scores) and tiered_file_check.cpp (file health).
//
// The pieces: slot_table (slot states, refs, residency), section_ring (which slot a load
// takes: the only placement authority), load_queue (prefetch requests, deferred demand
// loads, bytes in flight), block_mover (the reads from the model file into host slots),
// tier_counters (statistics). The tier decides under its lock (a counted_mutex, so stats
// report how contended it is) and moves no bytes under it: loads are queued to the mover
// under the lock and submitted after it is released (take_submit_locked() says whether the
// caller must); the completion thread reaps the mover without the lock and applies the
// results under it.
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
#include "storage/load_queue.h"
#include "storage/section_ring.h"
#include "storage/slot_geometry.h"
#include "storage/slot_table.h"
#include "storage/tier_counters.h"
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
    std::uint64_t expert_bytes_total = 0;
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
    slot_table slots;
    section_ring ring;
    load_queue queue;
    tier_counters counters;
    bool submit_due = false;  // loads were queued to the mover and nobody has taken the submit yet
    bool stopping = false;

    // Placement state (tiered_prefetch.cpp).
    std::vector<std::int64_t> section_last_layer;  // per section: layer of its latest load, -1 none
    std::uint32_t current_layer = 0;        // the layer being computed (begin_layer or the last acquire)
    std::uint64_t layer_epoch = 1;          // advances when current_layer changes
    bool demand_requested = false;          // the current layer's acquire has requested its reads
    std::vector<std::uint32_t> layer_gen;   // per layer: advances when its predictions lapse
    std::vector<float> expert_scores;       // [n_layer * n_expert] or empty
    std::vector<std::uint8_t> hot;          // per expert: in the hot set
    std::uint32_t hot_count = 0;

    // The layer clock (begin_layer/end_layer): when the open layer began and the I/O wait
    // counted by then (tier_counters keeps the mean).
    tiered_detail::clock_type::time_point layer_began;
    std::uint64_t layer_began_io_wait_ns = 0;
    bool layer_open = false;

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

    std::uint32_t n_slots() const noexcept { return slots.n_slots(); }
    std::size_t table_index(ExpertId id) const noexcept {
        return static_cast<std::size_t>(id.layer) * layout.n_expert + id.expert;
    }
    bool in_range(ExpertId id) const noexcept { return id.layer < layout.n_layer && id.expert < layout.n_expert; }
    std::uint64_t expert_bytes(ExpertId id) const noexcept { return layout.expert_bytes(id.layer); }

    memory_kind memory() const noexcept {
        return slab->locked() ? memory_kind::host_locked : memory_kind::host_pageable;
    }

    expert_weights weights_of(std::uint32_t slot, ExpertId id) const noexcept {
        return weights_in_slot(slab->slot(slot), layout, geometry[id.layer], id, region_alignment);
    }
    // The slot a handle made by this source points into: its gate matrix lies inside exactly
    // one slot (the handle's token is private to expert_handle).
    std::uint32_t slot_of(const expert_handle& h) const noexcept {
        const auto* p = static_cast<const std::byte*>(h.weights().gate.data);
        const auto region = slab->region();
        MOED_ASSERT(p >= region.data() && p < region.data() + region.size());
        return static_cast<std::uint32_t>(static_cast<std::uint64_t>(p - region.data()) / slab->slot_bytes());
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
    // Submits what the mover has queued, releasing `lock` meanwhile, when nobody else will.
    void submit_unlocked_if_due(std::unique_lock<counted_mutex>& lock);

    // The need of the expert a slot holds: its prefetch score while its prediction holds,
    // else the profile score, whichever is higher.
    float need_of(const slot_entry& e) const noexcept;
    slot_facts facts_of(std::uint32_t slot) const noexcept;

    // All below: called with `mutex` held.
    // Whether the caller must call mover->submit() once it released the lock (loads were
    // queued and no other caller has taken that duty); clears it.
    bool take_submit_locked() noexcept {
        const bool due = submit_due;
        submit_due = false;
        return due;
    }
    // A slot for a load of `id` (evicting what it held), by the ring's rules for `kind`;
    // nullopt when none may be taken now.
    std::optional<std::uint32_t> take_slot_locked(ExpertId id, slot_load_kind kind, float score);
    void evict_locked(std::uint32_t slot);
    // Marks `slot` loading `id` (refs: waiting acquirers) and admits its load, or defers it
    // while the in-flight bound is full (demand only: prefetches are started only when they fit).
    void start_load_locked(std::uint32_t slot, ExpertId id, std::uint32_t refs);
    // Counts the load's bytes in flight and queues it to the mover.
    void admit_locked(std::uint32_t slot);
    void admit_deferred_locked();
    // Starts queued prefetches in priority order while the bound and the ring allow.
    void dispatch_locked() noexcept;
    void lapse_touched_layers_locked() noexcept;
    void guard_locked(std::uint32_t slot) noexcept;
    void set_current_layer_locked(std::uint32_t layer) noexcept;
    // Applies how a load ended: the slot becomes ready / in use, or failed / free.
    void on_load_end_locked(move_result& r);
    void release_locked(ExpertId id, std::uint32_t slot) noexcept;
};

}  // namespace moed::storage
