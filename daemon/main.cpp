// moed: the daemon. Reads its configuration, binds (or receives from systemd) its Unix
// socket and binds its TCP socket when server.listen asks for one, starts serving HTTP on
// the io_context thread at once (answering "loading" with the progress), loads the model on
// the main thread, then starts the batch loop (the engine thread), switches the server to
// serving and tells systemd READY=1. It serves until SIGTERM/SIGINT, then drains running
// requests within daemon.drain_timeout_s and exits 0.
// While the model loads, SIGTERM/SIGINT and SIGHUP are held and handled once it is loaded (a
// SIGTERM then drains at once). A load that fails is logged and ends the daemon with exit
// code 1; connections open at that moment are closed.
//
// Exit codes: 0 clean stop; 1 failure while starting (socket in use, model cannot load) or
// running; 2 bad command line or configuration (one line naming the key).
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <thread>
#include <utility>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <fmt/ranges.h>

#include "common/log.h"
#include "common/process_memory.h"
#include "common/units.h"
#include "daemon/api_keys.h"
#include "daemon/batch_loop.h"
#include "daemon/config.h"
#include "daemon/engine_port.h"
#include "daemon/http_server.h"
#include "daemon/listener.h"
#include "daemon/memory_status.h"
#include "daemon/systemd_notify.h"
#include "engine/chat_template.h"
#include "engine/model.h"
#include "engine/trace_recorder.h"
#include "kernels/cpu/cpu_features.h"
#include "scheduler/model_identity.h"
#include "scheduler/profile.h"
#include "scheduler/profile_store.h"
#include "storage/fault_reader.h"

#ifndef MOED_VERSION
#define MOED_VERSION "0.0.0"
#endif

namespace {

namespace asio = boost::asio;
using namespace moed;
using namespace moed::daemon;

constexpr int exit_ok = 0;
constexpr int exit_failure = 1;
constexpr int exit_config = 2;

// Without engine.ctx, a sequence gets the model's training context up to this: KV caches
// are allocated per sequence at start-up, and a 32k-context model times max_sequences
// would claim far more memory than most requests use.
constexpr std::int64_t default_ctx = 4096;
// Load progress goes to the log at most this often, and to systemd (STATUS= with
// EXTEND_TIMEOUT_USEC=) at most this often; each message to systemd gives the start-up this
// much more time from then on, so a load that keeps moving is never killed by
// TimeoutStartSec while one stuck for longer still is.
constexpr std::chrono::seconds load_log_interval{5};
constexpr std::chrono::seconds load_notify_interval{2};
constexpr std::chrono::seconds load_timeout_extension{60};
// After the engine drained, connections get this long to flush their last bytes before the
// io_context is stopped regardless (a client that stopped reading cannot hold the exit).
constexpr std::chrono::milliseconds final_flush_timeout{5000};
constexpr std::chrono::milliseconds final_flush_poll{20};

// SIGTERM/SIGINT handling. The first signal stops accepting and drains on a helper thread
// (the drain blocks, and the io thread must keep writing the tokens of the requests it waits
// for); when the engine is done, open connections get final_flush_timeout to finish, then
// the io_context runs out of work and main returns. A second signal exits at once.
// Threads: everything but the drain thread's body runs on the io_context thread.
class lifecycle {
public:
    lifecycle(asio::io_context& io, asio::signal_set& signals, http_server& server, batch_loop& loop, watchdog& dog,
              std::chrono::milliseconds drain)
        : io_(io), signals_(signals), server_(server), loop_(loop), dog_(dog), drain_(drain), flush_timer_(io) {}
    lifecycle(const lifecycle&) = delete;
    lifecycle& operator=(const lifecycle&) = delete;
    ~lifecycle() { join(); }

