// The batch loop: the engine thread of moed. It owns the evaluator, a fixed pool of KV
// caches (one per concurrent sequence, allocated at start-up) and the running sequences.
// Each step it admits queued jobs (continuous batching: new requests join between steps),
// builds one batch from every running sequence — a prompt chunk for sequences in prefill,
// one token for sequences decoding — runs one forward pass (the MoE layers group the batch's
// tokens by expert, so each expert is fetched and applied once per step), samples each
// sequence's next token and reports it to the job's sink.
//
// Task profiles: the routing of every prompt is accumulated during its prefill (a routing
// observer on the evaluator, split by sequence); when the prefill is done the job's profile
// is settled (named, or matched against the stored profiles), reported to its sink and
// shown in snapshot(), and pruning, when asked for, restricts its routing.
//
// Finishing: max_tokens ("length"), an end-of-generation token or a stop string ("stop"),
// cancel() or a sink that reports its client gone ("cancelled"), an engine error
// ("error"). A finished sequence frees its KV cache at once.
// Stop strings: text that could still become a stop string is held back, so a stream never
// shows a partial stop string; the stop string itself is not emitted.
// Threads: submit(), cancel(), snapshot() and shutdown() may be called from any thread (the
// socket thread); sinks are called on the engine thread and must not block (post the event
// to the socket's io_context and return). A sink may call submit(), cancel() and snapshot()
// (the loop's lock is not held while a sink runs), but not shutdown() or the destructor.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/status.h"
#include "engine/json_grammar.h"
#include "engine/model.h"
#include "engine/prefetch.h"
#include "engine/sampler.h"
#include "scheduler/profile.h"
#include "scheduler/profile_matcher.h"
#include "scheduler/routing_stats.h"
#include "scheduler/trace.h"

namespace moed::daemon {

// A stop string is searched for after every token and up to its length is held back; this
// bound keeps both cheap.
inline constexpr std::size_t max_stop_string_bytes = 256;
// job_params::kept_control_tokens holds at most this many ids (a chat format has a few markers).
inline constexpr std::size_t max_kept_control_tokens = 16;

struct job_params {
    std::vector<engine::token_id> prompt;  // already tokenized (and templated, for chat)
    std::int32_t max_tokens = 16;          // 1 .. loop_options::max_tokens_limit
    engine::sampling_params sampling;
    // Stop strings (at most loop_options::max_stop_strings; each non-empty valid UTF-8 of at
    // most max_stop_string_bytes).
    std::vector<std::string> stop;
    bool stop_at_eog = true;
    // Control tokens whose text the job's output keeps (sorted ids): a chat reply's markers
    // (<think>, harmony's <|channel|>) where the vocabulary has them as control tokens, so
    // the reply can be split into reasoning and content. Every other control token writes
    // no text.
    std::vector<engine::token_id> kept_control_tokens;
    std::string id;                        // request id for status and logs ("cmpl-...")
    std::string peer;                      // peer credentials for status

