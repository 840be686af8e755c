#include "storage/host_slab.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <string>

#include <hwloc.h>

#include "common/log.h"
#include "common/units.h"

#ifdef MOED_HAVE_CUDA
#include <cuda_runtime_api.h>
#include <hwloc/cudart.h>

#include "kernels/cuda/device.cuh"
#endif

namespace moed::storage {

namespace {

constexpr const char* component = "host-slab";

bool is_power_of_two(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

std::string describe_limit(rlim_t limit) {
    if (limit == RLIM_INFINITY) return "unlimited";
    return format_bytes(static_cast<std::uint64_t>(limit));
}

// The hwloc topology, destroyed on every early return until the slab takes it over.
struct topology_guard {
    hwloc_topology_t topology = nullptr;
    ~topology_guard() {
        if (topology != nullptr) hwloc_topology_destroy(topology);
    }
    hwloc_topology_t release() noexcept {
        hwloc_topology_t t = topology;
        topology = nullptr;
        return t;
    }
};

struct bitmap_guard {
    hwloc_bitmap_t bitmap = hwloc_bitmap_alloc();
    ~bitmap_guard() { hwloc_bitmap_free(bitmap); }
};

#ifdef MOED_HAVE_CUDA
// The NUMA nodes local to CUDA device 0, or false when there is no device (a CPU-only
// machine running a CUDA build) or hwloc cannot tell.
bool cuda_device_nodes(hwloc_topology_t topology, hwloc_bitmap_t nodeset) {
    const kernels::cuda::device_info devices = kernels::cuda::query_devices();
    if (devices.count == 0) return false;
    bitmap_guard cpuset;
    if (cpuset.bitmap == nullptr || hwloc_cudart_get_device_cpuset(topology, 0, cpuset.bitmap) != 0) {
        return false;
    }
    return hwloc_cpuset_to_nodeset(topology, cpuset.bitmap, nodeset) == 0 && !hwloc_bitmap_iszero(nodeset);
}
#endif

// Picks the NUMA node the slab should live on: the one asked for, else the one nearest the
// compute device, else the calling thread's. Returns -1 when hwloc cannot say (the slab is
// then left to the kernel's first-touch placement).
result<int> choose_node(hwloc_topology_t topology, int requested) {
    const int n_nodes = hwloc_get_nbobjs_by_type(topology, HWLOC_OBJ_NUMANODE);
    if (requested >= 0) {
        if (hwloc_get_numanode_obj_by_os_index(topology, static_cast<unsigned>(requested)) == nullptr) {
            return make_error(errc::invalid_argument,
                              "host slab: NUMA node {} does not exist (this machine has {} node{})",
                              requested, n_nodes, n_nodes == 1 ? "" : "s");
        }
        return requested;
    }
    bitmap_guard nodeset;
    if (nodeset.bitmap == nullptr) return -1;
#ifdef MOED_HAVE_CUDA
    if (cuda_device_nodes(topology, nodeset.bitmap)) return hwloc_bitmap_first(nodeset.bitmap);
#endif
    bitmap_guard cpuset;
    if (cpuset.bitmap == nullptr) return -1;
    if (hwloc_get_last_cpu_location(topology, cpuset.bitmap, HWLOC_CPUBIND_THREAD) != 0) return -1;
    if (hwloc_cpuset_to_nodeset(topology, cpuset.bitmap, nodeset.bitmap) != 0) return -1;
    return hwloc_bitmap_first(nodeset.bitmap);  // -1 when empty
}

}  // namespace

result<std::unique_ptr<host_slab>> host_slab::create(const host_slab_options& options) {
    const std::uint64_t page_bytes = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    if (!is_power_of_two(options.alignment) || options.alignment > page_bytes) {
        // Slots are placed at multiples of slot_bytes from a page-aligned base, so any
        // power-of-two alignment up to the page size holds for every slot.
        return make_error(errc::invalid_argument,
                          "host slab: alignment {} must be a power of two no larger than the page size ({})",
                          options.alignment, page_bytes);
    }
    slot_classes classes = options.classes;
    if (classes.n_classes() == 0) {
        if (options.slot_bytes == 0 || options.slot_bytes % options.alignment != 0) {
            return make_error(errc::invalid_argument,
                              "host slab: slot size {} must be a non-zero multiple of the alignment {}",
                              options.slot_bytes, options.alignment);
        }
        if (options.budget_bytes < options.slot_bytes) {
            return make_error(errc::out_of_memory,
                              "host budget {} ({} bytes) is smaller than one expert slot {} ({} bytes)",
                              format_bytes(options.budget_bytes), options.budget_bytes,
                              format_bytes(options.slot_bytes), options.slot_bytes);
        }
        const std::uint64_t n_slots64 = options.budget_bytes / options.slot_bytes;
        if (n_slots64 > std::numeric_limits<std::uint32_t>::max()) {
            return make_error(errc::invalid_argument, "host slab: {} slots is more than the slot index can count",
                              n_slots64);
        }
        classes = slot_classes::uniform(static_cast<std::uint32_t>(n_slots64), options.slot_bytes);
    }
    for (const slot_class& c : classes.classes()) {
        // Runs start at multiples of their predecessors' slot sizes, so every slot keeps the
        // alignment when every slot size is a multiple of it.
        if (c.slot_bytes == 0 || c.slot_bytes % options.alignment != 0) {
            return make_error(errc::invalid_argument,
                              "host slab: slot size {} must be a non-zero multiple of the alignment {}", c.slot_bytes,
                              options.alignment);
        }
    }
    if (classes.n_slots() == 0) return make_error(errc::out_of_memory, "host slab: no slots");
    const std::uint64_t used = classes.bytes();
    const std::uint64_t mapped = (used + page_bytes - 1) / page_bytes * page_bytes;
    if (mapped > std::numeric_limits<std::size_t>::max()) {
        return make_error(errc::out_of_memory, "host slab: {} bytes do not fit the address space", mapped);
    }

    std::unique_ptr<host_slab> slab(new host_slab());
    slab->classes_ = std::move(classes);
    slab->bytes_ = static_cast<std::size_t>(used);
    const std::size_t map_bytes = static_cast<std::size_t>(mapped);

    // NUMA-bound allocation through hwloc; any failure falls back to a plain mapping, which
    // only costs cross-node bandwidth, so it is logged at debug level, not refused.
    topology_guard topology;
    void* base = nullptr;
    if (hwloc_topology_init(&topology.topology) == 0 && hwloc_topology_load(topology.topology) == 0) {
        auto node = choose_node(topology.topology, options.numa_node);
        if (!node) return unexpected(std::move(node).error());
        if (*node >= 0) {
            bitmap_guard nodeset;
            if (nodeset.bitmap != nullptr) {
                hwloc_bitmap_only(nodeset.bitmap, static_cast<unsigned>(*node));
                base = hwloc_alloc_membind(topology.topology, map_bytes, nodeset.bitmap, HWLOC_MEMBIND_BIND,
                                           HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT |
                                               HWLOC_MEMBIND_NOCPUBIND);
                if (base != nullptr) {
                    slab->numa_node_ = *node;
                } else {
                    MOED_LOG_DEBUG(component, "cannot bind {} to NUMA node {} ({}); using an unbound mapping",
                                   format_bytes(map_bytes), *node, std::strerror(errno));
                }
            }
        } else {
            MOED_LOG_DEBUG(component, "no NUMA node found for the calling thread; using an unbound mapping");
        }
    } else {
        MOED_LOG_DEBUG(component, "hwloc topology unavailable ({}); using an unbound mapping", std::strerror(errno));
    }
    if (base != nullptr) {
        slab->topology_ = topology.release();
    } else {
        base = ::mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) {
            return make_error(errc::out_of_memory, "cannot map {} of host slab: {}", format_bytes(map_bytes),
                              std::strerror(errno));
        }
    }
    slab->base_ = static_cast<std::byte*>(base);
    // From here the slab owns the mapping: its destructor frees it on any error below.
    // Expert copies are reread from the model file; a core dump of a crashed daemon should
    // not carry a budget's worth of them.
    if (::madvise(slab->base_, map_bytes, MADV_DONTDUMP) != 0) {
        MOED_LOG_DEBUG(component, "madvise(MADV_DONTDUMP) on the host slab failed: {}", std::strerror(errno));
    }

