// A loaded MoE model of one of the architectures engine/arch.h lists: hyper-parameters and
// weights read from GGUF metadata and tensors (copied into owned memory at load, so nothing
// the model serves faults when the file is truncated or rewritten underneath), the
// tokenizer, and the expert source that routed experts come through.
// Threads: immutable after load(); the expert source is used by the engine thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/units.h"
#include "engine/arch.h"
#include "engine/memory_budget.h"
#include "engine/tokenizer.h"
#include "kernels/cpu/matmul.h"
#include "storage/expert_source.h"
#include "storage/gguf.h"
#include "storage/tiers.h"

namespace moed::engine {

// Dense weights of one transformer block. Optional parts are null (vectors) or have no
// data (matrices) when the architecture or the file has none.
struct layer_weights {
    const float* attn_norm = nullptr;  // [n_embd]
    kernels::matrix_view wq, wk, wv, wo;
    const float* bq = nullptr;         // [n_head * head_dim]
    const float* bk = nullptr;         // [n_head_kv * head_dim]
    const float* bv = nullptr;         // [n_head_kv * head_dim]
    const float* q_norm = nullptr;     // [head_dim] per head, or [n_head * head_dim] whole
    const float* k_norm = nullptr;     // [head_dim] per head, or [n_head_kv * head_dim] whole
    const float* bo = nullptr;         // [n_embd]
    const float* sinks = nullptr;      // [n_head]
    // MLA (hparams().mla): the query through a low-rank bottleneck (q_a [q_lora_rank x
    // n_embd], its norm, q_b [n_head * (qk_nope_dim + n_rot) x q_lora_rank]) or wq
    // directly; kv_a [kv_lora_rank + n_rot x n_embd] and the latent's norm [kv_lora_rank];
    // k_b and v_b are per head ([kv_lora_rank x qk_nope_dim] and [v_head_dim x
    // kv_lora_rank]): the view of head 0 (head_matrix() gives head h). The decompressed
    // form has wkv_b [n_head * (qk_nope_dim + v_head_dim) x kv_lora_rank] instead.
    kernels::matrix_view wq_a, wq_b, wkv_a, wk_b, wv_b, wkv_b;
    const float* q_a_norm = nullptr;
    const float* kv_a_norm = nullptr;
    const float* ffn_norm = nullptr;   // [n_embd]
    // A leading dense layer's feed-forward block: gate and up [n_ff x n_embd], down
    // [n_embd x n_ff]. MoE layers have none, dense layers have no router or experts.
    kernels::matrix_view ffn_gate, ffn_up, ffn_down;
    kernels::matrix_view router;       // [n_expert x n_embd]
    const float* router_bias = nullptr;  // [n_expert]
    const float* selection_bias = nullptr;  // [n_expert] (exp_probs_b), added for selection only
    // Per-expert biases, [n_expert][n_ff_exp] (gate, up) and [n_expert][n_embd] (down).
    const float* expert_gate_bias = nullptr;
    const float* expert_up_bias = nullptr;
    const float* expert_down_bias = nullptr;
    // The shared expert (hparams().shared_expert.n_ff > 0): gate and up [n_ff x n_embd],
    // down [n_embd x n_ff], and its gate vector [1 x n_embd] when it is gated.
    kernels::matrix_view shared_gate, shared_up, shared_down, shared_gate_inp;
};

// Head h's matrix of a per-head stack (layer_weights::wk_b, wv_b).
inline kernels::matrix_view head_matrix(const kernels::matrix_view& head0, int h) noexcept {
    kernels::matrix_view m = head0;
    m.data = static_cast<const std::byte*>(head0.data) +
             static_cast<std::size_t>(h) * static_cast<std::size_t>(head0.rows) * head0.row_stride_bytes;
    return m;
}

struct load_options {
    // Absent: every routed expert is copied into owned memory with the dense weights
    // (resident). Set: routed experts come through the tiered source with this host budget
    // ("25%" of the expert bytes or an absolute size) and only dense weights are copied; a
    // file changed underneath is reported by the tier's expert reads and file checks.
    std::optional<budget_spec> host_budget;
    storage::tiered_options tier;  // queue depth, I/O mode limits, memory locking
    // The machine's memory the budget and the weights are checked against before they are
    // allocated (0: physical_memory_bytes(); tests inject a smaller one).
    std::uint64_t physical_memory_bytes = 0;
    // Called on the loading thread as the weights copy advances (the bulk of a load): the
    // bytes copied so far and the copy's total (the whole tensor data when experts are
    // resident, the dense weights when they are tiered). Called once with (0, total) before
    // the first read, then after every piece; the last call has done == total. Null: none.
    std::function<void(std::uint64_t done_bytes, std::uint64_t total_bytes)> on_progress;
    // The copy reads at most this many bytes at a time, so on_progress moves at least this
    // often (a smaller piece costs one more pread each).
    std::uint64_t piece_bytes = std::uint64_t{64} << 20;
    // Testing only: a pause before every piece of the copy, a disk slow enough that a test
    // can watch a load (requests during it, progress rising). Zero: none.
    std::chrono::microseconds piece_delay{0};
};

class model {
public:
    // Opens `path`, checks architecture, hyper-parameters, tensor shapes and types.
    // Errors name the file and the key or tensor at fault. Before copying any weights it
    // checks the host budget and the copy against physical memory (memory_budget.h).
    static result<std::unique_ptr<model>> load(const std::string& path, const load_options& options = {});

