// The prefetch pipeline under concurrent callers (CI runs files named *concurrency_test under
// ThreadSanitizer).
//
// What it checks, and how: over a slow fault_reader (latency on every read) with a small
// in-flight bound, threads hammer one tiered source at once: acquirers take random groups in
// layer order (one with acquire_many, one with acquire_each) and compare every handle's
// bytes with the resident source (the file mapped);
// a "planner" thread walks the layers calling begin_layer() and prefetch() with random
// classes and scores, cancel_prefetches_before() and
// cancel_prefetches(); a "profile" thread keeps changing the hot set and the expert scores.
// Afterwards the counters must agree (hits + misses = acquires, no read errors, in flight
// never above the bound, nothing left in flight), and destroying a source with requests
// still queued and reads in flight must drain cleanly. Callers together never hold more
// than the slot count. Nothing asserts on elapsed time.
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

result<std::unique_ptr<tiered_expert_source>> make_slow_source(const model_fixture& m, std::uint32_t slots,
                                                               std::uint64_t bound_bytes, bool uring) {
    auto inner = open_block_reader(block_reader_options{m.path, 16, uring, true, {}});
    if (!inner) return unexpected(std::move(inner).error());
    auto faults = fault_reader::create(std::move(inner).value());
    if (!faults) return unexpected(std::move(faults).error());
    (*faults)->set_latency(std::chrono::microseconds(150));
    (*faults)->set_bandwidth_cap(256ull << 20);
    tiered_options o;
    o.host_budget_bytes = tiered_slot_bytes(m.layout, 4096) * slots;
    o.lock = memory_lock::off;
    o.max_inflight_bytes = bound_bytes;
    o.max_prefetch_inflight_bytes = bound_bytes / 2;
    return tiered_expert_source::create(m.path, m.layout, o, std::move(faults).value());
}

TEST(prefetch_concurrency, acquire_prefetch_cancel_and_hot_set_from_many_threads) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (bool uring : {true, false}) {
        SCOPED_TRACE(uring ? "uring" : "pread");
        const std::uint64_t bound = 4 * m.layout.expert_bytes(0);
        // Two acquirers x 3 experts plus room for the hot set (2 of 12 slots).
        auto made = make_slow_source(m, 12, bound, uring);
        ASSERT_TRUE(made) << made.error().message;
        tiered_expert_source& source = **made;
        const std::vector<ExpertId> all = all_experts(m.layout);
        const std::uint32_t n_layer = m.layout.n_layer;
        const std::uint32_t n_expert = m.layout.n_expert;
        std::atomic<bool> done{false};
        std::atomic<std::uint64_t> acquires{0};
        std::atomic<int> bad{0};

        std::thread planner([&] {
            std::mt19937 rng(5);
            std::uint32_t layer = 0;
            std::vector<prefetch_request> reqs;
            while (!done.load()) {
                source.begin_layer(layer, layer == 0 ? 1 : 0);
                reqs.clear();
                for (int k = 0; k < 6; ++k) {
                    const std::uint32_t target = (layer + static_cast<std::uint32_t>(rng() % 3)) % n_layer;
                    reqs.push_back(prefetch_request{ExpertId{target, static_cast<std::uint32_t>(rng() % n_expert)},
                                                    static_cast<prefetch_class>(rng() % 4),
                                                    static_cast<float>(rng() % 101) / 100.0f});
                }
                source.prefetch(reqs);
                if (rng() % 7 == 0) source.cancel_prefetches_before(static_cast<std::uint32_t>(rng() % (n_layer + 1)));
                if (rng() % 11 == 0) source.cancel_prefetches();
                layer = (layer + 1) % n_layer;
                std::this_thread::yield();
            }
        });
        std::thread profile([&] {
            std::mt19937 rng(17);
            std::vector<float> scores(all.size());
            while (!done.load()) {
                std::vector<ExpertId> hot;
                for (int k = 0; k < 3; ++k) hot.push_back(all[rng() % all.size()]);
                source.set_hot_set(hot);
                for (float& s : scores) s = static_cast<float>(rng() % 100) / 100.0f;
                source.set_expert_scores(rng() % 3 == 0 ? std::span<const float>() : std::span<const float>(scores));
                (void)source.stats();  // status readers run concurrently too
                std::this_thread::sleep_for(std::chrono::microseconds(300));
            }
        });
        std::vector<std::thread> acquirers;
        for (int t = 0; t < 2; ++t) {
            acquirers.emplace_back([&, t] {
                std::mt19937 rng(100 + t);
                std::vector<ExpertId> ids;
                std::vector<expert_handle> handles;
                for (int it = 0; it < 120; ++it) {
                    // Like the engine: one layer at a time, in order, a few experts each.
                    const std::uint32_t layer = static_cast<std::uint32_t>(it) % n_layer;
                    ids.clear();
                    while (ids.size() < 3) {
                        const ExpertId id{layer, static_cast<std::uint32_t>(rng() % n_expert)};
                        if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
                    }
                    // One thread takes them all at once, the other as each arrives.
                    auto r = t == 0 ? source.acquire_many(ids, device_id::host(), handles)
                                    : source.acquire_each(ids, device_id::host(), handles, [&](std::size_t i, const expert_handle& h) {
                                          if (h.id() != ids[i] || !same_as_resident(h, *m.resident)) bad.fetch_add(1);
                                      });
                    if (!r) {
                        ADD_FAILURE() << r.error().message;
                        bad.fetch_add(1);
                        return;
                    }
                    acquires.fetch_add(ids.size());
                    for (const auto& h : handles) {
                        if (!same_as_resident(h, *m.resident)) bad.fetch_add(1);
                    }
                    handles.clear();
                }
            });
        }
        for (auto& th : acquirers) th.join();
        done.store(true);
        planner.join();
        profile.join();
        EXPECT_EQ(bad.load(), 0);
        ASSERT_TRUE(eventually([&] { return source.stats().prefetch.inflight_bytes == 0; }));
        const auto st = source.stats();
        EXPECT_EQ(st.host.hits + st.host.misses, acquires.load());
        EXPECT_EQ(st.host.read_errors, 0u);
        EXPECT_LE(st.prefetch.inflight_bytes_max, bound);
        EXPECT_GT(st.prefetch.requested, 0u);
        EXPECT_GT(st.prefetch.issued, 0u);
        EXPECT_LE(st.host.resident_experts, source.slot_count());
        // Every handle is gone: all slots can be held at once again.
        std::vector<ExpertId> last;
        for (std::uint32_t e = 0; e < 4; ++e) last.push_back(ExpertId{1, e});
        std::vector<expert_handle> handles;
        ASSERT_TRUE(source.acquire_many(last, device_id::host(), handles));
        for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
    }
}

TEST(prefetch_concurrency, destruction_with_queued_and_inflight_prefetches) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (int round = 0; round < 6; ++round) {
        auto made = make_slow_source(m, 6, m.layout.expert_bytes(0) * 2, round % 2 == 0);
        ASSERT_TRUE(made) << made.error().message;
        std::vector<prefetch_request> reqs;
        for (const ExpertId& id : all_experts(m.layout)) reqs.push_back(prefetch_request{id, prefetch_class::far, 0.9f});
        (*made)->prefetch(reqs);
        (*made)->set_hot_set(std::vector<ExpertId>{{0, 1}, {2, 2}});
        EXPECT_GT((*made)->stats().prefetch.queued, 0u);
        made = unexpected(errc::cancelled, "destroyed");  // queued requests and reads in flight
    }
}

}  // namespace
}  // namespace moed::storage
