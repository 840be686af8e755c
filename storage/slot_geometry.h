// Where an expert's bytes lie, in the model file and in a tier slot. A slot holds one expert
// as three regions (gate, up, down), each sized for the largest matrix of any expert of its
// layer including the skew of an aligned read: a read covers [align_down(offset),
// align_up(offset + bytes)) of the file, and the matrix starts `skew` bytes into its region.
// The tier (which hands out expert_weights into a slot) and the mover (which fills the slot)
// both place bytes by these rules, so they live here once.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>

#include "storage/expert_source.h"

namespace moed::storage {

// Slot regions are aligned to at least a page even when the reader needs less (buffered
// reads), so matrices start page-aligned for SIMD loads and DMA, and a reader opened later
// with O_DIRECT (logical block size <= 4096 on every NVMe we know) fits the same layout.
inline constexpr std::uint32_t min_region_alignment = 4096;

constexpr std::uint64_t align_down(std::uint64_t v, std::uint64_t a) noexcept { return v / a * a; }
constexpr std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept { return (v + a - 1) / a * a; }
constexpr bool is_power_of_two(std::uint64_t v) noexcept { return v != 0 && (v & (v - 1)) == 0; }

inline constexpr std::array<const char*, 3> matrix_names = {"gate", "up", "down"};

struct matrix_desc {
    std::uint64_t offset;  // of expert 0's matrix in the file
    std::uint64_t bytes;   // per expert
};

inline std::array<matrix_desc, 3> matrices_of(const expert_layout::layer_tensors& lt) noexcept {
    return {matrix_desc{lt.gate_offset, lt.gate_bytes}, matrix_desc{lt.up_offset, lt.up_bytes},
            matrix_desc{lt.down_offset, lt.down_bytes}};
}

// The file offset of matrix `m` of expert `id`.
inline std::uint64_t matrix_offset(const expert_layout& layout, ExpertId id, std::size_t m) noexcept {
    const matrix_desc d = matrices_of(layout.layers[id.layer])[m];
    return d.offset + static_cast<std::uint64_t>(id.expert) * d.bytes;
}

// Bytes a slot region needs for one matrix of any expert of the layer: the read covers
// [align_down(offset), align_up(offset + bytes)), whose length depends on where the
// expert's matrix starts within an aligned block.
inline std::uint64_t region_bytes(const matrix_desc& m, std::uint32_t n_expert, std::uint64_t alignment) noexcept {
    std::uint64_t most = 0;
    for (std::uint32_t e = 0; e < n_expert; ++e) {
        const std::uint64_t start = m.offset + static_cast<std::uint64_t>(e) * m.bytes;
        most = std::max(most, align_up(start % alignment + m.bytes, alignment));
        if (start % alignment == 0 && m.bytes % alignment == 0) break;  // every expert alike
    }
    return most;
}

// Bytes one load of an expert of `layer` reads from the file, on average over the layer's
// experts: each matrix is read from its aligned start to its aligned end. What a load costs
// the disk (the expert's own bytes plus the alignment's fringe).
inline std::uint64_t mean_read_bytes(const expert_layout& layout, std::uint32_t layer, std::uint64_t alignment) noexcept {
    std::uint64_t total = 0;
    for (const matrix_desc& m : matrices_of(layout.layers[layer])) {
        for (std::uint32_t e = 0; e < layout.n_expert; ++e) {
            const std::uint64_t start = m.offset + static_cast<std::uint64_t>(e) * m.bytes;
            total += align_up(start + m.bytes, alignment) - align_down(start, alignment);
        }
    }
    return layout.n_expert == 0 ? 0 : (total + layout.n_expert / 2) / layout.n_expert;
}

struct layer_geometry {
    std::array<std::uint64_t, 3> region_offset{};  // within the slot
    std::array<std::uint64_t, 3> region_bytes{};
};

inline layer_geometry geometry_of(const expert_layout& layout, std::uint32_t layer, std::uint64_t alignment) noexcept {
    layer_geometry g;
    const auto ms = matrices_of(layout.layers[layer]);
    std::uint64_t at = 0;
    for (std::size_t m = 0; m < 3; ++m) {
        g.region_offset[m] = at;
        g.region_bytes[m] = region_bytes(ms[m], layout.n_expert, alignment);
        at += g.region_bytes[m];
    }
    return g;
}

// Bytes a slot needs for an expert of `layer`: its three regions.
inline std::uint64_t layer_slot_bytes(const expert_layout& layout, std::uint32_t layer, std::uint64_t alignment) noexcept {
    const layer_geometry g = geometry_of(layout, layer, alignment);
    return g.region_offset[2] + g.region_bytes[2];
}

// The expert `id` held in a slot that starts at `slot_base`, its regions laid out by `g` at
// `alignment`. Nothing is copied: the matrices point into the slot.
inline expert_weights weights_in_slot(std::byte* slot_base, const expert_layout& layout, const layer_geometry& g,
                                      ExpertId id, std::uint64_t alignment) noexcept {
    const auto& lt = layout.layers[id.layer];
    const auto ms = matrices_of(lt);
    const std::array<tensor_type, 3> types = {lt.gate_type, lt.up_type, lt.down_type};
    const std::array<std::int64_t, 3> rows = {lt.n_ff, lt.n_ff, lt.n_embd};
    const std::array<std::int64_t, 3> cols = {lt.n_embd, lt.n_embd, lt.n_ff};
    std::array<expert_matrix, 3> out;
    for (std::size_t m = 0; m < 3; ++m) {
        const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(id.expert) * ms[m].bytes;
        // The read began at the aligned offset below the matrix; the matrix itself sits that
        // far into its region.
        const std::uint64_t skew = start - align_down(start, alignment);
        out[m] = expert_matrix{types[m], slot_base + g.region_offset[m] + skew, rows[m], cols[m],
                               static_cast<std::size_t>(ms[m].bytes / static_cast<std::uint64_t>(rows[m]))};
    }
    return expert_weights{out[0], out[1], out[2]};
}

}  // namespace moed::storage
