// The C ABI over the C++ API. Every function catches everything: no exception crosses
// into C. Errors are kept on the handle for moe_last_error / moe_last_http_status.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "moed/client.h"
#include "moed/client.hpp"

struct moe_client {
    explicit moe_client(std::string path) : client(std::move(path)) {}

    moed::client client;
    // The latest call's outcome; calls from several threads share it (see client.h).
    mutable std::mutex mutex;
    std::string last_error;
    int last_http_status = 0;
};

namespace {

constexpr const char* null_handle_message = "libmoeclient: the client handle is NULL";

void set_outcome(moe_client* c, std::string message, int http_status) noexcept {
    try {
        const std::lock_guard lock(c->mutex);
        c->last_error = std::move(message);
        c->last_http_status = http_status;
    } catch (...) {
        // Only locking can fail here; the outcome is then stale, which the header allows.
    }
}

int code_of(moed::client_errc code) noexcept {
    switch (code) {
        case moed::client_errc::not_running: return MOE_ERR_NOT_RUNNING;
        case moed::client_errc::unreachable: return MOE_ERR_UNREACHABLE;
        case moed::client_errc::timeout: return MOE_ERR_TIMEOUT;
        case moed::client_errc::connection: return MOE_ERR_CONNECTION;
        case moed::client_errc::http: return MOE_ERR_HTTP;
        case moed::client_errc::protocol: return MOE_ERR_PROTOCOL;
        case moed::client_errc::invalid_argument: return MOE_ERR_INVALID_ARGUMENT;
    }
    return MOE_ERR_INTERNAL;
}

// A malloc'ed copy for the caller (freed with moe_free); nullptr when out of memory.
char* copy_out(const std::string& s) noexcept {
    char* p = static_cast<char*>(std::malloc(s.size() + 1));
    if (p == nullptr) return nullptr;
    std::memcpy(p, s.data(), s.size());
    p[s.size()] = '\0';
    return p;
}

// Records an error result on the handle; on an http error hands out moed's body.
int fail(moe_client* c, const moed::client_error& err, char** out) noexcept {
    set_outcome(c, err.message, err.http_status);
    if (out != nullptr && err.code == moed::client_errc::http && !err.body.empty()) *out = copy_out(err.body);
    return code_of(err.code);
}

// Hands out a successful body.
int succeed(moe_client* c, const std::string& body, int http_status, char** out) noexcept {
    if (out != nullptr) {
        *out = copy_out(body);
        if (*out == nullptr) {
            set_outcome(c, "libmoeclient: out of memory", http_status);
            return MOE_ERR_OUT_OF_MEMORY;
        }
    }
    set_outcome(c, std::string(), http_status);
    return MOE_OK;
}

// Runs `body` (which returns a status code), mapping exceptions to codes.
template <typename Body>
int guarded(moe_client* c, char** out, Body&& body) noexcept {
    if (out != nullptr) *out = nullptr;
    if (c == nullptr) return MOE_ERR_INVALID_ARGUMENT;
    try {
        return body();
    } catch (const std::bad_alloc&) {
        set_outcome(c, "libmoeclient: out of memory", 0);
        return MOE_ERR_OUT_OF_MEMORY;
    } catch (const std::exception& e) {
        set_outcome(c, std::string("libmoeclient: unexpected failure: ") + e.what(), 0);
        return MOE_ERR_INTERNAL;
    } catch (...) {
        set_outcome(c, "libmoeclient: unexpected failure (unknown exception)", 0);
        return MOE_ERR_INTERNAL;
    }
}

// The names moed accepts (a name is part of the target, so nothing else is sent).
bool valid_profile_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > 64 || name.front() == '.') return false;
    for (char c : name) {
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return false;
    }
    return true;
}

int invalid(moe_client* c, const char* message) noexcept {
    set_outcome(c, message, 0);
    return MOE_ERR_INVALID_ARGUMENT;
}

}  // namespace

extern "C" {

moe_client* moe_client_open(const char* socket_path) {
    try {
        return new moe_client(socket_path != nullptr ? std::string(socket_path) : std::string());
    } catch (...) {
        return nullptr;
    }
}

void moe_client_close(moe_client* client) { delete client; }

int moe_set_timeouts(moe_client* client, unsigned connect_timeout_ms, unsigned read_timeout_ms) {
    return guarded(client, nullptr, [&] {
        moed::client_options o = client->client.options();
        if (connect_timeout_ms != 0) o.connect_timeout = std::chrono::milliseconds(connect_timeout_ms);
        if (read_timeout_ms != 0) o.read_timeout = std::chrono::milliseconds(read_timeout_ms);
        client->client = moed::client(std::move(o));
        set_outcome(client, std::string(), 0);
        return MOE_OK;
    });
}

int moe_complete(moe_client* client, const char* request_json, char** response_json) {
    return guarded(client, response_json, [&] {
        if (request_json == nullptr) return invalid(client, "libmoeclient: request_json is NULL");
        auto r = client->client.complete_json(request_json);
        if (!r) return fail(client, r.error(), response_json);
        return succeed(client, *r, 200, response_json);
    });
}

int moe_stream(moe_client* client, const char* request_json, moe_stream_callback callback, void* user,
               char** response_json) {
    return guarded(client, response_json, [&] {
        if (request_json == nullptr) return invalid(client, "libmoeclient: request_json is NULL");
        moed::stream_callback on_text;
        if (callback != nullptr) {
            on_text = [callback, user](std::string_view text) { return callback(text.data(), text.size(), user) == 0; };
        }
        auto r = client->client.stream_json(request_json, on_text);
        if (!r) return fail(client, r.error(), response_json);
        if (response_json == nullptr) return succeed(client, std::string(), 200, nullptr);
        const nlohmann::json summary = {
            {"id", r->id},
            {"model", r->model},
            {"text", r->text},
            {"finish_reason", r->finish_reason},
            {"usage",
             {{"prompt_tokens", r->usage.prompt_tokens},
              {"completion_tokens", r->usage.completion_tokens},
              {"total_tokens", r->usage.total_tokens}}}};
        // Generated text may end inside a UTF-8 sequence when a stream is stopped early:
        // replace what cannot be encoded rather than fail.
        return succeed(client, summary.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), 200,
                       response_json);
    });
}

