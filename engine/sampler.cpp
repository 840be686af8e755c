#include "engine/sampler.h"

#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace moed::engine {

result<void> sampling_params::validate() const {
    if (!std::isfinite(temperature) || temperature < 0.0f || temperature > 100.0f)
        return make_error(errc::invalid_argument, "temperature {} is out of range (0..100)", temperature);
    if (top_k < 0) return make_error(errc::invalid_argument, "top_k {} must be >= 0", top_k);
    if (!(top_p > 0.0f && top_p <= 1.0f))
        return make_error(errc::invalid_argument, "top_p {} is out of range (0, 1]", top_p);
    if (!(min_p >= 0.0f && min_p <= 1.0f))
        return make_error(errc::invalid_argument, "min_p {} is out of range [0, 1]", min_p);
    if (!(repeat_penalty > 0.0f && repeat_penalty <= 10.0f))
        return make_error(errc::invalid_argument, "repeat_penalty {} is out of range (0, 10]", repeat_penalty);
    if (repeat_last_n < 0) return make_error(errc::invalid_argument, "repeat_last_n {} must be >= 0", repeat_last_n);
    return {};
}

token_id argmax(std::span<const float> logits) noexcept {
    if (logits.empty()) return 0;
    return static_cast<token_id>(kernels::argmax(logits.data(), static_cast<std::int64_t>(logits.size())));
}

sampler::sampler(const sampling_params& params) : params_(params), rng_(params.seed) {}

token_id sampler::sample(std::span<const float> logits, std::span<const token_id> history) {
    MOED_ASSERT(!logits.empty());
    const bool penalize = params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0 && !history.empty();
    if (params_.temperature <= 0.0f && !penalize) return argmax(logits);

    candidates_.resize(logits.size());
    for (std::size_t i = 0; i < logits.size(); ++i) {
        candidates_[i] = candidate{static_cast<token_id>(i), logits[i], 0.0f};
    }
    if (penalize) {
        // llama.cpp's rule: divide positive logits, multiply negative ones, once per token.
        const std::size_t n = std::min<std::size_t>(history.size(), static_cast<std::size_t>(params_.repeat_last_n));
        std::unordered_set<token_id> seen(history.end() - static_cast<std::ptrdiff_t>(n), history.end());
        for (token_id id : seen) {
            if (id < 0 || static_cast<std::size_t>(id) >= candidates_.size()) continue;
            float& l = candidates_[static_cast<std::size_t>(id)].logit;
            l = l > 0.0f ? l / params_.repeat_penalty : l * params_.repeat_penalty;
        }
    }
    if (params_.temperature <= 0.0f) {
        return std::max_element(candidates_.begin(), candidates_.end(),
                                [](const candidate& a, const candidate& b) { return a.logit < b.logit; })->id;
    }

    auto by_logit = [](const candidate& a, const candidate& b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    std::size_t keep = candidates_.size();
    if (params_.top_k > 0 && static_cast<std::size_t>(params_.top_k) < keep) {
        keep = static_cast<std::size_t>(params_.top_k);
        std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(keep),
                          candidates_.end(), by_logit);
    } else {
        std::sort(candidates_.begin(), candidates_.end(), by_logit);
    }
    candidates_.resize(keep);

    // The candidates are sorted by logit, the largest first. The temperature scales the
    // difference to the largest logit, never the logit itself: l / T overflows to infinity
    // for a tiny T (and inf - inf is NaN), while (l - max) / T is <= 0 and at worst
    // underflows, so exp gives 1 for the best candidates and 0 for the rest: the limit
    // T -> 0, which is greedy. The best candidate's term is exp(0) = 1, so the sum is >= 1.
    auto softmax = [this](float temperature) {
        const float max_logit = candidates_.front().logit;
        double sum = 0.0;
        for (auto& c : candidates_) {
            c.p = std::exp((c.logit - max_logit) / temperature);
            sum += c.p;
        }
        for (auto& c : candidates_) c.p = static_cast<float>(c.p / sum);
    };
    softmax(1.0f);
    if (params_.top_p < 1.0f) {
        double cum = 0.0;
        std::size_t n = 0;
        while (n < candidates_.size()) {
            cum += candidates_[n].p;
            ++n;
            if (cum >= params_.top_p) break;
        }
        candidates_.resize(std::max<std::size_t>(n, 1));
    }
    if (params_.min_p > 0.0f) {
        const float threshold = candidates_.front().p * params_.min_p;
        std::size_t n = 1;
        while (n < candidates_.size() && candidates_[n].p >= threshold) ++n;
        candidates_.resize(n);
    }
    softmax(params_.temperature);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    double r = uniform(rng_);
    for (const auto& c : candidates_) {
        r -= c.p;
        if (r <= 0.0) return c.id;
    }
    return candidates_.back().id;
}

}  // namespace moed::engine
