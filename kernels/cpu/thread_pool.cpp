// compute_pool: N-1 persistent workers plus the calling thread.
//
// A job is published by bumping a generation number. Chunks are claimed from one 64-bit
// word that packs (generation << 32 | chunks not yet claimed), so a worker that wakes up late
// can never claim a chunk of a job that has already finished: its compare-exchange carries
// the generation it saw. The owner returns once the completed-chunk count reaches the
// number of chunks; it never waits for sleeping workers, only for claimed chunks.
//
// Workers spin (with `pause`) for a while after each job because the engine calls
// parallel_for hundreds of times per token with short gaps; only after a longer idle
// period do they sleep on a futex. The futex is called directly rather than through
// std::atomic::wait: GCC 12's implementation was seen to lose a wake-up here (a worker
// stayed asleep through notify_all), and the sleeper count below makes the owner's common
// path a plain load with no system call.
#include "kernels/cpu/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "common/assert.h"

#include <climits>

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace moed::kernels {

namespace {

// How long an idle worker keeps spinning before it sleeps. Long enough to bridge the gaps
// between the matmuls of one decoded token, short enough not to burn a core when idle.
constexpr auto spin_before_sleep = std::chrono::microseconds(2000);
// Spinning with `pause` only for this long, then yielding the CPU between polls: on an
// oversubscribed machine a spinning thread may share its core with the thread it waits
// for (the owner, or a worker holding a chunk), and plain spinning would then stall both
// for a whole scheduler time slice. On an idle core sched_yield returns at once.
constexpr auto spin_before_yield = std::chrono::microseconds(50);
// Chunks per thread when the work allows it: a few, so uneven chunks balance out.
constexpr std::int64_t chunks_per_thread = 4;
// The count of unclaimed chunks lives in the low 32 bits of the claim word.
constexpr std::int64_t max_chunks = 1 << 30;

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
}

// Sleeps while *word == expected (the kernel checks atomically); spurious returns are fine.
void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected) noexcept {
    static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

void futex_wake_all(std::atomic<std::uint32_t>* word) noexcept {
    syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

}  // namespace

struct compute_pool::impl {
    using fn_type = std::function<void(std::int64_t, std::int64_t, int)>;

    int n_threads = 1;
    std::vector<std::thread> workers;

    // Job description; written by the owner before the generation is published, read by
    // workers only while they hold an unfinished chunk of that generation.
    const fn_type* fn = nullptr;
    std::int64_t n = 0;
    std::int64_t chunk = 1;
    std::int64_t n_chunks = 0;

    alignas(64) std::atomic<std::uint64_t> claim{0};        // generation << 32 | chunks left
    alignas(64) std::atomic<std::int64_t> completed{0};     // chunks finished this job
    alignas(64) std::atomic<std::uint32_t> generation{0};   // the futex word workers sleep on
    std::atomic<int> sleepers{0};
    std::atomic<bool> stop{false};

    // Claims and runs chunks of generation `gen` until none is left. The claim word counts
    // the chunks still unclaimed, so a successful compare-exchange proves the job is still
    // running and its description (fn, n, chunk, n_chunks) is the one published with it.
    void run_chunks(std::uint32_t gen, int thread_index) {
        // Finished chunks are reported once, on the way out: one write to the shared counter
        // per thread and job instead of one per chunk. Holding them back is safe, because the
        // owner cannot finish the job (and reuse its description) while any is unreported.
        std::int64_t done = 0;
        std::uint64_t c = claim.load(std::memory_order_acquire);
        for (;;) {
            if (static_cast<std::uint32_t>(c >> 32) != gen || (c & 0xffffffffu) == 0) break;
            if (!claim.compare_exchange_weak(c, c - 1, std::memory_order_acq_rel,
                                             std::memory_order_acquire)) {
                continue;
            }
            const auto remaining = static_cast<std::int64_t>(c & 0xffffffffu);
            const std::int64_t begin = (n_chunks - remaining) * chunk;
            const std::int64_t end = std::min(n, begin + chunk);
            (*fn)(begin, end, thread_index);
            ++done;
            c = claim.load(std::memory_order_acquire);
        }
        if (done > 0) completed.fetch_add(done, std::memory_order_acq_rel);
    }

    // `seen` is the generation when the pool was built, passed in rather than read here:
    // a worker that starts late (busy machine) must still notice a job or the shutdown
    // published before it ran, or it would wait for a change that already happened.
    void worker_main(int thread_index, std::uint32_t seen) {
        for (;;) {
            // Spin for a while, then sleep until the generation changes.
            auto spin_start = std::chrono::steady_clock::now();
            std::uint32_t gen = generation.load(std::memory_order_acquire);
            int polls = 0;
            bool yielding = false;
            while (gen == seen) {
                if (yielding) {
                    std::this_thread::yield();
                } else {
                    cpu_relax();
                }
                if (++polls == 64) {
                    polls = 0;
                    const auto spun = std::chrono::steady_clock::now() - spin_start;
                    yielding = spun > spin_before_yield;
                    if (spun > spin_before_sleep) {
                        // Announce the sleep before the last check: the owner stores the
                        // generation, then reads `sleepers` (both seq_cst), so either it
                        // sees us and wakes us, or we see its new generation here.
                        sleepers.fetch_add(1, std::memory_order_seq_cst);
                        if (generation.load(std::memory_order_seq_cst) == seen) futex_wait(&generation, seen);
                        sleepers.fetch_sub(1, std::memory_order_seq_cst);
                        spin_start = std::chrono::steady_clock::now();
                        yielding = false;
                    }
                }
                gen = generation.load(std::memory_order_acquire);
            }
            seen = gen;
            if (stop.load(std::memory_order_acquire)) return;
            run_chunks(gen, thread_index);
        }
    }

    void publish(std::uint32_t gen) {
        generation.store(gen, std::memory_order_seq_cst);
        if (sleepers.load(std::memory_order_seq_cst) > 0) futex_wake_all(&generation);
    }
};

compute_pool::compute_pool(int n_threads) : impl_(std::make_unique<impl>()) {
    MOED_ASSERT(n_threads >= 1);
    impl_->n_threads = n_threads;
    impl_->workers.reserve(static_cast<std::size_t>(n_threads - 1));
    for (int i = 1; i < n_threads; ++i) {
        impl_->workers.emplace_back([p = impl_.get(), i, g0 = impl_->generation.load()] { p->worker_main(i, g0); });
    }
}

compute_pool::~compute_pool() {
    impl_->stop.store(true, std::memory_order_release);
    const std::uint32_t gen = impl_->generation.load(std::memory_order_relaxed) + 1;
    impl_->generation.store(gen, std::memory_order_seq_cst);
    futex_wake_all(&impl_->generation);
    for (auto& t : impl_->workers) t.join();
}

int compute_pool::size() const noexcept { return impl_->n_threads; }

void compute_pool::parallel_for(std::int64_t n, std::int64_t min_chunk,
                                const std::function<void(std::int64_t, std::int64_t, int)>& fn) {
    if (n <= 0) return;
    min_chunk = std::max<std::int64_t>(min_chunk, 1);
    impl& p = *impl_;
    if (p.n_threads == 1 || n <= min_chunk) {
        fn(0, n, 0);
        return;
    }
    const std::int64_t want = static_cast<std::int64_t>(p.n_threads) * chunks_per_thread;
    std::int64_t chunk = std::max(min_chunk, (n + want - 1) / want);
    std::int64_t n_chunks = (n + chunk - 1) / chunk;
    if (n_chunks > max_chunks) {
        n_chunks = max_chunks;
        chunk = (n + n_chunks - 1) / n_chunks;
        n_chunks = (n + chunk - 1) / chunk;
    }
    if (n_chunks == 1) {
        fn(0, n, 0);
        return;
    }

    // The previous job is fully complete (we waited for it), so no worker reads these now.
    p.fn = &fn;
    p.n = n;
    p.chunk = chunk;
    p.n_chunks = n_chunks;
    p.completed.store(0, std::memory_order_relaxed);
    const std::uint32_t gen = p.generation.load(std::memory_order_relaxed) + 1;
    p.claim.store((static_cast<std::uint64_t>(gen) << 32) | static_cast<std::uint64_t>(n_chunks),
                  std::memory_order_release);
    p.publish(gen);

    p.run_chunks(gen, 0);
    // Wait for chunks other threads still hold; yield after a while (see spin_before_yield).
    const auto wait_start = std::chrono::steady_clock::now();
    int polls = 0;
    bool yielding = false;
    while (p.completed.load(std::memory_order_acquire) < n_chunks) {
        if (yielding) {
            std::this_thread::yield();
        } else {
            cpu_relax();
            if (++polls == 64) {
                polls = 0;
                yielding = std::chrono::steady_clock::now() - wait_start > spin_before_yield;
            }
        }
    }
}

}  // namespace moed::kernels
