// Checks the forward pass on small synthetic models (where every intermediate is cheap), of
// every storage type moed computes with:
// - a prompt fed as one batch, in odd-sized chunks, or token by token gives bitwise the same
//   logits (the kernels are batch-invariant, tests/kernels/batch_invariance_test.cpp);
// - sequences batched together give bitwise the same logits as each run alone (continuous
//   batching promises each user the output of their request run alone);
// - each routed expert is acquired once per layer per batch and every handle is released;
// - the routing observer sees every MoE layer with normalised probabilities;
// - bad token ids and positions are errors, not crashes;
// - logits do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/synth_fixture.h"

namespace moed::engine {
namespace {

std::unique_ptr<model> load(const std::string& type) {
    auto m = model::load(test::synthetic_model(type));
    EXPECT_TRUE(m) << m.error().message;
    return m ? std::move(m).value() : nullptr;
}

kv_cache make_cache(const model& m, std::int64_t n_ctx = 128) {
    return kv_cache(m.hparams().n_layer, n_ctx, m.hparams().n_head_kv, m.hparams().head_dim);
}

std::vector<token_id> sample_tokens(std::int64_t n, std::int64_t n_vocab) {
    std::vector<token_id> t;
    for (std::int64_t i = 0; i < n; ++i) t.push_back(static_cast<token_id>((i * 7919 + 13) % n_vocab));
    return t;
}

class evaluator_types : public ::testing::TestWithParam<std::string> {};

TEST_P(evaluator_types, chunking_does_not_change_logits) {
    auto m = load(GetParam());
    ASSERT_TRUE(m);
    kernels::compute_pool pool(2);
    const auto prompt = sample_tokens(37, m->hparams().n_vocab);

    std::vector<float> whole, chunked, single;
    {
        evaluator eval(*m, pool, 64);
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, whole));
        EXPECT_EQ(cache.size(), 37);
    }
    {
        evaluator eval(*m, pool, 5);
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, chunked));
    }
    {
        evaluator eval(*m, pool, 1);
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, single));
    }
    EXPECT_EQ(whole, chunked);
    EXPECT_EQ(whole, single);
    for (float v : whole) ASSERT_TRUE(std::isfinite(v));
}

TEST_P(evaluator_types, batched_sequences_equal_separate_runs) {
    auto m = load(GetParam());
    ASSERT_TRUE(m);
    kernels::compute_pool pool(2);
    const std::int64_t n_vocab = m->hparams().n_vocab;
    const auto a = sample_tokens(9, n_vocab);
    auto b = sample_tokens(14, n_vocab);
    std::reverse(b.begin(), b.end());

    evaluator eval(*m, pool, 32);
    std::vector<float> alone_a, alone_b;
    auto ca = make_cache(*m), cb = make_cache(*m);
    ASSERT_TRUE(eval.run_sequence(a, ca, alone_a));
    ASSERT_TRUE(eval.run_sequence(b, cb, alone_b));

    // Now both prompts in one batch, interleaved, logits for each last token. Each token
    // keeps the sum order of its place in its own prompt, as run_sequence gives it.
    auto ca2 = make_cache(*m), cb2 = make_cache(*m);
    std::vector<batch_token> batch;
    auto prompt_token = [](const std::vector<token_id>& p, std::size_t i, kv_cache* cache) {
        batch_token bt{p[i], static_cast<std::int64_t>(i), cache, i + 1 == p.size()};
        bt.order = kernels::prompt_token_order(static_cast<std::int64_t>(i), static_cast<std::int64_t>(p.size()));
        return bt;
    };
    for (std::size_t i = 0; i < std::max(a.size(), b.size()); ++i) {
        if (i < a.size()) batch.push_back(prompt_token(a, i, &ca2));
        if (i < b.size()) batch.push_back(prompt_token(b, i, &cb2));
    }
    std::vector<float> logits(2 * n_vocab);
    ASSERT_TRUE(eval.run(batch, logits.data()));
    // a's last token comes before b's last token in batch order.
    EXPECT_EQ(alone_a, std::vector<float>(logits.begin(), logits.begin() + n_vocab));
    EXPECT_EQ(alone_b, std::vector<float>(logits.begin() + n_vocab, logits.end()));
    EXPECT_EQ(ca2.size(), 9);
    EXPECT_EQ(cb2.size(), 14);
}

TEST_P(evaluator_types, thread_count_does_not_change_logits) {
    auto m = load(GetParam());
    ASSERT_TRUE(m);
    const auto prompt = sample_tokens(21, m->hparams().n_vocab);
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3}) {
        kernels::compute_pool pool(threads);
        evaluator eval(*m, pool, 16);
        auto cache = make_cache(*m);
        results.emplace_back();
        ASSERT_TRUE(eval.run_sequence(prompt, cache, results.back()));
    }
    EXPECT_EQ(results[0], results[1]);
    EXPECT_EQ(results[0], results[2]);
}

