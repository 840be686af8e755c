// Checks the sampler against simple expectations: greedy is the argmax (lowest index on
// ties); a seed makes draws repeatable; top-k 1 and a vanishing temperature (down to the
// smallest denormal) are greedy, huge ones draw evenly, T = 0.5 squares the odds;
// top-k/top-p/min-p never pick outside their sets; the repetition penalty follows llama.cpp's
// sign rule; OpenAI's presence and frequency penalties follow their formula over the
// generated tokens only (greedy flips where the formula says, draws follow the penalized
// softmax); logit bias -100 bans and +100 forces; log_softmax_of matches a direct
// computation, with the top list ordered; draws follow the softmax distribution; bad
// parameters name themselves.
#include <cfloat>
#include <cmath>
#include <limits>
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

// Temperatures so small that a logit divided by them overflows to infinity (below about
// 1e-37 for logits of a few units), down to the smallest denormal, are the limit T -> 0:
// the most likely candidate every time, whatever the seed, with positive, negative and
// mixed logits and with or without top-k.
TEST(sampler, tiny_temperatures_are_greedy) {
    const std::vector<std::vector<float>> cases{
        {0.1f, 2.0f, 1.5f, -1.0f, 1.95f, 0.7f, 1.9f, -3.0f},  // mixed signs, best 1, second 4
        {3.0f, 7.5f, 7.25f, 1.0f},                          // all positive
        {-4.0f, -0.5f, -0.75f, -9.0f},                      // all negative
    };
    const std::vector<float> temperatures{1e-30f, 1e-37f, 1e-38f, FLT_MIN, 1e-45f,
                                          std::numeric_limits<float>::denorm_min()};
    for (const float t : temperatures) {
        for (const std::int32_t top_k : {2, 0}) {
            for (const auto& logits : cases) {
                const token_id greedy = argmax(logits);
                for (std::uint64_t seed = 0; seed < 50; ++seed) {
                    sampling_params p;
                    p.temperature = t;
                    p.top_k = top_k;
                    p.top_p = 1.0f;
                    p.min_p = 0.0f;
                    p.seed = seed;
                    ASSERT_TRUE(p.validate());
                    sampler s(p);
                    ASSERT_EQ(s.sample(logits, {}), greedy) << "temperature " << t << " top_k " << top_k << " seed " << seed;
                }
            }
        }
    }
}

// Equal best logits stay a fair choice between them as T -> 0 (the limit of the softmax).
TEST(sampler, tiny_temperature_splits_ties_between_the_best) {
    const std::vector<float> logits{1.0f, 5.0f, 5.0f, 4.0f};
    sampling_params p;
    p.temperature = 1e-40f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 3;
    sampler s(p);
    std::map<token_id, int> counts;
    const int n = 4000;
    for (int i = 0; i < n; ++i) ++counts[s.sample(logits, {})];
    EXPECT_EQ(counts[1] + counts[2], n);
    EXPECT_NEAR(counts[1] / double(n), 0.5, 0.05);
}

// Huge temperatures flatten the kept candidates towards uniform without overflowing.
TEST(sampler, huge_temperatures_draw_evenly_from_the_kept_candidates) {
    const std::vector<float> logits{0.0f, 3.0f, 2.0f, -2.0f};
    for (const float t : {100.0f, 1e30f, std::numeric_limits<float>::max()}) {
        sampling_params p;
        p.temperature = t;
        p.top_k = 3;
        p.top_p = 1.0f;
        p.min_p = 0.0f;
        p.seed = 11;
        sampler s(p);
        std::map<token_id, int> counts;
        const int n = 6000;
        for (int i = 0; i < n; ++i) ++counts[s.sample(logits, {})];
        EXPECT_EQ(counts[3], 0) << t;  // outside top-k
        for (const token_id id : {0, 1, 2}) EXPECT_NEAR(counts[id] / double(n), 1.0 / 3.0, 0.04) << t << " " << id;
    }
}

