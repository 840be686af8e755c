// Checks the batch loop (continuous batching on the engine thread) on the bundled tinymoe
// model, against engine::generate() run alone as the reference:
// - jobs batched together (all at once, or joining mid-flight) produce exactly the tokens and
//   text of each request run alone (greedy; also with a repetition penalty and seeded
//   sampling, which need each sequence's own sampler and history);
// - stop strings, inside one token or split across two or three, are held back (the
//   stream never shows any of them) and finish "stop"; a partial match that fails is
//   released; an end-of-generation token finishes "stop" (unless stop_at_eog is off);
//   max_tokens finishes "length"; a control token writes its text only when the job keeps it;
// - cancel() and a sink that reports its client gone finish "cancelled" and free the slot
//   at once (max_sequences new jobs then run side by side);
// - a full queue is errc::out_of_memory, bad parameters are errors naming the field;
// - shutdown drains, then cancels what is left, then refuses new jobs;
// - snapshot() counts steps, requests, tokens and lists queued and running requests;
// - an evaluator error fails the jobs of that batch and the next jobs run normally.
// Ordering that matters is made deterministic with hooks inside the sinks (they run on the
// engine thread between steps); completion is awaited through a condition variable and
// nothing asserts on wall time.
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <variant>

#include <gtest/gtest.h>

#include "daemon/batch_loop.h"
#include "engine/evaluator.h"
#include "engine/generator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/support/synth_fixture.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

using engine::token_id;

constexpr int k_threads = 2;

std::string model_path() { return test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

// Records what the loop reports for one job; waits on a condition variable.
class recording_sink final : public job_sink {
public:
    // Runs on the engine thread after token number n (1-based) was recorded.
    std::function<void(std::size_t n)> hook;

    void on_token(token_id token, std::string_view text) noexcept override {
        std::size_t n = 0;
        {
            std::lock_guard lock(mu_);
            tokens_.push_back(token);
            text_ += text;
            emitted_.push_back(text_);
            n = tokens_.size();
        }
        cv_.notify_all();
        if (hook) hook(n);
    }
    void on_done(std::string_view finish_reason, const job_usage& usage) noexcept override {
        std::lock_guard lock(mu_);
        ++finish_events_;
        reason_ = std::string(finish_reason);
        usage_ = usage;
        cv_.notify_all();
    }
    void on_failed(const error& err, const job_usage& usage) noexcept override {
        std::lock_guard lock(mu_);
        ++finish_events_;
        reason_ = "error";
        error_ = err;
        usage_ = usage;
        cv_.notify_all();
    }
    bool gone() const noexcept override { return gone_.load(); }
    void set_gone() { gone_.store(true); }

    void wait_done() {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return finish_events_ > 0; });
    }
    void wait_tokens(std::size_t n) {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return tokens_.size() >= n || finish_events_ > 0; });
    }

    // Read after wait_done().
    std::vector<token_id> tokens() const { std::lock_guard lock(mu_); return tokens_; }
    std::string text() const { std::lock_guard lock(mu_); return text_; }
    // The text emitted so far after each token.
    std::vector<std::string> emitted() const { std::lock_guard lock(mu_); return emitted_; }
    std::string reason() const { std::lock_guard lock(mu_); return reason_; }
    job_usage usage() const { std::lock_guard lock(mu_); return usage_; }
    int finish_events() const { std::lock_guard lock(mu_); return finish_events_; }
    std::optional<error> failure() const { std::lock_guard lock(mu_); return error_; }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::vector<token_id> tokens_;
    std::string text_;
    std::vector<std::string> emitted_;
    std::string reason_;
    job_usage usage_;
    int finish_events_ = 0;
    std::optional<error> error_;
    std::atomic<bool> gone_{false};
};

struct reference {
    std::vector<token_id> tokens;
    std::vector<std::string> pieces;  // text completed by each token
    std::string text;
};

