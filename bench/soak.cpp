// bench/soak: a long mixed load against moed, watching the daemon's memory, threads and
// descriptors and every request's outcome. N clients send, back to back until the time is
// up, chat and plain completions, streamed or not, with and without stop strings, with
// varying max_tokens, some naming a task profile (one stable, one deleted and recreated
// every --churn-interval), and some streams closed by the client after a few chunks. The
// request mix comes from a seeded RNG per client, so a run with the same --seed sends the
// same requests from each client (their timing, and so the daemon's batching, differs).
//
//   bench-soak --socket PATH [--pid PID] [options]      attach to a running moed (the pid is
//                                                       read from the socket when not given)
//   bench-soak --moed PATH [--model PATH] [options] [-- DAEMON FLAGS...]
//                                                       start moed on a temporary socket and
//                                                       state folder; SIGTERM it at the end
// Options: --clients 16, --duration 10m (90s, 1h, 1h30m), --seed 1, --sample-interval 10s,
//          --prompts FILE.jsonl (lines with "text" and optionally "domain"), --max-tokens 64,
//          --prompt-bytes 120, --churn-interval 30s, --request-timeout 300s,
//          --max-growth-mib-per-hour 8.
//
// Every --sample-interval it reads the daemon's VmRSS, VmHWM and Threads from
// /proc/PID/status, counts /proc/PID/fd, and reads GET /v1/status (requests and tokens done,
// the host tier's capacity). At the end it prints one JSON object: config, totals, samples,
// summary (peak RSS, RSS growth over the last half as a least-squares slope, threads and
// descriptors in the last half, unexpected errors with examples) and the verdict. Exit 0
// only when the verdict passes; 1 when it fails; 2 on bad arguments or a failed set-up.
// The pieces: bench/soak_stats.h (durations, the outcome classifier, the RSS slope and the
// verdict), bench/soak_request.h (one request read strictly), bench/soak_daemon.h (/proc
// sampling and the daemon started for the run); here the workload, the clients, the profile
// churn, the sampling loop and the report.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench/soak_daemon.h"
#include "bench/soak_request.h"
#include "bench/soak_stats.h"
#include "moed/client.hpp"
#include "tools/cli_util.h"

using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;
using namespace moed::bench::soak;

namespace {

constexpr const char* program = "bench-soak";
// The unexpected errors quoted in the summary, per kind (all are counted).
constexpr std::size_t max_examples_per_kind = 3;
// After a connection moed refused or broke, a client waits this long before its next
// request, so that a daemon gone for good does not turn into a busy loop of refusals.
constexpr auto connection_error_pause = std::chrono::milliseconds(100);
// After a 429 a client waits this long before its next request, as a polite client would
// (else a full queue turns every client into a busy loop of refused requests).
constexpr auto back_pressure_pause = std::chrono::milliseconds(250);
// Example prompts per task profile.
constexpr std::size_t profile_prompts = 8;
// A profile creation the queue refused is retried after this.
constexpr auto profile_retry_delay = std::chrono::seconds(1);

const char* const stable_profile = "soak-stable";
const char* const churn_profile = "soak-churn";

struct options {
    std::string socket_path;
    pid_t pid = 0;
    std::string moed_path;
    std::string model_path;
    std::vector<std::string> daemon_flags;
    int clients = 16;
    std::int64_t duration_s = 600;
    std::uint64_t seed = 1;
    std::int64_t sample_interval_s = 10;
    std::string prompts_path;
    int max_tokens = 64;
    std::size_t prompt_bytes = 120;
    std::int64_t churn_interval_s = 30;
    std::int64_t request_timeout_s = 300;
    double max_growth_mib_per_hour = 8.0;
};

std::int64_t duration_flag(const std::string& flag, const char* text) {
    auto d = parse_duration_s(text);
    if (!d) moed::tools::fail(program, flag + ": " + d.error().message);
    return *d;
}

options parse_args(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--") {
            for (++i; i < argc; ++i) o.daemon_flags.emplace_back(argv[i]);
            break;
        }
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) moed::tools::fail(program, "missing value after " + a);
            return argv[++i];
        };
        using moed::tools::parse_number;
        using moed::tools::sign;
        if (a == "--socket") o.socket_path = next();
        else if (a == "--pid") o.pid = parse_number<pid_t>(program, a, next(), sign::positive);
        else if (a == "--moed") o.moed_path = next();
        else if (a == "--model") o.model_path = next();
        else if (a == "--clients") o.clients = parse_number<int>(program, a, next(), sign::positive);
        else if (a == "--duration") o.duration_s = duration_flag(a, next());
        else if (a == "--seed") o.seed = parse_number<std::uint64_t>(program, a, next());
        else if (a == "--sample-interval") o.sample_interval_s = duration_flag(a, next());
        else if (a == "--prompts") o.prompts_path = next();
        else if (a == "--max-tokens") o.max_tokens = parse_number<int>(program, a, next(), sign::positive);
        else if (a == "--prompt-bytes") o.prompt_bytes = parse_number<std::size_t>(program, a, next(), sign::positive);
        else if (a == "--churn-interval") o.churn_interval_s = duration_flag(a, next());
        else if (a == "--request-timeout") o.request_timeout_s = duration_flag(a, next());
        else if (a == "--max-growth-mib-per-hour")
            o.max_growth_mib_per_hour = parse_number<double>(program, a, next(), sign::positive);
        else moed::tools::fail(program, "unknown argument '" + a + "' (daemon flags go after --)");
    }
    if (o.socket_path.empty() == o.moed_path.empty())
        moed::tools::fail(program, "give exactly one of --socket PATH (a running moed) or --moed PATH (start one)");
    if (!o.moed_path.empty() && o.pid != 0) moed::tools::fail(program, "--pid goes with --socket, not --moed");
    if (!o.daemon_flags.empty() && o.moed_path.empty()) moed::tools::fail(program, "daemon flags after -- need --moed");
    if (!o.model_path.empty() && o.moed_path.empty()) moed::tools::fail(program, "--model needs --moed");
    if (o.clients > 1024) moed::tools::fail(program, "--clients: at most 1024");
    if (o.max_tokens > 4096) moed::tools::fail(program, "--max-tokens: at most 4096");
    return o;
}

