// The tiered source's prefetch pipeline and ring placement: priority order, cancellation of
// stale requests, in-use and current-layer protection, the in-flight byte bound, demand
// before prefetch, the statistics, the hot set and the expert-score bias.
//
// What it checks, and how: a small synthetic model (3 layers x 8 experts, matrices off
// 4096-byte boundaries) is served through test_reader, which records the file offset of every
// read (so the order experts were read in is known) and can hold completions back (so a load
// stays in flight as long as a test wants). An in-flight bound of one expert serialises the
// loads, which makes the dispatch order observable: demand, then near (nearer layers first,
// higher score first), far, warmup. Stale requests (layers passed, or superseded by a newer
// prediction of the same layer) must be dropped before any read and counted; a read already
// in flight completes and, never used, counts as wasted when it is evicted. Storms of
// prefetches must never evict a held expert or one acquired for the layer being computed
// (but may once the engine moves on, which shows the guard is what protected it). With a
// fault_reader adding latency, a counting wrapper observes reads in flight directly: never
// more than the bound allows, and more when the bound is lifted. Every expert acquired is
// compared byte for byte with the resident source. acquire_each must hand out resident
// experts while the others are still being read, each exactly once, and release everything
// when a read fails. Waits poll with a bound on iterations; nothing asserts on elapsed time.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <thread>

#include "storage/fault_reader.h"
#include "storage/tiered_expert_source.h"
#include "tests/storage/tiered_test_util.h"

namespace moed::storage {
namespace {

using namespace tiered_test;

constexpr std::uint32_t page = 4096;

struct setup {
    std::uint32_t slots = 8;
    std::uint64_t max_inflight_experts = 0;  // 0: no bound
    bool ring = true;
    std::uint32_t slots_per_layer = 0;
    double hot_fraction_max = 0.25;
};

result<std::unique_ptr<tiered_expert_source>> make_source(const model_fixture& m, const setup& s,
                                                          std::unique_ptr<block_reader> reader) {
    tiered_options o;
    o.host_budget_bytes = tiered_slot_bytes(m.layout, page) * s.slots;
    o.lock = memory_lock::off;
    o.max_inflight_bytes = s.max_inflight_experts * m.layout.expert_bytes(0);
    o.ring = s.ring;
    o.slots_per_layer = s.slots_per_layer;
    o.hot_fraction_max = s.hot_fraction_max;
    return tiered_expert_source::create(m.path, m.layout, o, std::move(reader));
}

// The experts whose gate matrix reads appear in `offsets`, in that order (a load reads gate,
// up and down; the gate read's aligned start identifies the expert).
std::vector<ExpertId> experts_read(const expert_layout& layout, const std::vector<std::uint64_t>& offsets) {
    std::map<std::uint64_t, ExpertId> gate_start;
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        for (std::uint32_t e = 0; e < layout.n_expert; ++e) {
            const std::uint64_t start = layout.layers[l].gate_offset + e * layout.layers[l].gate_bytes;
            gate_start[start / page * page] = ExpertId{l, e};
        }
    }
    std::vector<ExpertId> out;
    for (std::uint64_t off : offsets) {
        if (auto it = gate_start.find(off); it != gate_start.end()) out.push_back(it->second);
    }
    return out;
}

char residency_of(const tiered_expert_source& s, ExpertId id) {
    return s.stats().layer_residency.at(id.layer).at(id.expert);
}

bool resident(const tiered_expert_source& s, ExpertId id) {
    const char c = residency_of(s, id);
    return c == '#' || c == '+';
}

prefetch_request req(std::uint32_t l, std::uint32_t e, prefetch_class c, float score) {
    return prefetch_request{ExpertId{l, e}, c, score};
}

TEST(prefetch_pipeline, classes_and_layers_are_served_in_priority_order) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 12, .max_inflight_experts = 1}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    source.begin_layer(0, 0);
    const std::vector<prefetch_request> requests = {
        req(0, 1, prefetch_class::warmup, 1.0f), req(2, 3, prefetch_class::far, 0.9f),
        req(1, 2, prefetch_class::near, 0.2f),   req(1, 5, prefetch_class::near, 0.8f),
        req(2, 6, prefetch_class::near, 0.5f),   req(0, 4, prefetch_class::demand, 0.1f),
    };
    source.prefetch(requests);
    ASSERT_TRUE(eventually([&] { return source.stats().host.resident_experts == 6; }));
    const std::vector<ExpertId> want = {{0, 4}, {1, 5}, {1, 2}, {2, 6}, {2, 3}, {0, 1}};
    EXPECT_EQ(experts_read(m.layout, rs.control->offsets_copy()), want);
    EXPECT_EQ(source.stats().prefetch.issued, 6u);
    EXPECT_EQ(source.stats().prefetch.inflight_bytes_max, m.layout.expert_bytes(0));

    // Distances wrap: while layer 2 runs, layer 2 comes first, then 0 (next token), then 1.
    source.begin_layer(2, 0);
    const std::size_t before = rs.control->offsets_copy().size();
    source.prefetch(std::vector<prefetch_request>{req(1, 0, prefetch_class::near, 0.9f),
                                                  req(0, 0, prefetch_class::near, 0.9f),
                                                  req(2, 0, prefetch_class::near, 0.1f)});
    ASSERT_TRUE(eventually([&] { return source.stats().host.resident_experts == 9; }));
    auto offsets = rs.control->offsets_copy();
    offsets.erase(offsets.begin(), offsets.begin() + static_cast<std::ptrdiff_t>(before));
    EXPECT_EQ(experts_read(m.layout, offsets), (std::vector<ExpertId>{{2, 0}, {0, 0}, {1, 0}}));
}

