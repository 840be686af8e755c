#include "storage/fault_reader.h"

#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <string>
#include <system_error>

#include "common/log.h"

namespace moed::storage {

result<std::unique_ptr<fault_reader>> fault_reader::create(std::unique_ptr<block_reader> inner) {
    MOED_ASSERT(inner != nullptr);
    std::unique_ptr<fault_reader> reader(new fault_reader(std::move(inner)));
    try {
        reader->pump_ = std::thread([r = reader.get()] { r->pump_main(); });
    } catch (const std::system_error& e) {
        return make_error(errc::internal, "starting the fault reader thread for {}: {}", reader->path(), e.what());
    }
    return reader;
}

fault_reader::fault_reader(std::unique_ptr<block_reader> inner)
    : inner_(std::move(inner)), depth_(inner_->queue_depth()) {
    slots_.resize(depth_);
    free_slots_.reserve(depth_);
    for (std::uint32_t i = depth_; i > 0; --i) free_slots_.push_back(i - 1);
    due_heap_.reserve(depth_);
    forward_.reserve(depth_);
    op_slots_.reserve(depth_);
}

fault_reader::~fault_reader() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    // The wake is sticky, so it reaches the thread even if it is not yet waiting.
    inner_->wake();
    if (pump_.joinable()) pump_.join();
}

void fault_reader::pump_main() {
    pthread_setname_np(pthread_self(), "moed-fault-io");
    std::vector<read_completion> batch(depth_);
    for (;;) {
        const std::size_t n = inner_->reap(batch, true);
        std::lock_guard lock(mutex_);
        if (stopping_) return;
        for (std::size_t i = 0; i < n; ++i) {
            const auto index = static_cast<std::uint32_t>(batch[i].user_data);
            MOED_ASSERT(index < depth_);
            slots_[index].result = batch[i].result;
            push_due_locked(index);
        }
        if (n > 0) due_cv_.notify_all();
    }
}

void fault_reader::push_due_locked(std::uint32_t index) {
    due_heap_.push_back(due_entry{slots_[index].due, index});
    std::push_heap(due_heap_.begin(), due_heap_.end(), std::greater<>{});
}

result<std::size_t> fault_reader::submit(std::span<const read_op> ops) {
    if (ops.empty()) return std::size_t{0};
    std::lock_guard lock(mutex_);
    if (submit_failures_ > 0) {
        --submit_failures_;
        return make_error(errc::io, "{}: injected submit failure", inner_->path());
    }
    if (refuse_submits_) return std::size_t{0};
    const std::size_t k = std::min<std::size_t>(ops.size(), depth_ - in_flight_);
    if (k == 0) return std::size_t{0};

    // Pass 1: decide each op's fate and build what goes to the wrapped reader; nothing
    // persistent changes until we know how much of it the wrapped reader took.
    const std::uint32_t unit = std::max<std::uint32_t>(inner_->alignment(), 1);
    forward_.clear();
    op_slots_.clear();
    for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t number = reads_accepted_ + i;
        const std::uint32_t index = free_slots_[free_slots_.size() - 1 - i];
        op_slots_.push_back(index);
        const bool fails = std::any_of(failures_.begin(), failures_.end(),
                                       [number](const range_rule& r) { return r.covers(number); }) ||
                           (plan_.eio_every > 0 && number % plan_.eio_every < plan_.eio_burst);
        if (fails) continue;
        read_op forwarded = ops[i];
        forwarded.user_data = index;
        if (short_rule_.covers(number) || plan_.short_fraction > 0.0) {
            const double fraction = short_rule_.covers(number) ? short_fraction_ : plan_.short_fraction;
            const auto wanted = static_cast<std::uint64_t>(static_cast<double>(ops[i].length) * fraction);
            const std::uint64_t shortened = std::max<std::uint64_t>(unit, wanted / unit * unit);
            if (shortened < ops[i].length) forwarded.length = static_cast<std::uint32_t>(shortened);
        }
        forward_.push_back(forwarded);
    }
    std::size_t forwarded_taken = 0;
    if (!forward_.empty()) {
        auto taken = inner_->submit(forward_);
        if (!taken) return unexpected(std::move(taken).error());
        forwarded_taken = *taken;
    }

    // Pass 2: the accepted prefix ends before the first forwarded op the wrapped reader did
    // not take (it only ever takes a prefix).
    const clock::time_point now = clock::now();
    std::size_t accepted = 0;
    std::size_t forward_at = 0;
    bool notify = false;
    for (std::size_t i = 0; i < k; ++i) {
        const std::uint64_t number = reads_accepted_ + i;
        const std::uint32_t index = op_slots_[i];
        const bool forwarded = forward_at < forward_.size() && forward_[forward_at].user_data == index;
        if (forwarded && forward_at >= forwarded_taken) break;
        slot& s = slots_[index];
        s.user_data = ops[i].user_data;
        s.due = now + latency_;
        if (plan_.spike_every > 0 && number % plan_.spike_every == 0) s.due += std::chrono::microseconds(plan_.spike_us);
        if (plan_.replace_every > 0 && number > 0 && number % plan_.replace_every == 0) replaced_ = !replaced_;
        if (forwarded) {
            const std::uint32_t bytes = forward_[forward_at].length;
            if (bytes < ops[i].length) ++reads_shortened_;
            if (bandwidth_bytes_per_s_ > 0) {
                // The modelled disk starts this read when it finishes the ones before it.
                const auto transfer = std::chrono::nanoseconds(bytes * 1'000'000'000ull / bandwidth_bytes_per_s_);
                bandwidth_free_at_ = std::max(bandwidth_free_at_, now) + transfer;
                s.due = std::max(s.due, bandwidth_free_at_);
            }
            ++forward_at;
        } else {
            const auto rule = std::find_if(failures_.begin(), failures_.end(),
                                           [number](const range_rule& r) { return r.covers(number); });
            s.result = -static_cast<std::int64_t>(rule != failures_.end() ? rule->error_number : EIO);
            ++reads_failed_;
            push_due_locked(index);
            notify = true;
        }
        ++accepted;
    }
    free_slots_.resize(free_slots_.size() - accepted);
    reads_accepted_ += accepted;
    in_flight_ += accepted;
    if (notify) due_cv_.notify_all();
    return accepted;
}

