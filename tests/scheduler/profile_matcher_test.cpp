// The profile matcher and the profile store. Matcher: synthetic tasks whose tokens take
// task-specific routing paths through the layers while every expert is used about equally
// per layer (so mean routing vectors barely differ) — the n-gram ranking must find the
// task, the cosine baseline is compared, the similarity gate reports the best candidate
// below the threshold without matching it, and empty inputs match nothing. Store: add,
// list, find, replace or refuse an existing name, remove, reload from disk; a corrupt file,
// a file of another model and a file whose inner name differs are skipped with messages
// naming them while the good profiles load; a skipped file can still be deleted by name.
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "scheduler/profile_matcher.h"
#include "scheduler/profile_store.h"
#include "tests/support/test_paths.h"

namespace moed::scheduler {
namespace {

constexpr routing_shape k_shape{4, 8, 2};
constexpr const char* k_identity = "qwen3moe:00000000000000aa";

// A task: each token follows one of the task's paths (top-1 expert per layer) chosen at
// random; the second choice is random. Every task's paths use every expert of each layer
// equally often, so per-layer selection frequencies look alike across tasks.
struct task {
    std::vector<std::vector<std::int32_t>> paths;  // [path][layer]
};

task make_task(std::uint32_t seed) {
    std::mt19937 rng(seed);
    task t;
    // 8 paths: in each layer a permutation of the 8 experts, so each expert is top-1 of
    // exactly one path per layer.
    std::vector<std::vector<std::int32_t>> perms(k_shape.n_layer);
    for (auto& p : perms) {
        p = {0, 1, 2, 3, 4, 5, 6, 7};
        std::shuffle(p.begin(), p.end(), rng);
    }
    for (int i = 0; i < 8; ++i) {
        std::vector<std::int32_t> path;
        for (std::uint32_t l = 0; l < k_shape.n_layer; ++l) path.push_back(perms[l][i]);
        t.paths.push_back(path);
    }
    return t;
}

routing_accumulator sample(const task& t, int n_tokens, std::uint32_t seed) {
    std::mt19937 rng(seed);
    routing_accumulator acc(k_shape);
    std::vector<int> which(static_cast<std::size_t>(n_tokens));
    for (int& w : which) w = static_cast<int>(rng() % t.paths.size());
    for (std::uint32_t l = 0; l < k_shape.n_layer; ++l) {
        std::vector<float> probs(static_cast<std::size_t>(n_tokens) * k_shape.n_expert, 0.05f);
        std::vector<std::int32_t> chosen(static_cast<std::size_t>(n_tokens) * 2);
        for (int i = 0; i < n_tokens; ++i) {
            const std::int32_t top = t.paths[static_cast<std::size_t>(which[i])][l];
            std::int32_t second = static_cast<std::int32_t>(rng() % k_shape.n_expert);
            if (second == top) second = (second + 1) % static_cast<std::int32_t>(k_shape.n_expert);
            chosen[i * 2] = top;
            chosen[i * 2 + 1] = second;
            probs[static_cast<std::size_t>(i) * k_shape.n_expert + top] = 0.5f;
            probs[static_cast<std::size_t>(i) * k_shape.n_expert + second] = 0.2f;
        }
        acc.add_layer(l, n_tokens, probs, chosen);
    }
    return acc;
}

std::shared_ptr<const profile> profile_of(const std::string& name, const routing_accumulator& acc) {
    return std::make_shared<const profile>(make_profile(name, k_identity, "synthetic", "test", 1, 0, acc));
}

TEST(profile_matcher, ngrams_find_the_task_where_mean_vectors_cannot) {
    std::vector<task> tasks;
    std::vector<std::shared_ptr<const profile>> profiles;
    for (std::uint32_t i = 0; i < 4; ++i) {
        tasks.push_back(make_task(100 + i));
        profiles.push_back(profile_of("task" + std::to_string(i), sample(tasks.back(), 2000, 200 + i)));
    }
    const profile_matcher matcher(profiles, match_options{.threshold = 0.0});
    int right = 0, right_cosine = 0, trials = 0;
    for (std::uint32_t i = 0; i < 4; ++i) {
        for (std::uint32_t s = 0; s < 10; ++s) {
            const routing_accumulator prompt = sample(tasks[i], 40, 1000 + 10 * i + s);
            const profile_match m = matcher.match(prompt);
            ASSERT_NE(m.matched, nullptr);
            EXPECT_EQ(m.candidate, m.matched->name);
            right += m.matched->name == "task" + std::to_string(i);
            const profile_match c = matcher.match_cosine(prompt);
            right_cosine += c.candidate == "task" + std::to_string(i);
            ++trials;
        }
    }
    EXPECT_GE(right, trials * 95 / 100) << "n-gram ranking " << right << "/" << trials;
    // The mean vectors of these tasks are nearly equal: cosine does much worse (this keeps
    // the test honest about what the n-grams add).
    EXPECT_LT(right_cosine, right) << "cosine " << right_cosine << "/" << trials;
}

TEST(profile_matcher, gate_reports_the_candidate_below_the_threshold) {
    const task t = make_task(7);
    auto p = profile_of("only", sample(t, 500, 1));
    const routing_accumulator prompt = sample(t, 50, 2);
    const double sim = profile_matcher::similarity(*p, prompt.mean_scores());
    EXPECT_GT(sim, 0.5);
    EXPECT_LE(sim, 1.0 + 1e-12);

    const profile_match below = profile_matcher({p}, match_options{.threshold = sim + 0.01}).match(prompt);
    EXPECT_EQ(below.matched, nullptr);
    EXPECT_EQ(below.candidate, "only");
    EXPECT_DOUBLE_EQ(below.similarity, sim);
    const profile_match above = profile_matcher({p}, match_options{.threshold = sim - 0.01}).match(prompt);
    EXPECT_EQ(above.matched, p);
    EXPECT_LT(above.log_likelihood, 0.0);

    EXPECT_EQ(profile_matcher({}, {}).match(prompt).candidate, "");
    const routing_accumulator empty(k_shape);
    EXPECT_EQ(profile_matcher({p}, {}).match(empty).matched, nullptr);
    EXPECT_EQ(profile_matcher({p}, {}).match_cosine(empty).matched, nullptr);
}

class store_test : public ::testing::Test {
protected:
    void SetUp() override {
        static int n = 0;
        state_ = test::temp_dir() / ("state" + std::to_string(++n));
    }
    profile_store make() { return profile_store(state_.string(), k_identity, k_shape); }
    profile named(const std::string& name, std::uint32_t seed = 1) {
        return make_profile(name, k_identity, "synthetic", "test", 1, 0, sample(make_task(seed), 100, seed));
    }
    std::filesystem::path state_;
};

TEST_F(store_test, add_list_find_replace_remove_reload) {
    profile_store store = make();
    ASSERT_TRUE(store.load());  // no directory yet: empty
    EXPECT_TRUE(store.list().empty());
    EXPECT_TRUE(store.matcher()->empty());

    auto added = store.add(named("beta"), false);
    ASSERT_TRUE(added) << added.error().message;
    EXPECT_EQ(*added, add_outcome::added);
    ASSERT_TRUE(store.add(named("alpha"), false));
    EXPECT_TRUE(std::filesystem::exists(state_ / "profiles" / "alpha.profile"));
    ASSERT_EQ(store.list().size(), 2u);
    EXPECT_EQ(store.list()[0]->name, "alpha");  // sorted
    EXPECT_EQ(store.matcher()->profiles().size(), 2u);

    // The same name again: kept unless replace.
    profile other = named("alpha", 9);
    auto again = store.add(other, false);
    ASSERT_TRUE(again);
    EXPECT_EQ(*again, add_outcome::exists);
    EXPECT_NE(store.find("alpha")->score, other.score);
    auto replaced = store.add(other, true);
    ASSERT_TRUE(replaced);
    EXPECT_EQ(*replaced, add_outcome::replaced);
    EXPECT_EQ(store.find("alpha")->score, other.score);

    profile_store reloaded = make();
    ASSERT_TRUE(reloaded.load());
    ASSERT_EQ(reloaded.list().size(), 2u);
    EXPECT_EQ(reloaded.find("alpha")->score, other.score);
    EXPECT_TRUE(reloaded.problems().empty());

    ASSERT_TRUE(store.remove("beta"));
    EXPECT_EQ(store.find("beta"), nullptr);
    EXPECT_FALSE(std::filesystem::exists(state_ / "profiles" / "beta.profile"));
    auto missing = store.remove("beta");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().code, errc::not_found);
    EXPECT_FALSE(store.remove("../x"));

