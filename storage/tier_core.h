// The tier core: every decision a tier makes, with no thread, no lock and no clock of its
// own. It composes the pieces (slot_table: slot states, refs, residency; section_ring: which
// slot a load takes, the only placement authority; load_queue: prefetch requests, deferred
// demand loads, bytes in flight; tier_counters: statistics) and queues the loads it decides
// on to a mover (storage/mover.h), which it never submits or reaps itself.
//
// Two owners drive it, so what the daemon runs and what a replay measures are one code:
// - the host tier (tiered_expert_source) calls it under its lock, with the steady clock,
//   block_mover as the mover, and a completion thread that reaps the mover and reports each
//   ended load through load_ended();
// - the replay driver (scheduler/tier_replay.h) calls it on one thread, with a simulated
//   clock and a simulated mover, advancing time to a load's end when the engine it plays
//   would wait for that load.
//
// The owner's duties: call submit() on the mover whenever take_submit() returns true (after
// releasing its lock); report every load the mover ends with load_ended(), then call
// after_loads(); wait (for a load, or a slot) where a method says nothing can be done now.
// Threads: none; the owner serialises every call (the host tier under its lock).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "common/ids.h"
#include "common/status.h"
#include "storage/expert_source.h"
#include "storage/load_queue.h"
#include "storage/mover.h"
#include "storage/prefetch_request.h"
#include "storage/section_ring.h"
#include "storage/slot_classes.h"
#include "storage/slot_table.h"
#include "storage/tier_control.h"
#include "storage/tier_counters.h"
#include "storage/tiers.h"

namespace moed::storage {

class tier_core {
public:
    using clock_type = std::chrono::steady_clock;
    using time_point = clock_type::time_point;
    using clock_fn = std::function<time_point()>;

    // A core over the slots of `classes` (storage/slot_classes.h: a load of layer l takes a
    // slot of l's class only) for the experts `layout` describes, queueing its loads to
    // `loads` (not owned; outlives the core) and reading the time from `now` (the steady
    // clock when empty). Of `options` it uses the placement and queue settings (ring,
    // slots_per_layer, reuse_prior, hot_fraction_max, prefetch_after_demand, the in-flight
    // bounds).
    void reset(const expert_layout& layout, const tiered_options& options, const slot_classes& classes, mover* loads,
               clock_fn now = {});
    // The same over one class of `n_slots` slots for every layer.
    void reset(const expert_layout& layout, const tiered_options& options, std::uint32_t n_slots, mover* loads,
               clock_fn now = {});

    std::uint32_t n_slots() const noexcept { return slots_.n_slots(); }
    const slot_classes& classes() const noexcept { return classes_; }
    // The slots that experts of `layer` may take (its class's): the most of that layer one
    // caller can hold at once.
    std::uint32_t n_slots_of_layer(std::uint32_t layer) const noexcept {
        return classes_[classes_.class_of_layer(layer)].n_slots;
    }
    time_point now() const { return now_ ? now_() : clock_type::now(); }

    // --- demand (the engine's acquire) ---
    // The engine computes `layer` now: its experts are guarded from prefetches.
    void set_current_layer(std::uint32_t layer) noexcept;
    // Pins `id` if it is resident or loading (a hit, or a miss that waits for a load already
    // started) and returns its slot; no_slot when it is in neither state.
    std::uint32_t pin_present(ExpertId id);
    // Takes a slot for `id` (not present) and starts its load with one ref: a demand miss.
    // no_slot when every slot is loading or held (the owner waits for a release or a load,
    // after submitting what is queued).
    std::uint32_t start_demand(ExpertId id);
    // The reads of `layer`'s acquire are all requested: prefetches held behind them may go
    // (prefetch_after_demand).
    void demand_requested(std::uint32_t layer);
    // One ref fewer on `slot` (holding `id`). Returns true when the slot became free or
    // reclaimable (waiters for a slot may go on).
    bool release(ExpertId id, std::uint32_t slot) noexcept;

    // --- loads ---
    // How a load the mover ended went: `ok`, or failed with `failure`; `bytes` arrived and
    // `errors` transfers failed. The slot becomes ready/in use, or failed/free.
    void load_ended(std::uint32_t slot, bool ok, moed::error failure, std::uint64_t bytes, std::uint32_t errors);
    // After a batch of load_ended(): admits deferred demand loads, then queued prefetches.
    void after_loads();
    // Whether loads were queued to the mover since the last call (the owner must submit).
    bool take_submit() noexcept {
        const bool due = submit_due_;
        submit_due_ = false;
        return due;
    }
    // While paused (the model file is broken) queued prefetches wait; set false, they go.
    void set_paused(bool paused);
    // The owner shuts down: loads that end are counted, nothing more starts.
    void stop() noexcept { stopping_ = true; }
    bool stopping() const noexcept { return stopping_; }

