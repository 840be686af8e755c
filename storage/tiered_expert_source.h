// The tiered expert source: routed experts live in the model file (the NVMe tier, always
// complete) and a working set lives in the host slab (the host tier, a byte budget).
// acquire_many() requests every missing expert of a layer at once (one batched submission),
// then waits only for those; prefetch() requests experts without waiting (the scheduler's
// hook). A slot table (storage/slot_table.h) keeps each slot's state (free, loading, ready,
// in use, failed); handles are reference counted, so a slot in use is never evicted.
//
// Placement: the slots form a ring of sections plus a pinned hot set (storage/section_ring.h
// says how the budget is divided and which slot a load takes). Layer l loads into section
// l mod R while the layer being computed uses another; a slot is reclaimed for a new expert
// by predicted need (the prefetch score of an expert still predicted for a coming layer;
// else the larger of the profile score set_expert_scores() gave it and reuse_prior scaled
// by how soon its layer comes round again), oldest use breaking ties. Experts still
// resident from an earlier token are hits wherever they sit.
//
// The prefetch pipeline: prefetch() takes scored requests in four classes, served in this
// order: demand (the layer being computed needs it), near (the next layer), far (layers
// further on), warmup (profile warm-up and the hot set); within a class, layers closer to
// the one being computed go first, then higher scores. A request for a layer supersedes every
// request still queued for that layer; begin_layer() and cancel_prefetches_before() drop the
// requests for layers already passed. Dropped requests never reach the disk (counted as
// cancelled); a read already submitted completes, and its expert, no longer predicted, is
// the first to be reclaimed (counted as wasted if it leaves unused). Reads in flight, demand
// and prefetch together, never exceed tiered_options::max_inflight_bytes (except one load
// when nothing else is in flight, so a bound below one expert still makes progress); demand
// loads are admitted before prefetches. A prefetch never evicts an expert that a handle holds
// or that was acquired or demanded for the layer being computed (begin_layer() names it, or
// the last acquire), and it only replaces experts of its own section whose need is below its
// score. acquire_each() lets compute start on the resident experts of a layer while the
// others are still read.
//
// Loads run on the block mover (storage/block_mover.h: the block reader; it resumes short
// reads and retries EINTR/EAGAIN and EIO a bounded number of times); a completion thread
// reaps it, then marks the slot ready or failed and wakes the waiters. No read and no submit
// happens under the tier's lock. A failed load fails the acquire with an error naming the
// expert and the file; the slot is freed and the next request tries again. stats() reports
// how contended the tier's lock is (tier_stats::lock).
// Threads: every public method may be called from any thread; the completion thread is
// private. Callers together must not hold more experts of a slot class than it has slots
// (slot_count() when all experts are alike): an acquire that finds every slot of its class
// held waits for a release (and logs a warning every 10 s); one call asking for more distinct
// experts of a class than it has slots is an error.
//
// Slot classes: when the layers' experts differ in size (a quantizer's type mix), the budget
// is cut into a run of slots per distinct slot size, in proportion to what each class's
// experts need (storage/slot_classes.h); an expert of layer l loads only into, and evicts only
// from, the slots of l's class, so no slot wastes the difference to the largest expert.
// Every handle must be released before the source is destroyed (checked by an assertion);
// destruction waits for reads still in flight (prefetches) before freeing the slab.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "storage/block_reader.h"
#include "storage/expert_source.h"
#include "storage/host_slab.h"
#include "storage/prefetch_request.h"
#include "storage/tier_stats.h"
#include "storage/tiers.h"

namespace moed::storage {

class tiered_expert_source final : public expert_source, public tier_control {
public:
    // `path` is the model file `layout` was read from. `reader` may be supplied (tests
    // inject faults); otherwise open_block_reader() is used with `options`.
    static result<std::unique_ptr<tiered_expert_source>> create(const std::string& path, const expert_layout& layout,
                                                                const tiered_options& options,
                                                                std::unique_ptr<block_reader> reader = nullptr);
    ~tiered_expert_source() override;

    // Experts are served from host slots: `device` must be the host.
    result<expert_handle> acquire(ExpertId id, device_id device) override;
    result<void> acquire_many(std::span<const ExpertId> ids, device_id device,
                              std::vector<expert_handle>& handles) override;
    // Requests every missing expert at once, then applies the resident ones while the reads
    // of the others are in flight, waiting only when none is ready.
    result<void> acquire_each(std::span<const ExpertId> ids, device_id device, std::vector<expert_handle>& handles,
                              const apply_fn& apply) override;
    tier_control* control() noexcept override { return this; }
    const tier_control* control() const noexcept override { return this; }
    // The control interface (storage/tier_control.h says what each does); here the hot set
    // takes at most hot_fraction_max of the slots, outside the ring: resident hot experts are
    // adopted in place, the rest load at warmup priority.
    void begin_layer(std::uint32_t layer, std::uint64_t n_tokens) override;
    void end_layer(std::uint32_t layer) override;
    void prefetch(std::span<const prefetch_request> requests) override;
    void cancel_prefetches_before(std::uint32_t layer) override;
    void cancel_prefetches() override;
    std::uint32_t set_hot_set(std::span<const ExpertId> ids) override;
    void set_expert_scores(std::span<const float> per_expert_score) override;
    void set_prefetch_inflight_limit(std::uint64_t bytes) override;
    link_figures link() const override;
    std::uint32_t slot_count() const noexcept override;
    expert_cache_stats stats() const override;
    tier_file_health file_health() const override;

    // Checks the model file now (what the checker thread does every file_check_interval):
    // marks it broken when it changed; when broken and unchanged since the previous check
    // (a copy in progress is not read), compares it with the model that was opened and, when
    // it is the same, makes the tier healthy again. Reads the file without the tier's lock.
    tier_file_health check_file();
    // The fewest slots of any slot class: a caller acquires one layer's experts, and those
    // take slots of their layer's class only.
    std::uint32_t max_held_experts() const noexcept override;
    // Bytes the largest host slot takes (the largest expert of any layer, each matrix
    // aligned); every slot's size when the layers' experts are alike.
    std::uint64_t slot_bytes() const noexcept;
    // How the budget was cut into slots: a class per distinct slot size (storage/
    // slot_classes.h).
    const slot_classes& classes() const noexcept;

protected:
    void release(ExpertId id, std::uint64_t token) noexcept override;

private:
    struct impl;
    explicit tiered_expert_source(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

}  // namespace moed::storage
