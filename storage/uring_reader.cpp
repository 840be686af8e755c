#include "storage/uring_reader.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/log.h"

namespace moed::storage {

namespace {

// SQE user_data of the wake poll; slot indices are below the queue depth.
constexpr std::uint64_t wake_tag = ~std::uint64_t{0};
// The kernel refuses a registered buffer larger than 1 GiB.
constexpr std::size_t max_registered_buffer_bytes = std::size_t{1} << 30;
// CQEs consumed per io_uring_peek_batch_cqe call (a stack array, no allocation).
constexpr unsigned cqe_batch = 64;

// Frees the ring unless cancel() is called: set-up takes several steps that may fail.
struct ring_guard {
    io_uring* ring;
    ~ring_guard() {
        if (ring != nullptr) io_uring_queue_exit(ring);
    }
    void cancel() { ring = nullptr; }
};

}  // namespace

result<std::unique_ptr<uring_reader>> uring_reader::create(unique_fd& fd, const uring_reader_config& config,
                                                           std::string& note) {
    MOED_ASSERT(config.queue_depth > 0);
    std::unique_ptr<uring_reader> reader(new uring_reader());
    // One SQ entry per op plus one for re-arming the wake poll; the CQ (twice the SQ by
    // default) then never overflows: at most queue_depth op CQEs and one wake CQE wait.
    const unsigned entries = config.queue_depth + 1;
    io_uring_params params{};
    // SUBMIT_ALL (5.18): an SQE that fails to prepare gets an error CQE instead of stopping
    // the batch, so every accepted op is in the kernel after one submit. Not COOP_TASKRUN or
    // DEFER_TASKRUN: completions run as task work on the *submitting* thread, and the reaper
    // waits on another thread; deferring them until the submitter enters the kernel would
    // stall the reaper while the engine computes.
    params.flags = IORING_SETUP_SUBMIT_ALL;
    int rc = config.simulate_init_errno != 0 ? -config.simulate_init_errno
                                             : io_uring_queue_init_params(entries, &reader->ring_, &params);
    if (rc == -EINVAL && config.simulate_init_errno == 0) {
        params = io_uring_params{};  // a kernel before 5.18
        rc = io_uring_queue_init_params(entries, &reader->ring_, &params);
    }
    if (rc < 0) {
        return make_error(errc::unsupported, "io_uring_queue_init: {}{}", errno_text(-rc),
                          (rc == -EPERM || rc == -ENOSYS)
                              ? " (io_uring disabled: kernel.io_uring_disabled or a seccomp filter)"
                              : "");
    }
    ring_guard guard{&reader->ring_};

    // The ops we need: IORING_OP_READ and READ_FIXED's plain sibling came in 5.6.
    if (io_uring_probe* probe = io_uring_get_probe_ring(&reader->ring_)) {
        const bool ok = io_uring_opcode_supported(probe, IORING_OP_READ) &&
                        io_uring_opcode_supported(probe, IORING_OP_READ_FIXED) &&
                        io_uring_opcode_supported(probe, IORING_OP_POLL_ADD);
        io_uring_free_probe(probe);
        if (!ok) return make_error(errc::unsupported, "io_uring lacks IORING_OP_READ (kernel before 5.6)");
    } else {
        return make_error(errc::unsupported, "io_uring cannot be probed (kernel before 5.6)");
    }

    reader->wake_fd_ = unique_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!reader->wake_fd_.valid()) {
        return make_error(errc::io, "eventfd for the block reader of {}: {}", config.path, errno_text(errno));
    }

    reader->path_ = config.path;
    reader->mode_ = config.mode;
    reader->alignment_ = config.alignment;
    reader->queue_depth_ = config.queue_depth;
    reader->sqe_fd_ = fd.get();
    const int raw_fd = fd.get();
    // A registered file saves a file-table lookup and reference per op.
    if (io_uring_register_files(&reader->ring_, &raw_fd, 1) == 0) {
        reader->sqe_fd_ = 0;
        reader->sqe_flags_ = IOSQE_FIXED_FILE;
    }

    // Registered buffers spare the kernel pinning the destination pages on every read.
    // Registration pins the region and counts against RLIMIT_MEMLOCK without CAP_IPC_LOCK;
    // when it fails reads still work, only slower, so it is a note, not an error.
    if (!config.registered_region.empty()) {
        std::byte* base = config.registered_region.data();
        const std::size_t bytes = config.registered_region.size();
        std::vector<iovec> pieces;
        for (std::size_t at = 0; at < bytes; at += max_registered_buffer_bytes) {
            pieces.push_back(iovec{base + at, std::min(max_registered_buffer_bytes, bytes - at)});
        }
        const int reg = io_uring_register_buffers(&reader->ring_, pieces.data(), static_cast<unsigned>(pieces.size()));
        if (reg == 0) {
            reader->buffers_ = std::move(pieces);
            reader->region_base_ = base;
            reader->region_bytes_ = bytes;
        } else {
            note = fmt::format("registering {} bytes of host memory as io_uring fixed buffers failed: {}{}", bytes,
                               errno_text(-reg),
                               reg == -ENOMEM ? " (raise RLIMIT_MEMLOCK: ulimit -l / LimitMEMLOCK=)" : "");
        }
    }

