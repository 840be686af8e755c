#include "daemon/config.h"

#include <arpa/inet.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/ranges.h>
#include <toml++/toml.h>

#include "common/assert.h"
#include "storage/fault_reader.h"

namespace moed::daemon {

namespace {

// A value as it arrives: from TOML with its own type, or from a flag as text that the key's
// type decides how to read.
struct raw_value {
    enum class kind : std::uint8_t { text, integer, floating, boolean };
    kind type = kind::text;
    std::string text;
    std::int64_t integer = 0;
    double floating = 0.0;
    bool boolean = false;
    bool from_flag = false;
};

const char* kind_name(raw_value::kind k) {
    switch (k) {
        case raw_value::kind::text: return "a string";
        case raw_value::kind::integer: return "an integer";
        case raw_value::kind::floating: return "a float";
        case raw_value::kind::boolean: return "a boolean";
    }
    return "a value";
}

// What a bad value is reported as: "file:line:col: key 'x'" or "--flag".
std::string got(const raw_value& v) {
    if (v.from_flag) return fmt::format("'{}'", v.text);
    return kind_name(v.type);
}

template <typename T>
result<T> to_integer(const raw_value& v, std::string_view origin, T min, T max) {
    std::int64_t value = 0;
    if (v.from_flag) {
        const char* begin = v.text.data();
        const char* end = begin + v.text.size();
        auto [ptr, ec] = std::from_chars(begin, end, value);
        if (ec != std::errc() || ptr != end || v.text.empty())
            return make_error(errc::invalid_argument, "{}: expected an integer, got {}", origin, got(v));
    } else if (v.type == raw_value::kind::integer) {
        value = v.integer;
    } else {
        return make_error(errc::invalid_argument, "{}: expected an integer, got {}", origin, got(v));
    }
    if (value < static_cast<std::int64_t>(min) || value > static_cast<std::int64_t>(max))
        return make_error(errc::invalid_argument, "{}: {} is out of range [{}, {}]", origin, value, min, max);
    return static_cast<T>(value);
}

result<std::string> to_string(const raw_value& v, std::string_view origin) {
    if (!v.from_flag && v.type != raw_value::kind::text)
        return make_error(errc::invalid_argument, "{}: expected a string, got {}", origin, got(v));
    return v.text;
}

// A file system path. `unset_allowed`: an empty value means "unset" (the key's default);
// otherwise an empty value is an error, since leaving the key out gives the default.
// `max_bytes` is the longest path the key's use allows (a Unix socket's sun_path is short).
result<std::string> to_path(const raw_value& v, std::string_view origin, bool unset_allowed,
                            std::size_t max_bytes = PATH_MAX - 1) {
    auto s = to_string(v, origin);
    if (!s) return s;
    if (s->empty()) {
        if (unset_allowed) return s;
        return make_error(errc::invalid_argument, "{}: an empty path; leave the key out for the default", origin);
    }
    if (s->find('\0') != std::string::npos)
        return make_error(errc::invalid_argument, "{}: '{}' contains a NUL byte", origin, *s);
    if (s->size() > max_bytes)
        return make_error(errc::invalid_argument, "{}: '{}' is {} bytes long, more than the {} this path may have",
                          origin, *s, s->size(), max_bytes);
    return s;
}

// The longest path a Unix socket can bind (sun_path holds it with its terminating NUL).
constexpr std::size_t max_socket_path_bytes = sizeof(sockaddr_un::sun_path) - 1;

result<bool> to_bool(const raw_value& v, std::string_view origin) {
    if (v.from_flag) {
        static constexpr std::array<std::string_view, 4> yes{"true", "yes", "on", "1"};
        static constexpr std::array<std::string_view, 4> no{"false", "no", "off", "0"};
        for (auto y : yes)
            if (v.text == y) return true;
        for (auto n : no)
            if (v.text == n) return false;
        return make_error(errc::invalid_argument, "{}: expected true or false, got {}", origin, got(v));
    }
    if (v.type != raw_value::kind::boolean)
        return make_error(errc::invalid_argument, "{}: expected a boolean, got {}", origin, got(v));
    return v.boolean;
}

// Seconds: an integer or a float in (0, max].
result<double> to_seconds(const raw_value& v, std::string_view origin, double max) {
    double value = 0.0;
    if (v.from_flag) {
        const char* begin = v.text.data();
        const char* end = begin + v.text.size();
        auto [ptr, ec] = std::from_chars(begin, end, value);
        if (ec != std::errc() || ptr != end || v.text.empty())
            return make_error(errc::invalid_argument, "{}: expected a number of seconds, got {}", origin, got(v));
    } else if (v.type == raw_value::kind::integer) {
        value = static_cast<double>(v.integer);
    } else if (v.type == raw_value::kind::floating) {
        value = v.floating;
    } else {
        return make_error(errc::invalid_argument, "{}: expected a number of seconds, got {}", origin, got(v));
    }
    if (!std::isfinite(value) || value <= 0.0 || value > max)
        return make_error(errc::invalid_argument, "{}: {} seconds is out of range (0, {}]", origin, value, max);
    return value;
}

// Bytes: an integer, or a size text ("1MiB").
result<std::uint64_t> to_bytes(const raw_value& v, std::string_view origin, std::uint64_t min, std::uint64_t max) {
    std::uint64_t value = 0;
    if (!v.from_flag && v.type == raw_value::kind::integer) {
        if (v.integer < 0)
            return make_error(errc::invalid_argument, "{}: {} is out of range [{}, {}]", origin, v.integer, min, max);
        value = static_cast<std::uint64_t>(v.integer);
    } else if (v.from_flag || v.type == raw_value::kind::text) {
        auto parsed = parse_bytes(v.text);
        if (!parsed) return make_error(errc::invalid_argument, "{}: {}", origin, parsed.error().message);
        value = *parsed;
    } else {
        return make_error(errc::invalid_argument, "{}: expected a size (\"1MiB\" or bytes), got {}", origin, got(v));
    }
    if (value < min || value > max)
        return make_error(errc::invalid_argument, "{}: {} bytes is out of range [{}, {}]", origin, value, min, max);
    return value;
}

// A file mode: an integer (TOML 0o660) or octal text ("0660", "660").
result<std::uint32_t> to_mode(const raw_value& v, std::string_view origin) {
    std::int64_t value = 0;
    if (!v.from_flag && v.type == raw_value::kind::integer) {
        value = v.integer;
    } else if (v.from_flag || v.type == raw_value::kind::text) {
        std::string_view t = v.text;
        if (t.starts_with("0o")) t.remove_prefix(2);
        auto [ptr, ec] = std::from_chars(t.data(), t.data() + t.size(), value, 8);
        if (ec != std::errc() || ptr != t.data() + t.size() || t.empty())
            return make_error(errc::invalid_argument, "{}: expected an octal mode such as \"0660\", got {}", origin,
                              got(v));
    } else {
        return make_error(errc::invalid_argument, "{}: expected an octal mode such as \"0660\", got {}", origin, got(v));
    }
    if (value < 0 || value > 0777)
        return make_error(errc::invalid_argument, "{}: mode {:o} is out of range [0, 0777]", origin, value);
    // Connecting to a Unix socket needs write permission: without the owner's, not even the
    // daemon's own user (or moectl run as it) could connect.
    if ((value & 0600) != 0600)
        return make_error(errc::invalid_argument,
                          "{}: mode {:04o} does not let the socket's owner read and write it (connect needs that); "
                          "use 0600 or more, e.g. 0660",
                          origin, value);
    return static_cast<std::uint32_t>(value);
}

using setter = result<void> (*)(daemon_config&, const raw_value&, std::string_view origin);

struct key_spec {
    std::string_view key;
    std::string_view type;  // for --help
    std::string_view fallback;  // default, for --help
    std::string_view help;
    setter set;
};

// Upper bounds that keep a typo from asking for absurd resources; each is far above any
// machine moed targets but low enough that derived sizes cannot overflow.
constexpr int max_threads = 1024;
constexpr std::int64_t max_ctx = 1 << 20;
constexpr std::uint32_t max_sequences_limit = 1024;
constexpr std::uint32_t max_queue_length = 1 << 16;
constexpr std::int64_t max_batch_tokens_limit = 1 << 16;
constexpr std::int32_t max_tokens_limit = 1 << 20;
constexpr std::uint32_t max_stop_strings_limit = 64;
constexpr std::uint32_t max_io_depth = 4096;
constexpr int max_lookahead = 4;  // engine::max_lookahead_depth (the daemon library does not see it here)
constexpr std::uint64_t max_inflight_limit = 1ull << 40;
constexpr std::uint64_t max_body_bytes_limit = 1ull << 30;
constexpr std::uint32_t max_connections_limit = 1 << 16;
constexpr double max_timeout_s = 24 * 3600.0;
constexpr std::uint32_t max_trace_lookahead = 4;  // engine::max_lookahead_depth
// A model id is a name in URLs and JSON; a longer one is a mistake (a path pasted in).
constexpr std::size_t max_model_id_bytes = 256;

#define MOED_SET(expr_field, conversion)                          \
    [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> { \
        auto r = conversion;                                      \
        if (!r) return unexpected(std::move(r).error());          \
        c.expr_field = *r;                                        \
        return {};                                                \
    }

const std::array<key_spec, 37> keys{{
    {"model.path", "path", "the bundled tinymoe model", "GGUF model file to serve",
     MOED_SET(model_path, to_path(v, o, true))},
    {"model.id", "string", "from the file name", "the name clients give as \"model\"",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         auto s = to_string(v, o);
         if (!s) return unexpected(std::move(s).error());
         if (s->size() > max_model_id_bytes)
             return make_error(errc::invalid_argument, "{}: {} bytes is longer than the {} an id may have", o,
                               s->size(), max_model_id_bytes);
         if (s->find_first_of(std::string_view(" \t\r\n'\"\0/", 8)) != std::string::npos)
             return make_error(errc::invalid_argument, "{}: '{}' must not contain spaces, quotes, slashes or control "
                               "characters", o, *s);
         c.model_id = *s;
         return {};
     }},
    {"model.inject_slow_load", "text", "unset (off)",
     "for testing only: pause before every piece of the weights copy, e.g. \"delay_ms=200,piece=1MiB\"",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         auto s = to_string(v, o);
         if (!s) return unexpected(std::move(s).error());
         if (auto spec = parse_slow_load(*s); !spec)
             return make_error(errc::invalid_argument, "{}: {}", o, spec.error().message);
         c.inject_slow_load = *s;
         return {};
     }},
    {"engine.threads", "integer", "0 (all cores)", "compute threads", MOED_SET(threads, to_integer<int>(v, o, 0, max_threads))},
    {"engine.ctx", "integer", "0 (min(training context, 4096))", "context tokens per sequence (prompt + output)",
     MOED_SET(ctx, to_integer<std::int64_t>(v, o, 0, max_ctx))},
    {"engine.max_sequences", "integer", "8", "sequences generated concurrently (one KV cache each)",
     MOED_SET(max_sequences, to_integer<std::uint32_t>(v, o, 1, max_sequences_limit))},
    {"engine.queue_length", "integer", "64", "requests waiting beyond the running ones; more answer 429",
     MOED_SET(queue_length, to_integer<std::uint32_t>(v, o, 1, max_queue_length))},
    {"engine.max_batch_tokens", "integer", "256", "tokens per forward pass",
     MOED_SET(max_batch_tokens, to_integer<std::int64_t>(v, o, 1, max_batch_tokens_limit))},
    {"limits.max_tokens", "integer", "4096", "largest max_tokens a request may ask for",
     MOED_SET(max_tokens, to_integer<std::int32_t>(v, o, 1, max_tokens_limit))},
    {"limits.default_max_tokens", "integer", "256", "max_tokens of a request that gives none",
     MOED_SET(default_max_tokens, to_integer<std::int32_t>(v, o, 1, max_tokens_limit))},
    {"limits.max_stop_strings", "integer", "8", "stop strings per request",
     MOED_SET(max_stop_strings, to_integer<std::uint32_t>(v, o, 0, max_stop_strings_limit))},
    {"tiers.host_budget", "size or percent", "unset (all experts resident)",
     "host RAM for routed experts: \"4GiB\", \"25%\" or \"0.25\" of the expert bytes",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         if (!v.from_flag && v.type != raw_value::kind::text)
             return make_error(errc::invalid_argument, "{}: expected a size or percent string, got {}", o, got(v));
         auto b = parse_budget(v.text);
         if (!b) return make_error(errc::invalid_argument, "{}: {}", o, b.error().message);
         c.host_budget = *b;
         return {};
     }},
    {"tiers.io_depth", "integer", "32", "expert reads in flight",
     MOED_SET(io_depth, to_integer<std::uint32_t>(v, o, 1, max_io_depth))},
    {"tiers.mlock", "required|best_effort|off", "best_effort", "lock the host tier in RAM",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         auto s = to_string(v, o);
         if (!s) return unexpected(std::move(s).error());
         if (*s == "required") c.mlock = storage::memory_lock::required;
         else if (*s == "best_effort") c.mlock = storage::memory_lock::best_effort;
         else if (*s == "off") c.mlock = storage::memory_lock::off;
         else return make_error(errc::invalid_argument, "{}: expected required, best_effort or off, got '{}'", o, *s);
         return {};
     }},
    {"tiers.io_uring", "boolean", "true", "read experts through io_uring (else a pread pool)",
     MOED_SET(io_uring, to_bool(v, o))},
    {"tiers.direct_io", "boolean", "true", "read experts with O_DIRECT (bypass the page cache)",
     MOED_SET(direct_io, to_bool(v, o))},
    {"tiers.prefetch", "boolean", "true",
     "read the coming layers' predicted experts ahead of use (router lookahead; tiered experts only)",
     MOED_SET(prefetch, to_bool(v, o))},
    {"tiers.lookahead", "integer", "2", "layers the router lookahead predicts at the start of each layer",
     MOED_SET(lookahead, to_integer<int>(v, o, 1, max_lookahead))},
    {"tiers.max_inflight", "size", "256MiB", "expert bytes being read at once (demand and prefetch)",
     MOED_SET(max_inflight_bytes, to_bytes(v, o, 1, max_inflight_limit))},
    {"tiers.inject_faults", "faults", "unset (off)",
     "for testing only: recurring faults in expert reads, e.g. \"eio_every=400,eio_burst=40,short=0.5,"
     "spike_every=50,spike_us=20000,replace_every=2000\"",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         auto s = to_string(v, o);
         if (!s) return unexpected(std::move(s).error());
         if (auto plan = storage::parse_fault_plan(*s); !plan)
             return make_error(errc::invalid_argument, "{}: {}", o, plan.error().message);
         c.inject_faults = *s;
         return {};
     }},
    {"socket.path", "path", "/run/moed/moed.sock as root or a service, $XDG_RUNTIME_DIR/moed/moed.sock as a user",
     "Unix socket to listen on (unless socket-activated)",
     MOED_SET(socket_path, to_path(v, o, false, max_socket_path_bytes))},
    {"socket.mode", "octal", "0660", "permissions of the socket file", MOED_SET(socket_mode, to_mode(v, o))},
    {"socket.group", "string", "unset (the daemon's group)", "group that owns the socket file",
     MOED_SET(socket_group, to_string(v, o))},
    {"server.listen", "host:port", "unset (no TCP listener)",
     "also serve the API on TCP, e.g. \"127.0.0.1:8077\" or \"[::1]:8077\" (a non-loopback address is logged "
     "as a warning and needs server.api_keys_file or server.allow_unauthenticated)",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         auto s = to_string(v, o);
         if (!s) return unexpected(std::move(s).error());
         if (!s->empty()) {
             if (auto addr = parse_listen_address(*s); !addr)
                 return make_error(errc::invalid_argument, "{}: '{}': {}", o, *s, addr.error().message);
         }
         c.listen = *s;
         return {};
     }},
    {"server.api_keys_file", "path", "unset (no keys)",
     "file of API keys, one per line (# comments); TCP requests then need \"Authorization: Bearer KEY\"; "
     "the file must not be readable by others",
     MOED_SET(api_keys_file, to_path(v, o, true))},
    {"server.allow_unauthenticated", "boolean", "false",
     "allow server.listen on a non-loopback address without server.api_keys_file",
     MOED_SET(allow_unauthenticated, to_bool(v, o))},
    {"http.max_body_bytes", "size", "1MiB", "largest request body; larger ones answer 413",
     MOED_SET(max_body_bytes, to_bytes(v, o, 1, max_body_bytes_limit))},
    {"http.max_connections", "integer", "256", "open client connections; more answer 503 and close",
     MOED_SET(max_connections, to_integer<std::uint32_t>(v, o, 1, max_connections_limit))},
    {"http.max_connections_per_uid", "integer", "0 (a quarter of http.max_connections, at least 1)",
     "open connections of one local user (peer uid); more answer 503 and close, so one user cannot lock out others",
     MOED_SET(max_connections_per_uid, to_integer<std::uint32_t>(v, o, 0, max_connections_limit))},
    {"http.read_timeout_s", "seconds", "60", "time to receive a request (and keep-alive idle time)",
     MOED_SET(read_timeout_s, to_seconds(v, o, max_timeout_s))},
    {"http.write_timeout_s", "seconds", "60", "time for one write to a client",
     MOED_SET(write_timeout_s, to_seconds(v, o, max_timeout_s))},
    {"daemon.drain_timeout_s", "seconds", "30", "on SIGTERM, time for running requests to finish",
     MOED_SET(drain_timeout_s, to_seconds(v, o, max_timeout_s))},
    {"daemon.log_level", "debug|info|warn|error|off", "info", "lowest level logged",
     [](daemon_config& c, const raw_value& v, std::string_view o) -> result<void> {
         auto s = to_string(v, o);
         if (!s) return unexpected(std::move(s).error());
         if (!parse_log_level(*s, c.level))
             return make_error(errc::invalid_argument, "{}: expected debug, info, warn, error or off, got '{}'", o, *s);
         return {};
     }},
    {"daemon.state_dir", "path", "/var/lib/moed as root or a service, $XDG_STATE_HOME/moed as a user",
     "directory for state (task profiles)", MOED_SET(state_dir, to_path(v, o, false))},
    {"daemon.watchdog", "boolean", "true", "answer systemd's watchdog (WATCHDOG_USEC) with pings",
     MOED_SET(watchdog, to_bool(v, o))},
    {"trace.path", "path", "unset (off)", "record every token's routing to this trace file (also --trace FILE)",
     MOED_SET(trace_path, to_path(v, o, true))},
    {"trace.lookahead", "integer", "2", "router lookahead layers recorded in the trace (0..4)",
     MOED_SET(trace_lookahead, to_integer<std::uint32_t>(v, o, 0, max_trace_lookahead))},
}};

