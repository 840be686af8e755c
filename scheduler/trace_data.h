// A whole routing trace in memory and the orders the replay tools walk it in.
// Records come from a trace file (scheduler/trace.h) or the reference JSON lines
// (scheduler/reference_trace.h); both fill a trace_data.
// "Decode order" is how a single-sequence decoder would meet the routing: sequences one
// after another in tag order (ties by sequence id), each sequence's tokens by position, each
// token's layers in order. Prefill batches are recorded layer-major; decode order undoes it.
// Threads: plain values; no shared state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "scheduler/trace_types.h"

namespace moed::scheduler {

struct trace_data {
    trace_info info;
    std::vector<trace_record> records;
    std::vector<std::string> tag_names;  // tag i -> name such as "c/17"; may be empty
};

// The label before the first '/' of a tag name ("c/17" -> "c"): the prompt's domain.
// Empty when the tag has no name.
std::string_view tag_domain(const trace_data& trace, std::uint32_t tag);

// One token of one sequence in decode order: `layers` indexes trace.records, one record per
// layer in increasing layer order (a layer missing from the trace is absent from the list).
struct decode_token {
    std::uint64_t seq = 0;
    std::uint32_t tag = 0;
    std::int64_t pos = 0;
    bool first_of_sequence = false;
    std::vector<std::size_t> layers;
};

// Task-conditioned expected selection scores (DESIGN.md) of the tokens of the sequences
// whose tag `use` accepts: TCESS(l, e) = mean over tokens x of p_l(e | x) * [e chosen],
// [n_layer * n_expert]: a task profile's scores, made from a trace. The probabilities are
// the records' probs (the reference traces' renormalised weights).
std::vector<float> tcess_scores(const trace_data& trace, const std::function<bool(std::uint32_t tag)>& use);

// The trace in decode order. Errors: a (seq, pos, layer) recorded twice, a record whose
// layer, chosen or probs do not fit the trace_info (bad_file, naming the record).
result<std::vector<decode_token>> decode_order(const trace_data& trace);

// Checks every record against trace.info (sizes of probs, chosen, lookahead; expert ids and
// layers in range). Errors name the record index and what is wrong.
result<void> validate_trace(const trace_data& trace);

}  // namespace moed::scheduler