    void start() { wait_signal(); }
    void join() {
        if (drainer_.joinable()) drainer_.join();
    }
    bool stopped_by_signal() const noexcept { return stopping_; }
    // Called when only signal waits are left, so that their owners cancel them too.
    void on_quiet(std::function<void()> f) { on_quiet_ = std::move(f); }
    // A configuration reload's new drain timeout; a drain already running keeps its own.
    void set_drain_timeout(std::chrono::milliseconds drain) noexcept { drain_ = drain; }

private:
    void wait_signal() {
        signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
            if (!ec) on_signal(signo);
        });
    }

    void on_signal(int signo) noexcept {
        if (stopping_) {
            MOED_LOG_WARN("moed", "{} again: exiting without waiting for running requests", ::strsignal(signo));
            std::fflush(stderr);
            std::_Exit(exit_failure);
        }
        stopping_ = true;
        drain_at_signal_ = drain_;
        MOED_LOG_INFO("moed", "{}: draining running requests (up to {} ms)", ::strsignal(signo), drain_.count());
        notify("STOPPING=1\nSTATUS=draining");
        try {
            server_.begin_shutdown();
            wait_signal();
            drainer_ = std::thread([this] {
                drain_engine();
                try {
                    asio::post(io_, [this] { drained(); });
                } catch (...) {
                    io_.stop();  // cannot schedule the last step: stop without the flush
                }
            });
        } catch (const std::exception& e) {
            // No thread for the drain: do it here. Running requests then finish or are
            // cancelled at the timeout, and their last tokens are written afterwards.
            MOED_LOG_WARN("moed", "cannot start the drain thread ({}); draining on the socket thread", e.what());
            drain_engine();
            drained();
        }
    }

    void drain_engine() noexcept {
        try {
            loop_.shutdown(drain_at_signal_);
        } catch (const std::exception& e) {
            MOED_LOG_ERROR("moed", "drain failed: {}", e.what());
        }
    }

    void drained() noexcept {
        server_.engine_stopped();
        dog_.stop();
        flush_deadline_ = std::chrono::steady_clock::now() + final_flush_timeout;
        poll_connections();
    }

    void poll_connections() noexcept {
        if (server_.open_connections() == 0) {
            // The last pending work: io.run() returns.
            signals_.cancel();
            if (on_quiet_) on_quiet_();
            return;
        }
        if (std::chrono::steady_clock::now() >= flush_deadline_) {
            MOED_LOG_WARN("moed", "{} connections still open after the drain; closing them", server_.open_connections());
            io_.stop();
            return;
        }
        try {
            flush_timer_.expires_after(final_flush_poll);
            flush_timer_.async_wait([this](const boost::system::error_code& ec) {
                if (!ec) poll_connections();
            });
        } catch (...) {
            io_.stop();
        }
    }

    asio::io_context& io_;
    asio::signal_set& signals_;
    http_server& server_;
    batch_loop& loop_;
    watchdog& dog_;
    std::chrono::milliseconds drain_;
    asio::steady_timer flush_timer_;
    std::chrono::steady_clock::time_point flush_deadline_{};
    std::chrono::milliseconds drain_at_signal_{0};  // written before the drain thread starts
    std::function<void()> on_quiet_;
    std::thread drainer_;
    bool stopping_ = false;
};

http_options http_options_of(const daemon_config& config) {
    http_options ho;
    ho.max_body_bytes = config.max_body_bytes;
    ho.max_connections = config.max_connections;
    ho.max_connections_per_uid = config.max_connections_per_uid;
    ho.read_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(config.read_timeout_s * 1000.0));
    ho.write_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(config.write_timeout_s * 1000.0));
    return ho;
}

std::chrono::milliseconds drain_timeout_of(const daemon_config& config) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(config.drain_timeout_s * 1000.0));
}

