// Checks the OpenAI-compatible request parsing and response building (daemon/api.h) and the
// Prometheus text (daemon/metrics.h) as pure functions: every field of a completion and a
// chat request, the error for each wrong type naming the field and the type expected,
// limits, the JSON of responses, stream chunks and errors, the status codes of error codes,
// the OpenAI fields (penalties, logit_bias, logprobs, stream_options, the developer role,
// unsupported fields refused by name), error codes as strings with the field as "param",
// and that the metrics text is well-formed exposition format, with request-time histograms
// (cumulative buckets, +Inf, _sum, _count), KV cache gauges and the load-latency summary's
// _sum and _count.
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "daemon/api.h"
#include "daemon/metrics.h"
#include "daemon/request_timing.h"

namespace moed::daemon {
namespace {

using json = nlohmann::json;

result<generation_request> completion(std::string_view body, api_limits limits = {}) {
    return parse_generation_request(api_kind::completion, body, limits);
}
result<generation_request> chat(std::string_view body, api_limits limits = {}) {
    return parse_generation_request(api_kind::chat, body, limits);
}
std::string error_of(const result<generation_request>& r) {
    EXPECT_FALSE(r.has_value());
    if (r) return {};
    EXPECT_EQ(r.error().code, errc::invalid_argument);
    return r.error().message;
}

TEST(Api, CompletionWithEveryField) {
    auto r = completion(R"({"model":"tinymoe","prompt":"Hello","max_tokens":12,"temperature":0.5,"top_p":0.9,
        "top_k":7,"min_p":0.1,"seed":42,"stop":["\n","END"],"stream":true,"ignore_eos":true,"repeat_penalty":1.1,
        "user":"ignored","presence_penalty":0,"n":1,"logprobs":null})");
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(r->kind, api_kind::completion);
    EXPECT_EQ(r->model, "tinymoe");
    EXPECT_EQ(r->prompt, "Hello");
    EXPECT_EQ(r->max_tokens, 12);
    EXPECT_FLOAT_EQ(r->sampling.temperature, 0.5f);
    EXPECT_FLOAT_EQ(r->sampling.top_p, 0.9f);
    EXPECT_EQ(r->sampling.top_k, 7);
    EXPECT_FLOAT_EQ(r->sampling.min_p, 0.1f);
    EXPECT_FLOAT_EQ(r->sampling.repeat_penalty, 1.1f);
    EXPECT_EQ(r->sampling.seed, 42u);
    EXPECT_TRUE(r->seed_given);
    EXPECT_EQ(r->stop, (std::vector<std::string>{"\n", "END"}));
    EXPECT_TRUE(r->stream);
    EXPECT_TRUE(r->ignore_eos);
}

TEST(Api, CompletionDefaults) {
    auto r = completion(R"({"prompt":["only one"]})");
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(r->prompt, "only one");
    EXPECT_TRUE(r->model.empty());
    EXPECT_FALSE(r->max_tokens.has_value());
    EXPECT_FLOAT_EQ(r->sampling.temperature, 1.0f);  // OpenAI's default
    EXPECT_FALSE(r->seed_given);
    EXPECT_FALSE(r->stream);
    EXPECT_TRUE(r->stop.empty());
    auto s = completion(R"({"prompt":"x","stop":"\n\n","seed":-1,"max_completion_tokens":3})");
    ASSERT_TRUE(s.has_value()) << s.error().message;
    EXPECT_EQ(s->stop, (std::vector<std::string>{"\n\n"}));
    EXPECT_FALSE(s->seed_given);
    EXPECT_EQ(s->max_tokens, 3);
}

TEST(Api, ChatMessages) {
    auto r = chat(R"({"messages":[{"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]},
        {"role":"assistant","content":null}]})");
    ASSERT_TRUE(r.has_value()) << r.error().message;
    ASSERT_EQ(r->messages.size(), 3u);
    EXPECT_EQ(r->messages[0].role, "system");
    EXPECT_EQ(r->messages[0].content, "Be brief.");
    EXPECT_EQ(r->messages[1].content, "Hi there");
    EXPECT_EQ(r->messages[2].content, "");
}

