// The tiered expert source: residency table, load state machine and completion thread.
//
// Slot states (all changes under `mutex`):
//   free --acquire/prefetch--> loading --all reads done--> in_use (refs > 0) or ready (refs 0)
//   ready <--acquire / last release--> in_use;  ready --chosen as victim--> loading (new id)
//   loading --a read failed--> failed (refs > 0: waiters still read the error) or free
//   failed --last waiter releases--> free
// Host slots hold clean copies of the file, so eviction has nothing to write back: the
// header's "evicting" step is immediate under the lock and never observable.
#include "storage/tiered_expert_source.h"

#include <pthread.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include "common/log.h"
#include "common/units.h"

namespace moed::storage {

namespace {

constexpr const char* component = "tiers";

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

std::array<matrix_desc, 3> matrices_of(const expert_layout::layer_tensors& lt) noexcept {
    return {matrix_desc{lt.gate_offset, lt.gate_bytes}, matrix_desc{lt.up_offset, lt.up_bytes},
            matrix_desc{lt.down_offset, lt.down_bytes}};
}

// Bytes a slot region needs for one matrix of any expert of the layer: the read covers
// [align_down(offset), align_up(offset + bytes)), whose length depends on where the
// expert's matrix starts within an aligned block.
std::uint64_t region_bytes(const matrix_desc& m, std::uint32_t n_expert, std::uint64_t alignment) noexcept {
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

layer_geometry geometry_of(const expert_layout& layout, std::uint32_t layer, std::uint64_t alignment) noexcept {
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

std::string identity_text(const file_identity& id) {
    return fmt::format("size {}, inode {}, mtime {} ns", id.size_bytes, id.inode, id.mtime_ns);
}

enum class slot_state : std::uint8_t { free, loading, ready, in_use, failed };

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

}  // namespace

std::uint64_t tiered_slot_bytes(const expert_layout& layout, std::uint32_t alignment) {
    MOED_ASSERT(is_power_of_two(alignment));
    std::uint64_t most = 0;
    for (std::uint32_t l = 0; l < layout.layers.size(); ++l) {
        const layer_geometry g = geometry_of(layout, l, alignment);
        most = std::max(most, g.region_offset[2] + g.region_bytes[2]);
    }
    return most;
}

struct tiered_expert_source::impl {
    // Immutable after create().
    std::string path;
    expert_layout layout;
    tiered_options options;
    std::vector<layer_geometry> geometry;
    std::uint32_t region_alignment = min_region_alignment;
    std::uint32_t reader_alignment = 1;
    file_identity identity;
    std::uint64_t expert_bytes_total = 0;
    // Destroyed in reverse order: the reader (which may have registered the slab and waits
    // for its reads) goes before the slab.
    std::unique_ptr<host_slab> slab;
    std::unique_ptr<block_reader> reader;
    std::unique_ptr<eviction_policy> policy;

    mutable std::mutex mutex;
    std::condition_variable load_cv;  // a load finished (ready or failed)
    std::condition_variable slot_cv;  // a slot became free or evictable
    std::condition_variable work_cv;  // the completion thread: reads were submitted, or stop
    std::vector<slot_entry> slots;
    std::vector<std::uint32_t> residency;   // layer * n_expert + expert -> slot or no_slot
    std::vector<std::uint32_t> free_slots;  // a stack
    // Reads made but not yet accepted by the reader (its queue was full). Each loading slot
    // has at most one read per matrix outstanding, so 3 * n_slots bounds it; reserved once.
    std::vector<read_op> pending;
    std::size_t submitted = 0;  // accepted by the reader and not yet reaped
    std::uint32_t loads_in_flight = 0;
    bool stopping = false;

    // Statistics (under `mutex`).
    std::uint64_t hits = 0, misses = 0, evictions = 0, bytes_read = 0, read_errors = 0;
    std::uint64_t resident_bytes = 0, resident_experts = 0;
    clock_type::time_point busy_since;
    double busy_seconds = 0.0;
    std::vector<std::uint32_t> latency_us;  // a ring of latency_samples_max
    std::uint64_t latency_count = 0;        // samples ever recorded

    std::thread completion_thread;

    ~impl() { shutdown(); }

    std::uint32_t n_slots() const noexcept { return static_cast<std::uint32_t>(slots.size()); }
    std::size_t table_index(ExpertId id) const noexcept {
        return static_cast<std::size_t>(id.layer) * layout.n_expert + id.expert;
    }
    bool in_range(ExpertId id) const noexcept { return id.layer < layout.n_layer && id.expert < layout.n_expert; }

    expert_weights weights_of(std::uint32_t slot, ExpertId id) const noexcept {
        const auto& lt = layout.layers[id.layer];
        const layer_geometry& g = geometry[id.layer];
        std::byte* base = slab->slot(slot);
        const auto ms = matrices_of(lt);
        const std::array<tensor_type, 3> types = {lt.gate_type, lt.up_type, lt.down_type};
        const std::array<std::int64_t, 3> rows = {lt.n_ff, lt.n_ff, lt.n_embd};
        const std::array<std::int64_t, 3> cols = {lt.n_embd, lt.n_embd, lt.n_ff};
        std::array<expert_matrix, 3> out;
        for (std::size_t m = 0; m < 3; ++m) {
            const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(id.expert) * ms[m].bytes;
            // The read began at the aligned offset below the matrix; the matrix itself sits
            // that far into its region. Nothing is copied.
            const std::uint64_t skew = start - align_down(start, region_alignment);
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

    // All below: called with `mutex` held.
    std::optional<std::uint32_t> take_slot_locked();
    void start_load_locked(std::uint32_t slot, ExpertId id, std::uint32_t refs);
    void queue_read_locked(std::uint32_t slot, std::size_t m);
    void flush_pending_locked();
    void on_completion_locked(const read_completion& c);
    void finish_matrix_locked(std::uint32_t slot, const moed::error* failure);
    void complete_load_locked(std::uint32_t slot);
    moed::error read_error(std::uint32_t slot, std::size_t m, std::string_view what) const noexcept;
    void release_locked(ExpertId id, std::uint32_t slot) noexcept;
};

void tiered_expert_source::impl::shutdown() noexcept {
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

std::optional<std::uint32_t> tiered_expert_source::impl::take_slot_locked() {
    if (!free_slots.empty()) {
        const std::uint32_t s = free_slots.back();
        free_slots.pop_back();
        return s;
    }
    const std::optional<std::uint32_t> victim = policy->choose_victim();
    if (!victim) return std::nullopt;
    const std::uint32_t v = *victim;
    MOED_ASSERT(v < n_slots());
    slot_entry& e = slots[v];
    // The policy is told about every state change, so it only offers ready, unheld slots.
    MOED_ASSERT(e.state == slot_state::ready && e.refs == 0);
    policy->on_remove(v);
    residency[table_index(e.id)] = no_slot;
    resident_bytes -= layout.expert_bytes(e.id.layer);
    --resident_experts;
    ++evictions;
    e.state = slot_state::free;
    return v;
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
    e.load_start = clock_type::now();
    residency[table_index(id)] = slot;
    if (loads_in_flight++ == 0) busy_since = e.load_start;
    const auto ms = matrices_of(layout.layers[id.layer]);
    for (std::size_t m = 0; m < 3; ++m) {
        matrix_read& r = e.reads[m];
        const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(id.expert) * ms[m].bytes;
        r.file_offset = align_down(start, region_alignment);
        r.needed = start - r.file_offset + ms[m].bytes;
        r.length = align_up(r.needed, region_alignment);
        MOED_ASSERT(r.length <= geometry[id.layer].region_bytes[m]);
        r.done = 0;
        r.eio_retries = 0;
        r.transient_retries = 0;
        queue_read_locked(slot, m);
    }
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
        // End of file before the matrix ended: the file is shorter than its header says.
        ++read_errors;
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
            e.load_failed = true;
            e.failure = error_noexcept(errc::io,
                                       "{}: changed since it was opened ({} then, {} now); expert {}/{} not "
                                       "loaded, reload the model",
                                       path, identity_text(identity), identity_text(*current), e.id.layer,
                                       e.id.expert);
        }
    }

    if (e.load_failed) {
        MOED_LOG_WARN(component, "{}", e.failure.message);
        residency[table_index(e.id)] = no_slot;  // the next request reads it afresh
        if (e.refs == 0) {
            e.state = slot_state::free;
            free_slots.push_back(slot);
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
    policy->on_insert(slot, e.id);
    if (e.refs > 0) {
        e.state = slot_state::in_use;
    } else {
        e.state = slot_state::ready;
        policy->on_evictable(slot, true);
    }
}

void tiered_expert_source::impl::release_locked(ExpertId id, std::uint32_t slot) noexcept {
    MOED_ASSERT(slot < n_slots());
    slot_entry& e = slots[slot];
    MOED_ASSERT(e.refs > 0 && e.id == id);
    if (--e.refs > 0) return;
    if (e.state == slot_state::in_use) {
        e.state = slot_state::ready;
        policy->on_evictable(slot, true);
        slot_cv.notify_all();
    } else if (e.state == slot_state::failed) {
        e.state = slot_state::free;
        free_slots.push_back(slot);
        slot_cv.notify_all();
    }
    // loading: an acquirer gave up (another expert of its call failed); the load finishes
    // into a ready, evictable slot.
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
        const std::size_t n = reader->reap(batch, true);
        lock.lock();
        try {
            for (std::size_t k = 0; k < n; ++k) on_completion_locked(batch[k]);
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

// --- tiered_expert_source ---

tiered_expert_source::tiered_expert_source(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

tiered_expert_source::~tiered_expert_source() = default;

result<std::unique_ptr<tiered_expert_source>> tiered_expert_source::create(
    const std::string& path, const expert_layout& layout, const tiered_options& options,
    std::unique_ptr<eviction_policy> policy, std::unique_ptr<block_reader> reader) {
    if (layout.n_layer == 0 || layout.n_expert == 0 || layout.layers.size() != layout.n_layer) {
        return make_error(errc::invalid_argument, "{}: expert layout has {} layers x {} experts ({} described)",
                          path, layout.n_layer, layout.n_expert, layout.layers.size());
    }
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        const auto& lt = layout.layers[l];
        if (lt.n_embd <= 0 || lt.n_ff <= 0 || lt.gate_bytes == 0 || lt.up_bytes == 0 || lt.down_bytes == 0) {
            return make_error(errc::bad_file, "{}: layer {} has empty experts (n_embd {}, n_ff {})", path, l,
                              lt.n_embd, lt.n_ff);
        }
    }
    if (options.queue_depth == 0) {
        return make_error(errc::invalid_argument, "{}: queue depth must be at least 1", path);
    }
    if (!policy) policy = make_lru_policy();
    const std::uint32_t min_slots = std::max<std::uint32_t>(options.min_slots, 1);

    std::uint32_t alignment = min_region_alignment;
    if (reader) alignment = std::max(alignment, reader->alignment());
    std::unique_ptr<host_slab> slab;
    std::uint64_t slot_bytes = 0;
    // The slab must exist before the reader opens (io_uring registers it), but the region
    // alignment depends on the reader; a device wanting more than a page is met by one retry.
    for (int attempt = 0; attempt < 2; ++attempt) {
        if (!is_power_of_two(alignment)) {
            return make_error(errc::internal, "{}: the block reader's alignment {} is not a power of two", path,
                              alignment);
        }
        slot_bytes = tiered_slot_bytes(layout, alignment);
        const std::uint64_t n_slots = options.host_budget_bytes / slot_bytes;
        if (n_slots < min_slots) {
            return make_error(errc::out_of_memory,
                              "{}: host budget {} ({} bytes) holds {} expert slot{} of {} ({} bytes); at least "
                              "{} slot{} needed, so the budget must be at least {} ({} bytes)",
                              path, format_bytes(options.host_budget_bytes), options.host_budget_bytes, n_slots,
                              n_slots == 1 ? "" : "s", format_bytes(slot_bytes), slot_bytes, min_slots,
                              min_slots == 1 ? " is" : "s are", format_bytes(slot_bytes * min_slots),
                              slot_bytes * min_slots);
        }
        auto made = host_slab::create(host_slab_options{options.host_budget_bytes, slot_bytes, alignment,
                                                        options.lock, options.numa_node});
        if (!made) return unexpected(std::move(made).error());
        slab = std::move(made).value();
        if (!reader) {
            auto opened = open_block_reader(block_reader_options{path, options.queue_depth, options.allow_uring,
                                                                 options.allow_direct, slab->region()});
            if (!opened) return unexpected(std::move(opened).error());
            reader = std::move(opened).value();
        }
        if (alignment % reader->alignment() == 0) break;
        if (attempt == 1) {
            return make_error(errc::unsupported, "{}: the block reader wants alignment {}, above {}", path,
                              reader->alignment(), alignment);
        }
        alignment = reader->alignment();
        reader.reset();
        slab.reset();
    }

    auto identity = reader->identity();
    if (!identity) return unexpected(std::move(identity).error());
    // Every expert must lie inside the file as it is now; lengths from the header are untrusted.
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        const auto ms = matrices_of(layout.layers[l]);
        for (std::size_t m = 0; m < 3; ++m) {
            const std::uint64_t size = identity->size_bytes;
            if (ms[m].offset > size || ms[m].bytes > (size - ms[m].offset) / layout.n_expert) {
                return make_error(errc::bad_file,
                                  "{}: layer {} {} experts ({} x {} bytes at offset {}) run past the end of the "
                                  "file ({} bytes)",
                                  path, l, matrix_names[m], layout.n_expert, ms[m].bytes, ms[m].offset, size);
            }
        }
    }

    auto p = std::make_unique<impl>();
    p->path = path;
    p->layout = layout;
    p->options = options;
    p->region_alignment = alignment;
    p->reader_alignment = reader->alignment();
    p->identity = *identity;
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        p->geometry.push_back(geometry_of(layout, l, alignment));
        p->expert_bytes_total += static_cast<std::uint64_t>(layout.expert_bytes(l)) * layout.n_expert;
    }
    const std::uint32_t n_slots = slab->n_slots();
    p->slab = std::move(slab);
    p->reader = std::move(reader);
    p->policy = std::move(policy);
    p->policy->reset(n_slots);
    p->slots.resize(n_slots);
    p->residency.assign(static_cast<std::size_t>(layout.n_layer) * layout.n_expert, no_slot);
    p->free_slots.reserve(n_slots);
    for (std::uint32_t s = n_slots; s > 0; --s) p->free_slots.push_back(s - 1);  // slot 0 first
    p->pending.reserve(static_cast<std::size_t>(n_slots) * 3);
    p->latency_us.assign(latency_samples_max, 0);
    try {
        impl* raw = p.get();
        p->completion_thread = std::thread([raw] { raw->completion_main(); });
    } catch (const std::system_error& ex) {
        return make_error(errc::internal, "{}: cannot start the completion thread: {}", path, ex.what());
    }
    MOED_LOG_INFO(component, "{}: host tier of {} slots x {} ({}), {} reads, queue depth {}", path, n_slots,
                  format_bytes(slot_bytes), format_bytes(slot_bytes * n_slots), io_mode_name(p->reader->mode()),
                  p->reader->queue_depth());
    return std::unique_ptr<tiered_expert_source>(new tiered_expert_source(std::move(p)));
}

result<expert_handle> tiered_expert_source::acquire(ExpertId id) {
    std::vector<expert_handle> handles;
    handles.reserve(1);
    const ExpertId ids[1] = {id};
    MOED_TRY(acquire_many(ids, handles));
    return std::move(handles.front());
}

result<void> tiered_expert_source::acquire_many(std::span<const ExpertId> ids, std::vector<expert_handle>& handles) {
    impl& d = *impl_;
    handles.clear();
    for (const ExpertId& id : ids) {
        if (!d.in_range(id)) {
            return make_error(errc::invalid_argument, "{}: expert {}/{} out of range ({} layers x {} experts)", d.path,
                              id.layer, id.expert, d.layout.n_layer, d.layout.n_expert);
        }
    }
    if (ids.size() > d.n_slots()) {
        // More distinct experts than slots can never be held at once: waiting would hang.
        std::vector<ExpertId> distinct(ids.begin(), ids.end());
        std::sort(distinct.begin(), distinct.end(), [](ExpertId a, ExpertId b) {
            return a.layer != b.layer ? a.layer < b.layer : a.expert < b.expert;
        });
        const auto n = static_cast<std::size_t>(std::unique(distinct.begin(), distinct.end()) - distinct.begin());
        if (n > d.n_slots()) {
            return make_error(errc::invalid_argument,
                              "{}: cannot hold {} experts at once in {} host slots; acquire at most "
                              "max_held_experts() at a time",
                              d.path, n, d.n_slots());
        }
    }
    handles.reserve(ids.size());

    std::unique_lock lock(d.mutex);
    bool queued = false;
    for (std::size_t k = 0; k < ids.size();) {
        const ExpertId id = ids[k];
        const std::uint32_t where = d.residency[d.table_index(id)];
        if (where != no_slot) {
            slot_entry& e = d.slots[where];
            switch (e.state) {
                case slot_state::ready:
                    d.policy->on_access(where);
                    d.policy->on_evictable(where, false);
                    e.state = slot_state::in_use;
                    ++d.hits;
                    break;
                case slot_state::in_use:
                    d.policy->on_access(where);
                    ++d.hits;
                    break;
                case slot_state::loading:
                    ++d.misses;  // the wait is the cost a miss has
                    break;
                default:
                    MOED_ASSERT(false && "the residency table points at a free or failed slot");
            }
            ++e.refs;
            handles.emplace_back(this, id, d.weights_of(where, id), where);
            ++k;
            continue;
        }
        const std::optional<std::uint32_t> slot = d.take_slot_locked();
        if (!slot) {
            // Every slot is loading or held. Send what this call queued so those loads can
            // finish, then wait for a release or a finished load and look at `id` again
            // (another caller may have loaded it meanwhile).
            if (queued) {
                d.flush_pending_locked();
                queued = false;
            }
            if (d.slot_cv.wait_for(lock, slot_wait_warn) == std::cv_status::timeout) {
                MOED_LOG_WARN(component,
                              "{}: waited {} s for a free host slot for expert {}/{}: all {} slots are held or "
                              "loading (do callers together hold more than max_held_experts()?)",
                              d.path, slot_wait_warn.count(), id.layer, id.expert, d.n_slots());
            }
            continue;
        }
        d.start_load_locked(*slot, id, 1);
        ++d.misses;
        handles.emplace_back(this, id, d.weights_of(*slot, id), *slot);
        queued = true;
        ++k;
    }
    // One batch for every read of the call; then wait only for this call's experts.
    if (queued) d.flush_pending_locked();

    const moed::error* failure = nullptr;
    for (const expert_handle& h : handles) {
        const std::uint32_t slot = d.slot_of(h);
        d.load_cv.wait(lock, [&] { return d.slots[slot].state != slot_state::loading; });
        if (d.slots[slot].state == slot_state::failed) {
            failure = &d.slots[slot].failure;
            break;
        }
    }
    if (failure != nullptr) {
        // The failed slot stays failed (not reused) while this call holds its ref, so the
        // error can be copied after the loop; handles are released without the lock.
        moed::error copy = *failure;
        lock.unlock();
        handles.clear();
        return unexpected(std::move(copy));
    }
    return {};
}

void tiered_expert_source::prefetch(std::span<const ExpertId> ids) {
    impl& d = *impl_;
    std::lock_guard lock(d.mutex);
    bool queued = false;
    for (const ExpertId& id : ids) {
        if (!d.in_range(id)) continue;  // a hint; an impossible id is simply not prefetched
        const std::uint32_t where = d.residency[d.table_index(id)];
        if (where != no_slot) {
            // Soon needed: keep it away from the eviction end.
            if (d.slots[where].state == slot_state::ready) d.policy->on_access(where);
            continue;
        }
        const std::optional<std::uint32_t> slot = d.take_slot_locked();
        if (!slot) break;  // every slot is held or loading; prefetch never waits
        d.start_load_locked(*slot, id, 0);
        queued = true;
    }
    if (queued) d.flush_pending_locked();
}

void tiered_expert_source::release(ExpertId id, std::uint64_t token) noexcept {
    std::lock_guard lock(impl_->mutex);
    impl_->release_locked(id, static_cast<std::uint32_t>(token));
}

std::uint32_t tiered_expert_source::slot_count() const noexcept { return impl_->n_slots(); }

std::uint64_t tiered_expert_source::slot_bytes() const noexcept { return impl_->slab->slot_bytes(); }

expert_cache_stats tiered_expert_source::stats() const {
    const impl& d = *impl_;
    expert_cache_stats out;
    out.io_mode = std::string(io_mode_name(d.reader->mode()));
    out.queue_depth = d.reader->queue_depth();
    out.expert_bytes_total = d.expert_bytes_total;

    std::vector<std::uint32_t> samples;
    {
        std::lock_guard lock(d.mutex);
        tier_stats& h = out.host;
        h.name = "host";
        h.capacity_experts = d.n_slots();
        h.capacity_bytes = static_cast<std::uint64_t>(d.n_slots()) * d.slab->slot_bytes();
        h.resident_bytes = d.resident_bytes;
        h.resident_experts = d.resident_experts;
        h.hits = d.hits;
        h.misses = d.misses;
        h.evictions = d.evictions;
        h.bytes_read = d.bytes_read;
        h.read_errors = d.read_errors;
        h.read_seconds = d.busy_seconds;
        if (d.loads_in_flight > 0) {
            h.read_seconds += std::chrono::duration<double>(clock_type::now() - d.busy_since).count();
        }
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(d.latency_count, latency_samples_max));
        samples.assign(d.latency_us.begin(), d.latency_us.begin() + static_cast<std::ptrdiff_t>(n));
        h.load_latency.count = d.latency_count;
    }
    tier_stats& h = out.host;
    h.read_bytes_per_s = h.read_seconds > 0.0 ? static_cast<double>(h.bytes_read) / h.read_seconds : 0.0;
    if (!samples.empty()) {
        std::sort(samples.begin(), samples.end());
        // Nearest-rank percentiles over the recent samples.
        auto pct = [&](double p) {
            const auto rank = static_cast<std::size_t>(std::ceil(p * static_cast<double>(samples.size())));
            return static_cast<double>(samples[std::clamp<std::size_t>(rank, 1, samples.size()) - 1]);
        };
        h.load_latency.p50_us = pct(0.50);
        h.load_latency.p90_us = pct(0.90);
        h.load_latency.p99_us = pct(0.99);
        h.load_latency.max_us = static_cast<double>(samples.back());
    }

    tier_stats& n = out.nvme;
    n.name = "nvme";
    n.capacity_bytes = d.expert_bytes_total;
    n.capacity_experts = static_cast<std::uint64_t>(d.layout.n_layer) * d.layout.n_expert;
    n.resident_bytes = n.capacity_bytes;  // the model file always holds every expert
    n.resident_experts = n.capacity_experts;
    n.hits = h.misses;  // every host miss is served from the file
    return out;
}

}  // namespace moed::storage