// Signals other than SIGTERM and SIGINT (the lifecycle's). SIGHUP reloads the configuration:
// the file and flags are read again, the keys a running daemon can apply take effect (the log
// level, the HTTP limits and timeouts, the drain timeout) and every other changed key is
// logged as waiting for a restart; a configuration that no longer parses is logged and the
// running one kept. SIGUSR1 logs one status line. Signals whose default action would end the
// process though nothing is wrong with it (SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO,
// SIGPWR, SIGSTKFLT, SIGXFSZ and the real-time signals) are logged and ignored. Fault signals
// (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP), SIGQUIT (a core dump asked for)
// and SIGXCPU (the CPU limit; the kernel follows with SIGKILL) keep their default action.
// Threads: every handler runs on the io_context thread.
class control_signals {
public:
    // Registered at start-up, before the slow steps, so that these signals are held (not
    // fatal) while the model loads; handled from start() on.
    static void add_signals(asio::signal_set& set) {
        for (int signo : {SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGSTKFLT, SIGXFSZ})
            set.add(signo);
        for (int signo = SIGRTMIN; signo <= SIGRTMAX; ++signo) set.add(signo);
    }

    control_signals(asio::signal_set& signals, command_line cmd, daemon_config& config, http_server& server,
                    lifecycle& life, std::function<void(server_status&)> fill_status)
        : signals_(signals), cmd_(std::move(cmd)), config_(config), server_(server), life_(life),
          fill_status_(std::move(fill_status)) {}

    void start() { wait(); }
    void stop() {
        boost::system::error_code ignored;
        signals_.cancel(ignored);
    }

private:
    void wait() {
        signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
            if (ec) return;
            try {
                on_signal(signo);
            } catch (const std::exception& e) {
                MOED_LOG_ERROR("moed", "handling {}: {}", ::strsignal(signo), e.what());
            }
            wait();
        });
    }

    void on_signal(int signo) {
        if (signo == SIGHUP) return reload();
        if (signo == SIGUSR1) return log_status();
        MOED_LOG_INFO("moed", "{} (signal {}) ignored", ::strsignal(signo), signo);
    }

    void reload() {
        auto loaded = load_config(cmd_);
        if (!loaded) {
            MOED_LOG_ERROR("moed", "SIGHUP: configuration not reloaded, the running one stays: {}",
                           loaded.error().message);
            return;
        }
        if (loaded->model_path.empty()) loaded->model_path = resolve_default_model();  // as at start
        const std::vector<std::string_view> changed = changed_keys(config_, *loaded);
        std::vector<std::string_view> applied, pending;
        for (std::string_view key : changed) (reloadable_key(key) ? applied : pending).push_back(key);
        // Keys waiting for a restart keep their running values, so the next reload compares
        // against what runs and says again that they wait.
        daemon_config next = config_;
        for (std::string_view key : applied) {
            if (key == "daemon.log_level") next.level = loaded->level;
            else if (key == "http.max_body_bytes") next.max_body_bytes = loaded->max_body_bytes;
            else if (key == "http.max_connections") next.max_connections = loaded->max_connections;
            else if (key == "http.max_connections_per_uid") next.max_connections_per_uid = loaded->max_connections_per_uid;
            else if (key == "http.read_timeout_s") next.read_timeout_s = loaded->read_timeout_s;
            else if (key == "http.write_timeout_s") next.write_timeout_s = loaded->write_timeout_s;
            else if (key == "daemon.drain_timeout_s") next.drain_timeout_s = loaded->drain_timeout_s;
            else MOED_ASSERT(false && "a reloadable key that reload() does not apply");
        }
        set_log_level(next.level);
        server_.set_options(http_options_of(next));
        life_.set_drain_timeout(drain_timeout_of(next));
        config_ = std::move(next);
        MOED_LOG_INFO("moed", "SIGHUP: configuration reloaded from {}: {}{}{}",
                      config_.source.empty() ? std::string("defaults and flags") : config_.source,
                      applied.empty() ? std::string("nothing to apply") : fmt::format("applied {}", fmt::join(applied, ", ")),
                      pending.empty() ? "" : "; changed but applied only at the next start: ",
                      fmt::join(pending, ", "));
    }

    void log_status() {
        server_status s;
        fill_status_(s);
        MOED_LOG_INFO("moed",
                      "status: model {} {}{}, {} running of {} sequences, {} queued, {} requests ({} failed, {} "
                      "cancelled), {} tokens generated, rss {} (peak {})",
                      s.model.id, s.model.state, s.model.error.empty() ? "" : " (" + s.model.error + ")",
                      s.running_sequences, s.max_sequences, s.queue_waiting, s.requests_total, s.requests_failed,
                      s.requests_cancelled, s.generated_tokens_total, format_bytes(s.memory.rss_bytes),
                      format_bytes(s.memory.rss_peak_bytes));
    }

    asio::signal_set& signals_;
    const command_line cmd_;
    daemon_config& config_;
    http_server& server_;
    lifecycle& life_;
    std::function<void(server_status&)> fill_status_;
};

