// moe-synth: writes a random-weight qwen3moe GGUF of any shape and storage type, with a
// small byte-level BPE vocabulary, for tests and benchmarks (llama.cpp loads these files
// too, so both engines can be timed on the same bytes).
//
//   moe-synth -o FILE [--type F32|F16|BF16|Q8_0|Q4_K|Q6_K|Q4_K_M] [--layers N] [--embd N]
//             [--heads N] [--kv-heads N] [--head-dim N] [--experts N] [--experts-used N]
//             [--ff N] [--vocab N] [--ctx N] [--seed S]
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/tensor_type.h"
#include "kernels/cpu/quantize.h"
#include "storage/gguf.h"

namespace {

using moed::tensor_type;

struct shape {
    std::uint32_t layers = 2;
    std::int64_t embd = 256;
    std::int64_t heads = 4;
    std::int64_t kv_heads = 2;
    std::int64_t head_dim = 64;
    std::int64_t experts = 8;
    std::int64_t experts_used = 2;
    std::int64_t ff = 256;
    std::int64_t vocab = 512;
    std::int64_t ctx = 512;
};

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "moe-synth: %s\n", message.c_str());
    std::exit(2);
}

template <typename T>
T parse_number(const std::string& flag, const char* text) {
    T value{};
    const char* end = text + std::strlen(text);
    auto [ptr, ec] = std::from_chars(text, end, value);
    if (ec != std::errc() || ptr != end || value <= 0) fail("bad value for " + flag + ": '" + text + "'");
    return value;
}

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

type_mix parse_type(const std::string& name) {
    if (name == "F32") return {tensor_type::f32};
    if (name == "F16") return {tensor_type::f16};
    if (name == "BF16") return {tensor_type::bf16};
    if (name == "Q8_0") return {tensor_type::q8_0};
    if (name == "Q4_K") return {tensor_type::q4_k};
    if (name == "Q6_K") return {tensor_type::q6_k};
    if (name == "Q4_K_M") return {tensor_type::q4_k, true};
    fail("unknown --type '" + name + "' (F32, F16, BF16, Q8_0, Q4_K, Q6_K, Q4_K_M)");
}

// `count` random values of magnitude `scale` stored as `type`, row by row.
std::vector<std::byte> random_tensor(tensor_type type, std::int64_t row_elems, std::int64_t rows,
                                     float scale, random_source& rng) {
    const std::size_t rb = moed::row_bytes(type, row_elems);
    std::vector<std::byte> data(rb * static_cast<std::size_t>(rows));
    std::vector<float> row(static_cast<std::size_t>(row_elems));
    for (std::int64_t r = 0; r < rows; ++r) {
        for (auto& v : row) v = rng.uniform(scale);
        moed::kernels::quantize_row(type, row.data(), data.data() + rb * static_cast<std::size_t>(r), row_elems);
    }
    return data;
}

std::vector<std::byte> constant_f32(std::int64_t n, float value) {
    std::vector<std::byte> data(static_cast<std::size_t>(n) * sizeof(float));
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(data.data() + i * sizeof(float), &value, sizeof(float));
    return data;
}

// A byte-level BPE vocabulary of `n` tokens: the 256 byte symbols, then lowercase words
// built one merge at a time, then an end-of-text control token.
void add_vocab(moed::storage::gguf_writer& w, std::int64_t n) {
    if (n < 258) fail("--vocab must be at least 258");
    std::vector<std::string> tokens;
    std::vector<std::int32_t> types;
    std::vector<std::string> merges;
    // GPT-2's byte-to-symbol map: printable bytes stand for themselves, the rest move to U+0100+.
    auto utf8 = [](std::uint32_t cp) {
        std::string s;
        if (cp < 0x80) s += static_cast<char>(cp);
        else {
            s += static_cast<char>(0xC0 | (cp >> 6));
            s += static_cast<char>(0x80 | (cp & 0x3F));
        }
        return s;
    };
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

int main(int argc, char** argv) {
    shape s;
    std::string out_path;
    std::string type_name = "Q4_K_M";
    std::uint64_t seed = 1;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-o") out_path = next();
        else if (a == "--type") type_name = next();
        else if (a == "--layers") s.layers = parse_number<std::uint32_t>(a, next());
        else if (a == "--embd") s.embd = parse_number<std::int64_t>(a, next());
        else if (a == "--heads") s.heads = parse_number<std::int64_t>(a, next());
        else if (a == "--kv-heads") s.kv_heads = parse_number<std::int64_t>(a, next());
        else if (a == "--head-dim") s.head_dim = parse_number<std::int64_t>(a, next());
        else if (a == "--experts") s.experts = parse_number<std::int64_t>(a, next());
        else if (a == "--experts-used") s.experts_used = parse_number<std::int64_t>(a, next());
        else if (a == "--ff") s.ff = parse_number<std::int64_t>(a, next());
        else if (a == "--vocab") s.vocab = parse_number<std::int64_t>(a, next());
        else if (a == "--ctx") s.ctx = parse_number<std::int64_t>(a, next());
        else if (a == "--seed") seed = parse_number<std::uint64_t>(a, next());
        else if (a == "-h" || a == "--help") {
            std::printf("usage: moe-synth -o FILE [--type F32|F16|BF16|Q8_0|Q4_K|Q6_K|Q4_K_M] [--layers N]\n"
                        "       [--embd N] [--heads N] [--kv-heads N] [--head-dim N] [--experts N]\n"
                        "       [--experts-used N] [--ff N] [--vocab N] [--ctx N] [--seed S]\n");
            return 0;
        } else fail("unknown argument '" + a + "'");
    }
    if (out_path.empty()) fail("no output file given (-o FILE)");
    const type_mix mix = parse_type(type_name);
    const std::int64_t block = moed::traits_of(static_cast<std::uint32_t>(mix.base))->block_elems;
    const std::int64_t q_dim = s.heads * s.head_dim;
    if (s.heads % s.kv_heads != 0) fail("--heads must be a multiple of --kv-heads");
    if (s.experts_used > s.experts) fail("--experts-used exceeds --experts");
    const std::int64_t quant_block = mix.q4_k_m ? 256 : block;
    for (std::int64_t dim : {s.embd, s.ff, q_dim}) {
        if (dim % quant_block != 0) fail("--embd, --ff and heads*head-dim must be multiples of " + std::to_string(quant_block) + " for this type");
    }

    moed::storage::gguf_writer w;
    w.set_string("general.architecture", "qwen3moe");
    w.set_string("general.name", "moe-synth random " + type_name);
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
    const std::int64_t kv_dim = s.kv_heads * s.head_dim;
    const tensor_type base = mix.base;
    w.add_tensor("token_embd.weight", base, {s.embd, s.vocab}, random_tensor(base, s.embd, s.vocab, 1.0f, rng));
    w.add_tensor("output_norm.weight", tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
    w.add_tensor("output.weight", mix.output(), {s.embd, s.vocab},
                 random_tensor(mix.output(), s.embd, s.vocab, scale_for(s.embd), rng));
    for (std::uint32_t l = 0; l < s.layers; ++l) {
        auto name = [l](const char* suffix) { return "blk." + std::to_string(l) + "." + suffix + ".weight"; };
        const tensor_type more = mix.more_bits(l, s.layers);
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
    if (auto written = w.write(out_path); !written) fail(written.error().message);
    std::printf("%s\n", out_path.c_str());
    return 0;
}
