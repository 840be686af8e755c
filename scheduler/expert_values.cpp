#include "scheduler/expert_values.h"

#include <algorithm>

#include "common/assert.h"

namespace moed::scheduler {

expert_values::expert_values(expert_predictor& predictor, std::span<const std::uint64_t> expert_bytes,
                             std::uint32_t max_tokens, const expert_value_params& params)
    : predictor_(predictor), params_(params), nl_(predictor.config().n_layer), ne_(predictor.config().n_expert),
      max_tokens_(max_tokens) {
    MOED_ASSERT(expert_bytes.empty() || expert_bytes.size() == nl_);
    MOED_ASSERT(max_tokens > 0);
    cost_.assign(nl_, 1.0f);
    if (!expert_bytes.empty()) {
        double total = 0.0;
        for (std::uint64_t b : expert_bytes) total += static_cast<double>(b);
        if (total > 0.0) {
            for (std::uint32_t l = 0; l < nl_; ++l) {
                cost_[l] = static_cast<float>(static_cast<double>(expert_bytes[l]) * nl_ / total);
            }
        }
    }
    const std::size_t n = static_cast<std::size_t>(nl_) * ne_;
    need_.assign(n, 0.0f);
    rate_.assign(n, 0.0f);
    values_.assign(n, 0.0f);
    scores_.assign(ne_, 0.0f);
    probs_.assign(ne_, 0.0f);
}

std::span<const float> expert_values::need(std::uint32_t layer) const noexcept {
    MOED_ASSERT(layer < nl_);
    return {need_.data() + static_cast<std::size_t>(layer) * ne_, ne_};
}

std::span<const float> expert_values::rate(std::uint32_t layer) const noexcept {
    MOED_ASSERT(layer < nl_);
    return {rate_.data() + static_cast<std::size_t>(layer) * ne_, ne_};
}

float expert_values::value(std::uint32_t layer, std::uint32_t expert) const noexcept {
    MOED_ASSERT(layer < nl_ && expert < ne_);
    return values_[static_cast<std::size_t>(layer) * ne_ + expert];
}

// P(chosen by any of the tokens) at `layer`: at distance 0 (rate), or at each token's
// nearest distance (need).
void expert_values::predict_union(std::span<const active_token> tokens, std::uint32_t layer, bool nearest,
                                  std::span<float> out) {
    std::fill(out.begin(), out.end(), 1.0f);  // the probability that no token needs it
    for (const active_token& t : tokens) {
        const std::uint32_t d = nearest ? predictor_.best_distance(t.slot, t.pos, layer) : 0;
        predictor_.predict(t.slot, t.pos, layer, d, scores_, probs_);
        for (std::uint32_t e = 0; e < ne_; ++e) out[e] *= 1.0f - std::clamp(probs_[e], 0.0f, 1.0f);
    }
    for (float& p : out) p = 1.0f - p;
}

void expert_values::begin_tokens(std::span<const active_token> tokens) {
    MOED_ASSERT(!tokens.empty() && tokens.size() <= max_tokens_);
    for (std::uint32_t l = 0; l < nl_; ++l) {
        std::span<float> r(rate_.data() + static_cast<std::size_t>(l) * ne_, ne_);
        predict_union(tokens, l, false, r);
    }
    std::copy(rate_.begin(), rate_.end(), need_.begin());
}

void expert_values::before_router(std::span<const active_token> tokens, std::uint32_t layer) {
    MOED_ASSERT(layer < nl_ && !tokens.empty() && tokens.size() <= max_tokens_);
    const std::uint32_t reach = std::max<std::uint32_t>(predictor_.config().max_distance, 1);
    for (std::uint32_t l = layer; l < nl_ && l < layer + reach; ++l) {
        predict_union(tokens, l, true, {need_.data() + static_cast<std::size_t>(l) * ne_, ne_});
    }
    compute_values(layer, false);
}

void expert_values::after_router(std::span<const active_token> tokens, std::uint32_t layer) {
    MOED_ASSERT(layer < nl_ && !tokens.empty() && tokens.size() <= max_tokens_);
    std::span<float> r(rate_.data() + static_cast<std::size_t>(layer) * ne_, ne_);
    predict_union(tokens, layer, false, r);
    std::copy(r.begin(), r.end(), need_.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(layer) * ne_));
    const std::uint32_t reach = predictor_.config().max_distance;
    for (std::uint32_t l = layer + 1; l < nl_ && l <= layer + reach; ++l) {
        predict_union(tokens, l, true, {need_.data() + static_cast<std::size_t>(l) * ne_, ne_});
    }
    compute_values(layer, true);
}

// Before the router of `layer` (routed false) its visit is one step away and layer l is
// l - layer + 1 steps away (a token later for the layers behind); after it, the layer's
// next visit is a whole token (n_layer steps) away.
void expert_values::compute_values(std::uint32_t layer, bool routed) {
    for (std::uint32_t l = 0; l < nl_; ++l) {
        std::uint32_t phase = l >= layer ? l - layer + 1 : l + nl_ - layer + 1;
        if (routed) phase = l > layer ? l - layer : l + nl_ - layer;
        const std::size_t base = static_cast<std::size_t>(l) * ne_;
        for (std::uint32_t e = 0; e < ne_; ++e) {
            values_[base + e] = expert_value(need_[base + e], rate_[base + e], phase, nl_, cost_[l], params_);
        }
    }
}

}  // namespace moed::scheduler
