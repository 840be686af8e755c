// The control interface of the tiered expert source (storage/tier_control.h): each call
// takes the tier's lock, lets the tier core decide (storage/tier_core.h), and submits the
// loads it queued after releasing the lock.
#include "common/log.h"
#include "storage/tiered_state.h"

namespace moed::storage {

using namespace tiered_detail;


void tiered_expert_source::prefetch(std::span<const prefetch_request> requests) {
    impl_->with_core([&](tier_core& c) { c.prefetch(requests); });
}

void tiered_expert_source::begin_layer(std::uint32_t layer, std::uint64_t n_tokens) {
    impl_->with_core([&](tier_core& c) { c.begin_layer(layer, n_tokens); });
}

void tiered_expert_source::end_layer(std::uint32_t layer) {
    impl_->with_core([&](tier_core& c) { c.end_layer(layer); });
}

void tiered_expert_source::cancel_prefetches_before(std::uint32_t layer) {
    impl_->with_core([&](tier_core& c) { c.cancel_prefetches_before(layer); });
}

void tiered_expert_source::cancel_prefetches() {
    impl_->with_core([&](tier_core& c) { c.cancel_prefetches(); });
}

std::uint32_t tiered_expert_source::set_hot_set(std::span<const ExpertId> ids) {
    std::uint32_t taken = 0;
    impl_->with_core([&](tier_core& c) { taken = c.set_hot_set(ids); });
    MOED_LOG_DEBUG(component, "{}: hot set of {} experts", impl_->path, taken);
    return taken;
}

void tiered_expert_source::set_expert_scores(std::span<const float> per_expert_score) {
    impl& d = *impl_;
    bool taken = false;
    d.with_core([&](tier_core& c) { taken = c.set_expert_scores(per_expert_score); });
    if (!taken) {
        MOED_LOG_WARN(component, "{}: {} expert scores given for {} experts ({} layers x {}); ignored", d.path,
                      per_expert_score.size(), static_cast<std::size_t>(d.layout.n_layer) * d.layout.n_expert,
                      d.layout.n_layer, d.layout.n_expert);
    }
}

void tiered_expert_source::set_prefetch_inflight_limit(std::uint64_t bytes) {
    impl_->with_core([&](tier_core& c) { c.set_prefetch_inflight_limit(bytes); });
}

link_figures tiered_expert_source::link() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->core.link();
}

}  // namespace moed::storage