TEST(prefetch_pipeline, stale_requests_are_cancelled_before_any_read) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 6, .max_inflight_experts = 1}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const std::uint64_t expert_bytes = m.layout.expert_bytes(0);

    // Layer 0 runs; four experts of layer 1 are predicted: one read starts, three wait.
    source.begin_layer(0, 0);
    rs.control->hold.store(true);
    source.prefetch(std::vector<prefetch_request>{req(1, 0, prefetch_class::near, 0.9f), req(1, 1, prefetch_class::near, 0.8f),
                                                  req(1, 2, prefetch_class::near, 0.7f), req(1, 3, prefetch_class::near, 0.6f)});
    auto st = source.stats();
    EXPECT_EQ(st.prefetch.issued, 1u);
    EXPECT_EQ(st.prefetch.queued, 3u);
    EXPECT_EQ(rs.control->reads.load(), 3u);  // one expert, three matrices
    // The engine moves past layer 1: its waiting requests are stale.
    source.begin_layer(2, 0);
    st = source.stats();
    EXPECT_EQ(st.prefetch.cancelled, 3u);
    EXPECT_EQ(st.prefetch.queued, 0u);
    rs.release_held();
    ASSERT_TRUE(eventually([&] { return resident(source, {1, 0}); }));
    EXPECT_EQ(rs.control->reads.load(), 3u);  // nothing else was read

    // Superseded: a newer prediction of layer 0 drops the older requests it does not repeat.
    rs.control->hold.store(true);
    source.prefetch(std::vector<prefetch_request>{req(0, 0, prefetch_class::near, 0.9f), req(0, 1, prefetch_class::near, 0.8f),
                                                  req(0, 2, prefetch_class::near, 0.7f)});
    EXPECT_EQ(source.stats().prefetch.queued, 2u);
    source.prefetch(std::vector<prefetch_request>{req(0, 2, prefetch_class::near, 0.9f), req(0, 5, prefetch_class::near, 0.9f)});
    st = source.stats();
    EXPECT_EQ(st.prefetch.cancelled, 4u);  // {0,1} dropped; {0,2} asked again, so kept
    EXPECT_EQ(st.prefetch.queued, 2u);
    // Warmup requests are not superseded by predictions, but cancel_prefetches drops all.
    source.prefetch(std::vector<prefetch_request>{req(2, 7, prefetch_class::warmup, 1.0f)});
    source.cancel_prefetches_before(1);
    EXPECT_EQ(source.stats().prefetch.queued, 1u);  // only the warmup request is left
    source.cancel_prefetches();
    st = source.stats();
    EXPECT_EQ(st.prefetch.cancelled, 7u);
    EXPECT_EQ(st.prefetch.queued, 0u);
    rs.release_held();
    ASSERT_TRUE(eventually([&] { return resident(source, {0, 0}); }));
    EXPECT_EQ(rs.control->reads.load(), 6u);  // {1,0} and {0,0}: nothing cancelled was read

    // The two prefetched experts were never used: pushing them out counts them as wasted.
    std::vector<ExpertId> others;
    for (std::uint32_t e = 0; e < 6; ++e) others.push_back(ExpertId{2, e});
    std::vector<expert_handle> handles;
    ASSERT_TRUE(source.acquire_many(others, device_id::host(), handles));
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
    st = source.stats();
    EXPECT_EQ(st.prefetch.wasted, 2u);
    EXPECT_EQ(st.prefetch.wasted_bytes, 2 * expert_bytes);
    EXPECT_EQ(st.prefetch.hits, 0u);
}

