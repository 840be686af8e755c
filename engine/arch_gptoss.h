// llama.cpp's gpt-oss (gpt-oss-20b, gpt-oss-120b): q/k/v and output biases, a learned sink
// logit per head, sliding-window attention on every other layer, NEOX RoPE with YaRN; the
// router has a bias, takes the top k of its logits and soft-maxes the chosen; experts have
// biases and the clamped SwiGLU; the feed-forward norm is post_attention_norm.
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& gptoss_architecture();

}  // namespace moed::engine
