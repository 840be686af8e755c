// The block reader (storage/block_reader.h) and its fault-injecting wrapper.
//
// What it checks, and how:
// - Every backend (uring_direct, uring_buffered, pread_direct, pread_buffered, forced with
//   the allow_* options) reads random aligned ranges of a 64 MiB file whose every 8-byte
//   word is a known function of its offset, and returns exactly the file's bytes; reads
//   land both inside the registered region (READ_FIXED) and outside it (plain READ).
// - Results are truthful: a read that crosses the end of the file returns the bytes that
//   exist, a read at the end returns 0, a misaligned O_DIRECT read returns -EINVAL.
// - submit() accepts at most the free slots of the queue depth; reap(wait) returns on
//   wake() from another thread, and a wake() before the reap is not lost.
// - Fallbacks: a file on tmpfs reads right whichever mode the kernel allows (tmpfs takes
//   O_DIRECT since 6.6); a refused O_DIRECT (simulated with open_overrides) and an
//   unavailable io_uring (simulated EPERM) fall back with exactly one warning naming the
//   mode and the reason. Errors name the file.
// - identity() is the file's fstat and changes when the file is rewritten.
// - The fault reader: EIO on the nth read and on a range, EINTR/EAGAIN, short reads,
//   latency and a bandwidth cap (only lower bounds on elapsed time, never upper), a
//   "replaced" identity, all switched on and off between requests.
// Wall time is never asserted from above: the machine is shared.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "storage/block_reader.h"
#include "storage/block_reader_open.h"
#include "storage/fault_reader.h"
#include "storage/uring_reader.h"
#include "tests/storage/block_reader_test_util.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

using namespace test_util;

constexpr std::uint64_t file_bytes = 64ull << 20;
const std::filesystem::path& pattern_file() {
    static const std::filesystem::path path = [] {
        auto p = test::temp_dir() / "pattern.bin";
        write_pattern_file(p, file_bytes);
        return p;
    }();
    return path;
}

// Submits every op (as slots allow) and reaps until all are back; returns completions in
// op order (user_data is the op's index).
std::vector<read_completion> run_all(block_reader& reader, const std::vector<read_op>& ops) {
    std::vector<read_completion> done(ops.size(), read_completion{~0ull, 0});
    std::vector<read_completion> batch(16);
    std::size_t next = 0;
    std::size_t reaped = 0;
    while (reaped < ops.size()) {
        if (next < ops.size()) {
            auto accepted = reader.submit(std::span(ops).subspan(next));
            EXPECT_TRUE(accepted.has_value());
            if (!accepted) return done;
            EXPECT_LE(reader.in_flight(), reader.queue_depth());
            next += *accepted;
        }
        const std::size_t n = reader.reap(batch, true);
        for (std::size_t i = 0; i < n; ++i) done.at(batch[i].user_data) = batch[i];
        reaped += n;
    }
    return done;
}

struct mode_case {
    bool allow_uring;
    bool allow_direct;
    io_mode expect;
};

class block_reader_modes : public ::testing::TestWithParam<mode_case> {};

