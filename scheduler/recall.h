// Prediction recall on a routing trace: how many of the experts the router chose are
// among a predictor's top k, |top-k ∩ chosen| / n_expert_used, for k = n_expert_used and
// 2 x n_expert_used, per target layer and distance (scheduler/predictor.h says what a
// distance is), for each single source and for the combined predictor.
// The trace is walked in decode order with the predictor learning online, and every
// prediction is made before the routing it is scored against is observed (prequential), so
// the figures are what the engine would have seen. The predictors:
//   lookahead       the lookahead row for the target (distances 1..trace depth only)
//   previous_token  the experts the sequence chose at the target layer on its previous token
//   reuse           decayed reuse (predictor_config::reuse_decay)
//   coactivation    P(e at L | the token's experts at L - d), learned online
//   profile         the task profile of the sequence (when profile_of gives one)
//   frequency       every sequence's decayed usage (also each source's fallback)
//   naive_sum       lookahead probabilities plus 1 for each of the previous token's experts
//                   (a fixed sum in which history outvotes the router; for comparison only)
//   combined        the expert predictor
// A source with nothing to say for a sample (reuse on a sequence's first token,
// coactivation for layer L < d) ranks by frequency there, so every predictor is scored on
// the same samples.
// Threads: none of its own.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "common/result.h"
#include "scheduler/predictor.h"
#include "scheduler/trace_data.h"

namespace moed::scheduler {

enum class recall_predictor : std::uint8_t {
    lookahead, previous_token, reuse, coactivation, profile, frequency, naive_sum, combined
};
inline constexpr std::size_t n_recall_predictors = 8;
// The single-source predictors (what the combined one is compared with).
bool is_single_source(recall_predictor p) noexcept;
const char* recall_predictor_name(recall_predictor p) noexcept;

struct recall_counts {
    std::uint64_t samples = 0;  // (token, layer) pairs scored
    std::uint64_t chosen = 0;   // samples x n_expert_used
    std::uint64_t hits_k = 0;   // chosen experts within the top k
    std::uint64_t hits_2k = 0;  // ... within the top 2k
    double recall_k() const noexcept { return chosen == 0 ? 0.0 : static_cast<double>(hits_k) / static_cast<double>(chosen); }
    double recall_2k() const noexcept { return chosen == 0 ? 0.0 : static_cast<double>(hits_2k) / static_cast<double>(chosen); }
    recall_counts& operator+=(const recall_counts& o) noexcept {
        samples += o.samples;
        chosen += o.chosen;
        hits_k += o.hits_k;
        hits_2k += o.hits_2k;
        return *this;
    }
};

struct recall_options {
    // reuse_decay, max_distance (distances 0..max_distance are scored), grid_steps and
    // learn_every are used; the shape comes from the trace.
    predictor_config predictor;
    std::function<std::span<const float>(std::uint32_t tag)> profile_of;
};

struct recall_report {
    std::uint32_t n_layer = 0, n_expert_used = 0, max_distance = 0, lookahead_depth = 0;
    bool has_profile = false;
    std::vector<recall_counts> counts;  // [predictor][distance 0..max_distance][layer]
    // Mixture weights the combined predictor ended with, [distance][layer][source].
    std::vector<float> final_weights;

    recall_counts& at(recall_predictor p, std::uint32_t distance, std::uint32_t layer);
    const recall_counts& at(recall_predictor p, std::uint32_t distance, std::uint32_t layer) const;
    // Summed over layers.
    recall_counts total(recall_predictor p, std::uint32_t distance) const;
};

result<recall_report> measure_recall(const trace_data& trace, std::span<const decode_token> order,
                                     const recall_options& options);

// Task-conditioned expected selection scores (DESIGN.md) of the tokens of the sequences
// whose tag `use` accepts: TCESS(l, e) = mean over tokens x of p_l(e | x) * [e chosen],
// [n_layer * n_expert]. The probabilities are the records' probs (the reference traces'
// renormalised weights).
std::vector<float> tcess_scores(const trace_data& trace, const std::function<bool(std::uint32_t tag)>& use);

}  // namespace moed::scheduler