class batch_loop_test : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        auto m = engine::model::load(model_path());
        ASSERT_TRUE(m) << m.error().message;
        model_ = std::move(m).value().release();
    }
    static void TearDownTestSuite() {
        delete model_;
        model_ = nullptr;
    }

    static engine::model& model() { return *model_; }

    static std::vector<token_id> tokenize(const std::string& text) { return model_->vocab().encode(text, false); }

    static job_params make_job(const std::string& prompt, std::int32_t max_tokens, bool stop_at_eog = true) {
        job_params p;
        p.prompt = tokenize(prompt);
        p.max_tokens = max_tokens;
        p.stop_at_eog = stop_at_eog;
        p.sampling.temperature = 0.0f;
        p.id = "cmpl-" + std::to_string(std::hash<std::string>{}(prompt) % 100000);
        p.peer = "pid=1 uid=2 gid=3";
        return p;
    }

    // engine::generate() alone on a fresh cache: what a job must produce in any batch.
    static reference run_alone(const job_params& p) {
        kernels::compute_pool pool(k_threads);
        engine::evaluator eval(*model_, pool, 64);
        engine::kv_cache cache(model_->hparams().n_layer, model_->hparams().n_ctx_train, model_->hparams().n_head_kv,
                               model_->hparams().head_dim);
        reference ref;
        engine::generation_request req;
        req.prompt = p.prompt;
        req.n_predict = p.max_tokens;
        req.sampling = p.sampling;
        req.stop_at_eog = p.stop_at_eog;
        req.on_token = [&](token_id id, std::string_view piece) {
            if (id >= 0) {
                ref.pieces.emplace_back(piece);
            } else {
                ref.pieces.back() += piece;
            }
            return true;
        };
        auto out = engine::generate(eval, *model_, cache, req);
        EXPECT_TRUE(out) << out.error().message;
        if (out) {
            ref.tokens = out->tokens;
            ref.text = out->text;
        }
        return ref;
    }

    static loop_options small_options(std::uint32_t max_sequences = 8) {
        loop_options o;
        o.max_sequences = max_sequences;
        o.queue_capacity = 16;
        o.max_batch_tokens = 32;  // below some prompts' length: prefill takes several steps
        o.threads = k_threads;
        return o;
    }

    static std::vector<std::string> prompts() {
        return {"once upon a time there was a little",
                "the quick brown fox jumps over the lazy dog and then",
                "in the beginning",
                "she opened the door and saw",
                "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty twenty one twenty two",
                "the cat",
                "a long time ago in a small village near the mountains there lived an old man who had",
                "he said"};
    }

    static inline engine::model* model_ = nullptr;
};

void expect_same_as_alone(const recording_sink& sink, const reference& ref, const std::string& what) {
    EXPECT_EQ(sink.tokens(), ref.tokens) << what;
    EXPECT_EQ(sink.text(), ref.text) << what;
    EXPECT_EQ(sink.finish_events(), 1) << what;
    EXPECT_EQ(sink.usage().completion_tokens, static_cast<std::int64_t>(ref.tokens.size())) << what;
}

TEST_F(batch_loop_test, batched_greedy_matches_each_request_alone) {
    const auto texts = prompts();
    std::vector<job_params> jobs;
    std::vector<reference> refs;
    for (const std::string& t : texts) {
        jobs.push_back(make_job(t, 24));
        refs.push_back(run_alone(jobs.back()));
    }
    batch_loop loop(model(), small_options(8));
    std::vector<std::shared_ptr<recording_sink>> sinks;
    // Submitted before start(): the first step admits all eight together.
    for (const job_params& j : jobs) {
        sinks.push_back(std::make_shared<recording_sink>());
        ASSERT_TRUE(loop.submit(j, sinks.back()));
    }
    loop.start();
    for (std::size_t i = 0; i < sinks.size(); ++i) {
        sinks[i]->wait_done();
        expect_same_as_alone(*sinks[i], refs[i], "prompt " + std::to_string(i) + ": " + texts[i]);
        EXPECT_EQ(sinks[i]->usage().prompt_tokens, static_cast<std::int64_t>(jobs[i].prompt.size()));
    }
    loop.shutdown(std::chrono::milliseconds(0));
}

TEST_F(batch_loop_test, sampling_state_is_per_sequence) {
    // A repetition penalty reads the sequence's own history; seeded sampling draws from the
    // sequence's own generator. Each must give what the request gives alone.
    const auto texts = prompts();
    std::vector<job_params> jobs;
    std::vector<reference> refs;
    for (std::size_t i = 0; i < 4; ++i) {
        job_params p = make_job(texts[i], 20);
        if (i % 2 == 0) {
            p.sampling.repeat_penalty = 1.3f;
        } else {
            p.sampling.temperature = 0.8f;
            p.sampling.seed = 1234 + i;
        }
        jobs.push_back(p);
        refs.push_back(run_alone(p));
    }
    batch_loop loop(model(), small_options(4));
    std::vector<std::shared_ptr<recording_sink>> sinks;
    for (const job_params& j : jobs) {
        sinks.push_back(std::make_shared<recording_sink>());
        ASSERT_TRUE(loop.submit(j, sinks.back()));
    }
    loop.start();
    for (std::size_t i = 0; i < sinks.size(); ++i) {
        sinks[i]->wait_done();
        expect_same_as_alone(*sinks[i], refs[i], "job " + std::to_string(i));
    }
}