std::size_t fault_reader::reap(std::span<read_completion> out, bool wait) {
    if (out.empty()) return 0;
    std::unique_lock lock(mutex_);
    for (;;) {
        const clock::time_point now = clock::now();
        std::size_t n = 0;
        while (n < out.size() && !due_heap_.empty() && due_heap_.front().due <= now) {
            std::pop_heap(due_heap_.begin(), due_heap_.end(), std::greater<>{});
            const std::uint32_t index = due_heap_.back().slot;
            due_heap_.pop_back();
            out[n++] = read_completion{slots_[index].user_data, slots_[index].result};
            free_slots_.push_back(index);
        }
        in_flight_ -= n;
        if (n > 0 || !wait) return n;
        if (wake_pending_) {
            wake_pending_ = false;
            return 0;
        }
        if (due_heap_.empty()) {
            due_cv_.wait(lock);
        } else {
            due_cv_.wait_until(lock, due_heap_.front().due);
        }
    }
}

std::size_t fault_reader::in_flight() const noexcept {
    std::lock_guard lock(mutex_);
    return in_flight_;
}

void fault_reader::wake() noexcept {
    {
        std::lock_guard lock(mutex_);
        wake_pending_ = true;
    }
    due_cv_.notify_all();
}

result<file_identity> fault_reader::identity() const {
    auto id = inner_->identity();
    if (!id) return id;
    std::lock_guard lock(mutex_);
    if (replaced_) {
        // What a rename over the file looks like: a new inode, a newer mtime.
        id->inode ^= 0x5a5a5a5a5a5a5a5aull;
        id->mtime_ns += 1'000'000'000;
    }
    return id;
}

void fault_reader::fail_reads(std::uint64_t first, std::uint64_t count, int error_number) {
    MOED_ASSERT(error_number > 0);
    std::lock_guard lock(mutex_);
    failures_.push_back(range_rule{first, count, error_number});
}

void fault_reader::fail_all_reads(int error_number) {
    MOED_ASSERT(error_number > 0);
    std::lock_guard lock(mutex_);
    failures_.push_back(range_rule{reads_accepted_, forever, error_number});
}

void fault_reader::clear_failures() {
    std::lock_guard lock(mutex_);
    failures_.clear();
}

