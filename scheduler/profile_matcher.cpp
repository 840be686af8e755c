#include "scheduler/profile_matcher.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/assert.h"

namespace moed::scheduler {

namespace {

std::uint32_t count_of(const profile& p, std::uint64_t key) noexcept {
    auto it = std::lower_bound(p.ngrams.begin(), p.ngrams.end(), key,
                               [](const ngram_count& g, std::uint64_t k) { return g.key < k; });
    return it != p.ngrams.end() && it->key == key ? it->count : 0;
}

profile_match gate(const std::shared_ptr<const profile>& best, double similarity, double ll, double threshold) {
    profile_match m;
    if (!best) return m;
    m.candidate = best->name;
    m.similarity = similarity;
    m.log_likelihood = ll;
    if (similarity >= threshold) m.matched = best;
    return m;
}

}  // namespace

profile_matcher::profile_matcher(std::vector<std::shared_ptr<const profile>> profiles, match_options options)
    : profiles_(std::move(profiles)), options_(options) {
    for (const auto& p : profiles_) {
        MOED_ASSERT(p != nullptr);
        MOED_ASSERT(p->shape == profiles_.front()->shape);
    }
}

double profile_matcher::similarity(const profile& p, std::span<const double> mean_scores) {
    MOED_ASSERT(mean_scores.size() == p.score.size());
    double dot = 0.0, na = 0.0, nb = 0.0;
    for (std::size_t i = 0; i < mean_scores.size(); ++i) {
        const double a = mean_scores[i];
        const double b = p.score[i];
        dot += a * b;
        na += a * a;
        nb += b * b;
    }
    if (na <= 0.0 || nb <= 0.0) return 0.0;
    return dot / (std::sqrt(na) * std::sqrt(nb));
}

profile_match profile_matcher::match_cosine(const routing_accumulator& prompt) const {
    if (profiles_.empty() || prompt.tokens() == 0) return {};
    MOED_ASSERT(prompt.shape() == profiles_.front()->shape);
    const std::vector<double> mean = prompt.mean_scores();
    std::shared_ptr<const profile> best;
    double best_sim = -std::numeric_limits<double>::infinity();
    for (const auto& p : profiles_) {
        const double s = similarity(*p, mean);
        if (s > best_sim) {
            best_sim = s;
            best = p;
        }
    }
    return gate(best, best_sim, 0.0, options_.threshold);
}

profile_match profile_matcher::match(const routing_accumulator& prompt) const {
    if (profiles_.empty() || prompt.tokens() == 0) return {};
    const routing_shape& shape = profiles_.front()->shape;
    MOED_ASSERT(prompt.shape() == shape);
    const std::vector<ngram_count> grams = prompt.ngrams();

    double total_tokens = 0.0;
    for (const auto& p : profiles_) total_tokens += static_cast<double>(p->n_tokens);
    const double b = options_.background_prior;
    const double a = options_.smoothing;
    const double space = std::pow(static_cast<double>(shape.n_expert), static_cast<double>(ngram_order_for(shape.n_layer)));
    const double bg_denominator = total_tokens + b * space;

    std::vector<double> ll(profiles_.size(), 0.0);
    std::vector<std::uint32_t> counts(profiles_.size());
    double n_grams = 0.0;
    for (const ngram_count& g : grams) {
        double sum = 0.0;
        for (std::size_t i = 0; i < profiles_.size(); ++i) {
            counts[i] = count_of(*profiles_[i], g.key);
            sum += counts[i];
        }
        const double bg = (sum + b) / bg_denominator;
        for (std::size_t i = 0; i < profiles_.size(); ++i) {
            const double n = static_cast<double>(profiles_[i]->n_tokens);
            ll[i] += g.count * std::log((counts[i] + a * bg) / (n + a));
        }
        n_grams += g.count;
    }
    std::size_t best = 0;
    for (std::size_t i = 1; i < ll.size(); ++i) {
        if (ll[i] > ll[best]) best = i;
    }
    const double sim = similarity(*profiles_[best], prompt.mean_scores());
    return gate(profiles_[best], sim, n_grams > 0.0 ? ll[best] / n_grams : 0.0, options_.threshold);
}

}  // namespace moed::scheduler