#undef MOED_SET

// How a reload sees each key: whether a running daemon applies it, and how two values of it
// compare. Every key of `keys` has an entry (changed_keys asserts it).
struct key_reload {
    std::string_view key;
    bool reloadable;
    bool (*same)(const daemon_config&, const daemon_config&);
};

#define MOED_SAME(field) [](const daemon_config& a, const daemon_config& b) { return a.field == b.field; }

const std::array<key_reload, keys.size()> reload_rules{{
    {"model.path", false, MOED_SAME(model_path)},
    {"model.id", false, MOED_SAME(model_id)},
    {"model.inject_slow_load", false, MOED_SAME(inject_slow_load)},
    {"engine.threads", false, MOED_SAME(threads)},
    {"engine.ctx", false, MOED_SAME(ctx)},
    {"engine.max_sequences", false, MOED_SAME(max_sequences)},
    {"engine.queue_length", false, MOED_SAME(queue_length)},
    {"engine.max_batch_tokens", false, MOED_SAME(max_batch_tokens)},
    {"limits.max_tokens", false, MOED_SAME(max_tokens)},
    {"limits.default_max_tokens", false, MOED_SAME(default_max_tokens)},
    {"limits.max_stop_strings", false, MOED_SAME(max_stop_strings)},
    {"tiers.host_budget", false,
     [](const daemon_config& a, const daemon_config& b) {
         if (a.host_budget.has_value() != b.host_budget.has_value()) return false;
         if (!a.host_budget) return true;
         return a.host_budget->bytes == b.host_budget->bytes && a.host_budget->fraction == b.host_budget->fraction &&
                a.host_budget->relative == b.host_budget->relative;
     }},
    {"tiers.io_depth", false, MOED_SAME(io_depth)},
    {"tiers.mlock", false, MOED_SAME(mlock)},
    {"tiers.io_uring", false, MOED_SAME(io_uring)},
    {"tiers.direct_io", false, MOED_SAME(direct_io)},
    {"tiers.prefetch", false, MOED_SAME(prefetch)},
    {"tiers.lookahead", false, MOED_SAME(lookahead)},
    {"tiers.max_inflight", false, MOED_SAME(max_inflight_bytes)},
    {"tiers.inject_faults", false, MOED_SAME(inject_faults)},
    {"socket.path", false, MOED_SAME(socket_path)},
    {"socket.mode", false, MOED_SAME(socket_mode)},
    {"socket.group", false, MOED_SAME(socket_group)},
    {"server.listen", false, MOED_SAME(listen)},
    {"server.api_keys_file", false, MOED_SAME(api_keys_file)},
    {"server.allow_unauthenticated", false, MOED_SAME(allow_unauthenticated)},
    {"http.max_body_bytes", true, MOED_SAME(max_body_bytes)},
    {"http.max_connections", true, MOED_SAME(max_connections)},
    {"http.max_connections_per_uid", true, MOED_SAME(max_connections_per_uid)},
    {"http.read_timeout_s", true, MOED_SAME(read_timeout_s)},
    {"http.write_timeout_s", true, MOED_SAME(write_timeout_s)},
    {"daemon.drain_timeout_s", true, MOED_SAME(drain_timeout_s)},
    {"daemon.log_level", true, MOED_SAME(level)},
    {"daemon.state_dir", false, MOED_SAME(state_dir)},
    {"daemon.watchdog", false, MOED_SAME(watchdog)},
    {"trace.path", false, MOED_SAME(trace_path)},
    {"trace.lookahead", false, MOED_SAME(trace_lookahead)},
}};

