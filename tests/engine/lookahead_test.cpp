// Checks the evaluator's observer hooks and its router lookahead on small synthetic models
// (four layers, each with its own ffn_norm weights):
// - logits are bitwise the same with lookahead depth 0 and depth 3 (the lookahead only reads
//   the residual stream);
// - each lookahead row [j][t] equals an independent naive computation (RMSNorm with layer
//   l+j's ffn_norm, dot products with its dequantized router rows, softmax, all in plain
//   double loops) on the stream the layer-start hook reports; rows past the last layer are 0;
// - routing_event carries the same lookahead the layer-start hook saw, its weights are the
//   renormalised probabilities of the chosen experts, and its tokens are the batch;
// - every observer in the list sees every layer once per run, in order, layer-start before
//   routing; set_routing_observer replaces the list;
// - batch_token::seq reaches the observers for a batch of two sequences.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <vector>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/quantize.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/synth_fixture.h"

namespace moed::engine {
namespace {

// The synthetic models' norm weights are all 1; a lookahead that used the wrong layer's
// ffn_norm would go unnoticed, so each layer gets its own pattern here.
std::string with_distinct_ffn_norms(const std::string& src) {
    const std::string dst = src + ".norms.gguf";
    if (std::filesystem::exists(dst)) return dst;
    test::rewrite_gguf(src, dst, [](test::gguf_contents& c) {
        for (auto& t : c.tensors) {
            if (!t.name.ends_with(".ffn_norm.weight")) continue;
            const int layer = std::stoi(t.name.substr(4));
            std::vector<float> w(t.data.size() / sizeof(float));
            for (std::size_t i = 0; i < w.size(); ++i) {
                w[i] = 0.25f + static_cast<float>((i * 31 + static_cast<std::size_t>(layer) * 57) % 23) / 8.0f;
            }
            std::memcpy(t.data.data(), w.data(), t.data.size());
        }
    });
    return dst;
}

std::unique_ptr<model> load(const std::string& type, const tools::synth_shape& shape) {
    auto m = model::load(with_distinct_ffn_norms(test::synthetic_model(type, shape)));
    EXPECT_TRUE(m) << m.error().message;
    return m ? std::move(m).value() : nullptr;
}

// Four layers so a depth-3 lookahead has rows inside and past the last layer.
tools::synth_shape four_layers() {
    tools::synth_shape s;
    s.layers = 4;
    return s;
}

kv_cache make_cache(const model& m, std::int64_t n_ctx = 64) {
    return kv_cache(m.hparams().n_layer, n_ctx, m.hparams().n_head_kv, m.hparams().head_dim);
}

std::vector<token_id> sample_tokens(std::int64_t n, std::int64_t n_vocab) {
    std::vector<token_id> t;
    for (std::int64_t i = 0; i < n; ++i) t.push_back(static_cast<token_id>((i * 7919 + 13) % n_vocab));
    return t;
}

// softmax(router_l(rmsnorm(x, ffn_norm_l))) in double, from dequantized router rows.
std::vector<double> naive_router(const model& m, std::uint32_t layer, const float* x) {
    const model_hparams& hp = m.hparams();
    const layer_weights& lw = m.layer(layer);
    const std::int64_t embd = hp.n_embd;
    double ss = 0.0;
    for (std::int64_t i = 0; i < embd; ++i) ss += static_cast<double>(x[i]) * x[i];
    const double scale = 1.0 / std::sqrt(ss / static_cast<double>(embd) + hp.rms_eps);
    std::vector<double> normed(static_cast<std::size_t>(embd));
    for (std::int64_t i = 0; i < embd; ++i) normed[i] = x[i] * scale * lw.ffn_norm[i];
    std::vector<float> row(static_cast<std::size_t>(embd));
    std::vector<double> logits(hp.n_expert);
    for (std::uint32_t e = 0; e < hp.n_expert; ++e) {
        const auto* src = static_cast<const std::byte*>(lw.router.data) + e * lw.router.row_stride_bytes;
        kernels::dequantize_row(lw.router.type, src, row.data(), embd);
        double dot = 0.0;
        for (std::int64_t i = 0; i < embd; ++i) dot += normed[i] * row[i];
        logits[e] = dot;
    }
    const double mx = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (double& v : logits) sum += (v = std::exp(v - mx));
    for (double& v : logits) v /= sum;
    return logits;
}

TEST(lookahead, does_not_change_logits) {
    auto m = load("Q4_K_M", four_layers());
    ASSERT_TRUE(m);
    kernels::compute_pool pool(2);
    const auto prompt = sample_tokens(19, m->hparams().n_vocab);
    std::vector<float> off, on;
    {
        evaluator eval(*m, pool, 8);
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, off));
    }
    {
        evaluator eval(*m, pool, 8);
        eval.set_lookahead_depth(3);
        int calls = 0;
        eval.add_layer_start_observer([&](const lookahead_event&) { ++calls; });
        eval.add_routing_observer([&](const routing_event&) { ++calls; });
        auto cache = make_cache(*m);
        ASSERT_TRUE(eval.run_sequence(prompt, cache, on));
        EXPECT_GT(calls, 0);
    }
    EXPECT_EQ(off, on);
}

