// A mover brings experts into a tier's slots from the level below: block_mover reads them
// from the model file into host memory through the block reader; a device tier's mover
// copies them from host memory into device memory on a copy stream. The tier core deals in
// whole loads only: it queues the load of one expert into one slot, submits, and later
// reaps exactly one result per load. Everything about how the bytes travel (chunking,
// resuming short transfers, retrying transient errors, checking the source afterwards)
// stays inside the mover.
//
// A load's life: queue() (under the tier's lock: cheap, no I/O) -> submit() (without the
// tier's lock: hands every queued load to the device; one that cannot be handed over ends
// as failed) -> the device moves the bytes -> reap() returns its move_result. A load that
// could not be submitted is reported through reap() too, so the tier fails it under its
// lock like any other, and no caller of submit() has anything to undo.
//
// Threads: queue() from any thread, with the tier's lock held (the mover takes only its own
// small lock, so the lock order is tier, then mover; a mover never calls into the tier).
// submit() from any thread, without the tier's lock. reap() from one thread at a time (the
// tier's completion thread). stop() from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include <fmt/format.h>

#include "common/ids.h"
#include "common/result.h"

namespace moed::storage {

// Builds an error without letting an allocation failure escape: movers and tiers build
// errors on completion threads, which nothing may leave by an exception.
template <typename... Args>
moed::error error_noexcept(errc code, fmt::format_string<Args...> format, Args&&... args) noexcept {
    try {
        return moed::error{code, fmt::format(format, std::forward<Args>(args)...)};
    } catch (...) {
        return moed::error{code, {}};
    }
}

// How a load ended.
enum class move_status : std::uint8_t {
    ok = 0,
    failed = 1,          // the load failed (error says why); the source is as it was
    source_ended = 2,    // the source ended before the expert did: it shrank underneath
    source_changed = 3,  // the source is no longer what the mover opened: changed in place
};

struct move_result {
    std::uint32_t slot = 0;
    move_status status = move_status::ok;
    // Why the load failed (failed, source_ended; empty for source_changed, where the tier
    // words it from the source's state).
    moed::error error;
    // What happened to the source (source_ended, source_changed), naming it.
    moed::error source_error;
    std::uint64_t bytes = 0;   // bytes that arrived, also of a load that failed
    std::uint32_t errors = 0;  // transfers that failed, whether retried or not
};

class mover {
public:
    virtual ~mover() = default;

    // Queues the load of expert `id` into `slot` (which no other load of this mover uses).
    // Never blocks on I/O; the load starts at the next submit().
    virtual void queue(std::uint32_t slot, ExpertId id) = 0;
    // Hands every queued load to the device. Never blocks on I/O; a device that is full
    // takes the rest as transfers finish (reap() hands them over).
    virtual void submit() noexcept = 0;
    // Moves results of ended loads into `out` and returns their count. With `wait`, blocks
    // until at least one load ends or stop() is called. After stop() it returns no results:
    // it waits for the transfers still on the device and returns 0 once none remain, and
    // drained() turns true.
    virtual std::size_t reap(std::span<move_result> out, bool wait) = 0;
    // Drops queued loads, stops retrying and wakes reap(). Loads not yet reported are never
    // reported. The tier calls it when it shuts down.
    virtual void stop() noexcept = 0;
    virtual bool drained() const noexcept = 0;
    // Loads queued, moving, or ended and not yet reaped.
    virtual std::size_t loads_in_flight() const noexcept = 0;
};

}  // namespace moed::storage