    // --- control (storage/tier_control.h says what each does) ---
    void begin_layer(std::uint32_t layer, std::uint64_t n_tokens);
    void end_layer(std::uint32_t layer);
    void prefetch(std::span<const prefetch_request> requests);
    void cancel_prefetches_before(std::uint32_t layer);
    void cancel_prefetches();
    std::uint32_t set_hot_set(std::span<const ExpertId> ids);
    // false when the size is wrong (the owner logs it).
    bool set_expert_scores(std::span<const float> per_expert_score);
    void set_prefetch_inflight_limit(std::uint64_t bytes);
    link_figures link() const;

    // --- reading ---
    const slot_table& slots() const noexcept { return slots_; }
    const section_ring& ring() const noexcept { return ring_; }
    tier_counters& counters() noexcept { return counters_; }
    const tier_counters& counters() const noexcept { return counters_; }
    // Fills the host tier's figures, the ring, the queue and the residency map of `out`
    // (everything but what the mover and the lock know); `samples` gets the latencies for
    // tier_counters::summarize().
    void fill(expert_cache_stats& out, std::vector<std::uint32_t>& samples) const;

private:
    std::size_t table_index(ExpertId id) const noexcept {
        return static_cast<std::size_t>(id.layer) * layout_.n_expert + id.expert;
    }
    bool in_range(ExpertId id) const noexcept { return id.layer < layout_.n_layer && id.expert < layout_.n_expert; }
    std::uint64_t expert_bytes(ExpertId id) const noexcept { return layout_.expert_bytes(id.layer); }
    bool is_hot(ExpertId id) const noexcept { return hot_count_ > 0 && hot_[table_index(id)] != 0; }
    // The need of the expert a slot holds: its prefetch score while its prediction holds,
    // else the profile score or the reuse prior scaled by how soon its layer comes round.
    float need_of(const slot_entry& e) const noexcept;
    slot_facts facts_of(std::uint32_t slot) const noexcept;
    // A slot for a load of `id` (evicting what it held), by the ring's rules for `kind`.
    std::optional<std::uint32_t> take_slot(ExpertId id, slot_load_kind kind, float score);
    void evict(std::uint32_t slot);
    // Marks `slot` loading `id` (refs: waiting acquirers) and admits its load, or defers it
    // while the in-flight bound is full.
    void start_load(std::uint32_t slot, ExpertId id, std::uint32_t refs);
    void admit(std::uint32_t slot);
    void admit_deferred();
    // Starts queued prefetches in priority order while the bounds and the ring allow.
    void dispatch() noexcept;
    void lapse_touched_layers() noexcept;
    void guard(std::uint32_t slot) noexcept;

    expert_layout layout_;
    tiered_options options_;
    mover* mover_ = nullptr;
    clock_fn now_;
    std::uint64_t expert_bytes_total_ = 0;

    slot_classes classes_;
    slot_table slots_;
    section_ring ring_;
    load_queue queue_;
    tier_counters counters_;
    bool submit_due_ = false;
    bool stopping_ = false;
    bool paused_ = false;

    // Placement state.
    std::vector<std::int64_t> section_last_layer_;  // per section: layer of its latest load, -1 none
    std::uint32_t current_layer_ = 0;   // the layer being computed (begin_layer or the last acquire)
    std::uint64_t layer_epoch_ = 1;     // advances when current_layer_ changes
    bool demand_requested_ = false;     // the current layer's acquire has requested its reads
    std::vector<std::uint32_t> layer_gen_;  // per layer: advances when its predictions lapse
    std::vector<float> expert_scores_;      // [n_layer * n_expert] or empty
    std::vector<std::uint8_t> hot_;         // per expert: in the hot set
    std::uint32_t hot_count_ = 0;

    // Reuse by age, measured: a layer's pass is one acquire round of it (a token, or a batch);
    // an expert's age is how many passes of its layer ago it was last used. Per age 1..
    // reuse_ages: how many experts were that old when a pass began (exposed) and how many
    // of them that pass used. Their ratio is the chance an unpredicted expert is used when
    // its layer next runs, the need it keeps (reuse_prior until reuse_samples_min exposures).
    static constexpr std::uint32_t reuse_ages = 8;
    static constexpr std::uint64_t reuse_samples_min = 64;
    void begin_pass(std::uint32_t layer);
    void note_use(ExpertId id);
    float reuse_need(ExpertId id) const noexcept;
    std::vector<std::uint32_t> pass_;       // per layer: passes begun
    std::vector<std::uint32_t> last_pass_;  // per expert: the pass of its layer it was last used in (0 never)
    std::vector<std::uint32_t> age_count_;  // [n_layer][reuse_ages]: experts last used a passes ago (ring by pass)
    std::array<std::uint64_t, reuse_ages + 1> exposed_{}, reused_{};

    // The layer clock: when the open layer began and the I/O wait counted by then.
    time_point layer_began_{};
    std::uint64_t layer_began_io_wait_ns_ = 0;
    bool layer_open_ = false;
};

}  // namespace moed::storage
