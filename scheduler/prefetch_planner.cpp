#include "scheduler/prefetch_planner.h"

#include <algorithm>

#include "common/assert.h"

namespace moed::scheduler {

namespace {
// Lookahead rows the calibration tracks (the engine's max_lookahead_depth).
constexpr int calibration_rows = 4;
// History is kept for at most this many sequences; beyond it the map starts afresh (a caller
// that never calls forget() must not grow it without bound).
constexpr std::size_t history_sequences_max = 4096;
}  // namespace

prefetch_planner::prefetch_planner(storage::tier_control& source, std::uint32_t n_layer,
                                   std::uint32_t n_expert, std::uint32_t n_expert_used,
                                   const prefetch_planner_options& options)
    : source_(source),
      n_layer_(n_layer),
      n_expert_(n_expert),
      n_expert_used_(n_expert_used),
      options_(options),
      gate_(options.gate_options) {
    MOED_ASSERT(n_layer > 0 && n_expert > 0 && n_expert_used > 0 && n_expert_used <= n_expert);
    score_.resize(n_expert);
    order_.resize(n_expert);
    requested_.assign(static_cast<std::size_t>(n_layer) * n_expert, 0);
    seen_.assign(n_expert, 0);
    rank_.assign(static_cast<std::size_t>(calibration_rows) * n_layer * n_expert, 0);
    rank_asked_.assign(static_cast<std::size_t>(calibration_rows) * n_expert, 0);
    rank_hit_.assign(static_cast<std::size_t>(calibration_rows) * n_expert, 0);
    requests_.reserve(static_cast<std::size_t>(n_expert) * (static_cast<std::size_t>(std::max(options.depth, 0)) + 1));
}

float prefetch_planner::calibrated(int row, std::uint32_t rank, float raw) const noexcept {
    const std::size_t k = static_cast<std::size_t>(row) * n_expert_ + rank;
    const std::uint32_t asked = rank_asked_[k];
    if (asked < std::max<std::uint32_t>(options_.calibration_samples, 1)) return raw;
    return (static_cast<float>(rank_hit_[k]) + 0.5f) / (static_cast<float>(asked) + 1.0f);
}

void prefetch_planner::plan(std::uint32_t layer, std::int64_t n_tokens, std::span<const std::uint64_t> seqs,
                            int depth, std::span<const float> probs, std::vector<storage::prefetch_request>& out) {
    if (n_tokens <= 0 || layer >= n_layer_) return;
    const int rows = std::max(0, std::min(options_.depth, depth));
    const std::size_t n = static_cast<std::size_t>(n_tokens);
    MOED_ASSERT(probs.size() >= static_cast<std::size_t>(rows) * n * n_expert_);
    const std::uint32_t min_k = options_.min_per_layer;
    const std::uint64_t per_token = options_.max_per_layer > 0 ? options_.max_per_layer : 2ull * n_expert_used_;
    const std::uint64_t current_per_token = options_.max_current > 0 ? options_.max_current : n_expert_used_;
    for (int j = options_.skip_current ? 1 : 0; j < rows; ++j) {
        const auto max_k =
            static_cast<std::uint32_t>(std::min<std::uint64_t>(n_expert_, (j == 0 ? current_per_token : per_token) * n));
        const std::uint32_t target = layer + static_cast<std::uint32_t>(j);
        if (target >= n_layer_) break;
        const float* row = probs.data() + static_cast<std::size_t>(j) * n * n_expert_;
        // P(at least one token picks e), were the router's probabilities independent draws.
        for (std::uint32_t e = 0; e < n_expert_; ++e) {
            float miss = 1.0f;
            for (std::size_t t = 0; t < n; ++t) miss *= 1.0f - std::clamp(row[t * n_expert_ + e], 0.0f, 1.0f);
            score_[e] = 1.0f - miss;
        }
        for (std::uint32_t e = 0; e < n_expert_; ++e) order_[e] = e;
        std::sort(order_.begin(), order_.end(), [&](std::uint32_t a, std::uint32_t b) {
            return score_[a] != score_[b] ? score_[a] > score_[b] : a < b;
        });
        if (n == 1 && j < calibration_rows) {
            // Remember the ranking for calibration, and score by rank where it is known.
            std::uint16_t* ranks = rank_.data() + (static_cast<std::size_t>(j) * n_layer_ + target) * n_expert_;
            for (std::uint32_t r = 0; r < n_expert_; ++r) {
                const std::uint32_t e = order_[r];
                ranks[e] = static_cast<std::uint16_t>(std::min<std::uint32_t>(r + 1, 0xffff));
                score_[e] = calibrated(j, r, score_[e]);
            }
            // Measured frequencies need not fall with the rank: order by them (ties keep the
            // router's order).
            std::stable_sort(order_.begin(), order_.end(),
                             [&](std::uint32_t a, std::uint32_t b) { return score_[a] > score_[b]; });
        }
        // Once the link is measured, the gate's threshold for this distance replaces the fixed
        // one, and no expert is requested below it.
        const bool gated = options_.gate && gate_.measured();
        const float min_score =
            gated ? gate_.threshold(static_cast<std::uint64_t>(gate_.expert_bytes()), static_cast<std::uint32_t>(j))
                  : options_.min_score;
        const std::uint32_t always = gated ? 0 : std::min(min_k, max_k);
        const storage::prefetch_class cls = j <= 1 ? storage::prefetch_class::near : storage::prefetch_class::far;
        std::uint8_t* asked = requested_.data() + static_cast<std::size_t>(target) * n_expert_;
        std::fill_n(asked, n_expert_, 0);  // the newest prediction of a layer replaces the older
        for (std::uint32_t i = 0; i < max_k; ++i) {
            const std::uint32_t e = order_[i];
            if (i >= always && score_[e] < min_score) break;
            out.push_back(storage::prefetch_request{ExpertId{target, e}, cls, score_[e]});
            asked[e] = 1;
        }
    }
    // History reaches one layer past the lookahead: what each sequence used there last time.
    const std::uint32_t target = layer + static_cast<std::uint32_t>(rows);
    // The gate weighs history's fixed score like any other prediction.
    const bool history_pays = !(options_.gate && gate_.measured()) ||
                              gate_.worth(options_.history_score, static_cast<std::uint64_t>(gate_.expert_bytes()),
                                          static_cast<std::uint32_t>(rows));
    if (options_.history && history_pays && target < n_layer_ && !seqs.empty()) {
        std::uint8_t* asked = requested_.data() + static_cast<std::size_t>(target) * n_expert_;
        std::fill(seen_.begin(), seen_.end(), 0);
        for (std::uint64_t seq : seqs) {
            const auto it = history_.find(seq);
            if (it == history_.end()) continue;
            for (std::uint32_t s = 0; s < n_expert_used_; ++s) {
                const std::int32_t e = it->second[static_cast<std::size_t>(target) * n_expert_used_ + s];
                if (e < 0 || static_cast<std::uint32_t>(e) >= n_expert_ || seen_[e] != 0) continue;
                seen_[e] = 1;
                out.push_back(storage::prefetch_request{ExpertId{target, static_cast<std::uint32_t>(e)},
                                                        storage::prefetch_class::far, options_.history_score});
                asked[e] = 1;
            }
        }
    }
}

void prefetch_planner::on_layer_start(std::uint32_t layer, std::int64_t n_tokens, std::span<const std::uint64_t> seqs,
                                      int depth, std::span<const float> probs) {
    if (layer >= n_layer_) return;
    layer_events_.fetch_add(1, std::memory_order_relaxed);
    // The evaluator has told the tier that this layer begins (stale requests are gone).
    if (layer == 0 && options_.gate) {
        // Once per token: what the link did since, and the share of it prefetches may use.
        gate_.update(source_.link());
        if (gate_.measured()) {
            source_.set_prefetch_inflight_limit(gate_.inflight_budget(static_cast<std::uint32_t>(std::max(depth, 1))));
            gate_threshold_.store(gate_.threshold(static_cast<std::uint64_t>(gate_.expert_bytes()), 1),
                                  std::memory_order_relaxed);
            link_busy_.store(gate_.busy(), std::memory_order_relaxed);
            waste_factor_.store(gate_.waste_factor(), std::memory_order_relaxed);
        }
    }
    requests_.clear();
    plan(layer, n_tokens, seqs, depth, probs, requests_);
    if (requests_.empty()) return;
    double expected_used = 0.0;
    for (const storage::prefetch_request& r : requests_) expected_used += r.score;
    gate_.note_requested(expected_used, requests_.size());
    requests_sent_.fetch_add(requests_.size(), std::memory_order_relaxed);
    source_.prefetch(requests_);
}

void prefetch_planner::on_routing(std::uint32_t layer, std::int64_t n_tokens, std::span<const std::uint64_t> seqs,
                                  std::span<const std::int32_t> chosen) {
    if (layer >= n_layer_ || n_tokens <= 0) return;
    const std::size_t n = static_cast<std::size_t>(n_tokens);
    MOED_ASSERT(chosen.size() >= n * n_expert_used_);
    std::uint8_t* asked = requested_.data() + static_cast<std::size_t>(layer) * n_expert_;
    std::fill(seen_.begin(), seen_.end(), 0);
    std::uint64_t routed = 0, hit = 0;
    for (std::size_t i = 0; i < n * n_expert_used_; ++i) {
        const std::int32_t e = chosen[i];
        if (e < 0 || static_cast<std::uint32_t>(e) >= n_expert_ || seen_[e] != 0) continue;
        seen_[e] = 1;
        ++routed;
        hit += asked[e] != 0 ? 1 : 0;
    }
    std::fill_n(asked, n_expert_, 0);
    routed_.fetch_add(routed, std::memory_order_relaxed);
    // Calibration: each row's latest single-token ranking of this layer against the choice.
    for (int j = 0; j < calibration_rows; ++j) {
        std::uint16_t* ranks = rank_.data() + (static_cast<std::size_t>(j) * n_layer_ + layer) * n_expert_;
        if (n == 1) {
            for (std::uint32_t e = 0; e < n_expert_; ++e) {
                if (ranks[e] == 0) continue;
                const std::size_t k = static_cast<std::size_t>(j) * n_expert_ + (ranks[e] - 1u);
                ++rank_asked_[k];
                rank_hit_[k] += seen_[e];
            }
        }
        std::fill_n(ranks, n_expert_, 0);
    }
    predicted_routed_.fetch_add(hit, std::memory_order_relaxed);

    if (!options_.history || seqs.size() < n) return;
    if (history_.size() > history_sequences_max) history_.clear();
    for (std::size_t t = 0; t < n; ++t) {
        auto& h = history_[seqs[t]];
        if (h.empty()) h.assign(static_cast<std::size_t>(n_layer_) * n_expert_used_, -1);
        std::copy_n(chosen.data() + t * n_expert_used_, n_expert_used_,
                    h.data() + static_cast<std::size_t>(layer) * n_expert_used_);
    }
}

void prefetch_planner::forget(std::uint64_t seq) { history_.erase(seq); }

std::vector<double> prefetch_planner::rank_hit_rates(int row) const {
    std::vector<double> out(n_expert_, 0.0);
    if (row < 0 || row >= calibration_rows) return out;
    for (std::uint32_t r = 0; r < n_expert_; ++r) {
        const std::size_t k = static_cast<std::size_t>(row) * n_expert_ + r;
        if (rank_asked_[k] > 0) out[r] = static_cast<double>(rank_hit_[k]) / static_cast<double>(rank_asked_[k]);
    }
    return out;
}

prefetch_planner_stats prefetch_planner::stats() const noexcept {
    prefetch_planner_stats s;
    s.layer_events = layer_events_.load(std::memory_order_relaxed);
    s.requests = requests_sent_.load(std::memory_order_relaxed);
    s.routed = routed_.load(std::memory_order_relaxed);
    s.predicted_routed = predicted_routed_.load(std::memory_order_relaxed);
    s.recall = s.routed > 0 ? static_cast<double>(s.predicted_routed) / static_cast<double>(s.routed) : 0.0;
    s.gate_threshold = gate_threshold_.load(std::memory_order_relaxed);
    s.link_busy = link_busy_.load(std::memory_order_relaxed);
    s.waste_factor = waste_factor_.load(std::memory_order_relaxed);
    return s;
}

void add_planner_stats(const prefetch_planner_stats& s, prefetch_stats& out) {
    out.routed = s.routed;
    out.predicted_routed = s.predicted_routed;
    out.recall = s.recall;
    out.gate_threshold = s.gate_threshold;
    out.link_busy = s.link_busy;
    out.waste_factor = s.waste_factor;
}

}  // namespace moed::scheduler
