#include "daemon/metrics.h"

#include <utility>

#include <fmt/format.h>

namespace moed::daemon {

namespace {

// Label values are quoted; backslash, quote and newline must be escaped.
std::string label(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char ch : value) {
        if (ch == '\\') out += "\\\\";
        else if (ch == '"') out += "\\\"";
        else if (ch == '\n') out += "\\n";
        else out += ch;
    }
    return out;
}

class writer {
public:
    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    }
    template <typename T>
    void sample(std::string_view name, std::string_view labels, T value) {
        if (labels.empty()) out_ += fmt::format("{} {}\n", name, value);
        else out_ += fmt::format("{}{{{}}} {}\n", name, labels, value);
    }
    template <typename T>
    void single(std::string_view name, std::string_view type, std::string_view help, T value) {
        family(name, type, help);
        sample(name, "", value);
    }
    // A histogram family: one cumulative _bucket per bound and +Inf, then _sum and _count.
    void histogram(std::string_view name, std::string_view help, const histogram_stats& h) {
        family(name, "histogram", help);
        const std::string bucket = fmt::format("{}_bucket", name);
        for (std::size_t i = 0; i < h.le_s.size() && i < h.counts.size(); ++i)
            sample(bucket, fmt::format("le=\"{}\"", h.le_s[i]), h.counts[i]);
        sample(bucket, "le=\"+Inf\"", h.count);
        sample(fmt::format("{}_sum", name), "", h.sum_s);
        sample(fmt::format("{}_count", name), "", h.count);
    }
    std::string take() { return std::move(out_); }

private:
    std::string out_;
};

}  // namespace

