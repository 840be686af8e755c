// The forward pass of a MoE model over a batch of tokens, possibly from several sequences
// (each token names its own KV cache and position), on the CPU kernels. The shared blocks
// carry the architectures' variants (engine/arch.h). Per layer: RMSNorm -> Q/K/V (+ biases)
// -> q/k RMSNorm (per head, whole, or none) -> RoPE (NORM or NEOX, partial) -> f16 KV cache
// -> GQA attention -> output projection -> residual (or multi-head latent attention,
// evaluator_mla.cpp) -> RMSNorm -> a leading dense layer's SwiGLU block, or: router
// (engine/routing.h: softmax or sigmoid, selection bias, groups, weights renormalised or not,
// scaled) -> experts (SwiGLU), grouped so each routed expert is acquired from the expert
// source and applied once per batch -> weighted sum in llama.cpp's order (+ the shared
// expert, gated or not) -> residual. Numerics follow llama.cpp's CPU backend so greedy ids
// match its output. Routing events, the lookahead, the layer clock and ExpertId count MoE
// layers (model_hparams::n_layer_dense_lead).
// Threads: one owner thread (the engine thread) calls run(); the compute pool does the rest.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
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
    // The caller's sequence id (the daemon's job id; 0 for single-sequence callers). The
    // evaluator only passes it through to observers, so traces and the scheduler can tell
    // a batch's sequences apart.
    std::uint64_t seq = 0;
    // Pruning (task profiles): when set, [n_moe_layer][n_expert] flags of the experts this
    // token may be routed to. The router's distribution still covers every expert; the
    // top-k is taken among the allowed ones (engine/routing.h). Each MoE layer must allow at
    // least n_expert_used experts. The memory belongs to the caller and must outlive run().
    const std::uint8_t* allowed_experts = nullptr;
    // How the token's float dot products sum (kernels/cpu/sum_order.h): a prompt token
    // takes kernels::prompt_token_order(its index in the prompt, the prompt's length), any
    // other token `alone`. It decides last bits at the AVX2 level only, where moed matches
    // llama.cpp's prompt and decode numerics; it never depends on how moed batches tokens.
    kernels::sum_order order = kernels::sum_order::alone;
};

// The most layers a router lookahead reaches (set_lookahead_depth).
inline constexpr int max_lookahead_depth = 4;

// What the router did at MoE layer `layer` (block layer + n_layer_dense_lead) for one batch:
// the per-expert distribution [n_tokens][n_expert] (the softmax probabilities, or for
// sigmoid gating, a selection bias or groups the normalised selection score:
// routing_distribution in engine/routing.h), chosen experts [n_tokens][n_expert_used]
// (decreasing selection score) and their weights [n_tokens][n_expert_used] as the experts'
// outputs are scaled by; `tokens` is the batch (row t of every array belongs to tokens[t]).
// `lookahead` ([lookahead_depth][n_tokens][n_expert]) is what was computed at the start of
// this layer (see lookahead_event): row [j][t] is the distribution of MoE layer
// (layer + j)'s router applied, after that layer's own ffn_norm RMSNorm, to the residual
// stream ENTERING this layer. Rows for layers past the last are all zero. Empty when the
// lookahead depth is 0.
// Every span is valid only during the call (it points into the evaluator's scratch).
struct routing_event {
    std::uint32_t layer = 0;
    std::int64_t n_tokens = 0;
    std::span<const float> probs;
    std::span<const std::int32_t> chosen;
    std::span<const float> weights;
    std::span<const batch_token> tokens;
    int lookahead_depth = 0;
    std::span<const float> lookahead;
};
using routing_observer = std::function<void(const routing_event&)>;

// The start of one MoE layer (numbered as routing_event's), after the router lookahead was
// computed and before attention: the place to issue prefetches for MoE layers layer ..
// layer + depth - 1 while attention runs.
// `probs` is [depth][n_tokens][n_expert] as routing_event::lookahead (empty at depth 0).
// `stream` is the residual stream entering the layer, [n_tokens][n_embd], the input of the
// lookahead (for predictors of their own and for tests). Spans are valid only during the call.
struct lookahead_event {
    std::uint32_t layer = 0;
    std::int64_t n_tokens = 0;
    std::span<const batch_token> tokens;
    int depth = 0;
    std::span<const float> probs;
    std::span<const float> stream;
};
using layer_start_observer = std::function<void(const lookahead_event&)>;

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
    // `last_logits` receives the final token's logits. `seq` goes into every batch_token.
    result<void> run_sequence(std::span<const token_id> tokens, kv_cache& cache,
                              std::vector<float>& last_logits, std::uint64_t seq = 0);

    // Observers run on the calling (engine) thread, inside run(), in the order they were
    // added; they must not call back into the evaluator. Adding or clearing them is not
    // allowed while run() is in progress (same thread only).

    // Called at every MoE layer with the router's output (the scheduler and the trace
    // recorder listen here).
    void add_routing_observer(routing_observer observer);
    // Clears the list, then adds `observer` (if it is set): the single-observer form.
    void set_routing_observer(routing_observer observer);
    // Called at the start of every MoE layer (also at depth 0, with empty probs).
    void add_layer_start_observer(layer_start_observer observer);
    void clear_observers() noexcept;

    // How many routers the lookahead applies at each layer (0 = off, the default; at most
    // max_lookahead_depth). The lookahead reads the residual stream and changes no logits.
    void set_lookahead_depth(int depth);
    int lookahead_depth() const noexcept { return lookahead_depth_; }

    // Bytes of the scratch it holds (activations, router outputs, per-thread expert and
    // attention buffers); grows when a batch needs a longer attention context. Owner thread.
    std::uint64_t scratch_bytes() const noexcept;

