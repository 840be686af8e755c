#include "scheduler/tier_replay.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "common/assert.h"
#include "storage/tier_core.h"

namespace moed::scheduler {

namespace {

using storage::tier_core;
using time_point = tier_core::time_point;

// Results taken from the simulated link per reap.
constexpr std::size_t results_per_reap = 64;

// The simulated time, in nanoseconds since the replay began.
struct sim_clock {
    std::int64_t ns = 0;
    time_point now() const { return time_point(std::chrono::nanoseconds(ns)); }
};

// The link: queued loads go at submit(), one transfer after another at the link's bandwidth,
// each ending its latency after its last byte went. Transfers start in submission order and
// all take the same latency, so they end in that order too.
class sim_mover final : public storage::mover {
public:
    sim_mover(const sim_clock& clock, const simulated_link& link, const trace_info& info)
        : clock_(clock), link_(link), info_(info) {}

    void queue(std::uint32_t slot, ExpertId id) override { queued_.push_back(load{slot, id, 0, 0}); }
    void submit() noexcept override {
        for (load& l : queued_) {
            l.bytes = expert_bytes_of(l.id.layer);
            const std::int64_t start = std::max(clock_.ns, link_free_ns_);
            const double transfer_ns = link_.bytes_per_s > 0.0 ? 1e9 * static_cast<double>(l.bytes) / link_.bytes_per_s
                                                                : 0.0;
            link_free_ns_ = start + std::llround(transfer_ns);
            l.end_ns = link_free_ns_ + std::llround(link_.latency_us * 1e3);
            MOED_ASSERT(inflight_.empty() || inflight_.back().end_ns <= l.end_ns);
            inflight_.push_back(l);
        }
        queued_.clear();
    }
    std::size_t reap(std::span<storage::move_result> out, bool) override {
        std::size_t n = 0;
        while (n < out.size() && !inflight_.empty() && inflight_.front().end_ns <= clock_.ns) {
            const load& l = inflight_.front();
            out[n] = storage::move_result{};
            out[n].slot = l.slot;
            out[n].bytes = l.bytes;
            ++n;
            inflight_.pop_front();
        }
        return n;
    }
    void stop() noexcept override {
        queued_.clear();
        inflight_.clear();
    }
    bool drained() const noexcept override { return inflight_.empty(); }
    std::size_t loads_in_flight() const noexcept override { return queued_.size() + inflight_.size(); }

    // When the next transfer ends, if any is under way.
    std::optional<std::int64_t> next_end_ns() const noexcept {
        if (inflight_.empty()) return std::nullopt;
        return inflight_.front().end_ns;
    }

private:
    struct load {
        std::uint32_t slot;
        ExpertId id;
        std::uint64_t bytes;
        std::int64_t end_ns;
    };
    std::uint64_t expert_bytes_of(std::uint32_t layer) const noexcept {
        return layer < info_.expert_bytes.size() ? info_.expert_bytes[layer] : 1;
    }

    const sim_clock& clock_;
    simulated_link link_;
    const trace_info& info_;
    std::vector<load> queued_;
    std::deque<load> inflight_;
    std::int64_t link_free_ns_ = 0;
};

class replayer;

// What the planner steers: the core, through the same control interface the daemon's tier
// has; every call submits what the core queued.
class sim_tier final : public storage::tier_control {
public:
    explicit sim_tier(replayer& r) : r_(r) {}
    void begin_layer(std::uint32_t layer, std::uint64_t n_tokens) override;
    void end_layer(std::uint32_t layer) override;
    void prefetch(std::span<const storage::prefetch_request> requests) override;
    void cancel_prefetches_before(std::uint32_t layer) override;
    void cancel_prefetches() override;
    std::uint32_t set_hot_set(std::span<const ExpertId> ids) override;
    void set_expert_scores(std::span<const float> per_expert_score) override;
    void set_prefetch_inflight_limit(std::uint64_t bytes) override;
    storage::link_figures link() const override;
    std::uint32_t slot_count() const noexcept override;
    expert_cache_stats stats() const override;
    storage::tier_file_health file_health() const override { return {}; }

private:
    replayer& r_;
};

class replayer {
public:
    replayer(const trace_data& trace, const tier_replay_options& options)
        : trace_(trace), options_(options), info_(trace.info), mover_(clock_, options.link, trace.info), tier_(*this) {}

