// Runs the trace-replay binary as a user would, on small traces written here: a reference
// JSON-lines file and a moed trace file (scheduler/trace.h) with the same routing and a
// truthful lookahead. Checks: replay JSON has a run per budget and scope with every policy's
// figures, ratios against LRU, Belady's misses at most every demand-only policy's, and
// moed's own policy (planner and tier core, global scope) missing less than LRU when the
// lookahead tells the truth, with its prediction recall 1, and more without prefetch; the
// same routing read from both formats gives the same LRU figures; a task profile file is
// used by --profile and one made for another model is refused; bad arguments exit 2 with a
// message naming the problem.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "scheduler/profile.h"
#include "scheduler/trace.h"
#include "tests/support/run_tool.h"
#include "tests/support/test_paths.h"

namespace {

using run_result = moed::test::tool_result;

run_result run(const std::vector<std::string>& args, bool merge_stderr = false) {
    return moed::test::run_tool("tools/trace-replay", args, merge_stderr);
}

constexpr std::uint32_t n_layer = 3, n_expert = 8, k = 2, n_prompts = 4, n_tokens = 60;

// Random routing per prompt x token x layer (each expert of a prompt's favourite half
// three times as likely), the same in both files.
constexpr const char* model_id = "qwen3moe:0123456789abcdef";

struct fixture {
    std::string jsonl;
    std::string trace;
    std::string profile;          // the "c" prompts' task profile, for this model
    std::string foreign_profile;  // the same, made for another model
    fixture() {
        const auto dir = moed::test::temp_dir();
        jsonl = (dir / "routing.jsonl").string();
        trace = (dir / "routing.trace").string();
        std::mt19937 rng(5);
        std::vector<moed::scheduler::trace_record> records;
        std::ofstream out(jsonl);
        for (std::uint32_t p = 0; p < n_prompts; ++p) {
            const std::string domain = p % 2 ? "shell" : "c";
            for (std::uint32_t t = 0; t < n_tokens; ++t) {
                for (std::uint32_t l = 0; l < n_layer; ++l) {
                    std::vector<std::int32_t> chosen;
                    while (chosen.size() < k) {
                        std::int32_t e = static_cast<std::int32_t>(rng() % n_expert);
                        if (rng() % 4 != 0) e = static_cast<std::int32_t>((e % 4) + 4 * (p % 2));
                        if (std::find(chosen.begin(), chosen.end(), e) == chosen.end()) chosen.push_back(e);
                    }
                    nlohmann::json row = {{"d", domain}, {"p", domain + "-" + std::to_string(p)}, {"l", l}, {"t", t},
                                          {"tok", 7}, {"e", chosen}, {"w", {0.75, 0.25}}};
                    out << row.dump() << "\n";
                    moed::scheduler::trace_record r;
                    r.seq = p;
                    r.tag = p;
                    r.pos = t;
                    r.token = 7;
                    r.layer = l;
                    r.prefill = true;
                    r.chosen = chosen;
                    r.probs.assign(n_expert, 0.0f);
                    r.probs[static_cast<std::size_t>(chosen[0])] = 0.75f;
                    r.probs[static_cast<std::size_t>(chosen[1])] = 0.25f;
                    records.push_back(r);
                }
            }
        }
        // Lookahead depth 1: each record's row predicts its own layer, truthfully.
        moed::scheduler::trace_info info;
        info.model_name = "synthetic";
        info.model_id = model_id;
        info.n_layer = n_layer;
        info.n_expert = n_expert;
        info.n_expert_used = k;
        info.lookahead_depth = 1;
        auto w = moed::scheduler::trace_writer::create(trace, info);
        EXPECT_TRUE(w.has_value()) << w.error().message;
        for (std::uint32_t p = 0; p < n_prompts; ++p) {
            auto tag = w->intern_tag(std::string(p % 2 ? "shell" : "c") + "/" + std::to_string(p));
            EXPECT_TRUE(tag.has_value());
        }
        for (auto& r : records) {
            r.lookahead = r.probs;
            EXPECT_TRUE(w->write(r).has_value());
        }
        EXPECT_TRUE(w->close().has_value());

        // Profiles from the "c" prompts (even ones), as moectl profile create would make them.
        const moed::scheduler::routing_shape shape{n_layer, n_expert, k};
        moed::scheduler::routing_accumulator acc(shape);
        for (std::size_t i = 0; i < records.size(); i += n_layer) {
            if (records[i].tag % 2 != 0) continue;
            for (std::uint32_t l = 0; l < n_layer; ++l) acc.add_layer(l, 1, records[i + l].probs, records[i + l].chosen);
        }
        profile = (dir / "c.profile").string();
        foreign_profile = (dir / "other.profile").string();
        const auto p = moed::scheduler::make_profile("c", model_id, "synthetic", "test", 2, 0, acc);
        EXPECT_TRUE(moed::scheduler::write_profile(profile, p).has_value());
        const auto q = moed::scheduler::make_profile("c", "qwen3moe:fedcba9876543210", "other", "test", 2, 0, acc);
        EXPECT_TRUE(moed::scheduler::write_profile(foreign_profile, q).has_value());
    }
};

const fixture& files() {
    static const fixture f;
    return f;
}

TEST(trace_replay, replay_json_for_every_budget_scope_and_policy) {
    auto r = run({"--budget", "50%,6", "--scope", "per-layer,global", files().trace});
    ASSERT_EQ(r.status, 0) << r.out;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["mode"], "replay");
    EXPECT_EQ(j["tokens"], n_prompts * n_tokens);
    EXPECT_EQ(j["sequences"], n_prompts);
    EXPECT_EQ(j["lookahead_depth"], 1);
    ASSERT_EQ(j["runs"].size(), 4u);
    EXPECT_EQ(j["runs"][0]["slots"], 12);  // 50% of 24 experts
    EXPECT_EQ(j["runs"][0]["slots_per_layer"], 4);
    EXPECT_EQ(j["runs"][2]["slots"], 6);
    for (const auto& run : j["runs"]) {
        const auto& p = run["policies"];
        for (const char* name : {"lru", "lfu", "belady"}) {
            ASSERT_TRUE(p.contains(name)) << name;
            for (const char* field : {"demand_misses", "bytes_read", "misses_vs_lru", "bytes_vs_lru", "misses_vs_belady"}) {
                EXPECT_TRUE(p[name].contains(field)) << name << " " << field;
            }
        }
        EXPECT_EQ(run["belady_misses"], p["belady"]["demand_misses"]);
        EXPECT_LE(p["belady"]["demand_misses"].get<int>(), p["lru"]["demand_misses"].get<int>());
        EXPECT_LE(p["belady"]["demand_misses"].get<int>(), p["lfu"]["demand_misses"].get<int>());
        EXPECT_DOUBLE_EQ(p["lru"]["misses_vs_lru"].get<double>(), 1.0);
        // moed's own placement is one pool: its policy runs in the global scope only.
        ASSERT_EQ(p.contains("policy"), run["scope"] == "global") << run.dump();
        if (run["scope"] != "global") continue;
        for (const char* field : {"demand_misses", "waits", "bytes_read", "prefetch_loads", "wasted_prefetch_bytes",
                                  "recall", "misses_vs_lru", "bytes_vs_lru", "misses_vs_belady"}) {
            EXPECT_TRUE(p["policy"].contains(field)) << field;
        }
        // A truthful lookahead: prefetching takes most misses away, and the planner's
        // predictions cover nearly every routed expert (the second expert's raw 0.25 is below
        // the gate's floor until calibration has seen that the router always picks it).
        EXPECT_LT(p["policy"]["demand_misses"].get<double>(), 0.5 * p["lru"]["demand_misses"].get<double>())
            << run.dump();
        EXPECT_GT(p["policy"]["prefetch_loads"].get<int>(), 0);
        EXPECT_GT(p["policy"]["recall"].get<double>(), 0.95);
    }
}