private:
    result<void> validate(std::span<const batch_token> batch) const;
    // Computes the router lookahead of MoE layer `layer` from x_ into lookahead_ (uses cur_ and act_
    // as scratch, which attention_block overwrites next) and calls the layer-start observers.
    void layer_start(std::uint32_t layer, std::span<const batch_token> batch);
    // The sum orders of layer `layer`'s router rows (this batch's, or all alone).
    const kernels::sum_order* router_orders(std::uint32_t layer) const noexcept;
    void attention_block(std::uint32_t layer, std::span<const batch_token> batch);
    // Multi-head latent attention (model_hparams::mla), evaluator_mla.cpp: the projections,
    // then the absorbed or the decompressed attention, then the output projection.
    void mla_attention_block(std::uint32_t layer, std::span<const batch_token> batch);
    void mla_absorbed_attention(std::uint32_t layer, std::span<const batch_token> batch);
    void mla_decompressed_attention(std::uint32_t layer, std::span<const batch_token> batch);
    result<void> moe_block(std::uint32_t layer, std::span<const batch_token> batch);
    // A leading dense layer's feed-forward block with its residual.
    void dense_block(std::uint32_t layer, std::int64_t n);
    // A SwiGLU block (the shared expert, a dense layer's) on cur_ (the ffn_norm output) into
    // shared_out_, in layer `layer`'s sum orders.
    void feed_forward(std::uint32_t layer, const kernels::matrix_view& gate, const kernels::matrix_view& up,
                      const kernels::matrix_view& down, std::int64_t n);
    // Scales shared_out_ by the shared expert's gate (Qwen2-MoE).
    void gate_shared_expert(std::uint32_t layer, std::int64_t n);
    // Scratch for applying one expert: one per pool thread, so several experts can run at
    // once, each on one thread (its own single-thread pool keeps the kernels inline).
    struct expert_scratch {
        explicit expert_scratch(std::size_t max_batch, std::size_t embd, std::size_t ff);
        kernels::compute_pool serial{1};
        kernels::activation_buffer act;
        std::vector<float> gathered, gate, up, down;
    };
    // Runs expert `e` (weights `w`) on the batch rows routed to it with `pool` and `scratch`;
    // writes each row's weighted output into its (token, slot) place of expert_out_.
    void apply_expert(std::uint32_t e, const storage::expert_weights& w, kernels::compute_pool& pool,
                      expert_scratch& scratch);
    // Applies the experts needed_[first, first + count) whose handles are in handles_.
    void apply_group(std::size_t first, std::size_t count);
    // Runs fn(t) for t in [0, n), spread over the pool when n is large enough to pay.
    void for_tokens(std::int64_t n, const std::function<void(std::int64_t)>& fn);

    model& model_;
    kernels::compute_pool& pool_;
    std::int64_t max_batch_;
    std::vector<routing_observer> observers_;
    std::vector<layer_start_observer> layer_start_observers_;
    int lookahead_depth_ = 0;

    // Scratch, sized for max_batch_ at construction.
    std::vector<float> x_, cur_, q_, k_, v_, attn_, proj_;
    std::vector<float> router_probs_, route_weights_;
    std::vector<float> route_scratch_;  // [max_batch][route_scratch_stride_] for route_token
    std::size_t route_scratch_stride_ = 0;
    std::vector<float> lookahead_;  // [max_lookahead_depth][max_batch][n_expert]
    std::vector<std::int32_t> route_experts_;
    std::vector<float> expert_out_;  // [n][n_expert_used][n_embd]
    std::uint32_t layer_of_experts_ = 0;  // the layer whose experts apply_expert runs
    // MLA: the query [n][n_head * (qk_nope_dim + n_rot)], its low-rank form [n][q_lora_rank],
    // the heads' outputs after attn_v_b [n][n_head * v_head_dim]; decompressed, every head's
    // non-rotary key and value [n][n_head * (qk_nope_dim + v_head_dim)].
    std::vector<float> mla_q_, mla_q_a_, mla_out_, mla_kv_;
    // The shared expert's (or a dense layer's) gate and up [n][n_ff], output [n][n_embd] and
    // the shared expert's gate scale [n].
    std::vector<float> shared_gate_, shared_up_, shared_out_, shared_scale_;
    std::vector<std::unique_ptr<expert_scratch>> expert_scratch_;  // [pool size]
    std::vector<std::uint32_t> group_order_;          // a group's experts, most rows first
    std::vector<std::int32_t> expert_count_;         // tokens per expert this layer
    std::vector<std::int32_t> expert_rows_;          // [n_expert][max_batch] (token*k + slot)
    std::vector<ExpertId> needed_;
    std::vector<storage::expert_handle> handles_;
    std::vector<float> attn_scratch_;                // [pool size][scratch_ctx_]
    std::int64_t scratch_ctx_ = 0;
    std::vector<float> out_rows_;
    std::vector<kernels::sum_order> orders_;  // [max_batch]: the batch's tokens' orders
    kernels::activation_buffer act_;
};

}  // namespace moed::engine
