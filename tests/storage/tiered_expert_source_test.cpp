// tiered_expert_source: residency, eviction, statistics and read faults.
//
// What it checks, and how: small synthetic qwen3moe models (one whose expert matrices start
// off 4096-byte boundaries, one with mixed K-quant types) are opened both as the resident
// source (the whole file mapped: the reference) and as the tiered source with a host budget
// of a few slots, so nearly every acquire evicts. Every expert acquired through the tiered
// source must hold exactly the resident source's bytes, types and shapes, whatever the read
// path: the real block reader (io_uring or pread, O_DIRECT when the file system allows) or
// test_reader (a pread double with chosen alignment, queue depth, short reads and injected
// errors). Counters are checked against sequences whose hits, misses and evictions are known
// in advance; held handles are checked to keep their bytes while other experts churn through
// the remaining slots. Faults: EIO that outlasts the retries fails the acquire with an error
// naming the expert and the file, and the next acquire works once the fault is gone; a single
// EIO is retried transparently; short reads still give the right bytes; a file truncated or
// changed after opening gives an error naming the file, never a crash or stale bytes.
// Asynchronous loads are waited for by polling state with a bound on iterations; nothing
// asserts on elapsed time.
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "storage/fault_reader.h"
#include "storage/slot_geometry.h"
#include "storage/tiered_expert_source.h"
#include "tests/storage/tiered_test_util.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

using namespace tiered_test;

constexpr std::uint32_t page = 4096;

struct source_setup {
    std::uint32_t slots = 3;  // of each slot class (the one class when the layers' experts are alike)
    memory_lock lock = memory_lock::off;
    std::uint32_t eio_retries = 3;
};

result<std::unique_ptr<tiered_expert_source>> make_source(const model_fixture& m, const source_setup& s,
                                                          std::unique_ptr<block_reader> reader = nullptr) {
    tiered_options o;
    // `slots` slots of every distinct slot size: for a model whose classes have equally many
    // layers (every test model here), the split gives each class exactly `slots`.
    std::vector<std::uint64_t> sizes;
    for (std::uint32_t l = 0; l < m.layout.n_layer; ++l) {
        const std::uint64_t b = layer_slot_bytes(m.layout, l, page);
        if (std::find(sizes.begin(), sizes.end(), b) == sizes.end()) sizes.push_back(b);
    }
    o.host_budget_bytes = s.slots * std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
    o.lock = s.lock;
    o.eio_retries = s.eio_retries;
    o.file_check_interval = std::chrono::milliseconds(0);  // the tests call check_file() themselves
    return tiered_expert_source::create(m.path, m.layout, o, std::move(reader));
}

template <typename T>
void expect_error(const result<T>& r, std::initializer_list<std::string_view> needles) {
    ASSERT_FALSE(r.has_value());
    for (std::string_view n : needles) {
        EXPECT_NE(r.error().message.find(n), std::string::npos) << "message lacks '" << n << "': " << r.error().message;
    }
}

// Acquires every expert in groups of `group` in a scrambled order (several passes), checking
// each handle's bytes.
void churn_and_compare(tiered_expert_source& source, const model_fixture& m, std::uint32_t group) {
    std::vector<ExpertId> ids = all_experts(m.layout);
    std::vector<expert_handle> handles;
    for (int pass = 0; pass < 3; ++pass) {
        if (pass == 1) std::reverse(ids.begin(), ids.end());
        if (pass == 2) {
            for (std::size_t k = 0; k < ids.size(); ++k) std::swap(ids[k], ids[(k * 7 + 3) % ids.size()]);
        }
        for (std::size_t k = 0; k < ids.size(); k += group) {
            const std::size_t n = std::min<std::size_t>(group, ids.size() - k);
            auto r = source.acquire_many(std::span(ids).subspan(k, n), device_id::host(), handles);
            ASSERT_TRUE(r) << r.error().message;
            ASSERT_EQ(handles.size(), n);
            for (std::size_t j = 0; j < n; ++j) {
                EXPECT_EQ(handles[j].id(), ids[k + j]);
                EXPECT_TRUE(same_as_resident(handles[j], *m.resident));
            }
            handles.clear();
        }
    }
}

TEST(tiered_slot_bytes, regions_are_aligned_and_hold_every_expert) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (std::uint32_t a : {1u, 512u, 4096u}) {
        const std::uint64_t slot = tiered_slot_bytes(m.layout, a);
        EXPECT_EQ(slot % a, 0u);
        for (std::uint32_t l = 0; l < m.layout.n_layer; ++l) {
            EXPECT_GE(slot, m.layout.expert_bytes(l));
            // Each matrix may need one extra aligned block for its skew.
            EXPECT_LE(slot, m.layout.expert_bytes(l) + 6ull * a);
        }
    }
}

TEST(tiered_expert_source, bytes_match_resident_source_under_constant_eviction) {
    for (const char* type : {"Q8_0", "Q4_K_M"}) {
        SCOPED_TRACE(type);
        const model_fixture m =
            std::string(type) == "Q8_0" ? load_model(type, skewed_shape()) : load_model(type, tools::synth_shape{});
        ASSERT_TRUE(m.resident);
        auto source = make_source(m, {.slots = 3});
        ASSERT_TRUE(source) << source.error().message;
        // The Q4_K_M mix puts one layer's ffn_down in Q6_K: two slot classes of 3 slots.
        const std::uint32_t classes = std::string(type) == "Q8_0" ? 1u : 2u;
        EXPECT_EQ((*source)->classes().n_classes(), classes);
        EXPECT_EQ((*source)->slot_count(), 3u * classes);
        EXPECT_EQ((*source)->max_held_experts(), 3u);
        churn_and_compare(**source, m, 3);
        churn_and_compare(**source, m, 1);
        const auto st = (*source)->stats();
        EXPECT_GT(st.host.evictions, 0u);
        EXPECT_EQ(st.host.read_errors, 0u);
    }
}

