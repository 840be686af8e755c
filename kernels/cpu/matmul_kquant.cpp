// Scalar matmul kernels of Q2_K, Q3_K, Q5_K and IQ4_XS weights with Q8_K activations: the
// references the AVX2 and AVX-512 kernels (matmul_kquant_avx2.cpp, _avx512.cpp) are compared
// with. Per super-block the integer sums are exact; one float product per block then joins
// the row's sum. The minimums of Q2_K and Q5_K come from the activation's bsums (sums of 16
// values), which is why those two need them; Q3_K and IQ4_XS do not read them.
#include <cstddef>

#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"

namespace moed::kernels::detail {

namespace {

float dot_q2_k(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q2_k*>(w);
    const auto* xb = reinterpret_cast<const block_q8_k*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_k; ++b) {
        int isum = 0, msum = 0;
        for (int g = 0; g < 16; ++g) {
            // Group g holds values 16g..16g+15: 32-value chunk g / 2, of which h = g / 8 is
            // the half and k = (g / 2) % 4 the bit pair.
            const int h = g / 8, k = (g / 2) % 4, l0 = 16 * (g % 2);
            int gsum = 0;
            for (int l = l0; l < l0 + 16; ++l) gsum += ((wb[b].qs[32 * h + l] >> (2 * k)) & 3) * xb[b].qs[16 * g + l - l0];
            isum += (wb[b].scales[g] & 0xF) * gsum;
            msum += (wb[b].scales[g] >> 4) * xb[b].bsums[g];
        }
        sum += fp16_to_fp32(wb[b].d) * xb[b].d * static_cast<float>(isum) -
               fp16_to_fp32(wb[b].dmin) * xb[b].d * static_cast<float>(msum);
    }
    return sum;
}

float dot_q3_k(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q3_k*>(w);
    const auto* xb = reinterpret_cast<const block_q8_k*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_k; ++b) {
        std::int8_t scales[16];
        q3_k_unpack_scales(wb[b].scales, scales);
        int isum = 0;
        for (int g = 0; g < 16; ++g) {
            const int h = g / 8, k = (g / 2) % 4, l0 = 16 * (g % 2);
            int gsum = 0;
            for (int l = l0; l < l0 + 16; ++l) {
                const int low = (wb[b].qs[32 * h + l] >> (2 * k)) & 3;
                const int high = (wb[b].hmask[l] >> (4 * h + k)) & 1;
                gsum += (low + 4 * high - 4) * xb[b].qs[16 * g + l - l0];
            }
            isum += scales[g] * gsum;
        }
        sum += fp16_to_fp32(wb[b].d) * xb[b].d * static_cast<float>(isum);
    }
    return sum;
}

float dot_q5_k(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q5_k*>(w);
    const auto* xb = reinterpret_cast<const block_q8_k*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_k; ++b) {
        int isum = 0, msum = 0;
        for (int s = 0; s < 8; ++s) {
            std::uint8_t sc, m;
            q4_k_scale_min(s, wb[b].scales, &sc, &m);
            const std::uint8_t* qs = wb[b].qs + 32 * (s / 2);
            const std::int8_t* a = xb[b].qs + 32 * s;
            int ssum = 0;
            for (int l = 0; l < 32; ++l) {
                const int low = s % 2 == 0 ? qs[l] & 0xF : qs[l] >> 4;
                ssum += (low + 16 * ((wb[b].qh[l] >> s) & 1)) * a[l];
            }
            isum += sc * ssum;
            msum += m * (xb[b].bsums[2 * s] + xb[b].bsums[2 * s + 1]);
        }
        sum += fp16_to_fp32(wb[b].d) * xb[b].d * static_cast<float>(isum) -
               fp16_to_fp32(wb[b].dmin) * xb[b].d * static_cast<float>(msum);
    }
    return sum;
}

float dot_iq4_xs(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_iq4_xs*>(w);
    const auto* xb = reinterpret_cast<const block_q8_k*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_k; ++b) {
        int isum = 0;
        for (int s = 0; s < 8; ++s) {
            const std::uint8_t* qs = wb[b].qs + 16 * s;
            const std::int8_t* a = xb[b].qs + 32 * s;
            int ssum = 0;
            for (int l = 0; l < 16; ++l) {
                ssum += kvalues_iq4nl[qs[l] & 0xF] * a[l] + kvalues_iq4nl[qs[l] >> 4] * a[l + 16];
            }
            isum += iq4_xs_scale(wb[b].scales_h, wb[b].scales_l, s) * ssum;
        }
        sum += fp16_to_fp32(wb[b].d) * xb[b].d * static_cast<float>(isum);
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

gemm_fn gemm_kquant_scalar(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q2_k: return &gemm_rows<dot_q2_k>;
        case tensor_type::q3_k: return &gemm_rows<dot_q3_k>;
        case tensor_type::q5_k: return &gemm_rows<dot_q5_k>;
        case tensor_type::iq4_xs: return &gemm_rows<dot_iq4_xs>;
        default: return nullptr;
    }
}

}  // namespace moed::kernels::detail
