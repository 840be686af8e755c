// moectl: the command-line client for moed. It shows what sits in each memory tier
// (status), streams a generation (generate), manages task profiles (profile), lists the
// models and checks health, through libmoeclient's public API only. Exit codes are part of
// its interface (see moectl_usage.h). Text from moed is printed through
// terminal_safe (terminal_text.h), except the generated text, which is the product.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "moed/client.hpp"
#include "moectl_usage.h"
#include "terminal_text.h"

namespace {

using moed::moectl::asks_for_help;
using moed::moectl::command_usage;
using moed::moectl::first_invalid_utf8;
using moed::moectl::terminal_safe;
using moed::moectl::usage_text;

// Exit codes scripts can rely on.
enum exit_code : int {
    exit_ok = 0,
    exit_daemon_error = 1,  // moed answered with an error (or a malformed answer)
    exit_usage = 2,         // bad command line
    exit_unreachable = 3,   // moed is not running or cannot be reached
};

struct command_line {
    std::string socket;
    bool json = false;
    std::optional<double> timeout_s;
    std::string command;
    std::vector<std::string> args;  // the command's own arguments, in order
};

// Every message goes through terminal_safe: it may quote moed's answers or the user's
// arguments.
int fail_usage(const std::string& message) {
    std::fprintf(stderr, "moectl: %s\n(run 'moectl --help' for usage)\n", terminal_safe(message).c_str());
    return exit_usage;
}

// A text argument or input that cannot go into a JSON request: a usage error naming it and
// the offset of the first bad byte (nullopt when the text is valid UTF-8).
std::optional<int> refuse_invalid_utf8(std::string_view what, std::string_view text) {
    const auto at = first_invalid_utf8(text);
    if (!at) return std::nullopt;
    return fail_usage(fmt::format("{} is not valid UTF-8: byte 0x{:02x} at offset {} does not start a valid sequence",
                                  what, static_cast<unsigned char>(text[*at]), *at));
}

// Splits "--name=value" into name and value.
bool split_option(std::string_view arg, std::string_view& name, std::optional<std::string>& inline_value) {
    if (arg.size() < 3 || arg.substr(0, 2) != "--") return false;
    const auto eq = arg.find('=');
    name = arg.substr(0, eq);
    if (eq != std::string_view::npos) inline_value = std::string(arg.substr(eq + 1));
    return true;
}

std::optional<command_line> parse_command_line(int argc, char** argv, std::string& error) {
    command_line cl;
    bool options_done = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        std::string_view name;
        std::optional<std::string> value;
        if (!options_done && arg == "--") {
            options_done = true;
            cl.args.emplace_back(arg);  // the command sees it too (ends its options)
            continue;
        }
        if (!options_done && split_option(arg, name, value)) {
            auto take_value = [&]() -> std::optional<std::string> {
                if (value) return value;
                if (i + 1 >= argc) {
                    error = fmt::format("{} needs a value", name);
                    return std::nullopt;
                }
                return std::string(argv[++i]);
            };
            if (name == "--socket") {
                auto v = take_value();
                if (!v) return std::nullopt;
                cl.socket = *v;
                continue;
            }
            if (name == "--timeout") {
                auto v = take_value();
                if (!v) return std::nullopt;
                char* end = nullptr;
                const double t = std::strtod(v->c_str(), &end);
                if (v->empty() || end != v->c_str() + v->size() || !(t > 0.0) || t > 86400.0 * 365) {
                    error = fmt::format("--timeout needs a positive number of seconds, not '{}'", *v);
                    return std::nullopt;
                }
                cl.timeout_s = t;
                continue;
            }
            if (name == "--json" && !value) {
                cl.json = true;
                continue;
            }
        }
        if (cl.command.empty() && !options_done && (arg == "-h" || arg == "--help" || arg == "--version")) {
            cl.command = std::string(arg);
            continue;
        }
        if (cl.command.empty()) {
            if (arg.size() > 1 && arg.front() == '-') {
                error = fmt::format("unknown option '{}'", arg);
                return std::nullopt;
            }
            cl.command = std::string(arg);
            continue;
        }
        cl.args.emplace_back(arg);
    }
    return cl;
}

// moectl's exit code for a client error.
int exit_for(const moed::client_error& e) {
    switch (e.code) {
        case moed::client_errc::not_running:
        case moed::client_errc::unreachable:
        case moed::client_errc::timeout:
        case moed::client_errc::connection: return exit_unreachable;
        case moed::client_errc::http:
        case moed::client_errc::protocol:
        case moed::client_errc::invalid_argument: return exit_daemon_error;
    }
    return exit_daemon_error;
}

int report(const moed::client_error& e, bool json) {
    if (json && !e.body.empty()) {
        std::fwrite(e.body.data(), 1, e.body.size(), stdout);
        if (e.body.back() != '\n') std::fputc('\n', stdout);
        std::fflush(stdout);
    }
    std::fprintf(stderr, "moectl: %s\n", terminal_safe(e.message).c_str());
    if (e.code == moed::client_errc::not_running) {
        std::fprintf(stderr, "moectl: start it (systemctl start moed) or point moectl at its socket "
                             "(--socket PATH or MOED_SOCKET)\n");
    }
    return exit_for(e);
}

