// One generation: prefill a prompt, then decode token by token with a sampler, timing both
// phases. Used by moe-run, the tests and the benchmarks; the daemon's batch loop drives the
// evaluator directly.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/evaluator.h"
#include "engine/sampler.h"

namespace moed::engine {

struct generation_request {
    std::vector<token_id> prompt;
    std::int32_t n_predict = 32;
    sampling_params sampling;
    bool stop_at_eog = true;
    std::uint64_t seq = 0;  // batch_token::seq of every token (observers see it)
    // Called with each new token and the text it completes (valid UTF-8); return false to stop.
    // A last call with id -1 carries text that only the end of generation completed.
    std::function<bool(token_id, std::string_view)> on_token;
};

struct generation_result {
    std::vector<token_id> tokens;  // generated ids
    std::string text;              // their text
    double prefill_seconds = 0.0;
    double decode_seconds = 0.0;   // for tokens.size() - 1 decode steps
    std::int64_t decode_steps = 0;
};

// Runs `request` on a fresh sequence in `cache` (cleared first).
result<generation_result> generate(evaluator& eval, const model& m, kv_cache& cache,
                                   const generation_request& request);

}  // namespace moed::engine
