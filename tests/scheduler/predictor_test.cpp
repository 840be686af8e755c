// The expert predictor (scheduler/predictor.h) and the recall measurement
// (scheduler/recall.h) on synthetic traces whose structure is known:
// - recall_at_k by hand, ties included;
// - cross-layer structure (layer l+1's experts a fixed function of layer l's, tokens
//   random): coactivation learns it (recall near 1), history cannot (near k/n), and the
//   combined predictor follows coactivation;
// - a truthful but noisy lookahead with random routing: the combined predictor follows the
//   lookahead; sequences that reuse their experts with a lying lookahead: it follows reuse.
//   In every case it is at least as good as each single predictor at every layer and
//   distance (within 0.02 for online learning noise), which a fixed sum cannot be in both;
// - calibration: probabilities near 1 where the lookahead is truthful, near k/n where
//   nothing is predictable;
// - reset_sequence forgets the sequence's history; TCESS by hand.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <tuple>

#include "scheduler/predictor.h"
#include "scheduler/recall.h"
#include "tests/scheduler/synthetic_trace.h"

namespace moed::scheduler {
namespace {

using test::append_sequence;
using test::routing;

TEST(Predictor, RecallAtKByHand) {
    const std::vector<float> scores = {0.1f, 0.5f, 0.2f, 0.2f, 0.0f};
    // Ranking: 1 (0.5), 2 (0.2, lower index wins the tie), 3 (0.2), 0, 4.
    const std::vector<std::int32_t> chosen = {3, 1};
    EXPECT_EQ(hits_at_k(scores, chosen, 1), 1u);
    EXPECT_EQ(hits_at_k(scores, chosen, 2), 1u);  // 3 loses the tie to 2
    EXPECT_EQ(hits_at_k(scores, chosen, 3), 2u);
    EXPECT_FLOAT_EQ(recall_at_k(scores, chosen, 2), 0.5f);
    EXPECT_FLOAT_EQ(recall_at_k(scores, {}, 2), 0.0f);
}

std::vector<std::int32_t> random_set(std::mt19937& rng, std::uint32_t n, std::uint32_t k) {
    std::vector<std::int32_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    return {all.begin(), all.begin() + k};
}

recall_report measure(const trace_data& t, std::uint32_t max_distance = 2) {
    auto order = decode_order(t);
    EXPECT_TRUE(order.has_value());
    recall_options o;
    o.predictor.max_distance = max_distance;
    auto r = measure_recall(t, *order, o);
    EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message);
    return *r;
}

// Combined >= every single predictor at every layer and distance, within `slack`.
void expect_combined_dominates(const recall_report& r, double slack) {
    for (std::uint32_t d = 0; d <= r.max_distance; ++d) {
        for (std::uint32_t l = 0; l < r.n_layer; ++l) {
            const recall_counts& comb = r.at(recall_predictor::combined, d, l);
            if (comb.samples == 0) continue;
            for (std::size_t p = 0; p < n_recall_predictors; ++p) {
                const auto rp = static_cast<recall_predictor>(p);
                if (!is_single_source(rp)) continue;
                const recall_counts& single = r.at(rp, d, l);
                if (single.samples == 0) continue;
                EXPECT_GE(comb.recall_k(), single.recall_k() - slack)
                    << recall_predictor_name(rp) << " distance " << d << " layer " << l;
                EXPECT_GE(comb.recall_2k(), single.recall_2k() - slack)
                    << recall_predictor_name(rp) << " distance " << d << " layer " << l << " (2k)";
            }
        }
    }
}

TEST(Predictor, CoactivationLearnsCrossLayerStructure) {
    const std::uint32_t n_layer = 3, n_expert = 8, k = 2;
    std::mt19937 rng(1);
    trace_data t;
    t.info = {"synthetic", "", n_layer, n_expert, k, 0, {}};
    for (std::uint64_t seq = 0; seq < 4; ++seq) {
        routing steps(300);
        for (auto& tok : steps) {
            tok.push_back(random_set(rng, n_expert, k));
            for (std::uint32_t l = 1; l < n_layer; ++l) {
                std::vector<std::int32_t> next;
                for (std::int32_t e : tok.back()) next.push_back((e + 3) % static_cast<std::int32_t>(n_expert));
                tok.push_back(next);
            }
        }
        append_sequence(t, seq, steps);
    }
    const recall_report r = measure(t);
    for (std::uint32_t l = 1; l < n_layer; ++l) {
        EXPECT_GT(r.at(recall_predictor::coactivation, 1, l).recall_k(), 0.95) << "layer " << l;
        EXPECT_LT(r.at(recall_predictor::previous_token, 1, l).recall_k(), 0.4) << "layer " << l;
        EXPECT_GT(r.at(recall_predictor::combined, 1, l).recall_k(), 0.95) << "layer " << l;
    }
    // Two layers back the map is (e + 6) mod 8: also learned.
    EXPECT_GT(r.at(recall_predictor::coactivation, 2, 2).recall_k(), 0.95);
    expect_combined_dominates(r, 0.02);
}

// Each layer's lookahead row for the target puts `truth` on the target's chosen experts and
// the rest uniformly (routing random); or, when `lie`, on other random experts.
void add_lookahead(trace_data& t, float truth, bool lie, std::uint32_t depth, std::mt19937& rng) {
    const std::uint32_t ne = t.info.n_expert;
    t.info.lookahead_depth = depth;
    // Records are token-major with layers in order: index by (seq, pos, layer).
    std::map<std::tuple<std::uint64_t, std::int64_t, std::uint32_t>, const trace_record*> at;
    for (const trace_record& r : t.records) at[{r.seq, r.pos, r.layer}] = &r;
    for (trace_record& r : t.records) {
        r.lookahead.assign(static_cast<std::size_t>(depth) * ne, 0.0f);
        for (std::uint32_t d = 0; d < depth && r.layer + d < t.info.n_layer; ++d) {
            float* row = r.lookahead.data() + static_cast<std::size_t>(d) * ne;
            for (std::uint32_t e = 0; e < ne; ++e) row[e] = (1.0f - truth) / static_cast<float>(ne);
            const trace_record* target = at[{r.seq, r.pos, r.layer + d}];
            const auto fake = random_set(rng, ne, t.info.n_expert_used);
            for (std::size_t i = 0; i < target->chosen.size(); ++i) {
                row[static_cast<std::size_t>(lie ? fake[i] : target->chosen[i])] += truth / static_cast<float>(target->chosen.size());
            }
        }
    }
}

TEST(Predictor, CombinedFollowsTruthfulLookahead) {
    const std::uint32_t n_layer = 4, n_expert = 16, k = 2;
    std::mt19937 rng(2);
    trace_data t;
    t.info = {"synthetic", "", n_layer, n_expert, k, 0, {}};
    for (std::uint64_t seq = 0; seq < 3; ++seq) {
        routing steps(300);
        for (auto& tok : steps) {
            for (std::uint32_t l = 0; l < n_layer; ++l) tok.push_back(random_set(rng, n_expert, k));
        }
        append_sequence(t, seq, steps);
    }
    add_lookahead(t, 0.5f, false, 2, rng);
    const recall_report r = measure(t, 3);
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        EXPECT_GT(r.at(recall_predictor::lookahead, 1, l).recall_k(), 0.99) << "layer " << l;
        EXPECT_GT(r.at(recall_predictor::combined, 1, l).recall_k(), 0.97) << "layer " << l;
        EXPECT_LT(r.at(recall_predictor::reuse, 1, l).recall_k(), 0.25) << "layer " << l;
    }
    expect_combined_dominates(r, 0.02);
}

