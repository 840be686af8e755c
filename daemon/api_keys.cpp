#include "daemon/api_keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

namespace moed::daemon {

namespace {

// A file descriptor closed when it goes.
struct fd_guard {
    int fd;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

// Every byte of `presented` is compared (against the key repeated when it is shorter), so
// the time depends on the presented length only; a length difference fails the match
// through the same accumulator instead of an early return.
bool same_key(std::string_view presented, std::string_view key) noexcept {
    std::size_t diff = presented.size() ^ key.size();
    const std::size_t n = key.size();
    for (std::size_t i = 0; i < presented.size(); ++i) {
        const unsigned char k = n == 0 ? 0 : static_cast<unsigned char>(key[i % n]);
        diff |= static_cast<unsigned char>(presented[i]) ^ k;
    }
    return diff == 0;
}

}  // namespace

result<api_keys> api_keys::load(const std::string& path) {
    constexpr std::string_view key_name = "server.api_keys_file";
    fd_guard f{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY)};
    if (f.fd < 0) return make_error(errc::invalid_argument, "{}: cannot open '{}': {}", key_name, path, std::strerror(errno));
    struct stat st {};
    if (::fstat(f.fd, &st) != 0)
        return make_error(errc::io, "{}: cannot stat '{}': {}", key_name, path, std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return make_error(errc::invalid_argument, "{}: '{}' is not a regular file", key_name, path);
    if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0)
        return make_error(errc::invalid_argument,
                          "{}: '{}' is {} by other users (mode {:04o}); keys must be private: chmod o-rwx '{}'",
                          key_name, path, (st.st_mode & S_IROTH) != 0 ? "readable" : "writable", st.st_mode & 07777,
                          path);
    if (static_cast<std::uint64_t>(st.st_size) > max_api_keys_file_bytes)
        return make_error(errc::invalid_argument, "{}: '{}' is {} bytes, more than the {} a keys file may be", key_name,
                          path, st.st_size, max_api_keys_file_bytes);
    std::string text(static_cast<std::size_t>(st.st_size), '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        const ssize_t n = ::read(f.fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return make_error(errc::io, "{}: reading '{}': {}", key_name, path, std::strerror(errno));
        if (n == 0) break;
        got += static_cast<std::size_t>(n);
    }
    text.resize(got);

    std::vector<std::string> keys;
    std::size_t line_no = 0;
    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        const std::string_view line = trim(std::string_view(text).substr(pos, end - pos));
        pos = end + 1;
        ++line_no;
        if (line.empty() || line.front() == '#') continue;
        if (line.size() > max_api_key_bytes)
            return make_error(errc::invalid_argument, "{}: {}:{}: a key of {} bytes is longer than the {} allowed",
                              key_name, path, line_no, line.size(), max_api_key_bytes);
        for (char ch : line) {
            // The key is not quoted in the message: it is a secret.
            if (ch <= ' ' || ch > '~')
                return make_error(errc::invalid_argument,
                                  "{}: {}:{}: a key must be printable ASCII without spaces", key_name, path, line_no);
        }
        keys.emplace_back(line);
    }
    if (keys.empty()) return make_error(errc::invalid_argument, "{}: '{}' holds no key", key_name, path);
    return api_keys(std::move(keys));
}

bool api_keys::accepts(std::string_view presented) const noexcept {
    bool any = false;
    for (const auto& k : keys_) any |= same_key(presented, k);
    return any && !presented.empty();
}

std::optional<std::string_view> bearer_token(std::string_view authorization) noexcept {
    constexpr std::string_view scheme = "bearer";
    if (authorization.size() <= scheme.size()) return std::nullopt;
    for (std::size_t i = 0; i < scheme.size(); ++i) {
        char c = authorization[i];
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        if (c != scheme[i]) return std::nullopt;
    }
    std::string_view rest = authorization.substr(scheme.size());
    if (rest.front() != ' ' && rest.front() != '\t') return std::nullopt;
    rest = trim(rest);
    if (rest.empty()) return std::nullopt;
    return rest;
}

std::string invalid_api_key_body(std::string_view message) {
    const nlohmann::json body{
        {"error", {{"message", message}, {"type", "invalid_request_error"}, {"param", nullptr}, {"code", "invalid_api_key"}}}};
    return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace moed::daemon
