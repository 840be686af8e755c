// The scored eviction policy (scheduler/eviction_scoring.h) through the storage
// eviction_policy interface, and the value formula:
// - the victim is the evictable slot with the lowest value; a slot in use (not evictable)
//   is never offered, however low its value; ties go to the least recently used;
// - value grows with predicted need, long-run rate and reload cost, and falls with the
//   distance to the expert's next visit;
// - LFU keeps counts across evictions and breaks ties by recency.
#include <gtest/gtest.h>

#include <vector>

#include "scheduler/eviction_scoring.h"

namespace moed::scheduler {
namespace {

TEST(EvictionScoring, LowestValueEvictableSlotIsTheVictim) {
    scored_eviction_policy p(2, 4);
    p.reset(3);
    p.on_insert(0, {0, 1});
    p.on_insert(1, {1, 2});
    p.on_insert(2, {0, 3});
    for (std::uint32_t s = 0; s < 3; ++s) p.on_evictable(s, true);
    std::vector<float> values(8, 1.0f);
    values[0 * 4 + 1] = 0.5f;  // slot 0
    values[1 * 4 + 2] = 0.1f;  // slot 1: the lowest
    values[0 * 4 + 3] = 0.9f;  // slot 2
    p.set_expert_scores(values);
    EXPECT_EQ(p.choose_victim(), 1u);
    float v = 0.0f;
    EXPECT_EQ(p.peek_victim(v), 1u);
    EXPECT_FLOAT_EQ(v, 0.1f);

    // In use: never the victim, even with the lowest value.
    p.on_access(1);
    p.on_evictable(1, false);
    EXPECT_EQ(p.choose_victim(), 0u);
    p.on_evictable(0, false);
    p.on_evictable(2, false);
    EXPECT_FALSE(p.choose_victim().has_value());

    // Ties: least recently used first.
    p.on_evictable(2, true);
    p.on_evictable(0, true);  // released after slot 2
    values.assign(8, 0.3f);
    p.set_expert_scores(values);
    EXPECT_EQ(p.choose_victim(), 2u);
    p.on_remove(2);
    EXPECT_EQ(p.choose_victim(), 0u);
}

TEST(EvictionScoring, ValueOrdersNeedRateCostAndDistance) {
    const std::uint32_t n_layer = 8;
    const float base = expert_value(0.5f, 0.2f, 3, n_layer, 1.0f);
    EXPECT_GT(expert_value(0.9f, 0.2f, 3, n_layer, 1.0f), base);  // more likely needed
    EXPECT_GT(expert_value(0.5f, 0.6f, 3, n_layer, 1.0f), base);  // used more often
    EXPECT_GT(expert_value(0.5f, 0.2f, 3, n_layer, 2.0f), base);  // dearer to reload
    EXPECT_GT(expert_value(0.5f, 0.2f, 1, n_layer, 1.0f), base);  // needed sooner
    // Certain need: the value is the cost over the steps until the visit.
    EXPECT_FLOAT_EQ(expert_value(1.0f, 0.0f, 4, n_layer, 2.0f), 0.5f);
    // No prediction at all still has a finite horizon (the rate floor).
    EXPECT_GT(expert_value(0.0f, 0.0f, 1, n_layer, 1.0f), 0.0f);
}

TEST(EvictionScoring, LfuKeepsCountsAcrossEvictions) {
    auto p = make_lfu_policy(1, 4);
    p->reset(2);
    p->on_insert(0, {0, 0});  // expert 0: 1 use
    p->on_access(0);          // 2
    p->on_evictable(0, true);
    p->on_insert(1, {0, 1});  // expert 1: 1 use
    p->on_evictable(1, true);
    EXPECT_EQ(p->choose_victim(), 1u);
    p->on_remove(1);
    p->on_remove(0);  // expert 0 leaves with 2 uses
    p->on_insert(0, {0, 2});
    p->on_evictable(0, true);
    p->on_insert(1, {0, 0});  // back: 3 uses
    p->on_evictable(1, true);
    EXPECT_EQ(p->choose_victim(), 0u);
    // Equal counts: the least recently released goes first.
    p->on_remove(0);
    p->on_insert(0, {0, 3});
    p->on_access(0);
    p->on_access(0);
    p->on_evictable(0, true);  // expert 3: 3 uses, released after slot 1
    EXPECT_EQ(p->choose_victim(), 1u);
}

}  // namespace
}  // namespace moed::scheduler
