// host_slab: the host tier's memory, and the LRU eviction policy that orders its slots.
//
// What it checks, and how: slabs are made from budgets that are not whole multiples of the
// slot size (n_slots rounds down), every slot is written end to end (ASan catches an
// overrun) and checked for alignment, distinctness and placement inside region(). Bad sizes
// (budget below one slot, alignment not a power of two or above a page, slot size not a
// multiple of the alignment, a NUMA node that does not exist) must be errors naming the
// figures. Memory locking: `off` never locks; with the process's RLIMIT_MEMLOCK lowered to
// 64 KiB and CAP_IPC_LOCK dropped from the thread's effective set (root ignores the limit
// otherwise), `required` must fail with the message that says which limit to raise, and
// `best_effort` must succeed unlocked (skipped where mlock is not enforced: sanitizer runtimes
// make it a no-op). The LRU policy is driven through insert/evictable/
// access/remove sequences and its victims compared with a simple reference model (a list
// ordered by last use).
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <random>

#include "storage/eviction_policy.h"
#include "storage/host_slab.h"

namespace moed::storage {
namespace {

template <typename T>
void expect_error(const result<T>& r, errc code, std::initializer_list<std::string_view> needles) {
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code, code) << r.error().message;
    for (std::string_view n : needles) {
        EXPECT_NE(r.error().message.find(n), std::string::npos) << "message lacks '" << n << "': " << r.error().message;
    }
}

TEST(host_slab, slots_are_aligned_distinct_and_inside_the_region) {
    const std::uint64_t slot = 3 * 4096;
    auto made = host_slab::create({.budget_bytes = slot * 5 + slot / 2, .slot_bytes = slot, .alignment = 4096,
                                   .lock = memory_lock::off});
    ASSERT_TRUE(made) << made.error().message;
    const host_slab& s = **made;
    EXPECT_EQ(s.n_slots(), 5u);
    EXPECT_EQ(s.slot_bytes(), slot);
    EXPECT_EQ(s.region().size(), slot * 5);
    EXPECT_FALSE(s.locked());
    for (std::uint32_t k = 0; k < s.n_slots(); ++k) {
        std::byte* p = s.slot(k);
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 4096, 0u);
        EXPECT_EQ(p, s.region().data() + k * slot);
        std::memset(p, static_cast<int>(k + 1), slot);  // the whole slot is usable
    }
    for (std::uint32_t k = 0; k < s.n_slots(); ++k) {
        EXPECT_EQ(s.slot(k)[0], static_cast<std::byte>(k + 1));
        EXPECT_EQ(s.slot(k)[slot - 1], static_cast<std::byte>(k + 1));
    }
    EXPECT_GE(s.numa_node(), -1);
}

TEST(host_slab, bad_sizes_are_errors_naming_the_figures) {
    expect_error(host_slab::create({.budget_bytes = 8191, .slot_bytes = 8192, .lock = memory_lock::off}),
                 errc::out_of_memory, {"host budget", "8191 bytes", "smaller than one expert slot", "8192 bytes"});
    expect_error(host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 8192, .alignment = 3, .lock = memory_lock::off}),
                 errc::invalid_argument, {"alignment 3", "power of two"});
    expect_error(host_slab::create({.budget_bytes = 1 << 22, .slot_bytes = 1 << 21, .alignment = 1 << 21,
                                    .lock = memory_lock::off}),
                 errc::invalid_argument, {"no larger than the page size"});
    expect_error(host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 5000, .alignment = 4096, .lock = memory_lock::off}),
                 errc::invalid_argument, {"slot size 5000", "multiple of the alignment 4096"});
    expect_error(host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 0, .lock = memory_lock::off}),
                 errc::invalid_argument, {"slot size 0"});
    expect_error(host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 4096, .lock = memory_lock::off,
                                    .numa_node = 9999}),
                 errc::invalid_argument, {"NUMA node 9999 does not exist"});
}

TEST(host_slab, small_alignments_and_an_explicit_node) {
    auto made = host_slab::create({.budget_bytes = 10 * 512, .slot_bytes = 512, .alignment = 512, .lock = memory_lock::off});
    ASSERT_TRUE(made) << made.error().message;
    EXPECT_EQ((*made)->n_slots(), 10u);
    for (std::uint32_t k = 0; k < 10; ++k) EXPECT_EQ(reinterpret_cast<std::uintptr_t>((*made)->slot(k)) % 512, 0u);
    // Node 0 always exists; the slab is bound to it unless the kernel refuses binding here.
    made = host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 4096, .lock = memory_lock::off, .numa_node = 0});
    ASSERT_TRUE(made) << made.error().message;
    EXPECT_TRUE((*made)->numa_node() == 0 || (*made)->numa_node() == -1);
}

