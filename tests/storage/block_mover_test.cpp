// block_mover: whole expert loads from the model file into slot memory, and how each ends.
//
// What it checks, and how: a small synthetic model whose matrices start off 4096-byte
// boundaries (tiered_test_util.h) is loaded slot by slot into plain aligned memory through a
// fault_reader over the real block reader, and every loaded expert's matrices (placed by
// slot_geometry, as the tier reads them) are compared with the resident source (the file
// mapped). Faults, one per test: short reads and small chunks (resumed until whole), EINTR
// and EAGAIN (retried, not counted), one EIO (retried and counted), EIO that outlasts the
// retries (the load fails with an error naming the file, the expert and the matrix; the slot
// then loads again), a file shortened underneath (source_ended for reads past the new end,
// source_changed for a load that completes), an identity change (source_changed until
// set_identity() accepts it), a submit the reader refuses with an error or by taking nothing
// while nothing is in flight (the loads fail, reported by reap(), instead of hanging), a
// queue depth of one (reads wait their turn), stop() with reads in flight (drained, nothing
// reported), and replace_reader(). Results are awaited with reap(wait); nothing asserts on
// elapsed time.
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <vector>

#include "storage/block_mover.h"
#include "storage/fault_reader.h"
#include "storage/tiered_expert_source.h"
#include "tests/storage/block_reader_test_util.h"
#include "tests/storage/tiered_test_util.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

using namespace tiered_test;
using test_util::aligned_buffer;

constexpr std::uint32_t alignment = 4096;

struct mover_setup {
    const model_fixture& m;
    std::uint32_t n_slots = 4;
    std::uint64_t slot_bytes = 0;
    std::unique_ptr<aligned_buffer> memory;
    fault_reader* faults = nullptr;  // owned by the mover
    std::unique_ptr<block_mover> mover;

    explicit mover_setup(const model_fixture& fixture, block_mover_options options = {}, std::uint32_t depth = 16,
                         bool uring = false, std::string path = {})
        : m(fixture) {
        if (path.empty()) path = m.path;
        slot_bytes = tiered_slot_bytes(m.layout, alignment);
        memory = std::make_unique<aligned_buffer>(slot_bytes * n_slots);
        auto inner = open_block_reader(block_reader_options{
            path, depth, uring, true, std::span<std::byte>(memory->data, memory->bytes)});
        EXPECT_TRUE(inner) << inner.error().message;
        if (!inner) return;
        auto identity = (*inner)->identity();
        EXPECT_TRUE(identity) << identity.error().message;
        auto wrapped = fault_reader::create(std::move(inner).value());
        EXPECT_TRUE(wrapped) << wrapped.error().message;
        if (!wrapped || !identity) return;
        faults = wrapped->get();
        options.path = path;
        options.region_alignment = alignment;
        mover = std::make_unique<block_mover>(std::move(wrapped).value(), slot_memory{memory->data, n_slots, slot_bytes},
                                              m.layout, *identity, options);
    }

    // Queues `loads` (slot, expert), submits, and reaps until each has its result, indexed by slot.
    std::vector<move_result> run(const std::vector<std::pair<std::uint32_t, ExpertId>>& loads) {
        for (const auto& [slot, id] : loads) mover->queue(slot, id);
        mover->submit();
        std::vector<move_result> by_slot(n_slots);
        std::array<move_result, 8> batch;
        std::size_t got = 0;
        for (int round = 0; round < 100000 && got < loads.size(); ++round) {
            const std::size_t n = mover->reap(batch, true);
            for (std::size_t k = 0; k < n; ++k) by_slot[batch[k].slot] = std::move(batch[k]);
            got += n;
        }
        EXPECT_EQ(got, loads.size());
        return by_slot;
    }

    // The slot holds exactly the resident source's bytes for `id`.
    ::testing::AssertionResult holds(std::uint32_t slot, ExpertId id) const {
        const expert_weights w = weights_in_slot(memory->data + slot * slot_bytes, m.layout,
                                                 geometry_of(m.layout, id.layer, alignment), id, alignment);
        auto ref = m.resident->acquire(id, device_id::host());
        if (!ref) return ::testing::AssertionFailure() << ref.error().message;
        if (!same_matrix(w.gate, ref->weights().gate)) return ::testing::AssertionFailure() << "gate differs";
        if (!same_matrix(w.up, ref->weights().up)) return ::testing::AssertionFailure() << "up differs";
        if (!same_matrix(w.down, ref->weights().down)) return ::testing::AssertionFailure() << "down differs";
        return ::testing::AssertionSuccess();
    }
};