TEST(prefetch_pipeline, hits_late_and_demand_misses_are_counted) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 6}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    source.prefetch(std::vector<prefetch_request>{req(1, 1, prefetch_class::near, 0.5f)});
    ASSERT_TRUE(eventually([&] { return resident(source, {1, 1}); }));
    {
        auto h = source.acquire(ExpertId{1, 1}, device_id::host());  // ready before it was needed
        ASSERT_TRUE(h) << h.error().message;
        EXPECT_TRUE(same_as_resident(*h, *m.resident));
    }
    rs.control->hold.store(true);
    source.prefetch(std::vector<prefetch_request>{req(1, 2, prefetch_class::near, 0.5f)});
    std::thread releaser([&] {
        EXPECT_TRUE(eventually([&] { return source.stats().prefetch.late == 1; }));
        rs.release_held();
    });
    auto late = source.acquire(ExpertId{1, 2}, device_id::host());  // still loading when needed
    releaser.join();
    ASSERT_TRUE(late) << late.error().message;
    EXPECT_TRUE(same_as_resident(*late, *m.resident));
    auto demanded = source.acquire(ExpertId{2, 2}, device_id::host());  // never predicted
    ASSERT_TRUE(demanded) << demanded.error().message;
    const auto st = source.stats();
    EXPECT_EQ(st.prefetch.hits, 1u);
    EXPECT_EQ(st.prefetch.late, 1u);
    EXPECT_EQ(st.prefetch.demand_misses, 1u);
    EXPECT_EQ(st.prefetch.issued, 2u);
    EXPECT_EQ(st.prefetch.wasted, 0u);
    EXPECT_DOUBLE_EQ(st.prefetch.hit_rate, 1.0 / 3.0);
    EXPECT_GT(st.prefetch.io_wait_ns, 0u);  // the late acquire waited
    // The demanded acquire waited too unless its read, submitted without the tier's lock,
    // had already finished by the time it looked: io_waits counts acquires that waited.
    EXPECT_GE(st.prefetch.io_waits, 1u);
    EXPECT_LE(st.prefetch.io_waits, 2u);
}

