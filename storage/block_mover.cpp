#include "storage/block_mover.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/assert.h"
#include "common/log.h"

namespace moed::storage {

namespace {

constexpr const char* component = "tiers";

}  // namespace

std::string identity_text(const file_identity& id) {
    return fmt::format("size {}, inode {}, mtime {} ns", id.size_bytes, id.inode, id.mtime_ns);
}

block_mover::block_mover(std::unique_ptr<block_reader> reader, slot_memory memory, const expert_layout& layout,
                         file_identity identity, block_mover_options options)
    : options_(std::move(options)),
      layout_(layout),
      memory_(std::move(memory)),
      reader_(std::move(reader)),
      identity_(identity) {
    MOED_ASSERT(reader_ != nullptr && memory_.base != nullptr && memory_.n_slots() > 0);
    MOED_ASSERT(is_power_of_two(options_.region_alignment));
    MOED_ASSERT(options_.chunk_bytes_max > 0 && options_.chunk_bytes_max <= 0xffffffffu);
    reader_alignment_ = reader_->alignment();
    mode_.store(reader_->mode());
    queue_depth_.store(reader_->queue_depth());
    MOED_ASSERT(options_.region_alignment % reader_alignment_ == 0);
    MOED_ASSERT(options_.chunk_bytes_max % reader_alignment_ == 0);
    for (std::uint32_t l = 0; l < layout_.n_layer; ++l) {
        geometry_.push_back(geometry_of(layout_, l, options_.region_alignment));
        const layer_geometry& g = geometry_.back();
        // Every layer fits the largest slot; queue() checks the slot a load actually gets.
        MOED_ASSERT(g.region_offset[2] + g.region_bytes[2] <= memory_.classes.slot_bytes_max());
    }
    loads_.resize(memory_.n_slots());
    staged_.reserve(static_cast<std::size_t>(memory_.n_slots()) * 3);
    taking_.reserve(static_cast<std::size_t>(memory_.n_slots()) * 3);
    pending_.reserve(static_cast<std::size_t>(memory_.n_slots()) * 3);
    done_.reserve(memory_.n_slots());
}

block_mover::~block_mover() = default;

void block_mover::queue(std::uint32_t slot, ExpertId id) {
    MOED_ASSERT(slot < memory_.n_slots() && id.layer < layout_.n_layer && id.expert < layout_.n_expert);
    // The slot is of the layer's class: its regions fit.
    MOED_ASSERT(geometry_[id.layer].region_offset[2] + geometry_[id.layer].region_bytes[2] <=
                memory_.classes.slot_bytes(slot));
    std::lock_guard lock(queue_mutex_);
    if (stopping_) return;  // the tier is shutting down: nobody waits for this load
    load& l = loads_[slot];
    MOED_ASSERT(!l.active);  // one load per slot at a time
    l.active = true;
    active_.fetch_add(1);
    l.id = id;
    l.matrices_pending = 3;
    l.failed = false;
    l.ended_early = false;
    l.result = move_result{};
    l.result.slot = slot;
    const auto ms = matrices_of(layout_.layers[id.layer]);
    for (std::size_t m = 0; m < 3; ++m) {
        matrix_read& r = l.reads[m];
        const std::uint64_t start = matrix_offset(layout_, id, m);
        r.file_offset = align_down(start, options_.region_alignment);
        r.needed = start - r.file_offset + ms[m].bytes;
        r.length = align_up(r.needed, options_.region_alignment);
        MOED_ASSERT(r.length <= geometry_[id.layer].region_bytes[m]);
        r.done = 0;
        r.eio_retries = 0;
        r.transient_retries = 0;
        add_read_locked(staged_, slot, m);
    }
}

// The read of what is still missing of matrix `m`, from the last reader-aligned offset at
// or below what has arrived (O_DIRECT needs aligned offsets; bytes read twice are the same
// bytes).
void block_mover::add_read_locked(std::vector<read_op>& to, std::uint32_t slot, std::size_t m) {
    load& l = loads_[slot];
    matrix_read& r = l.reads[m];
    const std::uint64_t start = align_down(r.done, reader_alignment_);
    MOED_ASSERT(start < r.length);
    r.op_start = start;
    r.op_length = std::min(r.length - start, options_.chunk_bytes_max);
    MOED_ASSERT(to.size() < to.capacity());  // the 3 * n_slots bound
    to.push_back(read_op{r.file_offset + start, static_cast<std::uint32_t>(r.op_length),
                         memory_.slot(slot) + geometry_[l.id.layer].region_offset[m] + start,
                         (static_cast<std::uint64_t>(slot) << 2) | m});
}

void block_mover::submit() noexcept {
    std::lock_guard serial(submit_mutex_);
    {
        // A swap: queue() waits for nothing longer than this.
        std::lock_guard lock(queue_mutex_);
        taking_.swap(staged_);
    }
    std::lock_guard lock(mutex_);
    // Reads waiting for room go first: they were made earlier.
    MOED_ASSERT(pending_.size() + taking_.size() <= pending_.capacity());
    pending_.insert(pending_.end(), taking_.begin(), taking_.end());
    taking_.clear();
    submit_pending_locked();
}

void block_mover::submit_pending_locked() noexcept {
    if (pending_.empty() || stopping_) return;
    result<std::size_t> accepted = make_error(errc::internal, "the block reader's submit threw");
    try {
        accepted = reader_->submit(pending_);
    } catch (...) {
        // Keep the error above: nothing may leave a completion path by an exception.
    }
    if (accepted && *accepted == 0 && submitted_ == 0) {
        // Nothing in flight, so the reader's queue is empty, yet it took nothing: waiting for
        // completions that cannot come would hang the loads.
        accepted = make_error(errc::internal, "the block reader accepted no read with its queue empty");
    }
    if (!accepted) {
        MOED_LOG_ERROR(component, "{}: submitting {} reads failed: {}", options_.path, pending_.size(),
                       accepted.error().message);
        // Each read fails its load; a load ends once its other reads do.
        for (const read_op& op : pending_) {
            const auto slot = static_cast<std::uint32_t>(op.user_data >> 2);
            const auto m = static_cast<std::size_t>(op.user_data & 3);
            const moed::error failure = read_error(slot, m, accepted.error().message);
            finish_matrix_locked(slot, &failure);
        }
        pending_.clear();
        return;
    }
    const std::size_t n = std::min(*accepted, pending_.size());
    submitted_ += n;
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(n));
    if (n > 0) cv_.notify_all();
}

