#include "daemon/batch_loop.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <thread>

#include "common/log.h"
#include "common/units.h"
#include "daemon/request_timing.h"
#include "engine/evaluator.h"
#include "engine/json_constraint.h"
#include "engine/kv_cache.h"
#include "engine/tokenizer.h"
#include "engine/trace_recorder.h"
#include "engine/unicode_utf8.h"
#include "kernels/cpu/thread_pool.h"

namespace moed::daemon {

namespace {

constexpr std::string_view k_component = "loop";
// decode_tokens_per_s is measured over the last this-many steps.
constexpr std::size_t k_rate_samples = 32;

constexpr std::size_t npos = std::string_view::npos;

using steady = std::chrono::steady_clock;

double seconds_between(steady::time_point from, steady::time_point to) noexcept {
    return std::chrono::duration<double>(to - from).count();
}

// Where the earliest of `stops` starts in `text`, or npos.
std::size_t find_stop(std::string_view text, const std::vector<std::string>& stops) noexcept {
    std::size_t best = npos;
    for (const std::string& s : stops) best = std::min(best, text.find(s));
    return best;
}

// The length of the longest suffix of `text` that is a proper prefix of one of `stops`:
// the bytes that must be held back because the next token may complete a stop string.
std::size_t partial_stop(std::string_view text, const std::vector<std::string>& stops) noexcept {
    std::size_t best = 0;
    for (const std::string& s : stops) {
        const std::string_view stop(s);
        for (std::size_t k = std::min(text.size(), stop.size() - 1); k > best; --k) {
            if (text.ends_with(stop.substr(0, k))) {
                best = k;
                break;
            }
        }
    }
    return best;
}

// A job waiting for a KV cache. Lives in the bounded ring under the loop's mutex.
struct queued_job {
    job_id id = 0;
    job_params params;
    std::shared_ptr<job_sink> sink;
    bool cancel = false;  // cancel() was called; the engine thread reports it
    steady::time_point submitted{};
};

// What other threads may see of a running sequence (under the loop's mutex). The engine
// thread writes it once per step; cancel() sets `cancel`.
struct slot_public {
    job_id id = 0;  // 0: free
    bool cancel = false;
    bool prefill = true;
    std::int64_t prompt_tokens = 0;
    std::int64_t generated_tokens = 0;
    std::int64_t max_tokens = 0;
    std::string request_id;
    std::string peer;
    profile_report profile;
    bool profile_known = false;  // the prefill is done and `profile` settled (or named)
};

// The engine thread's own state of one sequence; one per KV cache, made at start-up and
// reused by every job admitted into it.
struct sequence {
    sequence(const engine::model_hparams& hp, std::int64_t n_ctx)
        : cache(engine::kv_shape_of(hp), n_ctx),
          stats(scheduler::routing_shape{hp.n_moe_layer(), hp.n_expert, hp.n_expert_used}),
          stats_before(stats),
          allowed(static_cast<std::size_t>(hp.n_moe_layer()) * hp.n_expert, 0) {
        history.reserve(static_cast<std::size_t>(n_ctx));
        held.reserve(2 * max_stop_string_bytes);
        logprob.top.reserve(max_job_top_logprobs);
    }

    bool active() const noexcept { return id != 0; }
    std::int64_t prompt_size() const noexcept { return static_cast<std::int64_t>(params.prompt.size()); }
    bool in_prefill() const noexcept { return n_past < prompt_size(); }
    job_usage usage() const noexcept { return job_usage{prompt_size(), generated}; }

    job_id id = 0;  // 0: free
    job_params params;
    std::shared_ptr<job_sink> sink;
    engine::kv_cache cache;
    std::optional<engine::sampler> smp;
    std::optional<engine::json_constraint> json;  // made at the first sampled token of a job with params.json
    std::vector<float> masked;                    // logits with the tokens json refuses at -inf
    std::vector<engine::token_id> history;  // prompt and generated tokens (repetition penalty)
    engine::utf8_stream text;
    std::string held;          // text not emitted yet: it may be the start of a stop string
    engine::token_logprob logprob;  // the last token's, when the job asks (reused: no allocation per token)
    std::int64_t n_past = 0;   // tokens in the KV cache
    std::int32_t generated = 0;
    bool cancel = false;       // cancellation seen at the start of this step
    std::int64_t take = 0;     // tokens of this sequence in this step's batch
    std::int64_t offset = 0;   // where those tokens start in the batch
    // When the job was queued, took this sequence, and had its first token sampled.
    steady::time_point submitted{};
    steady::time_point admitted{};
    steady::time_point first_token{};

