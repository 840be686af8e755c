#include "engine/kv_cache.h"

namespace moed::engine {

kv_cache::kv_cache(std::uint32_t n_layer, std::int64_t n_ctx, int n_head_kv, int head_dim)
    : n_ctx_(n_ctx),
      row_elems_(static_cast<std::int64_t>(n_head_kv) * head_dim),
      layer_elems_(n_ctx * row_elems_),
      k_(static_cast<std::size_t>(n_layer * layer_elems_)),
      v_(static_cast<std::size_t>(n_layer * layer_elems_)) {}

}  // namespace moed::engine