TEST(Api, MalformedJsonSaysWhere) {
    const std::string e = error_of(completion(R"({"prompt": "x", )"));
    EXPECT_EQ(e.rfind("malformed JSON: ", 0), 0u) << e;
    EXPECT_NE(e.find("parse error"), std::string::npos) << e;
    EXPECT_EQ(error_of(completion("")).rfind("malformed JSON", 0), 0u);
    EXPECT_EQ(error_of(completion(std::string(100, '[') + std::string(100, ']'))),
              "malformed JSON: nested deeper than 64 levels");
    EXPECT_EQ(error_of(completion("[1,2]")), "request body: expected a JSON object, got array");
}

TEST(Api, WrongTypesNameFieldAndType) {
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","max_tokens":"12"})")), "max_tokens: expected an integer, got string");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","max_tokens":1.5})")), "max_tokens: expected an integer, got number");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","temperature":"hot"})")), "temperature: expected a number, got string");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","top_k":0.5})")), "top_k: expected an integer, got number");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stream":"yes"})")), "stream: expected a boolean, got string");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stop":5})")), "stop: expected a string or an array of strings, got integer");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stop":["a",2]})")), "stop[1]: expected a string, got integer");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","seed":"1"})")), "seed: expected an integer, got string");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","model":7})")), "model: expected a string, got integer");
    EXPECT_EQ(error_of(completion(R"({"prompt":7})")), "prompt: expected a string or an array of one string, got integer");
    EXPECT_EQ(error_of(completion(R"({"prompt":["a","b"]})")),
              "prompt: expected a string or an array of one string, got an array of 2 elements");
    EXPECT_EQ(error_of(completion(R"({"max_tokens":3})")), "prompt: required");
    EXPECT_EQ(error_of(chat(R"({"messages":{}})")), "messages: expected an array, got object");
    EXPECT_EQ(error_of(chat(R"({"messages":[]})")), "messages: must not be empty");
    EXPECT_EQ(error_of(chat(R"({"messages":["hi"]})")), "messages[0]: expected an object, got string");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"content":"hi"}]})")), "messages[0].role: required");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":1,"content":"hi"}]})")), "messages[0].role: expected a string, got integer");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":"user","content":5}]})")),
              "messages[0].content: expected a string or an array of text parts, got integer");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})")),
              "messages[0].content[0].type: only \"text\" parts are supported");
}

TEST(Api, RangesAndLimits) {
    api_limits limits;
    limits.max_tokens = 100;
    limits.max_stop_strings = 2;
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","max_tokens":101})", limits)),
              "max_tokens: 101 is out of range [1, 100]");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","max_tokens":0})", limits)), "max_tokens: 0 is out of range [1, 100]");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stop":["a","b","c"]})", limits)),
              "stop: 3 strings is more than the 2 allowed");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stop":[""]})")), "stop[0]: must not be empty");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","top_k":-1})")), "top_k: -1 is out of range [0, 2147483647]");
    EXPECT_NE(error_of(completion(R"({"prompt":"x","temperature":-1})")).find("temperature"), std::string::npos);
    EXPECT_NE(error_of(completion(R"({"prompt":"x","top_p":0})")).find("top_p"), std::string::npos);
    EXPECT_NE(error_of(completion(R"({"prompt":"x","min_p":2})")).find("min_p"), std::string::npos);
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","n":2})")), "n: not supported by moed above 1 (one choice per request)");
    const std::string long_stop = R"({"prompt":"x","stop":")" + std::string(300, 'a') + R"("})";
    EXPECT_EQ(error_of(completion(long_stop)), "stop[0]: 300 bytes is longer than the 256 allowed");
}

TEST(Api, TraceTag) {
    auto r = completion(R"({"prompt":"x","trace_tag":"c/17"})");
    ASSERT_TRUE(r.has_value()) << r.error().message;
    EXPECT_EQ(r->trace_tag, "c/17");
    r = completion(R"({"prompt":"x"})");
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->trace_tag, "");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","trace_tag":3})")), "trace_tag: expected a string, got integer");
    const std::string long_tag = json{{"prompt", "x"}, {"trace_tag", std::string(max_trace_tag_bytes + 1, 'a')}}.dump();
    EXPECT_NE(error_of(completion(long_tag)).find("trace_tag: 257 bytes"), std::string::npos);
}

