// Differential test against llama.cpp, one set of goldens per ISA level.
// models/golden/<isa>/<model>.json holds the ids that llama.cpp, built for that level alone
// (GGML_NATIVE=OFF and the level's flags; scripts/make-golden.py, models/golden/README.md),
// generated greedily for 12 prompts. llama.cpp's sums differ between levels in the last bits,
// and a random-weight model with a 151,936-token vocabulary has top-2 margins small enough to
// show it, so a golden is checked only at its own level: every level this CPU has runs (on an
// AVX-512 machine the AVX2 goldens run too, with the kernels forced to AVX2).
// For each case the prompt must tokenize to the same ids and the generated ids must be
// identical. A first difference is tolerated only where llama.cpp recorded a near-tie (top-2
// logit margin below 0.01; a margin llama.cpp did not report, null in the file, is no
// near-tie), since a different summation order may flip it; the comparison stops there.
// Models: the bundled Q4_K_M (always present), the F16 in ../shared/models (skips with a
// reason where it is absent), and random-weight models with the Qwen3 vocabulary that this
// test synthesizes with the moe-synth library from the recipe below; their goldens record
// the sha256 llama.cpp ran, checked first, so a synthesizer whose output changed fails as
// such and not as a numerical difference.
#include <filesystem>
#include <fstream>
#include <optional>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/sha256.h"
#include "tests/support/test_paths.h"
#include "tools/synth_model.h"

namespace moed::engine {
namespace {

constexpr double k_near_tie_margin = 0.01;

// Sets the kernels' level for a scope and restores the previous one.
class isa_scope {
public:
    explicit isa_scope(kernels::isa level) : previous_(kernels::active_isa()) { kernels::force_isa(level); }
    ~isa_scope() { kernels::force_isa(previous_); }
    isa_scope(const isa_scope&) = delete;
    isa_scope& operator=(const isa_scope&) = delete;

private:
    kernels::isa previous_;
};

std::string golden_path(kernels::isa level, const std::string& name) {
    return test::models_dir() + "/golden/" + std::string(kernels::isa_name(level)) + "/" + name + ".json";
}

// The levels that have a golden for `name`, best first.
std::vector<kernels::isa> golden_levels(const std::string& name) {
    std::vector<kernels::isa> out;
    for (kernels::isa level : {kernels::isa::avx512, kernels::isa::avx2, kernels::isa::scalar}) {
        if (std::filesystem::exists(golden_path(level, name))) out.push_back(level);
    }
    return out;
}

nlohmann::json load_golden(const std::string& path) {
    std::ifstream in(path);
    EXPECT_TRUE(in.good()) << "missing golden file " << path;
    return nlohmann::json::parse(in);
}

// Runs every case of one golden file at the current level.
void check_cases(model& m, const nlohmann::json& golden, const std::string& label, int threads) {
    kernels::compute_pool pool(threads);
    evaluator eval(m, pool, 64);
    kv_cache cache(kv_shape_of(m.hparams()), m.hparams().n_ctx_train);

    int exact_cases = 0;
    std::string flips;  // "case:token" of the tolerated near-tie flips, for the log
    int case_index = 0;
    for (const auto& c : golden["cases"]) {
        const std::string prompt = c["prompt"];
        const auto expected_prompt = c["prompt_tokens"].get<std::vector<token_id>>();
        const auto expected = c["tokens"].get<std::vector<token_id>>();
        std::vector<std::optional<double>> margins;
        for (const auto& v : c["top2_margins"]) margins.push_back(v.is_null() ? std::nullopt : std::optional<double>(v.get<double>()));
        ASSERT_EQ(margins.size(), expected.size()) << label;
        generation_request request;
        request.prompt = m.vocab().encode(prompt, false);
        ASSERT_EQ(request.prompt, expected_prompt) << label << ": prompt tokens differ for: " << prompt;
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
            flips += " " + std::to_string(case_index) + ":" + std::to_string(i);
            EXPECT_TRUE(margins[i].has_value() && *margins[i] < k_near_tie_margin)
                << label << ": token " << i << " is " << got[i] << ", llama.cpp chose " << expected[i]
                << " with a top-2 margin of " << (margins[i] ? std::to_string(*margins[i]) : "(not reported)")
                << " (not a near-tie); prompt: " << prompt;
            break;  // after a tolerated flip the continuations legitimately diverge
        }
        exact_cases += exact ? 1 : 0;
        ++case_index;
    }
    std::cout << "[ info ] " << label << " (" << threads << " thread" << (threads == 1 ? "" : "s") << "): " << exact_cases
              << "/" << golden["cases"].size() << " cases exact" << (flips.empty() ? "" : "; first differences (case:token) at") << flips
              << "\n";
    ::testing::Test::RecordProperty(label + " exact_cases", exact_cases);
}

// Checks `model_path` against its goldens at every level this CPU has.
void check_model(const std::string& model_path, const std::string& name, int threads) {
    const std::vector<kernels::isa> levels = golden_levels(name);
    ASSERT_FALSE(levels.empty()) << "no golden file for " << name << " under " << test::models_dir() << "/golden/<isa>/";
    std::string sha;
    auto loaded = model::load(model_path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    int ran = 0;
    for (kernels::isa level : levels) {
        const std::string path = golden_path(level, name);
        if (static_cast<int>(level) > static_cast<int>(kernels::detect_isa())) {
            std::cout << "[ info ] " << path << ": this CPU lacks " << kernels::isa_name(level) << ", not run\n";
            continue;
        }
        const nlohmann::json golden = load_golden(path);
        if (sha.empty()) sha = test::sha256_file(model_path);
        ASSERT_EQ(sha, golden["model_sha256"].get<std::string>())
            << model_path << " is not the file " << path << " was made from (" << golden["source"] << ")";
        isa_scope scope(level);
        check_cases(**loaded, golden, std::string(kernels::isa_name(level)) + "/" + name, threads);
        ++ran;
    }
    if (ran == 0) GTEST_SKIP() << "this CPU has none of the levels " << name << " has goldens for";
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

// The random-weight models with the real Qwen3 vocabulary: the bundled model's shape (6
// layers, 16 experts, top-4) with ctx 512, seed 7; models/golden/README.md has the same as
// moe-synth command lines. Each is 70-200 MB, so it is written, checked and removed in turn.
void check_synth(const std::string& type) {
    const std::string name = "synth-qwen3vocab-" + type;
    tools::synth_shape shape;
    shape.layers = 6;
    shape.embd = 256;
    shape.heads = 4;
    shape.kv_heads = 2;
    shape.head_dim = 64;
    shape.experts = 16;
    shape.experts_used = 4;
    shape.ff = 256;
    shape.ctx = 512;
    tools::synth_options options;
    options.type = type;
    options.seed = 7;
    options.vocab_from = test::models_dir() + "/tokenizer/qwen3-vocab.gguf";
    const std::string path = (test::temp_dir() / (name + ".gguf")).string();
    auto made = tools::synthesize_model(path, shape, options);
    ASSERT_TRUE(made) << made.error().message;
    check_model(path, name, 1);
    std::filesystem::remove(path);
}

TEST(golden, synth_qwen3vocab_f16) { check_synth("F16"); }
TEST(golden, synth_qwen3vocab_q8_0) { check_synth("Q8_0"); }
TEST(golden, synth_qwen3vocab_q4_k_m) { check_synth("Q4_K_M"); }

}  // namespace
}  // namespace moed::engine
