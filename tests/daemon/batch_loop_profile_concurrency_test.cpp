// Task profiles in the batch loop, on the bundled tinymoe model:
// - a prefill-only job runs its prompt and finishes "stop" with no token, its routing
//   statistics (one count per prompt token) land in routing_out, and a profile made from
//   them has the model's shape; those statistics equal an evaluator run of the same prompt
//   alone (the loop splits a batch's routing by sequence correctly, also when another
//   sequence shares the batch);
// - a named profile is reported ("request") before the first token, and snapshot() taken
//   from inside the sink shows it on the running request;
// - with a matcher the prompt is matched after its prefill ("matched", or "none" with the
//   closest candidate's similarity when under the threshold);
// - pruning to every expert gives exactly the unpruned tokens; pruning to fewer is reported;
//   pruning whose prompt matches nothing fails with errc::invalid_argument; a K outside
//   [n_expert_used, n_expert] or pruning with no profile at all is refused at submit;
// - on_profile_applied is called once per newly applied profile.
// The name makes scripts/test.sh run it under ThreadSanitizer too: routing_out crosses from
// the engine thread to the submitter at the finish event, and snapshot() is called from a
// sink on the engine thread while the loop publishes.
#include <condition_variable>
#include <mutex>
#include <optional>

#include <gtest/gtest.h>

#include "daemon/batch_loop.h"
#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "scheduler/profile.h"
#include "scheduler/profile_matcher.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

using engine::token_id;

class profile_sink final : public job_sink {
public:
    // Engine thread, after the first token: fills `status_at_first_token`.
    std::function<void()> on_first_token;

    void on_token(token_id token, std::string_view) noexcept override {
        bool first = false;
        {
            std::lock_guard lock(mu_);
            tokens_.push_back(token);
            first = tokens_.size() == 1;
            if (first) report_before_first_token_ = report_.has_value();
        }
        if (first && on_first_token) on_first_token();
    }
    void on_done(std::string_view reason, const job_usage& usage) noexcept override {
        std::lock_guard lock(mu_);
        reason_ = std::string(reason);
        usage_ = usage;
        done_ = true;
        cv_.notify_all();
    }
    void on_failed(const error& err, const job_usage& usage) noexcept override {
        std::lock_guard lock(mu_);
        reason_ = "error";
        error_ = err;
        usage_ = usage;
        done_ = true;
        cv_.notify_all();
    }
    void on_profile(const profile_report& r) noexcept override {
        std::lock_guard lock(mu_);
        ++reports_;
        report_ = r;
    }
    void wait() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return done_; });
    }
    std::vector<token_id> tokens() const { std::lock_guard l(mu_); return tokens_; }
    std::string reason() const { std::lock_guard l(mu_); return reason_; }
    job_usage usage() const { std::lock_guard l(mu_); return usage_; }
    std::optional<profile_report> report() const { std::lock_guard l(mu_); return report_; }
    int reports() const { std::lock_guard l(mu_); return reports_; }
    bool report_before_first_token() const { std::lock_guard l(mu_); return report_before_first_token_; }
    std::optional<error> failure() const { std::lock_guard l(mu_); return error_; }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<token_id> tokens_;
    std::string reason_;
    job_usage usage_;
    bool done_ = false;
    std::optional<profile_report> report_;
    int reports_ = 0;
    bool report_before_first_token_ = false;
    std::optional<error> error_;
};

const char* k_c_prompt =
    "#include <stdio.h>\n#include <stdlib.h>\n\nstatic int parse(const char *s, int *out)\n{\n  char *end;\n  long v = "
    "strtol(s, &end, 10);\n  if (*end != '\\0')\n    return -1;\n  *out = (int) v;\n  return 0;\n}\n";
const char* k_prose_prompt =
    "The rain had stopped by the time she reached the station, and the streets were quiet. She walked past the "
    "closed shops and thought about the letter in her pocket, which she had not yet opened.";

