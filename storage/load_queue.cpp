#include "storage/load_queue.h"

#include <algorithm>

namespace moed::storage {

const char* prefetch_class_name(prefetch_class c) noexcept {
    switch (c) {
        case prefetch_class::demand: return "demand";
        case prefetch_class::near: return "near";
        case prefetch_class::far: return "far";
        case prefetch_class::warmup: return "warmup";
    }
    return "unknown";
}

void load_queue::reset(std::uint32_t n_layer, std::uint32_t n_expert, std::uint32_t n_slots, limits bounds) {
    n_layer_ = n_layer;
    n_expert_ = n_expert;
    limits_ = bounds;
    const std::size_t n_experts = static_cast<std::size_t>(n_layer) * n_expert;
    queue_.clear();
    queue_.reserve(n_experts);
    queued_.assign(n_experts, 0);
    mark_.assign(n_experts, 0);
    layer_mark_.assign(n_layer, 0);
    touched_.clear();
    touched_.reserve(n_layer);
    sorted_ = true;
    deferred_.assign(n_slots, 0);
    deferred_head_ = 0;
    deferred_count_ = 0;
    inflight_bytes_ = 0;
    inflight_bytes_max_ = 0;
}

void load_queue::push(const prefetch_request& r) {
    MOED_ASSERT(in_range(r.id));
    const std::size_t idx = index(r.id);
    if (queued_[idx] != 0) {
        for (queued_request& q : queue_) {
            if (q.id == r.id) {
                q.cls = std::min(q.cls, r.cls);
                q.score = std::max(q.score, r.score);
                break;
            }
        }
    } else {
        // One entry per expert at most, so the reserved n_layer * n_expert never grows.
        MOED_ASSERT(queue_.size() < queue_.capacity());
        queue_.push_back(queued_request{r.id, r.cls, r.score});
        queued_[idx] = 1;
    }
    sorted_ = false;
}

template <typename Pred>
std::size_t load_queue::drop_if(Pred drop) noexcept {
    std::size_t keep = 0;
    std::size_t dropped = 0;
    for (std::size_t k = 0; k < queue_.size(); ++k) {
        if (drop(queue_[k])) {
            queued_[index(queue_[k].id)] = 0;
            ++dropped;
        } else {
            queue_[keep++] = queue_[k];
        }
    }
    queue_.resize(keep);
    return dropped;
}

void load_queue::collect_marked_layers() noexcept {
    touched_.clear();
    for (std::uint32_t l = 0; l < n_layer_; ++l) {
        if (layer_mark_[l] != 0) {
            touched_.push_back(l);
            layer_mark_[l] = 0;
        }
    }
}

std::size_t load_queue::supersede(std::span<const prefetch_request> requests) {
    // Mark this batch's experts and the layers it predicts anew.
    for (const prefetch_request& r : requests) {
        if (!in_range(r.id)) continue;
        mark_[index(r.id)] = 1;
        if (r.cls != prefetch_class::warmup) layer_mark_[r.id.layer] = 1;
    }
    const std::size_t dropped = drop_if([&](const queued_request& q) {
        return q.cls != prefetch_class::warmup && layer_mark_[q.id.layer] != 0 && mark_[index(q.id)] == 0;
    });
    for (const prefetch_request& r : requests) {
        if (in_range(r.id)) mark_[index(r.id)] = 0;
    }
    collect_marked_layers();
    return dropped;
}

std::size_t load_queue::drop_passed(std::uint32_t from, std::uint32_t to) {
    MOED_ASSERT(from < n_layer_ && to < n_layer_);
    if (from == to) {
        touched_.clear();
        return 0;
    }
    for (std::uint32_t l = from; l != to; l = (l + 1) % n_layer_) layer_mark_[l] = 1;
    const std::size_t dropped = drop_if([&](const queued_request& q) {
        return q.cls != prefetch_class::warmup && layer_mark_[q.id.layer] != 0;
    });
    collect_marked_layers();
    return dropped;
}

std::size_t load_queue::drop_before(std::uint32_t layer) {
    layer = std::min(layer, n_layer_);
    const std::size_t dropped = drop_if([&](const queued_request& q) {
        return q.cls != prefetch_class::warmup && q.id.layer < layer;
    });
    touched_.clear();
    for (std::uint32_t l = 0; l < layer; ++l) touched_.push_back(l);
    return dropped;
}

std::size_t load_queue::drop_all() {
    return drop_if([](const queued_request&) { return true; });
}

std::size_t load_queue::drop_warmup_not_in(std::span<const std::uint8_t> keep) {
    MOED_ASSERT(keep.size() == queued_.size());
    return drop_if([&](const queued_request& q) { return q.cls == prefetch_class::warmup && keep[index(q.id)] == 0; });
}

void load_queue::sort(std::uint32_t current_layer) noexcept {
    const std::uint32_t n_layer = n_layer_;
    // Class first; then layers in the order the engine reaches them from the one it computes
    // (a request for a layer it has passed waits for the next token); then the higher score.
    auto distance = [&](std::uint32_t layer) { return (layer + n_layer - current_layer) % n_layer; };
    std::sort(queue_.begin(), queue_.end(), [&](const queued_request& a, const queued_request& b) {
        if (a.cls != b.cls) return a.cls < b.cls;
        const std::uint32_t da = distance(a.id.layer), db = distance(b.id.layer);
        if (da != db) return da < db;
        if (a.score != b.score) return a.score > b.score;
        return a.id.expert < b.id.expert;
    });
    sorted_ = true;
}

void load_queue::defer(std::uint32_t slot) {
    MOED_ASSERT(deferred_count_ < deferred_.size());  // a slot is deferred at most once
    deferred_[(deferred_head_ + deferred_count_) % deferred_.size()] = slot;
    ++deferred_count_;
}

std::uint32_t load_queue::next_deferred() const noexcept {
    MOED_ASSERT(deferred_count_ > 0);
    return deferred_[deferred_head_];
}

void load_queue::pop_deferred() noexcept {
    MOED_ASSERT(deferred_count_ > 0);
    deferred_head_ = (deferred_head_ + 1) % deferred_.size();
    --deferred_count_;
}

bool load_queue::fits(std::uint64_t bytes) const noexcept {
    const std::uint64_t limit = limits_.max_inflight_bytes;
    return limit == 0 || inflight_bytes_ == 0 || inflight_bytes_ + bytes <= limit;
}

bool load_queue::fits_prefetch(std::uint64_t bytes) const noexcept {
    std::uint64_t limit = limits_.max_prefetch_inflight_bytes;
    if (scheduler_prefetch_limit_ != 0) limit = limit == 0 ? scheduler_prefetch_limit_ : std::min(limit, scheduler_prefetch_limit_);
    return fits(bytes) && (limit == 0 || inflight_bytes_ == 0 || inflight_bytes_ + bytes <= limit);
}

void load_queue::add_inflight(std::uint64_t bytes) noexcept {
    inflight_bytes_ += bytes;
    inflight_bytes_max_ = std::max(inflight_bytes_max_, inflight_bytes_);
}

void load_queue::remove_inflight(std::uint64_t bytes) noexcept {
    MOED_ASSERT(inflight_bytes_ >= bytes);
    inflight_bytes_ -= bytes;
}

}  // namespace moed::storage
