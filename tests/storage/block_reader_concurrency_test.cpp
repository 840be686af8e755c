// The block reader under its real threading: one submitter thread, one reaper thread, and a
// third thread calling wake() at random, for thousands of reads, on every backend and on the
// fault reader (with short reads and injected errors mixed in). Named *concurrency_test so
// CI runs it under ThreadSanitizer as well.
//
// What it checks, and how: every read's destination is a slot of a shared buffer; the
// reaper checks the bytes in the slot against the file's known pattern and hands the slot
// back to the submitter through a bounded queue (a mutex and condition variable), so a
// data race in the reader (a completion delivered before its data, a slot reused while
// in flight, a lost completion or wake) shows as wrong bytes, a hang or a TSan report.
// The run ends when every read has been reaped exactly once.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "storage/block_reader.h"
#include "storage/fault_reader.h"
#include "tests/storage/block_reader_test_util.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

using namespace test_util;

constexpr std::uint64_t file_bytes = 16ull << 20;
constexpr std::uint32_t total_reads = 4000;
constexpr std::uint32_t depth = 16;
constexpr std::uint32_t slots = 2 * depth;  // more slots than depth: submit must respect the depth
constexpr std::uint32_t max_blocks = 8;     // reads of 1..8 pages

const std::filesystem::path& pattern_file() {
    static const std::filesystem::path path = [] {
        auto p = test::temp_dir() / "concurrency.bin";
        write_pattern_file(p, file_bytes);
        return p;
    }();
    return path;
}

// The read number n's offset and length: a deterministic function, so the reaper can check
// a completion knowing only n.
read_op op_for(std::uint32_t n, std::uint32_t slot, std::byte* base) {
    std::mt19937_64 rng(n);
    const std::uint32_t length = page * static_cast<std::uint32_t>(1 + rng() % max_blocks);
    const std::uint64_t offset = page * (rng() % ((file_bytes - length) / page + 1));
    return read_op{offset, length, base + std::size_t{slot} * max_blocks * page,
                   (std::uint64_t{n} << 32) | slot};
}

// A bounded queue of free slot indices from the reaper to the submitter.
class slot_queue {
public:
    void push(std::uint32_t slot) {
        {
            std::lock_guard lock(mutex_);
            free_.push_back(slot);
        }
        cv_.notify_one();
    }
    // Takes all free slots, waiting for at least one.
    void take_all(std::vector<std::uint32_t>& out) {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [this] { return !free_.empty(); });
        out.assign(free_.begin(), free_.end());
        free_.clear();
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::uint32_t> free_;
};

struct fault_plan {
    bool enabled = false;
};

