// What the HTTP layer needs from the engine: submit a job, cancel it, read the queue and
// batch figures. The batch loop is the real implementation; the server tests use a fake
// that generates scripted tokens, so the socket layer is tested without a forward pass.
// Threads: called on the io_context thread; implementations must be thread-safe with
// respect to their own engine thread (the batch loop is).
#pragma once

#include <memory>

#include "common/result.h"
#include "common/status.h"
#include "daemon/batch_loop.h"

namespace moed::daemon {

class engine_port {
public:
    virtual ~engine_port() = default;
    // As batch_loop::submit: errc::invalid_argument (bad job), errc::out_of_memory (queue
    // full), errc::cancelled (shutting down). Exactly one finish event reaches an accepted
    // job's sink, on any thread.
    virtual result<job_id> submit(job_params params, std::shared_ptr<job_sink> sink) = 0;
    virtual void cancel(job_id id) noexcept = 0;
    // Fills queue, batch and request fields.
    virtual void snapshot(server_status& status) const = 0;
};

class batch_loop_port final : public engine_port {
public:
    explicit batch_loop_port(batch_loop& loop) : loop_(loop) {}
    result<job_id> submit(job_params params, std::shared_ptr<job_sink> sink) override {
        return loop_.submit(std::move(params), std::move(sink));
    }
    void cancel(job_id id) noexcept override { loop_.cancel(id); }
    void snapshot(server_status& status) const override { loop_.snapshot(status); }

private:
    batch_loop& loop_;
};

}  // namespace moed::daemon