#undef MOED_SAME

const key_reload& reload_rule(std::string_view key) {
    for (const auto& r : reload_rules)
        if (r.key == key) return r;
    MOED_ASSERT(false && "a config key without a reload rule");
    std::abort();
}

const key_spec* find_key(std::string_view key) {
    for (const auto& k : keys)
        if (k.key == key) return &k;
    return nullptr;
}

const key_spec* find_flag(std::string_view flag) {
    // The short spelling the other tools use (moe-run --trace FILE).
    if (flag == "--trace") flag = "--trace-path";
    for (const auto& k : keys)
        if (flag_for_key(k.key) == flag) return &k;
    return nullptr;
}

std::string where(std::string_view source, const toml::source_region& region) {
    return fmt::format("{}:{}:{}", source, region.begin.line, region.begin.column);
}

}  // namespace

std::vector<std::string_view> config_keys() {
    std::vector<std::string_view> out;
    for (const auto& k : keys) out.push_back(k.key);
    return out;
}

std::vector<std::string_view> changed_keys(const daemon_config& a, const daemon_config& b) {
    std::vector<std::string_view> out;
    for (const auto& k : keys)
        if (!reload_rule(k.key).same(a, b)) out.push_back(k.key);
    return out;
}

bool reloadable_key(std::string_view key) { return reload_rule(key).reloadable; }

