// The glue between the evaluator and a routing trace file: a routing observer that turns
// each routing_event into one trace record per token (scheduler/trace.h), in the order the
// engine computes them (a batch layer-major, tokens in batch order within a layer).
// - seq and tag: from batch_token::seq; tags come from begin_sequence (0 for a sequence it
//   was not told about).
// - prefill: a position below the prompt length given to begin_sequence; for a sequence it
//   was not told about, more than one token of that sequence in the batch.
// - lookahead: the first `depth` (the trace's) lookahead rows of the token ([depth][n_expert]);
//   attach() raises the evaluator's depth to the trace's when it is lower (a deeper one, set
//   by the prefetch planner, is kept; lowering it below the trace's later stops recording).
// A write error stops the recording (the model keeps running); status() reports it.
// Threads: everything runs on the engine thread (the evaluator's owner); nothing here
// blocks on anything but the writer's buffered write(2) when its buffer fills.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/result.h"
#include "engine/evaluator.h"
#include "engine/model.h"
#include "scheduler/trace.h"

namespace moed::engine {

// The trace_info for `m`: general.name (else the file's name), model_identity, sizes and
// each layer's expert bytes.
scheduler::trace_info make_trace_info(const model& m, std::uint32_t lookahead_depth);

class trace_recorder {
public:
    // `writer` must outlive the recorder and any evaluator it is attached to.
    explicit trace_recorder(scheduler::trace_writer& writer);
    trace_recorder(const trace_recorder&) = delete;
    trace_recorder& operator=(const trace_recorder&) = delete;

    // Adds this recorder to `eval`'s routing observers and raises its lookahead depth to the
    // trace's if lower. The recorder must outlive the evaluator's use of it.
    void attach(evaluator& eval);

    // Declares a sequence about to run: its tag and prompt length (positions below it are
    // prefill). end_sequence forgets it (the map holds only running sequences).
    void begin_sequence(std::uint64_t seq, std::uint32_t tag, std::int64_t prompt_tokens);
    void end_sequence(std::uint64_t seq);

    // The observer's body (attach() registers it).
    void on_routing(const routing_event& ev);

    // The first error (recording stopped there), or success.
    result<void> status() const;
    std::uint64_t records() const noexcept { return writer_.records_written(); }

private:
    struct sequence_info {
        std::uint32_t tag = 0;
        std::int64_t prompt_tokens = 0;
    };
    void stop(error err);

    scheduler::trace_writer& writer_;
    std::unordered_map<std::uint64_t, sequence_info> sequences_;
    scheduler::trace_record record_;      // reused: its vectors keep their storage
    std::vector<std::uint64_t> batch_seqs_;  // sorted seqs of the batch (prefill guess)
    bool failed_ = false;
    error error_;
};

}  // namespace moed::engine
