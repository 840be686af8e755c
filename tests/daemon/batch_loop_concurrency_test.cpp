// Races the batch loop's thread-safe surface (CI runs this file under ThreadSanitizer):
// several threads submit jobs while others cancel random ids, poll snapshot() and flip sinks
// to gone(); sinks call back into submit() and cancel() from the engine thread; shutdown()
// runs while submitters are still submitting; a loop is destroyed while jobs run. Checked
// afterwards: every accepted job got exactly one finish event (and refused ones none), the
// snapshot's counters add up to what the sinks saw, and every finished job's tokens are a
// prefix of what the request gives alone (cancellation may cut it short, nothing else may
// change it). Nothing waits on wall time: threads stop when the jobs they made finished.
#include <algorithm>
#include <atomic>
#include <functional>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "daemon/batch_loop.h"
#include "engine/evaluator.h"
#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

using engine::token_id;

class counting_sink final : public job_sink {
public:
    std::function<void(std::size_t)> hook;  // engine thread, after token n (1-based)

    void on_token(token_id token, std::string_view text) noexcept override {
        std::size_t n = 0;
        {
            std::lock_guard lock(mu_);
            tokens_.push_back(token);
            text_ += text;
            n = tokens_.size();
            if (finished_ > 0) ++after_finish_;
        }
        if (hook) hook(n);
    }
    void on_done(std::string_view reason, const job_usage& usage) noexcept override {
        finish(std::string(reason), usage);
    }
    void on_failed(const error&, const job_usage& usage) noexcept override { finish("error", usage); }
    bool gone() const noexcept override { return gone_.load(std::memory_order_relaxed); }

    void set_gone() { gone_.store(true, std::memory_order_relaxed); }
    void wait() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return finished_ > 0; });
    }
    int finished() const {
        std::lock_guard lock(mu_);
        return finished_;
    }
    int after_finish() const {
        std::lock_guard lock(mu_);
        return after_finish_;
    }
    std::vector<token_id> tokens() const {
        std::lock_guard lock(mu_);
        return tokens_;
    }
    std::string reason() const {
        std::lock_guard lock(mu_);
        return reason_;
    }
    job_usage usage() const {
        std::lock_guard lock(mu_);
        return usage_;
    }

private:
    void finish(std::string reason, const job_usage& usage) {
        {
            std::lock_guard lock(mu_);
            ++finished_;
            reason_ = std::move(reason);
            usage_ = usage;
        }
        cv_.notify_all();
    }

    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<token_id> tokens_;
    std::string text_;
    std::string reason_;
    job_usage usage_;
    int finished_ = 0;
    int after_finish_ = 0;
    std::atomic<bool> gone_{false};
};

struct accepted_job {
    job_id id = 0;
    std::size_t prompt_index = 0;
    std::shared_ptr<counting_sink> sink;
};

class batch_loop_concurrency : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto m = engine::model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
        ASSERT_TRUE(m) << m.error().message;
        model_ = std::move(m).value().release();
        const char* texts[] = {"the cat", "once upon a time", "she opened the door and saw", "he said",
                               "Hello, my name is", "in the beginning"};
        kernels::compute_pool pool(2);
        engine::evaluator eval(*model_, pool, 64);
        engine::kv_cache cache(model_->hparams().n_layer, model_->hparams().n_ctx_train,
                               model_->hparams().n_head_kv, model_->hparams().head_dim);
        for (const char* t : texts) {
            prompts_.push_back(model_->vocab().encode(t, false));
            engine::generation_request req;
            req.prompt = prompts_.back();
            req.n_predict = k_max_tokens;
            req.stop_at_eog = false;
            auto out = engine::generate(eval, *model_, cache, req);
            ASSERT_TRUE(out) << out.error().message;
            alone_.push_back(out->tokens);
        }
    }
    static void TearDownTestSuite() {
        delete model_;
        model_ = nullptr;
    }

    static job_params job(std::size_t prompt_index) {
        job_params p;
        p.prompt = prompts_[prompt_index % prompts_.size()];
        p.max_tokens = k_max_tokens;
        p.stop_at_eog = false;
        p.id = "cmpl-" + std::to_string(prompt_index);
        return p;
    }

    static loop_options options() {
        loop_options o;
        o.max_sequences = 4;
        o.queue_capacity = 8;
        o.max_batch_tokens = 16;
        o.threads = 2;
        return o;
    }

    // Every accepted job finished once, nothing came after its finish, and its tokens are a
    // prefix of the request's tokens alone.
    static void check_jobs(const std::vector<accepted_job>& jobs) {
        for (const accepted_job& j : jobs) {
            EXPECT_EQ(j.sink->finished(), 1) << "job " << j.id;
            EXPECT_EQ(j.sink->after_finish(), 0) << "job " << j.id;
            const auto tokens = j.sink->tokens();
            const auto& alone = alone_[j.prompt_index % alone_.size()];
            ASSERT_LE(tokens.size(), alone.size());
            EXPECT_TRUE(std::equal(tokens.begin(), tokens.end(), alone.begin())) << "job " << j.id;
            EXPECT_EQ(j.sink->usage().completion_tokens, static_cast<std::int64_t>(tokens.size()));
            const std::string reason = j.sink->reason();
            if (reason == "length") {
                EXPECT_EQ(tokens.size(), alone.size());
            } else {
                EXPECT_EQ(reason, "cancelled") << "job " << j.id;
            }
        }
    }

    static constexpr std::int32_t k_max_tokens = 6;
    static inline engine::model* model_ = nullptr;
    static inline std::vector<std::vector<token_id>> prompts_;
    static inline std::vector<std::vector<token_id>> alone_;
};

