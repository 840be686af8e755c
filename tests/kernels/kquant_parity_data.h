// Deterministic inputs shared by kquant_llama_parity_test.cpp and the tool that produced its
// expected outputs with llama.cpp (tools/llama_parity/kquant_parity.cpp): blocks of random
// bytes with finite scales, and activations, from integer arithmetic only (the same bits
// with any compiler and standard library).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/tensor_type.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::test {

// The fixed case whose llama.cpp outputs the parity test holds: rows a multiple of 8 (so
// llama.cpp's AVX-512 build repacks Q2_K), 5 tokens (one tile of 4 and one alone).
inline constexpr std::int64_t parity_rows = 8;
inline constexpr std::int64_t parity_cols = 512;
inline constexpr std::int64_t parity_tokens = 5;

class splitmix64 {
public:
    explicit splitmix64(std::uint64_t seed) : state_(seed) {}
    std::uint64_t next() {
        std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1) with 24 bits.
    float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }

private:
    std::uint64_t state_;
};

// A scale between 2^-10 and 2^-6 as f16 bits, negative when `negative`.
inline std::uint16_t parity_scale(splitmix64& rng, bool negative) {
    const float v = (1.0f + 15.0f * rng.uniform()) * (1.0f / 1024.0f);
    return fp32_to_fp16(negative ? -v : v);
}

// n values (a multiple of 256) of `type` (Q2_K, Q3_K, Q5_K, IQ4_XS, or the 32-value Q4_0,
// IQ4_NL, MXFP4) as random bytes, the scales replaced by finite ones (f16 scales of Q3_K,
// IQ4_XS, Q4_0 and IQ4_NL of either sign; MXFP4 exponents 2^-9 .. 2^-2).
inline std::vector<std::byte> parity_blocks(tensor_type type, std::int64_t n, std::uint64_t seed) {
    splitmix64 rng(seed);
    std::vector<std::byte> data(row_bytes(type, n));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(rng.next() >> 56);
    if (type == tensor_type::q4_0 || type == tensor_type::iq4_nl || type == tensor_type::mxfp4) {
        // Every block starts with its scale: an f16 d, or MXFP4's E8M0 exponent byte.
        const std::size_t block_bytes = row_bytes(type, qk_q32);
        for (std::size_t off = 0; off < data.size(); off += block_bytes) {
            if (type == tensor_type::mxfp4) {
                data[off] = static_cast<std::byte>(119 + rng.next() % 8);
            } else {
                const std::uint16_t d = parity_scale(rng, (rng.next() & 1) != 0);
                std::memcpy(data.data() + off, &d, sizeof d);
            }
        }
        return data;
    }
    const std::int64_t nb = n / qk_k;
    for (std::int64_t b = 0; b < nb; ++b) {
        switch (type) {
            case tensor_type::q2_k: {
                auto* blk = reinterpret_cast<block_q2_k*>(data.data()) + b;
                blk->d = parity_scale(rng, false);
                blk->dmin = parity_scale(rng, false);
                break;
            }
            case tensor_type::q3_k: {
                auto* blk = reinterpret_cast<block_q3_k*>(data.data()) + b;
                blk->d = parity_scale(rng, (rng.next() & 1) != 0);
                break;
            }
            case tensor_type::q5_k: {
                auto* blk = reinterpret_cast<block_q5_k*>(data.data()) + b;
                blk->d = parity_scale(rng, false);
                blk->dmin = parity_scale(rng, false);
                break;
            }
            case tensor_type::iq4_xs: {
                auto* blk = reinterpret_cast<block_iq4_xs*>(data.data()) + b;
                blk->d = parity_scale(rng, (rng.next() & 1) != 0);
                break;
            }
            default: break;
        }
    }
    return data;
}

// n activations, roughly normal (sums of four uniforms), each row of 256 at its own scale.
inline std::vector<float> parity_activations(std::int64_t n, std::uint64_t seed) {
    splitmix64 rng(seed);
    std::vector<float> x(static_cast<std::size_t>(n));
    float scale = 1.0f;
    for (std::int64_t i = 0; i < n; ++i) {
        if (i % 256 == 0) scale = 0.25f + 4.0f * rng.uniform();
        x[static_cast<std::size_t>(i)] = (rng.uniform() + rng.uniform() + rng.uniform() + rng.uniform() - 2.0f) * scale;
    }
    return x;
}

}  // namespace moed::kernels::test
