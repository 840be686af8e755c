// Small pieces the block-reader backends share: an owning file descriptor, errno text, the
// file's identity, the name of a file system type, and the alignment O_DIRECT needs.
// Threads: free functions are thread-safe; a unique_fd is owned by one thread at a time.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "common/result.h"
#include "storage/block_reader.h"

namespace moed::storage {

// Owns one file descriptor; closes it on destruction (a failed close is logged, because
// nothing else can be done about it in a destructor).
class unique_fd {
public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& other) noexcept {
        if (this != &other) reset(std::exchange(other.fd_, -1));
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }

    int get() const noexcept { return fd_; }
    bool valid() const noexcept { return fd_ >= 0; }
    void reset(int fd = -1) noexcept;

private:
    int fd_ = -1;
};

// strerror without the thread-safety question: "Input/output error (EIO)".
std::string errno_text(int error_number);

// fstat of `fd` as a file_identity; a block device reports its size (BLKGETSIZE64).
// Errors name `path`.
result<file_identity> identity_of(int fd, const std::string& path);

// "tmpfs", "ext4", ... for the file system holding `fd`; "unknown" when fstatfs fails or
// the magic number is not one we know.
std::string file_system_name(int fd);

// The alignment of file offsets, lengths and memory that O_DIRECT needs on `fd`: the
// largest of what the backing block device reports (BLKSSZGET on the device node, else its
// sysfs logical_block_size) and what statx(STATX_DIOALIGN) reports for the file; 4096 when
// nothing can be learnt. `why` receives how the figure was found (for a debug log line).
std::uint32_t direct_io_alignment(int fd, std::string& why);

}  // namespace moed::storage