    const model_hparams& hparams() const noexcept { return hparams_; }
    const tokenizer& vocab() const noexcept { return *tokenizer_; }
    // Metadata and tensor infos; the file is no longer mapped after load().
    const storage::gguf_file& file() const noexcept { return *file_; }
    // The owned copy of the weights: [file().data_offset(), file_size()) of the file when
    // experts are resident, the dense tensors only when they are tiered.
    std::span<const std::byte> weights_image() const noexcept { return weights_; }
    const storage::expert_layout& experts_layout() const noexcept { return layout_; }

    const layer_weights& layer(std::uint32_t l) const noexcept { return layers_[l]; }
    const kernels::matrix_view& token_embedding() const noexcept { return token_embd_; }
    const kernels::matrix_view& output() const noexcept { return output_; }
    const float* output_norm() const noexcept { return output_norm_; }

    // Where routed experts come from; the resident source unless replaced.
    storage::expert_source& experts() noexcept { return *experts_; }
    void set_expert_source(std::unique_ptr<storage::expert_source> source);

    // Bytes of all routed experts, and of everything else (dense weights).
    std::uint64_t expert_bytes() const noexcept;
    std::uint64_t dense_bytes() const noexcept;

    // The host budget as resolved and capped at load (default: no budget, experts resident).
    const host_budget_plan& host_budget() const noexcept { return host_budget_; }

    // The tiers' control interface when experts are tiered (load_options::host_budget), else
    // null.
    storage::tier_control* tiers() noexcept { return experts_->control(); }
    const storage::tier_control* tiers() const noexcept { return experts_->control(); }

private:
    model() = default;
    std::unique_ptr<storage::gguf_file> file_;
    std::unique_ptr<tokenizer> tokenizer_;
    model_hparams hparams_;
    std::vector<layer_weights> layers_;
    kernels::matrix_view token_embd_;
    kernels::matrix_view output_;
    const float* output_norm_ = nullptr;
    std::vector<std::vector<float>> owned_vectors_;  // norm weights stored in non-f32 types
    storage::expert_layout layout_;
    std::unique_ptr<storage::expert_source> experts_;
    host_budget_plan host_budget_;
    // The weights served: all tensors (resident) or the dense ones (tiered), 64-byte aligned.
    std::unique_ptr<std::byte[]> weights_storage_;
    std::span<const std::byte> weights_;
};

}  // namespace moed::engine