void print_raw(const std::string& body) {
    std::fwrite(body.data(), 1, body.size(), stdout);
    if (body.empty() || body.back() != '\n') std::fputc('\n', stdout);
}

// --- status formatting ---

std::string human_bytes(std::uint64_t bytes) {
    static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = static_cast<double>(bytes);
    std::size_t u = 0;
    while (v >= 1024.0 && u + 1 < std::size(units)) {
        v /= 1024.0;
        ++u;
    }
    return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

std::string human_latency(double us, std::uint64_t count) {
    if (count == 0) return "-";
    if (us < 1000.0) return fmt::format("{:.0f} us", us);
    if (us < 1'000'000.0) return fmt::format("{:.2f} ms", us / 1000.0);
    return fmt::format("{:.2f} s", us / 1'000'000.0);
}

std::string human_duration(double seconds) {
    auto s = static_cast<std::uint64_t>(seconds);
    const std::uint64_t d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60;
    s %= 60;
    if (d > 0) return fmt::format("{}d {}h{:02}m", d, h, m);
    if (h > 0) return fmt::format("{}h{:02}m{:02}s", h, m, s);
    if (m > 0) return fmt::format("{}m{:02}s", m, s);
    return fmt::format("{:.1f}s", seconds);
}

std::string hit_rate(const moed::daemon_tier& t) {
    const std::uint64_t accesses = t.hits + t.misses;
    if (accesses == 0) return "-";
    return fmt::format("{:.1f}%", 100.0 * static_cast<double>(t.hits) / static_cast<double>(accesses));
}

// The tier below the host slab is the model file itself (always complete; experts that are
// not in RAM are read from it), whatever the wire calls it.
std::string tier_label(const std::string& name) {
    if (name == "nvme") return "model file";
    return name.empty() ? std::string("?") : terminal_safe(name);
}

void print_tier(const moed::daemon_tier& t) {
    const std::string capacity = t.capacity_experts != 0
                                     ? fmt::format("{} ({})", human_bytes(t.capacity_bytes), t.capacity_experts)
                                     : human_bytes(t.capacity_bytes);
    const std::string experts = t.capacity_experts != 0 ? fmt::format("{}/{}", t.resident_experts, t.capacity_experts)
                                                        : fmt::format("{}", t.resident_experts);
    const std::string gbps = t.bytes_read == 0 ? "-" : fmt::format("{:.2f}", t.read_bytes_per_s / 1e9);
    fmt::print("{:<10} {:>20} {:>11} {:>13} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6}\n", tier_label(t.name), capacity, human_bytes(t.resident_bytes), experts, hit_rate(t), gbps,
               human_latency(t.load_latency.p50_us, t.load_latency.count),
               human_latency(t.load_latency.p99_us, t.load_latency.count), t.evictions, t.read_errors);
}

std::string percent(double fraction, bool known) { return known ? fmt::format("{:.1f}%", 100.0 * fraction) : "-"; }

void print_prefetch(const moed::daemon_tiers& t) {
    const moed::daemon_prefetch& p = t.prefetch;
    const std::uint64_t needed = p.hits + p.late + p.demand_misses;
    fmt::print("\nprefetch  recall {}  hit rate {} ({} ready, {} late, {} demand misses)\n",
               percent(p.recall, p.routed > 0), percent(p.hit_rate, needed > 0), p.hits, p.late, p.demand_misses);
    fmt::print("          {} issued, {} cancelled, {} wasted ({}); in flight {} (max {}, limit {})\n", p.issued,
               p.cancelled, p.wasted, human_bytes(p.wasted_bytes), human_bytes(p.inflight_bytes),
               human_bytes(p.inflight_bytes_max),
               p.inflight_bytes_limit == 0 ? std::string("none") : human_bytes(p.inflight_bytes_limit));
    fmt::print("          compute waited {:.1f} ms for I/O{}\n", static_cast<double>(p.io_wait_ns) / 1e6,
               p.tokens > 0 ? fmt::format(" ({:.1f} us per token)", p.io_wait_ns_per_token / 1e3) : std::string());
    const moed::daemon_ring& r = t.ring;
    if (!r.enabled) {
        fmt::print("ring      off (one pool, least recently used first)\n");
        return;
    }
    fmt::print("ring      {} sections (sized for {} slots per layer), hot set {}/{} resident in {} slots\n",
               r.sections.size(), r.slots_per_layer, r.hot_resident, r.hot_set, r.hot_slots);
    for (std::size_t i = 0; i < r.sections.size(); ++i) {
        const moed::daemon_ring_section& sec = r.sections[i];
        std::string layers;
        for (std::uint32_t l : sec.layers) layers += fmt::format("{}{}", layers.empty() ? "" : ",", l);
        fmt::print("  S{:<3} {:>4} slots  {:>4} resident  layers {:<16} now {}\n", i, sec.slots, sec.resident, layers,
                   sec.layer < 0 ? std::string("-") : fmt::format("L{}", sec.layer));
    }
}

// "c (matched 0.87, pruned 8)", "c (named)", "none (0.41)", "-" (not settled yet).
std::string profile_cell(const moed::daemon_request& r) {
    const std::string name = terminal_safe(r.profile);
    if (r.profile_source.empty()) return r.profile.empty() ? "-" : fmt::format("{} (named)", name);
    std::string cell;
    if (r.profile_source == "request") cell = fmt::format("{} (named", name);
    else if (r.profile_source == "matched") cell = fmt::format("{} (matched {:.2f}", name, r.profile_similarity);
    else cell = fmt::format("none ({:.2f}", r.profile_similarity);
    if (r.pruned_experts_per_layer != 0) cell += fmt::format(", pruned {}", r.pruned_experts_per_layer);
    return cell + ")";
}

// "AVX-512" for moed's "avx512", "AVX2", "scalar".
std::string isa_label(const std::string& isa) {
    if (isa == "avx512") return "AVX-512";
    if (isa == "avx2") return "AVX2";
    return isa.empty() ? std::string("?") : terminal_safe(isa);
}

// Whether moed reported its memory (an older moed sends none: the memory parts are left out).
bool memory_known(const moed::daemon_memory& m) { return m.rss_bytes != 0 || m.held_bytes != 0; }

// The first line, in the manner of `ollama ps`: the model, its whole size and where it sits,
// and what computes. The size is what moed holds in RAM plus the expert bytes that stay in
// the model file (the experts beyond what the host slab holds are read from it on demand).
void print_summary(const moed::daemon_status& s) {
    const moed::daemon_memory& m = s.memory;
    std::string where = "memory not reported";
    if (memory_known(m)) {
        const std::uint64_t in_file =
            s.tiers ? s.model.expert_bytes - std::min(s.model.expert_bytes, m.host_slab_bytes) : 0;
        where = fmt::format("{}: {} RAM", human_bytes(m.held_bytes + in_file), human_bytes(m.held_bytes));
        if (m.host_slab_bytes != 0) {
            where += fmt::format(" (host slab {} {})", human_bytes(m.host_slab_bytes),
                                 m.host_slab_mlocked ? "mlocked" : "not locked");
        }
        if (in_file != 0) where += fmt::format(" + {} of experts in the model file", human_bytes(in_file));
    }
    fmt::print("{}  {}  CPU, {}, {} threads\n", s.model.id.empty() ? "?" : terminal_safe(s.model.id), where,
               isa_label(s.isa), s.threads);
}

// Memory by kind, one row each: what moed allocated, then the process as the kernel counts it.
void print_memory(const moed::daemon_status& s, const moed::daemon_status_extra& extra) {
    const moed::daemon_memory& m = s.memory;
    if (!memory_known(m)) return;
    fmt::print("\nmemory\n");
    fmt::print("  {:<14} {:>11}\n", "dense weights", human_bytes(m.dense_bytes));
    if (m.experts_bytes != 0) fmt::print("  {:<14} {:>11}  every expert resident\n", "experts", human_bytes(m.experts_bytes));
    std::string kv = fmt::format("{} used", human_bytes(m.kv_cache_used_bytes));
    if (extra.kv_cache_cells != 0)
        kv += fmt::format(" ({} of {} positions)", extra.kv_cache_cells_used, extra.kv_cache_cells);
    fmt::print("  {:<14} {:>11}  {}\n", "KV cache", human_bytes(m.kv_cache_bytes), kv);
    if (!m.host_budget.empty()) {
        fmt::print("  {:<14} {:>11}  {} slots, {}; budget {} = {}{}\n", "host slab", human_bytes(m.host_slab_bytes),
                   m.host_slab_slots, m.host_slab_mlocked ? "mlocked" : "not locked", terminal_safe(m.host_budget),
                   human_bytes(m.host_budget_bytes), m.host_budget_capped ? " (capped: holds every expert)" : "");
        for (const moed::daemon_slot_class& c : extra.slot_classes) {
            std::string layers;
            for (std::size_t i = 0; i < c.layers.size(); ++i) {
                // Runs of consecutive layers as "a-b".
                std::size_t j = i;
                while (j + 1 < c.layers.size() && c.layers[j + 1] == c.layers[j] + 1) ++j;
                layers += fmt::format("{}{}", layers.empty() ? "" : ",",
                                      j == i ? fmt::format("{}", c.layers[i])
                                             : fmt::format("{}-{}", c.layers[i], c.layers[j]));
                i = j;
            }
            fmt::print("    {:>4} slots of {:>11}  {:>4} resident  layers {}\n", c.slots, human_bytes(c.slot_bytes),
                       c.resident, layers.empty() ? std::string("-") : layers);
        }
    }
    fmt::print("  {:<14} {:>11}\n", "scratch", human_bytes(m.scratch_bytes));
    fmt::print("  {:<14} {:>11}  the kinds above together\n", "moed holds", human_bytes(m.held_bytes));
    fmt::print("  {:<14} {:>11}  peak {}, locked {}; {} physical\n", "process RSS", human_bytes(m.rss_bytes),
               human_bytes(m.rss_peak_bytes), human_bytes(m.locked_bytes),
               m.physical_bytes == 0 ? std::string("?") : human_bytes(m.physical_bytes));
}

void print_status(const moed::daemon_status& s, const moed::daemon_status_extra& extra) {
    print_summary(s);
    fmt::print("\nmoed {}  up {}  isa {}  threads {}\n", s.version.empty() ? "?" : terminal_safe(s.version),
               human_duration(s.uptime_s), s.isa.empty() ? "?" : terminal_safe(s.isa), s.threads);
    const moed::daemon_model& m = s.model;
    fmt::print("model  {} ({}): {} layers, {} experts ({} used per token), context {}, vocabulary {}\n",
               m.id.empty() ? "?" : terminal_safe(m.id), m.architecture.empty() ? "?" : terminal_safe(m.architecture),
               m.n_layer, m.n_expert,
               m.n_expert_used, m.n_ctx, m.n_vocab);
    fmt::print("       file {} (dense {}, experts {}){}{}\n", human_bytes(m.file_bytes), human_bytes(m.dense_bytes),
               human_bytes(m.expert_bytes), m.path.empty() ? "" : "  ", terminal_safe(m.path));
    if (m.state == "broken") {
        fmt::print("       BROKEN: {}\n", terminal_safe(m.error));
    }

    print_memory(s, extra);

    if (!s.tiers) {
        fmt::print("\ntiers  every expert is resident (no expert cache)\n");
    } else {
        const moed::daemon_tiers& t = *s.tiers;
        fmt::print("\nI/O mode {}  queue depth {}  routed experts {}\n", t.io_mode.empty() ? "?" : terminal_safe(t.io_mode),
                   t.queue_depth, human_bytes(t.expert_bytes_total));
        fmt::print("{:<10} {:>20} {:>11} {:>13} {:>8} {:>9} {:>9} {:>9} {:>9} {:>6}\n", "tier", "capacity", "used",
                   "experts", "hit rate", "read GB/s", "load p50", "load p99", "evictions", "errors");
        print_tier(t.host);
        print_tier(t.nvme);
        if (!s.model.path.empty()) fmt::print("model file = {}\n", terminal_safe(s.model.path));
        print_prefetch(t);
        if (t.layer_residency.empty()) {
            fmt::print("\nresidency per layer: not reported by this moed\n");
        } else {
            fmt::print("\nresidency per layer ('#' resident, '+' in use, '~' loading, '.' on disk only)\n");
            for (std::size_t layer = 0; layer < t.layer_residency.size(); ++layer) {
                const std::string& row = t.layer_residency[layer];
                const auto resident = std::count_if(row.begin(), row.end(), [](char c) { return c == '#' || c == '+'; });
                fmt::print("  L{:<3} {}  {}/{}\n", layer, terminal_safe(row), resident, row.size());
            }
        }
    }

    fmt::print("\nrequests  {} running (max {}), {} queued (capacity {}), max batch {} tokens\n", s.running_sequences,
               s.max_sequences, s.queue_waiting, s.queue_capacity, s.max_batch_tokens);
    fmt::print("          {} served, {} failed, {} cancelled; tokens {} prompt, {} generated; {} steps; "
               "decode {:.1f} tokens/s\n",
               s.requests_total, s.requests_failed, s.requests_cancelled, s.prompt_tokens_total,
               s.generated_tokens_total, s.steps_total, s.decode_tokens_per_s);
    if (!s.requests.empty()) {
        fmt::print("  {:<24} {:<8} {:>7} {:>10} {:>6}  {:<28} {}\n", "id", "state", "prompt", "generated", "max",
                   "profile", "peer");
        for (const moed::daemon_request& r : s.requests) {
            fmt::print("  {:<24} {:<8} {:>7} {:>10} {:>6}  {:<28} {}\n", terminal_safe(r.id), terminal_safe(r.state),
                       r.prompt_tokens, r.generated_tokens, r.max_tokens, profile_cell(r), terminal_safe(r.peer));
        }
    }
}

// --- commands ---

// What moectl status's terms count, as the tiers and the prefetch planner count them.
constexpr std::string_view status_glossary = R"(What moectl status shows

model file   the GGUF file moed serves; it always holds every expert, and experts
             not in RAM are read from it (the tier moed's JSON calls "nvme")
host slab    RAM for routed experts: fixed-size slots (one size per slot class when
             experts differ in size by layer), filled from the model file; "mlocked"
             when the kernel counts the whole slab as locked, so it is never swapped
hit rate     expert acquires served from the slab without a read
ring         the slab's slots outside the hot set, divided into sections; layer l
             loads into section l mod sections, so a prefetch for the next layers
             never replaces what the layer being computed uses
hot set      experts a task profile ranks as used by nearly every token, kept in
             slots of their own that ring loads never take (only a demand load
             with no other slot left evicts one, and it is loaded again)
recall       of the experts the routers chose, the share the prefetch planner had
             asked for before their layer ran (routed experts predicted / routed)
late         acquires that found the expert they needed prefetched but still
             loading: the prediction was right, the read not done in time
wasted       prefetched experts evicted before anything used them (and their bytes)
demand miss  an acquire that had to start the read itself: nothing predicted it
KV cache     the attention keys and values of every sequence moed may run at once
             (allocated at start); "used" counts the positions running requests fill
scratch      per-batch buffers: activations, attention, logits
process RSS  all of moed's resident memory as the kernel counts it, libraries and
             allocator slack included
)";

int cmd_status(const moed::client& c, const command_line& cl) {
    bool explain = false;
    for (const std::string& a : cl.args) {
        if (a == "--explain") explain = true;
        else return fail_usage(fmt::format("status: unexpected argument '{}' (it takes only --explain)", a));
    }
    if (explain) {
        // A glossary: it needs no daemon, and is text, not JSON.
        if (cl.json) return fail_usage("status --explain prints a glossary; it does not take --json");
        std::fwrite(status_glossary.data(), 1, status_glossary.size(), stdout);
        return exit_ok;
    }
    if (cl.json) {
        auto body = c.get_json("/v1/status");
        if (!body) return report(body.error(), true);
        print_raw(*body);
        return exit_ok;
    }
    moed::daemon_status_extra extra;
    auto s = c.status(extra);
    if (!s) return report(s.error(), false);
    print_status(*s, extra);
    return exit_ok;
}

int cmd_models(const moed::client& c, const command_line& cl) {
    if (!cl.args.empty()) return fail_usage(fmt::format("models takes no arguments (got '{}')", cl.args.front()));
    if (cl.json) {
        auto body = c.get_json("/v1/models");
        if (!body) return report(body.error(), true);
        print_raw(*body);
        return exit_ok;
    }
    auto models = c.models();
    if (!models) return report(models.error(), false);
    if (models->empty()) {
        fmt::print("no models\n");
        return exit_ok;
    }
    for (const moed::model_info& m : *models)
        fmt::print("{}{}{}\n", terminal_safe(m.id), m.owned_by.empty() ? "" : "  ", terminal_safe(m.owned_by));
    return exit_ok;
}

int cmd_health(const moed::client& c, const command_line& cl) {
    if (!cl.args.empty()) return fail_usage(fmt::format("health takes no arguments (got '{}')", cl.args.front()));
    if (cl.json) {
        auto body = c.get_json("/healthz");
        if (!body) return report(body.error(), true);
        print_raw(*body);
        return exit_ok;
    }
    auto h = c.health();
    if (!h) return report(h.error(), false);
    fmt::print("{}\n", terminal_safe(*h));
    return exit_ok;
}

template <typename T>
bool parse_number(const std::string& text, T& out) {
    if (text.empty()) return false;
    char* end = nullptr;
    errno = 0;
    if constexpr (std::is_floating_point_v<T>) {
        out = static_cast<T>(std::strtod(text.c_str(), &end));
    } else if constexpr (std::is_signed_v<T>) {
        const long long v = std::strtoll(text.c_str(), &end, 10);
        if (v < std::numeric_limits<T>::min() || v > std::numeric_limits<T>::max()) return false;
        out = static_cast<T>(v);
    } else {
        if (text.front() == '-') return false;
        const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
        if (v > std::numeric_limits<T>::max()) return false;
        out = static_cast<T>(v);
    }
    return errno == 0 && end == text.c_str() + text.size();
}

int cmd_generate(const moed::client& c, const command_line& cl) {
    moed::completion_request request;
    bool chat = false;
    std::string system;
    std::vector<std::string> words;
    bool options_done = false;
    for (std::size_t i = 0; i < cl.args.size(); ++i) {
        const std::string& arg = cl.args[i];
        std::string_view name;
        std::optional<std::string> inline_value;
        if (options_done || arg == "-" || !split_option(arg, name, inline_value)) {
            if (arg == "--" && !options_done) {
                options_done = true;
                continue;
            }
            words.push_back(arg);
            continue;
        }
        if (name == "--chat" && !inline_value) {
            chat = true;
            continue;
        }
        std::string value;
        if (inline_value) {
            value = *inline_value;
        } else if (i + 1 < cl.args.size()) {
            value = cl.args[++i];
        } else {
            return fail_usage(fmt::format("{} needs a value", name));
        }
        auto bad = [&] { return fail_usage(fmt::format("{}: '{}' is not a valid value", name, value)); };
        if (name == "--max-tokens") {
            std::int32_t n = 0;
            if (!parse_number(value, n) || n <= 0) return bad();
            request.max_tokens = n;
        } else if (name == "--temperature") {
            double t = 0;
            if (!parse_number(value, t) || t < 0) return bad();
            request.temperature = t;
        } else if (name == "--top-p") {
            double p = 0;
            if (!parse_number(value, p) || p < 0 || p > 1) return bad();
            request.top_p = p;
        } else if (name == "--min-p") {
            double p = 0;
            if (!parse_number(value, p) || p < 0 || p > 1) return bad();
            request.min_p = p;
        } else if (name == "--top-k") {
            std::int32_t k = 0;
            if (!parse_number(value, k) || k < 0) return bad();
            request.top_k = k;
        } else if (name == "--seed") {
            std::uint64_t s = 0;
            if (!parse_number(value, s)) return bad();
            request.seed = s;
        } else if (name == "--stop") {
            if (value.empty()) return bad();
            request.stop.push_back(value);
        } else if (name == "--model") {
            request.model = value;
        } else if (name == "--profile") {
            if (value.empty()) return bad();
            request.profile = value;
        } else if (name == "--prune") {
            std::uint32_t k = 0;
            if (!parse_number(value, k) || k == 0) return bad();
            request.prune_experts_per_layer = k;
        } else if (name == "--system") {
            system = value;
            chat = true;
        } else {
            return fail_usage(fmt::format("generate: unknown option '{}'", name));
        }
    }
    if (words.empty()) return fail_usage("generate needs a PROMPT");
    std::string prompt;
    const bool from_stdin = words.size() == 1 && words[0] == "-";
    if (from_stdin) {
        prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    } else {
        for (const std::string& w : words) {
            if (!prompt.empty()) prompt += ' ';
            prompt += w;
        }
    }
    // Text that is not UTF-8 cannot go into the JSON request: say which and where.
    if (auto bad = refuse_invalid_utf8(from_stdin ? "the prompt read from stdin" : "the prompt", prompt)) return *bad;
    if (auto bad = refuse_invalid_utf8("--system", system)) return *bad;
    if (auto bad = refuse_invalid_utf8("--model", request.model)) return *bad;
    if (auto bad = refuse_invalid_utf8("--profile", request.profile)) return *bad;
    for (const std::string& stop : request.stop) {
        if (auto bad = refuse_invalid_utf8("--stop", stop)) return *bad;
    }
    if (chat) {
        if (!system.empty()) request.messages.push_back({"system", system});
        request.messages.push_back({"user", prompt});
    } else {
        request.prompt = prompt;
    }

    if (cl.json) {
        auto r = c.complete(request);
        if (!r) return report(r.error(), true);
        print_raw(r->raw_json);
        return exit_ok;
    }

    bool wrote_any = false;
    bool stdout_gone = false;
    char last = '\n';
    auto r = c.stream(request, [&](std::string_view piece) {
        if (std::fwrite(piece.data(), 1, piece.size(), stdout) != piece.size() || std::fflush(stdout) != 0) {
            stdout_gone = true;
            return false;  // stdout went away (a closed pipe): stop generating
        }
        wrote_any = true;
        last = piece.back();
        return true;
    });
    // End the text with a newline on a terminal; a pipe gets exactly the generated text.
    if (wrote_any && last != '\n' && isatty(STDOUT_FILENO) == 1) std::fputc('\n', stdout);
    std::fflush(stdout);
    if (!r) {
        if (wrote_any && isatty(STDOUT_FILENO) != 1) std::fputc('\n', stderr);
        return report(r.error(), false);
    }
    // A closed stdout is the reader's choice (moectl generate ... | head): not an error.
    if (stdout_gone) return exit_ok;
    // moed ended the stream properly but without finishing the text: it cancelled the
    // request (its shutdown drain ran out) or gave a reason moectl does not know. A script
    // must not take the partial text for the answer.
    if (r->finish_reason != "stop" && r->finish_reason != "length" && !r->finish_reason.empty()) {
        if (wrote_any && isatty(STDOUT_FILENO) != 1) std::fputc('\n', stderr);
        const std::string why = r->finish_reason == "cancelled"
                                    ? std::string("moed cancelled the generation before it finished (it may be shutting "
                                                  "down)")
                                    : fmt::format("moed ended the generation with finish reason '{}'",
                                                  terminal_safe(r->finish_reason));
        std::fprintf(stderr, "moectl: %s; the text written is incomplete\n", why.c_str());
        return exit_daemon_error;
    }
    return exit_ok;
}

// --- task profiles ---

std::string utc_time(std::int64_t unix_s) {
    if (unix_s <= 0) return "-";
    const std::time_t t = static_cast<std::time_t>(unix_s);
    std::tm tm{};
    if (::gmtime_r(&t, &tm) == nullptr) return "-";
    char buf[32];
    return std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm) > 0 ? std::string(buf) + " UTC" : "-";
}

