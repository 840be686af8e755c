// Whether a prefetch pays: the planner asks the gate before it requests an expert, and the
// gate answers from what the tier has measured, so a prefetch is spent only where its
// expected benefit beats its expected cost.
//
// For an expert of `bytes` that the router lookahead gives calibrated probability p of being
// used `distance` layers from now (0: the layer about to run, whose router follows its
// attention):
//   load      L = latency + bytes / bandwidth                   (the link's measured figures)
//   needed in t = (distance + attention_share) x compute per layer
//   benefit   p x (L - max(0, L + queued - t))                  (the wait a used prefetch saves)
//   cost      (1 - p) x (bytes / bandwidth) x busy x waste_factor
// where `queued` is the time to drain the bytes already in flight, `busy` how much of the link
// demand reads take (a wasted read on an idle link costs little, on a busy one it delays the
// reads compute waits for), and `waste_factor` the back-off: the share of prefetches the tier
// saw evicted unused, over the share the calibrated probabilities promised (never below 1).
// It requests when benefit > cost, i.e. p > cost' / (benefit' + cost') with the per-unit
// terms. With nothing measured yet (no loads, no timed layers) it falls back to `fallback`.
//
// The bandwidth share: prefetches may use only what demand reads leave idle, so the gate also
// gives the bytes one layer's prefetches may keep in flight: (1 - busy) x bandwidth x compute
// per layer x lookahead rows (at least one expert, so progress is possible).
// Threads: none; the planner's (engine) thread owns it.
#pragma once

#include <cstdint>

#include "storage/tier_control.h"

namespace moed::scheduler {

using storage::link_figures;

struct prefetch_gate_options {
    float fallback = 0.5f;        // the probability needed while nothing is measured
    // Never prefetch below this probability, however idle the link: a read ahead that is
    // wasted also evicts an expert that might have been used, and churn on an idle link
    // still costs a read later. At 0.5 an expert is read only when more likely used than
    // not; on a lying lookahead (calibrated near k/n) that stops prefetching altogether.
    // Measured on the 30B-shaped realistic model's trace (trace-replay, 25%/50% budgets):
    // a floor of 0.05 missed 0.54x/0.42x of LRU's misses reading 1.68x/4.30x its bytes; 0.5
    // missed 0.54x/0.46x reading 1.49x/2.44x.
    float floor = 0.5f;
    // The share of a wasted read's link time that costs even on an idle link: the slot it
    // takes from an expert that might have been used, and the CPU that reaps it.
    double idle_cost = 0.1;
    double attention_share = 0.3; // of a layer's compute before its router runs
    // Counters move this many layers before the back-off and the link's load are re-read.
    std::uint32_t window_layers = 64;
};

class prefetch_gate {
public:
    explicit prefetch_gate(const prefetch_gate_options& options = {}) : options_(options) {}

    // New figures (call once per token at most; cheap). Updates the link's load and the
    // back-off from the counters' change since the previous window.
    void update(const link_figures& f);
    // The least calibrated probability for which prefetching an expert of `bytes`, needed
    // `distance` layers from now, is worth it.
    float threshold(std::uint64_t bytes, std::uint32_t distance) const;
    bool worth(float p, std::uint64_t bytes, std::uint32_t distance) const { return p >= threshold(bytes, distance); }
    // Bytes the prefetches of one layer event may keep in flight (0: no figure yet, no bound).
    std::uint64_t inflight_budget(std::uint32_t rows) const;

    bool measured() const noexcept { return measured_; }
    double expert_bytes() const noexcept { return last_.expert_bytes; }
    double busy() const noexcept { return busy_; }
    double waste_factor() const noexcept { return waste_factor_; }
    // Record what the planner expects of its requests (the sum of their probabilities), so
    // the back-off compares the waste seen with the waste promised.
    void note_requested(double expected_used, std::uint64_t count) noexcept {
        window_expected_used_ += expected_used;
        window_requested_ += count;
    }

private:
    prefetch_gate_options options_;
    link_figures last_{};
    link_figures window_start_{};
    bool measured_ = false;
    bool have_window_ = false;
    double busy_ = 1.0;          // demand's share of the link (1 until measured: cautious)
    bool busy_measured_ = false;
    double waste_factor_ = 1.0;  // >= 1
    double window_expected_used_ = 0.0;
    std::uint64_t window_requested_ = 0;
};

}  // namespace moed::scheduler
