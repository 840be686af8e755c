// Checks the MoE router (engine/routing.h) against a reference written out here in double
// with sorting (no shared code): softmax and sigmoid gating, the selection bias that decides
// the choice but not the weights, group-limited selection (a group scores its two best), the
// chosen weights renormalised or not and scaled, and pruning masks (groups chosen among the
// allowed experts, with the fallback when they hold too few). Plain softmax routing must
// keep the bits the engine had before (softmax, then top_k_routing), so goldens of the
// older architectures stay valid. The distribution observers get sums to one and ranks the
// experts as the router selects them.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "engine/routing.h"
#include "kernels/cpu/ops.h"

namespace moed::engine {
namespace {

struct routed {
    std::vector<std::int32_t> chosen;
    std::vector<float> weights;
    std::vector<float> distribution;
};

routed run(const routing_config& rc, std::vector<float> logits, const std::vector<float>* bias, int k,
           const std::vector<std::uint8_t>* allowed = nullptr) {
    const int n = static_cast<int>(logits.size());
    routed r;
    r.chosen.resize(static_cast<std::size_t>(k));
    r.weights.resize(static_cast<std::size_t>(k));
    std::vector<float> scratch(routing_scratch_floats(rc, static_cast<std::uint32_t>(n)));
    route_token(rc, logits.data(), bias != nullptr ? bias->data() : nullptr, n, k,
                allowed != nullptr ? allowed->data() : nullptr, r.chosen.data(), r.weights.data(), scratch.data());
    r.distribution = logits;
    return r;
}

// The best `count` indices of `v` (ties: lower index), by sorting.
std::vector<int> best(const std::vector<double>& v, int count) {
    std::vector<int> idx(v.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[static_cast<std::size_t>(a)] > v[static_cast<std::size_t>(b)]; });
    idx.resize(static_cast<std::size_t>(count));
    return idx;
}

// The reference router, in double.
std::pair<std::vector<int>, std::vector<double>> reference(const routing_config& rc, const std::vector<float>& logits,
                                                           const std::vector<float>* bias, int k,
                                                           const std::vector<std::uint8_t>* allowed) {
    const int n = static_cast<int>(logits.size());
    std::vector<double> gate(static_cast<std::size_t>(n));
    if (rc.gating == gating_kind::sigmoid) {
        for (int e = 0; e < n; ++e) gate[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(logits[e])));
    } else {
        const double max = *std::max_element(logits.begin(), logits.end());
        double sum = 0.0;
        for (int e = 0; e < n; ++e) sum += gate[e] = std::exp(logits[e] - max);
        for (auto& g : gate) g /= sum;
    }
    std::vector<double> sel(gate);
    if (bias != nullptr) {
        for (int e = 0; e < n; ++e) sel[e] += (*bias)[static_cast<std::size_t>(e)];
    }
    if (allowed != nullptr) {
        for (int e = 0; e < n; ++e) {
            if ((*allowed)[static_cast<std::size_t>(e)] == 0) sel[e] = -INFINITY;
        }
    }
    if (rc.n_group > 0) {
        const int per = n / static_cast<int>(rc.n_group);
        std::vector<double> score(rc.n_group);
        for (std::uint32_t g = 0; g < rc.n_group; ++g) {
            std::vector<double> members(sel.begin() + g * per, sel.begin() + (g + 1) * per);
            std::sort(members.rbegin(), members.rend());
            score[g] = members[0] + members[1];
        }
        const std::vector<int> keep = best(score, static_cast<int>(rc.n_group_used));
        std::vector<double> masked(sel.size(), -INFINITY);
        int finite = 0;
        for (int g : keep) {
            for (int i = 0; i < per; ++i) {
                masked[g * per + i] = sel[g * per + i];
                finite += std::isfinite(masked[g * per + i]) ? 1 : 0;
            }
        }
        if (allowed == nullptr || finite >= k) sel = masked;
    }
    const std::vector<int> chosen = best(sel, k);
    std::vector<double> w;
    double sum = 0.0;
    for (int e : chosen) sum += gate[static_cast<std::size_t>(e)];
    for (int e : chosen) w.push_back(gate[static_cast<std::size_t>(e)] / (rc.normalize ? std::max(sum, 6.103515625e-5) : 1.0) * rc.scale);
    return {chosen, w};
}

std::vector<float> normal(std::mt19937& rng, int n, float stddev) {
    std::normal_distribution<float> d(0.0f, stddev);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = d(rng);
    return v;
}