    // Task profile state.
    scheduler::routing_accumulator stats;  // the prompt's routing, during the prefill
    scheduler::routing_accumulator stats_before;  // `stats` before this step (a failed step is undone)
    std::vector<std::uint8_t> allowed;     // [n_moe_layer][n_expert] pruning mask
    bool pruned = false;                   // `allowed` applies to this sequence's tokens
    profile_report report;
    bool report_known = false;
};

// Totals the engine thread counts and publishes once per step.
struct loop_counters {
    std::uint64_t steps = 0;
    std::uint64_t failed = 0;
    std::uint64_t cancelled = 0;
    std::uint64_t prompt_tokens = 0;
    std::uint64_t generated_tokens = 0;
};

struct rate_sample {
    std::chrono::steady_clock::time_point time;
    std::uint64_t generated_tokens = 0;
};

loop_options effective_options(const engine::model& m, loop_options o) {
    MOED_ASSERT(o.max_sequences >= 1);
    MOED_ASSERT(o.queue_capacity >= 1);
    if (o.n_ctx <= 0) o.n_ctx = m.hparams().n_ctx_train;
    MOED_ASSERT(o.n_ctx >= 1);
    if (o.n_ctx > m.hparams().n_ctx_train) {
        // As llama.cpp: allowed, but positions past the training context degrade the output.
        MOED_LOG_WARN(k_component, "n_ctx {} exceeds the model's training context of {}", o.n_ctx,
                      m.hparams().n_ctx_train);
    }
    if (o.threads <= 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    // Every running sequence puts at least one token in every batch, so a batch smaller than
    // the sequence count would starve some of them.
    if (o.max_batch_tokens < static_cast<std::int64_t>(o.max_sequences)) {
        MOED_LOG_WARN(k_component, "max_batch_tokens {} is below max_sequences {}; using {}", o.max_batch_tokens,
                      o.max_sequences, o.max_sequences);
        o.max_batch_tokens = o.max_sequences;
    }
    return o;
}

}  // namespace

struct batch_loop::impl {
    impl(engine::model& m, const loop_options& o)
        : model(m),
          opt(effective_options(m, o)),
          pool(opt.threads),
          eval(m, pool, opt.max_batch_tokens),
          n_vocab(m.hparams().n_vocab) {
        seqs.reserve(opt.max_sequences);
        for (std::uint32_t i = 0; i < opt.max_sequences; ++i) seqs.emplace_back(m.hparams(), opt.n_ctx);
        batch.reserve(static_cast<std::size_t>(opt.max_batch_tokens));
        logits.resize(static_cast<std::size_t>(opt.max_sequences) * static_cast<std::size_t>(n_vocab));
        row_seq.resize(opt.max_sequences);
        cancelled_jobs.reserve(opt.queue_capacity);
        ring.resize(opt.queue_capacity);
        slots.resize(opt.max_sequences);
        rates.resize(k_rate_samples);
        kv_cache_bytes = seqs.front().cache.bytes() * seqs.size();
        kv_cache_cells = static_cast<std::uint64_t>(opt.n_ctx) * seqs.size();
        scratch_bytes = scratch_now();
        eval.add_routing_observer([this](const engine::routing_event& ev) { on_routing(ev); });
        MOED_LOG_INFO(k_component, "{} sequences of {} tokens (KV caches {}), batches of {} tokens, {} threads",
                      opt.max_sequences, opt.n_ctx, format_bytes(seqs.front().cache.bytes() * seqs.size()),
                      opt.max_batch_tokens, pool.size());
        // A bad lookahead is a start-up error (the config checks its range first).
        auto attached = engine::attach_prefetch(eval, m, opt.prefetch);
        if (!attached) throw std::invalid_argument(attached.error().message);
        planner = std::move(attached).value();
        if (planner) {
            MOED_LOG_INFO(k_component, "prefetch on: router lookahead of {} layers", opt.prefetch.lookahead);
        }
    }

    result<void> validate(const job_params& p) const;
    void thread_main() noexcept;
    // One step; false when the loop should end (shutting down and nothing left).
    bool step();
    void take_requests_locked();
    void admit_locked();
    void publish_locked();
    void build_batch();
    void after_batch();
    void on_routing(const engine::routing_event& ev);
    // The prefill of `s` is done: settles its profile, reports it, starts pruning; false
    // when the sequence was finished or failed here.
    bool prefill_done(sequence& s);
    void use_profile(sequence& s, const std::shared_ptr<const scheduler::profile>& p);
    void emit(sequence& s, engine::token_id token);
    void finish(sequence& s, std::string_view reason) noexcept;
    void fail(sequence& s, const error& err) noexcept;
    bool run_alone();
    void release(sequence& s) noexcept;
    void fail_all(const error& err) noexcept;
    void close_trace() noexcept;
    // Bytes of the per-batch buffers: the evaluator's scratch, the logits and the batch.
    std::uint64_t scratch_now() const noexcept {
        return eval.scratch_bytes() + logits.capacity() * sizeof(float) +
               batch.capacity() * sizeof(engine::batch_token) + row_seq.capacity() * sizeof(std::uint32_t);
    }
    std::size_t ring_index(std::size_t i) const noexcept { return (head + i) % ring.size(); }

    engine::model& model;
    const loop_options opt;
    kernels::compute_pool pool;
    engine::evaluator eval;
    std::unique_ptr<scheduler::prefetch_planner> planner;  // null: experts resident or prefetch off
    const std::int64_t n_vocab;

    // Engine thread only.
    std::vector<sequence> seqs;
    std::unique_ptr<engine::json_token_index> json_index;  // the vocabulary's trie, for response_format
    std::uint32_t active = 0;               // sequences with a job
    std::vector<engine::batch_token> batch;
    std::vector<float> logits;              // [max_sequences][n_vocab]
    std::vector<std::uint32_t> row_seq;     // the sequence of each logits row
    std::vector<queued_job> cancelled_jobs; // taken out of the queue, reported outside the lock
    std::uint32_t share_start = 0;          // rotates which prefill gets the budget's remainder
    loop_counters counters;
    const scheduler::profile* last_applied = nullptr;  // identity only, for on_profile_applied
    // The routing trace (record_trace): written by the engine thread only.
    std::optional<scheduler::trace_writer> trace;
    std::unique_ptr<engine::trace_recorder> recorder;

