// The host tier's memory: one slab of expert slots (slot = one expert's gate, up and down
// matrices, each aligned for O_DIRECT), in runs of equal slots, one run per slot class
// (storage/slot_classes.h; one run when every expert is alike), sized by a byte budget,
// allocated with hwloc on
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
#include "storage/slot_classes.h"

namespace moed::storage {

enum class memory_lock : std::uint8_t {
    required = 0,     // mlock failure is an error that says which limit to raise
    best_effort = 1,  // mlock failure is one warning
    off = 2,
};

struct host_slab_options {
    // One run of equal slots: n_slots = budget / slot_bytes (when `classes` has none).
    std::uint64_t budget_bytes = 0;  // total slab bytes
    std::uint64_t slot_bytes = 0;    // already rounded to `alignment`
    // Runs of slots by class, as plan_slot_classes() split the budget: the slab holds exactly
    // these slots (budget_bytes and slot_bytes are then not used). Every class's slot size
    // must be a multiple of `alignment`.
    slot_classes classes;
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

    std::uint32_t n_slots() const noexcept { return classes_.n_slots(); }
    // The largest slot (every slot's size when the slab is one run).
    std::uint64_t slot_bytes() const noexcept { return classes_.slot_bytes_max(); }
    const slot_classes& classes() const noexcept { return classes_; }
    std::byte* slot(std::uint32_t index) const noexcept;
    // The slot whose bytes hold `p` (which must point into the slab).
    std::uint32_t slot_of(const std::byte* p) const noexcept;
    std::span<std::byte> region() const noexcept { return {base_, bytes_}; }
    bool locked() const noexcept { return locked_; }
    // The node the slab is bound to; -1 when hwloc could not bind it (the kernel's default
    // placement then applies, logged at debug level).
    int numa_node() const noexcept { return numa_node_; }

private:
    host_slab() = default;
    std::byte* base_ = nullptr;
    std::size_t bytes_ = 0;
    slot_classes classes_;
    bool locked_ = false;
    [[maybe_unused]] bool cuda_registered_ = false;  // read only by CUDA builds
    int numa_node_ = -1;
    void* topology_ = nullptr;  // hwloc_topology_t, kept for the matching free
};

}  // namespace moed::storage