TEST(Predictor, CombinedFollowsReuseWhenLookaheadLies) {
    const std::uint32_t n_layer = 3, n_expert = 16, k = 2;
    std::mt19937 rng(3);
    trace_data t;
    t.info = {"synthetic", "", n_layer, n_expert, k, 0, {}};
    for (std::uint64_t seq = 0; seq < 6; ++seq) {
        // Each sequence has its own favourite experts per layer and uses them 90% of the time.
        std::vector<std::vector<std::int32_t>> favourite;
        for (std::uint32_t l = 0; l < n_layer; ++l) favourite.push_back(random_set(rng, n_expert, k));
        routing steps(150);
        for (auto& tok : steps) {
            for (std::uint32_t l = 0; l < n_layer; ++l) {
                tok.push_back(rng() % 10 == 0 ? random_set(rng, n_expert, k) : favourite[l]);
            }
        }
        append_sequence(t, seq, steps);
    }
    add_lookahead(t, 0.6f, true, 1, rng);
    const recall_report r = measure(t, 1);
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        EXPECT_GT(r.at(recall_predictor::reuse, 1, l).recall_k(), 0.8) << "layer " << l;
        EXPECT_LT(r.at(recall_predictor::lookahead, 1, l).recall_k(), 0.3) << "layer " << l;
        EXPECT_GT(r.at(recall_predictor::combined, 1, l).recall_k(), 0.8) << "layer " << l;
    }
    expect_combined_dominates(r, 0.02);
}