    result<tier_replay_result> run();

    tier_core core;
    // Submits what the core queued.
    void submit_if_due() {
        if (core.take_submit()) mover_.submit();
    }

private:
    // Reports every load that ends up to time `t` (at the time it ends), then sets the
    // clock to `t`.
    void advance_to(std::int64_t t);
    void advance_us(double us) { advance_to(clock_.ns + std::llround(us * 1e3)); }
    // Waits for the next load to end (counted as I/O wait); false when none is under way.
    bool wait_next_load();
    // One layer of one batch: records[i] for i in `batch`, all of layer `layer`.
    result<void> step(std::uint32_t layer, std::span<const std::size_t> batch);
    result<void> acquire_group(std::uint32_t layer, std::span<const ExpertId> ids, double expert_us);

    const trace_data& trace_;
    const tier_replay_options& options_;
    const trace_info& info_;
    sim_clock clock_;
    sim_mover mover_;
    sim_tier tier_;
    std::unique_ptr<prefetch_planner> planner_;
    std::uint64_t steps_ = 0, accesses_ = 0;
    std::uint64_t io_wait_ns_ = 0;
    std::optional<std::uint64_t> profiled_seq_;  // the sequence whose profile the tier has
    // Scratch, reused per step.
    std::vector<float> probs_;
    std::vector<std::int32_t> chosen_;
    std::vector<std::uint64_t> seqs_;
    std::vector<ExpertId> needed_;
    std::vector<std::uint8_t> seen_;
    std::vector<std::uint32_t> slot_of_;
    std::vector<std::uint8_t> done_;
};

void sim_tier::begin_layer(std::uint32_t layer, std::uint64_t n_tokens) {
    r_.core.begin_layer(layer, n_tokens);
    r_.submit_if_due();
}
void sim_tier::end_layer(std::uint32_t layer) {
    r_.core.end_layer(layer);
    r_.submit_if_due();
}
void sim_tier::prefetch(std::span<const storage::prefetch_request> requests) {
    r_.core.prefetch(requests);
    r_.submit_if_due();
}
void sim_tier::cancel_prefetches_before(std::uint32_t layer) {
    r_.core.cancel_prefetches_before(layer);
    r_.submit_if_due();
}
void sim_tier::cancel_prefetches() { r_.core.cancel_prefetches(); }
std::uint32_t sim_tier::set_hot_set(std::span<const ExpertId> ids) {
    const std::uint32_t n = r_.core.set_hot_set(ids);
    r_.submit_if_due();
    return n;
}
void sim_tier::set_expert_scores(std::span<const float> per_expert_score) {
    (void)r_.core.set_expert_scores(per_expert_score);  // a wrong size is ignored, as the daemon's tier does
}
void sim_tier::set_prefetch_inflight_limit(std::uint64_t bytes) {
    r_.core.set_prefetch_inflight_limit(bytes);
    r_.submit_if_due();
}
storage::link_figures sim_tier::link() const { return r_.core.link(); }
std::uint32_t sim_tier::slot_count() const noexcept { return r_.core.n_slots(); }
expert_cache_stats sim_tier::stats() const {
    expert_cache_stats out;
    std::vector<std::uint32_t> samples;
    r_.core.fill(out, samples);
    storage::tier_counters::summarize(out.host, out.prefetch, samples);
    return out;
}

void replayer::advance_to(std::int64_t t) {
    std::array<storage::move_result, results_per_reap> batch;
    for (;;) {
        const std::optional<std::int64_t> end = mover_.next_end_ns();
        if (!end || *end > t) break;
        clock_.ns = std::max(clock_.ns, *end);
        const std::size_t n = mover_.reap(batch, false);
        for (std::size_t k = 0; k < n; ++k) core.load_ended(batch[k].slot, true, {}, batch[k].bytes, 0);
        core.after_loads();
        submit_if_due();
    }
    clock_.ns = std::max(clock_.ns, t);
}

bool replayer::wait_next_load() {
    submit_if_due();
    const std::optional<std::int64_t> end = mover_.next_end_ns();
    if (!end) return false;
    const std::int64_t before = clock_.ns;
    advance_to(*end);
    const auto waited = static_cast<std::uint64_t>(clock_.ns - before);
    io_wait_ns_ += waited;
    core.counters().add_io_wait(waited);
    return true;
}

result<void> replayer::acquire_group(std::uint32_t layer, std::span<const ExpertId> ids, double expert_us) {
    // As the tiered source's acquire: pin what is resident or loading, then take slots for
    // the rest (waiting for a load to end when every slot is loading or held).
    slot_of_.assign(ids.size(), storage::slot_table::no_slot);
    for (std::size_t k = 0; k < ids.size(); ++k) slot_of_[k] = core.pin_present(ids[k]);
    for (std::size_t k = 0; k < ids.size();) {
        if (slot_of_[k] != storage::slot_table::no_slot) {
            ++k;
            continue;
        }
        std::uint32_t s = core.pin_present(ids[k]);  // a duplicate, or loaded meanwhile
        if (s == storage::slot_table::no_slot) s = core.start_demand(ids[k]);
        if (s == storage::slot_table::no_slot) {
            if (!wait_next_load()) {
                return make_error(errc::invalid_argument,
                                  "layer {}: no slot for expert {} in a cache of {} slots with nothing loading", layer,
                                  ids[k].expert, core.n_slots_of_layer(layer));
            }
            continue;
        }
        slot_of_[k] = s;
        ++k;
    }
    submit_if_due();
    core.demand_requested(layer);
    submit_if_due();
    // As acquire_each: apply whichever expert is in, in order, releasing each at once.
    done_.assign(ids.size(), 0);
    for (std::size_t left = ids.size(); left > 0;) {
        std::optional<std::size_t> pick;
        for (std::size_t k = 0; k < ids.size() && !pick; ++k) {
            if (done_[k] == 0 && core.slots()[slot_of_[k]].state != storage::slot_state::loading) pick = k;
        }
        if (!pick) {
            const bool waited = wait_next_load();
            MOED_ASSERT(waited && "an acquired expert is loading, so a load is under way");
            continue;
        }
        MOED_ASSERT(core.slots()[slot_of_[*pick]].state != storage::slot_state::failed);
        advance_us(expert_us);
        core.release(ids[*pick], slot_of_[*pick]);
        submit_if_due();
        done_[*pick] = 1;
        --left;
    }
    accesses_ += ids.size();
    return {};
}

result<void> replayer::step(std::uint32_t layer, std::span<const std::size_t> batch) {
    const std::size_t n = batch.size();
    const std::uint32_t ne = info_.n_expert;
    ++steps_;
    if (options_.profile_of) {
        const std::uint64_t seq = trace_.records[batch.front()].seq;
        if (!profiled_seq_ || *profiled_seq_ != seq) {
            profiled_seq_ = seq;
            tier_.set_expert_scores(options_.profile_of(trace_.records[batch.front()].tag));
        }
    }
    tier_.begin_layer(layer, n);
    if (planner_) {
        const int depth = static_cast<int>(info_.lookahead_depth);
        probs_.assign(static_cast<std::size_t>(depth) * n * ne, 0.0f);
        for (std::size_t t = 0; t < n; ++t) {
            const trace_record& r = trace_.records[batch[t]];
            for (int j = 0; j < depth; ++j) {
                std::copy_n(r.lookahead.data() + static_cast<std::size_t>(j) * ne, ne,
                            probs_.data() + (static_cast<std::size_t>(j) * n + t) * ne);
            }
        }
        seqs_.clear();
        if (planner_->options().history) {
            for (std::size_t i : batch) seqs_.push_back(trace_.records[i].seq);
        }
        planner_->on_layer_start(layer, static_cast<std::int64_t>(n), seqs_, depth, probs_);
    }
    // A batch computes each of its tokens (the lookahead, attention and the experts' rows).
    const double layer_us = options_.layer_compute_us * static_cast<double>(n);
    advance_us(layer_us * options_.attention_share);

    chosen_.clear();
    for (std::size_t i : batch) {
        const auto& c = trace_.records[i].chosen;
        chosen_.insert(chosen_.end(), c.begin(), c.end());
    }
    if (planner_) planner_->on_routing(layer, static_cast<std::int64_t>(n), seqs_, chosen_);
    // The batch's distinct experts in first-use order, as the evaluator groups them.
    needed_.clear();
    seen_.assign(ne, 0);
    for (std::int32_t e : chosen_) {
        if (seen_[static_cast<std::size_t>(e)] != 0) continue;
        seen_[static_cast<std::size_t>(e)] = 1;
        needed_.push_back(ExpertId{layer, static_cast<std::uint32_t>(e)});
    }
    core.set_current_layer(layer);
    const double expert_us =
        needed_.empty() ? 0.0
                        : layer_us * (1.0 - options_.attention_share) / static_cast<double>(needed_.size());
    const std::size_t group = core.n_slots_of_layer(layer);  // the slots its class has
    for (std::size_t first = 0; first < needed_.size(); first += group) {
        const std::size_t count = std::min(group, needed_.size() - first);
        MOED_TRY(acquire_group(layer, std::span<const ExpertId>(needed_.data() + first, count), expert_us));
    }
    tier_.end_layer(layer);
    return {};
}

result<tier_replay_result> replayer::run() {
    MOED_TRY(validate_trace(trace_));
    const storage::slot_classes& classes = options_.classes;
    const bool by_class = classes.n_classes() > 0;
    if (by_class && classes.n_layer() != info_.n_layer) {
        return make_error(errc::invalid_argument, "tier replay: slot classes made for {} layers, the trace has {}",
                          classes.n_layer(), info_.n_layer);
    }
    if (by_class ? classes.n_slots_min() == 0 : options_.slots == 0) {
        return make_error(errc::invalid_argument, "tier replay: no slots");
    }
    storage::expert_layout layout;
    layout.n_layer = info_.n_layer;
    layout.n_expert = info_.n_expert;
    layout.layers.resize(info_.n_layer);
    for (std::uint32_t l = 0; l < info_.n_layer; ++l) {
        // Only an expert's size matters to the core.
        layout.layers[l].gate_bytes = l < info_.expert_bytes.size() ? info_.expert_bytes[l] : 1;
    }
    storage::tiered_options tier = options_.tier;
    if (tier.slots_per_layer == 0) tier.slots_per_layer = 2 * info_.n_expert_used;
    if (by_class) {
        core.reset(layout, tier, classes, &mover_, [this] { return clock_.now(); });
    } else {
        core.reset(layout, tier, options_.slots, &mover_, [this] { return clock_.now(); });
    }
    if (options_.prefetch && info_.lookahead_depth > 0) {
        prefetch_planner_options po = options_.planner;
        po.depth = std::min<int>(po.depth, static_cast<int>(info_.lookahead_depth));
        planner_ = std::make_unique<prefetch_planner>(tier_, info_.n_layer, info_.n_expert, info_.n_expert_used, po);
    }

    std::vector<std::size_t> batch;
    if (options_.order == tier_replay_order::decode) {
        auto order = decode_order(trace_);
        if (!order) return unexpected(std::move(order).error());
        for (const decode_token& tok : *order) {
            for (std::size_t i : tok.layers) {
                batch.assign(1, i);
                MOED_TRY(step(trace_.records[i].layer, batch));
            }
        }
    } else {
        for (std::size_t i = 0; i < trace_.records.size();) {
            const std::uint32_t layer = trace_.records[i].layer;
            batch.clear();
            for (; i < trace_.records.size() && trace_.records[i].layer == layer; ++i) batch.push_back(i);
            MOED_TRY(step(layer, batch));
        }
    }
    // Loads still under way end before the figures are read.
    submit_if_due();
    while (const std::optional<std::int64_t> end = mover_.next_end_ns()) advance_to(*end);

    const storage::tier_counters& c = core.counters();
    tier_replay_result out;
    out.steps = steps_;
    out.accesses = accesses_;
    out.hits = c.hits;
    out.misses = c.misses;
    out.demand_misses = c.demand_misses;
    out.evictions = c.evictions;
    out.bytes_read = c.bytes_read;
    out.prefetch_loads = c.pf_issued;
    out.prefetch_hits = c.pf_hits;
    out.prefetch_late = c.pf_late;
    out.prefetch_wasted = c.pf_wasted;
    out.prefetch_wasted_bytes = c.pf_wasted_bytes;
    out.io_wait_s = static_cast<double>(io_wait_ns_) / 1e9;
    out.simulated_s = static_cast<double>(clock_.ns) / 1e9;
    if (planner_) out.recall = planner_->stats().recall;
    return out;
}

}  // namespace

result<tier_replay_result> replay_through_tier(const trace_data& trace, const tier_replay_options& options) {
    replayer r(trace, options);
    return r.run();
}

}  // namespace moed::scheduler
