// A prefetch request: the scheduler's word to a tier that an expert will probably be needed,
// with how soon (the class) and how likely (the score). Tiers queue them (load_queue) and
// serve them in class order.
#pragma once

#include <cstdint>

#include "common/ids.h"

namespace moed::storage {

// Prefetch priority classes, served in this order (contract with the scheduler).
enum class prefetch_class : std::uint8_t { demand = 0, near = 1, far = 2, warmup = 3 };
const char* prefetch_class_name(prefetch_class c) noexcept;

struct prefetch_request {
    ExpertId id;
    prefetch_class cls = prefetch_class::near;
    // The predicted probability that the expert is needed, in [0, 1]: orders requests of a
    // class and is the need the loaded expert keeps while its layer is still ahead.
    float score = 1.0f;
};

}  // namespace moed::storage