class lookahead_types : public ::testing::TestWithParam<std::pair<std::string, double>> {};

TEST_P(lookahead_types, rows_match_a_naive_router_on_the_entering_stream) {
    const auto& [type, tolerance] = GetParam();
    auto m = load(type, four_layers());
    ASSERT_TRUE(m);
    const model_hparams& hp = m->hparams();
    const std::int64_t n_exp = hp.n_expert;
    const int depth = 3;
    kernels::compute_pool pool(2);
    evaluator eval(*m, pool, 16);
    eval.set_lookahead_depth(depth);
    EXPECT_EQ(eval.lookahead_depth(), depth);

    std::vector<std::vector<float>> seen_lookahead(hp.n_layer);
    int rows_checked = 0;
    eval.add_layer_start_observer([&](const lookahead_event& ev) {
        ASSERT_EQ(ev.depth, depth);
        ASSERT_EQ(ev.probs.size(), static_cast<std::size_t>(depth * ev.n_tokens * n_exp));
        ASSERT_EQ(ev.stream.size(), static_cast<std::size_t>(ev.n_tokens * hp.n_embd));
        seen_lookahead[ev.layer].assign(ev.probs.begin(), ev.probs.end());
        for (int j = 0; j < depth; ++j) {
            for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
                const float* row = ev.probs.data() + (j * ev.n_tokens + t) * n_exp;
                const std::uint32_t target = ev.layer + static_cast<std::uint32_t>(j);
                if (target >= hp.n_layer) {
                    for (std::int64_t e = 0; e < n_exp; ++e) ASSERT_EQ(row[e], 0.0f) << "past the last layer";
                    continue;
                }
                const auto want = naive_router(*m, target, ev.stream.data() + t * hp.n_embd);
                for (std::int64_t e = 0; e < n_exp; ++e) {
                    ASSERT_NEAR(row[e], want[e], tolerance)
                        << "layer " << ev.layer << " distance " << j << " token " << t << " expert " << e;
                }
                ++rows_checked;
            }
        }
    });
    eval.add_routing_observer([&](const routing_event& ev) {
        ASSERT_EQ(ev.lookahead_depth, depth);
        EXPECT_TRUE(std::equal(ev.lookahead.begin(), ev.lookahead.end(), seen_lookahead[ev.layer].begin(),
                               seen_lookahead[ev.layer].end()));
        const int k = static_cast<int>(hp.n_expert_used);
        ASSERT_EQ(ev.weights.size(), static_cast<std::size_t>(ev.n_tokens * k));
        ASSERT_EQ(ev.tokens.size(), static_cast<std::size_t>(ev.n_tokens));
        for (std::int64_t t = 0; t < ev.n_tokens; ++t) {
            double chosen_sum = 0.0;
            for (int s = 0; s < k; ++s) chosen_sum += ev.probs[t * n_exp + ev.chosen[t * k + s]];
            for (int s = 0; s < k; ++s) {
                EXPECT_NEAR(ev.weights[t * k + s], ev.probs[t * n_exp + ev.chosen[t * k + s]] / chosen_sum, 1e-6);
            }
        }
    });
    auto cache = make_cache(*m);
    std::vector<float> logits;
    const auto prompt = sample_tokens(11, hp.n_vocab);
    ASSERT_TRUE(eval.run_sequence(prompt, cache, logits));
    // Chunks of 16 tokens: one batch of 11, rows for layers l..l+2 that exist.
    int expected_rows = 0;
    for (std::uint32_t l = 0; l < hp.n_layer; ++l) expected_rows += 11 * std::min<int>(depth, hp.n_layer - l);
    EXPECT_EQ(rows_checked, expected_rows);
}

