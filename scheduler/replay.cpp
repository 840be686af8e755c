#include "scheduler/replay.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <optional>

#include "common/assert.h"
#include "scheduler/expert_values.h"

namespace moed::scheduler {

const char* policy_name(replay_policy p) noexcept {
    switch (p) {
        case replay_policy::lru: return "lru";
        case replay_policy::lfu: return "lfu";
        case replay_policy::belady: return "belady";
        case replay_policy::scored: return "policy";
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
    std::vector<std::uint8_t> prefetched_unused;
    std::unique_ptr<storage::eviction_policy> policy;
    belady_policy* belady = nullptr;            // == policy.get() for belady
    scored_eviction_policy* scored = nullptr;   // == policy.get() for scored
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
    cache& cache_of(std::uint32_t layer) { return caches_[options_.scope == cache_scope::per_layer ? layer : 0]; }
    result<void> setup();
    void compute_next_uses();
    std::optional<std::uint32_t> take_slot(cache& c);
    void evict(cache& c, std::uint32_t slot);
    void load(cache& c, std::uint32_t slot, std::size_t x, bool prefetch);
    result<void> demand(std::uint64_t step, const trace_record& rec);

    // The scored policy's side.
    void start_sequence(const decode_token& token);
    void push_values(cache& c);
    void prefetch(std::uint32_t layer);

    const trace_data& trace_;
    std::span<const decode_token> order_;
    const replay_options& options_;
    const trace_info& info_;
    std::uint32_t ne_, nl_, k_;
    std::vector<cache> caches_;
    std::vector<std::int32_t> where_;       // slot per expert index, or not_resident
    std::vector<std::uint64_t> next_use_;   // [step][k]: the step each chosen expert is next used
    replay_result out_;

    std::unique_ptr<expert_predictor> predictor_;
    std::unique_ptr<expert_values> values_;
    struct candidate {
        std::uint32_t layer;
        std::uint32_t distance;
        std::int32_t expert;
        float value;
    };
    std::vector<candidate> candidates_;
};

result<void> simulator::setup() {
    const std::uint32_t n_caches = options_.scope == cache_scope::per_layer ? nl_ : 1;
    const std::uint32_t per_cache = options_.slots / n_caches;
    if (per_cache < k_) {
        return make_error(errc::invalid_argument,
                          "replay: {} slots give each of {} {} caches {} slots, fewer than the {} experts a layer uses",
                          options_.slots, n_caches, scope_name(options_.scope), per_cache, k_);
    }
    caches_.resize(n_caches);
    for (cache& c : caches_) {
        c.n_slots = per_cache;
        c.free_slots.resize(per_cache);
        for (std::uint32_t s = 0; s < per_cache; ++s) c.free_slots[s] = per_cache - 1 - s;  // slot 0 first
        c.expert_in.assign(per_cache, 0);
        c.occupied.assign(per_cache, 0);
        c.prefetched_unused.assign(per_cache, 0);
        switch (options_.policy) {
            case replay_policy::lru: c.policy = storage::make_lru_policy(); break;
            case replay_policy::lfu: c.policy = make_lfu_policy(nl_, ne_); break;
            case replay_policy::belady: {
                auto p = std::make_unique<belady_policy>();
                c.belady = p.get();
                c.policy = std::move(p);
                break;
            }
            case replay_policy::scored: {
                auto p = std::make_unique<scored_eviction_policy>(nl_, ne_);
                c.scored = p.get();
                c.policy = std::move(p);
                break;
            }
        }
        c.policy->reset(per_cache);
    }
    where_.assign(static_cast<std::size_t>(nl_) * ne_, not_resident);

    if (options_.policy == replay_policy::belady) compute_next_uses();
    if (options_.policy == replay_policy::scored) {
        predictor_config pc = options_.predictor;
        pc.n_layer = nl_;
        pc.n_expert = ne_;
        pc.n_expert_used = k_;
        pc.lookahead_depth = info_.lookahead_depth;
        pc.max_sequences = 1;
        pc.max_distance = std::max(pc.max_distance, options_.prefetch.max_distance);
        if (pc.max_distance > predictor_distance_max || pc.lookahead_depth > predictor_distance_max ||
            ne_ > predictor_experts_max || nl_ > predictor_layers_max) {
            return make_error(errc::invalid_argument, "replay: the trace or prefetch distance exceeds the predictor's limits");
        }
        predictor_ = std::make_unique<expert_predictor>(pc);
        values_ = std::make_unique<expert_values>(*predictor_, info_.expert_bytes, 1, options_.value);
        candidates_.reserve(static_cast<std::size_t>(pc.max_distance) * ne_);
    }
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
    if (c.prefetched_unused[slot]) {
        ++out_.wasted_prefetches;
        out_.wasted_prefetch_bytes += expert_bytes_of(info_, static_cast<std::uint32_t>(x / ne_));
    }
    where_[x] = not_resident;
    c.occupied[slot] = 0;
    c.prefetched_unused[slot] = 0;
    c.free_slots.push_back(slot);
}

void simulator::load(cache& c, std::uint32_t slot, std::size_t x, bool prefetch) {
    const auto layer = static_cast<std::uint32_t>(x / ne_);
    const std::uint64_t bytes = expert_bytes_of(info_, layer);
    c.expert_in[slot] = static_cast<std::uint32_t>(x);
    c.occupied[slot] = 1;
    c.prefetched_unused[slot] = prefetch ? 1 : 0;
    where_[x] = static_cast<std::int32_t>(slot);
    c.policy->on_insert(slot, ExpertId{layer, static_cast<std::uint32_t>(x % ne_)});
    if (prefetch) {
        ++out_.prefetch_loads;
        out_.prefetch_bytes += bytes;
        c.policy->on_evictable(slot, true);
    } else {
        ++out_.demand_misses;
        out_.demand_bytes += bytes;
    }
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
        if (c.prefetched_unused[slot]) {
            c.prefetched_unused[slot] = 0;
            ++out_.prefetch_used;
        }
    }
    for (std::uint32_t i = 0; i < k_; ++i) {
        const std::size_t x = index_of(rec.layer, rec.chosen[i]);
        if (where_[x] != not_resident) continue;
        const std::optional<std::uint32_t> slot = take_slot(c);
        if (!slot) return make_error(errc::internal, "replay: no slot for a demand load (every slot held)");
        load(c, *slot, x, false);
        if (c.belady) c.belady->set_next_use(*slot, next_use_[step * k_ + i]);
    }
    for (std::uint32_t i = 0; i < k_; ++i) {
        c.policy->on_evictable(static_cast<std::uint32_t>(where_[index_of(rec.layer, rec.chosen[i])]), true);
    }
    return {};
}

void simulator::start_sequence(const decode_token& token) {
    predictor_->reset_sequence(0);
    if (options_.profile_of) {
        predictor_->set_profile(options_.profile_of(token.tag));
    } else {
        predictor_->set_profile({});
    }
}

void simulator::push_values(cache& c) { c.policy->set_expert_scores(values_->values()); }

void simulator::prefetch(std::uint32_t layer) {
    const prefetch_params& pf = options_.prefetch;
    candidates_.clear();
    for (std::uint32_t d = std::max<std::uint32_t>(pf.min_distance, 1); d <= pf.max_distance; ++d) {
        const std::uint32_t target = layer + d - 1;
        if (target >= nl_) break;
        const std::size_t base = static_cast<std::size_t>(target) * ne_;
        const std::span<const float> need = values_->need(target);
        for (std::uint32_t e = 0; e < ne_; ++e) {
            if (need[e] < pf.min_probability || where_[base + e] != not_resident) continue;
            candidates_.push_back(candidate{target, d, static_cast<std::int32_t>(e), values_->value(target, e)});
        }
    }
    // Nearer layers first, then the more valuable.
    std::sort(candidates_.begin(), candidates_.end(), [](const candidate& a, const candidate& b) {
        return a.distance != b.distance ? a.distance < b.distance : a.value > b.value;
    });
    std::uint32_t issued = 0;
    std::int32_t pushed_for = -1;
    for (const candidate& cand : candidates_) {
        if (issued >= pf.max_per_step) break;
        cache& c = cache_of(cand.layer);
        const auto cache_id = static_cast<std::int32_t>(&c - caches_.data());
        if (pushed_for != cache_id) {
            push_values(c);
            pushed_for = cache_id;
        }
        std::optional<std::uint32_t> slot;
        if (!c.free_slots.empty()) {
            slot = take_slot(c);
        } else {
            float victim_value = 0.0f;
            const std::optional<std::uint32_t> victim = c.scored->peek_victim(victim_value);
            if (!victim || !(cand.value > pf.value_margin * victim_value)) continue;
            slot = take_slot(c);
        }
        if (!slot) continue;
        load(c, *slot, index_of(cand.layer, cand.expert), true);
        ++issued;
    }
}

result<replay_result> simulator::run() {
    MOED_TRY(setup());
    const bool scored = options_.policy == replay_policy::scored;
    std::uint64_t step = 0;
    for (const decode_token& token : order_) {
        const active_token in_flight[1] = {active_token{0, token.pos}};
        if (scored) {
            if (token.first_of_sequence) start_sequence(token);
            // Layers this token has not reached are predicted from history alone until its
            // own lookahead and routing say more.
            values_->begin_tokens(in_flight);
        }
        for (std::size_t idx : token.layers) {
            const trace_record& rec = trace_.records[idx];
            if (scored) {
                if (!rec.lookahead.empty() && info_.lookahead_depth > 0) {
                    predictor_->observe_lookahead(0, rec.pos, rec.layer, rec.lookahead);
                }
                values_->before_router(in_flight, rec.layer);
                if (options_.prefetch.enabled) prefetch(rec.layer);
                // The router has run: learn from it, then value the layer's experts for the
                // next token before the demand loads pick victims.
                predictor_->observe_routing(0, rec.pos, rec.layer, rec.chosen);
                values_->after_router(in_flight, rec.layer);
                push_values(cache_of(rec.layer));
            }
            MOED_TRY(demand(step, rec));
            ++step;
        }
    }
    for (cache& c : caches_) {
        for (std::uint32_t s = 0; s < c.n_slots; ++s) {
            if (c.occupied[s] && c.prefetched_unused[s]) {
                ++out_.wasted_prefetches;
                out_.wasted_prefetch_bytes += expert_bytes_of(info_, c.expert_in[s] / ne_);
            }
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
