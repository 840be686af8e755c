// Checks the status wire type: a full status survives a JSON round trip, the tier block is
// omitted when absent, and a peer's JSON with missing or extra fields still parses (fields
// keep their defaults).
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

}  // namespace
}  // namespace moed
