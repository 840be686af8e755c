// Identifiers shared by every layer.
#pragma once

#include <cstdint>
#include <functional>

namespace moed {

// One routed expert of one MoE layer. Its payload is the expert's gate, up and down
// matrices in the model file's storage types.
struct ExpertId {
    std::uint32_t layer = 0;
    std::uint32_t expert = 0;
    friend bool operator==(const ExpertId&, const ExpertId&) = default;
};

}  // namespace moed

template <>
struct std::hash<moed::ExpertId> {
    std::size_t operator()(const moed::ExpertId& id) const noexcept {
        return (static_cast<std::size_t>(id.layer) << 32) ^ id.expert;
    }
};
