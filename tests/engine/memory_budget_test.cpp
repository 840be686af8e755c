// Checks the memory budget at load: a host budget above what holds every expert is capped
// to that (one log line with both figures, and the tier then has a slot for every expert);
// a budget, or the weights' copy plus the budget, above physical memory (injected, so the
// test does not depend on the machine) is an out_of_memory error naming the key, the asked
// bytes and the physical bytes, returned before the weights are copied (the process's peak
// RSS, reset through /proc/self/clear_refs, does not grow by the copy); the claim checker
// names every part and does not wrap around on huge figures.
#include <fcntl.h>
#include <unistd.h>

#include <limits>
#include <string>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/process_memory.h"
#include "engine/memory_budget.h"
#include "engine/model.h"
#include "tests/support/test_paths.h"

namespace moed::engine {
namespace {

std::string bundled() { return test::models_dir() + "/tinymoe-qwen3moe-Q4_K_M.gguf"; }

load_options tiered(budget_spec budget) {
    load_options o;
    o.host_budget = budget;
    o.tier.lock = storage::memory_lock::off;
    o.tier.file_check_interval = std::chrono::milliseconds(0);
    return o;
}

budget_spec share(double fraction) { return budget_spec{0, fraction, true}; }

// What the tier needs to hold every expert of the loaded model: each layer's experts in
// slots of that layer's size.
std::uint64_t every_expert_bytes(const model& m) {
    return storage::tiered_every_expert_bytes(m.experts_layout(), host_slot_alignment);
}

TEST(memory_budget, a_budget_above_every_expert_is_capped_with_one_log_line) {
    testing::internal::CaptureStderr();
    // "200%" does not parse (a share is at most 100%), but a size does: twice the file.
    auto m = model::load(bundled(), tiered(budget_spec{2 * 13'532'864ull, 0.0, false}));
    const std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(m) << m.error().message;
    const model& mm = **m;
    const std::uint64_t cap = every_expert_bytes(mm);
    EXPECT_GE(cap, mm.expert_bytes());
    EXPECT_TRUE(mm.host_budget().capped);
    EXPECT_EQ(mm.host_budget().asked_bytes, 2 * 13'532'864ull);
    EXPECT_EQ(mm.host_budget().bytes, cap);
    EXPECT_EQ(mm.host_budget().configured, "25.81 MiB");
    ASSERT_NE(mm.tiers(), nullptr);
    EXPECT_EQ(mm.tiers()->slot_count(), mm.hparams().n_layer * mm.hparams().n_expert) << "every expert has a slot";
    const std::string line = fmt::format("tiers.host_budget 25.81 MiB ({} bytes) is more than the experts need: "
                                         "capped to {} ({} bytes)",
                                         2 * 13'532'864ull, format_bytes(cap), cap);
    EXPECT_NE(log.find(line), std::string::npos) << log;
    EXPECT_EQ(log.find("capped to", log.find("capped to") + 1), std::string::npos) << "one line:\n" << log;
}

TEST(memory_budget, a_share_within_the_experts_is_not_capped) {
    testing::internal::CaptureStderr();
    auto m = model::load(bundled(), tiered(share(0.25)));
    const std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(m) << m.error().message;
    const host_budget_plan& plan = (*m)->host_budget();
    EXPECT_FALSE(plan.capped);
    EXPECT_EQ(plan.configured, "25%");
    EXPECT_EQ(plan.bytes, static_cast<std::uint64_t>(static_cast<double>((*m)->expert_bytes()) * 0.25));
    EXPECT_EQ(log.find("capped"), std::string::npos) << log;
    // Resident: no budget at all.
    auto r = model::load(bundled());
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ((*r)->host_budget().configured, "");
    EXPECT_EQ((*r)->host_budget().bytes, 0u);
}

TEST(memory_budget, a_budget_above_physical_memory_fails_before_the_copy) {
    // The peak RSS is reset to the current RSS, so a copy of the weights during the failed
    // load would show as a peak about the copy's size above where it started.
    const bool peak_reset = [] {
        const int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
        if (fd < 0) return false;
        const bool ok = ::write(fd, "5", 1) == 1;
        ::close(fd);
        return ok;
    }();
    const auto before = read_process_memory();
    ASSERT_TRUE(before) << before.error().message;

    load_options o = tiered(budget_spec{100ull << 40, 0.0, false});  // 100 TiB
    o.physical_memory_bytes = 64ull << 30;
    auto m = model::load(bundled(), o);
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error().code, errc::out_of_memory);
    const std::string& msg = m.error().message;
    for (const std::string& want : {std::string("tiers.host_budget"), std::string("100.00 TiB"),
                                    fmt::format("{} bytes", 100ull << 40), std::string("64.00 GiB"),
                                    fmt::format("{} bytes", 64ull << 30)}) {
        EXPECT_NE(msg.find(want), std::string::npos) << "'" << want << "' not in: " << msg;
    }

