// Helpers for the tiered expert source tests: a synthetic model with its resident source
// (the reference the tiered bytes are compared with), and test_reader, a block reader
// double that reads with pread inside submit() and hands completions to reap(). It can hold
// completions back (so a load stays "loading" as long as a test wants), stall submit() itself
// (so a test can see what the source's callers can do meanwhile), cap every read (short
// reads), fail chosen reads with an errno, and records how ops were submitted (and the
// offset of each, so a test can tell which expert was read when).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "storage/block_reader.h"
#include "storage/expert_source.h"
#include "storage/gguf.h"
#include "storage/tiered_expert_source.h"
#include "tests/support/synth_fixture.h"

namespace moed::storage::tiered_test {

// A small model whose expert matrices do not start on 4096-byte boundaries (Q8_0 rows of
// 64 values are 68 bytes), so the aligned-read/skew logic is exercised.
inline tools::synth_shape skewed_shape() {
    tools::synth_shape s;
    s.layers = 3;
    s.embd = 64;
    s.ff = 96;
    s.heads = 4;
    s.kv_heads = 2;
    s.head_dim = 16;
    s.experts = 8;
    s.experts_used = 2;
    s.vocab = 300;
    s.ctx = 64;
    return s;
}

struct model_fixture {
    std::string path;
    std::unique_ptr<gguf_file> file;
    expert_layout layout;
    std::unique_ptr<resident_expert_source> resident;
};

inline model_fixture load_model(const std::string& type, const tools::synth_shape& shape) {
    model_fixture m;
    m.path = test::synthetic_model(type, shape);
    auto file = gguf_file::open(m.path);
    EXPECT_TRUE(file) << file.error().message;
    if (!file) return m;
    m.file = std::move(file).value();
    auto layout = expert_layout::from_gguf(*m.file, test::stacked_names(shape.layers), static_cast<std::uint32_t>(shape.experts),
                                           shape.embd, shape.ff);
    EXPECT_TRUE(layout) << layout.error().message;
    if (!layout) return m;
    m.layout = std::move(layout).value();
    m.resident = std::make_unique<resident_expert_source>(*m.file, m.layout);
    return m;
}

inline std::vector<ExpertId> all_experts(const expert_layout& layout) {
    std::vector<ExpertId> ids;
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        for (std::uint32_t e = 0; e < layout.n_expert; ++e) ids.push_back(ExpertId{l, e});
    }
    return ids;
}

// Scored prefetch requests for `ids`, all of one class and score.
inline std::vector<prefetch_request> as_requests(const std::vector<ExpertId>& ids,
                                                 prefetch_class cls = prefetch_class::near, float score = 1.0f) {
    std::vector<prefetch_request> out;
    out.reserve(ids.size());
    for (const ExpertId& id : ids) out.push_back(prefetch_request{id, cls, score});
    return out;
}

inline bool same_matrix(const expert_matrix& a, const expert_matrix& b) {
    if (a.type != b.type || a.rows != b.rows || a.cols != b.cols || a.row_bytes != b.row_bytes) return false;
    if (a.data == nullptr || b.data == nullptr) return false;
    return std::memcmp(a.data, b.data, a.row_bytes * static_cast<std::size_t>(a.rows)) == 0;
}

// True when `h` holds exactly the resident source's bytes and shapes for its expert.
inline ::testing::AssertionResult same_as_resident(const expert_handle& h, resident_expert_source& resident) {
    if (!h.valid()) return ::testing::AssertionFailure() << "invalid handle";
    auto ref = resident.acquire(h.id(), device_id::host());
    if (!ref) return ::testing::AssertionFailure() << ref.error().message;
    const ExpertId id = h.id();
    if (!same_matrix(h.weights().gate, ref->weights().gate))
        return ::testing::AssertionFailure() << "gate of " << id.layer << "/" << id.expert << " differs";
    if (!same_matrix(h.weights().up, ref->weights().up))
        return ::testing::AssertionFailure() << "up of " << id.layer << "/" << id.expert << " differs";
    if (!same_matrix(h.weights().down, ref->weights().down))
        return ::testing::AssertionFailure() << "down of " << id.layer << "/" << id.expert << " differs";
    return ::testing::AssertionSuccess();
}

