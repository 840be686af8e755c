// Architectures: what one model family's GGUF keys and tensors are, and which variants of
// the shared blocks (attention, router, experts) its layers compose. Each architecture has
// its own file pair (arch_<name>.{h,cpp}, as llama.cpp keeps src/models/<arch>.cpp) that
// reads its keys into model_hparams and picks the variants; model.cpp binds the tensors
// the variants name and the evaluator runs the shared blocks they select.
// Threads: everything here is immutable data and pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "kernels/cpu/ops.h"
#include "storage/expert_source.h"

namespace moed::storage {
class gguf_file;
}

namespace moed::engine {

// How rotary embedding pairs a head's values: NORM rotates adjacent pairs (2i, 2i + 1),
// NEOX pairs (i, i + n_rot / 2). Values past n_rot are left as they are (partial RoPE).
enum class rope_kind : std::uint8_t { norm, neox };

// RMSNorm of the query and key projections: none, each head's [head_dim] with one shared
// weight (Qwen3), or the whole projection [n_head * head_dim] at once (OLMoE).
enum class qk_norm_kind : std::uint8_t { none, per_head, whole };

// How router logits become expert weights.
enum class gating_kind : std::uint8_t {
    softmax,         // softmax over every expert, then the top k of those probabilities
    softmax_chosen,  // the top k of the logits, then a softmax over the chosen (gpt-oss)
    sigmoid,         // each expert's sigmoid on its own (DeepSeek-V3, GLM-4.5)
};

// The routing of a MoE layer (engine/routing.h runs it). The gating turns the logits into
// per-expert scores; the experts are selected by score plus an optional selection bias,
// optionally only within the best groups; the chosen experts' weights are their scores,
// optionally renormalised, then scaled.
struct routing_config {
    gating_kind gating = gating_kind::softmax;
    // The chosen experts' weights are divided by their sum (Qwen3, Mixtral) or kept as the
    // gating gave them (Qwen2-MoE, OLMoE).
    bool normalize = true;
    // The router's logits get a per-expert bias (ffn_gate_inp.bias; gpt-oss).
    bool bias = false;
    // A per-expert bias added to the scores for selection only (exp_probs_b.bias;
    // DeepSeek-V3, GLM-4.5): the weights stay the unbiased scores.
    bool selection_bias = false;
    // The chosen experts' weights are multiplied by this (expert_weights_scale).
    float scale = 1.0f;
    // Group-limited selection (DeepSeek-V3): the experts form n_group equal groups, a group
    // scores the sum of its two best biased scores, and the top k is taken within the
    // n_group_used best groups. 0: no groups.
    std::uint32_t n_group = 0;
    std::uint32_t n_group_used = 0;
};

// The experts' activation: SwiGLU, silu(gate) x up; or gpt-oss's clamped form,
// gate' = min(gate, 7), up' = clamp(up, -7, 7), gate' sigmoid(1.702 gate') (up' + 1).
enum class expert_activation : std::uint8_t { swiglu, swiglu_oai };

// An expert every token goes through besides the routed ones, in every MoE layer (width 0:
// none). Gated: its output is scaled by sigmoid(w . x) with a per-layer vector w
// (Qwen2-MoE); ungated, it is added as it is (DeepSeek, GLM-4.5, whose files give its width
// as expert_shared_count x expert_feed_forward_length: several shared experts stacked into
// one).
struct shared_expert_config {
    std::int64_t n_ff = 0;
    bool gated = false;
};

// Multi-head latent attention (DeepSeek-V2/V3, Kimi-K2), in the absorbed form llama.cpp
// runs: K and V of every head come from one compressed latent per position, so the cache
// holds one "head" of kv_lora_rank + n_rot values per position (the normalised latent, then
// the RoPE'd shared key part) and attention is multi-query over it. Per head, the query's
// non-rotary part is multiplied into latent space by attn_k_b, and the attention output
// (a latent) out of it by attn_v_b. Files from older converters (no key_length_mla) have
// one attn_kv_b per layer instead, and llama.cpp runs them decompressed (`absorbed` false):
// attn_kv_b turns the latent into every head's non-rotary key and its value, the rotary key
// part is shared by the heads, and attention is multi-head over per-head cache rows of
// qk_nope_dim + n_rot keys and v_head_dim values.
struct mla_config {
    int kv_lora_rank = 0;  // 0: not MLA
    int q_lora_rank = 0;   // 0: one query projection (attn_q); else attn_q_a -> norm -> attn_q_b
    int qk_nope_dim = 0;   // per head, the query/key part without RoPE (key_length_mla - n_rot)
    int v_head_dim = 0;    // per head, the value size before the output projection (value_length_mla)
    bool absorbed = true;
    bool enabled() const noexcept { return kv_lora_rank > 0; }
};

struct model_hparams {
    std::string architecture;
    // The transformer blocks the forward pass runs: block_count less the multi-token
    // prediction blocks some files append (nextn_predict_layers), which are not loaded.
    std::uint32_t n_layer = 0;
    // The first n_layer_dense_lead blocks have a dense SwiGLU feed-forward block of width
    // n_ff and no router or experts (DeepSeek, GLM-4.5); the others are MoE layers. Routed
    // experts are numbered by MoE layer: ExpertId.layer, the expert layout, routing events,
    // traces, profiles and the tiers count MoE layers 0 .. n_moe_layer() - 1, MoE layer m
    // being block m + n_layer_dense_lead.
    std::uint32_t n_layer_dense_lead = 0;
    std::int64_t n_ff = 0;
    std::int64_t n_embd = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;   // attention.key_length (= value_length, but for MLA)
    int n_rot = 0;      // rope.dimension_count
    std::int64_t n_ff_exp = 0;
    std::uint32_t n_expert = 0;
    std::uint32_t n_expert_used = 0;
    std::int64_t n_ctx_train = 0;
    std::int64_t n_vocab = 0;
    float rope_freq_base = 10000.0f;
    float rms_eps = 1e-6f;

