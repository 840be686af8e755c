// The model synthesizer behind moe-synth, as a library so tests can make models too:
// MoE GGUF files of several architectures, any shape and storage type, with a byte-level BPE vocabulary of
// lowercase words (llama.cpp loads these files as well).
//
// Two routing modes. `random`: every weight is random, so the routers pick experts with no
// relation to the text (and the few regularities there are, such as some experts being
// popular everywhere, are accidents of the draw). `realistic`: the weights are random too,
// except for a small structure that makes routing behave the way a trained MoE's does on
// real text (synth_model.cpp describes it; the knobs are realistic_routing's fields): tokens
// of one kind share part of their embedding, so a kind of text favours its own experts;
// attention carries the context into the residual stream, so consecutive tokens and a whole
// prompt route alike; and the layers change the stream only a little, so a layer's router
// applied one or two layers early predicts its choice well.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace moed::tools {

struct synth_shape {
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
    // deepseek2 and glm4moe only. `layers` counts the dense ones; head_dim is the key size
    // of an uncompressed head (deepseek2: key_length_mla), rope_dim its rotary part (0:
    // half of it); a shared expert is ff wide.
    std::uint32_t dense_layers = 1;
    std::int64_t dense_ff = 512;
    std::int64_t shared_experts = 1;
    std::int64_t rope_dim = 0;
    std::uint32_t nextn_layers = 0;  // multi-token prediction blocks appended (block_count includes them)
    // deepseek2's multi-head latent attention (kv_heads is ignored: the latent is one KV head).
    std::int64_t kv_lora_rank = 128;
    std::int64_t q_lora_rank = 128;  // the v3 variant's; v2-lite has none
    std::int64_t v_head_dim = 64;
};

enum class synth_routing : std::uint8_t { random, realistic };
const char* routing_name(synth_routing r) noexcept;
std::optional<synth_routing> parse_routing(std::string_view name) noexcept;

// The knobs of the realistic routing mode. The defaults are calibrated so that a model of the
// bundled tinymoe model's shape routes the domain prompts with that model's statistics (how
// is told in moe_synth.cpp's header comment); each is a plain scalar so a benchmark can
// explore around them.
struct realistic_routing {
    // Share of a token's routing features given by the centroid of its token class
    // (whitespace, brackets, digits, a cluster of words, ...) rather than drawn for the token
    // alone, in [0, 1]: more makes a kind of text favour its own experts and makes
    // consecutive tokens route alike.
    float token_clustering = 0.3f;
    // Gain of the attention path that adds the recency-weighted mean of the context's routing
    // features into the residual stream at every layer, >= 0: more makes routing follow the
    // context (more reuse between tokens, more per-domain skew).
    float context_carry = 0.2f;
    // Scale of the random writes of attention and experts into the routing features,
    // relative to the random mode's weights, >= 0: more makes routing drift from layer to
    // layer (lower lookahead recall at distance 1 and 2).
    float stream_noise = 0.8f;
    // Peak attention logit of the heads that carry the context (at distance 0, falling with
    // distance), > 0: more narrows their recency window, less makes them closer to a plain
    // mean over the context.
    float attention_sharpness = 6.0f;
};

struct synth_options {
    // llama.cpp's architecture name: qwen3moe, llama (Mixtral), qwen2moe (q/k/v biases and a
    // gated shared expert of width 2 x ff), olmoe (whole-projection q/k norms; needs
    // heads x head_dim = embd and kv_heads = heads), gpt-oss (biases, sinks, a 16-token
    // sliding window on even layers, YaRN, biased router and experts), deepseek2, glm4moe
    // (see `variant`). Architectures other than qwen3moe take random routing only.
    std::string arch = "qwen3moe";
    // deepseek2 (multi-head latent attention, leading dense layers, shared experts, YaRN
    // with DeepSeek's mscale): variant "v2-lite" (the default: no q-LoRA, softmax routing,
    // weights not renormalised), "v3" (q-LoRA, sigmoid routing with a selection bias in
    // 4 groups of which 2 are used, weights renormalised and scaled by 2.5) or
    // "v2-lite-legacy" (v2-lite as older converters wrote it: one attn_kv_b per layer and
    // the decompressed form's keys). glm4moe (q/k/v
    // biases, partial NEOX RoPE, a leading dense layer, sigmoid routing with a selection
    // bias, one shared expert, weights scaled by 2.5): variant "air" (the default: no q/k
    // norm) or "qk-norm" (per-head q/k norms, as GLM-4.5). Tensors whose row length the
    // storage type's block does not divide are written as Q8_0, else F16 (as
    // llama-quantize falls back).
    std::string variant;
    // F32, F16, BF16, Q8_0, Q4_K, Q6_K, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, MXFP4, Q2_K, Q3_K,
    // Q5_K, IQ4_XS or Q4_K_M (llama.cpp's mix: Q6_K for the output head and for attn_v /
    // ffn_down on some layers).
    std::string type = "Q4_K_M";
    std::uint64_t seed = 1;
    synth_routing routing = synth_routing::random;
    realistic_routing realistic;  // used when routing is realistic
    // A GGUF file whose tokenizer (every tokenizer.* key) the model takes instead of the
    // synthetic vocabulary, sizing the embedding and output head to its token count (the
    // shape's vocab is then ignored); e.g. a vocabulary-only GGUF of a real tokenizer. Random
    // routing only: the realistic mode builds token classes from its own vocabulary.
    std::string vocab_from;
};

// Writes the model; the same arguments give the same bytes. Errors name the bad parameter.
result<void> synthesize_model(const std::string& path, const synth_shape& shape, const synth_options& options);

// The random routing mode: synthesize_model(path, shape, {type, seed}).
result<void> synthesize_model(const std::string& path, const synth_shape& shape,
                              const std::string& type, std::uint64_t seed);

}  // namespace moed::tools
