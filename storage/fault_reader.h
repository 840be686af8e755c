// A block reader that wraps another and injects faults: errors (EIO, EINTR, EAGAIN, any
// errno) on chosen reads, failed or refused submits, short reads, per-read latency and a
// bandwidth cap (a fake slow disk for scheduler tests), and a changed file identity (a file
// replaced underneath).
// Reads still go to the wrapped reader, so the bytes that do arrive are the file's.
//
// Reads are numbered from 0 in the order submit() accepts them; rules name reads by that
// number (reads_accepted() says where the count stands). Completions come back through
// reap() once they are due: a read is due when the wrapped reader finished it, its latency
// has passed, and the bandwidth cap's clock has reached the end of its bytes. The cap models
// one disk that moves `bytes_per_s` in total, serving reads in submission order. A waiting
// reap() sleeps on a condition variable until the earliest due time; a private thread
// reaps the wrapped reader. Nothing busy-waits.
//
// Threads: the block_reader contract (one submitter, one reaper, wake() from any). Every
// fault setter and counter is thread-safe and takes effect for reads submitted after it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/result.h"
#include "storage/block_reader.h"

namespace moed::storage {

// Faults that recur by read number, for a whole daemon run under faults (the
// tiers.inject_faults key) where no test can time single rules. Text form, for the config:
// comma-separated `name=value` of the fields below ("eio_every=400,eio_burst=40,short=0.5").
struct fault_plan {
    std::uint64_t eio_every = 0;  // reads numbered n with n % eio_every < eio_burst fail with EIO (0: none)
    std::uint64_t eio_burst = 1;
    double short_fraction = 0.0;  // "short": every read asks for this fraction of its bytes (0: whole)
    std::uint64_t spike_every = 0;     // every spike_every-th read completes spike_us late (0: none)
    std::uint64_t spike_us = 0;
    std::uint64_t replace_every = 0;   // every replace_every reads, identity() flips between the file's
                                       // own and a replaced file's (0: never)
    bool empty() const noexcept { return eio_every == 0 && short_fraction == 0.0 && spike_every == 0 && replace_every == 0; }
};
// Parses the text form; errors name the field and the value.
result<fault_plan> parse_fault_plan(std::string_view text);

class fault_reader final : public block_reader {
public:
    using clock = std::chrono::steady_clock;
    // A count of reads that never runs out.
    static constexpr std::uint64_t forever = ~std::uint64_t{0};

    // Takes `inner` and starts the thread that reaps it. Errors: the thread cannot start.
    static result<std::unique_ptr<fault_reader>> create(std::unique_ptr<block_reader> inner);
    // Stops the reaping thread; the wrapped reader then drains its own reads.
    ~fault_reader() override;
    fault_reader(const fault_reader&) = delete;
    fault_reader& operator=(const fault_reader&) = delete;

    // --- Faults (thread-safe) ---
    // Reads numbered [first, first + count) complete with -error_number (a positive errno:
    // EIO, EINTR, EAGAIN...) without touching the file. Rules add up; the first match wins.
    void fail_reads(std::uint64_t first, std::uint64_t count, int error_number);
    void fail_nth_read(std::uint64_t n, int error_number) { fail_reads(n, 1, error_number); }
    // Every read from the next one on fails, until clear_failures().
    void fail_all_reads(int error_number);
    void clear_failures();
    // Reads numbered [first, first + count) ask the wrapped reader for only `fraction`
    // (0 < fraction < 1) of their bytes, rounded down to the alignment but at least one
    // aligned block; the completion reports what was read, so a caller sees a short read.
    void set_short_reads(double fraction, std::uint64_t first = 0, std::uint64_t count = forever);
    void clear_short_reads();
    // Added to every read from submission (zero: none).
    void set_latency(std::chrono::nanoseconds per_read);
    // Total bytes per second across all reads (0: no cap).
    void set_bandwidth_cap(std::uint64_t bytes_per_s);
    // identity() reports another inode and mtime while set, as if the file had been replaced.
    void set_file_replaced(bool replaced);
    // The next `count` calls of submit() fail as a broken backend would (an error, nothing
    // accepted); while `refuse` is set, submit() accepts nothing (as a full queue would).
    void fail_submits(std::uint64_t count);
    void refuse_submits(bool refuse);
    // Adds the recurring faults of `plan` (on top of the rules above; clear_all() removes it).
    void set_plan(const fault_plan& plan);
    // Removes every fault above.
    void clear_all();

    // --- Counters (thread-safe) ---
    std::uint64_t reads_accepted() const;
    std::uint64_t reads_failed() const;     // completed with an injected error
    std::uint64_t reads_shortened() const;  // forwarded with fewer bytes than asked

    block_reader& inner() noexcept { return *inner_; }

    // --- block_reader ---
    io_mode mode() const noexcept override { return inner_->mode(); }
    std::uint32_t alignment() const noexcept override { return inner_->alignment(); }
    std::uint32_t queue_depth() const noexcept override { return inner_->queue_depth(); }
    const std::string& path() const noexcept override { return inner_->path(); }
    result<std::size_t> submit(std::span<const read_op> ops) override;
    std::size_t reap(std::span<read_completion> out, bool wait) override;
    std::size_t in_flight() const noexcept override;
    void wake() noexcept override;
    result<file_identity> identity() const override;

private:
    struct range_rule {
        std::uint64_t first = 0;
        std::uint64_t count = 0;
        int error_number = 0;
        bool covers(std::uint64_t n) const { return n >= first && n - first < count; }
    };
    // One accepted read, indexed by the user_data we give the wrapped reader.
    struct slot {
        std::uint64_t user_data = 0;
        clock::time_point due{};
        std::int64_t result = 0;
    };
    struct due_entry {
        clock::time_point due;
        std::uint32_t slot;
        bool operator>(const due_entry& other) const { return due > other.due; }
    };

    explicit fault_reader(std::unique_ptr<block_reader> inner);
    void pump_main();
    // Makes `index` reapable at its due time; mutex_ must be held.
    void push_due_locked(std::uint32_t index);

    std::unique_ptr<block_reader> inner_;
    const std::uint32_t depth_;

    mutable std::mutex mutex_;
    std::condition_variable due_cv_;  // a read became due-able, or wake()
    // Fault settings.
    std::vector<range_rule> failures_;
    range_rule short_rule_{};
    double short_fraction_ = 1.0;
    std::chrono::nanoseconds latency_{0};
    std::uint64_t bandwidth_bytes_per_s_ = 0;
    clock::time_point bandwidth_free_at_{};  // when the modelled disk finishes its queue
    bool replaced_ = false;
    std::uint64_t submit_failures_ = 0;
    bool refuse_submits_ = false;
    fault_plan plan_;
    // Counters.
    std::uint64_t reads_accepted_ = 0;
    std::uint64_t reads_failed_ = 0;
    std::uint64_t reads_shortened_ = 0;
    // Reads: slots (queue depth of them), free slot indices, and a min-heap of the reads
    // whose result is known, by due time. All preallocated.
    std::vector<slot> slots_;
    std::vector<std::uint32_t> free_slots_;
    std::vector<due_entry> due_heap_;
    std::vector<read_op> forward_;           // submit()'s scratch: ops for the wrapped reader
    std::vector<std::uint32_t> op_slots_;    // submit()'s scratch: the slot of each op
    std::size_t in_flight_ = 0;
    bool wake_pending_ = false;
    bool stopping_ = false;

    std::thread pump_;
};

}  // namespace moed::storage
