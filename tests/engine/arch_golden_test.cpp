// Differential test against llama.cpp for every architecture and weight type moed runs:
// random-weight models of each architecture (moe-synth's recipe below, the same as
// scripts/make-arch-goldens.sh) in each type, with the greedy ids llama.cpp generated for
// models/golden/arch-prompts.jsonl kept per ISA level in models/golden/<isa>/synth-<arch>-<type>.json.
// Every level this CPU has runs (AVX2 goldens with the kernels forced to AVX2). Each model is
// synthesized here and checked against the sha256 llama.cpp ran, so a changed synthesizer
// fails as such. Every type runs on one thread with the experts resident; F16 and Q4_K_M
// also on two threads and with the experts tiered at a 25% host budget.
// A first difference is tolerated only at a near-tie: for F32 and F16 a recorded top-2
// margin below 0.01 (or one llama.cpp's server did not report: a token ending inside a UTF-8
// character, which these byte-level vocabularies produce often). For quantized types the
// bound is 0.25: at AVX-512 llama.cpp multiplies
// quantized weights with repacked and tinyBLAS kernels whose sum orders moed does not follow
// (it follows vec_dot; at AVX2 it also follows the repacked Q4_K and the tinyBLAS orders), and
// a random-weight model with a 512-token vocabulary and two layers has many margins of a few
// hundredths, flipped at up to 0.073 (0.235 for glm4moe and deepseek2, whose quantized files
// match llama.cpp least: 1 to 8 of 8 cases exact per file at AVX-512) when this test was
// written; the AVX2 files are mostly exact. This bound is a known gap, not a target. A wrong kernel, layout or
// block variant differs at the first tokens of every case, with margins of whole units.
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
constexpr double k_quantized_near_tie_margin = 0.25;

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

// Runs every case of `golden` at the current level; returns the number of exact cases.
int check_cases(model& m, const nlohmann::json& golden, const std::string& label, int threads, double tie_margin) {
    kernels::compute_pool pool(threads);
    evaluator eval(m, pool, 64);
    kv_cache cache(kv_shape_of(m.hparams()), m.hparams().n_ctx_train);
    int exact_cases = 0;
    for (const auto& c : golden["cases"]) {
        const std::string prompt = c["prompt"];
        const auto expected = c["tokens"].get<std::vector<token_id>>();
        generation_request request;
        request.prompt = m.vocab().encode(prompt, false);
        EXPECT_EQ(request.prompt, c["prompt_tokens"].get<std::vector<token_id>>()) << label << ": prompt tokens differ";
        request.n_predict = static_cast<std::int32_t>(expected.size());
        request.stop_at_eog = false;
        auto generated = generate(eval, m, cache, request);
        EXPECT_TRUE(generated) << label << ": " << generated.error().message;
        if (!generated) return exact_cases;
        const auto& got = generated->tokens;
        bool exact = true;
        for (std::size_t i = 0; i < expected.size() && i < got.size(); ++i) {
            if (got[i] == expected[i]) continue;
            exact = false;
            const auto& margin = c["top2_margins"][i];
            EXPECT_TRUE(margin.is_null() || margin.get<double>() < tie_margin)
                << label << " (" << threads << " threads): token " << i << " is " << got[i] << ", llama.cpp chose "
                << expected[i] << " with a top-2 margin of " << margin << " (not a near-tie); prompt: " << prompt;
            break;  // after a tolerated flip the continuations legitimately diverge
        }
        exact_cases += exact ? 1 : 0;
    }
    return exact_cases;
}

struct arch_case {
    std::string arch;
    // moe-synth --variant (deepseek2, glm4moe), "spm" (llama: Mixtral's SentencePiece
    // vocabulary, models/tokenizer/llama-spm-vocab.gguf, instead of the synthetic one), or empty
    std::string variant;
    std::uint64_t seed = 11;
    std::string type;
};

// The model's name in golden file names: synth-<arch>[-<variant>]-<type>.
std::string model_name(const arch_case& c) {
    return "synth-" + c.arch + (c.variant.empty() ? "" : "-" + c.variant) + "-" + c.type;
}

std::string case_name(const arch_case& c) {
    std::string s = model_name(c).substr(6);
    for (char& ch : s) {
        if (ch == '-') ch = '_';
    }
    return s;
}