    reader->slot_user_data_.assign(config.queue_depth, 0);
    reader->free_slots_.resize(config.queue_depth);
    for (std::uint32_t i = 0; i < config.queue_depth; ++i) reader->free_slots_[i] = i;
    reader->free_tail_.store(config.queue_depth, std::memory_order_relaxed);

    {
        std::lock_guard lock(reader->sq_mutex_);
        reader->arm_wake_poll_locked();
        auto flushed = reader->flush_locked();
        if (!flushed) return unexpected(std::move(flushed).error());
    }
    guard.cancel();
    reader->ring_ready_ = true;
    reader->file_ = std::move(fd);
    return reader;
}

uring_reader::~uring_reader() {
    if (!ring_ready_) return;
    // Drain: a read still in flight writes into memory its caller may free once we return.
    while (in_flight_.load(std::memory_order_acquire) > 0) {
        io_uring_cqe* cqe = nullptr;
        const int rc = io_uring_wait_cqe(&ring_, &cqe);
        if (rc == -EINTR) continue;
        if (rc < 0) {
            MOED_LOG_ERROR("storage", "block reader of {}: waiting for {} reads at close failed: {}", path_,
                           in_flight_.load(), errno_text(-rc));
            break;
        }
        if (cqe->user_data != wake_tag) in_flight_.fetch_sub(1, std::memory_order_acq_rel);
        io_uring_cqe_seen(&ring_, cqe);
    }
    io_uring_queue_exit(&ring_);
}

void uring_reader::arm_wake_poll_locked() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    // The SQ has one entry more than the queue depth and is emptied by every flush, so a
    // missing SQE is a broken invariant, not a load condition.
    MOED_ASSERT(sqe != nullptr);
    // Multishot (5.13) stays armed across wakes; a one-shot poll is re-armed after each.
    if (multishot_) {
        io_uring_prep_poll_multishot(sqe, wake_fd_.get(), POLLIN);
    } else {
        io_uring_prep_poll_add(sqe, wake_fd_.get(), POLLIN);
    }
    io_uring_sqe_set_data64(sqe, wake_tag);
}

result<void> uring_reader::flush_locked() {
    int rc;
    do {
        rc = io_uring_submit(&ring_);
    } while (rc == -EINTR);
    // EAGAIN: the kernel could not allocate requests; EBUSY: CQ overflow backlog. Both are
    // transient; what was not taken stays in the SQ and goes with the next flush.
    if (rc < 0 && rc != -EAGAIN && rc != -EBUSY) {
        return make_error(errc::io, "io_uring_submit for {}: {}", path_, errno_text(-rc));
    }
    sq_leftover_.store(io_uring_sq_ready(&ring_) > 0, std::memory_order_release);
    return {};
}

result<std::size_t> uring_reader::submit(std::span<const read_op> ops) {
    if (ops.empty()) return std::size_t{0};
    const std::uint64_t free_count = free_tail_.load(std::memory_order_acquire) - free_head_;
    const std::size_t accepted = std::min<std::size_t>(ops.size(), free_count);
    std::lock_guard lock(sq_mutex_);
    if (accepted == 0) {
        // Nothing new fits, but leftovers of an earlier batch may still wait in the SQ.
        if (sq_leftover_.load(std::memory_order_acquire)) MOED_TRY(flush_locked());
        return std::size_t{0};
    }
    for (std::size_t i = 0; i < accepted; ++i) {
        const read_op& op = ops[i];
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        MOED_ASSERT(sqe != nullptr);  // see arm_wake_poll_locked
        const std::uint32_t slot = free_slots_[free_head_ % queue_depth_];
        ++free_head_;
        slot_user_data_[slot] = op.user_data;
        // Integer arithmetic: comparing pointers into different objects is undefined.
        const auto dest_at = reinterpret_cast<std::uintptr_t>(op.dest) - reinterpret_cast<std::uintptr_t>(region_base_);
        if (!buffers_.empty() && dest_at < region_bytes_ &&
            dest_at % max_registered_buffer_bytes + op.length <= buffers_[dest_at / max_registered_buffer_bytes].iov_len) {
            io_uring_prep_read_fixed(sqe, sqe_fd_, op.dest, op.length, op.offset,
                                     static_cast<int>(dest_at / max_registered_buffer_bytes));
        } else {
            io_uring_prep_read(sqe, sqe_fd_, op.dest, op.length, op.offset);
        }
        sqe->flags |= sqe_flags_;
        io_uring_sqe_set_data64(sqe, slot);
    }
    // Counted before the kernel sees them: the reaper may reap them before flush returns.
    in_flight_.fetch_add(accepted, std::memory_order_acq_rel);
    submit_seq_.fetch_add(accepted, std::memory_order_release);
    MOED_TRY(flush_locked());
    return accepted;
}