TEST(prefetch_pipeline, storms_never_evict_held_or_guarded_experts) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 6}, nullptr);
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    source.begin_layer(0, 0);
    // Held: two experts of layer 0. Guarded: two more acquired for layer 0, then released.
    std::vector<expert_handle> held;
    ASSERT_TRUE(source.acquire_many(std::vector<ExpertId>{{0, 0}, {0, 1}}, device_id::host(), held));
    {
        std::vector<expert_handle> used;
        ASSERT_TRUE(source.acquire_many(std::vector<ExpertId>{{0, 2}, {0, 3}}, device_id::host(), used));
    }
    const std::vector<ExpertId> all = all_experts(m.layout);
    std::mt19937 rng(7);
    auto storm = [&](int rounds) {
        for (int r = 0; r < rounds; ++r) {
            std::vector<prefetch_request> reqs;
            for (int k = 0; k < 8; ++k) {
                const ExpertId id = all[rng() % all.size()];
                reqs.push_back(prefetch_request{id, static_cast<prefetch_class>(1 + rng() % 3), 1.0f});
            }
            source.prefetch(reqs);
            // Let some loads finish so that later ones find ready slots to replace.
            EXPECT_TRUE(eventually([&] { return source.stats().prefetch.inflight_bytes == 0; }));
        }
    };
    storm(40);
    EXPECT_GT(source.stats().host.evictions, 0u);
    for (const auto& h : held) EXPECT_TRUE(same_as_resident(h, *m.resident));
    EXPECT_TRUE(resident(source, {0, 2}));
    EXPECT_TRUE(resident(source, {0, 3}));
    // A demand-class prefetch guards what it loads for the current layer, too.
    source.prefetch(std::vector<prefetch_request>{req(0, 6, prefetch_class::demand, 0.1f)});
    ASSERT_TRUE(eventually([&] { return resident(source, {0, 6}); }));
    storm(40);
    EXPECT_TRUE(resident(source, {0, 6}));
    EXPECT_TRUE(resident(source, {0, 2}));
    // Once the engine moves on, the guard lapses and the storm may take those slots.
    source.begin_layer(1, 0);
    storm(60);
    EXPECT_FALSE(resident(source, {0, 2}) && resident(source, {0, 3}) && resident(source, {0, 6}));
    for (const auto& h : held) EXPECT_TRUE(same_as_resident(h, *m.resident));
    EXPECT_EQ(residency_of(source, {0, 0}), '+');
}

TEST(prefetch_pipeline, a_prefetch_replaces_only_lower_needs) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 3, .ring = false}, nullptr);
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    source.begin_layer(0, 0);
    source.prefetch(std::vector<prefetch_request>{req(1, 0, prefetch_class::near, 0.9f), req(1, 1, prefetch_class::near, 0.8f),
                                                  req(2, 0, prefetch_class::far, 0.7f)});
    ASSERT_TRUE(eventually([&] { return source.stats().host.resident_experts == 3; }));
    // A lower score than every resident prediction: waits, never replaces them.
    source.prefetch(std::vector<prefetch_request>{req(0, 5, prefetch_class::near, 0.5f)});
    EXPECT_EQ(source.stats().prefetch.issued, 3u);
    EXPECT_EQ(source.stats().prefetch.queued, 1u);
    // A higher one replaces the least needed resident ({2,0}, at 0.7).
    source.prefetch(std::vector<prefetch_request>{req(0, 5, prefetch_class::near, 0.75f)});
    ASSERT_TRUE(eventually([&] { return resident(source, {0, 5}); }));
    EXPECT_FALSE(resident(source, {2, 0}));
    EXPECT_TRUE(resident(source, {1, 0}));
    EXPECT_TRUE(resident(source, {1, 1}));
    EXPECT_EQ(source.stats().prefetch.wasted, 1u);
}

