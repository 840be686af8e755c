#include "tools/synth_model.h"

#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "common/tensor_type.h"
#include "kernels/cpu/quantize.h"
#include "storage/gguf.h"

namespace moed::tools {

namespace {

// A fast deterministic generator (xorshift64*): synthesizing billions of weights with
// std::normal_distribution would take minutes.
class random_source {
public:
    explicit random_source(std::uint64_t seed) : state_(seed * 0x9E3779B97F4A7C15ull + 1) {}
    float uniform(float scale) {  // in [-scale, scale)
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        const std::uint64_t r = state_ * 2685821657736338717ull;
        return (static_cast<float>(r >> 40) / static_cast<float>(1ull << 24) * 2.0f - 1.0f) * scale;
    }

private:
    std::uint64_t state_;
};

// The storage types of a "mix" as llama.cpp's Q4_K_M assigns them: Q6_K for the output
// head, and for attn_v / ffn_down on the first and last eighth of layers and every third.
struct type_mix {
    tensor_type base;
    bool q4_k_m = false;
    tensor_type output() const { return q4_k_m ? tensor_type::q6_k : base; }
    tensor_type more_bits(std::uint32_t layer, std::uint32_t n_layer) const {
        if (!q4_k_m) return base;
        const bool more = layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
        return more ? tensor_type::q6_k : tensor_type::q4_k;
    }
};

std::optional<type_mix> parse_type(const std::string& name) {
    if (name == "F32") return type_mix{tensor_type::f32};
    if (name == "F16") return type_mix{tensor_type::f16};
    if (name == "BF16") return type_mix{tensor_type::bf16};
    if (name == "Q8_0") return type_mix{tensor_type::q8_0};
    if (name == "Q4_K") return type_mix{tensor_type::q4_k};
    if (name == "Q6_K") return type_mix{tensor_type::q6_k};
    if (name == "Q4_K_M") return type_mix{tensor_type::q4_k, true};
    return std::nullopt;
}

// `rows` rows of `row_elems` random values of magnitude `scale`, stored as `type`.
std::vector<std::byte> random_tensor(tensor_type type, std::int64_t row_elems, std::int64_t rows,
                                     float scale, random_source& rng) {
    const std::size_t rb = row_bytes(type, row_elems);
    std::vector<std::byte> data(rb * static_cast<std::size_t>(rows));
    std::vector<float> row(static_cast<std::size_t>(row_elems));
    for (std::int64_t r = 0; r < rows; ++r) {
        for (auto& v : row) v = rng.uniform(scale);
        kernels::quantize_row(type, row.data(), data.data() + rb * static_cast<std::size_t>(r), row_elems);
    }
    return data;
}

std::vector<std::byte> constant_f32(std::int64_t n, float value) {
    std::vector<std::byte> data(static_cast<std::size_t>(n) * sizeof(float));
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(data.data() + i * sizeof(float), &value, sizeof(float));
    return data;
}

std::string utf8(std::uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
        s += static_cast<char>(cp);
    } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
}

// A byte-level BPE vocabulary of `n` tokens: the 256 byte symbols (GPT-2's map: printable
// bytes stand for themselves, the rest move to U+0100 and up), lowercase words built one
// merge at a time, and an end-of-text control token last.
void add_vocab(storage::gguf_writer& w, std::int64_t n) {
    std::vector<std::string> tokens;
    std::vector<std::int32_t> types;
    std::vector<std::string> merges;
    std::uint32_t extra = 0;
    for (std::uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        tokens.push_back(printable ? utf8(b) : utf8(256 + extra++));
        types.push_back(1);
    }
    std::vector<std::string> frontier;
    for (char c = 'a'; c <= 'z'; ++c) frontier.emplace_back(1, c);
    while (static_cast<std::int64_t>(tokens.size()) < n - 1) {
        std::vector<std::string> next;
        for (const auto& prefix : frontier) {
            for (char c = 'a'; c <= 'z' && static_cast<std::int64_t>(tokens.size()) < n - 1; ++c) {
                merges.push_back(prefix + " " + std::string(1, c));
                tokens.push_back(prefix + c);
                types.push_back(1);
                next.push_back(prefix + c);
            }
        }
        frontier = std::move(next);
    }
    tokens.emplace_back("<|endoftext|>");
    types.push_back(3);
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "qwen2");
    w.set_string_array("tokenizer.ggml.tokens", tokens);
    w.set_i32_array("tokenizer.ggml.token_type", types);
    w.set_string_array("tokenizer.ggml.merges", merges);
    w.set_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(n - 1));
    w.set_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(n - 1));
    w.set_bool("tokenizer.ggml.add_bos_token", false);
}

}  // namespace

