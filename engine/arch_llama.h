// llama.cpp's llama with experts (Mixtral 8x7B / 8x22B): NORM RoPE, no q/k norm, optional q/k/v biases; softmax routing renormalised over the chosen; expert width from feed_forward_length. A llama file without experts is a dense model, which moed does not run.
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& llama_architecture();

}  // namespace moed::engine
