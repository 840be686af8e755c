// The key/value cache of one sequence: f16 keys and values per layer and position, as
// llama.cpp's default cache type, so attention sees the same rounded values.
// Threads: owned by the engine thread.
#pragma once

#include <cstdint>
#include <vector>

namespace moed::engine {

struct model_hparams;

// What one position of one layer holds: k_row_elems f16 keys (every KV head's) and
// v_row_elems f16 values; v_row_elems 0 means the values are read from the key rows (MLA's
// latent cache keeps one row per position: the latent, which is also the value, then the
// RoPE'd key part).
struct kv_cache_shape {
    std::uint32_t n_layer = 0;
    std::int64_t k_row_elems = 0;
    std::int64_t v_row_elems = 0;
    bool operator==(const kv_cache_shape&) const = default;
};

// The cache shape a model's attention needs: n_head_kv x head_dim keys and n_head_kv x
// value_dim() values per layer, or absorbed MLA's single latent row of kv_lora_rank + n_rot
// values.
kv_cache_shape kv_shape_of(const model_hparams& hp) noexcept;

class kv_cache {
public:
    kv_cache(const kv_cache_shape& shape, std::int64_t n_ctx);
    // Keys and values of n_head_kv x head_dim each per layer and position.
    kv_cache(std::uint32_t n_layer, std::int64_t n_ctx, int n_head_kv, int head_dim);

    const kv_cache_shape& shape() const noexcept { return shape_; }
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
    // What a cache of this shape allocates, before making one.
    static std::uint64_t bytes_for(const kv_cache_shape& shape, std::int64_t n_ctx) noexcept {
        return static_cast<std::uint64_t>(shape.n_layer) * static_cast<std::uint64_t>(n_ctx) *
               static_cast<std::uint64_t>(shape.k_row_elems + shape.v_row_elems) * sizeof(std::uint16_t);
    }

    // Layer l's [n_ctx][k_row_elems] key rows and [n_ctx][v_row_elems] value rows (the key
    // rows when the values live there).
    std::uint16_t* keys(std::uint32_t layer) noexcept { return k_.data() + layer * k_layer_elems_; }
    std::uint16_t* values(std::uint32_t layer) noexcept {
        return v_layer_elems_ == 0 ? keys(layer) : v_.data() + layer * v_layer_elems_;
    }
    std::int64_t key_row_elems() const noexcept { return shape_.k_row_elems; }
    std::int64_t value_row_elems() const noexcept { return shape_.v_row_elems; }

private:
    kv_cache_shape shape_;
    std::int64_t n_ctx_;
    std::int64_t k_layer_elems_;
    std::int64_t v_layer_elems_;
    std::int64_t size_ = 0;
    std::vector<std::uint16_t> k_;
    std::vector<std::uint16_t> v_;
};

}  // namespace moed::engine
