#include "scheduler/routing_stats.h"

#include <algorithm>
#include <limits>

#include "common/assert.h"

namespace moed::scheduler {

namespace {
// Pending keys are sorted into the counts once there are this many (or as many as counts):
// amortised O(log n) per key, and memory stays near the number of distinct n-grams.
constexpr std::size_t k_compact_min = 4096;

std::uint32_t add_saturating(std::uint32_t a, std::uint32_t b) noexcept {
    const std::uint64_t s = static_cast<std::uint64_t>(a) + b;
    return s > std::numeric_limits<std::uint32_t>::max() ? std::numeric_limits<std::uint32_t>::max()
                                                         : static_cast<std::uint32_t>(s);
}

// Sorted keys -> counts.
std::vector<ngram_count> count_sorted(std::span<const std::uint64_t> keys) {
    std::vector<ngram_count> out;
    for (std::size_t i = 0; i < keys.size();) {
        std::size_t j = i;
        while (j < keys.size() && keys[j] == keys[i]) ++j;
        out.push_back({keys[i], static_cast<std::uint32_t>(std::min<std::size_t>(j - i, UINT32_MAX))});
        i = j;
    }
    return out;
}
}  // namespace

std::vector<ngram_count> merge_counts(std::span<const ngram_count> a, std::span<const ngram_count> b) {
    std::vector<ngram_count> out;
    out.reserve(a.size() + b.size());
    std::size_t i = 0, j = 0;
    while (i < a.size() || j < b.size()) {
        if (j == b.size() || (i < a.size() && a[i].key < b[j].key)) {
            out.push_back(a[i++]);
        } else if (i == a.size() || b[j].key < a[i].key) {
            out.push_back(b[j++]);
        } else {
            out.push_back({a[i].key, add_saturating(a[i].count, b[j].count)});
            ++i;
            ++j;
        }
    }
    return out;
}

routing_accumulator::routing_accumulator(const routing_shape& shape)
    : shape_(shape), order_(ngram_order_for(shape.n_layer)) {
    MOED_ASSERT(shape.n_layer >= 1 && shape.n_layer <= max_routing_layers);
    MOED_ASSERT(shape.n_expert_used >= 1 && shape.n_expert_used <= shape.n_expert &&
                shape.n_expert <= max_routing_experts);
    const std::size_t cells = static_cast<std::size_t>(shape.n_layer) * shape.n_expert;
    score_.assign(cells, 0.0);
    selection_.assign(cells, 0.0);
}

void routing_accumulator::add_layer(std::uint32_t layer, std::int64_t n_tokens, std::span<const float> probs,
                                    std::span<const std::int32_t> chosen) {
    const std::uint32_t n_exp = shape_.n_expert;
    const std::uint32_t k = shape_.n_expert_used;
    MOED_ASSERT(layer < shape_.n_layer && n_tokens >= 0);
    MOED_ASSERT(probs.size() == static_cast<std::size_t>(n_tokens) * n_exp);
    MOED_ASSERT(chosen.size() == static_cast<std::size_t>(n_tokens) * k);
    if (layer == 0) {
        batch_tokens_ = n_tokens;
        top1_.assign(static_cast<std::size_t>(order_) * static_cast<std::size_t>(n_tokens), 0);
        next_layer_ = 0;
    }
    // Layers of a batch come in order with one token count; anything else would mix the
    // n-grams of different tokens.
    MOED_ASSERT(layer == next_layer_ && n_tokens == batch_tokens_);
    next_layer_ = layer + 1;

    double* score = score_.data() + static_cast<std::size_t>(layer) * n_exp;
    double* selection = selection_.data() + static_cast<std::size_t>(layer) * n_exp;
    const std::size_t ring_row = static_cast<std::size_t>(layer % order_) * static_cast<std::size_t>(n_tokens);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
        const std::int32_t* c = chosen.data() + t * k;
        const float* p = probs.data() + t * n_exp;
        for (std::uint32_t s = 0; s < k; ++s) {
            MOED_ASSERT(c[s] >= 0 && static_cast<std::uint32_t>(c[s]) < n_exp);
            score[c[s]] += p[c[s]];
            selection[c[s]] += 1.0;
        }
        top1_[ring_row + static_cast<std::size_t>(t)] = c[0];
    }
    if (layer + 1 >= order_) {
        const std::uint32_t first = layer + 1 - order_;
        for (std::int64_t t = 0; t < n_tokens; ++t) {
            std::uint32_t e[max_ngram_order] = {0, 0, 0};
            for (std::uint32_t i = 0; i < order_; ++i) {
                const std::size_t row = static_cast<std::size_t>((first + i) % order_) * static_cast<std::size_t>(n_tokens);
                e[i] = static_cast<std::uint32_t>(top1_[row + static_cast<std::size_t>(t)]);
            }
            pending_.push_back(ngram_key(first, e[0], e[1], e[2]));
        }
    }
    if (layer + 1 == shape_.n_layer) {
        tokens_ += n_tokens;
        if (pending_.size() >= std::max(k_compact_min, counts_.size())) compact();
    }
}

void routing_accumulator::compact() {
    std::sort(pending_.begin(), pending_.end());
    const std::vector<ngram_count> fresh = count_sorted(pending_);
    counts_ = merge_counts(counts_, fresh);
    pending_.clear();
}

void routing_accumulator::merge(const routing_accumulator& other) {
    MOED_ASSERT(other.shape_ == shape_);
    for (std::size_t i = 0; i < score_.size(); ++i) {
        score_[i] += other.score_[i];
        selection_[i] += other.selection_[i];
    }
    tokens_ += other.tokens_;
    counts_ = merge_counts(counts_, other.ngrams());
}

void routing_accumulator::clear() {
    std::fill(score_.begin(), score_.end(), 0.0);
    std::fill(selection_.begin(), selection_.end(), 0.0);
    tokens_ = 0;
    next_layer_ = 0;
    batch_tokens_ = 0;
    pending_.clear();
    counts_.clear();
}

std::vector<double> routing_accumulator::mean_scores() const {
    std::vector<double> out(score_.size(), 0.0);
    if (tokens_ == 0) return out;
    const double inv = 1.0 / static_cast<double>(tokens_);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = score_[i] * inv;
    return out;
}

std::vector<ngram_count> routing_accumulator::ngrams() const {
    std::vector<std::uint64_t> keys(pending_);
    std::sort(keys.begin(), keys.end());
    return merge_counts(counts_, count_sorted(keys));
}

}  // namespace moed::scheduler