TEST(Api, StatusCodesAndErrorBodies) {
    EXPECT_EQ(http_status_for(errc::invalid_argument), 400u);
    EXPECT_EQ(http_status_for(errc::not_found), 404u);
    EXPECT_EQ(http_status_for(errc::out_of_memory), 429u);
    EXPECT_EQ(http_status_for(errc::cancelled), 503u);
    EXPECT_EQ(http_status_for(errc::unsupported), 501u);
    EXPECT_EQ(http_status_for(errc::io), 500u);
    const json e = json::parse(error_body(404, "model 'x' is not served; available: tinymoe"));
    EXPECT_EQ(e["error"]["type"], "not_found_error");
    EXPECT_EQ(e["error"]["message"], "model 'x' is not served; available: tinymoe");
    EXPECT_EQ(e["error"]["code"], "not_found");
    EXPECT_EQ(e["error"]["status"], 404);
    EXPECT_TRUE(e["error"]["param"].is_null());
    EXPECT_EQ(json::parse(error_body(429, "full"))["error"]["type"], "rate_limit_error");
    EXPECT_EQ(json::parse(error_body(413, "big"))["error"]["type"], "request_too_large_error");
}

TEST(Api, CompletionAndChatBodies) {
    response_meta meta{api_kind::completion, "cmpl-1", 1700000000, "tinymoe"};
    const json c = json::parse(completion_body(meta, "hello", "length", {3, 5}));
    EXPECT_EQ(c["id"], "cmpl-1");
    EXPECT_EQ(c["object"], "text_completion");
    EXPECT_EQ(c["created"], 1700000000);
    EXPECT_EQ(c["model"], "tinymoe");
    EXPECT_EQ(c["choices"][0]["text"], "hello");
    EXPECT_EQ(c["choices"][0]["index"], 0);
    EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(c["usage"]["prompt_tokens"], 3);
    EXPECT_EQ(c["usage"]["completion_tokens"], 5);
    EXPECT_EQ(c["usage"]["total_tokens"], 8);

    meta.kind = api_kind::chat;
    const json h = json::parse(completion_body(meta, "hi", "stop", {1, 1}));
    EXPECT_EQ(h["object"], "chat.completion");
    EXPECT_EQ(h["choices"][0]["message"]["role"], "assistant");
    EXPECT_EQ(h["choices"][0]["message"]["content"], "hi");
    EXPECT_FALSE(h["choices"][0]["message"].contains("reasoning_content")) << "only when there is reasoning";
    const json r = json::parse(completion_body(meta, "4", "stop", {1, 1}, nullptr, "2+2"));
    EXPECT_EQ(r["choices"][0]["message"]["content"], "4");
    EXPECT_EQ(r["choices"][0]["message"]["reasoning_content"], "2+2");
}

TEST(Api, ChatTemplateOptions) {
    auto defaults = chat(R"({"messages":[{"role":"user","content":"x"}]})");
    ASSERT_TRUE(defaults);
    EXPECT_TRUE(defaults->chat.enable_thinking);
    EXPECT_EQ(defaults->chat.reasoning_effort, "medium");
    EXPECT_TRUE(defaults->split_reasoning);
    auto set = chat(R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":"low",
                        "chat_template_kwargs":{"enable_thinking":false},"reasoning_format":"none"})");
    ASSERT_TRUE(set) << set.error().message;
    EXPECT_FALSE(set->chat.enable_thinking);
    EXPECT_EQ(set->chat.reasoning_effort, "low");
    EXPECT_FALSE(set->split_reasoning);
    auto deepseek = chat(R"({"messages":[{"role":"user","content":"x"}],"reasoning_format":"deepseek"})");
    ASSERT_TRUE(deepseek);
    EXPECT_TRUE(deepseek->split_reasoning);
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":"user","content":"x"}],"reasoning_effort":3})")),
              "reasoning_effort: expected a string, got integer");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":[]})")),
              "chat_template_kwargs: expected an object, got array");
}

