// The replay measures what the daemon runs: moe-run decodes a dozen short prompts on the
// bundled model with a host tier of 25% of the experts, recording a routing trace and
// reporting its tier counters and what the tier measured of its link and compute; then
// trace-replay plays that trace through the same planner and tier core (scheduler/
// tier_replay.h) with a simulated link and compute set to those measurements, in the order
// the engine ran it. Its demand misses (loads an acquire had to start) and bytes read must
// be within 5% of moe-run's own counters: with prefetch off (placement alone), and with
// prefetch on under the planner's fixed score rule (the requests then depend on the routing
// only, not on how fast the machine ran).
#include <cmath>
#include <cstdio>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/run_tool.h"
#include "tests/support/test_paths.h"

namespace {

using json = nlohmann::json;

// A dozen short prompts of four kinds (code, shell, prose, arithmetic): prefill batches and
// decode steps both, with routing that differs between them.
std::string write_prompts(const std::filesystem::path& dir) {
    static const char* const texts[] = {
        "int main(void) {\n    for (int i = 0; i < 10; ++i) printf(\"%d\\n\", i);",
        "static int parse_header(const char *buf, size_t len, struct header *out)",
        "#include <stdio.h>\n#include <stdlib.h>\n\nstruct node { int value; struct node *next; };",
        "for f in *.log; do gzip -9 \"$f\"; done && ls -la | grep .gz",
        "find . -name '*.tmp' -mtime +7 -exec rm {} \\; 2>/dev/null",
        "tar -czf backup.tar.gz /etc && scp backup.tar.gz user@host:/srv/backups/",
        "The river ran low that summer, and the village children walked its dry bed looking for",
        "She closed the letter, folded it twice, and set it on the table beside the lamp.",
        "In the morning the market opened early; traders laid out fish, bread and bright cloth.",
        "12 + 35 = 47. 47 * 3 = 141. 141 - 19 =",
        "The sum of the first ten odd numbers is 1 + 3 + 5 + 7 + 9 + 11 + 13 + 15 + 17 + 19 =",
        "If x + 2y = 10 and x - y = 1, then 3y = 9, so y = 3 and x ="};
    const std::string path = (dir / "prompts.jsonl").string();
    std::ofstream out(path);
    int n = 0;
    for (const char* t : texts) out << json{{"domain", "d" + std::to_string(n / 3)}, {"id", n++}, {"text", t}}.dump() << "\n";
    return path;
}

struct figures {
    double demand_misses = 0, bytes_read = 0;
};

void expect_within(double replay, double daemon, const char* what) {
    ASSERT_GT(daemon, 0.0) << what;
    std::printf("%s: replay %.0f, moe-run %.0f (%.4fx)\n", what, replay, daemon, replay / daemon);
    EXPECT_LE(std::abs(replay - daemon), 0.05 * daemon)
        << what << ": replay " << replay << ", moe-run " << daemon << " (" << (replay / daemon) << "x)";
}

void check_agreement(const std::vector<std::string>& prefetch_args, bool prefetch) {
    const auto dir = moed::test::temp_dir();
    const std::string model = moed::test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf";
    const std::string trace = (dir / "run.trace").string();
    std::vector<std::string> args = {"-m", model, "--prompts", write_prompts(dir), "-n", "24", "--lookahead", "2",
                                     "-t", "2", "--host-budget", "25%", "--trace", trace, "--json"};
    args.insert(args.end(), prefetch_args.begin(), prefetch_args.end());
    const auto ran = moed::test::run_tool("tools/moe-run", args);
    ASSERT_EQ(ran.status, 0) << ran.out;
    const auto daemon = json::parse(ran.out);
    const auto& host = daemon["tiers"]["host"];
    const auto& link = daemon["link"];

    std::vector<std::string> replay_args = {
        "--model", model, "--policies", "lru,policy", "--scope", "global", "--engine-order",
        "--budget", "25%",  // as moe-run's: the replay cuts it into the tier's slot classes
        "--link-gbps", std::to_string(link["bytes_per_s"].get<double>() / 1e9),
        "--link-latency-us", std::to_string(link["load_latency_us"].get<double>()),
        "--layer-us", std::to_string(link["layer_compute_us"].get<double>())};
    if (prefetch) {
        replay_args.insert(replay_args.end(), {"--pf-gate", "off"});
    } else {
        replay_args.push_back("--no-prefetch");
    }
    replay_args.push_back(trace);
    const auto replayed = moed::test::run_tool("tools/trace-replay", replay_args);
    ASSERT_EQ(replayed.status, 0) << replayed.out;
    const auto run = json::parse(replayed.out)["runs"][0];
    // The replay cut the budget into the daemon's slots (the bundled model's layers differ
    // in expert size, so into the daemon's slot classes).
    EXPECT_EQ(run["slots"].get<std::uint64_t>(), host["capacity_experts"].get<std::uint64_t>());
    const auto r = run["policies"]["policy"];

    expect_within(r["demand_misses"].get<double>(), daemon["tiers"]["prefetch"]["demand_misses"].get<double>(),
                  "demand misses");
    expect_within(r["bytes_read"].get<double>(), host["bytes_read"].get<double>(), "bytes read");
    if (prefetch) {
        EXPECT_GT(r["prefetch_loads"].get<double>(), 0.0);
        expect_within(r["prefetch_loads"].get<double>(), daemon["tiers"]["prefetch"]["issued"].get<double>(),
                      "prefetch loads");
    }
}

TEST(replay_agreement, demand_only_placement_matches_the_run) { check_agreement({"--prefetch", "off"}, false); }

TEST(replay_agreement, prefetching_under_the_score_rule_matches_the_run) {
    check_agreement({"--prefetch", "on", "--pf-gate", "off"}, true);
}

}  // namespace