// ---- prompts ----

struct prompt_set {
    std::vector<std::string> texts;
    std::vector<std::string> stable_examples;  // the stable profile's prompts
    std::vector<std::string> churn_examples;   // the churned profile's prompts
    std::string stable_source;
    std::string churn_source;
};

std::vector<std::pair<std::string, std::string>> builtin_prompts() {
    return {{"code", "int main(int argc, char **argv) {"},
            {"code", "static void free_buffer(struct buffer *b)"},
            {"code", "struct list_head {"},
            {"code", "    if (ret < 0)"},
            {"code", "def parse_args(argv):"},
            {"code", "class Config(object):"},
            {"code", "import os\nimport sys\n"},
            {"code", "    return self.value"},
            {"text", "The river ran through the old town"},
            {"text", "In the morning the market was"},
            {"text", "She opened the letter and"},
            {"text", "It was the first time that"},
            {"text", "#!/bin/sh\nset -e\n"},
            {"text", "for f in *.txt; do"},
            {"text", "export PATH="},
            {"text", "case \"$1\" in"}};
}

prompt_set load_prompts(const options& o) {
    std::vector<std::pair<std::string, std::string>> rows;  // (domain, text)
    if (o.prompts_path.empty()) {
        rows = builtin_prompts();
    } else {
        std::ifstream in(o.prompts_path);
        if (!in) moed::tools::fail(program, "--prompts: cannot open '" + o.prompts_path + "'");
        std::string line;
        for (std::size_t n = 1; std::getline(in, line); ++n) {
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
            const std::string where = fmt::format("{}:{}", o.prompts_path, n);
            if (!j.is_object()) moed::tools::fail(program, where + ": not a JSON object");
            auto text = j.find("text");
            if (text == j.end() || !text->is_string() || text->get_ref<const std::string&>().empty())
                moed::tools::fail(program, where + ": no \"text\" string");
            std::string domain;
            if (auto d = j.find("domain"); d != j.end() && d->is_string()) domain = d->get<std::string>();
            rows.emplace_back(std::move(domain), text->get<std::string>());
        }
        if (rows.empty()) moed::tools::fail(program, "--prompts: '" + o.prompts_path + "' has no prompts");
    }
    prompt_set p;
    // Prompts are cut so that prompt plus max_tokens fits a small model's context.
    for (auto& [domain, text] : rows) text = std::string(utf8_prefix(text, o.prompt_bytes));
    for (const auto& row : rows) p.texts.push_back(row.second);
    // Two profiles from the first two domains (without domains: the first and second half).
    std::vector<std::string> domains;
    for (const auto& row : rows) {
        if (std::find(domains.begin(), domains.end(), row.first) == domains.end()) domains.push_back(row.first);
    }
    auto pick = [&](auto&& keep, std::vector<std::string>& out) {
        for (std::size_t i = 0; i < rows.size() && out.size() < profile_prompts; ++i) {
            if (keep(i)) out.push_back(rows[i].second);
        }
    };
    if (domains.size() >= 2) {
        pick([&](std::size_t i) { return rows[i].first == domains[0]; }, p.stable_examples);
        pick([&](std::size_t i) { return rows[i].first == domains[1]; }, p.churn_examples);
        p.stable_source = "bench-soak: prompts of domain " + domains[0];
        p.churn_source = "bench-soak: prompts of domain " + domains[1];
    } else {
        const std::size_t half = std::max<std::size_t>(1, rows.size() / 2);
        pick([&](std::size_t i) { return i < half; }, p.stable_examples);
        pick([&](std::size_t i) { return i >= half || rows.size() == 1; }, p.churn_examples);
        p.stable_source = "bench-soak: first half of the prompts";
        p.churn_source = "bench-soak: second half of the prompts";
    }
    return p;
}