    // Shared with every other thread, under mu.
    mutable std::mutex mu;
    std::condition_variable work_cv;  // the engine thread waits here for jobs
    std::condition_variable idle_cv;  // shutdown() waits here for the drain
    std::vector<queued_job> ring;     // bounded queue: `count` jobs from `head`
    std::size_t head = 0;
    std::size_t count = 0;
    std::vector<slot_public> slots;
    std::uint32_t running = 0;        // published count of sequences with a job
    bool accepting = true;
    bool stopping = false;            // exit once nothing is left
    bool force_cancel = false;        // the drain time is over: cancel everything
    job_id next_id = 1;
    std::uint64_t requests_total = 0;
    loop_counters published;
    // Observed under the lock as each request reaches its first token and its end (before its
    // sink hears of it), so whoever saw a request end sees it counted.
    request_timings timings;
    std::vector<rate_sample> rates;   // ring of the last k_rate_samples steps
    std::size_t rate_next = 0;
    std::size_t rate_count = 0;
    std::uint64_t kv_cache_bytes = 0;       // allocated at start-up, never changes
    std::uint64_t kv_cache_used_bytes = 0;  // positions the running sequences filled
    std::uint64_t kv_cache_cells = 0;       // positions allocated, never changes
    std::uint64_t kv_cache_cells_used = 0;
    std::uint64_t scratch_bytes = 0;

