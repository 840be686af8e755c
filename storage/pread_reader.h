// The fallback backend of the block reader: a few worker threads doing pread() into the
// destination, for kernels without io_uring (or with it disabled) and, buffered, for file
// systems that refuse O_DIRECT. Both queues are bounded by the queue depth and allocated
// at construction; nothing on the data path allocates.
// Threads: the block_reader contract (one submitter, one reaper, wake() from any); the
// workers are private and named moed-pread-N.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "storage/block_reader.h"
#include "storage/io_util.h"

namespace moed::storage {

struct pread_reader_config {
    std::string path;
    io_mode mode = io_mode::pread_buffered;  // pread_direct or pread_buffered: how `fd` was opened
    std::uint32_t alignment = 1;
    std::uint32_t queue_depth = 32;
};

class pread_reader final : public block_reader {
public:
    // Workers: min(queue depth, hardware threads clamped to [4, 8]); blocking reads need
    // more threads than cores to keep a disk busy, but each one costs a stack.
    static constexpr std::uint32_t min_workers = 4;
    static constexpr std::uint32_t max_workers = 8;

    // Takes `fd` on success. Errors: a worker thread could not be started.
    static result<std::unique_ptr<pread_reader>> create(unique_fd& fd, const pread_reader_config& config);
    // Drops queued reads that no worker started, waits for those being read, joins.
    ~pread_reader() override;
    pread_reader(const pread_reader&) = delete;
    pread_reader& operator=(const pread_reader&) = delete;

    io_mode mode() const noexcept override { return mode_; }
    std::uint32_t alignment() const noexcept override { return alignment_; }
    std::uint32_t queue_depth() const noexcept override { return queue_depth_; }
    const std::string& path() const noexcept override { return path_; }
    result<std::size_t> submit(std::span<const read_op> ops) override;
    std::size_t reap(std::span<read_completion> out, bool wait) override;
    std::size_t in_flight() const noexcept override;
    void wake() noexcept override;
    result<file_identity> identity() const override { return identity_of(file_.get(), path_); }

    std::size_t worker_count() const noexcept { return workers_.size(); }

private:
    pread_reader() = default;
    void worker_main(std::uint32_t index);
    void stop_workers() noexcept;

    unique_fd file_;
    std::string path_;
    io_mode mode_ = io_mode::pread_buffered;
    std::uint32_t alignment_ = 1;
    std::uint32_t queue_depth_ = 0;

    // Ops accepted and not yet picked by a worker: a ring of queue_depth entries.
    std::mutex todo_mutex_;
    std::condition_variable todo_cv_;
    std::vector<read_op> todo_;
    std::size_t todo_head_ = 0;
    std::size_t todo_count_ = 0;
    bool stopping_ = false;

    // Finished ops not yet reaped: a ring of queue_depth entries (in_flight <= depth).
    mutable std::mutex done_mutex_;
    std::condition_variable done_cv_;
    std::vector<read_completion> done_;
    std::size_t done_head_ = 0;
    std::size_t done_count_ = 0;
    std::size_t in_flight_ = 0;  // accepted and not reaped; guarded by done_mutex_
    bool wake_pending_ = false;  // guarded by done_mutex_

    std::vector<std::thread> workers_;
};

}  // namespace moed::storage