// Polls `done` (the completion thread works asynchronously); gives up after a bound on
// iterations, never asserting anything about how long it took.
inline bool eventually(const std::function<bool()>& done) {
    for (int k = 0; k < 20000; ++k) {
        if (done()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return done();
}

class test_reader final : public block_reader {
public:
    struct knobs {
        std::uint32_t alignment = 1;
        std::uint32_t queue_depth = 64;
        std::uint32_t max_read_bytes = 0;  // 0: reads are complete; else each read returns at most this
    };

    // State shared with the test, which keeps it after the reader moves into the source.
    struct control {
        std::atomic<std::uint64_t> reads{0};  // ops performed
        std::atomic<std::uint64_t> submits{0};
        std::atomic<std::uint64_t> largest_batch{0};
        std::atomic<std::uint64_t> first_batch{0};
        // Reads numbered [fail_from, fail_from + fail_count) (0-based, in order performed)
        // complete with -fail_errno.
        std::atomic<std::uint64_t> fail_from{~std::uint64_t{0}};
        std::atomic<std::uint64_t> fail_count{0};
        std::atomic<int> fail_errno{EIO};
        std::atomic<bool> hold{false};  // completions wait in the reader until released
        std::atomic<bool> stall_submit{false};  // submit() waits until released
        std::atomic<std::uint32_t> stalled{0};   // calls of submit() waiting now
        std::atomic<bool> change_identity{false};
        // The file offset of every op performed, in order (read under `offsets_mutex`).
        std::mutex offsets_mutex;
        std::vector<std::uint64_t> offsets;
        std::vector<std::uint64_t> offsets_copy() {
            std::lock_guard lock(offsets_mutex);
            return offsets;
        }
    };

    test_reader(const std::string& path, knobs k, std::shared_ptr<control> c)
        : path_(path), knobs_(k), control_(std::move(c)), fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
        EXPECT_GE(fd_, 0) << path << ": " << std::strerror(errno);
    }
    ~test_reader() override {
        if (fd_ >= 0) ::close(fd_);
    }

    io_mode mode() const noexcept override { return io_mode::pread_buffered; }
    std::uint32_t alignment() const noexcept override { return knobs_.alignment; }
    std::uint32_t queue_depth() const noexcept override { return knobs_.queue_depth; }
    const std::string& path() const noexcept override { return path_; }

    result<std::size_t> submit(std::span<const read_op> ops) override {
        if (control_->stall_submit.load()) {
            std::unique_lock stall(stall_mutex_);
            control_->stalled.fetch_add(1);
            stall_cv_.wait(stall, [&] { return !control_->stall_submit.load(); });
            control_->stalled.fetch_sub(1);
        }
        std::lock_guard lock(mutex_);
        const std::size_t room = knobs_.queue_depth - in_flight_;
        const std::size_t n = std::min(room, ops.size());
        control_->submits.fetch_add(1);
        std::uint64_t expected = 0;
        control_->first_batch.compare_exchange_strong(expected, ops.size());
        if (ops.size() > control_->largest_batch.load()) control_->largest_batch.store(ops.size());
        for (std::size_t k = 0; k < n; ++k) {
            const read_op& op = ops[k];
            EXPECT_EQ(op.offset % knobs_.alignment, 0u);
            EXPECT_EQ(op.length % knobs_.alignment, 0u);
            EXPECT_EQ(reinterpret_cast<std::uintptr_t>(op.dest) % knobs_.alignment, 0u);
            const std::uint64_t index = control_->reads.fetch_add(1);
            {
                std::lock_guard olock(control_->offsets_mutex);
                control_->offsets.push_back(op.offset);
            }
            std::int64_t res;
            if (index >= control_->fail_from.load() && index < control_->fail_from.load() + control_->fail_count.load()) {
                res = -control_->fail_errno.load();
            } else {
                std::size_t len = op.length;
                if (knobs_.max_read_bytes != 0) len = std::min<std::size_t>(len, knobs_.max_read_bytes);
                const ssize_t got = ::pread(fd_, op.dest, len, static_cast<off_t>(op.offset));
                res = got < 0 ? -errno : got;
            }
            done_.push_back(read_completion{op.user_data, res});
        }
        in_flight_ += n;
        cv_.notify_all();
        return n;
    }

    std::size_t reap(std::span<read_completion> out, bool wait) override {
        std::unique_lock lock(mutex_);
        if (wait) {
            cv_.wait(lock, [&] { return woken_ || (!done_.empty() && !control_->hold.load()); });
        }
        woken_ = false;
        if (control_->hold.load()) return 0;
        std::size_t n = 0;
        while (n < out.size() && !done_.empty()) {
            out[n++] = done_.front();
            done_.pop_front();
        }
        in_flight_ -= n;
        return n;
    }

    std::size_t in_flight() const noexcept override {
        std::lock_guard lock(mutex_);
        return in_flight_;
    }

    void wake() noexcept override {
        std::lock_guard lock(mutex_);
        woken_ = true;
        cv_.notify_all();
    }

    // Lets held completions go.
    void poke() {
        std::lock_guard lock(mutex_);
        cv_.notify_all();
    }
    // Lets stalled submits go.
    void unstall() {
        std::lock_guard lock(stall_mutex_);
        stall_cv_.notify_all();
    }

    result<file_identity> identity() const override {
        struct stat st{};
        if (::fstat(fd_, &st) != 0) return make_error(errc::io, "{}: fstat: {}", path_, std::strerror(errno));
        file_identity id{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                         static_cast<std::uint64_t>(st.st_size),
                         static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
        if (control_->change_identity.load()) id.mtime_ns += 1;
        return id;
    }

private:
    std::string path_;
    knobs knobs_;
    std::shared_ptr<control> control_;
    int fd_ = -1;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<read_completion> done_;
    std::size_t in_flight_ = 0;
    bool woken_ = false;
    std::mutex stall_mutex_;
    std::condition_variable stall_cv_;
};

// A test_reader plus the handles a test keeps on it.
struct reader_setup {
    std::shared_ptr<test_reader::control> control = std::make_shared<test_reader::control>();
    test_reader* raw = nullptr;
    std::unique_ptr<block_reader> make(const std::string& path, test_reader::knobs k = {}) {
        auto r = std::make_unique<test_reader>(path, k, control);
        raw = r.get();
        return r;
    }
    // Releases held completions.
    void release_held() {
        control->hold.store(false);
        raw->poke();
    }
    // Releases stalled submits.
    void release_submits() {
        control->stall_submit.store(false);
        raw->unstall();
    }
};

}  // namespace moed::storage::tiered_test
