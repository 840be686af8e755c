// Loader for the reference routing of shared/models/traces (tinymoe-routing.jsonl, made by
// the model's training framework): one JSON object per line and per prompt x layer x
// token, {"d": domain, "p": prompt id, "l": layer, "t": position, "tok": token id,
// "e": [chosen experts, decreasing probability], "w": [their renormalised weights]}.
// The file ships gzip-compressed; moed has no zlib dependency, so callers decompress it
// (`zcat FILE | trace-replay ... -`).
// What the reference lacks, and how the loader fills it: no router probabilities (probs
// get the renormalised weights at the chosen experts and 0 elsewhere, so rankings among the
// chosen are right and the rest tie), no lookahead (lookahead_depth 0), no expert sizes
// (expert_bytes empty). Each prompt becomes one sequence; seq and tag are the prompt's
// index in order of first appearance and its tag name is "<domain>/<number>" ("c/17" for
// prompt "c-17"). Every token is marked prefill.
// Threads: none of its own.
#pragma once

#include <cstdint>
#include <istream>
#include <string>

#include "common/result.h"
#include "scheduler/trace_data.h"

namespace moed::scheduler {

struct reference_trace_options {
    // Experts per layer; 0 infers it as the largest expert id seen plus one.
    std::uint32_t n_expert = 0;
    std::string model_name = "reference";
};

// Reads every line of `in` (blank lines are skipped). Errors name `source` and the line:
// malformed JSON, missing or mistyped fields, e/w of different or zero length, negative or
// out-of-range ids, a (prompt, layer, position) given twice.
result<trace_data> read_reference_trace(std::istream& in, const std::string& source,
                                        const reference_trace_options& options = {});

}  // namespace moed::scheduler
