// Prefetching for one evaluator: the router lookahead at the start of each layer drives a
// scheduler::prefetch_planner, which asks the model's tiers (their control interface) for the experts
// of the coming layers while attention runs (the engine side of the prefetch pipeline).
// Threads: the planner runs on the evaluator's thread, inside run(); the caller keeps it
// alive while the evaluator runs and may read its stats() from any thread.
#pragma once

#include <memory>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "scheduler/prefetch_planner.h"

namespace moed::engine {

struct prefetch_options {
    bool enabled = true;
    // Lookahead depth: rows l .. l+lookahead-1 at the start of layer l (1..max_lookahead_depth).
    int lookahead = 2;
    scheduler::prefetch_planner_options planner;  // its depth is set from `lookahead`
};

// When `m`'s experts are tiered and prefetch is enabled: raises the evaluator's lookahead
// depth to options.lookahead, adds a layer-start and a routing observer driving a planner,
// and returns the planner. Otherwise attaches nothing and returns null.
// Errors: a lookahead outside 1..max_lookahead_depth (invalid_argument).
result<std::unique_ptr<scheduler::prefetch_planner>> attach_prefetch(evaluator& eval, model& m,
                                                                     const prefetch_options& options);

}  // namespace moed::engine
