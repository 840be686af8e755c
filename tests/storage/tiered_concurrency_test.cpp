// tiered_expert_source under concurrent callers (CI runs this file under ThreadSanitizer).
//
// What it checks, and how: several threads acquire at once and every handle's bytes are
// compared with the resident source (the whole file mapped). (1) Many threads ask for the
// same two experts while the test reader holds completions back: exactly one load per
// expert happens (six reads), every caller waits for it and sees the right bytes. (2) A load
// that fails while several callers wait: all of them get the error, the slot is freed, and
// the next acquire succeeds. (3) Eviction under load: threads acquire random groups with a
// budget of exactly the slots they can hold together, so nearly every acquire evicts, over
// the real block reader, a slow fault_reader and a short-reading test reader with a queue
// depth of 1 (pending list). (4) Prefetch racing acquire: a thread prefetches random experts
// while others acquire. (5) No lock across a submit: a stalled submit does not stop other
// callers. (6) Destroying the source with prefetches in flight drains them.
// Callers together never hold more than the slot count (the contract of
// max_held_experts()). Counters are checked for consistency (hits + misses = acquires);
// nothing asserts on elapsed time.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "storage/fault_reader.h"
#include "storage/tiered_expert_source.h"
#include "tests/storage/tiered_test_util.h"

namespace moed::storage {
namespace {

using namespace tiered_test;

result<std::unique_ptr<tiered_expert_source>> make_source(const model_fixture& m, std::uint32_t slots,
                                                          std::unique_ptr<block_reader> reader = nullptr,
                                                          std::uint32_t eio_retries = 3) {
    tiered_options o;
    o.host_budget_bytes = tiered_slot_bytes(m.layout, 4096) * slots;
    o.lock = memory_lock::off;
    o.eio_retries = eio_retries;
    return tiered_expert_source::create(m.path, m.layout, o, std::move(reader));
}

TEST(tiered_concurrency, many_threads_share_one_load) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, 4, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    constexpr int n_threads = 8;
    const std::vector<ExpertId> ids = {{1, 6}, {2, 0}};
    rs.control->hold.store(true);
    std::atomic<int> good{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; ++t) {
        threads.emplace_back([&] {
            std::vector<expert_handle> handles;
            auto r = source.acquire_many(ids, device_id::host(), handles);
            if (!r) {
                ADD_FAILURE() << r.error().message;
                return;
            }
            bool ok = true;
            for (const auto& h : handles) ok = ok && same_as_resident(h, *m.resident);
            if (ok) good.fetch_add(1);
        });
    }
    // Every caller has found the loads in flight before any completes.
    EXPECT_TRUE(eventually([&] { return source.stats().host.misses == 2 * n_threads; }));
    rs.release_held();
    for (auto& t : threads) t.join();
    EXPECT_EQ(good.load(), n_threads);
    EXPECT_EQ(rs.control->reads.load(), 6u);  // one load of each expert
    const auto st = source.stats();
    EXPECT_EQ(st.host.hits, 0u);
    EXPECT_EQ(st.host.load_latency.count, 2u);
    EXPECT_EQ(st.host.resident_experts, 2u);
}

TEST(tiered_concurrency, a_failed_load_fails_every_waiter_then_recovers) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, 2, rs.make(m.path), /*eio_retries=*/0);
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    constexpr int n_threads = 5;
    rs.control->fail_from.store(0);
    rs.control->fail_count.store(1);
    rs.control->hold.store(true);
    std::atomic<int> failed{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; ++t) {
        threads.emplace_back([&] {
            auto h = source.acquire(ExpertId{0, 7}, device_id::host());
            if (!h && h.error().message.find("reading expert 0/7") != std::string::npos) failed.fetch_add(1);
        });
    }
    EXPECT_TRUE(eventually([&] { return source.stats().host.misses == n_threads; }));
    rs.release_held();
    for (auto& t : threads) t.join();
    EXPECT_EQ(failed.load(), n_threads);
    // The failed slot went back to the free list once the last waiter let go: both slots
    // can be held again.
    std::vector<expert_handle> handles;
    ASSERT_TRUE(source.acquire_many(std::vector<ExpertId>{{0, 7}, {1, 7}}, device_id::host(), handles));
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
}

// Each thread acquires `iterations` random groups of `group` distinct experts and checks
// them; returns the number of acquires made.
std::uint64_t run_acquirers(tiered_expert_source& source, const model_fixture& m, int n_threads,
                            std::uint32_t group, int iterations, std::atomic<int>& bad) {
    const std::vector<ExpertId> all = all_experts(m.layout);
    std::vector<std::thread> threads;
    for (int t = 0; t < n_threads; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(1234 + t);
            std::vector<ExpertId> ids;
            std::vector<expert_handle> handles;
            for (int it = 0; it < iterations; ++it) {
                ids.clear();
                while (ids.size() < group) {
                    const ExpertId id = all[rng() % all.size()];
                    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
                }
                auto r = source.acquire_many(ids, device_id::host(), handles);
                if (!r) {
                    ADD_FAILURE() << r.error().message;
                    bad.fetch_add(1);
                    return;
                }
                for (const auto& h : handles) {
                    if (!same_as_resident(h, *m.resident)) bad.fetch_add(1);
                }
                handles.clear();
            }
        });
    }
    for (auto& th : threads) th.join();
    return static_cast<std::uint64_t>(n_threads) * group * iterations;
}

