// The memory budget as users count it: the host budget resolved against the model, capped
// at what holds every expert, and checked with the rest of what moed will hold against the
// machine's physical memory before any of it is allocated.
// Threads: pure functions (cap_host_budget logs one line when it caps); any thread.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/units.h"

namespace moed::engine {

// The config key the host budget comes from, as errors and logs name it.
inline constexpr std::string_view host_budget_key = "tiers.host_budget";

// The alignment of each matrix in a host slot as the tier lays them out at the least (a
// device that wants more makes slots larger, so a capped budget then holds a few less).
inline constexpr std::uint32_t host_slot_alignment = 4096;

// The host budget after resolving and capping; the default describes experts held resident.
struct host_budget_plan {
    std::string configured;         // "25%", "4.00 GiB"; "" without a budget
    std::uint64_t asked_bytes = 0;  // what the configured budget resolves to
    std::uint64_t bytes = 0;        // what the tier is given: asked_bytes, or the cap
    bool capped = false;            // asked_bytes was more than the cap
};

// "25%" for a share, "4.00 GiB" for a size.
std::string describe_budget(const budget_spec& spec);

// `spec` resolved against `expert_bytes` (the routed experts' bytes in the file). A budget
// above `every_expert_bytes` (the slab bytes that hold every expert, at least expert_bytes)
// is capped to it, with one log line giving both figures: more could never be used.
host_budget_plan cap_host_budget(const budget_spec& spec, std::uint64_t expert_bytes,
                                 std::uint64_t every_expert_bytes);

// One kind of memory moed is about to hold, for check_fits_physical's message.
struct memory_claim {
    std::string_view what;  // "dense weights", "host budget (tiers.host_budget)", ...
    std::uint64_t bytes = 0;
};

// Errors (errc::out_of_memory) when the claims together are more than `physical_bytes`,
// naming each claim, the sum and the physical bytes. physical_bytes 0 (unknown) passes.
result<void> check_fits_physical(std::span<const memory_claim> claims, std::uint64_t physical_bytes);

// The load-time check, before the weights are copied: the host budget alone (`budget` as
// configured, resolved against `expert_bytes`) must not be more than physical memory (the
// error names host_budget_key, the asked bytes and the physical bytes), and the owned copy
// of the weights (`owned_copy_bytes`: the dense tensors when tiered, the whole tensor data
// when resident) plus the budget capped at `every_expert_bytes` must fit too.
result<void> check_load_fits(const std::optional<budget_spec>& budget, std::uint64_t expert_bytes,
                             std::uint64_t every_expert_bytes, std::uint64_t owned_copy_bytes,
                             std::uint64_t physical_bytes);

}  // namespace moed::engine