    if (options.lock != memory_lock::off) {
        if (::mlock(slab->base_, slab->bytes_) == 0) {
            slab->locked_ = true;
        } else {
            const int err = errno;
            rlimit limit{};
            const std::string limit_text =
                ::getrlimit(RLIMIT_MEMLOCK, &limit) == 0 ? describe_limit(limit.rlim_cur) : "unknown";
            if (options.lock == memory_lock::required) {
                return make_error(errc::out_of_memory,
                                  "cannot lock {} of host slab: RLIMIT_MEMLOCK is {} ({}); raise it (ulimit -l, "
                                  "or LimitMEMLOCK=infinity in the service unit) or set memory locking to "
                                  "best_effort",
                                  format_bytes(slab->bytes_), limit_text, std::strerror(err));
            }
            MOED_LOG_WARN(component,
                          "cannot lock {} of host slab (RLIMIT_MEMLOCK is {}: {}); running unlocked, so the "
                          "kernel may swap expert slots out and copies to a GPU need staging",
                          format_bytes(slab->bytes_), limit_text, std::strerror(err));
        }
    }

#ifdef MOED_HAVE_CUDA
    // Registered (pinned for the driver) memory lets host-to-device copies run as DMA
    // without a staging buffer. No device is normal on a CPU box running a CUDA build.
    if (kernels::cuda::query_devices().count > 0) {
        const cudaError_t rc = cudaHostRegister(slab->base_, slab->bytes_, cudaHostRegisterDefault);
        if (rc == cudaSuccess) {
            slab->cuda_registered_ = true;
        } else {
            (void)cudaGetLastError();  // clears the error so a later, unrelated call does not report it
            MOED_LOG_WARN(component, "cudaHostRegister of {} failed ({}); copies to the GPU will be staged",
                          format_bytes(slab->bytes_), cudaGetErrorString(rc));
        }
    }
#endif

