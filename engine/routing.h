// The router of one MoE layer for one token, in llama.cpp's numerics (build_moe_ffn): the
// gating turns logits into per-expert scores (softmax, or a sigmoid per expert), a
// selection bias and group-limited selection decide which experts are chosen, the chosen
// experts' weights are their unbiased scores, optionally renormalised, then scaled.
// Threads: pure functions; the caller gives each concurrent call its own scratch.
#pragma once

#include <cstddef>
#include <cstdint>

#include "engine/arch.h"

namespace moed::engine {

// The floats of scratch route_token and routing_distribution need.
std::size_t routing_scratch_floats(const routing_config& rc, std::uint32_t n_expert) noexcept;

// What observers get as a layer's per-expert distribution (routing_event::probs, the
// router lookahead), computed in place from the logits in `scores` [n_expert] (the
// router's bias already added):
// - softmax and softmax_chosen gating with no selection bias or groups: the softmax over
//   every expert, as the router computes it;
// - otherwise (sigmoid gating, a selection bias, groups): the selection score (the gating's
//   score plus the selection bias) with the experts outside the chosen groups at 0,
//   clamped at 0 and divided by its sum (uniform if every value is 0). It is a distribution
//   whose order is the order the router selects experts in, so the prefetch ranking and
//   the task profiles treat it as they treat a softmax.
void routing_distribution(const routing_config& rc, float* scores, const float* selection_bias, int n_expert,
                          float* scratch);

// Routes one token: `scores` [n_expert] holds the logits on entry and routing_distribution's
// result on return; `chosen` and `weights` [k] receive the experts in decreasing selection
// order and their weights. `allowed` (null: every expert) restricts the choice to the
// flagged experts (at least k of them): the groups are then chosen among allowed experts,
// and if the best groups hold fewer than k of them the top k of all allowed experts are
// taken. The distribution does not depend on `allowed`.
void route_token(const routing_config& rc, float* scores, const float* selection_bias, int n_expert, int k,
                 const std::uint8_t* allowed, std::int32_t* chosen, float* weights, float* scratch);

}  // namespace moed::engine
