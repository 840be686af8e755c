// systemd integration for Type=notify: readiness and status lines (sd_notify), and the
// watchdog pings systemd asks for through WATCHDOG_USEC. Everything is a no-op when the
// daemon does not run under systemd (NOTIFY_SOCKET unset).
// Threads: notify() from any thread; watchdog on the io_context thread.
#pragma once

#include <chrono>
#include <string_view>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

namespace moed::daemon {

// Sends `state` ("READY=1\nSTATUS=...") to systemd; failures are logged at debug level
// (a daemon outside systemd has nowhere to send them).
void notify(std::string_view state) noexcept;

// The ping interval systemd wants (half of WATCHDOG_USEC), or zero when it wants none.
std::chrono::microseconds watchdog_interval() noexcept;

// Pings WATCHDOG=1 every interval from the io_context thread: a socket thread that stops
// turning (blocked or dead) stops the pings and systemd restarts the daemon.
class watchdog {
public:
    explicit watchdog(boost::asio::io_context& io) : timer_(io) {}
    void start(std::chrono::microseconds interval);
    void stop() noexcept;

private:
    void arm() noexcept;
    boost::asio::steady_timer timer_;
    std::chrono::microseconds interval_{0};
    bool running_ = false;
};

}  // namespace moed::daemon