TEST_F(batch_loop_test, jobs_joining_mid_flight_match_alone) {
    const auto texts = prompts();
    job_params first = make_job(texts[6], 40, false);
    std::vector<job_params> later = {make_job(texts[4], 16), make_job(texts[1], 12), make_job(texts[3], 20)};
    const reference first_ref = run_alone(first);
    std::vector<reference> later_refs;
    for (const job_params& j : later) later_refs.push_back(run_alone(j));

    batch_loop loop(model(), small_options(4));
    std::vector<std::shared_ptr<recording_sink>> later_sinks;
    for (std::size_t i = 0; i < later.size(); ++i) later_sinks.push_back(std::make_shared<recording_sink>());
    auto first_sink = std::make_shared<recording_sink>();
    // The hook runs on the engine thread: the later jobs join exactly after tokens 3 and 9
    // of the first one, while it is decoding (and the first of them while others prefill).
    first_sink->hook = [&](std::size_t n) {
        if (n == 3) {
            EXPECT_TRUE(loop.submit(later[0], later_sinks[0]));
            EXPECT_TRUE(loop.submit(later[1], later_sinks[1]));
        } else if (n == 9) {
            EXPECT_TRUE(loop.submit(later[2], later_sinks[2]));
        }
    };
    loop.start();
    ASSERT_TRUE(loop.submit(first, first_sink));
    first_sink->wait_done();
    expect_same_as_alone(*first_sink, first_ref, "first job");
    EXPECT_EQ(first_sink->reason(), "length");
    for (std::size_t i = 0; i < later.size(); ++i) {
        later_sinks[i]->wait_done();
        expect_same_as_alone(*later_sinks[i], later_refs[i], "later job " + std::to_string(i));
    }
    loop.shutdown(std::chrono::milliseconds(0));
}

TEST_F(batch_loop_test, max_tokens_finishes_with_length) {
    batch_loop loop(model(), small_options(2));
    loop.start();
    auto sink = std::make_shared<recording_sink>();
    ASSERT_TRUE(loop.submit(make_job("the cat sat on", 5, false), sink));
    sink->wait_done();
    EXPECT_EQ(sink->reason(), "length");
    EXPECT_EQ(sink->tokens().size(), 5u);
    EXPECT_EQ(sink->usage().completion_tokens, 5);
    EXPECT_EQ(sink->finish_events(), 1);
}

TEST_F(batch_loop_test, end_of_generation_finishes_with_stop) {
    // The bundled model never samples its <|endoftext|> in practice; a copy whose newline
    // token (which "he said" produces within a few tokens) is the control token EOS does.
    const token_id newline = tokenize("x\ny")[1];
    const std::string path = (test::temp_dir() / "tinymoe-newline-eos.gguf").string();
    test::rewrite_gguf(model_path(), path, [&](test::gguf_contents& c) {
        for (auto& [key, value] : c.kv) {
            if (key == "tokenizer.ggml.eos_token_id") value.data = static_cast<std::uint64_t>(newline);
            if (key == "tokenizer.ggml.token_type") {
                std::get<storage::gguf_array>(value.data).values[static_cast<std::size_t>(newline)].data =
                    std::int64_t{3};  // control
            }
        }
    });
    auto loaded = engine::model::load(path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    engine::model& m = **loaded;
    ASSERT_TRUE(m.vocab().is_eog(newline));

    job_params job = make_job("he said", 40, true);
    job.prompt = m.vocab().encode("he said", false);
    kernels::compute_pool pool(k_threads);
    engine::evaluator eval(m, pool, 64);
    engine::kv_cache cache(m.hparams().n_layer, 256, m.hparams().n_head_kv, m.hparams().head_dim);
    engine::generation_request req;
    req.prompt = job.prompt;
    req.n_predict = job.max_tokens;
    auto alone = engine::generate(eval, m, cache, req);
    ASSERT_TRUE(alone) << alone.error().message;
    ASSERT_LT(alone->tokens.size(), 40u);
    ASSERT_EQ(alone->tokens.back(), newline);

    batch_loop loop(m, small_options(2));
    loop.start();
    auto stops = std::make_shared<recording_sink>();
    auto ignores = std::make_shared<recording_sink>();
    job_params ignoring = job;
    ignoring.stop_at_eog = false;
    ASSERT_TRUE(loop.submit(job, stops));
    ASSERT_TRUE(loop.submit(ignoring, ignores));
    stops->wait_done();
    ignores->wait_done();
    EXPECT_EQ(stops->reason(), "stop");
    EXPECT_EQ(stops->tokens(), alone->tokens);  // the end-of-generation token is reported too
    EXPECT_EQ(stops->text(), alone->text);      // and has no text
    EXPECT_EQ(ignores->reason(), "length");
    EXPECT_EQ(ignores->tokens().size(), 40u);
}

TEST_F(batch_loop_test, kept_control_tokens_write_their_text) {
    // A copy of the bundled model whose newline token (which "he said" produces within a few
    // tokens) is a control token that does not end generation: it writes no text unless the
    // job keeps it, as a chat reply keeps its markers.
    const token_id newline = tokenize("x\ny")[1];
    const std::string path = (test::temp_dir() / "tinymoe-newline-control.gguf").string();
    test::rewrite_gguf(model_path(), path, [&](test::gguf_contents& c) {
        for (auto& [key, value] : c.kv) {
            if (key == "tokenizer.ggml.token_type") {
                std::get<storage::gguf_array>(value.data).values[static_cast<std::size_t>(newline)].data =
                    std::int64_t{3};  // control
            }
        }
    });
    auto loaded = engine::model::load(path);
    ASSERT_TRUE(loaded) << loaded.error().message;
    engine::model& m = **loaded;
    ASSERT_FALSE(m.vocab().is_eog(newline));
    ASSERT_TRUE(m.vocab().token_bytes(newline).empty());

    job_params plain = make_job("he said", 12, true);
    plain.prompt = m.vocab().encode("he said", false);
    job_params kept = plain;
    kept.kept_control_tokens = {newline};
    batch_loop loop(m, small_options(2));
    loop.start();
    auto without = std::make_shared<recording_sink>();
    auto with = std::make_shared<recording_sink>();
    ASSERT_TRUE(loop.submit(plain, without));
    ASSERT_TRUE(loop.submit(kept, with));
    without->wait_done();
    with->wait_done();
    ASSERT_EQ(with->tokens(), without->tokens());
    ASSERT_NE(std::find(with->tokens().begin(), with->tokens().end(), newline), with->tokens().end())
        << "the reply has the token";
    EXPECT_EQ(with->text(), m.vocab().decode(with->tokens(), true));
    EXPECT_EQ(without->text(), m.vocab().decode(without->tokens(), false));
    const std::string shown = m.vocab().token_bytes(newline, true);  // a control token's text is its name
    ASSERT_FALSE(shown.empty());
    EXPECT_EQ(without->text().find(shown), std::string::npos);
    EXPECT_NE(with->text().find(shown), std::string::npos);

    // The list is checked: sorted, and short.
    job_params unsorted = plain;
    unsorted.kept_control_tokens = {5, 3};
    auto r = loop.submit(unsorted, std::make_shared<recording_sink>());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, "kept_control_tokens must be sorted");
    job_params many = plain;
    for (token_id t = 0; t < 17; ++t) many.kept_control_tokens.push_back(t);
    r = loop.submit(many, std::make_shared<recording_sink>());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().message, "kept_control_tokens has 17 ids; the limit is 16");
}

