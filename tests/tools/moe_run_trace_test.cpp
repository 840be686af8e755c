// Records routing traces through the moe-run binary on the bundled tinymoe model and reads
// them back with scheduler::read_trace:
// - --prompts with two domain prompts, -n 3 and --lookahead 3: every (sequence, position,
//   layer) is present exactly once (prompt positions and 3 generated ones), tags are
//   "<domain>/<id>", prompt records carry the prompt's token ids and the prefill flag,
//   chosen experts are a top-k of the recorded probabilities, lookahead has depth 3 with
//   rows past the last layer zero and the others summing to 1, a prefill's records come
//   layer-major, the header names the model by its identity;
// - a single -p prompt with --trace-tag: (prompt + n - 1) tokens x layers records, one tag;
// - an unwritable --trace path and an out-of-range --trace-lookahead exit 2 naming them.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "engine/model.h"
#include "scheduler/model_identity.h"
#include "scheduler/trace.h"
#include "tests/support/run_tool.h"
#include "tests/support/test_paths.h"

namespace {

using moed::scheduler::trace_record;

using run_result = moed::test::tool_result;

run_result run(const std::vector<std::string>& args, bool merge_stderr = false) {
    return moed::test::run_tool("tools/moe-run", args, merge_stderr);
}

const std::string model_path = moed::test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf";

TEST(moe_run_trace, two_prompts_every_token_and_layer_once) {
    const auto dir = moed::test::temp_dir();
    const std::string prompts = (dir / "two.jsonl").string();
    {
        std::ofstream out(prompts);
        out << nlohmann::json{{"domain", "c"}, {"id", "c-07"}, {"text", "int main(void) {\n    return"}}.dump() << "\n";
        out << "\n";  // blank lines are skipped
        out << nlohmann::json{{"domain", "python"}, {"id", 12}, {"text", "def add(a, b):\n"}}.dump() << "\n";
    }
    const std::string trace_path = (dir / "two.trace").string();
    auto r = run({"-m", model_path, "--prompts", prompts, "--trace", trace_path, "-n", "3", "--ignore-eos",
                  "--lookahead", "3", "-t", "2"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto summary = nlohmann::json::parse(r.out);

    auto loaded = moed::engine::model::load(model_path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    const moed::engine::model& m = **loaded;
    const auto& hp = m.hparams();
    const std::vector<std::vector<moed::engine::token_id>> prompt_ids{
        m.vocab().encode("int main(void) {\n    return", false), m.vocab().encode("def add(a, b):\n", false)};
    const int generated = 3;

    moed::scheduler::trace_info info;
    std::vector<std::string> tags;
    auto records = moed::scheduler::read_trace(trace_path, info, &tags);
    ASSERT_TRUE(records) << records.error().message;
    EXPECT_EQ(info.n_layer, hp.n_layer);
    EXPECT_EQ(info.n_expert, hp.n_expert);
    EXPECT_EQ(info.n_expert_used, hp.n_expert_used);
    EXPECT_EQ(info.lookahead_depth, 3u);
    EXPECT_EQ(info.model_id, moed::scheduler::model_identity(m.file()));
    ASSERT_EQ(info.expert_bytes.size(), hp.n_layer);
    EXPECT_EQ(info.expert_bytes[0], m.experts_layout().expert_bytes(0));
    EXPECT_EQ(tags, (std::vector<std::string>{"c/c-07", "python/12"}));

    std::size_t want_records = 0;
    for (const auto& p : prompt_ids) want_records += (p.size() + generated) * hp.n_layer;
    ASSERT_EQ(records->size(), want_records);
    EXPECT_EQ(summary["trace"]["records"], want_records);
    EXPECT_EQ(summary["generated_tokens"], 2 * generated);

    std::map<std::tuple<std::uint64_t, std::int64_t, std::uint32_t>, int> seen;
    const std::size_t n_exp = info.n_expert;
    for (const trace_record& rec : *records) {
        ASSERT_LT(rec.seq, 2u);
        EXPECT_EQ(rec.tag, rec.seq) << "tag i is prompt i";
        const auto& ids = prompt_ids[rec.seq];
        ASSERT_LT(rec.pos, static_cast<std::int64_t>(ids.size()) + generated);
        ++seen[{rec.seq, rec.pos, rec.layer}];
        const bool in_prompt = rec.pos < static_cast<std::int64_t>(ids.size());
        EXPECT_EQ(rec.prefill, in_prompt);
        if (in_prompt) {
            EXPECT_EQ(rec.token, ids[rec.pos]);
        }
        // The chosen experts are a top-k of the probabilities (f16 rounding keeps the order).
        float min_chosen = 2.0f;
        for (auto e : rec.chosen) min_chosen = std::min(min_chosen, rec.probs[e]);
        for (std::size_t e = 0; e < n_exp; ++e) {
            if (std::find(rec.chosen.begin(), rec.chosen.end(), static_cast<std::int32_t>(e)) != rec.chosen.end()) continue;
            EXPECT_LE(rec.probs[e], min_chosen) << "expert " << e << " beats a chosen one";
        }
        double total = 0.0;
        for (float p : rec.probs) total += p;
        EXPECT_NEAR(total, 1.0, 1e-2);
        ASSERT_EQ(rec.lookahead.size(), 3 * n_exp);
        for (std::uint32_t j = 0; j < 3; ++j) {
            double row = 0.0;
            for (std::size_t e = 0; e < n_exp; ++e) row += rec.lookahead[j * n_exp + e];
            if (rec.layer + j >= hp.n_layer) {
                EXPECT_EQ(row, 0.0) << "layer " << rec.layer << " row " << j;
            } else {
                EXPECT_NEAR(row, 1.0, 1e-2) << "layer " << rec.layer << " row " << j;
            }
        }
    }
    EXPECT_EQ(seen.size(), want_records) << "a (seq, pos, layer) is recorded twice";

    // The first prompt's prefill (one batch) is recorded layer-major.
    const std::size_t n0 = prompt_ids[0].size();
    for (std::size_t i = 0; i < n0 * hp.n_layer; ++i) {
        const trace_record& rec = (*records)[i];
        EXPECT_EQ(rec.layer, i / n0);
        EXPECT_EQ(rec.pos, static_cast<std::int64_t>(i % n0));
    }
}

TEST(moe_run_trace, single_prompt_with_a_tag) {
    const std::string trace_path = (moed::test::temp_dir() / "single.trace").string();
    auto r = run({"-m", model_path, "-p", "echo hello", "-n", "4", "--ignore-eos", "--trace", trace_path,
                  "--trace-tag", "shell/demo", "-t", "2", "--json"});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto out = nlohmann::json::parse(r.out);
    const std::size_t prompt_tokens = out["prompt_tokens"].size();
    moed::scheduler::trace_info info;
    std::vector<std::string> tags;
    auto records = moed::scheduler::read_trace(trace_path, info, &tags);
    ASSERT_TRUE(records) << records.error().message;
    EXPECT_EQ(info.lookahead_depth, 2u) << "the default lookahead";
    EXPECT_EQ(tags, std::vector<std::string>{"shell/demo"});
    // The last generated token is never fed back, so it has no routing.
    EXPECT_EQ(records->size(), (prompt_tokens + 4 - 1) * info.n_layer);
    std::size_t decode = 0;
    for (const auto& rec : *records) decode += rec.prefill ? 0 : 1;
    EXPECT_EQ(decode, 3 * info.n_layer);
}

TEST(moe_run_trace, bad_trace_arguments_exit_2) {
    auto r = run({"-m", model_path, "-p", "x", "-n", "1", "--trace", "/nonexistent-dir/t.trace"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("/nonexistent-dir/t.trace"), std::string::npos) << r.out;
    r = run({"-m", model_path, "-p", "x", "--trace", "/tmp/x.trace", "--trace-lookahead", "5"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("--trace-lookahead"), std::string::npos) << r.out;
    r = run({"-m", model_path, "--prompts", "/nonexistent-dir/p.jsonl"}, true);
    EXPECT_EQ(r.status, 2);
    EXPECT_NE(r.out.find("/nonexistent-dir/p.jsonl"), std::string::npos) << r.out;
}

}  // namespace
