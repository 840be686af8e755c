// Helpers shared by the block reader tests: a file whose every 8-byte word is a known
// function of its offset, a check of read bytes against it, and page-aligned buffers.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

namespace moed::storage::test_util {

inline constexpr std::uint32_t page = 4096;

// The 8-byte word at byte offset 8*k: a mix of k (splitmix64), so misplaced data never matches.
inline std::uint64_t pattern_word(std::uint64_t k) {
    std::uint64_t z = k + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

inline void write_pattern_file(const std::filesystem::path& path, std::uint64_t bytes) {
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

// True when `data` holds the file's bytes [offset, offset + n); `offset` is 8-aligned.
inline bool matches_file(const std::byte* data, std::uint64_t offset, std::size_t n) {
    for (std::size_t i = 0; i < n; i += 8) {
        const std::uint64_t expect = pattern_word((offset + i) / 8);
        if (std::memcmp(data + i, &expect, std::min<std::size_t>(8, n - i)) != 0) return false;
    }
    return true;
}

struct aligned_buffer {
    std::byte* data = nullptr;
    std::size_t bytes = 0;
    explicit aligned_buffer(std::size_t n)
        : data(static_cast<std::byte*>(std::aligned_alloc(page, (n + page - 1) / page * page))), bytes(n) {}
    ~aligned_buffer() { std::free(data); }
    aligned_buffer(const aligned_buffer&) = delete;
    aligned_buffer& operator=(const aligned_buffer&) = delete;
};

}  // namespace moed::storage::test_util
