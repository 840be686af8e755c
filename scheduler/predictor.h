// Which experts will the next layers and tokens need? The expert predictor combines five
// sources, each a distribution over one target layer's experts:
//   lookahead     the routers of layers L..L+depth-1 applied to the residual stream
//                 entering layer j (the engine's lookahead rows); predicts layer L from
//                 layer j = L-d+1, "distance d" (d = 1: the layer's own router on the stream
//                 before attention).
//   reuse         per-sequence history: the experts this sequence used at layer L over its
//                 last tokens, weight decay^(j-1) for the token j back (decay 0: only the
//                 previous token).
//   coactivation  cross-layer statistics learned online: P(e at L | e' at L-d), applied to
//                 the experts this token chose at layer L-d (the last layer it knows).
//   profile       a task profile's per-layer scores (TCESS), supplied from outside.
//   frequency     every sequence's decayed usage of layer L's experts (the fallback prior).
// Distances: d >= 1 means "the token has been computed up to layer L-d and the lookahead of
// layer L-d+1 is known" (what the engine knows at the start of layer L-d+1); d = 0 means
// "nothing of this token is known yet" (the next token, e.g. for an eviction decision about
// a layer the current token has passed).
//
// The combination: one mixture p = sum_s w_s * p_s over the sources present, with the
// weight vector w chosen per (target layer, distance, profile on/off) from a fixed grid on
// the simplex (step 1/grid_steps, so every single source is one of its vertices) by
// following the leader: each learning sample scores every grid point by its hits in the top
// k and top 2k (k = n_expert_used) on the experts the router then chose. Predictions use the
// best single source so far (a vertex of the grid; ties go to lookahead, then coactivation,
// reuse, profile, frequency), unless a mixture has at least as many hits at k and at 2k and
// more in all by a margin (mix_margin), then the best such mixture. So the combination
// tracks the best single source at each layer and distance, and mixes in history only where
// mixing measurably raises the hits; a fixed sum that lets reuse outvote the router cannot
// happen. The probability per expert is calibrated the same way: hit rates of the
// leader's mixture per score bucket, learned online, map a mixture score to P(chosen).
//
// Threads: not thread-safe; one owner (the engine thread, or a replay). Every buffer is
// allocated in the constructor; observe_* and predict never allocate.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

namespace moed::scheduler {

enum class prediction_source : std::uint8_t { lookahead = 0, reuse = 1, coactivation = 2, profile = 3, frequency = 4 };
inline constexpr std::size_t n_prediction_sources = 5;
const char* source_name(prediction_source s) noexcept;

struct predictor_config {
    std::uint32_t n_layer = 0;
    std::uint32_t n_expert = 0;
    std::uint32_t n_expert_used = 0;
    std::uint32_t lookahead_depth = 0;  // rows in each observe_lookahead block (0: none)
    std::uint32_t max_distance = 4;     // distances 0..max_distance are learned and predicted
    std::uint32_t max_sequences = 1;    // history slots: slot ids are 0..max_sequences-1
    float reuse_decay = 0.5f;
    // Half-life of the frequency source, in tokens.
    float frequency_half_life_tokens = 512.0f;
    // Grid of mixture weights: multiples of 1/grid_steps summing to 1 (grid_steps 4 and 5
    // sources: 70 points). 0 disables learning: the weights stay at the fixed default.
    std::uint32_t grid_steps = 4;
    // Learn from one token in this many per sequence (the learning step costs about
    // grid points x n_expert x n_expert_used per layer and distance; large models sample).
    std::uint32_t learn_every = 1;
    // A mixture replaces the best single source only when it has, so far, at least as many
    // hits in the top k and in the top 2k, and more in all by this fraction of the chosen
    // experts seen (0.002: 0.2 points of recall), and by at least the square root of that
    // count. In-sample gains smaller than that are mostly noise, and a single source that is
    // as good is the safer prediction.
    float mix_margin = 0.002f;
};

// Limits on the configuration (named so a bad trace header fails clearly).
inline constexpr std::uint32_t predictor_experts_max = 1024;
inline constexpr std::uint32_t predictor_layers_max = 1024;
inline constexpr std::uint32_t predictor_distance_max = 8;
inline constexpr std::uint32_t predictor_sequences_max = 4096;

class expert_predictor {
public:
    // Asserts the configuration is within the limits above (callers validate input first).
    explicit expert_predictor(const predictor_config& config);

    const predictor_config& config() const noexcept { return config_; }

    // Per-layer task profile scores [n_layer * n_expert] (any non-negative scale; each layer
    // is normalised); empty clears it.
    void set_profile(std::span<const float> scores);
    bool has_profile() const noexcept { return has_profile_; }

    // A new sequence takes `slot`: its reuse history and known layers are cleared.
    void reset_sequence(std::uint32_t slot);