result<void> synthesize_model(const std::string& path, const synth_shape& s, const std::string& type,
                              std::uint64_t seed) {
    const auto mix = parse_type(type);
    if (!mix) return make_error(errc::invalid_argument, "unknown type '{}' (F32, F16, BF16, Q8_0, Q4_K, Q6_K, Q4_K_M)", type);
    if (s.layers == 0 || s.embd <= 0 || s.heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0 || s.experts <= 0 ||
        s.experts_used <= 0 || s.ff <= 0 || s.ctx <= 0) {
        return make_error(errc::invalid_argument, "every dimension of the shape must be positive");
    }
    if (s.vocab < 258) return make_error(errc::invalid_argument, "vocab {} is below the minimum of 258", s.vocab);
    if (s.heads % s.kv_heads != 0) return make_error(errc::invalid_argument, "heads {} is not a multiple of kv_heads {}", s.heads, s.kv_heads);
    if (s.experts_used > s.experts) return make_error(errc::invalid_argument, "experts_used {} exceeds experts {}", s.experts_used, s.experts);
    if (s.head_dim % 2 != 0) return make_error(errc::invalid_argument, "head_dim {} must be even", s.head_dim);
    const std::int64_t q_dim = s.heads * s.head_dim;
    const std::int64_t kv_dim = s.kv_heads * s.head_dim;
    const std::int64_t block = mix->q4_k_m ? 256 : traits_of(static_cast<std::uint32_t>(mix->base))->block_elems;
    for (std::int64_t dim : {s.embd, s.ff, q_dim}) {
        if (dim % block != 0) {
            return make_error(errc::invalid_argument, "embd, ff and heads*head_dim must be multiples of {} for type {} (got {})",
                              block, type, dim);
        }
    }

    storage::gguf_writer w;
    w.set_string("general.architecture", "qwen3moe");
    w.set_string("general.name", "moe-synth random " + type);
    w.set_u32("general.alignment", 32);
    w.set_u32("qwen3moe.context_length", static_cast<std::uint32_t>(s.ctx));
    w.set_u32("qwen3moe.embedding_length", static_cast<std::uint32_t>(s.embd));
    w.set_u32("qwen3moe.block_count", s.layers);
    w.set_u32("qwen3moe.feed_forward_length", static_cast<std::uint32_t>(s.ff * s.experts_used));
    w.set_u32("qwen3moe.attention.head_count", static_cast<std::uint32_t>(s.heads));
    w.set_u32("qwen3moe.attention.head_count_kv", static_cast<std::uint32_t>(s.kv_heads));
    w.set_u32("qwen3moe.attention.key_length", static_cast<std::uint32_t>(s.head_dim));
    w.set_u32("qwen3moe.attention.value_length", static_cast<std::uint32_t>(s.head_dim));
    w.set_u32("qwen3moe.rope.dimension_count", static_cast<std::uint32_t>(s.head_dim));
    w.set_f32("qwen3moe.rope.freq_base", 1000000.0f);
    w.set_f32("qwen3moe.attention.layer_norm_rms_epsilon", 1e-6f);
    w.set_u32("qwen3moe.expert_count", static_cast<std::uint32_t>(s.experts));
    w.set_u32("qwen3moe.expert_used_count", static_cast<std::uint32_t>(s.experts_used));
    w.set_u32("qwen3moe.expert_feed_forward_length", static_cast<std::uint32_t>(s.ff));
    add_vocab(w, s.vocab);

    random_source rng(seed);
    // Weight magnitudes ~ 1/sqrt(fan_in) keep activations in a sane range through the layers.
    auto scale_for = [](std::int64_t fan_in) { return 1.7f / std::sqrt(static_cast<float>(fan_in)); };
    const tensor_type base = mix->base;
    w.add_tensor("token_embd.weight", base, {s.embd, s.vocab}, random_tensor(base, s.embd, s.vocab, 1.0f, rng));
    w.add_tensor("output_norm.weight", tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
    w.add_tensor("output.weight", mix->output(), {s.embd, s.vocab},
                 random_tensor(mix->output(), s.embd, s.vocab, scale_for(s.embd), rng));
    for (std::uint32_t l = 0; l < s.layers; ++l) {
        auto name = [l](const char* suffix) { return "blk." + std::to_string(l) + "." + suffix + ".weight"; };
        const tensor_type more = mix->more_bits(l, s.layers);
        w.add_tensor(name("attn_norm"), tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
        w.add_tensor(name("attn_q"), base, {s.embd, q_dim}, random_tensor(base, s.embd, q_dim, scale_for(s.embd), rng));
        w.add_tensor(name("attn_k"), base, {s.embd, kv_dim}, random_tensor(base, s.embd, kv_dim, scale_for(s.embd), rng));
        w.add_tensor(name("attn_v"), more, {s.embd, kv_dim}, random_tensor(more, s.embd, kv_dim, scale_for(s.embd), rng));
        w.add_tensor(name("attn_output"), base, {q_dim, s.embd}, random_tensor(base, q_dim, s.embd, scale_for(q_dim), rng));
        w.add_tensor(name("attn_q_norm"), tensor_type::f32, {s.head_dim}, constant_f32(s.head_dim, 1.0f));
        w.add_tensor(name("attn_k_norm"), tensor_type::f32, {s.head_dim}, constant_f32(s.head_dim, 1.0f));
        w.add_tensor(name("ffn_norm"), tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
        w.add_tensor(name("ffn_gate_inp"), tensor_type::f32, {s.embd, s.experts},
                     random_tensor(tensor_type::f32, s.embd, s.experts, scale_for(s.embd) * 4.0f, rng));
        w.add_tensor(name("ffn_gate_exps"), base, {s.embd, s.ff, s.experts},
                     random_tensor(base, s.embd, s.ff * s.experts, scale_for(s.embd), rng));
        w.add_tensor(name("ffn_up_exps"), base, {s.embd, s.ff, s.experts},
                     random_tensor(base, s.embd, s.ff * s.experts, scale_for(s.embd), rng));
        w.add_tensor(name("ffn_down_exps"), more, {s.ff, s.embd, s.experts},
                     random_tensor(more, s.ff, s.embd * s.experts, scale_for(s.ff), rng));
    }
    return w.write(path);
}

}  // namespace moed::tools
