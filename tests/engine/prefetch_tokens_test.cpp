// The ring and the prefetch pipeline must not change a single token, even when reads are
// slow and arrive late: on the bundled tinymoe model with host budgets of 25% and 50% of the
// expert bytes, reads through a fake slow disk (fault_reader: latency on every read and a
// bandwidth cap), and the router-lookahead planner prefetching (lookahead 2, and 3 with
// history), every golden prompt generates exactly the greedy ids of the fully resident run,
// and so does a batch of four sequences decoding together (several experts of a layer
// wanted at once, prefetched for the whole batch). A small in-flight bound keeps demand
// reads waiting behind prefetches. The pipeline must really have worked: prefetches issued,
// some ready in time, a lookahead whose first pick is mostly used, a gate that measured the
// link, nothing read in error, never more in flight than the bound. Nothing asserts on elapsed time.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/generator.h"
#include "engine/model.h"
#include "engine/prefetch.h"
#include "engine/sampler.h"
#include "kernels/cpu/thread_pool.h"
#include "storage/fault_reader.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

const std::string model_path() { return test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

nlohmann::json golden() {
    std::ifstream in(test::golden_file("tinymoe-qwen3moe-Q4_K_M"));
    return nlohmann::json::parse(in);
}

struct run_config {
    std::optional<double> budget;  // absent: resident
    bool prefetch = false;
    int lookahead = 2;
    bool history = false;
    bool ring = true;
};

struct run_result {
    std::vector<std::vector<token_id>> solo;     // per golden case
    std::vector<std::vector<token_id>> batched;  // four sequences decoded together
    storage::expert_cache_stats stats;
    scheduler::prefetch_planner_stats planner;
    double top_pick_hit_rate = 0.0;  // how often the lookahead's first pick for the next layer was used
};

load_options tiered(double fraction, bool ring) {
    load_options o;
    o.tier.ring = ring;
    o.host_budget = budget_spec{0, fraction, true};
    o.tier.lock = storage::memory_lock::best_effort;
    o.tier.max_inflight_bytes = 1u << 20;  // about 8 tinymoe experts
    o.tier.wrap_reader = [](std::unique_ptr<storage::block_reader> inner)
        -> result<std::unique_ptr<storage::block_reader>> {
        auto faults = storage::fault_reader::create(std::move(inner));
        if (!faults) return unexpected(std::move(faults).error());
        (*faults)->set_latency(std::chrono::microseconds(150));
        (*faults)->set_bandwidth_cap(800ull << 20);
        return std::unique_ptr<storage::block_reader>(std::move(faults).value());
    };
    return o;
}

// Greedy decoding of several prompts in one batch: each step carries one token of every
// sequence (after each prompt was prefilled on its own).
std::vector<std::vector<token_id>> decode_together(evaluator& eval, const model& m,
                                                   const std::vector<std::vector<token_id>>& prompts, int n) {
    const auto& hp = m.hparams();
    std::vector<std::unique_ptr<kv_cache>> caches;
    std::vector<std::vector<token_id>> out(prompts.size());
    std::vector<token_id> next(prompts.size());
    std::vector<float> logits;
    for (std::size_t s = 0; s < prompts.size(); ++s) {
        caches.push_back(std::make_unique<kv_cache>(hp.n_layer, hp.n_ctx_train, hp.n_head_kv, hp.head_dim));
        auto r = eval.run_sequence(prompts[s], *caches[s], logits, 100 + s);
        EXPECT_TRUE(r) << r.error().message;
        if (!r) return {};
        next[s] = argmax(logits);
    }
    std::vector<float> batch_logits(prompts.size() * static_cast<std::size_t>(hp.n_vocab));
    std::vector<batch_token> batch(prompts.size());
    for (int step = 0; step < n; ++step) {
        for (std::size_t s = 0; s < prompts.size(); ++s) {
            out[s].push_back(next[s]);
            batch[s] = batch_token{next[s], caches[s]->size(), caches[s].get(), true, 100 + s};
        }
        auto r = eval.run(batch, batch_logits.data());
        EXPECT_TRUE(r) << r.error().message;
        if (!r) return {};
        for (std::size_t s = 0; s < prompts.size(); ++s) {
            next[s] = argmax(std::span<const float>(batch_logits.data() + s * hp.n_vocab,
                                                    static_cast<std::size_t>(hp.n_vocab)));
        }
    }
    return out;
}

run_result run(const run_config& c) {
    run_result out;
    auto loaded = model::load(model_path(), c.budget ? tiered(*c.budget, c.ring) : load_options{});
    EXPECT_TRUE(loaded) << loaded.error().message;
    if (!loaded) return out;
    model& m = **loaded;
    kernels::compute_pool pool(2);
    evaluator eval(m, pool, 64);
    prefetch_options po;
    po.enabled = c.prefetch;
    po.lookahead = c.lookahead;
    po.planner.history = c.history;
    auto planner = attach_prefetch(eval, m, po);
    EXPECT_TRUE(planner) << planner.error().message;
    if (!planner) return out;
    EXPECT_EQ(*planner != nullptr, c.prefetch && c.budget.has_value());

    const auto g = golden();
    kv_cache cache(m.hparams().n_layer, m.hparams().n_ctx_train, m.hparams().n_head_kv, m.hparams().head_dim);
    std::vector<std::vector<token_id>> prompts;
    for (const auto& gc : g["cases"]) {
        generation_request request;
        request.prompt = gc["prompt_tokens"].get<std::vector<token_id>>();
        request.n_predict = 24;
        request.stop_at_eog = false;
        request.seq = out.solo.size() + 1;
        auto generated = generate(eval, m, cache, request);
        EXPECT_TRUE(generated) << generated.error().message;
        out.solo.push_back(generated ? generated->tokens : std::vector<token_id>{});
        if (prompts.size() < 4) prompts.push_back(request.prompt);
    }
    out.batched = decode_together(eval, m, prompts, 16);
    if (m.tiers()) out.stats = m.tiers()->stats();
    if (*planner) {
        out.planner = (*planner)->stats();
        out.top_pick_hit_rate = (*planner)->rank_hit_rates(1).front();
    }
    return out;
}

TEST(prefetch_tokens, slow_disk_ring_and_prefetch_match_the_resident_run) {
    const run_result resident = run({});
    ASSERT_EQ(resident.solo.size(), golden()["cases"].size());
    ASSERT_EQ(resident.batched.size(), 4u);
    struct variant {
        double budget;
        int lookahead;
        bool history;
    };
    for (const variant v : {variant{0.25, 2, false}, variant{0.50, 2, false}, variant{0.25, 3, true}}) {
        SCOPED_TRACE(fmt::format("budget {} lookahead {} history {}", v.budget, v.lookahead, v.history));
        const run_result r = run({v.budget, true, v.lookahead, v.history});
        ASSERT_EQ(r.solo.size(), resident.solo.size());
        for (std::size_t i = 0; i < r.solo.size(); ++i) EXPECT_EQ(r.solo[i], resident.solo[i]) << "case " << i;
        EXPECT_EQ(r.batched, resident.batched);
        const auto& p = r.stats.prefetch;
        EXPECT_GT(p.issued, 0u);
        EXPECT_GT(p.hits, 0u);                  // some experts were ready before they were needed
        EXPECT_LE(p.inflight_bytes_max, 1u << 20);
        EXPECT_EQ(r.stats.host.read_errors, 0u);
        EXPECT_GT(r.stats.host.evictions, 0u);  // the budget really was smaller than the experts
        EXPECT_TRUE(r.stats.ring.enabled);
        EXPECT_GE(r.stats.ring.sections.size(), 2u);
        EXPECT_GT(r.planner.routed, 0u);
        EXPECT_GT(r.top_pick_hit_rate, 0.5);    // the lookahead's first pick is mostly used
        // The link was measured and the gate decided from it (how much it prefetches depends
        // on how busy the link is, so the amount is not asserted here: prefetch_gate_test is).
        EXPECT_GT(r.planner.gate_threshold, 0.0);
        EXPECT_GT(p.tokens, 0u);
    }
}

TEST(prefetch_tokens, prefetch_off_and_one_pool_match_too) {
    const run_result resident = run({});
    const run_result off = run({0.25, false});
    ASSERT_EQ(off.solo.size(), resident.solo.size());
    for (std::size_t i = 0; i < off.solo.size(); ++i) EXPECT_EQ(off.solo[i], resident.solo[i]) << "case " << i;
    EXPECT_EQ(off.batched, resident.batched);
    EXPECT_EQ(off.stats.prefetch.issued, 0u);
    EXPECT_GT(off.stats.prefetch.demand_misses, 0u);
    // Prefetching into one pool of slots (no sections).
    const run_result pool = run({0.25, true, 2, false, false});
    ASSERT_EQ(pool.solo.size(), resident.solo.size());
    for (std::size_t i = 0; i < pool.solo.size(); ++i) EXPECT_EQ(pool.solo[i], resident.solo[i]) << "case " << i;
    EXPECT_EQ(pool.batched, resident.batched);
    EXPECT_FALSE(pool.stats.ring.enabled);
    EXPECT_GT(pool.stats.prefetch.issued, 0u);
}

}  // namespace
}  // namespace moed::engine