std::string flag_for_key(std::string_view key) {
    std::string flag = "--";
    for (char ch : key) flag += (ch == '.' || ch == '_') ? '-' : ch;
    return flag;
}

result<command_line> parse_command_line(int argc, const char* const* argv) {
    command_line cmd;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "-h" || arg == "--help") {
            cmd.help = true;
            continue;
        }
        if (arg == "--version") {
            cmd.version = true;
            continue;
        }
        if (!arg.starts_with("--"))
            return make_error(errc::invalid_argument, "unexpected argument '{}' (see --help)", arg);
        std::string_view name = arg;
        std::optional<std::string_view> value;
        if (auto eq = arg.find('='); eq != std::string_view::npos) {
            name = arg.substr(0, eq);
            value = arg.substr(eq + 1);
        }
        if (!value) {
            if (i + 1 >= argc) return make_error(errc::invalid_argument, "{}: missing value", name);
            value = argv[++i];
        }
        if (name == "--config") {
            cmd.config_path = std::string(*value);
            continue;
        }
        const key_spec* spec = find_flag(name);
        if (!spec) return make_error(errc::invalid_argument, "unknown option '{}' (see --help)", name);
        cmd.overrides.emplace_back(std::string(spec->key), std::string(*value));
    }
    return cmd;
}

