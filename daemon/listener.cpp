#include "daemon/listener.h"

#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include "common/log.h"

namespace moed::daemon {

namespace {

using generic_protocol = boost::asio::generic::stream_protocol;

// A file descriptor owned until released.
class unique_fd {
public:
    explicit unique_fd(int fd = -1) noexcept : fd_(fd) {}
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const noexcept { return fd_; }
    int release() noexcept {
        const int fd = fd_;
        fd_ = -1;
        return fd;
    }

private:
    int fd_;
};

result<sockaddr_un> make_address(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.empty()) return make_error(errc::invalid_argument, "socket.path: empty");
    if (path.size() >= sizeof(addr.sun_path))
        return make_error(errc::invalid_argument, "socket.path: '{}' is {} bytes; a Unix socket path holds at most {}",
                          path, path.size(), sizeof(addr.sun_path) - 1);
    std::memcpy(addr.sun_path, path.data(), path.size());
    return addr;
}

// An existing file at the socket path: replace it when it is a dead socket, refuse otherwise.
result<void> clear_stale(const std::string& path, const sockaddr_un& addr) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return {};
        return make_error(errc::io, "socket {}: {}", path, std::strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return make_error(errc::invalid_argument, "socket {}: the path exists and is not a socket; not replacing it", path);
    unique_fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe.get() < 0) return make_error(errc::io, "socket {}: socket(): {}", path, std::strerror(errno));
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0)
        return make_error(errc::invalid_argument, "another moed is listening on {}", path);
    const int err = errno;
    // A full backlog (EAGAIN) also means someone is listening.
    if (err == EAGAIN) return make_error(errc::invalid_argument, "another moed is listening on {}", path);
    if (err != ECONNREFUSED)
        return make_error(errc::io, "socket {}: cannot tell whether it is in use: {}", path, std::strerror(err));
    MOED_LOG_INFO("socket", "replacing stale socket {} (nothing accepts on it)", path);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return make_error(errc::io, "socket {}: cannot remove the stale socket: {}", path, std::strerror(errno));
    return {};
}

}  // namespace

socket_file::socket_file(socket_file&& other) noexcept
    : path_(std::move(other.path_)), dev_(other.dev_), ino_(other.ino_) {
    other.path_.clear();
}

socket_file& socket_file::operator=(socket_file&& other) noexcept {
    if (this != &other) {
        socket_file gone(std::move(*this));
        path_ = std::move(other.path_);
        dev_ = other.dev_;
        ino_ = other.ino_;
        other.path_.clear();
    }
    return *this;
}

socket_file::~socket_file() {
    if (path_.empty()) return;
    struct stat st {};
    if (::lstat(path_.c_str(), &st) != 0) return;
    if (st.st_dev != dev_ || st.st_ino != ino_) {
        MOED_LOG_INFO("socket", "{} now belongs to another process; leaving it", path_);
        return;
    }
    if (::unlink(path_.c_str()) != 0)
        MOED_LOG_WARN("socket", "cannot remove {}: {}", path_, std::strerror(errno));
}

result<gid_t> lookup_group(const std::string& name) {
    long size = ::sysconf(_SC_GETGR_R_SIZE_MAX);
    std::vector<char> buffer(size > 0 ? static_cast<std::size_t>(size) : 16384);
    group entry{};
    group* found = nullptr;
    for (;;) {
        const int rc = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
        // The buffer grows until the entry fits, bounded so a broken NSS cannot exhaust memory.
        if (rc == ERANGE && buffer.size() < (1u << 20)) {
            buffer.resize(buffer.size() * 2);
            continue;
        }
        if (rc != 0) return make_error(errc::io, "socket.group: looking up '{}': {}", name, std::strerror(rc));
        break;
    }
    if (!found) return make_error(errc::not_found, "socket.group: unknown group '{}'", name);
    return found->gr_gid;
}

result<std::unique_ptr<listener>> open_listener(boost::asio::io_context& io, const listener_options& options) {
    auto out = std::make_unique<listener>(
        listener{generic_acceptor(io), listener_kind::unix_socket, socket_file(), false, ""});
    boost::system::error_code ec;

    const int n_fds = ::sd_listen_fds(1);
    if (n_fds < 0) return make_error(errc::io, "sd_listen_fds: {}", std::strerror(-n_fds));
    if (n_fds > 0) {
        const int fd = SD_LISTEN_FDS_START;
        if (n_fds > 1) MOED_LOG_WARN("socket", "systemd passed {} sockets; serving only the first (fd {})", n_fds, fd);
        if (::sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0) <= 0)
            return make_error(errc::invalid_argument,
                              "the socket systemd passed (fd {}) is not a listening Unix stream socket", fd);
        out->acceptor.assign(generic_protocol(AF_UNIX, SOCK_STREAM), fd, ec);
        if (ec) return make_error(errc::io, "taking the systemd socket (fd {}): {}", fd, ec.message());
        out->activated = true;
        out->description = fmt::format("systemd socket (fd {})", fd);
        return out;
    }

    auto addr = make_address(options.path);
    if (!addr) return unexpected(std::move(addr).error());
    std::optional<gid_t> gid;
    if (!options.group.empty()) {
        auto g = lookup_group(options.group);
        if (!g) return unexpected(std::move(g).error());
        gid = *g;
    }
    MOED_TRY(clear_stale(options.path, *addr));

    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return make_error(errc::io, "socket {}: socket(): {}", options.path, std::strerror(errno));
    // bind() creates the file with 0777 & ~umask; a strict umask for the call keeps the file
    // from being reachable by others before chmod gives it the configured mode. Start-up
    // is single-threaded here, so the process-wide umask change touches no one else.
    const mode_t old_mask = ::umask(0177);
    const int bound = ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr));
    const int bind_errno = errno;
    ::umask(old_mask);
    if (bound != 0) return make_error(errc::io, "socket {}: bind: {}", options.path, std::strerror(bind_errno));

    struct stat st {};
    if (::lstat(options.path.c_str(), &st) != 0)
        return make_error(errc::io, "socket {}: stat after bind: {}", options.path, std::strerror(errno));
    // From here the file is ours: the guard removes it on any error below.
    socket_file file(options.path, st.st_dev, st.st_ino);
    if (gid && ::chown(options.path.c_str(), static_cast<uid_t>(-1), *gid) != 0)
        return make_error(errc::io, "socket {}: chown to group '{}': {}", options.path, options.group,
                          std::strerror(errno));
    if (::chmod(options.path.c_str(), static_cast<mode_t>(options.mode)) != 0)
        return make_error(errc::io, "socket {}: chmod {:o}: {}", options.path, options.mode, std::strerror(errno));
    if (::listen(fd.get(), listen_backlog) != 0)
        return make_error(errc::io, "socket {}: listen: {}", options.path, std::strerror(errno));

    out->acceptor.assign(generic_protocol(AF_UNIX, SOCK_STREAM), fd.get(), ec);
    if (ec) return make_error(errc::io, "socket {}: {}", options.path, ec.message());
    (void)fd.release();
    out->file = std::move(file);
    out->description = options.path;
    return out;
}

