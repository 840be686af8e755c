#include "engine/arch_glm4moe.h"

#include <fmt/format.h>

#include "storage/gguf.h"

namespace moed::engine {

namespace {

result<void> configure(const storage::gguf_file& file, model_hparams& hp) {
    MOED_TRY(read_common_hparams(file, hp));
    // Multimodal GLM files rotate by sections of positions (M-RoPE); the text models do not.
    if (const storage::gguf_value* sections = file.find(hp.architecture + ".rope.dimension_sections")) {
        auto arr = sections->as_array(hp.architecture + ".rope.dimension_sections");
        if (!arr) return unexpected(std::move(arr).error());
        // As llama.cpp: M-RoPE when the first two sections are set.
        const auto& v = (*arr)->values;
        auto positive = [&](std::size_t i) {
            auto x = v[i].as_uint("rope.dimension_sections");
            return x && *x > 0;
        };
        if (v.size() >= 2 && positive(0) && positive(1)) {
            return make_error(errc::unsupported, "{}: key '{}.rope.dimension_sections' asks for M-RoPE, which moed does not run",
                              file.path(), hp.architecture);
        }
    }
    MOED_TRY(read_deepseek_moe(file, hp, gating_kind::sigmoid));
    hp.rope = rope_kind::neox;
    // GLM-4.5 (355B) normalises q and k per head; GLM-4.5-Air has no such tensors.
    const bool has_qk_norm = file.find_tensor("blk.0.attn_q_norm.weight") != nullptr;
    hp.qk_norm = has_qk_norm ? qk_norm_kind::per_head : qk_norm_kind::none;
    hp.qkv_bias = true;
    return {};
}

}  // namespace

const architecture& glm4moe_architecture() {
    static const architecture arch{"glm4moe", &configure, "post_attention_norm"};
    return arch;
}

}  // namespace moed::engine