// Reads a JSON-lines prompt file: each non-empty line an object with a "text" or "prompt"
// string. Errors name the file and line.
std::optional<std::vector<std::string>> read_prompts(const std::string& path, std::string& error) {
    std::ifstream in(path);
    if (!in) {
        error = fmt::format("cannot read {}: {}", path, std::strerror(errno));
        return std::nullopt;
    }
    std::vector<std::string> prompts;
    std::string line;
    std::size_t number = 0;
    while (std::getline(in, line)) {
        ++number;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        if (const auto at = first_invalid_utf8(line)) {
            error = fmt::format("{}:{}: not valid UTF-8: byte 0x{:02x} at offset {} does not start a valid sequence",
                                path, number, static_cast<unsigned char>(line[*at]), *at);
            return std::nullopt;
        }
        const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        std::optional<std::string> text;
        for (const char* key : {"text", "prompt"}) {
            if (text || !j.is_object()) break;
            if (auto it = j.find(key); it != j.end() && it->is_string()) text = it->get<std::string>();
        }
        if (!text) {
            error = fmt::format("{}:{}: expected a JSON object with a \"text\" or \"prompt\" string", path, number);
            return std::nullopt;
        }
        if (text->empty()) {
            error = fmt::format("{}:{}: the prompt is empty", path, number);
            return std::nullopt;
        }
        prompts.push_back(std::move(*text));
    }
    if (prompts.empty()) {
        error = fmt::format("{}: no prompts (one JSON object per line with a \"text\" field)", path);
        return std::nullopt;
    }
    return prompts;
}