// Stop strings are cut from the reference output of one prompt, so where they start and
// which token completes them is known.
struct stop_case {
    const char* name;
    int span_tokens;  // 1: inside one token's text; 2, 3: across token boundaries
};

class batch_loop_stop_test : public batch_loop_test, public ::testing::WithParamInterface<stop_case> {};

TEST_P(batch_loop_stop_test, stop_string_is_held_back_and_not_emitted) {
    // This prompt's greedy output is varied text (" used to be used,\n\n# define the ...").
    job_params job = make_job("Hello, my name is", 30, false);
    const reference ref = run_alone(job);
    ASSERT_EQ(ref.pieces.size(), 30u);

    // The stop string: within one token, a piece's last two characters; across tokens, the
    // last character of piece k, the middle pieces whole and the first character of the last
    // piece spanned. Take the first k where that string first occurs exactly there.
    const int span = GetParam().span_tokens;
    std::string stop;
    std::size_t at = std::string::npos;
    std::size_t piece_end = 0;  // where piece k ends in the text
    for (std::size_t k = 0; k + 3 < ref.pieces.size(); piece_end += ref.pieces[k].size(), ++k) {
        const std::size_t end_k = piece_end + ref.pieces[k].size();
        bool ok = ref.pieces[k].size() >= (span == 1 ? 2u : 1u);
        for (int d = 1; d < span; ++d) ok = ok && !ref.pieces[k + d].empty();
        if (!ok) continue;
        std::size_t starts = 0;
        if (span == 1) {
            stop = ref.pieces[k].substr(ref.pieces[k].size() - 2);
            starts = end_k - 2;
        } else {
            stop = ref.pieces[k].substr(ref.pieces[k].size() - 1);
            for (int d = 1; d + 1 < span; ++d) stop += ref.pieces[k + d];
            stop += ref.pieces[k + span - 1].substr(0, 1);
            starts = end_k - 1;
        }
        if (ref.text.find(stop) == starts) {
            at = starts;
            break;
        }
    }
    ASSERT_NE(at, std::string::npos) << "no stop string spanning " << span << " tokens in: " << ref.text;
    const std::string expected = ref.text.substr(0, at);
    // The token whose text completes the stop string.
    std::size_t completes = 0, length = 0;
    for (; completes < ref.pieces.size(); ++completes) {
        length += ref.pieces[completes].size();
        if (length >= at + stop.size()) break;
    }

    job.stop = {"never-in-this-text", stop};
    batch_loop loop(model(), small_options(2));
    loop.start();
    auto sink = std::make_shared<recording_sink>();
    // A second job in the same batch keeps decoding meanwhile.
    auto other = std::make_shared<recording_sink>();
    ASSERT_TRUE(loop.submit(make_job(prompts()[2], 10, false), other));
    ASSERT_TRUE(loop.submit(job, sink));
    sink->wait_done();
    EXPECT_EQ(sink->reason(), "stop") << "stop string '" << stop << "' in: " << ref.text;
    EXPECT_EQ(sink->text(), expected);
    EXPECT_EQ(sink->usage().completion_tokens, static_cast<std::int64_t>(completes + 1));
    // Never, after any token, did the stream show any part of the stop string.
    for (const std::string& shown : sink->emitted()) {
        EXPECT_EQ(shown, expected.substr(0, shown.size())) << "emitted past the stop string's start";
    }
    other->wait_done();
    EXPECT_EQ(other->reason(), "length");
}

