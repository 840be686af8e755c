// The batch loop with tiered experts and prefetching (CI runs this file under ThreadSanitizer):
// the engine thread drives the router lookahead, the prefetch planner and the tier's
// pipeline while submitter threads add jobs and a status thread keeps reading the loop's
// snapshot, the tier statistics and the planner's figures (what /v1/status does), and a
// profile thread changes the hot set and the eviction scores. Checked afterwards: every job
// generated exactly the greedy tokens its prompt gives with every expert resident, the
// planner predicted and the tier prefetched, and nothing was read in error. Nothing waits on
// wall time: threads stop when the jobs finished.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "daemon/batch_loop.h"
#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

using engine::token_id;

class collecting_sink final : public job_sink {
public:
    void on_token(token_id token, std::string_view) noexcept override {
        std::lock_guard lock(mu_);
        tokens_.push_back(token);
    }
    void on_done(std::string_view, const job_usage&) noexcept override { finish(); }
    void on_failed(const error& e, const job_usage&) noexcept override {
        {
            std::lock_guard lock(mu_);
            failure_ = e.message;
        }
        finish();
    }
    void wait() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return done_; });
    }
    std::vector<token_id> tokens() const {
        std::lock_guard lock(mu_);
        return tokens_;
    }
    std::string failure() const {
        std::lock_guard lock(mu_);
        return failure_;
    }

private:
    void finish() {
        {
            std::lock_guard lock(mu_);
            done_ = true;
        }
        cv_.notify_all();
    }
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<token_id> tokens_;
    std::string failure_;
    bool done_ = false;
};

std::string model_path() { return test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

TEST(batch_loop_prefetch_concurrency, tiered_prefetching_loop_matches_resident_generation) {
    const std::vector<std::string> texts = {"int main(", "def parse(", "The river", "for f in *.txt; do",
                                            "#include <", "import os\n"};
    constexpr std::int32_t n_tokens = 12;
    // The resident reference, one prompt at a time.
    std::vector<std::vector<token_id>> prompts, expected;
    {
        auto resident = engine::model::load(model_path());
        ASSERT_TRUE(resident) << resident.error().message;
        kernels::compute_pool pool(2);
        engine::evaluator eval(**resident, pool, 64);
        const auto& hp = (*resident)->hparams();
        engine::kv_cache cache(hp.n_layer, hp.n_ctx_train, hp.n_head_kv, hp.head_dim);
        for (const auto& t : texts) {
            engine::generation_request r;
            r.prompt = (*resident)->vocab().encode(t, false);
            r.n_predict = n_tokens;
            r.stop_at_eog = false;
            auto g = engine::generate(eval, **resident, cache, r);
            ASSERT_TRUE(g) << g.error().message;
            prompts.push_back(r.prompt);
            expected.push_back(g->tokens);
        }
    }

    engine::load_options lo;
    lo.host_budget = budget_spec{0, 0.25, true};
    lo.tier.lock = storage::memory_lock::off;
    lo.tier.max_inflight_bytes = 1u << 20;
    auto loaded = engine::model::load(model_path(), lo);
    ASSERT_TRUE(loaded) << loaded.error().message;
    engine::model& m = **loaded;
    loop_options o;
    o.max_sequences = 3;
    o.max_batch_tokens = 32;
    o.threads = 2;
    o.prefetch.lookahead = 3;
    batch_loop loop(m, o);
    loop.start();

    std::atomic<bool> done{false};
    std::thread status([&] {
        while (!done.load()) {
            server_status s;
            loop.snapshot(s);
            expert_cache_stats st = m.tiers()->stats();
            loop.add_prefetch_stats(st.prefetch);
            EXPECT_LE(st.prefetch.inflight_bytes, 1u << 20);
            std::this_thread::yield();
        }
    });
    std::thread profile([&] {
        const auto& hp = m.hparams();
        std::vector<float> scores(static_cast<std::size_t>(hp.n_layer) * hp.n_expert, 0.5f);
        std::uint32_t round = 0;
        while (!done.load()) {
            std::vector<ExpertId> hot;
            for (std::uint32_t l = 0; l < hp.n_layer; ++l) hot.push_back(ExpertId{l, (l + round) % hp.n_expert});
            m.tiers()->set_hot_set(hot);
            m.tiers()->set_expert_scores(round % 2 == 0 ? std::span<const float>(scores) : std::span<const float>());
            ++round;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    });
    std::vector<std::shared_ptr<collecting_sink>> sinks(texts.size());
    std::vector<std::thread> submitters;
    for (std::size_t t = 0; t < 2; ++t) {
        submitters.emplace_back([&, t] {
            for (std::size_t i = t; i < texts.size(); i += 2) {
                job_params p;
                p.prompt = prompts[i];
                p.max_tokens = n_tokens;
                p.stop_at_eog = false;
                p.id = "job-" + std::to_string(i);
                sinks[i] = std::make_shared<collecting_sink>();
                auto id = loop.submit(std::move(p), sinks[i]);
                EXPECT_TRUE(id) << id.error().message;
            }
        });
    }
    for (auto& th : submitters) th.join();
    for (auto& s : sinks) s->wait();
    done.store(true);
    status.join();
    profile.join();
    loop.shutdown(std::chrono::milliseconds(1000));

    for (std::size_t i = 0; i < texts.size(); ++i) {
        EXPECT_EQ(sinks[i]->failure(), "") << i;
        EXPECT_EQ(sinks[i]->tokens(), expected[i]) << "prompt " << i << ": " << texts[i];
    }
    expert_cache_stats st = m.tiers()->stats();
    loop.add_prefetch_stats(st.prefetch);
    EXPECT_GT(st.prefetch.issued, 0u);
    EXPECT_GT(st.prefetch.routed, 0u);
    EXPECT_GT(st.prefetch.recall, 0.0);
    EXPECT_EQ(st.host.read_errors, 0u);
    EXPECT_LE(st.prefetch.inflight_bytes_max, 1u << 20);
}

}  // namespace
}  // namespace moed::daemon