int cmd_profile(const moed::client& c, const command_line& cl) {
    if (cl.args.empty()) return fail_usage("profile needs a subcommand: list, show NAME, create NAME --prompts FILE, delete NAME");
    const std::string& sub = cl.args[0];
    const std::vector<std::string> rest(cl.args.begin() + 1, cl.args.end());
    if (sub == "list") {
        if (!rest.empty()) return fail_usage(fmt::format("profile list takes no arguments (got '{}')", rest.front()));
        if (cl.json) {
            auto body = c.get_json("/v1/profiles");
            if (!body) return report(body.error(), true);
            print_raw(*body);
            return exit_ok;
        }
        auto list = c.list_profiles();
        if (!list) return report(list.error(), false);
        if (list->profiles.empty()) {
            fmt::print("no profiles\n");
        } else {
            fmt::print("{:<24} {:>7} {:>8}  {:<23}  {:<12} {}\n", "name", "prompts", "tokens", "created", "model",
                       "source");
            for (const moed::profile_summary& p : list->profiles) {
                fmt::print("{:<24} {:>7} {:>8}  {:<23}  {:<12} {}\n", terminal_safe(p.name), p.prompts, p.tokens,
                           utc_time(p.created), p.model.empty() ? "?" : terminal_safe(p.model), terminal_safe(p.source));
            }
        }
        if (!list->problems.empty()) {
            fmt::print("\nfiles moed could not use:\n");
            for (const std::string& m : list->problems) fmt::print("  {}\n", terminal_safe(m));
        }
        return exit_ok;
    }
    if (sub == "show" || sub == "delete") {
        if (rest.size() != 1) return fail_usage(fmt::format("profile {} needs exactly one NAME", sub));
        const std::string& name = rest[0];
        const bool name_ok = !name.empty() && name.size() <= 64 && name.front() != '.' &&
                             std::all_of(name.begin(), name.end(), [](char ch) {
                                 return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
                             });
        if (!name_ok)
            return fail_usage(fmt::format("'{}' is not a profile name (1 to 64 letters, digits, '.', '_' or '-', not "
                                          "starting with '.')",
                                          name));
        if (sub == "delete") {
            if (cl.json) {
                auto body = c.request_json("DELETE", "/v1/profiles/" + name);
                if (!body) return report(body.error(), true);
                print_raw(*body);
                return exit_ok;
            }
            auto r = c.delete_profile(name);
            if (!r) return r.error().code == moed::client_errc::invalid_argument ? fail_usage(r.error().message)
                                                                                  : report(r.error(), false);
            fmt::print("deleted profile '{}'\n", terminal_safe(name));
            return exit_ok;
        }
        auto d = c.show_profile(name);
        if (!d) {
            if (d.error().code == moed::client_errc::invalid_argument) return fail_usage(d.error().message);
            return report(d.error(), cl.json);
        }
        if (cl.json) {
            print_raw(d->raw_json);
            return exit_ok;
        }
        const moed::profile_summary& p = d->summary;
        fmt::print("profile {}  model {} ({})\n", terminal_safe(p.name), p.model.empty() ? "?" : terminal_safe(p.model),
                   terminal_safe(p.model_identity));
        fmt::print("        {} prompts, {} tokens, created {}\n", p.prompts, p.tokens, utc_time(p.created));
        if (!p.source.empty()) fmt::print("        source: {}\n", terminal_safe(p.source));
        fmt::print("\ntop experts per layer by score (TCESS; selection frequency in brackets)\n");
        for (std::size_t l = 0; l < d->layers.size(); ++l) {
            std::string row;
            for (const moed::profile_expert& e : d->layers[l])
                row += fmt::format("  {:>3} {:.3f} ({:.2f})", e.expert, e.score, e.selection);
            fmt::print("  L{:<3}{}\n", l, row);
        }
        return exit_ok;
    }
    if (sub == "create") {
        moed::profile_create_request req;
        std::string prompts_path;
        for (std::size_t i = 0; i < rest.size(); ++i) {
            std::string_view name;
            std::optional<std::string> inline_value;
            if (!split_option(rest[i], name, inline_value)) {
                if (!req.name.empty()) return fail_usage(fmt::format("profile create: unexpected argument '{}'", rest[i]));
                req.name = rest[i];
                continue;
            }
            if (name == "--replace" && !inline_value) {
                req.replace = true;
                continue;
            }
            std::string value;
            if (inline_value) value = *inline_value;
            else if (i + 1 < rest.size()) value = rest[++i];
            else return fail_usage(fmt::format("{} needs a value", name));
            if (name == "--prompts") prompts_path = value;
            else if (name == "--source") req.source = value;
            else return fail_usage(fmt::format("profile create: unknown option '{}'", name));
        }
        if (req.name.empty()) return fail_usage("profile create needs a NAME");
        if (auto bad = refuse_invalid_utf8("--source", req.source)) return *bad;
        if (prompts_path.empty()) return fail_usage("profile create needs --prompts FILE.jsonl");
        std::string error;
        auto prompts = read_prompts(prompts_path, error);
        if (!prompts) return fail_usage(error);
        req.prompts = std::move(*prompts);
        if (req.source.empty()) {
            req.source = fmt::format("{} prompts from {}", req.prompts.size(),
                                     prompts_path.substr(prompts_path.find_last_of('/') + 1));
        }
        if (cl.json) {
            nlohmann::json body{{"name", req.name}, {"prompts", req.prompts}, {"source", req.source}};
            if (req.replace) body["replace"] = true;
            auto raw = c.request_json("POST", "/v1/profiles",
                                      body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
            if (!raw) return report(raw.error(), true);
            print_raw(*raw);
            return exit_ok;
        }
        auto r = c.create_profile(req);
        if (!r) {
            if (r.error().code == moed::client_errc::invalid_argument) return fail_usage(r.error().message);
            return report(r.error(), false);
        }
        fmt::print("stored profile '{}': {} prompts, {} tokens, model {}\n", terminal_safe(r->name), r->prompts,
                   r->tokens, terminal_safe(r->model_identity));
        return exit_ok;
    }
    return fail_usage(fmt::format("unknown profile subcommand '{}' (list, show, create, delete)", sub));
}

}  // namespace

