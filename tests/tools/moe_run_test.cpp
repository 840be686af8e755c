// Runs the moe-run binary as a user would and checks its output: --json has every field
// the issue names with sane values and the golden ids for a golden prompt; --tokenize
// prints ids only; sampling flags are accepted and a seed repeats; MOED_ISA sets the level
// --json reports; bad arguments, a bad MOED_ISA and bad model files exit with status 2 and
// a message naming the problem.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kernels/cpu/cpu_features.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/run_tool.h"
#include "tests/support/test_paths.h"

namespace {

using run_result = moed::test::tool_result;

run_result run(const std::vector<std::string>& args, bool merge_stderr = false) {
    return moed::test::run_tool("tools/moe-run", args, merge_stderr);
}

const std::string model = moed::test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf";

// What the process may hold beyond the weights it maps and its KV cache. A sanitizer's
// runtime adds its own shadow memory and allocator quarantine on top (the ASan flavour sat
// 1.4 MB over 64 MiB), so those builds get 96 MiB: still well under a second copy of the
// ~110 MB model, which is what the bounds below guard against.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr double rss_margin = 96.0 * 1024 * 1024;
#else
constexpr double rss_margin = 64.0 * 1024 * 1024;
#endif

TEST(moe_run, json_output_matches_golden_case) {
    std::ifstream in(moed::test::golden_file("tinymoe-qwen3moe-Q4_K_M"));
    const auto golden = nlohmann::json::parse(in);
    const auto& c = golden["cases"][2];
    auto r = run({"-m", model, "-p", c["prompt"], "-n", "32", "-t", "2", "--ignore-eos", "--json"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["prompt_tokens"], c["prompt_tokens"]);
    EXPECT_EQ(j["tokens"], c["tokens"]);
    EXPECT_EQ(j["text"], c["text"]);
    EXPECT_GT(j["prefill_tokens_per_s"].get<double>(), 0.0);
    EXPECT_GT(j["decode_tokens_per_s"].get<double>(), 0.0);
    EXPECT_EQ(j["threads"], 2);
    EXPECT_GT(j["peak_rss_bytes"].get<double>(), 0.0);
}

// Loading maps the file instead of copying it: the whole process stays within the model's
// bytes + the KV cache + 64 MiB. The model is large enough (~110 MB) that holding it twice
// would break the bound.
TEST(moe_run, peak_rss_within_model_plus_kv_plus_64mib) {
    moed::tools::synth_shape shape;
    shape.layers = 2;
    shape.embd = 1024;
    shape.heads = 8;
    shape.kv_heads = 2;
    shape.head_dim = 128;
    shape.experts = 16;
    shape.experts_used = 4;
    shape.ff = 1024;
    shape.vocab = 4096;
    const std::string big = moed::test::synthetic_model("Q8_0", shape);
    auto r = run({"-m", big, "-p", "hello world", "-n", "8", "-t", "2", "--json", "--ignore-eos"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = nlohmann::json::parse(r.out);
    const double model_bytes = j["model_bytes"].get<double>();
    const double kv = j["kv_cache_bytes"].get<double>();
    const double rss = j["peak_rss_bytes"].get<double>();
    EXPECT_GT(model_bytes, 100e6);
    EXPECT_LE(rss, model_bytes + kv + rss_margin)
        << "peak RSS " << rss << " exceeds model " << model_bytes << " + KV " << kv << " + margin " << rss_margin;
}

// With a host budget the experts are read into the slab and never mapped: the process stays
// within dense bytes + budget + KV cache + 64 MiB, far below the model's size.
TEST(moe_run, peak_rss_within_dense_plus_budget_when_tiered) {
    moed::tools::synth_shape shape;
    shape.layers = 2;
    shape.embd = 1024;
    shape.heads = 8;
    shape.kv_heads = 2;
    shape.head_dim = 128;
    shape.experts = 16;
    shape.experts_used = 4;
    shape.ff = 1024;
    shape.vocab = 4096;
    const std::string big = moed::test::synthetic_model("Q8_0", shape);
    auto r = run({"-m", big, "-p", "hello world", "-n", "8", "-t", "2", "--json", "--ignore-eos",
                  "--host-budget", "25%", "--mlock", "best_effort"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = nlohmann::json::parse(r.out);
    const double dense = j["dense_bytes"].get<double>();
    const double budget = j["tiers"]["host"]["capacity_bytes"].get<double>();
    const double kv = j["kv_cache_bytes"].get<double>();
    const double rss = j["peak_rss_bytes"].get<double>();
    EXPECT_LE(budget, 0.25 * j["expert_bytes"].get<double>());
    EXPECT_GT(j["tiers"]["host"]["bytes_read"].get<double>(), 0.0);
    EXPECT_LE(rss, dense + budget + kv + rss_margin)
        << "peak RSS " << rss << " exceeds dense " << dense << " + budget " << budget << " + KV " << kv
        << " + margin " << rss_margin;
    EXPECT_LT(rss, j["model_bytes"].get<double>());
}

TEST(moe_run, bad_host_budget_is_an_error) {
    auto r = run({"-m", model, "-p", "x", "--host-budget", "lots"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("--host-budget"), std::string::npos) << r.out;
    r = run({"-m", model, "-p", "x", "--host-budget", "1KiB"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("budget"), std::string::npos) << r.out;
}

// MOED_ISA caps the kernels' level (clamped to the CPU's) and --json reports the level in
// use; an unknown value stops moe-run with an error naming it.
TEST(moe_run, isa_variable_caps_the_level_and_is_reported) {
    struct env_guard {
        ~env_guard() { ::unsetenv("MOED_ISA"); }
    } guard;
    const std::string best(moed::kernels::isa_name(moed::kernels::detect_isa()));
    const std::pair<const char*, std::string> cases[] = {
        {"scalar", "scalar"},
        {"avx2", moed::kernels::detect_isa() == moed::kernels::isa::scalar ? "scalar" : "avx2"},
        {"avx512", best},
        {"", best},
    };
    for (const auto& [value, want] : cases) {
        ::setenv("MOED_ISA", value, 1);
        auto r = run({"-m", model, "-p", "x", "-n", "1", "--json"});
        ASSERT_EQ(r.status, 0) << "MOED_ISA=" << value << ": " << r.out;
        EXPECT_EQ(nlohmann::json::parse(r.out)["isa"], want) << "MOED_ISA=" << value;
    }
    ::setenv("MOED_ISA", "avx3", 1);
    auto r = run({"-m", model, "-p", "x", "-n", "1", "--json"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("MOED_ISA='avx3'"), std::string::npos) << r.out;
}

TEST(moe_run, jemalloc_is_the_allocator) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    GTEST_SKIP() << "sanitizer builds keep the sanitizer's allocator";
#else
    auto r = run({"-m", model, "-p", "x", "-n", "1", "--json"});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["allocator"], "jemalloc");
#endif
}

TEST(moe_run, tokenize_prints_ids_only) {
    auto r = run({"-m", model, "--tokenize", "int main(void)", "--json"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = nlohmann::json::parse(r.out);
    ASSERT_TRUE(j.contains("tokens"));
    EXPECT_FALSE(j.contains("text"));
    EXPECT_FALSE(j["tokens"].empty());
}

TEST(moe_run, seeded_sampling_repeats) {
    std::vector<std::string> args{"-m", model, "-p", "def main():", "-n", "12", "--temp", "0.9", "--top-k", "20",
                                  "--top-p", "0.9", "--seed", "123", "--json", "--ignore-eos"};
    auto a = run(args), b = run(args);
    ASSERT_EQ(a.status, 0) << a.out;
    EXPECT_EQ(nlohmann::json::parse(a.out)["tokens"], nlohmann::json::parse(b.out)["tokens"]);
}

TEST(moe_run, bad_arguments_exit_2_with_a_message) {
    auto r = run({"-m", model, "-p", "x", "-n", "abc"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("-n"), std::string::npos) << r.out;

    r = run({"-m", model, "-p", "x", "--temp", "-1"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("temperature"), std::string::npos) << r.out;

    r = run({"-m", model, "-p", "x", "--bogus"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("--bogus"), std::string::npos) << r.out;

    r = run({"-p", "x"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("-m"), std::string::npos) << r.out;
}

TEST(moe_run, bad_model_file_names_the_file) {
    const auto path = (moed::test::temp_dir() / "not-a-model.gguf").string();
    std::ofstream(path) << "this is not a GGUF file at all";
    auto r = run({"-m", path, "-p", "x"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find(path), std::string::npos) << r.out;
}

TEST(moe_run, prompt_longer_than_context_is_an_error) {
    auto r = run({"-m", model, "-p", "word word word word word word", "-n", "10", "-c", "8"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("context"), std::string::npos) << r.out;
}

}  // namespace