    // The lookahead rows computed at the start of `layer` for the token at `pos` of the
    // sequence in `slot`: [lookahead_depth][n_expert], row r predicting layer layer + r.
    void observe_lookahead(std::uint32_t slot, std::int64_t pos, std::uint32_t layer, std::span<const float> rows);
    // The experts the router chose at `layer` for that token. Learns (mixture weights,
    // calibration, coactivation, frequency), then updates the sequence's reuse history.
    // Tokens of one slot must arrive in increasing position, layers in increasing order.
    void observe_routing(std::uint32_t slot, std::int64_t pos, std::uint32_t layer, std::span<const std::int32_t> chosen);

    // The combined prediction for `layer` of the token at `pos` given what is known at
    // `distance` (see the file comment): scores [n_expert] (a distribution, the ranking) and,
    // if `probs` is not empty, each expert's calibrated probability of being chosen.
    void predict(std::uint32_t slot, std::int64_t pos, std::uint32_t layer, std::uint32_t distance,
                 std::span<float> scores, std::span<float> probs = {});
    // One source alone; false (and `out` untouched) when it has nothing to say there.
    bool predict_source(prediction_source source, std::uint32_t slot, std::int64_t pos, std::uint32_t layer,
                        std::uint32_t distance, std::span<float> out);
    // The smallest distance whose information is all known now for `layer` of the token at
    // `pos` (the routing through layer - d and, for d <= lookahead_depth, the lookahead of
    // layer - d + 1); 0 when none is.
    std::uint32_t best_distance(std::uint32_t slot, std::int64_t pos, std::uint32_t layer) const;

    // The weights the combination uses now at (layer, distance), by source.
    std::array<float, n_prediction_sources> mixture_weights(std::uint32_t layer, std::uint32_t distance) const;

private:
    struct slot_state {
        std::int64_t pos = -1;          // the token whose layers are known below
        std::uint64_t tokens = 0;       // tokens seen in this sequence
        bool learning = false;          // this token is a learning sample
        std::vector<std::int64_t> chosen_pos;    // [n_layer] position whose chosen is stored
        std::vector<std::int32_t> chosen;        // [n_layer][n_expert_used]
        std::vector<std::int64_t> lookahead_pos; // [n_layer]
        std::vector<float> lookahead;            // [n_layer][depth][n_expert]
        std::vector<float> reuse;                // [n_layer][n_expert] decayed counts
        std::vector<float> reuse_mass;           // [n_layer]
    };

    std::size_t stat_index(std::uint32_t layer, std::uint32_t distance) const noexcept;
    // Fills sources_ for (slot, pos, layer, distance); returns a bit mask of present sources.
    std::uint32_t gather(const slot_state& s, std::int64_t pos, std::uint32_t layer, std::uint32_t distance);
    void mix(std::size_t grid_point, std::uint32_t mask, std::span<float> out) const;
    void learn(const slot_state& s, std::int64_t pos, std::uint32_t layer, std::span<const std::int32_t> chosen);
    std::uint32_t choose_leader(std::size_t stat) const;
    std::size_t calibration_bucket(float score) const noexcept;

    predictor_config config_;
    std::uint32_t stride_ = 0;  // n_expert
    std::vector<slot_state> slots_;
    std::vector<float> profile_;          // [n_layer][n_expert], rows normalised
    bool has_profile_ = false;
    std::vector<float> frequency_;        // [n_layer][n_expert]
    std::vector<float> frequency_mass_;   // [n_layer]
    float frequency_keep_ = 1.0f;         // per-token decay factor
    // coactivation_[d-1][layer][a][b]: tokens with a at layer-d and b at layer.
    std::vector<float> coactivation_;
    std::vector<float> coactivation_rows_;  // [d-1][layer][a]

    // The grid (weights per source) and its per-(layer, distance, profile) hit counts.
    std::vector<std::array<float, n_prediction_sources>> grid_;
    std::vector<std::uint64_t> grid_hits_k_;   // [stat][grid]
    std::vector<std::uint64_t> grid_hits_2k_;  // [stat][grid]
    std::vector<std::uint64_t> samples_;       // [stat]
    std::vector<std::uint32_t> vertices_;      // grid indices of the single sources
    std::vector<std::uint32_t> leader_;        // [stat]
    std::vector<std::uint32_t> representative_;       // [mask][grid]
    std::vector<std::vector<std::uint32_t>> distinct_; // [mask] -> grid points to score
    std::vector<std::uint32_t> point_hits_;           // scratch: [grid][k, 2k]
    static constexpr std::size_t calibration_buckets = 24;
    std::vector<std::uint64_t> bucket_hits_;   // [stat][bucket]
    std::vector<std::uint64_t> bucket_trials_; // [stat][bucket]

    // Scratch.
    std::vector<float> sources_;  // [n_sources][n_expert]
    std::vector<float> mixed_;    // [n_expert]
    std::vector<std::uint8_t> is_chosen_;
};

// How many of `chosen` are among the k highest of `scores` (ties broken by lower expert
// index, as a stable ranking would): |top-k(scores) ∩ chosen|.
std::uint32_t hits_at_k(std::span<const float> scores, std::span<const std::int32_t> chosen, std::uint32_t k);
// hits_at_k / |chosen| (0 for no chosen).
float recall_at_k(std::span<const float> scores, std::span<const std::int32_t> chosen, std::uint32_t k);

}  // namespace moed::scheduler