void run_threads(block_reader& reader, fault_reader* faults) {
    aligned_buffer buffer(std::size_t{slots} * max_blocks * page);
    slot_queue free_slots;
    for (std::uint32_t s = 0; s < slots; ++s) free_slots.push(s);
    std::atomic<bool> done{false};
    std::atomic<std::uint32_t> bad{0};
    std::atomic<std::uint32_t> errors_seen{0};
    std::atomic<std::uint32_t> short_seen{0};
    std::atomic<std::uint32_t> max_in_flight{0};

    std::thread submitter([&] {
        std::vector<std::uint32_t> mine;
        std::vector<read_op> ops;
        std::uint32_t next = 0;
        while (next < total_reads) {
            if (mine.empty()) free_slots.take_all(mine);
            ops.clear();
            for (std::size_t i = 0; i < mine.size() && next + i < total_reads; ++i) {
                ops.push_back(op_for(next + static_cast<std::uint32_t>(i), mine[i], buffer.data));
            }
            auto accepted = reader.submit(ops);
            ASSERT_TRUE(accepted.has_value()) << accepted.error().message;
            ASSERT_LE(*accepted, ops.size());
            const auto in_flight = static_cast<std::uint32_t>(reader.in_flight());
            if (in_flight > max_in_flight.load()) max_in_flight = in_flight;
            next += static_cast<std::uint32_t>(*accepted);
            mine.erase(mine.begin(), mine.begin() + static_cast<std::ptrdiff_t>(*accepted));
            // Slots that did not fit wait for the reaper to free depth; it will.
            if (*accepted == 0) std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    });

    std::thread waker([&] {
        std::mt19937 rng(7);
        while (!done.load()) {
            reader.wake();
            std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
        }
    });

    std::vector<bool> seen(total_reads, false);
    std::vector<read_completion> batch(depth);
    std::uint32_t reaped = 0;
    while (reaped < total_reads) {
        const std::size_t n = reader.reap(batch, true);
        for (std::size_t i = 0; i < n; ++i) {
            const auto number = static_cast<std::uint32_t>(batch[i].user_data >> 32);
            const auto slot = static_cast<std::uint32_t>(batch[i].user_data & 0xffffffffu);
            ASSERT_LT(number, total_reads);
            ASSERT_FALSE(seen[number]) << "read " << number << " completed twice";
            seen[number] = true;
            const read_op op = op_for(number, slot, buffer.data);
            const std::int64_t result = batch[i].result;
            if (result < 0) {
                ++errors_seen;
                if (faults == nullptr) ++bad;
            } else {
                if (result < op.length) ++short_seen;
                if (result > op.length || (faults == nullptr && result != op.length)) ++bad;
                if (!matches_file(op.dest, op.offset, static_cast<std::size_t>(result))) ++bad;
            }
            free_slots.push(slot);
        }
        reaped += static_cast<std::uint32_t>(n);
    }
    done = true;
    submitter.join();
    waker.join();
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_LE(max_in_flight.load(), depth);
    EXPECT_EQ(reader.in_flight(), 0u);
    if (faults != nullptr) {
        EXPECT_EQ(errors_seen.load(), faults->reads_failed());
        EXPECT_EQ(short_seen.load(), faults->reads_shortened());
        EXPECT_GT(errors_seen.load(), 0u);
        EXPECT_GT(short_seen.load(), 0u);
    }
}

struct backend_case {
    const char* name;
    bool allow_uring;
    bool allow_direct;
    bool faults;
};

class block_reader_concurrency : public ::testing::TestWithParam<backend_case> {};

TEST_P(block_reader_concurrency, submitter_reaper_and_waker_threads) {
    const backend_case& c = GetParam();
    aligned_buffer region(page);  // a small registered region: most reads use plain READ
    block_reader_options options;
    options.path = pattern_file();
    options.queue_depth = depth;
    options.allow_uring = c.allow_uring;
    options.allow_direct = c.allow_direct;
    auto opened = open_block_reader(options);
    ASSERT_TRUE(opened.has_value()) << opened.error().message;
    if (!c.faults) {
        run_threads(**opened, nullptr);
        return;
    }
    auto wrapped = fault_reader::create(std::move(*opened));
    ASSERT_TRUE(wrapped.has_value());
    fault_reader& faults = **wrapped;
    faults.fail_reads(100, 50, EIO);
    faults.fail_reads(1000, 1, EINTR);
    faults.set_short_reads(0.5, 2000, 200);
    faults.set_latency(std::chrono::microseconds(20));
    // Toggle a fault while the threads run: the setters are thread-safe.
    std::atomic<bool> stop_toggling{false};
    std::thread toggler([&] {
        while (!stop_toggling.load()) {
            faults.set_file_replaced(true);
            faults.set_bandwidth_cap(1ull << 40);
            faults.set_file_replaced(false);
            faults.set_bandwidth_cap(0);
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    run_threads(faults, &faults);
    stop_toggling = true;
    toggler.join();
}

INSTANTIATE_TEST_SUITE_P(all, block_reader_concurrency,
                         ::testing::Values(backend_case{"uring_direct", true, true, false},
                                           backend_case{"uring_buffered", true, false, false},
                                           backend_case{"pread_direct", false, true, false},
                                           backend_case{"pread_buffered", false, false, false},
                                           backend_case{"fault_over_uring", true, true, true},
                                           backend_case{"fault_over_pread", false, false, true}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

}  // namespace
}  // namespace moed::storage