TEST(Api, StreamEvents) {
    response_meta meta{api_kind::chat, "chatcmpl-1", 1, "tinymoe"};
    const std::string first = stream_event(meta, "He", true);
    ASSERT_EQ(first.rfind("data: ", 0), 0u);
    ASSERT_EQ(first.substr(first.size() - 2), "\n\n");
    const json f = json::parse(first.substr(6));
    EXPECT_EQ(f["object"], "chat.completion.chunk");
    EXPECT_EQ(f["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(f["choices"][0]["delta"]["content"], "He");
    EXPECT_TRUE(f["choices"][0]["finish_reason"].is_null());
    const json second = json::parse(stream_event(meta, "llo", false).substr(6));
    EXPECT_FALSE(second["choices"][0]["delta"].contains("role"));
    const json reasoning = json::parse(stream_event(meta, "hm", false, nullptr, false, reply_part::reasoning).substr(6));
    EXPECT_EQ(reasoning["choices"][0]["delta"]["reasoning_content"], "hm");
    EXPECT_FALSE(reasoning["choices"][0]["delta"].contains("content"));

    const std::string last = stream_final_events(meta, "stop", {2, 3});
    const auto split = last.find("\n\n");
    const json l = json::parse(last.substr(6, split - 6));
    EXPECT_EQ(l["choices"][0]["finish_reason"], "stop");
    EXPECT_TRUE(l["choices"][0]["delta"].empty());
    EXPECT_FALSE(l.contains("usage")) << "no usage unless stream_options.include_usage";
    EXPECT_EQ(last.substr(split + 2), "data: [DONE]\n\n");

    meta.kind = api_kind::completion;
    const json t = json::parse(stream_event(meta, "x", true).substr(6));
    EXPECT_EQ(t["object"], "text_completion");
    EXPECT_EQ(t["choices"][0]["text"], "x");

    const std::string err = stream_error_events(500, "engine failed");
    EXPECT_NE(err.find("\"message\":\"engine failed\""), std::string::npos);
    EXPECT_EQ(err.substr(err.size() - 14), "data: [DONE]\n\n");
}

TEST(Api, OpenAiSamplingFields) {
    auto r = chat(R"({"messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":"x"}],
        "presence_penalty":0.5,"frequency_penalty":-1,"logit_bias":{"17":-100,"3":2.5},"logprobs":true,
        "top_logprobs":4,"stream":true,"stream_options":{"include_usage":true},"user":"u","store":false})");
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_EQ(r->messages[0].role, "system") << "developer is read as system";
    EXPECT_FLOAT_EQ(r->sampling.presence_penalty, 0.5f);
    EXPECT_FLOAT_EQ(r->sampling.frequency_penalty, -1.0f);
    ASSERT_EQ(r->sampling.logit_bias.size(), 2u);
    std::map<engine::token_id, float> bias;
    for (const auto& e : r->sampling.logit_bias) bias[e.token] = e.bias;
    EXPECT_FLOAT_EQ(bias[17], -100.0f);
    EXPECT_FLOAT_EQ(bias[3], 2.5f);
    EXPECT_EQ(r->logprobs, 4u);
    EXPECT_TRUE(r->include_usage);

    auto lp = chat(R"({"messages":[{"role":"user","content":"x"}],"logprobs":true})");
    ASSERT_TRUE(lp);
    EXPECT_EQ(lp->logprobs, 0u);
    auto none = chat(R"({"messages":[{"role":"user","content":"x"}],"logprobs":false})");
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->logprobs.has_value());
    auto c = completion(R"({"prompt":"x","logprobs":5})");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->logprobs, 5u);

    EXPECT_EQ(error_of(completion(R"({"prompt":"x","logprobs":6})")), "logprobs: 6 is out of range [0, 5]");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})")),
              "top_logprobs: needs \"logprobs\": true");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","presence_penalty":2.5})")),
              "presence_penalty: 2.5 is out of range [-2, 2]");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","logit_bias":{"a":1}})")),
              "logit_bias: key \"a\" is not a token id (a decimal integer)");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","logit_bias":{"4":-101}})")),
              "logit_bias.4: -101 is out of range [-100, 100]");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","logit_bias":[1]})")),
              "logit_bias: expected an object of token ids to numbers, got array");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stream_options":{"include_usage":true}})")),
              "stream_options: only allowed when stream is true");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","stream":true,"stream_options":{"x":1}})")),
              "stream_options.x: not supported (moed takes include_usage)");
    EXPECT_EQ(error_of(chat(R"({"messages":[{"role":"user","content":"x"}],"tools":[]})")), "tools: not supported by moed");
    EXPECT_EQ(error_of(completion(R"({"prompt":"x","echo":true})")), "echo: not supported by moed");
    EXPECT_TRUE(completion(R"({"prompt":"x","echo":false,"best_of":1,"n":1,"tools":null})"));
}