void uring_reader::on_wake_cqe(const io_uring_cqe& cqe) {
    if (cqe.res == -EINVAL && multishot_) {
        multishot_ = false;  // a kernel before 5.13 refuses multishot polls
    } else if (cqe.res < 0 && cqe.res != -ECANCELED) {
        MOED_LOG_ERROR("storage", "block reader of {}: wake poll failed: {}", path_, errno_text(-cqe.res));
    } else {
        // Drain the eventfd *before* clearing wake_pending_: a wake() after the clear then
        // writes again and the armed poll sees a readable fd. Draining after the clear could
        // eat that write before the kernel's poll re-check, losing the wake for good.
        std::uint64_t count = 0;
        [[maybe_unused]] const ssize_t got = ::read(wake_fd_.get(), &count, sizeof count);
        wake_pending_.store(false);
        wake_latched_ = true;
    }
    if ((cqe.flags & IORING_CQE_F_MORE) == 0) {
        // The poll ended (one-shot, CQ overflow, or the multishot refusal above): re-arm.
        std::lock_guard lock(sq_mutex_);
        arm_wake_poll_locked();
        auto flushed = flush_locked();
        if (!flushed) MOED_LOG_ERROR("storage", "{}", flushed.error().message);
    }
}

std::size_t uring_reader::drain_cq(std::span<read_completion> out, std::size_t n) {
    while (n < out.size()) {
        io_uring_cqe* cqes[cqe_batch];
        const unsigned want = static_cast<unsigned>(std::min<std::size_t>(cqe_batch, out.size() - n));
        const unsigned got = io_uring_peek_batch_cqe(&ring_, cqes, want);
        if (got == 0) break;
        // Pairs with submit()'s release: the slots of these CQEs were written before it.
        (void)submit_seq_.load(std::memory_order_acquire);
        std::uint64_t tail = free_tail_.load(std::memory_order_relaxed);  // we are its only writer
        for (unsigned i = 0; i < got; ++i) {
            const io_uring_cqe& cqe = *cqes[i];
            if (cqe.user_data == wake_tag) {
                on_wake_cqe(cqe);
                continue;
            }
            const auto slot = static_cast<std::uint32_t>(cqe.user_data);
            out[n++] = read_completion{slot_user_data_[slot], cqe.res};
            free_slots_[tail % queue_depth_] = slot;
            ++tail;
        }
        io_uring_cq_advance(&ring_, got);
        // Uncount before the slots are handed back, so in_flight() never exceeds the depth.
        const std::uint64_t freed = tail - free_tail_.load(std::memory_order_relaxed);
        if (freed > 0) in_flight_.fetch_sub(freed, std::memory_order_acq_rel);
        free_tail_.store(tail, std::memory_order_release);
    }
    return n;
}

std::size_t uring_reader::reap(std::span<read_completion> out, bool wait) {
    if (out.empty()) return 0;
    for (;;) {
        const std::size_t n = drain_cq(out, 0);
        if (n > 0 || !wait) return n;
        if (wake_latched_) {
            wake_latched_ = false;
            return 0;
        }
        if (sq_leftover_.load(std::memory_order_acquire)) {
            std::lock_guard lock(sq_mutex_);
            auto flushed = flush_locked();
            if (!flushed) MOED_LOG_ERROR("storage", "{}", flushed.error().message);
        }
        io_uring_cqe* cqe = nullptr;
        const int rc = io_uring_wait_cqe(&ring_, &cqe);
        if (rc < 0 && rc != -EINTR) {
            // -EBADR: the kernel dropped CQEs (cannot happen with our CQ sizing); report and
            // let the caller decide rather than spinning on the error.
            MOED_LOG_ERROR("storage", "block reader of {}: io_uring_wait_cqe: {}", path_, errno_text(-rc));
            return 0;
        }
    }
}

void uring_reader::wake() noexcept {
    // One eventfd write per pending wake: wakes between two reaps collapse into one, and a
    // flood of wake() calls cannot fill the CQ with poll completions.
    if (wake_pending_.exchange(true)) return;
    const std::uint64_t one = 1;
    if (::write(wake_fd_.get(), &one, sizeof one) != static_cast<ssize_t>(sizeof one)) {
        MOED_LOG_ERROR("storage", "block reader of {}: eventfd write failed: {}", path_, errno_text(errno));
    }
}

}  // namespace moed::storage