    std::mutex shutdown_mu;           // serialises shutdown() callers
    std::thread thread;
    bool started = false;
};

result<void> batch_loop::impl::validate(const job_params& p) const {
    if (p.prompt.empty()) return make_error(errc::invalid_argument, "prompt is empty");
    for (std::size_t i = 0; i < p.prompt.size(); ++i) {
        if (p.prompt[i] < 0 || p.prompt[i] >= n_vocab) {
            return make_error(errc::invalid_argument, "prompt token {} has id {}, outside the vocabulary (0..{})", i,
                              p.prompt[i], n_vocab - 1);
        }
    }
    if (p.max_tokens < 1) return make_error(errc::invalid_argument, "max_tokens {} must be at least 1", p.max_tokens);
    if (p.max_tokens > opt.max_tokens_limit) {
        return make_error(errc::invalid_argument, "max_tokens {} exceeds the limit of {}", p.max_tokens,
                          opt.max_tokens_limit);
    }
    const std::int64_t needed = static_cast<std::int64_t>(p.prompt.size()) + p.max_tokens;
    if (needed > opt.n_ctx) {
        return make_error(errc::invalid_argument, "prompt of {} tokens plus max_tokens {} exceeds the context of {}",
                          p.prompt.size(), p.max_tokens, opt.n_ctx);
    }
    MOED_TRY(p.sampling.validate());
    for (const engine::logit_bias_entry& e : p.sampling.logit_bias) {
        if (e.token >= n_vocab)
            return make_error(errc::invalid_argument, "logit_bias: token id {} is outside the vocabulary of {} tokens",
                              e.token, n_vocab);
    }
    if (p.logprobs && *p.logprobs > max_job_top_logprobs)
        return make_error(errc::invalid_argument, "top_logprobs: {} is more than the {} allowed", *p.logprobs,
                          max_job_top_logprobs);
    if (p.prune_experts_per_layer != 0) {
        const auto& hp = model.hparams();
        if (p.prune_experts_per_layer < hp.n_expert_used || p.prune_experts_per_layer > hp.n_expert) {
            return make_error(errc::invalid_argument,
                              "prune.experts_per_layer {} is outside [{}, {}] (each token uses {} of the {} experts)",
                              p.prune_experts_per_layer, hp.n_expert_used, hp.n_expert, hp.n_expert_used, hp.n_expert);
        }
        if (!p.profile && (!p.matcher || p.matcher->empty()))
            return make_error(errc::invalid_argument, "prune needs a task profile, and none is named or stored");
    }
    const scheduler::routing_shape shape{model.hparams().n_moe_layer(), model.hparams().n_expert,
                                         model.hparams().n_expert_used};
    if (p.profile && !(p.profile->shape == shape))
        return make_error(errc::invalid_argument, "profile '{}' does not fit this model's routing", p.profile->name);
    if (p.routing_out && !(p.routing_out->shape() == shape))
        return make_error(errc::invalid_argument, "routing_out does not have this model's routing shape");
    // A handful of markers; the bound keeps a bad caller from costing a search per token.
    if (p.kept_control_tokens.size() > max_kept_control_tokens)
        return make_error(errc::invalid_argument, "kept_control_tokens has {} ids; the limit is {}",
                          p.kept_control_tokens.size(), max_kept_control_tokens);
    if (!std::is_sorted(p.kept_control_tokens.begin(), p.kept_control_tokens.end()))
        return make_error(errc::invalid_argument, "kept_control_tokens must be sorted");
    if (p.json) {
        const engine::json_recognizer rec(*p.json);
        const std::uint32_t smallest = rec.min_bytes_to_close(rec.initial());
        if (static_cast<std::uint32_t>(p.max_tokens) < smallest)
            return make_error(errc::invalid_argument,
                              "max_tokens: {} is fewer than the {} tokens the smallest document of response_format "
                              "may take",
                              p.max_tokens, smallest);
    }
    if (p.stop.size() > opt.max_stop_strings) {
        return make_error(errc::invalid_argument, "stop has {} strings; the limit is {}", p.stop.size(),
                          opt.max_stop_strings);
    }
    for (std::size_t i = 0; i < p.stop.size(); ++i) {
        const std::string& s = p.stop[i];
        if (s.empty()) return make_error(errc::invalid_argument, "stop[{}] is empty", i);
        if (s.size() > max_stop_string_bytes) {
            return make_error(errc::invalid_argument, "stop[{}] is {} bytes; the limit is {}", i, s.size(),
                              max_stop_string_bytes);
        }
        // Held-back text is cut where a stop string starts; valid UTF-8 stop strings start on
        // a character boundary, so what is emitted stays valid UTF-8.
        if (!engine::utf8::is_valid(s)) return make_error(errc::invalid_argument, "stop[{}] is not valid UTF-8", i);
    }
    return {};
}

void batch_loop::impl::thread_main() noexcept {
    pthread_setname_np(pthread_self(), "moed-engine");
    for (;;) {
        try {
            if (!step()) break;
        } catch (const std::exception& e) {
            // Out of memory in a token's text or a sink's allocation: the running jobs cannot
            // be trusted to continue, the loop can.
            MOED_LOG_ERROR(k_component, "engine step failed: {}", e.what());
            fail_all(error{errc::internal, "the engine step failed"});
        } catch (...) {
            MOED_LOG_ERROR(k_component, "engine step failed with an unknown exception");
            fail_all(error{errc::internal, "the engine step failed"});
        }
    }
    close_trace();
}

void batch_loop::impl::close_trace() noexcept {
    if (!trace || !trace->is_open()) return;
    try {
        const std::uint64_t records = trace->records_written();
        if (auto closed = trace->close(); !closed) {
            MOED_LOG_ERROR(k_component, "routing trace: {}", closed.error().message);
        } else if (auto st = recorder->status(); !st) {
            MOED_LOG_ERROR(k_component, "routing trace {} is incomplete: {}", trace->path(), st.error().message);
        } else {
            MOED_LOG_INFO(k_component, "routing trace {}: {} records", trace->path(), records);
        }
    } catch (...) {
        MOED_LOG_ERROR(k_component, "closing the routing trace failed");
    }
}

bool batch_loop::impl::step() {
    {
        std::unique_lock lock(mu);
        work_cv.wait(lock, [&] { return active > 0 || count > 0 || stopping; });
        if (stopping && active == 0 && count == 0) return false;
        take_requests_locked();
        admit_locked();
    }

    // Sinks are called without the lock: a sink may call back into submit() or cancel().
    for (queued_job& j : cancelled_jobs) {
        j.sink->on_done("cancelled", job_usage{static_cast<std::int64_t>(j.params.prompt.size()), 0});
        ++counters.cancelled;
    }
    cancelled_jobs.clear();
    for (sequence& s : seqs) {
        if (s.active() && (s.cancel || s.sink->gone())) finish(s, "cancelled");
    }

    if (active > 0) {
        build_batch();
        if (auto ran = eval.run(batch, logits.data()); !ran) {
            MOED_LOG_WARN(k_component, "forward pass failed: {}; running its sequences one by one",
                          ran.error().message);
            if (run_alone()) {
                ++counters.steps;
                after_batch();
            }
        } else {
            ++counters.steps;
            after_batch();
        }
    }

    // Slots freed in this step take queued jobs now, so the next step runs them.
    std::lock_guard lock(mu);
    admit_locked();
    publish_locked();
    return true;
}

// Takes cancel requests: cancelled queued jobs leave the ring (reported after unlocking),
// running ones are marked for this step.
void batch_loop::impl::take_requests_locked() {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < count; ++i) {
        queued_job& j = ring[ring_index(i)];
        if (j.cancel || force_cancel) {
            cancelled_jobs.push_back(std::move(j));
        } else {
            if (kept != i) ring[ring_index(kept)] = std::move(j);
            ++kept;
        }
    }
    count = kept;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
        if (seqs[i].active()) seqs[i].cancel = slots[i].cancel || force_cancel;
    }
}

// Continuous batching: queued jobs take free KV caches between steps.
void batch_loop::impl::admit_locked() {
    for (std::size_t i = 0; i < seqs.size() && count > 0; ++i) {
        sequence& s = seqs[i];
        if (s.active()) continue;
        queued_job& j = ring[head];
        head = (head + 1) % ring.size();
        --count;

        s.id = j.id;
        s.json.reset();  // it refers to the grammar of the params replaced next
        s.params = std::move(j.params);
        s.sink = std::move(j.sink);
        s.submitted = j.submitted;
        s.admitted = steady::now();
        s.cache.clear();
        s.smp.emplace(s.params.sampling);
        s.history.assign(s.params.prompt.begin(), s.params.prompt.end());
        s.text = engine::utf8_stream();
        s.held.clear();
        s.n_past = 0;
        s.generated = 0;
        s.cancel = false;
        s.take = 0;
        s.stats.clear();
        s.pruned = false;
        s.report = profile_report{};
        s.report_known = false;
        if (s.params.profile) use_profile(s, s.params.profile);
        ++active;
        if (recorder) {
            // Tags come from requests: past the table's limit they fall back to tag 0.
            auto tag = trace->intern_tag(s.params.trace_tag);
            recorder->begin_sequence(s.id, tag ? *tag : 0, s.prompt_size());
        }
        // Published at once: a job leaves `count` here, and shutdown()'s drain waits for
        // running == 0 && count == 0, so a just-admitted job must already count as running.
        running = active;

        slot_public& p = slots[i];
        p.id = s.id;
        p.cancel = false;
        p.prefill = true;
        p.prompt_tokens = s.prompt_size();
        p.generated_tokens = 0;
        p.max_tokens = s.params.max_tokens;
        p.request_id = s.params.id;
        p.peer = s.params.peer;
        p.profile = s.report;
        p.profile_known = s.report_known;
    }
}

