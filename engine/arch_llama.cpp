#include "engine/arch_llama.h"

#include "storage/gguf.h"

namespace moed::engine {

namespace {

result<void> configure(const storage::gguf_file& file, model_hparams& hp) {
    if (file.find("llama.expert_count") == nullptr) {
        return make_error(errc::unsupported,
                          "{}: a llama model without experts (no key 'llama.expert_count') is a dense model; moed runs "
                          "mixture-of-experts models",
                          file.path());
    }
    MOED_TRY(read_common_hparams(file, hp));
    auto n_ff = read_positive(file, hp, "feed_forward_length", 1u << 20);
    if (!n_ff) return unexpected(std::move(n_ff).error());
    hp.n_ff_exp = static_cast<std::int64_t>(*n_ff);
    hp.rope = rope_kind::norm;
    hp.qk_norm = qk_norm_kind::none;
    hp.qkv_bias = true;
    hp.routing = {gating_kind::softmax, true};
    return {};
}

}  // namespace

const architecture& llama_architecture() {
    static const architecture arch{"llama", &configure};
    return arch;
}

}  // namespace moed::engine
