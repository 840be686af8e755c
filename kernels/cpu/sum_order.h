// How the dot products of one token's activation row are summed. llama.cpp's CPU backend,
// which moed's greedy output is held to, sums differently depending on how many tokens it
// multiplies at once, and the last bits of the results differ:
// - float weights (F32, F16): a token alone goes through vec_dot (four 8-lane
//   accumulators over 32 values at a time), a token in a batch of two or more through
//   tinyBLAS (one 8-lane accumulator);
// - Q4_K weights in matrices of a multiple of 8 rows (repacked at load): a batch's whole
//   groups of four tokens go through a gemm kernel that adds each 64 values' integer sum
//   into the float result, the other tokens through a gemv kernel that adds each 256
//   values' sum;
// - Q8_0, Q6_K: the same bits either way.
// The order is a property of the token, not of moed's batch: prompt tokens take the order
// llama.cpp gives them when it evaluates that prompt (prompt_token_order), every other token
// is `alone`, however moed batches or chunks them, so batch invariance holds. Only the AVX2
// kernels follow it; the scalar references sum in double and the AVX-512 kernels in their
// own order whatever it says.
#pragma once

#include <cstdint>

namespace moed::kernels {

enum class sum_order : std::uint8_t {
    alone = 0,            // decode, a one-token prompt
    batched = 1,          // a prompt token among the last n % 4 of its batch of n >= 2
    batched_in_four = 2,  // a prompt token in one of its batch's whole groups of four
};

// llama.cpp evaluates a prompt in batches of this many tokens (its default n_ubatch).
inline constexpr std::int64_t llama_prompt_batch = 512;

// The order of token `index` of a prompt of `length` tokens.
constexpr sum_order prompt_token_order(std::int64_t index, std::int64_t length) noexcept {
    const std::int64_t start = index / llama_prompt_batch * llama_prompt_batch;
    const std::int64_t n = length - start < llama_prompt_batch ? length - start : llama_prompt_batch;
    if (n < 2) return sum_order::alone;
    return index - start < n - n % 4 ? sum_order::batched_in_four : sum_order::batched;
}

}  // namespace moed::kernels