// What a task profile does to the expert tiers when a request starts using it (named, or
// matched after its prefill): its most needed experts become the pinned hot set and its
// scores bias eviction. Runs on the engine thread (batch_loop's on_profile_applied).
void apply_profile_to_tiers(engine::model& model, const scheduler::profile& p) {
    storage::tier_control* tiers = model.tiers();
    if (tiers == nullptr) return;  // every expert is resident: nothing to warm
    // The hot set: each layer's n_expert_used best experts, a fraction of the slots so the
    // ring keeps room for what the router picks beyond them.
    const std::uint32_t per_layer = std::min<std::uint32_t>(
        p.shape.n_expert_used, tiers->slot_count() / (2 * std::max<std::uint32_t>(1, p.shape.n_layer)));
    const std::vector<ExpertId> hot = scheduler::profile_hot_set(p, per_layer);
    const std::vector<float> scores = scheduler::profile_expert_scores(p);
    // The tier pins what fits of the hot set (at most tiered_options::hot_fraction_max of its
    // slots) outside the ring, and reclaims ring slots by these scores where no prediction
    // says otherwise. Both only take the tier's lock: nothing here waits for I/O.
    const std::uint32_t pinned = tiers->set_hot_set(hot);
    tiers->set_expert_scores(scores);
    MOED_LOG_DEBUG("profiles", "profile '{}': hot set of {} experts ({} per layer, {} pinned), eviction scores for {}",
                   p.name, hot.size(), per_layer, pinned, scores.size());
}

// Reports the model load's progress (load_options::on_progress): to the server for /healthz
// (posted to the io thread), to the log and to systemd at their intervals, and always at the
// start and the end. Runs on the loading (main) thread.
class load_reporter {
public:
    load_reporter(asio::io_context& io, http_server& server) : io_(io), server_(server) {}

    void operator()(std::uint64_t done_bytes, std::uint64_t total_bytes) {
        const double fraction = total_bytes == 0 ? 1.0 : static_cast<double>(done_bytes) / static_cast<double>(total_bytes);
        asio::post(io_, [&server = server_, fraction] { server.set_load_progress(fraction); });
        const auto now = std::chrono::steady_clock::now();
        const bool edge = done_bytes == 0 || done_bytes == total_bytes;
        const int percent = static_cast<int>(fraction * 100.0);
        if (edge || now - last_notify_ >= load_notify_interval) {
            last_notify_ = now;
            notify(fmt::format("STATUS=loading {}%\nEXTEND_TIMEOUT_USEC={}", percent,
                               std::chrono::duration_cast<std::chrono::microseconds>(load_timeout_extension).count()));
        }
        if (edge || now - last_log_ >= load_log_interval) {
            last_log_ = now;
            MOED_LOG_INFO("moed", "loading: {}% ({} of {})", percent, format_bytes(done_bytes), format_bytes(total_bytes));
        }
    }

private:
    asio::io_context& io_;
    http_server& server_;
    std::chrono::steady_clock::time_point last_notify_{};
    std::chrono::steady_clock::time_point last_log_{};
};