result<std::unique_ptr<listener>> open_tcp_listener(boost::asio::io_context& io, const listen_address& address) {
    const std::string where = address.text();
    sockaddr_storage storage{};
    socklen_t length = 0;
    const int family = address.ipv6 ? AF_INET6 : AF_INET;
    if (address.ipv6) {
        auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(address.port);
        if (::inet_pton(AF_INET6, address.host.c_str(), &a->sin6_addr) != 1)
            return make_error(errc::invalid_argument, "server.listen {}: not an IPv6 address", where);
        length = sizeof(sockaddr_in6);
    } else {
        auto* a = reinterpret_cast<sockaddr_in*>(&storage);
        a->sin_family = AF_INET;
        a->sin_port = htons(address.port);
        if (::inet_pton(AF_INET, address.host.c_str(), &a->sin_addr) != 1)
            return make_error(errc::invalid_argument, "server.listen {}: not an IPv4 address", where);
        length = sizeof(sockaddr_in);
    }
    unique_fd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return make_error(errc::io, "server.listen {}: socket(): {}", where, std::strerror(errno));
    const int on = 1;
    if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0)
        return make_error(errc::io, "server.listen {}: SO_REUSEADDR: {}", where, std::strerror(errno));
    // "[::]:port" means IPv6 only here: an IPv4 listener is configured as its own address.
    if (address.ipv6 && ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0)
        return make_error(errc::io, "server.listen {}: IPV6_V6ONLY: {}", where, std::strerror(errno));
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&storage), length) != 0)
        return make_error(errc::io, "server.listen {}: bind: {}", where, std::strerror(errno));
    if (::listen(fd.get(), listen_backlog) != 0)
        return make_error(errc::io, "server.listen {}: listen: {}", where, std::strerror(errno));
    auto out = std::make_unique<listener>(listener{generic_acceptor(io), listener_kind::tcp, socket_file(), false, ""});
    boost::system::error_code ec;
    out->acceptor.assign(generic_protocol(family, SOCK_STREAM), fd.get(), ec);
    if (ec) return make_error(errc::io, "server.listen {}: {}", where, ec.message());
    (void)fd.release();
    out->description = "tcp " + where;
    return out;
}

std::string tcp_peer(int fd, std::uint64_t& address_key) {
    sockaddr_storage storage{};
    socklen_t length = sizeof(storage);
    address_key = 0;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&storage), &length) != 0) return {};
    char text[INET6_ADDRSTRLEN] = {};
    if (storage.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&storage);
        ::inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
        // IPv4 keys sit above every uid key (those are below 2^32) and below the unknown key.
        address_key = (std::uint64_t{1} << 32) | ntohl(a->sin_addr.s_addr);
        return fmt::format("tcp {}:{}", text, ntohs(a->sin_port));
    }
    if (storage.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&storage);
        ::inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
        // FNV-1a of the 16 bytes, with the top bit set (uids and IPv4 keys stay below 2^33).
        std::uint64_t h = 1469598103934665603ull;
        for (unsigned char b : a->sin6_addr.s6_addr) h = (h ^ b) * 1099511628211ull;
        address_key = (h | (std::uint64_t{1} << 63)) & ~std::uint64_t{1};  // never the unknown key (all ones)
        return fmt::format("tcp [{}]:{}", text, ntohs(a->sin6_port));
    }
    return {};
}

std::optional<peer_identity> peer_of(int fd) {
    // On other sockets (TCP) Linux answers SO_PEERCRED with the overflow uid (nobody) rather
    // than an error, which would pass for a real user.
    int domain = 0;
    socklen_t domain_len = sizeof(domain);
    if (::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &domain_len) != 0 || domain != AF_UNIX) return std::nullopt;
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred)) return std::nullopt;
    return peer_identity{cred.pid, cred.uid, cred.gid};
}

std::string describe_peer(const std::optional<peer_identity>& peer) {
    if (!peer) return "pid=? uid=? gid=?";
    return fmt::format("pid={} uid={} gid={}", peer->pid, peer->uid, peer->gid);
}

std::string peer_credentials(int fd) { return describe_peer(peer_of(fd)); }

}  // namespace moed::daemon