TEST(tiered_expert_source, bytes_match_through_test_reader_alignments_and_tiny_queue) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (std::uint32_t align : {1u, 512u, 4096u}) {
        for (std::uint32_t qd : {1u, 2u, 64u}) {
            SCOPED_TRACE(testing::Message() << "alignment " << align << " queue depth " << qd);
            reader_setup rs;
            auto source = make_source(m, {.slots = 4}, rs.make(m.path, {.alignment = align, .queue_depth = qd}));
            ASSERT_TRUE(source) << source.error().message;
            churn_and_compare(**source, m, 4);
            EXPECT_EQ((*source)->stats().queue_depth, qd);
        }
    }
}

TEST(tiered_expert_source, acquire_many_submits_all_missing_reads_in_one_batch) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto source = make_source(m, {.slots = 8}, rs.make(m.path));
    ASSERT_TRUE(source) << source.error().message;
    const std::vector<ExpertId> ids = {{1, 0}, {1, 5}, {1, 2}, {1, 7}};
    std::vector<expert_handle> handles;
    ASSERT_TRUE((*source)->acquire_many(ids, device_id::host(), handles));
    EXPECT_EQ(rs.control->submits.load(), 1u);
    EXPECT_EQ(rs.control->first_batch.load(), 3u * ids.size());  // gate, up, down of each
    EXPECT_EQ(rs.control->reads.load(), 3u * ids.size());
}

TEST(tiered_expert_source, counts_hits_misses_evictions_and_bytes) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 2});
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const ExpertId a{0, 1}, b{0, 2}, c{2, 3};
    auto get = [&](ExpertId id) {
        auto h = source.acquire(id, device_id::host());
        ASSERT_TRUE(h) << h.error().message;
        EXPECT_TRUE(same_as_resident(*h, *m.resident));
    };
    get(a);  // miss
    get(a);  // hit
    get(b);  // miss
    get(a);  // hit: now b is the least recently used
    get(c);  // miss, evicts b
    get(a);  // hit
    get(b);  // miss, evicts c
    get(c);  // miss, evicts a (a was used before b)
    get(b);  // hit
    const auto st = source.stats();
    EXPECT_EQ(st.host.hits, 4u);
    EXPECT_EQ(st.host.misses, 5u);
    EXPECT_EQ(st.host.evictions, 3u);
    EXPECT_EQ(st.host.resident_experts, 2u);
    EXPECT_EQ(st.host.resident_bytes, m.layout.expert_bytes(0) + m.layout.expert_bytes(2));
    EXPECT_EQ(st.host.read_errors, 0u);
    // Each load reads its three matrices from aligned offsets: at least the expert's bytes,
    // at most one slot.
    std::uint64_t expected_min = 0;
    for (ExpertId id : {a, b, c, b, c}) expected_min += m.layout.expert_bytes(id.layer);
    EXPECT_GE(st.host.bytes_read, expected_min);
    EXPECT_LE(st.host.bytes_read, 5 * source.slot_bytes());
    EXPECT_EQ(st.host.load_latency.count, 5u);
}

TEST(tiered_expert_source, acquire_many_never_evicts_its_own_experts) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 2});
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const ExpertId a{0, 4}, b{1, 4}, c{2, 4};
    ASSERT_TRUE(source.acquire(b, device_id::host()));  // b is now the least recently used
    ASSERT_TRUE(source.acquire(c, device_id::host()));
    std::vector<expert_handle> handles;
    // a is missing and b would be the victim; b must be pinned first, so c goes instead.
    ASSERT_TRUE(source.acquire_many(std::vector<ExpertId>{a, b}, device_id::host(), handles));
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
    const auto st = source.stats();
    EXPECT_EQ(st.host.hits, 1u);
    EXPECT_EQ(st.host.misses, 3u);
    EXPECT_EQ(st.host.evictions, 1u);
}

TEST(tiered_expert_source, held_slots_are_never_evicted) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 3});
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const std::vector<ExpertId> held_ids = {{2, 7}, {0, 0}};
    std::vector<expert_handle> held;
    ASSERT_TRUE(source.acquire_many(held_ids, device_id::host(), held));
    // Everything else passes through the one remaining slot.
    for (const ExpertId id : all_experts(m.layout)) {
        if (id == held_ids[0] || id == held_ids[1]) continue;
        auto h = source.acquire(id, device_id::host());
        ASSERT_TRUE(h) << h.error().message;
        EXPECT_TRUE(same_as_resident(*h, *m.resident));
        for (const expert_handle& k : held) ASSERT_TRUE(same_as_resident(k, *m.resident));
    }
    const auto before = source.stats();
    std::vector<expert_handle> again;
    ASSERT_TRUE(source.acquire_many(held_ids, device_id::host(), again));  // the held ones are still resident
    EXPECT_EQ(source.stats().host.hits, before.host.hits + 2);
    EXPECT_EQ(again[0].weights().gate.data, held[0].weights().gate.data);
    EXPECT_EQ(before.host.evictions, all_experts(m.layout).size() - 3);
}

