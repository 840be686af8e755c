// llama.cpp's glm4moe (GLM-4.5, GLM-4.6, GLM-4.5-Air): q/k/v biases, per-head q/k RMSNorm
// when the file has the tensors, partial NEOX RoPE (rope.dimension_count < head dim);
// leading dense layers; sigmoid routing with a selection bias, the chosen weights
// renormalised and scaled; one ungated shared expert; the feed-forward norm is
// post_attention_norm. The multi-token prediction blocks at the end (nextn_predict_layers)
// are skipped, as llama.cpp skips them.
#pragma once

#include "engine/arch.h"

namespace moed::engine {

const architecture& glm4moe_architecture();

}  // namespace moed::engine