std::size_t block_mover::reap(std::span<move_result> out, bool wait) {
    std::unique_lock lock(mutex_);
    for (;;) {
        if (!stopping_ && !done_.empty()) {
            const std::size_t n = std::min(out.size(), done_.size());
            for (std::size_t k = 0; k < n; ++k) out[k] = std::move(done_[k]);
            done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(n));
            active_.fetch_sub(n);
            return n;
        }
        if (submitted_ == 0) {
            // Nothing on the reader: wait for a submit (reap only while reads are in flight, so
            // stopping never depends on the reader's wake()).
            if (stopping_ || !wait) return 0;
            cv_.wait(lock, [&] { return submitted_ > 0 || !done_.empty() || stopping_; });
            continue;
        }
        // Replaced only while nothing is submitted, so the pointer holds while unlocked.
        block_reader* reader = reader_.get();
        lock.unlock();
        std::size_t n = 0;
        try {
            n = reader->reap(batch_, wait);
        } catch (...) {
            // A reader that throws is asked again next time round.
            MOED_LOG_ERROR(component, "{}: the block reader's reap threw", options_.path);
        }
        lock.lock();
        for (std::size_t k = 0; k < n; ++k) on_completion_locked(batch_[k]);
        submit_pending_locked();
        if (!wait && done_.empty()) return 0;
    }
}

void block_mover::on_completion_locked(const read_completion& c) noexcept {
    MOED_ASSERT(submitted_ > 0);
    --submitted_;
    const auto slot = static_cast<std::uint32_t>(c.user_data >> 2);
    const auto m = static_cast<std::size_t>(c.user_data & 3);
    MOED_ASSERT(slot < memory_.n_slots() && m < 3);
    load& l = loads_[slot];
    if (stopping_) return;  // only draining: nobody waits for this load
    MOED_ASSERT(l.active && l.matrices_pending > 0);
    matrix_read& r = l.reads[m];
    if (c.result < 0) {
        const int err = static_cast<int>(-c.result);
        if ((err == EINTR || err == EAGAIN) && r.transient_retries < options_.transient_retries_max) {
            ++r.transient_retries;
            add_read_locked(pending_, slot, m);
            return;
        }
        ++l.result.errors;
        if (err == EIO && r.eio_retries < options_.eio_retries) {
            ++r.eio_retries;
            MOED_LOG_DEBUG(component, "{}: EIO reading expert {}/{}, retry {} of {}", options_.path, l.id.layer,
                           l.id.expert, r.eio_retries, options_.eio_retries);
            add_read_locked(pending_, slot, m);
            return;
        }
        const std::uint32_t retries = r.eio_retries + r.transient_retries;
        const moed::error failure = read_error(
            slot, m, error_noexcept(errc::io, "{} after {} retries", std::strerror(err), retries).message);
        finish_matrix_locked(slot, &failure);
        return;
    }
    if (c.result == 0) {
        // End of file before the matrix ended: the file is shorter than its header says, so
        // it was shortened after it was opened (the tier checked every expert was inside it).
        ++l.result.errors;
        if (!l.ended_early) {
            l.ended_early = true;
            l.result.source_error = error_noexcept(errc::io, "{}: shortened since it was opened (end of file at offset {})",
                                                   options_.path, r.file_offset + r.done);
        }
        const moed::error failure = read_error(
            slot, m,
            error_noexcept(errc::io, "end of file at offset {}; the file is truncated", r.file_offset + r.done).message);
        finish_matrix_locked(slot, &failure);
        return;
    }
    const std::uint64_t got = std::min(static_cast<std::uint64_t>(c.result), r.op_length);
    l.result.bytes += got;
    r.done = std::max(r.done, r.op_start + got);
    if (r.done >= r.needed) {
        finish_matrix_locked(slot, nullptr);
        return;
    }
    // A short read (or the end of one chunk): resume with the remainder. A reader that keeps
    // returning less than one aligned block would have us reissue the same read forever.
    if (align_down(r.done, reader_alignment_) <= r.op_start) {
        if (++r.transient_retries > options_.transient_retries_max) {
            ++l.result.errors;
            const moed::error failure = read_error(
                slot, m,
                error_noexcept(errc::io, "short reads made no progress at offset {} after {} retries",
                               r.file_offset + r.done, options_.transient_retries_max)
                    .message);
            finish_matrix_locked(slot, &failure);
            return;
        }
    }
    add_read_locked(pending_, slot, m);
}