TEST(tiered_expert_source, duplicate_ids_and_out_of_range_ids) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 2});
    ASSERT_TRUE(made) << made.error().message;
    std::vector<expert_handle> handles;
    // Duplicates share one slot, so four ids fit in two slots.
    const std::vector<ExpertId> dup = {{1, 1}, {1, 2}, {1, 1}, {1, 2}};
    ASSERT_TRUE((*made)->acquire_many(dup, device_id::host(), handles));
    ASSERT_EQ(handles.size(), 4u);
    EXPECT_EQ(handles[0].weights().up.data, handles[2].weights().up.data);
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
    handles.clear();
    expect_error((*made)->acquire(ExpertId{3, 0}, device_id::host()), {m.path, "expert 3/0 out of range", "3 layers x 8 experts"});
    expect_error((*made)->acquire(ExpertId{0, 8}, device_id::host()), {m.path, "expert 0/8 out of range"});
    // More distinct experts than slots can never be held at once.
    const std::vector<ExpertId> three = {{0, 0}, {0, 1}, {0, 2}};
    expect_error((*made)->acquire_many(three, device_id::host(), handles), {"cannot hold 3 experts at once in 2 host slots"});
    EXPECT_TRUE(handles.empty());
}

// Four layers of the Q4_K_M mix: layers 2 and 3 have ffn_down in Q6_K, so their experts need
// bigger slots than those of layers 0 and 1.
TEST(tiered_expert_source, slot_classes_keep_each_layers_experts_apart) {
    tools::synth_shape shape;
    shape.layers = 4;
    const model_fixture m = load_model("Q4_K_M", shape);
    ASSERT_TRUE(m.resident);
    ASSERT_LT(layer_slot_bytes(m.layout, 0, page), layer_slot_bytes(m.layout, 2, page));
    tiered_options o;
    o.lock = memory_lock::off;
    o.file_check_interval = std::chrono::milliseconds(0);
    o.host_budget_bytes = tiered_every_expert_bytes(m.layout, page) / 4;
    auto made = tiered_expert_source::create(m.path, m.layout, o);
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const slot_classes& classes = source.classes();
    ASSERT_EQ(classes.n_classes(), 2u);
    EXPECT_EQ(classes.class_of_layer(0), classes.class_of_layer(1));
    EXPECT_EQ(classes.class_of_layer(2), classes.class_of_layer(3));
    EXPECT_NE(classes.class_of_layer(0), classes.class_of_layer(2));
    // The slab stays within the budget and holds more experts than slots of the largest size
    // would: a quarter of each class's experts.
    auto st = source.stats();
    EXPECT_LE(st.host.capacity_bytes, o.host_budget_bytes);
    EXPECT_EQ(st.host.capacity_bytes, classes.bytes());
    EXPECT_GT(source.slot_count(), o.host_budget_bytes / tiered_slot_bytes(m.layout, page));
    EXPECT_EQ(source.slot_count(), 4u * 8u / 4u);
    const std::uint32_t small = classes[classes.class_of_layer(0)].n_slots;
    const std::uint32_t big = classes[classes.class_of_layer(2)].n_slots;
    EXPECT_EQ(source.max_held_experts(), std::min(small, big));

    std::vector<expert_handle> handles;
    auto acquire = [&](std::vector<ExpertId> ids) {
        auto r = source.acquire_many(ids, device_id::host(), handles);
        ASSERT_TRUE(r) << r.error().message;
        for (const expert_handle& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
        for (expert_handle& h : handles) h.release();
        handles.clear();
    };
    auto resident = [&](std::uint32_t layer) {
        std::vector<std::uint32_t> out;
        const auto rows = source.stats().layer_residency;
        for (std::uint32_t e = 0; e < 8; ++e) {
            if (rows[layer][e] == '#') out.push_back(e);
        }
        return out;
    };
    // Fill the big class, then churn every expert of the small layers through their slots.
    for (std::uint32_t e = 0; e < big; ++e) acquire({ExpertId{2 + e % 2, e / 2}});
    const auto big2 = resident(2), big3 = resident(3);
    EXPECT_EQ(big2.size() + big3.size(), big);
    // One layer's experts one after another (the same layer computed, so its class's slots
    // end up guarded for it while the other class's are merely reclaimable), in pairs too.
    for (int pass = 0; pass < 3; ++pass) {
        for (std::uint32_t l : {0u, 1u}) {
            for (std::uint32_t e = 0; e < 8; ++e) acquire({ExpertId{l, e}});
        }
        for (std::uint32_t e = 0; e < 8; ++e) acquire({ExpertId{0, e}, ExpertId{1, 7 - e}});
    }
    EXPECT_EQ(resident(2), big2) << "a small layer's load evicted a big layer's expert";
    EXPECT_EQ(resident(3), big3) << "a small layer's load evicted a big layer's expert";
    const auto small0 = resident(0), small1 = resident(1);
    EXPECT_EQ(small0.size() + small1.size(), small);
    // And the other way round.
    for (int pass = 0; pass < 3; ++pass) {
        for (std::uint32_t l : {2u, 3u}) {
            for (std::uint32_t e = 0; e < 8; ++e) acquire({ExpertId{l, e}});
        }
        for (std::uint32_t e = 0; e < 8; ++e) acquire({ExpertId{2, e}, ExpertId{3, 7 - e}});
    }
    EXPECT_EQ(resident(0), small0) << "a big layer's load evicted a small layer's expert";
    EXPECT_EQ(resident(1), small1) << "a big layer's load evicted a small layer's expert";
    st = source.stats();
    EXPECT_EQ(st.host.resident_experts, source.slot_count());
    EXPECT_EQ(st.host.read_errors, 0u);
    // One call may hold at most a class's slots of that class's experts.
    std::vector<ExpertId> too_many;
    for (std::uint32_t e = 0; e <= big; ++e) too_many.push_back(ExpertId{2 + e % 2, e / 2});
    expect_error(source.acquire_many(too_many, device_id::host(), handles),
                 {"cannot hold " + std::to_string(big + 1) + " experts at once in " + std::to_string(big) + " host slots",
                  "slot class"});
}

TEST(tiered_expert_source, budget_too_small_is_a_clear_error) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    const std::uint64_t slot = tiered_slot_bytes(m.layout, page);
    tiered_options o;
    o.lock = memory_lock::off;
    o.host_budget_bytes = slot - 1;
    auto r = tiered_expert_source::create(m.path, m.layout, o);
    expect_error(r, {m.path, std::to_string(slot - 1), "holds 0 expert slots", std::to_string(slot),
                     "at least 1 slot is needed"});
    EXPECT_EQ(r.error().code, errc::out_of_memory);
    o.host_budget_bytes = slot * 3;
    o.min_slots = 5;
    r = tiered_expert_source::create(m.path, m.layout, o);
    expect_error(r, {"holds 3 expert slots", "at least 5 slots are needed", std::to_string(slot * 5)});
    o.min_slots = 3;
    r = tiered_expert_source::create(m.path, m.layout, o);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->slot_count(), 3u);
    EXPECT_EQ((*r)->slot_bytes(), slot);
}

