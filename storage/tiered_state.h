// The inside of tiered_expert_source, shared by its two source files:
// tiered_expert_source.cpp (create, acquire, prefetch, release, stats) and tiered_loads.cpp
// (the load path: slots, reads, the completion thread). Private to storage/.
//
// Slot states (all changes under impl::mutex):
//   free --acquire/prefetch--> loading --all reads done--> in_use (refs > 0) or ready (refs 0)
//   ready <--acquire / last release--> in_use;  ready --chosen as victim--> loading (new id)
//   loading --a read failed--> failed (refs > 0: waiters still read the error) or free
//   failed --last waiter releases--> free
// Host slots hold clean copies of the file, so eviction has nothing to write back: the
// header's "evicting" step is immediate under the lock and never observable.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "storage/section_ring.h"
#include "storage/tiered_expert_source.h"

namespace moed::storage {

namespace tiered_detail {

inline constexpr const char* component = "tiers";

// Slot regions are aligned to at least a page even when the reader needs less (buffered
// reads), so matrices start page-aligned for SIMD loads and DMA, and a reader opened later
// with O_DIRECT (logical block size <= 4096 on every NVMe we know) fits the same layout.
constexpr std::uint32_t min_region_alignment = 4096;
// Recent load latencies kept for the percentiles in stats().
constexpr std::size_t latency_samples_max = 4096;
// EINTR/EAGAIN completions and resumed reads that made no progress, per matrix read, before
// the read counts as failed; a reader that never makes progress must not spin us forever.
constexpr std::uint32_t transient_retries_max = 64;
// read_op::length is 32-bit; longer matrices are read in chunks of this size (resumed like
// short reads).
constexpr std::uint64_t read_chunk_bytes_max = std::uint64_t{1} << 30;
// Completions taken per reap call.
constexpr std::size_t reap_batch_max = 64;
// An acquirer that cannot find a slot for this long logs a warning (it keeps waiting).
constexpr auto slot_wait_warn = std::chrono::seconds(10);
constexpr std::uint32_t no_slot = std::numeric_limits<std::uint32_t>::max();

using clock_type = std::chrono::steady_clock;

constexpr std::uint64_t align_down(std::uint64_t v, std::uint64_t a) noexcept { return v / a * a; }
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept { return (v + a - 1) / a * a; }
constexpr bool is_power_of_two(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

constexpr std::array<const char*, 3> matrix_names = {"gate", "up", "down"};

struct matrix_desc {
    std::uint64_t offset;  // of expert 0's matrix in the file
    std::uint64_t bytes;   // per expert
};

inline std::array<matrix_desc, 3> matrices_of(const expert_layout::layer_tensors& lt) noexcept {
    return {matrix_desc{lt.gate_offset, lt.gate_bytes}, matrix_desc{lt.up_offset, lt.up_bytes},
            matrix_desc{lt.down_offset, lt.down_bytes}};
}

// Bytes a slot region needs for one matrix of any expert of the layer: the read covers
// [align_down(offset), align_up(offset + bytes)), whose length depends on where the
// expert's matrix starts within an aligned block.
inline std::uint64_t region_bytes(const matrix_desc& m, std::uint32_t n_expert, std::uint64_t alignment) noexcept {
    std::uint64_t most = 0;
    for (std::uint32_t e = 0; e < n_expert; ++e) {
        const std::uint64_t start = m.offset + static_cast<std::uint64_t>(e) * m.bytes;
        most = std::max(most, align_up(start % alignment + m.bytes, alignment));
        if (start % alignment == 0 && m.bytes % alignment == 0) break;  // every expert alike
    }
    return most;
}

struct layer_geometry {
    std::array<std::uint64_t, 3> region_offset{};  // within the slot
    std::array<std::uint64_t, 3> region_bytes{};
};

inline layer_geometry geometry_of(const expert_layout& layout, std::uint32_t layer, std::uint64_t alignment) noexcept {
    layer_geometry g;
    const auto ms = matrices_of(layout.layers[layer]);
    std::uint64_t at = 0;
    for (std::size_t m = 0; m < 3; ++m) {
        g.region_offset[m] = at;
        g.region_bytes[m] = region_bytes(ms[m], layout.n_expert, alignment);
        at += g.region_bytes[m];
    }
    return g;
}

inline std::string identity_text(const file_identity& id) {
    return fmt::format("size {}, inode {}, mtime {} ns", id.size_bytes, id.inode, id.mtime_ns);
}

enum class slot_state : std::uint8_t { free, loading, ready, in_use, failed };

// A prefetch request waiting for its load to start.
struct queued_prefetch {
    ExpertId id;
    prefetch_class cls = prefetch_class::near;
    float score = 0.0f;
};

// One matrix's read into its region: [file_offset, file_offset + length) of the file, of
// which the first `needed` bytes must arrive (the tail past the matrix may be past EOF).
struct matrix_read {
    std::uint64_t file_offset = 0;  // aligned
    std::uint64_t needed = 0;
    std::uint64_t length = 0;
    std::uint64_t done = 0;      // bytes from file_offset known to have arrived
    std::uint64_t op_start = 0;  // the outstanding op: [op_start, op_start + op_length)
    std::uint64_t op_length = 0;
    std::uint32_t eio_retries = 0;
    std::uint32_t transient_retries = 0;
};

struct slot_entry {
    slot_state state = slot_state::free;
    ExpertId id;
    std::uint32_t refs = 0;              // handles plus acquirers waiting for the load
    std::uint32_t matrices_pending = 0;  // reads of the current load not yet finished
    bool load_failed = false;
    bool admitted = false;          // the load's reads were queued (else it waits for the in-flight bound)
    bool prefetched_unused = false; // loaded by a prefetch and not acquired since
    bool predicted = false;         // pred_score holds while pred_gen is its layer's generation
    float pred_score = 0.0f;
    std::uint32_t pred_gen = 0;
    std::uint64_t guard_epoch = 0;  // equal to impl::layer_epoch: guarded for the layer computed now
    std::uint64_t last_use = 0;     // impl::tick at the last acquire, release or load
    moed::error failure;  // why the load failed; read by the waiters still holding refs
    clock_type::time_point load_start;
    std::array<matrix_read, 3> reads;
};

// Builds an error without letting an allocation failure escape the completion thread.
template <typename... Args>
moed::error error_noexcept(errc code, fmt::format_string<Args...> format, Args&&... args) noexcept {
    try {
        return moed::error{code, fmt::format(format, std::forward<Args>(args)...)};
    } catch (...) {
        return moed::error{code, {}};
    }
}

}  // namespace tiered_detail

struct tiered_expert_source::impl {
    // Immutable after create().
    tiered_expert_source* owner = nullptr;  // the source handles are made for
    std::string path;
    expert_layout layout;
    tiered_options options;
    std::vector<tiered_detail::layer_geometry> geometry;
    std::uint32_t region_alignment = tiered_detail::min_region_alignment;
    std::uint32_t reader_alignment = 1;
    file_identity identity;
    std::uint64_t expert_bytes_total = 0;
    // Destroyed in reverse order: the reader (which may have registered the slab and waits
    // for its reads) goes before the slab.
    std::unique_ptr<host_slab> slab;
    std::unique_ptr<block_reader> reader;