std::string prometheus_text(const server_status& s, const http_counters& http) {
    writer w;
    const std::string io_mode = s.tiers ? s.tiers->io_mode : std::string("resident");
    w.family("moed_info", "gauge", "Build and model of this daemon (always 1).");
    w.sample("moed_info",
             fmt::format("version=\"{}\",model=\"{}\",isa=\"{}\",io_mode=\"{}\"", label(s.version), label(s.model.id),
                         label(s.isa), label(io_mode)),
             1);
    w.single("moed_uptime_seconds", "gauge", "Seconds since the daemon started.", s.uptime_s);
    w.single("moed_threads", "gauge", "Compute threads.", s.threads);

    w.single("moed_requests_total", "counter", "Generation requests accepted by the batch loop.", s.requests_total);
    w.single("moed_requests_failed_total", "counter", "Generation requests that failed in the engine.",
             s.requests_failed);
    w.single("moed_requests_cancelled_total", "counter", "Generation requests cancelled (client gone, shutdown).",
             s.requests_cancelled);
    w.single("moed_prompt_tokens_total", "counter", "Prompt tokens evaluated.", s.prompt_tokens_total);
    w.single("moed_generated_tokens_total", "counter", "Tokens generated.", s.generated_tokens_total);
    w.single("moed_steps_total", "counter", "Forward passes of the batch loop.", s.steps_total);
    w.single("moed_decode_tokens_per_second", "gauge", "Recent decode rate, all sequences together.",
             s.decode_tokens_per_s);
    const request_timing_stats& timing = s.timing;
    w.histogram("moed_time_to_first_token_seconds",
                "Time from a request's queueing to its first token (queue wait and prompt included).",
                timing.time_to_first_token);
    w.histogram("moed_request_duration_seconds",
                "Time from a request's queueing to its end, for requests that ended with stop or length.",
                timing.request_latency);
    w.histogram("moed_prompt_duration_seconds",
                "Time a request's prompt took to evaluate, from its admission to its first token.", timing.prompt);
    w.histogram("moed_generation_duration_seconds", "Time from a request's first token to its end.",
                timing.generation);
    w.single("moed_queue_waiting", "gauge", "Requests waiting for a sequence slot.", s.queue_waiting);
    w.single("moed_queue_capacity", "gauge", "Requests that may wait (more are answered 429).", s.queue_capacity);
    w.single("moed_running_sequences", "gauge", "Sequences in the running batch.", s.running_sequences);
    w.single("moed_max_sequences", "gauge", "Sequences that may run at once.", s.max_sequences);

    w.single("moed_http_connections_total", "counter", "Connections accepted.", http.connections_total);
    w.single("moed_http_connections_open", "gauge", "Connections open now.", http.connections_open);
    w.single("moed_http_connections_rejected_total", "counter", "Connections refused over the connection limit.",
             http.connections_rejected);
    w.single("moed_http_response_bytes_total", "counter", "Response body bytes sent.", http.bytes_sent_total);
    w.family("moed_http_responses_total", "counter", "HTTP responses by status code.");
    for (const auto& [code, count] : http.responses) w.sample("moed_http_responses_total", fmt::format("code=\"{}\"", code), count);

    const memory_stats& m = s.memory;
    w.family("moed_memory_bytes", "gauge", "Bytes moed holds, by kind (KV caches as allocated).");
    const std::pair<const char*, std::uint64_t> kinds[] = {
        {"dense", m.dense_bytes},      {"experts", m.experts_bytes},        {"host_slab", m.host_slab_bytes},
        {"kv_cache", m.kv_cache_bytes}, {"kv_cache_used", m.kv_cache_used_bytes}, {"scratch", m.scratch_bytes},
    };
    for (const auto& [kind, bytes] : kinds) w.sample("moed_memory_bytes", fmt::format("kind=\"{}\"", kind), bytes);
    w.single("moed_kv_cache_cells", "gauge", "KV cache positions allocated (sequences x context).",
             m.kv_cache_cells);
    w.single("moed_kv_cache_cells_used", "gauge", "KV cache positions the running sequences fill.",
             m.kv_cache_cells_used);
    w.single("moed_kv_cache_bytes", "gauge", "KV cache bytes allocated.", m.kv_cache_bytes);
    w.single("moed_kv_cache_used_bytes", "gauge", "KV cache bytes the running sequences fill.",
             m.kv_cache_used_bytes);
    w.single("moed_kv_cache_usage_ratio", "gauge", "KV cache positions in use over those allocated (0 to 1).",
             m.kv_cache_cells > 0 ? static_cast<double>(m.kv_cache_cells_used) / static_cast<double>(m.kv_cache_cells)
                                  : 0.0);
    w.single("moed_memory_held_bytes", "gauge", "Bytes of every kind moed holds together.", m.held_bytes);
    w.single("moed_memory_host_budget_bytes", "gauge", "The host budget as resolved (0: experts resident).",
             m.host_budget_bytes);
    w.single("moed_memory_host_slab_locked", "gauge", "1 when the kernel counts the whole host slab as locked.",
             m.host_slab_mlocked ? 1 : 0);
    w.single("moed_memory_locked_bytes", "gauge", "Bytes the process has locked (VmLck).", m.locked_bytes);
    w.single("moed_process_resident_memory_bytes", "gauge", "Resident set size (VmRSS).", m.rss_bytes);
    w.single("moed_process_resident_memory_peak_bytes", "gauge", "Peak resident set size (VmHWM).",
             m.rss_peak_bytes);
    w.single("moed_machine_memory_bytes", "gauge", "The machine's physical memory.", m.physical_bytes);

    if (s.tiers) {
        const auto& t = *s.tiers;
        const tier_stats* tiers[] = {&t.host, &t.nvme};
        struct counter_field {
            const char* name;
            const char* type;
            const char* help;
            double (*get)(const tier_stats&);
        };
        static constexpr counter_field fields[] = {
            {"moed_tier_capacity_bytes", "gauge", "Bytes the tier can hold.",
             [](const tier_stats& x) { return static_cast<double>(x.capacity_bytes); }},
            {"moed_tier_resident_bytes", "gauge", "Bytes of experts resident in the tier.",
             [](const tier_stats& x) { return static_cast<double>(x.resident_bytes); }},
            {"moed_tier_resident_experts", "gauge", "Experts resident in the tier.",
             [](const tier_stats& x) { return static_cast<double>(x.resident_experts); }},
            {"moed_tier_hits_total", "counter", "Expert acquires served without a read.",
             [](const tier_stats& x) { return static_cast<double>(x.hits); }},
            {"moed_tier_misses_total", "counter", "Expert acquires that had to read.",
             [](const tier_stats& x) { return static_cast<double>(x.misses); }},
            {"moed_tier_evictions_total", "counter", "Experts evicted from the tier.",
             [](const tier_stats& x) { return static_cast<double>(x.evictions); }},
            {"moed_tier_read_bytes_total", "counter", "Bytes read into the tier from the one below.",
             [](const tier_stats& x) { return static_cast<double>(x.bytes_read); }},
            {"moed_tier_read_errors_total", "counter", "Failed reads into the tier.",
             [](const tier_stats& x) { return static_cast<double>(x.read_errors); }},
            {"moed_tier_read_bytes_per_second", "gauge", "Read bandwidth while reads were in flight.",
             [](const tier_stats& x) { return x.read_bytes_per_s; }},
        };
        for (const auto& f : fields) {
            w.family(f.name, f.type, f.help);
            for (const tier_stats* tier : tiers)
                w.sample(f.name, fmt::format("tier=\"{}\",io_mode=\"{}\"", label(tier->name), label(io_mode)), f.get(*tier));
        }
        w.family("moed_tier_load_latency_seconds", "summary", "Time from an expert's request to its being ready.");
        for (const tier_stats* tier : tiers) {
            const std::string base = fmt::format("tier=\"{}\",io_mode=\"{}\"", label(tier->name), label(io_mode));
            const auto& l = tier->load_latency;
            w.sample("moed_tier_load_latency_seconds", base + ",quantile=\"0.5\"", l.p50_us * 1e-6);
            w.sample("moed_tier_load_latency_seconds", base + ",quantile=\"0.9\"", l.p90_us * 1e-6);
            w.sample("moed_tier_load_latency_seconds", base + ",quantile=\"0.99\"", l.p99_us * 1e-6);
            w.sample("moed_tier_load_latency_seconds_sum", base, l.sum_us * 1e-6);
            w.sample("moed_tier_load_latency_seconds_count", base, l.count);
        }
        w.single("moed_tier_queue_depth", "gauge", "Expert reads that may be in flight.", t.queue_depth);
        const prefetch_stats& p = t.prefetch;
        w.single("moed_prefetch_issued_total", "counter", "Expert loads started by prefetch requests.", p.issued);
        w.single("moed_prefetch_cancelled_total", "counter", "Prefetch requests dropped before any read (stale).",
                 p.cancelled);
        w.single("moed_prefetch_hits_total", "counter", "Prefetched experts ready before they were needed.", p.hits);
        w.single("moed_prefetch_late_total", "counter", "Prefetched experts still loading when needed.", p.late);
        w.single("moed_prefetch_wasted_bytes_total", "counter", "Bytes prefetched and evicted unused.",
                 p.wasted_bytes);
        w.single("moed_prefetch_demand_misses_total", "counter", "Expert reads started only when needed.",
                 p.demand_misses);
        w.single("moed_prefetch_inflight_bytes", "gauge", "Expert bytes being read now.", p.inflight_bytes);
        w.single("moed_prefetch_recall", "gauge", "Routed experts that had been predicted for their layer.",
                 p.recall);
        w.single("moed_io_wait_seconds_total", "counter", "Time compute waited for expert reads.",
                 static_cast<double>(p.io_wait_ns) * 1e-9);
    }
    return w.take();
}

}  // namespace moed::daemon
