// The cache replay of scheduler/replay.h on small hand-made traces.
// - LRU, LFU and Belady on single-expert sequences whose misses are worked out by hand in
//   the comments (and differ between the policies, so a policy mix-up fails).
// - Belady equals the true optimum: a brute-force search over every eviction choice (with
//   memoisation on the cache contents) on a few hundred random small traces, per-layer and
//   global, one and two experts per layer step.
// - Accounting: bytes are expert sizes per layer; a cache smaller than one layer's selection
//   is refused.
// - Slot classes: with the host tier's classes, global is a cache per class: a layer whose
//   class is too small thrashes while the same slots pooled would hold every expert.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "scheduler/replay.h"
#include "storage/slot_classes.h"
#include "tests/scheduler/synthetic_trace.h"

namespace moed::scheduler {
namespace {

using test::make_trace;

trace_data single_layer(std::uint32_t n_expert, const std::vector<std::int32_t>& seq) {
    std::vector<std::vector<std::vector<std::int32_t>>> steps;
    for (std::int32_t e : seq) steps.push_back({{e}});
    return make_trace(1, n_expert, 1, steps);
}

replay_result run(const trace_data& t, replay_policy p, cache_scope scope, std::uint32_t slots) {
    auto order = decode_order(t);
    EXPECT_TRUE(order.has_value());
    replay_options o;
    o.policy = p;
    o.scope = scope;
    o.slots = slots;
    auto r = replay_trace(t, *order, o);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return r ? *r : replay_result{};
}

TEST(Replay, LruLfuBeladyByHand) {
    // A A B C A, two slots.
    // LRU: A miss, A hit, B miss, C miss (evicts A, used before B), A miss -> 4.
    // LFU: at C, A has 2 uses and B 1 -> evicts B; A hits -> 3.
    // Belady: at C, A is used again and B never -> evicts B -> 3.
    const trace_data t = single_layer(4, {0, 0, 1, 2, 0});
    EXPECT_EQ(run(t, replay_policy::lru, cache_scope::per_layer, 2).demand_misses, 4u);
    EXPECT_EQ(run(t, replay_policy::lfu, cache_scope::per_layer, 2).demand_misses, 3u);
    EXPECT_EQ(run(t, replay_policy::belady, cache_scope::per_layer, 2).demand_misses, 3u);

    // A B A C B, two slots.
    // LRU: A m, B m, A h, C m (evicts B), B m (evicts A) -> 4.
    // Belady: at C, A never again, B next -> evicts A; B hits -> 3.
    // LFU: at C, A 2 uses, B 1 -> evicts B; B m (evicts C: 1 use vs A's 2) -> 4.
    const trace_data u = single_layer(4, {0, 1, 0, 2, 1});
    EXPECT_EQ(run(u, replay_policy::lru, cache_scope::per_layer, 2).demand_misses, 4u);
    EXPECT_EQ(run(u, replay_policy::lfu, cache_scope::per_layer, 2).demand_misses, 4u);
    EXPECT_EQ(run(u, replay_policy::belady, cache_scope::per_layer, 2).demand_misses, 3u);
}

TEST(Replay, LfuCountsSurviveEviction) {
    // A A A A B C B C B C A, two slots. LFU: A reaches 4 uses; B and C then evict each
    // other (each has fewer uses than A when it is the victim: 1, 1, 2, 2, 3), so A stays
    // and the last A hits. Misses: A, B, C, B, C, B, C = 7.
    // LRU: A, B, C (evicts A, last used before B), B h, C h, B h, C h, A m -> 4.
    const trace_data t = single_layer(4, {0, 0, 0, 0, 1, 2, 1, 2, 1, 2, 0});
    EXPECT_EQ(run(t, replay_policy::lfu, cache_scope::per_layer, 2).demand_misses, 7u);
    EXPECT_EQ(run(t, replay_policy::lru, cache_scope::per_layer, 2).demand_misses, 4u);
}

// The optimum by exhaustive search: at each miss with a full cache, try every evictable
// resident expert (not one of the step's own). Requests are (cache index, expert set).
struct brute_force {
    std::vector<std::pair<std::uint32_t, std::vector<std::uint32_t>>> steps;
    std::uint32_t capacity = 0;
    std::uint32_t n_caches = 0;
    std::map<std::pair<std::size_t, std::vector<std::set<std::uint32_t>>>, std::uint64_t> memo;

