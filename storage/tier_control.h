// The control half of the seam between the engine and the expert tiers (the bytes half is
// storage/expert_source.h): how everything above storage/ steers a tier without knowing
// which one it is. The evaluator tells it where the layer clock stands (begin_layer,
// end_layer); the scheduler sends scored prefetch requests and cancels them, a task profile
// sets the hot set and the eviction scores, and the daemon and the tools read statistics and
// the model file's health. Every tiered source implements it; a source that keeps every
// expert resident has none (expert_source::control() is null).
// Threads: every method may be called from any thread unless an implementation says
// otherwise.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "common/ids.h"
#include "storage/prefetch_request.h"
#include "storage/tier_stats.h"

namespace moed::storage {

// The model file as a tier sees it. A file changed under the tier (size, inode or mtime
// differ from what was opened, or a read meets its end early) is broken: experts already in
// the tier keep serving, every acquire that needs a read from the file fails at once with
// `error`, and prefetches wait, until the file holds the same model again.
struct tier_file_health {
    bool broken = false;
    std::string error;            // why, while broken
    std::uint64_t breaks = 0;     // times the file was found changed
    std::uint64_t recoveries = 0; // times it was found to be the same model again
};

// What a tier has measured about its link (the mover that fills it), read by the scheduler
// once per token to weigh a prefetch's benefit against its cost. Cheap: no residency map.
struct link_figures {
    double bytes_per_s = 0.0;       // read bandwidth while loads were in flight (0: none yet)
    double load_latency_us = 0.0;   // recent mean time of one expert load, queueing included
    double layer_compute_us = 0.0;  // recent mean compute time of one layer (I/O waits left out)
    std::uint64_t inflight_bytes = 0;
    std::uint64_t demand_loads = 0;     // loads an acquire had to start (ever)
    std::uint64_t prefetch_loads = 0;   // loads prefetches started (ever)
    std::uint64_t prefetch_wasted = 0;  // of them, evicted without use (ever)
    std::uint64_t layers_computed = 0;  // the layer clock (ever)
    double expert_bytes = 0.0;          // mean bytes of one expert
};

class tier_control {
public:
    virtual ~tier_control() = default;

    // The layer clock, from the evaluator. begin_layer: it starts computing `layer` for a
    // batch of n_tokens tokens (the tokens count at layer 0); requests queued for the layers
    // passed since the previous call (cyclically: a new token wraps) are dropped, those
    // layers' predictions lapse, and the experts guarded for the previous layer stop being
    // guarded. end_layer: its compute for `layer` is done (the tier learns how long a layer
    // computes, which is the time a prefetch has to arrive).
    virtual void begin_layer(std::uint32_t layer, std::uint64_t n_tokens) = 0;
    virtual void end_layer(std::uint32_t layer) = 0;

    // Queues `requests` and starts as many loads as the tier's bounds allow; never waits.
    // Requests for resident or loading experts only refresh their score. Every layer named by
    // a demand/near/far request has its older queued requests dropped (superseded); warmup
    // requests supersede nothing. Out-of-range ids are ignored.
    virtual void prefetch(std::span<const prefetch_request> requests) = 0;
    // Drops queued requests for layers below `layer` and lets their predictions lapse.
    virtual void cancel_prefetches_before(std::uint32_t layer) = 0;
    // Drops every queued request.
    virtual void cancel_prefetches() = 0;

    // The pinned hot set: up to a fraction of the tier's slots hold these experts (in the
    // order given, duplicates and out-of-range ids skipped); an empty span clears it. Returns
    // how many experts the hot set took.
    virtual std::uint32_t set_hot_set(std::span<const ExpertId> ids) = 0;
    // Profile/statistics bias for eviction: a need score per expert, [n_layer * n_expert]
    // (layer-major), higher keeps an expert longer; empty clears. A wrong size is ignored
    // with a warning.
    virtual void set_expert_scores(std::span<const float> per_expert_score) = 0;

    // Bytes that prefetch loads may keep in flight (0: only the tier's own bound): the
    // scheduler's share of the link that demand reads leave idle.
    virtual void set_prefetch_inflight_limit(std::uint64_t bytes) = 0;
    virtual link_figures link() const = 0;

    // How many experts the tier holds at once.
    virtual std::uint32_t slot_count() const noexcept = 0;
    virtual expert_cache_stats stats() const = 0;
    virtual tier_file_health file_health() const = 0;
};

}  // namespace moed::storage
