// Pruned routing (batch_token::allowed_experts) on the bundled tinymoe model (16 experts,
// top-4): a mask that allows every expert gives bitwise the logits and routing of no mask;
// with 5 allowed experts per layer every token's choice is the top-4 of the allowed ones by
// the router's (unmasked) probabilities, in decreasing order, with weights renormalised over
// them (summing to 1), and the logits change; a
// sequence with a mask batched with one without leaves the other's logits as they are
// alone; a layer allowing fewer experts than each token uses is an error naming it.
#include <algorithm>
#include <cmath>
#include <numeric>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

std::unique_ptr<model> load_tinymoe() {
    auto m = model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
    EXPECT_TRUE(m) << m.error().message;
    return m ? std::move(m).value() : nullptr;
}

struct run_out {
    std::vector<float> logits;                      // last token's
    std::vector<std::vector<float>> probs;          // per layer [n][n_expert]
    std::vector<std::vector<std::int32_t>> chosen;  // per layer [n][k]
    std::vector<std::vector<float>> weights;        // per layer [n][k], renormalised
};

// Runs `tokens` as one batch of one sequence with `mask` (may be null).
run_out run(model& m, const std::vector<token_id>& tokens, const std::uint8_t* mask) {
    kernels::compute_pool pool(2);
    evaluator eval(m, pool, 64);
    kv_cache cache(m.hparams().n_layer, 128, m.hparams().n_head_kv, m.hparams().head_dim);
    run_out out;
    out.probs.resize(m.hparams().n_layer);
    out.chosen.resize(m.hparams().n_layer);
    out.weights.resize(m.hparams().n_layer);
    eval.set_routing_observer([&](const routing_event& ev) {
        out.probs[ev.layer].assign(ev.probs.begin(), ev.probs.end());
        out.chosen[ev.layer].assign(ev.chosen.begin(), ev.chosen.end());
        out.weights[ev.layer].assign(ev.weights.begin(), ev.weights.end());
    });
    std::vector<batch_token> batch;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        batch.push_back(batch_token{tokens[i], static_cast<std::int64_t>(i), &cache, i + 1 == tokens.size(), 0, mask});
    }
    out.logits.resize(static_cast<std::size_t>(m.hparams().n_vocab));
    auto r = eval.run(batch, out.logits.data());
    EXPECT_TRUE(r) << r.error().message;
    return out;
}

std::vector<token_id> prompt_of(const model& m) { return m.vocab().encode("int main(void) {\n    return 0;\n}\n", false); }

TEST(routing_mask, allowing_every_expert_changes_nothing) {
    auto m = load_tinymoe();
    ASSERT_TRUE(m);
    const auto& hp = m->hparams();
    const std::vector<std::uint8_t> all(static_cast<std::size_t>(hp.n_layer) * hp.n_expert, 1);
    const auto tokens = prompt_of(*m);
    const run_out plain = run(*m, tokens, nullptr);
    const run_out masked = run(*m, tokens, all.data());
    EXPECT_EQ(plain.logits, masked.logits);
    EXPECT_EQ(plain.chosen, masked.chosen);
}

