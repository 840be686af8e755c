// A mutex that counts how it is used: acquisitions, the ones that found it held and had to
// wait (try_lock first, so an uncontended lock costs one try_lock and two clock reads), the
// time they waited, and the time it was held. A tier takes one for its bookkeeping, and
// stats() says whether that lock is a bottleneck. It meets the Lockable requirements, so
// std::unique_lock and std::condition_variable_any work with it (a wait re-acquires through
// lock(), so the wake-up's wait is counted too).
//
// Threads: any. The counters are written while the lock is held; read them with stats()
// while holding it.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "common/status.h"

namespace moed::storage {

class counted_mutex {
public:
    using clock = std::chrono::steady_clock;

    void lock() {
        if (!mutex_.try_lock()) {
            waiters_.fetch_add(1, std::memory_order_relaxed);
            const clock::time_point t0 = clock::now();
            mutex_.lock();
            waiters_.fetch_sub(1, std::memory_order_relaxed);
            acquired_at_ = clock::now();
            const auto waited = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(acquired_at_ - t0).count());
            ++stats_.contended;
            stats_.wait_ns += waited;
            stats_.wait_ns_max = std::max(stats_.wait_ns_max, waited);
        } else {
            acquired_at_ = clock::now();
        }
        ++stats_.acquisitions;
    }

    bool try_lock() {
        if (!mutex_.try_lock()) return false;
        acquired_at_ = clock::now();
        ++stats_.acquisitions;
        return true;
    }

    void unlock() {
        stats_.hold_ns += static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - acquired_at_).count());
        mutex_.unlock();
    }

    // The counters so far; call while holding the lock. hold_ns covers finished holds only
    // (not the caller's own).
    lock_stats stats() const noexcept { return stats_; }
    // Threads blocked in lock() right now (a snapshot, for tests and diagnostics).
    std::uint32_t waiters() const noexcept { return waiters_.load(std::memory_order_relaxed); }

private:
    std::mutex mutex_;
    lock_stats stats_;
    clock::time_point acquired_at_{};
    std::atomic<std::uint32_t> waiters_{0};
};

}  // namespace moed::storage
