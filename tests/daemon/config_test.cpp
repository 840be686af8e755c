// Checks moed's configuration parser (daemon/config.h): TOML files and flags set every key;
// flags override the file; unknown keys, wrong types, out-of-range values and unparsable
// sizes are errors naming the key (and file:line:column for the file); TOML syntax errors
// carry the position; the shipped moed.toml.example parses and equals the defaults; --help
// lists every key with its flag; server.listen takes host:port and [v6]:port and names what
// is wrong with a bad one, and a non-loopback address needs keys or
// server.allow_unauthenticated. Every key class is checked at parse time (zero, negative and
// too-large integers, sizes, seconds, paths, modes, names, relations), each error naming the
// key and the value. socket.path and daemon.state_dir default by the environment they are
// given (root or systemd: system paths; a user: XDG directories), and explicit values win.
// Pure parsing: no daemon runs.
#include <fstream>

#include <gtest/gtest.h>

#include "daemon/config.h"
#include "tests/support/test_paths.h"

namespace moed::daemon {
namespace {

result<daemon_config> from_toml(std::string_view text) {
    daemon_config c;
    MOED_TRY(apply_toml(c, text, "test.toml"));
    MOED_TRY(validate(c));
    return c;
}

std::string error_of(std::string_view text) {
    auto r = from_toml(text);
    EXPECT_FALSE(r.has_value()) << text;
    return r ? std::string() : r.error().message;
}

result<command_line> args(std::vector<const char*> v) {
    v.insert(v.begin(), "moed");
    return parse_command_line(static_cast<int>(v.size()), v.data());
}

TEST(Config, DefaultsWithoutFile) {
    daemon_config c;
    // Unset until load_config picks the default for the user moed runs as (below).
    EXPECT_EQ(c.socket_path, "");
    EXPECT_EQ(c.state_dir, "");
    EXPECT_EQ(c.socket_mode, 0660u);
    EXPECT_FALSE(c.host_budget.has_value());
    EXPECT_EQ(c.max_sequences, 8u);
    EXPECT_TRUE(validate(c).has_value());
}

TEST(Config, EveryKeyFromToml) {
    auto c = from_toml(R"(
[model]
path = "/m.gguf"
id = "qwen"
[engine]
threads = 3
ctx = 512
max_sequences = 4
queue_length = 2
max_batch_tokens = 64
[limits]
max_tokens = 100
default_max_tokens = 50
max_stop_strings = 2
[tiers]
host_budget = "25%"
io_depth = 8
mlock = "off"
io_uring = false
direct_io = false
[socket]
path = "/tmp/x.sock"
mode = 0o600
group = "users"
[http]
max_body_bytes = "64KiB"
max_connections = 10
max_connections_per_uid = 3
read_timeout_s = 5
write_timeout_s = 2.5
[daemon]
drain_timeout_s = 7
log_level = "debug"
state_dir = "/tmp/state"
watchdog = false
)");
    ASSERT_TRUE(c.has_value()) << c.error().message;
    EXPECT_EQ(c->model_path, "/m.gguf");
    EXPECT_EQ(c->model_id, "qwen");
    EXPECT_EQ(c->threads, 3);
    EXPECT_EQ(c->ctx, 512);
    EXPECT_EQ(c->max_sequences, 4u);
    EXPECT_EQ(c->queue_length, 2u);
    EXPECT_EQ(c->max_batch_tokens, 64);
    EXPECT_EQ(c->max_tokens, 100);
    EXPECT_EQ(c->default_max_tokens, 50);
    EXPECT_EQ(c->max_stop_strings, 2u);
    ASSERT_TRUE(c->host_budget.has_value());
    EXPECT_TRUE(c->host_budget->relative);
    EXPECT_DOUBLE_EQ(c->host_budget->fraction, 0.25);
    EXPECT_EQ(c->io_depth, 8u);
    EXPECT_EQ(c->mlock, storage::memory_lock::off);
    EXPECT_FALSE(c->io_uring);
    EXPECT_FALSE(c->direct_io);
    EXPECT_EQ(c->socket_path, "/tmp/x.sock");
    EXPECT_EQ(c->socket_mode, 0600u);
    EXPECT_EQ(c->socket_group, "users");
    EXPECT_EQ(c->max_body_bytes, 64u * 1024);
    EXPECT_EQ(c->max_connections, 10u);
    EXPECT_EQ(c->max_connections_per_uid, 3u);
    EXPECT_DOUBLE_EQ(c->read_timeout_s, 5.0);
    EXPECT_DOUBLE_EQ(c->write_timeout_s, 2.5);
    EXPECT_DOUBLE_EQ(c->drain_timeout_s, 7.0);
    EXPECT_EQ(c->level, log_level::debug);
    EXPECT_EQ(c->state_dir, "/tmp/state");
    EXPECT_FALSE(c->watchdog);
}

TEST(Config, SizesAndModesInEveryForm) {
    auto c = from_toml("[http]\nmax_body_bytes = 4096\n[socket]\nmode = \"0640\"\n[tiers]\nhost_budget = \"4GiB\"\n");
    ASSERT_TRUE(c.has_value()) << c.error().message;
    EXPECT_EQ(c->max_body_bytes, 4096u);
    EXPECT_EQ(c->socket_mode, 0640u);
    ASSERT_TRUE(c->host_budget.has_value());
    EXPECT_FALSE(c->host_budget->relative);
    EXPECT_EQ(c->host_budget->bytes, 4ull << 30);
}

TEST(Config, UnknownKeysNameKeyAndPosition) {
    EXPECT_EQ(error_of("[socket]\npth = \"/x\"\n"), "test.toml:2:1: unknown key 'socket.pth'");
    EXPECT_EQ(error_of("[sockets]\npath = \"/x\"\n"), "test.toml:2:1: unknown key 'sockets.path'");
    EXPECT_NE(error_of("threads = 4\n").find("unknown key 'threads'"), std::string::npos);
}

TEST(Config, WrongTypesNameKeyAndExpectedType) {
    EXPECT_EQ(error_of("[engine]\nthreads = \"four\"\n"),
              "test.toml:2:1: key 'engine.threads': expected an integer, got a string");
    EXPECT_EQ(error_of("[daemon]\nwatchdog = 1\n"), "test.toml:2:1: key 'daemon.watchdog': expected a boolean, got an integer");
    EXPECT_EQ(error_of("[socket]\npath = 3\n"), "test.toml:2:1: key 'socket.path': expected a string, got an integer");
    EXPECT_NE(error_of("[engine]\nthreads = [1, 2]\n").find("key 'engine.threads'"), std::string::npos);
    EXPECT_NE(error_of("[http]\nread_timeout_s = \"5s\"\n").find("key 'http.read_timeout_s': expected a number of seconds"),
              std::string::npos);
}

TEST(Config, OutOfRangeNamesKeyAndRange) {
    EXPECT_EQ(error_of("[engine]\nmax_sequences = 0\n"),
              "test.toml:2:1: key 'engine.max_sequences': 0 is out of range [1, 1024]");
    EXPECT_EQ(error_of("[engine]\nthreads = -1\n"), "test.toml:2:1: key 'engine.threads': -1 is out of range [0, 1024]");
    EXPECT_EQ(error_of("[http]\nmax_connections_per_uid = -1\n"),
              "test.toml:2:1: key 'http.max_connections_per_uid': -1 is out of range [0, 65536]");
    EXPECT_NE(error_of("[daemon]\ndrain_timeout_s = 0\n").find("key 'daemon.drain_timeout_s'"), std::string::npos);
    EXPECT_NE(error_of("[socket]\nmode = 0o1777\n").find("key 'socket.mode': mode 1777 is out of range"),
              std::string::npos);
    EXPECT_NE(error_of("[tiers]\nmlock = \"maybe\"\n").find("key 'tiers.mlock': expected required, best_effort or off"),
              std::string::npos);
    EXPECT_NE(error_of("[daemon]\nlog_level = \"loud\"\n").find("key 'daemon.log_level'"), std::string::npos);
}

TEST(Config, UnparsableSizesNameKey) {
    const std::string e = error_of("[http]\nmax_body_bytes = \"lots\"\n");
    EXPECT_NE(e.find("test.toml:2:1: key 'http.max_body_bytes'"), std::string::npos) << e;
    const std::string b = error_of("[tiers]\nhost_budget = \"150%\"\n");
    EXPECT_NE(b.find("key 'tiers.host_budget'"), std::string::npos) << b;
    const std::string z = error_of("[http]\nmax_body_bytes = 0\n");
    EXPECT_NE(z.find("key 'http.max_body_bytes': 0 bytes is out of range"), std::string::npos) << z;
}

TEST(Config, RelationsBetweenKeys) {
    EXPECT_EQ(error_of("[limits]\nmax_tokens = 10\ndefault_max_tokens = 20\n"),
              "limits.default_max_tokens: 20 is larger than limits.max_tokens (10)");
    EXPECT_NE(error_of("[model]\nid = \"a b\"\n").find("model.id"), std::string::npos);
    EXPECT_EQ(error_of("[http]\nmax_connections = 10\nmax_connections_per_uid = 11\n"),
              "http.max_connections_per_uid: 11 is larger than http.max_connections (10)");
    EXPECT_TRUE(from_toml("[http]\nmax_connections = 10\nmax_connections_per_uid = 10\n").has_value());
}

TEST(Config, SyntaxErrorsCarryLineAndColumn) {
    const std::string e = error_of("[socket]\npath = \"/x\n");
    EXPECT_EQ(e.rfind("test.toml:2:", 0), 0u) << e;
    const std::string d = error_of("[engine]\nthreads = 1\nthreads = 2\n");
    EXPECT_EQ(d.rfind("test.toml:3:", 0), 0u) << d;
}

TEST(Config, FlagsMapToKeys) {
    EXPECT_EQ(flag_for_key("socket.path"), "--socket-path");
    EXPECT_EQ(flag_for_key("engine.max_sequences"), "--engine-max-sequences");
    auto per_uid = args({"--http-max-connections-per-uid=4"});
    ASSERT_TRUE(per_uid.has_value()) << per_uid.error().message;
    ASSERT_EQ(per_uid->overrides.size(), 1u);
    EXPECT_EQ(per_uid->overrides[0].first, "http.max_connections_per_uid");
    auto cmd = args({"--socket-path", "/tmp/a.sock", "--engine-max-sequences=3", "--daemon-watchdog", "off"});
    ASSERT_TRUE(cmd.has_value()) << cmd.error().message;
    ASSERT_EQ(cmd->overrides.size(), 3u);
    EXPECT_EQ(cmd->overrides[0].first, "socket.path");
    EXPECT_EQ(cmd->overrides[1].first, "engine.max_sequences");
    EXPECT_EQ(cmd->overrides[1].second, "3");
    daemon_config c;
    for (const auto& [k, v] : cmd->overrides) ASSERT_TRUE(apply_text(c, k, v, flag_for_key(k)).has_value());
    EXPECT_EQ(c.socket_path, "/tmp/a.sock");
    EXPECT_EQ(c.max_sequences, 3u);
    EXPECT_FALSE(c.watchdog);
}

TEST(Config, BadFlagsAreNamed) {
    EXPECT_EQ(args({"--sockt-path", "/x"}).error().message, "unknown option '--sockt-path' (see --help)");
    EXPECT_EQ(args({"--socket-path"}).error().message, "--socket-path: missing value");
    EXPECT_EQ(args({"stray"}).error().message, "unexpected argument 'stray' (see --help)");
    daemon_config c;
    EXPECT_EQ(apply_text(c, "engine.threads", "x4", "--engine-threads").error().message,
              "--engine-threads: expected an integer, got 'x4'");
    EXPECT_EQ(apply_text(c, "daemon.watchdog", "maybe", "--daemon-watchdog").error().message,
              "--daemon-watchdog: expected true or false, got 'maybe'");
    EXPECT_EQ(apply_text(c, "engine.max_sequences", "0", "--engine-max-sequences").error().message,
              "--engine-max-sequences: 0 is out of range [1, 1024]");
    EXPECT_EQ(apply_text(c, "http.max_connections_per_uid", "many", "--http-max-connections-per-uid").error().message,
              "--http-max-connections-per-uid: expected an integer, got 'many'");
}

TEST(Config, FlagsOverrideTheFile) {
    const auto path = test::temp_dir() / "moed.toml";
    {
        std::ofstream out(path);
        out << "[socket]\npath = \"/from/file.sock\"\n[engine]\nmax_sequences = 2\n";
    }
    const std::string p = path.string();
    auto cmd = args({"--config", p.c_str(), "--engine-max-sequences", "5"});
    ASSERT_TRUE(cmd.has_value());
    auto c = load_config(*cmd);
    ASSERT_TRUE(c.has_value()) << c.error().message;
    EXPECT_EQ(c->socket_path, "/from/file.sock");
    EXPECT_EQ(c->max_sequences, 5u);
    EXPECT_EQ(c->source, p);
}

// Parses `toml` and checks the error names the key and the value (or what is wrong with it).
void expect_refused(std::string_view toml, std::string_view key, std::string_view detail) {
    const std::string e = error_of(toml);
    EXPECT_NE(e.find(key), std::string::npos) << toml << "\n -> " << e;
    EXPECT_NE(e.find(detail), std::string::npos) << toml << "\n -> " << e;
}

TEST(Config, EveryKeyClassIsValidatedAtParseTime) {
    // Zero where a count must be positive: refused here, not by an assertion after the load.
    expect_refused("[engine]\nqueue_length = 0\n", "engine.queue_length", "0 is out of range [1, 65536]");
    expect_refused("[engine]\nmax_batch_tokens = 0\n", "engine.max_batch_tokens", "0 is out of range [1,");
    expect_refused("[limits]\nmax_tokens = 0\n", "limits.max_tokens", "0 is out of range [1,");
    expect_refused("[limits]\ndefault_max_tokens = 0\n", "limits.default_max_tokens", "0 is out of range [1,");
    expect_refused("[tiers]\nio_depth = 0\n", "tiers.io_depth", "0 is out of range [1, 4096]");
    expect_refused("[tiers]\nlookahead = 0\n", "tiers.lookahead", "0 is out of range [1, 4]");
    expect_refused("[http]\nmax_connections = 0\n", "http.max_connections", "0 is out of range [1,");
    // Negatives and values past the bounds.
    expect_refused("[engine]\nctx = -5\n", "engine.ctx", "-5 is out of range [0,");
    expect_refused("[engine]\nthreads = 100000\n", "engine.threads", "100000 is out of range [0, 1024]");
    expect_refused("[limits]\nmax_stop_strings = 65\n", "limits.max_stop_strings", "65 is out of range [0, 64]");
    expect_refused("[trace]\nlookahead = 5\n", "trace.lookahead", "5 is out of range [0, 4]");
    expect_refused("[engine]\nqueue_length = 1.5\n", "engine.queue_length", "expected an integer, got a float");
    // Sizes.
    expect_refused("[tiers]\nmax_inflight = -1\n", "tiers.max_inflight", "-1 is out of range");
    expect_refused("[tiers]\nmax_inflight = \"0\"\n", "tiers.max_inflight", "0 bytes is out of range");
    expect_refused("[http]\nmax_body_bytes = \"2GiB\"\n", "http.max_body_bytes", "2147483648 bytes is out of range");
    expect_refused("[tiers]\nhost_budget = \"0\"\n", "tiers.host_budget", "'0' is zero");
    expect_refused("[tiers]\nhost_budget = \"12 parsecs\"\n", "tiers.host_budget", "'12 parsecs'");
    // Seconds: zero, negative, not finite.
    expect_refused("[http]\nread_timeout_s = 0\n", "http.read_timeout_s", "0 seconds is out of range");
    expect_refused("[http]\nwrite_timeout_s = -1.5\n", "http.write_timeout_s", "-1.5 seconds is out of range");
    expect_refused("[daemon]\ndrain_timeout_s = nan\n", "daemon.drain_timeout_s", "seconds is out of range");
    expect_refused("[daemon]\ndrain_timeout_s = 1e9\n", "daemon.drain_timeout_s", "seconds is out of range");
    // Paths: empty where a default exists, NUL bytes, a socket path longer than sun_path.
    expect_refused("[socket]\npath = \"\"\n", "socket.path", "an empty path; leave the key out for the default");
    expect_refused("[daemon]\nstate_dir = \"\"\n", "daemon.state_dir", "an empty path");
    expect_refused("[model]\npath = \"/m\\u0000.gguf\"\n", "model.path", "contains a NUL byte");
    const std::string long_socket = "/tmp/" + std::string(120, 's') + ".sock";
    expect_refused("[socket]\npath = \"" + long_socket + "\"\n", "socket.path",
                   "is 130 bytes long, more than the 107 this path may have");
    expect_refused("[trace]\npath = \"/" + std::string(5000, 't') + "\"\n", "trace.path", "bytes long");
    // A socket mode that locks out its own owner, and names with characters that break them.
    expect_refused("[socket]\nmode = \"0440\"\n", "socket.mode", "mode 0440 does not let the socket's owner");
    expect_refused("[socket]\nmode = 0\n", "socket.mode", "mode 0000");
    expect_refused("[model]\nid = \"a/b\"\n", "model.id", "'a/b' must not contain");
    expect_refused("[model]\nid = \"" + std::string(300, 'x') + "\"\n", "model.id", "300 bytes is longer");
    // Enumerations, booleans and the testing hooks' own syntax.
    expect_refused("[tiers]\nio_uring = \"yes\"\n", "tiers.io_uring", "expected a boolean, got a string");
    expect_refused("[model]\ninject_slow_load = \"delay_ms=x\"\n", "model.inject_slow_load", "delay_ms");
    expect_refused("[tiers]\ninject_faults = \"bogus=1\"\n", "tiers.inject_faults", "bogus");
    expect_refused("[server]\nlisten = \"127.0.0.1\"\n", "server.listen", "missing port");
    // Relations: a default max_tokens that leaves no room for a prompt in the context.
    expect_refused("[engine]\nctx = 100\n[limits]\ndefault_max_tokens = 100\n", "limits.default_max_tokens",
                   "100 leaves no room for a prompt in engine.ctx (100)");
    EXPECT_TRUE(from_toml("[engine]\nctx = 100\n[limits]\ndefault_max_tokens = 99\n").has_value());
    // The boundaries themselves are accepted.
    EXPECT_TRUE(from_toml("[engine]\nqueue_length = 1\n[socket]\nmode = \"0600\"\npath = \"/tmp/" +
                          std::string(102, 'a') + "\"\n")
                    .has_value());
}

TEST(Config, FlagsAreValidatedLikeTheFile) {
    daemon_config c;
    EXPECT_EQ(apply_text(c, "engine.queue_length", "0", "--engine-queue-length").error().message,
              "--engine-queue-length: 0 is out of range [1, 65536]");
    EXPECT_EQ(apply_text(c, "socket.path", "", "--socket-path").error().message,
              "--socket-path: an empty path; leave the key out for the default");
    EXPECT_EQ(apply_text(c, "socket.mode", "0400", "--socket-mode").error().message,
              "--socket-mode: mode 0400 does not let the socket's owner read and write it (connect needs that); use "
              "0600 or more, e.g. 0660");
}

// load_config with an empty config file (so /etc/moed/moed.toml of this machine is not read).
result<daemon_config> load_with(const path_environment& env, std::vector<const char*> extra = {}) {
    const auto path = test::temp_dir() / "empty.toml";
    std::ofstream(path) << "";
    const std::string p = path.string();
    std::vector<const char*> argv{"--config", p.c_str()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto cmd = args(argv);
    if (!cmd) return unexpected(std::move(cmd).error());
    return load_config(*cmd, env);
}

TEST(Config, DefaultPathsFollowWhoRunsMoed) {
    path_environment user;
    user.xdg_runtime_dir = "/run/user/1000";
    user.home = "/home/alice";
    auto u = load_with(user);
    ASSERT_TRUE(u.has_value()) << u.error().message;
    EXPECT_EQ(u->socket_path, "/run/user/1000/moed/moed.sock");
    EXPECT_EQ(u->state_dir, "/home/alice/.local/state/moed");
    EXPECT_TRUE(u->socket_path_defaulted);
    EXPECT_TRUE(u->state_dir_defaulted);
    EXPECT_EQ(u->defaults_note,
              "not configured, chose the user defaults: socket.path /run/user/1000/moed/moed.sock (from "
              "$XDG_RUNTIME_DIR), daemon.state_dir /home/alice/.local/state/moed (from $HOME)");

    path_environment root = user;
    root.root = true;
    auto r = load_with(root);
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(r->socket_path, "/run/moed/moed.sock");
    EXPECT_EQ(r->state_dir, "/var/lib/moed");

    // Explicit values always win, and only what was left out is reported.
    auto e = load_with(user, {"--socket-path", "/tmp/mine.sock"});
    ASSERT_TRUE(e.has_value()) << e.error().message;
    EXPECT_EQ(e->socket_path, "/tmp/mine.sock");
    EXPECT_FALSE(e->socket_path_defaulted);
    EXPECT_EQ(e->state_dir, "/home/alice/.local/state/moed");
    EXPECT_EQ(e->defaults_note.find("socket.path"), std::string::npos) << e->defaults_note;
    auto both = load_with(user, {"--socket-path", "/tmp/mine.sock", "--daemon-state-dir", "/tmp/st"});
    ASSERT_TRUE(both.has_value());
    EXPECT_EQ(both->state_dir, "/tmp/st");
    EXPECT_EQ(both->defaults_note, "");

    // A default that cannot be a socket path is a config error naming the key, not a bind failure.
    path_environment deep = user;
    deep.xdg_runtime_dir = "/" + std::string(110, 'd');
    auto d = load_with(deep);
    ASSERT_FALSE(d.has_value());
    EXPECT_NE(d.error().message.find("socket.path: not set, and the default"), std::string::npos)
        << d.error().message;
}

TEST(Config, MissingConfigFileIsAnError) {
    auto cmd = args({"--config", "/nonexistent/moed.toml"});
    ASSERT_TRUE(cmd.has_value());
    auto c = load_config(*cmd);
    ASSERT_FALSE(c.has_value());
    EXPECT_NE(c.error().message.find("/nonexistent/moed.toml"), std::string::npos);
}

TEST(Config, ShippedExampleParsesToTheDefaults) {
    std::ifstream in(test::models_dir() + "/../daemon/moed.toml.example");
    ASSERT_TRUE(in.good());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto c = from_toml(text);
    ASSERT_TRUE(c.has_value()) << c.error().message;
    const daemon_config d;
    EXPECT_EQ(c->socket_path, d.socket_path);
    EXPECT_EQ(c->socket_mode, d.socket_mode);
    EXPECT_EQ(c->max_sequences, d.max_sequences);
    EXPECT_EQ(c->queue_length, d.queue_length);
    EXPECT_EQ(c->max_body_bytes, d.max_body_bytes);
    EXPECT_EQ(c->max_connections, d.max_connections);
    EXPECT_EQ(c->max_connections_per_uid, d.max_connections_per_uid);
    EXPECT_EQ(c->io_depth, d.io_depth);
    EXPECT_EQ(c->mlock, d.mlock);
    EXPECT_DOUBLE_EQ(c->drain_timeout_s, d.drain_timeout_s);
    EXPECT_EQ(c->level, d.level);
}

TEST(Config, HelpListsEveryKeyAndFlag) {
    const std::string help = help_text();
    for (const char* key : {"model.path", "model.id", "engine.threads", "engine.ctx", "engine.max_sequences",
                            "engine.queue_length", "engine.max_batch_tokens", "limits.max_tokens",
                            "tiers.host_budget", "tiers.io_depth", "tiers.mlock", "socket.path", "socket.mode",
                            "socket.group", "http.max_body_bytes", "http.max_connections_per_uid", "daemon.drain_timeout_s", "daemon.log_level",
                            "daemon.state_dir", "daemon.watchdog"}) {
        EXPECT_NE(help.find(key), std::string::npos) << key;
        EXPECT_NE(help.find(flag_for_key(key)), std::string::npos) << key;
    }
}

TEST(Config, TraceKeysAndTheTraceAlias) {
    auto cmd = args({"--trace", "/tmp/r.trace", "--trace-lookahead", "3"});
    ASSERT_TRUE(cmd.has_value()) << cmd.error().message;
    auto c = load_config(*cmd);
    ASSERT_TRUE(c.has_value()) << c.error().message;
    EXPECT_EQ(c->trace_path, "/tmp/r.trace");
    EXPECT_EQ(c->trace_lookahead, 3u);
    cmd = args({"--trace-path=/tmp/s.trace"});
    ASSERT_TRUE(cmd.has_value());
    c = load_config(*cmd);
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->trace_path, "/tmp/s.trace");
    EXPECT_EQ(daemon_config{}.trace_path, "");
    EXPECT_EQ(daemon_config{}.trace_lookahead, 2u);
    EXPECT_NE(error_of("[trace]\nlookahead = 5\n").find("trace.lookahead"), std::string::npos);
    auto t = from_toml("[trace]\npath = \"/x.trace\"\nlookahead = 0\n");
    ASSERT_TRUE(t.has_value()) << t.error().message;
    EXPECT_EQ(t->trace_path, "/x.trace");
    EXPECT_EQ(t->trace_lookahead, 0u);
    EXPECT_NE(help_text().find("--trace-path"), std::string::npos);
}

TEST(Config, DefaultModelId) {
    EXPECT_EQ(default_model_id("/a/b/tinymoe-qwen3moe-Q4_K_M.gguf", "qwen3moe"), "tinymoe");
    EXPECT_EQ(default_model_id("Qwen3-30B-A3B-Q4_K_M.gguf", "qwen3moe"), "Qwen3-30B-A3B-Q4_K_M");
    EXPECT_EQ(default_model_id("/m/model.gguf", ""), "model");
}

TEST(Config, ReloadComparesEveryKeyAndKnowsWhichApplyWhileRunning) {
    const daemon_config a;
    daemon_config b;
    // Every key has a comparison (one missing would abort here).
    EXPECT_TRUE(changed_keys(a, b).empty());
    for (std::string_view key : config_keys()) (void)reloadable_key(key);
    b.max_body_bytes = 5;
    b.max_sequences = 3;
    b.level = log_level::debug;
    b.host_budget = budget_spec{0, 0.25, true};
    const auto changed = changed_keys(a, b);
    EXPECT_EQ(changed, (std::vector<std::string_view>{"engine.max_sequences", "tiers.host_budget",
                                                      "http.max_body_bytes", "daemon.log_level"}));
    EXPECT_TRUE(reloadable_key("http.max_body_bytes"));
    EXPECT_TRUE(reloadable_key("daemon.log_level"));
    EXPECT_TRUE(reloadable_key("daemon.drain_timeout_s"));
    EXPECT_FALSE(reloadable_key("engine.max_sequences"));
    EXPECT_FALSE(reloadable_key("tiers.host_budget"));
    EXPECT_FALSE(reloadable_key("model.path"));
}

TEST(Config, InjectedFaultsAreValidatedAtParse) {
    auto good = from_toml("[tiers]\ninject_faults = \"eio_every=400,eio_burst=40,short=0.5,spike_every=9,spike_us=10\"\n");
    ASSERT_TRUE(good) << good.error().message;
    EXPECT_EQ(good->inject_faults, "eio_every=400,eio_burst=40,short=0.5,spike_every=9,spike_us=10");
    for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
             {"eio_every=10,eio_burst=20", "eio_burst"},
             {"bogus=1", "fault 'bogus' is unknown"},
             {"short=1.5", "fault 'short'"},
             {"eio_every=x", "'x' is not a count"},
             {"eio_every", "expected name=value"}}) {
        const std::string e = error_of("[tiers]\ninject_faults = \"" + text + "\"\n");
        EXPECT_NE(e.find("tiers.inject_faults"), std::string::npos) << e;
        EXPECT_NE(e.find(needle), std::string::npos) << e;
    }
}

