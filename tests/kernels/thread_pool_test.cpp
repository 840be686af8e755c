// compute_pool: every index of [0, n) is handed out exactly once, in chunks of at least
// min_chunk (only the last may be shorter), with thread indices in [0, size()), for many
// combinations of n, min_chunk and thread count; the pool keeps working across thousands of
// back-to-back jobs, after idling long enough for its workers to sleep, with two pools
// driven from two threads at once, and when created and destroyed repeatedly.
#include "kernels/cpu/thread_pool.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace moed::kernels {
namespace {

void check_cover(compute_pool& pool, std::int64_t n, std::int64_t min_chunk) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
    std::atomic<int> short_chunks{0};
    std::atomic<bool> bad_index{false};
    std::atomic<std::int64_t> covered{0};
    pool.parallel_for(n, min_chunk, [&](std::int64_t begin, std::int64_t end, int thread) {
        if (thread < 0 || thread >= pool.size()) bad_index = true;
        if (begin < 0 || end > n || begin >= end) bad_index = true;
        if (end - begin < min_chunk && end != n) short_chunks.fetch_add(1);
        for (std::int64_t i = begin; i < end; ++i) hits[static_cast<std::size_t>(i)].fetch_add(1, std::memory_order_relaxed);
        covered.fetch_add(end - begin);
    });
    ASSERT_FALSE(bad_index.load()) << "n=" << n << " min_chunk=" << min_chunk;
    ASSERT_EQ(short_chunks.load(), 0) << "n=" << n << " min_chunk=" << min_chunk;
    ASSERT_EQ(covered.load(), n);
    for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "index " << i << " n=" << n;
}

TEST(thread_pool, covers_every_index_exactly_once) {
    for (int threads : {1, 2, 3, 5}) {
        compute_pool pool(threads);
        ASSERT_EQ(pool.size(), threads);
        for (std::int64_t n : {0, 1, 2, 7, 64, 1000, 100003}) {
            for (std::int64_t min_chunk : {0, 1, 3, 64, 1000}) check_cover(pool, n, min_chunk);
        }
    }
}

TEST(thread_pool, many_back_to_back_jobs) {
    compute_pool pool(3);
    std::vector<std::int64_t> sums(64);
    for (int job = 0; job < 5000; ++job) {
        const std::int64_t n = 1 + job % 61;
        std::atomic<std::int64_t> sum{0};
        pool.parallel_for(n, 1, [&](std::int64_t b, std::int64_t e, int) {
            std::int64_t s = 0;
            for (std::int64_t i = b; i < e; ++i) s += i;
            sum.fetch_add(s);
        });
        ASSERT_EQ(sum.load(), n * (n - 1) / 2) << "job " << job;
    }
}

TEST(thread_pool, wakes_sleeping_workers) {
    compute_pool pool(3);
    for (int round = 0; round < 3; ++round) {
        // Longer than the workers' spin phase, so they are asleep on the futex.
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        std::mutex m;
        std::vector<int> threads_seen;
        check_cover(pool, 4096, 1);
        pool.parallel_for(64, 1, [&](std::int64_t, std::int64_t, int t) {
            std::this_thread::sleep_for(std::chrono::microseconds(200));
            std::lock_guard<std::mutex> lock(m);
            threads_seen.push_back(t);
        });
        ASSERT_FALSE(threads_seen.empty());
        for (int t : threads_seen) EXPECT_TRUE(t >= 0 && t < 3) << t;
    }
}

TEST(thread_pool, two_pools_from_two_owner_threads) {
    compute_pool a(2), b(2);
    auto drive = [](compute_pool* pool) {
        for (int i = 0; i < 500; ++i) check_cover(*pool, 100 + i, 3);
    };
    std::thread ta(drive, &a);
    std::thread tb(drive, &b);
    ta.join();
    tb.join();
}

TEST(thread_pool, create_and_destroy_repeatedly) {
    for (int i = 0; i < 50; ++i) {
        compute_pool pool(1 + i % 4);
        if (i % 2 == 0) check_cover(pool, 33, 2);
    }
}

}  // namespace
}  // namespace moed::kernels