INSTANTIATE_TEST_SUITE_P(types, evaluator_types,
                         ::testing::Values("F32", "F16", "Q8_0", "Q4_K_M", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
                                           "MXFP4", "Q2_K", "Q3_K", "Q5_K", "IQ4_XS"));

// An expert source that counts what the engine asks for, over the resident one.
class counting_source final : public storage::expert_source {
public:
    explicit counting_source(std::unique_ptr<storage::expert_source> inner) : inner_(std::move(inner)) {}
    result<storage::expert_handle> acquire(ExpertId id, device_id device) override {
        auto h = inner_->acquire(id, device);
        if (!h) return h;
        ++acquired[{id.layer, id.expert}];
        ++outstanding;
        return storage::expert_handle(this, id, h->weights(), 0, h->device(), h->memory());
    }
    std::map<std::pair<std::uint32_t, std::uint32_t>, int> acquired;
    int outstanding = 0;

protected:
    void release(ExpertId, std::uint64_t) noexcept override { --outstanding; }

private:
    std::unique_ptr<storage::expert_source> inner_;
};

TEST(evaluator, each_expert_acquired_once_per_layer_and_released) {
    auto m = load("Q8_0");
    ASSERT_TRUE(m);
    auto resident = std::make_unique<storage::resident_expert_source>(
        m->file().path(), m->experts_layout(), m->weights_image(), m->file().data_offset());
    auto counting = std::make_unique<counting_source>(std::move(resident));
    counting_source* counter = counting.get();
    m->set_expert_source(std::move(counting));

    kernels::compute_pool pool(2);
    evaluator eval(*m, pool, 64);
    std::vector<std::int32_t> seen_experts;
    std::uint32_t layers_seen = 0;
    eval.set_routing_observer([&](const routing_event& ev) {
        ++layers_seen;
        const auto n_exp = m->hparams().n_expert;
        ASSERT_EQ(ev.probs.size(), static_cast<std::size_t>(ev.n_tokens * n_exp));
        ASSERT_EQ(ev.chosen.size(), static_cast<std::size_t>(ev.n_tokens * m->hparams().n_expert_used));
        for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
            double sum = 0.0;
            for (std::uint32_t e = 0; e < n_exp; ++e) sum += ev.probs[t * n_exp + e];
            EXPECT_NEAR(sum, 1.0, 1e-5);
        }
        if (ev.layer == 0) seen_experts.assign(ev.chosen.begin(), ev.chosen.end());
    });
    auto cache = make_cache(*m);
    std::vector<float> logits;
    ASSERT_TRUE(eval.run_sequence(sample_tokens(30, m->hparams().n_vocab), cache, logits));
    EXPECT_EQ(layers_seen, m->hparams().n_layer);
    EXPECT_EQ(counter->outstanding, 0);
    std::sort(seen_experts.begin(), seen_experts.end());
    seen_experts.erase(std::unique(seen_experts.begin(), seen_experts.end()), seen_experts.end());
    int layer0 = 0;
    for (const auto& [key, count] : counter->acquired) {
        EXPECT_EQ(count, 1) << "expert " << key.first << "/" << key.second << " acquired " << count << " times";
        if (key.first == 0) ++layer0;
    }
    EXPECT_EQ(layer0, static_cast<int>(seen_experts.size()));
}

TEST(evaluator, bad_tokens_and_positions_are_errors) {
    auto m = load("Q8_0");
    ASSERT_TRUE(m);
    kernels::compute_pool pool(1);
    evaluator eval(*m, pool, 4);
    auto cache = make_cache(*m, 8);
    std::vector<float> logits(m->hparams().n_vocab);

    std::vector<batch_token> bad_id{{static_cast<token_id>(m->hparams().n_vocab), 0, &cache, true}};
    auto r = eval.run(bad_id, logits.data());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::invalid_argument);
    EXPECT_NE(r.error().message.find("vocabulary"), std::string::npos) << r.error().message;

    std::vector<batch_token> bad_pos{{1, 8, &cache, true}};
    r = eval.run(bad_pos, logits.data());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("position 8"), std::string::npos) << r.error().message;

    std::vector<batch_token> too_many(5, batch_token{1, 0, &cache, false});
    EXPECT_FALSE(eval.run(too_many, logits.data()));

    std::vector<float> last;
    auto long_prompt = sample_tokens(9, m->hparams().n_vocab);
    auto seq = eval.run_sequence(long_prompt, cache, last);
    ASSERT_FALSE(seq);
    EXPECT_NE(seq.error().message.find("exceed the context"), std::string::npos) << seq.error().message;
}

}  // namespace
}  // namespace moed::engine