// The recipe scripts/make-arch-goldens.sh spells as moe-synth arguments.
std::string synthesize(const arch_case& c) {
    tools::synth_shape shape;
    shape.layers = 2;
    shape.embd = 256;
    shape.heads = 4;
    shape.kv_heads = c.arch == "olmoe" ? 4 : 2;  // olmoe: heads x head_dim = embd, no GQA
    shape.head_dim = 64;
    shape.experts = 8;
    shape.experts_used = 2;
    shape.ff = 256;
    shape.vocab = 512;
    shape.ctx = 512;
    tools::synth_options options;
    options.arch = c.arch;
    if (c.variant == "spm") {
        options.vocab_from = test::models_dir() + "/tokenizer/llama-spm-vocab.gguf";
    } else {
        options.variant = c.variant;
    }
    options.type = c.type;
    options.seed = c.seed;
    const std::string path = (test::temp_dir() / (model_name(c) + ".gguf")).string();
    auto made = tools::synthesize_model(path, shape, options);
    EXPECT_TRUE(made) << made.error().message;
    return path;
}

class arch_golden : public ::testing::TestWithParam<arch_case> {};

TEST_P(arch_golden, greedy_ids_match_llama_cpp) {
    const arch_case& c = GetParam();
    const std::string name = model_name(c);
    bool any = false;
    for (kernels::isa level : {kernels::isa::avx512, kernels::isa::avx2, kernels::isa::scalar}) {
        any = any || (std::filesystem::exists(golden_path(level, name)) &&
                      static_cast<int>(level) <= static_cast<int>(kernels::detect_isa()));
    }
    if (!any) GTEST_SKIP() << "no golden for " << name << " at a level this CPU has";
    const std::string path = synthesize(c);
    std::string sha;
    int ran = 0;
    for (kernels::isa level : {kernels::isa::avx512, kernels::isa::avx2, kernels::isa::scalar}) {
        const std::string golden_file = golden_path(level, name);
        if (!std::filesystem::exists(golden_file)) continue;
        if (static_cast<int>(level) > static_cast<int>(kernels::detect_isa())) continue;
        std::ifstream in(golden_file);
        const nlohmann::json golden = nlohmann::json::parse(in);
        if (sha.empty()) sha = test::sha256_file(path);
        ASSERT_EQ(sha, golden["model_sha256"].get<std::string>()) << path << " is not the file " << golden_file
                                                                   << " was made from";
        isa_scope scope(level);
        const std::string label = std::string(kernels::isa_name(level)) + "/" + name;
        auto resident = model::load(path);
        ASSERT_TRUE(resident) << resident.error().message;
        const bool quantized = c.type != "F32" && c.type != "F16";
        const double tie = quantized ? k_quantized_near_tie_margin : k_near_tie_margin;
        const int exact = check_cases(**resident, golden, label, 1, tie);
        std::cout << "[ info ] " << label << ": " << exact << "/" << golden["cases"].size() << " cases exact\n";
        if (c.type == "F16" || c.type == "Q4_K_M") {
            // The same ids whatever the threads and the memory budget.
            EXPECT_EQ(check_cases(**resident, golden, label + " (2 threads)", 2, tie), exact) << label;
            load_options tiered;
            tiered.host_budget = budget_spec{0, 0.25, true};
            auto loaded = model::load(path, tiered);
            ASSERT_TRUE(loaded) << loaded.error().message;
            ASSERT_NE((*loaded)->tiers(), nullptr);
            EXPECT_EQ(check_cases(**loaded, golden, label + " (25% host budget)", 1, tie), exact) << label;
        }
        ++ran;
    }
    std::filesystem::remove(path);
    if (ran == 0) GTEST_SKIP() << "no golden for " << name << " at a level this CPU has";
}

std::vector<arch_case> all_cases() {
    // deepseek2 takes seed 13: with seed 11 llama.cpp's best token is end-of-text in some
    // cases, which its ignore_eos bias turns into the runner-up (make-golden.py refuses those).
    const arch_case models[] = {{"qwen3moe", "", 11, ""},       {"llama", "", 11, ""},
                                {"llama", "spm", 11, ""},
                                {"qwen2moe", "", 11, ""},       {"olmoe", "", 11, ""},
                                {"gpt-oss", "", 11, ""},        {"glm4moe", "air", 11, ""},
                                {"deepseek2", "v2-lite", 13, ""}, {"deepseek2", "v3", 13, ""}};
    std::vector<arch_case> out;
    for (const arch_case& m : models) {
        for (const char* type : {"F32", "F16", "Q8_0", "Q4_K_M", "Q6_K", "Q5_K", "Q3_K", "Q2_K", "IQ4_XS", "Q5_0",
                                 "Q5_1", "Q4_0", "Q4_1", "IQ4_NL", "MXFP4"}) {
            arch_case c = m;
            c.type = type;
            out.push_back(c);
        }
    }
    return out;
}

INSTANTIATE_TEST_SUITE_P(every, arch_golden, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<arch_case>& p) { return case_name(p.param); });

}  // namespace
}  // namespace moed::engine
