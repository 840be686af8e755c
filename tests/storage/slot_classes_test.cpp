// slot_classes: how a tier's byte budget is cut into runs of slots, one per distinct slot
// size. Checks, on hand-made per-layer slot sizes: one size is one class of budget / size
// slots (the tier before classes); two and three sizes split the budget in proportion to
// what each class's experts need, with the rounding leaving less than one slot of any class
// unused and never exceeding the budget (over a sweep of budgets); a class whose share is
// below the minimum gets the minimum and the others share the rest; a budget below the
// minimum of every class is an error naming the bytes needed; slot offsets, the class of a
// slot and of a layer, and a layer's rank within its class are consistent.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "storage/slot_classes.h"

namespace moed::storage {
namespace {

constexpr std::uint32_t n_expert = 8;

// Bytes each class's experts need: layers x experts x slot bytes.
std::vector<std::uint64_t> needs(const slot_classes& c) {
    std::vector<std::uint64_t> out;
    for (const slot_class& k : c.classes()) out.push_back(std::uint64_t{k.n_layer} * n_expert * k.slot_bytes);
    return out;
}

void expect_error_with(const result<slot_classes>& r, const std::vector<std::string>& parts) {
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::out_of_memory);
    for (const std::string& p : parts) EXPECT_NE(r.error().message.find(p), std::string::npos) << r.error().message;
}

TEST(slot_classes, one_size_is_one_class_of_budget_over_slot_bytes) {
    const std::vector<std::uint64_t> layers = {12288, 12288, 12288};
    for (std::uint64_t budget : {12288ull, 12288ull * 5 + 12287, 12288ull * 100}) {
        auto r = plan_slot_classes(layers, n_expert, budget, 1);
        ASSERT_TRUE(r) << r.error().message;
        ASSERT_EQ(r->n_classes(), 1u);
        EXPECT_EQ(r->n_slots(), budget / 12288);
        EXPECT_EQ(r->bytes(), budget / 12288 * 12288);
        EXPECT_EQ((*r)[0].n_layer, 3u);
        EXPECT_EQ(r->n_slots_min(), r->n_slots());
        for (std::uint32_t l = 0; l < 3; ++l) {
            EXPECT_EQ(r->class_of_layer(l), 0u);
            EXPECT_EQ(r->rank_in_class(l), l);
        }
    }
}

TEST(slot_classes, two_sizes_split_in_proportion_and_hold_more_than_largest_slots) {
    // Layers alternate 3 pages and 4 pages (a Q4_K_M mix: every other ffn_down in Q6_K).
    const std::vector<std::uint64_t> layers = {12288, 16384, 12288, 16384};
    const std::uint64_t all = 2ull * n_expert * 12288 + 2ull * n_expert * 16384;
    auto r = plan_slot_classes(layers, n_expert, all / 4, 1);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->n_classes(), 2u);
    // Classes are numbered by their first layer; each holds a quarter of its experts.
    EXPECT_EQ((*r)[0].slot_bytes, 12288u);
    EXPECT_EQ((*r)[1].slot_bytes, 16384u);
    EXPECT_EQ((*r)[0].n_slots, 4u);
    EXPECT_EQ((*r)[1].n_slots, 4u);
    EXPECT_EQ(r->bytes(), all / 4);
    EXPECT_EQ(r->class_of_layer(0), 0u);
    EXPECT_EQ(r->class_of_layer(1), 1u);
    EXPECT_EQ(r->class_of_layer(3), 1u);
    EXPECT_EQ(r->rank_in_class(2), 1u);
    EXPECT_EQ(r->rank_in_class(3), 1u);
    // Slots sized for the largest expert would have held fewer.
    EXPECT_GT(r->n_slots(), all / 4 / 16384);
    EXPECT_EQ(r->slot_bytes_max(), 16384u);
    EXPECT_EQ(r->n_slots_min(), 4u);
}

TEST(slot_classes, rounding_never_exceeds_the_budget_and_leaves_less_than_a_slot) {
    // Three sizes, one of them not a power of two, over a sweep of awkward budgets.
    const std::vector<std::uint64_t> layers = {12288, 20480, 12288, 57344, 20480, 12288};
    for (std::uint64_t budget = 57344 + 20480 + 12288; budget < 3'000'000; budget = budget * 9 / 7 + 4097) {
        SCOPED_TRACE("budget " + std::to_string(budget));
        auto r = plan_slot_classes(layers, n_expert, budget, 1);
        ASSERT_TRUE(r) << r.error().message;
        ASSERT_EQ(r->n_classes(), 3u);
        EXPECT_LE(r->bytes(), budget);
        // What is left holds no further slot of any class.
        for (const slot_class& c : r->classes()) EXPECT_LT(budget - r->bytes(), c.slot_bytes);
        // Each class holds at least the whole slots of its proportional share, when every
        // share holds one (else a class raised to its minimum takes from the others).
        const std::vector<std::uint64_t> need = needs(*r);
        std::uint64_t total_need = 0;
        for (std::uint64_t n : need) total_need += n;
        std::vector<std::uint64_t> whole;
        for (std::uint32_t c = 0; c < 3; ++c) {
            const long double share = static_cast<long double>(budget) * need[c] / total_need;
            whole.push_back(static_cast<std::uint64_t>(share / (*r)[c].slot_bytes));
        }
        const bool every_share_holds_one = std::min({whole[0], whole[1], whole[2]}) >= 1;
        std::uint64_t slots = 0;
        for (std::uint32_t c = 0; c < 3; ++c) {
            const slot_class& k = (*r)[c];
            EXPECT_GE(k.n_slots, 1u);
            if (every_share_holds_one) {
                EXPECT_GE(k.n_slots, whole[c]) << "class " << c;
            }
            EXPECT_EQ(k.first_slot, slots);
            slots += k.n_slots;
        }
        EXPECT_EQ(r->n_slots(), slots);
    }
}

