#include "storage/io_util.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string_view>

#include "common/log.h"

namespace moed::storage {

namespace {

// Largest alignment we believe; anything above is a misreport and 4096 is safer.
constexpr std::uint32_t max_believable_alignment = 64 * 1024;
constexpr std::uint32_t fallback_alignment = 4096;

bool plausible_alignment(std::uint64_t value) {
    return value >= 1 && value <= max_believable_alignment && (value & (value - 1)) == 0;
}

// Reads a small text file (sysfs attributes); empty on any failure.
std::string read_small_file(const std::string& path) {
    unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return {};
    char buffer[256];
    ssize_t got;
    do {
        got = ::read(fd.get(), buffer, sizeof buffer - 1);
    } while (got < 0 && errno == EINTR);
    if (got <= 0) return {};
    return std::string(buffer, static_cast<std::size_t>(got));
}

// The logical block size of the block device `dev`, from its node (BLKSSZGET) when we may
// open it, else from sysfs (a partition's queue/ lives in its parent's directory). 0 when
// neither is reachable (a file system without a backing device: tmpfs, overlay, NFS).
std::uint32_t block_device_logical_size(dev_t dev, std::string& why) {
    const std::string sys = fmt::format("/sys/dev/block/{}:{}", major(dev), minor(dev));
    const std::string uevent = read_small_file(sys + "/uevent");
    const auto name_at = uevent.find("DEVNAME=");
    if (name_at != std::string::npos) {
        const auto end = uevent.find('\n', name_at);
        const std::string node = "/dev/" + uevent.substr(name_at + 8, end - name_at - 8);
        unique_fd device(::open(node.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
        int size = 0;
        if (device.valid() && ::ioctl(device.get(), BLKSSZGET, &size) == 0 && plausible_alignment(size)) {
            why = fmt::format("BLKSSZGET on {}", node);
            return static_cast<std::uint32_t>(size);
        }
    }
    for (const char* rel : {"/queue/logical_block_size", "/../queue/logical_block_size"}) {
        const std::string text = read_small_file(sys + rel);
        if (text.empty()) continue;
        const unsigned long value = std::strtoul(text.c_str(), nullptr, 10);
        if (plausible_alignment(value)) {
            why = fmt::format("{}{}", sys, rel);
            return static_cast<std::uint32_t>(value);
        }
    }
    return 0;
}

}  // namespace

void unique_fd::reset(int fd) noexcept {
    if (fd_ >= 0 && ::close(fd_) != 0) {
        MOED_LOG_ERROR("storage", "close(fd {}) failed: {}", fd_, errno_text(errno));
    }
    fd_ = fd;
}

std::string errno_text(int error_number) {
    const char* name = ::strerrorname_np(error_number);
    const char* text = ::strerrordesc_np(error_number);
    if (text == nullptr) return fmt::format("errno {}", error_number);
    return fmt::format("{} ({})", text, name != nullptr ? name : "?");
}

result<file_identity> identity_of(int fd, const std::string& path) {
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
        return make_error(errc::io, "fstat of {} failed: {}", path, errno_text(errno));
    }
    file_identity id;
    id.device = st.st_dev;
    id.inode = st.st_ino;
    id.size_bytes = static_cast<std::uint64_t>(st.st_size);
    id.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    if (S_ISBLK(st.st_mode)) {
        std::uint64_t bytes = 0;
        if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) {
            return make_error(errc::io, "BLKGETSIZE64 on {} failed: {}", path, errno_text(errno));
        }
        id.size_bytes = bytes;
    }
    return id;
}

std::string file_system_name(int fd) {
    struct statfs fs{};
    if (::fstatfs(fd, &fs) != 0) return "unknown";
    switch (static_cast<unsigned long>(fs.f_type)) {
        case TMPFS_MAGIC: return "tmpfs";
        case EXT4_SUPER_MAGIC: return "ext4";  // also ext2/ext3: same magic
        case XFS_SUPER_MAGIC: return "xfs";
        case BTRFS_SUPER_MAGIC: return "btrfs";
        case OVERLAYFS_SUPER_MAGIC: return "overlayfs";
        case NFS_SUPER_MAGIC: return "nfs";
        case 0x65735546UL: return "fuse";
        case 0x2fc12fc1UL: return "zfs";
        case 0x858458f6UL: return "ramfs";
        case 0xf2f52010UL: return "f2fs";
        case 0x62656572UL: return "sysfs";
        case PROC_SUPER_MAGIC: return "proc";
        default: return fmt::format("fs 0x{:x}", static_cast<unsigned long>(fs.f_type));
    }
}

std::uint32_t direct_io_alignment(int fd, std::string& why) {
    std::uint32_t alignment = 0;
    struct stat st{};
    if (::fstat(fd, &st) == 0) {
        if (S_ISBLK(st.st_mode)) {
            int size = 0;
            if (::ioctl(fd, BLKSSZGET, &size) == 0 && plausible_alignment(size)) {
                alignment = static_cast<std::uint32_t>(size);
                why = "BLKSSZGET on the device itself";
            }
        } else {
            alignment = block_device_logical_size(st.st_dev, why);
        }
    }
    // statx knows about the file system too (e.g. a file system that needs more than the
    // device); take the larger figure. Kernels before 6.1 leave STATX_DIOALIGN unset.
    struct statx sx{};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) != 0 &&
        sx.stx_dio_offset_align != 0) {
        const std::uint32_t dio = std::max(sx.stx_dio_offset_align, sx.stx_dio_mem_align);
        if (plausible_alignment(dio) && dio > alignment) {
            alignment = dio;
            why = "statx STATX_DIOALIGN";
        }
    }
    if (alignment == 0) {
        alignment = fallback_alignment;
        why = "default (no block device or statx figure)";
    }
    return alignment;
}

}  // namespace moed::storage
