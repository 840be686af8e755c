// llama.cpp's qwen3moe (Qwen3-30B-A3B, Qwen3-235B-A22B): per-head q/k RMSNorm, NEOX RoPE, no biases; softmax routing with the chosen weights renormalised; no shared expert.
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& qwen3moe_architecture();

}  // namespace moed::engine