// A block reader wrapper that watches reads in flight (submitted and not yet reaped).
class counting_reader final : public block_reader {
public:
    explicit counting_reader(std::unique_ptr<block_reader> inner) : inner_(std::move(inner)) {}
    io_mode mode() const noexcept override { return inner_->mode(); }
    std::uint32_t alignment() const noexcept override { return inner_->alignment(); }
    std::uint32_t queue_depth() const noexcept override { return inner_->queue_depth(); }
    const std::string& path() const noexcept override { return inner_->path(); }
    result<std::size_t> submit(std::span<const read_op> ops) override {
        auto n = inner_->submit(ops);
        if (n) {
            const std::uint64_t now = in_flight_.fetch_add(*n) + *n;
            std::uint64_t seen = max_.load();
            while (now > seen && !max_.compare_exchange_weak(seen, now)) {
            }
        }
        return n;
    }
    std::size_t reap(std::span<read_completion> out, bool wait) override {
        const std::size_t n = inner_->reap(out, wait);
        in_flight_.fetch_sub(n);
        return n;
    }
    std::size_t in_flight() const noexcept override { return inner_->in_flight(); }
    void wake() noexcept override { inner_->wake(); }
    result<file_identity> identity() const override { return inner_->identity(); }
    std::uint64_t max_ops_in_flight() const { return max_.load(); }

private:
    std::unique_ptr<block_reader> inner_;
    std::atomic<std::uint64_t> in_flight_{0};
    std::atomic<std::uint64_t> max_{0};
};

// Prefetch storms and acquiring threads over a slow disk; returns the source's statistics
// and the most reads the wrapper saw in flight at once.
std::pair<expert_cache_stats, std::uint64_t> run_bounded(const model_fixture& m, std::uint64_t bound_experts) {
    auto inner = open_block_reader(block_reader_options{m.path, 64, true, true, {}});
    EXPECT_TRUE(inner) << inner.error().message;
    auto faults = fault_reader::create(std::move(inner).value());
    EXPECT_TRUE(faults) << faults.error().message;
    (*faults)->set_latency(std::chrono::microseconds(300));
    auto counting = std::make_unique<counting_reader>(std::move(faults).value());
    counting_reader* watch = counting.get();
    auto made = make_source(m, {.slots = 10, .max_inflight_experts = bound_experts}, std::move(counting));
    EXPECT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const std::vector<ExpertId> all = all_experts(m.layout);
    std::atomic<bool> done{false};
    std::thread planner([&] {
        std::mt19937 rng(3);
        std::uint32_t layer = 0;
        while (!done.load()) {
            source.begin_layer(layer, 0);
            std::vector<prefetch_request> reqs;
            for (std::uint32_t e = 0; e < m.layout.n_expert; ++e) {
                reqs.push_back(req((layer + 1) % 3, e, prefetch_class::near, static_cast<float>(rng() % 100) / 100.0f));
                reqs.push_back(req((layer + 2) % 3, e, prefetch_class::far, static_cast<float>(rng() % 100) / 100.0f));
            }
            source.prefetch(reqs);
            layer = (layer + 1) % 3;
            std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
    });
    std::vector<std::thread> acquirers;
    for (int t = 0; t < 2; ++t) {
        acquirers.emplace_back([&, t] {
            std::mt19937 rng(11 + t);
            std::vector<expert_handle> handles;
            for (int it = 0; it < 60; ++it) {
                const ExpertId a = all[rng() % all.size()];
                ExpertId b = all[rng() % all.size()];
                if (b == a) b = ExpertId{a.layer, (a.expert + 1) % m.layout.n_expert};
                auto r = source.acquire_many(std::vector<ExpertId>{a, b}, device_id::host(), handles);
                if (!r) {
                    ADD_FAILURE() << r.error().message;
                    return;
                }
                for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
                handles.clear();
            }
        });
    }
    for (auto& th : acquirers) th.join();
    done.store(true);
    planner.join();
    EXPECT_TRUE(eventually([&] { return source.stats().prefetch.inflight_bytes == 0; }));
    return {source.stats(), watch->max_ops_in_flight()};
}

TEST(prefetch_pipeline, bytes_in_flight_never_exceed_the_bound) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    const std::uint64_t expert = m.layout.expert_bytes(0);  // every layer alike here
    const auto [bounded, bounded_ops] = run_bounded(m, 2);
    EXPECT_LE(bounded.prefetch.inflight_bytes_max, 2 * expert);
    EXPECT_EQ(bounded.prefetch.inflight_bytes_limit, 2 * expert);
    EXPECT_GT(bounded.prefetch.issued, 0u);
    EXPECT_LE(bounded_ops, 6u);  // three reads per expert, two experts
    EXPECT_EQ(bounded.host.read_errors, 0u);
    // Without a bound the same storm puts more in flight: the bound is what held it back.
    const auto [free_run, free_ops] = run_bounded(m, 0);
    EXPECT_GT(free_run.prefetch.inflight_bytes_max, 2 * expert);
    EXPECT_GT(free_ops, 6u);
}