TEST_F(batch_loop_concurrency, submit_cancel_snapshot_and_gone_race) {
    batch_loop loop(*model_, options());
    loop.start();

    constexpr int k_submitters = 3;
    constexpr int k_jobs_each = 12;
    std::mutex jobs_mu;
    std::vector<accepted_job> jobs;
    std::atomic<int> refused{0};
    std::atomic<bool> done{false};

    std::vector<std::thread> threads;
    for (int t = 0; t < k_submitters; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(static_cast<unsigned>(t) + 1);
            for (int i = 0; i < k_jobs_each; ++i) {
                const std::size_t index = rng() % prompts_.size();
                auto sink = std::make_shared<counting_sink>();
                if (rng() % 4 == 0) {
                    // The client goes away after its second token.
                    counting_sink* raw = sink.get();
                    sink->hook = [raw](std::size_t n) {
                        if (n == 2) raw->set_gone();
                    };
                }
                auto id = loop.submit(job(index), sink);
                if (!id) {
                    // A full queue: wait for this thread's last job, then go on.
                    EXPECT_EQ(id.error().code, errc::out_of_memory) << id.error().message;
                    refused.fetch_add(1);
                    std::shared_ptr<counting_sink> last;
                    {
                        std::lock_guard lock(jobs_mu);
                        if (!jobs.empty()) last = jobs.back().sink;
                    }
                    if (last) last->wait();
                    continue;
                }
                std::lock_guard lock(jobs_mu);
                jobs.push_back({*id, index, sink});
            }
        });
    }
    // Cancels random known (and unknown) ids while the submitters run.
    threads.emplace_back([&] {
        std::mt19937 rng(99);
        while (!done.load()) {
            job_id id = 0;
            {
                std::lock_guard lock(jobs_mu);
                if (!jobs.empty()) id = jobs[rng() % jobs.size()].id;
            }
            if (rng() % 3 == 0) loop.cancel(id + 1000);
            if (id != 0 && rng() % 2 == 0) loop.cancel(id);
            std::this_thread::yield();
        }
    });
    // Polls the status as the socket thread would.
    std::atomic<std::uint64_t> snapshots{0};
    threads.emplace_back([&] {
        while (!done.load()) {
            server_status st;
            loop.snapshot(st);
            EXPECT_LE(st.running_sequences, st.max_sequences);
            EXPECT_LE(st.queue_waiting, st.queue_capacity);
            EXPECT_LE(st.requests.size(), static_cast<std::size_t>(st.max_sequences + st.queue_capacity));
            snapshots.fetch_add(1);
            std::this_thread::yield();
        }
    });

    for (int t = 0; t < k_submitters; ++t) threads[static_cast<std::size_t>(t)].join();
    std::vector<accepted_job> all;
    {
        std::lock_guard lock(jobs_mu);
        all = jobs;
    }
    for (const accepted_job& j : all) j.sink->wait();
    done.store(true);
    for (std::size_t t = k_submitters; t < threads.size(); ++t) threads[t].join();
    loop.shutdown(std::chrono::milliseconds(0));

    check_jobs(all);
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.requests_total, all.size());
    std::uint64_t generated = 0, cancelled = 0;
    for (const accepted_job& j : all) {
        generated += j.sink->tokens().size();
        if (j.sink->reason() == "cancelled") ++cancelled;
    }
    EXPECT_EQ(st.generated_tokens_total, generated);
    EXPECT_EQ(st.requests_cancelled, cancelled);
    EXPECT_EQ(st.requests_failed, 0u);
    EXPECT_EQ(st.running_sequences, 0u);
    EXPECT_EQ(all.size() + static_cast<std::size_t>(refused.load()),
              static_cast<std::size_t>(k_submitters * k_jobs_each));
}

