// The eviction values of every expert as a forward pass advances (scheduler/eviction_scoring.h
// says what a value is), computed from the expert predictor for the tokens in flight. The
// engine-side planner (or tools/trace-replay) calls it at each layer and hands values() to
// the tier's eviction policy (storage::eviction_policy::set_expert_scores); need(layer) is
// what prefetch candidates are chosen from.
//
// Per layer L it keeps two probabilities per expert: rate (chosen at a visit of L when
// nothing of that token is known: the predictor at distance 0) and need (chosen at the next
// visit of L: the predictor at the nearest distance the tokens' lookahead and routing give,
// or the rate where they give nothing). With several tokens in flight (a batch), an expert
// is needed if any token needs it: p = 1 - prod(1 - p_token).
// Call order for one batch's forward pass: begin_tokens, then per layer before_router (after
// the predictor has observed that layer's lookahead), after_router (after it has observed
// the layer's routing).
// Threads: as the predictor, one owner; no allocation after construction (batches up to
// max_tokens).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "scheduler/eviction_scoring.h"
#include "scheduler/predictor.h"

namespace moed::scheduler {

struct active_token {
    std::uint32_t slot = 0;  // the predictor's sequence slot
    std::int64_t pos = 0;
};

class expert_values {
public:
    // `expert_bytes` per layer (empty: all alike); `max_tokens` bounds a batch.
    expert_values(expert_predictor& predictor, std::span<const std::uint64_t> expert_bytes, std::uint32_t max_tokens,
                  const expert_value_params& params = {});

    // A new forward pass over `tokens`: every layer's rate is recomputed and need = rate.
    void begin_tokens(std::span<const active_token> tokens);
    // The tokens are at `layer`, its router not yet run: need of layers layer..layer+reach-1
    // from the predictor; values with the layer's own visit one step away.
    void before_router(std::span<const active_token> tokens, std::uint32_t layer);
    // The router of `layer` ran (and the predictor observed it): the layer's rate and need
    // are for the next token now, the next layers' need is refreshed; values with the
    // layer's next visit a whole token away.
    void after_router(std::span<const active_token> tokens, std::uint32_t layer);

    std::span<const float> values() const noexcept { return values_; }
    std::span<const float> need(std::uint32_t layer) const noexcept;
    std::span<const float> rate(std::uint32_t layer) const noexcept;
    float value(std::uint32_t layer, std::uint32_t expert) const noexcept;

private:
    void predict_union(std::span<const active_token> tokens, std::uint32_t layer, bool nearest, std::span<float> out);
    void compute_values(std::uint32_t layer, bool routed);

    expert_predictor& predictor_;
    expert_value_params params_;
    std::uint32_t nl_, ne_, max_tokens_;
    std::vector<float> cost_;  // per layer, mean 1
    std::vector<float> need_, rate_, values_;
    std::vector<float> scores_, probs_;
};

}  // namespace moed::scheduler
