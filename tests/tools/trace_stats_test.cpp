// Runs the trace-stats binary on small traces written here and checks its per-domain expert
// skew against figures worked out by hand: two domains ("c", "prose") of 8 tokens each, 2
// layers, 8 experts, top-2. At layer 0 every "c" token chooses experts {0, 1} and every
// "prose" token {2, 3}; at layer 1 both walk through all 8 experts evenly. So each domain's
// top quarter (2 experts) takes 1.0 of its routings at layer 0 and 0.25 at layer 1 (mean
// 0.625), and its distribution differs from all domains' by a total variation of 0.5 at
// layer 0 and 0 at layer 1 (mean 0.25). A trace whose tags name no domain has no skew, and
// the previous-token reuse is checked on the same trace (1 at layer 0, 0 at layer 1).
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "scheduler/trace.h"
#include "tests/support/run_tool.h"
#include "tests/support/test_paths.h"

namespace {

constexpr std::uint32_t n_layer = 2, n_expert = 8, k = 2, n_tokens = 8;

std::string write_trace(const std::string& name, const std::vector<std::string>& tags) {
    const std::string path = (moed::test::temp_dir() / name).string();
    moed::scheduler::trace_info info;
    info.model_name = "synthetic";
    info.n_layer = n_layer;
    info.n_expert = n_expert;
    info.n_expert_used = k;
    info.lookahead_depth = 0;
    auto w = moed::scheduler::trace_writer::create(path, info);
    EXPECT_TRUE(w.has_value()) << w.error().message;
    for (const std::string& t : tags) EXPECT_TRUE(w->intern_tag(t).has_value());
    for (std::uint32_t seq = 0; seq < 2; ++seq) {
        for (std::uint32_t pos = 0; pos < n_tokens; ++pos) {
            for (std::uint32_t l = 0; l < n_layer; ++l) {
                moed::scheduler::trace_record r;
                r.seq = seq;
                r.tag = seq;
                r.pos = pos;
                r.layer = l;
                if (l == 0) {
                    r.chosen = {static_cast<std::int32_t>(2 * seq), static_cast<std::int32_t>(2 * seq + 1)};
                } else {
                    r.chosen = {static_cast<std::int32_t>((2 * pos) % n_expert), static_cast<std::int32_t>((2 * pos + 1) % n_expert)};
                }
                r.probs.assign(n_expert, 0.0f);
                r.probs[static_cast<std::size_t>(r.chosen[0])] = 0.6f;
                r.probs[static_cast<std::size_t>(r.chosen[1])] = 0.4f;
                EXPECT_TRUE(w->write(r).has_value());
            }
        }
    }
    EXPECT_TRUE(w->close().has_value());
    return path;
}

nlohmann::json stats(const std::string& trace) {
    auto r = moed::test::run_tool("tools/trace-stats", {trace});
    EXPECT_EQ(r.status, 0) << r.out;
    return nlohmann::json::parse(r.out, nullptr, false);
}

TEST(trace_stats, per_domain_skew_matches_hand_figures) {
    const auto j = stats(write_trace("domains.trace", {"c/c-00", "prose/prose-03"}));
    ASSERT_FALSE(j.is_discarded());
    const auto& d = j["domains"];
    EXPECT_EQ(d["top_experts"], 2);
    EXPECT_NEAR(d["top_quarter_share"].get<double>(), 0.625, 1e-12);
    EXPECT_NEAR(d["divergence_from_all"].get<double>(), 0.25, 1e-12);
    for (const char* name : {"c", "prose"}) {
        const auto& p = d["per_domain"][name];
        EXPECT_EQ(p["routings"], n_tokens * n_layer * k) << name;
        EXPECT_NEAR(p["top_quarter_share"].get<double>(), 0.625, 1e-12) << name;
        EXPECT_NEAR(p["divergence_from_all"].get<double>(), 0.25, 1e-12) << name;
    }
    EXPECT_NEAR(j["previous_token"]["per_layer"][0]["recall_at_k"].get<double>(), 1.0, 1e-12);
    EXPECT_NEAR(j["previous_token"]["per_layer"][1]["recall_at_k"].get<double>(), 0.0, 1e-12);
}

TEST(trace_stats, no_domains_without_domain_tags) {
    const auto j = stats(write_trace("plain.trace", {"1", "2"}));
    ASSERT_FALSE(j.is_discarded());
    EXPECT_TRUE(j["domains"]["per_domain"].empty());
    EXPECT_TRUE(j["domains"]["top_quarter_share"].is_null());
}

}  // namespace