int moe_status_json(moe_client* client, char** status_json) {
    return guarded(client, status_json, [&] {
        auto r = client->client.get_json("/v1/status");
        if (!r) return fail(client, r.error(), status_json);
        return succeed(client, *r, 200, status_json);
    });
}

int moe_models_json(moe_client* client, char** models_json) {
    return guarded(client, models_json, [&] {
        auto r = client->client.get_json("/v1/models");
        if (!r) return fail(client, r.error(), models_json);
        return succeed(client, *r, 200, models_json);
    });
}

int moe_profiles_json(moe_client* client, char** list_json) {
    return guarded(client, list_json, [&] {
        auto r = client->client.get_json("/v1/profiles");
        if (!r) return fail(client, r.error(), list_json);
        return succeed(client, *r, 200, list_json);
    });
}

int moe_profile_json(moe_client* client, const char* name, char** profile_json) {
    return guarded(client, profile_json, [&] {
        if (name == nullptr) return invalid(client, "libmoeclient: name is NULL");
        auto r = client->client.show_profile(name);
        if (!r) return fail(client, r.error(), profile_json);
        return succeed(client, r->raw_json, 200, profile_json);
    });
}

int moe_profile_create(moe_client* client, const char* request_json, char** response_json) {
    return guarded(client, response_json, [&] {
        if (request_json == nullptr) return invalid(client, "libmoeclient: request_json is NULL");
        const nlohmann::json j = nlohmann::json::parse(request_json, nullptr, /*allow_exceptions=*/false);
        if (!j.is_object()) return invalid(client, "libmoeclient: request_json is not a JSON object");
        auto r = client->client.request_json("POST", "/v1/profiles", request_json);
        if (!r) return fail(client, r.error(), response_json);
        return succeed(client, *r, 201, response_json);
    });
}

int moe_profile_delete(moe_client* client, const char* name, char** response_json) {
    return guarded(client, response_json, [&] {
        if (name == nullptr) return invalid(client, "libmoeclient: name is NULL");
        if (!valid_profile_name(name))
            return invalid(client, "libmoeclient: not a profile name (1 to 64 letters, digits, '.', '_' or '-', not "
                                   "starting with '.')");
        auto r = client->client.request_json("DELETE", std::string("/v1/profiles/") + name);
        if (!r) return fail(client, r.error(), response_json);
        return succeed(client, *r, 200, response_json);
    });
}

int moe_health(moe_client* client) {
    return guarded(client, nullptr, [&] {
        auto r = client->client.health();
        if (!r) return fail(client, r.error(), nullptr);
        return succeed(client, std::string(), 200, nullptr);
    });
}

const char* moe_last_error(const moe_client* client) {
    if (client == nullptr) return null_handle_message;
    try {
        // The pointer stays valid until the handle's next call, as documented.
        const std::lock_guard lock(client->mutex);
        return client->last_error.c_str();
    } catch (...) {
        return "libmoeclient: the error message could not be read";
    }
}

int moe_last_http_status(const moe_client* client) {
    if (client == nullptr) return 0;
    try {
        const std::lock_guard lock(client->mutex);
        return client->last_http_status;
    } catch (...) {
        return 0;
    }
}

const char* moe_strerror(int code) {
    switch (code) {
        case MOE_OK: return "ok";
        case MOE_ERR_NOT_RUNNING: return "not_running";
        case MOE_ERR_UNREACHABLE: return "unreachable";
        case MOE_ERR_TIMEOUT: return "timeout";
        case MOE_ERR_CONNECTION: return "connection";
        case MOE_ERR_HTTP: return "http";
        case MOE_ERR_PROTOCOL: return "protocol";
        case MOE_ERR_INVALID_ARGUMENT: return "invalid_argument";
        case MOE_ERR_OUT_OF_MEMORY: return "out_of_memory";
        case MOE_ERR_INTERNAL: return "internal";
        default: return "unknown";
    }
}

const char* moe_version(void) { return MOED_CLIENT_VERSION; }

void moe_free(char* str) { std::free(str); }

}  // extern "C"
