#include "engine/arch_deepseek2.h"

#include <cmath>

#include <fmt/format.h>

#include "storage/gguf.h"

namespace moed::engine {

namespace {

// "<arch>.<name>" as an unsigned integer at most max_value, or `fallback` when absent.
result<std::uint64_t> uint_or(const storage::gguf_file& file, const model_hparams& hp, const char* name,
                              std::uint64_t max_value, std::uint64_t fallback) {
    const std::string key = fmt::format("{}.{}", hp.architecture, name);
    if (file.find(key) == nullptr) return fallback;
    auto v = file.get_uint(key);
    if (!v) return v;
    if (*v > max_value) {
        return make_error(errc::bad_file, "{}: key '{}' = {} is out of range (0..{})", file.path(), key, *v, max_value);
    }
    return v;
}

// YaRN's magnitude as DeepSeek's config gives it (rope.scaling.yarn_log_multiplier, which
// the converter writes as 0.1 x mscale_all_dim); read before the common keys, which build
// the RoPE scaling with it.
result<void> read_yarn_log_multiplier(const storage::gguf_file& file, model_hparams& hp) {
    const std::string key = hp.architecture + ".rope.scaling.yarn_log_multiplier";
    if (file.find(key) == nullptr) return {};
    auto v = file.get_float(key);
    if (!v) return unexpected(std::move(v).error());
    if (!(std::fabs(*v) < 1e3)) return make_error(errc::bad_file, "{}: key '{}' = {} is out of range", file.path(), key, *v);
    // As llama.cpp: cancel the converter's 0.1, and (deepseek2 only) take mscale equal to
    // mscale_all_dim when it is not 1, so the YaRN magnitude in RoPE is 1 and the scaling
    // goes into the attention scale instead.
    hp.yarn_mscale_all_dims = static_cast<float>(*v) / 0.1f;
    hp.yarn_mscale = hp.yarn_mscale_all_dims != 1.0f ? hp.yarn_mscale_all_dims : 1.0f;
    return {};
}

result<void> configure(const storage::gguf_file& file, model_hparams& hp) {
    const std::string& path = file.path();
    MOED_TRY(read_yarn_log_multiplier(file, hp));
    MOED_TRY(read_common_hparams(file, hp, /*mla=*/true));

    auto kv_lora = read_positive(file, hp, "attention.kv_lora_rank", 65536);
    if (!kv_lora) return unexpected(std::move(kv_lora).error());
    auto q_lora = uint_or(file, hp, "attention.q_lora_rank", 65536, 0);
    if (!q_lora) return unexpected(std::move(q_lora).error());
    mla_config& mla = hp.mla;
    mla.kv_lora_rank = static_cast<int>(*kv_lora);
    mla.q_lora_rank = static_cast<int>(*q_lora);
    auto value_dim = read_positive_or(file, hp, "attention.value_length", 65536, static_cast<std::uint64_t>(hp.head_dim));
    if (!value_dim) return unexpected(std::move(value_dim).error());

    // The uncompressed head's key size: key_length_mla in the absorbed form's files,
    // key_length in older files (whose converter wrote the decompressed form's keys).
    std::uint64_t k_head = 0;
    if (file.find(hp.architecture + ".attention.key_length_mla") != nullptr) {
        auto k_mla = read_positive(file, hp, "attention.key_length_mla", 65536);
        if (!k_mla) return unexpected(std::move(k_mla).error());
        auto v_mla = read_positive(file, hp, "attention.value_length_mla", 65536);
        if (!v_mla) return unexpected(std::move(v_mla).error());
        k_head = *k_mla;
        mla.v_head_dim = static_cast<int>(*v_mla);
        // The absorbed form's cache row: the latent, then the rotary key part, shared by
        // every head (one KV head).
        if (hp.head_dim != mla.kv_lora_rank + hp.n_rot || *value_dim != static_cast<std::uint64_t>(mla.kv_lora_rank) ||
            hp.n_head_kv != 1) {
            return make_error(errc::bad_file,
                              "{}: MLA needs key_length = kv_lora_rank + rope dims ({} + {}), value_length = "
                              "kv_lora_rank and one KV head; the file has {}, {} and {}",
                              path, mla.kv_lora_rank, hp.n_rot, hp.head_dim, *value_dim, hp.n_head_kv);
        }
    } else {
        k_head = static_cast<std::uint64_t>(hp.head_dim);
        mla.v_head_dim = static_cast<int>(*value_dim);
        mla.absorbed = false;
        if (hp.n_head_kv != hp.n_head) {
            return make_error(errc::bad_file,
                              "{}: a file without key_length_mla (K and V decompressed through attn_kv_b) needs "
                              "head_count_kv = head_count; it has {} and {}",
                              path, hp.n_head_kv, hp.n_head);
        }
    }
    if (static_cast<std::uint64_t>(hp.n_rot) >= k_head) {
        return make_error(errc::bad_file, "{}: rope.dimension_count {} leaves no non-rotary part of the key size {}",
                          path, hp.n_rot, k_head);
    }
    mla.qk_nope_dim = static_cast<int>(k_head) - hp.n_rot;
    if (const std::string key = hp.architecture + ".attention.temperature_scale"; file.find(key) != nullptr) {
        auto v = file.get_float(key);
        if (!v) return unexpected(std::move(v).error());
        if (*v != 0.0) return make_error(errc::unsupported, "{}: key '{}' (attention temperature tuning) is not supported", path, key);
    }

    MOED_TRY(read_deepseek_moe(file, hp, gating_kind::softmax));
    hp.rope = rope_kind::norm;
    hp.qk_norm = qk_norm_kind::none;

    // The attention scale as llama.cpp computes it: the context's YaRN attention factor
    // with its magnitude correction undone, times DeepSeek's mscale, squared, over the
    // square root of the uncompressed head's key size.
    const float freq_scale = hp.rope_scale ? hp.rope_scale->freq_scale : 1.0f;
    const float attn_factor = hp.rope_scale ? hp.rope_scale->attn_factor : 1.0f;
    const float attn_factor_org = attn_factor * (1.0f + 0.1f * std::log(1.0f / freq_scale));
    const float mscale = attn_factor_org * (1.0f + 0.1f * hp.yarn_mscale_all_dims * std::log(1.0f / freq_scale));
    hp.kq_scale = 1.0f * mscale * mscale / std::sqrt(static_cast<float>(k_head));
    return {};
}

}  // namespace

const architecture& deepseek2_architecture() {
    static const architecture arch{"deepseek2", &configure};
    return arch;
}

}  // namespace moed::engine
