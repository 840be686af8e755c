// llama.cpp's qwen2moe (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): q/k/v biases, NEOX RoPE; softmax routing without renormalisation; a shared expert gated by sigmoid(w . x).
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& qwen2moe_architecture();

}  // namespace moed::engine
