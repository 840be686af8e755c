#include "engine/sampler.h"

#include "kernels/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

namespace moed::engine {

result<void> sampling_params::validate() const {
    if (!std::isfinite(temperature) || temperature < 0.0f || temperature > 100.0f)
        return make_error(errc::invalid_argument, "temperature: {} is out of range [0, 100]", temperature);
    if (top_k < 0) return make_error(errc::invalid_argument, "top_k: {} must be >= 0", top_k);
    if (!(top_p > 0.0f && top_p <= 1.0f))
        return make_error(errc::invalid_argument, "top_p: {} is out of range (0, 1]", top_p);
    if (!(min_p >= 0.0f && min_p <= 1.0f))
        return make_error(errc::invalid_argument, "min_p: {} is out of range [0, 1]", min_p);
    if (!(repeat_penalty > 0.0f && repeat_penalty <= 10.0f))
        return make_error(errc::invalid_argument, "repeat_penalty: {} is out of range (0, 10]", repeat_penalty);
    if (repeat_last_n < 0) return make_error(errc::invalid_argument, "repeat_last_n: {} must be >= 0", repeat_last_n);
    if (!(presence_penalty >= -openai_penalty_max && presence_penalty <= openai_penalty_max))
        return make_error(errc::invalid_argument, "presence_penalty: {} is out of range [-2, 2]", presence_penalty);
    if (!(frequency_penalty >= -openai_penalty_max && frequency_penalty <= openai_penalty_max))
        return make_error(errc::invalid_argument, "frequency_penalty: {} is out of range [-2, 2]", frequency_penalty);
    if (logit_bias.size() > max_logit_bias_entries)
        return make_error(errc::invalid_argument, "logit_bias: {} entries is more than the {} allowed", logit_bias.size(),
                          max_logit_bias_entries);
    for (const logit_bias_entry& e : logit_bias) {
        if (e.token < 0) return make_error(errc::invalid_argument, "logit_bias: token id {} is negative", e.token);
        if (!(e.bias >= -logit_bias_max && e.bias <= logit_bias_max))
            return make_error(errc::invalid_argument, "logit_bias.{}: {} is out of range [-100, 100]", e.token, e.bias);
    }
    return {};
}

token_id argmax(std::span<const float> logits) noexcept {
    if (logits.empty()) return 0;
    return static_cast<token_id>(kernels::argmax(logits.data(), static_cast<std::int64_t>(logits.size())));
}

void log_softmax_of(std::span<const float> logits, token_id chosen, std::size_t top, token_logprob& out) {
    MOED_ASSERT(!logits.empty());
    MOED_ASSERT(chosen >= 0 && static_cast<std::size_t>(chosen) < logits.size());
    MOED_ASSERT(top <= logits.size());
    float max_logit = logits[0];
    for (float l : logits) max_logit = std::max(max_logit, l);
    double sum = 0.0;
    for (float l : logits) sum += std::exp(static_cast<double>(l) - max_logit);
    const double log_z = static_cast<double>(max_logit) + std::log(sum);
    auto logprob = [&](token_id id) {
        return static_cast<float>(static_cast<double>(logits[static_cast<std::size_t>(id)]) - log_z);
    };
    out.token = chosen;
    out.logprob = logprob(chosen);
    out.top.clear();
    if (top == 0) return;
    // A min-heap of the best `top` seen so far (the worst at the front): one pass, no copy
    // of the logits. "Better": larger logit, then lower id.
    auto better = [&](token_id a, token_id b) {
        const float la = logits[static_cast<std::size_t>(a)];
        const float lb = logits[static_cast<std::size_t>(b)];
        return la > lb || (la == lb && a < b);
    };
    std::vector<token_id> heap;
    heap.reserve(top);
    for (std::size_t i = 0; i < logits.size(); ++i) {
        const auto id = static_cast<token_id>(i);
        if (heap.size() < top) {
            heap.push_back(id);
            std::push_heap(heap.begin(), heap.end(), better);
        } else if (better(id, heap.front())) {
            std::pop_heap(heap.begin(), heap.end(), better);
            heap.back() = id;
            std::push_heap(heap.begin(), heap.end(), better);
        }
    }
    std::sort(heap.begin(), heap.end(), better);
    for (token_id id : heap) out.top.emplace_back(id, logprob(id));
}

sampler::sampler(const sampling_params& params) : params_(params), rng_(params.seed) {}

token_id sampler::sample(std::span<const float> logits, std::span<const token_id> history, std::size_t n_generated) {
    MOED_ASSERT(!logits.empty());
    MOED_ASSERT(n_generated <= history.size());
    const bool penalize = params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0 && !history.empty();
    const bool openai_penalize =
        (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) && n_generated > 0;
    const bool adjust = penalize || openai_penalize || !params_.logit_bias.empty();
    if (params_.temperature <= 0.0f && !adjust) return argmax(logits);

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
    if (openai_penalize) {
        // OpenAI's formula: logit -= frequency * count + presence * (count > 0). Each
        // occurrence takes the frequency term; `p` (unused until the softmax below) marks a
        // token whose presence term was taken, so it is taken once without a set.
        for (std::size_t i = history.size() - n_generated; i < history.size(); ++i) {
            const token_id id = history[i];
            if (id < 0 || static_cast<std::size_t>(id) >= candidates_.size()) continue;
            candidate& c = candidates_[static_cast<std::size_t>(id)];
            c.logit -= params_.frequency_penalty;
            if (c.p == 0.0f) {
                c.logit -= params_.presence_penalty;
                c.p = 1.0f;
            }
        }
    }
    for (const logit_bias_entry& e : params_.logit_bias) {
        if (static_cast<std::size_t>(e.token) >= candidates_.size()) continue;  // ids are checked by the caller
        float& l = candidates_[static_cast<std::size_t>(e.token)].logit;
        // -100 bans: -infinity never wins, and the softmax below gives it exactly 0.
        l = e.bias <= -logit_bias_max ? -std::numeric_limits<float>::infinity() : l + e.bias;
    }
    if (params_.temperature <= 0.0f) {
        // max_element keeps the first of equal elements: the lowest id among ties, as argmax.
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