TEST(prefetch_pipeline, demand_is_admitted_before_waiting_prefetches) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 6, .max_inflight_experts = 1}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    rs.control->hold.store(true);
    source.prefetch(std::vector<prefetch_request>{req(1, 0, prefetch_class::near, 0.9f), req(1, 1, prefetch_class::near, 0.8f)});
    EXPECT_EQ(rs.control->reads.load(), 3u);
    result<expert_handle> got = unexpected(errc::internal, "not run");
    std::thread acquirer([&] { got = source.acquire(ExpertId{2, 0}, device_id::host()); });
    // The demand load waits for the bound: no read of it yet while the prefetch is held.
    EXPECT_TRUE(eventually([&] { return source.stats().prefetch.demand_misses == 1; }));
    EXPECT_EQ(rs.control->reads.load(), 3u);
    rs.release_held();
    acquirer.join();
    ASSERT_TRUE(got) << got.error().message;
    EXPECT_TRUE(same_as_resident(*got, *m.resident));
    ASSERT_TRUE(eventually([&] { return resident(source, {1, 1}); }));
    EXPECT_EQ(experts_read(m.layout, rs.control->offsets_copy()), (std::vector<ExpertId>{{1, 0}, {2, 0}, {1, 1}}));
}

TEST(prefetch_pipeline, hot_set_is_pinned_outside_the_ring) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 8, .hot_fraction_max = 0.25}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    ASSERT_TRUE(source.acquire(ExpertId{0, 0}, device_id::host()));
    const std::uint64_t reads_before = rs.control->reads.load();
    // Three asked, two slots allowed (25% of 8): {0,0} is adopted where it lies, {1,1} loads.
    EXPECT_EQ(source.set_hot_set(std::vector<ExpertId>{{0, 0}, {1, 1}, {2, 2}}), 2u);
    ASSERT_TRUE(eventually([&] { return source.stats().ring.hot_resident == 2; }));
    EXPECT_EQ(rs.control->reads.load(), reads_before + 3);  // one expert read, not two
    auto st = source.stats();
    EXPECT_EQ(st.ring.hot_slots, 2u);
    EXPECT_EQ(st.ring.hot_set, 2u);
    std::uint32_t ring_slots = 0;
    for (const auto& sec : st.ring.sections) ring_slots += sec.slots;
    EXPECT_EQ(ring_slots, 6u);

    // Demand churn over every other expert in groups the ring holds, and prefetch storms:
    // the hot experts stay.
    std::vector<ExpertId> others;
    for (const ExpertId& id : all_experts(m.layout)) {
        if (!(id == ExpertId{0, 0}) && !(id == ExpertId{1, 1})) others.push_back(id);
    }
    std::vector<expert_handle> handles;
    for (int pass = 0; pass < 3; ++pass) {
        for (std::size_t k = 0; k < others.size(); k += 4) {
            const auto group = std::span(others).subspan(k, std::min<std::size_t>(4, others.size() - k));
            ASSERT_TRUE(source.acquire_many(group, device_id::host(), handles));
            for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
            handles.clear();
            std::vector<prefetch_request> reqs;
            for (const ExpertId& id : group) reqs.push_back(prefetch_request{id, prefetch_class::near, 1.0f});
            source.prefetch(reqs);
        }
    }
    EXPECT_TRUE(resident(source, {0, 0}));
    EXPECT_TRUE(resident(source, {1, 1}));
    st = source.stats();
    EXPECT_EQ(st.ring.hot_resident, 2u);
    auto h = source.acquire(ExpertId{1, 1}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    h->release();

    // Cleared: they become ordinary residents and the churn takes them.
    EXPECT_EQ(source.set_hot_set({}), 0u);
    for (std::size_t k = 0; k < others.size(); k += 6) {
        const auto group = std::span(others).subspan(k, std::min<std::size_t>(6, others.size() - k));
        ASSERT_TRUE(source.acquire_many(group, device_id::host(), handles));
        handles.clear();
    }
    EXPECT_FALSE(resident(source, {0, 0}) && resident(source, {1, 1}));
    EXPECT_EQ(source.stats().ring.hot_slots, 0u);
}

