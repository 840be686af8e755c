// Checks the sampler against simple expectations: greedy is the argmax (lowest index on
// ties); a seed makes draws repeatable; top-k 1 and a vanishing temperature are greedy;
// top-k/top-p/min-p never pick outside their sets; the repetition penalty follows llama.cpp's
// sign rule; draws follow the softmax distribution; bad parameters name themselves.
#include <cmath>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "engine/sampler.h"

namespace moed::engine {
namespace {

std::vector<float> ramp_logits() { return {0.1f, 2.0f, 1.5f, -1.0f, 2.0f, 0.7f, 1.9f, -3.0f}; }

TEST(sampler, greedy_is_argmax_with_lowest_index_on_ties) {
    sampler s(sampling_params{});
    const auto logits = ramp_logits();
    EXPECT_EQ(s.sample(logits, {}), 1);
    EXPECT_EQ(argmax(logits), 1);
}

TEST(sampler, seeded_draws_repeat) {
    sampling_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 42;
    const auto logits = ramp_logits();
    sampler a(p), b(p);
    std::vector<token_id> ra, rb;
    for (int i = 0; i < 50; ++i) {
        ra.push_back(a.sample(logits, {}));
        rb.push_back(b.sample(logits, {}));
    }
    EXPECT_EQ(ra, rb);
    EXPECT_GT(std::set<token_id>(ra.begin(), ra.end()).size(), 2u) << "temperature 1 should explore";
}

TEST(sampler, top_k_one_is_greedy) {
    sampling_params p;
    p.temperature = 5.0f;
    p.top_k = 1;
    sampler s(p);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(ramp_logits(), {}), 1);
}

TEST(sampler, top_k_limits_the_choice) {
    sampling_params p;
    p.temperature = 10.0f;
    p.top_k = 3;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    sampler s(p);
    for (int i = 0; i < 200; ++i) {
        const token_id t = s.sample(ramp_logits(), {});
        EXPECT_TRUE(t == 1 || t == 4 || t == 6) << t;
    }
}

TEST(sampler, top_p_and_min_p_limit_the_choice) {
    // probabilities ~ {0.5, 0.3, 0.15, 0.05}
    const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
    sampling_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.min_p = 0.0f;
    p.top_p = 0.75f;  // keeps 0.5 + 0.3
    sampler s(p);
    for (int i = 0; i < 200; ++i) EXPECT_LE(s.sample(logits, {}), 1);
    p.top_p = 1.0f;
    p.min_p = 0.25f;  // threshold 0.125: keeps the first three
    sampler s2(p);
    for (int i = 0; i < 200; ++i) EXPECT_LE(s2.sample(logits, {}), 2);
}

TEST(sampler, draws_follow_the_distribution) {
    const std::vector<float> logits{std::log(0.6f), std::log(0.3f), std::log(0.1f)};
    sampling_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 7;
    sampler s(p);
    std::map<token_id, int> counts;
    const int n = 20000;
    for (int i = 0; i < n; ++i) ++counts[s.sample(logits, {})];
    EXPECT_NEAR(counts[0] / double(n), 0.6, 0.02);
    EXPECT_NEAR(counts[1] / double(n), 0.3, 0.02);
    EXPECT_NEAR(counts[2] / double(n), 0.1, 0.02);
}

TEST(sampler, repetition_penalty_moves_greedy_choice) {
    sampling_params p;
    p.repeat_penalty = 1.5f;
    sampler s(p);
    const std::vector<float> logits{1.0f, 1.2f, -0.5f};
    const std::vector<token_id> history{1};
    EXPECT_EQ(s.sample(logits, history), 0);  // 1.2 / 1.5 = 0.8 < 1.0
    const std::vector<float> negative{-1.0f, -0.9f, -5.0f};
    EXPECT_EQ(s.sample(negative, history), 0);  // -0.9 * 1.5 = -1.35 < -1.0
}

TEST(sampler, bad_parameters_name_themselves) {
    auto check = [](sampling_params p, const char* name) {
        auto r = p.validate();
        ASSERT_FALSE(r) << name;
        EXPECT_EQ(r.error().code, errc::invalid_argument);
        EXPECT_NE(r.error().message.find(name), std::string::npos) << r.error().message;
    };
    sampling_params p;
    p.temperature = -1.0f;
    check(p, "temperature");
    p = {};
    p.top_p = 0.0f;
    check(p, "top_p");
    p = {};
    p.min_p = 1.5f;
    check(p, "min_p");
    p = {};
    p.top_k = -2;
    check(p, "top_k");
    p = {};
    p.repeat_penalty = 0.0f;
    check(p, "repeat_penalty");
    p = {};
    p.temperature = std::nanf("");
    check(p, "temperature");
    EXPECT_TRUE(sampling_params{}.validate());
}

}  // namespace
}  // namespace moed::engine
