#include "storage/pread_reader.h"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "common/log.h"

namespace moed::storage {

result<std::unique_ptr<pread_reader>> pread_reader::create(unique_fd& fd, const pread_reader_config& config) {
    MOED_ASSERT(config.queue_depth > 0);
    std::unique_ptr<pread_reader> reader(new pread_reader());
    reader->path_ = config.path;
    reader->mode_ = config.mode;
    reader->alignment_ = config.alignment;
    reader->queue_depth_ = config.queue_depth;
    reader->todo_.resize(config.queue_depth);
    reader->done_.resize(config.queue_depth);
    reader->file_ = std::move(fd);

    const std::uint32_t hardware = std::clamp(std::thread::hardware_concurrency(), min_workers, max_workers);
    const std::uint32_t n_workers = std::min(config.queue_depth, hardware);
    reader->workers_.reserve(n_workers);
    for (std::uint32_t i = 0; i < n_workers; ++i) {
        try {
            reader->workers_.emplace_back([r = reader.get(), i] { r->worker_main(i); });
        } catch (const std::system_error& e) {
            fd = std::move(reader->file_);  // give the file back, as the contract says
            reader->stop_workers();
            return make_error(errc::internal, "starting pread worker {} for {}: {}", i, config.path, e.what());
        }
    }
    return reader;
}

pread_reader::~pread_reader() { stop_workers(); }

void pread_reader::stop_workers() noexcept {
    {
        std::lock_guard lock(todo_mutex_);
        stopping_ = true;
    }
    todo_cv_.notify_all();
    for (std::thread& worker : workers_) worker.join();
    workers_.clear();
}

void pread_reader::worker_main(std::uint32_t index) {
    const std::string name = fmt::format("moed-pread-{}", index);
    pthread_setname_np(pthread_self(), name.c_str());
    for (;;) {
        read_op op;
        {
            std::unique_lock lock(todo_mutex_);
            todo_cv_.wait(lock, [this] { return stopping_ || todo_count_ > 0; });
            if (stopping_) return;
            op = todo_[todo_head_];
            todo_head_ = (todo_head_ + 1) % queue_depth_;
            --todo_count_;
        }
        // One pread per op, reported as it came back: a short read is the caller's to
        // resume, as with io_uring. EINTR alone is retried: it says nothing about the file.
        ssize_t got;
        do {
            got = ::pread(file_.get(), op.dest, op.length, static_cast<off_t>(op.offset));
        } while (got < 0 && errno == EINTR);
        const std::int64_t result_value = got >= 0 ? static_cast<std::int64_t>(got) : -static_cast<std::int64_t>(errno);
        {
            std::lock_guard lock(done_mutex_);
            // Cannot overflow: done_count_ <= in_flight_ <= queue_depth_.
            done_[(done_head_ + done_count_) % queue_depth_] = read_completion{op.user_data, result_value};
            ++done_count_;
        }
        done_cv_.notify_one();
    }
}

result<std::size_t> pread_reader::submit(std::span<const read_op> ops) {
    if (ops.empty()) return std::size_t{0};
    std::size_t accepted;
    {
        std::lock_guard lock(done_mutex_);
        accepted = std::min<std::size_t>(ops.size(), queue_depth_ - in_flight_);
        in_flight_ += accepted;
    }
    if (accepted == 0) return std::size_t{0};
    {
        std::lock_guard lock(todo_mutex_);
        for (std::size_t i = 0; i < accepted; ++i) {
            // Cannot overflow: todo_count_ <= in_flight_ <= queue_depth_.
            todo_[(todo_head_ + todo_count_) % queue_depth_] = ops[i];
            ++todo_count_;
        }
    }
    if (accepted == 1) {
        todo_cv_.notify_one();
    } else {
        todo_cv_.notify_all();
    }
    return accepted;
}

std::size_t pread_reader::reap(std::span<read_completion> out, bool wait) {
    if (out.empty()) return 0;
    std::unique_lock lock(done_mutex_);
    if (wait) done_cv_.wait(lock, [this] { return done_count_ > 0 || wake_pending_; });
    const std::size_t n = std::min(out.size(), done_count_);
    for (std::size_t i = 0; i < n; ++i) {
        out[i] = done_[done_head_];
        done_head_ = (done_head_ + 1) % queue_depth_;
    }
    done_count_ -= n;
    in_flight_ -= n;
    // A wake is spent by a waiting reap that returns empty-handed; one that returned with
    // completions leaves it for the next wait (the waker's reason may still be unseen).
    if (wait && n == 0) wake_pending_ = false;
    return n;
}

std::size_t pread_reader::in_flight() const noexcept {
    std::lock_guard lock(done_mutex_);
    return in_flight_;
}

void pread_reader::wake() noexcept {
    {
        std::lock_guard lock(done_mutex_);
        wake_pending_ = true;
    }
    done_cv_.notify_all();
}

}  // namespace moed::storage