TEST(prefetch_pipeline, expert_scores_bias_eviction) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (bool scored : {false, true}) {
        SCOPED_TRACE(scored ? "scored" : "unscored");
        auto made = make_source(m, {.slots = 3, .ring = false}, nullptr);
        ASSERT_TRUE(made) << made.error().message;
        tiered_expert_source& source = **made;
        if (scored) {
            std::vector<float> scores(static_cast<std::size_t>(m.layout.n_layer) * m.layout.n_expert, 0.0f);
            scores[0] = 1.0f;  // expert 0/0 is used nearly always
            source.set_expert_scores(scores);
        }
        for (std::uint32_t e = 0; e < 3; ++e) ASSERT_TRUE(source.acquire(ExpertId{0, e}, device_id::host()));
        ASSERT_TRUE(source.acquire(ExpertId{1, 0}, device_id::host()));  // one of layer 0's three must go
        // Unscored, the oldest ({0,0}) goes; scored, it stays and the next oldest goes.
        EXPECT_EQ(resident(source, {0, 0}), scored);
        EXPECT_EQ(resident(source, {0, 1}), !scored);
        EXPECT_TRUE(resident(source, {0, 2}));
    }
    // A wrong size is ignored.
    auto made = make_source(m, {.slots = 3}, nullptr);
    ASSERT_TRUE(made);
    (*made)->set_expert_scores(std::vector<float>(5, 1.0f));
}

TEST(prefetch_pipeline, layers_load_into_their_ring_sections) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    // 12 slots, 4 wanted per layer, 3 layers: a section of 4 per layer.
    auto made = make_source(m, {.slots = 12, .slots_per_layer = 4}, nullptr);
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    auto st = source.stats();
    ASSERT_TRUE(st.ring.enabled);
    ASSERT_EQ(st.ring.sections.size(), 3u);
    for (std::uint32_t s = 0; s < 3; ++s) {
        EXPECT_EQ(st.ring.sections[s].slots, 4u);
        EXPECT_EQ(st.ring.sections[s].layers, std::vector<std::uint32_t>{s});
        EXPECT_EQ(st.ring.sections[s].layer, -1);
    }
    for (std::uint32_t e = 0; e < 4; ++e) ASSERT_TRUE(source.acquire(ExpertId{1, e}, device_id::host()));
    st = source.stats();
    EXPECT_EQ(st.ring.sections[1].resident, 4u);
    EXPECT_EQ(st.ring.sections[1].layer, 1);
    EXPECT_EQ(st.ring.sections[0].resident + st.ring.sections[2].resident, 0u);
    // Fill the rest; on the next token, a new expert of layer 2 replaces one of layer 2's own
    // section, not the experts of layers 0 and 1 (whose need is lower: their layers come
    // round later). Within one layer's pass its acquired experts are guarded, so the next
    // token starts first.
    for (std::uint32_t e = 0; e < 4; ++e) ASSERT_TRUE(source.acquire(ExpertId{0, e}, device_id::host()));
    for (std::uint32_t e = 0; e < 4; ++e) ASSERT_TRUE(source.acquire(ExpertId{2, e}, device_id::host()));
    source.begin_layer(0, 0);
    ASSERT_TRUE(source.acquire(ExpertId{2, 7}, device_id::host()));
    for (std::uint32_t e = 0; e < 4; ++e) {
        EXPECT_TRUE(resident(source, {1, e}));
        EXPECT_TRUE(resident(source, {0, e}));
    }
    st = source.stats();
    EXPECT_EQ(st.ring.sections[2].resident, 4u);
    EXPECT_EQ(st.host.evictions, 1u);
}