INSTANTIATE_TEST_SUITE_P(spans, batch_loop_stop_test,
                         ::testing::Values(stop_case{"within_one_token", 1}, stop_case{"across_two_tokens", 2},
                                           stop_case{"across_three_tokens", 3}),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

TEST_F(batch_loop_test, partial_stop_match_that_fails_is_released) {
    job_params job = make_job("Hello, my name is", 16, false);
    const reference ref = run_alone(job);
    ASSERT_EQ(ref.pieces.size(), 16u);
    // The last character of piece 5 starts this stop string, which never completes: that
    // character is held back for a while and then must come out in order.
    std::size_t k = 5;
    while (k + 1 < ref.pieces.size() && ref.pieces[k].empty()) ++k;
    ASSERT_LT(k + 1, ref.pieces.size());
    job.stop = {ref.pieces[k].substr(ref.pieces[k].size() - 1) + "\x01\x02"};
    // And one that is the very end of the output: held back at the last token, flushed.
    job.stop.push_back(ref.pieces.back().substr(ref.pieces.back().size() - 1) + "\x03");

    batch_loop loop(model(), small_options(2));
    loop.start();
    auto sink = std::make_shared<recording_sink>();
    ASSERT_TRUE(loop.submit(job, sink));
    sink->wait_done();
    EXPECT_EQ(sink->reason(), "length");
    EXPECT_EQ(sink->text(), ref.text);
    EXPECT_EQ(sink->tokens(), ref.tokens);
}

TEST_F(batch_loop_test, cancel_frees_the_slot_for_new_jobs) {
    constexpr std::uint32_t n_seq = 3;
    batch_loop loop(model(), small_options(n_seq));
    const auto texts = prompts();
    std::vector<std::shared_ptr<recording_sink>> running, fresh;
    std::vector<job_id> ids(n_seq);
    std::vector<job_params> fresh_jobs;
    std::vector<reference> fresh_refs;
    for (std::uint32_t i = 0; i < n_seq; ++i) {
        running.push_back(std::make_shared<recording_sink>());
        fresh.push_back(std::make_shared<recording_sink>());
        fresh_jobs.push_back(make_job(texts[i + 3], 6, false));
        fresh_refs.push_back(run_alone(fresh_jobs.back()));
    }
    // The largest number of requests seen running while a fresh job was decoding.
    std::atomic<std::uint32_t> max_running{0};
    for (auto& s : fresh) {
        s->hook = [&](std::size_t n) {
            if (n < 2) return;
            server_status st;
            loop.snapshot(st);
            std::uint32_t seen = max_running.load();
            while (st.running_sequences > seen && !max_running.compare_exchange_weak(seen, st.running_sequences)) {
            }
        };
    }
    // After its third token the first job cancels every running job and queues n_seq fresh
    // ones: they can only run side by side if every cancelled slot was freed.
    running[0]->hook = [&](std::size_t n) {
        if (n != 3) return;
        for (job_id id : ids) loop.cancel(id);
        for (std::uint32_t i = 0; i < n_seq; ++i) EXPECT_TRUE(loop.submit(fresh_jobs[i], fresh[i]));
    };
    for (std::uint32_t i = 0; i < n_seq; ++i) {
        auto id = loop.submit(make_job(texts[i], 200, false), running[i]);
        ASSERT_TRUE(id);
        ids[i] = *id;
    }
    loop.start();
    for (auto& s : running) {
        s->wait_done();
        EXPECT_EQ(s->reason(), "cancelled");
        EXPECT_LT(s->usage().completion_tokens, 200);
        EXPECT_EQ(s->finish_events(), 1);
    }
    for (std::uint32_t i = 0; i < n_seq; ++i) {
        fresh[i]->wait_done();
        expect_same_as_alone(*fresh[i], fresh_refs[i], "fresh job " + std::to_string(i));
    }
    EXPECT_EQ(max_running.load(), n_seq);
    loop.shutdown(std::chrono::milliseconds(0));
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.requests_cancelled, n_seq);
}

TEST_F(batch_loop_test, cancel_of_a_queued_job_and_unknown_ids) {
    batch_loop loop(model(), small_options(1));
    auto a = std::make_shared<recording_sink>();
    auto b = std::make_shared<recording_sink>();
    auto c = std::make_shared<recording_sink>();
    auto ida = loop.submit(make_job("the cat", 4, false), a);
    auto idb = loop.submit(make_job("the dog", 4, false), b);
    auto idc = loop.submit(make_job("the bird", 4, false), c);
    ASSERT_TRUE(ida && idb && idc);
    loop.cancel(*idb);
    loop.cancel(987654321);  // unknown: ignored
    loop.start();
    a->wait_done();
    b->wait_done();
    c->wait_done();
    EXPECT_EQ(a->reason(), "length");
    EXPECT_EQ(b->reason(), "cancelled");
    EXPECT_TRUE(b->tokens().empty());
    EXPECT_EQ(c->reason(), "length");
    loop.cancel(*ida);  // finished: ignored
}

