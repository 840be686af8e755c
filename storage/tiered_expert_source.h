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
// private. Callers together must not hold more than slot_count() experts: an acquire that
// finds every slot held waits for a release (and logs a warning every 10 s); one call asking
// for more distinct experts than there are slots is an error.
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

namespace moed::storage {

struct tiered_options {
    std::uint64_t host_budget_bytes = 0;  // must hold at least max_experts_per_acquire slots
    std::uint32_t queue_depth = 32;
    bool allow_uring = true;
    bool allow_direct = true;
    memory_lock lock = memory_lock::best_effort;
    int numa_node = -1;
    std::uint32_t eio_retries = 3;
    // The budget must hold at least this many slots. The engine acquires in groups of at
    // most max_held_experts() (= slot_count()), so 1 is enough for correctness.
    std::uint32_t min_slots = 1;
    // Bytes of expert reads in flight at once, demand and prefetch together (0: no bound).
    // It bounds how long a demand read can queue behind prefetches on the disk.
    std::uint64_t max_inflight_bytes = std::uint64_t{256} << 20;
    // A prefetch starts only while all reads in flight stay within this (0: max_inflight_bytes
    // alone), so on a disk that is the bottleneck prefetches use the time it would idle while
    // compute runs, and a demand read never queues behind more than this of them.
    std::uint64_t max_prefetch_inflight_bytes = 0;
    // Slots one layer's loads want at once, which sizes the ring's sections (0: a quarter of
    // the layer's experts, at least 1). The engine passes 2 x the experts used per token.
    std::uint32_t slots_per_layer = 0;
    // Prefetches for layers after the one being computed wait until that layer's own reads
    // were requested (its acquire), so on a disk that serves reads in order they queue behind
    // the reads compute needs first, at the cost of a later start.
    bool prefetch_after_demand = false;
    // The chance that an expert with no prediction is used again when its layer next runs
    // (the need it keeps, scaled down the further away that layer is); prefetches only
    // replace experts whose need is below their score.
    double reuse_prior = 0.3;
    // The most of the slots the hot set may take (set_hot_set()).
    double hot_fraction_max = 0.25;
    // false: one section (plain least-recently-used placement, no hot set), to compare with.
    bool ring = true;
    // The model file is checked this often by a thread of the source (0: no thread; a read
    // that finds the file changed still marks it broken, and check_file() checks on demand).
    std::chrono::milliseconds file_check_interval{1000};
    // Bytes at the start of the file (the GGUF header: metadata and tensor infos) that must be
    // unchanged for a changed file to count as the same model again; 0: not compared.
    std::uint64_t header_bytes = 0;
    // When set, wraps the block reader create() opens (a fault_reader for a fake slow disk in
    // benchmarks); not used for a reader passed to create().
    std::function<result<std::unique_ptr<block_reader>>(std::unique_ptr<block_reader>)> wrap_reader;
};

// The model file as the tier sees it. A file changed under the tier (size, inode or mtime
// differ from what was opened, or a read meets its end early) is broken: experts already in
// host slots keep serving, every acquire that needs a read from the file fails at once with
// `error`, and prefetches wait. The checker (check_file(), every file_check_interval) makes it
// healthy again once the file at the path holds the same model: the same size, the same
// header bytes, the same bytes at the start and end of every expert tensor as at open, and
// the same bytes as every expert resident in a slot. A file replaced by another inode is
// reopened (readers the source opened itself only).
struct tier_file_health {
    bool broken = false;
    std::string error;            // why, while broken
    std::uint64_t breaks = 0;     // times the file was found changed
    std::uint64_t recoveries = 0; // times it was found to be the same model again
};

class tiered_expert_source final : public expert_source {
public:
    // `path` is the model file `layout` was read from. `reader` may be supplied (tests
    // inject faults); otherwise open_block_reader() is used with `options`.
    static result<std::unique_ptr<tiered_expert_source>> create(const std::string& path, const expert_layout& layout,
                                                                const tiered_options& options,
                                                                std::unique_ptr<block_reader> reader = nullptr);
    ~tiered_expert_source() override;

    result<expert_handle> acquire(ExpertId id) override;
    result<void> acquire_many(std::span<const ExpertId> ids, std::vector<expert_handle>& handles) override;
    // Requests every missing expert at once, then applies the resident ones while the reads
    // of the others are in flight, waiting only when none is ready.
    result<void> acquire_each(std::span<const ExpertId> ids, std::vector<expert_handle>& handles,
                              const apply_fn& apply) override;
    // Queues `requests` and starts as many loads as the in-flight bound and the ring allow;
    // never waits. Requests for resident or loading experts only refresh their score. Every
    // layer named by a demand/near/far request has its older queued requests dropped
    // (superseded); warmup requests supersede nothing. Out-of-range ids are ignored (hints).
    void prefetch(std::span<const prefetch_request> requests);
    // The engine starts computing `layer` (of a batch of n_tokens tokens; counted per token
    // at layer 0): requests queued for the layers passed since the previous call (cyclically:
    // a new token wraps) are dropped, those layers' predictions lapse, and the experts
    // guarded for the previous layer stop being guarded.
    void begin_layer(std::uint32_t layer, std::uint64_t n_tokens = 0);
    // Drops queued requests for layers below `layer` and lets their predictions lapse.
    void cancel_prefetches_before(std::uint32_t layer);
    // Drops every queued request.
    void cancel_prefetches();
    // The pinned hot set: up to hot_fraction_max of the slots hold these experts (in the
    // order given, duplicates and out-of-range ids skipped) outside the ring; resident ones are
    // adopted in place, the rest load at warmup priority. An empty span clears it. Returns
    // how many experts the hot set took.
    std::uint32_t set_hot_set(std::span<const ExpertId> ids);
    // Profile/statistics bias for eviction: a need score per expert, [n_layer * n_expert]
    // (layer-major), higher keeps an expert longer; empty clears. A wrong size is ignored
    // with a warning.
    void set_expert_scores(std::span<const float> per_expert_score);

    expert_cache_stats stats() const;
    tier_file_health file_health() const;
    // Checks the model file now (what the checker thread does every file_check_interval):
    // marks it broken when it changed; when broken and unchanged since the previous check
    // (a copy in progress is not read), compares it with the model that was opened and, when
    // it is the same, makes the tier healthy again. Reads the file without the tier's lock.
    tier_file_health check_file();
    std::uint32_t slot_count() const noexcept;
    std::uint32_t max_held_experts() const noexcept override { return slot_count(); }
    // Bytes one host slot takes (the largest expert of any layer, each matrix aligned).
    std::uint64_t slot_bytes() const noexcept;

protected:
    void release(ExpertId id, std::uint64_t token) noexcept override;

private:
    struct impl;
    explicit tiered_expert_source(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

// The slot size the tiered source will use for `layout` at a given alignment; lets callers
// turn "25% of expert bytes" into a budget before creating it.
std::uint64_t tiered_slot_bytes(const expert_layout& layout, std::uint32_t alignment);

}  // namespace moed::storage
