// load_queue: the order prefetch requests are served in, which requests go stale, the
// deferred demand FIFO and the bytes-in-flight bounds, alone (no tier, no I/O).
//
// What it checks, and how: hand-made queues for each rule of load_queue.h (class first, then
// layers in the order the engine reaches them, then score, then expert; merging a second
// request for an expert; supersession by a newer batch for the same layer; dropping passed
// layers cyclically and layers below a bound, warmup requests surviving both; a visit that
// pushes during serve()), then a random sequence of operations compared step by step with a
// plain model (a list of requests sorted by an explicit key). The FIFO is checked across its
// wrap-around, and fits()/fits_prefetch() at and around their bounds, including the one load
// that always fits when nothing is in flight.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <tuple>
#include <vector>

#include "storage/load_queue.h"

namespace moed::storage {
namespace {

using cls = prefetch_class;

prefetch_request req(std::uint32_t layer, std::uint32_t expert, cls c = cls::near, float score = 0.5f) {
    return prefetch_request{ExpertId{layer, expert}, c, score};
}

// The requests in serve() order, left in the queue.
std::vector<load_queue::queued_request> order(load_queue& q, std::uint32_t current_layer) {
    std::vector<load_queue::queued_request> out;
    q.serve(current_layer, [&](const load_queue::queued_request& r) {
        out.push_back(r);
        return false;
    });
    return out;
}

std::vector<ExpertId> ids_of(const std::vector<load_queue::queued_request>& v) {
    std::vector<ExpertId> out;
    for (const auto& r : v) out.push_back(r.id);
    return out;
}

load_queue make_queue(std::uint32_t n_layer = 4, std::uint32_t n_expert = 8, std::uint32_t n_slots = 4,
                      load_queue::limits bounds = {}) {
    load_queue q;
    q.reset(n_layer, n_expert, n_slots, bounds);
    return q;
}

TEST(load_queue, serves_by_class_then_layer_distance_then_score_then_expert) {
    load_queue q = make_queue();
    q.push(req(3, 0, cls::warmup, 1.0f));
    q.push(req(0, 1, cls::far, 0.9f));   // layer 0 is 2 layers after layer 2 (cyclic)
    q.push(req(3, 2, cls::far, 0.1f));   // layer 3 is next after 2
    q.push(req(2, 3, cls::near, 0.2f));
    q.push(req(2, 4, cls::near, 0.8f));
    q.push(req(2, 5, cls::near, 0.8f));  // same score: lower expert first
    q.push(req(1, 6, cls::demand, 0.0f));
    const std::vector<ExpertId> want = {{1, 6}, {2, 4}, {2, 5}, {2, 3}, {3, 2}, {0, 1}, {3, 0}};
    EXPECT_EQ(ids_of(order(q, 2)), want);
    EXPECT_EQ(q.size(), 7u);
}

TEST(load_queue, a_second_request_merges_into_the_first) {
    load_queue q = make_queue();
    q.push(req(1, 1, cls::far, 0.3f));
    q.push(req(1, 1, cls::near, 0.1f));
    q.push(req(1, 1, cls::warmup, 0.7f));
    ASSERT_EQ(q.size(), 1u);
    const auto v = order(q, 0);
    EXPECT_EQ(v[0].cls, cls::near);         // the better class
    EXPECT_FLOAT_EQ(v[0].score, 0.7f);      // the higher score
}

TEST(load_queue, a_newer_batch_supersedes_what_it_does_not_repeat_for_its_layers) {
    load_queue q = make_queue();
    q.push(req(1, 0));
    q.push(req(1, 1));
    q.push(req(1, 2, cls::warmup));  // warmup: never superseded
    q.push(req(2, 0));               // another layer: untouched
    const std::vector<prefetch_request> batch = {req(1, 1, cls::far), req(3, 5, cls::warmup), req(9, 9)};
    EXPECT_EQ(q.supersede(batch), 1u);  // (1,0); out-of-range (9,9) ignored
    const std::vector<std::uint32_t> touched(q.touched_layers().begin(), q.touched_layers().end());
    EXPECT_EQ(touched, std::vector<std::uint32_t>{1});  // a warmup request predicts no layer
    const std::vector<ExpertId> left = ids_of(order(q, 0));
    EXPECT_EQ(left, (std::vector<ExpertId>{{1, 1}, {2, 0}, {1, 2}}));
    // The scratch marks were cleared: a batch without (1,1) now drops it.
    EXPECT_EQ(q.supersede(std::vector<prefetch_request>{req(1, 7)}), 1u);
}

TEST(load_queue, passed_layers_drop_their_requests_cyclically) {
    load_queue q = make_queue();
    for (std::uint32_t l = 0; l < 4; ++l) q.push(req(l, l));
    q.push(req(0, 7, cls::warmup));
    // From layer 3 to layer 1 of the next token: layers 3 and 0 were passed.
    EXPECT_EQ(q.drop_passed(3, 1), 2u);
    const std::vector<std::uint32_t> touched(q.touched_layers().begin(), q.touched_layers().end());
    EXPECT_EQ(touched, (std::vector<std::uint32_t>{0, 3}));
    EXPECT_EQ(ids_of(order(q, 1)), (std::vector<ExpertId>{{1, 1}, {2, 2}, {0, 7}}));
    EXPECT_EQ(q.drop_passed(2, 2), 0u);
    EXPECT_TRUE(q.touched_layers().empty());
}

TEST(load_queue, drop_before_and_drop_all_and_warmup_drops) {
    load_queue q = make_queue();
    for (std::uint32_t l = 0; l < 4; ++l) q.push(req(l, 0));
    q.push(req(0, 1, cls::warmup));
    q.push(req(2, 1, cls::warmup));
    EXPECT_EQ(q.drop_before(2), 2u);
    EXPECT_EQ(q.touched_layers().size(), 2u);
    EXPECT_EQ(q.drop_before(99), 2u);  // clamped to n_layer
    EXPECT_EQ(q.touched_layers().size(), 4u);
    std::vector<std::uint8_t> keep(4 * 8, 0);
    keep[2 * 8 + 1] = 1;
    EXPECT_EQ(q.drop_warmup_not_in(keep), 1u);
    EXPECT_EQ(ids_of(order(q, 0)), (std::vector<ExpertId>{{2, 1}}));
    EXPECT_EQ(q.drop_all(), 1u);
    EXPECT_TRUE(q.empty());
    // A dropped expert may be queued again.
    q.push(req(2, 1));
    EXPECT_EQ(q.size(), 1u);
}

TEST(load_queue, serve_removes_what_is_done_and_visits_what_it_pushes) {
    load_queue q = make_queue();
    q.push(req(0, 0, cls::near));
    q.push(req(0, 1, cls::near));
    q.push(req(0, 2, cls::far));
    std::vector<ExpertId> seen;
    q.serve(0, [&](const load_queue::queued_request& r) {
        seen.push_back(r.id);
        if (seen.size() == 1) {
            q.push(req(3, 3, cls::warmup));  // a new entry: visited in this pass
            q.push(req(0, 2, cls::near, 0.9f));  // merges into the entry not yet visited
        }
        if (seen.size() == 2) q.push(req(0, 0, cls::far));  // (0,0) was removed: queued afresh
        return r.id.expert != 1;  // keep (0,1) only
    });
    EXPECT_EQ(seen, (std::vector<ExpertId>{{0, 0}, {0, 1}, {0, 2}, {3, 3}, {0, 0}}));
    EXPECT_EQ(ids_of(order(q, 0)), (std::vector<ExpertId>{{0, 1}}));
    // A request removed in this pass, queued again and then merged again: the merge lands on
    // the new entry, never on the removed one's stale place.
    q.drop_all();
    q.push(req(1, 4));
    q.push(req(1, 5));
    q.push(req(1, 6));
    q.serve(1, [&](const load_queue::queued_request& r) {
        if (r.id == ExpertId{1, 5}) q.push(req(1, 4, cls::far, 0.1f));
        if (r.id == ExpertId{1, 6}) q.push(req(1, 4, cls::demand, 1.0f));
        if (r.id == ExpertId{1, 4}) return r.cls != cls::demand;  // the first visit removes it
        return r.id == ExpertId{1, 5};
    });
    const auto v = order(q, 1);
    ASSERT_EQ(v.size(), 2u);
    EXPECT_EQ(v[0].id, (ExpertId{1, 4}));
    EXPECT_EQ(v[0].cls, cls::demand);
    EXPECT_FLOAT_EQ(v[0].score, 1.0f);
    EXPECT_EQ(v[1].id, (ExpertId{1, 6}));
}

TEST(load_queue, the_order_follows_the_current_layer_once_invalidated) {
    load_queue q = make_queue();
    q.push(req(1, 0));
    q.push(req(3, 0));
    EXPECT_EQ(ids_of(order(q, 0)), (std::vector<ExpertId>{{1, 0}, {3, 0}}));
    // Still sorted for layer 0 until told the engine moved on.
    EXPECT_EQ(ids_of(order(q, 2)), (std::vector<ExpertId>{{1, 0}, {3, 0}}));
    q.invalidate_order();
    EXPECT_EQ(ids_of(order(q, 2)), (std::vector<ExpertId>{{3, 0}, {1, 0}}));
}

TEST(load_queue, deferred_loads_leave_first_in_first_out_across_the_wrap) {
    load_queue q = make_queue(4, 8, 3);
    EXPECT_FALSE(q.has_deferred());
    std::uint32_t next = 0, expect = 0;
    for (int round = 0; round < 5; ++round) {
        while (next - expect < 3) q.defer(next++ % 3);
        for (int k = 0; k < 2; ++k) {
            ASSERT_TRUE(q.has_deferred());
            EXPECT_EQ(q.next_deferred(), expect++ % 3);
            q.pop_deferred();
        }
    }
    while (q.has_deferred()) {
        EXPECT_EQ(q.next_deferred(), expect++ % 3);
        q.pop_deferred();
    }
    EXPECT_EQ(expect, next);
}

TEST(load_queue, bytes_in_flight_bounds) {
    load_queue q = make_queue(4, 8, 4, load_queue::limits{100, 60});
    EXPECT_TRUE(q.fits(500));           // nothing in flight: one load always fits
    EXPECT_TRUE(q.fits_prefetch(500));
    q.add_inflight(50);
    EXPECT_TRUE(q.fits(50));            // 100: at the bound
    EXPECT_FALSE(q.fits(51));
    EXPECT_TRUE(q.fits_prefetch(10));   // 60: at the prefetch bound
    EXPECT_FALSE(q.fits_prefetch(11));
    q.add_inflight(50);
    EXPECT_EQ(q.inflight_bytes(), 100u);
    q.remove_inflight(70);
    EXPECT_EQ(q.inflight_bytes(), 30u);
    EXPECT_EQ(q.inflight_bytes_max(), 100u);
    load_queue unbounded = make_queue();
    unbounded.add_inflight(1u << 30);
    EXPECT_TRUE(unbounded.fits(1u << 30));
    EXPECT_TRUE(unbounded.fits_prefetch(1u << 30));
    // A prefetch bound alone (0: max_inflight_bytes has none).
    load_queue pf_only = make_queue(4, 8, 4, load_queue::limits{0, 10});
    pf_only.add_inflight(5);
    EXPECT_TRUE(pf_only.fits(1000));
    EXPECT_FALSE(pf_only.fits_prefetch(6));
}

// The plain model: a list of requests; serve order is an explicit sort key.
struct model_queue {
    std::uint32_t n_layer;
    std::vector<load_queue::queued_request> items;
    load_queue::queued_request* find(ExpertId id) {
        for (auto& q : items) {
            if (q.id == id) return &q;
        }
        return nullptr;
    }
    void push(const prefetch_request& r) {
        if (auto* q = find(r.id)) {
            q->cls = std::min(q->cls, r.cls);
            q->score = std::max(q->score, r.score);
        } else {
            items.push_back({r.id, r.cls, r.score});
        }
    }
    template <typename Pred>
    std::size_t drop(Pred p) {
        const std::size_t before = items.size();
        items.erase(std::remove_if(items.begin(), items.end(), p), items.end());
        return before - items.size();
    }
    std::vector<ExpertId> sorted(std::uint32_t layer) const {
        auto v = items;
        std::sort(v.begin(), v.end(), [&](const auto& a, const auto& b) {
            auto key = [&](const auto& q) {
                return std::tuple(static_cast<int>(q.cls), (q.id.layer + n_layer - layer) % n_layer, -q.score,
                                  q.id.expert);
            };
            return key(a) < key(b);
        });
        return ids_of(v);
    }
};

TEST(load_queue, random_operations_match_a_plain_model) {
    std::mt19937 rng(7);
    constexpr std::uint32_t n_layer = 5, n_expert = 6;
    load_queue q = make_queue(n_layer, n_expert, 4);
    model_queue m{n_layer, {}};
    auto random_req = [&] {
        return req(rng() % n_layer, rng() % n_expert, static_cast<cls>(rng() % 4), static_cast<float>(rng() % 5) / 4.0f);
    };
    for (int step = 0; step < 5000; ++step) {
        const std::uint32_t layer = rng() % n_layer;
        switch (rng() % 6) {
            case 0:
            case 1: {
                const prefetch_request r = random_req();
                q.push(r);
                m.push(r);
                break;
            }
            case 2: {
                std::vector<prefetch_request> batch;
                for (int k = 0; k < 3; ++k) batch.push_back(random_req());
                std::vector<std::uint8_t> marked_layer(n_layer, 0);
                for (const auto& r : batch) {
                    if (r.cls != cls::warmup) marked_layer[r.id.layer] = 1;
                }
                const std::size_t want = m.drop([&](const auto& x) {
                    const bool repeated = std::any_of(batch.begin(), batch.end(), [&](const auto& r) { return r.id == x.id; });
                    return x.cls != cls::warmup && marked_layer[x.id.layer] != 0 && !repeated;
                });
                ASSERT_EQ(q.supersede(batch), want) << "step " << step;
                break;
            }
            case 3: {
                const std::uint32_t to = rng() % n_layer;
                std::vector<std::uint8_t> passed(n_layer, 0);
                for (std::uint32_t l = layer; l != to; l = (l + 1) % n_layer) passed[l] = 1;
                const std::size_t want =
                    m.drop([&](const auto& x) { return x.cls != cls::warmup && passed[x.id.layer] != 0; });
                ASSERT_EQ(q.drop_passed(layer, to), want) << "step " << step;
                break;
            }
            case 4: {
                const std::size_t want = m.drop([&](const auto& x) { return x.cls != cls::warmup && x.id.layer < layer; });
                ASSERT_EQ(q.drop_before(layer), want) << "step " << step;
                break;
            }
            case 5: {
                // Serve: start (remove) a random subset, compare the order first.
                q.invalidate_order();
                const std::vector<ExpertId> want = m.sorted(layer);
                std::vector<ExpertId> got;
                std::vector<ExpertId> started;
                q.serve(layer, [&](const load_queue::queued_request& r) {
                    got.push_back(r.id);
                    const bool start = rng() % 3 == 0;
                    if (start) started.push_back(r.id);
                    return start;
                });
                ASSERT_EQ(got, want) << "step " << step;
                for (const ExpertId& id : started) m.drop([&](const auto& x) { return x.id == id; });
                break;
            }
        }
        ASSERT_EQ(q.size(), m.items.size()) << "step " << step;
    }
}

}  // namespace
}  // namespace moed::storage
