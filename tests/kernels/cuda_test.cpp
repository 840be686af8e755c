// GPU kernels against their CPU references: the CUDA dequantizer must give the CPU
// dequantize_row's values for every type it supports, on random blocks. Skips with the
// reason when moed was built without CUDA or the machine has no usable GPU.
#include <cmath>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/quantize.h"
#ifdef MOED_HAVE_CUDA
#include "kernels/cuda/dequantize.cuh"
#include "kernels/cuda/device.cuh"
#endif

namespace moed::kernels {
namespace {

TEST(cuda, dequantize_matches_cpu_reference) {
#ifndef MOED_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA (MOED_CUDA=OFF or no nvcc)";
#else
    const auto devices = cuda::query_devices();
    if (devices.count == 0) GTEST_SKIP() << "no usable CUDA device: " << devices.reason;
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const std::int64_t n = 256 * 37;
    std::vector<float> values(n);
    for (auto& v : values) v = normal(rng);
    for (tensor_type type : {tensor_type::f16, tensor_type::q8_0, tensor_type::q4_k, tensor_type::q6_k}) {
        SCOPED_TRACE(std::string(type_name(type)));
        std::vector<std::byte> packed(row_bytes(type, n));
        quantize_row(type, values.data(), packed.data(), n);
        std::vector<float> cpu(n), gpu(n);
        dequantize_row(type, packed.data(), cpu.data(), n);
        const std::string err = cuda::dequantize_on_device(type, packed.data(), gpu.data(), n);
        ASSERT_TRUE(err.empty()) << err;
        for (std::int64_t i = 0; i < n; ++i) {
            // The GPU may fuse d*q - m into one FMA: allow one rounding step.
            ASSERT_NEAR(gpu[i], cpu[i], 1e-6f * std::max(1.0f, std::fabs(cpu[i]))) << "value " << i;
        }
    }
#endif
}

TEST(cuda, device_query_never_fails_without_a_gpu) {
#ifndef MOED_HAVE_CUDA
    GTEST_SKIP() << "built without CUDA (MOED_CUDA=OFF or no nvcc)";
#else
    const auto devices = cuda::query_devices();
    if (devices.count == 0) {
        EXPECT_FALSE(devices.reason.empty());
    } else {
        EXPECT_FALSE(devices.name.empty());
        EXPECT_GT(devices.memory_bytes, 0u);
    }
#endif
}

}  // namespace
}  // namespace moed::kernels
