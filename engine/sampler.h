// Token sampling from logits. Greedy when temperature <= 0; otherwise the chain llama.cpp
// uses by default: repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw
// from a seeded generator (the same seed and inputs give the same tokens).
// Threads: one sequence's sampler is used by one thread at a time.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "common/result.h"
#include "engine/tokenizer.h"

namespace moed::engine {

struct sampling_params {
    float temperature = 0.0f;    // <= 0: greedy (argmax)
    std::int32_t top_k = 40;     // <= 0: all tokens
    float top_p = 0.95f;         // 1: off
    float min_p = 0.05f;         // 0: off
    float repeat_penalty = 1.0f; // 1: off
    std::int32_t repeat_last_n = 64;
    std::uint64_t seed = 0xFFFFFFFFu;

    // Errors name the parameter and its allowed range.
    result<void> validate() const;
};

class sampler {
public:
    explicit sampler(const sampling_params& params);

    // Picks the next token. `history` is the sequence so far (prompt and generated), used by
    // the repetition penalty. `logits` is modified only in a private copy.
    token_id sample(std::span<const float> logits, std::span<const token_id> history);

private:
    struct candidate {
        token_id id;
        float logit;
        float p;
    };
    sampling_params params_;
    std::mt19937_64 rng_;
    std::vector<candidate> candidates_;
};

// The index of the largest logit (the lowest index among equals).
token_id argmax(std::span<const float> logits) noexcept;

}  // namespace moed::engine
