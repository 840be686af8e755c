// Where data lives and compute runs: a device (the host CPU, a CUDA GPU, or the simulated
// GPU the tests run GPU paths on) and the kind of memory an expert's bytes sit in on it.
// The seam between the engine and the tiers speaks in these: the engine asks for an expert
// on the device it computes on, and a handle says where the bytes it gives really are.
#pragma once

#include <cstdint>
#include <string>

namespace moed {

enum class device_kind : std::uint8_t {
    host = 0,  // the CPU and its memory
    cuda = 1,  // an NVIDIA GPU
    sim = 2,   // the simulated GPU: host memory with a capacity and a modelled copy link
};

struct device_id {
    device_kind kind = device_kind::host;
    std::uint16_t index = 0;  // which GPU of its kind; 0 for the host

    static constexpr device_id host() noexcept { return device_id{}; }
    static constexpr device_id cuda(std::uint16_t i) noexcept { return device_id{device_kind::cuda, i}; }
    static constexpr device_id sim(std::uint16_t i) noexcept { return device_id{device_kind::sim, i}; }
    constexpr bool is_host() const noexcept { return kind == device_kind::host; }
    friend constexpr bool operator==(const device_id&, const device_id&) = default;
};

enum class memory_kind : std::uint8_t {
    host_pageable = 0,  // ordinary host memory (may be swapped out; a GPU copy needs staging)
    host_locked = 1,    // host memory locked in RAM (mlock; registered with CUDA when it is on)
    device = 2,         // the memory of a GPU (or of the simulated one)
};

const char* device_kind_name(device_kind k) noexcept;
const char* memory_kind_name(memory_kind k) noexcept;
// "host", "cuda:0", "sim:1".
std::string device_name(device_id d);

}  // namespace moed
