#include "engine/arch_qwen3moe.h"

namespace moed::engine {

namespace {

result<void> configure(const storage::gguf_file& file, model_hparams& hp) {
    MOED_TRY(read_common_hparams(file, hp));
    auto n_ff = read_positive(file, hp, "expert_feed_forward_length", 1u << 20);
    if (!n_ff) return unexpected(std::move(n_ff).error());
    hp.n_ff_exp = static_cast<std::int64_t>(*n_ff);
    hp.rope = rope_kind::neox;
    hp.qk_norm = qk_norm_kind::per_head;
    hp.routing = {gating_kind::softmax, true};
    return {};
}

}  // namespace

const architecture& qwen3moe_architecture() {
    static const architecture arch{"qwen3moe", &configure};
    return arch;
}

}  // namespace moed::engine
