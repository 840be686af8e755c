// section_ring: the plan of the ring of sections and the hot set, alone (no I/O, no tier).
//
// What it checks, and how: plan_ring's geometry on the budgets the issue names (tinymoe at
// 25% and 50% of its expert bytes, the 30B-shape models at 25%) and on edge cases (one slot,
// an all-hot ring, remainders spread over the first sections); that layers map to sections
// round-robin; that assign_hot and swap_roles keep every slot in exactly one role with
// consistent positions. choose_slot is driven with hand-made slot facts for each rule (free
// before occupied, own section first, lowest need then oldest use, prefetches bounded by
// their score and their own section and kept off guarded, hot and busy slots, demand's last resorts, hot loads
// only into hot slots that hold no hot expert), then compared on many
// random slot tables with a reference written differently: every candidate gets an explicit
// preference tuple (class, need, last use, index) and the smallest tuple wins.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <tuple>
#include <vector>

#include "storage/section_ring.h"

namespace moed::storage {
namespace {

constexpr auto free_slot = slot_availability::free;
constexpr auto reclaimable = slot_availability::reclaimable;
constexpr auto guarded = slot_availability::guarded;
constexpr auto busy = slot_availability::busy;

std::uint32_t sum(const std::vector<std::uint32_t>& v) {
    std::uint32_t s = 0;
    for (std::uint32_t x : v) s += x;
    return s;
}

TEST(plan_ring, issue_budgets) {
    // tinymoe at 25%: 19 slots of its aligned experts; top-4 gives 8 slots per layer wanted.
    ring_plan p = plan_ring(19, 6, 8, 0);
    EXPECT_EQ(p.section_slots, (std::vector<std::uint32_t>{10, 9}));
    // A section per layer once the ring holds every layer's share.
    p = plan_ring(48, 6, 8, 0);
    EXPECT_EQ(p.section_slots, std::vector<std::uint32_t>(6, 8));
    // 30B shape, 8 layers x 128 experts at 25%: 256 slots, top-8.
    p = plan_ring(256, 8, 16, 0);
    EXPECT_EQ(p.section_slots, std::vector<std::uint32_t>(8, 32));
    // 12 layers at 25% (384 slots) with a hot set of 32.
    p = plan_ring(384, 12, 16, 32);
    EXPECT_EQ(p.hot_slots, 32u);
    EXPECT_EQ(p.section_slots.size(), 12u);
    EXPECT_EQ(sum(p.section_slots), 352u);
}

TEST(plan_ring, remainders_and_edges) {
    ring_plan p = plan_ring(25, 6, 8, 0);  // 3 sections: 9, 8, 8
    EXPECT_EQ(p.section_slots, (std::vector<std::uint32_t>{9, 8, 8}));
    p = plan_ring(7, 6, 8, 0);  // fewer slots than one layer wants: still two sections
    EXPECT_EQ(p.section_slots, (std::vector<std::uint32_t>{4, 3}));
    p = plan_ring(1, 6, 8, 0);
    EXPECT_EQ(p.section_slots, (std::vector<std::uint32_t>{1}));
    p = plan_ring(5, 6, 8, 5);  // all hot: no ring at all
    EXPECT_EQ(p.hot_slots, 5u);
    EXPECT_TRUE(p.section_slots.empty());
    p = plan_ring(5, 6, 8, 9);  // hot clamped
    EXPECT_EQ(p.hot_slots, 5u);
    p = plan_ring(10, 0, 0, 0);  // zeros count as one
    EXPECT_EQ(p.section_slots, (std::vector<std::uint32_t>{10}));
    p = plan_ring(30, 3, 2, 0);  // never more sections than layers
    EXPECT_EQ(p.section_slots, (std::vector<std::uint32_t>{10, 10, 10}));
}

// Every slot has exactly one role, and the member lists and positions agree.
void expect_consistent(const section_ring& r) {
    std::vector<int> seen(r.n_slots(), 0);
    for (std::uint32_t sec = 0; sec < r.n_sections(); ++sec) {
        for (std::uint32_t s : r.section_members(sec)) {
            ASSERT_LT(s, r.n_slots());
            ++seen[s];
            EXPECT_EQ(r.section_of_slot(s), sec);
        }
    }
    for (std::uint32_t s : r.hot_members()) {
        ++seen[s];
        EXPECT_EQ(r.section_of_slot(s), section_ring::hot);
    }
    for (std::uint32_t s = 0; s < r.n_slots(); ++s) EXPECT_EQ(seen[s], 1) << "slot " << s;
}

TEST(section_ring, layers_round_robin_and_roles) {
    section_ring r;
    r.reset(19, 6, 8);
    ASSERT_EQ(r.n_sections(), 2u);
    for (std::uint32_t l = 0; l < 6; ++l) EXPECT_EQ(r.section_of_layer(l), l % 2);
    expect_consistent(r);
    EXPECT_EQ(r.section_members(0).size(), 10u);

    const std::vector<std::uint32_t> hot = {3, 17, 0};
    r.assign_hot(hot);
    expect_consistent(r);
    EXPECT_EQ(r.hot_members().size(), 3u);
    EXPECT_EQ(r.n_sections(), 2u);  // 16 ring slots, 8 wanted per layer
    EXPECT_EQ(r.section_members(0).size() + r.section_members(1).size(), 16u);
    for (std::uint32_t s : hot) EXPECT_EQ(r.section_of_slot(s), section_ring::hot);

    const std::uint32_t ring_slot = r.section_members(1).front();
    r.swap_roles(ring_slot, 17);
    expect_consistent(r);
    EXPECT_EQ(r.section_of_slot(ring_slot), section_ring::hot);
    EXPECT_EQ(r.section_of_slot(17), 1u);

    r.assign_hot({});
    expect_consistent(r);
    EXPECT_TRUE(r.hot_members().empty());
}

// A ring of 2 sections x 3 slots plus 2 hot slots: slots 0,1 hot; 2..4 section 0; 5..7 section 1.
section_ring small_ring() {
    section_ring r;
    r.reset(8, 4, 3);
    const std::vector<std::uint32_t> hot = {0, 1};
    r.assign_hot(hot);
    return r;
}

std::optional<std::uint32_t> choose(const section_ring& r, std::uint32_t layer, slot_load_kind kind, float score,
                                    const std::vector<slot_facts>& f) {
    return r.choose_slot(layer, kind, score, [&](std::uint32_t s) { return f[s]; });
}

TEST(section_ring, choice_rules) {
    const section_ring r = small_ring();
    ASSERT_EQ(r.n_sections(), 2u);
    ASSERT_EQ(r.section_of_slot(2), 0u);
    ASSERT_EQ(r.section_of_slot(5), 1u);
    std::vector<slot_facts> f(8, slot_facts{busy, 0.0f, 0, false});

    // Nothing but busy slots: no choice for anyone.
    for (auto kind : {slot_load_kind::demand, slot_load_kind::prefetch, slot_load_kind::hot}) {
        EXPECT_FALSE(choose(r, 0, kind, 1.0f, f));
    }
    // A free slot in the other section is taken before replacing anything in the own one.
    f[3] = {reclaimable, 0.0f, 1, false};
    f[6] = {free_slot, 0.0f, 0, false};
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 6u);
    EXPECT_EQ(choose(r, 2, slot_load_kind::prefetch, 0.5f, f), 6u);
    // A free slot of the own section beats it.
    f[4] = {free_slot, 0.0f, 0, false};
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 4u);
    f[4] = {busy, 0.0f, 0, false};
    f[6] = {busy, 0.0f, 0, false};

