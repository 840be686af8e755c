#include "engine/arch.h"

#include <array>

#include <fmt/format.h>

#include "engine/arch_deepseek2.h"
#include "engine/arch_glm4moe.h"
#include "engine/arch_gptoss.h"
#include "engine/arch_llama.h"
#include "engine/arch_olmoe.h"
#include "engine/arch_qwen2moe.h"
#include "engine/arch_qwen3moe.h"
#include "storage/gguf.h"

namespace moed::engine {

namespace {

const std::array<const architecture*, 7>& registry() {
    static const std::array<const architecture*, 7> all = {
        &qwen3moe_architecture(), &llama_architecture(),   &qwen2moe_architecture(), &olmoe_architecture(),
        &gptoss_architecture(),   &deepseek2_architecture(), &glm4moe_architecture()};
    return all;
}

std::string key_of(const model_hparams& hp, std::string_view name) {
    return fmt::format("{}.{}", hp.architecture, name);
}

// A float key "<arch>.<name>", or `fallback` when absent.
result<float> float_or(const storage::gguf_file& file, const model_hparams& hp, std::string_view name, float fallback) {
    const std::string key = key_of(hp, name);
    if (file.find(key) == nullptr) return fallback;
    auto v = file.get_float(key);
    if (!v) return unexpected(std::move(v).error());
    return static_cast<float>(*v);
}

// rope.scaling.*, with llama.cpp's defaults (type linear, factor 1, original context the
// training context, YaRN betas 32 and 1).
result<void> read_rope_scaling(const storage::gguf_file& file, model_hparams& hp) {
    std::string type = "linear";
    if (const std::string key = key_of(hp, "rope.scaling.type"); file.find(key) != nullptr) {
        auto v = file.get_string(key);
        if (!v) return unexpected(std::move(v).error());
        type = std::string(*v);
    }
    auto factor = float_or(file, hp, "rope.scaling.factor", 0.0f);
    if (!factor) return unexpected(std::move(factor).error());
    auto attn_factor = float_or(file, hp, "rope.scaling.attn_factor", 1.0f);
    if (!attn_factor) return unexpected(std::move(attn_factor).error());
    if (!(*factor >= 0.0f && *factor < 1e6f) || !(*attn_factor > 0.0f && *attn_factor < 1e6f)) {
        return make_error(errc::bad_file, "{}: rope.scaling factor {} or attn_factor {} out of range", file.path(),
                          *factor, *attn_factor);
    }
    const float scale = *factor == 0.0f ? 1.0f : *factor;
    if (type == "none" || (type == "linear" && scale == 1.0f && *attn_factor == 1.0f)) return {};
    if (type == "linear") {
        kernels::rope_scaling sc;
        sc.freq_scale = 1.0f / scale;
        sc.attn_factor = *attn_factor;
        hp.rope_scale = sc;
        return {};
    }
    if (type != "yarn") {
        return make_error(errc::unsupported, "{}: key '{}' = '{}'; moed supports none, linear and yarn", file.path(),
                          key_of(hp, "rope.scaling.type"), type);
    }
    auto n_ctx_orig = read_positive_or(file, hp, "rope.scaling.original_context_length", 1u << 24,
                                       static_cast<std::uint64_t>(hp.n_ctx_train));
    if (!n_ctx_orig) return unexpected(std::move(n_ctx_orig).error());
    auto beta_fast = float_or(file, hp, "rope.scaling.yarn_beta_fast", 32.0f);
    if (!beta_fast) return unexpected(std::move(beta_fast).error());
    auto beta_slow = float_or(file, hp, "rope.scaling.yarn_beta_slow", 1.0f);
    if (!beta_slow) return unexpected(std::move(beta_slow).error());
    if (!(*beta_fast > 0.0f) || !(*beta_slow > 0.0f)) {
        return make_error(errc::bad_file, "{}: YaRN betas {} and {} must be positive", file.path(), *beta_fast,
                          *beta_slow);
    }
    hp.rope_scale = kernels::make_yarn(hp.n_rot, hp.rope_freq_base, scale, static_cast<int>(*n_ctx_orig), *beta_fast,
                                       *beta_slow, *attn_factor, hp.yarn_mscale, hp.yarn_mscale_all_dims);
    return {};
}

// A bool key "<arch>.<name>", or `fallback` when absent.
result<bool> bool_or(const storage::gguf_file& file, const model_hparams& hp, std::string_view name, bool fallback) {
    const std::string key = key_of(hp, name);
    if (file.find(key) == nullptr) return fallback;
    return file.get_bool(key);
}

}  // namespace

result<const architecture*> find_architecture(const storage::gguf_file& file, std::string_view name) {
    std::string names;
    for (const architecture* a : registry()) {
        if (a->name == name) return a;
        names += names.empty() ? "" : ", ";
        names += a->name;
    }
    return make_error(errc::unsupported, "{}: general.architecture is '{}'; moed supports: {}", file.path(), name,
                      names);
}

result<std::uint64_t> read_positive(const storage::gguf_file& file, const model_hparams& hp, std::string_view name,
                                    std::uint64_t max_value) {
    const std::string key = key_of(hp, name);
    auto value = file.get_uint(key);
    if (!value) return value;
    if (*value == 0 || *value > max_value) {
        return make_error(errc::bad_file, "{}: key '{}' = {} is out of range (1..{})", file.path(), key, *value,
                          max_value);
    }
    return value;
}

result<std::uint64_t> read_positive_or(const storage::gguf_file& file, const model_hparams& hp, std::string_view name,
                                       std::uint64_t max_value, std::uint64_t fallback) {
    if (file.find(key_of(hp, name)) == nullptr) return fallback;
    return read_positive(file, hp, name, max_value);
}

result<void> read_common_hparams(const storage::gguf_file& file, model_hparams& hp, bool mla) {
    constexpr std::uint64_t max_dim = 1u << 20;
    const std::string& path = file.path();
    auto get = [&](const char* name, std::uint64_t max_value) { return read_positive(file, hp, name, max_value); };
    auto n_layer = get("block_count", 4096);
    if (!n_layer) return unexpected(std::move(n_layer).error());
    // Multi-token prediction blocks (GLM-4.5, some DeepSeek files) come last; the forward
    // pass does not run them, as llama.cpp's does not.
    std::uint64_t n_nextn = 0;
    if (file.find(key_of(hp, "nextn_predict_layers")) != nullptr) {
        auto v = file.get_uint(key_of(hp, "nextn_predict_layers"));
        if (!v) return unexpected(std::move(v).error());
        n_nextn = *v;
    }
    if (n_nextn >= *n_layer) {
        return make_error(errc::bad_file, "{}: key '{}' = {} leaves no layer of the {} in block_count", path,
                          key_of(hp, "nextn_predict_layers"), n_nextn, *n_layer);
    }
    *n_layer -= n_nextn;
    auto n_embd = get("embedding_length", max_dim);
    if (!n_embd) return unexpected(std::move(n_embd).error());
    auto n_head = get("attention.head_count", 4096);
    if (!n_head) return unexpected(std::move(n_head).error());
    auto n_head_kv = read_positive_or(file, hp, "attention.head_count_kv", 4096, *n_head);
    if (!n_head_kv) return unexpected(std::move(n_head_kv).error());
    auto n_expert = get("expert_count", 65536);
    if (!n_expert) return unexpected(std::move(n_expert).error());
    auto n_expert_used = get("expert_used_count", 65536);
    if (!n_expert_used) return unexpected(std::move(n_expert_used).error());
    auto n_ctx_train = get("context_length", 1u << 24);
    if (!n_ctx_train) return unexpected(std::move(n_ctx_train).error());
    hp.n_layer = static_cast<std::uint32_t>(*n_layer);
    hp.n_embd = static_cast<std::int64_t>(*n_embd);
    hp.n_head = static_cast<int>(*n_head);
    hp.n_head_kv = static_cast<int>(*n_head_kv);
    hp.n_expert = static_cast<std::uint32_t>(*n_expert);
    hp.n_expert_used = static_cast<std::uint32_t>(*n_expert_used);
    hp.n_ctx_train = static_cast<std::int64_t>(*n_ctx_train);

    auto head_dim = read_positive_or(file, hp, "attention.key_length", 65536,
                                     static_cast<std::uint64_t>(hp.n_embd / hp.n_head));
    if (!head_dim) return unexpected(std::move(head_dim).error());
    hp.head_dim = static_cast<int>(*head_dim);
    auto value_dim = read_positive_or(file, hp, "attention.value_length", 65536, *head_dim);
    if (!value_dim) return unexpected(std::move(value_dim).error());
    if (*value_dim != *head_dim && !mla) {
        return make_error(errc::unsupported, "{}: key '{}' = {} differs from key_length {}", path,
                          key_of(hp, "attention.value_length"), *value_dim, hp.head_dim);
    }
    auto n_rot = read_positive_or(file, hp, "rope.dimension_count", 65536, *head_dim);
    if (!n_rot) return unexpected(std::move(n_rot).error());
    hp.n_rot = static_cast<int>(*n_rot);
    if (file.find(key_of(hp, "rope.freq_base"))) {
        auto v = file.get_float(key_of(hp, "rope.freq_base"));
        if (!v) return unexpected(std::move(v).error());
        hp.rope_freq_base = static_cast<float>(*v);
    }
    auto eps = file.get_float(key_of(hp, "attention.layer_norm_rms_epsilon"));
    if (!eps) return unexpected(std::move(eps).error());
    hp.rms_eps = static_cast<float>(*eps);

    MOED_TRY(read_rope_scaling(file, hp));

    if (hp.n_head % hp.n_head_kv != 0) {
        return make_error(errc::bad_file, "{}: attention.head_count {} is not a multiple of head_count_kv {}", path,
                          hp.n_head, hp.n_head_kv);
    }
    if (hp.n_rot > hp.head_dim || hp.n_rot % 2 != 0) {
        return make_error(errc::unsupported, "{}: rope.dimension_count {} must be even and at most the head dim {}",
                          path, hp.n_rot, hp.head_dim);
    }
    if (hp.n_expert_used > hp.n_expert) {
        return make_error(errc::bad_file, "{}: expert_used_count {} exceeds expert_count {}", path, hp.n_expert_used,
                          hp.n_expert);
    }
    if (!(hp.rms_eps >= 0.0f) || !(hp.rope_freq_base > 0.0f)) {
        return make_error(errc::bad_file, "{}: rms epsilon {} or rope base {} out of range", path, hp.rms_eps,
                          hp.rope_freq_base);
    }
    return {};
}

result<void> read_deepseek_moe(const storage::gguf_file& file, model_hparams& hp, gating_kind gating) {
    const std::string& path = file.path();
    auto n_ff_exp = read_positive(file, hp, "expert_feed_forward_length", 1u << 20);
    if (!n_ff_exp) return unexpected(std::move(n_ff_exp).error());
    hp.n_ff_exp = static_cast<std::int64_t>(*n_ff_exp);

    if (const std::string key = key_of(hp, "leading_dense_block_count"); file.find(key) != nullptr) {
        auto v = file.get_uint(key);
        if (!v) return unexpected(std::move(v).error());
        if (*v >= hp.n_layer) {
            return make_error(errc::bad_file, "{}: key '{}' = {} leaves no MoE layer of the {}", path, key, *v,
                              hp.n_layer);
        }
        hp.n_layer_dense_lead = static_cast<std::uint32_t>(*v);
    }
    if (hp.n_layer_dense_lead > 0) {
        auto n_ff = read_positive(file, hp, "feed_forward_length", 1u << 24);
        if (!n_ff) return unexpected(std::move(n_ff).error());
        hp.n_ff = static_cast<std::int64_t>(*n_ff);
    }

    std::uint64_t n_shared = 0;
    if (const std::string key = key_of(hp, "expert_shared_count"); file.find(key) != nullptr) {
        auto v = file.get_uint(key);
        if (!v) return unexpected(std::move(v).error());
        if (*v > 256) return make_error(errc::bad_file, "{}: key '{}' = {} is out of range (0..256)", path, key, *v);
        n_shared = *v;
    }
    hp.shared_expert = {static_cast<std::int64_t>(n_shared) * hp.n_ff_exp, false};

    routing_config& r = hp.routing;
    r.gating = gating;
    if (const std::string key = key_of(hp, "expert_gating_func"); file.find(key) != nullptr) {
        auto v = file.get_uint(key);
        if (!v) return unexpected(std::move(v).error());
        // llama.cpp's llama_expert_gating_func_type; 0 means unset.
        switch (*v) {
            case 0: break;
            case 1: r.gating = gating_kind::softmax; break;
            case 2: r.gating = gating_kind::sigmoid; break;
            default:
                return make_error(errc::unsupported, "{}: key '{}' = {}; moed supports 1 (softmax) and 2 (sigmoid)",
                                  path, key, *v);
        }
    }
    auto norm = bool_or(file, hp, "expert_weights_norm", false);
    if (!norm) return unexpected(std::move(norm).error());
    r.normalize = *norm;
    auto scale = float_or(file, hp, "expert_weights_scale", 0.0f);
    if (!scale) return unexpected(std::move(scale).error());
    if (!(*scale >= 0.0f && *scale < 1e6f)) {
        return make_error(errc::bad_file, "{}: key '{}' = {} is out of range", path,
                          key_of(hp, "expert_weights_scale"), *scale);
    }
    r.scale = *scale == 0.0f ? 1.0f : *scale;  // 0 (unset) scales by 1, as llama.cpp

    std::uint64_t n_group = 0, n_group_used = 0;
    for (auto [name, dst] : {std::pair{"expert_group_count", &n_group}, std::pair{"expert_group_used_count", &n_group_used}}) {
        const std::string key = key_of(hp, name);
        if (file.find(key) == nullptr) continue;
        auto v = file.get_uint(key);
        if (!v) return unexpected(std::move(v).error());
        *dst = *v;
    }
    if (n_group > 1) {
        // As llama.cpp checks, and a group needs two experts for its score.
        if (n_group >= hp.n_expert || hp.n_expert % n_group != 0 || hp.n_expert / n_group < 2) {
            return make_error(errc::bad_file, "{}: expert_group_count {} does not split the {} experts into equal groups of two or more",
                              path, n_group, hp.n_expert);
        }
        if (n_group_used == 0 || n_group_used >= n_group) {
            return make_error(errc::bad_file, "{}: expert_group_used_count {} must be in 1..{} (expert_group_count - 1)",
                              path, n_group_used, n_group - 1);
        }
        if (n_group_used * (hp.n_expert / n_group) < hp.n_expert_used) {
            return make_error(errc::bad_file, "{}: {} groups of {} experts cannot hold the {} experts each token uses",
                              path, n_group_used, hp.n_expert / n_group, hp.n_expert_used);
        }
        r.n_group = static_cast<std::uint32_t>(n_group);
        r.n_group_used = static_cast<std::uint32_t>(n_group_used);
    }
    // The selection bias is a tensor; DeepSeek-V2 files have none, V3 and GLM-4.5 have one
    // per MoE layer (model.cpp requires it in every MoE layer once the first has it).
    r.selection_bias =
        file.find_tensor(fmt::format("blk.{}.exp_probs_b.bias", hp.n_layer_dense_lead)) != nullptr;
    return {};
}

std::vector<storage::stacked_expert_names> stacked_expert_names(const model_hparams& hp) {
    std::vector<storage::stacked_expert_names> names;
    names.reserve(hp.n_moe_layer());
    for (std::uint32_t l = hp.n_layer_dense_lead; l < hp.n_layer; ++l) {
        names.push_back({fmt::format("blk.{}.ffn_gate_exps.weight", l), fmt::format("blk.{}.ffn_up_exps.weight", l),
                         fmt::format("blk.{}.ffn_down_exps.weight", l)});
    }
    return names;
}

}  // namespace moed::engine
