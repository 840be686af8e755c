// The daemon's memory as users count it: status.memory filled from the objects that hold
// it, and the start-up check that the KV caches fit beside the weights and the host budget.
// Threads: fill_memory_status may run on any thread (it reads figures that stay fixed after
// load, the tier statistics already in the status, and /proc/self/status);
// check_memory_fits runs once at start-up.
#pragma once

#include <cstdint>

#include "common/result.h"
#include "common/status.h"
#include "engine/model.h"

namespace moed::daemon {

// Fills status.memory but for what batch_loop::snapshot() fills (KV caches, scratch): the
// budget, the model's owned copies, the host slab (from status.tiers, so call it after the
// tier statistics are in), held_bytes, and the process's RSS and locked bytes. The slab
// counts as mlocked when the kernel reports at least its bytes locked (VmLck): nothing else
// in moed locks memory, and the kernel's figure is the one that says the lock held.
// `physical_bytes` is the machine's memory as the start-up check saw it.
void fill_memory_status(server_status& status, const engine::model& model, std::uint64_t physical_bytes);

// Before the batch loop allocates its KV caches (max_sequences caches of n_ctx positions):
// the model's owned copy, the host budget and the KV caches together must fit physical
// memory; the error names each part and the keys that size it. physical_bytes 0: unknown,
// passes.
result<void> check_memory_fits(const engine::model& model, std::uint32_t max_sequences, std::int64_t n_ctx,
                               std::uint64_t physical_bytes);

}  // namespace moed::daemon
