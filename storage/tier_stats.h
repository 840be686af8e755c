// Statistics of the expert tiers. The structs are wire types (the daemon serves them,
// moectl reads them), so they live in common/status.h; storage fills them in.
#pragma once

#include "common/status.h"

namespace moed::storage {
using moed::expert_cache_stats;
using moed::latency_summary;
using moed::tier_stats;
}  // namespace moed::storage
