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
};

struct routing_config {
    gating_kind gating = gating_kind::softmax;
    // The chosen experts' weights are divided by their sum (Qwen3, Mixtral) or kept as the
    // gating gave them (Qwen2-MoE, OLMoE).
    bool normalize = true;
    // The router's logits get a per-expert bias (ffn_gate_inp.bias; gpt-oss).
    bool bias = false;
};

// The experts' activation: SwiGLU, silu(gate) x up; or gpt-oss's clamped form,
// gate' = min(gate, 7), up' = clamp(up, -7, 7), gate' sigmoid(1.702 gate') (up' + 1).
enum class expert_activation : std::uint8_t { swiglu, swiglu_oai };

// An expert every token goes through besides the routed ones (width 0: none). Gated: its
// output is scaled by sigmoid(w . x) with a per-layer vector w (Qwen2-MoE).
struct shared_expert_config {
    std::int64_t n_ff = 0;
    bool gated = false;
};

struct model_hparams {
    std::string architecture;
    std::uint32_t n_layer = 0;
    std::int64_t n_embd = 0;
    int n_head = 0;
    int n_head_kv = 0;
    int head_dim = 0;   // attention.key_length (= value_length)
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
    routing_config routing;
    expert_activation activation = expert_activation::swiglu;
    // Each routed expert's gate, up and down outputs get a bias of its own
    // (ffn_{gate,up,down}_exps.bias; gpt-oss).
    bool expert_bias = false;
    shared_expert_config shared_expert;

    bool is_swa_layer(std::uint32_t l) const noexcept {
        return swa_window > 0 && (swa_period == 0 || l % swa_period < swa_period - 1);
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
// block_count, embedding_length, attention.head_count(_kv), expert_count,
// expert_used_count, context_length, attention.key_length/value_length,
// rope.dimension_count, rope.freq_base, attention.layer_norm_rms_epsilon, and the
// rope.scaling.* keys (type none/linear/yarn, factor, original_context_length,
// attn_factor, yarn_beta_fast/slow). Checks the
// relations between them (heads divide evenly, experts used <= experts, even rotary dims).
result<void> read_common_hparams(const storage::gguf_file& file, model_hparams& hp);

// "<arch>.<name>", a positive integer no larger than max_value; required.
result<std::uint64_t> read_positive(const storage::gguf_file& file, const model_hparams& hp, std::string_view name,
                                    std::uint64_t max_value);
// The same, or `fallback` when the file has no such key.
result<std::uint64_t> read_positive_or(const storage::gguf_file& file, const model_hparams& hp, std::string_view name,
                                       std::uint64_t max_value, std::uint64_t fallback);

// The routed experts' stacked tensors of every layer, as llama.cpp names them
// (blk.<l>.ffn_{gate,up,down}_exps.weight).
std::vector<storage::stacked_expert_names> stacked_expert_names(const model_hparams& hp);

}  // namespace moed::engine