void batch_loop::impl::publish_locked() {
    for (std::size_t i = 0; i < seqs.size(); ++i) {
        const sequence& s = seqs[i];
        slot_public& p = slots[i];
        if (!s.active()) {
            p.id = 0;
            p.cancel = false;
            continue;
        }
        p.prefill = s.in_prefill();
        p.generated_tokens = s.generated;
        if (s.report_known && !p.profile_known) {
            p.profile = s.report;
            p.profile_known = true;
        }
    }
    running = active;
    published = counters;
    kv_cache_used_bytes = 0;
    kv_cache_cells_used = 0;
    for (const sequence& s : seqs) {
        if (!s.active()) continue;
        kv_cache_used_bytes += s.cache.used_bytes();
        kv_cache_cells_used += static_cast<std::uint64_t>(s.cache.size());
    }
    scratch_bytes = scratch_now();
    rates[rate_next] = rate_sample{std::chrono::steady_clock::now(), counters.generated_tokens};
    rate_next = (rate_next + 1) % rates.size();
    rate_count = std::min(rate_count + 1, rates.size());
    if (running == 0 && count == 0) idle_cv.notify_all();
}

// One batch: the last sampled token of every decoding sequence first (a running stream
// never waits behind a long prompt), then the prompt chunks of sequences in prefill, which
// share the rest of the token budget evenly.
void batch_loop::impl::build_batch() {
    batch.clear();
    std::uint32_t rows = 0;
    for (std::uint32_t i = 0; i < seqs.size(); ++i) {
        sequence& s = seqs[i];
        s.take = 0;
        if (!s.active() || s.in_prefill()) continue;
        s.offset = static_cast<std::int64_t>(batch.size());
        batch.push_back(engine::batch_token{s.history.back(), s.n_past, &s.cache, true, s.id,
                                            s.pruned ? s.allowed.data() : nullptr});
        s.take = 1;
        row_seq[rows++] = i;
    }

    // Water-filling: each round gives every prefill that still wants tokens an equal share of
    // what is left; sequences that need less leave the rest to the others. The first
    // sequence served rotates per step so the remainder of an uneven split moves around.
    std::int64_t budget = opt.max_batch_tokens - static_cast<std::int64_t>(batch.size());
    const std::uint32_t n_seq = static_cast<std::uint32_t>(seqs.size());
    while (budget > 0) {
        std::int64_t wanting = 0;
        for (const sequence& s : seqs) {
            if (s.active() && s.prompt_size() - s.n_past - s.take > 0) ++wanting;
        }
        if (wanting == 0) break;
        const std::int64_t share = std::max<std::int64_t>(1, budget / wanting);
        for (std::uint32_t k = 0; k < n_seq && budget > 0; ++k) {
            sequence& s = seqs[(share_start + k) % n_seq];
            if (!s.active()) continue;
            const std::int64_t want = s.prompt_size() - s.n_past - s.take;
            if (want <= 0) continue;
            const std::int64_t give = std::min({want, share, budget});
            s.take += give;
            budget -= give;
        }
    }
    share_start = (share_start + 1) % n_seq;

    for (std::uint32_t i = 0; i < seqs.size(); ++i) {
        sequence& s = seqs[i];
        if (!s.active() || !s.in_prefill() || s.take == 0) continue;
        s.stats_before = s.stats;  // same shape: a copy into the existing storage
        const bool completes = s.n_past + s.take == s.prompt_size();
        s.offset = static_cast<std::int64_t>(batch.size());
        for (std::int64_t k = 0; k < s.take; ++k) {
            const std::int64_t pos = s.n_past + k;
            // A prefill-only job samples nothing: its last prompt token needs no logits.
            const bool last = completes && k + 1 == s.take && !s.params.prefill_only;
            engine::batch_token bt{s.params.prompt[static_cast<std::size_t>(pos)], pos, &s.cache, last,
                                   s.id, s.pruned ? s.allowed.data() : nullptr};
            // However the prompt is chunked here, each token sums as in llama.cpp's prompt.
            bt.order = kernels::prompt_token_order(pos, s.prompt_size());
            batch.push_back(bt);
            if (last) row_seq[rows++] = i;
        }
    }
}