    mutable std::mutex mutex;
    std::condition_variable load_cv;  // a load finished (ready or failed)
    std::condition_variable slot_cv;  // a slot became free or evictable
    std::condition_variable work_cv;  // the completion thread: reads were submitted, or stop
    std::vector<tiered_detail::slot_entry> slots;
    std::vector<std::uint32_t> residency;   // layer * n_expert + expert -> slot or no_slot

    // Placement and the prefetch pipeline (tiered_prefetch.cpp); all under `mutex`.
    section_ring ring;
    std::vector<std::int64_t> section_last_layer;  // per section: layer of its latest load, -1 none
    std::uint64_t tick = 0;                 // advances at every use, for last_use
    std::uint32_t current_layer = 0;        // the layer being computed (begin_layer or the last acquire)
    std::uint64_t layer_epoch = 1;          // advances when current_layer changes
    bool demand_requested = false;          // the current layer's acquire has requested its reads
    std::vector<std::uint32_t> layer_gen;   // per layer: advances when its predictions lapse
    std::vector<float> expert_scores;       // [n_layer * n_expert] or empty
    std::vector<std::uint8_t> hot;          // per expert: in the hot set
    std::uint32_t hot_count = 0;
    std::vector<tiered_detail::queued_prefetch> queue;  // capacity n_layer * n_expert, reserved once
    std::vector<std::uint8_t> queued;       // per expert: has an entry in `queue`
    std::vector<std::uint8_t> mark;         // per expert: scratch of one prefetch() call
    std::vector<std::uint8_t> layer_mark;   // per layer: scratch of one prefetch() call
    bool queue_sorted = true;
    std::vector<std::uint32_t> deferred;    // demand loads waiting for the in-flight bound (FIFO)
    std::uint64_t inflight_bytes = 0;       // bytes of admitted loads not yet finished
    // Reads made but not yet accepted by the reader (its queue was full). Each loading slot
    // has at most one read per matrix outstanding, so 3 * n_slots bounds it; reserved once.
    std::vector<read_op> pending;
    std::size_t submitted = 0;  // accepted by the reader and not yet reaped
    std::uint32_t loads_in_flight = 0;
    bool stopping = false;

