// Matrix products of a stored weight matrix with a batch of activation rows:
//   y[t * y_stride + r] = sum_c W[r, c] * x[t, c]   for r < rows, t < n_tokens.
// Activations are first converted with quantize_activation_row (llama.cpp's scheme), then
// multiplied with integer (Q8_0, K-quants, the 32-value block types) or half/bf16/f32 dot
// products. Work is split over
// the pool by row blocks; prefill batches reuse each weight block across several tokens.
// Batch invariance: at a given ISA level, y[t, r] has the same bits whatever n_tokens, t's
// place in the batch, the row split and the thread count, so a token batched with others
// (continuous batching, prefill chunks) gives exactly its result alone. Every kernel keeps
// one reduction order per (row, token); tests/kernels/batch_invariance_test.cpp checks it.
// Threads: called by the pool's owner thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/tensor_type.h"
#include "kernels/cpu/sum_order.h"
#include "kernels/cpu/thread_pool.h"

namespace moed::kernels {

// A row-major weight matrix in a storage type; row r starts at data + r * row_stride_bytes.
struct matrix_view {
    tensor_type type = tensor_type::f32;
    const void* data = nullptr;
    std::int64_t rows = 0;  // output features
    std::int64_t cols = 0;  // input features; a multiple of the type's block size
    std::size_t row_stride_bytes = 0;
    // Whether llama.cpp may repack the matrix at load (ggml-cpu/repack.cpp): its 2-D weights
    // and the 3-D expert stacks of MUL_MAT_ID, yes; a slice of a 3-D tensor in a plain
    // product (MLA's per-head k_b / v_b), no. At the AVX2 level the types it repacks (Q4_K,
    // Q4_0, IQ4_NL, MXFP4) then sum in its repacked kernels' order when rows % 8 == 0.
    bool repackable = true;
};

// Activation rows converted for one weight type. Reused across calls; it grows its buffer
// only when a larger batch than ever before arrives, so steady-state calls do not allocate.
class activation_buffer {
public:
    // Converts n_tokens rows of `cols` floats (row t at x + t * x_stride) for `weight_type`.
    void quantize(tensor_type weight_type, const float* x, std::int64_t n_tokens,
                  std::int64_t cols, std::int64_t x_stride, compute_pool* pool);
    tensor_type type() const noexcept { return type_; }
    tensor_type weight_type() const noexcept { return weight_type_; }
    std::int64_t n_tokens() const noexcept { return n_tokens_; }
    std::int64_t cols() const noexcept { return cols_; }
    std::size_t row_bytes() const noexcept { return row_bytes_; }
    const std::byte* row(std::int64_t t) const noexcept { return data_.data() + t * row_bytes_; }
    // Reserves space for `bytes` so later calls do not allocate.
    void reserve(std::size_t bytes) { data_.reserve(bytes); }
    // The bytes it holds allocated (for memory reports).
    std::size_t capacity_bytes() const noexcept { return data_.capacity(); }

private:
    std::vector<std::byte> data_;
    tensor_type type_ = tensor_type::f32;
    tensor_type weight_type_ = tensor_type::f32;
    std::int64_t n_tokens_ = 0;
    std::int64_t cols_ = 0;
    std::size_t row_bytes_ = 0;
};

// y = W x for pre-converted activations: x must have been converted for a weight type
// with the same activation type as w.type (activation_type_for; e.g. Q4_K and Q6_K both
// use Q8_K, so one conversion serves both), and x.cols() == w.cols.
// `orders` (x.n_tokens() entries, or null for all `alone`) says per activation row how the
// dot products of float weights sum (sum_order.h): the caller passes a token's own order
// where llama.cpp would multiply it in a plain matrix product, and null where llama.cpp
// always takes its vec_dot path (the experts' products, a single output row).
void matmul(const matrix_view& w, const activation_buffer& x, float* y, std::int64_t y_stride,
            compute_pool& pool, const sum_order* orders = nullptr);

// Convenience: converts x into `scratch`, then multiplies.
void matmul(const matrix_view& w, const float* x, std::int64_t n_tokens, float* y,
            std::int64_t y_stride, compute_pool& pool, activation_buffer& scratch,
            const sum_order* orders = nullptr);

// The scalar reference: dequantizes W and multiplies in double with the same activation
// conversion (for Q4_1/Q5_1, whose kernels apply each block's minimum with the Q8_1
// activation block's f16 sum s, it does the same). Tests compare every path with it; it is
// slow and never used by the engine.
void matmul_reference(const matrix_view& w, const float* x, std::int64_t n_tokens, float* y,
                      std::int64_t y_stride);

}  // namespace moed::kernels
