// The OpenAI-compatible request and response bodies, as pure functions: parsing and
// validating a completion or chat request (every wrong type is an error naming the field and
// the type expected), and building the JSON of responses, stream chunks and errors.
// No I/O and no engine here, so every rule is unit-tested directly.
// Threads: any; nothing is shared.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "daemon/batch_loop.h"
#include "engine/chat_template.h"
#include "engine/json_grammar.h"
#include "engine/sampler.h"

namespace moed::daemon {

// Deeper JSON than this is refused before parsing: no request needs it, and it bounds the
// recursion that building and destroying the parsed tree costs.
inline constexpr std::size_t max_json_depth = 64;
// Messages in one chat request; each becomes prompt text, which the context bounds anyway,
// but this keeps a flood of tiny messages from costing more than the tokens they make.
inline constexpr std::size_t max_chat_messages = 1024;

// A trace tag is stored in the trace file's tag table (scheduler/trace.h allows 256 bytes).
inline constexpr std::size_t max_trace_tag_bytes = 256;

// OpenAI's bounds on the alternatives reported per token: chat's top_logprobs, and the
// completions API's logprobs.
inline constexpr std::uint32_t max_top_logprobs_chat = 20;
inline constexpr std::uint32_t max_top_logprobs_completion = 5;

enum class api_kind : std::uint8_t { completion = 0, chat = 1 };

struct api_limits {
    std::int32_t max_tokens = 4096;          // a request asking for more is refused
    std::int32_t default_max_tokens = 256;   // used when the request gives none
    std::uint32_t max_stop_strings = 8;
};

// A validated generation request. The prompt is still text: tokenizing needs the model.
struct generation_request {
    api_kind kind = api_kind::completion;
    std::string model;                        // as the client named it; empty when absent
    std::string prompt;                       // completion
    std::vector<engine::chat_message> messages;  // chat
    // Chat: what the template reads besides the messages: "reasoning_effort" (gpt-oss: low,
    // medium, high) and "chat_template_kwargs": {"enable_thinking": bool} (as llama-server).
    engine::chat_options chat;
    // Chat: "reasoning_format": "none" leaves the model's reasoning in content, markup and
    // all; "auto" (the default; "deepseek" is a synonym, as in llama-server) moves it to
    // reasoning_content.
    bool split_reasoning = true;
    std::optional<std::int32_t> max_tokens;   // absent: the default, capped by the context
    engine::sampling_params sampling;
    bool seed_given = false;
    std::vector<std::string> stop;
    bool stream = false;
    // stream_options.include_usage: a last chunk with "choices": [] and the usage (and
    // "usage": null in every other chunk); without it a stream carries no usage.
    bool include_usage = false;
    // OpenAI's logprobs: absent when not asked; when asked, how many alternatives each token
    // reports (chat: "logprobs": true with "top_logprobs": 0..20; completions: "logprobs": 0..5).
    std::optional<std::uint32_t> logprobs;
    bool ignore_eos = false;                  // extension (llama.cpp): generate past end-of-text
    // Extensions (task profiles): "profile": NAME, and "prune": {"experts_per_layer": K}.
    // The name's syntax and K >= 1 are checked here; that the profile exists and K fits the
    // model, when the request is prepared.
    std::string profile;
    std::uint32_t prune_experts_per_layer = 0;  // 0: no pruning
    // extension (moed): the label of this request's records in the routing trace, when moed
    // records one (--trace); at most max_trace_tag_bytes of valid UTF-8.
    std::string trace_tag;
    // "response_format": {"type":"text"} (the default), {"type":"json_object"} (the reply is
    // one JSON object), or {"type":"json_schema","json_schema":{"name":NAME,"schema":SCHEMA,
    // "strict":bool,"description":TEXT}} (the reply is a JSON document SCHEMA allows; without
    // "schema", any object). The grammar the reply follows; null for text.
    std::shared_ptr<const engine::json_grammar> json;
};

// Parses a POST body. Errors are errc::invalid_argument with a message such as
// "max_tokens: expected an integer, got string". OpenAI fields moed does not implement
// (tools, n > 1, audio, ...) are refused, naming the field; a few that change nothing in
// the output (user, metadata, store, ...) are accepted and ignored. The "developer" role
// is read as "system". logit_bias token ids are checked against the vocabulary later, by
// whoever knows it.
result<generation_request> parse_generation_request(api_kind kind, std::string_view body, const api_limits& limits);

// The HTTP status and the error "type" for an error code (invalid_argument 400, not_found
// 404, out_of_memory 429, cancelled 503, unsupported 501, anything else 500).
unsigned http_status_for(errc code) noexcept;
const char* error_type_for(unsigned status) noexcept;
// The error "code" string for a status and message when the caller names none: 400 is
// "invalid_type" (a message "FIELD: expected ..."), "missing_required_parameter"
// ("FIELD: required"), "unsupported_parameter" ("FIELD: ... not supported ...") or
// "invalid_value"; 404 "not_found", 429 "busy", 503 "unavailable", and so on by status.
std::string error_code_for(unsigned status, std::string_view message);
// The field an error message names: its start up to ": " when that is a field path
// ("stop[2]", "prune.experts_per_layer", "logit_bias.17"), else empty.
std::string error_param_of(std::string_view message);
// Every error answer's body, as OpenAI's:
//   {"error":{"type":...,"message":...,"param":FIELD|null,"code":CODE,"status":status}}
// `code` empty: error_code_for(status, message); `param` empty: error_param_of(message).
// "status" (moed's) repeats the HTTP status, which an error inside a stream cannot send.
std::string error_body(unsigned status, std::string_view message, std::string_view code = {},
                       std::string_view param = {});

struct usage_counts {
    std::int64_t prompt_tokens = 0;
    std::int64_t completion_tokens = 0;
};

// What every response of one request shares.
struct response_meta {
    api_kind kind = api_kind::completion;
    std::string id;       // "cmpl-..." / "chatcmpl-..."
    std::int64_t created = 0;  // unix seconds
    std::string model;
    bool logprobs = false;       // the request asked for logprobs
    bool include_usage = false;  // stream_options.include_usage
};

// One generated token's log-probability as a response reports it: the token's text (its
// bytes; a token that ends inside a UTF-8 character shows U+FFFD in `text`, and its exact
// bytes in `bytes`) and the alternatives, most likely first.
struct logprob_entry {
    struct alternative {
        std::string bytes;
        float logprob = 0.0f;
    };
    std::string bytes;
    float logprob = 0.0f;
    std::vector<alternative> top;
};

// choices[].logprobs for `entries`: chat {"content":[{token, logprob, bytes, top_logprobs}]};
// completions {"tokens", "token_logprobs", "top_logprobs", "text_offset"}, the offsets
// counted from `text_offset_start` (the bytes of text before these entries).
std::string logprobs_json(api_kind kind, const std::vector<logprob_entry>& entries, std::size_t text_offset_start);

// The moed extension object of a response:
//   {"profile": NAME|null, "profile_similarity": x, "profile_source": "request"|"matched"|"none",
//    "pruned": {"experts_per_layer": K, "profile": NAME}|null}
// `report` null: no profile settled (the job ended before its prefill did).
std::string moed_object_json(const profile_report* report);

// The whole (non-stream) response body, with the top-level "moed" object. Chat: `reasoning`,
// when not empty, is the message's "reasoning_content" beside its "content" (`text`).
// `logprobs` (when meta.logprobs): the entries of every generated token.
std::string completion_body(const response_meta& meta, std::string_view text, std::string_view finish_reason,
                            const usage_counts& usage, const profile_report* report = nullptr,
                            std::string_view reasoning = {}, const std::vector<logprob_entry>* logprobs = nullptr);

// Which part of a chat reply a stream chunk carries.
enum class reply_part : std::uint8_t { content = 0, reasoning = 1 };

// One server-sent event "data: {chunk}\n\n" carrying `piece` (chat: delta.content, or
// delta.reasoning_content for reply_part::reasoning; the first chat chunk also carries role
// "assistant"). With `moed` set, the chunk carries the "moed" object (the stream's first
// chunk does).
// `logprobs` (when meta.logprobs and not null): the chunk's choices[0].logprobs, the
// entries of the tokens generated since the previous chunk; `text_offset` is the number of
// bytes of text the stream sent before them (completions' text_offset).
std::string stream_event(const response_meta& meta, std::string_view piece, bool first,
                         const profile_report* moed = nullptr, bool with_moed = false,
                         reply_part part = reply_part::content, const std::vector<logprob_entry>* logprobs = nullptr,
                         std::size_t text_offset = 0);
// The last chunk: empty text/delta and the finish reason (and the entries of tokens no
// earlier chunk carried); with meta.include_usage, then a chunk with "choices": [] and the
// usage; then "data: [DONE]\n\n". `with_moed`: the "moed" object too (when no earlier chunk
// carried it).
std::string stream_final_events(const response_meta& meta, std::string_view finish_reason, const usage_counts& usage,
                                const profile_report* moed = nullptr, bool with_moed = false,
                                const std::vector<logprob_entry>* logprobs = nullptr, std::size_t text_offset = 0);
// An error after the stream began (headers are sent): an event with the error object, then
// "data: [DONE]\n\n".
std::string stream_error_events(unsigned status, std::string_view message);

// The /v1/models body for one served model.
std::string models_body(std::string_view model_id, std::int64_t created);
// The /v1/models/{id} body: the model object alone.
std::string model_body(std::string_view model_id, std::int64_t created);

// --- Task profiles: /v1/profiles ---
// Prompts in one profile-creation request (each is one prefill-only job).
inline constexpr std::size_t max_profile_prompts = 1024;
inline constexpr std::size_t max_profile_source_bytes = 256;

// POST /v1/profiles: {"name": NAME, "prompts": [TEXT, ...], "replace": bool, "source": TEXT}.
struct profile_create_request {
    std::string name;
    std::vector<std::string> prompts;  // 1..max_profile_prompts, none empty
    bool replace = false;              // overwrite an existing profile of that name
    std::string source;                // optional description; default "api: N prompts"
};
// Errors (invalid_argument) name the field: "prompts[3]: must not be empty".
result<profile_create_request> parse_profile_create(std::string_view body);

// {"object":"profile","name","model","model_identity","prompts","tokens","created","source",
//  "n_layer","n_expert","n_expert_used"}
std::string profile_summary_body(const scheduler::profile& p);
// {"object":"list","data":[summary...],"problems":[message...]} (problems: files not loaded)
std::string profiles_list_body(const std::vector<std::shared_ptr<const scheduler::profile>>& profiles,
                               const std::vector<std::string>& problems);
// The summary plus "layers": [{"layer": l, "experts": [{"expert","score","selection"}...]}],
// the `top` highest-scoring experts of each layer.
std::string profile_detail_body(const scheduler::profile& p, std::uint32_t top);
// {"object":"profile","name":NAME,"deleted":true}
std::string profile_deleted_body(std::string_view name);

}  // namespace moed::daemon