// ---- the workload ----

struct workload {
    const std::vector<std::string>* prompts = nullptr;
    int max_tokens = 64;
};

const std::vector<std::string>& stop_choices() {
    static const std::vector<std::string> stops{"\n\n", ";", "}", ".", " the", "\n", ")", ":"};
    return stops;
}

const std::vector<std::string>& system_choices() {
    static const std::vector<std::string> systems{"You are a helpful assistant.", "Answer briefly.",
                                                  "Continue the text."};
    return systems;
}

// The next request of one client: a function of its RNG only.
request_plan next_plan(std::mt19937_64& rng, const workload& w) {
    auto chance = [&](double p) { return std::uniform_real_distribution<double>(0.0, 1.0)(rng) < p; };
    auto pick = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
    request_plan p;
    p.chat = chance(0.4);
    p.stream = chance(0.6);
    if (!chance(0.05)) p.max_tokens = std::uniform_int_distribution<int>(1, w.max_tokens)(rng);
    if (chance(0.3)) {
        const std::size_t n = 1 + pick(2);
        for (std::size_t i = 0; i < n; ++i) p.stop.push_back(stop_choices()[pick(stop_choices().size())]);
    }
    const double r = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    if (r < 0.2) p.profile = stable_profile;
    else if (r < 0.3) p.profile = churn_profile;
    if (!p.profile.empty() && chance(0.25)) p.prune = 8;
    if (p.stream && chance(0.12)) p.cut_after_chunks = std::uniform_int_distribution<int>(1, 4)(rng);
    if (chance(0.5)) {
        p.temperature = 0.8;
        p.seed = rng();
    }
    if (p.chat && chance(0.3)) p.system = system_choices()[pick(system_choices().size())];
    p.prompt = (*w.prompts)[pick(w.prompts->size())];
    return p;
}

// ---- counting outcomes ----

class tally {
public:
    explicit tally(clock_type::time_point start) : start_(start) {}

