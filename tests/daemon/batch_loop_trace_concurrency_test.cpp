// The batch loop recording a routing trace while several threads submit tagged jobs and
// another polls snapshot() (CI runs this file under ThreadSanitizer: the writer and the
// recorder must be touched by the engine thread only). After shutdown() the trace is
// complete and, per job: one sequence id, its own tag, every (position, layer) exactly once
// for the prompt and the generated tokens that were fed back, prompt positions flagged
// prefill, and the prompt's token ids at those positions.
#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "daemon/batch_loop.h"
#include "engine/model.h"
#include "engine/trace_recorder.h"
#include "scheduler/trace.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

class done_sink final : public job_sink {
public:
    void on_token(engine::token_id, std::string_view) noexcept override {}
    void on_done(std::string_view reason, const job_usage& u) noexcept override { finish(std::string(reason), u); }
    void on_failed(const error& e, const job_usage& u) noexcept override { finish("error: " + e.message, u); }
    void wait() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return done_; });
    }
    std::string reason() {
        std::lock_guard lock(mu_);
        return reason_;
    }
    job_usage usage() {
        std::lock_guard lock(mu_);
        return usage_;
    }

private:
    void finish(std::string reason, const job_usage& u) {
        {
            std::lock_guard lock(mu_);
            done_ = true;
            reason_ = std::move(reason);
            usage_ = u;
        }
        cv_.notify_all();
    }
    std::mutex mu_;
    std::condition_variable cv_;
    bool done_ = false;
    std::string reason_;
    job_usage usage_;
};

struct submitted {
    std::string tag;
    std::vector<engine::token_id> prompt;
    std::int32_t max_tokens = 0;
    std::shared_ptr<done_sink> sink;
};

TEST(batch_loop_trace_concurrency, tagged_jobs_from_several_threads) {
    auto loaded = engine::model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
    ASSERT_TRUE(loaded) << loaded.error().message;
    engine::model& m = **loaded;
    const std::string path = (test::temp_dir() / "loop.trace").string();

    std::vector<submitted> jobs;
    std::mutex jobs_mu;
    {
        loop_options o;
        o.max_sequences = 3;
        o.max_batch_tokens = 16;  // prompts span several steps, batched with decodes
        o.threads = 2;
        batch_loop loop(m, o);
        auto writer = scheduler::trace_writer::create(path, engine::make_trace_info(m, 2));
        ASSERT_TRUE(writer) << writer.error().message;
        loop.record_trace(std::move(writer).value());
        loop.start();

        const char* texts[] = {"int main(void) {\n", "def f(x):\n    return", "The river ran", "ls -la /tmp &&"};
        std::atomic<bool> stop_polling{false};
        std::thread poller([&] {
            while (!stop_polling.load()) {
                server_status s;
                loop.snapshot(s);
                std::this_thread::yield();
            }
        });
        std::vector<std::thread> submitters;
        for (int t = 0; t < 3; ++t) {
            submitters.emplace_back([&, t] {
                for (int i = 0; i < 4; ++i) {
                    submitted s;
                    s.tag = fmt::format("thread{}/{}", t, i);
                    s.prompt = m.vocab().encode(texts[(t + i) % 4], false);
                    s.max_tokens = 2 + (t + i) % 3;
                    s.sink = std::make_shared<done_sink>();
                    job_params p;
                    p.prompt = s.prompt;
                    p.max_tokens = s.max_tokens;
                    p.stop_at_eog = false;
                    p.trace_tag = s.tag;
                    auto id = loop.submit(std::move(p), s.sink);
                    ASSERT_TRUE(id) << id.error().message;
                    std::lock_guard lock(jobs_mu);
                    jobs.push_back(std::move(s));
                }
            });
        }
        for (auto& th : submitters) th.join();
        for (auto& j : jobs) j.sink->wait();
        stop_polling = true;
        poller.join();
        loop.shutdown(std::chrono::milliseconds(0));
    }
    ASSERT_EQ(jobs.size(), 12u);
    for (auto& j : jobs) ASSERT_EQ(j.sink->reason(), "length") << j.tag;

    scheduler::trace_info info;
    std::vector<std::string> tags;
    auto records = scheduler::read_trace(path, info, &tags);
    ASSERT_TRUE(records) << records.error().message;
    EXPECT_EQ(tags.size(), 12u);
    std::map<std::string, std::set<std::uint64_t>> seqs_of_tag;
    std::map<std::string, std::map<std::pair<std::int64_t, std::uint32_t>, int>> cells;
    std::map<std::string, const submitted*> by_tag;
    for (const auto& j : jobs) by_tag[j.tag] = &j;
    for (const auto& r : *records) {
        ASSERT_LT(r.tag, tags.size());
        const std::string& tag = tags[r.tag];
        ASSERT_TRUE(by_tag.contains(tag)) << tag;
        const submitted& j = *by_tag[tag];
        seqs_of_tag[tag].insert(r.seq);
        ++cells[tag][{r.pos, r.layer}];
        const bool in_prompt = r.pos < static_cast<std::int64_t>(j.prompt.size());
        EXPECT_EQ(r.prefill, in_prompt) << tag << " pos " << r.pos;
        if (in_prompt) {
            EXPECT_EQ(r.token, j.prompt[r.pos]) << tag << " pos " << r.pos;
        }
    }
    for (const auto& j : jobs) {
        EXPECT_EQ(seqs_of_tag[j.tag].size(), 1u) << j.tag;
        // The last generated token is never fed back.
        const std::size_t tokens = j.prompt.size() + static_cast<std::size_t>(j.max_tokens) - 1;
        EXPECT_EQ(cells[j.tag].size(), tokens * info.n_layer) << j.tag;
        for (const auto& [cell, count] : cells[j.tag]) EXPECT_EQ(count, 1) << j.tag << " pos " << cell.first;
    }
}

}  // namespace
}  // namespace moed::daemon