TEST(Config, ListenAddressesAreValidatedAtParse) {
    auto v4 = parse_listen_address("127.0.0.1:8077");
    ASSERT_TRUE(v4) << v4.error().message;
    EXPECT_EQ(v4->host, "127.0.0.1");
    EXPECT_EQ(v4->port, 8077);
    EXPECT_FALSE(v4->ipv6);
    EXPECT_TRUE(v4->loopback);
    EXPECT_EQ(v4->text(), "127.0.0.1:8077");
    auto v6 = parse_listen_address("[::1]:9");
    ASSERT_TRUE(v6) << v6.error().message;
    EXPECT_EQ(v6->host, "::1");
    EXPECT_TRUE(v6->ipv6);
    EXPECT_TRUE(v6->loopback);
    EXPECT_EQ(v6->text(), "[::1]:9");
    auto local = parse_listen_address("localhost:65535");
    ASSERT_TRUE(local);
    EXPECT_EQ(local->host, "127.0.0.1");
    EXPECT_TRUE(local->loopback);
    EXPECT_TRUE(parse_listen_address("127.8.9.10:80")->loopback);
    EXPECT_FALSE(parse_listen_address("0.0.0.0:8077")->loopback);
    EXPECT_FALSE(parse_listen_address("192.168.1.2:8077")->loopback);
    EXPECT_FALSE(parse_listen_address("[::]:8077")->loopback);
    EXPECT_FALSE(parse_listen_address("[fe80::1]:8077")->loopback);

    for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
             {"127.0.0.1", "missing port"},
             {"127.0.0.1:", "missing port"},
             {":8077", "missing host"},
             {"127.0.0.1:0", "port 0 is out of range [1, 65535]"},
             {"127.0.0.1:65536", "port 65536 is out of range [1, 65535]"},
             {"127.0.0.1:http", "port 'http' is not a number"},
             {"127.0.0.1:-1", "port '-1' is not a number"},
             {"::1:8077", "an IPv6 address needs brackets"},
             {"[::1", "missing ']'"},
             {"[::1]8077", "missing port"},
             {"[127.0.0.1]:80", "is not an IPv6 address"},
             {"example.com:80", "'example.com' is not a numeric IPv4 address"},
             {"256.0.0.1:80", "not a numeric IPv4 address"}}) {
        const std::string e = error_of("[server]\nlisten = \"" + text + "\"\n");
        EXPECT_NE(e.find("key 'server.listen'"), std::string::npos) << e;
        EXPECT_NE(e.find("'" + text + "'"), std::string::npos) << e;
        EXPECT_NE(e.find(needle), std::string::npos) << text << ": " << e;
    }
    // A flag names itself.
    daemon_config c;
    auto flag = apply_text(c, "server.listen", "1.2.3.4:99999", "--server-listen");
    ASSERT_FALSE(flag);
    EXPECT_EQ(flag.error().message, "--server-listen: '1.2.3.4:99999': port 99999 is out of range [1, 65535]");
    // Empty: no TCP listener.
    auto none = from_toml("[server]\nlisten = \"\"\n");
    ASSERT_TRUE(none) << none.error().message;
    EXPECT_TRUE(none->listen.empty());
}

