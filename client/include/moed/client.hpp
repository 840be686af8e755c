// libmoeclient: the C++ API for talking to moed, the Mixture-of-Experts inference daemon,
// over its Unix socket (HTTP/1.1 + JSON; see DESIGN.md "Wire protocol").
//
// This header is installed and compiles on its own: it needs only the C++17 standard
// library (no Boost, no JSON library, nothing from moed's source tree). The C ABI for other
// languages is in <moed/client.h>.
//
// Contract:
// - Every call opens its own connection and closes it before returning, so one `client`
//   may be used from any number of threads at once; a `client` holds only its options.
// - Expected failures (moed not running, an error status, a malformed answer, a timeout)
//   come back as a client_result holding a client_error; nothing is thrown for them. The
//   calls throw only std::bad_alloc, and stream() passes on what the callback throws (the
//   connection is closed first, which cancels the request in moed).
// - Timeouts: connect_timeout bounds connecting; read_timeout bounds each wait for the next
//   bytes from moed. A non-streaming completion sends nothing until it is done, so there
//   read_timeout bounds the whole generation.
//
// Example:
//     moed::client c;                       // $MOED_SOCKET or /run/moed/moed.sock
//     moed::completion_request req;
//     req.prompt = "The capital of France is";
//     req.max_tokens = 16;
//     auto r = c.stream(req, [](std::string_view piece) {
//         std::cout << piece << std::flush;
//         return true;                      // false stops: moed cancels the request
//     });
//     if (!r) std::cerr << r.error().message << '\n';
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#ifndef MOED_CLIENT_API
#if defined(__GNUC__) || defined(__clang__)
#define MOED_CLIENT_API __attribute__((visibility("default")))
#else
#define MOED_CLIENT_API
#endif
#endif

namespace moed {

// The library's version ("0.2.0"); the SONAME changes with the major number.
//
// Binary compatibility: a program built against an older 0.x header runs with this library
// unchanged. The structs below are returned by value, so their layout never changes within a
// SONAME: what a newer moed reports goes into new structs and new functions (marked "since"),
// whose symbols carry the version node of the release that added them (libmoeclient.map).
MOED_CLIENT_API const char* client_version() noexcept;

// Where moed listens unless told otherwise: $MOED_SOCKET when set and not empty; else, for a
// user other than root, the socket a moed started by that user makes by default when it
// exists ($XDG_RUNTIME_DIR/moed/moed.sock, or moed.sock in $XDG_STATE_HOME/moed or
// ~/.local/state/moed without $XDG_RUNTIME_DIR); else the system daemon's /run/moed/moed.sock.
MOED_CLIENT_API std::string default_socket_path();

// What went wrong. Fixed values: the C ABI maps them one to one (MOE_ERR_*).
enum class client_errc : std::uint8_t {
    not_running = 1,       // nothing listens on the socket (no such file, connection refused)
    unreachable = 2,       // the socket exists but cannot be used (permission denied, path too long)
    timeout = 3,           // connecting or waiting for moed took longer than the timeout
    connection = 4,        // the connection broke before the answer was complete
    http = 5,              // moed answered with an error (http_status, type and message are set)
    protocol = 6,          // moed's answer broke the protocol (malformed HTTP, JSON or SSE)
    invalid_argument = 7,  // the request could not be sent as given (empty prompt, bad JSON)
};

// "not_running", "http", ...
MOED_CLIENT_API const char* client_errc_name(client_errc code) noexcept;

struct client_error {
    client_errc code = client_errc::protocol;
    // The HTTP status of moed's answer (0 when there was none). For an error event in the
    // middle of a stream: the "code" moed put in the error object, else the stream's 200.
    int http_status = 0;
    // moed's error type ("invalid_request_error", "not_found", ...), empty when it sent none.
    std::string type;
    // One sentence naming what failed and where, fit to show to a user as it is.
    std::string message;
    // moed's error body as received ({"error":{"type":...,"message":...}}), for http errors.
    std::string body;
};

namespace detail {
// Prints the error and aborts: value() on an error is a programmer error.
[[noreturn]] MOED_CLIENT_API void bad_result_access(const client_error& err) noexcept;
}  // namespace detail

// A value or a client_error, with the method names of std::expected.
template <typename T>
class [[nodiscard]] client_result {
public:
    client_result(T value) : state_(std::in_place_index<0>, std::move(value)) {}
    client_result(client_error err) : state_(std::in_place_index<1>, std::move(err)) {}

    bool has_value() const noexcept { return state_.index() == 0; }
    explicit operator bool() const noexcept { return has_value(); }

    T& value() & {
        check();
        return std::get<0>(state_);
    }
    const T& value() const& {
        check();
        return std::get<0>(state_);
    }
    T&& value() && {
        check();
        return std::get<0>(std::move(state_));
    }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

