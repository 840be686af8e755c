// Eviction by predicted need: which resident expert should leave a full cache?
//
// The value of keeping expert x resident is what evicting it would cost per unit of time:
//     value(x) = reload_cost(x) / E[layer steps until x is used again]
//     E[T] = phase(x) + n_layer * (1 - p_next(x)) / max(rate(x), rate_floor)
// where phase(x) is how many layer steps remain until x's layer is next computed,
// p_next(x) the predicted probability that x is chosen at that visit (the combined
// predictor at the nearest distance available: router lookahead for layers ahead of the
// current one, history for the next token), and rate(x) the long-run probability of use per
// visit (the combined predictor with nothing of the token known: the sequence's decayed
// reuse, i.e. recency and frequency, the task profile and every sequence's frequency). This
// is Belady's rule (evict the farthest next use) with the future replaced by its
// expectation, and weighted by reload cost as in weighted caching: a big expert is worth
// keeping longer. The victim is the evictable expert with the lowest value; ties go to the
// least recently used.
//
// scored_eviction_policy is a storage::eviction_policy, so the tiered expert source can run
// it online (the scheduler pushes values with set_expert_scores, [n_layer * n_expert],
// higher = keep) and tools/trace-replay runs the same object over a recorded trace.
// Threads: as storage::eviction_policy (called under the residency table's lock).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "storage/eviction_policy.h"

namespace moed::scheduler {

struct expert_value_params {
    // The least per-visit use rate assumed: an expert no source predicts still comes back
    // eventually, and this bounds how far away "eventually" is taken to be.
    float rate_floor = 0.01f;
};

// value(x) as in the file comment; `phase_steps` >= 1 (the current layer's next visit is
// n_layer steps away once its router has run).
float expert_value(float p_next, float rate, std::uint32_t phase_steps, std::uint32_t n_layer, float reload_cost,
                   const expert_value_params& params = {});

// Evicts the evictable slot whose expert has the lowest value (set_expert_scores); ties and
// experts without a value go least recently used first. Values are looked up when a victim
// is chosen, so pushing new values costs no reordering. O(slots) per victim.
class scored_eviction_policy final : public storage::eviction_policy {
public:
    scored_eviction_policy(std::uint32_t n_layer, std::uint32_t n_expert);

    const char* name() const noexcept override { return "scored"; }
    void reset(std::uint32_t n_slots) override;
    void on_insert(std::uint32_t slot, ExpertId id) override;
    void on_access(std::uint32_t slot) override;
    void on_remove(std::uint32_t slot) override;
    void on_evictable(std::uint32_t slot, bool evictable) override;
    std::optional<std::uint32_t> choose_victim() override;
    void set_expert_scores(std::span<const float> per_expert_score) override;

    float value_of(ExpertId id) const noexcept;
    // The victim choose_victim() would return, with its value (for a prefetch's decision
    // whether a candidate is worth more than what it would displace).
    std::optional<std::uint32_t> peek_victim(float& value) const;

private:
    std::uint32_t n_layer_, n_expert_;
    std::vector<float> values_;  // [n_layer * n_expert]
    struct slot_info {
        ExpertId id;
        std::uint64_t last_use = 0;
        bool occupied = false;
        bool evictable = false;
    };
    std::vector<slot_info> slots_;
    std::uint64_t tick_ = 0;
};

// Least frequently used, with counts per expert that persist across evictions (a table of
// n_layer * n_expert counters is small), ties least recently used. O(slots) per victim.
std::unique_ptr<storage::eviction_policy> make_lfu_policy(std::uint32_t n_layer, std::uint32_t n_expert);

}  // namespace moed::scheduler