// Runs the io_context on its own thread while the main thread loads the model; whatever way
// run() leaves the scope, the thread is stopped and joined before the objects it serves go.
class io_thread {
public:
    explicit io_thread(asio::io_context& io) : io_(io), work_(asio::make_work_guard(io)) {
        thread_ = std::thread([this] {
            ::pthread_setname_np(::pthread_self(), "moed-io");
            try {
                io_.run();
            } catch (...) {
                failure_ = std::current_exception();
            }
        });
    }
    io_thread(const io_thread&) = delete;
    io_thread& operator=(const io_thread&) = delete;
    ~io_thread() {
        if (!thread_.joinable()) return;
        io_.stop();
        thread_.join();
    }
    // Lets run() return once its work is done, waits for it, and rethrows what ended it.
    void finish() {
        work_.reset();
        thread_.join();
        if (failure_) std::rethrow_exception(failure_);
    }

private:
    asio::io_context& io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_;
    std::thread thread_;
    std::exception_ptr failure_;
};

// Makes `dir` and any missing parents with `mode` (directories that exist keep theirs).
result<void> make_directories(const std::filesystem::path& dir, mode_t mode) {
    if (dir.empty()) return {};
    std::filesystem::path partial;
    for (const auto& part : dir) {
        partial /= part;
        if (::mkdir(partial.c_str(), mode) != 0 && errno != EEXIST)
            return make_error(errc::io, "cannot create {}: {}", partial.string(), std::strerror(errno));
    }
    return {};
}

int config_error(const std::string& message) {
    std::fprintf(stderr, "moed: %s\n", message.c_str());
    return exit_config;
}

int start_error(const std::string& message) {
    MOED_LOG_ERROR("moed", "{}", message);
    moed::daemon::notify(fmt::format("STATUS=failed: {}", message));
    return exit_failure;
}

