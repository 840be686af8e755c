// Checks memory as /v1/status, /metrics and start-up report it, on the real `moed` binary with
// the bundled model: with a 25% host budget every field of "memory" is present and
// consistent (slab within the budget, dense weights and KV caches non-zero, RSS at least the
// dense copy, the peak at least the current RSS, held bytes the sum of the kinds, KV bytes
// in use while a request runs); the slab is reported mlocked when the lock is required (and
// the kernel really locks: not under a sanitizer) and not when it is off; resident experts show as their own kind with no slab; a size budget
// above what holds every expert is capped with one log line and gives every expert a slot;
// a 100 TiB budget makes moed exit non-zero at start with a message naming the key, the asked
// bytes and the physical memory, before the KV caches are made. The start-up KV check is
// exercised directly with an injected physical memory.
#include <sys/resource.h>

#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/process_memory.h"
#include "daemon/memory_status.h"
#include "engine/model.h"
#include "tests/daemon/moed_process.h"

namespace moed::test {
namespace {

constexpr const char* memory_fields[] = {
    "host_budget",   "host_budget_bytes", "host_budget_capped", "dense_bytes",    "experts_bytes",
    "host_slab_bytes", "host_slab_slots", "host_slab_mlocked",  "kv_cache_bytes", "kv_cache_used_bytes",
    "scratch_bytes", "held_bytes",        "locked_bytes",       "rss_bytes",      "rss_peak_bytes",
    "physical_bytes"};

std::uint64_t u64(const json& j, const char* key) { return j.at(key).get<std::uint64_t>(); }

// The sanitizers' mlock interceptor returns success without locking anything (the shadow
// memory would be locked too), so in those builds the kernel reports nothing locked, and
// status must say so rather than repeat what mlock returned.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool mlock_really_locks = false;
#else
constexpr bool mlock_really_locks = true;
#endif

// Whether mlock of `bytes` can succeed for this user (the limit, or unlimited).
bool can_lock(std::uint64_t bytes) {
    rlimit limit{};
    if (::getrlimit(RLIMIT_MEMLOCK, &limit) != 0) return false;
    return limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= bytes;
}

void expect_every_field(const json& st) {
    ASSERT_TRUE(st.contains("memory") && st["memory"].is_object()) << st.dump();
    for (const char* f : memory_fields) EXPECT_TRUE(st["memory"].contains(f)) << f << " missing: " << st["memory"].dump();
}

void expect_held_is_the_sum(const json& m) {
    EXPECT_EQ(u64(m, "held_bytes"), u64(m, "dense_bytes") + u64(m, "experts_bytes") + u64(m, "host_slab_bytes") +
                                        u64(m, "kv_cache_bytes") + u64(m, "scratch_bytes"))
        << m.dump();
}

TEST(moed_memory, tiered_status_reports_every_kind) {
    // The bundled model's experts are about 10 MB: a quarter fits any memlock limit of 8 MiB.
    const bool lock = can_lock(8u << 20);
    moed_process moed({"--tiers-host-budget", "25%", "--tiers-mlock", lock ? "required" : "off",
                       "--engine-max-sequences", "2"});
    ASSERT_TRUE(moed.ready());
    json st = moed.status();
    expect_every_field(st);
    const json m0 = st["memory"];
    EXPECT_EQ(m0["host_budget"], "25%");
    const std::uint64_t expert_bytes = st["model"]["expert_bytes"].get<std::uint64_t>();
    EXPECT_EQ(u64(m0, "host_budget_bytes"), static_cast<std::uint64_t>(static_cast<double>(expert_bytes) * 0.25));
    EXPECT_FALSE(m0["host_budget_capped"].get<bool>());
    EXPECT_GT(u64(m0, "host_slab_bytes"), 0u);
    EXPECT_LE(u64(m0, "host_slab_bytes"), u64(m0, "host_budget_bytes"));
    EXPECT_EQ(u64(m0, "host_slab_bytes"), st["tiers"]["host"]["capacity_bytes"].get<std::uint64_t>());
    EXPECT_EQ(u64(m0, "host_slab_slots"), st["tiers"]["host"]["capacity_experts"].get<std::uint64_t>());
    EXPECT_GT(u64(m0, "dense_bytes"), 0u);
    EXPECT_LE(u64(m0, "dense_bytes"), st["model"]["dense_bytes"].get<std::uint64_t>() + (1u << 20))
        << "the dense copy is the dense tensors, each rounded up to 64 bytes";
    EXPECT_EQ(u64(m0, "experts_bytes"), 0u) << "tiered: no resident copy of the experts";
    EXPECT_GT(u64(m0, "kv_cache_bytes"), 0u);
    EXPECT_EQ(u64(m0, "kv_cache_used_bytes"), 0u) << "nothing running yet";
    EXPECT_GT(u64(m0, "scratch_bytes"), 0u);
    EXPECT_GE(u64(m0, "rss_bytes"), u64(m0, "dense_bytes"));
    EXPECT_GE(u64(m0, "rss_peak_bytes"), u64(m0, "rss_bytes"));
    EXPECT_GT(u64(m0, "physical_bytes"), u64(m0, "rss_bytes"));
    expect_held_is_the_sum(m0);
    const bool locked = lock && mlock_really_locks;
    EXPECT_EQ(m0["host_slab_mlocked"].get<bool>(), locked) << m0.dump();
    if (locked) EXPECT_GE(u64(m0, "locked_bytes"), u64(m0, "host_slab_bytes"));
    else EXPECT_EQ(u64(m0, "locked_bytes"), 0u);

    // A running request holds KV positions; once it is done they are free again.
    http_connection c(moed.socket());
    start_stream(c, completion_body("The", 220, true, R"("ignore_eos":true)"));
    EXPECT_TRUE(moed.wait_status([](const json& s) { return s["memory"]["kv_cache_used_bytes"].get<std::uint64_t>() > 0; }))
        << moed.status().dump();
    c.close();
    for (const char* prompt : {"def f(x):", "The river", "for f in *.txt; do"}) {
        auto r = post(moed.socket(), "/v1/completions", completion_body(prompt, 16, false));
        ASSERT_EQ(r.status, 200u) << r.body;
    }
    EXPECT_TRUE(moed.wait_status([](const json& s) { return s["running_sequences"] == 0; }));
    const json m1 = moed.status()["memory"];
    EXPECT_EQ(u64(m1, "kv_cache_used_bytes"), 0u) << m1.dump();
    EXPECT_EQ(u64(m1, "kv_cache_bytes"), u64(m0, "kv_cache_bytes")) << "allocated once at start-up";
    EXPECT_GE(u64(m1, "rss_peak_bytes"), u64(m0, "rss_peak_bytes"));
    expect_held_is_the_sum(m1);

    const auto metrics = get(moed.socket(), "/metrics");
    ASSERT_EQ(metrics.status, 200u);
    for (const std::string& want :
         {fmt::format("moed_memory_bytes{{kind=\"host_slab\"}} {}\n", u64(m1, "host_slab_bytes")),
          fmt::format("moed_memory_bytes{{kind=\"kv_cache\"}} {}\n", u64(m1, "kv_cache_bytes")),
          std::string("moed_memory_bytes{kind=\"dense\"} "), std::string("moed_memory_bytes{kind=\"scratch\"} "),
          fmt::format("moed_memory_host_slab_locked {}\n", locked ? 1 : 0),
          fmt::format("moed_memory_host_budget_bytes {}\n", u64(m1, "host_budget_bytes")),
          std::string("moed_process_resident_memory_bytes "), std::string("moed_process_resident_memory_peak_bytes "),
          std::string("moed_machine_memory_bytes ")}) {
        EXPECT_NE(metrics.body.find(want), std::string::npos) << "'" << want << "' not in:\n" << metrics.body;
    }
}

TEST(moed_memory, resident_experts_are_their_own_kind_and_no_slab) {
    moed_process moed({"--engine-max-sequences", "1"});
    ASSERT_TRUE(moed.ready());
    const json st = moed.status();
    expect_every_field(st);
    const json& m = st["memory"];
    EXPECT_EQ(m["host_budget"], "");
    EXPECT_EQ(u64(m, "host_budget_bytes"), 0u);
    EXPECT_EQ(u64(m, "host_slab_bytes"), 0u);
    EXPECT_FALSE(m["host_slab_mlocked"].get<bool>());
    EXPECT_EQ(u64(m, "experts_bytes"), st["model"]["expert_bytes"].get<std::uint64_t>());
    EXPECT_GT(u64(m, "dense_bytes"), 0u);
    EXPECT_GE(u64(m, "rss_bytes"), u64(m, "dense_bytes") + u64(m, "experts_bytes"))
        << "the resident copy is read in whole, so all of it is resident";
    expect_held_is_the_sum(m);
}

TEST(moed_memory, a_budget_above_every_expert_is_capped_and_holds_them_all) {
    moed_process moed({"--tiers-host-budget", "64MiB", "--tiers-mlock", "off", "--engine-max-sequences", "1"});
    ASSERT_TRUE(moed.ready());
    const json st = moed.status();
    const json& m = st["memory"];
    EXPECT_TRUE(m["host_budget_capped"].get<bool>()) << m.dump();
    EXPECT_EQ(m["host_budget"], "64.00 MiB");
    EXPECT_LT(u64(m, "host_budget_bytes"), 64u << 20);
    EXPECT_EQ(u64(m, "host_slab_slots"), st["model"]["n_layer"].get<std::uint64_t>() * st["model"]["n_expert"].get<std::uint64_t>())
        << "every expert has a slot";
    EXPECT_EQ(u64(m, "host_slab_bytes"), u64(m, "host_budget_bytes"));
    EXPECT_FALSE(m["host_slab_mlocked"].get<bool>()) << "tiers.mlock = off";
    EXPECT_EQ(u64(m, "locked_bytes"), 0u);
    const std::string log = moed.log();
    const std::string line = fmt::format("tiers.host_budget 64.00 MiB ({} bytes) is more than the experts need: capped to",
                                         64u << 20);
    EXPECT_NE(log.find(line), std::string::npos) << log;
    EXPECT_EQ(log.find("capped to", log.find(line) + line.size()), std::string::npos) << "one line:\n" << log;
}

TEST(moed_memory, a_budget_above_physical_memory_stops_the_start) {
    moed_process moed({"--tiers-host-budget", "100TiB"}, /*wait_ready=*/false);
    EXPECT_EQ(moed.wait_exit(), 1);
    const std::string log = moed.log();
    const std::string physical = format_bytes(physical_memory_bytes());
    const std::string want = fmt::format("tiers.host_budget 100.00 TiB ({} bytes) is more than this machine's "
                                         "physical memory {} ({} bytes)",
                                         100ull << 40, physical, physical_memory_bytes());
    EXPECT_NE(log.find(want), std::string::npos) << "'" << want << "' not in:\n" << log;
    EXPECT_EQ(log.find("KV caches"), std::string::npos) << "nothing after the model was made:\n" << log;
    EXPECT_EQ(log.find("serving"), std::string::npos) << log;
}

TEST(moed_memory, kv_caches_are_checked_with_the_weights_before_they_are_made) {
    auto m = engine::model::load(bundled_model());
    ASSERT_TRUE(m) << m.error().message;
    const engine::model_hparams& hp = (*m)->hparams();
    const std::uint64_t kv_one = 2ull * hp.n_layer * 4096 * hp.n_head_kv * hp.head_dim * 2;
    const std::uint64_t weights = (*m)->weights_image().size();
    EXPECT_TRUE(daemon::check_memory_fits(**m, 8, 4096, weights + 8 * kv_one));
    auto over = daemon::check_memory_fits(**m, 8, 4096, weights + 8 * kv_one - 1);
    ASSERT_FALSE(over);
    EXPECT_EQ(over.error().code, errc::out_of_memory);
    const std::string& msg = over.error().message;
    EXPECT_NE(msg.find(fmt::format("KV caches (engine.max_sequences x engine.ctx) {}", format_bytes(8 * kv_one))),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("weights (every expert resident)"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fmt::format("({} bytes)", weights + 8 * kv_one - 1)), std::string::npos) << msg;
    EXPECT_TRUE(daemon::check_memory_fits(**m, 8, 4096, 0)) << "physical memory unknown: passes";
}

}  // namespace
}  // namespace moed::test
