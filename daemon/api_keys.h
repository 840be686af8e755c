// Bearer-token API keys for the TCP listener (server.api_keys_file): the keys file is read
// once at start-up, and every TCP request but /healthz must carry
// "Authorization: Bearer <key>" with one of its keys. The Unix socket needs no key: its file
// permissions decide who may connect.
// The file holds one key per line; blank lines and lines starting with '#' are skipped,
// spaces around a key are trimmed. A key is printable ASCII without spaces. The file must
// be a regular file that other users cannot read or write (mode o-rwx): keys readable by
// everyone are no secret, and the daemon refuses to start rather than serve with them.
// Keys are compared in constant time with respect to their contents: the time a check takes
// depends only on the presented key's length and the number of keys, never on how much of
// a key matched.
// Threads: load() on the main thread at start-up; accepts() from any thread (const).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace moed::daemon {

// A keys file is a few lines; refuse anything that cannot be one.
inline constexpr std::uint64_t max_api_keys_file_bytes = 1u << 20;
// A key longer than this is no key anyone typed or generated (OpenAI's are about 170).
inline constexpr std::size_t max_api_key_bytes = 1024;

class api_keys {
public:
    // Reads `path`. Errors name the file (and the line): missing, not a regular file,
    // readable or writable by others ("chmod o-rwx" fixes it), too large, a bad key, or
    // no key at all.
    static result<api_keys> load(const std::string& path);
    // Keys given directly (tests).
    static api_keys of(std::vector<std::string> keys) { return api_keys(std::move(keys)); }

    api_keys() = default;
    std::size_t size() const noexcept { return keys_.size(); }
    bool empty() const noexcept { return keys_.empty(); }

    // Whether `presented` is one of the keys; every key is compared in full.
    bool accepts(std::string_view presented) const noexcept;

private:
    explicit api_keys(std::vector<std::string> keys) : keys_(std::move(keys)) {}
    std::vector<std::string> keys_;
};

// The token of an Authorization value "Bearer <token>" (scheme case-insensitive, spaces
// after it skipped), or nullopt when the value is another scheme or has no token.
std::optional<std::string_view> bearer_token(std::string_view authorization) noexcept;

// The 401 body OpenAI's clients know: {"error":{"message":..,"type":"invalid_request_error",
// "code":"invalid_api_key"}}.
std::string invalid_api_key_body(std::string_view message);

}  // namespace moed::daemon
