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

}  // namespace
}  // namespace moed::storage
