// The block reader: how expert bytes come off the model file. One small asynchronous
// interface with three implementations (the only place moed reads expert data from disk):
//   - io_uring with O_DIRECT, a registered file and registered buffers over the host slab;
//   - positional reads (pread) from a few worker threads, when io_uring is unavailable
//     (old kernel, seccomp) or O_DIRECT is refused (tmpfs); buffered in that case;
//   - a fault-injecting wrapper for tests (EIO on the nth read, short reads, latency,
//     bandwidth caps, a file that changed underneath).
// Ops carry a user_data word that comes back in their completion (no lookup map).
// Threads: submit() and reap() are called by one thread at a time each (the storage layer
// submits from the engine thread and reaps on its completion thread); wake() from any.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "common/result.h"

namespace moed::storage {

// How reads are done; fixed underlying type because it is reported on the wire.
enum class io_mode : std::uint8_t {
    uring_direct = 0,    // io_uring, O_DIRECT, registered file and buffers
    uring_buffered = 1,  // io_uring through the page cache (O_DIRECT refused)
    pread_direct = 2,    // worker threads with pread, O_DIRECT (io_uring unavailable)
    pread_buffered = 3,  // worker threads with pread through the page cache
};
std::string_view io_mode_name(io_mode mode) noexcept;

struct read_op {
    std::uint64_t offset = 0;   // file offset; a multiple of alignment()
    std::uint32_t length = 0;   // a multiple of alignment()
    std::byte* dest = nullptr;  // aligned to alignment(); inside the registered region if any
    std::uint64_t user_data = 0;
};

struct read_completion {
    std::uint64_t user_data = 0;
    std::int64_t result = 0;  // bytes read (may be short: the caller resumes), or -errno
};

// What identifies the file's contents at open time; a change means it was modified.
struct file_identity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size_bytes = 0;
    std::int64_t mtime_ns = 0;
    friend bool operator==(const file_identity&, const file_identity&) = default;
};

class block_reader {
public:
    // Destroy a reader only after its reaper has stopped calling reap(). Implementations
    // wait for reads still in flight, so their buffers may be freed right after.
    virtual ~block_reader() = default;

    virtual io_mode mode() const noexcept = 0;
    // Required alignment of offsets, lengths and buffers (the device's logical block size
    // under O_DIRECT, 1 otherwise).
    virtual std::uint32_t alignment() const noexcept = 0;
    virtual std::uint32_t queue_depth() const noexcept = 0;
    virtual const std::string& path() const noexcept = 0;

    // Queues reads; returns how many of `ops` were accepted (the rest when slots free up).
    // Never blocks on I/O. An error means the backend itself failed.
    // The accepted ops are a prefix of `ops`, at most queue_depth() - in_flight() of them.
    // An op that breaks the alignment rules is not refused here: it completes with the
    // kernel's verdict (-EINVAL under O_DIRECT).
    virtual result<std::size_t> submit(std::span<const read_op> ops) = 0;
    // Moves finished reads into `out` and returns their count. With `wait`, blocks until at
    // least one finishes or wake() is called.
    virtual std::size_t reap(std::span<read_completion> out, bool wait) = 0;
    // Ops submitted and not yet reaped (a finished read holds its slot until reaped).
    virtual std::size_t in_flight() const noexcept = 0;
    // Makes a blocked reap() return (possibly with nothing). A wake() while no reap waits is
    // kept for the next reap(wait = true); wakes before one reap may collapse into one return.
    virtual void wake() noexcept = 0;
    // The file's identity now (fstat of the open file), to detect a file changed in place.
    virtual result<file_identity> identity() const = 0;
};

struct block_reader_options {
    std::string path;
    std::uint32_t queue_depth = 32;
    bool allow_uring = true;   // false: force the pread backend (tests, benchmarks)
    bool allow_direct = true;  // false: force buffered reads
    // Memory that reads land in (the host slab); io_uring registers it as fixed buffers.
    std::span<std::byte> registered_region;
};

// Opens the best available backend: io_uring + O_DIRECT, then the fallbacks, logging one
// warning that says which mode runs and why. Errors name the file.
result<std::unique_ptr<block_reader>> open_block_reader(const block_reader_options& options);

}  // namespace moed::storage
