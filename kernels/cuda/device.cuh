// CUDA device discovery. Linked against the static CUDA runtime, so a CPU-only machine
// runs the same binaries: device_count() is then 0 and the reason says why.
#pragma once

#include <string>

namespace moed::kernels::cuda {

struct device_info {
    int count = 0;
    std::string reason;  // why no device is usable, when count == 0
    std::string name;    // device 0's name
    std::size_t memory_bytes = 0;
    int compute_major = 0;
    int compute_minor = 0;
};

device_info query_devices() noexcept;

}  // namespace moed::kernels::cuda