    // Precondition: !has_value().
    const client_error& error() const& { return std::get<1>(state_); }
    client_error&& error() && { return std::get<1>(std::move(state_)); }

private:
    void check() const {
        if (state_.index() != 0) detail::bad_result_access(std::get<1>(state_));
    }
    std::variant<T, client_error> state_;
};

struct chat_message {
    std::string role;  // "system", "user", "assistant"
    std::string content;
};

// One completion. With `messages` empty it goes to POST /v1/completions with `prompt`;
// otherwise to POST /v1/chat/completions and `prompt` is ignored. Unset optional fields
// are left out of the request, so moed's defaults apply.
struct completion_request {
    std::string model;  // empty: left out (moed serves its loaded model)
    std::string prompt;
    std::vector<chat_message> messages;
    std::optional<std::int32_t> max_tokens;
    std::optional<double> temperature;
    std::optional<double> top_p;
    std::optional<std::int32_t> top_k;
    std::optional<double> min_p;
    std::optional<std::uint64_t> seed;
    std::vector<std::string> stop;
    // moed extensions. `profile`: a stored task profile to run with (empty: moed matches
    // the prompt to its profiles itself). `prune_experts_per_layer`: restrict routing to the
    // profile's top this-many experts per layer (needs a named or matched profile).
    std::string profile;
    std::optional<std::uint32_t> prune_experts_per_layer;
};

struct token_usage {
    std::int64_t prompt_tokens = 0;
    std::int64_t completion_tokens = 0;
    std::int64_t total_tokens = 0;
};

struct completion_response {
    std::string id;             // "cmpl-..." / "chatcmpl-..."
    std::string model;
    std::string text;           // the whole generated text (choice 0)
    // "stop", "length", "cancelled" (also when a stream callback stopped the stream), ...
    std::string finish_reason;
    token_usage usage;          // zeros when moed sent none (a stream without a usage chunk)
    std::string raw_json;       // moed's response body as received (non-streaming calls only)
    // The task profile moed used (its "moed" object): the name (empty: none), how it was
    // chosen ("request", "matched", "none"; empty when moed sent nothing), the prompt's
    // similarity to it (or to the closest profile), and the experts per layer routing was
    // pruned to (0: not pruned).
    std::string profile;
    std::string profile_source;
    double profile_similarity = 0.0;
    std::uint32_t pruned_experts_per_layer = 0;
};

// Called with each piece of generated text as it arrives; return false to stop (the
// connection is closed, which cancels the request in moed). Called on the caller's thread.
using stream_callback = std::function<bool(std::string_view text)>;

struct model_info {
    std::string id;
    std::string owned_by;
    std::int64_t created = 0;  // Unix time
};

// GET /v1/status, copied into plain structs (the wire type is moed::server_status in moed's
// common/status.h; fields mean the same). Counters are totals since start, sizes bytes.
struct daemon_latency {
    std::uint64_t count = 0;
    double p50_us = 0.0;
    double p90_us = 0.0;
    double p99_us = 0.0;
    double max_us = 0.0;
};

struct daemon_tier {
    std::string name;  // "host", "nvme", "gpu"
    std::uint64_t capacity_bytes = 0;
    std::uint64_t capacity_experts = 0;
    std::uint64_t resident_bytes = 0;
    std::uint64_t resident_experts = 0;
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;
    std::uint64_t evictions = 0;
    std::uint64_t bytes_read = 0;
    std::uint64_t read_errors = 0;
    double read_seconds = 0.0;
    double read_bytes_per_s = 0.0;
    daemon_latency load_latency;  // request -> ready, per expert
};

// The prefetch pipeline: predictions, what they brought in time, what they wasted.
struct daemon_prefetch {
    std::uint64_t requested = 0;       // prefetch requests received
    std::uint64_t issued = 0;          // loads they started
    std::uint64_t cancelled = 0;       // dropped before reading (stale or superseded)
    std::uint64_t hits = 0;            // experts ready before they were needed
    std::uint64_t late = 0;            // still loading when needed
    std::uint64_t wasted = 0;          // prefetched and evicted unused
    std::uint64_t wasted_bytes = 0;
    std::uint64_t demand_misses = 0;   // reads started only when needed
    double hit_rate = 0.0;             // hits / (hits + late + demand_misses)
    std::uint64_t inflight_bytes = 0;
    std::uint64_t inflight_bytes_max = 0;
    std::uint64_t inflight_bytes_limit = 0;
    std::uint64_t io_wait_ns = 0;      // time compute waited for expert reads
    std::uint64_t tokens = 0;
    double io_wait_ns_per_token = 0.0;
    std::uint64_t routed = 0;          // experts the routers chose
    std::uint64_t predicted_routed = 0;
    double recall = 0.0;               // prediction recall: predicted_routed / routed
};

struct daemon_ring_section {
    std::uint32_t slots = 0;
    std::vector<std::uint32_t> layers;  // layers that load into it
    std::int64_t layer = -1;            // layer of its latest load (-1: none)
    std::uint32_t resident = 0;
};

// The host tier's ring of sections and pinned hot set.
struct daemon_ring {
    bool enabled = false;
    std::uint32_t slots_per_layer = 0;
    std::uint32_t hot_slots = 0;
    std::uint32_t hot_set = 0;
    std::uint32_t hot_resident = 0;
    std::vector<daemon_ring_section> sections;
};

struct daemon_tiers {
    std::string io_mode;  // uring_direct, pread_buffered, ...
    std::uint32_t queue_depth = 0;
    std::uint64_t expert_bytes_total = 0;
    daemon_tier host;
    daemon_tier nvme;
    // Per layer, one character per expert: '#' resident, '+' resident and in use,
    // '~' loading, '.' only on disk.
    std::vector<std::string> layer_residency;
    daemon_prefetch prefetch;
    daemon_ring ring;
};

struct daemon_model {
    std::string id;
    std::string path;
    std::string architecture;
    std::uint32_t n_layer = 0;
    std::uint32_t n_expert = 0;
    std::uint32_t n_expert_used = 0;
    std::int64_t n_ctx = 0;
    std::int64_t n_vocab = 0;
    std::uint64_t file_bytes = 0;
    std::uint64_t dense_bytes = 0;
    std::uint64_t expert_bytes = 0;
    std::string state;  // "ok", or "broken" while the model file changed (error says why)
    std::string error;
};

// The memory moed holds, by kind (bytes); rss_bytes is the whole process as the kernel counts it.
struct daemon_memory {
    std::string host_budget;           // as configured ("25%", "4.00 GiB"; "" when experts are resident)
    std::uint64_t host_budget_bytes = 0;  // resolved, capped at what holds every expert
    bool host_budget_capped = false;
    std::uint64_t dense_bytes = 0;     // the owned copy of the dense weights
    std::uint64_t experts_bytes = 0;   // every expert, when resident (0 when tiered)
    std::uint64_t host_slab_bytes = 0;
    std::uint64_t host_slab_slots = 0;
    bool host_slab_mlocked = false;
    std::uint64_t kv_cache_bytes = 0;  // allocated
    std::uint64_t kv_cache_used_bytes = 0;
    std::uint64_t scratch_bytes = 0;
    std::uint64_t held_bytes = 0;      // the kinds above together
    std::uint64_t locked_bytes = 0;
    std::uint64_t rss_bytes = 0;
    std::uint64_t rss_peak_bytes = 0;
    std::uint64_t physical_bytes = 0;
};

struct daemon_request {
    std::string id;
    std::string state;  // queued, prefill, decode
    std::int64_t prompt_tokens = 0;
    std::int64_t generated_tokens = 0;
    std::int64_t max_tokens = 0;
    std::string peer;   // "pid=123 uid=1000 gid=1000"
    // Its task profile, as completion_response reports it ("" source: not settled yet).
    std::string profile;
    std::string profile_source;
    double profile_similarity = 0.0;
    std::uint32_t pruned_experts_per_layer = 0;
};

struct daemon_status {
    std::string version;
    double uptime_s = 0.0;
    daemon_model model;
    std::uint32_t threads = 0;
    std::string isa;
    std::uint32_t queue_waiting = 0;
    std::uint32_t queue_capacity = 0;
    std::uint32_t running_sequences = 0;
    std::uint32_t max_sequences = 0;
    std::uint32_t max_batch_tokens = 0;
    std::uint64_t steps_total = 0;
    std::uint64_t requests_total = 0;
    std::uint64_t requests_failed = 0;
    std::uint64_t requests_cancelled = 0;
    std::uint64_t prompt_tokens_total = 0;
    std::uint64_t generated_tokens_total = 0;
    double decode_tokens_per_s = 0.0;
    std::optional<daemon_tiers> tiers;  // absent when every expert is resident
    daemon_memory memory;
    std::vector<daemon_request> requests;
};

// Since 0.2. A run of host slots of one size: the slots of the layers whose experts need that
// many bytes (one class when every layer's experts are alike).
struct daemon_slot_class {
    std::uint64_t slot_bytes = 0;
    std::uint32_t slots = 0;
    std::vector<std::uint32_t> layers;  // whose experts load into these slots
    std::uint32_t resident = 0;         // experts resident in them now
};

// Since 0.2. What GET /v1/status reports beyond daemon_status (which keeps its 0.1 layout).
// Zeros and empty when moed did not report it (an older moed, or every expert resident).
struct daemon_status_extra {
    std::vector<daemon_slot_class> slot_classes;  // of the host tier
    std::uint64_t kv_cache_cells = 0;             // KV positions allocated (sequences x context)
    std::uint64_t kv_cache_cells_used = 0;        // of them, filled by running sequences
};

// Task profiles (GET/POST /v1/profiles, GET/DELETE /v1/profiles/NAME). Names are 1 to 64
// characters of letters, digits, '.', '_' and '-', not starting with '.'.
struct profile_summary {
    std::string name;
    std::string model;           // the served model's name when the profile was made
    std::string model_identity;  // "<architecture>:<hash>" of the model file
    std::uint32_t prompts = 0;   // example prompts it was made from
    std::int64_t tokens = 0;     // their tokens
    std::int64_t created = 0;    // Unix time
    std::string source;          // what the prompts were, as given when it was made
    std::uint32_t n_layer = 0;
    std::uint32_t n_expert = 0;
    std::uint32_t n_expert_used = 0;
};

struct profile_expert {
    std::uint32_t expert = 0;
    double score = 0.0;      // task-conditioned expected selection score (TCESS)
    double selection = 0.0;  // fraction of the task's tokens that chose it
};

struct profile_details {
    profile_summary summary;
    // Per layer, the top experts moed lists (by decreasing score).
    std::vector<std::vector<profile_expert>> layers;
    std::string raw_json;  // moed's body as received
};

struct profile_list {
    std::vector<profile_summary> profiles;  // by name
    // Files in moed's profile directory it could not use (corrupt, another model's), one
    // message each naming the file.
    std::vector<std::string> problems;
};

struct profile_create_request {
    std::string name;
    std::vector<std::string> prompts;  // example prompts of the task (1 to 1024, none empty)
    bool replace = false;              // overwrite a profile of that name
    std::string source;                // optional description ("prompts from c.jsonl")
};

struct client_options {
    std::string socket_path;  // empty: default_socket_path()
    std::chrono::milliseconds connect_timeout{5'000};
    std::chrono::milliseconds read_timeout{600'000};
    // The largest non-streaming response body accepted (a bigger one is a protocol error).
    std::size_t max_response_bytes = std::size_t{64} << 20;
};

class MOED_CLIENT_API client {
public:
    // Connects nowhere yet: each call connects on its own.
    client();
    explicit client(std::string socket_path);  // empty: default_socket_path()
    explicit client(client_options options);

    const std::string& socket_path() const noexcept { return options_.socket_path; }
    const client_options& options() const noexcept { return options_; }

    // A whole completion (POST /v1/completions or /v1/chat/completions, "stream": false).
    client_result<completion_response> complete(const completion_request& request) const;
    // The same with "stream": true: on_text sees each piece as moed sends it; the result has
    // the whole text, the finish reason and the usage when moed sent one.
    client_result<completion_response> stream(const completion_request& request,
                                              const stream_callback& on_text) const;

    // GET /v1/status.
    client_result<daemon_status> status() const;
    // Since 0.2. GET /v1/status, with what daemon_status leaves out in `extra` (one answer,
    // so both describe the same moment). `extra` is set only on success.
    client_result<daemon_status> status(daemon_status_extra& extra) const;
    // GET /v1/models.
    client_result<std::vector<model_info>> models() const;
    // GET /healthz: the "status" moed reports ("ok"), or a plain-text answer trimmed. While
    // moed drains for shutdown it answers 503: an http error.
    client_result<std::string> health() const;

    // Task profiles. create_profile runs every prompt through moed's engine (it may take a
    // while: read_timeout applies to the whole creation); an existing name is an http error
    // 409 unless request.replace. A name that breaks the rules is invalid_argument without
    // contacting moed; an unknown name is an http error 404.
    client_result<profile_list> list_profiles() const;
    client_result<profile_details> show_profile(std::string_view name) const;
    client_result<profile_summary> create_profile(const profile_create_request& request) const;
    client_result<profile_summary> delete_profile(std::string_view name) const;  // only the name is set

    // Raw JSON, for callers with their own JSON library (and the C ABI):
    // GET `target` (e.g. "/v1/status"); the body of a 2xx answer.
    client_result<std::string> get_json(std::string_view target) const;
    // Any method ("GET", "POST", "DELETE") on `target` with a JSON body (may be empty);
    // the body of a 2xx answer.
    client_result<std::string> request_json(std::string_view method, std::string_view target,
                                            std::string_view body = {}) const;
    // An OpenAI-style request object; "messages" selects the chat endpoint. "stream" is
    // set to false; the answer body as received.
    client_result<std::string> complete_json(std::string_view request_json) const;
    // The same request streamed ("stream" set to true).
    client_result<completion_response> stream_json(std::string_view request_json,
                                                   const stream_callback& on_text) const;

private:
    client_options options_;
};

}  // namespace moed