    std::uint64_t solve(std::size_t i, std::vector<std::set<std::uint32_t>> caches) {
        if (i == steps.size()) return 0;
        auto key = std::make_pair(i, caches);
        if (auto it = memo.find(key); it != memo.end()) return it->second;
        const auto& [c, need] = steps[i];
        std::uint64_t best = ~0ull;
        // Load the missing experts one by one, branching over victims.
        std::vector<std::uint32_t> missing;
        for (std::uint32_t e : need) {
            if (!caches[c].count(e)) missing.push_back(e);
        }
        std::function<void(std::size_t, std::set<std::uint32_t>&)> place = [&](std::size_t m, std::set<std::uint32_t>& cur) {
            if (m == missing.size()) {
                auto next = caches;
                next[c] = cur;
                best = std::min(best, missing.size() + solve(i + 1, next));
                return;
            }
            if (cur.size() < capacity) {
                cur.insert(missing[m]);
                place(m + 1, cur);
                cur.erase(missing[m]);
                return;
            }
            const std::vector<std::uint32_t> residents(cur.begin(), cur.end());
            for (std::uint32_t v : residents) {
                if (std::find(need.begin(), need.end(), v) != need.end()) continue;
                cur.erase(v);
                cur.insert(missing[m]);
                place(m + 1, cur);
                cur.erase(missing[m]);
                cur.insert(v);
            }
        };
        std::set<std::uint32_t> cur = caches[c];
        place(0, cur);
        memo[key] = best;
        return best;
    }
};

TEST(Replay, BeladyIsOptimalOnRandomTraces) {
    std::mt19937 rng(12345);
    int checked = 0;
    for (int trial = 0; trial < 300; ++trial) {
        const std::uint32_t n_layer = 1 + rng() % 2;
        const std::uint32_t n_expert = 4 + rng() % 3;
        const std::uint32_t k = 1 + rng() % 2;
        const std::uint32_t n_tokens = 4 + rng() % 5;
        std::vector<std::vector<std::vector<std::int32_t>>> steps(n_tokens);
        for (auto& tok : steps) {
            for (std::uint32_t l = 0; l < n_layer; ++l) {
                std::vector<std::int32_t> all(n_expert);
                std::iota(all.begin(), all.end(), 0);
                std::shuffle(all.begin(), all.end(), rng);
                tok.emplace_back(all.begin(), all.begin() + k);
            }
        }
        const trace_data t = make_trace(n_layer, n_expert, k, steps);
        for (cache_scope scope : {cache_scope::per_layer, cache_scope::global}) {
            const std::uint32_t n_caches = scope == cache_scope::per_layer ? n_layer : 1;
            const std::uint32_t per_cache = k + rng() % 2;
            brute_force bf;
            bf.capacity = per_cache;
            bf.n_caches = n_caches;
            for (const auto& tok : steps) {
                for (std::uint32_t l = 0; l < n_layer; ++l) {
                    std::vector<std::uint32_t> need;
                    for (std::int32_t e : tok[l]) need.push_back(static_cast<std::uint32_t>(e) + l * n_expert);
                    bf.steps.emplace_back(scope == cache_scope::per_layer ? l : 0, need);
                }
            }
            const std::uint64_t optimum = bf.solve(0, std::vector<std::set<std::uint32_t>>(n_caches));
            const replay_result belady = run(t, replay_policy::belady, scope, per_cache * n_caches);
            const replay_result lru = run(t, replay_policy::lru, scope, per_cache * n_caches);
            ASSERT_EQ(belady.demand_misses, optimum) << "trial " << trial << " scope " << scope_name(scope);
            EXPECT_GE(lru.demand_misses, optimum);
            ++checked;
        }
    }
    EXPECT_EQ(checked, 600);
}

TEST(Replay, BytesFollowExpertSizesAndSmallCachesAreRefused) {
    trace_data t = make_trace(2, 4, 1, {{{0}, {1}}, {{2}, {1}}, {{0}, {3}}});
    t.info.expert_bytes = {100, 7};
    // Per layer, one slot each: layer 0 misses 0, 2, 0 (3 x 100); layer 1 misses 1, 3 (2 x 7).
    const replay_result r = run(t, replay_policy::lru, cache_scope::per_layer, 2);
    EXPECT_EQ(r.demand_misses, 5u);
    EXPECT_EQ(r.bytes_read(), 314u);
    EXPECT_EQ(r.accesses, 6u);
    EXPECT_EQ(r.steps, 6u);

    auto order = decode_order(t);
    ASSERT_TRUE(order.has_value());
    replay_options o;
    o.slots = 1;  // half a slot per layer
    auto refused = replay_trace(t, *order, o);
    ASSERT_FALSE(refused.has_value());
    EXPECT_EQ(refused.error().code, errc::invalid_argument);
    EXPECT_NE(refused.error().message.find("fewer than"), std::string::npos) << refused.error().message;
}

TEST(Replay, DecodeOrderUndoesLayerMajorBatches) {
    // Records written layer-major for a 2-token batch, two sequences with tags in reverse.
    trace_data t;
    t.info.n_layer = 2;
    t.info.n_expert = 4;
    t.info.n_expert_used = 1;
    t.tag_names = {"c/0", "python/0"};
    auto add = [&](std::uint64_t seq, std::uint32_t tag, std::int64_t pos, std::uint32_t layer) {
        trace_record r;
        r.seq = seq;
        r.tag = tag;
        r.pos = pos;
        r.layer = layer;
        r.chosen = {static_cast<std::int32_t>(layer)};
        t.records.push_back(r);
    };
    add(9, 1, 0, 0);
    add(9, 1, 1, 0);
    add(9, 1, 0, 1);
    add(9, 1, 1, 1);
    add(3, 0, 0, 0);
    add(3, 0, 0, 1);
    auto order = decode_order(t);
    ASSERT_TRUE(order.has_value());
    ASSERT_EQ(order->size(), 3u);
    EXPECT_EQ((*order)[0].seq, 3u);
    EXPECT_TRUE((*order)[0].first_of_sequence);
    EXPECT_EQ((*order)[1].seq, 9u);
    EXPECT_EQ((*order)[1].pos, 0);
    EXPECT_TRUE((*order)[1].first_of_sequence);
    EXPECT_EQ((*order)[2].pos, 1);
    EXPECT_FALSE((*order)[2].first_of_sequence);
    ASSERT_EQ((*order)[2].layers.size(), 2u);
    EXPECT_EQ(t.records[(*order)[2].layers[0]].layer, 0u);
    EXPECT_EQ(t.records[(*order)[2].layers[1]].layer, 1u);
    EXPECT_EQ(tag_domain(t, 1), "python");

    add(9, 1, 1, 1);  // the same (seq, pos, layer) twice
    auto dup = decode_order(t);
    ASSERT_FALSE(dup.has_value());
    EXPECT_NE(dup.error().message.find("twice"), std::string::npos);
}

// Two layers whose experts need one and two pages: a budget of 2 + 2 slots is two classes.
storage::slot_classes two_classes() {
    const std::vector<std::uint64_t> slot_bytes = {4096, 8192};
    auto c = storage::plan_slot_classes(slot_bytes, 4, 2 * 4096 + 2 * 8192, 1);
    EXPECT_TRUE(c) << (c ? "" : c.error().message);
    return c ? *c : storage::slot_classes{};
}

TEST(Replay, SlotClassesAreSeparateCaches) {
    const storage::slot_classes classes = two_classes();
    ASSERT_EQ(classes.n_classes(), 2u);
    ASSERT_EQ(classes[0].n_slots, 2u);
    ASSERT_EQ(classes[1].n_slots, 2u);
    // Layer 0 cycles three experts, layer 1 keeps one, for 12 tokens.
    test::routing steps;
    for (std::int32_t t = 0; t < 12; ++t) steps.push_back({{t % 3}, {0}});
    const trace_data tr = make_trace(2, 4, 1, steps);
    auto order = decode_order(tr);
    ASSERT_TRUE(order.has_value());
    for (cache_scope scope : {cache_scope::global, cache_scope::per_layer}) {
        replay_options o;
        o.policy = replay_policy::lru;
        o.scope = scope;
        o.classes = classes;
        auto r = replay_trace(tr, *order, o);
        ASSERT_TRUE(r.has_value()) << r.error().message;
        // Layer 0 has two slots for a cycle of three: LRU misses every time; layer 1 once.
        EXPECT_EQ(r->demand_misses, 12u + 1u) << scope_name(scope);
    }
    // The same four slots pooled hold every expert: four cold misses.
    EXPECT_EQ(run(tr, replay_policy::lru, cache_scope::global, 4).demand_misses, 4u);
}

}  // namespace
}  // namespace moed::scheduler
