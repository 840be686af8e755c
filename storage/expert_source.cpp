#include "storage/expert_source.h"

#include <utility>

#include <span>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/assert.h"
#include "storage/gguf.h"

namespace moed::storage {

expert_handle::expert_handle(expert_handle&& other) noexcept
    : source_(other.source_),
      id_(other.id_),
      weights_(other.weights_),
      token_(other.token_),
      device_(other.device_),
      memory_(other.memory_) {
    other.source_ = nullptr;
}

expert_handle& expert_handle::operator=(expert_handle&& other) noexcept {
    if (this != &other) {
        release();
        source_ = other.source_;
        id_ = other.id_;
        weights_ = other.weights_;
        token_ = other.token_;
        device_ = other.device_;
        memory_ = other.memory_;
        other.source_ = nullptr;
    }
    return *this;
}

expert_handle::~expert_handle() { release(); }

void expert_handle::release() noexcept {
    if (source_ != nullptr) {
        source_->release(id_, token_);
        source_ = nullptr;
    }
}

result<void> expert_source::acquire_many(std::span<const ExpertId> ids, device_id device,
                                         std::vector<expert_handle>& handles) {
    handles.clear();
    for (const ExpertId& id : ids) {
        auto handle = acquire(id, device);
        if (!handle) {
            handles.clear();
            return unexpected(std::move(handle).error());
        }
        handles.push_back(std::move(handle).value());
    }
    return {};
}

result<void> expert_source::acquire_each(std::span<const ExpertId> ids, device_id device,
                                         std::vector<expert_handle>& handles, const apply_fn& apply) {
    MOED_TRY(acquire_many(ids, device, handles));
    for (std::size_t i = 0; i < handles.size(); ++i) apply(i, handles[i]);
    return {};
}

namespace {

// Checks one stacked expert tensor: ne = {cols, rows, n_expert}.
result<const gguf_tensor_info*> stacked_tensor(const gguf_file& file, const std::string& name,
                                               std::int64_t cols, std::int64_t rows, std::uint32_t n_expert) {
    auto info = file.get_tensor(name);
    if (!info) return unexpected(std::move(info).error());
    const gguf_tensor_info& t = **info;
    if (t.n_dims != 3 || t.ne[0] != cols || t.ne[1] != rows || t.ne[2] != n_expert) {
        // Print only the dims the tensor has: a flat tensor must not look 3-d in the message.
        return make_error(errc::bad_file,
                          "{}: tensor '{}' has shape [{}] ({} dims), expected [{}, {}, {}]",
                          file.path(), name,
                          fmt::join(std::span<const std::int64_t>(t.ne, static_cast<std::size_t>(t.n_dims)), ", "),
                          t.n_dims, cols, rows, n_expert);
    }
    return &t;
}

}  // namespace

result<expert_layout> expert_layout::from_gguf(const gguf_file& file, std::span<const stacked_expert_names> names,
                                               std::uint32_t n_expert, std::int64_t n_embd, std::int64_t n_ff) {
    const auto n_layer = static_cast<std::uint32_t>(names.size());
    expert_layout layout;
    layout.n_layer = n_layer;
    layout.n_expert = n_expert;
    layout.layers.reserve(n_layer);
    for (std::uint32_t l = 0; l < n_layer; ++l) {
        auto gate = stacked_tensor(file, names[l].gate, n_embd, n_ff, n_expert);
        if (!gate) return unexpected(std::move(gate).error());
        auto up = stacked_tensor(file, names[l].up, n_embd, n_ff, n_expert);
        if (!up) return unexpected(std::move(up).error());
        auto down = stacked_tensor(file, names[l].down, n_ff, n_embd, n_expert);
        if (!down) return unexpected(std::move(down).error());
        layer_tensors lt;
        lt.n_embd = n_embd;
        lt.n_ff = n_ff;
        lt.gate_offset = (*gate)->offset;
        lt.up_offset = (*up)->offset;
        lt.down_offset = (*down)->offset;
        lt.gate_type = (*gate)->type;
        lt.up_type = (*up)->type;
        lt.down_type = (*down)->type;
        lt.gate_bytes = (*gate)->size_bytes / n_expert;
        lt.up_bytes = (*up)->size_bytes / n_expert;
        lt.down_bytes = (*down)->size_bytes / n_expert;
        layout.layers.push_back(lt);
    }
    return layout;
}

std::size_t expert_layout::expert_bytes(std::uint32_t layer) const noexcept {
    MOED_ASSERT(layer < layers.size());
    const layer_tensors& lt = layers[layer];
    return lt.gate_bytes + lt.up_bytes + lt.down_bytes;
}

resident_expert_source::resident_expert_source(const gguf_file& file, expert_layout layout)
    : resident_expert_source(file.path(), std::move(layout), file.mapping(), 0) {}

resident_expert_source::resident_expert_source(std::string path, expert_layout layout,
                                               std::span<const std::byte> image, std::uint64_t image_offset)
    : path_(std::move(path)), layout_(std::move(layout)), image_(image), image_offset_(image_offset) {
    // Every expert's bytes lie inside the image (a programmer error otherwise: the caller
    // copied less than the layout it passes).
    for (const auto& lt : layout_.layers) {
        for (const auto& [offset, bytes] : {std::pair{lt.gate_offset, lt.gate_bytes}, std::pair{lt.up_offset, lt.up_bytes},
                                            std::pair{lt.down_offset, lt.down_bytes}}) {
            MOED_ASSERT(offset >= image_offset_ &&
                        offset - image_offset_ + static_cast<std::uint64_t>(bytes) * layout_.n_expert <= image_.size());
        }
    }
}

result<expert_handle> resident_expert_source::acquire(ExpertId id, device_id device) {
    if (!device.is_host()) {
        return make_error(errc::unsupported, "{}: expert {}/{} wanted on {}, but every expert is resident in host memory",
                          path_, id.layer, id.expert, device_name(device));
    }
    if (id.layer >= layout_.n_layer || id.expert >= layout_.n_expert) {
        return make_error(errc::invalid_argument, "{}: expert {}/{} out of range ({} layers x {} experts)",
                          path_, id.layer, id.expert, layout_.n_layer, layout_.n_expert);
    }
    const auto& lt = layout_.layers[id.layer];
    const std::byte* base = image_.data();
    auto matrix = [&](std::uint64_t offset, std::size_t bytes, tensor_type type, std::int64_t rows,
                      std::int64_t cols) {
        return expert_matrix{type, base + (offset - image_offset_) + bytes * id.expert, rows, cols, bytes / rows};
    };
    expert_weights w{matrix(lt.gate_offset, lt.gate_bytes, lt.gate_type, lt.n_ff, lt.n_embd),
                     matrix(lt.up_offset, lt.up_bytes, lt.up_type, lt.n_ff, lt.n_embd),
                     matrix(lt.down_offset, lt.down_bytes, lt.down_type, lt.n_embd, lt.n_ff)};
    return expert_handle(this, id, w, 0, device_id::host(), memory_kind::host_pageable);
}

void resident_expert_source::release(ExpertId, std::uint64_t) noexcept {}

}  // namespace moed::storage