    // Task profiles (scheduler/profile.h), resolved by the caller when it submits.
    // `profile`: named by the request, applied from the start. Otherwise `matcher` (when set
    // and not empty) matches the prompt's routing statistics once the prefill is done.
    std::shared_ptr<const scheduler::profile> profile;
    std::shared_ptr<const scheduler::profile_matcher> matcher;
    // Pruning: when > 0, routing is restricted to the profile's top this-many experts per
    // layer (n_expert_used .. n_expert). A named profile prunes the prefill too; a matched
    // one prunes from the first token generated after it. Without a named profile a
    // non-empty matcher is required; if the prompt then matches none, the job fails with
    // errc::invalid_argument.
    std::uint32_t prune_experts_per_layer = 0;
    // Runs the prompt and finishes ("stop", no token generated and no sink->on_token): how
    // the daemon feeds a profile's example prompts through the engine between other
    // requests' steps. max_tokens is still validated (1 will do) but never reached.
    bool prefill_only = false;
    // When set, the prompt's routing statistics (shape of the model) are merged into it on
    // the engine thread before the job's finish event; the caller reads it after that event.
    std::shared_ptr<scheduler::routing_accumulator> routing_out;
    std::string trace_tag;                 // label in the routing trace (record_trace)
    // When set, every generated token's log-probability (of the raw logits, before the
    // sampler's penalties, bias and temperature) and this many alternatives (at most
    // max_job_top_logprobs) go to sink->on_logprob before its on_token.
    std::optional<std::uint32_t> logprobs;
    // response_format json_object / json_schema: every token keeps the output a prefix of a
    // document of this grammar, end of generation comes only once it is complete, and the
    // job finishes ("stop") as soon as the document is closed. max_tokens must cover the
    // grammar's smallest document; the constraint closes the document before max_tokens.
    std::shared_ptr<const engine::json_grammar> json;
};

// job_params::logprobs at most (OpenAI's top_logprobs bound).
inline constexpr std::uint32_t max_job_top_logprobs = 20;

// Which task profile a job runs with, reported once its prefill is done.
struct profile_report {
    std::string profile;             // empty: none
    std::string source = "none";     // "request" (named), "matched", "none"
    double similarity = 0.0;         // of the prompt to `profile`, or to the best candidate
    std::uint32_t pruned_experts_per_layer = 0;  // 0: routing not pruned
};

struct job_usage {
    std::int64_t prompt_tokens = 0;
    std::int64_t completion_tokens = 0;
};

// What a job reports. Exactly one finish event (done or failed) ends every accepted job.
class job_sink {
public:
    virtual ~job_sink() = default;
    // New text (valid UTF-8, possibly empty when held back) for generated token `token`.
    // Called once per generated token, the end-of-generation token included (its text is
    // empty unless held-back text is released with it). When a job ends by a stop string,
    // end of generation or max_tokens, its last call carries every byte still held (the text
    // before the stop string); a cancelled job's held text is dropped. `text` is valid only
    // during the call.
    virtual void on_token(engine::token_id token, std::string_view text) noexcept = 0;
    // The log-probability of generated token `lp.token` (job_params::logprobs), called just
    // before that token's on_token. `lp` is valid only during the call.
    virtual void on_logprob(const engine::token_logprob&) noexcept {}
    // Finished: reason is "stop", "length" or "cancelled".
    virtual void on_done(std::string_view finish_reason, const job_usage& usage) noexcept = 0;
    virtual void on_failed(const error& err, const job_usage& usage) noexcept = 0;
    // The job's task profile, once its prefill is done (before the first on_token); not
    // called for prefill_only jobs or jobs that end before their prefill does.
    virtual void on_profile(const profile_report&) noexcept {}
    // Polled once per step; true when the client went away (the job is then cancelled).
    virtual bool gone() const noexcept { return false; }
};

struct loop_options {
    std::uint32_t max_sequences = 8;       // concurrent sequences (= KV caches allocated)
    std::uint32_t queue_capacity = 64;     // jobs waiting beyond the running ones
    std::int64_t max_batch_tokens = 256;   // tokens per forward pass
    std::int64_t n_ctx = 0;                // context per sequence; 0: the model's training context
    std::int32_t max_tokens_limit = 4096;  // upper bound on a job's max_tokens
    std::uint32_t max_stop_strings = 8;
    int threads = 0;                       // compute threads; 0: hardware concurrency
    // Router-lookahead prefetching of tiered experts (ignored when experts are resident).
    engine::prefetch_options prefetch;
    // Called on the engine thread when a job starts using a task profile other than the
    // last one applied (named at admission, or matched after its prefill): the daemon warms
    // the expert tiers with it. Must not block.
    std::function<void(const scheduler::profile&)> on_profile_applied;
};

using job_id = std::uint64_t;

class batch_loop {
public:
    // Allocates the KV caches and scratch for the configured limits; starts no thread.
    batch_loop(engine::model& model, const loop_options& options);
    ~batch_loop();
    batch_loop(const batch_loop&) = delete;
    batch_loop& operator=(const batch_loop&) = delete;

    // Records the routing of every forward pass to `writer` (an open trace for this model;
    // engine::make_trace_info), with the router lookahead depth the trace declares. Each job's
    // records carry its job id as seq and its trace_tag (interned in the trace's tag table).
    // The engine thread owns the writer from start() on and closes it when it ends, so after
    // shutdown() the file is complete. Call before start(), at most once.
    void record_trace(scheduler::trace_writer writer);

    // Starts the engine thread.
    void start();
    // Stops accepting jobs; waits up to `drain` for running and queued jobs to finish, then
    // cancels what is left (their sinks get "cancelled") and joins the thread.
    void shutdown(std::chrono::milliseconds drain);

    // Queues a job. Errors: errc::invalid_argument (empty prompt, a token id outside the
    // vocabulary, max_tokens out of range, prompt + max_tokens over the context, bad sampling
    // parameters, bad or too many stop strings; messages name the field), errc::out_of_memory when
    // the queue is full (the daemon answers 429), errc::cancelled after shutdown began (503).
    result<job_id> submit(job_params params, std::shared_ptr<job_sink> sink);
    // Cancels a queued or running job; unknown ids are ignored.
    void cancel(job_id id) noexcept;

    // Fills the queue, batch and request fields of `status` (and counters), and the KV cache
    // and scratch bytes of status.memory (as the engine thread published them last step).
    void snapshot(server_status& status) const;
    // Adds the prefetch planner's prediction figures to tier statistics (nothing without
    // one). Any thread.
    void add_prefetch_stats(prefetch_stats& stats) const;

    const loop_options& options() const noexcept;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace moed::daemon
