// The io_uring backend of the block reader: one ring per reader, the model file registered
// as fixed file 0, the host slab registered as fixed buffers (IORING_OP_READ_FIXED when a
// read lands inside it, plain IORING_OP_READ otherwise), one io_uring_submit per batch.
//
// Threads: the contract of block_reader: submit() from one thread at a time (the submitter),
// reap() from one thread at a time (the reaper), wake() and in_flight() from any. The SQ is
// shared by submit() and the reaper's re-arming of the wake poll, so it sits behind a mutex;
// the CQ belongs to the reaper alone. Destroy only after the reaper has stopped calling.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "storage/block_reader.h"
#include "storage/io_util.h"

namespace moed::storage {

struct uring_reader_config {
    std::string path;
    io_mode mode = io_mode::uring_direct;  // uring_direct or uring_buffered: how `fd` was opened
    std::uint32_t alignment = 1;
    std::uint32_t queue_depth = 32;
    std::span<std::byte> registered_region;
    int simulate_init_errno = 0;  // tests: pretend io_uring_queue_init failed with this errno
};

class uring_reader final : public block_reader {
public:
    // On success takes `fd`. errc::unsupported means io_uring cannot run here (kernel too
    // old, io_uring disabled, seccomp): the message says why and `fd` is left to the caller
    // for a fallback. `note` receives a degradation that is not a failure (the region could
    // not be registered, so reads go through unregistered buffers).
    static result<std::unique_ptr<uring_reader>> create(unique_fd& fd, const uring_reader_config& config,
                                                        std::string& note);
    // Waits for every read still in flight (the kernel may be writing into memory the
    // caller frees right after), then tears the ring down.
    ~uring_reader() override;
    uring_reader(const uring_reader&) = delete;
    uring_reader& operator=(const uring_reader&) = delete;

    io_mode mode() const noexcept override { return mode_; }
    std::uint32_t alignment() const noexcept override { return alignment_; }
    std::uint32_t queue_depth() const noexcept override { return queue_depth_; }
    const std::string& path() const noexcept override { return path_; }
    result<std::size_t> submit(std::span<const read_op> ops) override;
    std::size_t reap(std::span<read_completion> out, bool wait) override;
    std::size_t in_flight() const noexcept override { return in_flight_.load(std::memory_order_acquire); }
    void wake() noexcept override;
    result<file_identity> identity() const override { return identity_of(file_.get(), path_); }

    bool buffers_registered() const noexcept { return !buffers_.empty(); }
    bool file_registered() const noexcept { return sqe_flags_ != 0; }

private:
    uring_reader() = default;
    // Takes the SQ lock's caller's word for it: sq_mutex_ must be held.
    void arm_wake_poll_locked();
    // Pushes prepared SQEs to the kernel; sq_mutex_ must be held. Leftovers the kernel did
    // not take (request allocation failed) stay in the SQ and are pushed again later.
    result<void> flush_locked();
    // Handles one CQE of the wake poll (reaper thread).
    void on_wake_cqe(const io_uring_cqe& cqe);
    // Consumes available CQEs into out[n..]; returns the new n (reaper thread).
    std::size_t drain_cq(std::span<read_completion> out, std::size_t n);

    io_uring ring_{};
    bool ring_ready_ = false;
    unique_fd file_;
    unique_fd wake_fd_;
    std::string path_;
    io_mode mode_ = io_mode::uring_direct;
    std::uint32_t alignment_ = 1;
    std::uint32_t queue_depth_ = 0;

    // The fd as SQEs name it: 0 with IOSQE_FIXED_FILE when registered, else the raw fd.
    int sqe_fd_ = -1;
    std::uint8_t sqe_flags_ = 0;
    // Registered buffers: the region cut in pieces of at most 1 GiB (the kernel's limit
    // per buffer); a read is READ_FIXED when it lies inside one piece.
    std::vector<iovec> buffers_;
    std::byte* region_base_ = nullptr;
    std::size_t region_bytes_ = 0;

    // Per-op slots: SQE user_data is a slot index (the caller's user_data is an arbitrary
    // word, so no value could be reserved for the wake poll). Free slot indices travel from
    // the reaper back to the submitter through a single-producer single-consumer ring:
    // the reaper pushes (free_tail_), the submitter pops (free_head_).
    std::vector<std::uint64_t> slot_user_data_;
    std::vector<std::uint32_t> free_slots_;
    std::atomic<std::uint64_t> free_tail_{0};
    std::uint64_t free_head_ = 0;  // submitter only
    // Orders the submitter's slot writes before the reaper's reads: the kernel orders them
    // in fact, but ThreadSanitizer cannot see the kernel, so this release/acquire pair
    // states it in the C++ memory model.
    std::atomic<std::uint64_t> submit_seq_{0};
    std::atomic<std::size_t> in_flight_{0};

    std::mutex sq_mutex_;  // guards the SQ (io_uring_get_sqe .. io_uring_submit)
    std::atomic<bool> sq_leftover_{false};
    std::atomic<bool> wake_pending_{false};  // an eventfd write is outstanding
    bool wake_latched_ = false;              // reaper only: a wake not yet returned to a waiter
    bool multishot_ = true;                  // reaper/sq lock: the wake poll is multishot
};

}  // namespace moed::storage
