#include "scheduler/replay.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <optional>

#include "common/assert.h"
#include "storage/eviction_policy.h"

namespace moed::scheduler {

const char* policy_name(replay_policy p) noexcept {
    switch (p) {
        case replay_policy::lru: return "lru";
        case replay_policy::lfu: return "lfu";
        case replay_policy::belady: return "belady";
    }
    return "?";
}

const char* scope_name(cache_scope s) noexcept {
    switch (s) {
        case cache_scope::per_layer: return "per-layer";
        case cache_scope::global: return "global";
    }
    return "?";
}

std::uint64_t expert_bytes_of(const trace_info& info, std::uint32_t layer) noexcept {
    return layer < info.expert_bytes.size() ? info.expert_bytes[layer] : 1;
}

namespace {

constexpr std::uint64_t never = std::numeric_limits<std::uint64_t>::max();
constexpr std::int32_t not_resident = -1;

// Least frequently used, with counts per expert that persist across evictions (a table of
// n_layer * n_expert counters is small), ties least recently used. O(slots) per victim.
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

// Belady's victim: the evictable slot whose expert is next used farthest in the future
// (never used again counts as farthest; ties go to the lower slot). The replay tells it each
// slot's next use whenever the slot's expert is used or loaded.
class belady_policy final : public storage::eviction_policy {
public:
    const char* name() const noexcept override { return "belady"; }
    void reset(std::uint32_t n_slots) override {
        next_use_.assign(n_slots, never);
        evictable_.assign(n_slots, 0);
    }
    void on_insert(std::uint32_t, ExpertId) override {}
    void on_access(std::uint32_t) override {}
    void on_remove(std::uint32_t slot) override {
        evictable_[slot] = 0;
        next_use_[slot] = never;
    }
    void on_evictable(std::uint32_t slot, bool evictable) override { evictable_[slot] = evictable ? 1 : 0; }
    std::optional<std::uint32_t> choose_victim() override {
        std::optional<std::uint32_t> best;
        for (std::uint32_t s = 0; s < next_use_.size(); ++s) {
            if (!evictable_[s]) continue;
            if (!best || next_use_[s] > next_use_[*best]) best = s;
        }
        return best;
    }
    void set_next_use(std::uint32_t slot, std::uint64_t step) { next_use_[slot] = step; }

private:
    std::vector<std::uint64_t> next_use_;
    std::vector<std::uint8_t> evictable_;
};

struct cache {
    std::uint32_t n_slots = 0;
    std::vector<std::uint32_t> free_slots;
    std::vector<std::uint32_t> expert_in;  // expert index (layer * n_expert + e) per slot
    std::vector<std::uint8_t> occupied;
    std::unique_ptr<storage::eviction_policy> policy;
    belady_policy* belady = nullptr;  // == policy.get() for belady
};

class simulator {
public:
    simulator(const trace_data& trace, std::span<const decode_token> order, const replay_options& options)
        : trace_(trace), order_(order), options_(options), info_(trace.info), ne_(info_.n_expert),
          nl_(info_.n_layer), k_(info_.n_expert_used) {}

    result<replay_result> run();

private:
    std::size_t index_of(std::uint32_t layer, std::int32_t e) const noexcept {
        return static_cast<std::size_t>(layer) * ne_ + static_cast<std::size_t>(e);
    }
    cache& cache_of(std::uint32_t layer) { return caches_[cache_of_layer_[layer]]; }
    result<void> setup();
    void compute_next_uses();
    std::optional<std::uint32_t> take_slot(cache& c);
    void evict(cache& c, std::uint32_t slot);
    void load(cache& c, std::uint32_t slot, std::size_t x);
    result<void> demand(std::uint64_t step, const trace_record& rec);

