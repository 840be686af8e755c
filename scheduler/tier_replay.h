// Replays a routing trace through the code the daemon runs: the prefetch planner (its
// predictor, calibration and gate) steering a tier core (storage/tier_core.h: the section
// ring's placement, the load queue, the counters), against a simulated clock and a simulated
// link instead of the steady clock and the disk. So what trace-replay reports for the
// production policy is what moed would do on that trace, and a replay of a trace moed
// recorded reproduces the counters moed reported for the run.
//
// Each layer step plays what the evaluator does: begin_layer; the planner's layer start with
// the record's lookahead rows (prefetch requests go to the core); attention (the clock
// advances by attention_share of the layer's compute); the router's choice reaches the
// planner; the layer's distinct experts are acquired in first-use order, in groups the tier
// can hold, each applied (the clock advances by its share of the compute) as soon as its
// load is in and released at once, waiting for the next load to end when none is ready;
// end_layer. Loads that end while the clock advances are reported to the core at the time
// they end.
//
// The simulated link serves loads one after another at bytes_per_s, each arriving
// latency_us after its bytes went (so latency overlaps with later transfers, as on a deep
// queue). Everything is deterministic: the same trace and options give the same result.
// Threads: none of its own; one call runs on the caller's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "common/result.h"
#include "scheduler/prefetch_planner.h"
#include "scheduler/trace_data.h"
#include "storage/slot_classes.h"
#include "storage/tiers.h"

namespace moed::scheduler {

struct simulated_link {
    double bytes_per_s = 2e9;
    double latency_us = 100.0;
};

// The order the trace's records are played in.
enum class tier_replay_order : std::uint8_t {
    // As a single-sequence decoder meets them (trace_data.h's decode order): one token at a time.
    decode,
    // As the engine ran them: records in file order, consecutive records of the same layer
    // forming one batch (a prefill batch, or sequences decoded together).
    engine,
};

struct tier_replay_options {
    std::uint32_t slots = 0;  // host slots in one class; must hold one layer's experts of a batch
    // The host tier's slot classes when the layers' experts differ in size: what
    // storage::tiered_slot_classes() makes of the daemon's budget for the model, so the replay
    // has the capacities the daemon has. When it has classes, `slots` is not used.
    storage::slot_classes classes;
    // The tier's placement and queue settings, as the daemon passes them (slots_per_layer 0:
    // 2 x the experts used per token, as the engine sets it).
    storage::tiered_options tier;
    bool prefetch = true;
    // Its depth is capped by the trace's lookahead depth.
    prefetch_planner_options planner;
    simulated_link link;
    double layer_compute_us = 500.0;  // one layer's compute for one token (a batch: times its tokens)
    double attention_share = 0.5;     // of it, before the router's choice
    tier_replay_order order = tier_replay_order::decode;
    // The task profile of a sequence (by tag): [n_layer * n_expert] expert scores, or empty
    // for none. Set on the tier (set_expert_scores) whenever the sequence played changes, as
    // the daemon sets a request's profile.
    std::function<std::span<const float>(std::uint32_t tag)> profile_of;
};

struct tier_replay_result {
    std::uint64_t steps = 0;     // layer steps (batches x layers)
    std::uint64_t accesses = 0;  // experts acquired
    // The tier's own counters (common/status.h says what each means).
    std::uint64_t hits = 0, misses = 0, demand_misses = 0, evictions = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t prefetch_loads = 0, prefetch_hits = 0, prefetch_late = 0;
    std::uint64_t prefetch_wasted = 0, prefetch_wasted_bytes = 0;
    double io_wait_s = 0.0;
    double simulated_s = 0.0;  // the clock at the end
    double recall = 0.0;       // the planner's prediction recall
};

// A trace without expert sizes counts bytes as expert loads (one byte each, so the link is
// latency only). Errors: a cache too small for one layer's experts (invalid_argument), a bad
// trace.
result<tier_replay_result> replay_through_tier(const trace_data& trace, const tier_replay_options& options);

}  // namespace moed::scheduler