TEST(Predictor, ProbabilitiesAreCalibrated) {
    predictor_config c;
    c.n_layer = 1;
    c.n_expert = 16;
    c.n_expert_used = 2;
    c.lookahead_depth = 1;
    c.max_distance = 1;
    std::mt19937 rng(4);
    for (const bool truthful : {true, false}) {
        expert_predictor p(c);
        std::vector<float> scores(16), probs(16), row(16);
        double top_prob_sum = 0.0, top_hits = 0.0;
        int measured = 0;
        for (int pos = 0; pos < 2000; ++pos) {
            const auto chosen = random_set(rng, 16, 2);
            const auto shown = truthful ? chosen : random_set(rng, 16, 2);
            std::fill(row.begin(), row.end(), 0.2f / 16.0f);
            for (std::int32_t e : shown) row[static_cast<std::size_t>(e)] += 0.4f;
            p.observe_lookahead(0, pos, 0, row);
            p.predict(0, pos, 0, 1, scores, probs);
            if (pos >= 1000) {
                const auto top = static_cast<std::size_t>(std::max_element(scores.begin(), scores.end()) - scores.begin());
                top_prob_sum += probs[top];
                top_hits += std::count(chosen.begin(), chosen.end(), static_cast<std::int32_t>(top)) ? 1.0 : 0.0;
                ++measured;
            }
            p.observe_routing(0, pos, 0, chosen);
        }
        const double predicted = top_prob_sum / measured;
        const double observed = top_hits / measured;
        EXPECT_NEAR(predicted, observed, 0.05) << (truthful ? "truthful" : "lying");
        if (truthful) {
            EXPECT_GT(predicted, 0.9);
        } else {
            EXPECT_LT(predicted, 0.25);
        }
    }
}

TEST(Predictor, ResetSequenceForgetsHistory) {
    predictor_config c;
    c.n_layer = 2;
    c.n_expert = 4;
    c.n_expert_used = 1;
    c.max_sequences = 2;
    expert_predictor p(c);
    std::vector<float> out(4);
    const std::vector<std::int32_t> e2 = {2};
    p.observe_routing(1, 0, 0, e2);
    ASSERT_TRUE(p.predict_source(prediction_source::reuse, 1, 1, 0, 0, out));
    EXPECT_EQ(std::max_element(out.begin(), out.end()) - out.begin(), 2);
    EXPECT_FALSE(p.predict_source(prediction_source::reuse, 0, 1, 0, 0, out));  // another slot
    p.reset_sequence(1);
    EXPECT_FALSE(p.predict_source(prediction_source::reuse, 1, 1, 0, 0, out));
    // Frequency is every sequence's: it still knows expert 2.
    ASSERT_TRUE(p.predict_source(prediction_source::frequency, 1, 1, 0, 0, out));
    EXPECT_EQ(std::max_element(out.begin(), out.end()) - out.begin(), 2);
}

TEST(Predictor, TcessByHand) {
    trace_data t;
    t.info = {"synthetic", "", 1, 3, 1, 0, {}};
    auto add = [&](std::uint32_t tag, std::int32_t e, float p) {
        trace_record r;
        r.seq = tag;
        r.tag = tag;
        r.pos = static_cast<std::int64_t>(t.records.size());
        r.chosen = {e};
        r.probs = {0.0f, 0.0f, 0.0f};
        r.probs[static_cast<std::size_t>(e)] = p;
        t.records.push_back(r);
    };
    add(0, 0, 0.8f);
    add(0, 1, 0.6f);
    add(1, 2, 1.0f);  // another task: not counted
    const auto s = tcess_scores(t, [](std::uint32_t tag) { return tag == 0; });
    ASSERT_EQ(s.size(), 3u);
    EXPECT_FLOAT_EQ(s[0], 0.4f);
    EXPECT_FLOAT_EQ(s[1], 0.3f);
    EXPECT_FLOAT_EQ(s[2], 0.0f);
}

}  // namespace
}  // namespace moed::scheduler
