// compute_pool: a fixed set of worker threads for CPU kernels (`-t N`). The calling thread
// takes part in the work, so a pool of N threads starts N-1 workers.
// Threads: one owner thread calls parallel_for at a time (the engine thread); the workers
// are private. parallel_for returns when every chunk has run. Work functions must not throw.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace moed::kernels {

class compute_pool {
public:
    explicit compute_pool(int n_threads);
    ~compute_pool();
    compute_pool(const compute_pool&) = delete;
    compute_pool& operator=(const compute_pool&) = delete;

    int size() const noexcept;

    // Runs fn(begin, end, thread_index) over [0, n) split into chunks of at least
    // `min_chunk` items; chunks are handed out dynamically so uneven work balances.
    void parallel_for(std::int64_t n, std::int64_t min_chunk,
                      const std::function<void(std::int64_t, std::int64_t, int)>& fn);

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

}  // namespace moed::kernels