void expect_reference(const routing_config& rc, const std::vector<float>& logits, const std::vector<float>* bias, int k,
                      const std::vector<std::uint8_t>* allowed, const char* what) {
    const routed got = run(rc, logits, bias, k, allowed);
    const auto [chosen, weights] = reference(rc, logits, bias, k, allowed);
    for (int j = 0; j < k; ++j) {
        ASSERT_EQ(got.chosen[static_cast<std::size_t>(j)], chosen[static_cast<std::size_t>(j)]) << what << " slot " << j;
        ASSERT_NEAR(got.weights[static_cast<std::size_t>(j)], weights[static_cast<std::size_t>(j)],
                    1e-6 * (1.0 + std::abs(weights[static_cast<std::size_t>(j)])))
            << what << " slot " << j;
    }
    double total = 0.0;
    for (float p : got.distribution) {
        ASSERT_GE(p, 0.0f) << what;
        total += p;
    }
    EXPECT_NEAR(total, 1.0, 1e-5) << what;
}

TEST(routing, matches_the_reference_for_every_variant) {
    std::mt19937 rng(21);
    const int n = 16, k = 4;
    struct variant {
        const char* name;
        routing_config rc;
        bool bias;
    };
    const std::vector<variant> variants = {
        {"softmax, renormalised", {gating_kind::softmax, true}, false},
        {"softmax, kept", {gating_kind::softmax, false}, false},
        {"softmax, scaled x16", {gating_kind::softmax, false, false, false, 16.0f}, false},
        {"sigmoid, renormalised", {gating_kind::sigmoid, true}, false},
        {"sigmoid + bias, renormalised, x2.5", {gating_kind::sigmoid, true, false, true, 2.5f}, true},
        {"sigmoid + bias, 4 groups of 4, 2 used", {gating_kind::sigmoid, true, false, true, 2.5f, 4, 2}, true},
        {"sigmoid, 8 groups of 2, 3 used, kept", {gating_kind::sigmoid, false, false, false, 1.0f, 8, 3}, false},
        {"softmax + bias, 2 groups, 1 used", {gating_kind::softmax, true, false, true, 1.0f, 2, 1}, true},
    };
    for (const variant& v : variants) {
        for (int trial = 0; trial < 200; ++trial) {
            const std::vector<float> logits = normal(rng, n, 2.0f);
            const std::vector<float> bias = normal(rng, n, 0.3f);
            expect_reference(v.rc, logits, v.bias ? &bias : nullptr, k, nullptr, v.name);
            // Pruned to 8 random experts (the group fallback is taken when the best groups
            // of allowed experts hold fewer than k of them).
            std::vector<std::uint8_t> allowed(static_cast<std::size_t>(n), 0);
            std::vector<int> order(static_cast<std::size_t>(n));
            std::iota(order.begin(), order.end(), 0);
            std::shuffle(order.begin(), order.end(), rng);
            for (int i = 0; i < 8; ++i) allowed[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = 1;
            expect_reference(v.rc, logits, v.bias ? &bias : nullptr, k, &allowed, v.name);
            const routed pruned = run(v.rc, logits, v.bias ? &bias : nullptr, k, &allowed);
            for (std::int32_t e : pruned.chosen) ASSERT_EQ(allowed[static_cast<std::size_t>(e)], 1) << v.name;
        }
    }
}

// The engine's softmax routing before the router moved here: the softmax, then
// top_k_routing (which renormalises), or the chosen probabilities as they are.
TEST(routing, plain_softmax_keeps_the_engines_bits) {
    std::mt19937 rng(3);
    const int n = 64, k = 8;
    for (int trial = 0; trial < 100; ++trial) {
        const std::vector<float> logits = normal(rng, n, 3.0f);
        std::vector<float> probs = logits;
        kernels::softmax(probs.data(), n);
        std::vector<std::int32_t> chosen(k);
        std::vector<float> weights(k);
        kernels::top_k_routing(probs.data(), n, k, chosen.data(), weights.data());
        const routed renorm = run({gating_kind::softmax, true}, logits, nullptr, k);
        EXPECT_EQ(renorm.chosen, chosen);
        EXPECT_EQ(renorm.weights, weights);
        EXPECT_EQ(renorm.distribution, probs);  // the observers' softmax, unchanged
        const routed kept = run({gating_kind::softmax, false}, logits, nullptr, k);
        EXPECT_EQ(kept.chosen, chosen);
        for (int j = 0; j < k; ++j) EXPECT_EQ(kept.weights[j], probs[static_cast<std::size_t>(chosen[j])]);
    }
}

// The logits as sigmoid scores p (inverse sigmoid).
std::vector<float> logits_of(const std::vector<float>& p) {
    std::vector<float> l;
    for (float x : p) l.push_back(std::log(x / (1.0f - x)));
    return l;
}

// Groups score their two best, not their best: a group with one strong expert loses to one
// with two good ones. Ties between groups go to the lower index.
TEST(routing, groups_score_their_two_best_experts) {
    const routing_config rc{gating_kind::sigmoid, true, false, false, 1.0f, 4, 2};
    const std::vector<float> p = {0.9f, 0.01f, 0.5f, 0.5f, 0.45f, 0.45f, 0.05f, 0.06f};
    const routed r = run(rc, logits_of(p), nullptr, 2);
    // Group scores 0.91, 1.0, 0.9, 0.11: groups 1 and 0; the best two experts there.
    EXPECT_EQ(r.chosen, (std::vector<std::int32_t>{0, 2}));
    EXPECT_NEAR(r.weights[0], 0.9f / 1.4f, 1e-5);
    // Experts outside the best groups get nothing of the distribution.
    EXPECT_EQ(r.distribution[4], 0.0f);
    EXPECT_EQ(r.distribution[6], 0.0f);
    EXPECT_GT(r.distribution[1], 0.0f);
    double sum = 0.0;
    for (float x : r.distribution) sum += x;
    EXPECT_NEAR(sum, 1.0, 1e-6);
}

// The selection bias moves the choice, never the weights.
TEST(routing, selection_bias_chooses_but_does_not_weigh) {
    const routing_config rc{gating_kind::sigmoid, true, false, true, 2.5f};
    const std::vector<float> p = {0.8f, 0.7f, 0.2f, 0.1f};
    const std::vector<float> bias = {0.0f, 0.0f, 0.7f, 0.0f};
    const routed r = run(rc, logits_of(p), &bias, 2);
    EXPECT_EQ(r.chosen, (std::vector<std::int32_t>{2, 0}));  // 0.9 and 0.8
    EXPECT_NEAR(r.weights[0], 0.2 / 1.0 * 2.5, 1e-5);
    EXPECT_NEAR(r.weights[1], 0.8 / 1.0 * 2.5, 1e-5);
    // The distribution ranks as the selection does: expert 2 first.
    EXPECT_GT(r.distribution[2], r.distribution[0]);
    EXPECT_GT(r.distribution[0], r.distribution[1]);
}

// Pruned with groups: the groups are chosen among the allowed experts, and when the best
// groups hold fewer than k allowed experts every allowed expert competes.
TEST(routing, pruning_with_groups) {
    const routing_config rc{gating_kind::sigmoid, true, false, false, 1.0f, 4, 2};
    const std::vector<float> p = {0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f, 0.2f};
    // Only group 3: its two experts.
    std::vector<std::uint8_t> only_last = {0, 0, 0, 0, 0, 0, 1, 1};
    EXPECT_EQ(run(rc, logits_of(p), nullptr, 2, &only_last).chosen, (std::vector<std::int32_t>{6, 7}));
    // One expert in each of groups 0 and 3: no group has two, so all allowed compete.
    std::vector<std::uint8_t> split = {0, 1, 0, 0, 0, 0, 0, 1};
    EXPECT_EQ(run(rc, logits_of(p), nullptr, 2, &split).chosen, (std::vector<std::int32_t>{1, 7}));
    // The distribution does not depend on the mask.
    EXPECT_EQ(run(rc, logits_of(p), nullptr, 2, &split).distribution, run(rc, logits_of(p), nullptr, 2).distribution);
}

// The lookahead's distribution is route_token's.
TEST(routing, distribution_alone_equals_routings) {
    std::mt19937 rng(9);
    const routing_config rc{gating_kind::sigmoid, true, false, true, 2.5f, 4, 2};
    const std::vector<float> bias = normal(rng, 16, 0.3f);
    for (int trial = 0; trial < 20; ++trial) {
        const std::vector<float> logits = normal(rng, 16, 2.0f);
        std::vector<float> alone = logits;
        std::vector<float> scratch(routing_scratch_floats(rc, 16));
        routing_distribution(rc, alone.data(), bias.data(), 16, scratch.data());
        EXPECT_EQ(alone, run(rc, logits, &bias, 4).distribution);
    }
}

}  // namespace
}  // namespace moed::engine
