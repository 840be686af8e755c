// The evaluator drives the tiers' layer clock itself, prefetching or not: every batch
// begins and ends each layer on the tier, so the tier counts the tokens computed, the layers
// and how long a layer computes, and acquires ask for experts on the host (where the CPU
// kernels compute). With every expert resident there is no tier to drive. These counters are
// what /v1/status shows; before, only the prefetch planner moved the clock, so a daemon with
// prefetch off reported 0 tokens.
#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

const std::string model_path() { return test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

load_options quarter_budget() {
    load_options o;
    o.host_budget = budget_spec{0, 0.25, true};
    o.tier.lock = storage::memory_lock::off;
    return o;
}

TEST(layer_clock, the_evaluator_counts_tokens_and_layers_without_a_planner) {
    auto loaded = model::load(model_path(), quarter_budget());
    ASSERT_TRUE(loaded) << loaded.error().message;
    model& m = **loaded;
    ASSERT_NE(m.tiers(), nullptr);
    const auto& hp = m.hparams();
    kernels::compute_pool pool(2);
    evaluator eval(m, pool, 64);  // no prefetch attached

    const std::vector<token_id> prompt = {970, 11, 1879, 0, 576, 1156, 13};
    kv_cache cache(hp.n_layer, 64, hp.n_head_kv, hp.head_dim);
    std::vector<float> logits;
    auto prefill = eval.run_sequence(prompt, cache, logits);  // one batch of 7 tokens
    ASSERT_TRUE(prefill) << prefill.error().message;
    token_id next = 0;
    for (int step = 0; step < 5; ++step) {  // five batches of one token
        next = static_cast<token_id>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        auto decoded = eval.run_sequence(std::span<const token_id>(&next, 1), cache, logits);
        ASSERT_TRUE(decoded) << decoded.error().message;
    }

    const storage::expert_cache_stats st = m.tiers()->stats();
    EXPECT_EQ(st.prefetch.tokens, prompt.size() + 5);
    EXPECT_EQ(st.prefetch.layers_computed, 6u * hp.n_layer);
    EXPECT_GT(st.prefetch.layer_compute_us, 0.0);
    EXPECT_EQ(st.prefetch.requested, 0u);  // nobody prefetched
    EXPECT_GT(st.host.misses, 0u);         // a quarter of the experts cannot hold them all
}

TEST(layer_clock, resident_experts_have_no_tier) {
    auto loaded = model::load(model_path());
    ASSERT_TRUE(loaded) << loaded.error().message;
    EXPECT_EQ((*loaded)->tiers(), nullptr);
    EXPECT_EQ((*loaded)->experts().control(), nullptr);
}

}  // namespace
}  // namespace moed::engine
