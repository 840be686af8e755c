// The expert tiers must not change a single token: with host budgets of 10%, 25% and 50%
// of the expert bytes (so experts are evicted and re-read from the file all the time), every
// golden case generates exactly the ids of the fully resident run, on every golden model.
// The Q4_K_M file mixes Q4_K and Q6_K experts by layer, so its tier runs two slot classes;
// their slots add up to the tier's capacity.
// Reads go through the real block reader (io_uring with O_DIRECT where the file system
// allows it). The F16 model lives in ../shared/models and skips with a reason elsewhere.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

std::vector<std::vector<token_id>> run_all(const std::string& model_path, const nlohmann::json& golden,
                                           const load_options& options, storage::expert_cache_stats* stats) {
    auto loaded = model::load(model_path, options);
    EXPECT_TRUE(loaded) << loaded.error().message;
    if (!loaded) return {};
    model& m = **loaded;
    kernels::compute_pool pool(2);
    evaluator eval(m, pool, 64);
    kv_cache cache(m.hparams().n_layer, m.hparams().n_ctx_train, m.hparams().n_head_kv, m.hparams().head_dim);
    std::vector<std::vector<token_id>> out;
    for (const auto& c : golden["cases"]) {
        generation_request request;
        request.prompt = c["prompt_tokens"].get<std::vector<token_id>>();
        request.n_predict = static_cast<std::int32_t>(c["tokens"].size());
        request.stop_at_eog = false;
        auto generated = generate(eval, m, cache, request);
        EXPECT_TRUE(generated) << generated.error().message;
        out.push_back(generated ? generated->tokens : std::vector<token_id>{});
    }
    if (stats && m.tiers()) *stats = m.tiers()->stats();
    return out;
}

std::size_t golden_layers(const std::string& model_path) {
    auto m = model::load(model_path);
    return m ? (*m)->hparams().n_layer : 0;
}

// `n_classes`: the slot classes the tier must have made (0: not checked). The Q4_K_M file's
// layers 2 and 5 hold ffn_down in Q6_K, so its experts come in two slot sizes.
void check_budgets(const std::string& model_path, const std::string& golden_name, std::size_t n_classes = 0) {
    std::ifstream in(test::golden_file(golden_name));
    const auto golden = nlohmann::json::parse(in);
    const auto resident = run_all(model_path, golden, {}, nullptr);
    ASSERT_EQ(resident.size(), golden["cases"].size());
    for (double fraction : {0.10, 0.25, 0.50}) {
        SCOPED_TRACE("host budget " + std::to_string(fraction));
        load_options options;
        options.host_budget = budget_spec{0, fraction, true};
        options.tier.lock = storage::memory_lock::best_effort;
        storage::expert_cache_stats stats;
        const auto tiered = run_all(model_path, golden, options, &stats);
        ASSERT_EQ(tiered.size(), resident.size());
        for (std::size_t i = 0; i < tiered.size(); ++i) EXPECT_EQ(tiered[i], resident[i]) << "case " << i;
        // The budget was really smaller than the experts: reads and evictions happened.
        EXPECT_LT(stats.host.capacity_bytes, stats.expert_bytes_total);
        EXPECT_GT(stats.host.misses, 0u);
        EXPECT_GT(stats.host.evictions, 0u);
        EXPECT_GT(stats.host.bytes_read, 0u);
        EXPECT_EQ(stats.host.read_errors, 0u);
        // Capacity is the sum over the slot classes, every layer in exactly one.
        if (n_classes != 0) {
            EXPECT_EQ(stats.slot_classes.size(), n_classes);
        }
        std::uint64_t class_slots = 0, class_bytes = 0, class_layers = 0;
        for (const auto& c : stats.slot_classes) {
            class_slots += c.slots;
            class_bytes += c.slots * c.slot_bytes;
            class_layers += c.layers.size();
        }
        EXPECT_EQ(class_slots, stats.host.capacity_experts);
        EXPECT_EQ(class_bytes, stats.host.capacity_bytes);
        EXPECT_EQ(class_layers, golden_layers(model_path));
        // The residency map has a row per layer and marks exactly the resident experts.
        ASSERT_EQ(stats.layer_residency.size(), golden_layers(model_path));
        std::uint64_t marked = 0;
        for (const auto& row : stats.layer_residency) {
            for (char c : row) marked += (c == '#' || c == '+') ? 1 : 0;
        }
        EXPECT_EQ(marked, stats.host.resident_experts);
    }
}

TEST(tiered_golden, tinymoe_q4_k_m) {
    check_budgets(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf", "tinymoe-qwen3moe-Q4_K_M", 2);
}

TEST(tiered_golden, tinymoe_f16) {
    const std::string dir = test::shared_models_dir();
    if (dir.empty() || !std::ifstream(dir + "/tinymoe-qwen3moe-F16.gguf").good()) {
        GTEST_SKIP() << "tinymoe-qwen3moe-F16.gguf is not in ../shared/models (kept out of git)";
    }
    check_budgets(dir + "/tinymoe-qwen3moe-F16.gguf", "tinymoe-qwen3moe-F16");
}

}  // namespace
}  // namespace moed::engine
