// Differential test against llama.cpp: for each golden file (ids that llama.cpp produced
// with greedy decoding for 12 prompts), the prompt must tokenize to the same ids and the 32
// generated ids must be identical. A first difference is tolerated only where llama.cpp
// recorded a near-tie (top-2 logit margin below 0.01), since a different summation order
// may flip it; the comparison stops there. The bundled Q4_K_M model is always present; the
// F16 model lives in ../shared/models and its cases skip with a reason where it is absent.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

constexpr double k_near_tie_margin = 0.01;

nlohmann::json load_golden(const std::string& name) {
    std::ifstream in(test::models_dir() + "/golden/" + name + ".json");
    EXPECT_TRUE(in.good()) << "missing golden file " << name;
    return nlohmann::json::parse(in);
}

void check_model(const std::string& model_path, const std::string& golden_name, int threads) {
    auto loaded = model::load(model_path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    model& m = **loaded;
    const nlohmann::json golden = load_golden(golden_name);
    kernels::compute_pool pool(threads);
    evaluator eval(m, pool, 64);
    kv_cache cache(m.hparams().n_layer, m.hparams().n_ctx_train, m.hparams().n_head_kv, m.hparams().head_dim);

    int exact_cases = 0;
    for (const auto& c : golden["cases"]) {
        const std::string prompt = c["prompt"];
        const auto expected_prompt = c["prompt_tokens"].get<std::vector<token_id>>();
        const auto expected = c["tokens"].get<std::vector<token_id>>();
        const auto margins = c["top2_margins"].get<std::vector<double>>();
        generation_request request;
        request.prompt = m.vocab().encode(prompt, false);
        ASSERT_EQ(request.prompt, expected_prompt) << "prompt tokens differ for: " << prompt;
        request.n_predict = static_cast<std::int32_t>(expected.size());
        request.stop_at_eog = false;
        auto generated = generate(eval, m, cache, request);
        ASSERT_TRUE(generated) << generated.error().message;
        const auto& got = generated->tokens;
        ASSERT_EQ(got.size(), expected.size());
        bool exact = true;
        for (std::size_t i = 0; i < expected.size(); ++i) {
            if (got[i] == expected[i]) continue;
            exact = false;
            EXPECT_LT(margins[i], k_near_tie_margin)
                << golden_name << ": token " << i << " is " << got[i] << ", llama.cpp chose " << expected[i]
                << " with a top-2 margin of " << margins[i] << " (not a near-tie); prompt: " << prompt;
            break;  // after a tolerated flip the continuations legitimately diverge
        }
        exact_cases += exact ? 1 : 0;
    }
    ::testing::Test::RecordProperty("exact_cases", exact_cases);
}

TEST(golden, tinymoe_q4_k_m_one_thread) {
    check_model(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf", "tinymoe-qwen3moe-Q4_K_M", 1);
}

TEST(golden, tinymoe_q4_k_m_two_threads) {
    check_model(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf", "tinymoe-qwen3moe-Q4_K_M", 2);
}

TEST(golden, tinymoe_f16) {
    const std::string dir = test::shared_models_dir();
    if (dir.empty() || !std::ifstream(dir + "/tinymoe-qwen3moe-F16.gguf").good()) {
        GTEST_SKIP() << "tinymoe-qwen3moe-F16.gguf is not in ../shared/models (kept out of git); "
                        "set MOED_SHARED_MODELS to its folder to run this case";
    }
    check_model(dir + "/tinymoe-qwen3moe-F16.gguf", "tinymoe-qwen3moe-F16", 2);
}

}  // namespace
}  // namespace moed::engine