// A normal temperature below 1 still samples: p_i^(1/T) renormalised, here T = 0.5.
TEST(sampler, half_temperature_sharpens_the_distribution) {
    const std::vector<float> logits{std::log(0.6f), std::log(0.3f), std::log(0.1f)};
    sampling_params p;
    p.temperature = 0.5f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 5;
    sampler s(p);
    std::map<token_id, int> counts;
    const int n = 20000;
    for (int i = 0; i < n; ++i) ++counts[s.sample(logits, {})];
    const double z = 0.36 + 0.09 + 0.01;
    EXPECT_NEAR(counts[0] / double(n), 0.36 / z, 0.02);
    EXPECT_NEAR(counts[1] / double(n), 0.09 / z, 0.02);
    EXPECT_NEAR(counts[2] / double(n), 0.01 / z, 0.01);
    EXPECT_GT(counts[2], 0);
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

TEST(sampler, openai_penalties_count_generated_tokens_only) {
    sampling_params p;
    p.frequency_penalty = 0.1f;
    p.presence_penalty = 0.2f;
    const std::vector<float> logits{1.0f, 1.45f};
    // Token 1 generated twice: 1.45 - 2 * 0.1 - 0.2 = 1.05 > 1.0, still chosen.
    const std::vector<token_id> twice{0, 1, 1};
    EXPECT_EQ(sampler(p).sample(logits, twice, 2), 1);
    // Three times: 1.45 - 0.3 - 0.2 = 0.95 < 1.0.
    const std::vector<token_id> thrice{0, 1, 1, 1};
    EXPECT_EQ(sampler(p).sample(logits, thrice, 3), 0);
    // The same tokens in the prompt are not penalized.
    EXPECT_EQ(sampler(p).sample(logits, thrice, 0), 1);
    // Negative penalties encourage repetition: token 0 once, 1.0 + 0.3 + 0.2 > 1.45.
    p.frequency_penalty = -0.3f;
    p.presence_penalty = -0.2f;
    const std::vector<token_id> once{0};
    EXPECT_EQ(sampler(p).sample(logits, once, 1), 0);
}

TEST(sampler, openai_penalties_shape_the_distribution_as_the_formula_says) {
    sampling_params p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 7;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.5f;
    sampler s(p);
    const std::vector<float> logits{0.0f, 0.0f};
    const std::vector<token_id> history{0, 0};  // both generated: token 0 loses 2 * 0.5 + 0.5
    const int n = 20000;
    int zeros = 0;
    for (int i = 0; i < n; ++i) zeros += s.sample(logits, history, 2) == 0 ? 1 : 0;
    const double expected = 1.0 / (1.0 + std::exp(1.5));
    EXPECT_NEAR(static_cast<double>(zeros) / n, expected, 0.01);
}

TEST(sampler, logit_bias_bans_and_forces) {
    const auto logits = ramp_logits();  // greedy picks 1
    sampling_params p;
    p.logit_bias = {{1, -100.0f}};
    EXPECT_EQ(sampler(p).sample(logits, {}), 4) << "the tie partner of the banned token";
    p.logit_bias = {{1, -100.0f}, {4, -100.0f}};
    EXPECT_EQ(sampler(p).sample(logits, {}), 6);
    p.logit_bias = {{7, 100.0f}};
    EXPECT_EQ(sampler(p).sample(logits, {}), 7);
    p.logit_bias = {{3, 0.5f}};  // -1.0 + 0.5: a small bias moves nothing here
    EXPECT_EQ(sampler(p).sample(logits, {}), 1);

    // Sampling never draws a banned token, even at a huge temperature.
    p.temperature = 50.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 3;
    p.logit_bias = {{1, -100.0f}, {4, -100.0f}};
    sampler s(p);
    std::set<token_id> seen;
    for (int i = 0; i < 2000; ++i) seen.insert(s.sample(logits, {}));
    EXPECT_FALSE(seen.contains(1));
    EXPECT_FALSE(seen.contains(4));
    EXPECT_EQ(seen.size(), 6u);
}

TEST(sampler, log_softmax_matches_a_direct_computation) {
    const auto logits = ramp_logits();
    double z = 0.0;
    for (float l : logits) z += std::exp(static_cast<double>(l));
    token_logprob lp;
    log_softmax_of(logits, 5, 3, lp);
    EXPECT_EQ(lp.token, 5);
    EXPECT_NEAR(lp.logprob, logits[5] - std::log(z), 1e-6);
    ASSERT_EQ(lp.top.size(), 3u);
    // 2.0 (ids 1 and 4: the lower first), then 1.9 (id 6).
    EXPECT_EQ(lp.top[0].first, 1);
    EXPECT_EQ(lp.top[1].first, 4);
    EXPECT_EQ(lp.top[2].first, 6);
    for (const auto& [id, l] : lp.top) EXPECT_NEAR(l, logits[static_cast<std::size_t>(id)] - std::log(z), 1e-6);
    double total = 0.0;
    log_softmax_of(logits, 0, logits.size(), lp);
    for (const auto& entry : lp.top) total += std::exp(static_cast<double>(entry.second));
    EXPECT_NEAR(total, 1.0, 1e-6);
    // Large logits do not overflow: the maximum is taken out first.
    const std::vector<float> big{1000.0f, 999.0f};
    log_softmax_of(big, 1, 0, lp);
    EXPECT_NEAR(lp.logprob, -1.0 - std::log1p(std::exp(-1.0)), 1e-6);
    EXPECT_TRUE(lp.top.empty());
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
    p = {};
    p.presence_penalty = 2.5f;
    check(p, "presence_penalty");
    p = {};
    p.frequency_penalty = -2.01f;
    check(p, "frequency_penalty");
    p = {};
    p.logit_bias = {{5, 101.0f}};
    check(p, "logit_bias.5");
    p = {};
    p.logit_bias.resize(max_logit_bias_entries + 1);
    check(p, "logit_bias");
    EXPECT_TRUE(sampling_params{}.validate());
}

}  // namespace
}  // namespace moed::engine