// After a failed forward pass: runs each sequence of the batch alone on its own tokens (the
// same positions, so the KV entries the failed pass wrote are written again), failing only
// those whose own pass fails. A failed read of an expert thus fails the requests that route
// to it, not the whole batch; and since every kernel is batch-invariant, a sequence that
// succeeds alone gets exactly the logits the batch would have given it. Returns whether any
// sequence is left to advance (after_batch() skips the failed ones).
bool batch_loop::impl::run_alone() {
    std::uint32_t row = 0;  // logits rows in batch order, as after_batch() reads them
    bool any = false;
    for (std::size_t at = 0; at < batch.size();) {
        // The sequence whose tokens start at `at` (each sequence's tokens are contiguous).
        sequence* owner = nullptr;
        for (sequence& s : seqs) {
            if (s.active() && s.take > 0 && s.offset == static_cast<std::int64_t>(at)) owner = &s;
        }
        MOED_ASSERT(owner != nullptr);
        sequence& s = *owner;
        const auto n = static_cast<std::size_t>(s.take);
        const std::span<const engine::batch_token> own(batch.data() + at, n);
        std::uint32_t own_rows = 0;
        for (const engine::batch_token& bt : own) own_rows += bt.want_logits ? 1 : 0;
        if (s.in_prefill()) s.stats = s.stats_before;  // the failed pass added part of this step
        if (auto ran = eval.run(own, logits.data() + static_cast<std::size_t>(row) * n_vocab); !ran) {
            MOED_LOG_WARN(k_component, "request {} failed: {}", s.id, ran.error().message);
            fail(s, ran.error());
        } else {
            any = true;
        }
        row += own_rows;
        at += n;
    }
    return any;
}

// Advances every sequence of the batch, then samples and reports the sequences that got
// logits (in batch order, as the evaluator wrote them).
void batch_loop::impl::after_batch() {
    std::uint32_t rows = 0;
    // Rows are counted before prefill_done() may finish a sequence (its logits row stays).
    for (const engine::batch_token& bt : batch) {
        if (bt.want_logits) ++rows;
    }
    for (sequence& s : seqs) {
        if (!s.active() || s.take == 0) continue;
        const bool was_prefill = s.in_prefill();
        if (was_prefill) counters.prompt_tokens += static_cast<std::uint64_t>(s.take);
        s.n_past += s.take;
        // Settled before the first token is sampled and reported.
        if (was_prefill && !s.in_prefill()) prefill_done(s);
    }
    for (std::uint32_t r = 0; r < rows; ++r) {
        sequence& s = seqs[row_seq[r]];
        if (!s.active()) continue;  // finished or failed by prefill_done()
        const std::span<const float> row(logits.data() + static_cast<std::size_t>(r) * n_vocab,
                                         static_cast<std::size_t>(n_vocab));
        if (s.params.json && !s.json) {
            // The vocabulary's trie is built once, by the first constrained job.
            if (!json_index) json_index = std::make_unique<engine::json_token_index>(model.vocab());
            s.json.emplace(*s.params.json, *json_index, s.params.max_tokens);
        }
        const engine::token_id token =
            engine::sample_constrained(*s.smp, s.json ? &*s.json : nullptr, row, s.history, s.masked,
                                     static_cast<std::size_t>(s.generated));
        if (token < 0) {
            // Only when max_tokens is below the smallest document, which submit() refuses.
            fail(s, error{errc::internal, "response_format: no token continues the JSON document"});
            continue;
        }
        if (s.json) s.json->accept(token);
        s.history.push_back(token);
        if (s.params.logprobs) {
            engine::log_softmax_of(row, token, std::min<std::size_t>(*s.params.logprobs, row.size()), s.logprob);
            s.sink->on_logprob(s.logprob);
        }
        ++s.generated;
        ++counters.generated_tokens;
        if (s.generated == 1) {
            s.first_token = steady::now();
            std::lock_guard lock(mu);
            timings.time_to_first_token.observe(seconds_between(s.submitted, s.first_token));
            timings.prompt.observe(seconds_between(s.admitted, s.first_token));
        }
        emit(s, token);
    }
}

// Routing of one MoE layer of the batch: each sequence in prefill adds its rows to its own
// statistics (decode tokens are not part of the prompt's statistics).
void batch_loop::impl::on_routing(const engine::routing_event& ev) {
    const std::size_t n_exp = model.hparams().n_expert;
    const std::size_t k = model.hparams().n_expert_used;
    for (sequence& s : seqs) {
        if (!s.active() || s.take == 0 || !s.in_prefill()) continue;
        const auto off = static_cast<std::size_t>(s.offset);
        const auto n = static_cast<std::size_t>(s.take);
        s.stats.add_layer(ev.layer, s.take, ev.probs.subspan(off * n_exp, n * n_exp), ev.chosen.subspan(off * k, n * k));
    }
}

void batch_loop::impl::use_profile(sequence& s, const std::shared_ptr<const scheduler::profile>& p) {
    s.report.profile = p->name;
    if (s.params.prune_experts_per_layer != 0 && !s.pruned) {
        const auto& hp = model.hparams();
        std::fill(s.allowed.begin(), s.allowed.end(), std::uint8_t{0});
        for (std::uint32_t l = 0; l < hp.n_moe_layer(); ++l) {
            for (std::uint32_t e : p->top_experts(l, s.params.prune_experts_per_layer))
                s.allowed[static_cast<std::size_t>(l) * hp.n_expert + e] = 1;
        }
        s.pruned = true;
        s.report.pruned_experts_per_layer = s.params.prune_experts_per_layer;
    }
    if (opt.on_profile_applied && p.get() != last_applied) {
        last_applied = p.get();
        opt.on_profile_applied(*p);
    }
}

