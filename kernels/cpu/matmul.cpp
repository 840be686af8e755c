// Matmul entry points (shape checks, activation conversion, work split over the pool), the
// per-type dispatcher, and the scalar kernels every SIMD kernel is compared with.
#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/assert.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/fp16.h"
#include "kernels/cpu/kernel_impl.h"
#include "kernels/cpu/quant_blocks.h"
#include "kernels/cpu/quantize.h"

namespace moed::kernels {

namespace {

// Below this many multiply-adds per chunk, handing work to another thread costs more than
// it saves (a wake-up and a cache line ping-pong are a few microseconds at most).
constexpr std::int64_t min_macs_per_chunk = 48 * 1024;
// Activation conversion is cheap per value; split it only for large batches.
constexpr std::int64_t min_values_per_convert_chunk = 64 * 1024;

// --- scalar dot products: one weight row with one converted activation row ---

float dot_q8_0(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q8_0*>(w);
    const auto* xb = reinterpret_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk8_0; ++b) {
        int isum = 0;
        for (int j = 0; j < qk8_0; ++j) isum += wb[b].qs[j] * xb[b].qs[j];
        sum += static_cast<float>(isum) * (fp16_to_fp32(wb[b].d) * fp16_to_fp32(xb[b].d));
    }
    return sum;
}

float dot_q4_k(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q4_k*>(w);
    const auto* xb = reinterpret_cast<const block_q8_k*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_k; ++b) {
        const std::uint8_t* q = wb[b].qs;
        const std::int8_t* a = xb[b].qs;
        int isum = 0, msum = 0;
        for (int j = 0; j < 4; ++j) {
            std::uint8_t sc_lo, m_lo, sc_hi, m_hi;
            detail::q4_k_scale_min(2 * j, wb[b].scales, &sc_lo, &m_lo);
            detail::q4_k_scale_min(2 * j + 1, wb[b].scales, &sc_hi, &m_hi);
            int lo = 0, hi = 0;
            for (int l = 0; l < 32; ++l) {
                lo += (q[32 * j + l] & 0xF) * a[64 * j + l];
                hi += (q[32 * j + l] >> 4) * a[64 * j + 32 + l];
            }
            isum += sc_lo * lo + sc_hi * hi;
            msum += m_lo * (xb[b].bsums[4 * j] + xb[b].bsums[4 * j + 1]) +
                    m_hi * (xb[b].bsums[4 * j + 2] + xb[b].bsums[4 * j + 3]);
        }
        sum += fp16_to_fp32(wb[b].d) * xb[b].d * static_cast<float>(isum) -
               fp16_to_fp32(wb[b].dmin) * xb[b].d * static_cast<float>(msum);
    }
    return sum;
}

float dot_q6_k(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* wb = reinterpret_cast<const block_q6_k*>(w);
    const auto* xb = reinterpret_cast<const block_q8_k*>(x);
    float sum = 0.0f;
    for (std::int64_t b = 0; b < cols / qk_k; ++b) {
        int isum = 0;
        for (int half = 0; half < 2; ++half) {
            const std::uint8_t* ql = wb[b].ql + 64 * half;
            const std::uint8_t* qh = wb[b].qh + 32 * half;
            const std::int8_t* a = xb[b].qs + 128 * half;
            const std::int8_t* sc = wb[b].scales + 8 * half;
            int sub[8] = {};
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                sub[is + 0] += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * a[l];
                sub[is + 2] += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * a[l + 32];
                sub[is + 4] += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * a[l + 64];
                sub[is + 6] += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * a[l + 96];
            }
            for (int s = 0; s < 8; ++s) isum += sc[s] * sub[s];
        }
        sum += fp16_to_fp32(wb[b].d) * xb[b].d * static_cast<float>(isum);
    }
    return sum;
}

float dot_f16(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* a = reinterpret_cast<const std::uint16_t*>(w);
    const auto* b = reinterpret_cast<const std::uint16_t*>(x);
    double sum = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) sum += static_cast<double>(fp16_to_fp32(a[i]) * fp16_to_fp32(b[i]));
    return static_cast<float>(sum);
}

float dot_bf16(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* a = reinterpret_cast<const std::uint16_t*>(w);
    const auto* b = reinterpret_cast<const std::uint16_t*>(x);
    double sum = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) sum += static_cast<double>(bf16_to_fp32(a[i]) * bf16_to_fp32(b[i]));
    return static_cast<float>(sum);
}

float dot_f32(const std::byte* w, const std::byte* x, std::int64_t cols) {
    const auto* a = reinterpret_cast<const float*>(w);
    const auto* b = reinterpret_cast<const float*>(x);
    double sum = 0.0;
    for (std::int64_t i = 0; i < cols; ++i) sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
    return static_cast<float>(sum);
}

