// tier_counters and counted_mutex: the tier's statistics and its counted lock, alone.
//
// What it checks, and how: tier_counters is driven with chosen time points (no clock is
// read), so the busy time, latency percentiles (nearest rank, over the most recent
// latency_samples_max loads once the ring wraps) and the derived rates are exact figures;
// fill() must copy every counter into its wire field. counted_mutex is checked for exact
// counts: an uncontended lock counts an acquisition and no contention; a second thread
// that finds the lock held is seen waiting (waiters() == 1) before the holder lets go, so
// its acquisition is counted as contended whatever the timing; condition-variable waits
// re-acquire through lock() and are counted too. Nothing asserts on elapsed time.
#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "storage/counted_mutex.h"
#include "storage/tier_counters.h"

namespace moed::storage {
namespace {

using clock_type = tier_counters::clock;
using std::chrono::microseconds;
using std::chrono::milliseconds;

TEST(tier_counters, busy_time_counts_while_any_load_is_in_flight) {
    tier_counters c;
    const clock_type::time_point t0{};
    c.load_started(t0);
    c.load_started(t0 + milliseconds(10));
    c.load_ended(t0 + milliseconds(20));
    EXPECT_EQ(c.loads_in_flight(), 1u);
    EXPECT_DOUBLE_EQ(c.read_seconds(t0 + milliseconds(30)), 0.030);  // still busy: up to now
    c.load_ended(t0 + milliseconds(40));
    EXPECT_EQ(c.loads_in_flight(), 0u);
    EXPECT_DOUBLE_EQ(c.read_seconds(t0 + milliseconds(100)), 0.040);  // idle time does not count
    c.load_started(t0 + milliseconds(200));
    c.load_ended(t0 + milliseconds(205));
    EXPECT_DOUBLE_EQ(c.read_seconds(t0 + milliseconds(300)), 0.045);
}

TEST(tier_counters, fill_copies_every_counter_and_summarize_derives_rates) {
    tier_counters c;
    c.hits = 1;
    c.misses = 2;
    c.evictions = 3;
    c.bytes_read = 4000;
    c.read_errors = 5;
    c.pf_requested = 6;
    c.pf_issued = 7;
    c.pf_cancelled = 8;
    c.pf_hits = 9;
    c.pf_late = 10;
    c.pf_wasted = 11;
    c.pf_wasted_bytes = 12;
    c.demand_misses = 13;
    c.tokens = 4;
    c.add_io_wait(0);  // not a wait
    c.add_io_wait(600);
    c.add_io_wait(200);
    const clock_type::time_point t0{};
    c.load_started(t0);
    c.load_ended(t0 + milliseconds(2));
    tier_stats h;
    prefetch_stats pf;
    std::vector<std::uint32_t> samples;
    c.fill(h, pf, samples, t0 + milliseconds(5));
    EXPECT_EQ(h.hits, 1u);
    EXPECT_EQ(h.misses, 2u);
    EXPECT_EQ(h.evictions, 3u);
    EXPECT_EQ(h.bytes_read, 4000u);
    EXPECT_EQ(h.read_errors, 5u);
    EXPECT_DOUBLE_EQ(h.read_seconds, 0.002);
    EXPECT_EQ(pf.requested, 6u);
    EXPECT_EQ(pf.issued, 7u);
    EXPECT_EQ(pf.cancelled, 8u);
    EXPECT_EQ(pf.hits, 9u);
    EXPECT_EQ(pf.late, 10u);
    EXPECT_EQ(pf.wasted, 11u);
    EXPECT_EQ(pf.wasted_bytes, 12u);
    EXPECT_EQ(pf.demand_misses, 13u);
    EXPECT_EQ(pf.io_wait_ns, 800u);
    EXPECT_EQ(pf.io_waits, 2u);
    EXPECT_EQ(pf.tokens, 4u);
    EXPECT_TRUE(samples.empty());
    tier_counters::summarize(h, pf, samples);
    EXPECT_DOUBLE_EQ(pf.hit_rate, 9.0 / (9 + 10 + 13));
    EXPECT_DOUBLE_EQ(pf.io_wait_ns_per_token, 200.0);
    EXPECT_DOUBLE_EQ(h.read_bytes_per_s, 4000 / 0.002);
    EXPECT_EQ(h.load_latency.count, 0u);
    EXPECT_EQ(h.load_latency.max_us, 0.0);
}

TEST(tier_counters, latency_percentiles_are_nearest_rank_over_recent_loads) {
    tier_counters c;
    for (int us = 100; us >= 1; --us) c.record_latency(microseconds(us));  // 1..100 in any order
    tier_stats h;
    prefetch_stats pf;
    std::vector<std::uint32_t> samples;
    c.fill(h, pf, samples, clock_type::time_point{});
    tier_counters::summarize(h, pf, samples);
    EXPECT_EQ(h.load_latency.count, 100u);
    EXPECT_EQ(h.load_latency.p50_us, 50.0);
    EXPECT_EQ(h.load_latency.p90_us, 90.0);
    EXPECT_EQ(h.load_latency.p99_us, 99.0);
    EXPECT_EQ(h.load_latency.max_us, 100.0);
    // Past the ring's size, only the most recent samples count (the count keeps growing).
    for (std::size_t k = 0; k < tier_counters::latency_samples_max; ++k) c.record_latency(microseconds(7));
    c.fill(h, pf, samples, clock_type::time_point{});
    EXPECT_EQ(samples.size(), tier_counters::latency_samples_max);
    tier_counters::summarize(h, pf, samples);
    EXPECT_EQ(h.load_latency.count, 100u + tier_counters::latency_samples_max);
    EXPECT_EQ(h.load_latency.max_us, 7.0);
    EXPECT_EQ(h.load_latency.p50_us, 7.0);
}

TEST(counted_mutex, uncontended_locks_count_no_waits) {
    counted_mutex m;
    for (int k = 0; k < 5; ++k) {
        std::lock_guard lock(m);
    }
    ASSERT_TRUE(m.try_lock());
    const lock_stats s = m.stats();
    m.unlock();
    EXPECT_EQ(s.acquisitions, 6u);
    EXPECT_EQ(s.contended, 0u);
    EXPECT_EQ(s.wait_ns, 0u);
    EXPECT_EQ(s.wait_ns_max, 0u);
}

TEST(counted_mutex, a_taker_that_finds_it_held_is_counted_as_contended) {
    counted_mutex m;
    m.lock();
    std::thread other([&] {
        std::lock_guard lock(m);
    });
    // The other thread is inside lock(), past its failed try_lock, before we let go.
    for (int k = 0; k < 1000000 && m.waiters() == 0; ++k) std::this_thread::yield();
    ASSERT_EQ(m.waiters(), 1u);
    m.unlock();
    other.join();
    std::lock_guard lock(m);
    const lock_stats s = m.stats();
    EXPECT_EQ(s.acquisitions, 3u);
    EXPECT_EQ(s.contended, 1u);
    EXPECT_GE(s.wait_ns, s.wait_ns_max);
    EXPECT_EQ(m.waiters(), 0u);
}

TEST(counted_mutex, condition_variable_waits_reacquire_through_it) {
    counted_mutex m;
    std::condition_variable_any cv;
    {
        std::unique_lock lock(m);
        // Returns after one wake-up (the timeout, or a spurious one): one re-acquisition.
        cv.wait_for(lock, microseconds(1));
    }
    std::lock_guard lock(m);
    EXPECT_EQ(m.stats().acquisitions, 3u);
}

}  // namespace
}  // namespace moed::storage