    // Statistics (under `mutex`).
    std::uint64_t hits = 0, misses = 0, evictions = 0, bytes_read = 0, read_errors = 0;
    std::uint64_t pf_requested = 0, pf_issued = 0, pf_cancelled = 0, pf_hits = 0, pf_late = 0, pf_wasted = 0,
                  pf_wasted_bytes = 0, demand_misses = 0, inflight_bytes_max = 0, io_wait_ns = 0, io_waits = 0,
                  tokens = 0;
    std::uint64_t resident_bytes = 0, resident_experts = 0;
    tiered_detail::clock_type::time_point busy_since;
    double busy_seconds = 0.0;
    std::vector<std::uint32_t> latency_us;  // a ring of tiered_detail::latency_samples_max
    std::uint64_t latency_count = 0;        // samples ever recorded

    // The model file's health (tiered_file_check.cpp); under `mutex` unless noted.
    bool file_broken = false;
    moed::error file_error;
    std::uint64_t file_breaks = 0, file_recoveries = 0;
    std::optional<file_identity> file_last_seen;  // the path's identity at the previous check while broken
    std::optional<file_identity> file_rejected;   // a version of the file found to be another model
    std::uint64_t path_inode_logged = 0;           // a replacement at the path already logged
    bool check_stop = false;                       // the checker thread ends
    bool reader_opened_here = false;               // create() opened the reader (so a check may reopen it)
    // The fingerprint taken at create(): immutable after it.
    std::uint64_t header_digest = 0;
    std::vector<std::uint64_t> tensor_digests;  // per layer and matrix: head and tail samples
    std::condition_variable check_cv;  // the checker thread: stop
    std::thread check_thread;
    std::mutex check_mutex;  // one check at a time (the thread, or a caller of check_file())

    std::thread completion_thread;

    ~impl() { shutdown(); }

    std::uint32_t n_slots() const noexcept { return static_cast<std::uint32_t>(slots.size()); }
    std::size_t table_index(ExpertId id) const noexcept {
        return static_cast<std::size_t>(id.layer) * layout.n_expert + id.expert;
    }
    bool in_range(ExpertId id) const noexcept { return id.layer < layout.n_layer && id.expert < layout.n_expert; }