void block_mover::finish_matrix_locked(std::uint32_t slot, const moed::error* failure) noexcept {
    load& l = loads_[slot];
    if (failure != nullptr && !l.failed) {
        l.failed = true;
        l.result.error = *failure;
    }
    MOED_ASSERT(l.matrices_pending > 0);
    if (--l.matrices_pending == 0) end_load_locked(slot);
}

void block_mover::end_load_locked(std::uint32_t slot) noexcept {
    load& l = loads_[slot];
    move_result& res = l.result;
    if (l.ended_early) {
        res.status = move_status::source_ended;
    } else if (l.failed) {
        res.status = move_status::failed;
    } else {
        // A file rewritten in place (same path, new contents) would hand out experts of
        // another model; fstat after the load catches size, mtime and inode changes.
        auto current = reader_->identity();
        if (!current) {
            res.status = move_status::failed;
            res.error = error_noexcept(errc::io, "{}: checking the file after reading expert {}/{}: {}", options_.path,
                                       l.id.layer, l.id.expert, current.error().message);
        } else if (!(*current == identity_)) {
            res.status = move_status::source_changed;
            try {
                res.source_error = error_noexcept(errc::io, "{}: changed since it was opened ({} then, {} now)",
                                                  options_.path, identity_text(identity_), identity_text(*current));
            } catch (...) {
                res.source_error = moed::error{errc::io, {}};
            }
        } else {
            res.status = move_status::ok;
        }
    }
    l.active = false;  // the slot may take its next load once the tier reaped this one
    MOED_ASSERT(done_.size() < done_.capacity());
    done_.push_back(std::move(res));
    cv_.notify_all();
}

moed::error block_mover::read_error(std::uint32_t slot, std::size_t m, std::string_view what) const noexcept {
    const load& l = loads_[slot];
    const auto ms = matrices_of(layout_.layers[l.id.layer]);
    return error_noexcept(errc::io, "{}: reading expert {}/{} ({} matrix, {} bytes at offset {}): {}", options_.path,
                          l.id.layer, l.id.expert, matrix_names[m], ms[m].bytes, matrix_offset(layout_, l.id, m),
                          what);
}

void block_mover::stop() noexcept {
    block_reader* reader = nullptr;
    {
        std::lock_guard queue_lock(queue_mutex_);
        std::lock_guard lock(mutex_);
        stopping_ = true;
        // Reads never submitted need no draining; reads on the reader do, and reap() keeps
        // reaping until none remain.
        staged_.clear();
        pending_.clear();
        done_.clear();
        reader = reader_.get();
        cv_.notify_all();
    }
    reader->wake();
}

bool block_mover::drained() const noexcept {
    std::lock_guard lock(mutex_);
    return stopping_ && submitted_ == 0;
}

std::size_t block_mover::loads_in_flight() const noexcept { return active_.load(); }

result<file_identity> block_mover::source_identity() const {
    std::lock_guard lock(mutex_);
    return reader_->identity();
}

void block_mover::set_identity(const file_identity& identity) {
    std::lock_guard lock(mutex_);
    identity_ = identity;
}

void block_mover::replace_reader(std::unique_ptr<block_reader> reader) {
    MOED_ASSERT(reader != nullptr && options_.region_alignment % reader->alignment() == 0);
    std::unique_ptr<block_reader> old;
    {
        std::lock_guard queue_lock(queue_mutex_);
        std::lock_guard lock(mutex_);
        MOED_ASSERT(active_.load() == 0 && submitted_ == 0 && staged_.empty() && pending_.empty());
        old = std::move(reader_);
        reader_ = std::move(reader);
        reader_alignment_ = reader_->alignment();
        mode_.store(reader_->mode());
        queue_depth_.store(reader_->queue_depth());
    }
    // The old reader has nothing in flight; closing it needs no lock.
}

}  // namespace moed::storage
