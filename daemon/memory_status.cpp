#include "daemon/memory_status.h"

#include "common/log.h"
#include "common/process_memory.h"
#include "engine/kv_cache.h"
#include "engine/memory_budget.h"

namespace moed::daemon {

void fill_memory_status(server_status& status, const engine::model& model, std::uint64_t physical_bytes) {
    memory_stats& m = status.memory;
    const engine::host_budget_plan& budget = model.host_budget();
    m.host_budget = budget.configured;
    m.host_budget_bytes = budget.bytes;
    m.host_budget_capped = budget.capped;
    // The owned copy is every tensor when experts are resident, the dense ones when tiered.
    const std::uint64_t copy = model.weights_image().size();
    const bool tiered = model.tiers() != nullptr;
    m.experts_bytes = tiered ? 0 : model.expert_bytes();
    m.dense_bytes = copy - m.experts_bytes;
    if (status.tiers) {
        m.host_slab_bytes = status.tiers->host.capacity_bytes;
        m.host_slab_slots = status.tiers->host.capacity_experts;
    } else {
        m.host_slab_bytes = 0;
        m.host_slab_slots = 0;
    }
    m.held_bytes = m.dense_bytes + m.experts_bytes + m.host_slab_bytes + m.kv_cache_bytes + m.scratch_bytes;
    m.physical_bytes = physical_bytes;
    if (auto proc = read_process_memory()) {
        m.rss_bytes = proc->rss_bytes;
        m.rss_peak_bytes = proc->rss_peak_bytes;
        m.locked_bytes = proc->locked_bytes;
    } else {
        MOED_LOG_DEBUG("memory", "process memory unavailable: {}", proc.error().message);
    }
    m.host_slab_mlocked = m.host_slab_bytes > 0 && m.locked_bytes >= m.host_slab_bytes;
}

result<void> check_memory_fits(const engine::model& model, std::uint32_t max_sequences, std::int64_t n_ctx,
                               std::uint64_t physical_bytes) {
    const engine::model_hparams& hp = model.hparams();
    const std::uint64_t kv = static_cast<std::uint64_t>(max_sequences) *
                             engine::kv_cache::bytes_for(engine::kv_shape_of(hp), n_ctx);
    const bool tiered = model.tiers() != nullptr;
    const std::string budget_what = fmt::format("host budget ({})", engine::host_budget_key);
    const engine::memory_claim claims[] = {
        {tiered ? "dense weights" : "weights (every expert resident)", model.weights_image().size()},
        {budget_what, model.host_budget().bytes},
        {"KV caches (engine.max_sequences x engine.ctx)", kv},
    };
    return engine::check_fits_physical(claims, physical_bytes);
}

}  // namespace moed::daemon
