// The forward pass of a qwen3moe model over a batch of tokens, possibly from several
// sequences (each token names its own KV cache and position), on the CPU kernels.
// Per layer: RMSNorm -> Q/K/V -> per-head q/k RMSNorm -> NEOX RoPE -> f16 KV cache ->
// GQA attention -> output projection -> residual -> RMSNorm -> router softmax, top-k with
// renormalised weights -> experts (SwiGLU), grouped so each routed expert is acquired from
// the expert source and applied once per batch -> weighted sum in llama.cpp's order ->
// residual. Numerics follow llama.cpp's CPU backend so greedy ids match its output.
// Threads: one owner thread (the engine thread) calls run(); the compute pool does the rest.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "common/result.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/thread_pool.h"

namespace moed::engine {

struct batch_token {
    token_id token = 0;
    std::int64_t pos = 0;
    kv_cache* cache = nullptr;
    bool want_logits = false;
    // Pruning (task profiles): when set, [n_layer][n_expert] flags of the experts this
    // token may be routed to. The router's softmax still covers every expert; the top-k is
    // taken among the allowed ones and their weights renormalised. Each layer must allow at
    // least n_expert_used experts. The memory belongs to the caller and must outlive run().
    const std::uint8_t* allowed_experts = nullptr;
};

// What the router did at one MoE layer for one batch: softmax probabilities
// [n_tokens][n_expert] and chosen experts [n_tokens][n_expert_used] (decreasing probability).
struct routing_event {
    std::uint32_t layer = 0;
    std::int64_t n_tokens = 0;
    std::span<const float> probs;
    std::span<const std::int32_t> chosen;
};
using routing_observer = std::function<void(const routing_event&)>;

class evaluator {
public:
    // `max_batch` bounds the tokens of one run(); scratch for it is allocated here, once.
    evaluator(model& m, kernels::compute_pool& pool, std::int64_t max_batch);

    std::int64_t max_batch() const noexcept { return max_batch_; }

    // Runs one forward pass. Writes n_vocab logits for each token with want_logits, in batch
    // order, to `logits` (which must hold that many rows). Each token's key and value are
    // stored in its cache at its position, and the cache's size becomes at least pos + 1.
    // Errors: bad token ids or positions (invalid_argument), expert source failures.
    result<void> run(std::span<const batch_token> batch, float* logits);

    // Feeds `tokens` to one sequence, continuing at cache.size(), in chunks of max_batch;
    // `last_logits` receives the final token's logits.
    result<void> run_sequence(std::span<const token_id> tokens, kv_cache& cache,
                              std::vector<float>& last_logits);

    // Called at every MoE layer with the router's output (the scheduler listens here).
    void set_routing_observer(routing_observer observer) { observer_ = std::move(observer); }

private:
    result<void> validate(std::span<const batch_token> batch) const;
    void attention_block(std::uint32_t layer, std::span<const batch_token> batch);
    result<void> moe_block(std::uint32_t layer, std::span<const batch_token> batch);
    // Runs expert `e` (weights `w`) on the batch rows routed to it; writes each row's
    // weighted output into its (token, slot) place of expert_out_.
    void apply_expert(std::uint32_t e, const storage::expert_weights& w);
    // Runs fn(t) for t in [0, n), spread over the pool when n is large enough to pay.
    void for_tokens(std::int64_t n, const std::function<void(std::int64_t)>& fn);

    model& model_;
    kernels::compute_pool& pool_;
    std::int64_t max_batch_;
    routing_observer observer_;

    // Scratch, sized for max_batch_ at construction.
    std::vector<float> x_, cur_, q_, k_, v_, attn_, proj_;
    std::vector<float> router_probs_, route_weights_;
    std::vector<float> masked_probs_;  // [max_batch][n_expert], for tokens with allowed_experts
    std::vector<std::int32_t> route_experts_;
    std::vector<float> expert_out_;  // [n][n_expert_used][n_embd]
    std::vector<float> gathered_, gate_, up_, down_;
    std::vector<std::int32_t> expert_count_;         // tokens per expert this layer
    std::vector<std::int32_t> expert_rows_;          // [n_expert][max_batch] (token*k + slot)
    std::vector<ExpertId> needed_;
    std::vector<storage::expert_handle> handles_;
    std::vector<float> attn_scratch_;                // [pool size][scratch_ctx_]
    std::int64_t scratch_ctx_ = 0;
    std::vector<float> out_rows_;
    kernels::activation_buffer act_;
};

}  // namespace moed::engine
