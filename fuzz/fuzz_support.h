// What the fuzz programs share: a file in memory that holds the fuzzer's bytes, so the file
// readers run their real open, stat, mmap and read path on them; a check that aborts with a
// message (libFuzzer then saves the input as a crash); and the bundled vocabulary.
// Threads: each fuzz program runs its inputs on one thread; none of this is shared.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include <fmt/format.h>

namespace moed::fuzz {

// A property of the code under test did not hold: print why and abort.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
    std::fprintf(stderr, "fuzz check failed: %s\n", fmt::format(format, std::forward<Args>(args)...).c_str());
    std::abort();
}

#define MOED_FUZZ_CHECK(cond, ...)                    \
    do {                                              \
        if (!(cond)) ::moed::fuzz::fail(__VA_ARGS__); \
    } while (0)

// An anonymous in-memory file (memfd), reachable by path as /proc/self/fd/N: a reader
// opening that path gets a regular file of exactly the bytes assigned.
class memory_file {
public:
    explicit memory_file(const char* name) : fd_(::memfd_create(name, MFD_CLOEXEC)) {
        if (fd_ < 0) fail("memfd_create failed");
        path_ = fmt::format("/proc/self/fd/{}", fd_);
    }
    ~memory_file() { ::close(fd_); }
    memory_file(const memory_file&) = delete;
    memory_file& operator=(const memory_file&) = delete;

    const std::string& path() const noexcept { return path_; }

    // Replaces the content with `bytes`.
    void assign(std::span<const std::uint8_t> bytes) {
        if (::ftruncate(fd_, 0) != 0) fail("ftruncate of the memory file failed");
        std::size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
            if (n <= 0) fail("write to the memory file failed");
            done += static_cast<std::size_t>(n);
        }
    }

private:
    int fd_;
    std::string path_;
};

}  // namespace moed::fuzz