result<void> apply_text(daemon_config& config, std::string_view key, std::string_view value, std::string_view origin) {
    const key_spec* spec = find_key(key);
    if (!spec) return make_error(errc::invalid_argument, "{}: unknown key '{}'", origin, key);
    raw_value v;
    v.text = std::string(value);
    v.from_flag = true;
    return spec->set(config, v, origin);
}

result<void> apply_toml(daemon_config& config, std::string_view text, std::string_view source) {
    toml::table root;
    try {
        root = toml::parse(text, source);
    } catch (const toml::parse_error& e) {
        return make_error(errc::invalid_argument, "{}: {}", where(source, e.source()), e.description());
    } catch (const std::exception& e) {
        return make_error(errc::invalid_argument, "{}: {}", source, e.what());
    }
    for (auto&& [section_key, section] : root) {
        const std::string section_name(section_key.str());
        auto* table = section.as_table();
        if (!table) {
            // A top-level key: every key lives in a section, so this is either unknown or a
            // section written as a value.
            return make_error(errc::invalid_argument, "{}: unknown key '{}' (keys live in sections such as [socket])",
                              where(source, section_key.source()), section_name);
        }
        for (auto&& [name_key, node] : *table) {
            const std::string key = section_name + "." + std::string(name_key.str());
            const std::string origin = fmt::format("{}: key '{}'", where(source, name_key.source()), key);
            const key_spec* spec = find_key(key);
            if (!spec) return make_error(errc::invalid_argument, "{}: unknown key '{}'", where(source, name_key.source()), key);
            raw_value v;
            if (auto s = node.value_exact<std::string>()) {
                v.type = raw_value::kind::text;
                v.text = *s;
            } else if (auto i = node.value_exact<std::int64_t>()) {
                v.type = raw_value::kind::integer;
                v.integer = *i;
            } else if (auto d = node.value_exact<double>()) {
                v.type = raw_value::kind::floating;
                v.floating = *d;
            } else if (auto b = node.value_exact<bool>()) {
                v.type = raw_value::kind::boolean;
                v.boolean = *b;
            } else {
                // Arrays, tables, dates and times: no key takes one.
                return make_error(errc::invalid_argument, "{}: expected a string, number or boolean", origin);
            }
            MOED_TRY(spec->set(config, v, origin));
        }
    }
    return {};
}