TEST_F(batch_loop_test, gone_sink_is_cancelled) {
    batch_loop loop(model(), small_options(2));
    auto sink = std::make_shared<recording_sink>();
    auto other = std::make_shared<recording_sink>();
    sink->hook = [&](std::size_t n) {
        if (n == 2) sink->set_gone();
    };
    ASSERT_TRUE(loop.submit(make_job("she opened the door", 100, false), sink));
    ASSERT_TRUE(loop.submit(make_job("he said", 8, false), other));
    loop.start();
    sink->wait_done();
    EXPECT_EQ(sink->reason(), "cancelled");
    // gone() is polled at the start of the next step, before any further token.
    EXPECT_EQ(sink->tokens().size(), 2u);
    other->wait_done();
    EXPECT_EQ(other->reason(), "length");
}

TEST_F(batch_loop_test, full_queue_is_out_of_memory) {
    loop_options o = small_options(1);
    o.queue_capacity = 3;
    batch_loop loop(model(), o);
    std::vector<std::shared_ptr<recording_sink>> sinks;
    for (int i = 0; i < 3; ++i) {
        sinks.push_back(std::make_shared<recording_sink>());
        ASSERT_TRUE(loop.submit(make_job("the cat", 4), sinks.back()));
    }
    auto refused = loop.submit(make_job("the cat", 4), std::make_shared<recording_sink>());
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code, errc::out_of_memory);
    EXPECT_NE(refused.error().message.find("queue"), std::string::npos) << refused.error().message;
    // Never started: shutdown still ends each queued job with exactly one event.
    loop.shutdown(std::chrono::milliseconds(0));
    for (auto& s : sinks) {
        EXPECT_EQ(s->reason(), "cancelled");
        EXPECT_EQ(s->finish_events(), 1);
    }
}

TEST_F(batch_loop_test, invalid_params_are_errors_naming_the_field) {
    loop_options o = small_options(2);
    o.max_tokens_limit = 100;
    batch_loop loop(model(), o);
    const std::int64_t n_ctx = loop.options().n_ctx;
    ASSERT_EQ(n_ctx, model().hparams().n_ctx_train);
    auto sink = std::make_shared<recording_sink>();
    auto expect_error = [&](job_params p, const std::string& needle) {
        auto r = loop.submit(std::move(p), sink);
        ASSERT_FALSE(r) << needle;
        EXPECT_EQ(r.error().code, errc::invalid_argument);
        EXPECT_NE(r.error().message.find(needle), std::string::npos) << r.error().message;
    };
    job_params p = make_job("the cat", 4);

    job_params empty = p;
    empty.prompt.clear();
    expect_error(empty, "prompt is empty");

    job_params bad_token = p;
    bad_token.prompt[1] = static_cast<token_id>(model().hparams().n_vocab);
    expect_error(bad_token, "prompt token 1");

    job_params zero = p;
    zero.max_tokens = 0;
    expect_error(zero, "max_tokens 0");

    job_params over = p;
    over.max_tokens = 500;
    expect_error(over, "max_tokens 500 exceeds the limit of 100");

    job_params too_long = p;
    too_long.prompt.assign(static_cast<std::size_t>(n_ctx) - 5, p.prompt[0]);
    too_long.max_tokens = 10;
    expect_error(too_long, fmt::format("prompt of {} tokens plus max_tokens 10 exceeds the context of {}", n_ctx - 5,
                                       n_ctx));

    job_params temp = p;
    temp.sampling.temperature = -1.0f;
    expect_error(temp, "temperature");
    job_params top_p = p;
    top_p.sampling.top_p = 0.0f;
    expect_error(top_p, "top_p");

    job_params stops = p;
    stops.stop.assign(9, "x");
    expect_error(stops, "stop has 9 strings; the limit is 8");
    job_params empty_stop = p;
    empty_stop.stop = {"a", ""};
    expect_error(empty_stop, "stop[1] is empty");
    job_params long_stop = p;
    long_stop.stop = {std::string(300, 'a')};
    expect_error(long_stop, "stop[0] is 300 bytes");
    job_params bad_utf8 = p;
    bad_utf8.stop = {"ok", "\xC3"};
    expect_error(bad_utf8, "stop[1] is not valid UTF-8");

    // Nothing above reached the sink.
    EXPECT_EQ(sink->finish_events(), 0);
}

