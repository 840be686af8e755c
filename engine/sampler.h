// Token sampling from logits. First the logits are adjusted: llama.cpp's repetition
// penalty, OpenAI's presence and frequency penalties (over the generated tokens), then
// OpenAI's logit bias. Then greedy when temperature <= 0; otherwise the chain llama.cpp uses
// by default: top-k -> top-p -> min-p -> temperature -> draw from a seeded generator (the
// same seed and inputs give the same tokens).
// Also here: the log-probabilities OpenAI's `logprobs` reports (the model's distribution:
// log-softmax of the raw logits, before any adjustment).
// Threads: one sequence's sampler is used by one thread at a time.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "common/result.h"
#include "engine/tokenizer.h"

namespace moed::engine {

// OpenAI's logit bias: at most this many entries, each within +-logit_bias_max; a bias of
// -logit_bias_max bans the token outright (its logit becomes -infinity).
inline constexpr std::size_t max_logit_bias_entries = 1024;
inline constexpr float logit_bias_max = 100.0f;
// OpenAI's range for presence_penalty and frequency_penalty.
inline constexpr float openai_penalty_max = 2.0f;

struct logit_bias_entry {
    token_id token = 0;
    float bias = 0.0f;  // -logit_bias_max .. logit_bias_max
};

struct sampling_params {
    float temperature = 0.0f;    // <= 0: greedy (argmax)
    std::int32_t top_k = 40;     // <= 0: all tokens
    float top_p = 0.95f;         // 1: off
    float min_p = 0.05f;         // 0: off
    float repeat_penalty = 1.0f; // 1: off
    std::int32_t repeat_last_n = 64;
    std::uint64_t seed = 0xFFFFFFFFu;
    // OpenAI's penalties, over the tokens generated so far: a token's logit loses
    // frequency_penalty * (times it was generated) + presence_penalty * (1 if it was).
    float presence_penalty = 0.0f;   // -2..2; 0: off
    float frequency_penalty = 0.0f;  // -2..2; 0: off
    // Added to the logits after the penalties; ids are checked against the vocabulary by
    // whoever knows it (validate() checks the count and the range of each bias).
    std::vector<logit_bias_entry> logit_bias;

    // Errors name the parameter and its allowed range.
    result<void> validate() const;
};

class sampler {
public:
    explicit sampler(const sampling_params& params);

    // Picks the next token. `history` is the sequence so far (prompt and generated), used by
    // the repetition penalty; its last `n_generated` tokens are the generated ones, which the
    // presence and frequency penalties count. `logits` is modified only in a private copy.
    token_id sample(std::span<const float> logits, std::span<const token_id> history, std::size_t n_generated = 0);

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

// A token's log-probability and the `top` most likely tokens of the same step, most likely
// first (ties: the lower id first).
struct token_logprob {
    token_id token = 0;
    float logprob = 0.0f;
    std::vector<std::pair<token_id, float>> top;
};

// Log-softmax of `logits` (computed in double) for `chosen`, and the `top` largest
// (top <= logits.size()). Costs one pass over the logits plus a top-`top` selection; the
// caller asks only when a request wants logprobs.
void log_softmax_of(std::span<const float> logits, token_id chosen, std::size_t top, token_logprob& out);

}  // namespace moed::engine