std::string listen_address::text() const {
    return ipv6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

result<listen_address> parse_listen_address(std::string_view text) {
    listen_address out;
    std::string_view host;
    std::string_view port;
    if (text.starts_with("[")) {
        const auto close = text.find(']');
        if (close == std::string_view::npos) return make_error(errc::invalid_argument, "missing ']' after an IPv6 address");
        host = text.substr(1, close - 1);
        std::string_view rest = text.substr(close + 1);
        if (!rest.starts_with(":") || rest.size() == 1)
            return make_error(errc::invalid_argument, "missing port (expected [address]:port, e.g. [::1]:8077)");
        port = rest.substr(1);
        out.ipv6 = true;
    } else {
        const auto colon = text.rfind(':');
        if (colon == std::string_view::npos || colon + 1 == text.size())
            return make_error(errc::invalid_argument, "missing port (expected host:port, e.g. 127.0.0.1:8077)");
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
        if (host.find(':') != std::string_view::npos)
            return make_error(errc::invalid_argument, "an IPv6 address needs brackets: [{}]:{}", host, port);
    }
    if (host.empty()) return make_error(errc::invalid_argument, "missing host (expected host:port, e.g. 127.0.0.1:8077)");
    std::uint32_t number = 0;
    auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
    if (ec != std::errc() || ptr != port.data() + port.size())
        return make_error(errc::invalid_argument, "port '{}' is not a number", port);
    if (number < 1 || number > 65535) return make_error(errc::invalid_argument, "port {} is out of range [1, 65535]", number);
    out.port = static_cast<std::uint16_t>(number);
    out.host = std::string(host);
    if (!out.ipv6 && out.host == "localhost") out.host = "127.0.0.1";
    if (out.ipv6) {
        in6_addr a{};
        if (::inet_pton(AF_INET6, out.host.c_str(), &a) != 1)
            return make_error(errc::invalid_argument, "'{}' is not an IPv6 address", out.host);
        out.loopback = IN6_IS_ADDR_LOOPBACK(&a);
    } else {
        in_addr a{};
        if (::inet_pton(AF_INET, out.host.c_str(), &a) != 1)
            return make_error(errc::invalid_argument,
                              "'{}' is not a numeric IPv4 address (names other than localhost are not resolved)",
                              out.host);
        out.loopback = (ntohl(a.s_addr) >> 24) == 127;
    }
    return out;
}

result<slow_load_spec> parse_slow_load(std::string_view text) {
    slow_load_spec spec;
    std::size_t pos = 0;
    while (pos < text.size()) {
        std::size_t comma = text.find(',', pos);
        if (comma == std::string_view::npos) comma = text.size();
        const std::string_view item = text.substr(pos, comma - pos);
        pos = comma + 1;
        const auto eq = item.find('=');
        if (eq == std::string_view::npos)
            return make_error(errc::invalid_argument, "'{}': expected name=value (delay_ms=200,piece=1MiB)", item);
        const std::string_view name = item.substr(0, eq);
        const std::string_view value = item.substr(eq + 1);
        if (name == "delay_ms") {
            auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), spec.delay_ms);
            if (ec != std::errc() || ptr != value.data() + value.size() || value.empty() || spec.delay_ms > 60000)
                return make_error(errc::invalid_argument, "delay_ms: '{}' is not a number of milliseconds in [0, 60000]",
                                  value);
        } else if (name == "piece") {
            auto bytes = parse_bytes(value);
            if (!bytes) return make_error(errc::invalid_argument, "piece: {}", bytes.error().message);
            if (*bytes < 4096) return make_error(errc::invalid_argument, "piece: {} bytes is below 4096", *bytes);
            spec.piece_bytes = *bytes;
        } else {
            return make_error(errc::invalid_argument, "unknown field '{}' (delay_ms, piece)", name);
        }
    }
    return spec;
}