    MOED_LOG_DEBUG(component, "{} slots in {} run{} (largest slot {}), {}, NUMA node {}, {}", slab->n_slots(),
                   slab->classes_.n_classes(), slab->classes_.n_classes() == 1 ? "" : "s",
                   format_bytes(slab->slot_bytes()), format_bytes(slab->bytes_), slab->numa_node_,
                   slab->locked_ ? "locked" : "not locked");
    return slab;
}

host_slab::~host_slab() {
    if (base_ == nullptr) return;
    const std::size_t page_bytes = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const std::size_t map_bytes = (bytes_ + page_bytes - 1) / page_bytes * page_bytes;
#ifdef MOED_HAVE_CUDA
    if (cuda_registered_) {
        const cudaError_t rc = cudaHostUnregister(base_);
        if (rc != cudaSuccess) {
            MOED_LOG_WARN(component, "cudaHostUnregister failed: {}", cudaGetErrorString(rc));
        }
    }
#endif
    if (locked_ && ::munlock(base_, bytes_) != 0) {
        MOED_LOG_WARN(component, "munlock of {} failed: {}", format_bytes(bytes_), std::strerror(errno));
    }
    if (topology_ != nullptr) {
        auto* topology = static_cast<hwloc_topology_t>(topology_);
        if (hwloc_free(topology, base_, map_bytes) != 0) {
            MOED_LOG_WARN(component, "freeing the host slab failed: {}", std::strerror(errno));
        }
        hwloc_topology_destroy(topology);
    } else if (::munmap(base_, map_bytes) != 0) {
        MOED_LOG_WARN(component, "munmap of the host slab failed: {}", std::strerror(errno));
    }
}

std::byte* host_slab::slot(std::uint32_t index) const noexcept {
    MOED_ASSERT(index < n_slots());
    return base_ + static_cast<std::size_t>(classes_.slot_offset(index));
}

std::uint32_t host_slab::slot_of(const std::byte* p) const noexcept {
    MOED_ASSERT(p >= base_ && p < base_ + bytes_);
    return classes_.slot_at(static_cast<std::uint64_t>(p - base_));
}

}  // namespace moed::storage
