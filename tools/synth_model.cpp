#include "tools/synth_model.h"
#include "tools/synth_model_impl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "common/tensor_type.h"
#include "kernels/cpu/quantize.h"
#include "storage/gguf.h"

namespace moed::tools {

using namespace detail;

namespace {

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

struct vocab_parts {
    std::vector<std::string> tokens;
    std::vector<std::int32_t> types;
    std::vector<std::string> merges;
    bool full(std::int64_t n) const { return static_cast<std::int64_t>(tokens.size()) >= n - 1; }
    void add(std::string token, std::string merge) {
        merges.push_back(std::move(merge));
        tokens.push_back(std::move(token));
        types.push_back(1);
    }
};

// The 256 byte symbols (GPT-2's map: printable bytes stand for themselves, the rest move to
// U+0100 and up).
void add_byte_symbols(vocab_parts& v) {
    std::uint32_t extra = 0;
    for (std::uint32_t b = 0; b < 256; ++b) {
        const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        v.tokens.push_back(printable ? utf8(b) : utf8(256 + extra++));
        v.types.push_back(1);
    }
}

// Grows `frontier` (tokens made so far, breadth first) by one lowercase letter at a time
// until `limit` tokens exist in all.
void add_words(vocab_parts& v, std::vector<std::string> frontier, std::int64_t limit) {
    while (static_cast<std::int64_t>(v.tokens.size()) < limit) {
        std::vector<std::string> next;
        for (const auto& prefix : frontier) {
            for (char c = 'a'; c <= 'z' && static_cast<std::int64_t>(v.tokens.size()) < limit; ++c) {
                v.add(prefix + c, prefix + " " + std::string(1, c));
                next.push_back(prefix + c);
            }
        }
        frontier = std::move(next);
    }
}

// An end-of-text control token last, then the tokenizer's metadata.
void write_vocab(storage::gguf_writer& w, vocab_parts& v) {
    const auto n = static_cast<std::uint32_t>(v.tokens.size() + 1);
    v.tokens.emplace_back("<|endoftext|>");
    v.types.push_back(3);
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "qwen2");
    w.set_string_array("tokenizer.ggml.tokens", v.tokens);
    w.set_i32_array("tokenizer.ggml.token_type", v.types);
    w.set_string_array("tokenizer.ggml.merges", v.merges);
    w.set_u32("tokenizer.ggml.eos_token_id", n - 1);
    w.set_u32("tokenizer.ggml.bos_token_id", n - 1);
    w.set_bool("tokenizer.ggml.add_bos_token", false);
}


// Realistic routing. The first `latent` coordinates of the residual stream carry the routing
// features, and every router reads only them, so routing follows how those features evolve:
// - the vocabulary is like a trained tokenizer's (words with a leading space, runs of
//   whitespace), so that no single token, such as a lone space, makes up a large part of
//   the text and of every expert's load;
// - the token embedding's features are sqrt(c) x its class centroid + sqrt(1 - c) x its own
//   random vector (c = token_clustering; unit-variance entries scaled like the rest of the
//   embedding). Classes are kinds of bytes (whitespace, newlines, digits, capitals,
//   brackets, operators, punctuation, quotes and symbols, other bytes), end-of-text, and
//   word_clusters clusters of words (by a hash of the letters, so " the" and "the" agree);
// - coordinate `latent` holds a constant in every embedding and no layer writes to it: it
//   gives attention a query and key that do not depend on the token;
// - attention: the query heads of KV head 0 and that KV head's keys are that constant, put
//   on the rotary pairs turning faster than recency_theta_min radians per position, so
//   their logits are attention_sharpness x the mean of cos(distance x theta) over those
//   pairs: a recency window with a long flat tail. KV head 0's first `latent` value rows
//   copy the features, and the output rows i < latent add context_carry x their mean over
//   the group's heads: each layer adds the recency-weighted mean of the context's
//   features. Every other weight writing into the features (the rest of the output
//   projection, the experts' down projections) is random at stream_noise x the random
//   mode's scale;
// - router rows are random in the features (logits of standard deviation router_gain on a
//   normalised stream) and zero elsewhere.
// Everything else (other query heads, the experts' gate and up projections, the output head)
// is as in the random mode.
constexpr std::int64_t latent_max = 128;
constexpr std::uint32_t byte_classes = 9;
constexpr std::uint32_t end_of_text_class = byte_classes;
constexpr std::uint32_t word_clusters = 24;
constexpr std::uint32_t routing_classes = byte_classes + 1 + word_clusters;
constexpr float router_gain = 2.5f;
constexpr double recency_theta_min = 0.02;
constexpr float rope_freq_base = 1000000.0f;
// Uniform values in [-sqrt(3), sqrt(3)) have unit variance.
constexpr float unit_variance = 1.7320508f;

std::uint32_t byte_class(std::uint32_t b) {
    const char c = static_cast<char>(b);
    auto in = [c](const char* set) { return c != '\0' && std::strchr(set, c) != nullptr; };
    if (b == ' ' || b == '\t') return 0;
    if (b == '\n' || b == '\r') return 1;
    if (b >= '0' && b <= '9') return 2;
    if (b >= 'A' && b <= 'Z') return 3;
    if (in("()[]{}<>")) return 4;
    if (in("=+-*/%&|^!~")) return 5;
    if (in(".,;:?")) return 6;
    if (in("'\"`#$@\\_")) return 7;
    return 8;
}

std::uint32_t word_class(std::string_view letters) {
    std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (char c : letters) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    return byte_classes + 1 + static_cast<std::uint32_t>(h % word_clusters);
}

// The byte-level BPE vocabulary of the realistic mode: the byte symbols, runs of spaces,
// tabs and newlines, a space before each ASCII punctuation mark, words with a leading space (GPT-2's 'Ġ') and bare lowercase words
// (half the rest each, breadth first; the leading-space merges rank first, so " parse"
// grows from the space), and end-of-text. Returns each token's routing class.
std::vector<std::uint32_t> add_realistic_vocab(storage::gguf_writer& w, std::int64_t n) {
    vocab_parts v;
    add_byte_symbols(v);
    const std::string space = v.tokens[' '], tab = v.tokens['\t'], newline = v.tokens['\n'];
    std::vector<std::uint32_t> classes;
    for (std::uint32_t b = 0; b < 256; ++b) {
        classes.push_back(b >= 'a' && b <= 'z' ? word_class(std::string(1, static_cast<char>(b))) : byte_class(b));
    }
    const std::pair<std::string, std::string> runs[] = {
        {space, space}, {space + space, space + space}, {space + space + space + space, space + space + space + space},
        {tab, tab}, {newline, newline}};
    for (const auto& [left, right] : runs) {
        if (v.full(n)) break;
        v.add(left + right, left + " " + right);
        classes.push_back(left == newline ? 1 : 0);
    }
    // A space before punctuation or an operator (" (", " =", " *") is one token too.
    for (std::uint32_t b = 0x21; b < 0x7F && !v.full(n); ++b) {
        const bool alnum = (b >= '0' && b <= '9') || (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z');
        if (alnum) continue;
        v.add(space + v.tokens[b], space + " " + v.tokens[b]);
        classes.push_back(byte_class(b));
    }
    const std::size_t words_from = v.tokens.size();
    const std::int64_t spaced_limit = (static_cast<std::int64_t>(v.tokens.size()) + n - 1 + 1) / 2;
    std::vector<std::string> spaced;
    for (char c = 'a'; c <= 'z' && static_cast<std::int64_t>(v.tokens.size()) < spaced_limit; ++c) {
        v.add(space + c, space + " " + std::string(1, c));
        spaced.push_back(space + c);
    }
    add_words(v, spaced, spaced_limit);
    std::vector<std::string> letters;
    for (char c = 'a'; c <= 'z'; ++c) letters.emplace_back(1, c);
    add_words(v, letters, n - 1);
    for (std::size_t id = words_from; id < v.tokens.size(); ++id) {
        std::string_view word = v.tokens[id];
        if (word.starts_with(space)) word.remove_prefix(space.size());
        classes.push_back(word_class(word));
    }
    write_vocab(w, v);
    classes.push_back(end_of_text_class);
    return classes;
}

struct routing_plan {
    std::int64_t latent = 0;           // features are coordinates [0, latent)
    std::int64_t constant_coord = 0;   // = latent
    std::vector<float> centroid;       // routing_classes x latent, unit variance
    std::vector<float> recency_query;  // head_dim: the constant query and key of KV head 0's group
};

routing_plan make_routing_plan(const synth_shape& s, random_source& rng) {
    routing_plan p;
    p.latent = std::min({s.head_dim, s.embd / 2, latent_max});
    p.constant_coord = p.latent;
    p.centroid.resize(static_cast<std::size_t>(routing_classes * p.latent));
    for (float& v : p.centroid) v = rng.uniform(unit_variance);
    // NEOX rotary: pair (i, i + head_dim / 2) turns by theta_i = base^(-2i / head_dim) per
    // position; a query equal to the key gives logits sum_i |pair_i|^2 cos(distance x theta_i).
    p.recency_query.assign(static_cast<std::size_t>(s.head_dim), 0.0f);
    for (std::int64_t i = 0; i < s.head_dim / 2; ++i) {
        const double theta = std::pow(static_cast<double>(rope_freq_base), -2.0 * static_cast<double>(i) / static_cast<double>(s.head_dim));
        if (theta >= recency_theta_min) p.recency_query[static_cast<std::size_t>(i)] = 1.0f;
    }
    return p;
}

enum class synth_arch : std::uint8_t { qwen3moe, llama, qwen2moe, olmoe, gptoss, deepseek2, glm4moe };

std::optional<synth_arch> parse_arch(std::string_view name) {
    if (name == "qwen3moe") return synth_arch::qwen3moe;
    if (name == "llama") return synth_arch::llama;
    if (name == "qwen2moe") return synth_arch::qwen2moe;
    if (name == "olmoe") return synth_arch::olmoe;
    if (name == "gpt-oss") return synth_arch::gptoss;
    if (name == "deepseek2") return synth_arch::deepseek2;
    if (name == "glm4moe") return synth_arch::glm4moe;
    return std::nullopt;
}

// gpt-oss's attention window in synthesized files: short, so that prompts of a few dozen
// tokens already reach past it.
constexpr std::uint32_t gptoss_window = 16;

// The shared expert's width (qwen2moe).
std::int64_t shared_ff(const synth_shape& s) { return 2 * s.ff; }

struct tensor_set {
    storage::gguf_writer& w;
    const synth_shape& s;
    type_mix mix;
    random_source& rng;
    synth_arch arch = synth_arch::qwen3moe;
};

// The tokenizer of another GGUF file: its tokenizer.* keys, in its order. Returns the
// number of tokens.
result<std::int64_t> copy_vocab(storage::gguf_writer& w, const std::string& path) {
    auto file = storage::gguf_file::open(path);
    if (!file) return unexpected(std::move(file).error());
    auto tokens = (*file)->get_array("tokenizer.ggml.tokens");
    if (!tokens) return unexpected(std::move(tokens).error());
    const auto n = static_cast<std::int64_t>((*tokens)->values.size());
    if (n < 2) return make_error(errc::bad_file, "{}: tokenizer.ggml.tokens holds {} tokens", path, n);
    for (const auto& [key, value] : (*file)->metadata()) {
        if (key.starts_with("tokenizer.")) w.set(key, value);
    }
    return n;
}

// The vocabulary is already in the writer (the synthetic one or a copied one).
void add_random_model(const tensor_set& t) {
    const synth_shape& s = t.s;
    random_source& rng = t.rng;
    const std::int64_t q_dim = s.heads * s.head_dim;
    const std::int64_t kv_dim = s.kv_heads * s.head_dim;
    // Weight magnitudes ~ 1/sqrt(fan_in) keep activations in a sane range through the layers.
    auto scale_for = [](std::int64_t fan_in) { return 1.7f / std::sqrt(static_cast<float>(fan_in)); };
    const tensor_type base = t.mix.base;
    storage::gguf_writer& w = t.w;
    w.add_tensor("token_embd.weight", base, {s.embd, s.vocab}, random_tensor(base, s.embd, s.vocab, 1.0f, rng));
    w.add_tensor("output_norm.weight", tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
    w.add_tensor("output.weight", t.mix.output(), {s.embd, s.vocab},
                 random_tensor(t.mix.output(), s.embd, s.vocab, scale_for(s.embd), rng));
    for (std::uint32_t l = 0; l < s.layers; ++l) {
        auto name = [l](const char* suffix) { return "blk." + std::to_string(l) + "." + suffix + ".weight"; };
        const tensor_type more = t.mix.more_bits(l, s.layers);
        w.add_tensor(name("attn_norm"), tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
        w.add_tensor(name("attn_q"), base, {s.embd, q_dim}, random_tensor(base, s.embd, q_dim, scale_for(s.embd), rng));
        w.add_tensor(name("attn_k"), base, {s.embd, kv_dim}, random_tensor(base, s.embd, kv_dim, scale_for(s.embd), rng));
        w.add_tensor(name("attn_v"), more, {s.embd, kv_dim}, random_tensor(more, s.embd, kv_dim, scale_for(s.embd), rng));
        w.add_tensor(name("attn_output"), base, {q_dim, s.embd}, random_tensor(base, q_dim, s.embd, scale_for(q_dim), rng));
        auto bias = [&](const char* what, std::int64_t n) {
            w.add_tensor("blk." + std::to_string(l) + "." + what + ".bias", tensor_type::f32, {n},
                         random_tensor(tensor_type::f32, n, 1, 0.5f, rng));
        };
        switch (t.arch) {
            case synth_arch::qwen3moe:
                w.add_tensor(name("attn_q_norm"), tensor_type::f32, {s.head_dim}, constant_f32(s.head_dim, 1.0f));
                w.add_tensor(name("attn_k_norm"), tensor_type::f32, {s.head_dim}, constant_f32(s.head_dim, 1.0f));
                break;
            case synth_arch::olmoe:
                w.add_tensor(name("attn_q_norm"), tensor_type::f32, {q_dim}, random_tensor(tensor_type::f32, q_dim, 1, 1.0f, rng));
                w.add_tensor(name("attn_k_norm"), tensor_type::f32, {kv_dim}, random_tensor(tensor_type::f32, kv_dim, 1, 1.0f, rng));
                break;
            case synth_arch::qwen2moe:
            case synth_arch::gptoss:
                bias("attn_q", q_dim);
                bias("attn_k", kv_dim);
                bias("attn_v", kv_dim);
                break;
            case synth_arch::llama:
            case synth_arch::deepseek2:  // written by synth_model_deepseek.cpp
            case synth_arch::glm4moe: break;
        }
        const bool gptoss = t.arch == synth_arch::gptoss;
        if (gptoss) {
            bias("attn_output", s.embd);
            w.add_tensor(name("attn_sinks"), tensor_type::f32, {s.heads}, random_tensor(tensor_type::f32, s.heads, 1, 2.0f, rng));
        }
        w.add_tensor(name(gptoss ? "post_attention_norm" : "ffn_norm"), tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
        w.add_tensor(name("ffn_gate_inp"), tensor_type::f32, {s.embd, s.experts},
                     random_tensor(tensor_type::f32, s.embd, s.experts, scale_for(s.embd) * 4.0f, rng));
        if (gptoss) {
            bias("ffn_gate_inp", s.experts);
            // Per-expert biases, [n_expert][rows].
            auto expert_bias = [&](const char* what, std::int64_t rows) {
                w.add_tensor("blk." + std::to_string(l) + "." + what + ".bias", tensor_type::f32, {rows, s.experts},
                             random_tensor(tensor_type::f32, rows, s.experts, 0.5f, rng));
            };
            expert_bias("ffn_gate_exps", s.ff);
            expert_bias("ffn_up_exps", s.ff);
            expert_bias("ffn_down_exps", s.embd);
        }
        w.add_tensor(name("ffn_gate_exps"), base, {s.embd, s.ff, s.experts},
                     random_tensor(base, s.embd, s.ff * s.experts, scale_for(s.embd), rng));
        w.add_tensor(name("ffn_up_exps"), base, {s.embd, s.ff, s.experts},
                     random_tensor(base, s.embd, s.ff * s.experts, scale_for(s.embd), rng));
        w.add_tensor(name("ffn_down_exps"), more, {s.ff, s.embd, s.experts},
                     random_tensor(more, s.ff, s.embd * s.experts, scale_for(s.ff), rng));
        if (t.arch == synth_arch::qwen2moe) {
            const std::int64_t sh = shared_ff(s);
            w.add_tensor(name("ffn_gate_inp_shexp"), tensor_type::f32, {s.embd},
                         random_tensor(tensor_type::f32, s.embd, 1, scale_for(s.embd) * 4.0f, rng));
            w.add_tensor(name("ffn_gate_shexp"), base, {s.embd, sh}, random_tensor(base, s.embd, sh, scale_for(s.embd), rng));
            w.add_tensor(name("ffn_up_shexp"), base, {s.embd, sh}, random_tensor(base, s.embd, sh, scale_for(s.embd), rng));
            w.add_tensor(name("ffn_down_shexp"), more, {sh, s.embd}, random_tensor(more, sh, s.embd, scale_for(sh), rng));
        }
    }
}

void add_realistic_model(const tensor_set& t, const realistic_routing& k, std::uint64_t seed) {
    const synth_shape& s = t.s;
    random_source& rng = t.rng;
    random_source structure_rng(seed ^ 0x5EEDF00Dull);
    const routing_plan plan = make_routing_plan(s, structure_rng);
    const std::int64_t latent = plan.latent;
    const auto constant_coord = static_cast<std::size_t>(plan.constant_coord);
    const std::int64_t q_dim = s.heads * s.head_dim;
    const std::int64_t kv_dim = s.kv_heads * s.head_dim;
    const std::int64_t group = s.heads / s.kv_heads;
    auto scale_for = [](std::int64_t fan_in) { return 1.7f / std::sqrt(static_cast<float>(fan_in)); };
    const tensor_type base = t.mix.base;
    storage::gguf_writer& w = t.w;
    const std::vector<std::uint32_t> classes = add_realistic_vocab(w, s.vocab);

    // The embedding's other coordinates are uniform in [-1, 1) (variance 1/3); the features
    // get the same variance.
    const float feature_scale = 1.0f / unit_variance;
    const float from_class = std::sqrt(k.token_clustering);
    const float from_token = std::sqrt(1.0f - k.token_clustering);
    w.add_tensor("token_embd.weight", base, {s.embd, s.vocab},
                 make_tensor(base, s.embd, s.vocab, [&](std::int64_t token, std::vector<float>& row) {
                     const float* c = plan.centroid.data() + classes[static_cast<std::size_t>(token)] * latent;
                     for (std::int64_t i = 0; i < latent; ++i) {
                         row[i] = feature_scale * (from_class * c[i] + from_token * rng.uniform(unit_variance));
                     }
                     for (std::int64_t i = latent; i < s.embd; ++i) row[i] = rng.uniform(1.0f);
                     row[constant_coord] = 1.0f;
                 }));
    w.add_tensor("output_norm.weight", tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
    w.add_tensor("output.weight", t.mix.output(), {s.embd, s.vocab},
                 random_tensor(t.mix.output(), s.embd, s.vocab, scale_for(s.embd), rng));
    // Rows of the query (key) projection that belong to KV head 0's group (KV head 0) read
    // only the constant coordinate.
    auto constant_query = [&](std::int64_t rows_of_group, const tensor_type type, std::int64_t rows) {
        return make_tensor(type, s.embd, rows, [&](std::int64_t r, std::vector<float>& row) {
            if (r < rows_of_group) {
                std::fill(row.begin(), row.end(), 0.0f);
                row[constant_coord] = plan.recency_query[static_cast<std::size_t>(r % s.head_dim)];
            } else {
                for (auto& v : row) v = rng.uniform(scale_for(s.embd));
            }
        });
    };
    // A peak logit of attention_sharpness: RMSNorm makes |q| = |k| = sqrt(head_dim) x the
    // norm weight, and logits are q.k / sqrt(head_dim).
    const float norm_weight = std::sqrt(k.attention_sharpness / std::sqrt(static_cast<float>(s.head_dim)));
    for (std::uint32_t l = 0; l < s.layers; ++l) {
        auto name = [l](const char* suffix) { return "blk." + std::to_string(l) + "." + suffix + ".weight"; };
        const tensor_type more = t.mix.more_bits(l, s.layers);
        w.add_tensor(name("attn_norm"), tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
        w.add_tensor(name("attn_q"), base, {s.embd, q_dim}, constant_query(group * s.head_dim, base, q_dim));
        w.add_tensor(name("attn_k"), base, {s.embd, kv_dim}, constant_query(s.head_dim, base, kv_dim));
        // KV head 0's first `latent` value rows copy the features.
        w.add_tensor(name("attn_v"), more, {s.embd, kv_dim},
                     make_tensor(more, s.embd, kv_dim, [&](std::int64_t r, std::vector<float>& row) {
                         if (r < latent) {
                             std::fill(row.begin(), row.end(), 0.0f);
                             row[static_cast<std::size_t>(r)] = 1.0f;
                         } else {
                             for (auto& v : row) v = rng.uniform(scale_for(s.embd));
                         }
                     }));
        // Feature i gains context_carry x the mean of value i over KV head 0's group; nothing
        // writes the constant coordinate.
        w.add_tensor(name("attn_output"), base, {q_dim, s.embd},
                     make_tensor(base, q_dim, s.embd, [&](std::int64_t r, std::vector<float>& row) {
                         const float noise = r < latent ? k.stream_noise : r == plan.constant_coord ? 0.0f : 1.0f;
                         for (auto& v : row) v = rng.uniform(scale_for(q_dim) * noise);
                         if (r >= latent) return;
                         for (std::int64_t h = 0; h < group; ++h) {
                             row[static_cast<std::size_t>(h * s.head_dim + r)] = k.context_carry / static_cast<float>(group);
                         }
                     }));
        w.add_tensor(name("attn_q_norm"), tensor_type::f32, {s.head_dim}, constant_f32(s.head_dim, norm_weight));
        w.add_tensor(name("attn_k_norm"), tensor_type::f32, {s.head_dim}, constant_f32(s.head_dim, norm_weight));
        w.add_tensor(name("ffn_norm"), tensor_type::f32, {s.embd}, constant_f32(s.embd, 1.0f));
        const float router_scale = router_gain / std::sqrt(static_cast<float>(latent));
        w.add_tensor(name("ffn_gate_inp"), tensor_type::f32, {s.embd, s.experts},
                     make_tensor(tensor_type::f32, s.embd, s.experts, [&](std::int64_t, std::vector<float>& row) {
                         std::fill(row.begin(), row.end(), 0.0f);
                         for (std::int64_t i = 0; i < latent; ++i) row[i] = router_scale * structure_rng.uniform(unit_variance);
                     }));
        w.add_tensor(name("ffn_gate_exps"), base, {s.embd, s.ff, s.experts},
                     random_tensor(base, s.embd, s.ff * s.experts, scale_for(s.embd), rng));
        w.add_tensor(name("ffn_up_exps"), base, {s.embd, s.ff, s.experts},
                     random_tensor(base, s.embd, s.ff * s.experts, scale_for(s.embd), rng));
        // Rows are (expert, output coordinate): those writing a feature are scaled by
        // stream_noise, the constant coordinate's are zero.
        w.add_tensor(name("ffn_down_exps"), more, {s.ff, s.embd, s.experts},
                     make_tensor(more, s.ff, s.embd * s.experts, [&](std::int64_t r, std::vector<float>& row) {
                         const std::int64_t coord = r % s.embd;
                         const float noise = coord < latent ? k.stream_noise : coord == plan.constant_coord ? 0.0f : 1.0f;
                         for (auto& v : row) v = rng.uniform(scale_for(s.ff) * noise);
                     }));
    }
}

result<void> check_knobs(const realistic_routing& k) {
    if (!(k.token_clustering >= 0.0f && k.token_clustering <= 1.0f)) {
        return make_error(errc::invalid_argument, "token_clustering {} is not in [0, 1]", k.token_clustering);
    }
    if (!(k.context_carry >= 0.0f && std::isfinite(k.context_carry))) {
        return make_error(errc::invalid_argument, "context_carry {} must be a finite value >= 0", k.context_carry);
    }
    if (!(k.stream_noise >= 0.0f && std::isfinite(k.stream_noise))) {
        return make_error(errc::invalid_argument, "stream_noise {} must be a finite value >= 0", k.stream_noise);
    }
    if (!(k.attention_sharpness > 0.0f && std::isfinite(k.attention_sharpness))) {
        return make_error(errc::invalid_argument, "attention_sharpness {} must be a finite value > 0", k.attention_sharpness);
    }
    return {};
}

}  // namespace

void detail::add_vocab(storage::gguf_writer& w, std::int64_t n) {
    vocab_parts v;
    add_byte_symbols(v);
    std::vector<std::string> letters;
    for (char c = 'a'; c <= 'z'; ++c) letters.emplace_back(1, c);
    add_words(v, letters, n - 1);
    write_vocab(w, v);
}

const char* routing_name(synth_routing r) noexcept {
    switch (r) {
        case synth_routing::random: return "random";
        case synth_routing::realistic: return "realistic";
    }
    return "?";
}

std::optional<synth_routing> parse_routing(std::string_view name) noexcept {
    if (name == "random") return synth_routing::random;
    if (name == "realistic") return synth_routing::realistic;
    return std::nullopt;
}

result<void> synthesize_model(const std::string& path, const synth_shape& shape, const synth_options& o) {
    synth_shape s = shape;
    const std::string& type = o.type;
    const auto mix = parse_type(type);
    if (!mix) return make_error(errc::invalid_argument, "unknown type '{}' (F32, F16, BF16, Q8_0, Q4_K, Q6_K, Q4_K_M, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4)", type);
    if (s.layers == 0 || s.embd <= 0 || s.heads <= 0 || s.kv_heads <= 0 || s.head_dim <= 0 || s.experts <= 0 ||
        s.experts_used <= 0 || s.ff <= 0 || s.ctx <= 0) {
        return make_error(errc::invalid_argument, "every dimension of the shape must be positive");
    }
    if (!o.vocab_from.empty() && o.routing != synth_routing::random) {
        return make_error(errc::invalid_argument, "a vocabulary from another file ({}) needs the random routing mode",
                          o.vocab_from);
    }
    if (o.vocab_from.empty() && s.vocab < 258) {
        return make_error(errc::invalid_argument, "vocab {} is below the minimum of 258", s.vocab);
    }
    if (s.heads % s.kv_heads != 0) return make_error(errc::invalid_argument, "heads {} is not a multiple of kv_heads {}", s.heads, s.kv_heads);
    if (s.experts_used > s.experts) return make_error(errc::invalid_argument, "experts_used {} exceeds experts {}", s.experts_used, s.experts);
    if (s.head_dim % 2 != 0) return make_error(errc::invalid_argument, "head_dim {} must be even", s.head_dim);
    if (o.routing == synth_routing::realistic) {
        if (auto ok = check_knobs(o.realistic); !ok) return ok;
    }
    const auto arch = parse_arch(o.arch);
    if (!arch) {
        return make_error(errc::invalid_argument,
                          "unknown architecture '{}' (qwen3moe, llama, qwen2moe, olmoe, gpt-oss, deepseek2, glm4moe)", o.arch);
    }
    if (*arch != synth_arch::qwen3moe && o.routing != synth_routing::random) {
        return make_error(errc::invalid_argument, "architecture {} takes random routing only", o.arch);
    }
    if (*arch == synth_arch::deepseek2 || *arch == synth_arch::glm4moe) {
        storage::gguf_writer w;
        w.set_string("general.architecture", o.arch);
        w.set_string("general.name", "moe-synth " + o.arch + " " + (o.variant.empty() ? std::string() : o.variant + " ") + type);
        w.set_u32("general.alignment", 32);
        random_source rng(o.seed);
        if (auto done = add_deepseek_style_model(w, s, o, *mix, rng); !done) return done;
        return w.write(path);
    }
    if (!o.variant.empty()) return make_error(errc::invalid_argument, "architecture {} has no variants", o.arch);
    const std::int64_t q_dim = s.heads * s.head_dim;
    const std::int64_t block = mix->q4_k_m ? 256 : traits_of(static_cast<std::uint32_t>(mix->base))->block_elems;
    for (std::int64_t dim : {s.embd, s.ff, q_dim}) {
        if (dim % block != 0) {
            return make_error(errc::invalid_argument, "embd, ff and heads*head_dim must be multiples of {} for type {} (got {})",
                              block, type, dim);
        }
    }

    if (*arch == synth_arch::olmoe && (q_dim != s.embd || s.kv_heads != s.heads)) {
        return make_error(errc::invalid_argument, "olmoe needs heads x head_dim = embd and kv_heads = heads");
    }

    storage::gguf_writer w;
    const std::string& a = o.arch;
    auto key = [&a](const char* name) { return a + "." + name; };
    w.set_string("general.architecture", a);
    // qwen3moe files keep the name they always had, so their bytes do not change.
    w.set_string("general.name", "moe-synth " + (*arch == synth_arch::qwen3moe ? std::string() : a + " ") +
                                     std::string(routing_name(o.routing)) + " " + type);
    w.set_u32("general.alignment", 32);
    w.set_u32(key("context_length"), static_cast<std::uint32_t>(s.ctx));
    w.set_u32(key("embedding_length"), static_cast<std::uint32_t>(s.embd));
    w.set_u32(key("block_count"), s.layers);
    // llama and olmoe take the experts' width from feed_forward_length; the qwen MoE files
    // carry the dense equivalent there and the experts' own width under its own key.
    const bool qwen = *arch == synth_arch::qwen3moe || *arch == synth_arch::qwen2moe;
    w.set_u32(key("feed_forward_length"), static_cast<std::uint32_t>(qwen ? s.ff * s.experts_used : s.ff));
    w.set_u32(key("attention.head_count"), static_cast<std::uint32_t>(s.heads));
    w.set_u32(key("attention.head_count_kv"), static_cast<std::uint32_t>(s.kv_heads));
    w.set_u32(key("attention.key_length"), static_cast<std::uint32_t>(s.head_dim));
    w.set_u32(key("attention.value_length"), static_cast<std::uint32_t>(s.head_dim));
    w.set_u32(key("rope.dimension_count"), static_cast<std::uint32_t>(s.head_dim));
    w.set_f32(key("rope.freq_base"), rope_freq_base);
    w.set_f32(key("attention.layer_norm_rms_epsilon"), 1e-6f);
    w.set_u32(key("expert_count"), static_cast<std::uint32_t>(s.experts));
    w.set_u32(key("expert_used_count"), static_cast<std::uint32_t>(s.experts_used));
    if (qwen || *arch == synth_arch::gptoss) w.set_u32(key("expert_feed_forward_length"), static_cast<std::uint32_t>(s.ff));
    if (*arch == synth_arch::gptoss) {
        // gpt-oss's own settings: a sliding window on every other layer, YaRN x32 from 4096.
        w.set_u32(key("attention.sliding_window"), gptoss_window);
        w.set_string(key("rope.scaling.type"), "yarn");
        w.set_f32(key("rope.scaling.factor"), 32.0f);
        w.set_u32(key("rope.scaling.original_context_length"), 4096);
    }
    if (*arch == synth_arch::qwen2moe) {
        w.set_u32(key("expert_shared_feed_forward_length"), static_cast<std::uint32_t>(shared_ff(s)));
    }

    if (o.routing == synth_routing::random) {
        if (o.vocab_from.empty()) {
            add_vocab(w, s.vocab);
        } else {
            auto n = copy_vocab(w, o.vocab_from);
            if (!n) return unexpected(std::move(n).error());
            s.vocab = *n;
        }
    }
    random_source rng(o.seed);
    const tensor_set tensors{w, s, *mix, rng, *arch};
    if (o.routing == synth_routing::realistic) add_realistic_model(tensors, o.realistic, o.seed);
    else add_random_model(tensors);
    return w.write(path);
}

result<void> synthesize_model(const std::string& path, const synth_shape& shape, const std::string& type,
                              std::uint64_t seed) {
    synth_options o;
    o.type = type;
    o.seed = seed;
    return synthesize_model(path, shape, o);
}

}  // namespace moed::tools
