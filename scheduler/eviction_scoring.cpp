#include "scheduler/eviction_scoring.h"

#include <algorithm>
#include <limits>

#include "common/assert.h"

namespace moed::scheduler {

float expert_value(float p_next, float rate, std::uint32_t phase_steps, std::uint32_t n_layer, float reload_cost,
                   const expert_value_params& params) {
    const float p = std::clamp(p_next, 0.0f, 1.0f);
    const float r = std::max(rate, params.rate_floor);
    const float expected_steps =
        static_cast<float>(std::max<std::uint32_t>(phase_steps, 1)) + static_cast<float>(n_layer) * (1.0f - p) / r;
    return reload_cost / expected_steps;
}

scored_eviction_policy::scored_eviction_policy(std::uint32_t n_layer, std::uint32_t n_expert)
    : n_layer_(n_layer), n_expert_(n_expert), values_(static_cast<std::size_t>(n_layer) * n_expert, 0.0f) {
    MOED_ASSERT(n_layer > 0 && n_expert > 0);
}

void scored_eviction_policy::reset(std::uint32_t n_slots) {
    slots_.assign(n_slots, slot_info{});
    tick_ = 0;
}

void scored_eviction_policy::on_insert(std::uint32_t slot, ExpertId id) {
    MOED_ASSERT(slot < slots_.size() && id.layer < n_layer_ && id.expert < n_expert_);
    slot_info& s = slots_[slot];
    s.id = id;
    s.occupied = true;
    s.last_use = ++tick_;
}

void scored_eviction_policy::on_access(std::uint32_t slot) {
    MOED_ASSERT(slot < slots_.size());
    slots_[slot].last_use = ++tick_;
}

void scored_eviction_policy::on_remove(std::uint32_t slot) {
    MOED_ASSERT(slot < slots_.size());
    slots_[slot] = slot_info{};
}

void scored_eviction_policy::on_evictable(std::uint32_t slot, bool evictable) {
    MOED_ASSERT(slot < slots_.size());
    slots_[slot].evictable = evictable;
    // As in LRU: a release is the end of a use.
    if (evictable) slots_[slot].last_use = ++tick_;
}

void scored_eviction_policy::set_expert_scores(std::span<const float> per_expert_score) {
    MOED_ASSERT(per_expert_score.size() == values_.size());
    std::copy(per_expert_score.begin(), per_expert_score.end(), values_.begin());
}

float scored_eviction_policy::value_of(ExpertId id) const noexcept {
    return values_[static_cast<std::size_t>(id.layer) * n_expert_ + id.expert];
}

std::optional<std::uint32_t> scored_eviction_policy::peek_victim(float& value) const {
    std::optional<std::uint32_t> best;
    float best_value = std::numeric_limits<float>::infinity();
    std::uint64_t best_use = 0;
    for (std::uint32_t s = 0; s < slots_.size(); ++s) {
        const slot_info& info = slots_[s];
        if (!info.occupied || !info.evictable) continue;
        const float v = value_of(info.id);
        if (!best || v < best_value || (v == best_value && info.last_use < best_use)) {
            best = s;
            best_value = v;
            best_use = info.last_use;
        }
    }
    value = best_value;
    return best;
}

std::optional<std::uint32_t> scored_eviction_policy::choose_victim() {
    float unused = 0.0f;
    return peek_victim(unused);
}

namespace {

class lfu_policy final : public storage::eviction_policy {
public:
    lfu_policy(std::uint32_t n_layer, std::uint32_t n_expert)
        : n_expert_(n_expert), counts_(static_cast<std::size_t>(n_layer) * n_expert, 0) {}

    const char* name() const noexcept override { return "lfu"; }
    void reset(std::uint32_t n_slots) override {
        slots_.assign(n_slots, slot_info{});
        tick_ = 0;
    }
    void on_insert(std::uint32_t slot, ExpertId id) override {
        MOED_ASSERT(slot < slots_.size());
        const std::size_t index = static_cast<std::size_t>(id.layer) * n_expert_ + id.expert;
        MOED_ASSERT(id.expert < n_expert_ && index < counts_.size());
        slots_[slot] = slot_info{index, ++tick_, true, false};
        ++counts_[index];
    }
    void on_access(std::uint32_t slot) override {
        MOED_ASSERT(slot < slots_.size() && slots_[slot].occupied);
        ++counts_[slots_[slot].index];
        slots_[slot].last_use = ++tick_;
    }
    void on_remove(std::uint32_t slot) override {
        MOED_ASSERT(slot < slots_.size());
        slots_[slot] = slot_info{};
    }
    void on_evictable(std::uint32_t slot, bool evictable) override {
        MOED_ASSERT(slot < slots_.size());
        slots_[slot].evictable = evictable;
        if (evictable) slots_[slot].last_use = ++tick_;
    }
    std::optional<std::uint32_t> choose_victim() override {
        std::optional<std::uint32_t> best;
        for (std::uint32_t s = 0; s < slots_.size(); ++s) {
            const slot_info& info = slots_[s];
            if (!info.occupied || !info.evictable) continue;
            if (!best) {
                best = s;
                continue;
            }
            const slot_info& b = slots_[*best];
            const std::uint64_t c = counts_[info.index];
            const std::uint64_t cb = counts_[b.index];
            if (c < cb || (c == cb && info.last_use < b.last_use)) best = s;
        }
        return best;
    }

private:
    struct slot_info {
        std::size_t index = 0;
        std::uint64_t last_use = 0;
        bool occupied = false;
        bool evictable = false;
    };
    std::uint32_t n_expert_;
    std::vector<std::uint64_t> counts_;
    std::vector<slot_info> slots_;
    std::uint64_t tick_ = 0;
};

}  // namespace

std::unique_ptr<storage::eviction_policy> make_lfu_policy(std::uint32_t n_layer, std::uint32_t n_expert) {
    return std::make_unique<lfu_policy>(n_layer, n_expert);
}

}  // namespace moed::scheduler