class batch_loop_profile_test : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto m = engine::model::load(test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf");
        ASSERT_TRUE(m) << m.error().message;
        model_ = std::move(m).value().release();
    }
    static void TearDownTestSuite() {
        delete model_;
        model_ = nullptr;
    }
    static engine::model& model() { return *model_; }
    static scheduler::routing_shape shape() {
        const auto& hp = model_->hparams();
        return {hp.n_layer, hp.n_expert, hp.n_expert_used};
    }
    static job_params job(const std::string& prompt, std::int32_t max_tokens = 8) {
        job_params p;
        p.prompt = model_->vocab().encode(prompt, false);
        p.max_tokens = max_tokens;
        p.sampling.temperature = 0.0f;
        p.stop_at_eog = false;
        return p;
    }
    // Runs a prefill-only job and returns its statistics.
    static scheduler::routing_accumulator prefill_stats(batch_loop& loop, const std::string& prompt) {
        job_params p = job(prompt, 1);
        p.prefill_only = true;
        p.routing_out = std::make_shared<scheduler::routing_accumulator>(shape());
        auto out = p.routing_out;
        auto sink = std::make_shared<profile_sink>();
        auto id = loop.submit(std::move(p), sink);
        EXPECT_TRUE(id) << id.error().message;
        sink->wait();
        EXPECT_EQ(sink->reason(), "stop");
        EXPECT_TRUE(sink->tokens().empty());
        EXPECT_EQ(sink->reports(), 0);
        return *out;
    }
    static std::shared_ptr<const scheduler::profile> make(const std::string& name, const scheduler::routing_accumulator& a) {
        return std::make_shared<const scheduler::profile>(
            scheduler::make_profile(name, "qwen3moe:test", "tinymoe", "test", 1, 0, a));
    }
    // Runs `p` to the end.
    static std::shared_ptr<profile_sink> run(batch_loop& loop, job_params p) {
        auto sink = std::make_shared<profile_sink>();
        auto id = loop.submit(std::move(p), sink);
        EXPECT_TRUE(id) << id.error().message;
        if (id) sink->wait();
        return sink;
    }

    static engine::model* model_;
};
engine::model* batch_loop_profile_test::model_ = nullptr;

TEST_F(batch_loop_profile_test, prefill_only_collects_the_prompt_routing) {
    loop_options o;
    o.threads = 2;
    o.max_batch_tokens = 16;  // the prompt takes several steps
    batch_loop loop(model(), o);
    loop.start();
    // A decoding job shares the batches with the prefill.
    auto other = std::make_shared<profile_sink>();
    ASSERT_TRUE(loop.submit(job(k_prose_prompt, 64), other));
    const scheduler::routing_accumulator got = prefill_stats(loop, k_c_prompt);
    other->wait();
    const auto tokens = model().vocab().encode(k_c_prompt, false);
    EXPECT_EQ(got.tokens(), static_cast<std::int64_t>(tokens.size()));

    // The same prompt through the evaluator alone (batch-invariant kernels: same routing).
    scheduler::routing_accumulator want(shape());
    kernels::compute_pool pool(2);
    engine::evaluator eval(model(), pool, 256);
    eval.set_routing_observer([&](const engine::routing_event& ev) { want.add_layer(ev.layer, ev.n_tokens, ev.probs, ev.chosen); });
    engine::kv_cache cache(model().hparams().n_layer, 256, model().hparams().n_head_kv, model().hparams().head_dim);
    std::vector<float> logits;
    ASSERT_TRUE(eval.run_sequence(tokens, cache, logits));
    EXPECT_EQ(got.ngrams(), want.ngrams());
    ASSERT_EQ(got.selection_counts().size(), want.selection_counts().size());
    for (std::size_t i = 0; i < want.selection_counts().size(); ++i) {
        EXPECT_EQ(got.selection_counts()[i], want.selection_counts()[i]) << i;
        EXPECT_NEAR(got.score_sums()[i], want.score_sums()[i], 1e-9) << i;
    }
    const auto p = make("c", got);
    EXPECT_EQ(p->shape, shape());
    EXPECT_EQ(p->n_tokens, static_cast<std::int64_t>(tokens.size()));
    loop.shutdown(std::chrono::milliseconds(0));
}

