#include "daemon/api.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "daemon/batch_loop.h"

namespace moed::daemon {

namespace {

using json = nlohmann::json;

// Text the engine produced is valid UTF-8, but a stop string or prompt echoed back may not
// be; replacing bad bytes beats failing the response.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

const char* json_type_name(const json& j) {
    switch (j.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "boolean";
        case json::value_t::string: return "string";
        case json::value_t::array: return "array";
        case json::value_t::object: return "object";
        case json::value_t::number_integer:
        case json::value_t::number_unsigned: return "integer";
        case json::value_t::number_float: return "number";
        default: return "value";
    }
}

unexpected wrong_type(std::string_view field, std::string_view expected, const json& got) {
    return make_error(errc::invalid_argument, "{}: expected {}, got {}", field, expected, json_type_name(got));
}

// Depth of brackets outside strings; the parser is not run on input deeper than the limit.
bool depth_within(std::string_view text, std::size_t limit) {
    std::size_t depth = 0;
    bool in_string = false;
    bool escaped = false;
    for (char ch : text) {
        if (in_string) {
            if (escaped) escaped = false;
            else if (ch == '\\') escaped = true;
            else if (ch == '"') in_string = false;
            continue;
        }
        if (ch == '"') in_string = true;
        else if (ch == '[' || ch == '{') {
            if (++depth > limit) return false;
        } else if ((ch == ']' || ch == '}') && depth > 0) {
            --depth;
        }
    }
    return true;
}

// Reads an optional field; `present` false when absent or null (OpenAI clients send null
// for "not set").
const json* field(const json& obj, const char* name) {
    auto it = obj.find(name);
    if (it == obj.end() || it->is_null()) return nullptr;
    return &*it;
}

result<std::int64_t> get_integer(const json& j, std::string_view name, std::int64_t min, std::int64_t max) {
    std::int64_t v = 0;
    if (j.is_number_unsigned()) {
        const auto u = j.get<std::uint64_t>();
        if (u > static_cast<std::uint64_t>(max))
            return make_error(errc::invalid_argument, "{}: {} is out of range [{}, {}]", name, u, min, max);
        v = static_cast<std::int64_t>(u);
    } else if (j.is_number_integer()) {
        v = j.get<std::int64_t>();
    } else {
        return wrong_type(name, "an integer", j);
    }
    if (v < min || v > max) return make_error(errc::invalid_argument, "{}: {} is out of range [{}, {}]", name, v, min, max);
    return v;
}

result<float> get_number(const json& j, std::string_view name) {
    if (!j.is_number()) return wrong_type(name, "a number", j);
    const double v = j.get<double>();
    if (!std::isfinite(v) || std::fabs(v) > std::numeric_limits<float>::max())
        return make_error(errc::invalid_argument, "{}: {} is out of range", name, v);
    return static_cast<float>(v);
}

result<bool> get_bool(const json& j, std::string_view name) {
    if (!j.is_boolean()) return wrong_type(name, "a boolean", j);
    return j.get<bool>();
}

// Chat content: a string, or an array of parts of which only {"type":"text"} is understood.
result<std::string> get_content(const json& j, std::string_view name) {
    if (j.is_null()) return std::string();
    if (j.is_string()) return j.get<std::string>();
    if (!j.is_array()) return wrong_type(name, "a string or an array of text parts", j);
    std::string text;
    for (std::size_t i = 0; i < j.size(); ++i) {
        const std::string part_name = fmt::format("{}[{}]", name, i);
        const json& part = j[i];
        if (!part.is_object()) return wrong_type(part_name, "an object", part);
        const json* type = field(part, "type");
        if (!type || !type->is_string() || type->get<std::string>() != "text")
            return make_error(errc::invalid_argument, "{}.type: only \"text\" parts are supported", part_name);
        const json* t = field(part, "text");
        if (!t || !t->is_string()) return wrong_type(part_name + ".text", "a string", t ? *t : json());
        text += t->get<std::string>();
    }
    return text;
}

// OpenAI fields moed does not implement. Each is refused with a 400 naming it rather than
// ignored: a client that sends one expects its effect (a tool call, audio, a suffix).
// `n` and `best_of` are refused only above 1, and `echo` only when true: the defaults ask
// for what moed does anyway.
constexpr std::string_view unsupported_fields[] = {
    "tools",       "tool_choice", "parallel_tool_calls", "functions",          "function_call",
    "audio",       "modalities",  "prediction",          "web_search_options", "suffix",
    "verbosity",
};
// Fields that change nothing in the output: accepted and ignored (listed in README).
//   user, safety_identifier, prompt_cache_key: identify the caller for OpenAI's abuse
//     monitoring and caching; metadata, store: OpenAI's stored completions;
//   service_tier: OpenAI's processing tier.

result<void> refuse_unsupported(const json& doc, api_kind kind) {
    for (std::string_view name : unsupported_fields) {
        if (field(doc, std::string(name).c_str()))
            return make_error(errc::invalid_argument, "{}: not supported by moed", name);
    }
    if (const json* v = field(doc, "n"); v && !(v->is_number_integer() && v->get<std::int64_t>() == 1))
        return make_error(errc::invalid_argument, "n: not supported by moed above 1 (one choice per request)");
    if (kind == api_kind::completion) {
        if (const json* v = field(doc, "best_of"); v && !(v->is_number_integer() && v->get<std::int64_t>() == 1))
            return make_error(errc::invalid_argument, "best_of: not supported by moed above 1");
        if (const json* v = field(doc, "echo"); v && !(v->is_boolean() && !v->get<bool>()))
            return make_error(errc::invalid_argument, "echo: not supported by moed");
    }
    return {};
}

// logit_bias: {"TOKEN_ID": bias, ...} with ids as decimal strings (JSON keys), as OpenAI.
result<std::vector<engine::logit_bias_entry>> get_logit_bias(const json& j) {
    if (!j.is_object()) return wrong_type("logit_bias", "an object of token ids to numbers", j);
    if (j.size() > engine::max_logit_bias_entries)
        return make_error(errc::invalid_argument, "logit_bias: {} entries is more than the {} allowed", j.size(),
                          engine::max_logit_bias_entries);
    std::vector<engine::logit_bias_entry> out;
    out.reserve(j.size());
    for (const auto& [key, value] : j.items()) {
        std::int64_t id = 0;
        const bool digits = !key.empty() && key.size() <= 9 &&
                            std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
        if (!digits)
            return make_error(errc::invalid_argument, "logit_bias: key {:?} is not a token id (a decimal integer)", key);
        for (char c : key) id = id * 10 + (c - '0');
        const std::string name = fmt::format("logit_bias.{}", key);
        auto bias = get_number(value, name);
        if (!bias) return unexpected(std::move(bias).error());
        if (!(*bias >= -engine::logit_bias_max && *bias <= engine::logit_bias_max))
            return make_error(errc::invalid_argument, "{}: {} is out of range [-100, 100]", name, *bias);
        out.push_back({static_cast<engine::token_id>(id), *bias});
    }
    return out;
}

// "response_format" (see generation_request::json). Errors name the field:
// "response_format.json_schema.schema.properties.x: keyword 'pattern' is not supported".
result<std::shared_ptr<const engine::json_grammar>> parse_response_format(const json& v) {
    using grammar_ptr = std::shared_ptr<const engine::json_grammar>;
    if (!v.is_object()) return wrong_type("response_format", "an object", v);
    const json* type = field(v, "type");
    if (!type) return make_error(errc::invalid_argument, "response_format.type: required");
    if (!type->is_string()) return wrong_type("response_format.type", "a string", *type);
    const std::string& t = type->get_ref<const std::string&>();
    for (const auto& [key, value] : v.items()) {
        if (key != "type" && !(key == "json_schema" && t == "json_schema"))
            return make_error(errc::invalid_argument, "response_format.{}: unknown field for type '{}'", key, t);
    }
    if (t == "text") return grammar_ptr();
    if (t == "json_object") return grammar_ptr(std::make_shared<engine::json_grammar>(engine::json_grammar::any_object()));
    if (t != "json_schema")
        return make_error(errc::invalid_argument,
                          "response_format.type: '{}' is not one of text, json_object, json_schema", t);
    const json* js = field(v, "json_schema");
    if (!js) return make_error(errc::invalid_argument, "response_format.json_schema: required");
    if (!js->is_object()) return wrong_type("response_format.json_schema", "an object", *js);
    for (const auto& [key, value] : js->items()) {
        if (key != "name" && key != "schema" && key != "strict" && key != "description")
            return make_error(errc::invalid_argument,
                              "response_format.json_schema.{}: unknown field (it takes name, schema, strict, "
                              "description)",
                              key);
    }
    const json* name = field(*js, "name");
    if (!name) return make_error(errc::invalid_argument, "response_format.json_schema.name: required");
    if (!name->is_string()) return wrong_type("response_format.json_schema.name", "a string", *name);
    // OpenAI's rule for the name: letters, digits, '_' and '-', at most 64.
    const std::string& n = name->get_ref<const std::string&>();
    if (n.empty() || n.size() > 64 || !std::all_of(n.begin(), n.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
        }))
        return make_error(errc::invalid_argument,
                          "response_format.json_schema.name: 1 to 64 letters, digits, '_' or '-'");
    if (const json* strict = field(*js, "strict"); strict && !strict->is_boolean())
        return wrong_type("response_format.json_schema.strict", "a boolean", *strict);
    if (const json* d = field(*js, "description"); d && !d->is_string())
        return wrong_type("response_format.json_schema.description", "a string", *d);
    const json* schema = field(*js, "schema");
    if (!schema) return grammar_ptr(std::make_shared<engine::json_grammar>(engine::json_grammar::any_object()));
    auto g = engine::json_grammar::from_schema(*schema);
    if (!g) return make_error(errc::invalid_argument, "response_format.json_schema.{}", g.error().message);
    return grammar_ptr(std::make_shared<engine::json_grammar>(std::move(*g)));
}

}  // namespace

