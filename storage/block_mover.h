// The mover of the host tier: reads experts from the model file into host slots through
// the block reader. A load is three matrix reads (gate, up, down), each from the aligned
// offset below its matrix into its region of the slot (storage/slot_geometry.h). It owns
// what a read needs until the load ends:
//   - chunks: read_op::length is 32-bit, so a longer matrix is read in chunks of at most
//     chunk_bytes_max, each resumed like a short read;
//   - short reads: the rest is read again from the last reader-aligned offset reached (bytes
//     read twice are the same bytes); a reader that makes no progress fails the read after
//     transient_retries_max tries instead of spinning;
//   - EINTR and EAGAIN: retried up to transient_retries_max times; EIO: retried up to
//     eio_retries times, each counted as an error;
//   - end of file before the matrix ended: the file shrank after it was opened (the tier
//     checked every expert lay inside it), reported as source_ended;
//   - after a load whose reads all succeeded, the file's identity (fstat) is compared with
//     the one it was opened with; a difference is reported as source_changed.
// Errors name the file, the expert, the matrix, its size and its offset.
//
// A full reader takes what it can; the rest waits and goes at the next submit() or reap().
// A submit the reader refuses (or a reader that takes nothing with nothing in flight, which
// would hang) fails those loads; reap() reports them.
//
// Threads: as mover (storage/mover.h). block_reader allows one submitter at a time, and
// both the tier's callers and the completion thread submit, so reader submits go under the
// mover's lock; reap() waits on the reader without it. queue() takes only a second, smaller
// lock (the staged reads), which submit() holds for a swap, so a caller of queue() under
// the tier's lock never waits for a reader's submit. Lock order: submit_mutex_, then
// queue_mutex_, then mutex_. source_identity(), set_identity() and replace_reader() from
// any thread.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "storage/block_reader.h"
#include "storage/expert_source.h"
#include "storage/mover.h"
#include "storage/slot_classes.h"
#include "storage/slot_geometry.h"

namespace moed::storage {

struct block_mover_options {
    std::string path;                    // the model file, for errors
    std::uint32_t eio_retries = 3;       // per matrix read
    std::uint32_t transient_retries_max = 64;  // EINTR/EAGAIN and no-progress short reads, per matrix read
    std::uint64_t chunk_bytes_max = std::uint64_t{1} << 30;  // the longest single read
    std::uint32_t region_alignment = min_region_alignment;   // of the slot regions (slot_geometry)
};

// "size S, inode I, mtime M ns": a file identity in messages.
std::string identity_text(const file_identity& id);

// The memory the loads land in: from base, the slots of `classes` (storage/slot_classes.h),
// or n_slots slots of slot_bytes each.
struct slot_memory {
    slot_memory(std::byte* base_in, std::uint32_t n_slots, std::uint64_t slot_bytes)
        : base(base_in), classes(slot_classes::uniform(n_slots, slot_bytes)) {}
    slot_memory(std::byte* base_in, slot_classes classes_in) : base(base_in), classes(std::move(classes_in)) {}

    std::byte* base = nullptr;
    slot_classes classes;
    std::uint32_t n_slots() const noexcept { return classes.n_slots(); }
    std::byte* slot(std::uint32_t s) const noexcept { return base + classes.slot_offset(s); }
};

class block_mover final : public mover {
public:
    // Completions taken from the reader per reap call.
    static constexpr std::size_t reap_batch_max = 64;

    // Reads experts of `layout` from `reader` into `memory`. `identity` is the file as
    // opened (loads are checked against it). The reader's alignment must divide
    // options.region_alignment, and a load's slot must hold its layer's experts at that
    // alignment (programmer errors: the tier sized both).
    block_mover(std::unique_ptr<block_reader> reader, slot_memory memory, const expert_layout& layout,
                file_identity identity, block_mover_options options);
    // Waits for reads still in flight (the reader does) before the memory may be freed.
    ~block_mover() override;
    block_mover(const block_mover&) = delete;
    block_mover& operator=(const block_mover&) = delete;

