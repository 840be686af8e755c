// scheduler/expert_values: the per-expert need and eviction values as a forward pass
// advances.
// - After a truthful lookahead has been learned, the expert it points at has the highest need
//   and value in the target layer before the router runs.
// - A batch's need is the union of its tokens' (1 - prod(1 - p)), checked against the
//   predictor's own per-token probabilities.
// - Values are expert_value(need, rate, phase, ...) with the phase the file comment gives:
//   one step for the layer about to run, a whole token for a layer whose router just ran,
//   and the reload cost of each layer relative to the mean expert size.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "scheduler/expert_values.h"

namespace moed::scheduler {
namespace {

constexpr std::uint32_t n_layer = 3, n_expert = 8, k = 2;

predictor_config config(std::uint32_t slots) {
    predictor_config c;
    c.n_layer = n_layer;
    c.n_expert = n_expert;
    c.n_expert_used = k;
    c.lookahead_depth = 1;
    c.max_distance = 2;
    c.max_sequences = slots;
    return c;
}

// Feeds `tokens` tokens to slot 0: layer l chooses experts {l, l + 4} always, and the
// lookahead row of each layer names them truthfully.
void train(expert_predictor& p, expert_values& v, int tokens) {
    std::vector<float> row(n_expert);
    for (int pos = 0; pos < tokens; ++pos) {
        const active_token t[1] = {{0, pos}};
        v.begin_tokens(t);
        for (std::uint32_t l = 0; l < n_layer; ++l) {
            std::fill(row.begin(), row.end(), 0.02f);
            row[l] = row[l + 4] = 0.42f;
            p.observe_lookahead(0, pos, l, row);
            v.before_router(t, l);
            const std::vector<std::int32_t> chosen = {static_cast<std::int32_t>(l), static_cast<std::int32_t>(l + 4)};
            p.observe_routing(0, pos, l, chosen);
            v.after_router(t, l);
        }
    }
}

TEST(ExpertValues, PredictedExpertsHaveTheHighestNeedAndValue) {
    expert_predictor p(config(1));
    const std::vector<std::uint64_t> bytes = {100, 100, 100};
    expert_values v(p, bytes, 1);
    train(p, v, 200);
    const active_token t[1] = {{0, 200}};
    v.begin_tokens(t);
    std::vector<float> row(n_expert, 0.02f);
    row[1] = row[5] = 0.42f;
    p.observe_lookahead(0, 200, 0, std::vector<float>(n_expert, 0.125f));
    v.before_router(t, 0);
    p.observe_routing(0, 200, 0, std::vector<std::int32_t>{0, 4});
    v.after_router(t, 0);
    p.observe_lookahead(0, 200, 1, row);
    v.before_router(t, 1);
    const auto need = v.need(1);
    for (std::uint32_t e = 0; e < n_expert; ++e) {
        if (e == 1 || e == 5) {
            EXPECT_GT(need[e], 0.9f) << e;
        } else {
            EXPECT_LT(need[e], 0.2f) << e;
            EXPECT_GT(v.value(1, 1), v.value(1, e)) << e;
        }
    }
}

TEST(ExpertValues, BatchNeedIsTheUnionOfTokens) {
    expert_predictor p(config(2));
    expert_values v(p, {}, 2);
    train(p, v, 50);
    // Slot 1 has its own history: layer 2 used experts 6 and 7.
    p.observe_routing(1, 0, 2, std::vector<std::int32_t>{6, 7});
    const active_token batch[2] = {{0, 50}, {1, 1}};
    v.begin_tokens(batch);
    std::vector<float> scores(n_expert), p0(n_expert), p1(n_expert);
    p.predict(0, 50, 2, 0, scores, p0);
    p.predict(1, 1, 2, 0, scores, p1);
    const auto need = v.need(2);
    const auto rate = v.rate(2);
    for (std::uint32_t e = 0; e < n_expert; ++e) {
        const float want = 1.0f - (1.0f - p0[e]) * (1.0f - p1[e]);
        EXPECT_NEAR(need[e], want, 1e-5f) << e;
        EXPECT_NEAR(rate[e], want, 1e-5f) << e;
    }
    // Experts 2 and 6 are each one token's favourite: both have high need.
    EXPECT_GT(need[2], 0.5f);
    EXPECT_GT(need[6], 0.3f);
}

TEST(ExpertValues, PhasesAndReloadCost) {
    expert_predictor p(config(1));
    const std::vector<std::uint64_t> bytes = {100, 300, 100};
    expert_values v(p, bytes, 1);
    const active_token t[1] = {{0, 0}};
    v.begin_tokens(t);
    p.observe_lookahead(0, 0, 1, std::vector<float>(n_expert, 0.125f));
    v.before_router(t, 1);
    const float mean = 500.0f / 3.0f;
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        const std::uint32_t phase = l >= 1 ? l : l + n_layer;  // l - 1 + 1, or a token later
        const float cost = static_cast<float>(bytes[l]) / mean;
        for (std::uint32_t e = 0; e < n_expert; ++e) {
            EXPECT_FLOAT_EQ(v.value(l, e), expert_value(v.need(l)[e], v.rate(l)[e], phase, n_layer, cost)) << l;
        }
    }
    p.observe_routing(0, 0, 1, std::vector<std::int32_t>{0, 1});
    v.after_router(t, 1);
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        const std::uint32_t phase = l > 1 ? l - 1 : l + n_layer - 1;
        const float cost = static_cast<float>(bytes[l]) / mean;
        for (std::uint32_t e = 0; e < n_expert; ++e) {
            EXPECT_FLOAT_EQ(v.value(l, e), expert_value(v.need(l)[e], v.rate(l)[e], phase, n_layer, cost)) << l;
        }
    }
}

}  // namespace
}  // namespace moed::scheduler