TEST(Config, NonLoopbackListenNeedsKeysOrAnExplicitOptOut) {
    auto loopback = from_toml("[server]\nlisten = \"127.0.0.1:8077\"\n");
    ASSERT_TRUE(loopback) << loopback.error().message;
    EXPECT_EQ(loopback->listen, "127.0.0.1:8077");
    EXPECT_FALSE(loopback->allow_unauthenticated);

    const std::string e = error_of("[server]\nlisten = \"0.0.0.0:8077\"\n");
    EXPECT_EQ(e, "server.listen: '0.0.0.0:8077' is not a loopback address and server.api_keys_file is not set; give "
                 "a keys file, or set server.allow_unauthenticated = true to serve anyone who can reach it");
    EXPECT_NE(error_of("[server]\nlisten = \"[::]:8077\"\n").find("not a loopback address"), std::string::npos);

    auto keyed = from_toml("[server]\nlisten = \"0.0.0.0:8077\"\napi_keys_file = \"/etc/moed/keys\"\n");
    ASSERT_TRUE(keyed) << keyed.error().message;
    EXPECT_EQ(keyed->api_keys_file, "/etc/moed/keys");
    auto open = from_toml("[server]\nlisten = \"0.0.0.0:8077\"\nallow_unauthenticated = true\n");
    ASSERT_TRUE(open) << open.error().message;
    EXPECT_TRUE(open->allow_unauthenticated);
    EXPECT_NE(error_of("[server]\nallow_unauthenticated = \"yes\"\n").find("server.allow_unauthenticated"),
              std::string::npos);
    // The server keys wait for a restart.
    EXPECT_FALSE(reloadable_key("server.listen"));
    EXPECT_FALSE(reloadable_key("server.api_keys_file"));
    for (const char* key : {"server.listen", "server.api_keys_file", "server.allow_unauthenticated"})
        EXPECT_NE(help_text().find(flag_for_key(key)), std::string::npos) << key;
}

TEST(Config, SlowLoadInjectionIsValidatedAtParse) {
    auto good = from_toml("[model]\ninject_slow_load = \"delay_ms=50,piece=256KiB\"\n");
    ASSERT_TRUE(good) << good.error().message;
    auto spec = parse_slow_load(good->inject_slow_load);
    ASSERT_TRUE(spec);
    EXPECT_EQ(spec->delay_ms, 50u);
    EXPECT_EQ(spec->piece_bytes, 256u << 10);
    for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
             {"delay_ms=x", "delay_ms: 'x'"},
             {"delay_ms=70000", "delay_ms: '70000'"},
             {"piece=12", "piece: 12 bytes is below 4096"},
             {"speed=1", "unknown field 'speed'"},
             {"delay_ms", "expected name=value"}}) {
        const std::string e = error_of("[model]\ninject_slow_load = \"" + text + "\"\n");
        EXPECT_NE(e.find("model.inject_slow_load"), std::string::npos) << e;
        EXPECT_NE(e.find(needle), std::string::npos) << e;
    }
}

}  // namespace
}  // namespace moed::daemon
