// The prefetch gate weighs a prefetch's expected benefit (the wait a used one saves) against
// its expected cost (the link time a wasted one takes from demand reads), from the figures
// the tier measured. Checked here on hand-made figures: nothing measured gives the fallback;
// a busier link, a larger expert or a measured waste above the promised one raise the
// probability needed; an expert that cannot arrive before it is needed is never worth it;
// the bandwidth share is what demand reads leave idle; the back-off relaxes when nothing is
// issued.
#include <gtest/gtest.h>

#include "scheduler/prefetch_gate.h"

namespace moed::scheduler {
namespace {

// A link of 1 GB/s with 200 us per load, layers of 500 us, experts of 100 kB (100 us of
// transfer), after `layers` layers with `demand` demand loads, `issued` prefetch loads of
// which `wasted` were wasted.
link_figures figures(std::uint64_t layers, std::uint64_t demand, std::uint64_t issued = 0, std::uint64_t wasted = 0) {
    link_figures f;
    f.bytes_per_s = 1e9;
    f.load_latency_us = 200.0;
    f.layer_compute_us = 500.0;
    f.expert_bytes = 100e3;
    f.layers_computed = layers;
    f.demand_loads = demand;
    f.prefetch_loads = issued;
    f.prefetch_wasted = wasted;
    return f;
}

// The cost model alone: a low floor, so the thresholds it computes show.
prefetch_gate_options small_window() {
    prefetch_gate_options o;
    o.window_layers = 10;
    o.floor = 0.05f;
    return o;
}

TEST(prefetch_gate, by_default_an_expert_must_be_likelier_used_than_not) {
    prefetch_gate g;
    g.update(figures(1000, 0));
    g.update(figures(2000, 0));  // an idle link: no demand loads
    ASSERT_TRUE(g.measured());
    EXPECT_FLOAT_EQ(g.threshold(100000, 1), 0.5f);  // an idle link alone would take far less
}

TEST(prefetch_gate, falls_back_until_the_link_is_measured) {
    prefetch_gate g(small_window());
    EXPECT_FALSE(g.measured());
    EXPECT_FLOAT_EQ(g.threshold(100000, 1), 0.5f);
    EXPECT_EQ(g.inflight_budget(2), 0u);
    link_figures none;  // no loads, no timed layers
    g.update(none);
    EXPECT_FALSE(g.measured());
    EXPECT_FLOAT_EQ(g.threshold(100000, 1), 0.5f);
}

TEST(prefetch_gate, a_busier_link_needs_a_likelier_expert) {
    prefetch_gate idle(small_window()), busy(small_window());
    idle.update(figures(0, 0));
    busy.update(figures(0, 0));
    idle.update(figures(10, 0));   // no demand reads over 10 layers
    busy.update(figures(10, 60));  // 6 per layer: 600 us of link per 500 us layer
    ASSERT_TRUE(idle.measured());
    EXPECT_LT(idle.busy(), 0.01);
    EXPECT_DOUBLE_EQ(busy.busy(), 1.0);  // more than the link can do, counted as all of it
    EXPECT_LT(idle.threshold(100000, 1), busy.threshold(100000, 1));
    // Idle: only idle_cost's share of a wasted read costs. 100 kB: 10 us against 200 us saved,
    // below the floor; 400 kB: 40 us against 500 us (200 us latency + 300 us more transfer).
    EXPECT_FLOAT_EQ(idle.threshold(100000, 1), 0.05f);
    EXPECT_NEAR(idle.threshold(400000, 1), 40.0 / 540.0, 1e-4);
    // A larger expert costs more link time for the same saving.
    EXPECT_LT(busy.threshold(100000, 1), busy.threshold(400000, 1));
    // What demand leaves idle is the prefetches' share of the link.
    EXPECT_GT(idle.inflight_budget(2), busy.inflight_budget(2));
    EXPECT_NEAR(static_cast<double>(idle.inflight_budget(2)), 1e9 * 500e-6 * 2, 1e9 * 500e-6 * 2 * 0.02);
    EXPECT_GE(busy.inflight_budget(2), 100000u);  // at least one expert
}

TEST(prefetch_gate, an_expert_that_cannot_arrive_in_time_is_never_worth_it) {
    prefetch_gate g(small_window());
    link_figures f = figures(0, 0);
    f.inflight_bytes = 2'000'000;  // 2 ms of reads queued ahead of it
    g.update(f);
    f.layers_computed = 10;
    g.update(f);
    // Needed after attention of the coming layer (0.3 x 500 us): behind 2 ms of queue the
    // saved wait is nothing.
    EXPECT_GT(g.threshold(100000, 0), 1.0f);
    EXPECT_FALSE(g.worth(1.0f, 100000, 0));
    // Ten layers away it has the time.
    EXPECT_LT(g.threshold(100000, 10), 0.2f);
}

TEST(prefetch_gate, waste_above_the_promise_backs_off_and_relaxes_when_idle) {
    prefetch_gate g(small_window());
    g.update(figures(0, 10));
    g.update(figures(10, 20));
    const float before = g.threshold(100000, 1);
    EXPECT_DOUBLE_EQ(g.waste_factor(), 1.0);
    // The planner promised 90% use; 80% of 20 loads were wasted.
    g.note_requested(18.0, 20);
    g.update(figures(20, 30, 20, 16));
    EXPECT_GT(g.waste_factor(), 2.0);
    const float after = g.threshold(100000, 1);
    EXPECT_GT(after, before);
    // Waste as promised: the factor falls back towards 1.
    g.note_requested(10.0, 20);
    g.update(figures(30, 40, 40, 26));
    EXPECT_LT(g.waste_factor(), 5.0);
    const double high = g.waste_factor();
    // Nothing issued for a window: it relaxes so prefetching gets tried again.
    g.update(figures(40, 50, 40, 26));
    EXPECT_LT(g.waste_factor(), high);
    EXPECT_GE(g.waste_factor(), 1.0);
}

}  // namespace
}  // namespace moed::scheduler
