// moed's configuration: a TOML file (/etc/moed/moed.toml, or --config FILE) whose every key
// is also a command-line flag. A key `section.name_part` is the flag `--section-name-part`
// (dots and underscores become dashes); flags override the file. Unknown keys, values of the
// wrong type, values out of range and unparsable sizes are errors that name the key (and,
// for the file, where it is); TOML syntax errors carry file:line:column. The daemon refuses
// to start on any of them (exit code 2).
// Threads: parsing runs in main before any other thread exists, and again on the io thread
// when SIGHUP reloads the file (load_config touches no shared state).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/default_paths.h"
#include "common/log.h"
#include "common/result.h"
#include "common/units.h"
#include "storage/host_slab.h"

namespace moed::daemon {

// Where the daemon looks for its config when no --config is given; a missing default file
// means "all defaults", a missing --config file is an error.
inline constexpr std::string_view default_config_path = "/etc/moed/moed.toml";
// A config file is a few hundred bytes; refuse anything that cannot be one.
inline constexpr std::uint64_t max_config_file_bytes = 1u << 20;

// A TCP listening address as server.listen gives it: "127.0.0.1:8077", "[::1]:8077",
// "localhost:8077" (the IPv4 loopback) or any numeric address ("0.0.0.0:8077"). Host names
// other than localhost are refused: a listener must not depend on a resolver at start-up.
struct listen_address {
    std::string host;  // numeric, without brackets ("127.0.0.1", "::1")
    std::uint16_t port = 0;
    bool ipv6 = false;
    bool loopback = false;  // 127.0.0.0/8 or ::1
    std::string text() const;  // "127.0.0.1:8077" or "[::1]:8077"
};
// Parses "host:port"; errors say what is wrong with `text` ("missing port", "port 70000 is
// out of range [1, 65535]", "'example.com' is not a numeric address").
result<listen_address> parse_listen_address(std::string_view text);

// Testing only: a load slowed down on purpose (model.inject_slow_load), so a test can watch
// what the daemon answers while it loads. Text form "delay_ms=200,piece=1MiB": a pause of
// delay_ms before every piece of `piece` bytes the weights copy reads.
struct slow_load_spec {
    std::uint64_t delay_ms = 0;
    std::uint64_t piece_bytes = 1u << 20;
};
result<slow_load_spec> parse_slow_load(std::string_view text);

struct daemon_config {
    // [model]
    std::string model_path;  // empty: the bundled tinymoe model (see resolve_default_model)
    std::string model_id;    // empty: derived from the file name (see default_model_id)
    std::string inject_slow_load;  // testing: slow_load_spec text; empty: none
    // [engine]
    int threads = 0;                       // 0: hardware concurrency
    std::int64_t ctx = 0;                  // per sequence; 0: min(training context, default_ctx)
    std::uint32_t max_sequences = 8;
    std::uint32_t queue_length = 64;
    std::int64_t max_batch_tokens = 256;
    // [limits]
    std::int32_t max_tokens = 4096;        // upper bound a request may ask for
    std::int32_t default_max_tokens = 256; // when a request gives no max_tokens
    std::uint32_t max_stop_strings = 8;
    // [tiers]
    std::optional<budget_spec> host_budget;  // absent: every expert stays resident
    std::uint32_t io_depth = 32;
    storage::memory_lock mlock = storage::memory_lock::best_effort;
    bool io_uring = true;
    bool direct_io = true;
    bool prefetch = true;                           // router-lookahead prefetch (tiered experts only)
    int lookahead = 2;                              // layers the lookahead reaches (1..4)
    std::uint64_t max_inflight_bytes = 256u << 20;  // expert reads in flight at once
    std::string inject_faults;  // testing: storage::fault_plan text for expert reads; empty: none
    // [socket]
    std::string socket_path;  // empty until load_config: the default of common/default_paths.h
    std::uint32_t socket_mode = 0660;
    std::string socket_group;  // empty: keep the daemon's group
    // [server]
    std::string listen;            // "host:port" of an optional TCP listener; empty: none
    std::string api_keys_file;     // bearer keys the TCP listener requires; empty: none
    bool allow_unauthenticated = false;  // a non-loopback listen address without keys
    // [http]
    std::uint64_t max_body_bytes = 1u << 20;
    std::uint32_t max_connections = 256;
    std::uint32_t max_connections_per_uid = 0;  // 0: a quarter of max_connections, at least 1
    double read_timeout_s = 60.0;   // to receive one whole request (also the keep-alive idle time)
    double write_timeout_s = 60.0;  // for one write to the client
    // [daemon]
    double drain_timeout_s = 30.0;
    log_level level = log_level::info;
    std::string state_dir;  // empty until load_config: the default of common/default_paths.h
    bool watchdog = true;  // ping systemd's watchdog when WATCHDOG_USEC asks for it
    // [trace]
    std::string trace_path;            // empty: no routing trace (flag --trace FILE)
    std::uint32_t trace_lookahead = 2; // router lookahead layers recorded (0..4)