TEST(Api, ErrorCodesAndParams) {
    EXPECT_EQ(error_param_of("max_tokens: expected an integer, got string"), "max_tokens");
    EXPECT_EQ(error_param_of("stop[2]: must not be empty"), "stop[2]");
    EXPECT_EQ(error_param_of("prune.experts_per_layer: required"), "prune.experts_per_layer");
    EXPECT_EQ(error_param_of("malformed JSON: syntax error"), "");
    EXPECT_EQ(error_param_of("model 'x' is not served"), "");
    EXPECT_EQ(error_param_of(": x"), "");
    EXPECT_EQ(error_code_for(400, "max_tokens: expected an integer, got string"), "invalid_type");
    EXPECT_EQ(error_code_for(400, "prompt: required"), "missing_required_parameter");
    EXPECT_EQ(error_code_for(400, "tools: not supported by moed"), "unsupported_parameter");
    EXPECT_EQ(error_code_for(400, "top_p: 2 is out of range (0, 1]"), "invalid_value");
    EXPECT_EQ(error_code_for(400, "malformed JSON: x"), "invalid_request");
    EXPECT_EQ(error_code_for(429, "full"), "busy");
    EXPECT_EQ(error_code_for(503, "draining"), "unavailable");
    const json e = json::parse(error_body(400, "stop[1]: must not be empty"));
    EXPECT_EQ(e["error"]["param"], "stop[1]");
    EXPECT_EQ(e["error"]["code"], "invalid_value");
    EXPECT_EQ(e["error"]["status"], 400);
    const json m = json::parse(error_body(404, "model 'x' is not served", "model_not_found", "model"));
    EXPECT_EQ(m["error"]["code"], "model_not_found");
    EXPECT_EQ(m["error"]["param"], "model");
}

TEST(Api, LogprobsJson) {
    std::vector<logprob_entry> entries(2);
    entries[0].bytes = "He";
    entries[0].logprob = -0.5f;
    entries[0].top = {{"He", -0.5f}, {"Hi", -1.5f}};
    entries[1].bytes = "\xc3";  // a token that ends inside a character
    entries[1].logprob = -2.0f;
    const json chat_lp = json::parse(logprobs_json(api_kind::chat, entries, 0));
    ASSERT_EQ(chat_lp["content"].size(), 2u);
    EXPECT_EQ(chat_lp["content"][0]["token"], "He");
    EXPECT_EQ(chat_lp["content"][0]["bytes"], json::array({72, 101}));
    EXPECT_EQ(chat_lp["content"][0]["top_logprobs"][1]["token"], "Hi");
    EXPECT_FLOAT_EQ(chat_lp["content"][0]["top_logprobs"][1]["logprob"].get<float>(), -1.5f);
    EXPECT_EQ(chat_lp["content"][1]["token"], "\xef\xbf\xbd") << "U+FFFD in text";
    EXPECT_EQ(chat_lp["content"][1]["bytes"], json::array({0xc3})) << "the exact bytes";
    const json comp = json::parse(logprobs_json(api_kind::completion, entries, 10));
    EXPECT_EQ(comp["tokens"][0], "He");
    EXPECT_FLOAT_EQ(comp["token_logprobs"][1].get<float>(), -2.0f);
    EXPECT_FLOAT_EQ(comp["top_logprobs"][0]["Hi"].get<float>(), -1.5f);
    EXPECT_EQ(comp["text_offset"], json::array({10, 12}));

    response_meta meta{api_kind::completion, "cmpl-1", 1, "tinymoe"};
    meta.logprobs = true;
    meta.include_usage = true;
    const json ev = json::parse(stream_event(meta, "He", true, nullptr, false, reply_part::content, &entries, 0).substr(6));
    EXPECT_EQ(ev["choices"][0]["logprobs"]["tokens"].size(), 2u);
    EXPECT_TRUE(ev["usage"].is_null());
    const std::string last = stream_final_events(meta, "stop", {2, 3});
    const auto events_end = last.find("data: [DONE]");
    ASSERT_NE(events_end, std::string::npos);
    const auto second = last.find("data: ", 6);
    const json usage_chunk = json::parse(last.substr(second + 6, events_end - second - 8));
    EXPECT_EQ(usage_chunk["choices"], json::array());
    EXPECT_EQ(usage_chunk["usage"]["total_tokens"], 5);
}