    // --- mover ---
    void queue(std::uint32_t slot, ExpertId id) override;
    void submit() noexcept override;
    std::size_t reap(std::span<move_result> out, bool wait) override;
    void stop() noexcept override;
    bool drained() const noexcept override;
    std::size_t loads_in_flight() const noexcept override;

    // --- the file ---
    // The reader's mode and queue depth, read without the mover's lock (a status reader
    // never waits for a submit).
    io_mode mode() const noexcept { return mode_.load(std::memory_order_relaxed); }
    std::uint32_t queue_depth() const noexcept { return queue_depth_.load(std::memory_order_relaxed); }
    // The open file's identity now (fstat).
    result<file_identity> source_identity() const;
    // The identity later loads are checked against (the file was found to be the same model
    // again, perhaps with a new mtime).
    void set_identity(const file_identity& identity);
    // Reads from `reader` from now on (the file was replaced and reopened). Only while no
    // load is in flight (a programmer error otherwise); its alignment must divide the
    // region alignment.
    void replace_reader(std::unique_ptr<block_reader> reader);

private:
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
    struct load {
        bool active = false;  // queued or moving, its result not yet reaped
        ExpertId id;
        std::uint32_t matrices_pending = 0;
        bool failed = false;  // result.error holds the first failure
        bool ended_early = false;  // a read met the end of the file
        std::array<matrix_read, 3> reads;
        move_result result;
    };

    // Appends the read of what is still missing of matrix `m` of `slot` to `to`.
    void add_read_locked(std::vector<read_op>& to, std::uint32_t slot, std::size_t m);
    void submit_pending_locked() noexcept;
    void on_completion_locked(const read_completion& c) noexcept;
    // The matrix read ended (failed when `failure` is set); the load ends with its last one.
    void finish_matrix_locked(std::uint32_t slot, const moed::error* failure) noexcept;
    void end_load_locked(std::uint32_t slot) noexcept;
    moed::error read_error(std::uint32_t slot, std::size_t m, std::string_view what) const noexcept;

    const block_mover_options options_;
    const expert_layout layout_;
    const slot_memory memory_;
    std::vector<layer_geometry> geometry_;

    std::mutex submit_mutex_;  // one submit() at a time (it owns taking_)
    std::mutex queue_mutex_;   // staged_; with mutex_ for stopping_, reader_alignment_ and loads_ of new loads
    mutable std::mutex mutex_;
    std::condition_variable cv_;  // reap(): reads were submitted, a load ended, or stop()
    std::unique_ptr<block_reader> reader_;
    std::uint32_t reader_alignment_ = 1;  // written under queue_mutex_ and mutex_
    std::atomic<io_mode> mode_{io_mode::pread_buffered};
    std::atomic<std::uint32_t> queue_depth_{0};
    file_identity identity_;
    // Per slot. A load's entry is written by queue() (the slot is not in flight then) and by
    // the reaper while it is in flight; the tier's lock orders a re-queue after the reap.
    std::vector<load> loads_;
    // Reads made by queue() and not yet submitted (staged_, under queue_mutex_), the ones a
    // submit() is handing over (taking_, under submit_mutex_), and reads waiting for room in
    // the reader (pending_: resumed reads, retries, what a full reader did not take). Each
    // loading slot has at most one read per matrix outstanding, so 3 * n_slots bounds each;
    // reserved once (a swap exchanges buffers with their capacity).
    std::vector<read_op> staged_;
    std::vector<read_op> taking_;
    std::vector<read_op> pending_;
    std::vector<move_result> done_;       // ended loads not yet reaped; capacity n_slots
    std::size_t submitted_ = 0;           // accepted by the reader and not yet reaped
    std::atomic<std::size_t> active_{0};  // loads queued or moving, or ended and not reaped
    bool stopping_ = false;               // written under queue_mutex_ and mutex_
    std::array<read_completion, reap_batch_max> batch_{};  // reap()'s scratch (one reaper at a time)
};

}  // namespace moed::storage