TEST(tiered_expert_source, prefetch_then_acquire_is_a_hit) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 4});
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    const std::vector<ExpertId> ids = {{1, 3}, {2, 4}, {0, 5}};
    source.prefetch(as_requests(ids));
    ASSERT_TRUE(eventually([&] { return source.stats().host.resident_experts == 3; }));
    std::vector<expert_handle> handles;
    ASSERT_TRUE(source.acquire_many(ids, device_id::host(), handles));
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
    auto st = source.stats();
    EXPECT_EQ(st.host.hits, 3u);
    EXPECT_EQ(st.host.misses, 0u);
    // Prefetching resident experts does nothing.
    source.prefetch(as_requests(ids));
    EXPECT_EQ(source.stats().host.bytes_read, st.host.bytes_read);
}

TEST(tiered_expert_source, prefetch_never_evicts_held_or_loading_slots) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 3}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    std::vector<expert_handle> held;
    ASSERT_TRUE(source.acquire_many(std::vector<ExpertId>{{0, 0}, {0, 1}}, device_id::host(), held));
    // One slot left (layer 1's section): hold its load in flight, then prefetch more than fits.
    rs.control->hold.store(true);
    source.prefetch(as_requests({{1, 0}, {1, 1}, {1, 2}}));
    EXPECT_EQ(rs.control->reads.load(), 9u);  // 2 acquired + 1 prefetched expert, 3 reads each
    rs.release_held();
    ASSERT_TRUE(eventually([&] { return source.stats().host.resident_experts == 3; }));
    for (const auto& h : held) EXPECT_TRUE(same_as_resident(h, *m.resident));
    // With the third slot ready and unheld, a new prediction for its layer may replace it,
    // never the held two.
    source.prefetch(as_requests({{1, 3}}));
    ASSERT_TRUE(eventually([&] { return source.stats().host.evictions == 1; }));
    auto h = source.acquire(ExpertId{1, 3}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    for (const auto& k : held) EXPECT_TRUE(same_as_resident(k, *m.resident));
}

TEST(tiered_expert_source, acquire_joins_a_load_in_flight) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 3}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    rs.control->hold.store(true);
    source.prefetch(as_requests({{2, 2}}));
    std::thread releaser([&] {
        // The acquire below must find the load in flight (counted as a miss) and wait for it.
        EXPECT_TRUE(eventually([&] { return source.stats().host.misses == 1; }));
        rs.release_held();
    });
    auto h = source.acquire(ExpertId{2, 2}, device_id::host());
    releaser.join();
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    EXPECT_EQ(rs.control->reads.load(), 3u);  // one load, not two
    EXPECT_EQ(source.stats().host.hits, 0u);
}

TEST(tiered_expert_source, stats_fields) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto made = make_source(m, {.slots = 3});
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    std::uint64_t total = 0;
    for (std::uint32_t l = 0; l < m.layout.n_layer; ++l) total += m.layout.expert_bytes(l) * m.layout.n_expert;
    auto st = source.stats();
    EXPECT_FALSE(st.io_mode.empty());
    EXPECT_GT(st.queue_depth, 0u);
    EXPECT_EQ(st.expert_bytes_total, total);
    EXPECT_EQ(st.host.name, "host");
    EXPECT_EQ(st.host.capacity_experts, 3u);
    EXPECT_EQ(st.host.capacity_bytes, 3 * source.slot_bytes());
    EXPECT_EQ(st.host.resident_experts, 0u);
    EXPECT_EQ(st.host.load_latency.count, 0u);
    EXPECT_EQ(st.host.read_bytes_per_s, 0.0);
    EXPECT_EQ(st.nvme.name, "nvme");
    EXPECT_EQ(st.nvme.capacity_bytes, total);
    EXPECT_EQ(st.nvme.resident_bytes, total);
    EXPECT_EQ(st.nvme.capacity_experts, 3u * 8u);
    EXPECT_EQ(st.nvme.resident_experts, 3u * 8u);

    churn_and_compare(source, m, 2);
    st = source.stats();
    const auto& lat = st.host.load_latency;
    EXPECT_EQ(lat.count, st.host.misses);
    EXPECT_LE(lat.p50_us, lat.p90_us);
    EXPECT_LE(lat.p90_us, lat.p99_us);
    EXPECT_LE(lat.p99_us, lat.max_us);
    EXPECT_GT(st.host.read_seconds, 0.0);
    EXPECT_GT(st.host.read_bytes_per_s, 0.0);
    EXPECT_EQ(st.host.resident_experts, 3u);
    EXPECT_EQ(st.host.hits + st.host.misses, 3u * 3u * 8u);
    EXPECT_EQ(st.nvme.hits, st.host.misses);
}

