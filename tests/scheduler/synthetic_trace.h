// Small synthetic routing traces for the scheduler tests: a sequence's experts per token and
// layer are given explicitly or drawn by a rule, so the structure a predictor should find is
// known.
#pragma once

#include <cstdint>
#include <vector>

#include "scheduler/trace_data.h"

namespace moed::scheduler::test {

// steps[token][layer] = the experts chosen there (k of them, decreasing probability).
using routing = std::vector<std::vector<std::vector<std::int32_t>>>;

// One sequence (seq = tag = `seq`), positions 0.., probs uniform over the chosen.
inline void append_sequence(trace_data& t, std::uint64_t seq, const routing& steps) {
    const std::uint32_t k = t.info.n_expert_used;
    for (std::size_t pos = 0; pos < steps.size(); ++pos) {
        for (std::uint32_t l = 0; l < t.info.n_layer; ++l) {
            trace_record r;
            r.seq = seq;
            r.tag = static_cast<std::uint32_t>(seq);
            r.pos = static_cast<std::int64_t>(pos);
            r.layer = l;
            r.chosen = steps[pos][l];
            r.probs.assign(t.info.n_expert, 0.0f);
            for (std::int32_t e : r.chosen) r.probs[static_cast<std::size_t>(e)] = 1.0f / static_cast<float>(k);
            t.records.push_back(r);
        }
    }
}

inline trace_data make_trace(std::uint32_t n_layer, std::uint32_t n_expert, std::uint32_t k, const routing& steps) {
    trace_data t;
    t.info.n_layer = n_layer;
    t.info.n_expert = n_expert;
    t.info.n_expert_used = k;
    append_sequence(t, 0, steps);
    return t;
}

}  // namespace moed::scheduler::test
