#include "storage/block_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

#include "common/log.h"
#include "storage/block_reader_open.h"
#include "storage/io_util.h"
#include "storage/pread_reader.h"
#include "storage/uring_reader.h"

namespace moed::storage {

std::string_view io_mode_name(io_mode mode) noexcept {
    switch (mode) {
        case io_mode::uring_direct: return "uring_direct";
        case io_mode::uring_buffered: return "uring_buffered";
        case io_mode::pread_direct: return "pread_direct";
        case io_mode::pread_buffered: return "pread_buffered";
    }
    return "unknown";
}

namespace {

// An open that names the file. `error_number` receives the errno of a failure (read
// before anything else can clobber errno).
result<unique_fd> open_file(const std::string& path, int flags, int simulated_errno, int& error_number) {
    int fd = -1;
    int e = simulated_errno;
    if (e == 0) {
        do {
            fd = ::open(path.c_str(), flags | O_RDONLY | O_CLOEXEC);
        } while (fd < 0 && errno == EINTR);
        e = fd < 0 ? errno : 0;
    }
    error_number = e;
    if (fd < 0) {
        const errc code = e == ENOENT || e == ENOTDIR ? errc::not_found : errc::io;
        return make_error(code, "cannot open model file {}: {}", path, errno_text(e));
    }
    return unique_fd(fd);
}

result<unique_fd> open_file(const std::string& path, int flags) {
    int ignored = 0;
    return open_file(path, flags, 0, ignored);
}

// O_DIRECT may open and still fail on the first read (some FUSE and network file systems);
// one aligned read of the first block tells before any real read depends on it.
// Returns 0 or the errno of the probe.
int probe_direct_read(int fd, std::uint32_t alignment) {
    void* buffer = std::aligned_alloc(alignment, alignment);
    if (buffer == nullptr) return ENOMEM;
    ssize_t got;
    do {
        got = ::pread(fd, buffer, alignment, 0);
    } while (got < 0 && errno == EINTR);
    const int e = got < 0 ? errno : 0;
    std::free(buffer);
    return e;
}

}  // namespace

result<std::unique_ptr<block_reader>> open_block_reader(const block_reader_options& options,
                                                        const open_overrides& overrides) {
    if (options.path.empty()) return make_error(errc::invalid_argument, "block reader: empty model file path");
    if (options.queue_depth == 0 || options.queue_depth > max_queue_depth) {
        return make_error(errc::invalid_argument, "block reader for {}: queue depth {} is outside 1..{}",
                          options.path, options.queue_depth, max_queue_depth);
    }

    // Why we run below uring_direct. `environment` reasons are warnings (the machine cannot
    // do better); reasons the options forced are only information.
    std::string why;
    bool environment = false;
    auto add_reason = [&why](const std::string& reason) { why += (why.empty() ? "" : "; ") + reason; };

    unique_fd fd;
    bool direct = false;
    std::uint32_t alignment = 1;
    if (options.allow_direct) {
        int open_errno = 0;
        auto opened = open_file(options.path, O_DIRECT, overrides.direct_open_errno, open_errno);
        if (opened) {
            fd = std::move(*opened);
            direct = true;
        } else if (open_errno == EINVAL) {
            // EINVAL at open is the file system refusing O_DIRECT (tmpfs before 6.6).
            auto plain = open_file(options.path, 0);
            if (!plain) return unexpected(std::move(plain).error());
            fd = std::move(*plain);
            add_reason(fmt::format("O_DIRECT refused by {} for {}; using buffered reads",
                                   file_system_name(fd.get()), options.path));
            environment = true;
        } else {
            return unexpected(std::move(opened).error());
        }
    } else {
        auto plain = open_file(options.path, 0);
        if (!plain) return unexpected(std::move(plain).error());
        fd = std::move(*plain);
        add_reason("O_DIRECT disabled by the options");
    }

    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) {
        return make_error(errc::io, "fstat of model file {}: {}", options.path, errno_text(errno));
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        return make_error(errc::invalid_argument, "model file {} is not a regular file or block device", options.path);
    }

    if (direct) {
        std::string how;
        alignment = direct_io_alignment(fd.get(), how);
        const int probe = probe_direct_read(fd.get(), alignment);
        if (probe == EINVAL) {
            auto plain = open_file(options.path, 0);
            if (!plain) return unexpected(std::move(plain).error());
            fd = std::move(*plain);
            add_reason(fmt::format("O_DIRECT reads refused by {} for {}; using buffered reads",
                                   file_system_name(fd.get()), options.path));
            environment = true;
            direct = false;
            alignment = 1;
        } else if (probe != 0) {
            return make_error(errc::io, "reading model file {}: {}", options.path, errno_text(probe));
        } else {
            MOED_LOG_DEBUG("storage", "{}: O_DIRECT alignment {} ({})", options.path, alignment, how);
        }
    }

    std::unique_ptr<block_reader> reader;
    std::string note;
    if (options.allow_uring) {
        uring_reader_config config;
        config.path = options.path;
        config.mode = direct ? io_mode::uring_direct : io_mode::uring_buffered;
        config.alignment = alignment;
        config.queue_depth = options.queue_depth;
        config.registered_region = options.registered_region;
        config.simulate_init_errno = overrides.uring_init_errno;
        auto made = uring_reader::create(fd, config, note);
        if (made) {
            reader = std::move(*made);
        } else if (made.error().code == errc::unsupported) {
            add_reason(fmt::format("io_uring unavailable ({}); using pread worker threads", made.error().message));
            environment = true;
        } else {
            return unexpected(std::move(made).error());
        }
    } else {
        add_reason("io_uring disabled by the options");
    }
    if (!reader) {
        pread_reader_config config;
        config.path = options.path;
        config.mode = direct ? io_mode::pread_direct : io_mode::pread_buffered;
        config.alignment = alignment;
        config.queue_depth = options.queue_depth;
        auto made = pread_reader::create(fd, config);
        if (!made) return unexpected(std::move(made).error());
        reader = std::move(*made);
    }

    // Exactly one line per open: which mode runs and why, a warning when the machine (not
    // the options) kept us from io_uring with O_DIRECT and registered buffers.
    if (!note.empty()) {
        add_reason(note);
        environment = true;
    }
    if (why.empty()) {
        MOED_LOG_INFO("storage", "reading {} with {} (alignment {}, queue depth {})", options.path,
                      io_mode_name(reader->mode()), reader->alignment(), reader->queue_depth());
    } else if (environment) {
        MOED_LOG_WARN("storage", "reading {} with {}: {}", options.path, io_mode_name(reader->mode()), why);
    } else {
        MOED_LOG_INFO("storage", "reading {} with {}: {}", options.path, io_mode_name(reader->mode()), why);
    }
    return reader;
}

result<std::unique_ptr<block_reader>> open_block_reader(const block_reader_options& options) {
    return open_block_reader(options, open_overrides{});
}

}  // namespace moed::storage