// --- faults, through test_reader ---

TEST(tiered_expert_source_faults, eio_beyond_retries_fails_then_recovers) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 3, .eio_retries = 2}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    // Reads 0-2 are the expert's gate, up and down; from read 1 on every read fails, so up
    // and down each fail once and twice more on retry.
    rs.control->fail_from.store(1);
    rs.control->fail_count.store(100);
    auto h = source.acquire(ExpertId{1, 6}, device_id::host());
    expect_error(h, {m.path, "reading expert 1/6", "Input/output error after 2 retries"});
    EXPECT_EQ(h.error().code, errc::io);
    EXPECT_EQ(source.stats().host.read_errors, 6u);
    EXPECT_EQ(source.stats().host.resident_experts, 0u);
    // The fault goes away: the same expert loads, in the freed slot.
    rs.control->fail_count.store(0);
    h = source.acquire(ExpertId{1, 6}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    h->release();
    churn_and_compare(source, m, 3);
}

TEST(tiered_expert_source_faults, one_failure_in_acquire_many_releases_the_rest) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 3, .eio_retries = 0}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    rs.control->fail_from.store(7);  // the third expert's up matrix
    rs.control->fail_count.store(1);
    std::vector<expert_handle> handles;
    const std::vector<ExpertId> ids = {{0, 1}, {0, 2}, {0, 3}};
    auto r = source.acquire_many(ids, device_id::host(), handles);
    expect_error(r, {m.path, "reading expert 0/3", "up matrix", "after 0 retries"});
    EXPECT_TRUE(handles.empty());
    // No slot stays held: all three can be acquired (two are hits).
    ASSERT_TRUE(source.acquire_many(ids, device_id::host(), handles));
    for (const auto& h : handles) EXPECT_TRUE(same_as_resident(h, *m.resident));
    EXPECT_EQ(source.stats().host.hits, 2u);
}

TEST(tiered_expert_source_faults, single_eio_is_retried_transparently) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 3}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    rs.control->fail_from.store(2);
    rs.control->fail_count.store(1);
    auto h = (*made)->acquire(ExpertId{2, 1}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    EXPECT_EQ((*made)->stats().host.read_errors, 1u);
    EXPECT_EQ(rs.control->reads.load(), 4u);
}

TEST(tiered_expert_source_faults, eintr_and_eagain_are_retried) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (int err : {EINTR, EAGAIN}) {
        reader_setup rs;
        auto made = make_source(m, {.slots = 3, .eio_retries = 0}, rs.make(m.path));
        ASSERT_TRUE(made) << made.error().message;
        rs.control->fail_errno.store(err);
        rs.control->fail_from.store(0);
        rs.control->fail_count.store(5);
        auto h = (*made)->acquire(ExpertId{0, 4}, device_id::host());
        ASSERT_TRUE(h) << h.error().message;
        EXPECT_TRUE(same_as_resident(*h, *m.resident));
        EXPECT_EQ((*made)->stats().host.read_errors, 0u);
    }
}

TEST(tiered_expert_source_faults, short_reads_give_the_right_bytes) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (std::uint32_t align : {1u, 512u}) {
        for (std::uint32_t cap : {1000u, 1536u, 5000u}) {
            SCOPED_TRACE(testing::Message() << "alignment " << align << ", reads of at most " << cap);
            reader_setup rs;
            auto made = make_source(m, {.slots = 3},
                                    rs.make(m.path, {.alignment = align, .queue_depth = 4, .max_read_bytes = cap}));
            ASSERT_TRUE(made) << made.error().message;
            churn_and_compare(**made, m, 3);
            EXPECT_EQ((*made)->stats().host.read_errors, 0u);
        }
    }
}

TEST(tiered_expert_source_faults, reads_that_make_no_progress_fail) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    // Reads of 100 bytes with an alignment of 512 can never get past the first block.
    auto made = make_source(m, {.slots = 3}, rs.make(m.path, {.alignment = 512, .max_read_bytes = 100}));
    ASSERT_TRUE(made) << made.error().message;
    auto h = (*made)->acquire(ExpertId{0, 0}, device_id::host());
    expect_error(h, {m.path, "reading expert 0/0", "made no progress"});
}

