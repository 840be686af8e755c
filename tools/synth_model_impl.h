// Private to the synthesizer (synth_model*.cpp): the random source, the storage type mixes
// and the tensor builders every architecture's writer uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/tensor_type.h"
#include "kernels/cpu/quantize.h"
#include "storage/gguf.h"
#include "tools/synth_model.h"

namespace moed::tools::detail {

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

inline std::optional<type_mix> parse_type(const std::string& name) {
    if (name == "F32") return type_mix{tensor_type::f32};
    if (name == "F16") return type_mix{tensor_type::f16};
    if (name == "BF16") return type_mix{tensor_type::bf16};
    if (name == "Q8_0") return type_mix{tensor_type::q8_0};
    if (name == "Q4_K") return type_mix{tensor_type::q4_k};
    if (name == "Q6_K") return type_mix{tensor_type::q6_k};
    if (name == "Q2_K") return type_mix{tensor_type::q2_k};
    if (name == "Q3_K") return type_mix{tensor_type::q3_k};
    if (name == "Q5_K") return type_mix{tensor_type::q5_k};
    if (name == "IQ4_XS") return type_mix{tensor_type::iq4_xs};
    if (name == "Q4_K_M") return type_mix{tensor_type::q4_k, true};
    if (name == "Q4_0") return type_mix{tensor_type::q4_0};
    if (name == "Q4_1") return type_mix{tensor_type::q4_1};
    if (name == "Q5_0") return type_mix{tensor_type::q5_0};
    if (name == "Q5_1") return type_mix{tensor_type::q5_1};
    if (name == "IQ4_NL") return type_mix{tensor_type::iq4_nl};
    if (name == "MXFP4") return type_mix{tensor_type::mxfp4};
    return std::nullopt;
}

// `rows` rows of `row_elems` values stored as `type`; fill(r, row) writes row r's values.
template <typename Fill>
std::vector<std::byte> make_tensor(tensor_type type, std::int64_t row_elems, std::int64_t rows, Fill&& fill) {
    const std::size_t rb = row_bytes(type, row_elems);
    std::vector<std::byte> data(rb * static_cast<std::size_t>(rows));
    std::vector<float> row(static_cast<std::size_t>(row_elems));
    for (std::int64_t r = 0; r < rows; ++r) {
        fill(r, row);
        kernels::quantize_row(type, row.data(), data.data() + rb * static_cast<std::size_t>(r), row_elems);
    }
    return data;
}

// `rows` rows of `row_elems` random values of magnitude `scale`, stored as `type`.
inline std::vector<std::byte> random_tensor(tensor_type type, std::int64_t row_elems, std::int64_t rows,
                                     float scale, random_source& rng) {
    return make_tensor(type, row_elems, rows, [&](std::int64_t, std::vector<float>& row) {
        for (auto& v : row) v = rng.uniform(scale);
    });
}

inline std::vector<std::byte> constant_f32(std::int64_t n, float value) {
    std::vector<std::byte> data(static_cast<std::size_t>(n) * sizeof(float));
    for (std::int64_t i = 0; i < n; ++i) std::memcpy(data.data() + i * sizeof(float), &value, sizeof(float));
    return data;
}

// A byte-level BPE vocabulary of `n` tokens: the byte symbols, lowercase words built one
// merge at a time, and end-of-text (with the tokenizer's metadata).
void add_vocab(storage::gguf_writer& w, std::int64_t n);

// Writes a deepseek2 or glm4moe model (synth_model_deepseek.cpp): keys and tensors.
result<void> add_deepseek_style_model(storage::gguf_writer& w, const synth_shape& s, const synth_options& o,
                                      const type_mix& mix, random_source& rng);

}  // namespace moed::tools::detail
