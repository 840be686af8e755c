#include "engine/arch_qwen2moe.h"

#include "storage/gguf.h"

namespace moed::engine {

namespace {

result<void> configure(const storage::gguf_file& file, model_hparams& hp) {
    MOED_TRY(read_common_hparams(file, hp));
    // As llama.cpp: without the expert keys, the dense width split over the experts used
    // (routed) or the dense width itself (shared).
    std::uint64_t dense_ff = 0;
    const bool has_dense = file.find(hp.architecture + ".feed_forward_length") != nullptr;
    if (has_dense) {
        auto v = read_positive(file, hp, "feed_forward_length", 1u << 24);
        if (!v) return unexpected(std::move(v).error());
        dense_ff = *v;
    }
    auto n_ff = has_dense ? read_positive_or(file, hp, "expert_feed_forward_length", 1u << 20, dense_ff / hp.n_expert_used)
                          : read_positive(file, hp, "expert_feed_forward_length", 1u << 20);
    if (!n_ff) return unexpected(std::move(n_ff).error());
    auto n_ff_shared = has_dense ? read_positive_or(file, hp, "expert_shared_feed_forward_length", 1u << 20, dense_ff)
                                 : read_positive(file, hp, "expert_shared_feed_forward_length", 1u << 20);
    if (!n_ff_shared) return unexpected(std::move(n_ff_shared).error());
    hp.n_ff_exp = static_cast<std::int64_t>(*n_ff);
    hp.rope = rope_kind::neox;
    hp.qk_norm = qk_norm_kind::none;
    hp.qkv_bias = true;
    hp.routing = {gating_kind::softmax, false};
    hp.shared_expert = {static_cast<std::int64_t>(*n_ff_shared), true};
    return {};
}

}  // namespace

const architecture& qwen2moe_architecture() {
    static const architecture arch{"qwen2moe", &configure};
    return arch;
}

}  // namespace moed::engine