void fault_reader::set_short_reads(double fraction, std::uint64_t first, std::uint64_t count) {
    MOED_ASSERT(fraction > 0.0 && fraction < 1.0);
    std::lock_guard lock(mutex_);
    short_fraction_ = fraction;
    short_rule_ = range_rule{first, count, 0};
}

void fault_reader::clear_short_reads() {
    std::lock_guard lock(mutex_);
    short_fraction_ = 1.0;
    short_rule_ = range_rule{};
}

void fault_reader::set_latency(std::chrono::nanoseconds per_read) {
    std::lock_guard lock(mutex_);
    latency_ = std::max(per_read, std::chrono::nanoseconds{0});
}

void fault_reader::set_bandwidth_cap(std::uint64_t bytes_per_s) {
    std::lock_guard lock(mutex_);
    bandwidth_bytes_per_s_ = bytes_per_s;
}

void fault_reader::set_plan(const fault_plan& plan) {
    std::lock_guard lock(mutex_);
    plan_ = plan;
}

void fault_reader::set_file_replaced(bool replaced) {
    std::lock_guard lock(mutex_);
    replaced_ = replaced;
}

void fault_reader::fail_submits(std::uint64_t count) {
    std::lock_guard lock(mutex_);
    submit_failures_ = count;
}

void fault_reader::refuse_submits(bool refuse) {
    std::lock_guard lock(mutex_);
    refuse_submits_ = refuse;
}

void fault_reader::clear_all() {
    std::lock_guard lock(mutex_);
    failures_.clear();
    submit_failures_ = 0;
    refuse_submits_ = false;
    short_fraction_ = 1.0;
    short_rule_ = range_rule{};
    latency_ = std::chrono::nanoseconds{0};
    bandwidth_bytes_per_s_ = 0;
    replaced_ = false;
    plan_ = fault_plan{};
}

std::uint64_t fault_reader::reads_accepted() const {
    std::lock_guard lock(mutex_);
    return reads_accepted_;
}

std::uint64_t fault_reader::reads_failed() const {
    std::lock_guard lock(mutex_);
    return reads_failed_;
}

std::uint64_t fault_reader::reads_shortened() const {
    std::lock_guard lock(mutex_);
    return reads_shortened_;
}

result<fault_plan> parse_fault_plan(std::string_view text) {
    fault_plan plan;
    while (!text.empty()) {
        const std::size_t comma = text.find(',');
        const std::string_view item = text.substr(0, comma);
        text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
        const std::size_t eq = item.find('=');
        if (eq == std::string_view::npos) {
            return make_error(errc::invalid_argument, "fault '{}': expected name=value", item);
        }
        const std::string_view name = item.substr(0, eq);
        const std::string value(item.substr(eq + 1));
        char* end = nullptr;
        errno = 0;
        if (name == "short") {
            const double f = std::strtod(value.c_str(), &end);
            if (value.empty() || *end != '\0' || errno != 0 || !(f > 0.0 && f < 1.0)) {
                return make_error(errc::invalid_argument, "fault 'short': '{}' is not a fraction in (0, 1)", value);
            }
            plan.short_fraction = f;
            continue;
        }
        const unsigned long long n = std::strtoull(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || errno != 0 || value[0] == '-') {
            return make_error(errc::invalid_argument, "fault '{}': '{}' is not a count", name, value);
        }
        if (name == "eio_every") plan.eio_every = n;
        else if (name == "eio_burst") plan.eio_burst = n;
        else if (name == "spike_every") plan.spike_every = n;
        else if (name == "spike_us") plan.spike_us = n;
        else if (name == "replace_every") plan.replace_every = n;
        else {
            return make_error(errc::invalid_argument,
                              "fault '{}' is unknown (eio_every, eio_burst, short, spike_every, spike_us, replace_every)",
                              name);
        }
    }
    if (plan.eio_every > 0 && (plan.eio_burst == 0 || plan.eio_burst > plan.eio_every)) {
        return make_error(errc::invalid_argument, "fault 'eio_burst' = {} must be in [1, eio_every = {}]",
                          plan.eio_burst, plan.eio_every);
    }
    if (plan.spike_us > 60'000'000) {
        return make_error(errc::invalid_argument, "fault 'spike_us' = {} is above a minute", plan.spike_us);
    }
    return plan;
}

}  // namespace moed::storage