void expect_consistent(const tiered_expert_source& source, std::uint64_t acquires) {
    const auto st = source.stats();
    EXPECT_EQ(st.host.hits + st.host.misses, acquires);
    EXPECT_LE(st.host.resident_experts, source.slot_count());
    EXPECT_GT(st.host.evictions, 0u);
    EXPECT_EQ(st.host.read_errors, 0u);
}

TEST(tiered_concurrency, eviction_under_load_real_reader) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, 8);
    ASSERT_TRUE(made) << made.error().message;
    std::atomic<int> bad{0};
    const std::uint64_t n = run_acquirers(**made, m, 4, 2, 150, bad);
    EXPECT_EQ(bad.load(), 0);
    expect_consistent(**made, n);
}

TEST(tiered_concurrency, eviction_under_load_slow_disk) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto inner = open_block_reader(block_reader_options{m.path, 8, true, true, {}});
    ASSERT_TRUE(inner) << inner.error().message;
    auto faults = fault_reader::create(std::move(inner).value());
    ASSERT_TRUE(faults) << faults.error().message;
    (*faults)->set_latency(std::chrono::microseconds(100));
    (*faults)->set_short_reads(0.5, 0, 1000);
    auto made = make_source(m, 3, std::move(faults).value());
    ASSERT_TRUE(made) << made.error().message;
    std::atomic<int> bad{0};
    const std::uint64_t n = run_acquirers(**made, m, 3, 1, 100, bad);
    EXPECT_EQ(bad.load(), 0);
    expect_consistent(**made, n);
}

TEST(tiered_concurrency, eviction_under_load_short_reads_and_queue_depth_one) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, 4, rs.make(m.path, {.alignment = 512, .queue_depth = 1, .max_read_bytes = 2048}));
    ASSERT_TRUE(made) << made.error().message;
    std::atomic<int> bad{0};
    const std::uint64_t n = run_acquirers(**made, m, 2, 2, 100, bad);
    EXPECT_EQ(bad.load(), 0);
    expect_consistent(**made, n);
}

TEST(tiered_concurrency, prefetch_races_acquire) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, 8);
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    std::atomic<bool> done{false};
    std::thread prefetcher([&] {
        const std::vector<ExpertId> all = all_experts(m.layout);
        std::mt19937 rng(99);
        std::vector<prefetch_request> reqs(4);
        while (!done.load()) {
            for (auto& r : reqs) {
                r = prefetch_request{all[rng() % all.size()], static_cast<prefetch_class>(1 + rng() % 3),
                                     static_cast<float>(rng() % 101) / 100.0f};
            }
            source.prefetch(reqs);
            std::this_thread::yield();
        }
    });
    std::atomic<int> bad{0};
    const std::uint64_t n = run_acquirers(source, m, 3, 2, 150, bad);
    done.store(true);
    prefetcher.join();
    EXPECT_EQ(bad.load(), 0);
    const auto st = source.stats();
    EXPECT_EQ(st.host.hits + st.host.misses, n);
    EXPECT_EQ(st.host.read_errors, 0u);
}

// The tier's lock is not held across a submit: while one acquire's submit is stalled inside
// the reader, other callers get through the tier (a hit and its release, stats, file
// health, begin_layer). Were the lock held across the submit, they would wait for it.
TEST(tiered_concurrency, no_lock_is_held_across_a_submit) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, 4, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    ASSERT_TRUE(source.acquire(ExpertId{0, 0}, device_id::host()));  // resident from here on
    rs.control->stall_submit.store(true);
    std::thread acquirer([&] {
        auto h = source.acquire(ExpertId{1, 1}, device_id::host());
        ASSERT_TRUE(h) << h.error().message;
        EXPECT_TRUE(same_as_resident(*h, *m.resident));
    });
    ASSERT_TRUE(eventually([&] { return rs.control->stalled.load() == 1; }));
    std::atomic<bool> others_done{false};
    std::thread other([&] {
        {
            auto hit = source.acquire(ExpertId{0, 0}, device_id::host());
            EXPECT_TRUE(hit);
        }
        (void)source.stats();
        (void)source.file_health();
        source.begin_layer(2, 0);
        others_done.store(true);
    });
    EXPECT_TRUE(eventually([&] { return others_done.load(); }));
    EXPECT_EQ(rs.control->stalled.load(), 1u);  // the submit was still stalled meanwhile
    rs.release_submits();
    acquirer.join();
    other.join();
    const auto st = source.stats();
    EXPECT_EQ(st.host.hits, 1u);
    EXPECT_EQ(st.host.misses, 2u);
    EXPECT_GT(st.host.lock.acquisitions, 0u);
}

TEST(tiered_concurrency, destruction_drains_prefetches_in_flight) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (int round = 0; round < 5; ++round) {
        auto inner = open_block_reader(block_reader_options{m.path, 4, round % 2 == 0, true, {}});
        ASSERT_TRUE(inner) << inner.error().message;
        auto faults = fault_reader::create(std::move(inner).value());
        ASSERT_TRUE(faults) << faults.error().message;
        (*faults)->set_latency(std::chrono::microseconds(500));
        auto made = make_source(m, 6, std::move(faults).value());
        ASSERT_TRUE(made) << made.error().message;
        (*made)->prefetch(as_requests(all_experts(m.layout)));
        made = unexpected(errc::cancelled, "destroyed");  // with reads in flight and pending
    }
}

}  // namespace
}  // namespace moed::storage
