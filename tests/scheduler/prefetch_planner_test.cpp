// prefetch_planner: lookahead probabilities in, scored prefetch requests out.
//
// What it checks, and how: the planner is fed hand-made lookahead rows for a synthetic model
// (3 layers x 8 experts, top-2) served by a real tiered source. plan() must rank experts by
// the router's probability, keep those at or above the threshold (at least min_per_layer, at
// most max_per_layer per token, max_current for the layer about to run), give class near to
// rows 0 and 1 and far beyond, skip rows past the last layer, leave row 0 out when asked,
// combine a batch's tokens as 1 - prod(1 - p), and add each sequence's previous experts one
// layer beyond the lookahead when history is on. Calibration: after enough single-token
// predictions whose ranks are (by construction) chosen or not, scores become the measured
// frequencies, and a rank that is never chosen stops being requested. on_routing must count
// recall against what was requested for that layer. on_layer_start must reach the source:
// the requests and the token are counted there and the experts become resident.
#include <gtest/gtest.h>

#include <algorithm>

#include "scheduler/prefetch_planner.h"
#include "storage/tiers.h"
#include "tests/storage/tiered_test_util.h"

namespace moed::scheduler {
namespace {

using storage::prefetch_class;
using storage::prefetch_request;
using namespace storage::tiered_test;

constexpr std::uint32_t n_layer = 3, n_expert = 8, n_used = 2;

struct fixture {
    model_fixture m = load_model("Q8_0", skewed_shape());
    std::unique_ptr<storage::expert_source> source;
    storage::tier_control& tiers() { return *source->control(); }
    fixture() {
        storage::tiered_options o;
        o.host_budget_bytes = storage::tiered_slot_bytes(m.layout, 4096) * 6;
        o.lock = storage::memory_lock::off;
        auto made = storage::create_tiered_source(m.path, m.layout, o);
        EXPECT_TRUE(made) << made.error().message;
        if (made) source = std::move(made).value();
    }
};

// probs for `rows` rows of one token: row j gives expert e probability p[j][e].
std::vector<float> rows_of(std::initializer_list<std::vector<float>> rows) {
    std::vector<float> out;
    for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
    return out;
}

std::vector<std::uint32_t> experts_for(const std::vector<prefetch_request>& reqs, std::uint32_t layer) {
    std::vector<std::uint32_t> out;
    for (const auto& r : reqs) {
        if (r.id.layer == layer) out.push_back(r.id.expert);
    }
    return out;
}

TEST(prefetch_planner, ranks_thresholds_classes_and_rows) {
    fixture f;
    ASSERT_TRUE(f.source);
    prefetch_planner_options o;
    o.depth = 3;
    o.min_score = 0.15f;
    o.max_per_layer = 3;
    o.max_current = 2;
    prefetch_planner p(f.tiers(), n_layer, n_expert, n_used, o);
    const auto probs = rows_of({{0.05f, 0.5f, 0.2f, 0.1f, 0.05f, 0.04f, 0.03f, 0.03f},
                                {0.3f, 0.1f, 0.1f, 0.2f, 0.16f, 0.1f, 0.02f, 0.02f},
                                {0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.2f, 0.2f}});
    std::vector<prefetch_request> reqs;
    p.plan(0, 1, {}, 3, probs, reqs);
    // Row 0 (layer 0): the two best (max_current); row 1: three at or above 0.15; row 2: the
    // two at 0.2 (the rest are below the threshold).
    EXPECT_EQ(experts_for(reqs, 0), (std::vector<std::uint32_t>{1, 2}));
    EXPECT_EQ(experts_for(reqs, 1), (std::vector<std::uint32_t>{0, 3, 4}));
    EXPECT_EQ(experts_for(reqs, 2), (std::vector<std::uint32_t>{6, 7}));
    for (const auto& r : reqs) {
        EXPECT_EQ(r.cls, r.id.layer <= 1 ? prefetch_class::near : prefetch_class::far);
        EXPECT_GE(r.score, 0.15f);
    }
    EXPECT_FLOAT_EQ(reqs.front().score, 0.5f);  // uncalibrated: the router's probability

    // Rows past the last layer are ignored; the event's depth caps the options'.
    reqs.clear();
    p.plan(2, 1, {}, 3, probs, reqs);
    EXPECT_EQ(experts_for(reqs, 2), (std::vector<std::uint32_t>{1, 2}));
    EXPECT_EQ(reqs.size(), 2u);
    reqs.clear();
    p.plan(0, 1, {}, 1, probs, reqs);
    EXPECT_EQ(reqs.size(), 2u);

    // min_per_layer wins over the threshold.
    prefetch_planner_options strict = o;
    strict.min_score = 0.9f;
    strict.min_per_layer = 1;
    prefetch_planner q(f.tiers(), n_layer, n_expert, n_used, strict);
    reqs.clear();
    q.plan(0, 1, {}, 3, probs, reqs);
    EXPECT_EQ(experts_for(reqs, 0), (std::vector<std::uint32_t>{1}));
    EXPECT_EQ(experts_for(reqs, 1), (std::vector<std::uint32_t>{0}));
    // Ties in row 2 break towards the lower expert number.
    EXPECT_EQ(experts_for(reqs, 2), (std::vector<std::uint32_t>{6}));

    // skip_current leaves row 0 out.
    prefetch_planner_options skip = o;
    skip.skip_current = true;
    prefetch_planner s(f.tiers(), n_layer, n_expert, n_used, skip);
    reqs.clear();
    s.plan(0, 1, {}, 3, probs, reqs);
    EXPECT_TRUE(experts_for(reqs, 0).empty());
    EXPECT_FALSE(experts_for(reqs, 1).empty());
}

TEST(prefetch_planner, a_batch_combines_its_tokens) {
    fixture f;
    ASSERT_TRUE(f.source);
    prefetch_planner_options o;
    o.depth = 1;
    o.min_score = 0.3f;
    o.max_current = 1;  // per token: two tokens may ask for two
    prefetch_planner p(f.tiers(), n_layer, n_expert, n_used, o);
    // Two tokens: expert 3 at 0.2 in both (1 - 0.8^2 = 0.36), expert 5 at 0.25 in one only.
    std::vector<float> probs(2 * n_expert, 0.0f);
    probs[3] = 0.2f;
    probs[n_expert + 3] = 0.2f;
    probs[5] = 0.25f;
    std::vector<prefetch_request> reqs;
    p.plan(1, 2, {}, 1, probs, reqs);
    ASSERT_EQ(reqs.size(), 1u);  // 5 is below 0.3, and the minimum (1) is met by 3
    EXPECT_EQ(reqs[0].id, (ExpertId{1, 3}));
    EXPECT_NEAR(reqs[0].score, 0.36f, 1e-6f);
}

TEST(prefetch_planner, history_reaches_one_layer_past_the_lookahead) {
    fixture f;
    ASSERT_TRUE(f.source);
    prefetch_planner_options o;
    o.depth = 1;
    o.history = true;
    o.history_score = 0.25f;
    prefetch_planner p(f.tiers(), n_layer, n_expert, n_used, o);
    const std::vector<std::uint64_t> seqs = {42};
    // Sequence 42 used experts 6 and 1 at layer 1 on its last token.
    const std::vector<std::int32_t> chosen = {6, 1};
    p.on_routing(1, 1, seqs, chosen);
    std::vector<float> probs(n_expert, 0.0f);
    probs[0] = 1.0f;
    std::vector<prefetch_request> reqs;
    p.plan(0, 1, seqs, 1, probs, reqs);
    EXPECT_EQ(experts_for(reqs, 0), (std::vector<std::uint32_t>{0}));
    ASSERT_EQ(experts_for(reqs, 1), (std::vector<std::uint32_t>{6, 1}));
    for (const auto& r : reqs) {
        if (r.id.layer == 1) {
            EXPECT_EQ(r.cls, prefetch_class::far);
            EXPECT_FLOAT_EQ(r.score, 0.25f);
        }
    }
    // Another sequence has no history; a forgotten one neither.
    reqs.clear();
    const std::vector<std::uint64_t> other = {7};
    p.plan(0, 1, other, 1, probs, reqs);
    EXPECT_TRUE(experts_for(reqs, 1).empty());
    p.forget(42);
    reqs.clear();
    p.plan(0, 1, seqs, 1, probs, reqs);
    EXPECT_TRUE(experts_for(reqs, 1).empty());
}

TEST(prefetch_planner, calibration_learns_how_often_each_rank_is_chosen) {
    fixture f;
    ASSERT_TRUE(f.source);
    prefetch_planner_options o;
    o.depth = 1;
    o.min_score = 0.5f;
    o.max_current = 4;
    o.min_per_layer = 1;
    o.calibration_samples = 8;
    prefetch_planner p(f.tiers(), n_layer, n_expert, n_used, o);
    // The router always ranks 0 > 1 > 2 > 3 (probabilities that stay below the threshold),
    // and then always chooses the experts it ranked first and third.
    std::vector<float> probs = {0.3f, 0.25f, 0.2f, 0.15f, 0.04f, 0.03f, 0.02f, 0.01f};
    const std::vector<std::int32_t> chosen = {0, 2};
    std::vector<prefetch_request> reqs;
    p.plan(1, 1, {}, 1, probs, reqs);
    EXPECT_EQ(experts_for(reqs, 1), (std::vector<std::uint32_t>{0}));  // raw scores: only the minimum
    for (int k = 0; k < 12; ++k) {
        p.on_layer_start(1, 1, {}, 1, probs);
        p.on_routing(1, 1, {}, chosen);
    }
    const auto rates = p.rank_hit_rates(0);
    EXPECT_DOUBLE_EQ(rates[0], 1.0);
    EXPECT_DOUBLE_EQ(rates[1], 0.0);
    EXPECT_DOUBLE_EQ(rates[2], 1.0);
    EXPECT_DOUBLE_EQ(rates[3], 0.0);
    reqs.clear();
    p.plan(1, 1, {}, 1, probs, reqs);
    // Calibrated: ranks 1 and 3 are certain, rank 2 never chosen: experts 0 and 2 only, scored
    // near 1 (the estimate shrinks slightly towards one half).
    std::vector<std::uint32_t> got = experts_for(reqs, 1);
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, (std::vector<std::uint32_t>{0, 2}));
    for (const auto& r : reqs) EXPECT_GT(r.score, 0.9f);
    // Recall: every routed expert of those events had been requested once calibrated; before
    // (the first events) expert 2 was not.
    const auto st = p.stats();
    EXPECT_EQ(st.layer_events, 12u);
    EXPECT_EQ(st.routed, 24u);
    EXPECT_LT(st.predicted_routed, 24u);
    EXPECT_GT(st.predicted_routed, 12u);
    EXPECT_NEAR(st.recall, static_cast<double>(st.predicted_routed) / 24.0, 1e-12);
}

TEST(prefetch_planner, layer_starts_reach_the_source) {
    fixture f;
    ASSERT_TRUE(f.source);
    prefetch_planner_options o;
    o.depth = 2;
    o.min_score = 0.1f;
    prefetch_planner p(f.tiers(), n_layer, n_expert, n_used, o);
    std::vector<float> probs(2 * n_expert, 0.0f);
    probs[1] = 0.9f;             // layer 0, expert 1
    probs[n_expert + 4] = 0.8f;  // layer 1, expert 4
    f.tiers().begin_layer(0, 1);  // the evaluator's layer clock comes first
    p.on_layer_start(0, 1, {}, 2, probs);
    auto st = f.tiers().stats();
    EXPECT_EQ(st.prefetch.requested, 2u);
    EXPECT_EQ(st.prefetch.tokens, 1u);
    ASSERT_TRUE(eventually([&] { return f.tiers().stats().host.resident_experts == 2; }));
    st = f.tiers().stats();
    EXPECT_EQ(st.layer_residency[0][1], '#');
    EXPECT_EQ(st.layer_residency[1][4], '#');
    // The router of layer 0 chose 1 and 5: half of it predicted.
    const std::vector<std::int32_t> chosen = {1, 5};
    p.on_routing(0, 1, {}, chosen);
    EXPECT_EQ(p.stats().routed, 2u);
    EXPECT_EQ(p.stats().predicted_routed, 1u);
    EXPECT_DOUBLE_EQ(p.stats().recall, 0.5);
}

}  // namespace
}  // namespace moed::scheduler
