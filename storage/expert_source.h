// The seam between the engine and the expert tiers: the engine never reads routed-expert
// weights directly. It acquires an expert by ExpertId on the device it computes on and gets a
// handle whose weights stay valid until the handle is released (destroyed); the handle says
// which device and kind of memory the bytes are in. Everything about tiers, prediction and
// prefetch lives behind this interface and its control half (storage/tier_control.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/device.h"
#include "common/ids.h"
#include "common/result.h"
#include "common/tensor_type.h"
#include "storage/tier_control.h"

namespace moed::storage {

class gguf_file;

// One expert matrix: `rows` rows of `cols` values in `type`, row-major, rows contiguous.
struct expert_matrix {
    tensor_type type = tensor_type::f32;
    const void* data = nullptr;
    std::int64_t rows = 0;
    std::int64_t cols = 0;
    std::size_t row_bytes = 0;
};

// gate and up: [n_ff_exp rows x n_embd cols]; down: [n_embd rows x n_ff_exp cols].
struct expert_weights {
    expert_matrix gate;
    expert_matrix up;
    expert_matrix down;
};

class expert_source;

// A reference to a resident expert; releasing it (destruction) lets the source evict it.
// Move-only. Must be released before the source is destroyed.
class expert_handle {
public:
    expert_handle() = default;
    expert_handle(expert_source* source, ExpertId id, expert_weights weights, std::uint64_t token, device_id device,
                  memory_kind memory)
        : source_(source), id_(id), weights_(weights), token_(token), device_(device), memory_(memory) {}
    expert_handle(expert_handle&& other) noexcept;
    expert_handle& operator=(expert_handle&& other) noexcept;
    expert_handle(const expert_handle&) = delete;
    expert_handle& operator=(const expert_handle&) = delete;
    ~expert_handle();

    bool valid() const noexcept { return source_ != nullptr; }
    ExpertId id() const noexcept { return id_; }
    const expert_weights& weights() const noexcept { return weights_; }
    // Where the weights are: the device asked for, and the kind of memory on it.
    device_id device() const noexcept { return device_; }
    memory_kind memory() const noexcept { return memory_; }
    void release() noexcept;

private:
    expert_source* source_ = nullptr;
    ExpertId id_;
    expert_weights weights_;
    std::uint64_t token_ = 0;  // the source's own bookkeeping (a slot number)
    device_id device_;
    memory_kind memory_ = memory_kind::host_pageable;
};

// Where routed experts come from. Implementations: resident (every expert in host memory,
// no control), and the tiers (storage/tiers.h makes them; they implement tier_control).
// Every acquire names the device the caller computes on; a source that cannot place an
// expert there answers unsupported, naming both.
// Threads: acquire/release may be called from the engine thread; implementations document
// any further thread use.
class expert_source {
public:
    virtual ~expert_source() = default;
    // Acquires one expert on `device`; waits until it is there. Errors name the expert and
    // the file.
    virtual result<expert_handle> acquire(ExpertId id, device_id device) = 0;
    // Acquires every expert in `ids` (one MoE layer's selection), requesting all missing
    // ones at once before waiting for any. handles[i] corresponds to ids[i].
    virtual result<void> acquire_many(std::span<const ExpertId> ids, device_id device,
                                      std::vector<expert_handle>& handles);
    // As acquire_many, but calls apply(i, handles[i]) for each expert as soon as it is
    // resident, those already resident first, so compute runs on them while the others are
    // still being read; returns after every expert was applied (or at the first error, with
    // every handle released). The order of the calls is unspecified. `apply` runs on the
    // calling thread with no lock of the source held. The default acquires all, then applies
    // in order.
    using apply_fn = std::function<void(std::size_t, const expert_handle&)>;
    virtual result<void> acquire_each(std::span<const ExpertId> ids, device_id device,
                                      std::vector<expert_handle>& handles, const apply_fn& apply);
    // How many experts one caller may hold at once (a tier's slot count). The engine
    // acquires a layer's experts in groups of at most this many, so a budget smaller than
    // one layer's selection still works, only slower.
    virtual std::uint32_t max_held_experts() const noexcept { return UINT32_MAX; }
    // The tier's control interface; null for a source with nothing to steer (every expert
    // resident).
    virtual tier_control* control() noexcept { return nullptr; }
    virtual const tier_control* control() const noexcept { return nullptr; }

protected:
    friend class expert_handle;
    virtual void release(ExpertId id, std::uint64_t token) noexcept = 0;
};

// The names of one layer's three stacked expert tensors. The architecture spells them
// (engine/arch.h); storage only reads what it is told.
struct stacked_expert_names {
    std::string gate, up, down;
};

// The layout of routed experts in a GGUF file: per layer, the three stacked tensors (gate,
// up, down), each [n_expert][rows][cols]. Types, and so byte sizes, may differ by layer.
struct expert_layout {
    std::uint32_t n_layer = 0;
    std::uint32_t n_expert = 0;
    struct layer_tensors {
        std::uint64_t gate_offset = 0, up_offset = 0, down_offset = 0;  // absolute file offsets
        tensor_type gate_type = tensor_type::f32, up_type = tensor_type::f32, down_type = tensor_type::f32;
        std::int64_t n_embd = 0, n_ff = 0;
        std::size_t gate_bytes = 0, up_bytes = 0, down_bytes = 0;  // per expert
    };
    std::vector<layer_tensors> layers;

    // Reads the layout of names.size() layers (layer l's tensors are names[l]); checks shapes.
    static result<expert_layout> from_gguf(const gguf_file& file, std::span<const stacked_expert_names> names,
                                           std::uint32_t n_expert, std::int64_t n_embd, std::int64_t n_ff);
    std::size_t expert_bytes(std::uint32_t layer) const noexcept;
};

// All experts resident: handles point into an image of the file's bytes, either the file's
// read-only mapping (tools and tests that own the file) or a copy the caller owns (the
// daemon's model, so a file changed underneath cannot fault the process).
class resident_expert_source final : public expert_source {
public:
    // Over the mapping of `file`, which must stay mapped while the source is used.
    resident_expert_source(const gguf_file& file, expert_layout layout);
    // Over `image`, the file's bytes [image_offset, image_offset + image.size()), which must
    // cover every expert of `layout` and outlive the source. `path` names the file in errors.
    resident_expert_source(std::string path, expert_layout layout, std::span<const std::byte> image,
                           std::uint64_t image_offset);
    // Only on the host (where the image is).
    result<expert_handle> acquire(ExpertId id, device_id device) override;

protected:
    void release(ExpertId id, std::uint64_t token) noexcept override;

private:
    std::string path_;
    expert_layout layout_;
    std::span<const std::byte> image_;
    std::uint64_t image_offset_ = 0;
};

}  // namespace moed::storage