TEST_F(batch_loop_profile_test, named_matched_and_pruned) {
    std::vector<std::string> applied;
    loop_options o;
    o.threads = 2;
    o.on_profile_applied = [&](const scheduler::profile& p) { applied.push_back(p.name); };
    batch_loop loop(model(), o);
    loop.start();
    const auto c = make("c", prefill_stats(loop, k_c_prompt));
    const auto prose = make("prose", prefill_stats(loop, k_prose_prompt));
    const auto matcher = std::make_shared<const scheduler::profile_matcher>(
        std::vector<std::shared_ptr<const scheduler::profile>>{c, prose});

    // Named: reported before the first token, and visible in snapshot() while running.
    {
        job_params p = job(k_c_prompt);
        p.profile = c;
        p.id = "named";
        auto sink = std::make_shared<profile_sink>();
        std::optional<request_status> seen;
        sink->on_first_token = [&] {
            server_status s;
            loop.snapshot(s);
            for (const auto& r : s.requests) {
                if (r.id == "named") seen = r;
            }
        };
        ASSERT_TRUE(loop.submit(std::move(p), sink));
        sink->wait();
        ASSERT_TRUE(sink->report());
        EXPECT_TRUE(sink->report_before_first_token());
        EXPECT_EQ(sink->report()->profile, "c");
        EXPECT_EQ(sink->report()->source, "request");
        EXPECT_GT(sink->report()->similarity, 0.99);  // its own prompt
        EXPECT_EQ(sink->report()->pruned_experts_per_layer, 0u);
        ASSERT_TRUE(seen);
        EXPECT_EQ(seen->profile, "c");
        EXPECT_EQ(seen->profile_source, "request");
        EXPECT_GT(seen->profile_similarity, 0.99);
    }
    EXPECT_EQ(applied, std::vector<std::string>{"c"});

    // Matched after the prefill: each prompt finds its own profile.
    for (const auto& [prompt, want] : {std::pair{k_c_prompt, "c"}, std::pair{k_prose_prompt, "prose"}}) {
        job_params p = job(prompt);
        p.matcher = matcher;
        auto sink = run(loop, std::move(p));
        ASSERT_TRUE(sink->report());
        EXPECT_EQ(sink->report()->profile, want);
        EXPECT_EQ(sink->report()->source, "matched");
        EXPECT_GE(sink->report()->similarity, 0.5);
    }
    // "c" was the last applied already: only "prose" is new.
    EXPECT_EQ(applied, (std::vector<std::string>{"c", "prose"}));

    // Under the threshold: nothing matched, the closest candidate's similarity reported.
    {
        job_params p = job(k_prose_prompt);
        p.matcher = std::make_shared<const scheduler::profile_matcher>(
            std::vector<std::shared_ptr<const scheduler::profile>>{c}, scheduler::match_options{.threshold = 1.01});
        auto sink = run(loop, std::move(p));
        ASSERT_TRUE(sink->report());
        EXPECT_EQ(sink->report()->profile, "");
        EXPECT_EQ(sink->report()->source, "none");
        EXPECT_GT(sink->report()->similarity, 0.0);
        // Pruning asked for, nothing matched: the job fails as a bad request.
        job_params q = job(k_prose_prompt);
        q.matcher = std::make_shared<const scheduler::profile_matcher>(
            std::vector<std::shared_ptr<const scheduler::profile>>{c}, scheduler::match_options{.threshold = 1.01});
        q.prune_experts_per_layer = 8;
        auto failed = run(loop, std::move(q));
        ASSERT_TRUE(failed->failure());
        EXPECT_EQ(failed->failure()->code, errc::invalid_argument);
        EXPECT_NE(failed->failure()->message.find("no stored profile matches"), std::string::npos)
            << failed->failure()->message;
        EXPECT_TRUE(failed->tokens().empty());
    }

    // Pruning to every expert changes nothing; to 5 is reported.
    const auto plain = run(loop, job(k_c_prompt, 16));
    {
        job_params p = job(k_c_prompt, 16);
        p.profile = c;
        p.prune_experts_per_layer = model().hparams().n_expert;
        auto sink = run(loop, std::move(p));
        EXPECT_EQ(sink->tokens(), plain->tokens());
        EXPECT_EQ(sink->report()->pruned_experts_per_layer, model().hparams().n_expert);
    }
    {
        job_params p = job(k_prose_prompt, 16);
        p.matcher = matcher;
        p.prune_experts_per_layer = 5;
        auto sink = run(loop, std::move(p));
        EXPECT_EQ(sink->reason(), "length");
        EXPECT_EQ(sink->tokens().size(), 16u);
        EXPECT_EQ(sink->report()->profile, "prose");
        EXPECT_EQ(sink->report()->pruned_experts_per_layer, 5u);
    }

    // Refused at submit.
    job_params bad = job(k_c_prompt);
    bad.profile = c;
    bad.prune_experts_per_layer = 3;
    auto r = loop.submit(std::move(bad), std::make_shared<profile_sink>());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("prune.experts_per_layer 3 is outside [4, 16]"), std::string::npos) << r.error().message;
    job_params none = job(k_c_prompt);
    none.prune_experts_per_layer = 8;
    r = loop.submit(std::move(none), std::make_shared<profile_sink>());
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("prune needs a task profile"), std::string::npos) << r.error().message;
    loop.shutdown(std::chrono::milliseconds(0));
}

}  // namespace
}  // namespace moed::daemon