// F32 weights and activations: the kernel and the naive loops differ only in summation
// order. Quantized types convert the activations (Q8), so their probabilities move more.
INSTANTIATE_TEST_SUITE_P(types, lookahead_types,
                         ::testing::Values(std::pair<std::string, double>{"F32", 1e-4},
                                           std::pair<std::string, double>{"Q8_0", 5e-3},
                                           std::pair<std::string, double>{"Q4_K_M", 5e-3}),
                         [](const auto& param_info) { return param_info.param.first; });

TEST(lookahead, observers_see_every_layer_once_in_order) {
    auto m = load("Q8_0", four_layers());
    ASSERT_TRUE(m);
    kernels::compute_pool pool(1);
    evaluator eval(*m, pool, 4);
    std::vector<std::string> log;
    eval.add_layer_start_observer([&](const lookahead_event& ev) {
        EXPECT_EQ(ev.depth, 0);
        EXPECT_TRUE(ev.probs.empty());
        log.push_back("start" + std::to_string(ev.layer));
    });
    eval.add_routing_observer([&](const routing_event& ev) {
        EXPECT_TRUE(ev.lookahead.empty());
        log.push_back("a" + std::to_string(ev.layer));
    });
    eval.add_routing_observer([&](const routing_event& ev) { log.push_back("b" + std::to_string(ev.layer)); });
    auto cache = make_cache(*m);
    std::vector<float> logits;
    // 6 tokens in chunks of 4: two runs.
    ASSERT_TRUE(eval.run_sequence(sample_tokens(6, m->hparams().n_vocab), cache, logits));
    std::vector<std::string> want;
    for (int run = 0; run < 2; ++run) {
        for (std::uint32_t l = 0; l < m->hparams().n_layer; ++l) {
            want.push_back("start" + std::to_string(l));
            want.push_back("a" + std::to_string(l));
            want.push_back("b" + std::to_string(l));
        }
    }
    EXPECT_EQ(log, want);

    // set_routing_observer: the list becomes just this one.
    log.clear();
    eval.set_routing_observer([&](const routing_event& ev) { log.push_back("c" + std::to_string(ev.layer)); });
    auto cache2 = make_cache(*m);
    ASSERT_TRUE(eval.run_sequence(sample_tokens(2, m->hparams().n_vocab), cache2, logits));
    want.clear();
    for (std::uint32_t l = 0; l < m->hparams().n_layer; ++l) {
        want.push_back("start" + std::to_string(l));
        want.push_back("c" + std::to_string(l));
    }
    EXPECT_EQ(log, want);

    eval.clear_observers();
    log.clear();
    auto cache3 = make_cache(*m);
    ASSERT_TRUE(eval.run_sequence(sample_tokens(2, m->hparams().n_vocab), cache3, logits));
    EXPECT_TRUE(log.empty());
}

TEST(lookahead, seq_ids_reach_the_observers) {
    auto m = load("Q8_0", four_layers());
    ASSERT_TRUE(m);
    kernels::compute_pool pool(2);
    evaluator eval(*m, pool, 16);
    eval.set_lookahead_depth(1);
    std::vector<std::uint64_t> routed_seqs, started_seqs;
    eval.add_routing_observer([&](const routing_event& ev) {
        if (ev.layer != 0) return;
        for (const batch_token& bt : ev.tokens) routed_seqs.push_back(bt.seq);
    });
    eval.add_layer_start_observer([&](const lookahead_event& ev) {
        if (ev.layer != 2) return;
        for (const batch_token& bt : ev.tokens) started_seqs.push_back(bt.seq);
    });
    auto ca = make_cache(*m), cb = make_cache(*m);
    const auto a = sample_tokens(3, m->hparams().n_vocab);
    std::vector<batch_token> batch;
    for (std::size_t i = 0; i < a.size(); ++i) {
        batch.push_back({a[i], static_cast<std::int64_t>(i), &ca, i + 1 == a.size(), 11});
        batch.push_back({a[i], static_cast<std::int64_t>(i), &cb, i + 1 == a.size(), 22});
    }
    std::vector<float> logits(2 * m->hparams().n_vocab);
    ASSERT_TRUE(eval.run(batch, logits.data()));
    const std::vector<std::uint64_t> want{11, 22, 11, 22, 11, 22};
    EXPECT_EQ(routed_seqs, want);
    EXPECT_EQ(started_seqs, want);

    // run_sequence passes its seq to every token.
    routed_seqs.clear();
    auto cc = make_cache(*m);
    std::vector<float> last;
    ASSERT_TRUE(eval.run_sequence(a, cc, last, 77));
    EXPECT_EQ(routed_seqs, std::vector<std::uint64_t>(a.size(), 77));
}

}  // namespace
}  // namespace moed::engine