result<void> validate(const daemon_config& config) {
    // Empty socket.path and daemon.state_dir are "not given": load_config fills them in.
    if (!config.listen.empty()) {
        auto addr = parse_listen_address(config.listen);
        if (!addr) return make_error(errc::invalid_argument, "server.listen: '{}': {}", config.listen, addr.error().message);
        if (!addr->loopback && config.api_keys_file.empty() && !config.allow_unauthenticated)
            return make_error(errc::invalid_argument,
                              "server.listen: '{}' is not a loopback address and server.api_keys_file is not set; "
                              "give a keys file, or set server.allow_unauthenticated = true to serve anyone who can "
                              "reach it",
                              config.listen);
    }
    if (config.default_max_tokens > config.max_tokens)
        return make_error(errc::invalid_argument,
                          "limits.default_max_tokens: {} is larger than limits.max_tokens ({})",
                          config.default_max_tokens, config.max_tokens);
    if (config.max_connections_per_uid > config.max_connections)
        return make_error(errc::invalid_argument,
                          "http.max_connections_per_uid: {} is larger than http.max_connections ({})",
                          config.max_connections_per_uid, config.max_connections);
    if (config.ctx != 0 && config.ctx < 2)
        return make_error(errc::invalid_argument, "engine.ctx: {} leaves no room for a prompt and a token", config.ctx);
    if (config.model_id.find_first_of(" \t\r\n'\"") != std::string::npos)
        return make_error(errc::invalid_argument, "model.id: '{}' must not contain spaces or quotes", config.model_id);
    if (config.ctx != 0 && config.default_max_tokens >= config.ctx)
        return make_error(errc::invalid_argument,
                          "limits.default_max_tokens: {} leaves no room for a prompt in engine.ctx ({})",
                          config.default_max_tokens, config.ctx);
    return {};
}

result<daemon_config> load_config(const command_line& cmd) {
    return load_config(cmd, path_environment::of_process());
}