    void record(const std::string& endpoint, outcome o, std::int64_t tokens, const std::string& message) {
        std::lock_guard lock(mu_);
        ++by_endpoint_[endpoint][static_cast<std::size_t>(o)];
        ++requests_;
        if (tokens > 0) tokens_ += static_cast<std::uint64_t>(tokens);
        if (!is_unexpected(o)) return;
        ++unexpected_;
        if (++quoted_[static_cast<std::size_t>(o)] <= max_examples_per_kind) {
            const double t_s = std::chrono::duration<double>(clock_type::now() - start_).count();
            examples_.push_back(
                {{"t_s", t_s}, {"endpoint", endpoint}, {"kind", outcome_name(o)}, {"message", message}});
        }
    }
    void record_plan(const request_plan& p) {
        std::lock_guard lock(mu_);
        ++mix_[p.chat ? "chat" : "completions"];
        ++mix_[p.stream ? "stream" : "whole"];
        if (!p.stop.empty()) ++mix_["stop_strings"];
        if (!p.max_tokens) ++mix_["default_max_tokens"];
        if (p.profile == stable_profile) ++mix_["profile_stable"];
        if (p.profile == churn_profile) ++mix_["profile_churned"];
        if (p.prune) ++mix_["prune"];
        if (p.cut_after_chunks > 0) ++mix_["cut_planned"];
    }
    std::uint64_t unexpected() const {
        std::lock_guard lock(mu_);
        return unexpected_;
    }
    std::uint64_t requests() const {
        std::lock_guard lock(mu_);
        return requests_;
    }
    std::uint64_t tokens() const {
        std::lock_guard lock(mu_);
        return tokens_;
    }
    json totals() const {
        std::lock_guard lock(mu_);
        json by_kind = json::object();
        json by_endpoint = json::object();
        for (outcome o : all_outcomes) by_kind[outcome_name(o)] = 0;
        for (const auto& [endpoint, counts] : by_endpoint_) {
            json e = json::object();
            for (outcome o : all_outcomes) {
                const std::uint64_t n = counts[static_cast<std::size_t>(o)];
                if (n == 0) continue;
                e[outcome_name(o)] = n;
                by_kind[outcome_name(o)] = by_kind[outcome_name(o)].get<std::uint64_t>() + n;
            }
            by_endpoint[endpoint] = std::move(e);
        }
        return {{"requests", requests_}, {"by_kind", by_kind}, {"by_endpoint", by_endpoint},
                {"completion_tokens", tokens_}, {"mix", mix_},   {"unexpected_errors", unexpected_}};
    }
    json examples() const {
        std::lock_guard lock(mu_);
        return examples_;
    }

private:
    clock_type::time_point start_;
    mutable std::mutex mu_;
    std::map<std::string, std::array<std::uint64_t, std::size(all_outcomes)>> by_endpoint_;
    std::map<std::string, std::uint64_t> mix_;
    std::uint64_t requests_ = 0;
    std::uint64_t tokens_ = 0;
    std::uint64_t unexpected_ = 0;
    std::array<std::uint64_t, std::size(all_outcomes)> quoted_{};
    json examples_ = json::array();
};

// The facts of a libmoeclient failure, for the classifier.
attempt from_client_error(const moed::client_error& e) {
    attempt a;
    switch (e.code) {
        case moed::client_errc::http: a.http_status = e.http_status; break;
        case moed::client_errc::timeout: a.io = transport::timeout; break;
        case moed::client_errc::protocol: a.malformed = true; break;
        default: a.io = transport::failed; break;
    }
    return a;
}

// Lets sleeping threads wake as soon as the run stops.
class stop_signal {
public:
    void raise() {
        {
            std::lock_guard lock(mu_);
            raised_ = true;
        }
        cv_.notify_all();
    }
    bool raised() const {
        std::lock_guard lock(mu_);
        return raised_;
    }
    // Sleeps until `when` or the stop; true when stopped.
    bool wait_until(clock_type::time_point when) {
        std::unique_lock lock(mu_);
        return cv_.wait_until(lock, when, [&] { return raised_; });
    }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    bool raised_ = false;
};

// ---- profiles ----

// Creates (or replaces) a profile; a full queue is retried. False when it could not be made.
bool create_profile(const moed::client& c, tally& t, const char* name, const std::vector<std::string>& prompts,
                    const std::string& source, bool replace, stop_signal& stop) {
    for (;;) {
        moed::profile_create_request req;
        req.name = name;
        req.prompts = prompts;
        req.replace = replace;
        req.source = source;
        auto r = c.create_profile(req);
        if (r) {
            t.record("profiles", outcome::ok, 0, {});
            return true;
        }
        const outcome o = classify(from_client_error(r.error()));
        t.record("profiles", o, 0, fmt::format("create profile '{}': {}", name, r.error().message));
        if (o != outcome::back_pressure || stop.wait_until(clock_type::now() + profile_retry_delay)) return false;
    }
}

