// The host tier's memory: one slab of fixed-size slots (slot = one expert's gate, up and
// down matrices, each aligned for O_DIRECT), sized by a byte budget, allocated with hwloc on
// the NUMA node nearest the compute device (the local node on a CPU-only machine), and
// page-locked: mlock, plus cudaHostRegister when CUDA is on, so copies to a GPU need no
// staging. Not allocated through jemalloc: it is one mapping for the life of the tier.
// Threads: immutable after create(); slot memory is owned by whoever holds the slot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "common/result.h"

namespace moed::storage {

enum class memory_lock : std::uint8_t {
    required = 0,     // mlock failure is an error that says which limit to raise
    best_effort = 1,  // mlock failure is one warning
    off = 2,
};

struct host_slab_options {
    std::uint64_t budget_bytes = 0;  // total slab bytes; n_slots = budget / slot_bytes
    std::uint64_t slot_bytes = 0;    // already rounded to `alignment`
    std::uint32_t alignment = 4096;
    memory_lock lock = memory_lock::required;
    int numa_node = -1;  // -1: the node local to the calling thread
};

class host_slab {
public:
    // Errors: a budget smaller than one slot (names both figures), allocation failure,
    // and with memory_lock::required an mlock failure naming RLIMIT_MEMLOCK's value, the
    // bytes needed and what to raise (ulimit -l / LimitMEMLOCK=).
    static result<std::unique_ptr<host_slab>> create(const host_slab_options& options);
    ~host_slab();
    host_slab(const host_slab&) = delete;
    host_slab& operator=(const host_slab&) = delete;

    std::uint32_t n_slots() const noexcept { return n_slots_; }
    std::uint64_t slot_bytes() const noexcept { return slot_bytes_; }
    std::byte* slot(std::uint32_t index) const noexcept;
    std::span<std::byte> region() const noexcept { return {base_, bytes_}; }
    bool locked() const noexcept { return locked_; }
    // The node the slab is bound to; -1 when hwloc could not bind it (the kernel's default
    // placement then applies, logged at debug level).
    int numa_node() const noexcept { return numa_node_; }

private:
    host_slab() = default;
    std::byte* base_ = nullptr;
    std::size_t bytes_ = 0;
    std::uint64_t slot_bytes_ = 0;
    std::uint32_t n_slots_ = 0;
    bool locked_ = false;
    [[maybe_unused]] bool cuda_registered_ = false;  // read only by CUDA builds
    int numa_node_ = -1;
    void* topology_ = nullptr;  // hwloc_topology_t, kept for the matching free
};

}  // namespace moed::storage