TEST(tiered_expert_source_faults, identity_change_fails_the_load) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    reader_setup rs;
    auto made = make_source(m, {.slots = 3}, rs.make(m.path));
    ASSERT_TRUE(made) << made.error().message;
    ASSERT_TRUE((*made)->acquire(ExpertId{0, 0}, device_id::host()));
    rs.control->change_identity.store(true);
    auto h = (*made)->acquire(ExpertId{0, 1}, device_id::host());
    expect_error(h, {m.path, "changed since it was opened", "expert 0/1"});
    EXPECT_EQ((*made)->stats().host.resident_experts, 1u);
    EXPECT_TRUE((*made)->file_health().broken);
    rs.control->change_identity.store(false);
    // The file at the path never changed: the second check (the first one saw it settle)
    // compares it with the model opened and the tier serves again.
    EXPECT_TRUE((*made)->check_file().broken);
    EXPECT_FALSE((*made)->check_file().broken);
    ASSERT_TRUE((*made)->acquire(ExpertId{0, 1}, device_id::host()));
}

// --- faults through fault_reader over the real block reader ---

// The real backend (io_uring or pread) wrapped in fault_reader; `raw` stays valid while the
// source owns the reader.
std::unique_ptr<block_reader> make_fault_reader(const std::string& path, fault_reader*& raw, bool uring = true) {
    auto inner = open_block_reader(block_reader_options{path, 16, uring, true, {}});
    EXPECT_TRUE(inner) << inner.error().message;
    if (!inner) return nullptr;
    auto made = fault_reader::create(std::move(inner).value());
    EXPECT_TRUE(made) << made.error().message;
    if (!made) return nullptr;
    raw = made->get();
    return std::move(made).value();
}

class tiered_fault_reader : public ::testing::TestWithParam<bool> {};  // param: io_uring allowed

TEST_P(tiered_fault_reader, eio_on_nth_read_fails_the_acquire_then_works_once_cleared) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    fault_reader* faults = nullptr;
    auto made = make_source(m, {.slots = 3, .eio_retries = 3}, make_fault_reader(m.path, faults, GetParam()));
    ASSERT_TRUE(made) << made.error().message;
    tiered_expert_source& source = **made;
    ASSERT_TRUE(source.acquire(ExpertId{0, 0}, device_id::host()));
    faults->fail_all_reads(EIO);
    auto h = source.acquire(ExpertId{2, 5}, device_id::host());
    expect_error(h, {m.path, "reading expert 2/5", "bytes at offset", "Input/output error after 3 retries"});
    EXPECT_GE(source.stats().host.read_errors, 4u);
    faults->clear_failures();
    h = source.acquire(ExpertId{2, 5}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    h->release();
    churn_and_compare(source, m, 3);
}

TEST_P(tiered_fault_reader, single_eio_is_retried_transparently) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    fault_reader* faults = nullptr;
    auto made = make_source(m, {.slots = 3}, make_fault_reader(m.path, faults, GetParam()));
    ASSERT_TRUE(made) << made.error().message;
    faults->fail_nth_read(faults->reads_accepted() + 1, EIO);
    auto h = (*made)->acquire(ExpertId{1, 4}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *m.resident));
    EXPECT_EQ(faults->reads_failed(), 1u);
    EXPECT_EQ((*made)->stats().host.read_errors, 1u);
}

TEST_P(tiered_fault_reader, short_reads_give_the_right_bytes) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    fault_reader* faults = nullptr;
    auto made = make_source(m, {.slots = 4}, make_fault_reader(m.path, faults, GetParam()));
    ASSERT_TRUE(made) << made.error().message;
    faults->set_short_reads(0.3);
    churn_and_compare(**made, m, 4);
    EXPECT_GT(faults->reads_shortened(), 0u);
    EXPECT_EQ((*made)->stats().host.read_errors, 0u);
}

TEST_P(tiered_fault_reader, replaced_file_fails_the_load) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    fault_reader* faults = nullptr;
    auto made = make_source(m, {.slots = 3}, make_fault_reader(m.path, faults, GetParam()));
    ASSERT_TRUE(made) << made.error().message;
    ASSERT_TRUE((*made)->acquire(ExpertId{0, 3}, device_id::host()));
    faults->set_file_replaced(true);
    expect_error((*made)->acquire(ExpertId{0, 4}, device_id::host()), {m.path, "changed since it was opened", "expert 0/4"});
    // Already resident experts stay usable: they were read before the change.
    ASSERT_TRUE((*made)->acquire(ExpertId{0, 3}, device_id::host()));
}

TEST_P(tiered_fault_reader, slow_disk_fills_latency_and_throughput) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    fault_reader* faults = nullptr;
    auto made = make_source(m, {.slots = 4}, make_fault_reader(m.path, faults, GetParam()));
    ASSERT_TRUE(made) << made.error().message;
    faults->set_latency(std::chrono::microseconds(200));
    faults->set_bandwidth_cap(64 << 20);
    churn_and_compare(**made, m, 4);
    const auto st = (*made)->stats();
    EXPECT_EQ(st.host.load_latency.count, st.host.misses);
    EXPECT_GT(st.host.load_latency.p50_us, 0.0);
    EXPECT_GT(st.host.read_seconds, 0.0);
    EXPECT_GT(st.host.read_bytes_per_s, 0.0);
}

INSTANTIATE_TEST_SUITE_P(backends, tiered_fault_reader, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "uring" : "pread"; });

// --- faults on a real file, through the real block reader ---

std::string copy_of(const std::string& path, const std::string& name) {
    const auto dst = test::temp_dir() / name;
    std::filesystem::copy_file(path, dst, std::filesystem::copy_options::overwrite_existing);
    return dst.string();
}

