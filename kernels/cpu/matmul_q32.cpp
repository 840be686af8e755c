// Scalar matmul kernels of the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and
// MXFP4 weights; Q8_0 or Q8_1 activations), the references every SIMD kernel of these types
// is compared with. Each dot product follows ggml's portable vec_dot (ggml-cpu/quants.c,
// *_generic) operation for operation: an exact integer sum per block, then one float update
// per block in block order, with the products grouped as ggml groups them (this file is
// built with -ffp-contract=off, so nothing is fused).
#include <cstring>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q8_1) == 36);

// Sum over the block of code(w, j) * x[j], codes as the weight block defines them.
template <class Code>
int block_isum(const std::uint8_t* qs, const std::int8_t* x, Code code) {
    int lo = 0, hi = 0;
    for (int j = 0; j < qk_q32 / 2; ++j) {
        lo += code(qs[j] & 0xF, j) * x[j];
        hi += code(qs[j] >> 4, j + qk_q32 / 2) * x[j + qk_q32 / 2];
    }
    return lo + hi;
}

std::uint32_t load_qh(const std::uint8_t* qh) {
    std::uint32_t v;
    std::memcpy(&v, qh, sizeof v);
    return v;
}

float dot_q4_0(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q4_0*>(w);
    const auto* xb = reinterpret_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_q32; ++b) {
        const int isum = block_isum(wb[b].qs, xb[b].qs, [](int q, int) { return q - 8; });
        sum += static_cast<float>(isum) * fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d);
    }
    return sum;
}

float dot_q4_1(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q4_1*>(w);
    const auto* xb = reinterpret_cast<const block_q8_1*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_q32; ++b) {
        const int isum = block_isum(wb[b].qs, xb[b].qs, [](int q, int) { return q; });
        sum += (fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d)) * static_cast<float>(isum) +
               fp16_to_fp32(wb[b].m) * fp16_to_fp32(xb[b].s);
    }
    return sum;
}

float dot_q5_0(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q5_0*>(w);
    const auto* xb = reinterpret_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_q32; ++b) {
        const std::uint32_t qh = load_qh(wb[b].qh);
        const int isum = block_isum(wb[b].qs, xb[b].qs, [qh](int q, int j) { return (q | static_cast<int>((qh >> j) & 1u) << 4) - 16; });
        sum += (fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d)) * static_cast<float>(isum);
    }
    return sum;
}

float dot_q5_1(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q5_1*>(w);
    const auto* xb = reinterpret_cast<const block_q8_1*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_q32; ++b) {
        const std::uint32_t qh = load_qh(wb[b].qh);
        const int isum = block_isum(wb[b].qs, xb[b].qs, [qh](int q, int j) { return q | static_cast<int>((qh >> j) & 1u) << 4; });
        sum += (fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d)) * static_cast<float>(isum) +
               fp16_to_fp32(wb[b].m) * fp16_to_fp32(xb[b].s);
    }
    return sum;
}

float dot_iq4_nl(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_iq4_nl*>(w);
    const auto* xb = reinterpret_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_q32; ++b) {
        const float d = fp16_to_fp32(xb[b].d) * fp16_to_fp32(wb[b].d);
        sum += d * static_cast<float>(block_isum(wb[b].qs, xb[b].qs, [](int q, int) { return int{kvalues_iq4nl[q]}; }));
    }
    return sum;
}

float dot_mxfp4(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_mxfp4*>(w);
    const auto* xb = reinterpret_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_q32; ++b) {
        const float d = fp16_to_fp32(xb[b].d) * e8m0_to_fp32_half(wb[b].e);
        sum += d * static_cast<float>(block_isum(wb[b].qs, xb[b].qs, [](int q, int) { return int{kvalues_mxfp4[q]}; }));
    }
    return sum;
}

template <float (*Dot)(const std::byte*, const std::byte*, std::int64_t)>
void gemm_rows(const gemm_args& a, std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
        const std::byte* w = a.w + static_cast<std::size_t>(r) * a.w_stride;
        for (std::int64_t t = 0; t < a.n_tokens; ++t) {
            a.y[t * a.y_stride + r] = Dot(w, a.x + static_cast<std::size_t>(t) * a.x_stride, a.cols);
        }
    }
}

}  // namespace

gemm_fn gemm_q32_scalar(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q4_0: return &gemm_rows<dot_q4_0>;
        case tensor_type::q4_1: return &gemm_rows<dot_q4_1>;
        case tensor_type::q5_0: return &gemm_rows<dot_q5_0>;
        case tensor_type::q5_1: return &gemm_rows<dot_q5_1>;
        case tensor_type::iq4_nl: return &gemm_rows<dot_iq4_nl>;
        case tensor_type::mxfp4: return &gemm_rows<dot_mxfp4>;
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