TEST(Api, ModelsBody) {
    const json m = json::parse(models_body("tinymoe", 5));
    EXPECT_EQ(m["object"], "list");
    ASSERT_EQ(m["data"].size(), 1u);
    EXPECT_EQ(m["data"][0]["id"], "tinymoe");
    EXPECT_EQ(m["data"][0]["object"], "model");
    EXPECT_EQ(m["data"][0]["owned_by"], "moed");
}

// Every non-comment line is `name{labels} value` or `name value` with a numeric value, and
// every sample's family was declared by # TYPE before it.
TEST(Metrics, WellFormedExposition) {
    server_status s;
    s.version = "0.1.0";
    s.model.id = "tiny\"moe";
    s.isa = "avx2";
    s.requests_total = 3;
    s.generated_tokens_total = 40;
    expert_cache_stats t;
    t.io_mode = "uring_direct";
    t.host.name = "host";
    t.host.hits = 10;
    t.host.misses = 2;
    t.host.load_latency = {2, 100.0, 200.0, 300.0, 400.0, 700.0};
    t.nvme.name = "nvme";
    s.tiers = t;
    http_counters h;
    h.responses[200] = 4;
    h.responses[404] = 1;
    const std::string text = prometheus_text(s, h);
    std::set<std::string> declared;
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t end = text.find('\n', pos);
        ASSERT_NE(end, std::string::npos) << "text must end with a newline";
        const std::string line = text.substr(pos, end - pos);
        pos = end + 1;
        if (line.rfind("# TYPE ", 0) == 0) {
            declared.insert(line.substr(7, line.find(' ', 7) - 7));
            continue;
        }
        if (line.rfind("#", 0) == 0) continue;
        const std::size_t name_end = line.find_first_of("{ ");
        std::string name = line.substr(0, name_end);
        for (const char* suffix : {"_count", "_sum", "_bucket"})
            if (!declared.count(name) && name.size() > std::strlen(suffix) &&
                name.compare(name.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
                name = name.substr(0, name.size() - std::strlen(suffix));
        EXPECT_TRUE(declared.count(name)) << line;
        const std::string value = line.substr(line.rfind(' ') + 1);
        char* parsed_end = nullptr;
        std::strtod(value.c_str(), &parsed_end);
        EXPECT_EQ(*parsed_end, '\0') << line;
    }
    EXPECT_NE(text.find("moed_requests_total 3\n"), std::string::npos);
    EXPECT_NE(text.find("moed_generated_tokens_total 40\n"), std::string::npos);
    EXPECT_NE(text.find("moed_http_responses_total{code=\"404\"} 1\n"), std::string::npos);
    EXPECT_NE(text.find("moed_tier_hits_total{tier=\"host\",io_mode=\"uring_direct\"} 10\n"), std::string::npos);
    EXPECT_NE(text.find("moed_tier_load_latency_seconds{tier=\"host\",io_mode=\"uring_direct\",quantile=\"0.99\"} 0.0003\n"),
              std::string::npos);
    EXPECT_NE(text.find("model=\"tiny\\\"moe\""), std::string::npos) << "label values are escaped";
    EXPECT_NE(text.find("moed_tier_load_latency_seconds_sum{tier=\"host\",io_mode=\"uring_direct\"} 0.0007\n"),
              std::string::npos);
    EXPECT_NE(text.find("moed_tier_load_latency_seconds_count{tier=\"host\",io_mode=\"uring_direct\"} 2\n"),
              std::string::npos);
}

// The histogram keeps per-bucket counts and reports them cumulative, as Prometheus reads
// them: a value on a bound falls in that bound's bucket, one past the last bound only in
// +Inf, a negative one (a clock step) counts as 0.
TEST(Metrics, HistogramBucketsAreCumulative) {
    static constexpr double bounds[] = {0.1, 1.0, 10.0};
    seconds_histogram h(bounds);
    for (double v : {0.05, 0.1, 0.5, 1.0, 20.0, -3.0}) h.observe(v);
    histogram_stats out;
    h.fill(out);
    EXPECT_EQ(out.le_s, (std::vector<double>{0.1, 1.0, 10.0}));
    EXPECT_EQ(out.counts, (std::vector<std::uint64_t>{3, 5, 5}));
    EXPECT_EQ(out.count, 6u);
    EXPECT_DOUBLE_EQ(out.sum_s, 0.05 + 0.1 + 0.5 + 1.0 + 20.0);
}

// Request times are histograms (cumulative buckets, +Inf, _sum, _count) and KV cache use
// is gauges; the family is declared once, as a histogram, before its samples.
TEST(Metrics, RequestHistogramsAndKvCache) {
    request_timings timings;
    timings.time_to_first_token.observe(0.2);
    timings.time_to_first_token.observe(3.0);
    timings.request_latency.observe(4.0);
    timings.request_latency.observe(0.7);
    timings.prompt.observe(0.15);
    timings.generation.observe(2.0);
    server_status s;
    timings.fill(s.timing);
    s.memory.kv_cache_cells = 2048;
    s.memory.kv_cache_cells_used = 512;
    s.memory.kv_cache_bytes = 1u << 20;
    s.memory.kv_cache_used_bytes = 1u << 18;
    const std::string text = prometheus_text(s, http_counters{});
    for (const char* want : {
             "# TYPE moed_time_to_first_token_seconds histogram\n",
             "moed_time_to_first_token_seconds_bucket{le=\"0.1\"} 0\n",
             "moed_time_to_first_token_seconds_bucket{le=\"0.25\"} 1\n",
             "moed_time_to_first_token_seconds_bucket{le=\"2.5\"} 1\n",
             "moed_time_to_first_token_seconds_bucket{le=\"5\"} 2\n",
             "moed_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2\n",
             "moed_time_to_first_token_seconds_sum 3.2\n",
             "moed_time_to_first_token_seconds_count 2\n",
             "# TYPE moed_request_duration_seconds histogram\n",
             "moed_request_duration_seconds_bucket{le=\"1\"} 1\n",
             "moed_request_duration_seconds_bucket{le=\"5\"} 2\n",
             "moed_request_duration_seconds_count 2\n",
             "moed_prompt_duration_seconds_count 1\n",
             "moed_generation_duration_seconds_sum 2\n",
             "moed_kv_cache_cells 2048\n",
             "moed_kv_cache_cells_used 512\n",
             "moed_kv_cache_bytes 1048576\n",
             "moed_kv_cache_used_bytes 262144\n",
             "moed_kv_cache_usage_ratio 0.25\n",
         }) {
        EXPECT_NE(text.find(want), std::string::npos) << "missing '" << want << "' in:\n" << text;
    }
    // One declaration per family.
    for (const char* family : {"moed_time_to_first_token_seconds", "moed_request_duration_seconds"}) {
        const std::string type = std::string("# TYPE ") + family + " ";
        EXPECT_EQ(text.find(type), text.rfind(type)) << family;
    }
}

}  // namespace
}  // namespace moed::daemon
