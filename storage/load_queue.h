// The load queue of one tier: prefetch requests waiting for a slot and for room in flight,
// in priority order; demand loads waiting for room in flight, first in first out; and the
// bytes in flight with their bounds. It decides the order loads start in, never where they
// go (section_ring) nor how they move (the mover).
//
// Requests: one entry per expert at most (a second request for a queued expert merges into
// it, keeping the better class and the higher score). They are served in this order: class
// (demand, near, far, warmup); then layers in the order the engine reaches them from the one
// it computes (a request for a layer just passed waits for the next token); then the higher
// score; then the lower expert number. Stale requests are dropped and never read: a batch
// of requests supersedes the older demand, near and far requests of every layer it predicts
// that it does not repeat (supersede()); the layers the engine passed drop theirs
// (drop_passed(), drop_before()). Warmup requests go only when dropped by name
// (drop_all(), drop_warmup_not_in()). Every drop returns how many requests it dropped.
//
// Bytes in flight: loads admitted and not yet ended. A demand load fits while the total
// stays within max_inflight_bytes (0: no bound); a prefetch must also stay within
// max_prefetch_inflight_bytes (0: no bound of its own). Either fits when nothing is in
// flight, so a bound below one expert still makes progress.
//
// Everything is sized at reset(); no other call allocates.
// Threads: none of its own and no lock inside; the owning tier calls it under its lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/assert.h"
#include "storage/prefetch_request.h"

namespace moed::storage {

class load_queue {
public:
    struct limits {
        std::uint64_t max_inflight_bytes = 0;           // demand and prefetch together (0: none)
        std::uint64_t max_prefetch_inflight_bytes = 0;  // a prefetch starts only within this (0: none)
    };

    // An empty queue for n_layer x n_expert experts and a tier of n_slots slots.
    void reset(std::uint32_t n_layer, std::uint32_t n_expert, std::uint32_t n_slots, limits bounds);

    // --- prefetch requests ---
    bool empty() const noexcept { return queue_.empty(); }
    std::size_t size() const noexcept { return queue_.size(); }
    // Queues `r`, or merges it into the request queued for the same expert. Out-of-range
    // ids are a programmer error (the tier filters them).
    void push(const prefetch_request& r);
    // Drops the queued demand, near and far requests of every layer that a demand, near or
    // far request of `requests` names, unless `requests` repeats them. Out-of-range ids are
    // ignored. touched_layers() then lists the layers `requests` predicts.
    std::size_t supersede(std::span<const prefetch_request> requests);
    // Drops the demand, near and far requests of layers [from, to), cyclically (the layers
    // the engine passed, a new token wrapping round); touched_layers() then lists them.
    std::size_t drop_passed(std::uint32_t from, std::uint32_t to);
    // Drops the demand, near and far requests of layers below `layer` (clamped to n_layer);
    // touched_layers() then lists those layers.
    std::size_t drop_before(std::uint32_t layer);
    std::size_t drop_all();
    // Drops the warmup requests of experts whose keep[layer * n_expert + expert] is 0.
    std::size_t drop_warmup_not_in(std::span<const std::uint8_t> keep);
    // The layers named by the last supersede(), drop_passed() or drop_before(), ascending.
    std::span<const std::uint32_t> touched_layers() const noexcept { return touched_; }
    // The order depends on the layer being computed: call when the engine moves to another
    // layer, so the next serve() sorts again.
    void invalidate_order() noexcept { sorted_ = false; }
    // Visits the requests in priority order (sorting first for `current_layer` when the
    // order is stale); `visit(const queued_request&)` returns true when the request is done
    // (started, or no longer needed), which removes it. `visit` may push(): a new request is
    // visited in the same pass.
    struct queued_request {
        ExpertId id;
        prefetch_class cls = prefetch_class::near;
        float score = 0.0f;
    };
    template <typename Visit>
    void serve(std::uint32_t current_layer, Visit&& visit);

    // --- demand loads waiting for room in flight ---
    void defer(std::uint32_t slot);
    bool has_deferred() const noexcept { return deferred_count_ > 0; }
    std::uint32_t next_deferred() const noexcept;
    void pop_deferred() noexcept;

    // --- bytes in flight ---
    bool fits(std::uint64_t bytes) const noexcept;
    bool fits_prefetch(std::uint64_t bytes) const noexcept;
    // The scheduler's share of the link for prefetches (0: none of its own); the tighter of it
    // and max_prefetch_inflight_bytes applies. Returns whether it was raised (or cleared).
    bool set_scheduler_prefetch_limit(std::uint64_t bytes) noexcept {
        const bool raised = scheduler_prefetch_limit_ != 0 && (bytes == 0 || bytes > scheduler_prefetch_limit_);
        scheduler_prefetch_limit_ = bytes;
        return raised;
    }
    void add_inflight(std::uint64_t bytes) noexcept;
    void remove_inflight(std::uint64_t bytes) noexcept;
    std::uint64_t inflight_bytes() const noexcept { return inflight_bytes_; }
    std::uint64_t inflight_bytes_max() const noexcept { return inflight_bytes_max_; }
    const limits& bounds() const noexcept { return limits_; }

private:
    // The id of a queue entry that the compaction in serve() left behind.
    static constexpr ExpertId vacant{0xffffffffu, 0xffffffffu};
    std::size_t index(ExpertId id) const noexcept { return static_cast<std::size_t>(id.layer) * n_expert_ + id.expert; }
    bool in_range(ExpertId id) const noexcept { return id.layer < n_layer_ && id.expert < n_expert_; }
    void sort(std::uint32_t current_layer) noexcept;
    template <typename Pred>
    std::size_t drop_if(Pred drop) noexcept;
    // touched_ = the layers marked in layer_mark_, ascending; clears the marks.
    void collect_marked_layers() noexcept;

    std::uint32_t n_layer_ = 0;
    std::uint32_t n_expert_ = 0;
    limits limits_;
    std::vector<queued_request> queue_;    // capacity n_layer * n_expert, reserved once
    std::vector<std::uint8_t> queued_;     // per expert: has an entry in queue_
    std::vector<std::uint8_t> mark_;       // per expert: scratch of supersede()
    std::vector<std::uint8_t> layer_mark_; // per layer: scratch of supersede() and the drops
    std::vector<std::uint32_t> touched_;   // capacity n_layer
    bool sorted_ = true;
    // The deferred demand loads: a ring of n_slots (a slot is deferred at most once).
    std::vector<std::uint32_t> deferred_;
    std::size_t deferred_head_ = 0;
    std::size_t deferred_count_ = 0;
    std::uint64_t inflight_bytes_ = 0;
    std::uint64_t scheduler_prefetch_limit_ = 0;
    std::uint64_t inflight_bytes_max_ = 0;
};

template <typename Visit>
void load_queue::serve(std::uint32_t current_layer, Visit&& visit) {
    if (!sorted_) sort(current_layer);
    std::size_t keep = 0;
    // Indexes, not iterators: visit() may push() (capacity is reserved, so nothing moves; a
    // new entry lands at the end and is visited in this pass). An entry left behind by the
    // compaction is marked vacant, so a merge never lands on a stale copy.
    for (std::size_t k = 0; k < queue_.size(); ++k) {
        const queued_request q = queue_[k];
        if (visit(q)) {
            queued_[index(q.id)] = 0;
            queue_[k].id = vacant;
        } else {
            if (keep != k) {
                queue_[keep] = queue_[k];
                queue_[k].id = vacant;
            }
            ++keep;
        }
    }
    queue_.resize(keep);
}

}  // namespace moed::storage