int main(int argc, char** argv) {
    // A closed stdout (moectl generate ... | head) must end the stream, not kill moectl.
    std::signal(SIGPIPE, SIG_IGN);
    try {
        std::string error;
        const auto cl = parse_command_line(argc, argv, error);
        if (!cl) return fail_usage(error);
        if (cl->command.empty()) {
            std::fputs(usage_text().c_str(), stderr);
            return exit_usage;
        }
        if (cl->command == "-h" || cl->command == "--help" || (cl->command == "help" && cl->args.empty())) {
            std::fputs(usage_text().c_str(), stdout);
            return exit_ok;
        }
        // "help COMMAND [SUB]" and "COMMAND [SUB] --help": that command's usage, before
        // anything else is checked and without contacting moed.
        if (cl->command == "help" || asks_for_help(cl->args)) {
            std::vector<std::string> words;
            if (cl->command != "help") words.push_back(cl->command);
            for (const std::string& a : cl->args) {
                if (a == "-h" || a == "--help" || a == "--") break;
                words.push_back(a);
            }
            // The longest known command the words start with: "profile show -h" is
            // "profile show", "generate --max-tokens 4 -h" is "generate".
            std::string help;
            for (std::size_t n = std::min<std::size_t>(words.size(), 2); n > 0 && help.empty(); --n) {
                std::string command = words[0];
                if (n == 2) command += " " + words[1];
                help = command_usage(command);
            }
            if (help.empty()) {
                return fail_usage(words.empty() ? std::string("help needs a COMMAND")
                                                : fmt::format("unknown command '{}'", words[0]));
            }
            std::fputs(help.c_str(), stdout);
            return exit_ok;
        }
        if (cl->command == "--version") {
            std::printf("moectl %s (libmoeclient %s)\n", MOED_CLIENT_VERSION, moed::client_version());
            return exit_ok;
        }

        moed::client_options options;
        options.socket_path = cl->socket;  // empty: $MOED_SOCKET or the default
        if (cl->timeout_s) {
            options.read_timeout =
                std::chrono::milliseconds(std::max<std::int64_t>(1, static_cast<std::int64_t>(*cl->timeout_s * 1000.0)));
        }
        const moed::client c(options);

        if (cl->command == "status") return cmd_status(c, *cl);
        if (cl->command == "generate") return cmd_generate(c, *cl);
        if (cl->command == "models") return cmd_models(c, *cl);
        if (cl->command == "profile") return cmd_profile(c, *cl);
        if (cl->command == "health") return cmd_health(c, *cl);
        return fail_usage(fmt::format("unknown command '{}'", cl->command));
    } catch (const std::exception& e) {
        // Only std::bad_alloc and the like get here: every parse of moed's answers and of
        // the user's input reports its errors as values.
        std::fprintf(stderr, "moectl: %s\n", terminal_safe(e.what()).c_str());
        return exit_daemon_error;
    }
}
