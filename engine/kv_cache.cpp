#include "engine/kv_cache.h"

#include "engine/arch.h"

namespace moed::engine {

kv_cache_shape kv_shape_of(const model_hparams& hp) noexcept {
    if (hp.mla.enabled() && hp.mla.absorbed) return {hp.n_layer, static_cast<std::int64_t>(hp.mla.kv_lora_rank) + hp.n_rot, 0};
    return {hp.n_layer, static_cast<std::int64_t>(hp.n_head_kv) * hp.head_dim,
            static_cast<std::int64_t>(hp.n_head_kv) * hp.value_dim()};
}

kv_cache::kv_cache(const kv_cache_shape& shape, std::int64_t n_ctx)
    : shape_(shape),
      n_ctx_(n_ctx),
      k_layer_elems_(n_ctx * shape.k_row_elems),
      v_layer_elems_(n_ctx * shape.v_row_elems),
      k_(static_cast<std::size_t>(shape.n_layer * k_layer_elems_)),
      v_(static_cast<std::size_t>(shape.n_layer * v_layer_elems_)) {}

kv_cache::kv_cache(std::uint32_t n_layer, std::int64_t n_ctx, int n_head_kv, int head_dim)
    : kv_cache(kv_cache_shape{n_layer, static_cast<std::int64_t>(n_head_kv) * head_dim,
                              static_cast<std::int64_t>(n_head_kv) * head_dim},
               n_ctx) {}

}  // namespace moed::engine