    // Own section first, then lowest need, then oldest use.
    f[2] = {reclaimable, 0.4f, 5, false};
    f[3] = {reclaimable, 0.1f, 9, false};
    f[5] = {reclaimable, 0.0f, 1, false};  // other section, lower need: only after the own section
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 3u);
    f[2] = {reclaimable, 0.1f, 4, false};
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 2u);  // same need, older
    EXPECT_EQ(choose(r, 1, slot_load_kind::demand, 0.0f, f), 5u);

    // A prefetch replaces only experts of its own section needed less than its score.
    EXPECT_EQ(choose(r, 0, slot_load_kind::prefetch, 0.2f, f), 2u);
    EXPECT_FALSE(choose(r, 0, slot_load_kind::prefetch, 0.1f, f));  // 5 is below, but another section's
    EXPECT_EQ(choose(r, 1, slot_load_kind::prefetch, 0.1f, f), 5u);
    EXPECT_FALSE(choose(r, 0, slot_load_kind::prefetch, 0.0f, f));
    // Nor one whose chance of use (before its distance scaled its need down) beats the score.
    f[2].chance = 0.3f;
    EXPECT_EQ(choose(r, 0, slot_load_kind::prefetch, 0.2f, f), 3u);  // not 2 (same need, older)
    f[3].chance = 0.3f;
    EXPECT_FALSE(choose(r, 0, slot_load_kind::prefetch, 0.2f, f));
    EXPECT_EQ(choose(r, 0, slot_load_kind::prefetch, 0.35f, f), 2u);
    f[3].chance = 0.0f;
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 2u);  // demand loads go by need alone
    f[2].chance = 0.0f;

    // Guarded experts: never for a prefetch, a demand load's late resort.
    f[2] = {guarded, 0.0f, 0, false};
    f[3] = {guarded, 0.0f, 0, false};
    f[5] = {guarded, 0.0f, 0, false};
    EXPECT_FALSE(choose(r, 0, slot_load_kind::prefetch, 1.0f, f));
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 2u);
    // Hot slots: a free one or one holding a non-hot expert goes to demand before guarded ones.
    f[1] = {reclaimable, 0.9f, 0, false};
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 1u);
    EXPECT_FALSE(choose(r, 0, slot_load_kind::prefetch, 1.0f, f));
    f[0] = {free_slot, 0.0f, 0, false};
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 0u);  // a free hot slot before a reclaimable one
    // Hot loads: only hot slots, and never over a hot expert.
    EXPECT_EQ(choose(r, 3, slot_load_kind::hot, 1.0f, f), 0u);
    f[0] = {reclaimable, 0.0f, 0, true};
    EXPECT_EQ(choose(r, 3, slot_load_kind::hot, 1.0f, f), 1u);
    f[1] = {reclaimable, 0.0f, 0, true};
    EXPECT_FALSE(choose(r, 3, slot_load_kind::hot, 1.0f, f));
    // Demand's very last resort is a hot expert; a prefetch never touches one.
    f[2] = f[3] = f[5] = {busy, 0.0f, 0, false};
    EXPECT_EQ(choose(r, 0, slot_load_kind::demand, 0.0f, f), 0u);
    EXPECT_FALSE(choose(r, 0, slot_load_kind::prefetch, 1.0f, f));
    f[7] = {reclaimable, 0.0f, 0, true};  // a hot expert still in a ring slot
    EXPECT_FALSE(choose(r, 1, slot_load_kind::prefetch, 1.0f, f));
}