TEST(tiered_expert_source_faults, truncated_file_is_an_error_naming_expert_and_file) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    model_fixture copy;
    copy.path = copy_of(m.path, "truncated.gguf");
    copy.layout = m.layout;
    auto made = make_source(copy, {.slots = 3});
    ASSERT_TRUE(made) << made.error().message;
    // Cut the file in the middle of the last layer's down experts.
    const auto& last = m.layout.layers.back();
    const std::uint64_t cut = last.down_offset + last.down_bytes * 3 + 100;
    ASSERT_EQ(::truncate(copy.path.c_str(), static_cast<off_t>(cut)), 0);
    const std::uint32_t l = m.layout.n_layer - 1;
    auto h = (*made)->acquire(ExpertId{l, 6}, device_id::host());
    expect_error(h, {copy.path, "reading expert 2/6", "truncated"});
    // An expert wholly before the cut is not read either: the file is no longer the one opened.
    h = (*made)->acquire(ExpertId{0, 0}, device_id::host());
    expect_error(h, {copy.path, "shortened since it was opened", "expert 0/0 is not in host memory"});
    EXPECT_EQ((*made)->stats().host.resident_experts, 0u);
}

TEST(tiered_expert_source_faults, file_changed_in_place_is_detected) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    model_fixture copy;
    copy.path = copy_of(m.path, "changed.gguf");
    copy.layout = m.layout;
    auto made = make_source(copy, {.slots = 3});
    ASSERT_TRUE(made) << made.error().message;
    ASSERT_TRUE((*made)->acquire(ExpertId{1, 1}, device_id::host()));
    // A new modification time, as a rewrite would give.
    const timespec times[2] = {{0, UTIME_OMIT}, {12345, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, copy.path.c_str(), times, 0), 0);
    expect_error((*made)->acquire(ExpertId{1, 2}, device_id::host()), {copy.path, "changed since it was opened"});
}

TEST(tiered_expert_source_faults, layout_past_the_end_of_the_file_is_refused) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    expert_layout bad = m.layout;
    bad.layers[1].up_offset = std::uint64_t{1} << 40;
    tiered_options o;
    o.lock = memory_lock::off;
    o.host_budget_bytes = tiered_slot_bytes(bad, page) * 2;
    auto r = tiered_expert_source::create(m.path, bad, o);
    expect_error(r, {m.path, "layer 1 up experts", "past the end of the file"});
}

// --- the model file changed while serving: broken, then the same model again ---

