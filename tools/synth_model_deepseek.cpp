// The synthesizer's DeepSeek-style architectures (synth_model.h, `variant`): deepseek2 with
// multi-head latent attention and glm4moe with partial RoPE, both with leading dense layers,
// ungated shared experts and the DeepSeek router keys; random weights, as llama.cpp's
// converter lays the tensors out.
#include <cmath>
#include <string>

#include <fmt/format.h>

#include "tools/synth_model_impl.h"

namespace moed::tools::detail {

namespace {

// deepseek2's and glm4moe's YaRN as their configs give it: x40 from 4096 positions.
constexpr float yarn_factor = 40.0f;
constexpr std::uint32_t yarn_original_ctx = 4096;
// The v3 variant's groups.
constexpr std::uint32_t v3_groups = 4;
constexpr std::uint32_t v3_groups_used = 2;
// The routed weights' scale of DeepSeek-V3 and GLM-4.5.
constexpr float routed_scale = 2.5f;

struct writer {
    storage::gguf_writer& w;
    type_mix mix;
    random_source& rng;

    // `want` when its block divides a row of `cols`, else Q8_0, else F16 (as llama-quantize
    // falls back for rows its type cannot hold).
    static tensor_type fit(tensor_type want, std::int64_t cols) {
        const auto traits = traits_of(static_cast<std::uint32_t>(want));
        if (cols % traits->block_elems == 0) return want;
        if (cols % 32 == 0 && want != tensor_type::f32 && want != tensor_type::f16) return tensor_type::q8_0;
        return want == tensor_type::f32 ? tensor_type::f32 : tensor_type::f16;
    }
    static float scale_for(std::int64_t fan_in) { return 1.7f / std::sqrt(static_cast<float>(fan_in)); }

