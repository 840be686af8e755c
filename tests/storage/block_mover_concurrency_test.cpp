// block_mover and counted_mutex under concurrent callers, as a tier drives them (CI runs
// files named *concurrency_test under ThreadSanitizer).
//
// What it checks, and how: two "engine" threads each own half of the slots; each takes a
// counted_mutex (the tier's lock) to queue a load of a random expert into a free slot of
// its own, and submits after releasing it, as the tier does. A third thread is the
// completion thread: it reaps results without that lock, checks every loaded expert's
// bytes against the resident source (the file mapped), and, under the lock, frees the slot
// and also submits (the tier submits from its completion thread too). The reader underneath
// is a fault_reader with latency, short reads, EINTR and a small queue depth, so submits
// meet a full reader and resumed reads race new ones. Afterwards every load has exactly one
// result, every result is ok, and the lock counted every acquisition. A second test stops
// the mover while both submitters are still queueing and checks it drains. Nothing asserts
// on elapsed time.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "storage/block_mover.h"
#include "storage/counted_mutex.h"
#include "storage/fault_reader.h"
#include "storage/tiered_expert_source.h"
#include "tests/storage/block_reader_test_util.h"
#include "tests/storage/tiered_test_util.h"

namespace moed::storage {
namespace {

using namespace tiered_test;
using test_util::aligned_buffer;

constexpr std::uint32_t alignment = 4096;
constexpr std::uint32_t n_slots = 8;

struct rig {
    std::uint64_t slot_bytes = 0;
    std::unique_ptr<aligned_buffer> memory;
    fault_reader* faults = nullptr;
    std::unique_ptr<block_mover> mover;

    explicit rig(const model_fixture& m, std::uint32_t depth) {
        slot_bytes = tiered_slot_bytes(m.layout, alignment);
        memory = std::make_unique<aligned_buffer>(slot_bytes * n_slots);
        auto inner = open_block_reader(block_reader_options{m.path, depth, false, true, {}});
        EXPECT_TRUE(inner) << inner.error().message;
        if (!inner) return;
        auto identity = (*inner)->identity();
        auto wrapped = fault_reader::create(std::move(inner).value());
        EXPECT_TRUE(wrapped && identity);
        if (!wrapped || !identity) return;
        faults = wrapped->get();
        mover = std::make_unique<block_mover>(std::move(wrapped).value(), slot_memory{memory->data, n_slots, slot_bytes},
                                              m.layout, *identity,
                                              block_mover_options{.path = m.path, .region_alignment = alignment});
    }
};

TEST(block_mover_concurrency, two_submitters_and_a_reaper) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    rig r(m, 3);
    ASSERT_TRUE(r.mover);
    r.faults->set_latency(std::chrono::microseconds(200));
    r.faults->set_short_reads(0.5, 0, 200);
    r.faults->fail_reads(50, 20, EINTR);

    counted_mutex tier_lock;
    std::uint64_t lock_calls = 0;  // under tier_lock
    std::vector<ExpertId> loading(n_slots);  // under tier_lock
    std::vector<std::uint8_t> busy(n_slots, 0);  // under tier_lock
    constexpr int loads_per_thread = 150;
    std::atomic<int> results{0};
    std::atomic<int> bad{0};
    std::atomic<bool> done{false};

    auto engine = [&](std::uint32_t first_slot, unsigned seed) {
        std::mt19937 rng(seed);
        const std::vector<ExpertId> all = all_experts(m.layout);
        for (int k = 0; k < loads_per_thread;) {
            bool queued = false;
            {
                std::lock_guard lock(tier_lock);
                ++lock_calls;
                for (std::uint32_t s = first_slot; s < first_slot + n_slots / 2 && !queued; ++s) {
                    if (busy[s] != 0) continue;
                    busy[s] = 1;
                    loading[s] = all[rng() % all.size()];
                    r.mover->queue(s, loading[s]);
                    queued = true;
                }
            }
            if (queued) {
                r.mover->submit();
                ++k;
            } else {
                std::this_thread::yield();
            }
        }
    };
    std::thread reaper([&] {
        std::array<move_result, 4> batch;
        while (results.load() < 2 * loads_per_thread) {
            const std::size_t n = r.mover->reap(batch, true);
            for (std::size_t k = 0; k < n; ++k) {
                const move_result& res = batch[k];
                ExpertId id;
                {
                    std::lock_guard lock(tier_lock);
                    ++lock_calls;
                    id = loading[res.slot];
                }
                // Bytes are checked before the slot is handed back (nobody writes it meanwhile).
                const expert_weights w = weights_in_slot(r.memory->data + res.slot * r.slot_bytes, m.layout,
                                                         geometry_of(m.layout, id.layer, alignment), id, alignment);
                auto ref = m.resident->acquire(id, device_id::host());
                if (res.status != move_status::ok || !ref || !same_matrix(w.gate, ref->weights().gate) ||
                    !same_matrix(w.up, ref->weights().up) || !same_matrix(w.down, ref->weights().down)) {
                    ++bad;
                }
                {
                    std::lock_guard lock(tier_lock);
                    ++lock_calls;
                    busy[res.slot] = 0;
                }
                ++results;
            }
            r.mover->submit();
        }
        done.store(true);
    });
    std::thread a(engine, 0, 11u);
    std::thread b(engine, n_slots / 2, 22u);
    a.join();
    b.join();
    reaper.join();
    EXPECT_TRUE(done.load());
    EXPECT_EQ(results.load(), 2 * loads_per_thread);
    EXPECT_EQ(bad.load(), 0);
    EXPECT_EQ(r.mover->loads_in_flight(), 0u);
    std::lock_guard lock(tier_lock);
    const lock_stats st = tier_lock.stats();
    EXPECT_EQ(st.acquisitions, lock_calls + 1);  // every lock counted, this one too
    EXPECT_LE(st.contended, st.acquisitions);
    EXPECT_GE(st.wait_ns, st.wait_ns_max);
}

TEST(block_mover_concurrency, stop_while_submitters_queue_drains) {
    const model_fixture m = load_model("Q8_0", skewed_shape());
    ASSERT_TRUE(m.resident);
    for (int round = 0; round < 5; ++round) {
        rig r(m, 4);
        ASSERT_TRUE(r.mover);
        r.faults->set_latency(std::chrono::microseconds(300));
        std::mutex tier_lock;
        bool stopped = false;  // under tier_lock: the tier queues nothing once it stops
        std::vector<std::uint8_t> busy(n_slots, 0);
        auto engine = [&](std::uint32_t first_slot) {
            const std::vector<ExpertId> all = all_experts(m.layout);
            for (std::uint32_t s = first_slot; s < first_slot + n_slots / 2; ++s) {
                {
                    std::lock_guard lock(tier_lock);
                    if (stopped) return;
                    r.mover->queue(s, all[(s * 5 + static_cast<std::uint32_t>(round)) % all.size()]);
                }
                r.mover->submit();
            }
        };
        std::thread reaper([&] {
            std::array<move_result, 4> batch;
            while (!r.mover->drained()) (void)r.mover->reap(batch, true);
        });
        std::thread a(engine, 0);
        std::thread b(engine, n_slots / 2);
        {
            std::lock_guard lock(tier_lock);
            stopped = true;
        }
        r.mover->stop();
        a.join();
        b.join();
        reaper.join();
        EXPECT_TRUE(r.mover->drained());
    }
}

}  // namespace
}  // namespace moed::storage