::testing::AssertionResult contains(const std::string& text, std::string_view needle) {
    if (text.find(needle) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "'" << text << "' lacks '" << needle << "'";
}

const std::vector<std::pair<std::uint32_t, ExpertId>> four_loads = {
    {0, {0, 0}}, {1, {1, 7}}, {2, {2, 3}}, {3, {0, 5}}};

class block_mover_backends : public ::testing::TestWithParam<bool> {};

TEST_P(block_mover_backends, loads_land_in_their_slots) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m, {}, 16, GetParam());
    ASSERT_TRUE(s.mover);
    const auto results = s.run(four_loads);
    for (const auto& [slot, id] : four_loads) {
        EXPECT_EQ(results[slot].status, move_status::ok) << results[slot].error.message;
        EXPECT_EQ(results[slot].errors, 0u);
        EXPECT_GE(results[slot].bytes, m.layout.expert_bytes(id.layer));
        EXPECT_TRUE(s.holds(slot, id));
    }
    EXPECT_EQ(s.mover->loads_in_flight(), 0u);
    // A slot takes its next load once its result was reaped.
    const auto again = s.run({{1, {2, 6}}});
    EXPECT_EQ(again[1].status, move_status::ok);
    EXPECT_TRUE(s.holds(1, {2, 6}));
}

INSTANTIATE_TEST_SUITE_P(uring_and_pread, block_mover_backends, ::testing::Values(true, false));

TEST(block_mover, short_reads_and_small_chunks_are_resumed_until_whole) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m, block_mover_options{.chunk_bytes_max = alignment});
    ASSERT_TRUE(s.mover);
    s.faults->set_short_reads(0.3);
    const auto results = s.run(four_loads);
    for (const auto& [slot, id] : four_loads) {
        EXPECT_EQ(results[slot].status, move_status::ok) << results[slot].error.message;
        EXPECT_TRUE(s.holds(slot, id));
    }
    EXPECT_GT(s.faults->reads_shortened(), 0u);
    EXPECT_GT(s.faults->reads_accepted(), 3u * four_loads.size());
}

TEST(block_mover, interrupted_reads_are_retried_without_counting_errors) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m);
    ASSERT_TRUE(s.mover);
    s.faults->fail_reads(0, 3, EINTR);
    s.faults->fail_reads(3, 3, EAGAIN);
    const auto results = s.run({{0, {1, 1}}, {1, {1, 2}}});
    for (std::uint32_t slot : {0u, 1u}) {
        EXPECT_EQ(results[slot].status, move_status::ok) << results[slot].error.message;
        EXPECT_EQ(results[slot].errors, 0u);
    }
    EXPECT_TRUE(s.holds(0, {1, 1}));
    EXPECT_EQ(s.faults->reads_failed(), 6u);
}

TEST(block_mover, one_eio_is_retried_and_counted) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m, block_mover_options{.eio_retries = 3});
    ASSERT_TRUE(s.mover);
    s.faults->fail_nth_read(1, EIO);
    const auto results = s.run({{2, {0, 4}}});
    EXPECT_EQ(results[2].status, move_status::ok) << results[2].error.message;
    EXPECT_EQ(results[2].errors, 1u);
    EXPECT_TRUE(s.holds(2, {0, 4}));
}

TEST(block_mover, eio_beyond_the_retries_fails_the_load_with_a_clear_error) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m, block_mover_options{.eio_retries = 2});
    ASSERT_TRUE(s.mover);
    s.faults->fail_all_reads(EIO);
    const auto results = s.run({{3, {1, 2}}});
    const move_result& r = results[3];
    EXPECT_EQ(r.status, move_status::failed);
    EXPECT_EQ(r.error.code, errc::io);
    EXPECT_TRUE(contains(r.error.message, m.path));
    EXPECT_TRUE(contains(r.error.message, "expert 1/2"));
    EXPECT_TRUE(contains(r.error.message, " matrix, "));
    EXPECT_TRUE(contains(r.error.message, "after 2 retries"));
    EXPECT_EQ(r.errors, 3u * 3u);  // each matrix: the first try and two retries
    EXPECT_EQ(r.bytes, 0u);
    // The slot is free for the next load; with the fault gone it succeeds.
    s.faults->clear_failures();
    const auto again = s.run({{3, {1, 2}}});
    EXPECT_EQ(again[3].status, move_status::ok) << again[3].error.message;
    EXPECT_TRUE(s.holds(3, {1, 2}));
}

TEST(block_mover, a_file_shortened_underneath_ends_the_source_or_changes_it) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    const std::string copy = (test::temp_dir() / "block-mover-truncated.gguf").string();
    std::filesystem::copy_file(m.path, copy, std::filesystem::copy_options::overwrite_existing);
    mover_setup s(m, {}, 16, false, copy);
    ASSERT_TRUE(s.mover);
    // Cut the file where the last layer's experts begin: their reads meet the end of file.
    const auto& last = m.layout.layers[m.layout.n_layer - 1];
    const std::uint64_t cut = std::min({last.gate_offset, last.up_offset, last.down_offset});
    ASSERT_EQ(::truncate(copy.c_str(), static_cast<off_t>(cut)), 0);
    const ExpertId past{m.layout.n_layer - 1, 3};
    const auto results = s.run({{0, past}});
    const move_result& r = results[0];
    EXPECT_EQ(r.status, move_status::source_ended);
    EXPECT_TRUE(contains(r.source_error.message, "shortened since it was opened"));
    EXPECT_TRUE(contains(r.source_error.message, copy));
    EXPECT_TRUE(contains(r.error.message, "end of file"));
    EXPECT_TRUE(contains(r.error.message, "expert 2/3"));
    EXPECT_GT(r.errors, 0u);
    // A load whose bytes all lie before the cut completes, and the size check catches it.
    const auto& first = m.layout.layers[0];
    const std::uint64_t first_end = std::max({first.gate_offset + first.gate_bytes * m.layout.n_expert,
                                              first.up_offset + first.up_bytes * m.layout.n_expert,
                                              first.down_offset + first.down_bytes * m.layout.n_expert});
    if (first_end <= cut) {
        const auto before = s.run({{1, {0, 1}}});
        EXPECT_EQ(before[1].status, move_status::source_changed);
        EXPECT_TRUE(contains(before[1].source_error.message, "changed since it was opened"));
    }
}