// Lowers RLIMIT_MEMLOCK and drops CAP_IPC_LOCK from this thread's effective set (so even
// root is held to the limit); both come back on destruction.
class small_memlock_limit {
public:
    explicit small_memlock_limit(rlim_t bytes) {
        ok_ = ::getrlimit(RLIMIT_MEMLOCK, &saved_limit_) == 0;
        rlimit lowered = saved_limit_;
        lowered.rlim_cur = std::min<rlim_t>(bytes, saved_limit_.rlim_max);
        ok_ = ok_ && ::setrlimit(RLIMIT_MEMLOCK, &lowered) == 0;
        header_.version = _LINUX_CAPABILITY_VERSION_3;
        header_.pid = 0;
        caps_saved_ = ::syscall(SYS_capget, &header_, saved_caps_) == 0;
        if (caps_saved_) {
            __user_cap_data_struct dropped[2];
            std::memcpy(dropped, saved_caps_, sizeof dropped);
            dropped[CAP_IPC_LOCK / 32].effective &= ~(1u << (CAP_IPC_LOCK % 32));
            ok_ = ok_ && ::syscall(SYS_capset, &header_, dropped) == 0;
        }
    }
    ~small_memlock_limit() {
        if (caps_saved_) ::syscall(SYS_capset, &header_, saved_caps_);
        ::setrlimit(RLIMIT_MEMLOCK, &saved_limit_);
    }
    bool ok() const { return ok_; }

private:
    rlimit saved_limit_{};
    __user_cap_header_struct header_{};
    __user_cap_data_struct saved_caps_[2]{};
    bool caps_saved_ = false;
    bool ok_ = false;
};

// Whether locking 1 MiB fails under the lowered limit: sanitizer runtimes replace mlock with
// a no-op that succeeds, which leaves nothing to test.
bool mlock_is_enforced() {
    constexpr std::size_t bytes = 1 << 20;
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    const bool locked = ::mlock(p, bytes) == 0;
    if (locked) ::munlock(p, bytes);
    ::munmap(p, bytes);
    return !locked;
}

TEST(host_slab, lock_modes) {
    auto off = host_slab::create({.budget_bytes = 1 << 16, .slot_bytes = 4096, .lock = memory_lock::off});
    ASSERT_TRUE(off) << off.error().message;
    EXPECT_FALSE((*off)->locked());
    {
        small_memlock_limit limit(64 << 10);
        if (!limit.ok()) GTEST_SKIP() << "cannot lower RLIMIT_MEMLOCK or drop CAP_IPC_LOCK here";
        if (mlock_is_enforced() == false) {
            GTEST_SKIP() << "mlock ignores RLIMIT_MEMLOCK here (sanitizers intercept mlock as a no-op)";
        }
        // Within the limit, required locks.
        auto small = host_slab::create({.budget_bytes = 16 << 10, .slot_bytes = 4096, .lock = memory_lock::required});
        ASSERT_TRUE(small) << small.error().message;
        EXPECT_TRUE((*small)->locked());
        small = unexpected(errc::internal, "released");  // unlock before the next one
        auto required = host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 4096, .lock = memory_lock::required});
        expect_error(required, errc::out_of_memory,
                     {"cannot lock 1.00 MiB of host slab", "RLIMIT_MEMLOCK is 64.00 KiB", "ulimit -l",
                      "LimitMEMLOCK=infinity", "best_effort"});
        auto best = host_slab::create({.budget_bytes = 1 << 20, .slot_bytes = 4096, .lock = memory_lock::best_effort});
        ASSERT_TRUE(best) << best.error().message;
        EXPECT_FALSE((*best)->locked());
        std::memset((*best)->slot(255), 7, 4096);
    }
}

// --- LRU policy ---

TEST(lru_policy, victim_is_the_least_recently_used_evictable_slot) {
    auto lru = make_lru_policy();
    EXPECT_STREQ(lru->name(), "lru");
    lru->reset(4);
    EXPECT_FALSE(lru->choose_victim().has_value());
    for (std::uint32_t s = 0; s < 4; ++s) lru->on_insert(s, ExpertId{0, s});
    EXPECT_FALSE(lru->choose_victim().has_value());  // resident is not evictable by itself
    lru->on_evictable(2, true);
    lru->on_evictable(0, true);
    lru->on_evictable(3, true);
    EXPECT_EQ(lru->choose_victim(), 2u);
    lru->on_access(2);  // used again while evictable: now the most recent
    EXPECT_EQ(lru->choose_victim(), 0u);
    lru->on_evictable(0, false);  // acquired
    EXPECT_EQ(lru->choose_victim(), 3u);
    lru->on_remove(3);
    EXPECT_EQ(lru->choose_victim(), 2u);
    lru->on_remove(2);
    EXPECT_FALSE(lru->choose_victim().has_value());
    lru->on_access(1);  // not evictable: no effect
    lru->on_evictable(0, true);
    EXPECT_EQ(lru->choose_victim(), 0u);
    lru->reset(2);
    EXPECT_FALSE(lru->choose_victim().has_value());
}

TEST(lru_policy, matches_a_reference_list_on_random_events) {
    constexpr std::uint32_t n = 16;
    auto lru = make_lru_policy();
    lru->reset(n);
    std::list<std::uint32_t> ref;  // evictable slots, least recent first
    std::vector<bool> evictable(n, false);
    std::mt19937 rng(42);
    for (int step = 0; step < 20000; ++step) {
        const std::uint32_t s = rng() % n;
        switch (rng() % 4) {
            case 0:  // becomes evictable (released) or stops being (acquired)
                evictable[s] = !evictable[s];
                lru->on_evictable(s, evictable[s]);
                ref.remove(s);
                if (evictable[s]) ref.push_back(s);
                break;
            case 1:
                lru->on_access(s);
                if (evictable[s]) {
                    ref.remove(s);
                    ref.push_back(s);
                }
                break;
            case 2:
                lru->on_remove(s);
                evictable[s] = false;
                ref.remove(s);
                break;
            default: {
                const auto victim = lru->choose_victim();
                if (ref.empty()) {
                    ASSERT_FALSE(victim.has_value());
                } else {
                    ASSERT_TRUE(victim.has_value());
                    ASSERT_EQ(*victim, ref.front()) << "step " << step;
                }
            }
        }
    }
}

}  // namespace
}  // namespace moed::storage