TEST(prefetch_pipeline, acquire_each_applies_resident_experts_while_others_load) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 6}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    ASSERT_TRUE(source.acquire(ExpertId{1, 1}, device_id::host()));
    rs.control->hold.store(true);
    const std::vector<ExpertId> ids = {{2, 0}, {1, 1}, {2, 3}};
    std::vector<std::size_t> order;
    std::vector<expert_handle> scratch;
    std::thread releaser;
    auto r = source.acquire_each(ids, device_id::host(), scratch, [&](std::size_t i, const expert_handle& h) {
        order.push_back(i);
        EXPECT_EQ(h.id(), ids[i]);
        EXPECT_TRUE(same_as_resident(h, *m.resident));
        if (order.size() == 1) {
            // The resident expert comes first, while the other two are still being read.
            EXPECT_EQ(residency_of(source, {2, 0}), '~');
            EXPECT_EQ(residency_of(source, {2, 3}), '~');
            // The reads go on a little later, so acquire_each finds none ready and waits
            // (released here at once, they could finish before it looks: no wait to count).
            releaser = std::thread([&rs] {
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
                rs.release_held();
            });
        }
    });
    releaser.join();
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(order.size(), 3u);
    EXPECT_EQ(order[0], 1u);
    std::sort(order.begin(), order.end());
    EXPECT_EQ(order, (std::vector<std::size_t>{0, 1, 2}));
    // Every handle was released after its call.
    for (const ExpertId& id : ids) EXPECT_EQ(residency_of(source, id), '#');
    EXPECT_GT(source.stats().prefetch.io_wait_ns, 0u);
}

TEST(prefetch_pipeline, acquire_each_fails_cleanly_when_a_read_fails) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    tiered_options o;
    o.host_budget_bytes = tiered_slot_bytes(m.layout, page) * 4;
    o.lock = memory_lock::off;
    o.eio_retries = 0;
    auto made = tiered_expert_source::create(m.path, m.layout, o, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    ASSERT_TRUE(source.acquire(ExpertId{0, 0}, device_id::host()));
    rs.control->fail_from.store(rs.control->reads.load());
    rs.control->fail_count.store(1000);
    std::vector<expert_handle> scratch;
    std::size_t applied = 0;
    auto r = source.acquire_each(std::vector<ExpertId>{{0, 0}, {1, 2}}, device_id::host(), scratch,
                                 [&](std::size_t, const expert_handle&) { ++applied; });
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("expert 1/2"), std::string::npos) << r.error().message;
    EXPECT_LE(applied, 1u);
    EXPECT_TRUE(scratch.empty());
    rs.control->fail_count.store(0);
    // Nothing is left held: every slot can be taken at once.
    std::vector<expert_handle> handles;
    ASSERT_TRUE(source.acquire_many(std::vector<ExpertId>{{1, 2}, {1, 3}, {2, 4}, {2, 5}}, device_id::host(), handles));
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
}

}  // namespace
}  // namespace moed::storage