TEST(trace_replay, the_policy_without_prefetch_misses_more) {
    auto on = run({"--budget", "50%", "--scope", "global", "--policies", "lru,policy", files().trace});
    auto off = run({"--budget", "50%", "--scope", "global", "--policies", "lru,policy", "--no-prefetch", files().trace});
    ASSERT_EQ(on.status, 0) << on.out;
    ASSERT_EQ(off.status, 0) << off.out;
    const auto a = nlohmann::json::parse(on.out)["runs"][0]["policies"]["policy"];
    const auto b = nlohmann::json::parse(off.out)["runs"][0]["policies"]["policy"];
    EXPECT_EQ(b["prefetch_loads"], 0);
    EXPECT_GT(b["demand_misses"].get<int>(), 2 * a["demand_misses"].get<int>());
}

TEST(trace_replay, both_formats_give_the_same_routing) {
    auto a = run({"--policies", "lru,belady", files().trace});
    auto b = run({"--policies", "lru,belady", files().jsonl});
    ASSERT_EQ(a.status, 0) << a.out;
    ASSERT_EQ(b.status, 0) << b.out;
    const auto ja = nlohmann::json::parse(a.out);
    const auto jb = nlohmann::json::parse(b.out);
    ASSERT_EQ(ja["runs"].size(), jb["runs"].size());
    for (std::size_t i = 0; i < ja["runs"].size(); ++i) {
        EXPECT_EQ(ja["runs"][i]["policies"]["lru"]["demand_misses"], jb["runs"][i]["policies"]["lru"]["demand_misses"]);
        EXPECT_EQ(ja["runs"][i]["belady_misses"], jb["runs"][i]["belady_misses"]);
    }
}

