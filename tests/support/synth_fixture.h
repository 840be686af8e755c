// Small synthetic qwen3moe models for engine tests, made once per test process with the
// moe-synth library, plus a helper that rewrites a GGUF file with changes (to make broken
// variants of a valid model).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "storage/expert_source.h"
#include "storage/gguf.h"
#include "tools/synth_model.h"

namespace moed::test {

// A synthetic model of `type` with the default small shape (2 layers, 8 experts, top-2,
// vocab 512), written to the test's temp dir once and reused.
std::string synthetic_model(const std::string& type, const tools::synth_shape& shape = {});

// The stacked expert tensor names of layers 0..n_layer-1 as the synthesizer (and llama.cpp)
// writes them: blk.<l>.ffn_{gate,up,down}_exps.weight.
inline std::vector<storage::stacked_expert_names> stacked_names(std::uint32_t n_layer) {
    std::vector<storage::stacked_expert_names> names;
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".ffn_";
        names.push_back({p + "gate_exps.weight", p + "up_exps.weight", p + "down_exps.weight"});
    }
    return names;
}

// Copies `src` to `dst` through the writer; `edit` may change metadata and tensors first.
struct gguf_contents {
    std::vector<std::pair<std::string, storage::gguf_value>> kv;
    struct tensor {
        std::string name;
        tensor_type type;
        std::vector<std::int64_t> ne;
        std::vector<std::byte> data;
    };
    std::vector<tensor> tensors;
};
void rewrite_gguf(const std::string& src, const std::string& dst,
                  const std::function<void(gguf_contents&)>& edit);

}  // namespace moed::test
