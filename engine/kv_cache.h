// The key/value cache of one sequence: f16 keys and values per layer and position, as
// llama.cpp's default cache type, so attention sees the same rounded values.
// Threads: owned by the engine thread.
#pragma once

#include <cstdint>
#include <vector>

namespace moed::engine {

class kv_cache {
public:
    kv_cache(std::uint32_t n_layer, std::int64_t n_ctx, int n_head_kv, int head_dim);

    std::int64_t n_ctx() const noexcept { return n_ctx_; }
    // Positions filled so far (the next token's position).
    std::int64_t size() const noexcept { return size_; }
    void set_size(std::int64_t n) noexcept { size_ = n; }
    void clear() noexcept { size_ = 0; }
    // Bytes allocated, and of them the bytes holding the positions filled so far.
    std::uint64_t bytes() const noexcept { return (k_.size() + v_.size()) * sizeof(std::uint16_t); }
    std::uint64_t used_bytes() const noexcept {
        return n_ctx_ > 0 ? static_cast<std::uint64_t>(size_) * (bytes() / static_cast<std::uint64_t>(n_ctx_)) : 0;
    }
    // What a cache of these dimensions allocates, before making one.
    static std::uint64_t bytes_for(std::uint32_t n_layer, std::int64_t n_ctx, int n_head_kv, int head_dim) noexcept {
        return 2 * static_cast<std::uint64_t>(n_layer) * static_cast<std::uint64_t>(n_ctx) *
               static_cast<std::uint64_t>(n_head_kv) * static_cast<std::uint64_t>(head_dim) * sizeof(std::uint16_t);
    }

    // Layer l's [n_ctx][n_head_kv * head_dim] key / value rows.
    std::uint16_t* keys(std::uint32_t layer) noexcept { return k_.data() + layer * layer_elems_; }
    std::uint16_t* values(std::uint32_t layer) noexcept { return v_.data() + layer * layer_elems_; }
    std::int64_t row_elems() const noexcept { return row_elems_; }

private:
    std::int64_t n_ctx_;
    std::int64_t row_elems_;
    std::int64_t layer_elems_;
    std::int64_t size_ = 0;
    std::vector<std::uint16_t> k_;
    std::vector<std::uint16_t> v_;
};

}  // namespace moed::engine