bool batch_loop::impl::prefill_done(sequence& s) {
    if (s.params.routing_out) s.params.routing_out->merge(s.stats);
    if (s.params.prefill_only) {
        finish(s, "stop");
        return false;
    }
    if (s.params.profile) {
        s.report.source = "request";
        s.report.similarity = scheduler::profile_matcher::similarity(*s.params.profile, s.stats.mean_scores());
    } else if (s.params.matcher && !s.params.matcher->empty()) {
        const scheduler::profile_match m = s.params.matcher->match(s.stats);
        s.report.similarity = m.similarity;
        if (m.matched) {
            s.report.source = "matched";
            use_profile(s, m.matched);
        } else if (s.params.prune_experts_per_layer != 0) {
            fail(s, error{errc::invalid_argument,
                          fmt::format("prune: no stored profile matches this prompt (the closest, '{}', has similarity "
                                      "{:.3f}, below the threshold {}); name one with \"profile\"",
                                      m.candidate, m.similarity, s.params.matcher->options().threshold)});
            return false;
        }
    }
    s.report_known = true;
    {
        // Published now rather than at the end of the step: the sink (and whoever it
        // notifies) may ask snapshot() about this request before then.
        std::lock_guard lock(mu);
        slot_public& p = slots[static_cast<std::size_t>(&s - seqs.data())];
        p.profile = s.report;
        p.profile_known = true;
    }
    s.sink->on_profile(s.report);
    return true;
}

// Turns one sampled token into text for the sink, holding back what may be the start of a
// stop string, and finishes the sequence on a stop string, end of generation or max_tokens.
void batch_loop::impl::emit(sequence& s, engine::token_id token) {
    const engine::tokenizer& vocab = model.vocab();
    const std::vector<engine::token_id>& kept = s.params.kept_control_tokens;
    s.held += s.text.push(vocab.token_bytes(token, std::binary_search(kept.begin(), kept.end(), token)));
    const std::vector<std::string>& stops = s.params.stop;

    if (const std::size_t at = find_stop(s.held, stops); at != npos) {
        s.sink->on_token(token, std::string_view(s.held).substr(0, at));
        finish(s, "stop");
        return;
    }
    // A closed JSON document (response_format) ends the reply as end of generation does.
    const bool eog = (s.params.stop_at_eog && vocab.is_eog(token)) || (s.json && s.json->closed());
    if (eog || s.generated >= s.params.max_tokens) {
        // The end: bytes that never formed a character become U+FFFD, and text held back
        // for a stop string that never came is real output.
        s.held += s.text.finish();
        const std::size_t at = find_stop(s.held, stops);
        const bool stopped = eog || at != npos;
        s.sink->on_token(token, std::string_view(s.held).substr(0, at));
        finish(s, stopped ? "stop" : "length");
        return;
    }
    const std::size_t ready = s.held.size() - partial_stop(s.held, stops);
    s.sink->on_token(token, std::string_view(s.held).substr(0, ready));
    s.held.erase(0, ready);
}

void batch_loop::impl::finish(sequence& s, std::string_view reason) noexcept {
    if (reason == "cancelled") ++counters.cancelled;
    // A request that ran its course; cancelled ones would measure the client, not moed.
    if (!s.params.prefill_only && s.generated > 0 && reason != "cancelled") {
        const steady::time_point now = steady::now();
        try {
            std::lock_guard lock(mu);
            timings.request_latency.observe(seconds_between(s.submitted, now));
            timings.generation.observe(seconds_between(s.first_token, now));
        } catch (...) {
            // Locking a std::mutex throws only on a broken system; the request goes uncounted.
        }
    }
    s.sink->on_done(reason, s.usage());
    release(s);
}

void batch_loop::impl::fail(sequence& s, const error& err) noexcept {
    ++counters.failed;
    s.sink->on_failed(err, s.usage());
    release(s);
}

// Frees the sequence's KV cache for the next job at once (the memory stays allocated).
void batch_loop::impl::release(sequence& s) noexcept {
    if (recorder) recorder->end_sequence(s.id);
    s.id = 0;
    s.sink.reset();
    s.cache.clear();
    s.take = 0;
    --active;
}

void batch_loop::impl::fail_all(const error& err) noexcept {
    for (sequence& s : seqs) {
        if (s.active()) fail(s, err);
    }
    try {
        std::lock_guard lock(mu);
        publish_locked();
    } catch (...) {
        // Locking a std::mutex throws only on a broken system; the next step publishes anyway.
    }
}

batch_loop::batch_loop(engine::model& model, const loop_options& options)
    : impl_(std::make_unique<impl>(model, options)) {}

batch_loop::~batch_loop() { shutdown(std::chrono::milliseconds(0)); }

const loop_options& batch_loop::options() const noexcept { return impl_->opt; }

void batch_loop::add_prefetch_stats(prefetch_stats& stats) const {
    if (impl_->planner) scheduler::add_planner_stats(impl_->planner->stats(), stats);
}

void batch_loop::record_trace(scheduler::trace_writer writer) {
    impl& im = *impl_;
    std::lock_guard lock(im.mu);
    MOED_ASSERT(!im.started && !im.trace);
    im.trace.emplace(std::move(writer));
    im.recorder = std::make_unique<engine::trace_recorder>(*im.trace);
    im.recorder->attach(im.eval);
}

void batch_loop::start() {
    std::lock_guard lock(impl_->mu);
    MOED_ASSERT(!impl_->started);
    impl_->started = true;
    impl_->thread = std::thread([this] { impl_->thread_main(); });
}