TEST(routing_mask, choices_stay_inside_the_allowed_set) {
    auto m = load_tinymoe();
    ASSERT_TRUE(m);
    const auto& hp = m->hparams();
    const int n_exp = static_cast<int>(hp.n_expert);
    const int k = static_cast<int>(hp.n_expert_used);
    ASSERT_EQ(k, 4);
    // Five experts per layer, a different set in each layer.
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(hp.n_layer) * n_exp, 0);
    for (std::uint32_t l = 0; l < hp.n_layer; ++l) {
        for (int i = 0; i < 5; ++i) mask[l * n_exp + (static_cast<int>(l) + 3 * i) % n_exp] = 1;
    }
    const auto tokens = prompt_of(*m);
    const auto n = static_cast<std::int64_t>(tokens.size());
    const run_out plain = run(*m, tokens, nullptr);
    const run_out pruned = run(*m, tokens, mask.data());
    EXPECT_NE(plain.logits, pruned.logits);
    for (float v : pruned.logits) ASSERT_TRUE(std::isfinite(v));
    for (std::uint32_t l = 0; l < hp.n_layer; ++l) {
        for (std::int64_t t = 0; t < n; ++t) {
            const float* p = pruned.probs[l].data() + t * n_exp;
            // The softmax the observer sees is over all experts.
            EXPECT_NEAR(std::accumulate(p, p + n_exp, 0.0), 1.0, 1e-5);
            // Expected: the allowed experts by decreasing probability (lower index on ties).
            std::vector<int> allowed;
            for (int e = 0; e < n_exp; ++e) {
                if (mask[l * n_exp + e]) allowed.push_back(e);
            }
            std::stable_sort(allowed.begin(), allowed.end(), [&](int a, int b) { return p[a] > p[b]; });
            const std::int32_t* c = pruned.chosen[l].data() + t * k;
            const float* w = pruned.weights[l].data() + t * k;
            double chosen_sum = 0.0;
            for (int s = 0; s < k; ++s) chosen_sum += p[c[s]];
            double weight_sum = 0.0;
            for (int s = 0; s < k; ++s) {
                EXPECT_TRUE(mask[l * n_exp + c[s]]) << "layer " << l << " token " << t << " chose " << c[s];
                EXPECT_EQ(c[s], allowed[static_cast<std::size_t>(s)]) << "layer " << l << " token " << t << " slot " << s;
                // Renormalised over the chosen (allowed) experts only.
                EXPECT_NEAR(w[s], p[c[s]] / chosen_sum, 1e-6) << "layer " << l << " token " << t << " slot " << s;
                weight_sum += w[s];
            }
            EXPECT_NEAR(weight_sum, 1.0, 1e-5) << "layer " << l << " token " << t;
        }
    }
}

TEST(routing_mask, masked_and_plain_sequences_share_a_batch) {
    auto m = load_tinymoe();
    ASSERT_TRUE(m);
    const auto& hp = m->hparams();
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(hp.n_layer) * hp.n_expert, 0);
    for (std::uint32_t l = 0; l < hp.n_layer; ++l) {
        for (std::uint32_t e = 0; e < hp.n_expert_used; ++e) mask[l * hp.n_expert + e] = 1;
    }
    const auto tokens = prompt_of(*m);
    const run_out plain_alone = run(*m, tokens, nullptr);
    const run_out masked_alone = run(*m, tokens, mask.data());

    kernels::compute_pool pool(2);
    evaluator eval(*m, pool, 64);
    kv_cache a(hp.n_layer, 128, hp.n_head_kv, hp.head_dim), b(hp.n_layer, 128, hp.n_head_kv, hp.head_dim);
    std::vector<batch_token> batch;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
        const bool last = i + 1 == tokens.size();
        batch.push_back(batch_token{tokens[i], static_cast<std::int64_t>(i), &a, last, 1, nullptr});
        batch.push_back(batch_token{tokens[i], static_cast<std::int64_t>(i), &b, last, 2, mask.data()});
    }
    std::vector<float> logits(2 * static_cast<std::size_t>(hp.n_vocab));
    ASSERT_TRUE(eval.run(batch, logits.data()));
    const std::vector<float> got_plain(logits.begin(), logits.begin() + hp.n_vocab);
    const std::vector<float> got_masked(logits.begin() + hp.n_vocab, logits.end());
    EXPECT_EQ(got_plain, plain_alone.logits);
    EXPECT_EQ(got_masked, masked_alone.logits);
}

TEST(routing_mask, too_few_allowed_experts_is_an_error) {
    auto m = load_tinymoe();
    ASSERT_TRUE(m);
    const auto& hp = m->hparams();
    std::vector<std::uint8_t> mask(static_cast<std::size_t>(hp.n_layer) * hp.n_expert, 1);
    for (std::uint32_t e = 0; e < hp.n_expert - 3; ++e) mask[2 * hp.n_expert + e] = 0;  // layer 2: 3 left
    kernels::compute_pool pool(1);
    evaluator eval(*m, pool, 8);
    kv_cache cache(hp.n_layer, 16, hp.n_head_kv, hp.head_dim);
    const batch_token bt{1, 0, &cache, true, 0, mask.data()};
    std::vector<float> logits(static_cast<std::size_t>(hp.n_vocab));
    auto r = eval.run(std::span<const batch_token>(&bt, 1), logits.data());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::invalid_argument);
    EXPECT_NE(r.error().message.find("layer 2 allows 3 experts"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace moed::engine