    std::string source;  // the config file read, or "" when defaults only (for logs)
    // Which of socket.path and daemon.state_dir load_config chose itself, and why (for the
    // log); empty when the config or flags gave both.
    std::string defaults_note;
    bool socket_path_defaulted = false;  // socket.path came from default_paths (moed makes its directory)
    bool state_dir_defaulted = false;    // daemon.state_dir came from default_paths (moed makes it)
    path_scope defaults_scope = path_scope::system;  // whose defaults those were
};

// What the command line asked for, before the file is read.
struct command_line {
    std::optional<std::string> config_path;
    std::vector<std::pair<std::string, std::string>> overrides;  // (key, value text) in order
    bool help = false;
    bool version = false;
};

// Parses argv: --config FILE, --help/-h, --version, and --<flag> VALUE / --<flag>=VALUE for
// every key; --trace FILE is also accepted for --trace-path. Errors name the argument.
result<command_line> parse_command_line(int argc, const char* const* argv);

// Applies TOML text (named `source` in messages) onto `config`.
result<void> apply_toml(daemon_config& config, std::string_view text, std::string_view source);
// Applies one key given as text (a flag's value); `origin` names it in messages ("--socket-path").
result<void> apply_text(daemon_config& config, std::string_view key, std::string_view value,
                        std::string_view origin);
// Checks relations between keys (a value valid alone but not with another): among them, a
// TCP listener on a non-loopback address needs server.api_keys_file or
// server.allow_unauthenticated = true.
result<void> validate(const daemon_config& config);

// The whole start-up path: defaults, then the file (--config or the default path when it
// exists), then the flags, then socket.path and daemon.state_dir from `env` where neither
// gave them (common/default_paths.h: system paths for root and systemd services,
// $XDG_RUNTIME_DIR and $XDG_STATE_HOME for a user), then validate().
result<daemon_config> load_config(const command_line& cmd, const path_environment& env);
// The same for the running process (path_environment::of_process()).
result<daemon_config> load_config(const command_line& cmd);

// The --help text: usage and every key with its flag, type, default and meaning.
std::string help_text();

// The bundled model: next to the installed binary (../share/moed/models/...), else the
// source tree's copy (compile-time MOED_DEFAULT_MODEL). Empty when neither exists.
std::string resolve_default_model();
// The id clients use for a model file: the file name without ".gguf", cut before
// "-<architecture>" when it contains it ("tinymoe-qwen3moe-Q4_K_M.gguf" -> "tinymoe").
std::string default_model_id(std::string_view path, std::string_view architecture);

// The flag for a key ("socket.path" -> "--socket-path").
std::string flag_for_key(std::string_view key);

// Every key, in the order --help lists them.
std::vector<std::string_view> config_keys();
// The keys whose values differ between `a` and `b` (for SIGHUP: what a reload changes).
std::vector<std::string_view> changed_keys(const daemon_config& a, const daemon_config& b);
// Whether a running daemon applies a new value of `key` on SIGHUP: the log level, the HTTP
// limits and timeouts and the drain timeout. The others (model, engine, tiers, socket, state,
// trace) take effect at the next start.
bool reloadable_key(std::string_view key);

}  // namespace moed::daemon
