#include "daemon/job_channel.h"

#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/log.h"

namespace moed::daemon {

namespace asio = boost::asio;

job_channel::job_channel(asio::io_context::executor_type executor, std::size_t max_pending_bytes)
    : executor_(executor), wake_(executor), max_pending_bytes_(max_pending_bytes) {}

void job_channel::notify_locked() noexcept {
    if (wake_posted_) return;
    try {
        // The handler keeps the channel alive until it ran; it runs on the io thread, the
        // only one that touches the timer.
        asio::post(executor_, [self = shared_from_this()] {
            {
                std::lock_guard lock(self->mutex_);
                self->wake_posted_ = false;
            }
            self->wake_.cancel();
        });
        wake_posted_ = true;
    } catch (...) {
        // Out of memory posting: the connection would never learn of this event, so treat
        // the client as gone; the loop then cancels the job and its finish posts again.
        gone_.store(true, std::memory_order_relaxed);
        MOED_LOG_ERROR("http", "cannot post a job event to the socket thread; cancelling the job");
    }
}

void job_channel::on_token(engine::token_id, std::string_view text) noexcept {
    if (text.empty()) return;  // held back (a possible stop string) or a partial character
    std::lock_guard lock(mutex_);
    if (done_) return;
    try {
        pieces_.emplace_back(text);
    } catch (...) {
        gone_.store(true, std::memory_order_relaxed);
        return;
    }
    pending_bytes_ += text.size();
    if (pending_bytes_ > max_pending_bytes_ && !gone_.load(std::memory_order_relaxed)) {
        gone_.store(true, std::memory_order_relaxed);
        MOED_LOG_WARN("http", "client reads slower than the engine writes ({} bytes unread); cancelling its job",
                      pending_bytes_);
    }
    notify_locked();
}

void job_channel::on_logprob(const engine::token_logprob& lp) noexcept {
    std::lock_guard lock(mutex_);
    if (done_) return;
    try {
        logprobs_.push_back(lp);
    } catch (...) {
        gone_.store(true, std::memory_order_relaxed);
        return;
    }
    // Counted against the unread bound like text: about what the JSON of an entry costs.
    pending_bytes_ += 32 * (1 + lp.top.size());
    // No wake-up: the token's on_token follows at once and posts it.
}

void job_channel::on_done(std::string_view finish_reason, const job_usage& usage) noexcept {
    std::lock_guard lock(mutex_);
    if (done_) return;  // the contract says once; a second finish would be a loop bug
    try {
        done_ = finish{false, std::string(finish_reason), errc::internal, usage};
    } catch (...) {
        done_ = finish{false, {}, errc::internal, usage};
    }
    notify_locked();
}

void job_channel::on_failed(const error& err, const job_usage& usage) noexcept {
    std::lock_guard lock(mutex_);
    if (done_) return;
    try {
        done_ = finish{true, err.message, err.code, usage};
    } catch (...) {
        done_ = finish{true, {}, err.code, usage};
    }
    notify_locked();
}

void job_channel::on_profile(const profile_report& report) noexcept {
    std::lock_guard lock(mutex_);
    if (done_) return;
    try {
        profile_ = report;
    } catch (...) {
        return;  // out of memory copying a name: the response says "none"
    }
    notify_locked();
}

bool job_channel::take(events& out) {
    out.pieces.clear();
    out.done.reset();
    out.profile.reset();
    std::lock_guard lock(mutex_);
    out.pieces.swap(pieces_);
    out.logprobs.clear();
    out.logprobs.swap(logprobs_);
    out.profile = std::move(profile_);
    profile_.reset();
    pending_bytes_ = 0;
    if (done_ && !done_taken_) {
        out.done = std::move(*done_);
        done_taken_ = true;  // done_ stays engaged so late events stay ignored
    }
    return !out.pieces.empty() || !out.logprobs.empty() || out.done.has_value() || out.profile.has_value();
}

asio::awaitable<void> job_channel::wait() {
    {
        std::lock_guard lock(mutex_);
        // Events that came while the connection was busy writing: no need to sleep. The
        // posted wake-up that came with them may already have run (and cancelled nothing).
        if (!pieces_.empty() || !logprobs_.empty() || profile_ || (done_ && !done_taken_)) co_return;
    }
    wake_.expires_at(asio::steady_timer::time_point::max());
    boost::system::error_code ec;
    co_await wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
}

}  // namespace moed::daemon