    // Block variants (set by the architecture).
    rope_kind rope = rope_kind::neox;
    qk_norm_kind qk_norm = qk_norm_kind::none;
    // Q, K and V projections may carry biases (bound when the file has them).
    bool qkv_bias = false;
    // The attention output projection has a bias; each head has a learned sink logit.
    bool attn_out_bias = false;
    bool attn_sinks = false;
    // Sliding-window attention: layers with l % swa_period < swa_period - 1 attend to the
    // last swa_window positions only (0: every layer attends to all).
    std::uint32_t swa_window = 0;
    std::uint32_t swa_period = 0;
    // RoPE context scaling from rope.scaling.* (linear or YaRN); absent: none.
    std::optional<kernels::rope_scaling> rope_scale;
    // YaRN's attention magnitude terms as DeepSeek's configs give them (mscale,
    // mscale_all_dim; 0: none), set by the architecture before the common keys are read.
    float yarn_mscale = 1.0f;
    float yarn_mscale_all_dims = 0.0f;
    // The attention logits' scale; 0: 1 / sqrt(head_dim).
    float kq_scale = 0.0f;
    mla_config mla;
    routing_config routing;
    expert_activation activation = expert_activation::swiglu;
    // Each routed expert's gate, up and down outputs get a bias of its own
    // (ffn_{gate,up,down}_exps.bias; gpt-oss).
    bool expert_bias = false;
    shared_expert_config shared_expert;

    bool is_swa_layer(std::uint32_t l) const noexcept {
        return swa_window > 0 && (swa_period == 0 || l % swa_period < swa_period - 1);
    }
    std::uint32_t n_moe_layer() const noexcept { return n_layer - n_layer_dense_lead; }
    bool is_moe_layer(std::uint32_t l) const noexcept { return l >= n_layer_dense_lead; }
    // Of the key and value rows attention reads per head: head_dim and the value size
    // (kv_lora_rank for absorbed MLA, whose values are the first kv_lora_rank key values;
    // v_head_dim for decompressed MLA).
    int value_dim() const noexcept {
        if (!mla.enabled()) return head_dim;
        return mla.absorbed ? mla.kv_lora_rank : mla.v_head_dim;
    }
};

// One architecture: its general.architecture name and how it reads its keys.
struct architecture {
    std::string_view name;
    // Reads the hyper-parameters (the common ones via read_common_hparams, then its own)
    // and sets the block variants. Errors name the file and the key.
    result<void> (*configure)(const storage::gguf_file& file, model_hparams& hp) = nullptr;
    // The norm before the feed-forward block, as the file names it (blk.<l>.<name>.weight).
    std::string_view ffn_norm = "ffn_norm";
};

// The architecture named `name`; an unsupported name is an error naming the file and
// listing what moed supports.
result<const architecture*> find_architecture(const storage::gguf_file& file, std::string_view name);

// The keys every architecture has, read as "<arch>.<key>" with llama.cpp's defaults:
// block_count (less nextn_predict_layers), embedding_length, attention.head_count(_kv), expert_count,
// expert_used_count, context_length, attention.key_length/value_length,
// rope.dimension_count, rope.freq_base, attention.layer_norm_rms_epsilon, and the
// rope.scaling.* keys (type none/linear/yarn, factor, original_context_length,
// attn_factor, yarn_beta_fast/slow). Checks the
// relations between them (heads divide evenly, experts used <= experts, even rotary dims).
// value_length must equal key_length unless `mla`, where it is the latent's size.
result<void> read_common_hparams(const storage::gguf_file& file, model_hparams& hp, bool mla = false);

// The keys of the DeepSeek-style MoE block: leading_dense_block_count (with the dense
// feed_forward_length), expert_gating_func (1 softmax, 2 sigmoid; absent: `gating`),
// expert_weights_norm, expert_weights_scale, expert_group_count / expert_group_used_count,
// and expert_shared_count x expert_feed_forward_length for the ungated shared expert.
// Checks that groups divide the experts and can hold the experts used.
result<void> read_deepseek_moe(const storage::gguf_file& file, model_hparams& hp, gating_kind gating);

// "<arch>.<name>", a positive integer no larger than max_value; required.
result<std::uint64_t> read_positive(const storage::gguf_file& file, const model_hparams& hp, std::string_view name,
                                    std::uint64_t max_value);
// The same, or `fallback` when the file has no such key.
result<std::uint64_t> read_positive_or(const storage::gguf_file& file, const model_hparams& hp, std::string_view name,
                                       std::uint64_t max_value, std::uint64_t fallback);

// The routed experts' stacked tensors of every MoE layer, as llama.cpp names them
// (blk.<l>.ffn_{gate,up,down}_exps.weight); entry m is MoE layer m.
std::vector<storage::stacked_expert_names> stacked_expert_names(const model_hparams& hp);

}  // namespace moed::engine