TEST_F(batch_loop_concurrency, sinks_call_back_into_the_loop) {
    batch_loop loop(*model_, options());
    std::mutex jobs_mu;
    std::vector<accepted_job> jobs;
    std::atomic<int> spawned{0};
    // Each sink, after its first token, submits a follow-up job (a chain of 10) and cancels
    // the job before it, all from the engine thread.
    std::function<void(std::size_t, job_id)> spawn = [&](std::size_t index, job_id previous) {
        auto sink = std::make_shared<counting_sink>();
        auto self = std::make_shared<std::atomic<job_id>>(0);
        sink->hook = [&, index, previous, self](std::size_t n) {
            if (n != 1) return;
            if (previous != 0) loop.cancel(previous);
            if (spawned.fetch_add(1) < 10) spawn(index + 1, self->load());
        };
        auto id = loop.submit(job(index), sink);
        ASSERT_TRUE(id) << id.error().message;
        self->store(*id);
        std::lock_guard lock(jobs_mu);
        jobs.push_back({*id, index, sink});
    };
    spawn(0, 0);
    loop.start();
    // The chain ends after 11 jobs: wait for each as it appears.
    for (std::size_t seen = 0;; ++seen) {
        std::shared_ptr<counting_sink> sink;
        {
            std::lock_guard lock(jobs_mu);
            if (seen < jobs.size()) sink = jobs[seen].sink;
        }
        if (!sink) break;
        sink->wait();
    }
    loop.shutdown(std::chrono::minutes(10));
    std::lock_guard lock(jobs_mu);
    EXPECT_EQ(jobs.size(), 11u);
    check_jobs(jobs);
}

TEST_F(batch_loop_concurrency, shutdown_races_with_submitters) {
    batch_loop loop(*model_, options());
    loop.start();
    std::mutex jobs_mu;
    std::condition_variable jobs_cv;
    std::vector<accepted_job> jobs;
    std::vector<std::thread> threads;
    for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&, t] {
            for (std::size_t i = static_cast<std::size_t>(t);; i += 3) {
                auto sink = std::make_shared<counting_sink>();
                auto id = loop.submit(job(i), sink);
                if (id) {
                    {
                        std::lock_guard lock(jobs_mu);
                        jobs.push_back({*id, i, sink});
                    }
                    jobs_cv.notify_all();
                    continue;
                }
                if (id.error().code == errc::cancelled) return;  // shutdown began
                EXPECT_EQ(id.error().code, errc::out_of_memory) << id.error().message;
                // The queue is full: wait until the latest accepted job finished.
                std::shared_ptr<counting_sink> last;
                {
                    std::lock_guard lock(jobs_mu);
                    last = jobs.back().sink;
                }
                last->wait();
            }
        });
    }
    {
        std::unique_lock lock(jobs_mu);
        jobs_cv.wait(lock, [&] { return jobs.size() >= 12; });
    }
    loop.shutdown(std::chrono::milliseconds(0));
    for (auto& th : threads) th.join();
    std::lock_guard lock(jobs_mu);
    check_jobs(jobs);
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.requests_total, jobs.size());
    EXPECT_EQ(st.running_sequences, 0u);
    EXPECT_EQ(st.queue_waiting, 0u);
}

TEST_F(batch_loop_concurrency, destroying_a_running_loop_ends_every_job) {
    std::vector<accepted_job> jobs;
    {
        batch_loop loop(*model_, options());
        // As many as the queue holds, so every submit is accepted; some run, some wait.
        for (std::size_t i = 0; i < options().queue_capacity; ++i) {
            auto sink = std::make_shared<counting_sink>();
            auto id = loop.submit(job(i), sink);
            ASSERT_TRUE(id) << id.error().message;
            jobs.push_back({*id, i, sink});
        }
        loop.start();
        jobs.front().sink->wait();
    }
    check_jobs(jobs);
}

}  // namespace
}  // namespace moed::daemon