    // Resident, on a machine smaller than the whole tensor data: the same, before the copy.
    load_options small;
    small.physical_memory_bytes = 4u << 20;
    auto r = model::load(bundled(), small);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::out_of_memory);
    EXPECT_NE(r.error().message.find("every expert resident"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("4.00 MiB (4194304 bytes)"), std::string::npos) << r.error().message;

    const auto after = read_process_memory();
    ASSERT_TRUE(after) << after.error().message;
    if (!peak_reset) GTEST_SKIP() << "/proc/self/clear_refs cannot reset the peak RSS here";
    // The resident copy would be the whole tensor data (about 13 MB).
    EXPECT_LT(after->rss_peak_bytes, before->rss_bytes + (6u << 20))
        << "peak RSS grew from " << before->rss_bytes << " to " << after->rss_peak_bytes;
}

TEST(memory_budget, a_share_above_physical_memory_says_what_it_is_a_share_of) {
    auto err = check_load_fits(budget_spec{0, 0.5, true}, 40ull << 30, 48ull << 30, 1u << 30, 16ull << 30);
    ASSERT_FALSE(err);
    EXPECT_EQ(err.error().message,
              fmt::format("tiers.host_budget 50% of the expert bytes, 20.00 GiB ({} bytes), is more than this "
                          "machine's physical memory 16.00 GiB ({} bytes)",
                          20ull << 30, 16ull << 30));
}

TEST(memory_budget, weights_and_budget_together_must_fit) {
    // Each fits alone; the dense copy and the budget together do not.
    const std::uint64_t dense = 3u << 20, experts = 10u << 20, every = 12u << 20;
    EXPECT_TRUE(check_load_fits(budget_spec{8u << 20, 0.0, false}, experts, every, dense, 12u << 20));
    auto both = check_load_fits(budget_spec{10u << 20, 0.0, false}, experts, every, dense, 12u << 20);
    ASSERT_FALSE(both);
    EXPECT_EQ(both.error().code, errc::out_of_memory);
    EXPECT_NE(both.error().message.find("dense weights 3.00 MiB + host budget (tiers.host_budget) 10.00 MiB"),
              std::string::npos)
        << both.error().message;
    // A budget above every expert counts as capped: 100% of 10 MiB asked, 12 MiB cap, 16 MiB machine.
    EXPECT_TRUE(check_load_fits(budget_spec{0, 1.0, true}, experts, every, dense, 16u << 20));
    EXPECT_TRUE(check_load_fits(budget_spec{15u << 20, 0.0, false}, experts, every, dense, 16u << 20))
        << "15 MiB asked, but only the 12 MiB cap will be allocated";
    // Physical memory unknown: nothing to check against.
    EXPECT_TRUE(check_load_fits(budget_spec{100ull << 40, 0.0, false}, experts, every, dense, 0));
}

TEST(memory_budget, claims_name_every_part_and_do_not_wrap) {
    const memory_claim fits[] = {{"a", 1}, {"b", 2}};
    EXPECT_TRUE(check_fits_physical(fits, 3));
    const memory_claim huge[] = {{"dense weights", std::numeric_limits<std::uint64_t>::max()},
                                 {"KV caches (engine.max_sequences x engine.ctx)", 2}};
    auto err = check_fits_physical(huge, 1u << 30);
    ASSERT_FALSE(err) << "a sum that wraps around must not pass";
    EXPECT_NE(err.error().message.find("KV caches (engine.max_sequences x engine.ctx) 2 B"), std::string::npos)
        << err.error().message;
    EXPECT_NE(err.error().message.find("1.00 GiB (1073741824 bytes)"), std::string::npos) << err.error().message;
}

TEST(memory_budget, describe_budget_as_configured) {
    EXPECT_EQ(describe_budget(budget_spec{0, 0.25, true}), "25%");
    EXPECT_EQ(describe_budget(budget_spec{0, 0.125, true}), "12.5%");
    EXPECT_EQ(describe_budget(budget_spec{4ull << 30, 0.0, false}), "4.00 GiB");
}

}  // namespace
}  // namespace moed::engine
