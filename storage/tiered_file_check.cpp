// The tiered source's watch over its model file: a file changed underneath marks the tier
// broken (reads would hand out bytes of another model, or meet the end of a shortened file),
// and the checker makes it healthy again once the path holds the same model, checked against
// a fingerprint taken at create() and against every expert resident in a slot. See
// tier_file_health in tiered_expert_source.h for the contract.
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "storage/tiered_state.h"

namespace moed::storage {

using namespace tiered_detail;

namespace {

// Bytes compared at the start and at the end of every expert tensor (per layer and matrix).
constexpr std::uint64_t sample_bytes = 16u << 10;
// Reads of the checks go in pieces of this size.
constexpr std::uint64_t check_chunk_bytes = 1u << 20;

// FNV-1a, 64 bit: a fingerprint of bytes that must be equal, not a defence against forgery.
struct fnv64 {
    std::uint64_t h = 0xcbf29ce484222325ull;
    void add(std::span<const std::byte> bytes) noexcept {
        for (std::byte b : bytes) h = (h ^ static_cast<std::uint8_t>(b)) * 0x100000001b3ull;
    }
};

result<void> pread_exact(int fd, std::byte* dst, std::uint64_t offset, std::uint64_t bytes) {
    std::uint64_t done = 0;
    while (done < bytes) {
        const ssize_t n = ::pread(fd, dst + done, bytes - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            return make_error(errc::io, "reading {} bytes at offset {}: {}", bytes, offset + done,
                              n < 0 ? std::strerror(errno) : "end of file");
        }
        done += static_cast<std::uint64_t>(n);
    }
    return {};
}

result<std::uint64_t> digest(int fd, std::uint64_t offset, std::uint64_t bytes, std::vector<std::byte>& buffer) {
    fnv64 h;
    for (std::uint64_t at = 0; at < bytes; at += check_chunk_bytes) {
        const std::uint64_t n = std::min(check_chunk_bytes, bytes - at);
        buffer.resize(static_cast<std::size_t>(n));
        MOED_TRY(pread_exact(fd, buffer.data(), offset + at, n));
        h.add(buffer);
    }
    return h.h;
}

result<file_identity> identity_of_fd(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return make_error(errc::io, "fstat: {}", std::strerror(errno));
    return file_identity{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                         static_cast<std::uint64_t>(st.st_size),
                         static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

std::optional<file_identity> identity_of_path(const std::string& path) noexcept {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return file_identity{static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
                         static_cast<std::uint64_t>(st.st_size),
                         static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

// Closes a descriptor on every return.
struct fd_guard {
    int fd = -1;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

}  // namespace

result<std::pair<std::uint64_t, std::vector<std::uint64_t>>> tiered_expert_source::impl::fingerprint(int fd) const {
    std::vector<std::byte> buffer;
    std::uint64_t header = 0;
    if (options.header_bytes > 0) {
        auto h = digest(fd, 0, options.header_bytes, buffer);
        if (!h) return make_error(errc::io, "the header: {}", h.error().message);
        header = *h;
    }
    std::vector<std::uint64_t> samples;
    samples.reserve(static_cast<std::size_t>(layout.n_layer) * 6);
    for (std::uint32_t l = 0; l < layout.n_layer; ++l) {
        const auto ms = matrices_of(layout.layers[l]);
        for (std::size_t m = 0; m < 3; ++m) {
            const std::uint64_t total = ms[m].bytes * layout.n_expert;
            const std::uint64_t n = std::min(sample_bytes, total);
            for (const std::uint64_t at : {ms[m].offset, ms[m].offset + total - n}) {
                auto h = digest(fd, at, n, buffer);
                if (!h) {
                    return make_error(errc::io, "layer {} {} experts: {}", l, matrix_names[m], h.error().message);
                }
                samples.push_back(*h);
            }
        }
    }
    return std::pair{header, std::move(samples)};
}

result<void> tiered_expert_source::impl::verify_same_model(int fd, const file_identity& now) const {
    if (now.size_bytes != identity.size_bytes) {
        return make_error(errc::bad_file, "it has {} bytes, the model opened had {}", now.size_bytes,
                          identity.size_bytes);
    }
    auto print = fingerprint(fd);
    if (!print) return unexpected(std::move(print).error());
    if (print->first != header_digest) return make_error(errc::bad_file, "its header (metadata, tensor list) differs");
    for (std::size_t k = 0; k < tensor_digests.size(); ++k) {
        if (print->second[k] != tensor_digests[k]) {
            return make_error(errc::bad_file, "the bytes of layer {} {} experts differ", k / 6,
                              matrix_names[(k / 2) % 3]);
        }
    }
    // Every expert resident in a slot was read from the model opened: its bytes must be in
    // the file again. While the tier is broken no load starts, so slot contents hold still.
    std::vector<std::pair<std::uint32_t, ExpertId>> resident;
    {
        std::lock_guard lock(mutex);
        for (std::uint32_t s = 0; s < n_slots(); ++s) {
            if (core.slots().holds_bytes(s)) resident.emplace_back(s, core.slots()[s].id);
        }
    }
    std::vector<std::byte> buffer;
    for (const auto& [slot, id] : resident) {
        const expert_weights w = weights_of(slot, id);
        const auto ms = matrices_of(layout.layers[id.layer]);
        const std::array<const void*, 3> data = {w.gate.data, w.up.data, w.down.data};
        for (std::size_t m = 0; m < 3; ++m) {
            const std::uint64_t start = ms[m].offset + static_cast<std::uint64_t>(id.expert) * ms[m].bytes;
            buffer.resize(static_cast<std::size_t>(ms[m].bytes));
            if (auto r = pread_exact(fd, buffer.data(), start, ms[m].bytes); !r) {
                return make_error(errc::io, "expert {}/{}: {}", id.layer, id.expert, r.error().message);
            }
            if (std::memcmp(buffer.data(), data[m], buffer.size()) != 0) {
                return make_error(errc::bad_file, "expert {}/{} ({} matrix) differs from the copy in memory",
                                  id.layer, id.expert, matrix_names[m]);
            }
        }
    }
    return {};
}

void tiered_expert_source::impl::mark_file_broken_locked(moed::error why) noexcept {
    if (file_broken) return;
    file_broken = true;
    core.set_paused(true);
    ++file_breaks;
    file_error = std::move(why);
    file_last_seen.reset();
    file_rejected.reset();
    MOED_LOG_ERROR(component, "{}; experts not in host memory fail until the file holds this model again",
                   file_error.message);
}

tier_file_health tiered_expert_source::impl::health_locked() const {
    return tier_file_health{file_broken, file_broken ? file_error.message : std::string(), file_breaks,
                            file_recoveries};
}

tier_file_health tiered_expert_source::file_health() const {
    std::lock_guard lock(impl_->mutex);
    return impl_->health_locked();
}

tier_file_health tiered_expert_source::check_file() {
    impl& d = *impl_;
    std::lock_guard check(d.check_mutex);
    const std::optional<file_identity> at_path = identity_of_path(d.path);
    // The open file's identity (an fstat), taken without the tier's lock. Only a check
    // changes d.identity, and checks run one at a time.
    const result<file_identity> open_now = d.mover->source_identity();
    {
        std::lock_guard lock(d.mutex);
        if (!d.file_broken) {
            if (!open_now) {
                d.mark_file_broken_locked(error_noexcept(errc::io, "{}: checking the model file: {}", d.path,
                                                         open_now.error().message));
            } else if (!(*open_now == d.identity)) {
                d.mark_file_broken_locked(error_noexcept(errc::io, "{}: changed since it was opened ({} then, {} now)",
                                                         d.path, identity_text(d.identity),
                                                         identity_text(*open_now)));
            } else if (at_path && (at_path->inode != d.identity.inode || at_path->device != d.identity.device) &&
                       d.path_inode_logged != at_path->inode) {
                // Renamed over: the open file still holds the model served, which stays intact.
                d.path_inode_logged = at_path->inode;
                MOED_LOG_WARN(component, "{}: replaced on disk by another file; experts are still read from the "
                                         "file opened at start (restart moed to serve the new one)",
                              d.path);
            }
            return d.health_locked();
        }
        // Broken: compare the file with the model opened once it held still for one interval
        // (a copy in progress is not read), and only once per version of it.
        const bool settled = at_path && d.file_last_seen && *at_path == *d.file_last_seen;
        d.file_last_seen = at_path;
        if (!settled || (d.file_rejected && *at_path == *d.file_rejected)) return d.health_locked();
    }
    fd_guard fd{::open(d.path.c_str(), O_RDONLY | O_CLOEXEC)};
    result<file_identity> now = fd.fd >= 0 ? identity_of_fd(fd.fd)
                                           : result<file_identity>(make_error(errc::io, "cannot open: {}",
                                                                              std::strerror(errno)));
    result<void> same = now ? d.verify_same_model(fd.fd, *now) : result<void>(unexpected(now.error()));
    // Reads that began before the change may still land: they must finish (and fail against
    // the old identity) before a new one is trusted. A later check takes it.
    auto busy_locked = [&] { return d.core.counters().loads_in_flight() > 0 || d.mover->loads_in_flight() > 0; };
    bool same_file = false;
    {
        std::unique_lock lock(d.mutex);
        if (!same) {
            d.file_rejected = at_path;
            MOED_LOG_WARN(component, "{}: not the model opened: {}", d.path, same.error().message);
            return d.health_locked();
        }
        if (busy_locked()) return d.health_locked();
        same_file = now->inode == d.identity.inode && now->device == d.identity.device;
        if (same_file) {
            d.recover_locked(false);
            const bool submit = d.core.take_submit();
            tier_file_health health = d.health_locked();
            lock.unlock();
            if (submit) d.mover->submit();
            return health;
        }
        if (!d.reader_opened_here) {
            d.file_rejected = at_path;
            MOED_LOG_WARN(component, "{}: holds the same model again, but in another file, and this tier's reader "
                                     "cannot be reopened",
                          d.path);
            return d.health_locked();
        }
    }
    // The path names another file now: read that one from here on. Opened without the
    // tier's lock (setting up a reader takes system calls and may register the slab).
    auto opened = open_block_reader(block_reader_options{d.path, d.options.queue_depth, d.options.allow_uring,
                                                         d.options.allow_direct, d.slab->region()});
    if (opened && d.options.wrap_reader) opened = d.options.wrap_reader(std::move(opened).value());
    std::unique_lock lock(d.mutex);
    if (!opened || !*opened || d.region_alignment % (*opened)->alignment() != 0) {
        MOED_LOG_WARN(component, "{}: cannot reopen the model file: {}", d.path,
                      opened ? std::string("unsuitable reader") : opened.error().message);
        return d.health_locked();
    }
    // While broken no load starts from a request; one admitted meanwhile (a deferred demand
    // load) makes this check give up, and the next one tries again.
    if (!d.file_broken || d.core.stopping() || busy_locked()) return d.health_locked();
    d.mover->replace_reader(std::move(opened).value());
    d.recover_locked(true);
    const bool submit = d.core.take_submit();
    tier_file_health health = d.health_locked();
    lock.unlock();
    if (submit) d.mover->submit();
    return health;
}

void tiered_expert_source::impl::recover_locked(bool reopened) {
    auto current = mover->source_identity();
    if (!current) {
        MOED_LOG_WARN(component, "{}: checking the model file: {}", path, current.error().message);
        return;
    }
    identity = *current;
    mover->set_identity(*current);
    file_broken = false;
    file_error = moed::error{};
    ++file_recoveries;
    MOED_LOG_INFO(component, "{}: holds the model opened again (size, header, tensor samples and {} resident "
                             "experts compared){}; serving resumes",
                  path, core.slots().resident_experts(), reopened ? ", reopened" : "");
    core.set_paused(false);  // queued prefetches go
}

void tiered_expert_source::impl::check_main() noexcept {
    pthread_setname_np(pthread_self(), "moed-tier-file");
    std::unique_lock lock(mutex);
    for (;;) {
        check_cv.wait_for(lock, options.file_check_interval, [&] { return check_stop; });
        if (check_stop) return;
        lock.unlock();
        try {
            owner->check_file();
        } catch (const std::exception& e) {
            MOED_LOG_ERROR(component, "{}: file check failed: {}", path, e.what());
        }
        lock.lock();
    }
}

}  // namespace moed::storage
