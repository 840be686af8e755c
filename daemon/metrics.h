// GET /metrics: the status figures and the HTTP counters in the Prometheus text exposition
// format (version 0.0.4). Counters end in _total; tier figures carry the tier and the I/O
// mode as labels; load latency is a summary with quantiles 0.5, 0.9, 0.99 over recent loads
// and _sum/_count over every load. Request times (first token, whole request, prompt,
// generation) are histograms in seconds; KV cache use is gauges of positions and bytes.
// Threads: http_counters belongs to the io_context thread; prometheus_text is pure.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "common/status.h"

namespace moed::daemon {

struct http_counters {
    std::uint64_t connections_total = 0;
    std::uint64_t connections_open = 0;
    std::uint64_t connections_rejected = 0;  // over http.max_connections or http.max_connections_per_uid
    std::uint64_t bytes_sent_total = 0;      // response bodies
    std::map<unsigned, std::uint64_t> responses;  // by status code (a handful of codes)
};

std::string prometheus_text(const server_status& status, const http_counters& http);

}  // namespace moed::daemon