result<generation_request> parse_generation_request(api_kind kind, std::string_view body, const api_limits& limits) {
    if (!depth_within(body, max_json_depth))
        return make_error(errc::invalid_argument, "malformed JSON: nested deeper than {} levels", max_json_depth);
    json doc;
    try {
        doc = json::parse(body);
    } catch (const json::parse_error& e) {
        // e.what() carries the byte position and the reason ("syntax error while parsing
        // object key - invalid literal; last read: '{x'; expected string literal").
        return make_error(errc::invalid_argument, "malformed JSON: {}", e.what());
    } catch (const std::exception& e) {
        return make_error(errc::invalid_argument, "malformed JSON: {}", e.what());
    }
    if (!doc.is_object()) return wrong_type("request body", "a JSON object", doc);

    if (auto refused = refuse_unsupported(doc, kind); !refused) return unexpected(std::move(refused).error());

    generation_request req;
    req.kind = kind;
    if (const json* m = field(doc, "model")) {
        if (!m->is_string()) return wrong_type("model", "a string", *m);
        req.model = m->get<std::string>();
    }

    if (kind == api_kind::completion) {
        const json* p = field(doc, "prompt");
        if (!p) return make_error(errc::invalid_argument, "prompt: required");
        if (p->is_string()) {
            req.prompt = p->get<std::string>();
        } else if (p->is_array() && p->size() == 1 && (*p)[0].is_string()) {
            req.prompt = (*p)[0].get<std::string>();
        } else if (p->is_array()) {
            return make_error(errc::invalid_argument, "prompt: expected a string or an array of one string, got an "
                                                      "array of {} elements",
                              p->size());
        } else {
            return wrong_type("prompt", "a string or an array of one string", *p);
        }
    } else {
        const json* msgs = field(doc, "messages");
        if (!msgs) return make_error(errc::invalid_argument, "messages: required");
        if (!msgs->is_array()) return wrong_type("messages", "an array", *msgs);
        if (msgs->empty()) return make_error(errc::invalid_argument, "messages: must not be empty");
        if (msgs->size() > max_chat_messages)
            return make_error(errc::invalid_argument, "messages: {} messages is more than the {} allowed", msgs->size(),
                              max_chat_messages);
        for (std::size_t i = 0; i < msgs->size(); ++i) {
            const json& m = (*msgs)[i];
            const std::string name = fmt::format("messages[{}]", i);
            if (!m.is_object()) return wrong_type(name, "an object", m);
            const json* role = field(m, "role");
            if (!role) return make_error(errc::invalid_argument, "{}.role: required", name);
            if (!role->is_string()) return wrong_type(name + ".role", "a string", *role);
            auto content = get_content(m.contains("content") ? m["content"] : json(), name + ".content");
            if (!content) return unexpected(std::move(content).error());
            // OpenAI's newer name for the system role (o1 and later); templates know "system".
            std::string role_name = role->get<std::string>();
            if (role_name == "developer") role_name = "system";
            req.messages.push_back({std::move(role_name), std::move(*content)});
        }
    }

    if (kind == api_kind::chat) {
        if (const json* v = field(doc, "reasoning_effort")) {
            if (!v->is_string()) return wrong_type("reasoning_effort", "a string", *v);
            const std::string effort = v->get<std::string>();
            if (effort != "low" && effort != "medium" && effort != "high")
                return make_error(errc::invalid_argument, "reasoning_effort: {:?} is not one of low, medium, high",
                                  effort);
            req.chat.reasoning_effort = effort;
        }
        if (const json* v = field(doc, "chat_template_kwargs")) {
            if (!v->is_object()) return wrong_type("chat_template_kwargs", "an object", *v);
            // moed's templates read only enable_thinking; other keys have no effect.
            if (const json* t = field(*v, "enable_thinking")) {
                auto b = get_bool(*t, "chat_template_kwargs.enable_thinking");
                if (!b) return unexpected(std::move(b).error());
                req.chat.enable_thinking = *b;
            }
        }
        if (const json* v = field(doc, "reasoning_format")) {
            if (!v->is_string()) return wrong_type("reasoning_format", "a string", *v);
            const std::string format = v->get<std::string>();
            if (format != "none" && format != "auto" && format != "deepseek")
                return make_error(errc::invalid_argument, "reasoning_format: {:?} is not one of none, auto, deepseek",
                                  format);
            req.split_reasoning = format != "none";
        }
    }

    if (const json* v = field(doc, "max_tokens")) {
        auto n = get_integer(*v, "max_tokens", 1, limits.max_tokens);
        if (!n) return unexpected(std::move(n).error());
        req.max_tokens = static_cast<std::int32_t>(*n);
    } else if (const json* c = field(doc, "max_completion_tokens")) {  // the newer OpenAI name
        auto n = get_integer(*c, "max_completion_tokens", 1, limits.max_tokens);
        if (!n) return unexpected(std::move(n).error());
        req.max_tokens = static_cast<std::int32_t>(*n);
    }

    // Sampling: OpenAI's default temperature is 1; top_k, top_p and min_p default to the
    // sampler's (llama.cpp's) values.
    req.sampling.temperature = 1.0f;
    if (const json* v = field(doc, "temperature")) {
        auto t = get_number(*v, "temperature");
        if (!t) return unexpected(std::move(t).error());
        req.sampling.temperature = *t;
    }
    if (const json* v = field(doc, "top_p")) {
        auto t = get_number(*v, "top_p");
        if (!t) return unexpected(std::move(t).error());
        req.sampling.top_p = *t;
    }
    if (const json* v = field(doc, "min_p")) {
        auto t = get_number(*v, "min_p");
        if (!t) return unexpected(std::move(t).error());
        req.sampling.min_p = *t;
    }
    if (const json* v = field(doc, "repeat_penalty")) {
        auto t = get_number(*v, "repeat_penalty");
        if (!t) return unexpected(std::move(t).error());
        req.sampling.repeat_penalty = *t;
    }
    if (const json* v = field(doc, "top_k")) {
        auto k = get_integer(*v, "top_k", 0, std::numeric_limits<std::int32_t>::max());
        if (!k) return unexpected(std::move(k).error());
        req.sampling.top_k = static_cast<std::int32_t>(*k);
    }
    if (const json* v = field(doc, "seed")) {
        if (v->is_number_unsigned()) {
            req.sampling.seed = v->get<std::uint64_t>();
            req.seed_given = true;
        } else if (v->is_number_integer()) {
            // Negative seeds (-1 in llama.cpp) mean "random": seed_given stays false.
            const auto s = v->get<std::int64_t>();
            if (s >= 0) {
                req.sampling.seed = static_cast<std::uint64_t>(s);
                req.seed_given = true;
            }
        } else {
            return wrong_type("seed", "an integer", *v);
        }
    }
    if (const json* v = field(doc, "presence_penalty")) {
        auto t = get_number(*v, "presence_penalty");
        if (!t) return unexpected(std::move(t).error());
        req.sampling.presence_penalty = *t;
    }
    if (const json* v = field(doc, "frequency_penalty")) {
        auto t = get_number(*v, "frequency_penalty");
        if (!t) return unexpected(std::move(t).error());
        req.sampling.frequency_penalty = *t;
    }
    if (const json* v = field(doc, "logit_bias")) {
        auto bias = get_logit_bias(*v);
        if (!bias) return unexpected(std::move(bias).error());
        req.sampling.logit_bias = std::move(*bias);
    }
    if (auto r = req.sampling.validate(); !r) return unexpected(std::move(r).error());

    if (const json* v = field(doc, "stop")) {
        if (v->is_string()) {
            req.stop.push_back(v->get<std::string>());
        } else if (v->is_array()) {
            for (std::size_t i = 0; i < v->size(); ++i) {
                if (!(*v)[i].is_string()) return wrong_type(fmt::format("stop[{}]", i), "a string", (*v)[i]);
                req.stop.push_back((*v)[i].get<std::string>());
            }
        } else {
            return wrong_type("stop", "a string or an array of strings", *v);
        }
        if (req.stop.size() > limits.max_stop_strings)
            return make_error(errc::invalid_argument, "stop: {} strings is more than the {} allowed", req.stop.size(),
                              limits.max_stop_strings);
        for (std::size_t i = 0; i < req.stop.size(); ++i) {
            if (req.stop[i].empty()) return make_error(errc::invalid_argument, "stop[{}]: must not be empty", i);
            if (req.stop[i].size() > max_stop_string_bytes)
                return make_error(errc::invalid_argument, "stop[{}]: {} bytes is longer than the {} allowed", i,
                                  req.stop[i].size(), max_stop_string_bytes);
        }
    }
    if (const json* v = field(doc, "stream")) {
        auto b = get_bool(*v, "stream");
        if (!b) return unexpected(std::move(b).error());
        req.stream = *b;
    }
    if (const json* v = field(doc, "stream_options")) {
        if (!v->is_object()) return wrong_type("stream_options", "an object", *v);
        if (!req.stream) return make_error(errc::invalid_argument, "stream_options: only allowed when stream is true");
        for (const auto& [key, value] : v->items()) {
            if (key != "include_usage" && key != "include_obfuscation")
                return make_error(errc::invalid_argument, "stream_options.{}: not supported (moed takes include_usage)",
                                  key);
        }
        if (const json* u = field(*v, "include_usage")) {
            auto b = get_bool(*u, "stream_options.include_usage");
            if (!b) return unexpected(std::move(b).error());
            req.include_usage = *b;
        }
    }
    if (kind == api_kind::chat) {
        bool wanted = false;
        if (const json* v = field(doc, "logprobs")) {
            auto b = get_bool(*v, "logprobs");
            if (!b) return unexpected(std::move(b).error());
            wanted = *b;
        }
        if (const json* v = field(doc, "top_logprobs")) {
            auto n = get_integer(*v, "top_logprobs", 0, max_top_logprobs_chat);
            if (!n) return unexpected(std::move(n).error());
            if (!wanted) return make_error(errc::invalid_argument, "top_logprobs: needs \"logprobs\": true");
            req.logprobs = static_cast<std::uint32_t>(*n);
        } else if (wanted) {
            req.logprobs = 0;
        }
    } else if (const json* v = field(doc, "logprobs")) {
        auto n = get_integer(*v, "logprobs", 0, max_top_logprobs_completion);
        if (!n) return unexpected(std::move(n).error());
        req.logprobs = static_cast<std::uint32_t>(*n);
    }
    if (const json* v = field(doc, "ignore_eos")) {
        auto b = get_bool(*v, "ignore_eos");
        if (!b) return unexpected(std::move(b).error());
        req.ignore_eos = *b;
    }
    if (const json* v = field(doc, "profile")) {
        if (!v->is_string()) return wrong_type("profile", "a string", *v);
        req.profile = v->get<std::string>();
        if (auto ok = scheduler::check_profile_name(req.profile); !ok)
            return make_error(errc::invalid_argument, "profile: {}", ok.error().message);
    }
    if (const json* v = field(doc, "prune")) {
        if (!v->is_object()) return wrong_type("prune", "an object", *v);
        for (const auto& [key, value] : v->items()) {
            if (key != "experts_per_layer")
                return make_error(errc::invalid_argument, "prune.{}: unknown field (prune takes experts_per_layer)", key);
        }
        const json* k = field(*v, "experts_per_layer");
        if (!k) return make_error(errc::invalid_argument, "prune.experts_per_layer: required");
        auto n = get_integer(*k, "prune.experts_per_layer", 1, scheduler::max_routing_experts);
        if (!n) return unexpected(std::move(n).error());
        req.prune_experts_per_layer = static_cast<std::uint32_t>(*n);
    }
    if (const json* v = field(doc, "trace_tag")) {
        if (!v->is_string()) return wrong_type("trace_tag", "a string", *v);
        req.trace_tag = v->get<std::string>();
        if (req.trace_tag.size() > max_trace_tag_bytes)
            return make_error(errc::invalid_argument, "trace_tag: {} bytes is longer than the {} allowed",
                              req.trace_tag.size(), max_trace_tag_bytes);
    }
    if (const json* v = field(doc, "response_format")) {
        auto g = parse_response_format(*v);
        if (!g) return unexpected(std::move(g).error());
        req.json = std::move(*g);
    }
    if (const json* v = field(doc, "n")) {
        auto n = get_integer(*v, "n", 1, 1);
        if (!n) return make_error(errc::invalid_argument, "n: only 1 choice per request is supported");
    }
    return req;
}

