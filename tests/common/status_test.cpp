// Checks the status wire type: a full status survives a JSON round trip (the memory block
// too, field by field), the tier block is omitted when absent, and a peer's JSON with missing
// or extra fields still parses (fields keep their defaults).
#include <gtest/gtest.h>

#include "common/status.h"

namespace moed {
namespace {

TEST(status, round_trip_with_tiers) {
    server_status s;
    s.version = "0.1.0";
    s.uptime_s = 12.5;
    s.model.id = "tinymoe";
    s.model.n_layer = 6;
    s.queue_waiting = 2;
    s.requests.push_back({"req-1", "decode", 10, 3, 32, "pid=1 uid=0 gid=0"});
    expert_cache_stats t;
    t.io_mode = "uring_direct";
    t.host.name = "host";
    t.host.hits = 7;
    t.host.load_latency.p99_us = 123.0;
    t.host.lock = lock_stats{1000, 12, 34567, 8900, 123456};
    t.layer_residency = {"#..+", "~#.."};
    s.tiers = t;
    const nlohmann::json j = s;
    const auto back = j.get<server_status>();
    EXPECT_EQ(back.version, "0.1.0");
    EXPECT_EQ(back.model.n_layer, 6u);
    ASSERT_EQ(back.requests.size(), 1u);
    EXPECT_EQ(back.requests[0].state, "decode");
    ASSERT_TRUE(back.tiers);
    EXPECT_EQ(back.tiers->host.hits, 7u);
    EXPECT_EQ(back.tiers->layer_residency[1], "~#..");
    EXPECT_DOUBLE_EQ(back.tiers->host.load_latency.p99_us, 123.0);
    const lock_stats& lk = back.tiers->host.lock;
    EXPECT_EQ(lk.acquisitions, 1000u);
    EXPECT_EQ(lk.contended, 12u);
    EXPECT_EQ(lk.wait_ns, 34567u);
    EXPECT_EQ(lk.wait_ns_max, 8900u);
    EXPECT_EQ(lk.hold_ns, 123456u);
    EXPECT_EQ(j["tiers"]["host"]["lock"]["contended"], 12);
}

TEST(status, absent_tiers_are_omitted_and_missing_fields_default) {
    server_status s;
    s.version = "x";
    const nlohmann::json j = s;
    EXPECT_FALSE(j.contains("tiers"));
    const auto partial = nlohmann::json::parse(R"({"version":"y","unknown_field":1,"model":{"id":"m"}})");
    const auto back = partial.get<server_status>();
    EXPECT_EQ(back.version, "y");
    EXPECT_EQ(back.model.id, "m");
    EXPECT_EQ(back.threads, 0u);
    EXPECT_FALSE(back.tiers);
}

TEST(status, memory_round_trips_and_an_older_peer_leaves_it_zero) {
    server_status s;
    memory_stats& m = s.memory;
    m.host_budget = "25%";
    m.host_budget_bytes = 3'000'000;
    m.host_budget_capped = true;
    m.dense_bytes = 1'000'001;
    m.experts_bytes = 7;
    m.host_slab_bytes = 2'998'272;
    m.host_slab_slots = 61;
    m.host_slab_mlocked = true;
    m.kv_cache_bytes = 8u << 20;
    m.kv_cache_used_bytes = 4096;
    m.scratch_bytes = 123'456;
    m.held_bytes = 99;
    m.locked_bytes = 3u << 20;
    m.rss_bytes = 40u << 20;
    m.rss_peak_bytes = 41u << 20;
    m.physical_bytes = 64ull << 30;
    const nlohmann::json j = s;
    ASSERT_TRUE(j.contains("memory")) << j.dump();
    EXPECT_EQ(j["memory"]["host_slab_mlocked"], true);
    const memory_stats back = j.get<server_status>().memory;
    EXPECT_EQ(back.host_budget, "25%");
    EXPECT_EQ(back.host_budget_bytes, 3'000'000u);
    EXPECT_TRUE(back.host_budget_capped);
    EXPECT_EQ(back.dense_bytes, 1'000'001u);
    EXPECT_EQ(back.experts_bytes, 7u);
    EXPECT_EQ(back.host_slab_bytes, 2'998'272u);
    EXPECT_EQ(back.host_slab_slots, 61u);
    EXPECT_TRUE(back.host_slab_mlocked);
    EXPECT_EQ(back.kv_cache_bytes, 8u << 20);
    EXPECT_EQ(back.kv_cache_used_bytes, 4096u);
    EXPECT_EQ(back.scratch_bytes, 123'456u);
    EXPECT_EQ(back.held_bytes, 99u);
    EXPECT_EQ(back.locked_bytes, 3u << 20);
    EXPECT_EQ(back.rss_bytes, 40u << 20);
    EXPECT_EQ(back.rss_peak_bytes, 41u << 20);
    EXPECT_EQ(back.physical_bytes, 64ull << 30);

    // A moed from before the memory block: every figure stays zero, nothing throws.
    const auto older = nlohmann::json::parse(R"({"version":"y","memory":{"rss_bytes":5}})").get<server_status>();
    EXPECT_EQ(older.memory.rss_bytes, 5u);
    EXPECT_EQ(older.memory.dense_bytes, 0u);
    EXPECT_FALSE(older.memory.host_slab_mlocked);
    EXPECT_EQ(nlohmann::json::parse(R"({"version":"y"})").get<server_status>().memory.held_bytes, 0u);
}

}  // namespace
}  // namespace moed