void batch_loop::shutdown(std::chrono::milliseconds drain) {
    impl& im = *impl_;
    std::lock_guard serial(im.shutdown_mu);
    bool has_thread = false;
    {
        std::unique_lock lock(im.mu);
        // From a sink it would wait for the thread it runs on.
        MOED_ASSERT(im.thread.get_id() != std::this_thread::get_id());
        im.accepting = false;
        im.stopping = true;
        has_thread = im.thread.joinable();
        if (has_thread) {
            im.work_cv.notify_all();
            im.idle_cv.wait_for(lock, drain, [&] { return im.running == 0 && im.count == 0; });
            im.force_cancel = true;
            im.work_cv.notify_all();
        }
    }
    if (has_thread) {
        im.thread.join();
        return;
    }
    // Never started (or already joined): queued jobs still get their one finish event, here.
    std::vector<queued_job> left;
    {
        std::lock_guard lock(im.mu);
        left.reserve(im.count);
        for (std::size_t i = 0; i < im.count; ++i) left.push_back(std::move(im.ring[im.ring_index(i)]));
        im.count = 0;
        im.published.cancelled += left.size();
    }
    for (queued_job& j : left) j.sink->on_done("cancelled", job_usage{static_cast<std::int64_t>(j.params.prompt.size()), 0});
    im.close_trace();
}

result<job_id> batch_loop::submit(job_params params, std::shared_ptr<job_sink> sink) {
    MOED_ASSERT(sink != nullptr);
    impl& im = *impl_;
    MOED_TRY(im.validate(params));
    std::lock_guard lock(im.mu);
    if (!im.accepting) return make_error(errc::cancelled, "the server is shutting down");
    if (im.count >= im.ring.size()) {
        return make_error(errc::out_of_memory, "the queue is full ({} jobs waiting)", im.count);
    }
    const job_id id = im.next_id++;
    queued_job& j = im.ring[im.ring_index(im.count)];
    j.id = id;
    j.params = std::move(params);
    j.sink = std::move(sink);
    j.cancel = false;
    j.submitted = steady::now();
    ++im.count;
    ++im.requests_total;
    im.work_cv.notify_one();
    return id;
}

void batch_loop::cancel(job_id id) noexcept {
    impl& im = *impl_;
    std::lock_guard lock(im.mu);
    for (std::size_t i = 0; i < im.count; ++i) {
        queued_job& j = im.ring[im.ring_index(i)];
        if (j.id == id) {
            j.cancel = true;
            im.work_cv.notify_one();
            return;
        }
    }
    for (slot_public& p : im.slots) {
        if (p.id == id) {
            p.cancel = true;
            return;
        }
    }
}

void batch_loop::snapshot(server_status& status) const {
    const impl& im = *impl_;
    std::lock_guard lock(im.mu);
    status.threads = static_cast<std::uint32_t>(im.pool.size());
    status.queue_waiting = static_cast<std::uint32_t>(im.count);
    status.queue_capacity = im.opt.queue_capacity;
    status.running_sequences = im.running;
    status.max_sequences = im.opt.max_sequences;
    status.max_batch_tokens = static_cast<std::uint32_t>(im.opt.max_batch_tokens);
    status.steps_total = im.published.steps;
    status.requests_total = im.requests_total;
    status.requests_failed = im.published.failed;
    status.requests_cancelled = im.published.cancelled;
    status.prompt_tokens_total = im.published.prompt_tokens;
    status.generated_tokens_total = im.published.generated_tokens;
    status.memory.kv_cache_bytes = im.kv_cache_bytes;
    status.memory.kv_cache_used_bytes = im.kv_cache_used_bytes;
    status.memory.kv_cache_cells = im.kv_cache_cells;
    status.memory.kv_cache_cells_used = im.kv_cache_cells_used;
    status.memory.scratch_bytes = im.scratch_bytes;
    im.timings.fill(status.timing);

    // Rate over the recorded window; nothing running means nothing is being decoded now.
    status.decode_tokens_per_s = 0.0;
    if (im.running > 0 && im.rate_count >= 2) {
        const rate_sample& newest = im.rates[(im.rate_next + im.rates.size() - 1) % im.rates.size()];
        const rate_sample& oldest = im.rates[(im.rate_next + im.rates.size() - im.rate_count) % im.rates.size()];
        const double seconds = std::chrono::duration<double>(newest.time - oldest.time).count();
        if (seconds > 0.0) {
            status.decode_tokens_per_s =
                static_cast<double>(newest.generated_tokens - oldest.generated_tokens) / seconds;
        }
    }

    status.requests.clear();
    status.requests.reserve(im.running + im.count);
    for (const slot_public& p : im.slots) {
        if (p.id == 0) continue;
        request_status r{p.request_id, p.prefill ? "prefill" : "decode", p.prompt_tokens,
                         p.generated_tokens, p.max_tokens, p.peer};
        if (p.profile_known || !p.profile.profile.empty()) {
            r.profile = p.profile.profile;
            r.profile_source = p.profile_known ? p.profile.source : "request";
            r.profile_similarity = p.profile.similarity;
            r.pruned_experts_per_layer = p.profile.pruned_experts_per_layer;
        }
        status.requests.push_back(std::move(r));
    }
    for (std::size_t i = 0; i < im.count; ++i) {
        const queued_job& j = im.ring[im.ring_index(i)];
        status.requests.push_back(request_status{j.params.id, "queued",
                                                 static_cast<std::int64_t>(j.params.prompt.size()), 0,
                                                 j.params.max_tokens, j.params.peer});
    }
}

}  // namespace moed::daemon