TEST(trace_replay, task_profile_files_are_read_and_foreign_ones_refused) {
    auto r = run({"--budget", "50%", "--scope", "global", "--profile", files().profile, files().trace});
    ASSERT_EQ(r.status, 0) << r.out;
    EXPECT_EQ(nlohmann::json::parse(r.out)["profile"], files().profile);
    auto holdout = run({"--budget", "50%", "--scope", "global", "--profile-holdout", files().trace});
    EXPECT_EQ(holdout.status, 0) << holdout.out;

    auto foreign = run({"--profile", files().foreign_profile, files().trace}, true);
    EXPECT_EQ(foreign.status, 2) << foreign.out;
    EXPECT_NE(foreign.out.find("qwen3moe:fedcba9876543210"), std::string::npos) << foreign.out;
}

TEST(trace_replay, bad_arguments_exit_2_with_a_message) {
    struct bad_case {
        std::vector<std::string> args;
        std::string says;
    };
    const std::vector<bad_case> cases = {
        {{"--frobnicate", files().trace}, "unknown option --frobnicate"},
        {{"--budget", "0%", files().trace}, "bad value for --budget"},
        {{"--budget", "150%", files().trace}, "more than every expert"},
        {{"--budget", "1", files().trace}, "fewer than the 2 experts a layer uses"},
        {{"--scope", "ring", files().trace}, "unknown scope 'ring'"},
        {{"--policies", "fifo", files().trace}, "unknown policy 'fifo'"},
        {{"routing.jsonl.gz"}, "decompress it first"},
        {{"/nonexistent.trace"}, "/nonexistent.trace"},
        {{"--pf-gate", "maybe", files().trace}, "--pf-gate takes on or off"},
        {{"--profile", "/nonexistent.json", files().trace}, "cannot open profile"},
        {{files().trace, files().jsonl}, "more than one trace"},
    };
    for (const bad_case& c : cases) {
        auto r = run(c.args, true);
        EXPECT_EQ(r.status, 2) << c.says << ": " << r.out;
        EXPECT_NE(r.out.find(c.says), std::string::npos) << r.out;
    }
}

}  // namespace