result<daemon_config> load_config(const command_line& cmd, const path_environment& env) {
    daemon_config config;
    std::string path;
    if (cmd.config_path) {
        path = *cmd.config_path;
    } else if (::access(std::string(default_config_path).c_str(), F_OK) == 0) {
        path = std::string(default_config_path);
    }
    if (!path.empty()) {
        struct stat st {};
        if (::stat(path.c_str(), &st) != 0)
            return make_error(errc::not_found, "config {}: {}", path, std::strerror(errno));
        if (!S_ISREG(st.st_mode)) return make_error(errc::invalid_argument, "config {}: not a regular file", path);
        if (static_cast<std::uint64_t>(st.st_size) > max_config_file_bytes)
            return make_error(errc::invalid_argument, "config {}: {} bytes is larger than the {} a config may be", path,
                              st.st_size, max_config_file_bytes);
        std::ifstream in(path, std::ios::binary);
        if (!in) return make_error(errc::io, "config {}: cannot open: {}", path, std::strerror(errno));
        std::ostringstream text;
        text << in.rdbuf();
        if (in.bad()) return make_error(errc::io, "config {}: read failed", path);
        MOED_TRY(apply_toml(config, text.str(), path));
        config.source = path;
    }
    for (const auto& [key, value] : cmd.overrides) MOED_TRY(apply_text(config, key, value, flag_for_key(key)));
    if (config.socket_path.empty() || config.state_dir.empty()) {
        const default_paths defaults = resolve_default_paths(env);
        config.defaults_scope = defaults.scope;
        std::vector<std::string> chosen;
        if (config.socket_path.empty()) {
            if (defaults.socket_path.size() > max_socket_path_bytes)
                return make_error(errc::invalid_argument,
                                  "socket.path: not set, and the default '{}' (from {}) is {} bytes long, more than "
                                  "the {} a socket path may have; set socket.path",
                                  defaults.socket_path, defaults.socket_from, defaults.socket_path.size(),
                                  max_socket_path_bytes);
            config.socket_path = defaults.socket_path;
            config.socket_path_defaulted = true;
            chosen.push_back(fmt::format("socket.path {} (from {})", defaults.socket_path, defaults.socket_from));
        }
        if (config.state_dir.empty()) {
            config.state_dir = defaults.state_dir;
            config.state_dir_defaulted = true;
            chosen.push_back(fmt::format("daemon.state_dir {} (from {})", defaults.state_dir, defaults.state_from));
        }
        config.defaults_note = fmt::format("not configured, chose the {} defaults: {}", path_scope_name(defaults.scope),
                                           fmt::join(chosen, ", "));
    }
    MOED_TRY(validate(config));
    return config;
}

std::string help_text() {
    std::string out =
        "usage: moed [--config FILE] [--KEY VALUE ...] [--help] [--version]\n"
        "\n"
        "Serves a Mixture-of-Experts model over HTTP/1.1 on a Unix socket (OpenAI-compatible\n"
        "/v1/completions and /v1/chat/completions, /v1/models, /v1/status, /metrics, /healthz),\n"
        "and on TCP too when server.listen is set (with bearer keys from server.api_keys_file).\n"
        "The sockets answer while the model loads: /healthz 503 {\"status\":\"loading\"} with the\n"
        "progress, API requests 503 with Retry-After.\n"
        "\n"
        "Settings come from the TOML file (--config FILE, else /etc/moed/moed.toml when it exists),\n"
        "then from flags, which win. Every key is also a flag: key `section.name_part` is\n"
        "`--section-name-part VALUE` (or `--section-name-part=VALUE`), e.g. socket.path is\n"
        "--socket-path. Booleans take true/false, sizes take 1MiB/300MB/bytes.\n"
        "\n"
        "keys (flag, type, default):\n";
    for (const auto& k : keys) {
        out += fmt::format("  {:<26} {:<28} {}\n", k.key, flag_for_key(k.key), k.help);
        out += fmt::format("  {:<26} {:<28} type {}; default {}\n", "", "", k.type, k.fallback);
    }
    out +=
        "\n"
        "exit codes: 0 stopped cleanly (SIGTERM/SIGINT), 1 failed while running or loading,\n"
        "2 bad command line or configuration.\n";
    return out;
}

std::string resolve_default_model() {
    namespace fs = std::filesystem;
    static constexpr std::string_view bundled_name = "tinymoe-qwen3moe-Q4_K_M.gguf";
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        // <prefix>/sbin/moed -> <prefix>/share/moed/models/<name>
        const fs::path installed = exe.parent_path().parent_path() / "share" / "moed" / "models" / bundled_name;
        if (fs::exists(installed, ec)) return installed.string();
    }
#ifdef MOED_DEFAULT_MODEL
    if (fs::exists(MOED_DEFAULT_MODEL, ec)) return MOED_DEFAULT_MODEL;
#endif
    return {};
}

std::string default_model_id(std::string_view path, std::string_view architecture) {
    std::string_view name = path;
    if (auto slash = name.rfind('/'); slash != std::string_view::npos) name.remove_prefix(slash + 1);
    if (name.ends_with(".gguf")) name.remove_suffix(5);
    if (!architecture.empty()) {
        const std::string marker = "-" + std::string(architecture);
        if (auto at = name.find(marker); at != std::string_view::npos && at > 0) name = name.substr(0, at);
    }
    std::string id(name);
    for (char& ch : id)
        if (ch == ' ' || ch == '\'' || ch == '"') ch = '_';
    return id.empty() ? std::string("model") : id;
}

}  // namespace moed::daemon
