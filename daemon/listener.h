// The daemon's listening sockets. The Unix socket: either the one systemd passed (socket
// activation, sd_listen_fds) or one moed binds itself. Binding first checks an existing
// file: a socket nobody accepts on (connect gives ECONNREFUSED: a crashed daemon's leftover)
// is replaced, one that accepts is another daemon and an error, anything else is left alone
// and an error. The new file gets the configured mode and group. The optional TCP socket
// (server.listen) is bound by moed on the configured address.
// Both are Asio generic stream acceptors, so one HTTP server serves either kind with the
// same code; `kind` says which access rule applies (file permissions, or API keys).
// Threads: open_listener and open_tcp_listener run on the main thread before the
// io_context runs; the returned acceptor then belongs to the io_context thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/generic/stream_protocol.hpp>

#include "common/result.h"
#include "daemon/config.h"

namespace moed::daemon {

// listen(2) backlog: connections the kernel holds before accept; a burst of local clients
// beyond it retry (connect gives EAGAIN on a Unix socket).
inline constexpr int listen_backlog = 128;

struct listener_options {
    std::string path;
    std::uint32_t mode = 0660;
    std::string group;  // empty: leave the group as created
};

// Removes the socket file the daemon bound when it goes, but only if the path still names
// the same inode (a newer daemon may have replaced it).
class socket_file {
public:
    socket_file() = default;
    socket_file(std::string path, dev_t dev, ino_t ino) : path_(std::move(path)), dev_(dev), ino_(ino) {}
    socket_file(socket_file&& other) noexcept;
    socket_file& operator=(socket_file&& other) noexcept;
    socket_file(const socket_file&) = delete;
    socket_file& operator=(const socket_file&) = delete;
    ~socket_file();

    const std::string& path() const noexcept { return path_; }
    // Forgets the file: it stays behind (tests use this to make a stale socket).
    void release() noexcept { path_.clear(); }

private:
    std::string path_;  // empty: nothing to remove (socket activation)
    dev_t dev_ = 0;
    ino_t ino_ = 0;
};

// An acceptor of any stream socket family (Asio's generic protocol has no acceptor typedef).
using generic_acceptor = boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>;

// Who may use a listener: the Unix socket's file permissions decide who connects, and a TCP
// listener checks the API keys (when there are any) on every request.
enum class listener_kind : std::uint8_t { unix_socket, tcp };

struct listener {
    generic_acceptor acceptor;
    listener_kind kind = listener_kind::unix_socket;
    socket_file file;         // empty path when activated or TCP
    bool activated = false;   // the socket came from systemd
    std::string description;  // for logs: the path, "systemd socket (fd 3)" or "tcp 127.0.0.1:8077"
};

// Takes the systemd socket when there is one, else binds `options.path`. Errors name the
// path and the reason ("another moed is listening on PATH", "PATH exists and is not a
// socket", "unknown group 'x'").
result<std::unique_ptr<listener>> open_listener(boost::asio::io_context& io, const listener_options& options);

// Binds and listens on `address` (SO_REUSEADDR, so a restart does not wait out TIME_WAIT;
// an IPv6 address serves IPv6 only). Errors name the address ("server.listen
// 127.0.0.1:8077: bind: Address already in use").
result<std::unique_ptr<listener>> open_tcp_listener(boost::asio::io_context& io, const listen_address& address);

// The group id of `name`; errc::not_found when there is no such group.
result<gid_t> lookup_group(const std::string& name);

// The process on the other end of a connected Unix socket, as the kernel recorded it at
// connect() (SO_PEERCRED).
struct peer_identity {
    pid_t pid = 0;
    uid_t uid = 0;
    gid_t gid = 0;
};

// The peer of `fd`; nullopt when the kernel does not say or `fd` is not a Unix socket.
std::optional<peer_identity> peer_of(int fd);
// The remote address of a TCP socket `fd`, as "tcp 192.0.2.1:50000" or "tcp [::1]:50000";
// empty when `fd` is not an IP socket. `address_key` gets a 64-bit key of the address
// alone (not the port), the same for every connection from one host.
std::string tcp_peer(int fd, std::uint64_t& address_key);
// "pid=123 uid=1000 gid=1000", or "pid=? uid=? gid=?" for an unknown peer.
std::string describe_peer(const std::optional<peer_identity>& peer);
// describe_peer(peer_of(fd)).
std::string peer_credentials(int fd);

}  // namespace moed::daemon