unsigned http_status_for(errc code) noexcept {
    switch (code) {
        case errc::invalid_argument: return 400;
        case errc::not_found: return 404;
        case errc::out_of_memory: return 429;
        case errc::cancelled: return 503;
        case errc::unsupported: return 501;
        case errc::no_space: return 507;
        default: return 500;
    }
}

const char* error_type_for(unsigned status) noexcept {
    switch (status) {
        case 400: return "invalid_request_error";
        case 404: return "not_found_error";
        case 405: return "method_not_allowed_error";
        case 409: return "conflict_error";
        case 408: return "timeout_error";
        case 413: return "request_too_large_error";
        case 429: return "rate_limit_error";
        case 431: return "request_too_large_error";
        case 501: return "not_supported_error";
        case 503: return "unavailable_error";
        case 507: return "insufficient_storage_error";
        default: return "server_error";
    }
}

std::string error_code_for(unsigned status, std::string_view message) {
    switch (status) {
        case 400: {
            const std::string param = error_param_of(message);
            if (param.empty()) return "invalid_request";
            const std::string_view rest = message.substr(param.size() + 2);
            if (rest.starts_with("expected ")) return "invalid_type";
            if (rest == "required") return "missing_required_parameter";
            if (rest.starts_with("not supported")) return "unsupported_parameter";
            return "invalid_value";
        }
        case 401: return "invalid_api_key";
        case 404: return "not_found";
        case 405: return "method_not_allowed";
        case 408: return "timeout";
        case 409: return "conflict";
        case 413:
        case 431: return "request_too_large";
        case 429: return "busy";
        case 501: return "not_implemented";
        case 503: return "unavailable";
        case 507: return "no_space";
        default: return "internal_error";
    }
}

