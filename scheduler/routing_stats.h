// Routing statistics of a set of tokens, as task profiles (PreMoe's TCESS) and the profile
// matcher use them. For every token x and MoE layer l the router gives probabilities
// p_l(e|x) over the n_expert experts and chooses the top n_expert_used; this accumulates
//   score[l][e]     += p_l(e|x) * [e in top-k_l(x)]   (TCESS numerator)
//   selection[l][e] += [e in top-k_l(x)]              (selection counts)
// and the token's routing n-grams: the top-1 experts of `ngram_order` consecutive layers
// (l, l+1, l+2) as one feature. Experts specialise by task only modestly one layer at a
// time, but the path a token takes through consecutive layers says much more about the
// text it comes from; the matcher scores these n-grams (profile_matcher.h).
// Threads: one owner at a time (the engine thread while a sequence runs, then whoever
// takes the statistics); nothing is shared.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moed::scheduler {

struct routing_shape {
    std::uint32_t n_layer = 0;
    std::uint32_t n_expert = 0;
    std::uint32_t n_expert_used = 0;
    friend bool operator==(const routing_shape&, const routing_shape&) = default;
};

// Limits of what the statistics (and the profile files made from them) can describe:
// an n-gram key packs the first layer and up to three expert indices in 16 bits each.
inline constexpr std::uint32_t max_routing_layers = 4096;
inline constexpr std::uint32_t max_routing_experts = 65535;
inline constexpr std::uint32_t max_ngram_order = 3;

// The n-gram order used for a model: three layers, or all of them when it has fewer.
constexpr std::uint32_t ngram_order_for(std::uint32_t n_layer) noexcept {
    return n_layer < max_ngram_order ? n_layer : max_ngram_order;
}

// An n-gram's packed key: first layer in bits 48..63, then the experts of the layers
// l, l+1, l+2 in bits 32..47, 16..31 and 0..15 (unused ones zero).
constexpr std::uint64_t ngram_key(std::uint32_t layer, std::uint32_t e0, std::uint32_t e1 = 0,
                                  std::uint32_t e2 = 0) noexcept {
    return (static_cast<std::uint64_t>(layer) << 48) | (static_cast<std::uint64_t>(e0) << 32) |
           (static_cast<std::uint64_t>(e1) << 16) | static_cast<std::uint64_t>(e2);
}
constexpr std::uint32_t ngram_layer(std::uint64_t key) noexcept { return static_cast<std::uint32_t>(key >> 48); }
constexpr std::uint32_t ngram_expert(std::uint64_t key, int i) noexcept {
    return static_cast<std::uint32_t>(key >> (32 - 16 * i)) & 0xffffu;
}

struct ngram_count {
    std::uint64_t key = 0;
    std::uint32_t count = 0;
    friend bool operator==(const ngram_count&, const ngram_count&) = default;
};

class routing_accumulator {
public:
    routing_accumulator() = default;
    // Precondition (MOED_ASSERT): 1 <= n_layer <= max_routing_layers,
    // 1 <= n_expert_used <= n_expert <= max_routing_experts.
    explicit routing_accumulator(const routing_shape& shape);

    const routing_shape& shape() const noexcept { return shape_; }

    // One MoE layer's routing of `n_tokens` consecutive tokens of one sequence (that
    // sequence's rows of a batch): `probs` [n_tokens][n_expert] softmax probabilities,
    // `chosen` [n_tokens][n_expert_used] by decreasing probability. The layers of one batch
    // must arrive in order 0..n_layer-1 with the same n_tokens (as the evaluator reports
    // them); a token is counted when its last layer arrives. Out-of-range expert indices
    // are a programmer error (MOED_ASSERT).
    void add_layer(std::uint32_t layer, std::int64_t n_tokens, std::span<const float> probs,
                   std::span<const std::int32_t> chosen);
    // Adds what `other` accumulated; the shapes must be equal.
    void merge(const routing_accumulator& other);
    void clear();

    std::int64_t tokens() const noexcept { return tokens_; }
    // Sums over the counted tokens, [n_layer][n_expert].
    std::span<const double> score_sums() const noexcept { return score_; }
    std::span<const double> selection_counts() const noexcept { return selection_; }
    // The mean TCESS vector (score_sums / tokens), all layers concatenated; zeros when no
    // token was counted.
    std::vector<double> mean_scores() const;
    // Every n-gram seen, with its count, sorted by key.
    std::vector<ngram_count> ngrams() const;
    std::uint32_t ngram_order() const noexcept { return order_; }

private:
    void compact();

    routing_shape shape_;
    std::uint32_t order_ = 0;
    std::int64_t tokens_ = 0;
    std::vector<double> score_;
    std::vector<double> selection_;
    // Top-1 expert of the current batch's tokens in the last order_-1 layers, as a ring
    // indexed by layer % order_ ([order_][n_tokens]).
    std::vector<std::int32_t> top1_;
    std::int64_t batch_tokens_ = 0;
    std::uint32_t next_layer_ = 0;
    // N-gram keys not yet counted, and the sorted counts of the rest.
    std::vector<std::uint64_t> pending_;
    std::vector<ngram_count> counts_;
};

// Merges two key-sorted count lists into one (counts of equal keys add, saturating).
std::vector<ngram_count> merge_counts(std::span<const ngram_count> a, std::span<const ngram_count> b);

}  // namespace moed::scheduler