    const trace_data& trace_;
    std::span<const decode_token> order_;
    const replay_options& options_;
    const trace_info& info_;
    std::uint32_t ne_, nl_, k_;
    std::vector<cache> caches_;
    std::vector<std::uint32_t> cache_of_layer_;
    std::vector<std::int32_t> where_;       // slot per expert index, or not_resident
    std::vector<std::uint64_t> next_use_;   // [step][k]: the step each chosen expert is next used
    replay_result out_;

};

result<void> simulator::setup() {
    const storage::slot_classes& classes = options_.classes;
    const bool per_layer = options_.scope == cache_scope::per_layer;
    // The slots of each cache, and which cache each layer uses.
    std::vector<std::uint32_t> sizes;
    cache_of_layer_.assign(nl_, 0);
    if (classes.n_classes() == 0) {
        const std::uint32_t n_caches = per_layer ? nl_ : 1;
        sizes.assign(n_caches, options_.slots / n_caches);
        if (per_layer) {
            for (std::uint32_t l = 0; l < nl_; ++l) cache_of_layer_[l] = l;
        }
    } else {
        if (classes.n_layer() != nl_) {
            return make_error(errc::invalid_argument, "replay: slot classes made for {} layers, the trace has {}",
                              classes.n_layer(), nl_);
        }
        for (std::uint32_t l = 0; l < nl_; ++l) {
            const storage::slot_class& c = classes[classes.class_of_layer(l)];
            cache_of_layer_[l] = per_layer ? l : classes.class_of_layer(l);
            if (per_layer) sizes.push_back(c.n_slots / c.n_layer);
        }
        if (!per_layer) {
            for (const storage::slot_class& c : classes.classes()) sizes.push_back(c.n_slots);
        }
    }
    const std::uint32_t total = classes.n_classes() == 0 ? options_.slots : classes.n_slots();
    for (std::uint32_t per_cache : sizes) {
        if (per_cache < k_) {
            return make_error(errc::invalid_argument,
                              "replay: {} slots give each of {} {} caches {} slots, fewer than the {} experts a layer uses",
                              total, sizes.size(), scope_name(options_.scope), per_cache, k_);
        }
    }
    caches_.resize(sizes.size());
    for (std::size_t i = 0; i < caches_.size(); ++i) {
        cache& c = caches_[i];
        const std::uint32_t per_cache = sizes[i];
        c.n_slots = per_cache;
        c.free_slots.resize(per_cache);
        for (std::uint32_t s = 0; s < per_cache; ++s) c.free_slots[s] = per_cache - 1 - s;  // slot 0 first
        c.expert_in.assign(per_cache, 0);
        c.occupied.assign(per_cache, 0);
        switch (options_.policy) {
            case replay_policy::lru: c.policy = storage::make_lru_policy(); break;
            case replay_policy::lfu: c.policy = std::make_unique<lfu_policy>(nl_, ne_); break;
            case replay_policy::belady: {
                auto p = std::make_unique<belady_policy>();
                c.belady = p.get();
                c.policy = std::move(p);
                break;
            }
        }
        c.policy->reset(per_cache);
    }
    where_.assign(static_cast<std::size_t>(nl_) * ne_, not_resident);

    if (options_.policy == replay_policy::belady) compute_next_uses();
    return {};
}

void simulator::compute_next_uses() {
    std::size_t n_steps = 0;
    for (const decode_token& t : order_) n_steps += t.layers.size();
    next_use_.assign(n_steps * k_, never);
    std::vector<std::uint64_t> seen(static_cast<std::size_t>(nl_) * ne_, never);
    std::uint64_t step = n_steps;
    for (std::size_t t = order_.size(); t-- > 0;) {
        const auto& layers = order_[t].layers;
        for (std::size_t i = layers.size(); i-- > 0;) {
            --step;
            const trace_record& rec = trace_.records[layers[i]];
            for (std::uint32_t c = 0; c < k_; ++c) {
                const std::size_t x = index_of(rec.layer, rec.chosen[c]);
                next_use_[step * k_ + c] = seen[x];
            }
            for (std::uint32_t c = 0; c < k_; ++c) seen[index_of(rec.layer, rec.chosen[c])] = step;
        }
    }
}

std::optional<std::uint32_t> simulator::take_slot(cache& c) {
    if (!c.free_slots.empty()) {
        const std::uint32_t s = c.free_slots.back();
        c.free_slots.pop_back();
        return s;
    }
    const std::optional<std::uint32_t> victim = c.policy->choose_victim();
    if (!victim) return std::nullopt;
    evict(c, *victim);
    c.free_slots.pop_back();  // evict() returned it to the free list
    return victim;
}

void simulator::evict(cache& c, std::uint32_t slot) {
    MOED_ASSERT(c.occupied[slot]);
    c.policy->on_remove(slot);
    const std::size_t x = c.expert_in[slot];
    where_[x] = not_resident;
    c.occupied[slot] = 0;
    c.free_slots.push_back(slot);
}

void simulator::load(cache& c, std::uint32_t slot, std::size_t x) {
    const auto layer = static_cast<std::uint32_t>(x / ne_);
    c.expert_in[slot] = static_cast<std::uint32_t>(x);
    c.occupied[slot] = 1;
    where_[x] = static_cast<std::int32_t>(slot);
    c.policy->on_insert(slot, ExpertId{layer, static_cast<std::uint32_t>(x % ne_)});
    ++out_.demand_misses;
    out_.demand_bytes += expert_bytes_of(info_, layer);
}

result<void> simulator::demand(std::uint64_t step, const trace_record& rec) {
    cache& c = cache_of(rec.layer);
    ++out_.steps;
    out_.accesses += k_;
    // Pin what is resident first, so a miss cannot pick another of this layer's experts.
    for (std::uint32_t i = 0; i < k_; ++i) {
        const std::size_t x = index_of(rec.layer, rec.chosen[i]);
        const std::int32_t where = where_[x];
        if (where == not_resident) continue;
        const auto slot = static_cast<std::uint32_t>(where);
        c.policy->on_access(slot);
        c.policy->on_evictable(slot, false);
        if (c.belady) c.belady->set_next_use(slot, next_use_[step * k_ + i]);
    }
    for (std::uint32_t i = 0; i < k_; ++i) {
        const std::size_t x = index_of(rec.layer, rec.chosen[i]);
        if (where_[x] != not_resident) continue;
        const std::optional<std::uint32_t> slot = take_slot(c);
        if (!slot) return make_error(errc::internal, "replay: no slot for a demand load (every slot held)");
        load(c, *slot, x);
        if (c.belady) c.belady->set_next_use(*slot, next_use_[step * k_ + i]);
    }
    for (std::uint32_t i = 0; i < k_; ++i) {
        c.policy->on_evictable(static_cast<std::uint32_t>(where_[index_of(rec.layer, rec.chosen[i])]), true);
    }
    return {};
}

result<replay_result> simulator::run() {
    MOED_TRY(setup());
    std::uint64_t step = 0;
    for (const decode_token& token : order_) {
        for (std::size_t idx : token.layers) {
            MOED_TRY(demand(step, trace_.records[idx]));
            ++step;
        }
    }
    return out_;
}

}  // namespace

result<replay_result> replay_trace(const trace_data& trace, std::span<const decode_token> order,
                                   const replay_options& options) {
    MOED_TRY(validate_trace(trace));
    simulator sim(trace, order, options);
    return sim.run();
}

}  // namespace moed::scheduler
