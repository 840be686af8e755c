// The seam, bytes and control: every acquire names a device, and a handle says which device
// and kind of memory its bytes are in; a source that cannot place an expert on the device
// asked for answers unsupported, naming the expert and the device. The tiers are made by
// create_tiered_source and steered only through control() (the resident source has none);
// the layer clock, prefetch and statistics all go through that interface.
#include <gtest/gtest.h>

#include "storage/tiers.h"
#include "tests/storage/tiered_test_util.h"

namespace moed::storage {
namespace {

using namespace tiered_test;

std::unique_ptr<expert_source> tiers_of(const model_fixture& m, std::uint32_t slots) {
    tiered_options o;
    o.host_budget_bytes = tiered_slot_bytes(m.layout, 4096) * slots;
    o.lock = memory_lock::off;
    auto made = create_tiered_source(m.path, m.layout, o);
    EXPECT_TRUE(made) << made.error().message;
    return made ? std::move(made).value() : nullptr;
}

void expect_unsupported(const result<expert_handle>& r, const std::string& device) {
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, errc::unsupported);
    EXPECT_NE(r.error().message.find(device), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("1/2"), std::string::npos) << r.error().message;
}

TEST(seam, resident_experts_are_host_memory_and_have_no_control) {
    model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto h = m.resident->acquire(ExpertId{1, 2}, device_id::host());
    ASSERT_TRUE(h) << h.error().message;
    EXPECT_EQ(h->device(), device_id::host());
    EXPECT_EQ(h->memory(), memory_kind::host_pageable);
    EXPECT_EQ(m.resident->control(), nullptr);
    expect_unsupported(m.resident->acquire(ExpertId{1, 2}, device_id::cuda(0)), "cuda:0");
    expect_unsupported(m.resident->acquire(ExpertId{1, 2}, device_id::sim(1)), "sim:1");
}

TEST(seam, tiered_experts_come_from_host_slots_and_refuse_other_devices) {
    model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    auto source = tiers_of(m, 4);
    ASSERT_TRUE(source);
    ASSERT_NE(source->control(), nullptr);
    {
        auto h = source->acquire(ExpertId{1, 2}, device_id::host());
        ASSERT_TRUE(h) << h.error().message;
        EXPECT_EQ(h->device(), device_id::host());
        // memory_lock::off: the slab is ordinary host memory.
        EXPECT_EQ(h->memory(), memory_kind::host_pageable);
        EXPECT_TRUE(same_as_resident(*h, *m.resident));
        // A moved handle keeps where its bytes are.
        expert_handle moved = std::move(*h);
        EXPECT_EQ(moved.device(), device_id::host());
        EXPECT_EQ(moved.memory(), memory_kind::host_pageable);
    }
    expect_unsupported(source->acquire(ExpertId{1, 2}, device_id::cuda(0)), "cuda:0");
    std::vector<expert_handle> handles;
    const std::vector<ExpertId> ids = {ExpertId{1, 2}, ExpertId{1, 3}};
    auto many = source->acquire_many(ids, device_id::sim(0), handles);
    ASSERT_FALSE(many);
    EXPECT_EQ(many.error().code, errc::unsupported);
    EXPECT_TRUE(handles.empty());
    auto each = source->acquire_each(ids, device_id::cuda(1), handles, [](std::size_t, const expert_handle&) {
        ADD_FAILURE() << "nothing may be applied for a device the tier cannot serve";
    });
    ASSERT_FALSE(each);
    EXPECT_EQ(each.error().code, errc::unsupported);
    // Nothing was read for the refused calls: one miss, from the host acquire.
    EXPECT_EQ(source->control()->stats().host.misses, 1u);
}

TEST(seam, the_control_interface_steers_the_tier) {
    model_fixture m = load_model("Q8_0", skewed_shape());
    auto source = tiers_of(m, 6);
    ASSERT_TRUE(source);
    tier_control& tiers = *source->control();
    EXPECT_EQ(tiers.slot_count(), 6u);
    EXPECT_EQ(source->max_held_experts(), 6u);

    tiers.begin_layer(0, 3);
    const std::vector<prefetch_request> wanted = {{ExpertId{1, 4}, prefetch_class::near, 0.9f},
                                                  {ExpertId{2, 5}, prefetch_class::far, 0.8f}};
    tiers.prefetch(wanted);
    tiers.end_layer(0);
    ASSERT_TRUE(eventually([&] { return tiers.stats().host.resident_experts == 2; }));
    expert_cache_stats st = tiers.stats();
    EXPECT_EQ(st.prefetch.tokens, 3u);
    EXPECT_EQ(st.prefetch.layers_computed, 1u);
    EXPECT_EQ(st.prefetch.requested, 2u);
    EXPECT_EQ(st.layer_residency[1][4], '#');
    EXPECT_EQ(st.layer_residency[2][5], '#');

    // An end without its begin times nothing; a begin of the next layer then its end does.
    tiers.end_layer(2);
    EXPECT_EQ(tiers.stats().prefetch.layers_computed, 1u);
    tiers.begin_layer(1, 3);
    tiers.end_layer(1);
    EXPECT_EQ(tiers.stats().prefetch.layers_computed, 2u);
    EXPECT_EQ(tiers.stats().prefetch.tokens, 3u);  // tokens count at layer 0 only

    // The hot set and scores go through the interface too.
    const std::vector<ExpertId> hot = {ExpertId{0, 1}};
    EXPECT_EQ(tiers.set_hot_set(hot), 1u);
    ASSERT_TRUE(eventually([&] { return tiers.stats().ring.hot_resident == 1; }));
    tiers.set_expert_scores(std::vector<float>(3 * 8, 0.5f));
    tiers.cancel_prefetches_before(3);
    tiers.cancel_prefetches();
    EXPECT_FALSE(tiers.file_health().broken);
}

TEST(seam, the_schedulers_share_of_the_link_bounds_prefetches_in_flight) {
    model_fixture m = load_model("Q8_0", skewed_shape());
    auto source = tiers_of(m, 8);
    ASSERT_TRUE(source);
    tier_control& tiers = *source->control();
    // At most 1 byte: one prefetch at a time (one load always may start on an idle link).
    tiers.set_prefetch_inflight_limit(1);
    std::vector<prefetch_request> wanted;
    for (std::uint32_t e = 0; e < 6; ++e) wanted.push_back({ExpertId{1, e}, prefetch_class::near, 0.9f});
    tiers.begin_layer(0, 1);
    tiers.prefetch(wanted);
    ASSERT_TRUE(eventually([&] { return tiers.stats().host.resident_experts == 6; }));
    const expert_cache_stats st = tiers.stats();
    EXPECT_EQ(st.prefetch.inflight_bytes_max, m.layout.expert_bytes(1));
    // The link's figures: what was read, how long a load took, the layer clock.
    const link_figures f = tiers.link();
    EXPECT_GT(f.bytes_per_s, 0.0);
    EXPECT_GT(f.load_latency_us, 0.0);
    EXPECT_EQ(f.prefetch_loads, 6u);
    EXPECT_EQ(f.demand_loads, 0u);
    EXPECT_DOUBLE_EQ(f.expert_bytes, static_cast<double>(m.layout.expert_bytes(0)));
}

}  // namespace
}  // namespace moed::storage
