// The records of a routing trace: what one MoE layer's router
// did for one token, and what the trace says about the model it came from. The binary trace
// file format, its reader and its writer live in scheduler/trace.h; this header holds only
// the plain structs, so code that consumes traces (the predictors, tools/trace-replay) and
// loaders of other sources (the reference JSON-lines routing, scheduler/reference_trace.h)
// share one vocabulary.
// Threads: plain values; no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moed::scheduler {

struct trace_info {
    std::string model_name;
    // Identity of the model file (scheduler::model_identity): file size and a hash of its
    // header/metadata, the same function profiles use. Empty when the source has none.
    std::string model_id;
    std::uint32_t n_layer = 0, n_expert = 0, n_expert_used = 0, lookahead_depth = 0;
    std::vector<std::uint64_t> expert_bytes;  // bytes of one expert, per layer (may be empty)
};

struct trace_record {
    std::uint64_t seq = 0;   // the engine's sequence id
    std::uint32_t tag = 0;   // the caller's label, e.g. prompt index (a name via tag_names)
    std::int64_t pos = 0;
    std::int32_t token = 0;
    std::uint32_t layer = 0;
    bool prefill = false;
    std::vector<float> probs;          // n_expert softmax probabilities
    std::vector<std::int32_t> chosen;  // n_expert_used, decreasing probability
    // lookahead_depth * n_expert, as in routing_event: row d predicts layer layer+d from the
    // residual stream entering this layer (rows past the last layer are zero).
    std::vector<float> lookahead;
};

}  // namespace moed::scheduler