int run(int argc, char** argv) {
    auto cmd = parse_command_line(argc, argv);
    if (!cmd) return config_error(cmd.error().message);
    if (cmd->help) {
        std::fputs(help_text().c_str(), stdout);
        return exit_ok;
    }
    if (cmd->version) {
        std::printf("moed %s\n", MOED_VERSION);
        return exit_ok;
    }
    auto loaded_config = load_config(*cmd);
    if (!loaded_config) return config_error(loaded_config.error().message);
    daemon_config config = std::move(*loaded_config);
    set_log_level(config.level);
    // A misspelt MOED_ISA would otherwise serve at the CPU's best level without anyone asking.
    if (auto isa_ok = kernels::check_isa_env(); !isa_ok) return config_error(isa_ok.error().message);

    if (config.model_path.empty()) {
        config.model_path = resolve_default_model();
        if (config.model_path.empty())
            return config_error("model.path: not set, and the bundled model is not installed (share/moed/models/)");
    }
    {
        std::error_code ec;
        if (!std::filesystem::is_regular_file(config.model_path, ec))
            return config_error(fmt::format("model.path: '{}' is not a readable file", config.model_path));
    }
    if (!config.socket_group.empty()) {
        auto gid = lookup_group(config.socket_group);
        if (!gid) return config_error(gid.error().message);
    }
    // The keys file is checked even without a TCP listener: a world-readable one is a leak
    // whatever uses it.
    api_keys keys;
    if (!config.api_keys_file.empty()) {
        auto loaded_keys = api_keys::load(config.api_keys_file);
        if (!loaded_keys) return config_error(loaded_keys.error().message);
        keys = std::move(*loaded_keys);
        if (config.listen.empty())
            MOED_LOG_WARN("moed", "server.api_keys_file is set but server.listen is not: the keys are not used "
                                  "(the Unix socket needs none)");
    }
    std::optional<listen_address> tcp_address;
    if (!config.listen.empty()) tcp_address = parse_listen_address(config.listen).value();  // validated with the config

    // Writes to a closed connection must fail with EPIPE, not kill the daemon.
    ::signal(SIGPIPE, SIG_IGN);
    const auto started = std::chrono::steady_clock::now();
    const std::int64_t started_unix = static_cast<std::int64_t>(std::time(nullptr));

    // Declared first so it is destroyed last: the batch loop, sinks and sessions post to it.
    asio::io_context io(1);
    // Installed before the slow steps so a SIGTERM while loading is held until the loop runs
    // (and then drains at once) instead of killing the process mid-load.
    asio::signal_set signals(io, SIGINT, SIGTERM);
    asio::signal_set control_set(io);
    control_signals::add_signals(control_set);

    // Logged once the config has passed every check, so a config error stays the only output.
    if (!config.defaults_note.empty()) MOED_LOG_INFO("moed", "{}", config.defaults_note);
    // A default socket's directory ($XDG_RUNTIME_DIR/moed for a user) is moed's to make: a
    // user's private to them, the system's as tmpfiles.d/moed.conf makes it (the socket's own
    // mode and group decide who connects). A configured path's directory must exist already.
    const bool user_scope = config.defaults_scope == path_scope::user;
    if (config.socket_path_defaulted) {
        if (auto made = make_directories(std::filesystem::path(config.socket_path).parent_path(),
                                         user_scope ? 0700 : 0755);
            !made)
            return start_error(fmt::format("socket.path {}: {}", config.socket_path, made.error().message));
    }
    // Likewise the default state directory; without it moed serves, only without profiles.
    if (config.state_dir_defaulted) {
        if (auto made = make_directories(config.state_dir, user_scope ? 0700 : 0750); !made)
            MOED_LOG_WARN("moed", "daemon.state_dir {}: {}", config.state_dir, made.error().message);
    }
    // The socket comes before the model: a second daemon on the same path fails at once
    // instead of after loading gigabytes.
    auto listening = open_listener(io, {config.socket_path, config.socket_mode, config.socket_group});
    if (!listening) return start_error(listening.error().message);
    std::unique_ptr<listener> lst = std::move(*listening);
    std::unique_ptr<listener> tcp;
    if (tcp_address) {
        auto opened = open_tcp_listener(io, *tcp_address);
        if (!opened) return start_error(opened.error().message);
        tcp = std::move(*opened);
        if (!tcp_address->loopback)
            MOED_LOG_WARN("moed", "server.listen {} is not a loopback address: other hosts can reach the API{}",
                          tcp_address->text(),
                          keys.empty() ? " without a key (server.allow_unauthenticated)" : " with a key");
        if (keys.empty())
            MOED_LOG_INFO("moed", "TCP {}: no server.api_keys_file, requests need no key", tcp_address->text());
        else
            MOED_LOG_INFO("moed", "TCP {}: requests need one of {} API keys ('Authorization: Bearer KEY'); /healthz "
                                  "is open",
                          tcp_address->text(), keys.size());
    }
    const std::string listening_on = tcp ? lst->description + " and " + tcp->description : lst->description;

    // The sockets answer from now on: while the model loads, /healthz says "loading" with
    // the progress, /v1/status and /metrics work, and API requests get 503 with Retry-After.
    std::vector<server_listener> listeners;
    listeners.push_back(server_listener{std::move(lst->acceptor), listener_kind::unix_socket});
    if (tcp) listeners.push_back(server_listener{std::move(tcp->acceptor), listener_kind::tcp});
    server_context loading_ctx;
    loading_ctx.fill_status = [started, path = config.model_path, id = config.model_id](server_status& s) {
        s.version = MOED_VERSION;
        s.uptime_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        s.model.id = id;
        s.model.path = path;
        s.model.state = "loading";
    };
    http_server server(io, std::move(listeners), std::move(loading_ctx), http_options_of(config), std::move(keys),
                       server_phase::loading);
    server.start();
    io_thread serving(io);
    MOED_LOG_INFO("moed", "listening on {} while the model loads", listening_on);

    MOED_LOG_INFO("moed", "moed {} loading {}{}", MOED_VERSION, config.model_path,
                  config.source.empty() ? std::string() : fmt::format(" (config {})", config.source));
    notify(fmt::format("STATUS=loading model {}", config.model_path));
    engine::load_options load;
    load.on_progress = load_reporter(io, server);
    if (!config.inject_slow_load.empty()) {
        const slow_load_spec slow = parse_slow_load(config.inject_slow_load).value();  // validated with the config
        MOED_LOG_WARN("moed", "model.inject_slow_load = \"{}\": the load pauses {} ms every {} on purpose",
                      config.inject_slow_load, slow.delay_ms, format_bytes(slow.piece_bytes));
        load.piece_bytes = slow.piece_bytes;
        load.piece_delay = std::chrono::milliseconds(slow.delay_ms);
    }
    load.host_budget = config.host_budget;
    load.tier.queue_depth = config.io_depth;
    load.tier.allow_uring = config.io_uring;
    load.tier.allow_direct = config.direct_io;
    load.tier.lock = config.mlock;
    load.tier.max_inflight_bytes = config.max_inflight_bytes;
    if (!config.inject_faults.empty()) {
        // Validated when the config was read.
        const storage::fault_plan plan = storage::parse_fault_plan(config.inject_faults).value();
        MOED_LOG_WARN("moed", "tiers.inject_faults = \"{}\": expert reads fail, shorten and stall on purpose",
                      config.inject_faults);
        load.tier.wrap_reader = [plan](std::unique_ptr<storage::block_reader> inner)
            -> result<std::unique_ptr<storage::block_reader>> {
            auto faulty = storage::fault_reader::create(std::move(inner));
            if (!faulty) return unexpected(std::move(faulty).error());
            (*faulty)->set_plan(plan);
            return std::unique_ptr<storage::block_reader>(std::move(faulty).value());
        };
    }
    auto loaded_model = engine::model::load(config.model_path, load);
    if (!loaded_model) return start_error(loaded_model.error().message);
    engine::model& model = **loaded_model;
    const auto& hp = model.hparams();

    const std::string model_id = config.model_id.empty() ? default_model_id(config.model_path, hp.architecture)
                                                         : config.model_id;

    // Task profiles of this model under <state_dir>/profiles; a directory that cannot be
    // read leaves the daemon serving without them (each bad file is logged and skipped).
    scheduler::profile_store profiles(config.state_dir, scheduler::model_identity(model.file()),
                                      scheduler::routing_shape{hp.n_moe_layer(), hp.n_expert, hp.n_expert_used});
    if (auto loaded = profiles.load(); !loaded)
        MOED_LOG_WARN("moed", "task profiles unavailable until the directory is readable: {}", loaded.error().message);
    std::int64_t n_ctx = config.ctx;
    if (n_ctx == 0) n_ctx = hp.n_ctx_train > 0 ? std::min(hp.n_ctx_train, default_ctx) : default_ctx;
    if (hp.n_ctx_train > 0 && n_ctx > hp.n_ctx_train)
        MOED_LOG_WARN("moed", "engine.ctx {} is beyond the model's training context {}; quality may drop", n_ctx,
                      hp.n_ctx_train);
    const int threads = config.threads > 0 ? config.threads
                                           : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

    server_context ctx;
    ctx.vocab = &model.vocab();
    if (auto tmpl = engine::chat_template::from_gguf(model.file())) {
        ctx.chat = *tmpl;
        MOED_LOG_INFO("moed", "chat template: {}", tmpl->name());
    } else {
        ctx.chat_error = fmt::format("chat completions are not available for this model: {}", tmpl.error().message);
        MOED_LOG_WARN("moed", "{}", ctx.chat_error);
    }
    ctx.model_id = model_id;
    ctx.n_ctx = n_ctx;
    ctx.limits = {config.max_tokens, config.default_max_tokens, config.max_stop_strings};
    ctx.started_unix = started_unix;
    ctx.profiles = &profiles;

    loop_options lo;
    lo.max_sequences = config.max_sequences;
    lo.queue_capacity = config.queue_length;
    lo.max_batch_tokens = config.max_batch_tokens;
    lo.n_ctx = n_ctx;
    lo.max_tokens_limit = config.max_tokens;
    lo.max_stop_strings = config.max_stop_strings;
    lo.threads = threads;
    lo.prefetch.enabled = config.prefetch;
    lo.prefetch.lookahead = config.lookahead;
    lo.on_profile_applied = [&model](const scheduler::profile& p) { apply_profile_to_tiers(model, p); };
    const std::uint64_t physical_bytes = physical_memory_bytes();
    if (auto fits = check_memory_fits(model, lo.max_sequences, n_ctx, physical_bytes); !fits)
        return start_error(fits.error().message);
    batch_loop loop(model, lo);
    if (!config.trace_path.empty()) {
        auto writer = scheduler::trace_writer::create(config.trace_path,
                                                      engine::make_trace_info(model, config.trace_lookahead));
        if (!writer) return start_error(fmt::format("trace.path: {}", writer.error().message));
        loop.record_trace(std::move(writer).value());
        MOED_LOG_INFO("moed", "recording the routing trace to {} (lookahead {})", config.trace_path,
                      config.trace_lookahead);
    }
    batch_loop_port port(loop);
    ctx.engine = &port;

    model_status mstatus;
    mstatus.id = model_id;
    mstatus.path = config.model_path;
    mstatus.architecture = hp.architecture;
    mstatus.n_layer = hp.n_layer;
    mstatus.n_expert = hp.n_expert;
    mstatus.n_expert_used = hp.n_expert_used;
    mstatus.n_ctx = n_ctx;
    mstatus.n_vocab = hp.n_vocab;
    mstatus.file_bytes = model.file().file_size();
    mstatus.dense_bytes = model.dense_bytes();
    mstatus.expert_bytes = model.expert_bytes();
    const std::string isa(kernels::isa_name(kernels::active_isa()));
    ctx.fill_status = [&, mstatus, isa, started, physical_bytes](server_status& s) {
        s.version = MOED_VERSION;
        s.uptime_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        s.model = mstatus;
        s.threads = static_cast<std::uint32_t>(threads);
        s.isa = isa;
        loop.snapshot(s);
        // Tier statistics include the per-layer residency map; absent when every expert
        // stays resident in the mapping.
        if (const auto* tiers = model.tiers()) {
            s.tiers = tiers->stats();
            loop.add_prefetch_stats(s.tiers->prefetch);
            if (const storage::tier_file_health health = tiers->file_health(); health.broken) {
                s.model.state = "broken";
                s.model.error = health.error;
            }
        }
        fill_memory_status(s, model, physical_bytes);
    };
    ctx.model_problem = [&model] {
        const auto* tiers = model.tiers();
        return tiers != nullptr ? tiers->file_health().error : std::string();
    };

    std::function<void(server_status&)> fill_status = ctx.fill_status;

    loop.start();
    watchdog dog(io);
    lifecycle life(io, signals, server, loop, dog, drain_timeout_of(config));
    control_signals control(control_set, *cmd, config, server, life, std::move(fill_status));
    // Everything that touches the server, the signal sets and the timers runs on the io
    // thread; `config` is the io thread's from here on (SIGHUP reloads it there).
    const std::string ready_line =
        fmt::format("serving '{}' on {}: {} sequences, ctx {}, {} threads ({}), experts {}", model_id, listening_on,
                    config.max_sequences, n_ctx, threads, isa, model.tiers() ? "tiered" : "resident");
    const std::string ready_status =
        fmt::format("READY=1\nSTATUS=ready: {} sequences, model {}", config.max_sequences, model_id);
    const bool use_watchdog = config.watchdog;
    asio::post(io, [&, ctx = std::move(ctx)]() mutable {
        server.set_ready(std::move(ctx));
        if (use_watchdog) dog.start(watchdog_interval());
        life.start();
        control.start();
        life.on_quiet([&control] { control.stop(); });
        MOED_LOG_INFO("moed", "{}", ready_line);
        notify(ready_status);
    });

    serving.finish();
    life.join();
    // Handlers the loop posted while stopping: run them so nothing still refers to a job.
    io.restart();
    io.poll();
    MOED_LOG_INFO("moed", "stopped");
    return life.stopped_by_signal() ? exit_ok : exit_failure;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        MOED_LOG_ERROR("moed", "fatal: {}", e.what());
        return exit_failure;
    }
}