template <float (*Dot)(const std::byte*, const std::byte*, std::int64_t)>
void gemm_rows_scalar(const detail::gemm_args& a, std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
        const std::byte* w = a.w + static_cast<std::size_t>(r) * a.w_stride;
        for (std::int64_t t = 0; t < a.n_tokens; ++t) {
            a.y[t * a.y_stride + r] = Dot(w, a.x + static_cast<std::size_t>(t) * a.x_stride, a.cols);
        }
    }
}

detail::gemm_fn pick_kernel(tensor_type type) {
    detail::gemm_fn fn = nullptr;
    switch (active_isa()) {
        case isa::avx512: fn = detail::gemm_avx512(type); break;
        case isa::avx2: fn = detail::gemm_avx2(type); break;
        case isa::scalar: break;
    }
    if (fn == nullptr) fn = detail::gemm_scalar(type);
    MOED_ASSERT(fn != nullptr);
    return fn;
}

}  // namespace

namespace detail {

gemm_fn gemm_scalar(tensor_type weight_type) noexcept {
    switch (weight_type) {
        case tensor_type::q8_0: return &gemm_rows_scalar<dot_q8_0>;
        case tensor_type::q4_k: return &gemm_rows_scalar<dot_q4_k>;
        case tensor_type::q6_k: return &gemm_rows_scalar<dot_q6_k>;
        case tensor_type::q2_k:
        case tensor_type::q3_k:
        case tensor_type::q5_k:
        case tensor_type::iq4_xs: return gemm_kquant_scalar(weight_type);
        case tensor_type::f16: return &gemm_rows_scalar<dot_f16>;
        case tensor_type::bf16: return &gemm_rows_scalar<dot_bf16>;
        case tensor_type::f32: return &gemm_rows_scalar<dot_f32>;
        case tensor_type::q4_0:
        case tensor_type::q4_1:
        case tensor_type::q5_0:
        case tensor_type::q5_1:
        case tensor_type::iq4_nl:
        case tensor_type::mxfp4: return gemm_q32_scalar(weight_type);
        default: return nullptr;
    }
}

}  // namespace detail

void activation_buffer::quantize(tensor_type weight_type, const float* x, std::int64_t n_tokens,
                                 std::int64_t cols, std::int64_t x_stride, compute_pool* pool) {
    MOED_ASSERT(n_tokens >= 0 && cols >= 0 && (n_tokens <= 1 || x_stride >= cols));
    weight_type_ = weight_type;
    type_ = activation_type_for(weight_type);
    n_tokens_ = n_tokens;
    cols_ = cols;
    row_bytes_ = moed::row_bytes(type_, cols);
    // Validates the weight type's block size too (a Q4_K row must hold whole super-blocks).
    (void)moed::row_bytes(weight_type, cols);
    const std::size_t need = static_cast<std::size_t>(n_tokens) * row_bytes_;
    if (data_.size() < need) data_.resize(need);
    if (n_tokens == 0 || cols == 0) return;
    auto convert = [this, x, x_stride](std::int64_t t0, std::int64_t t1) {
        for (std::int64_t t = t0; t < t1; ++t) {
            quantize_activation_row(weight_type_, x + t * x_stride, data_.data() + t * row_bytes_, cols_);
        }
    };
    const std::int64_t min_tokens = std::max<std::int64_t>(1, min_values_per_convert_chunk / cols);
    if (pool == nullptr || pool->size() == 1 || n_tokens <= min_tokens) {
        convert(0, n_tokens);
        return;
    }
    pool->parallel_for(n_tokens, min_tokens,
                       [&convert](std::int64_t t0, std::int64_t t1, int) { convert(t0, t1); });
}

