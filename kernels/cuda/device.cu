#include <cuda_runtime.h>

#include "kernels/cuda/device.cuh"

namespace moed::kernels::cuda {

device_info query_devices() noexcept {
    device_info info;
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        info.reason = cudaGetErrorString(err);
        cudaGetLastError();  // clear the sticky error so later calls start clean
        return info;
    }
    if (count == 0) {
        info.reason = "no CUDA device present";
        return info;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
        info.reason = "cudaGetDeviceProperties failed";
        return info;
    }
    info.count = count;
    info.name = prop.name;
    info.memory_bytes = prop.totalGlobalMem;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    return info;
}

}  // namespace moed::kernels::cuda