TEST(slot_classes, a_class_below_the_minimum_gets_it_and_the_others_share_the_rest) {
    // One small layer among big ones: its proportional share is below four slots.
    const std::vector<std::uint64_t> layers = {65536, 65536, 65536, 4096, 65536, 65536, 65536, 65536};
    const std::uint32_t min_slots = 4;
    const std::uint64_t budget = 40 * 65536ull;
    auto r = plan_slot_classes(layers, n_expert, budget, min_slots);
    ASSERT_TRUE(r) << r.error().message;
    ASSERT_EQ(r->n_classes(), 2u);
    EXPECT_EQ((*r)[1].slot_bytes, 4096u);
    EXPECT_EQ((*r)[1].n_layer, 1u);
    // Here the small class's share holds 5 slots (and it takes the bytes the big class's
    // rounding left); a tighter budget shows the minimum: its share would hold none.
    EXPECT_GE((*r)[1].n_slots, 5u);
    EXPECT_EQ((*r)[0].n_slots, 39u);
    EXPECT_LE(r->bytes(), budget);
    auto tight = plan_slot_classes(layers, n_expert, 4 * 65536ull + 4 * 4096ull, min_slots);
    ASSERT_TRUE(tight) << tight.error().message;
    EXPECT_EQ((*tight)[0].n_slots, 4u);
    EXPECT_EQ((*tight)[1].n_slots, 4u);
    EXPECT_EQ(tight->bytes(), 4 * 65536ull + 4 * 4096ull);
    // A little more: the small class keeps its minimum (its share is far below it), the big
    // class takes what fits of the rest.
    auto more = plan_slot_classes(layers, n_expert, 6 * 65536ull + 4 * 4096ull + 100, min_slots);
    ASSERT_TRUE(more) << more.error().message;
    EXPECT_EQ((*more)[0].n_slots, 6u);
    EXPECT_EQ((*more)[1].n_slots, 4u);
}

TEST(slot_classes, a_budget_below_every_class_minimum_names_the_bytes_needed) {
    const std::vector<std::uint64_t> one = {8192, 8192};
    expect_error_with(plan_slot_classes(one, n_expert, 8191, 1),
                      {"8191 bytes", "holds 0 expert slots", "8192 bytes", "at least 1 slot is needed"});
    expect_error_with(plan_slot_classes(one, n_expert, 3 * 8192, 5),
                      {"holds 3 expert slots", "at least 5 slots are needed", std::to_string(5 * 8192)});
    const std::vector<std::uint64_t> two = {8192, 12288};
    // Two classes need 2 x (8192 + 12288) at two slots each.
    expect_error_with(plan_slot_classes(two, n_expert, 2 * (8192 + 12288) - 1, 2),
                      {"2 slot classes", "at least 2 slots", "must be at least", std::to_string(2 * (8192 + 12288))});
    auto exact = plan_slot_classes(two, n_expert, 2 * (8192 + 12288), 2);
    ASSERT_TRUE(exact) << exact.error().message;
    EXPECT_EQ((*exact)[0].n_slots, 2u);
    EXPECT_EQ((*exact)[1].n_slots, 2u);
}

TEST(slot_classes, offsets_and_lookups_agree) {
    const std::vector<std::uint64_t> layers = {16384, 8192, 16384, 8192, 8192};
    auto r = plan_slot_classes(layers, n_expert, 1'000'000, 1);
    ASSERT_TRUE(r) << r.error().message;
    std::uint64_t at = 0;
    for (std::uint32_t s = 0; s < r->n_slots(); ++s) {
        const std::uint32_t c = r->class_of_slot(s);
        EXPECT_EQ(r->slot_offset(s), at) << s;
        EXPECT_EQ(r->slot_bytes(s), (*r)[c].slot_bytes);
        EXPECT_EQ(r->slot_at(at), s);
        EXPECT_EQ(r->slot_at(at + (*r)[c].slot_bytes - 1), s);
        at += (*r)[c].slot_bytes;
    }
    EXPECT_EQ(at, r->bytes());
    const slot_classes u = slot_classes::uniform(5, 4096, 3);
    EXPECT_EQ(u.n_slots(), 5u);
    EXPECT_EQ(u.bytes(), 5u * 4096);
    EXPECT_EQ(u.class_of_layer(7), 0u);  // a uniform plan serves any layer
    EXPECT_EQ(u.rank_in_class(7), 7u);
    EXPECT_EQ(u.slot_at(4096 * 4 + 1), 4u);
}

}  // namespace
}  // namespace moed::storage