void matmul(const matrix_view& w, const activation_buffer& x, float* y, std::int64_t y_stride,
            compute_pool& pool, const sum_order* orders) {
    // Any weight type that consumes the same activation type will do (Q4_K and Q6_K both
    // take Q8_K), so callers may reuse one conversion across such matrices.
    MOED_ASSERT(activation_type_for(x.weight_type()) == activation_type_for(w.type) && x.cols() == w.cols);
    MOED_ASSERT(w.rows >= 0 && w.data != nullptr && w.row_stride_bytes >= moed::row_bytes(w.type, w.cols));
    MOED_ASSERT(x.n_tokens() <= 1 || y_stride >= w.rows);
    if (w.rows == 0 || x.n_tokens() == 0) return;
    detail::gemm_args args;
    args.w = static_cast<const std::byte*>(w.data);
    args.w_stride = w.row_stride_bytes;
    args.cols = w.cols;
    args.x = x.row(0);
    args.x_stride = x.row_bytes();
    args.n_tokens = x.n_tokens();
    args.y = y;
    args.y_stride = y_stride;
    args.rows = w.rows;
    args.repackable = w.repackable;
    args.orders = orders;
    const detail::gemm_fn fn = pick_kernel(w.type);

    const std::int64_t macs_per_row = std::max<std::int64_t>(1, w.cols * x.n_tokens());
    // Chunks are whole multiples of 4 rows so the kernels' row tiles stay full.
    std::int64_t min_rows = (min_macs_per_chunk + macs_per_row - 1) / macs_per_row;
    min_rows = (min_rows + 3) / 4 * 4;
    if (pool.size() == 1 || w.rows <= min_rows) {
        fn(args, 0, w.rows);
        return;
    }
    pool.parallel_for(w.rows, min_rows,
                      [&args, fn](std::int64_t r0, std::int64_t r1, int) { fn(args, r0, r1); });
}

void matmul(const matrix_view& w, const float* x, std::int64_t n_tokens, float* y,
            std::int64_t y_stride, compute_pool& pool, activation_buffer& scratch, const sum_order* orders) {
    scratch.quantize(w.type, x, n_tokens, w.cols, w.cols, &pool);
    matmul(w, scratch, y, y_stride, pool, orders);
}

void matmul_reference(const matrix_view& w, const float* x, std::int64_t n_tokens, float* y,
                      std::int64_t y_stride) {
    MOED_ASSERT(w.rows >= 0 && n_tokens >= 0);
    const tensor_type act = activation_type_for(w.type);
    const std::int64_t cols = w.cols;
    std::vector<std::byte> converted(moed::row_bytes(act, cols));
    std::vector<float> xf(static_cast<std::size_t>(n_tokens * cols));
    // Q8_1 activations (Q4_1/Q5_1 weights): each block's s, with which the kernels apply the
    // weight block's minimum m (m * s rather than m * the sum of the dequantized values).
    const bool with_block_sums = act == tensor_type::q8_1;
    const std::int64_t n_blocks = cols / qk_q32;
    std::vector<double> x_block_sums(with_block_sums ? static_cast<std::size_t>(n_tokens * n_blocks) : 0);
    for (std::int64_t t = 0; t < n_tokens; ++t) {
        detail::convert_fn conv = nullptr;
        switch (act) {
            case tensor_type::q8_0: conv = detail::quantize_q8_0_act_scalar; break;
            case tensor_type::q8_1: conv = detail::quantize_q8_1_act_scalar; break;
            case tensor_type::q8_k: conv = detail::quantize_q8_k_act_scalar; break;
            case tensor_type::f16: conv = detail::convert_f16_scalar; break;
            case tensor_type::bf16: conv = detail::convert_bf16_scalar; break;
            default: break;
        }
        if (conv == nullptr) {
            std::memcpy(xf.data() + t * cols, x + t * cols, static_cast<std::size_t>(cols) * sizeof(float));
        } else {
            conv(x + t * cols, converted.data(), cols);
            dequantize_row(act, converted.data(), xf.data() + t * cols, cols);
        }
        if (with_block_sums) {
            const auto* blocks = reinterpret_cast<const block_q8_1*>(converted.data());
            for (std::int64_t b = 0; b < n_blocks; ++b) x_block_sums[t * n_blocks + b] = fp16_to_fp32(blocks[b].s);
        }
    }
    std::vector<float> wf(static_cast<std::size_t>(cols));
    std::vector<float> w_mins(with_block_sums ? static_cast<std::size_t>(n_blocks) : 0);
    for (std::int64_t r = 0; r < w.rows; ++r) {
        const std::byte* row = static_cast<const std::byte*>(w.data) + static_cast<std::size_t>(r) * w.row_stride_bytes;
        if (with_block_sums) {
            detail::dequantize_q32_split(w.type, row, wf.data(), w_mins.data(), cols);
        } else {
            dequantize_row(w.type, row, wf.data(), cols);
        }
        for (std::int64_t t = 0; t < n_tokens; ++t) {
            double sum = 0.0;
            const float* xt = xf.data() + t * cols;
            for (std::int64_t c = 0; c < cols; ++c) sum += static_cast<double>(wf[c]) * static_cast<double>(xt[c]);
            for (std::size_t b = 0; b < w_mins.size(); ++b) {
                sum += static_cast<double>(w_mins[b]) * x_block_sums[static_cast<std::size_t>(t * n_blocks) + b];
            }
            y[t * y_stride + r] = static_cast<float>(sum);
        }
    }
}

}  // namespace moed::kernels
