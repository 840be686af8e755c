// tier_core: a tier's decisions driven by hand, with no thread, lock or clock of its own: a
// recording mover stands for the I/O (the test ends each load itself) and a manual clock
// for time. What the threaded host tier adds on top (waits, the file's health) is tested in
// tiered_expert_source_test and tiered_concurrency_test.
//
// Checks: a demand miss queues one load and asks for a submit; pinning a resident expert is
// a hit and a loading one a miss; a load's latency and the link's figures follow the
// injected clock; the layer clock leaves I/O wait out of compute; reuse is measured by age
// (an expert used every token keeps a high need, one used once decays to what the trace
// shows) and a prefetch does not replace an expert whose chance of use beats its score.
// Slot classes (layers of two expert sizes): loads of one class's experts, demand or
// prefetch, never evict the other class's; every expert sits in a slot of its layer's class;
// at a quarter of the bytes every expert needs, more experts are resident than slots sized
// for the largest expert would hold; the hot set takes slots of each member's own class.
#include <gtest/gtest.h>

#include <vector>

#include "storage/tier_core.h"

namespace moed::storage {
namespace {

using namespace std::chrono_literals;

class recording_mover final : public mover {
public:
    std::vector<std::pair<std::uint32_t, ExpertId>> queued;
    void queue(std::uint32_t slot, ExpertId id) override { queued.emplace_back(slot, id); }
    void submit() noexcept override {}
    std::size_t reap(std::span<move_result>, bool) override { return 0; }
    void stop() noexcept override {}
    bool drained() const noexcept override { return true; }
    std::size_t loads_in_flight() const noexcept override { return queued.size(); }
};

constexpr std::uint32_t n_layer = 2, n_expert = 8;
constexpr std::size_t expert_bytes = 1000;

struct fixture {
    recording_mover mover;
    tier_core::time_point now{};
    tier_core core;
    explicit fixture(std::uint32_t slots, bool ring = false) {
        expert_layout layout;
        layout.n_layer = n_layer;
        layout.n_expert = n_expert;
        layout.layers.resize(n_layer);
        for (auto& l : layout.layers) l.gate_bytes = expert_bytes;
        tiered_options o;
        o.ring = ring;
        core.reset(layout, o, slots, &mover, [this] { return now; });
    }
    // Ends every queued load successfully, `after` from now.
    void finish_loads(std::chrono::microseconds after = 100us) {
        now += after;
        for (auto [slot, id] : mover.queued) core.load_ended(slot, true, {}, expert_bytes, 0);
        mover.queued.clear();
        core.after_loads();
    }
    // One pass of `layer` using `experts` (loads finished at once), released after.
    void use(std::uint32_t layer, std::vector<std::uint32_t> experts) {
        core.begin_layer(layer, 1);
        core.set_current_layer(layer);
        std::vector<std::uint32_t> slots;
        for (std::uint32_t e : experts) {
            std::uint32_t s = core.pin_present(ExpertId{layer, e});
            if (s == slot_table::no_slot) s = core.start_demand(ExpertId{layer, e});
            EXPECT_NE(s, slot_table::no_slot);
            slots.push_back(s);
        }
        (void)core.take_submit();
        finish_loads();
        for (std::size_t i = 0; i < experts.size(); ++i) core.release(ExpertId{layer, experts[i]}, slots[i]);
        core.end_layer(layer);
    }
};

TEST(tier_core, a_demand_miss_queues_one_load_then_hits) {
    fixture f(4);
    f.core.set_current_layer(0);
    const std::uint32_t s = f.core.start_demand(ExpertId{0, 3});
    ASSERT_NE(s, slot_table::no_slot);
    EXPECT_TRUE(f.core.take_submit());
    EXPECT_FALSE(f.core.take_submit());
    ASSERT_EQ(f.mover.queued.size(), 1u);
    EXPECT_EQ(f.mover.queued[0].second.expert, 3u);
    // Another acquirer joins the load: a miss that waits, not a second read.
    EXPECT_EQ(f.core.pin_present(ExpertId{0, 3}), s);
    EXPECT_EQ(f.core.counters().misses, 2u);
    EXPECT_EQ(f.core.counters().demand_misses, 1u);
    f.finish_loads(250us);
    f.core.release(ExpertId{0, 3}, s);
    f.core.release(ExpertId{0, 3}, s);
    EXPECT_EQ(f.core.pin_present(ExpertId{0, 3}), s);
    EXPECT_EQ(f.core.counters().hits, 1u);
    EXPECT_EQ(f.core.counters().bytes_read, expert_bytes);
    EXPECT_NEAR(f.core.counters().latency_mean_us(), 250.0, 1e-6);  // the injected clock
}

TEST(tier_core, the_layer_clock_leaves_io_wait_out) {
    fixture f(4);
    f.core.begin_layer(0, 1);
    f.now += 900us;
    f.core.counters().add_io_wait(400'000);  // 400 us of it waited for reads
    f.core.end_layer(0);
    EXPECT_EQ(f.core.counters().layers_computed, 1u);
    EXPECT_NEAR(f.core.link().layer_compute_us, 500.0, 1e-6);  // the first layer sets the mean
}

TEST(tier_core, reuse_is_measured_by_age) {
    fixture f(8);
    // Layer 0: expert 0 every token, experts 1.. each once (never again).
    for (std::uint32_t t = 0; t < 120; ++t) {
        f.use(0, {0, 1 + t % 7});
        f.use(1, {0});
    }
    // A prefetch of score 0.6 for layer 0 may replace an expert used once, long ago (its
    // measured reuse is low), never expert 0, used on every pass (reuse 1).
    f.core.begin_layer(1, 1);
    const prefetch_request r{ExpertId{0, 7}, prefetch_class::near, 0.6f};
    std::vector<prefetch_request> rs = {r};
    // Slots hold experts 0, 1..7 of layer 0 (some) and 0 of layer 1; expert 7 may be resident
    // already: ask for one that is not.
    for (std::uint32_t e = 1; e < n_expert; ++e) {
        if (f.core.slots().find(ExpertId{0, e}) == slot_table::no_slot) rs[0].id = ExpertId{0, e};
    }
    f.core.prefetch(rs);
    ASSERT_EQ(f.mover.queued.size(), 1u) << "a slot of low reuse was replaced";
    EXPECT_NE(f.core.slots().find(ExpertId{0, 0}), slot_table::no_slot) << "the expert used every pass stays";
    EXPECT_NE(f.core.slots().find(ExpertId{1, 0}), slot_table::no_slot);
}

TEST(tier_core, a_prefetch_does_not_replace_what_is_likelier_used) {
    fixture f(3);
    // Both layers use the same experts every token: reuse at age 1 is 1.
    for (int t = 0; t < 100; ++t) {
        f.use(0, {0});
        f.use(1, {0, 1});
    }
    f.core.begin_layer(1, 1);
    const std::vector<prefetch_request> rs = {{ExpertId{0, 5}, prefetch_class::near, 0.9f}};
    f.core.prefetch(rs);
    EXPECT_TRUE(f.mover.queued.empty()) << "every resident expert is used on every pass";
    EXPECT_EQ(f.core.slots().find(ExpertId{0, 5}), slot_table::no_slot);
}

// Four layers, experts of layers 0 and 2 in slots of one page, of layers 1 and 3 in slots of
// three (a mix as Q4_K_M's: some layers' ffn_down in a wider type).
struct class_fixture {
    static constexpr std::uint32_t layers = 4, experts = 8;
    static constexpr std::uint64_t small_slot = 4096, big_slot = 12288;
    recording_mover mover;
    tier_core::time_point now{};
    tier_core core;
    slot_classes classes;
    std::uint64_t budget = 0;
    explicit class_fixture(bool ring) {
        expert_layout layout;
        layout.n_layer = layers;
        layout.n_expert = experts;
        layout.layers.resize(layers);
        std::vector<std::uint64_t> slot_bytes;
        for (std::uint32_t l = 0; l < layers; ++l) {
            layout.layers[l].gate_bytes = l % 2 == 0 ? 3000 : 10000;
            slot_bytes.push_back(l % 2 == 0 ? small_slot : big_slot);
        }
        // A quarter of what every expert needs.
        budget = (2 * experts * small_slot + 2 * experts * big_slot) / 4;
        auto planned = plan_slot_classes(slot_bytes, experts, budget, 1);
        EXPECT_TRUE(planned) << planned.error().message;
        if (planned) classes = std::move(planned).value();
        tiered_options o;
        o.ring = ring;
        o.slots_per_layer = 2;
        core.reset(layout, o, classes, &mover, [this] { return now; });
    }
    void finish_loads() {
        now += 100us;
        for (auto [slot, id] : mover.queued) core.load_ended(slot, true, {}, 1, 0);
        mover.queued.clear();
        core.after_loads();
    }
    void use(std::uint32_t layer, const std::vector<std::uint32_t>& ids) {
        core.begin_layer(layer, 1);
        core.set_current_layer(layer);
        std::vector<std::uint32_t> slots;
        for (std::uint32_t e : ids) {
            std::uint32_t s = core.pin_present(ExpertId{layer, e});
            if (s == slot_table::no_slot) s = core.start_demand(ExpertId{layer, e});
            ASSERT_NE(s, slot_table::no_slot);
            slots.push_back(s);
        }
        (void)core.take_submit();
        finish_loads();
        for (std::size_t i = 0; i < ids.size(); ++i) core.release(ExpertId{layer, ids[i]}, slots[i]);
        core.end_layer(layer);
    }
    bool resident(std::uint32_t layer, std::uint32_t e) const {
        const std::uint32_t s = core.slots().find(ExpertId{layer, e});
        return s != slot_table::no_slot && core.slots().holds_bytes(s);
    }
    // Every resident expert lies in a slot of its layer's class.
    void expect_classes_kept() const {
        for (std::uint32_t s = 0; s < core.n_slots(); ++s) {
            const slot_entry& e = core.slots()[s];
            if (e.state == slot_state::free) continue;
            EXPECT_EQ(classes.class_of_slot(s), classes.class_of_layer(e.id.layer))
                << "slot " << s << " holds " << e.id.layer << "/" << e.id.expert;
        }
    }
};

TEST(tier_core, loads_of_one_slot_class_never_evict_the_other) {
    for (bool ring : {false, true}) {
        SCOPED_TRACE(ring ? "ring" : "one section per class");
        class_fixture f(ring);
        ASSERT_EQ(f.classes.n_classes(), 2u);
        EXPECT_LE(f.classes.bytes(), f.budget);
        // The big layers' experts: as many as their class holds.
        const std::uint32_t big = f.classes[1].n_slots, small = f.classes[0].n_slots;
        ASSERT_GE(big, 2u);
        ASSERT_GE(small, 2u);
        std::vector<std::uint32_t> big_ids;
        for (std::uint32_t e = 0; e < big; ++e) big_ids.push_back(e);
        f.use(1, {big_ids.begin(), big_ids.begin() + big / 2});
        f.use(3, {big_ids.begin(), big_ids.begin() + (big - big / 2)});
        // Many passes over every expert of the small layers, each layer's experts one after
        // another in one pass of it, so its class's slots all end up guarded for the layer
        // computed now while the other class's are merely reclaimable: they evict one
        // another only.
        for (int round = 0; round < 4; ++round) {
            for (std::uint32_t l : {0u, 2u}) {
                for (std::uint32_t e = 0; e < class_fixture::experts; ++e) f.use(l, {e});
            }
        }
        for (std::uint32_t e = 0; e < big / 2; ++e) EXPECT_TRUE(f.resident(1, e)) << "1/" << e;
        for (std::uint32_t e = 0; e < big - big / 2; ++e) EXPECT_TRUE(f.resident(3, e)) << "3/" << e;
        f.expect_classes_kept();
        // And the other way round: the big layers' turn.
        std::vector<std::pair<std::uint32_t, std::uint32_t>> small_resident;
        for (std::uint32_t l : {0u, 2u}) {
            for (std::uint32_t e = 0; e < class_fixture::experts; ++e) {
                if (f.resident(l, e)) small_resident.emplace_back(l, e);
            }
        }
        EXPECT_EQ(small_resident.size(), small);
        for (int round = 0; round < 4; ++round) {
            for (std::uint32_t l : {1u, 3u}) {
                for (std::uint32_t e = 0; e < class_fixture::experts; ++e) f.use(l, {e});
            }
        }
        for (auto [l, e] : small_resident) EXPECT_TRUE(f.resident(l, e)) << l << "/" << e;
        f.expect_classes_kept();
        // A prefetch of a big expert takes a big slot too (replacing nothing of the small).
        const std::vector<prefetch_request> pf = {{ExpertId{1, 7}, prefetch_class::near, 1.0f}};
        f.core.prefetch(pf);
        f.finish_loads();
        for (auto [l, e] : small_resident) EXPECT_TRUE(f.resident(l, e)) << l << "/" << e;
        f.expect_classes_kept();
        // Every slot is full; at a quarter of the bytes, more experts are resident than slots
        // of the largest size would hold.
        EXPECT_EQ(f.core.slots().resident_experts(), f.classes.n_slots());
        EXPECT_GT(f.core.slots().resident_experts(), f.budget / class_fixture::big_slot);
        expert_cache_stats st;
        std::vector<std::uint32_t> samples;
        f.core.fill(st, samples);
        EXPECT_EQ(st.host.capacity_experts, f.classes.n_slots());
        EXPECT_EQ(st.host.capacity_bytes, f.classes.bytes());
    }
}

TEST(tier_core, the_hot_set_takes_slots_of_each_members_class) {
    class_fixture f(true);
    const std::vector<ExpertId> hot = {{1, 0}, {0, 0}, {2, 1}, {3, 2}};
    const std::uint32_t pinned = f.core.set_hot_set(hot);
    EXPECT_GT(pinned, 0u);
    f.finish_loads();
    for (std::uint32_t s : f.core.ring().hot_members()) {
        const slot_entry& e = f.core.slots()[s];
        if (e.state == slot_state::free) continue;
        EXPECT_EQ(f.classes.class_of_slot(s), f.classes.class_of_layer(e.id.layer));
    }
    // Each class keeps at least one ring slot, and every section lies inside one class.
    for (std::uint32_t c = 0; c < f.classes.n_classes(); ++c) {
        EXPECT_LT(f.core.ring().hot_members_of_class(c).size(), f.classes[c].n_slots);
    }
    for (std::uint32_t sec = 0; sec < f.core.ring().n_sections(); ++sec) {
        const auto members = f.core.ring().section_members(sec);
        ASSERT_FALSE(members.empty());
        for (std::uint32_t s : members) EXPECT_EQ(f.classes.class_of_slot(s), f.classes.class_of_slot(members[0]));
    }
    f.expect_classes_kept();
}

}  // namespace
}  // namespace moed::storage
