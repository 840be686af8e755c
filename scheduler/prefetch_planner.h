// The prefetch planner: turns the router lookahead the engine computes at the start of each
// layer into scored prefetch requests for the tier (through its control interface).
//
// At the start of layer l (before attention) the engine has applied the routers of layers
// l .. l+depth-1 to the residual stream entering layer l: probs[j][t][e]. For each target
// layer l+j the planner ranks the experts and scores each by the probability that the batch
// will use it. For one token that probability is calibrated online: the planner counts, per
// row j and rank r, how often the expert it ranked r was then chosen by the router, and uses
// that frequency once a rank has been seen `calibration_samples` times (before, the router's
// probability). For a batch it is 1 - prod_t (1 - p[j][t][e]), the chance that at least one
// token picks it. It takes the best `min_per_layer` (default 1) always and further experts
// while their score reaches `min_score`, at most `max_per_layer` per token of the batch
// (`max_current` for row 0; never more than the layer has), and asks for them with class
// near for layers l and l+1 and far beyond. Scores are what the tier weighs against the need
// of the experts a prefetch would replace, so calibrated ones keep a poor predictor (a model
// whose routing the lookahead does not foresee well) from flooding the disk.
// The evaluator has already told the tier that layer l begins (which drops whatever is still
// queued for the layers passed and lets their predictions lapse). On each routing event it issues
// nothing (the layer's demand is the engine's acquire) but checks its prediction of that
// layer against the experts the router chose, for the recall figures (routed experts that
// were among those requested for their layer) and the calibration.
// Optional history: the experts each sequence used for layer l+depth on its previous token,
// at class far and score `history_score`, reaching one layer beyond the lookahead.
//
// The planner knows nothing of the engine (the scheduler sits below it): the engine's
// layer-start and routing observers call on_layer_start() and on_routing() with the event's
// fields (engine/prefetch.h does the wiring).
// Threads: on_layer_start/on_routing/plan on the engine thread only; stats() from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "scheduler/prefetch_gate.h"
#include "storage/tier_control.h"

namespace moed::scheduler {

struct prefetch_planner_options {
    // Lookahead rows used (layers l .. l+depth-1); rows beyond what the event carries are
    // ignored.
    int depth = 2;
    std::uint32_t min_per_layer = 1;
    std::uint32_t max_per_layer = 0;  // per token of the batch; 0: 2 x the experts per token
    // For row 0 (the layer about to run), whose reads have only attention's time before the
    // router asks for the exact experts: per token of the batch; 0: the experts per token.
    std::uint32_t max_current = 0;
    // A prefetch that is wasted costs a read (bandwidth, and on a page-cache read the CPU's
    // copy); one that is used saves a wait. At 0.5 an expert is read ahead only when it is
    // more likely used than not, which measured best on a bandwidth-bound disk and within
    // noise of lower thresholds on a latency-bound one (measured with bench/compare-prefetch.sh).
    float min_score = 0.5f;
    // Weigh each prefetch's expected benefit against its cost with the tier's measured link
    // (scheduler/prefetch_gate.h) once the link is measured, and give prefetches only the
    // bandwidth demand reads leave idle; min_score and min_per_layer then apply only until
    // the first figures arrive. false: min_score and min_per_layer always (to compare).
    bool gate = true;
    prefetch_gate_options gate_options;
    std::uint32_t calibration_samples = 32;
    // Row 0 (the layer about to run) is left out: its reads would have only attention's time
    // to arrive, and the demand read follows right after with the exact experts.
    bool skip_current = false;
    bool history = false;
    float history_score = 0.25f;
};

// What the planner did, for status and benchmarks.
struct prefetch_planner_stats {
    std::uint64_t layer_events = 0;
    std::uint64_t requests = 0;       // requests sent to the source
    std::uint64_t routed = 0;         // (token-deduplicated) experts the routers chose, per layer event
    std::uint64_t predicted_routed = 0;  // of them, requested for their layer beforehand
    double recall = 0.0;              // predicted_routed / routed
    // The gate as it stands (0 before the link is measured): the probability a prefetch for
    // the next layer needs, demand's share of the link, the back-off factor.
    double gate_threshold = 0.0;
    double link_busy = 0.0;
    double waste_factor = 0.0;
};

class prefetch_planner {
public:
    prefetch_planner(storage::tier_control& source, std::uint32_t n_layer, std::uint32_t n_expert,
                     std::uint32_t n_expert_used, const prefetch_planner_options& options = {});

    const prefetch_planner_options& options() const noexcept { return options_; }

    // The engine starts layer `layer` for a batch of n_tokens tokens (sequence ids `seqs`,
    // may be empty); `probs` is [depth][n_tokens][n_expert].
    void on_layer_start(std::uint32_t layer, std::int64_t n_tokens, std::span<const std::uint64_t> seqs, int depth,
                        std::span<const float> probs);
    // The router of `layer` chose `chosen` ([n_tokens][n_expert_used]).
    void on_routing(std::uint32_t layer, std::int64_t n_tokens, std::span<const std::uint64_t> seqs,
                    std::span<const std::int32_t> chosen);

    // The requests on_layer_start would send (appended to `out`), without sending them.
    void plan(std::uint32_t layer, std::int64_t n_tokens, std::span<const std::uint64_t> seqs, int depth,
              std::span<const float> probs, std::vector<storage::prefetch_request>& out);

    prefetch_planner_stats stats() const noexcept;
    // For lookahead row `row`: per rank, how often the expert ranked there by a single-token
    // prediction was then chosen (0 where never measured). Engine thread only.
    std::vector<double> rank_hit_rates(int row) const;
    // Forgets the history of sequence `seq` (it finished).
    void forget(std::uint64_t seq);

private:
    storage::tier_control& source_;
    const std::uint32_t n_layer_, n_expert_, n_expert_used_;
    prefetch_planner_options options_;

    // Engine thread only; sized once.
    std::vector<storage::prefetch_request> requests_;
    std::vector<float> score_;                 // [n_expert]
    std::vector<std::uint32_t> order_;         // [n_expert]
    std::vector<std::uint8_t> requested_;      // [n_layer][n_expert]: asked for since the layer last ran
    std::vector<std::uint8_t> seen_;           // [n_expert] scratch
    // Calibration: the rank (1-based; 0 none) each expert had in the latest single-token
    // prediction of row j for each layer, [max rows][n_layer][n_expert], and per row and
    // rank how often such a prediction was made and how often the router then chose it.
    std::vector<std::uint16_t> rank_;
    std::vector<std::uint32_t> rank_asked_, rank_hit_;  // [max rows][n_expert]
    float calibrated(int row, std::uint32_t rank, float raw) const noexcept;
    // History: per sequence, the experts of each layer on its latest token.
    std::unordered_map<std::uint64_t, std::vector<std::int32_t>> history_;  // [n_layer][n_expert_used]

    std::atomic<std::uint64_t> layer_events_{0}, requests_sent_{0}, routed_{0}, predicted_routed_{0};
    prefetch_gate gate_;  // engine thread
    std::atomic<double> gate_threshold_{0.0}, link_busy_{0.0}, waste_factor_{0.0};
};

// Adds the planner's figures to a tier's prefetch statistics (prediction recall).
void add_planner_stats(const prefetch_planner_stats& s, prefetch_stats& out);

}  // namespace moed::scheduler
