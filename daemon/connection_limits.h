// The HTTP server's admission of connections, over all its listeners together: at most
// `max_total` served at once, and at most `max_per_peer` from one peer, the peer being the
// local user (uid) on the other end of the Unix socket, or the remote address (not the
// port) of a TCP connection. Without the per-peer bound one user's idle or stalled
// connections could take every slot and lock every other user out (each for up to the read
// timeout, and again as soon as it ends). Every peer the kernel does not identify shares one
// key, so such peers are bounded together.
// A connection refused here is answered 503 and closed, and holds no slot while it is.
// Threads: the io_context thread only (no locking).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <unordered_map>

#include "common/assert.h"

namespace moed::daemon {

class connection_limits {
public:
    // A peer uid widened, so that the key of peers without credentials is no uid; TCP
    // addresses have keys above every uid (listener.h, tcp_peer).
    using peer_key = std::uint64_t;
    static constexpr peer_key unknown_peer = ~peer_key{0};
    static peer_key key_of(std::optional<uid_t> uid) noexcept { return uid ? peer_key{*uid} : unknown_peer; }

    enum class verdict : std::uint8_t { admitted, over_total, over_peer };

    connection_limits(std::uint32_t max_total, std::uint32_t max_per_peer) noexcept
        : max_total_(max_total), max_per_peer_(max_per_peer) {}

    // Counts a new connection of `key` when both limits leave room for it; the caller then
    // owes one release(key) when it ends.
    verdict admit(peer_key key) {
        if (total_ >= max_total_) return verdict::over_total;
        std::uint32_t& n = per_peer_[key];  // at most max_total_ keys exist: each counts >= 1
        if (n >= max_per_peer_) {
            if (n == 0) per_peer_.erase(key);
            return verdict::over_peer;
        }
        ++n;
        ++total_;
        return verdict::admitted;
    }

    void release(peer_key key) noexcept {
        auto it = per_peer_.find(key);
        MOED_ASSERT(it != per_peer_.end() && it->second > 0 && total_ > 0);
        if (--it->second == 0) per_peer_.erase(it);
        --total_;
    }

    std::uint32_t total() const noexcept { return total_; }
    std::uint32_t of(peer_key key) const noexcept {
        auto it = per_peer_.find(key);
        return it == per_peer_.end() ? 0 : it->second;
    }
    // New limits (a configuration reload): connections already admitted stay; new ones are
    // checked against these.
    void set_limits(std::uint32_t max_total, std::uint32_t max_per_peer) noexcept {
        max_total_ = max_total;
        max_per_peer_ = max_per_peer;
    }
    std::uint32_t max_total() const noexcept { return max_total_; }
    std::uint32_t max_per_peer() const noexcept { return max_per_peer_; }

private:
    std::uint32_t max_total_;
    std::uint32_t max_per_peer_;
    std::uint32_t total_ = 0;
    std::unordered_map<peer_key, std::uint32_t> per_peer_;  // keys with at least one connection
};

}  // namespace moed::daemon
