// llama.cpp's olmoe (OLMoE-1B-7B): RMSNorm over the whole query and key projections, NEOX RoPE; softmax routing without renormalisation; expert width from feed_forward_length.
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& olmoe_architecture();

}  // namespace moed::engine
