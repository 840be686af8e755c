#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/dequantize.cuh"

namespace moed::kernels::cuda {

namespace {

constexpr int k_qk8_0 = 32;
constexpr int k_qk_k = 256;

struct block_q8_0_dev {
    __half d;
    int8_t qs[k_qk8_0];
};
struct block_q4_k_dev {
    __half d;
    __half dmin;
    uint8_t scales[12];
    uint8_t qs[k_qk_k / 2];
};
struct block_q6_k_dev {
    uint8_t ql[k_qk_k / 2];
    uint8_t qh[k_qk_k / 4];
    int8_t scales[k_qk_k / 16];
    __half d;
};
static_assert(sizeof(block_q8_0_dev) == 34);
static_assert(sizeof(block_q4_k_dev) == 144);
static_assert(sizeof(block_q6_k_dev) == 210);

// One thread per output value: simple and enough for a transfer-bound conversion.
__global__ void dequantize_f16(const __half* src, float* dst, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i < n) dst[i] = __half2float(src[i]);
}

__global__ void dequantize_q8_0(const block_q8_0_dev* src, float* dst, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const block_q8_0_dev& b = src[i / k_qk8_0];
    dst[i] = __half2float(b.d) * static_cast<float>(b.qs[i % k_qk8_0]);
}

// The 6-bit scale and min of sub-block j (0..7), packed as llama.cpp packs them.
__device__ void q4_k_scale_min(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

__global__ void dequantize_q4_k(const block_q4_k_dev* src, float* dst, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const block_q4_k_dev& b = src[i / k_qk_k];
    const int within = static_cast<int>(i % k_qk_k);
    const int sub = within / 32;          // sub-block of 32 values
    const int pair = sub / 2;             // 64 values share 32 bytes of qs
    const int lane = within % 32;
    const uint8_t byte = b.qs[pair * 32 + lane];
    const int q = (sub % 2 == 0) ? (byte & 0xF) : (byte >> 4);
    uint8_t sc, m;
    q4_k_scale_min(sub, b.scales, sc, m);
    dst[i] = __half2float(b.d) * sc * q - __half2float(b.dmin) * m;
}

__global__ void dequantize_q6_k(const block_q6_k_dev* src, float* dst, int64_t n) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= n) return;
    const block_q6_k_dev& b = src[i / k_qk_k];
    const int within = static_cast<int>(i % k_qk_k);
    const int half = within / 128;        // two halves of 128 values
    const int r = within % 128;
    const int quarter = r / 32;           // which of the 4 interleaved groups
    const int l = r % 32;
    const uint8_t* ql = b.ql + half * 64;
    const uint8_t* qh = b.qh + half * 32;
    const int8_t* sc = b.scales + half * 8;
    int low;
    switch (quarter) {
        case 0: low = ql[l] & 0xF; break;
        case 1: low = ql[l + 32] & 0xF; break;
        case 2: low = ql[l] >> 4; break;
        default: low = ql[l + 32] >> 4; break;
    }
    const int high = (qh[l] >> (2 * quarter)) & 3;
    const int q = (low | (high << 4)) - 32;
    dst[i] = __half2float(b.d) * sc[l / 16 + 2 * quarter] * q;
}

}  // namespace

std::string dequantize_on_device(tensor_type type, const void* src, float* dst, std::int64_t n) {
    std::size_t src_bytes = 0;
    switch (type) {
        case tensor_type::f16: src_bytes = static_cast<std::size_t>(n) * 2; break;
        case tensor_type::q8_0: src_bytes = static_cast<std::size_t>(n / k_qk8_0) * sizeof(block_q8_0_dev); break;
        case tensor_type::q4_k: src_bytes = static_cast<std::size_t>(n / k_qk_k) * sizeof(block_q4_k_dev); break;
        case tensor_type::q6_k: src_bytes = static_cast<std::size_t>(n / k_qk_k) * sizeof(block_q6_k_dev); break;
        default: return "type not supported by the CUDA dequantizer";
    }
    void* d_src = nullptr;
    float* d_dst = nullptr;
    std::string failure;
    auto check = [&](cudaError_t err) {
        if (err != cudaSuccess && failure.empty()) failure = cudaGetErrorString(err);
        return err == cudaSuccess;
    };
    if (check(cudaMalloc(&d_src, src_bytes)) && check(cudaMalloc(&d_dst, static_cast<std::size_t>(n) * sizeof(float))) &&
        check(cudaMemcpy(d_src, src, src_bytes, cudaMemcpyHostToDevice))) {
        const int threads = 256;
        const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
        switch (type) {
            case tensor_type::f16: dequantize_f16<<<blocks, threads>>>(static_cast<const __half*>(d_src), d_dst, n); break;
            case tensor_type::q8_0: dequantize_q8_0<<<blocks, threads>>>(static_cast<const block_q8_0_dev*>(d_src), d_dst, n); break;
            case tensor_type::q4_k: dequantize_q4_k<<<blocks, threads>>>(static_cast<const block_q4_k_dev*>(d_src), d_dst, n); break;
            default: dequantize_q6_k<<<blocks, threads>>>(static_cast<const block_q6_k_dev*>(d_src), d_dst, n); break;
        }
        if (check(cudaGetLastError()) && check(cudaDeviceSynchronize())) {
            check(cudaMemcpy(dst, d_dst, static_cast<std::size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost));
        }
    }
    cudaFree(d_src);
    cudaFree(d_dst);
    return failure;
}

}  // namespace moed::kernels::cuda