    // A profile of another model or with a bad name is never stored.
    profile foreign = named("foreign");
    foreign.model_identity = "qwen3moe:ffffffffffffffff";
    EXPECT_FALSE(store.add(foreign, false));
    profile badname = named("x");
    badname.name = "a/b";
    EXPECT_FALSE(store.add(badname, false));
}

TEST_F(store_test, bad_files_are_skipped_with_messages) {
    {
        profile_store store = make();
        ASSERT_TRUE(store.add(named("good"), false));
    }
    const auto dir = state_ / "profiles";
    std::ofstream(dir / "corrupt.profile") << "MOEDPROF garbage";
    profile foreign = named("foreign");
    foreign.model_identity = "llama:1111111111111111";
    ASSERT_TRUE(write_profile((dir / "foreign.profile").string(), foreign));
    ASSERT_TRUE(write_profile((dir / "renamed.profile").string(), named("inner")));
    std::ofstream(dir / "notes.txt") << "not a profile";

    profile_store store = make();
    ASSERT_TRUE(store.load());
    ASSERT_EQ(store.list().size(), 1u);
    EXPECT_EQ(store.list()[0]->name, "good");
    const std::vector<std::string> problems = store.problems();
    ASSERT_EQ(problems.size(), 3u);
    auto has = [&](const std::string& a, const std::string& b) {
        for (const std::string& m : problems) {
            if (m.find(a) != std::string::npos && m.find(b) != std::string::npos) return true;
        }
        return false;
    };
    EXPECT_TRUE(has((dir / "corrupt.profile").string(), "field")) << problems[0];
    EXPECT_TRUE(has((dir / "foreign.profile").string(), "llama:1111111111111111"));
    EXPECT_TRUE(has((dir / "foreign.profile").string(), k_identity));
    EXPECT_TRUE(has((dir / "renamed.profile").string(), "does not match the file name"));

    // A skipped file can be deleted by its name.
    ASSERT_TRUE(store.remove("corrupt"));
    EXPECT_FALSE(std::filesystem::exists(dir / "corrupt.profile"));
    EXPECT_EQ(store.problems().size(), 2u);
}

}  // namespace
}  // namespace moed::scheduler