// The reference: an explicit preference tuple per slot, smallest wins.
std::optional<std::uint32_t> reference(const section_ring& r, std::uint32_t layer, slot_load_kind kind, float score,
                                       const std::vector<slot_facts>& f) {
    using key = std::tuple<int, float, std::uint64_t, std::uint32_t>;
    std::optional<key> best;
    const std::uint32_t own = r.section_of_layer(layer);
    for (std::uint32_t s = 0; s < f.size(); ++s) {
        const slot_facts& x = f[s];
        const bool hot_slot = r.section_of_slot(s) == section_ring::hot;
        const bool mine = r.section_of_slot(s) == own;
        const bool is_free = x.availability == free_slot;
        const bool is_guarded = x.availability == guarded;
        if (x.availability == busy) continue;
        int pref = -1;
        switch (kind) {
            case slot_load_kind::hot:
                if (!hot_slot) break;
                if (is_free) pref = 0;
                else if (!x.hot_expert && !is_guarded) pref = 1;
                break;
            case slot_load_kind::prefetch:
                if (hot_slot) break;
                if (is_free) pref = mine ? 0 : 1;
                else if (mine && !is_guarded && !x.hot_expert && std::max(x.need, x.chance) < score) pref = 2;
                break;
            case slot_load_kind::demand:
                if (is_free) pref = hot_slot ? 4 : (mine ? 0 : 1);
                else if (x.hot_expert) pref = 7;
                else if (is_guarded) pref = 6;
                else if (hot_slot) pref = 5;
                else pref = mine ? 2 : 3;
                break;
        }
        if (pref < 0) continue;
        const key k{pref, x.need, x.last_use, s};
        if (!best || k < *best) best = k;
    }
    if (!best) return std::nullopt;
    return std::get<3>(*best);
}

TEST(section_ring, random_tables_match_the_reference) {
    std::mt19937 rng(1234);
    for (int round = 0; round < 2000; ++round) {
        const std::uint32_t n_slots = 1 + rng() % 24;
        const std::uint32_t n_layer = 1 + rng() % 8;
        section_ring r;
        r.reset(n_slots, n_layer, 1 + rng() % 6);
        std::vector<std::uint32_t> hot;
        for (std::uint32_t s = 0; s < n_slots; ++s) {
            if (rng() % 5 == 0 && hot.size() + 1 < n_slots) hot.push_back(s);
        }
        r.assign_hot(hot);
        std::vector<slot_facts> f(n_slots);
        for (auto& x : f) {
            x.availability = static_cast<slot_availability>(rng() % 4);
            x.need = static_cast<float>(rng() % 5) / 4.0f;  // ties on purpose
            x.last_use = rng() % 6;
            x.hot_expert = x.availability != free_slot && rng() % 4 == 0;
            if (x.availability == free_slot) {
                x.need = 0.0f;  // what a tier reports for a free slot
                x.last_use = 0;
            }
        }
        const std::uint32_t layer = rng() % n_layer;
        const float score = static_cast<float>(rng() % 5) / 4.0f;
        for (auto kind : {slot_load_kind::demand, slot_load_kind::prefetch, slot_load_kind::hot}) {
            const auto got = choose(r, layer, kind, score, f);
            const auto want = reference(r, layer, kind, score, f);
            // Both take the lowest slot index among equally good ones.
            EXPECT_EQ(got, want) << "round " << round << " kind " << static_cast<int>(kind);
        }
    }
}

}  // namespace
}  // namespace moed::storage