// Deletes and recreates the churned profile every `interval`. `generation` is odd while the
// profile may be absent (from just before the DELETE to the recreation's answer).
void churn_profiles(const moed::client& c, tally& t, const prompt_set& prompts, std::int64_t interval_s,
                    std::atomic<std::uint64_t>& generation, std::mt19937_64 rng, stop_signal& stop) {
    while (!stop.wait_until(clock_type::now() + std::chrono::seconds(interval_s))) {
        generation.fetch_add(1);  // odd: may be absent from now on
        auto d = c.delete_profile(churn_profile);
        if (d) t.record("profiles", outcome::ok, 0, {});
        else t.record("profiles", classify(from_client_error(d.error())), 0, "delete profile: " + d.error().message);
        // Leave it absent a moment so that requests naming it meet the gap.
        const auto gap = std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 2000)(rng));
        if (stop.wait_until(clock_type::now() + gap)) return;
        if (create_profile(c, t, churn_profile, prompts.churn_examples, prompts.churn_source, /*replace=*/true, stop))
            generation.fetch_add(1);  // even: present again
        else
            return;  // it stays absent: requests naming it count as churn from here on
    }
}

json sample_json(double t_s, const proc_sample& p, const moed::client_result<moed::daemon_status>& st,
                 const tally& t) {
    json j{{"t_s", t_s},
           {"rss_bytes", p.rss_bytes},
           {"hwm_bytes", p.hwm_bytes},
           {"threads", p.threads},
           {"fds", p.fds},
           {"client_requests", t.requests()},
           {"client_tokens", t.tokens()},
           {"client_unexpected", t.unexpected()}};
    if (st) {
        j["requests_total"] = st->requests_total;
        j["requests_failed"] = st->requests_failed;
        j["requests_cancelled"] = st->requests_cancelled;
        j["generated_tokens_total"] = st->generated_tokens_total;
        j["queue_waiting"] = st->queue_waiting;
        j["running_sequences"] = st->running_sequences;
        if (st->tiers) {
            j["host_resident_bytes"] = st->tiers->host.resident_bytes;
            j["host_capacity_bytes"] = st->tiers->host.capacity_bytes;
        }
    }
    return j;
}

}  // namespace