TEST_P(block_reader_modes, random_aligned_ranges_return_the_files_bytes) {
    const mode_case& c = GetParam();
    constexpr std::uint32_t depth = 8;
    constexpr std::uint32_t max_len = 256 * 1024;
    aligned_buffer region(depth * max_len);
    aligned_buffer outside(depth * max_len);
    block_reader_options options;
    options.path = pattern_file();
    options.queue_depth = depth;
    options.allow_uring = c.allow_uring;
    options.allow_direct = c.allow_direct;
    options.registered_region = {region.data, region.bytes};
    auto opened = open_block_reader(options);
    ASSERT_TRUE(opened.has_value()) << opened.error().message;
    block_reader& reader = **opened;
    EXPECT_EQ(reader.mode(), c.expect) << io_mode_name(reader.mode());
    EXPECT_EQ(reader.queue_depth(), depth);
    EXPECT_EQ(reader.path(), options.path);
    const bool direct = c.expect == io_mode::uring_direct || c.expect == io_mode::pread_direct;
    if (direct) {
        EXPECT_GE(reader.alignment(), 512u);
        EXPECT_EQ(reader.alignment() & (reader.alignment() - 1), 0u);
    } else {
        EXPECT_EQ(reader.alignment(), 1u);
    }
    if (auto* uring = dynamic_cast<uring_reader*>(&reader)) {
        EXPECT_TRUE(uring->buffers_registered());
        EXPECT_TRUE(uring->file_registered());
    }

    std::mt19937_64 rng(42);
    const std::uint32_t unit = std::max<std::uint32_t>(reader.alignment(), 512);
    for (int round = 0; round < 20; ++round) {
        std::vector<read_op> ops;
        for (std::uint32_t i = 0; i < depth; ++i) {
            const std::uint32_t length = unit * static_cast<std::uint32_t>(1 + rng() % (max_len / unit));
            const std::uint64_t offset = unit * (rng() % ((file_bytes - length) / unit + 1));
            // Alternate inside the registered region (READ_FIXED) and outside it (READ).
            std::byte* dest = ((round + i) % 2 == 0 ? region.data : outside.data) + i * max_len;
            std::memset(dest, 0xee, length);
            ops.push_back(read_op{offset, length, dest, i});
        }
        const auto done = run_all(reader, ops);
        for (std::uint32_t i = 0; i < depth; ++i) {
            ASSERT_EQ(done[i].user_data, i);
            ASSERT_EQ(done[i].result, ops[i].length) << "op " << i << " round " << round;
            ASSERT_TRUE(matches_file(ops[i].dest, ops[i].offset, ops[i].length)) << "op " << i << " round " << round;
        }
    }
    EXPECT_EQ(reader.in_flight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(all, block_reader_modes,
                         ::testing::Values(mode_case{true, true, io_mode::uring_direct},
                                           mode_case{true, false, io_mode::uring_buffered},
                                           mode_case{false, true, io_mode::pread_direct},
                                           mode_case{false, false, io_mode::pread_buffered}),
                         [](const auto& param_info) { return std::string(io_mode_name(param_info.param.expect)); });


std::unique_ptr<block_reader> open_or_die(const std::string& path, std::uint32_t depth, bool uring = true,
                                          bool direct = true) {
    block_reader_options options;
    options.path = path;
    options.queue_depth = depth;
    options.allow_uring = uring;
    options.allow_direct = direct;
    auto opened = open_block_reader(options);
    EXPECT_TRUE(opened.has_value()) << opened.error().message;
    return opened ? std::move(*opened) : nullptr;
}

// Counts the lines with "warn" in captured stderr.
int warning_lines(const std::string& text) {
    int n = 0;
    for (std::size_t at = 0; (at = text.find("warn [storage]", at)) != std::string::npos; ++at) ++n;
    return n;
}

class block_reader_each_mode : public ::testing::TestWithParam<mode_case> {};

TEST_P(block_reader_each_mode, reads_at_the_end_of_the_file_are_short_and_truthful) {
    // A file whose size is not a multiple of any block size.
    const auto path = test::temp_dir() / "odd_size.bin";
    constexpr std::uint64_t odd_bytes = 3 * 65536 + 1000;
    write_pattern_file(path, odd_bytes);
    auto reader = open_or_die(path, 4, GetParam().allow_uring, GetParam().allow_direct);
    ASSERT_TRUE(reader);
    aligned_buffer buffer(4 * 65536);
    const std::vector<read_op> ops = {
        {2 * 65536, 2 * 65536, buffer.data, 0},           // crosses the end: 65536 + 1000 bytes
        {4 * 65536, 65536, buffer.data + 2 * 65536, 1},  // wholly past the end: 0 bytes
    };
    const auto done = run_all(*reader, ops);
    EXPECT_EQ(done[0].result, static_cast<std::int64_t>(65536 + 1000));
    EXPECT_TRUE(matches_file(buffer.data, 2 * 65536, 65536 + 1000));
    EXPECT_EQ(done[1].result, 0);
}

TEST_P(block_reader_each_mode, submit_accepts_at_most_the_free_slots) {
    constexpr std::uint32_t depth = 4;
    auto reader = open_or_die(pattern_file(), depth, GetParam().allow_uring, GetParam().allow_direct);
    ASSERT_TRUE(reader);
    aligned_buffer buffer(10 * page);
    std::vector<read_op> ops;
    for (std::uint32_t i = 0; i < 10; ++i) ops.push_back(read_op{i * 1024ull * page, page, buffer.data + i * page, i});
    auto first = reader->submit(ops);
    ASSERT_TRUE(first.has_value());
    EXPECT_EQ(*first, depth);
    EXPECT_EQ(reader->in_flight(), depth);
    auto second = reader->submit(std::span(ops).subspan(depth));
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(*second, 0u);  // completed but unreaped reads still hold their slots
    std::vector<read_completion> out(2);
    std::size_t got = 0;
    while (got == 0) got = reader->reap(out, true);
    EXPECT_EQ(reader->in_flight(), depth - got);
    auto third = reader->submit(std::span(ops).subspan(depth));
    ASSERT_TRUE(third.has_value());
    EXPECT_EQ(*third, got);
    EXPECT_EQ(reader->in_flight(), depth);
    // Drain; every read returns its bytes.
    std::vector<read_completion> rest(depth);
    std::size_t remaining = depth;
    while (remaining > 0) {
        const std::size_t n = reader->reap(rest, true);
        for (std::size_t i = 0; i < n; ++i) {
            EXPECT_EQ(rest[i].result, page);
            EXPECT_TRUE(matches_file(buffer.data + rest[i].user_data * page, rest[i].user_data * 1024ull * page, page));
        }
        remaining -= n;
    }
    EXPECT_EQ(reader->in_flight(), 0u);
    EXPECT_EQ(reader->reap(rest, false), 0u);
}

TEST_P(block_reader_each_mode, reap_wait_returns_on_wake_from_another_thread) {
    auto reader = open_or_die(pattern_file(), 4, GetParam().allow_uring, GetParam().allow_direct);
    ASSERT_TRUE(reader);
    std::vector<read_completion> out(4);
    for (int round = 0; round < 3; ++round) {
        std::atomic<bool> returned{false};
        std::thread reaper([&] {
            EXPECT_EQ(reader->reap(out, true), 0u);
            returned = true;
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        EXPECT_FALSE(returned.load());  // nothing in flight: it must be waiting
        reader->wake();
        reaper.join();
        EXPECT_TRUE(returned.load());
    }
    // A wake before the reap is kept for it.
    reader->wake();
    EXPECT_EQ(reader->reap(out, true), 0u);
    // Many wakes collapse into (at least) one return, and do not break later reads.
    for (int i = 0; i < 1000; ++i) reader->wake();
    EXPECT_EQ(reader->reap(out, true), 0u);
    aligned_buffer buffer(page);
    const std::vector<read_op> ops = {{0, page, buffer.data, 0}};
    const auto done = run_all(*reader, ops);
    EXPECT_EQ(done[0].result, page);
}

TEST_P(block_reader_each_mode, identity_is_the_files_and_changes_when_it_is_rewritten) {
    const auto path = test::temp_dir() / "identity.bin";
    write_pattern_file(path, 1 << 20);
    auto reader = open_or_die(path, 2, GetParam().allow_uring, GetParam().allow_direct);
    ASSERT_TRUE(reader);
    auto before = reader->identity();
    ASSERT_TRUE(before.has_value());
    struct stat st{};
    ASSERT_EQ(::stat(path.c_str(), &st), 0);
    EXPECT_EQ(before->inode, st.st_ino);
    EXPECT_EQ(before->device, st.st_dev);
    EXPECT_EQ(before->size_bytes, 1u << 20);
    // Changed in place: size and mtime move.
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    {
        const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(::write(fd, "x", 1), 1);
        ::close(fd);
    }
    auto after = reader->identity();
    ASSERT_TRUE(after.has_value());
    EXPECT_NE(*before, *after);
    EXPECT_EQ(after->size_bytes, (1u << 20) + 1);
}

INSTANTIATE_TEST_SUITE_P(all, block_reader_each_mode,
                         ::testing::Values(mode_case{true, true, io_mode::uring_direct},
                                           mode_case{true, false, io_mode::uring_buffered},
                                           mode_case{false, true, io_mode::pread_direct},
                                           mode_case{false, false, io_mode::pread_buffered}),
                         [](const auto& param_info) { return std::string(io_mode_name(param_info.param.expect)); });

TEST(block_reader, misaligned_direct_read_reports_einval) {
    auto reader = open_or_die(pattern_file(), 2);
    ASSERT_TRUE(reader);
    if (reader->alignment() == 1) GTEST_SKIP() << "O_DIRECT not in use here";
    aligned_buffer buffer(2 * page);
    const std::vector<read_op> ops = {{1, page, buffer.data, 0}};
    const auto done = run_all(*reader, ops);
    EXPECT_EQ(done[0].result, -EINVAL);
}

TEST(block_reader, file_on_tmpfs_reads_right_in_whichever_mode_the_kernel_allows) {
    if (!std::filesystem::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
    const auto path = std::filesystem::path("/dev/shm") / ("moed-block-reader-" + std::to_string(::getpid()));
    write_pattern_file(path, 1 << 20);
    testing::internal::CaptureStderr();
    auto reader = open_or_die(path, 4);
    const std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(reader);
    if (reader->mode() == io_mode::uring_buffered || reader->mode() == io_mode::pread_buffered) {
        // A kernel before 6.6 refuses O_DIRECT on tmpfs: one warning naming it.
        EXPECT_EQ(warning_lines(log), 1) << log;
        EXPECT_NE(log.find("O_DIRECT refused by tmpfs"), std::string::npos) << log;
        EXPECT_EQ(reader->alignment(), 1u);
    }
    aligned_buffer buffer(1 << 20);
    const std::vector<read_op> ops = {{0, 1 << 19, buffer.data, 0}, {1 << 19, 1 << 19, buffer.data + (1 << 19), 1}};
    const auto done = run_all(*reader, ops);
    EXPECT_EQ(done[0].result, 1 << 19);
    EXPECT_EQ(done[1].result, 1 << 19);
    EXPECT_TRUE(matches_file(buffer.data, 0, 1 << 20));
    std::filesystem::remove(path);
}

TEST(block_reader, refused_direct_falls_back_to_buffered_with_one_warning) {
    block_reader_options options;
    options.path = pattern_file();
    options.queue_depth = 4;
    testing::internal::CaptureStderr();
    auto opened = open_block_reader(options, open_overrides{.direct_open_errno = EINVAL});
    const std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(opened.has_value()) << opened.error().message;
    EXPECT_EQ((*opened)->mode(), io_mode::uring_buffered);
    EXPECT_EQ((*opened)->alignment(), 1u);
    EXPECT_EQ(warning_lines(log), 1) << log;
    EXPECT_NE(log.find("uring_buffered"), std::string::npos) << log;
    EXPECT_NE(log.find("O_DIRECT refused by"), std::string::npos) << log;
    EXPECT_NE(log.find(options.path), std::string::npos) << log;
}

TEST(block_reader, unavailable_io_uring_falls_back_to_pread_with_one_warning) {
    for (const int e : {EPERM, ENOSYS}) {
        block_reader_options options;
        options.path = pattern_file();
        options.queue_depth = 4;
        testing::internal::CaptureStderr();
        auto opened = open_block_reader(options, open_overrides{.uring_init_errno = e});
        const std::string log = testing::internal::GetCapturedStderr();
        ASSERT_TRUE(opened.has_value()) << opened.error().message;
        EXPECT_EQ((*opened)->mode(), io_mode::pread_direct);
        EXPECT_EQ(warning_lines(log), 1) << log;
        EXPECT_NE(log.find("pread_direct"), std::string::npos) << log;
        EXPECT_NE(log.find("io_uring unavailable"), std::string::npos) << log;
        aligned_buffer buffer(page);
        const std::vector<read_op> ops = {{page, page, buffer.data, 0}};
        const auto done = run_all(**opened, ops);
        EXPECT_EQ(done[0].result, page);
        EXPECT_TRUE(matches_file(buffer.data, page, page));
    }
    // Both at once: buffered pread, still one warning that gives both reasons.
    block_reader_options options;
    options.path = pattern_file();
    testing::internal::CaptureStderr();
    auto opened = open_block_reader(options, open_overrides{.direct_open_errno = EINVAL, .uring_init_errno = EPERM});
    const std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(opened.has_value());
    EXPECT_EQ((*opened)->mode(), io_mode::pread_buffered);
    EXPECT_EQ(warning_lines(log), 1) << log;
    EXPECT_NE(log.find("O_DIRECT refused"), std::string::npos) << log;
    EXPECT_NE(log.find("io_uring unavailable"), std::string::npos) << log;
}

TEST(block_reader, forced_modes_log_no_warning) {
    testing::internal::CaptureStderr();
    auto reader = open_or_die(pattern_file(), 4, false, false);
    const std::string log = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(reader);
    EXPECT_EQ(warning_lines(log), 0) << log;
}

TEST(block_reader, errors_name_the_file) {
    block_reader_options options;
    options.path = (test::temp_dir() / "no-such-model.gguf").string();
    auto missing = open_block_reader(options);
    ASSERT_FALSE(missing.has_value());
    EXPECT_EQ(missing.error().code, errc::not_found);
    EXPECT_NE(missing.error().message.find(options.path), std::string::npos) << missing.error().message;

    options.path = test::temp_dir().string();  // a directory
    auto directory = open_block_reader(options);
    ASSERT_FALSE(directory.has_value());
    EXPECT_NE(directory.error().message.find(options.path), std::string::npos) << directory.error().message;

    options.path = pattern_file();
    options.queue_depth = 0;
    auto zero = open_block_reader(options);
    ASSERT_FALSE(zero.has_value());
    EXPECT_EQ(zero.error().code, errc::invalid_argument);
    options.queue_depth = max_queue_depth + 1;
    EXPECT_FALSE(open_block_reader(options).has_value());

    if (::geteuid() != 0) {  // root reads anything, so the permission case needs a user
        const auto locked = test::temp_dir() / "locked.bin";
        write_pattern_file(locked, page);
        ::chmod(locked.c_str(), 0);
        options.path = locked.string();
        options.queue_depth = 4;
        auto denied = open_block_reader(options);
        ASSERT_FALSE(denied.has_value());
        EXPECT_NE(denied.error().message.find(options.path), std::string::npos) << denied.error().message;
        EXPECT_NE(denied.error().message.find("EACCES"), std::string::npos) << denied.error().message;
    }
}

TEST(block_reader, io_mode_names) {
    EXPECT_EQ(io_mode_name(io_mode::uring_direct), "uring_direct");
    EXPECT_EQ(io_mode_name(io_mode::uring_buffered), "uring_buffered");
    EXPECT_EQ(io_mode_name(io_mode::pread_direct), "pread_direct");
    EXPECT_EQ(io_mode_name(io_mode::pread_buffered), "pread_buffered");
}

TEST(block_reader, uring_without_registered_region_uses_plain_reads) {
    auto reader = open_or_die(pattern_file(), 4);
    ASSERT_TRUE(reader);
    if (auto* uring = dynamic_cast<uring_reader*>(reader.get())) {
        EXPECT_FALSE(uring->buffers_registered());
    }
    aligned_buffer buffer(4 * page);
    const std::vector<read_op> ops = {{0, 4 * page, buffer.data, 0}};
    EXPECT_EQ(run_all(*reader, ops)[0].result, 4 * page);
    EXPECT_TRUE(matches_file(buffer.data, 0, 4 * page));
}

// --- The fault reader ---

std::unique_ptr<fault_reader> make_fault_reader(std::uint32_t depth = 8, bool uring = true) {
    auto inner = open_or_die(pattern_file(), depth, uring);
    if (!inner) return nullptr;
    auto made = fault_reader::create(std::move(inner));
    EXPECT_TRUE(made.has_value());
    return made ? std::move(*made) : nullptr;
}

std::vector<read_op> sequential_ops(aligned_buffer& buffer, std::uint32_t n, std::uint32_t length) {
    std::vector<read_op> ops;
    for (std::uint32_t i = 0; i < n; ++i) ops.push_back(read_op{std::uint64_t{i} * length, length, buffer.data + std::size_t{i} * length, i});
    return ops;
}

class fault_reader_backends : public ::testing::TestWithParam<bool> {};

TEST_P(fault_reader_backends, fails_the_nth_read_and_ranges_then_recovers) {
    auto reader = make_fault_reader(8, GetParam());
    ASSERT_TRUE(reader);
    aligned_buffer buffer(16 * page);
    reader->fail_nth_read(3, EIO);
    reader->fail_reads(10, 3, EINTR);
    reader->fail_reads(14, 1, EAGAIN);
    const auto ops = sequential_ops(buffer, 16, page);
    const auto done = run_all(*reader, ops);
    for (std::uint32_t i = 0; i < 16; ++i) {
        std::int64_t expect = page;
        if (i == 3) expect = -EIO;
        if (i >= 10 && i < 13) expect = -EINTR;
        if (i == 14) expect = -EAGAIN;
        EXPECT_EQ(done[i].result, expect) << "read " << i;
        if (expect > 0) {
            EXPECT_TRUE(matches_file(ops[i].dest, ops[i].offset, page)) << "read " << i;
        }
    }
    EXPECT_EQ(reader->reads_accepted(), 16u);
    EXPECT_EQ(reader->reads_failed(), 5u);

    // Until cleared, everything fails; afterwards everything reads.
    reader->fail_all_reads(EIO);
    for (const auto& c : run_all(*reader, sequential_ops(buffer, 4, page))) EXPECT_EQ(c.result, -EIO);
    reader->clear_failures();
    for (const auto& c : run_all(*reader, sequential_ops(buffer, 4, page))) EXPECT_EQ(c.result, page);
    EXPECT_EQ(reader->in_flight(), 0u);
}

TEST_P(fault_reader_backends, short_reads_report_the_bytes_read) {
    auto reader = make_fault_reader(8, GetParam());
    ASSERT_TRUE(reader);
    aligned_buffer buffer(8 * 16 * page);
    reader->set_short_reads(0.5, 2, 3);  // reads 2, 3, 4 get half
    const auto ops = sequential_ops(buffer, 8, 16 * page);
    const auto done = run_all(*reader, ops);
    for (std::uint32_t i = 0; i < 8; ++i) {
        const std::int64_t expect = (i >= 2 && i <= 4) ? 8 * page : 16 * page;
        EXPECT_EQ(done[i].result, expect) << "read " << i;
        EXPECT_TRUE(matches_file(ops[i].dest, ops[i].offset, static_cast<std::size_t>(done[i].result)));
    }
    EXPECT_EQ(reader->reads_shortened(), 3u);
    // A tiny fraction still reads one aligned block, never zero bytes (zero means EOF).
    reader->set_short_reads(0.001);
    const auto tiny = run_all(*reader, sequential_ops(buffer, 1, 16 * page));
    EXPECT_EQ(tiny[0].result, static_cast<std::int64_t>(std::max<std::uint32_t>(reader->alignment(), 1)));
    reader->clear_short_reads();
    EXPECT_EQ(run_all(*reader, sequential_ops(buffer, 1, 16 * page))[0].result, 16 * page);
}

TEST_P(fault_reader_backends, latency_delays_completions) {
    auto reader = make_fault_reader(4, GetParam());
    ASSERT_TRUE(reader);
    aligned_buffer buffer(4 * page);
    reader->set_latency(std::chrono::milliseconds(30));
    const auto start = std::chrono::steady_clock::now();
    const auto done = run_all(*reader, sequential_ops(buffer, 4, page));
    const auto elapsed = std::chrono::steady_clock::now() - start;
    for (const auto& c : done) EXPECT_EQ(c.result, page);
    EXPECT_GE(elapsed, std::chrono::milliseconds(25));  // a lower bound only
    // Not yet due: a non-waiting reap finds nothing, yet the read is in flight.
    const std::vector<read_op> one = {{0, page, buffer.data, 9}};
    ASSERT_EQ(*reader->submit(one), 1u);
    std::vector<read_completion> out(1);
    EXPECT_EQ(reader->reap(out, false), 0u);
    EXPECT_EQ(reader->in_flight(), 1u);
    std::size_t n = 0;
    while (n == 0) n = reader->reap(out, true);
    EXPECT_EQ(out[0].user_data, 9u);
    reader->set_latency(std::chrono::nanoseconds{0});
}

TEST_P(fault_reader_backends, bandwidth_cap_bounds_throughput_from_above) {
    auto reader = make_fault_reader(8, GetParam());
    ASSERT_TRUE(reader);
    constexpr std::uint32_t length = 64 * 1024;
    constexpr std::uint32_t n = 32;
    constexpr std::uint64_t cap = 16ull << 20;  // 16 MiB/s: 2 MiB take at least 125 ms
    aligned_buffer buffer(std::size_t{n} * length);
    reader->set_bandwidth_cap(cap);
    const auto start = std::chrono::steady_clock::now();
    const auto done = run_all(*reader, sequential_ops(buffer, n, length));
    const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    for (const auto& c : done) EXPECT_EQ(c.result, length);
    const double bound_s = static_cast<double>(n) * length / cap;
    EXPECT_GE(elapsed_s, 0.9 * bound_s);  // lower bound only, loosely
    reader->set_bandwidth_cap(0);
}

TEST_P(fault_reader_backends, reports_a_replaced_file) {
    auto reader = make_fault_reader(2, GetParam());
    ASSERT_TRUE(reader);
    auto real = reader->identity();
    ASSERT_TRUE(real.has_value());
    EXPECT_EQ(*real, *reader->inner().identity());
    reader->set_file_replaced(true);
    auto replaced = reader->identity();
    ASSERT_TRUE(replaced.has_value());
    EXPECT_NE(*replaced, *real);
    EXPECT_NE(replaced->inode, real->inode);
    reader->clear_all();
    EXPECT_EQ(*reader->identity(), *real);
}

TEST_P(fault_reader_backends, wake_and_queue_depth_pass_through) {
    auto reader = make_fault_reader(4, GetParam());
    ASSERT_TRUE(reader);
    EXPECT_EQ(reader->queue_depth(), 4u);
    EXPECT_EQ(reader->mode(), reader->inner().mode());
    // Held by latency, completed reads still count against the depth.
    reader->set_latency(std::chrono::milliseconds(50));
    aligned_buffer buffer(8 * page);
    const auto ops = sequential_ops(buffer, 8, page);
    EXPECT_EQ(*reader->submit(ops), 4u);
    EXPECT_EQ(*reader->submit(std::span(ops).subspan(4)), 0u);
    std::vector<read_completion> out(8);
    std::thread waker([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        reader->wake();
    });
    // Returns on the wake (empty) or, on a slow machine, with reads that became due.
    (void)reader->reap(out, true);
    waker.join();
    std::size_t got = 0;
    while (got < 4) got += reader->reap(std::span(out).subspan(got), true);
    EXPECT_EQ(reader->in_flight(), 0u);
}

INSTANTIATE_TEST_SUITE_P(all, fault_reader_backends, ::testing::Values(true, false),
                         [](const auto& param_info) { return std::string(param_info.param ? "uring" : "pread"); });

}  // namespace
}  // namespace moed::storage