std::string error_param_of(std::string_view message) {
    const std::size_t colon = message.find(": ");
    if (colon == std::string_view::npos || colon == 0) return {};
    const std::string_view head = message.substr(0, colon);
    const auto is_path_char = [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
               c == '[' || c == ']';
    };
    const char first = head.front();
    if (!((first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z'))) return {};
    if (!std::all_of(head.begin(), head.end(), is_path_char)) return {};
    return std::string(head);
}

std::string error_body(unsigned status, std::string_view message, std::string_view code, std::string_view param) {
    const std::string p = param.empty() ? error_param_of(message) : std::string(param);
    return dump(json{{"error",
                      {{"type", error_type_for(status)},
                       {"message", message},
                       {"param", p.empty() ? json(nullptr) : json(p)},
                       {"code", code.empty() ? error_code_for(status, message) : std::string(code)},
                       {"status", status}}}});
}

namespace {

json usage_json(const usage_counts& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json base_object(const response_meta& meta, bool chunk) {
    const char* object = meta.kind == api_kind::chat ? (chunk ? "chat.completion.chunk" : "chat.completion")
                                                     : "text_completion";
    return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

json finish_json(std::string_view reason) { return reason.empty() ? json(nullptr) : json(reason); }

// A token's bytes as the JSON array of numbers OpenAI's "bytes" is.
json bytes_json(std::string_view bytes) {
    json out = json::array();
    for (char c : bytes) out.push_back(static_cast<unsigned char>(c));
    return out;
}

json logprobs_object(api_kind kind, const std::vector<logprob_entry>& entries, std::size_t text_offset) {
    if (kind == api_kind::chat) {
        json content = json::array();
        for (const logprob_entry& e : entries) {
            json top = json::array();
            for (const auto& a : e.top)
                top.push_back({{"token", a.bytes}, {"logprob", a.logprob}, {"bytes", bytes_json(a.bytes)}});
            content.push_back({{"token", e.bytes},
                               {"logprob", e.logprob},
                               {"bytes", bytes_json(e.bytes)},
                               {"top_logprobs", std::move(top)}});
        }
        return {{"content", std::move(content)}, {"refusal", nullptr}};
    }
    json tokens = json::array();
    json token_logprobs = json::array();
    json top_logprobs = json::array();
    json offsets = json::array();
    for (const logprob_entry& e : entries) {
        tokens.push_back(e.bytes);
        token_logprobs.push_back(e.logprob);
        // Two alternatives with the same text (rare: different ids, same bytes) keep the first.
        json top = json::object();
        for (const auto& a : e.top)
            if (!top.contains(a.bytes)) top[a.bytes] = a.logprob;
        top_logprobs.push_back(std::move(top));
        offsets.push_back(text_offset);
        text_offset += e.bytes.size();
    }
    return {{"tokens", std::move(tokens)},
            {"token_logprobs", std::move(token_logprobs)},
            {"top_logprobs", std::move(top_logprobs)},
            {"text_offset", std::move(offsets)}};
}

// choices[0].logprobs of a response or chunk: null unless the request asked.
json choice_logprobs(const response_meta& meta, const std::vector<logprob_entry>* entries, std::size_t text_offset) {
    if (!meta.logprobs) return nullptr;
    static const std::vector<logprob_entry> none;
    return logprobs_object(meta.kind, entries ? *entries : none, text_offset);
}

json moed_json(const profile_report* r) {
    if (r == nullptr) {
        return {{"profile", nullptr}, {"profile_similarity", 0.0}, {"profile_source", "none"}, {"pruned", nullptr}};
    }
    json j{{"profile", r->profile.empty() ? json(nullptr) : json(r->profile)},
           {"profile_similarity", r->similarity},
           {"profile_source", r->source},
           {"pruned", nullptr}};
    if (r->pruned_experts_per_layer != 0)
        j["pruned"] = {{"experts_per_layer", r->pruned_experts_per_layer}, {"profile", r->profile}};
    return j;
}

}  // namespace

std::string moed_object_json(const profile_report* report) { return dump(moed_json(report)); }

std::string logprobs_json(api_kind kind, const std::vector<logprob_entry>& entries, std::size_t text_offset_start) {
    return dump(logprobs_object(kind, entries, text_offset_start));
}

std::string completion_body(const response_meta& meta, std::string_view text, std::string_view finish_reason,
                            const usage_counts& usage, const profile_report* report, std::string_view reasoning,
                            const std::vector<logprob_entry>* logprobs) {
    json j = base_object(meta, false);
    json choice{{"index", 0}, {"finish_reason", finish_json(finish_reason)}};
    if (meta.kind == api_kind::chat) {
        choice["message"] = {{"role", "assistant"}, {"content", text}};
        if (!reasoning.empty()) choice["message"]["reasoning_content"] = reasoning;
    } else {
        choice["text"] = text;
    }
    choice["logprobs"] = choice_logprobs(meta, logprobs, 0);
    j["choices"] = json::array({std::move(choice)});
    j["usage"] = usage_json(usage);
    j["moed"] = moed_json(report);
    return dump(j);
}

std::string stream_event(const response_meta& meta, std::string_view piece, bool first, const profile_report* moed,
                         bool with_moed, reply_part part, const std::vector<logprob_entry>* logprobs,
                         std::size_t text_offset) {
    json j = base_object(meta, true);
    json choice{{"index", 0}, {"finish_reason", nullptr}};
    if (meta.kind == api_kind::chat) {
        json delta{{part == reply_part::reasoning ? "reasoning_content" : "content", piece}};
        if (first) delta["role"] = "assistant";
        choice["delta"] = std::move(delta);
    } else {
        choice["text"] = piece;
    }
    choice["logprobs"] = choice_logprobs(meta, logprobs, text_offset);
    j["choices"] = json::array({std::move(choice)});
    // OpenAI's shape: with include_usage every chunk has "usage", null until the last.
    if (meta.include_usage) j["usage"] = nullptr;
    if (with_moed) j["moed"] = moed_json(moed);
    return "data: " + dump(j) + "\n\n";
}

std::string stream_final_events(const response_meta& meta, std::string_view finish_reason, const usage_counts& usage,
                                const profile_report* moed, bool with_moed, const std::vector<logprob_entry>* logprobs,
                                std::size_t text_offset) {
    json j = base_object(meta, true);
    json choice{{"index", 0}, {"finish_reason", finish_json(finish_reason)}};
    if (meta.kind == api_kind::chat) {
        choice["delta"] = json::object();
    } else {
        choice["text"] = "";
    }
    choice["logprobs"] = choice_logprobs(meta, logprobs, text_offset);
    j["choices"] = json::array({std::move(choice)});
    if (meta.include_usage) j["usage"] = nullptr;
    if (with_moed) j["moed"] = moed_json(moed);
    std::string out = "data: " + dump(j) + "\n\n";
    if (meta.include_usage) {
        json u = base_object(meta, true);
        u["choices"] = json::array();
        u["usage"] = usage_json(usage);
        out += "data: " + dump(u) + "\n\n";
    }
    return out + "data: [DONE]\n\n";
}

std::string stream_error_events(unsigned status, std::string_view message) {
    return "data: " + error_body(status, message) + "\n\ndata: [DONE]\n\n";
}

namespace {
json model_object(std::string_view model_id, std::int64_t created) {
    return {{"id", model_id}, {"object", "model"}, {"created", created}, {"owned_by", "moed"}};
}
}  // namespace

std::string models_body(std::string_view model_id, std::int64_t created) {
    return dump(json{{"object", "list"}, {"data", json::array({model_object(model_id, created)})}});
}

std::string model_body(std::string_view model_id, std::int64_t created) {
    return dump(model_object(model_id, created));
}

result<profile_create_request> parse_profile_create(std::string_view body) {
    if (!depth_within(body, max_json_depth))
        return make_error(errc::invalid_argument, "malformed JSON: nested deeper than {} levels", max_json_depth);
    json doc;
    try {
        doc = json::parse(body);
    } catch (const std::exception& e) {
        return make_error(errc::invalid_argument, "malformed JSON: {}", e.what());
    }
    if (!doc.is_object()) return wrong_type("request body", "a JSON object", doc);
    profile_create_request req;
    const json* name = field(doc, "name");
    if (!name) return make_error(errc::invalid_argument, "name: required");
    if (!name->is_string()) return wrong_type("name", "a string", *name);
    req.name = name->get<std::string>();
    if (auto ok = scheduler::check_profile_name(req.name); !ok)
        return make_error(errc::invalid_argument, "name: {}", ok.error().message);
    const json* prompts = field(doc, "prompts");
    if (!prompts) return make_error(errc::invalid_argument, "prompts: required");
    if (!prompts->is_array()) return wrong_type("prompts", "an array of strings", *prompts);
    if (prompts->empty()) return make_error(errc::invalid_argument, "prompts: must not be empty");
    if (prompts->size() > max_profile_prompts)
        return make_error(errc::invalid_argument, "prompts: {} prompts is more than the {} allowed", prompts->size(),
                          max_profile_prompts);
    for (std::size_t i = 0; i < prompts->size(); ++i) {
        const json& p = (*prompts)[i];
        if (!p.is_string()) return wrong_type(fmt::format("prompts[{}]", i), "a string", p);
        if (p.get_ref<const std::string&>().empty())
            return make_error(errc::invalid_argument, "prompts[{}]: must not be empty", i);
        req.prompts.push_back(p.get<std::string>());
    }
    if (const json* v = field(doc, "replace")) {
        auto b = get_bool(*v, "replace");
        if (!b) return unexpected(std::move(b).error());
        req.replace = *b;
    }
    if (const json* v = field(doc, "source")) {
        if (!v->is_string()) return wrong_type("source", "a string", *v);
        req.source = v->get<std::string>();
        if (req.source.size() > max_profile_source_bytes)
            return make_error(errc::invalid_argument, "source: {} bytes is more than the {} allowed", req.source.size(),
                              max_profile_source_bytes);
    }
    for (const auto& [key, value] : doc.items()) {
        if (key != "name" && key != "prompts" && key != "replace" && key != "source")
            return make_error(errc::invalid_argument, "{}: unknown field (a profile takes name, prompts, replace, source)",
                              key);
    }
    return req;
}

namespace {

json profile_summary(const scheduler::profile& p) {
    return {{"object", "profile"},
            {"name", p.name},
            {"model", p.model_name},
            {"model_identity", p.model_identity},
            {"prompts", p.n_prompts},
            {"tokens", p.n_tokens},
            {"created", p.created_unix},
            {"source", p.source},
            {"n_layer", p.shape.n_layer},
            {"n_expert", p.shape.n_expert},
            {"n_expert_used", p.shape.n_expert_used}};
}

}  // namespace

std::string profile_summary_body(const scheduler::profile& p) { return dump(profile_summary(p)); }

std::string profiles_list_body(const std::vector<std::shared_ptr<const scheduler::profile>>& profiles,
                               const std::vector<std::string>& problems) {
    json data = json::array();
    for (const auto& p : profiles) data.push_back(profile_summary(*p));
    return dump(json{{"object", "list"}, {"data", std::move(data)}, {"problems", problems}});
}

std::string profile_detail_body(const scheduler::profile& p, std::uint32_t top) {
    json j = profile_summary(p);
    json layers = json::array();
    for (std::uint32_t l = 0; l < p.shape.n_layer; ++l) {
        json experts = json::array();
        const std::size_t base = static_cast<std::size_t>(l) * p.shape.n_expert;
        for (std::uint32_t e : p.top_experts(l, top))
            experts.push_back({{"expert", e}, {"score", p.score[base + e]}, {"selection", p.selection[base + e]}});
        layers.push_back({{"layer", l}, {"experts", std::move(experts)}});
    }
    j["layers"] = std::move(layers);
    return dump(j);
}

std::string profile_deleted_body(std::string_view name) {
    return dump(json{{"object", "profile"}, {"name", name}, {"deleted", true}});
}

}  // namespace moed::daemon