int main(int argc, char** argv) {
    const options o = parse_args(argc, argv);
    ::signal(SIGPIPE, SIG_IGN);  // a closed connection is an error code, not a signal
    const prompt_set prompts = load_prompts(o);

    std::unique_ptr<daemon_process> daemon;
    // A failed set-up stops a daemon we started (its destructor) before exiting.
    auto setup_failed = [&](const std::string& message) {
        daemon.reset();
        moed::tools::fail(program, message);
    };
    std::string socket_path = o.socket_path;
    pid_t pid = o.pid;
    if (!o.moed_path.empty()) {
        auto started = daemon_process::start(o.moed_path, o.model_path, o.daemon_flags);
        if (!started) setup_failed("cannot start moed: " + started.error().message);
        daemon = std::move(*started);
        if (auto ready = daemon->wait_ready(); !ready) setup_failed(ready.error().message);
        socket_path = daemon->socket();
        pid = daemon->pid();
    } else if (pid == 0) {
        auto peer = socket_peer_pid(socket_path);
        if (!peer) setup_failed("--socket: " + peer.error().message);
        pid = *peer;
    }
    if (!read_proc(pid).alive) setup_failed(fmt::format("no process {} to sample", pid));

    moed::client_options copt;
    copt.socket_path = socket_path;
    copt.read_timeout = std::chrono::seconds(o.request_timeout_s);
    const moed::client control(copt);
    auto first_status = control.status();
    if (!first_status) setup_failed("GET /v1/status: " + first_status.error().message);

    const auto start = clock_type::now();
    const auto deadline = start + std::chrono::seconds(o.duration_s);
    auto since_start = [&] { return std::chrono::duration<double>(clock_type::now() - start).count(); };
    tally t(start);
    stop_signal stop;
    for (auto [name, examples, source] : {std::tuple{stable_profile, &prompts.stable_examples, &prompts.stable_source},
                                          std::tuple{churn_profile, &prompts.churn_examples, &prompts.churn_source}}) {
        if (!create_profile(control, t, name, *examples, *source, /*replace=*/true, stop)) {
            setup_failed(fmt::format("cannot create task profile '{}': {}", name,
                                                   t.examples().empty() ? "" : t.examples().back()["message"].dump()));
        }
    }

    std::atomic<std::uint64_t> churn_generation{0};
    std::vector<std::thread> threads;
    const workload w{&prompts.texts, o.max_tokens};
    const auto timeout = std::chrono::milliseconds(o.request_timeout_s * 1000);
    for (int c = 0; c < o.clients; ++c) {
        threads.emplace_back([&, c] {
            std::seed_seq seq{o.seed, static_cast<std::uint64_t>(c)};
            std::mt19937_64 rng(seq);
            while (clock_type::now() < deadline && !stop.raised()) {
                const request_plan plan = next_plan(rng, w);
                t.record_plan(plan);
                const std::uint64_t gen_before = churn_generation.load();
                request_result r = run_request(socket_path, plan, timeout);
                const std::uint64_t gen_after = churn_generation.load();
                r.facts.profile_may_be_missing =
                    plan.profile == churn_profile && ((gen_before & 1) != 0 || gen_after != gen_before);
                const outcome kind = classify(r.facts);
                t.record(plan.chat ? "chat" : "completions", kind, r.tokens, r.message);
                if (kind == outcome::connection) stop.wait_until(clock_type::now() + connection_error_pause);
                if (kind == outcome::back_pressure) stop.wait_until(clock_type::now() + back_pressure_pause);
            }
        });
    }
    std::seed_seq churn_seq{o.seed, std::uint64_t{0xc4u}};
    std::thread churner(churn_profiles, std::cref(control), std::ref(t), std::cref(prompts), o.churn_interval_s,
                        std::ref(churn_generation), std::mt19937_64(churn_seq), std::ref(stop));

    json samples = json::array();
    std::vector<point> rss_points;
    auto take_sample = [&] {
        const double t_s = since_start();
        const proc_sample p = read_proc(pid);
        auto st = control.status();
        if (st) t.record("status", outcome::ok, 0, {});
        else t.record("status", classify(from_client_error(st.error())), 0, "GET /v1/status: " + st.error().message);
        samples.push_back(sample_json(t_s, p, st, t));
        if (p.alive && p.rss_bytes >= 0) rss_points.push_back({t_s, static_cast<double>(p.rss_bytes)});
        return p.alive;
    };
    bool daemon_died = false;
    for (std::int64_t k = 1;; ++k) {
        if (!take_sample() || (daemon && daemon->exited())) {
            daemon_died = true;
            t.record("daemon", outcome::connection, 0,
                     fmt::format("moed (pid {}) is gone{}", pid,
                                 daemon && daemon->exited() ? " (" + exit_text(*daemon->exited()) + ")" : ""));
            break;
        }
        const auto next = start + std::chrono::seconds(k * o.sample_interval_s);
        if (next >= deadline) {
            stop.wait_until(deadline);
            break;
        }
        stop.wait_until(next);
    }
    stop.raise();
    for (auto& th : threads) th.join();
    churner.join();
    const double run_s = since_start();
    if (!daemon_died && !take_sample()) {
        daemon_died = true;
        t.record("daemon", outcome::connection, 0, fmt::format("moed (pid {}) is gone at the end", pid));
    }
    if (!daemon_died) {
        // Leave a daemon we attached to as we found it. The stable profile must still be
        // there; the churned one may be absent when its last recreation was cut short.
        for (const char* name : {stable_profile, churn_profile}) {
            auto d = control.delete_profile(name);
            const bool may_be_absent = std::string_view(name) == churn_profile;
            if (d || (may_be_absent && d.error().http_status == 404)) t.record("profiles", outcome::ok, 0, {});
            else
                t.record("profiles", classify(from_client_error(d.error())), 0,
                         fmt::format("delete profile '{}': {}", name, d.error().message));
        }
    }

    json daemon_exit = nullptr;
    bool daemon_exit_ok = true;
    if (daemon) {
        const std::optional<int> status = daemon_died ? daemon->exited() : daemon->stop();
        daemon_exit_ok = status && WIFEXITED(*status) && WEXITSTATUS(*status) == 0 && !daemon_died;
        daemon_exit = {{"status", status ? exit_text(*status) : "did not exit within the stop timeout (killed)"},
                       {"ok", daemon_exit_ok}};
        if (!daemon_exit_ok) daemon_exit["log_tail"] = daemon->log_tail();
    }

    // Summary over the samples.
    const rss_growth growth = last_half_growth(rss_points, run_s);
    std::int64_t rss_peak = 0;
    std::int64_t hwm_peak = 0;
    std::int64_t threads_min = -1, threads_max = -1, fds_min = -1, fds_max = -1;
    for (const json& s : samples) {
        rss_peak = std::max(rss_peak, s["rss_bytes"].get<std::int64_t>());
        hwm_peak = std::max(hwm_peak, s["hwm_bytes"].get<std::int64_t>());
        if (s["t_s"].get<double>() < run_s / 2.0) continue;
        const auto th = s["threads"].get<std::int64_t>();
        const auto fd = s["fds"].get<std::int64_t>();
        if (th >= 0) {
            threads_min = threads_min < 0 ? th : std::min(threads_min, th);
            threads_max = std::max(threads_max, th);
        }
        if (fd >= 0) {
            fds_min = fds_min < 0 ? fd : std::min(fds_min, fd);
            fds_max = std::max(fds_max, fd);
        }
    }
    const std::uint64_t unexpected = t.unexpected();
    const verdict v = judge(growth, o.max_growth_mib_per_hour, unexpected, daemon_exit_ok);

    json budget = nullptr;
    if (first_status->tiers) {
        budget = {{"host_capacity_bytes", first_status->tiers->host.capacity_bytes},
                  {"host_capacity_experts", first_status->tiers->host.capacity_experts},
                  {"expert_bytes_total", first_status->tiers->expert_bytes_total},
                  {"prefetch_inflight_bytes_limit", first_status->tiers->prefetch.inflight_bytes_limit}};
    }
    json config{{"clients", o.clients},
                {"duration_s", o.duration_s},
                {"seed", o.seed},
                {"sample_interval_s", o.sample_interval_s},
                {"max_tokens", o.max_tokens},
                {"prompt_bytes", o.prompt_bytes},
                {"churn_interval_s", o.churn_interval_s},
                {"prompts", o.prompts_path.empty() ? std::string("built-in") : o.prompts_path},
                {"prompt_count", prompts.texts.size()},
                {"socket", socket_path},
                {"pid", pid},
                {"started_daemon", daemon != nullptr},
                {"daemon_flags", daemon ? json(daemon->flags()) : json(nullptr)},
                {"model", first_status->model.id},
                {"model_file_bytes", first_status->model.file_bytes},
                {"max_sequences", first_status->max_sequences},
                {"queue_capacity", first_status->queue_capacity},
                {"budget", budget},
                {"max_growth_mib_per_hour", o.max_growth_mib_per_hour}};
    json totals = t.totals();
    totals["elapsed_s"] = run_s;
    const auto mib_per_hour = [](double bytes_per_minute) { return bytes_per_minute * 60.0 / (1024.0 * 1024.0); };
    json summary{{"rss_peak_bytes", rss_peak},
                 {"hwm_peak_bytes", hwm_peak},
                 {"rss_last_half_from_s", growth.from_s},
                 {"rss_last_half_samples", growth.samples},
                 {"rss_last_half_start_bytes", growth.start_bytes},
                 {"rss_end_bytes", growth.end_bytes},
                 {"rss_growth_last_half_bytes", growth.growth_bytes},
                 {"rss_growth_last_half_bytes_per_minute",
                  growth.slope_bytes_per_minute ? json(*growth.slope_bytes_per_minute) : json(nullptr)},
                 {"rss_growth_last_half_mib_per_hour",
                  growth.slope_bytes_per_minute ? json(mib_per_hour(*growth.slope_bytes_per_minute)) : json(nullptr)},
                 {"threads_last_half", {{"min", threads_min}, {"max", threads_max}}},
                 {"fds_last_half", {{"min", fds_min}, {"max", fds_max}}},
                 {"unexpected_errors", unexpected},
                 {"unexpected_examples", t.examples()}};
    if (first_status->tiers) {
        summary["hwm_peak_over_host_capacity_bytes"] =
            hwm_peak - static_cast<std::int64_t>(first_status->tiers->host.capacity_bytes);
    }
    json out{{"bench", "soak"},
             {"config", config},
             {"totals", totals},
             {"samples", samples},
             {"summary", summary},
             {"daemon_exit", daemon_exit},
             {"verdict",
              {{"rss_growth_last_half_ok", v.rss_growth_last_half_ok},
               {"unexpected_errors_zero", v.no_unexpected_errors},
               {"daemon_exit_ok", v.daemon_exit_ok},
               {"pass", v.pass},
               {"reason", v.reason}}}};
    std::cout << out.dump() << "\n";
    return v.pass ? 0 : 1;
}
