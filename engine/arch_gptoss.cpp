#include "engine/arch_gptoss.h"

#include "storage/gguf.h"

namespace moed::engine {

namespace {

result<void> configure(const storage::gguf_file& file, model_hparams& hp) {
    MOED_TRY(read_common_hparams(file, hp));
    auto n_ff = read_positive(file, hp, "expert_feed_forward_length", 1u << 20);
    if (!n_ff) return unexpected(std::move(n_ff).error());
    auto window = read_positive(file, hp, "attention.sliding_window", 1u << 24);
    if (!window) return unexpected(std::move(window).error());
    auto period = read_positive_or(file, hp, "attention.sliding_window_pattern", 4096, 2);
    if (!period) return unexpected(std::move(period).error());
    if (file.find(hp.architecture + ".rope.freq_base_swa") != nullptr) {
        auto base = file.get_float(hp.architecture + ".rope.freq_base_swa");
        if (!base) return unexpected(std::move(base).error());
        if (static_cast<float>(*base) != hp.rope_freq_base) {
            return make_error(errc::unsupported, "{}: key '{}.rope.freq_base_swa' = {} differs from rope.freq_base {}",
                              file.path(), hp.architecture, *base, hp.rope_freq_base);
        }
    }
    hp.n_ff_exp = static_cast<std::int64_t>(*n_ff);
    hp.swa_window = static_cast<std::uint32_t>(*window);
    hp.swa_period = static_cast<std::uint32_t>(*period);
    hp.rope = rope_kind::neox;
    hp.qk_norm = qk_norm_kind::none;
    hp.qkv_bias = true;
    hp.attn_out_bias = true;
    hp.attn_sinks = true;
    hp.routing = {gating_kind::softmax_chosen, false, true};
    hp.activation = expert_activation::swiglu_oai;
    hp.expert_bias = true;
    return {};
}

}  // namespace

const architecture& gptoss_architecture() {
    static const architecture arch{"gpt-oss", &configure, "post_attention_norm"};
    return arch;
}

}  // namespace moed::engine
