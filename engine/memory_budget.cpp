#include "engine/memory_budget.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "common/log.h"

namespace moed::engine {

std::string describe_budget(const budget_spec& spec) {
    if (spec.relative) return fmt::format("{:g}%", spec.fraction * 100.0);
    return format_bytes(spec.bytes);
}

host_budget_plan cap_host_budget(const budget_spec& spec, std::uint64_t expert_bytes,
                                 std::uint64_t every_expert_bytes) {
    host_budget_plan plan;
    plan.configured = describe_budget(spec);
    plan.asked_bytes = spec.resolve(expert_bytes);
    plan.bytes = plan.asked_bytes;
    const std::uint64_t cap = std::max(every_expert_bytes, expert_bytes);
    if (plan.asked_bytes > cap) {
        plan.bytes = cap;
        plan.capped = true;
        MOED_LOG_INFO("memory",
                      "{} {} ({} bytes) is more than the experts need: capped to {} ({} bytes), which holds every "
                      "expert (expert bytes {}, {} bytes)",
                      host_budget_key, plan.configured, plan.asked_bytes, format_bytes(cap), cap,
                      format_bytes(expert_bytes), expert_bytes);
    }
    return plan;
}

result<void> check_fits_physical(std::span<const memory_claim> claims, std::uint64_t physical_bytes) {
    if (physical_bytes == 0) return {};
    std::uint64_t total = 0;
    std::string parts;
    for (const memory_claim& c : claims) {
        // Saturating: a sum that wraps would pass the check it should fail.
        constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
        total = c.bytes > max - total ? max : total + c.bytes;
        parts += fmt::format("{}{} {}", parts.empty() ? "" : " + ", c.what, format_bytes(c.bytes));
    }
    if (total <= physical_bytes) return {};
    return make_error(errc::out_of_memory,
                      "moed would hold {} ({} bytes: {}), more than this machine's physical memory {} ({} bytes)",
                      format_bytes(total), total, parts, format_bytes(physical_bytes), physical_bytes);
}

result<void> check_load_fits(const std::optional<budget_spec>& budget, std::uint64_t expert_bytes,
                             std::uint64_t every_expert_bytes, std::uint64_t owned_copy_bytes,
                             std::uint64_t physical_bytes) {
    if (physical_bytes == 0) return {};
    if (!budget) {
        const memory_claim claims[] = {{"weights (every expert resident; set tiers.host_budget to tier them)",
                                        owned_copy_bytes}};
        return check_fits_physical(claims, physical_bytes);
    }
    const std::uint64_t asked = budget->resolve(expert_bytes);
    if (asked > physical_bytes) {
        const std::string asked_text = fmt::format("{} ({} bytes)", format_bytes(asked), asked);
        const std::string what = budget->relative
                                     ? fmt::format("{} of the expert bytes, {},", describe_budget(*budget), asked_text)
                                     : asked_text;
        return make_error(errc::out_of_memory, "{} {} is more than this machine's physical memory {} ({} bytes)",
                          host_budget_key, what, format_bytes(physical_bytes), physical_bytes);
    }
    const std::string budget_what = fmt::format("host budget ({})", host_budget_key);
    const memory_claim claims[] = {
        {"dense weights", owned_copy_bytes},
        {budget_what, std::min(asked, std::max(every_expert_bytes, expert_bytes))},
    };
    return check_fits_physical(claims, physical_bytes);
}

}  // namespace moed::engine