TEST_F(batch_loop_test, shutdown_drains_running_and_queued_jobs) {
    batch_loop loop(model(), small_options(2));
    std::vector<std::shared_ptr<recording_sink>> sinks;
    for (int i = 0; i < 4; ++i) {
        sinks.push_back(std::make_shared<recording_sink>());
        ASSERT_TRUE(loop.submit(make_job(prompts()[static_cast<std::size_t>(i)], 6, false), sinks.back()));
    }
    loop.start();
    // A drain long enough for everything: shutdown returns once the last job finished.
    loop.shutdown(std::chrono::minutes(10));
    for (auto& s : sinks) {
        EXPECT_EQ(s->finish_events(), 1);
        EXPECT_EQ(s->reason(), "length");
    }
    auto late = loop.submit(make_job("the cat", 4), std::make_shared<recording_sink>());
    ASSERT_FALSE(late);
    EXPECT_EQ(late.error().code, errc::cancelled);
    loop.shutdown(std::chrono::milliseconds(0));  // a second call does nothing
}

TEST_F(batch_loop_test, shutdown_cancels_what_the_drain_leaves) {
    batch_loop loop(model(), small_options(2));
    std::vector<std::shared_ptr<recording_sink>> sinks;
    for (int i = 0; i < 3; ++i) {
        sinks.push_back(std::make_shared<recording_sink>());
        // 200 tokens each: far more steps than shutdown takes to cancel them.
        ASSERT_TRUE(loop.submit(make_job(prompts()[static_cast<std::size_t>(i)], 200, false), sinks.back()));
    }
    loop.start();
    sinks[0]->wait_tokens(1);
    loop.shutdown(std::chrono::milliseconds(0));
    for (auto& s : sinks) {
        EXPECT_EQ(s->finish_events(), 1);
        EXPECT_EQ(s->reason(), "cancelled");
    }
    EXPECT_TRUE(sinks[2]->tokens().empty());  // never left the queue
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.requests_cancelled, 3u);
    EXPECT_EQ(st.running_sequences, 0u);
    EXPECT_EQ(st.queue_waiting, 0u);
}

TEST_F(batch_loop_test, snapshot_counts_and_lists_requests) {
    loop_options o = small_options(2);
    batch_loop loop(model(), o);
    std::vector<job_params> jobs = {make_job("the cat", 5, false), make_job("once upon a time", 7, false),
                                    make_job("he said", 3, false)};
    jobs[1].id = "cmpl-second";
    std::vector<std::shared_ptr<recording_sink>> sinks;
    for (const job_params& j : jobs) {
        sinks.push_back(std::make_shared<recording_sink>());
        ASSERT_TRUE(loop.submit(j, sinks.back()));
    }
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.queue_waiting, 3u);
    EXPECT_EQ(st.queue_capacity, o.queue_capacity);
    EXPECT_EQ(st.max_sequences, 2u);
    EXPECT_EQ(st.max_batch_tokens, 32u);
    EXPECT_EQ(st.running_sequences, 0u);
    EXPECT_EQ(st.requests_total, 3u);
    ASSERT_EQ(st.requests.size(), 3u);
    EXPECT_EQ(st.requests[1].id, "cmpl-second");
    EXPECT_EQ(st.requests[1].state, "queued");
    EXPECT_EQ(st.requests[1].prompt_tokens, static_cast<std::int64_t>(jobs[1].prompt.size()));
    EXPECT_EQ(st.requests[1].max_tokens, 7);
    EXPECT_EQ(st.requests[1].peer, "pid=1 uid=2 gid=3");

    // While the first job decodes (its hook runs between steps), it is listed as decoding.
    std::optional<server_status> during;
    sinks[0]->hook = [&](std::size_t n) {
        if (n != 3) return;
        server_status s;
        loop.snapshot(s);
        during = s;
    };
    loop.start();
    for (auto& s : sinks) s->wait_done();
    loop.shutdown(std::chrono::minutes(10));
    ASSERT_TRUE(during);
    EXPECT_EQ(during->running_sequences, 2u);
    EXPECT_EQ(during->queue_waiting, 1u);
    bool found = false;
    for (const request_status& r : during->requests) {
        if (r.id != jobs[0].id) continue;
        found = true;
        EXPECT_EQ(r.state, "decode");
        EXPECT_EQ(r.generated_tokens, 2);  // published at the end of the previous step
    }
    EXPECT_TRUE(found);

    loop.snapshot(st);
    std::uint64_t prompt_total = 0;
    for (const job_params& j : jobs) prompt_total += j.prompt.size();
    EXPECT_EQ(st.requests_total, 3u);
    EXPECT_EQ(st.requests_failed, 0u);
    EXPECT_EQ(st.requests_cancelled, 0u);
    EXPECT_EQ(st.prompt_tokens_total, prompt_total);
    EXPECT_EQ(st.generated_tokens_total, 5u + 7u + 3u);
    EXPECT_GE(st.steps_total, 7u);
    EXPECT_EQ(st.running_sequences, 0u);
    EXPECT_EQ(st.queue_waiting, 0u);
    EXPECT_TRUE(st.requests.empty());
    EXPECT_EQ(st.threads, static_cast<std::uint32_t>(k_threads));
}