    // `count` stacked matrices of [rows x cols] (one when count is 0), random with the
    // magnitude of their fan-in.
    void matrix(const std::string& name, std::int64_t rows, std::int64_t cols, tensor_type want, std::int64_t count = 0,
                float gain = 1.0f) {
        const tensor_type t = fit(want, cols);
        const std::int64_t n = count == 0 ? 1 : count;
        std::vector<std::int64_t> ne = {cols, rows};
        if (count != 0) ne.push_back(count);
        w.add_tensor(name, t, ne, random_tensor(t, cols, rows * n, scale_for(cols) * gain, rng));
    }
    // A norm's weight: around 1, so a weight bound to the wrong norm changes the output.
    void norm(const std::string& name, std::int64_t n) {
        w.add_tensor(name, tensor_type::f32, {n}, make_tensor(tensor_type::f32, n, 1, [&](std::int64_t, std::vector<float>& row) {
                         for (auto& v : row) v = 1.0f + rng.uniform(0.5f);
                     }));
    }
    void vector(const std::string& name, std::int64_t n, float scale) {
        w.add_tensor(name, tensor_type::f32, {n}, random_tensor(tensor_type::f32, n, 1, scale, rng));
    }
};

}  // namespace

result<void> add_deepseek_style_model(storage::gguf_writer& w, const synth_shape& s, const synth_options& o,
                                      const type_mix& mix, random_source& rng) {
    const bool deepseek = o.arch == "deepseek2";
    const std::string variant = !o.variant.empty() ? o.variant : deepseek ? "v2-lite" : "air";
    const bool v3 = variant == "v3";
    // An older converter's file: K and V decompressed through one attn_kv_b per layer.
    const bool legacy = variant == "v2-lite-legacy";
    const bool qk_norm = variant == "qk-norm";
    if (deepseek ? !(variant == "v2-lite" || v3 || legacy) : !(variant == "air" || qk_norm)) {
        return make_error(errc::invalid_argument, "{} has no variant '{}' ({})", o.arch, variant,
                          deepseek ? "v2-lite, v3, v2-lite-legacy" : "air, qk-norm");
    }
    const std::int64_t rope = s.rope_dim != 0 ? s.rope_dim : s.head_dim / 2;
    if (s.dense_layers >= s.layers) {
        return make_error(errc::invalid_argument, "dense_layers {} leaves no MoE layer of the {}", s.dense_layers, s.layers);
    }
    if (s.dense_ff <= 0 || s.shared_experts < 0 || rope <= 0 || rope % 2 != 0 || rope > s.head_dim ||
        (deepseek && rope == s.head_dim) || s.nextn_layers > 16) {
        return make_error(errc::invalid_argument,
                          "dense_ff must be positive, shared_experts >= 0, rope_dim even and within head_dim "
                          "(deepseek2: below it), nextn_layers at most 16");
    }
    if (deepseek && (s.kv_lora_rank <= 0 || s.v_head_dim <= 0 || (v3 && s.q_lora_rank <= 0))) {
        return make_error(errc::invalid_argument, "kv_lora_rank, v_head_dim and (v3) q_lora_rank must be positive");
    }
    if (!deepseek && s.heads % s.kv_heads != 0) {
        return make_error(errc::invalid_argument, "heads {} is not a multiple of kv_heads {}", s.heads, s.kv_heads);
    }
    if (v3 && (s.experts % v3_groups != 0 || s.experts / v3_groups < 2 ||
               s.experts_used > static_cast<std::int64_t>(v3_groups_used) * (s.experts / v3_groups))) {
        return make_error(errc::invalid_argument, "v3 splits the experts into {} groups of two or more and uses {} of them: "
                          "experts {} and experts_used {} do not fit", v3_groups, v3_groups_used, s.experts, s.experts_used);
    }

    const std::string& a = o.arch;
    auto key = [&a](const char* name) { return a + "." + name; };
    const std::uint32_t n_block = s.layers + s.nextn_layers;
    w.set_u32(key("context_length"), static_cast<std::uint32_t>(s.ctx));
    w.set_u32(key("embedding_length"), static_cast<std::uint32_t>(s.embd));
    w.set_u32(key("block_count"), n_block);
    w.set_u32(key("feed_forward_length"), static_cast<std::uint32_t>(s.dense_ff));
    w.set_u32(key("expert_feed_forward_length"), static_cast<std::uint32_t>(s.ff));
    w.set_u32(key("attention.head_count"), static_cast<std::uint32_t>(s.heads));
    w.set_u32(key("rope.dimension_count"), static_cast<std::uint32_t>(rope));
    w.set_f32(key("rope.freq_base"), 10000.0f);
    w.set_f32(key("attention.layer_norm_rms_epsilon"), 1e-6f);
    w.set_u32(key("expert_count"), static_cast<std::uint32_t>(s.experts));
    w.set_u32(key("expert_used_count"), static_cast<std::uint32_t>(s.experts_used));
    w.set_u32(key("expert_shared_count"), static_cast<std::uint32_t>(s.shared_experts));
    w.set_u32(key("leading_dense_block_count"), s.dense_layers);
    const bool sigmoid = !deepseek || v3;
    w.set_u32(key("expert_gating_func"), sigmoid ? 2 : 1);
    if (sigmoid) {
        w.set_bool(key("expert_weights_norm"), true);
        w.set_f32(key("expert_weights_scale"), routed_scale);
    }
    if (v3) {
        w.set_u32(key("expert_group_count"), v3_groups);
        w.set_u32(key("expert_group_used_count"), v3_groups_used);
    }
    if (s.nextn_layers > 0) w.set_u32(key("nextn_predict_layers"), s.nextn_layers);
    const std::int64_t rank = s.kv_lora_rank;
    if (deepseek) {
        if (legacy) {
            // The decompressed form's keys: every head its own key and value.
            w.set_u32(key("attention.head_count_kv"), static_cast<std::uint32_t>(s.heads));
            w.set_u32(key("attention.key_length"), static_cast<std::uint32_t>(s.head_dim));
            w.set_u32(key("attention.value_length"), static_cast<std::uint32_t>(s.v_head_dim));
        } else {
            // The absorbed form's keys: one KV head of latent + rotary values.
            w.set_u32(key("attention.head_count_kv"), 1);
            w.set_u32(key("attention.key_length"), static_cast<std::uint32_t>(rank + rope));
            w.set_u32(key("attention.value_length"), static_cast<std::uint32_t>(rank));
            w.set_u32(key("attention.key_length_mla"), static_cast<std::uint32_t>(s.head_dim));
            w.set_u32(key("attention.value_length_mla"), static_cast<std::uint32_t>(s.v_head_dim));
        }
        w.set_u32(key("attention.kv_lora_rank"), static_cast<std::uint32_t>(rank));
        // 0 (no q-LoRA) is written for v2-lite: llama.cpp reads the key unless the layer
        // count is one of the Lite models'.
        w.set_u32(key("attention.q_lora_rank"), v3 ? static_cast<std::uint32_t>(s.q_lora_rank) : 0);
        w.set_string(key("rope.scaling.type"), "yarn");
        w.set_f32(key("rope.scaling.factor"), yarn_factor);
        w.set_u32(key("rope.scaling.original_context_length"), yarn_original_ctx);
        // The converter writes 0.1 x mscale_all_dim (V2-Lite 0.707, V3 1.0).
        w.set_f32(key("rope.scaling.yarn_log_multiplier"), v3 ? 0.1f : 0.0707f);
    } else {
        w.set_u32(key("attention.head_count_kv"), static_cast<std::uint32_t>(s.kv_heads));
        w.set_u32(key("attention.key_length"), static_cast<std::uint32_t>(s.head_dim));
        w.set_u32(key("attention.value_length"), static_cast<std::uint32_t>(s.head_dim));
    }

    add_vocab(w, s.vocab);
    writer t{w, mix, rng};
    const tensor_type base = mix.base;
    t.matrix("token_embd.weight", s.vocab, s.embd, base);
    t.norm("output_norm.weight", s.embd);
    t.matrix("output.weight", s.vocab, s.embd, mix.output());
    const std::int64_t shared_ff = s.ff * s.shared_experts;
    for (std::uint32_t l = 0; l < n_block; ++l) {
        auto name = [l](const char* what) { return fmt::format("blk.{}.{}", l, what); };
        const tensor_type more = mix.more_bits(l, s.layers);
        t.norm(name("attn_norm.weight"), s.embd);
        if (deepseek) {
            const std::int64_t nope = s.head_dim - rope;
            if (v3) {
                t.matrix(name("attn_q_a.weight"), s.q_lora_rank, s.embd, base);
                t.norm(name("attn_q_a_norm.weight"), s.q_lora_rank);
                t.matrix(name("attn_q_b.weight"), s.heads * s.head_dim, s.q_lora_rank, base);
            } else {
                t.matrix(name("attn_q.weight"), s.heads * s.head_dim, s.embd, base);
            }
            t.matrix(name("attn_kv_a_mqa.weight"), rank + rope, s.embd, base);
            t.norm(name("attn_kv_a_norm.weight"), rank);
            if (legacy) {
                t.matrix(name("attn_kv_b.weight"), s.heads * (nope + s.v_head_dim), rank, base);
            } else {
                t.matrix(name("attn_k_b.weight"), rank, nope, base, s.heads);
                t.matrix(name("attn_v_b.weight"), s.v_head_dim, rank, more, s.heads);
            }
            t.matrix(name("attn_output.weight"), s.embd, s.heads * s.v_head_dim, base);
            t.norm(name("ffn_norm.weight"), s.embd);
        } else {
            const std::int64_t q_dim = s.heads * s.head_dim;
            const std::int64_t kv_dim = s.kv_heads * s.head_dim;
            t.matrix(name("attn_q.weight"), q_dim, s.embd, base);
            t.matrix(name("attn_k.weight"), kv_dim, s.embd, base);
            t.matrix(name("attn_v.weight"), kv_dim, s.embd, more);
            t.vector(name("attn_q.bias"), q_dim, 0.5f);
            t.vector(name("attn_k.bias"), kv_dim, 0.5f);
            t.vector(name("attn_v.bias"), kv_dim, 0.5f);
            t.matrix(name("attn_output.weight"), s.embd, q_dim, base);
            if (qk_norm) {
                t.norm(name("attn_q_norm.weight"), s.head_dim);
                t.norm(name("attn_k_norm.weight"), s.head_dim);
            }
            t.norm(name("post_attention_norm.weight"), s.embd);
        }
        if (l < s.dense_layers) {
            t.matrix(name("ffn_gate.weight"), s.dense_ff, s.embd, base);
            t.matrix(name("ffn_up.weight"), s.dense_ff, s.embd, base);
            t.matrix(name("ffn_down.weight"), s.embd, s.dense_ff, more);
        } else {
            w.add_tensor(name("ffn_gate_inp.weight"), tensor_type::f32, {s.embd, s.experts},
                         random_tensor(tensor_type::f32, s.embd, s.experts, writer::scale_for(s.embd) * 4.0f, rng));
            if (sigmoid) t.vector(name("exp_probs_b.bias"), s.experts, 0.3f);
            t.matrix(name("ffn_gate_exps.weight"), s.ff, s.embd, base, s.experts);
            t.matrix(name("ffn_up_exps.weight"), s.ff, s.embd, base, s.experts);
            t.matrix(name("ffn_down_exps.weight"), s.embd, s.ff, more, s.experts);
            if (shared_ff > 0) {
                t.matrix(name("ffn_gate_shexp.weight"), shared_ff, s.embd, base);
                t.matrix(name("ffn_up_shexp.weight"), shared_ff, s.embd, base);
                t.matrix(name("ffn_down_shexp.weight"), s.embd, shared_ff, more);
            }
        }
        if (l >= s.layers) {
            // A multi-token prediction block: its own projection of [embedding | hidden]
            // and norms, which neither engine runs.
            t.matrix(name("nextn.eh_proj.weight"), s.embd, 2 * s.embd, base);
            t.norm(name("nextn.enorm.weight"), s.embd);
            t.norm(name("nextn.hnorm.weight"), s.embd);
            t.norm(name("nextn.shared_head_norm.weight"), s.embd);
        }
    }
    return {};
}

}  // namespace moed::tools::detail
