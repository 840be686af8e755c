#include "common/status.h"

namespace moed {

// Written by hand rather than with the NLOHMANN macros: the optional tier block must be
// left out when absent and read only when present.
#define MOED_STATUS_FIELDS(X)                                                                      \
    X(version) X(uptime_s) X(model) X(threads) X(isa) X(queue_waiting) X(queue_capacity)          \
    X(running_sequences) X(max_sequences) X(max_batch_tokens) X(steps_total) X(requests_total)    \
    X(requests_failed) X(requests_cancelled) X(prompt_tokens_total) X(generated_tokens_total)     \
    X(decode_tokens_per_s) X(memory) X(timing) X(requests)

void to_json(nlohmann::json& j, const server_status& s) {
    j = nlohmann::json::object();
#define MOED_TO(field) j[#field] = s.field;
    MOED_STATUS_FIELDS(MOED_TO)
#undef MOED_TO
    if (s.tiers) j["tiers"] = *s.tiers;
}

void from_json(const nlohmann::json& j, server_status& s) {
    const server_status defaults;
#define MOED_FROM(field) s.field = j.value(#field, defaults.field);
    MOED_STATUS_FIELDS(MOED_FROM)
#undef MOED_FROM
    s.tiers.reset();
    if (auto it = j.find("tiers"); it != j.end() && it->is_object()) s.tiers = it->get<expert_cache_stats>();
}

#undef MOED_STATUS_FIELDS

}  // namespace moed
