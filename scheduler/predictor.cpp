#include "scheduler/predictor.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "common/assert.h"

namespace moed::scheduler {

namespace {

constexpr std::size_t src_lookahead = 0;
constexpr std::size_t src_reuse = 1;
constexpr std::size_t src_coactivation = 2;
constexpr std::size_t src_profile = 3;
constexpr std::size_t src_frequency = 4;

// Every mixture carries this much of the frequency source, so experts a source scores 0
// (reuse and coactivation are sparse) are ordered by how often they are used, not by index.
constexpr float tie_break_weight = 1e-4f;
// Pseudo-counts of the calibration prior (score * k) per bucket.
constexpr float calibration_prior_weight = 2.0f;
// Pseudo-count pulling P(b | a) towards b's frequency while a has been seen a few times.
constexpr float coactivation_smoothing = 1.0f;

// Normalises `v` to sum 1; false (v untouched) when its sum is not positive.
bool normalise(std::span<float> v) {
    double sum = 0.0;
    for (float x : v) sum += x > 0.0f ? x : 0.0f;
    if (!(sum > 0.0)) return false;
    const float inv = static_cast<float>(1.0 / sum);
    for (float& x : v) x = x > 0.0f ? x * inv : 0.0f;
    return true;
}

// The position of expert e in a descending ranking of `scores` (ties: lower index first).
std::uint32_t rank_of(std::span<const float> scores, std::uint32_t e) {
    const float s = scores[e];
    std::uint32_t rank = 0;
    for (std::uint32_t i = 0; i < scores.size(); ++i) {
        rank += (scores[i] > s || (scores[i] == s && i < e)) ? 1u : 0u;
    }
    return rank;
}

// Every vector of n_prediction_sources multiples of 1/steps summing to 1, in preference
// order for ties: more lookahead first, then coactivation, reuse, profile, frequency.
std::vector<std::array<float, n_prediction_sources>> make_grid(std::uint32_t steps) {
    std::vector<std::array<std::uint32_t, n_prediction_sources>> parts;
    std::array<std::uint32_t, n_prediction_sources> cur{};
    std::function<void(std::size_t, std::uint32_t)> rec = [&](std::size_t i, std::uint32_t left) {
        if (i + 1 == n_prediction_sources) {
            cur[i] = left;
            parts.push_back(cur);
            return;
        }
        for (std::uint32_t v = left + 1; v-- > 0;) {
            cur[i] = v;
            rec(i + 1, left - v);
        }
    };
    rec(0, steps);
    constexpr std::array<std::size_t, n_prediction_sources> preference = {src_lookahead, src_coactivation, src_reuse,
                                                                          src_profile, src_frequency};
    std::stable_sort(parts.begin(), parts.end(), [&](const auto& a, const auto& b) {
        for (std::size_t s : preference) {
            if (a[s] != b[s]) return a[s] > b[s];
        }
        return false;
    });
    std::vector<std::array<float, n_prediction_sources>> grid;
    for (const auto& p : parts) {
        std::array<float, n_prediction_sources> w{};
        for (std::size_t s = 0; s < n_prediction_sources; ++s) w[s] = static_cast<float>(p[s]) / static_cast<float>(steps);
        grid.push_back(w);
    }
    return grid;
}

}  // namespace

const char* source_name(prediction_source s) noexcept {
    switch (s) {
        case prediction_source::lookahead: return "lookahead";
        case prediction_source::reuse: return "reuse";
        case prediction_source::coactivation: return "coactivation";
        case prediction_source::profile: return "profile";
        case prediction_source::frequency: return "frequency";
    }
    return "?";
}

expert_predictor::expert_predictor(const predictor_config& config) : config_(config), stride_(config.n_expert) {
    MOED_ASSERT(config.n_layer > 0 && config.n_layer <= predictor_layers_max);
    MOED_ASSERT(config.n_expert > 0 && config.n_expert <= predictor_experts_max);
    MOED_ASSERT(config.n_expert_used > 0 && config.n_expert_used <= config.n_expert);
    MOED_ASSERT(config.max_distance <= predictor_distance_max);
    MOED_ASSERT(config.lookahead_depth <= predictor_distance_max);
    MOED_ASSERT(config.max_sequences > 0 && config.max_sequences <= predictor_sequences_max);
    MOED_ASSERT(config.reuse_decay >= 0.0f && config.reuse_decay < 1.0f);
    MOED_ASSERT(config.frequency_half_life_tokens > 0.0f);
    MOED_ASSERT(config.learn_every > 0);
    const std::size_t nl = config.n_layer;
    const std::size_t ne = config.n_expert;
    const std::size_t depth = config.lookahead_depth;

    slots_.resize(config.max_sequences);
    for (slot_state& s : slots_) {
        s.chosen_pos.assign(nl, -1);
        s.chosen.assign(nl * config.n_expert_used, 0);
        s.lookahead_pos.assign(nl, -1);
        s.lookahead.assign(nl * depth * ne, 0.0f);
        s.reuse.assign(nl * ne, 0.0f);
        s.reuse_mass.assign(nl, 0.0f);
    }
    profile_.assign(nl * ne, 0.0f);
    frequency_.assign(nl * ne, 0.0f);
    frequency_mass_.assign(nl, 0.0f);
    frequency_keep_ = std::exp2(-1.0f / config.frequency_half_life_tokens);
    coactivation_.assign(static_cast<std::size_t>(config.max_distance) * nl * ne * ne, 0.0f);
    coactivation_rows_.assign(static_cast<std::size_t>(config.max_distance) * nl * ne, 0.0f);

    if (config.grid_steps > 0) {
        grid_ = make_grid(config.grid_steps);
    } else {
        grid_.push_back({0.7f, 0.1f, 0.1f, 0.05f, 0.05f});
    }
    const std::size_t n_stats = nl * (config.max_distance + 1) * 2;
    grid_hits_k_.assign(n_stats * grid_.size(), 0);
    grid_hits_2k_.assign(n_stats * grid_.size(), 0);
    samples_.assign(n_stats, 0);
    for (std::uint32_t g = 0; g < grid_.size(); ++g) {
        if (std::count(grid_[g].begin(), grid_[g].end(), 1.0f) == 1) vertices_.push_back(g);
    }
    leader_.assign(n_stats, 0);
    // Per mask of present sources, each grid point's representative: the first point with
    // the same weights once absent sources are dropped and the rest renormalised.
    const std::size_t n_masks = std::size_t{1} << n_prediction_sources;
    representative_.assign(n_masks * grid_.size(), 0);
    distinct_.resize(n_masks);
    for (std::size_t mask = 0; mask < n_masks; ++mask) {
        std::vector<std::array<float, n_prediction_sources>> effective(grid_.size());
        for (std::uint32_t g = 0; g < grid_.size(); ++g) {
            float total = 0.0f;
            for (std::size_t src = 0; src < n_prediction_sources; ++src) total += (mask >> src) & 1u ? grid_[g][src] : 0.0f;
            for (std::size_t src = 0; src < n_prediction_sources; ++src) {
                const bool present = (mask >> src) & 1u;
                effective[g][src] = total > 0.0f ? (present ? grid_[g][src] / total : 0.0f)
                                                 : (src == src_frequency ? 1.0f : 0.0f);
            }
            std::uint32_t r = g;
            for (std::uint32_t h = 0; h < g; ++h) {
                if (effective[h] == effective[g]) {
                    r = representative_[mask * grid_.size() + h];
                    break;
                }
            }
            representative_[mask * grid_.size() + g] = r;
            if (r == g) distinct_[mask].push_back(g);
        }
    }
    point_hits_.assign(2 * grid_.size(), 0);
    bucket_hits_.assign(n_stats * calibration_buckets, 0);
    bucket_trials_.assign(n_stats * calibration_buckets, 0);

    sources_.assign(n_prediction_sources * ne, 0.0f);
    mixed_.assign(ne, 0.0f);
    is_chosen_.assign(ne, 0);
}

void expert_predictor::set_profile(std::span<const float> scores) {
    if (scores.empty()) {
        has_profile_ = false;
        return;
    }
    MOED_ASSERT(scores.size() == profile_.size());
    std::copy(scores.begin(), scores.end(), profile_.begin());
    for (std::uint32_t l = 0; l < config_.n_layer; ++l) {
        std::span<float> row(profile_.data() + static_cast<std::size_t>(l) * stride_, stride_);
        // A layer the profile says nothing about predicts uniformly.
        if (!normalise(row)) std::fill(row.begin(), row.end(), 1.0f / static_cast<float>(stride_));
    }
    has_profile_ = true;
}

void expert_predictor::reset_sequence(std::uint32_t slot) {
    MOED_ASSERT(slot < slots_.size());
    slot_state& s = slots_[slot];
    s.pos = -1;
    s.tokens = 0;
    s.learning = false;
    std::fill(s.chosen_pos.begin(), s.chosen_pos.end(), -1);
    std::fill(s.lookahead_pos.begin(), s.lookahead_pos.end(), -1);
    std::fill(s.reuse.begin(), s.reuse.end(), 0.0f);
    std::fill(s.reuse_mass.begin(), s.reuse_mass.end(), 0.0f);
}

void expert_predictor::observe_lookahead(std::uint32_t slot, std::int64_t pos, std::uint32_t layer,
                                         std::span<const float> rows) {
    MOED_ASSERT(slot < slots_.size() && layer < config_.n_layer);
    const std::size_t block = static_cast<std::size_t>(config_.lookahead_depth) * stride_;
    MOED_ASSERT(rows.size() == block);
    if (block == 0) return;
    slot_state& s = slots_[slot];
    std::copy(rows.begin(), rows.end(), s.lookahead.begin() + static_cast<std::ptrdiff_t>(layer * block));
    s.lookahead_pos[layer] = pos;
}

std::size_t expert_predictor::stat_index(std::uint32_t layer, std::uint32_t distance) const noexcept {
    return (static_cast<std::size_t>(layer) * (config_.max_distance + 1) + distance) * 2 + (has_profile_ ? 1 : 0);
}

std::uint32_t expert_predictor::gather(const slot_state& s, std::int64_t pos, std::uint32_t layer,
                                       std::uint32_t distance) {
    const std::size_t ne = stride_;
    auto row = [&](std::size_t src) { return std::span<float>(sources_.data() + src * ne, ne); };
    std::uint32_t mask = 0;

    // Frequency: always present (uniform before anything was seen).
    {
        auto out = row(src_frequency);
        const float* f = frequency_.data() + static_cast<std::size_t>(layer) * ne;
        std::copy(f, f + ne, out.begin());
        if (!normalise(out)) std::fill(out.begin(), out.end(), 1.0f / static_cast<float>(ne));
        mask |= 1u << src_frequency;
    }
    if (distance >= 1 && distance <= config_.lookahead_depth && layer + 1 >= distance) {
        const std::uint32_t j = layer + 1 - distance;
        if (s.lookahead_pos[j] == pos) {
            const float* src = s.lookahead.data() +
                               (static_cast<std::size_t>(j) * config_.lookahead_depth + (distance - 1)) * ne;
            auto out = row(src_lookahead);
            std::copy(src, src + ne, out.begin());
            if (normalise(out)) mask |= 1u << src_lookahead;
        }
    }
    if (distance >= 1 && distance <= config_.max_distance && layer >= distance) {
        const std::uint32_t from = layer - distance;
        if (s.chosen_pos[from] == pos) {
            auto out = row(src_coactivation);
            std::fill(out.begin(), out.end(), 0.0f);
            const std::size_t base = (static_cast<std::size_t>(distance - 1) * config_.n_layer + layer) * ne;
            const float* freq = row(src_frequency).data();
            for (std::uint32_t i = 0; i < config_.n_expert_used; ++i) {
                const auto a = static_cast<std::size_t>(s.chosen[from * config_.n_expert_used + i]);
                const float n_a = coactivation_rows_[base + a];
                const float* c = coactivation_.data() + (base + a) * ne;
                const float inv = 1.0f / (n_a + coactivation_smoothing);
                for (std::size_t b = 0; b < ne; ++b) out[b] += (c[b] + coactivation_smoothing * freq[b]) * inv;
            }
            if (normalise(out)) mask |= 1u << src_coactivation;
        }
    }
    if (s.reuse_mass[layer] > 0.0f) {
        auto out = row(src_reuse);
        const float* r = s.reuse.data() + static_cast<std::size_t>(layer) * ne;
        std::copy(r, r + ne, out.begin());
        if (normalise(out)) mask |= 1u << src_reuse;
    }
    if (has_profile_) {
        auto out = row(src_profile);
        const float* p = profile_.data() + static_cast<std::size_t>(layer) * ne;
        std::copy(p, p + ne, out.begin());
        mask |= 1u << src_profile;
    }
    return mask;
}

void expert_predictor::mix(std::size_t grid_point, std::uint32_t mask, std::span<float> out) const {
    const auto& w = grid_[grid_point];
    float total = 0.0f;
    for (std::size_t s = 0; s < n_prediction_sources; ++s) {
        if (mask & (1u << s)) total += w[s];
    }
    const std::size_t ne = stride_;
    const float* freq = sources_.data() + src_frequency * ne;
    if (!(total > 0.0f)) {
        // Only absent sources carry weight here: fall back to the frequency prior.
        std::copy(freq, freq + ne, out.begin());
        return;
    }
    const float scale = (1.0f - tie_break_weight) / total;
    for (std::size_t e = 0; e < ne; ++e) out[e] = tie_break_weight * freq[e];
    for (std::size_t s = 0; s < n_prediction_sources; ++s) {
        if (!(mask & (1u << s)) || w[s] == 0.0f) continue;
        const float ws = w[s] * scale;
        const float* src = sources_.data() + s * ne;
        for (std::size_t e = 0; e < ne; ++e) out[e] += ws * src[e];
    }
}

std::size_t expert_predictor::calibration_bucket(float score) const noexcept {
    const float x = std::sqrt(std::clamp(score, 0.0f, 1.0f)) * static_cast<float>(calibration_buckets);
    return std::min(calibration_buckets - 1, static_cast<std::size_t>(x));
}

void expert_predictor::learn(const slot_state& s, std::int64_t pos, std::uint32_t layer,
                             std::span<const std::int32_t> chosen) {
    const std::uint32_t k = config_.n_expert_used;
    const std::size_t n_grid = grid_.size();
    std::span<float> mixed(mixed_);
    for (std::uint32_t d = 0; d <= config_.max_distance; ++d) {
        const std::uint32_t mask = gather(s, pos, layer, d);
        const std::size_t stat = stat_index(layer, d);

        // Calibration of the mixture predictions use now.
        mix(leader_[stat], mask, mixed);
        for (std::uint32_t e = 0; e < stride_; ++e) {
            const std::size_t b = stat * calibration_buckets + calibration_bucket(mixed[e]);
            ++bucket_trials_[b];
            bucket_hits_[b] += is_chosen_[e];
        }

        if (n_grid > 1) {
            std::uint64_t* hits_k = grid_hits_k_.data() + stat * n_grid;
            std::uint64_t* hits_2k = grid_hits_2k_.data() + stat * n_grid;
            // Grid points that differ only in absent sources mix alike: score one of each.
            const std::uint32_t* rep = representative_.data() + static_cast<std::size_t>(mask) * n_grid;
            for (std::uint32_t g : distinct_[mask]) {
                mix(g, mask, mixed);
                std::uint32_t hk = 0, h2k = 0;
                for (std::int32_t e : chosen) {
                    const std::uint32_t r = rank_of(mixed, static_cast<std::uint32_t>(e));
                    hk += r < k ? 1u : 0u;
                    h2k += r < 2 * k ? 1u : 0u;
                }
                point_hits_[2 * g] = hk;
                point_hits_[2 * g + 1] = h2k;
            }
            for (std::size_t g = 0; g < n_grid; ++g) {
                hits_k[g] += point_hits_[2 * rep[g]];
                hits_2k[g] += point_hits_[2 * rep[g] + 1];
            }
            ++samples_[stat];
            leader_[stat] = choose_leader(stat);
        }
    }
}

std::uint32_t expert_predictor::choose_leader(std::size_t stat) const {
    const std::size_t n_grid = grid_.size();
    const std::uint64_t* hits_k = grid_hits_k_.data() + stat * n_grid;
    const std::uint64_t* hits_2k = grid_hits_2k_.data() + stat * n_grid;
    auto total = [&](std::uint32_t g) { return hits_k[g] + hits_2k[g]; };
    // The best single source; ties keep the earlier (preferred) one.
    std::uint32_t best_vertex = vertices_.front();
    for (std::uint32_t v : vertices_) {
        if (total(v) > total(best_vertex)) best_vertex = v;
    }
    // The margin also grows like the noise of a hit count (sqrt of the chosen experts seen),
    // so a mixture that led by luck over the first few hundred samples is not adopted.
    const double chosen_seen = static_cast<double>(samples_[stat]) * static_cast<double>(config_.n_expert_used);
    const double margin = std::max(static_cast<double>(config_.mix_margin) * chosen_seen, std::sqrt(chosen_seen));
    std::uint32_t leader = best_vertex;
    for (std::uint32_t g = 0; g < n_grid; ++g) {
        if (hits_k[g] < hits_k[best_vertex] || hits_2k[g] < hits_2k[best_vertex]) continue;
        if (static_cast<double>(total(g)) <= static_cast<double>(total(best_vertex)) + margin) continue;
        if (leader == best_vertex || total(g) > total(leader)) leader = g;
    }
    return leader;
}

void expert_predictor::observe_routing(std::uint32_t slot, std::int64_t pos, std::uint32_t layer,
                                       std::span<const std::int32_t> chosen) {
    MOED_ASSERT(slot < slots_.size() && layer < config_.n_layer);
    MOED_ASSERT(chosen.size() == config_.n_expert_used);
    slot_state& s = slots_[slot];
    const std::size_t ne = stride_;
    const std::uint32_t k = config_.n_expert_used;
    for (std::int32_t e : chosen) MOED_ASSERT(e >= 0 && static_cast<std::uint32_t>(e) < config_.n_expert);

    if (pos != s.pos) {
        s.pos = pos;
        ++s.tokens;
        s.learning = (s.tokens - 1) % config_.learn_every == 0;
    }
    for (std::int32_t e : chosen) is_chosen_[static_cast<std::size_t>(e)] = 1;
    if (s.learning) learn(s, pos, layer, chosen);
    for (std::int32_t e : chosen) is_chosen_[static_cast<std::size_t>(e)] = 0;

    // Coactivation with each earlier layer of this token within max_distance.
    for (std::uint32_t d = 1; d <= config_.max_distance && d <= layer; ++d) {
        const std::uint32_t from = layer - d;
        if (s.chosen_pos[from] != pos) continue;
        const std::size_t base = (static_cast<std::size_t>(d - 1) * config_.n_layer + layer) * ne;
        for (std::uint32_t i = 0; i < k; ++i) {
            const auto a = static_cast<std::size_t>(s.chosen[from * k + i]);
            coactivation_rows_[base + a] += 1.0f;
            float* c = coactivation_.data() + (base + a) * ne;
            for (std::int32_t b : chosen) c[b] += 1.0f;
        }
    }
    // Frequency, decayed once per token per layer.
    {
        float* f = frequency_.data() + static_cast<std::size_t>(layer) * ne;
        for (std::size_t e = 0; e < ne; ++e) f[e] *= frequency_keep_;
        for (std::int32_t e : chosen) f[e] += 1.0f;
        frequency_mass_[layer] = frequency_mass_[layer] * frequency_keep_ + static_cast<float>(k);
    }
    // Reuse history of the sequence.
    {
        float* r = s.reuse.data() + static_cast<std::size_t>(layer) * ne;
        for (std::size_t e = 0; e < ne; ++e) r[e] *= config_.reuse_decay;
        for (std::int32_t e : chosen) r[e] += 1.0f;
        s.reuse_mass[layer] = s.reuse_mass[layer] * config_.reuse_decay + static_cast<float>(k);
    }
    std::copy(chosen.begin(), chosen.end(), s.chosen.begin() + static_cast<std::ptrdiff_t>(layer * k));
    s.chosen_pos[layer] = pos;
}

void expert_predictor::predict(std::uint32_t slot, std::int64_t pos, std::uint32_t layer, std::uint32_t distance,
                               std::span<float> scores, std::span<float> probs) {
    MOED_ASSERT(slot < slots_.size() && layer < config_.n_layer && distance <= config_.max_distance);
    MOED_ASSERT(scores.size() == stride_ && (probs.empty() || probs.size() == stride_));
    const std::uint32_t mask = gather(slots_[slot], pos, layer, distance);
    const std::size_t stat = stat_index(layer, distance);
    mix(leader_[stat], mask, scores);
    if (probs.empty()) return;
    const float k = static_cast<float>(config_.n_expert_used);
    for (std::uint32_t e = 0; e < stride_; ++e) {
        const std::size_t b = stat * calibration_buckets + calibration_bucket(scores[e]);
        const float prior = std::min(1.0f, scores[e] * k);
        probs[e] = (static_cast<float>(bucket_hits_[b]) + calibration_prior_weight * prior) /
                   (static_cast<float>(bucket_trials_[b]) + calibration_prior_weight);
    }
}

bool expert_predictor::predict_source(prediction_source source, std::uint32_t slot, std::int64_t pos,
                                      std::uint32_t layer, std::uint32_t distance, std::span<float> out) {
    MOED_ASSERT(slot < slots_.size() && layer < config_.n_layer && distance <= config_.max_distance);
    MOED_ASSERT(out.size() == stride_);
    const std::uint32_t mask = gather(slots_[slot], pos, layer, distance);
    const auto s = static_cast<std::size_t>(source);
    if (!(mask & (1u << s))) return false;
    // The same frequency tie-break as the mixtures, so sparse sources rank their zeros alike.
    const float* src = sources_.data() + s * stride_;
    const float* freq = sources_.data() + src_frequency * stride_;
    for (std::uint32_t e = 0; e < stride_; ++e) out[e] = (1.0f - tie_break_weight) * src[e] + tie_break_weight * freq[e];
    return true;
}

std::uint32_t expert_predictor::best_distance(std::uint32_t slot, std::int64_t pos, std::uint32_t layer) const {
    MOED_ASSERT(slot < slots_.size() && layer < config_.n_layer);
    const slot_state& s = slots_[slot];
    // Distance d needs everything the mixtures for d were learned with: the routing through
    // layer - d (nothing for d > layer) and, within the lookahead depth, the lookahead of
    // layer - d + 1. After the router of layer L, layer L + 1 is at distance 2 until its
    // own lookahead arrives, not at distance 1 without it.
    for (std::uint32_t d = 1; d <= config_.max_distance; ++d) {
        const bool routed = d > layer || s.chosen_pos[layer - d] == pos;
        const bool look = d > config_.lookahead_depth || (layer + 1 >= d && s.lookahead_pos[layer + 1 - d] == pos);
        if (routed && look && (layer >= d || (d <= config_.lookahead_depth && layer + 1 >= d))) return d;
    }
    return 0;
}

std::array<float, n_prediction_sources> expert_predictor::mixture_weights(std::uint32_t layer,
                                                                          std::uint32_t distance) const {
    MOED_ASSERT(layer < config_.n_layer && distance <= config_.max_distance);
    return grid_[leader_[stat_index(layer, distance)]];
}

std::uint32_t hits_at_k(std::span<const float> scores, std::span<const std::int32_t> chosen, std::uint32_t k) {
    std::uint32_t hits = 0;
    for (std::int32_t e : chosen) {
        MOED_ASSERT(e >= 0 && static_cast<std::size_t>(e) < scores.size());
        hits += rank_of(scores, static_cast<std::uint32_t>(e)) < k ? 1u : 0u;
    }
    return hits;
}

float recall_at_k(std::span<const float> scores, std::span<const std::int32_t> chosen, std::uint32_t k) {
    if (chosen.empty()) return 0.0f;
    return static_cast<float>(hits_at_k(scores, chosen, k)) / static_cast<float>(chosen.size());
}

}  // namespace moed::scheduler
