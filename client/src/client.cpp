// The C++ API: builds the OpenAI-style JSON requests, reads moed's answers (whole or as
// server-sent events) and maps every failure to a client_error.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "client/src/http_connection.h"
#include "client/src/sse_parser.h"
#include "common/default_paths.h"
#include "common/status.h"
#include "moed/client.hpp"

namespace moed {

using client_detail::http_connection;
using client_detail::http_head;
using client_detail::http_reply;
using nlohmann::json;

namespace {

// The longest single SSE event accepted (one chunk of a few tokens is well under 1 KiB).
constexpr std::size_t max_sse_event_bytes = 1u << 20;
// How much of a non-JSON error body goes into a message.
constexpr std::size_t max_quoted_body = 200;

client_error make(client_errc code, std::string message) {
    client_error e;
    e.code = code;
    e.message = std::move(message);
    return e;
}

// moed's error answer: {"error":{"type","message"}} with a 4xx/5xx status, or the same
// object as an event in the middle of a stream (`mid_stream`).
client_error http_error(const http_head& head, std::string body, bool mid_stream = false) {
    client_error e;
    e.code = client_errc::http;
    e.http_status = static_cast<int>(head.status);
    std::string server_message;
    const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("error") && j["error"].is_object()) {
        const json& err = j["error"];
        if (auto it = err.find("type"); it != err.end() && it->is_string()) e.type = it->get<std::string>();
        if (auto it = err.find("message"); it != err.end() && it->is_string()) server_message = it->get<std::string>();
        // Mid-stream the HTTP status is long sent (200); moed puts the real one in "status"
        // (in "code" before "code" became OpenAI's string).
        for (const char* key : {"status", "code"}) {
            if (auto it = err.find(key); mid_stream && it != err.end() && it->is_number_integer()) {
                e.http_status = it->get<int>();
                break;
            }
        }
    } else if (j.is_object() && j.contains("status") && j["status"].is_string()) {
        // /healthz while draining {"status":"draining"}, or broken with the reason.
        server_message = j["status"].get<std::string>();
        if (auto it = j.find("error"); it != j.end() && it->is_string()) server_message += ": " + it->get<std::string>();
    } else {
        server_message = body.substr(0, max_quoted_body);
        while (!server_message.empty() && (server_message.back() == '\n' || server_message.back() == '\r')) {
            server_message.pop_back();
        }
    }
    e.message = mid_stream ? std::string("moed failed the request mid-stream")
                           : fmt::format("moed answered {} {}", head.status, head.reason);
    if (!e.type.empty()) e.message += fmt::format(" ({})", e.type);
    if (!server_message.empty()) e.message += ": " + server_message;
    e.body = std::move(body);
    return e;
}

client_error protocol_error(std::string_view what, std::string_view detail) {
    return make(client_errc::protocol, fmt::format("malformed answer from moed: {} ({})", what, detail));
}

bool is_2xx(unsigned status) { return status >= 200 && status < 300; }

// One request, whole answer; error statuses become http errors.
client_result<std::string> exchange(const client_options& options, std::string_view method, std::string_view target,
                                    std::string_view body) {
    http_connection conn(options);
    if (auto err = conn.send(method, target, body, "application/json")) return std::move(*err);
    auto reply = conn.read_reply();
    if (!reply) return std::move(reply).error();
    if (!is_2xx(reply->head.status)) return http_error(reply->head, std::move(reply->body));
    return std::move(reply->body);
}

// Serialises a request; text that is not valid UTF-8 cannot go into JSON. The message is
// ours: the JSON library's own ("[json.exception.type_error.316] ...") means nothing to a
// user, so only its detail (the byte and its index in that string) is kept.
client_result<std::string> dump(const json& j) {
    try {
        return j.dump();
    } catch (const json::type_error& e) {
        std::string_view detail = e.what();
        if (const auto close = detail.find("] "); detail.substr(0, 1) == "[" && close != std::string_view::npos)
            detail.remove_prefix(close + 2);
        return make(client_errc::invalid_argument,
                    fmt::format("the request cannot be sent as JSON: a text in it is not valid UTF-8 ({})", detail));
    }
}

json request_to_json(const completion_request& r) {
    json j = json::object();
    if (!r.model.empty()) j["model"] = r.model;
    if (r.messages.empty()) {
        j["prompt"] = r.prompt;
    } else {
        json messages = json::array();
        for (const chat_message& m : r.messages) messages.push_back({{"role", m.role}, {"content", m.content}});
        j["messages"] = std::move(messages);
    }
    if (r.max_tokens) j["max_tokens"] = *r.max_tokens;
    if (r.temperature) j["temperature"] = *r.temperature;
    if (r.top_p) j["top_p"] = *r.top_p;
    if (r.top_k) j["top_k"] = *r.top_k;
    if (r.min_p) j["min_p"] = *r.min_p;
    if (r.seed) j["seed"] = *r.seed;
    if (!r.stop.empty()) j["stop"] = r.stop;
    if (!r.profile.empty()) j["profile"] = r.profile;
    if (r.prune_experts_per_layer) j["prune"] = {{"experts_per_layer", *r.prune_experts_per_layer}};
    return j;
}


// Parses request_json, checks it is an object and sets "stream"; returns the endpoint. A
// stream asks for its usage (the result reports it) unless the request says otherwise; a
// whole answer drops stream_options, which moed refuses without "stream": true.
client_result<std::string> prepare_raw(std::string_view request_json, bool stream, json& out) {
    out = json::parse(request_json, nullptr, /*allow_exceptions=*/false);
    if (out.is_discarded() || !out.is_object()) {
        return make(client_errc::invalid_argument, "the request is not a JSON object");
    }
    out["stream"] = stream;
    if (!stream) out.erase("stream_options");
    else if (!out.contains("stream_options")) out["stream_options"] = {{"include_usage", true}};
    return std::string(out.contains("messages") ? "/v1/chat/completions" : "/v1/completions");
}

std::string string_field(const json& j, const char* key) {
    if (auto it = j.find(key); it != j.end() && it->is_string()) return it->get<std::string>();
    return {};
}

template <typename Int>
Int int_field(const json& j, const char* key) {
    if (auto it = j.find(key); it != j.end() && it->is_number_integer()) return it->get<Int>();
    return Int{};
}

// The "moed" object of a response or of a stream's first chunk.
void parse_moed(const json& j, completion_response& r) {
    auto it = j.find("moed");
    if (it == j.end() || !it->is_object()) return;
    const json& m = *it;
    r.profile = string_field(m, "profile");
    r.profile_source = string_field(m, "profile_source");
    if (auto s = m.find("profile_similarity"); s != m.end() && s->is_number()) r.profile_similarity = s->get<double>();
    if (auto p = m.find("pruned"); p != m.end() && p->is_object())
        r.pruned_experts_per_layer = int_field<std::uint32_t>(*p, "experts_per_layer");
}

// Names moed accepts (scheduler/profile.h); checked here so no odd target is sent.
bool valid_profile_name(std::string_view name) {
    if (name.empty() || name.size() > 64 || name.front() == '.') return false;
    for (char c : name) {
        const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
                        c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

client_error bad_profile_name(std::string_view name) {
    return make(client_errc::invalid_argument,
                fmt::format("'{}' is not a profile name (1 to 64 letters, digits, '.', '_' or '-', not starting with '.')",
                            name));
}

profile_summary parse_profile_summary(const json& j) {
    profile_summary p;
    p.name = string_field(j, "name");
    p.model = string_field(j, "model");
    p.model_identity = string_field(j, "model_identity");
    p.prompts = int_field<std::uint32_t>(j, "prompts");
    p.tokens = int_field<std::int64_t>(j, "tokens");
    p.created = int_field<std::int64_t>(j, "created");
    p.source = string_field(j, "source");
    p.n_layer = int_field<std::uint32_t>(j, "n_layer");
    p.n_expert = int_field<std::uint32_t>(j, "n_expert");
    p.n_expert_used = int_field<std::uint32_t>(j, "n_expert_used");
    return p;
}

client_result<json> parse_object(const std::string& body, std::string_view what) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return protocol_error(what, body.substr(0, max_quoted_body));
    return j;
}

token_usage parse_usage(const json& j) {
    token_usage u;
    u.prompt_tokens = int_field<std::int64_t>(j, "prompt_tokens");
    u.completion_tokens = int_field<std::int64_t>(j, "completion_tokens");
    u.total_tokens = int_field<std::int64_t>(j, "total_tokens");
    if (u.total_tokens == 0) u.total_tokens = u.prompt_tokens + u.completion_tokens;
    return u;
}

// The text of choice 0: "text" (completions), "message.content" (chat) or
// "delta.content" (a chat stream chunk).
std::string choice_text(const json& choice) {
    if (auto it = choice.find("text"); it != choice.end() && it->is_string()) return it->get<std::string>();
    for (const char* key : {"message", "delta"}) {
        if (auto it = choice.find(key); it != choice.end() && it->is_object()) return string_field(*it, "content");
    }
    return {};
}

client_result<completion_response> parse_completion(std::string body) {
    const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return protocol_error("a completion that is not a JSON object", body.substr(0, max_quoted_body));
    auto choices = j.find("choices");
    if (choices == j.end() || !choices->is_array() || choices->empty() || !(*choices)[0].is_object()) {
        return protocol_error("a completion without choices", body.substr(0, max_quoted_body));
    }
    completion_response r;
    r.id = string_field(j, "id");
    r.model = string_field(j, "model");
    r.text = choice_text((*choices)[0]);
    r.finish_reason = string_field((*choices)[0], "finish_reason");
    if (auto it = j.find("usage"); it != j.end() && it->is_object()) r.usage = parse_usage(*it);
    parse_moed(j, r);
    r.raw_json = std::move(body);
    return r;
}

// Streams one request: POST with "stream": true, SSE events until [DONE].
client_result<completion_response> run_stream(const client_options& options, std::string_view target,
                                              const std::string& body, const stream_callback& on_text) {
    http_connection conn(options);
    if (auto err = conn.send("POST", target, body, "text/event-stream")) return std::move(*err);
    auto head = conn.read_head();
    if (!head) return std::move(head).error();
    if (!is_2xx(head->status)) {
        auto rest = conn.read_body_rest();
        if (!rest) return std::move(rest).error();
        return http_error(*head, std::move(*rest));
    }
    // A server that answers a stream request with one JSON completion is still understood.
    if (head->content_type.rfind("application/json", 0) == 0) {
        auto rest = conn.read_body_rest();
        if (!rest) return std::move(rest).error();
        auto whole = parse_completion(std::move(*rest));
        if (whole && on_text && !whole->text.empty()) on_text(whole->text);
        if (whole) whole->raw_json.clear();
        return whole;
    }

    completion_response result;
    client_detail::sse_parser parser(max_sse_event_bytes);
    std::optional<client_error> failure;
    bool done = false;
    bool stopped = false;
    // Handles one event; returns false to stop reading.
    auto on_event = [&](const client_detail::sse_event& event) -> bool {
        if (event.data == "[DONE]") {
            done = true;
            return false;
        }
        const json chunk = json::parse(event.data, nullptr, /*allow_exceptions=*/false);
        if (!chunk.is_object()) {
            failure = protocol_error("a stream event that is not JSON", event.data.substr(0, max_quoted_body));
            return false;
        }
        if (chunk.contains("error") || event.type == "error") {
            failure = http_error(*head, event.data, /*mid_stream=*/true);
            return false;
        }
        if (result.id.empty()) result.id = string_field(chunk, "id");
        if (result.profile_source.empty()) parse_moed(chunk, result);
        if (result.model.empty()) result.model = string_field(chunk, "model");
        if (auto usage = chunk.find("usage"); usage != chunk.end() && usage->is_object()) {
            result.usage = parse_usage(*usage);
        }
        auto choices = chunk.find("choices");
        if (choices == chunk.end() || !choices->is_array() || choices->empty()) return true;  // a usage-only chunk
        const json& choice = (*choices)[0];
        if (!choice.is_object()) {
            failure = protocol_error("a stream choice that is not an object", event.data.substr(0, max_quoted_body));
            return false;
        }
        if (std::string reason = string_field(choice, "finish_reason"); !reason.empty()) {
            result.finish_reason = std::move(reason);
        }
        const std::string text = choice_text(choice);
        if (text.empty()) return true;
        result.text += text;
        if (on_text && !on_text(text)) {
            stopped = true;
            return false;
        }
        return true;
    };

    std::string piece;
    while (!done && !stopped && !failure) {
        auto more = conn.read_body_some(piece);
        if (!more) return std::move(more).error();
        if (!*more) break;
        if (!parser.feed(piece, on_event) && parser.overflowed()) {
            return protocol_error("a stream event longer than the limit",
                                  fmt::format("{} bytes", max_sse_event_bytes));
        }
    }
    if (failure) return std::move(*failure);
    if (stopped) {
        // Closing is how a client cancels: moed sees the connection go and stops generating.
        conn.close();
        result.finish_reason = "cancelled";
        return result;
    }
    if (!done && result.finish_reason.empty()) {
        return make(client_errc::connection,
                    fmt::format("moed ended the stream on {} before it finished (no [DONE])", options.socket_path));
    }
    return result;
}

// Conversions from the wire type (common/status.h) to the public plain structs.
daemon_latency to_public(const latency_summary& l) { return {l.count, l.p50_us, l.p90_us, l.p99_us, l.max_us}; }

daemon_tier to_public(const tier_stats& t) {
    daemon_tier p;
    p.name = t.name;
    p.capacity_bytes = t.capacity_bytes;
    p.capacity_experts = t.capacity_experts;
    p.resident_bytes = t.resident_bytes;
    p.resident_experts = t.resident_experts;
    p.hits = t.hits;
    p.misses = t.misses;
    p.evictions = t.evictions;
    p.bytes_read = t.bytes_read;
    p.read_errors = t.read_errors;
    p.read_seconds = t.read_seconds;
    p.read_bytes_per_s = t.read_bytes_per_s;
    p.load_latency = to_public(t.load_latency);
    return p;
}

daemon_prefetch to_public(const prefetch_stats& f) {
    daemon_prefetch p;
    p.requested = f.requested;
    p.issued = f.issued;
    p.cancelled = f.cancelled;
    p.hits = f.hits;
    p.late = f.late;
    p.wasted = f.wasted;
    p.wasted_bytes = f.wasted_bytes;
    p.demand_misses = f.demand_misses;
    p.hit_rate = f.hit_rate;
    p.inflight_bytes = f.inflight_bytes;
    p.inflight_bytes_max = f.inflight_bytes_max;
    p.inflight_bytes_limit = f.inflight_bytes_limit;
    p.io_wait_ns = f.io_wait_ns;
    p.tokens = f.tokens;
    p.io_wait_ns_per_token = f.io_wait_ns_per_token;
    p.routed = f.routed;
    p.predicted_routed = f.predicted_routed;
    p.recall = f.recall;
    return p;
}

daemon_ring to_public(ring_stats&& r) {
    daemon_ring p;
    p.enabled = r.enabled;
    p.slots_per_layer = r.slots_per_layer;
    p.hot_slots = r.hot_slots;
    p.hot_set = r.hot_set;
    p.hot_resident = r.hot_resident;
    p.sections.reserve(r.sections.size());
    for (ring_section_stats& sec : r.sections) {
        p.sections.push_back({sec.slots, std::move(sec.layers), sec.layer, sec.resident});
    }
    return p;
}

daemon_memory to_public(memory_stats&& m) {
    daemon_memory p;
    p.host_budget = std::move(m.host_budget);
    p.host_budget_bytes = m.host_budget_bytes;
    p.host_budget_capped = m.host_budget_capped;
    p.dense_bytes = m.dense_bytes;
    p.experts_bytes = m.experts_bytes;
    p.host_slab_bytes = m.host_slab_bytes;
    p.host_slab_slots = m.host_slab_slots;
    p.host_slab_mlocked = m.host_slab_mlocked;
    p.kv_cache_bytes = m.kv_cache_bytes;
    p.kv_cache_used_bytes = m.kv_cache_used_bytes;
    p.scratch_bytes = m.scratch_bytes;
    p.held_bytes = m.held_bytes;
    p.locked_bytes = m.locked_bytes;
    p.rss_bytes = m.rss_bytes;
    p.rss_peak_bytes = m.rss_peak_bytes;
    p.physical_bytes = m.physical_bytes;
    return p;
}

daemon_status_extra extra_of(server_status& s) {
    daemon_status_extra e;
    if (s.tiers) {
        e.slot_classes.reserve(s.tiers->slot_classes.size());
        for (slot_class_stats& c : s.tiers->slot_classes)
            e.slot_classes.push_back({c.slot_bytes, c.slots, std::move(c.layers), c.resident});
    }
    e.kv_cache_cells = s.memory.kv_cache_cells;
    e.kv_cache_cells_used = s.memory.kv_cache_cells_used;
    return e;
}

daemon_status to_public(server_status&& s) {
    daemon_status p;
    p.version = std::move(s.version);
    p.uptime_s = s.uptime_s;
    p.model.id = std::move(s.model.id);
    p.model.path = std::move(s.model.path);
    p.model.architecture = std::move(s.model.architecture);
    p.model.n_layer = s.model.n_layer;
    p.model.n_expert = s.model.n_expert;
    p.model.n_expert_used = s.model.n_expert_used;
    p.model.n_ctx = s.model.n_ctx;
    p.model.n_vocab = s.model.n_vocab;
    p.model.file_bytes = s.model.file_bytes;
    p.model.dense_bytes = s.model.dense_bytes;
    p.model.expert_bytes = s.model.expert_bytes;
    p.model.state = std::move(s.model.state);
    p.model.error = std::move(s.model.error);
    p.threads = s.threads;
    p.isa = std::move(s.isa);
    p.queue_waiting = s.queue_waiting;
    p.queue_capacity = s.queue_capacity;
    p.running_sequences = s.running_sequences;
    p.max_sequences = s.max_sequences;
    p.max_batch_tokens = s.max_batch_tokens;
    p.steps_total = s.steps_total;
    p.requests_total = s.requests_total;
    p.requests_failed = s.requests_failed;
    p.requests_cancelled = s.requests_cancelled;
    p.prompt_tokens_total = s.prompt_tokens_total;
    p.generated_tokens_total = s.generated_tokens_total;
    p.decode_tokens_per_s = s.decode_tokens_per_s;
    if (s.tiers) {
        daemon_tiers t;
        t.io_mode = std::move(s.tiers->io_mode);
        t.queue_depth = s.tiers->queue_depth;
        t.expert_bytes_total = s.tiers->expert_bytes_total;
        t.host = to_public(s.tiers->host);
        t.nvme = to_public(s.tiers->nvme);
        t.layer_residency = std::move(s.tiers->layer_residency);
        t.prefetch = to_public(s.tiers->prefetch);
        t.ring = to_public(std::move(s.tiers->ring));
        p.tiers = std::move(t);
    }
    p.memory = to_public(std::move(s.memory));
    p.requests.reserve(s.requests.size());
    for (request_status& r : s.requests) {
        p.requests.push_back({std::move(r.id), std::move(r.state), r.prompt_tokens, r.generated_tokens, r.max_tokens,
                              std::move(r.peer), std::move(r.profile), std::move(r.profile_source),
                              r.profile_similarity, r.pruned_experts_per_layer});
    }
    return p;
}

}  // namespace

const char* client_version() noexcept { return MOED_CLIENT_VERSION; }

std::string default_socket_path() {
    const char* env = std::getenv("MOED_SOCKET");
    if (env != nullptr && env[0] != '\0') return std::string(env);
    return client_default_socket(path_environment::of_process());
}

const char* client_errc_name(client_errc code) noexcept {
    switch (code) {
        case client_errc::not_running: return "not_running";
        case client_errc::unreachable: return "unreachable";
        case client_errc::timeout: return "timeout";
        case client_errc::connection: return "connection";
        case client_errc::http: return "http";
        case client_errc::protocol: return "protocol";
        case client_errc::invalid_argument: return "invalid_argument";
    }
    return "unknown";
}

namespace detail {
void bad_result_access(const client_error& err) noexcept {
    std::fprintf(stderr, "libmoeclient: value() called on an error result: %s\n", err.message.c_str());
    std::fflush(stderr);
    std::abort();
}
}  // namespace detail

client::client() : client(client_options{}) {}

client::client(std::string socket_path) : client([&] {
    client_options o;
    o.socket_path = std::move(socket_path);
    return o;
}()) {}

client::client(client_options options) : options_(std::move(options)) {
    if (options_.socket_path.empty()) options_.socket_path = default_socket_path();
}

client_result<completion_response> client::complete(const completion_request& request) const {
    json j = request_to_json(request);
    j["stream"] = false;
    auto text = dump(j);
    if (!text) return std::move(text).error();
    const char* target = request.messages.empty() ? "/v1/completions" : "/v1/chat/completions";
    auto body = exchange(options_, "POST", target, *text);
    if (!body) return std::move(body).error();
    return parse_completion(std::move(*body));
}

client_result<completion_response> client::stream(const completion_request& request,
                                                   const stream_callback& on_text) const {
    json j = request_to_json(request);
    j["stream"] = true;
    j["stream_options"] = {{"include_usage", true}};  // the result reports the usage
    auto text = dump(j);
    if (!text) return std::move(text).error();
    const char* target = request.messages.empty() ? "/v1/completions" : "/v1/chat/completions";
    return run_stream(options_, target, *text, on_text);
}

client_result<std::string> client::get_json(std::string_view target) const {
    if (target.empty() || target.front() != '/') {
        return make(client_errc::invalid_argument, fmt::format("the target '{}' does not start with '/'", target));
    }
    return exchange(options_, "GET", target, {});
}

client_result<daemon_status> client::status() const {
    daemon_status_extra unused;
    return status(unused);
}

client_result<daemon_status> client::status(daemon_status_extra& extra) const {
    auto body = get_json("/v1/status");
    if (!body) return std::move(body).error();
    const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return protocol_error("a status that is not a JSON object", body->substr(0, max_quoted_body));
    server_status wire;
    try {
        from_json(j, wire);
    } catch (const json::exception& e) {
        return protocol_error("a status field of the wrong type", e.what());
    }
    extra = extra_of(wire);
    return to_public(std::move(wire));
}

client_result<std::vector<model_info>> client::models() const {
    auto body = get_json("/v1/models");
    if (!body) return std::move(body).error();
    const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
    auto data = j.is_object() ? j.find("data") : j.end();
    if (!j.is_object() || data == j.end() || !data->is_array()) {
        return protocol_error("a model list without \"data\"", body->substr(0, max_quoted_body));
    }
    std::vector<model_info> out;
    for (const json& m : *data) {
        if (!m.is_object()) continue;
        out.push_back({string_field(m, "id"), string_field(m, "owned_by"), int_field<std::int64_t>(m, "created")});
    }
    return out;
}

client_result<std::string> client::health() const {
    auto body = get_json("/healthz");
    if (!body) return body;
    // moed answers {"status":"ok"}; other servers may answer plain text.
    const json j = json::parse(*body, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("status") && j["status"].is_string()) return j["status"].get<std::string>();
    std::string text = std::move(*body);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    if (text.empty()) text = "ok";
    return text;
}

client_result<std::string> client::complete_json(std::string_view request_json) const {
    json j;
    auto target = prepare_raw(request_json, false, j);
    if (!target) return target;
    auto text = dump(j);
    if (!text) return text;
    return exchange(options_, "POST", *target, *text);
}

client_result<completion_response> client::stream_json(std::string_view request_json,
                                                       const stream_callback& on_text) const {
    json j;
    auto target = prepare_raw(request_json, true, j);
    if (!target) return std::move(target).error();
    auto text = dump(j);
    if (!text) return std::move(text).error();
    return run_stream(options_, *target, *text, on_text);
}

client_result<std::string> client::request_json(std::string_view method, std::string_view target,
                                                std::string_view body) const {
    if (target.empty() || target.front() != '/') {
        return make(client_errc::invalid_argument, fmt::format("the target '{}' does not start with '/'", target));
    }
    if (method != "GET" && method != "POST" && method != "DELETE" && method != "PUT") {
        return make(client_errc::invalid_argument, fmt::format("the method '{}' is not one moed serves", method));
    }
    return exchange(options_, method, target, body);
}

client_result<profile_list> client::list_profiles() const {
    auto body = get_json("/v1/profiles");
    if (!body) return std::move(body).error();
    auto j = parse_object(*body, "a profile list that is not a JSON object");
    if (!j) return std::move(j).error();
    auto data = j->find("data");
    if (data == j->end() || !data->is_array()) return protocol_error("a profile list without \"data\"", body->substr(0, max_quoted_body));
    profile_list out;
    for (const json& p : *data) {
        if (p.is_object()) out.profiles.push_back(parse_profile_summary(p));
    }
    if (auto problems = j->find("problems"); problems != j->end() && problems->is_array()) {
        for (const json& m : *problems) {
            if (m.is_string()) out.problems.push_back(m.get<std::string>());
        }
    }
    return out;
}

client_result<profile_details> client::show_profile(std::string_view name) const {
    if (!valid_profile_name(name)) return bad_profile_name(name);
    auto body = get_json(fmt::format("/v1/profiles/{}", name));
    if (!body) return std::move(body).error();
    auto j = parse_object(*body, "a profile that is not a JSON object");
    if (!j) return std::move(j).error();
    profile_details d;
    d.summary = parse_profile_summary(*j);
    if (auto layers = j->find("layers"); layers != j->end() && layers->is_array()) {
        for (const json& layer : *layers) {
            std::vector<profile_expert> experts;
            if (auto e = layer.find("experts"); layer.is_object() && e != layer.end() && e->is_array()) {
                for (const json& x : *e) {
                    if (!x.is_object()) continue;
                    profile_expert pe;
                    pe.expert = int_field<std::uint32_t>(x, "expert");
                    if (auto s = x.find("score"); s != x.end() && s->is_number()) pe.score = s->get<double>();
                    if (auto s = x.find("selection"); s != x.end() && s->is_number()) pe.selection = s->get<double>();
                    experts.push_back(pe);
                }
            }
            d.layers.push_back(std::move(experts));
        }
    }
    d.raw_json = std::move(*body);
    return d;
}

client_result<profile_summary> client::create_profile(const profile_create_request& request) const {
    if (!valid_profile_name(request.name)) return bad_profile_name(request.name);
    if (request.prompts.empty()) return make(client_errc::invalid_argument, "a profile needs at least one prompt");
    json j{{"name", request.name}, {"prompts", request.prompts}};
    if (request.replace) j["replace"] = true;
    if (!request.source.empty()) j["source"] = request.source;
    auto text = dump(j);
    if (!text) return std::move(text).error();
    auto body = exchange(options_, "POST", "/v1/profiles", *text);
    if (!body) return std::move(body).error();
    auto parsed = parse_object(*body, "a created profile that is not a JSON object");
    if (!parsed) return std::move(parsed).error();
    return parse_profile_summary(*parsed);
}

client_result<profile_summary> client::delete_profile(std::string_view name) const {
    if (!valid_profile_name(name)) return bad_profile_name(name);
    auto body = exchange(options_, "DELETE", fmt::format("/v1/profiles/{}", name), {});
    if (!body) return std::move(body).error();
    profile_summary p;
    p.name = std::string(name);
    return p;
}

}  // namespace moed
