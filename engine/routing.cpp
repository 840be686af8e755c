#include "engine/routing.h"

#include <algorithm>
#include <cmath>

#include "common/assert.h"
#include "kernels/cpu/ops.h"

namespace moed::engine {

namespace {

// The smallest sum llama.cpp divides renormalised weights by (the smallest normal f16).
constexpr float min_weight_sum = 6.103515625e-5f;

bool plain_softmax(const routing_config& rc) {
    return rc.gating != gating_kind::sigmoid && !rc.selection_bias && rc.n_group == 0;
}

// Scratch layout: gate [n], selection [n], a second selection [n], group scores [n_group],
// group flags [n_group].
struct scratch_view {
    float* gate;
    float* selection;
    float* spare;
    float* group_score;
    float* group_used;
};

scratch_view split(float* scratch, const routing_config& rc, int n) {
    return {scratch, scratch + n, scratch + 2 * n, scratch + 3 * n, scratch + 3 * n + rc.n_group};
}

// The gating's scores of `logits` into `gate`.
void gate_scores(const routing_config& rc, const float* logits, float* gate, int n) {
    if (rc.gating == gating_kind::sigmoid) {
        // As ggml_vec_sigmoid_f32: 1 / (1 + expf(-x)).
        for (int e = 0; e < n; ++e) gate[e] = 1.0f / (1.0f + std::exp(-logits[e]));
        return;
    }
    std::copy_n(logits, n, gate);
    kernels::softmax(gate, n);
}

// Keeps the n_group_used best groups of `selection` (a group scores the sum of its two best
// values, as ggml's top-2 and sum_rows give it) and sets every other expert to -inf.
// Returns the experts left with a finite value.
int keep_best_groups(const routing_config& rc, float* selection, int n, const scratch_view& s) {
    const int groups = static_cast<int>(rc.n_group);
    const int per_group = n / groups;
    for (int g = 0; g < groups; ++g) {
        const float* v = selection + g * per_group;
        float best = -INFINITY, second = -INFINITY;
        for (int i = 0; i < per_group; ++i) {
            if (v[i] > best) {
                second = best;
                best = v[i];
            } else if (v[i] > second) {
                second = v[i];
            }
        }
        s.group_score[g] = best + second;
        s.group_used[g] = 0.0f;
    }
    // The best n_group_used groups, the lower index first on ties.
    for (std::uint32_t j = 0; j < rc.n_group_used; ++j) {
        int pick = -1;
        for (int g = 0; g < groups; ++g) {
            if (s.group_used[g] != 0.0f) continue;
            if (pick < 0 || s.group_score[g] > s.group_score[pick]) pick = g;
        }
        s.group_used[pick] = 1.0f;
    }
    int finite = 0;
    for (int e = 0; e < n; ++e) {
        if (s.group_used[e / per_group] == 0.0f) selection[e] = -INFINITY;
        if (selection[e] != -INFINITY) ++finite;
    }
    return finite;
}

// The gating's scores, the selection (scores + bias, best groups only) and the
// distribution into `scores` (see routing_distribution).
void distribution(const routing_config& rc, float* scores, const float* selection_bias, int n, const scratch_view& s) {
    if (rc.gating == gating_kind::softmax_chosen) std::copy_n(scores, n, s.selection);  // the logits rank
    gate_scores(rc, scores, s.gate, n);
    if (plain_softmax(rc)) {
        std::copy_n(s.gate, n, scores);
        if (rc.gating == gating_kind::softmax) std::copy_n(s.gate, n, s.selection);
        return;
    }
    for (int e = 0; e < n; ++e) s.selection[e] = selection_bias != nullptr ? s.gate[e] + selection_bias[e] : s.gate[e];
    std::copy_n(s.selection, n, s.spare);
    if (rc.n_group > 0) keep_best_groups(rc, s.spare, n, s);
    double sum = 0.0;
    for (int e = 0; e < n; ++e) {
        scores[e] = std::max(s.spare[e], 0.0f);  // -inf (outside the groups) becomes 0
        sum += static_cast<double>(scores[e]);
    }
    if (sum > 0.0) {
        for (int e = 0; e < n; ++e) scores[e] = static_cast<float>(static_cast<double>(scores[e]) / sum);
    } else {
        std::fill_n(scores, n, 1.0f / static_cast<float>(n));
    }
    if (rc.n_group > 0) std::copy_n(s.spare, n, s.selection);
}

}  // namespace

std::size_t routing_scratch_floats(const routing_config& rc, std::uint32_t n_expert) noexcept {
    return 3 * static_cast<std::size_t>(n_expert) + 2 * static_cast<std::size_t>(rc.n_group);
}

void routing_distribution(const routing_config& rc, float* scores, const float* selection_bias, int n_expert,
                          float* scratch) {
    distribution(rc, scores, selection_bias, n_expert, split(scratch, rc, n_expert));
}

void route_token(const routing_config& rc, float* scores, const float* selection_bias, int n_expert, int k,
                 const std::uint8_t* allowed, std::int32_t* chosen, float* weights, float* scratch) {
    MOED_ASSERT(k > 0 && k <= n_expert);
    // softmax_chosen ranks and weighs by the logits: no selection bias or groups with it.
    MOED_ASSERT(rc.gating != gating_kind::softmax_chosen || plain_softmax(rc));
    const int n = n_expert;
    const scratch_view s = split(scratch, rc, n);
    distribution(rc, scores, selection_bias, n, s);
    // s.selection is what the top-k ranks: the logits (softmax_chosen), the probabilities
    // (plain softmax), or the biased scores within the best groups.
    if (allowed != nullptr) {
        if (rc.n_group > 0) {
            // Groups chosen among the allowed experts, unless that leaves fewer than k.
            for (int e = 0; e < n; ++e) {
                const float v = selection_bias != nullptr ? s.gate[e] + selection_bias[e] : s.gate[e];
                s.selection[e] = allowed[e] != 0 ? v : -INFINITY;
            }
            std::copy_n(s.selection, n, s.spare);
            if (keep_best_groups(rc, s.spare, n, s) >= k) std::copy_n(s.spare, n, s.selection);
        } else {
            for (int e = 0; e < n; ++e) {
                if (allowed[e] == 0) s.selection[e] = -INFINITY;
            }
        }
    }
    kernels::top_k_routing(s.selection, n, k, chosen, weights);
    if (rc.gating == gating_kind::softmax_chosen) {
        // A softmax over the chosen logits (k values: ggml's scalar loop, as the reference).
        for (int j = 0; j < k; ++j) weights[j] = s.selection[chosen[j]];
        kernels::reference::softmax(weights, k);
    } else {
        for (int j = 0; j < k; ++j) weights[j] = s.gate[chosen[j]];
        if (rc.normalize) {
            double sum = 0.0;  // as ggml_sum_rows: in double, rounded to float
            for (int j = 0; j < k; ++j) sum += static_cast<double>(weights[j]);
            const float total = std::max(static_cast<float>(sum), min_weight_sum);
            for (int j = 0; j < k; ++j) weights[j] = weights[j] / total;
        }
    }
    if (rc.scale != 1.0f) {
        for (int j = 0; j < k; ++j) weights[j] = weights[j] * rc.scale;
    }
}

}  // namespace moed::engine
