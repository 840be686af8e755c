// The bridge from the engine thread to a connection: a job_sink whose callbacks (engine
// thread) only append to a bounded buffer under a short lock and post one wake-up to the
// io_context; the connection (io thread) takes what arrived and writes it. The engine never
// blocks on a client and never touches a socket.
//
// A client that reads slower than the engine writes fills the buffer; past
// `max_pending_bytes` the channel reports itself gone and the loop cancels the job, instead
// of the daemon holding an unbounded backlog for it.
// Threads: on_token/on_done/on_failed/gone on the engine thread; take(), wait(),
// mark_gone() on the io_context thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>  // std::exchange: Boost 1.74's awaitable.hpp uses it without the include
#include <vector>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "common/result.h"
#include "daemon/batch_loop.h"

namespace moed::daemon {

// Text a slow client may leave unread before its job is cancelled.
inline constexpr std::size_t default_max_pending_bytes = 4u << 20;

class job_channel final : public job_sink, public std::enable_shared_from_this<job_channel> {
public:
    struct finish {
        bool failed = false;
        std::string reason;  // stop, length, cancelled (done); the message (failed)
        errc code = errc::internal;
        job_usage usage;
    };
    // What take() hands over: the pieces since the last take, and the finish once it came.
    struct events {
        std::vector<std::string> pieces;
        std::optional<finish> done;
        std::optional<profile_report> profile;  // once, before the first piece
        // Each generated token's log-probability, in order (jobs that ask for logprobs).
        std::vector<engine::token_logprob> logprobs;
    };

    job_channel(boost::asio::io_context::executor_type executor, std::size_t max_pending_bytes);

    // job_sink, engine thread.
    void on_token(engine::token_id token, std::string_view text) noexcept override;
    void on_logprob(const engine::token_logprob& lp) noexcept override;
    void on_done(std::string_view finish_reason, const job_usage& usage) noexcept override;
    void on_failed(const error& err, const job_usage& usage) noexcept override;
    void on_profile(const profile_report& report) noexcept override;
    bool gone() const noexcept override { return gone_.load(std::memory_order_relaxed); }

    // io thread: moves what arrived into `out` (cleared first); true when anything did.
    bool take(events& out);
    // io thread: waits until something arrives (returns at once when something already has).
    boost::asio::awaitable<void> wait();
    // io thread: the client went away; the loop drops the job at its next step.
    void mark_gone() noexcept { gone_.store(true, std::memory_order_relaxed); }

private:
    void notify_locked() noexcept;  // posts the wake-up unless one is on its way

    boost::asio::io_context::executor_type executor_;
    boost::asio::steady_timer wake_;
    const std::size_t max_pending_bytes_;
    std::atomic<bool> gone_{false};

    std::mutex mutex_;
    std::vector<std::string> pieces_;   // guarded by mutex_
    std::vector<engine::token_logprob> logprobs_;  // guarded by mutex_
    std::size_t pending_bytes_ = 0;     // guarded by mutex_
    std::optional<finish> done_;        // guarded by mutex_
    std::optional<profile_report> profile_;  // guarded by mutex_; until taken
    bool done_taken_ = false;           // guarded by mutex_
    bool wake_posted_ = false;          // guarded by mutex_
};

}  // namespace moed::daemon
