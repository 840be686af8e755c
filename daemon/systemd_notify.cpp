#include "daemon/systemd_notify.h"

#include <systemd/sd-daemon.h>

#include <cstring>
#include <string>

#include "common/log.h"

namespace moed::daemon {

void notify(std::string_view state) noexcept {
    try {
        const std::string text(state);
        const int rc = ::sd_notify(0, text.c_str());
        if (rc < 0) MOED_LOG_DEBUG("systemd", "sd_notify failed: {}", std::strerror(-rc));
    } catch (...) {
        // Only the string copy can throw (out of memory); a lost status line is harmless.
    }
}

std::chrono::microseconds watchdog_interval() noexcept {
    std::uint64_t usec = 0;
    // unset_environment = 0: children (none) and a re-exec keep seeing the setting.
    if (::sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::chrono::microseconds{0};
    return std::chrono::microseconds{usec / 2};
}

void watchdog::start(std::chrono::microseconds interval) {
    if (interval.count() <= 0) return;
    interval_ = interval;
    running_ = true;
    notify("WATCHDOG=1");
    arm();
}

void watchdog::stop() noexcept {
    running_ = false;
    timer_.cancel();
}

void watchdog::arm() noexcept {
    try {
        timer_.expires_after(interval_);
        timer_.async_wait([this](const boost::system::error_code& ec) {
            if (ec || !running_) return;
            notify("WATCHDOG=1");
            arm();
        });
    } catch (const std::exception& e) {
        // Without the timer no more pings go out; systemd will restart the daemon, which
        // is the right outcome for a process that cannot allocate a timer operation.
        MOED_LOG_ERROR("systemd", "watchdog timer failed: {}", e.what());
    }
}

}  // namespace moed::daemon