TEST(block_mover, an_identity_change_reports_source_changed_until_accepted) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m);
    ASSERT_TRUE(s.mover);
    s.faults->set_file_replaced(true);
    const auto changed = s.run({{0, {0, 2}}});
    EXPECT_EQ(changed[0].status, move_status::source_changed);
    EXPECT_TRUE(contains(changed[0].source_error.message, "changed since it was opened"));
    EXPECT_TRUE(changed[0].error.message.empty());  // the tier words the load's failure
    auto now = s.mover->source_identity();
    ASSERT_TRUE(now) << now.error().message;
    s.mover->set_identity(*now);
    const auto accepted = s.run({{0, {0, 2}}});
    EXPECT_EQ(accepted[0].status, move_status::ok) << accepted[0].error.message;
    EXPECT_TRUE(s.holds(0, {0, 2}));
}

TEST(block_mover, a_refused_submit_fails_the_loads_through_reap) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m);
    ASSERT_TRUE(s.mover);
    s.faults->fail_submits(1);
    const auto failed = s.run({{0, {1, 0}}, {1, {2, 0}}});
    for (std::uint32_t slot : {0u, 1u}) {
        EXPECT_EQ(failed[slot].status, move_status::failed);
        EXPECT_TRUE(contains(failed[slot].error.message, "injected submit failure"));
        EXPECT_TRUE(contains(failed[slot].error.message, slot == 0 ? "expert 1/0" : "expert 2/0"));
    }
    // A reader that takes nothing while nothing is in flight would hang the loads.
    s.faults->refuse_submits(true);
    const auto refused = s.run({{2, {0, 0}}});
    EXPECT_EQ(refused[2].status, move_status::failed);
    EXPECT_TRUE(contains(refused[2].error.message, "accepted no read with its queue empty"));
    s.faults->refuse_submits(false);
    const auto fine = s.run({{0, {1, 0}}, {1, {2, 0}}, {2, {0, 0}}});
    for (std::uint32_t slot : {0u, 1u, 2u}) EXPECT_EQ(fine[slot].status, move_status::ok) << fine[slot].error.message;
    EXPECT_TRUE(s.holds(2, {0, 0}));
}

TEST(block_mover, reads_beyond_the_queue_depth_wait_their_turn) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m, {}, 1);
    ASSERT_TRUE(s.mover);
    s.faults->set_short_reads(0.5, 0, 4);
    const auto results = s.run(four_loads);
    for (const auto& [slot, id] : four_loads) {
        EXPECT_EQ(results[slot].status, move_status::ok) << results[slot].error.message;
        EXPECT_TRUE(s.holds(slot, id));
    }
}

TEST(block_mover, stop_drains_the_reads_in_flight_and_reports_nothing) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m, {}, 4);
    ASSERT_TRUE(s.mover);
    s.faults->set_latency(std::chrono::milliseconds(2));
    for (const auto& [slot, id] : four_loads) s.mover->queue(slot, id);
    s.mover->submit();  // four of twelve reads fit the queue; the rest wait
    EXPECT_FALSE(s.mover->drained());
    s.mover->stop();
    std::array<move_result, 8> batch;
    std::size_t reported = 0;
    for (int round = 0; round < 100000 && !s.mover->drained(); ++round) reported += s.mover->reap(batch, true);
    EXPECT_TRUE(s.mover->drained());
    EXPECT_EQ(reported, 0u);
    EXPECT_EQ(s.mover->reap(batch, true), 0u);  // returns at once when drained
}

TEST(block_mover, a_replaced_reader_serves_the_next_loads) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    mover_setup s(m);
    ASSERT_TRUE(s.mover);
    EXPECT_EQ(s.run({{0, {0, 0}}})[0].status, move_status::ok);
    auto fresh = open_block_reader(block_reader_options{m.path, 2, false, true, {}});
    ASSERT_TRUE(fresh) << fresh.error().message;
    s.mover->replace_reader(std::move(fresh).value());
    EXPECT_EQ(s.mover->queue_depth(), 2u);
    const auto results = s.run(four_loads);
    for (const auto& [slot, id] : four_loads) {
        EXPECT_EQ(results[slot].status, move_status::ok) << results[slot].error.message;
        EXPECT_TRUE(s.holds(slot, id));
    }
}

}  // namespace
}  // namespace moed::storage