    expert_weights weights_of(std::uint32_t slot, ExpertId id) const noexcept {
        const auto& lt = layout.layers[id.layer];
        const tiered_detail::layer_geometry& g = geometry[id.layer];
        std::byte* base = slab->slot(slot);
        const auto ms = tiered_detail::matrices_of(lt);
        const std::array<tensor_type, 3> types = {lt.gate_type, lt.up_type, lt.down_type};
        const std::array<std::int64_t, 3> rows = {lt.n_ff, lt.n_ff, lt.n_embd};
        const std::array<std::int64_t, 3> cols = {lt.n_embd, lt.n_embd, lt.n_ff};
        std::array<expert_matrix, 3> out;
        for (std::size_t m = 0; m < 3; ++m) {
            const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(id.expert) * ms[m].bytes;
            // The read began at the aligned offset below the matrix; the matrix itself sits
            // that far into its region. Nothing is copied.
            const std::uint64_t skew = start - tiered_detail::align_down(start, region_alignment);
            out[m] = expert_matrix{types[m], base + g.region_offset[m] + skew, rows[m], cols[m],
                                   static_cast<std::size_t>(ms[m].bytes / static_cast<std::uint64_t>(rows[m]))};
        }
        return expert_weights{out[0], out[1], out[2]};
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
    // acquire_many's work: fills out[i] for ids[i] (out has ids.size() empty handles); on
    // error every handle it made is released again.
    // With `wait` false it returns once every read is requested (handles of loading experts
    // are valid but their bytes are not there yet: wait_loaded() first).
    result<void> acquire_into(std::span<const ExpertId> ids, std::span<expert_handle> out, bool wait = true);
    // Waits until the load behind `slot` ended; false when it failed (error in `failure`).
    // Adds the time waited to `waited_ns`. `lock` holds `mutex`.
    bool wait_loaded(std::unique_lock<std::mutex>& lock, std::uint32_t slot, std::uint64_t& waited_ns,
                     moed::error& failure);

    std::size_t index_of(const tiered_detail::slot_entry& e) const noexcept { return table_index(e.id); }
    // The need of the expert a slot holds: its prefetch score while its prediction holds,
    // else the profile score, whichever is higher.
    float need_of(const tiered_detail::slot_entry& e) const noexcept;
    slot_facts facts_of(std::uint32_t slot) const noexcept;

    // All below: called with `mutex` held.
    // A slot for a load of `id` (evicting what it held), by the ring's rules for `kind`;
    // nullopt when none may be taken now.
    std::optional<std::uint32_t> take_slot_locked(ExpertId id, slot_load_kind kind, float score);
    void evict_locked(std::uint32_t slot);
    // Marks `slot` loading `id` (refs: waiting acquirers) and admits its reads, or defers them
    // while the in-flight bound is full (demand only: prefetches are started only when they fit).
    void start_load_locked(std::uint32_t slot, ExpertId id, std::uint32_t refs);
    bool fits_inflight_locked(std::uint64_t bytes) const noexcept;
    bool fits_prefetch_locked(std::uint64_t bytes) const noexcept;
    void admit_locked(std::uint32_t slot);
    void admit_deferred_locked();
    // Starts queued prefetches in priority order while the bound and the ring allow.
    void dispatch_locked() noexcept;
    void sort_queue_locked() noexcept;
    // Drops queued requests (not warmup when `keep_warmup`) whose layer `drop` says; counts them.
    template <typename Pred>
    void drop_queued_locked(Pred drop) noexcept;
    void lapse_layer_locked(std::uint32_t layer) noexcept;
    void enqueue_locked(const prefetch_request& r) noexcept;
    void touch_locked(tiered_detail::slot_entry& e) noexcept { e.last_use = ++tick; }
    void guard_locked(tiered_detail::slot_entry& e) noexcept;
    void set_current_layer_locked(std::uint32_t layer) noexcept;
    void queue_read_locked(std::uint32_t slot, std::size_t m);
    void flush_pending_locked();
    void on_completion_locked(const read_completion& c);
    void finish_matrix_locked(std::uint32_t slot, const moed::error* failure);
    void complete_load_locked(std::uint32_t slot);
    moed::error read_error(std::uint32_t slot, std::size_t m, std::string_view what) const noexcept;
    void release_locked(ExpertId id, std::uint32_t slot) noexcept;
};

}  // namespace moed::storage