// Fails the next `fail_next` acquires once armed; otherwise serves the model's experts.
class failing_source final : public storage::expert_source {
public:
    explicit failing_source(const engine::model& m)
        : inner_(m.file().path(), m.experts_layout(), m.weights_image(), m.file().data_offset()) {}
    result<storage::expert_handle> acquire(ExpertId id, device_id device) override {
        for (int left = fail_next.load(); left > 0; left = fail_next.load()) {
            if (fail_next.compare_exchange_weak(left, left - 1)) {
                return make_error(errc::io, "injected read failure of expert {} of layer {}", id.expert, id.layer);
            }
        }
        return inner_.acquire(id, device);
    }
    std::atomic<int> fail_next{0};

protected:
    // Handles carry the inner source, which releases them.
    void release(ExpertId, std::uint64_t) noexcept override {}

private:
    storage::resident_expert_source inner_;
};

TEST_F(batch_loop_test, evaluator_error_fails_the_batch_and_the_loop_keeps_serving) {
    auto loaded = engine::model::load(model_path());
    ASSERT_TRUE(loaded) << loaded.error().message;
    engine::model& m = **loaded;
    auto source = std::make_unique<failing_source>(m);
    failing_source* faults = source.get();
    m.set_expert_source(std::move(source));

    const auto texts = prompts();
    batch_loop loop(m, small_options(2));
    auto a = std::make_shared<recording_sink>();
    auto b = std::make_shared<recording_sink>();
    // The batch's pass fails, then each sequence's own pass fails: both requests fail.
    a->hook = [&](std::size_t n) {
        if (n == 3) faults->fail_next.store(3);
    };
    ASSERT_TRUE(loop.submit(make_job(texts[0], 50, false), a));
    ASSERT_TRUE(loop.submit(make_job(texts[1], 50, false), b));
    loop.start();
    a->wait_done();
    b->wait_done();
    for (auto* s : {a.get(), b.get()}) {
        EXPECT_EQ(s->reason(), "error");
        ASSERT_TRUE(s->failure());
        EXPECT_EQ(s->failure()->code, errc::io);
        EXPECT_NE(s->failure()->message.find("injected"), std::string::npos) << s->failure()->message;
        EXPECT_EQ(s->finish_events(), 1);
    }
    EXPECT_EQ(a->tokens().size(), 3u);

    // The next jobs run on clean caches and match their runs alone.
    const job_params next = make_job(texts[3], 12);
    auto c = std::make_shared<recording_sink>();
    ASSERT_TRUE(loop.submit(next, c));
    c->wait_done();
    loop.shutdown(std::chrono::milliseconds(0));
    expect_same_as_alone(*c, run_alone(next), "job after the failure");
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.requests_failed, 2u);
}

// A read failure of one step fails only the requests whose own pass fails: after the
// batch's pass failed, each sequence runs alone; the first one's pass fails again (it needs
// what cannot be read), the second succeeds and goes on with exactly the tokens of its run
// alone (kernels are batch-invariant, so its solo step is the batch's step).
TEST_F(batch_loop_test, a_failed_read_fails_only_the_requests_that_need_it) {
    auto loaded = engine::model::load(model_path());
    ASSERT_TRUE(loaded) << loaded.error().message;
    engine::model& m = **loaded;
    auto source = std::make_unique<failing_source>(m);
    failing_source* faults = source.get();
    m.set_expert_source(std::move(source));

    const auto texts = prompts();
    const job_params ja = make_job(texts[0], 30, false);
    const job_params jb = make_job(texts[1], 30, false);
    batch_loop loop(m, small_options(2));
    auto a = std::make_shared<recording_sink>();
    auto b = std::make_shared<recording_sink>();
    a->hook = [&](std::size_t n) {
        if (n == 3) faults->fail_next.store(2);
    };
    ASSERT_TRUE(loop.submit(ja, a));
    ASSERT_TRUE(loop.submit(jb, b));
    loop.start();
    a->wait_done();
    b->wait_done();
    EXPECT_EQ(a->reason(), "error");
    ASSERT_TRUE(a->failure());
    EXPECT_NE(a->failure()->message.find("injected"), std::string::npos) << a->failure()->message;
    EXPECT_EQ(a->tokens().size(), 3u);
    EXPECT_FALSE(b->failure());
    expect_same_as_alone(*b, run_alone(jb), "the request whose own pass succeeded");

    // One failure only (the batch's pass): both requests finish as if nothing happened.
    auto c = std::make_shared<recording_sink>();
    auto d = std::make_shared<recording_sink>();
    const job_params jc = make_job(texts[2], 20, false);
    const job_params jd = make_job(texts[3], 20, false);
    c->hook = [&](std::size_t n) {
        if (n == 2) faults->fail_next.store(1);
    };
    ASSERT_TRUE(loop.submit(jc, c));
    ASSERT_TRUE(loop.submit(jd, d));
    c->wait_done();
    d->wait_done();
    loop.shutdown(std::chrono::milliseconds(0));
    expect_same_as_alone(*c, run_alone(jc), "first request after a transient failure");
    expect_same_as_alone(*d, run_alone(jd), "second request after a transient failure");
    server_status st;
    loop.snapshot(st);
    EXPECT_EQ(st.requests_failed, 1u);
}

}  // namespace
}  // namespace moed::daemon
