// slot_table: the slot state machine, refs, residency and resident byte counts, alone (no
// tier, no I/O).
//
// What it checks, and how: each transition of the state machine in slot_table.h is driven by
// hand and the state, refs, residency map and resident counts are read back after it (a
// load that succeeds with and without waiters, one that fails with and without waiters, an
// acquirer giving up on a load in flight, eviction). last_use ticks and predictions are
// checked for their ordering rules. A random walk of legal transitions is compared with a
// plain model (a map from expert to slot and per-slot refs). Transitions from the wrong
// state are programmer errors: death tests check that each aborts naming the broken
// precondition instead of corrupting the table.
#include <gtest/gtest.h>

#include <map>
#include <random>
#include <vector>

#include "storage/slot_table.h"

namespace moed::storage {
namespace {

constexpr std::uint64_t bytes_l0 = 1000;
constexpr std::uint64_t bytes_l1 = 3000;

slot_table make_table(std::uint32_t n_slots = 4) {
    slot_table t;
    const std::vector<std::uint64_t> layer_bytes = {bytes_l0, bytes_l1};
    t.reset(n_slots, 8, layer_bytes);
    return t;
}

const auto now = std::chrono::steady_clock::time_point{};

TEST(slot_table, starts_free_and_empty) {
    const slot_table t = make_table();
    EXPECT_EQ(t.n_slots(), 4u);
    for (std::uint32_t s = 0; s < 4; ++s) {
        EXPECT_EQ(t[s].state, slot_state::free);
        EXPECT_EQ(t[s].refs, 0u);
    }
    EXPECT_EQ(t.find(ExpertId{1, 7}), slot_table::no_slot);
    EXPECT_EQ(t.resident_bytes(), 0u);
    EXPECT_EQ(t.resident_experts(), 0u);
}

TEST(slot_table, a_load_with_a_waiter_ends_in_use_then_ready) {
    slot_table t = make_table();
    t.begin_load(2, ExpertId{1, 5}, 1);
    EXPECT_EQ(t[2].state, slot_state::loading);
    EXPECT_EQ(t.find(ExpertId{1, 5}), 2u);  // a second request joins the load
    EXPECT_FALSE(t.holds_bytes(2));
    EXPECT_EQ(t.resident_experts(), 0u);  // not resident before its bytes are there
    t.admit(2, now);
    EXPECT_TRUE(t[2].admitted);
    t.end_load_ok(2);
    EXPECT_EQ(t[2].state, slot_state::in_use);
    EXPECT_TRUE(t.holds_bytes(2));
    EXPECT_EQ(t.resident_bytes(), bytes_l1);
    EXPECT_EQ(t.resident_experts(), 1u);
    EXPECT_EQ(t.unpin(2, ExpertId{1, 5}), slot_state::ready);
    EXPECT_EQ(t[2].refs, 0u);
    // Pinning again: ready -> in_use, twice -> two refs, the first unpin keeps it in use.
    EXPECT_EQ(t.pin(2), slot_state::ready);
    EXPECT_EQ(t.pin(2), slot_state::in_use);
    EXPECT_EQ(t[2].refs, 2u);
    EXPECT_EQ(t.unpin(2, ExpertId{1, 5}), slot_state::in_use);
    EXPECT_EQ(t.unpin(2, ExpertId{1, 5}), slot_state::ready);
    t.evict(2);
    EXPECT_EQ(t[2].state, slot_state::free);
    EXPECT_EQ(t.find(ExpertId{1, 5}), slot_table::no_slot);
    EXPECT_EQ(t.resident_bytes(), 0u);
    EXPECT_EQ(t.resident_experts(), 0u);
}

TEST(slot_table, a_prefetch_load_without_waiters_ends_ready) {
    slot_table t = make_table();
    t.begin_load(0, ExpertId{0, 1}, 0);
    t.set_prefetched_unused(0, true);
    t.admit(0, now);
    t.end_load_ok(0);
    EXPECT_EQ(t[0].state, slot_state::ready);
    EXPECT_TRUE(t[0].prefetched_unused);
    EXPECT_EQ(t.resident_bytes(), bytes_l0);
    // A join while it loads counts as a ref; the acquirer pins a loading slot.
    t.begin_load(1, ExpertId{0, 2}, 0);
    EXPECT_EQ(t.pin(1), slot_state::loading);
    EXPECT_EQ(t[1].state, slot_state::loading);
    t.admit(1, now);
    t.end_load_ok(1);
    EXPECT_EQ(t[1].state, slot_state::in_use);
}

TEST(slot_table, a_failed_load_frees_the_slot_once_its_waiters_read_the_error) {
    slot_table t = make_table();
    t.begin_load(1, ExpertId{1, 0}, 2);
    t.admit(1, now);
    t.end_load_failed(1, moed::error{errc::io, "disk on fire"});
    EXPECT_EQ(t[1].state, slot_state::failed);
    EXPECT_EQ(t[1].failure.message, "disk on fire");
    EXPECT_EQ(t.find(ExpertId{1, 0}), slot_table::no_slot);  // the next request reads it afresh
    EXPECT_EQ(t.resident_experts(), 0u);
    EXPECT_EQ(t.unpin(1, ExpertId{1, 0}), slot_state::failed);
    EXPECT_EQ(t.unpin(1, ExpertId{1, 0}), slot_state::free);
    // Without waiters it is free at once; the expert may load elsewhere meanwhile.
    t.begin_load(3, ExpertId{1, 0}, 0);
    t.admit(3, now);
    t.end_load_failed(3, moed::error{errc::io, "again"});
    EXPECT_EQ(t[3].state, slot_state::free);
    t.begin_load(3, ExpertId{1, 0}, 0);
    EXPECT_EQ(t[3].failure.message, "");  // a new load forgets the old failure
}

TEST(slot_table, an_acquirer_giving_up_leaves_the_load_running) {
    slot_table t = make_table();
    t.begin_load(0, ExpertId{0, 3}, 1);
    EXPECT_EQ(t.unpin(0, ExpertId{0, 3}), slot_state::loading);
    t.admit(0, now);
    t.end_load_ok(0);
    EXPECT_EQ(t[0].state, slot_state::ready);  // reclaimable at once
}

TEST(slot_table, uses_tick_in_order) {
    slot_table t = make_table();
    t.begin_load(0, ExpertId{0, 0}, 0);
    t.admit(0, now);
    t.end_load_ok(0);
    t.begin_load(1, ExpertId{0, 1}, 1);
    t.admit(1, now);
    t.end_load_ok(1);
    EXPECT_LT(t[0].last_use, t[1].last_use);
    t.touch(0);
    EXPECT_GT(t[0].last_use, t[1].last_use);
    t.unpin(1, ExpertId{0, 1});  // the last release is a use
    EXPECT_GT(t[1].last_use, t[0].last_use);
}

TEST(slot_table, predictions_clamp_and_keep_the_higher_score_of_one_generation) {
    slot_table t = make_table();
    t.begin_load(0, ExpertId{0, 0}, 0);
    t.predict(0, 7.0f, 3);
    EXPECT_TRUE(t[0].predicted);
    EXPECT_FLOAT_EQ(t[0].pred_score, 1.0f);
    t.predict(0, 0.2f, 3);
    EXPECT_FLOAT_EQ(t[0].pred_score, 1.0f);  // same generation: the higher stays
    t.predict(0, 0.2f, 4);
    EXPECT_FLOAT_EQ(t[0].pred_score, 0.2f);  // a new generation replaces it
    EXPECT_EQ(t[0].pred_gen, 4u);
    t.predict(0, -1.0f, 5);
    EXPECT_FLOAT_EQ(t[0].pred_score, 0.0f);
    t.guard(0, 9);
    EXPECT_EQ(t[0].guard_epoch, 9u);
    // A new load clears prediction and guard.
    t.admit(0, now);
    t.end_load_ok(0);
    t.evict(0);
    t.begin_load(0, ExpertId{1, 1}, 0);
    EXPECT_FALSE(t[0].predicted);
    EXPECT_EQ(t[0].guard_epoch, 0u);
}

// A random walk of legal transitions against a plain model of residency and refs.
TEST(slot_table, random_walk_matches_a_plain_model) {
    std::mt19937 rng(42);
    constexpr std::uint32_t n_slots = 6;
    slot_table t;
    const std::vector<std::uint64_t> layer_bytes = {bytes_l0, bytes_l1};
    t.reset(n_slots, 8, layer_bytes);
    std::map<std::pair<std::uint32_t, std::uint32_t>, std::uint32_t> where;  // expert -> slot (loading or resident)
    std::vector<std::uint32_t> refs(n_slots, 0);
    for (int step = 0; step < 20000; ++step) {
        const std::uint32_t s = rng() % n_slots;
        const slot_entry& e = t[s];
        switch (e.state) {
            case slot_state::free: {
                const ExpertId id{static_cast<std::uint32_t>(rng() % 2), static_cast<std::uint32_t>(rng() % 8)};
                if (t.find(id) != slot_table::no_slot) break;
                const std::uint32_t r = rng() % 3;
                t.begin_load(s, id, r);
                t.admit(s, now);
                where[{id.layer, id.expert}] = s;
                refs[s] = r;
                break;
            }
            case slot_state::loading:
                if (rng() % 4 == 0) {
                    where.erase({e.id.layer, e.id.expert});
                    t.end_load_failed(s, moed::error{errc::io, "x"});
                } else {
                    t.end_load_ok(s);
                }
                break;
            case slot_state::ready:
                if (rng() % 2 == 0) {
                    where.erase({e.id.layer, e.id.expert});
                    t.evict(s);
                } else {
                    t.pin(s);
                    ++refs[s];
                }
                break;
            case slot_state::in_use:
            case slot_state::failed:  // not findable: only its waiters let go
                if (e.state == slot_state::in_use && rng() % 3 == 0) {
                    t.pin(s);
                    ++refs[s];
                } else {
                    t.unpin(s, e.id);
                    --refs[s];
                }
                break;
        }
        if (e.state == slot_state::failed) {
            ASSERT_GE(refs[s], 1u);
        }
        // The model and the table agree on residency, refs and resident bytes.
        std::uint64_t bytes = 0, experts = 0;
        for (std::uint32_t k = 0; k < n_slots; ++k) {
            ASSERT_EQ(t[k].refs, refs[k]) << "step " << step;
            if (t.holds_bytes(k)) {
                bytes += layer_bytes[t[k].id.layer];
                ++experts;
            }
        }
        ASSERT_EQ(t.resident_bytes(), bytes);
        ASSERT_EQ(t.resident_experts(), experts);
        for (std::uint32_t l = 0; l < 2; ++l) {
            for (std::uint32_t x = 0; x < 8; ++x) {
                const auto it = where.find({l, x});
                ASSERT_EQ(t.find(ExpertId{l, x}), it == where.end() ? slot_table::no_slot : it->second);
            }
        }
    }
}

// Transitions from the wrong state abort with the broken precondition in the message.
TEST(slot_table_death, wrong_transitions_abort) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            slot_table t = make_table();
            t.begin_load(0, ExpertId{0, 0}, 0);
            t.begin_load(0, ExpertId{0, 1}, 0);  // not free
        },
        "state == slot_state::free");
    EXPECT_DEATH(
        {
            slot_table t = make_table();
            t.begin_load(0, ExpertId{0, 0}, 0);
            t.begin_load(1, ExpertId{0, 0}, 0);  // the same expert in two slots
        },
        "no_slot");
    EXPECT_DEATH(
        {
            slot_table t = make_table();
            t.begin_load(0, ExpertId{0, 0}, 1);
            t.admit(0, now);
            t.end_load_ok(0);
            t.evict(0);  // held
        },
        "state == slot_state::ready && e.refs == 0");
    EXPECT_DEATH(
        {
            slot_table t = make_table();
            t.begin_load(0, ExpertId{0, 0}, 0);
            t.end_load_ok(0);  // never admitted
        },
        "admitted");
    EXPECT_DEATH(
        {
            slot_table t = make_table();
            t.begin_load(0, ExpertId{0, 0}, 1);
            t.unpin(0, ExpertId{0, 1});  // another expert's handle
        },
        "e.id == id");
    EXPECT_DEATH(
        {
            slot_table t = make_table();
            t.pin(0);  // free
        },
        "before == slot_state::ready");
}

}  // namespace
}  // namespace moed::storage