// Writes `bytes` over the file in place (same inode, as cp does) and gives it a new mtime.
void write_in_place(const std::string& path, const std::vector<char>& bytes, std::int64_t mtime_s) {
    {
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        ASSERT_TRUE(out.good());
    }
    const timespec times[2] = {{0, UTIME_OMIT}, {mtime_s, 0}};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

std::vector<char> file_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

struct changed_file_case {
    model_fixture original;
    model_fixture copy;
    std::vector<char> bytes;
    std::unique_ptr<tiered_expert_source> source;
};

// Four slots, the header compared as the engine sets it, and the given check interval.
tiered_options file_change_options(const changed_file_case& c, std::chrono::milliseconds check_interval) {
    tiered_options o;
    o.host_budget_bytes = tiered_slot_bytes(c.copy.layout, page) * 4;
    o.lock = memory_lock::off;
    o.file_check_interval = check_interval;
    o.header_bytes = c.original.file->data_offset();
    return o;
}

changed_file_case make_changed_file_case(const std::string& name) {
    changed_file_case c;
    c.original = load_model("Q8_0", skewed_shape());
    c.copy.path = copy_of(c.original.path, name);
    c.copy.layout = c.original.layout;
    c.bytes = file_bytes(c.copy.path);
    // No checker thread: the tests call check_file() themselves.
    auto made = tiered_expert_source::create(c.copy.path, c.copy.layout,
                                             file_change_options(c, std::chrono::milliseconds(0)));
    EXPECT_TRUE(made) << made.error().message;
    if (made) c.source = std::move(made).value();
    return c;
}

TEST(tiered_file_change, identical_bytes_copied_over_break_then_recover) {
    changed_file_case c = make_changed_file_case("same-bytes.gguf");
    ASSERT_TRUE(c.source && c.original.resident);
    tiered_expert_source& source = *c.source;
    ASSERT_TRUE(source.acquire(ExpertId{1, 1}, device_id::host()));
    EXPECT_FALSE(source.check_file().broken);

    write_in_place(c.copy.path, c.bytes, 1000);
    const tier_file_health broken = source.check_file();
    ASSERT_TRUE(broken.broken);
    EXPECT_NE(broken.error.find("changed since it was opened"), std::string::npos) << broken.error;
    EXPECT_EQ(broken.breaks, 1u);
    // What needs the file fails at once and says why; what is in memory still serves.
    expect_error(source.acquire(ExpertId{1, 2}, device_id::host()), {c.copy.path, "changed since it was opened", "expert 1/2"});
    auto resident = source.acquire(ExpertId{1, 1}, device_id::host());
    ASSERT_TRUE(resident) << resident.error().message;
    EXPECT_TRUE(same_as_resident(*resident, *c.original.resident));
    resident->release();

    // The first check sees the file settle, the second compares it and trusts it again.
    EXPECT_TRUE(source.check_file().broken);
    const tier_file_health healthy = source.check_file();
    EXPECT_FALSE(healthy.broken) << healthy.error;
    EXPECT_EQ(healthy.recoveries, 1u);
    auto h = source.acquire(ExpertId{1, 2}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_TRUE(same_as_resident(*h, *c.original.resident));
    h->release();
    churn_and_compare(source, c.original, 3);
    EXPECT_FALSE(source.file_health().broken);
}

TEST(tiered_file_change, truncated_file_breaks_until_restored) {
    changed_file_case c = make_changed_file_case("cut-and-restored.gguf");
    ASSERT_TRUE(c.source && c.original.resident);
    tiered_expert_source& source = *c.source;
    ASSERT_TRUE(source.acquire(ExpertId{0, 0}, device_id::host()));
    ASSERT_EQ(::truncate(c.copy.path.c_str(), 4096), 0);
    // Found by the read that meets the end of the file, without any check.
    expect_error(source.acquire(ExpertId{2, 7}, device_id::host()), {c.copy.path, "expert 2/7"});
    EXPECT_TRUE(source.file_health().broken);
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(source.check_file().broken);  // a short file is never the model
    expect_error(source.acquire(ExpertId{2, 6}, device_id::host()), {c.copy.path, "not in host memory"});

    write_in_place(c.copy.path, c.bytes, 2000);
    EXPECT_TRUE(source.check_file().broken);
    EXPECT_FALSE(source.check_file().broken);
    churn_and_compare(source, c.original, 4);
}

TEST(tiered_file_change, another_model_of_the_same_shape_is_never_trusted) {
    changed_file_case c = make_changed_file_case("other-model.gguf");
    ASSERT_TRUE(c.source && c.original.resident);
    tiered_expert_source& source = *c.source;
    // Expert 1/4's gate lies in the middle of its stacked tensor, outside the head and tail
    // samples: only the comparison with the resident copy can tell it changed.
    auto held = source.acquire(ExpertId{1, 4}, device_id::host());
    ASSERT_TRUE(held) << held.error().message;
    held->release();
    std::vector<char> other = c.bytes;
    const auto& lt = c.copy.layout.layers[1];
    const std::uint64_t at = lt.gate_offset + lt.gate_bytes * 4 + lt.gate_bytes / 2;
    ASSERT_GT(at, lt.gate_offset + (16u << 10));
    ASSERT_LT(at + (16u << 10), lt.gate_offset + lt.gate_bytes * 8);
    other[at] = static_cast<char>(other[at] ^ 0x5a);
    write_in_place(c.copy.path, other, 3000);
    for (int k = 0; k < 4; ++k) EXPECT_TRUE(source.check_file().broken);
    expect_error(source.acquire(ExpertId{0, 3}, device_id::host()), {c.copy.path, "changed since it was opened"});

    // Another header (one metadata byte) is refused as well.
    std::vector<char> header_changed = c.bytes;
    header_changed[40] = static_cast<char>(header_changed[40] ^ 1);
    write_in_place(c.copy.path, header_changed, 4000);
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(source.check_file().broken);

    write_in_place(c.copy.path, c.bytes, 5000);
    EXPECT_TRUE(source.check_file().broken);
    EXPECT_FALSE(source.check_file().broken);
    churn_and_compare(source, c.original, 2);
}

TEST(tiered_file_change, the_model_renamed_back_over_a_cut_file_is_reopened) {
    changed_file_case c = make_changed_file_case("renamed-back.gguf");
    ASSERT_TRUE(c.source && c.original.resident);
    tiered_expert_source& source = *c.source;
    ASSERT_TRUE(source.acquire(ExpertId{2, 2}, device_id::host()));
    ASSERT_EQ(::truncate(c.copy.path.c_str(), 100), 0);
    EXPECT_TRUE(source.check_file().broken);
    // The open file stays cut; a good copy renamed over the path is another inode.
    const std::string fresh = copy_of(c.original.path, "renamed-back.gguf.new");
    ASSERT_EQ(::rename(fresh.c_str(), c.copy.path.c_str()), 0);
    EXPECT_TRUE(source.check_file().broken);
    const tier_file_health healthy = source.check_file();
    EXPECT_FALSE(healthy.broken) << healthy.error;
    churn_and_compare(source, c.original, 4);
}

TEST(tiered_file_change, a_file_renamed_over_the_path_changes_nothing) {
    changed_file_case c = make_changed_file_case("renamed-over.gguf");
    ASSERT_TRUE(c.source && c.original.resident);
    tiered_expert_source& source = *c.source;
    // The open file keeps the model served; what now sits at the path is not read.
    const std::string other = (test::temp_dir() / "renamed-over.gguf.other").string();
    {
        std::ofstream out(other, std::ios::binary);
        out << "not a model";
    }
    ASSERT_EQ(::rename(other.c_str(), c.copy.path.c_str()), 0);
    EXPECT_FALSE(source.check_file().broken);
    churn_and_compare(source, c.original, 4);
    EXPECT_FALSE(source.check_file().broken);
}

TEST(tiered_file_change, the_checker_thread_finds_a_change_without_any_read) {
    changed_file_case c = make_changed_file_case("checker-thread.gguf");
    ASSERT_TRUE(c.source);
    c.source.reset();
    auto made = tiered_expert_source::create(c.copy.path, c.copy.layout,
                                             file_change_options(c, std::chrono::milliseconds(5)));
    ASSERT_TRUE(made) << made.error().message;
    ASSERT_EQ(::truncate(c.copy.path.c_str(), 4096), 0);
    EXPECT_TRUE(eventually([&] { return (*made)->file_health().broken; }));
    write_in_place(c.copy.path, c.bytes, 6000);
    EXPECT_TRUE(eventually([&] { return !(*made)->file_health().broken; }));
    EXPECT_EQ((*made)->file_health().recoveries, 1u);
}

}  // namespace
}  // namespace moed::storage
