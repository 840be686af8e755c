// tier_replay: the daemon's planner and tier core played over a trace on a simulated clock
// and link. Small random traces with a truthful lookahead (row d holds the experts layer
// l + d will choose) are built here, so what prefetching can gain is known.
//
// Checks: the replay is deterministic; a cache that holds every expert misses each expert
// once (cold) and reads exactly those bytes; a truthful lookahead with prefetch on cuts
// demand misses against prefetch off; a slower link makes the engine wait longer for the
// same loads; decode and engine order agree for one sequence decoded token by token; and a
// cache too small for one layer's experts is an error naming the slots.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include "scheduler/tier_replay.h"
#include "tests/scheduler/synthetic_trace.h"

namespace moed::scheduler {
namespace {

constexpr std::uint32_t n_layer = 4, n_expert = 16, k = 2;
constexpr std::uint64_t expert_bytes = 1 << 20;

// `tokens` tokens of random routing (k distinct experts per layer; the previous token's
// experts again with probability `reuse`), and a lookahead of depth 2 that tells the truth.
trace_data make(std::uint32_t tokens, double reuse, unsigned seed) {
    std::mt19937 rng(seed);
    test::routing steps(tokens, std::vector<std::vector<std::int32_t>>(n_layer));
    for (std::uint32_t t = 0; t < tokens; ++t) {
        for (std::uint32_t l = 0; l < n_layer; ++l) {
            auto& c = steps[t][l];
            while (c.size() < k) {
                std::int32_t e = static_cast<std::int32_t>(rng() % n_expert);
                if (t > 0 && std::uniform_real_distribution<double>(0, 1)(rng) < reuse) {
                    e = steps[t - 1][l][c.size()];
                }
                if (std::find(c.begin(), c.end(), e) == c.end()) c.push_back(e);
            }
        }
    }
    trace_data tr = test::make_trace(n_layer, n_expert, k, steps);
    tr.info.lookahead_depth = 2;
    tr.info.expert_bytes.assign(n_layer, expert_bytes);
    for (std::size_t i = 0; i < tr.records.size(); ++i) {
        trace_record& r = tr.records[i];
        r.lookahead.assign(2 * n_expert, 0.0f);
        for (std::uint32_t d = 0; d < 2 && r.layer + d < n_layer; ++d) {
            for (std::int32_t e : tr.records[i + d].chosen) r.lookahead[d * n_expert + static_cast<std::uint32_t>(e)] = 0.5f;
        }
    }
    return tr;
}

tier_replay_options options(std::uint32_t slots, bool prefetch) {
    tier_replay_options o;
    o.slots = slots;
    o.prefetch = prefetch;
    o.link = simulated_link{1e9, 50.0};  // 1 MiB in about 1 ms
    o.layer_compute_us = 2000.0;
    return o;
}

// make()'s routing with no reuse (so history says little), and lookahead rows that put
// `truth_mass` on the experts the target layer will choose (below 0.5: on random experts
// instead, a lying router).
trace_data lookahead_trace(std::uint32_t n_tokens, float truth_mass, std::uint32_t seed) {
    trace_data t = make(n_tokens, 0.0, seed);
    std::mt19937 rng(seed + 1);
    std::uniform_int_distribution<std::int32_t> any(0, n_expert - 1);
    for (std::size_t i = 0; i < t.records.size(); ++i) {
        trace_record& r = t.records[i];
        for (std::uint32_t d = 0; d < t.info.lookahead_depth; ++d) {
            if (r.layer + d >= n_layer) continue;
            float* row = r.lookahead.data() + d * n_expert;
            for (std::uint32_t e = 0; e < n_expert; ++e) row[e] = (1.0f - truth_mass) / n_expert;
            for (std::int32_t e : t.records[i + d].chosen) {
                const std::int32_t where = truth_mass >= 0.5f ? e : any(rng);
                row[where] += std::abs(truth_mass) / k;
            }
        }
    }
    return t;
}

TEST(tier_replay, a_lying_lookahead_is_learned_and_costs_little) {
    // The planner calibrates each rank's probability by what the router then chose: a
    // lookahead that lies earns low scores, so few prefetches go out and bytes stay near
    // what demand alone reads.
    const trace_data lie = lookahead_trace(400, 0.4f, 7);
    tier_replay_options o = options(32, true);
    o.link.bytes_per_s = 1e12;  // loads arrive in time: what counts is how many
    auto on = replay_through_tier(lie, o);
    o.prefetch = false;
    auto off = replay_through_tier(lie, o);
    ASSERT_TRUE(on.has_value()) << on.error().message;
    ASSERT_TRUE(off.has_value());
    EXPECT_LT(on->prefetch_loads, on->accesses / 10) << on->prefetch_loads << " of " << on->accesses;
    EXPECT_LT(on->bytes_read, off->bytes_read * 11 / 10);
    // The truth: most misses go.
    const trace_data truth = lookahead_trace(400, 0.9f, 7);
    o.prefetch = true;
    auto t_on = replay_through_tier(truth, o);
    o.prefetch = false;
    auto t_off = replay_through_tier(truth, o);
    ASSERT_TRUE(t_on.has_value());
    ASSERT_TRUE(t_off.has_value());
    EXPECT_LT(t_on->demand_misses * 4, t_off->demand_misses);
}

TEST(tier_replay, is_deterministic) {
    const trace_data tr = make(80, 0.4, 1);
    auto a = replay_through_tier(tr, options(12, true));
    auto b = replay_through_tier(tr, options(12, true));
    ASSERT_TRUE(a.has_value()) << a.error().message;
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(a->demand_misses, b->demand_misses);
    EXPECT_EQ(a->bytes_read, b->bytes_read);
    EXPECT_EQ(a->prefetch_loads, b->prefetch_loads);
    EXPECT_DOUBLE_EQ(a->simulated_s, b->simulated_s);
}

TEST(tier_replay, a_cache_of_every_expert_misses_each_once) {
    const trace_data tr = make(60, 0.0, 2);
    std::set<std::pair<std::uint32_t, std::int32_t>> distinct;
    for (const trace_record& r : tr.records) {
        for (std::int32_t e : r.chosen) distinct.insert({r.layer, e});
    }
    auto r = replay_through_tier(tr, options(n_layer * n_expert, false));
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(r->demand_misses, distinct.size());
    EXPECT_EQ(r->bytes_read, distinct.size() * expert_bytes);
    EXPECT_EQ(r->accesses, tr.records.size() * k);
    EXPECT_EQ(r->steps, tr.records.size());
    EXPECT_EQ(r->prefetch_loads, 0u);
}

TEST(tier_replay, a_truthful_lookahead_cuts_demand_misses) {
    const trace_data tr = make(200, 0.3, 3);
    auto off = replay_through_tier(tr, options(16, false));
    auto on = replay_through_tier(tr, options(16, true));
    ASSERT_TRUE(off.has_value()) << off.error().message;
    ASSERT_TRUE(on.has_value()) << on.error().message;
    EXPECT_GT(on->prefetch_loads, 0u);
    EXPECT_LT(on->demand_misses, off->demand_misses / 2) << "on " << on->demand_misses << ", off " << off->demand_misses;
    EXPECT_LT(on->io_wait_s, off->io_wait_s);
    EXPECT_GT(on->recall, 0.9);
}

TEST(tier_replay, a_slower_link_waits_longer) {
    const trace_data tr = make(100, 0.3, 4);
    tier_replay_options slow = options(16, false);
    slow.link.bytes_per_s = 1e8;
    auto fast = replay_through_tier(tr, options(16, false));
    auto r = replay_through_tier(tr, slow);
    ASSERT_TRUE(fast.has_value());
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->demand_misses, fast->demand_misses);  // no prefetch: placement alone
    EXPECT_GT(r->io_wait_s, 5.0 * fast->io_wait_s);
    EXPECT_GT(r->simulated_s, fast->simulated_s);
}

TEST(tier_replay, engine_order_of_one_sequence_is_decode_order) {
    const trace_data tr = make(50, 0.3, 5);
    tier_replay_options e = options(12, true);
    e.order = tier_replay_order::engine;
    auto a = replay_through_tier(tr, options(12, true));
    auto b = replay_through_tier(tr, e);
    ASSERT_TRUE(a.has_value());
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(a->demand_misses, b->demand_misses);
    EXPECT_EQ(a->bytes_read, b->bytes_read);
}

TEST(tier_replay, too_few_slots_is_an_error) {
    const trace_data tr = make(10, 0.3, 6);
    auto r = replay_through_tier(tr, options(0, false));
    ASSERT_FALSE(r.has_value());
    EXPECT_NE(r.error().message.find("slots"), std::string::npos) << r.error().message;
}

TEST(tier_replay, slot_classes_bound_each_layers_slots) {
    // Two layers; layer 0's experts in a class of two slots, layer 1's in another of two.
    const std::vector<std::uint64_t> slot_bytes = {4096, 8192};
    auto classes = storage::plan_slot_classes(slot_bytes, 4, 2 * 4096 + 2 * 8192, 1);
    ASSERT_TRUE(classes) << classes.error().message;
    ASSERT_EQ((*classes)[0].n_slots, 2u);
    trace_data tr;
    tr.info.n_layer = 2;
    tr.info.n_expert = 4;
    tr.info.n_expert_used = 1;
    test::routing steps;
    for (std::int32_t t = 0; t < 12; ++t) steps.push_back({{t % 3}, {0}});
    test::append_sequence(tr, 0, steps);
    tier_replay_options o = options(4, false);
    auto pooled = replay_through_tier(tr, o);
    ASSERT_TRUE(pooled.has_value()) << pooled.error().message;
    EXPECT_EQ(pooled->demand_misses, 4u);  // four slots hold every expert used
    o.classes = *classes;
    auto split = replay_through_tier(tr, o);
    ASSERT_TRUE(split.has_value()) << split.error().message;
    // Layer 0 cycles three experts through its class's two slots: it keeps missing.
    EXPECT_GE(split->demand_misses, 4u + 4u);
    // Classes made for another number of layers are refused.
    o.classes = storage::plan_slot_classes(std::vector<std::uint64_t>{4096}, 4, 4 * 4096, 1).value();
    auto wrong = replay_through_tier(tr, o);
    ASSERT_FALSE(wrong.has_value());
    EXPECT_NE(wrong.error().message.find("slot classes made for 1 layers"), std::string::npos);
}

}  // namespace
}  // namespace moed::scheduler
