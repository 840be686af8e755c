// OpenAI request fields against the real `moed` on the bundled tinymoe model, each with its
// expected effect. The official Python and Node clients cannot be installed offline here, so
// these tests send the requests those clients send (same fields, same shapes) over the Unix
// socket and check the answers field by field:
// - logprobs: the daemon's numbers equal a log-softmax of the logits this test computes
//   itself with the engine (greedy, so the tokens are the argmax); chat's content[] and
//   completions' tokens/token_logprobs/top_logprobs/text_offset shapes, streamed and not;
// - presence/frequency penalties: the second token's logprob under penalties equals the
//   penalized log-softmax (the formula applied to the engine's logits); greedy moves off a
//   token the penalties push below another;
// - logit_bias: -100 bans the token greedy picked, +100 forces one;
// - stream_options.include_usage: a last chunk with "choices": [] and the usage, "usage":
//   null before it, and no usage at all when not asked;
// - the developer role renders as the system role; GET /v1/models/{id};
// - errors: "code" is a string, "param" names the field; unsupported fields are a 400.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/daemon/http_test_client.h"
#include "tests/daemon/moed_process.h"

namespace moed::test {
namespace {

using json = nlohmann::json;

// The model's own logits for a prompt and the greedy continuation, computed here with the
// engine: the reference the daemon's logprobs are checked against.
struct reference {
    std::unique_ptr<engine::model> model;
    std::vector<std::vector<float>> logits;  // one row per generated token
    std::vector<engine::token_id> tokens;    // greedy choices

    explicit reference(const std::string& prompt, int n_tokens) {
        auto m = engine::model::load(bundled_model());
        if (!m) {
            ADD_FAILURE() << m.error().message;
            return;
        }
        model = std::move(m).value();
        const engine::tokenizer& vocab = model->vocab();
        std::vector<engine::token_id> ids = vocab.encode(prompt, /*parse_special=*/true);
        if (vocab.add_bos() && vocab.bos_id() >= 0) ids.insert(ids.begin(), vocab.bos_id());
        kernels::compute_pool pool(2);
        engine::evaluator eval(*model, pool, 64);
        engine::kv_cache cache(engine::kv_shape_of(model->hparams()), 256);
        std::vector<float> row;
        for (int i = 0; i < n_tokens; ++i) {
            auto r = i == 0 ? eval.run_sequence(ids, cache, row)
                            : eval.run_sequence(std::span<const engine::token_id>(&tokens.back(), 1), cache, row);
            if (!r) {
                ADD_FAILURE() << r.error().message;
                return;
            }
            logits.push_back(row);
            tokens.push_back(engine::argmax(row));
        }
    }

    // log-softmax of `row` at `id`, in double.
    static double log_softmax(const std::vector<float>& row, engine::token_id id) {
        double max_l = row[0];
        for (float l : row) max_l = std::max<double>(max_l, l);
        double sum = 0.0;
        for (float l : row) sum += std::exp(l - max_l);
        return row[static_cast<std::size_t>(id)] - max_l - std::log(sum);
    }
};

class MoedOpenAi : public ::testing::Test {
protected:
    static void SetUpTestSuite() { daemon_ = new moed_process({}); }
    static void TearDownTestSuite() {
        delete daemon_;
        daemon_ = nullptr;
    }
    void SetUp() override { ASSERT_TRUE(daemon_->ready()) << daemon_->log(); }
    static const std::string& socket() { return daemon_->socket(); }

    static http_reply complete(const json& body) { return post(socket(), "/v1/completions", body.dump()); }
    static http_reply chat(const json& body) { return post(socket(), "/v1/chat/completions", body.dump()); }
    static json completion_request(const std::string& prompt, int max_tokens) {
        return {{"model", "tinymoe"}, {"prompt", prompt}, {"max_tokens", max_tokens}, {"temperature", 0}};
    }
    static json chat_request(const std::string& content, int max_tokens) {
        return {{"model", "tinymoe"},
                {"messages", json::array({json{{"role", "user"}, {"content", content}}})},
                {"max_tokens", max_tokens},
                {"temperature", 0}};
    }

    static moed_process* daemon_;
};

moed_process* MoedOpenAi::daemon_ = nullptr;

constexpr double tolerance = 2e-3;  // float logits of two runs of the same kernels

TEST_F(MoedOpenAi, CompletionLogprobsAreTheLogSoftmaxOfTheLogits) {
    const std::string prompt = "int main(";
    const int n = 4;
    reference ref(prompt, n);
    ASSERT_EQ(ref.tokens.size(), static_cast<std::size_t>(n));
    json req = completion_request(prompt, n);
    req["logprobs"] = 3;
    req["ignore_eos"] = true;
    auto r = complete(req);
    ASSERT_EQ(r.status, 200u) << r.body;
    const json lp = r.json()["choices"][0]["logprobs"];
    ASSERT_TRUE(lp.is_object()) << r.body;
    ASSERT_EQ(lp["tokens"].size(), static_cast<std::size_t>(n)) << r.body;
    ASSERT_EQ(lp["token_logprobs"].size(), static_cast<std::size_t>(n));
    ASSERT_EQ(lp["top_logprobs"].size(), static_cast<std::size_t>(n));
    ASSERT_EQ(lp["text_offset"].size(), static_cast<std::size_t>(n));
    std::size_t offset = 0;
    for (int i = 0; i < n; ++i) {
        const std::string text = ref.model->vocab().token_bytes(ref.tokens[static_cast<std::size_t>(i)]);
        EXPECT_EQ(lp["tokens"][i], text) << i;
        EXPECT_NEAR(lp["token_logprobs"][i].get<double>(),
                    reference::log_softmax(ref.logits[static_cast<std::size_t>(i)], ref.tokens[static_cast<std::size_t>(i)]),
                    tolerance)
            << i;
        EXPECT_EQ(lp["text_offset"][i], offset);
        offset += text.size();
        const json& top = lp["top_logprobs"][i];
        EXPECT_LE(top.size(), 3u);
        EXPECT_GE(top.size(), 1u);
        EXPECT_NEAR(top[text].get<double>(), lp["token_logprobs"][i].get<double>(), 1e-6) << "greedy: the top one";
    }
    // Without "logprobs" the field is null.
    auto plain = complete(completion_request(prompt, 2));
    ASSERT_EQ(plain.status, 200u);
    EXPECT_TRUE(plain.json()["choices"][0]["logprobs"].is_null());
}

TEST_F(MoedOpenAi, ChatLogprobsStreamedAndNot) {
    json req = chat_request("Write a shell loop.", 5);
    req["logprobs"] = true;
    req["top_logprobs"] = 4;
    req["ignore_eos"] = true;
    auto r = chat(req);
    ASSERT_EQ(r.status, 200u) << r.body;
    const json j = r.json();
    const json& content = j["choices"][0]["logprobs"]["content"];
    ASSERT_EQ(content.size(), j["usage"]["completion_tokens"].get<std::size_t>()) << r.body;
    for (const json& e : content) {
        ASSERT_TRUE(e["token"].is_string());
        const double lp = e["logprob"].get<double>();
        EXPECT_LE(lp, 0.0);
        ASSERT_EQ(e["top_logprobs"].size(), 4u);
        for (std::size_t k = 1; k < 4; ++k)
            EXPECT_GE(e["top_logprobs"][k - 1]["logprob"].get<double>(), e["top_logprobs"][k]["logprob"].get<double>());
        // Greedy: the chosen token is the most likely one.
        EXPECT_EQ(e["top_logprobs"][0]["token"], e["token"]);
        EXPECT_NEAR(e["top_logprobs"][0]["logprob"].get<double>(), lp, 1e-6);
        EXPECT_TRUE(e["bytes"].is_array());
    }

    req["stream"] = true;
    auto s = chat(req);
    ASSERT_EQ(s.status, 200u);
    json streamed = json::array();
    for (const auto& d : parse_sse(s.body).data) {
        if (d == "[DONE]") continue;
        const json chunk = json::parse(d);
        const json& lp = chunk["choices"][0]["logprobs"];
        ASSERT_TRUE(lp.is_object()) << d;
        for (const json& e : lp["content"]) streamed.push_back(e);
    }
    EXPECT_EQ(streamed, content) << "a stream carries the same entries, each once";
}

TEST_F(MoedOpenAi, PenaltiesFollowTheFormula) {
    // The first token has no history; at the second step the first token's logit loses
    // frequency * 1 + presence, so the second choice is the argmax of those logits.
    const std::string prompt = "int main(";
    reference ref(prompt, 2);
    ASSERT_EQ(ref.tokens.size(), 2u);
    const double presence = 1.5;
    const double frequency = 0.5;
    std::vector<float> penalized = ref.logits[1];
    penalized[static_cast<std::size_t>(ref.tokens[0])] -= static_cast<float>(presence + frequency);

    json req = completion_request(prompt, 2);
    req["logprobs"] = 1;
    req["ignore_eos"] = true;
    req["presence_penalty"] = presence;
    req["frequency_penalty"] = frequency;
    auto r = complete(req);
    ASSERT_EQ(r.status, 200u) << r.body;
    const json lp = r.json()["choices"][0]["logprobs"];
    ASSERT_EQ(lp["tokens"].size(), 2u);
    EXPECT_EQ(lp["tokens"][0], ref.model->vocab().token_bytes(ref.tokens[0])) << "the first token has no history";
    // logprobs report the model's distribution: the same numbers with or without penalties.
    EXPECT_NEAR(lp["token_logprobs"][0].get<double>(), reference::log_softmax(ref.logits[0], ref.tokens[0]), tolerance);
    // The second choice is the argmax of the penalized logits.
    const engine::token_id expected = engine::argmax(penalized);
    EXPECT_EQ(lp["tokens"][1], ref.model->vocab().token_bytes(expected));
    EXPECT_NEAR(lp["token_logprobs"][1].get<double>(), reference::log_softmax(ref.logits[1], expected), tolerance);

    // A greedy run that repeats a token stops repeating it under a strong frequency penalty.
    json rep = completion_request("1 1 1 1 1 1 1 1", 8);
    rep["ignore_eos"] = true;
    rep["logprobs"] = 0;
    auto base = complete(rep);
    rep["frequency_penalty"] = 2.0;
    rep["presence_penalty"] = 2.0;
    auto pen = complete(rep);
    ASSERT_EQ(base.status, 200u);
    ASSERT_EQ(pen.status, 200u) << pen.body;
    const auto count_max = [](const json& tokens) {
        std::map<std::string, int> counts;
        int most = 0;
        for (const auto& t : tokens) most = std::max(most, ++counts[t.get<std::string>()]);
        return most;
    };
    const json bt = base.json()["choices"][0]["logprobs"]["tokens"];
    const json pt = pen.json()["choices"][0]["logprobs"]["tokens"];
    EXPECT_LE(count_max(pt), count_max(bt));
    EXPECT_NE(pt, bt) << "penalties of 2 change a greedy run of 8 tokens";
}

TEST_F(MoedOpenAi, LogitBiasBansAndForces) {
    const std::string prompt = "int main(";
    reference ref(prompt, 1);
    ASSERT_EQ(ref.tokens.size(), 1u);
    const engine::token_id greedy = ref.tokens[0];
    json req = completion_request(prompt, 1);
    req["logprobs"] = 0;
    req["logit_bias"] = {{std::to_string(greedy), -100}};
    auto banned = complete(req);
    ASSERT_EQ(banned.status, 200u) << banned.body;
    EXPECT_NE(banned.json()["choices"][0]["logprobs"]["tokens"][0], ref.model->vocab().token_bytes(greedy));
    // Without the ban: the next best token of the same logits.
    std::vector<float> row = ref.logits[0];
    row[static_cast<std::size_t>(greedy)] = -INFINITY;
    EXPECT_EQ(banned.json()["choices"][0]["logprobs"]["tokens"][0], ref.model->vocab().token_bytes(engine::argmax(row)));

    // +100 forces a token the model finds unlikely (the least likely one).
    const auto least = static_cast<engine::token_id>(
        std::min_element(ref.logits[0].begin(), ref.logits[0].end()) - ref.logits[0].begin());
    req["logit_bias"] = {{std::to_string(least), 100}};
    auto forced = complete(req);
    ASSERT_EQ(forced.status, 200u) << forced.body;
    EXPECT_EQ(forced.json()["choices"][0]["logprobs"]["tokens"][0], ref.model->vocab().token_bytes(least));

    req["logit_bias"] = {{"99999999", 5}};
    auto outside = complete(req);
    EXPECT_EQ(outside.status, 400u);
    EXPECT_EQ(outside.json()["error"]["param"], "logit_bias") << outside.body;
    req["logit_bias"] = {{"5", 101}};
    auto range = complete(req);
    EXPECT_EQ(range.status, 400u);
    EXPECT_EQ(range.json()["error"]["param"], "logit_bias.5") << range.body;
    EXPECT_EQ(range.json()["error"]["code"], "invalid_value");
}

TEST_F(MoedOpenAi, IncludeUsageAddsAUsageChunkAndNothingOtherwise) {
    json req = completion_request("int main(", 4);
    req["stream"] = true;
    auto without = complete(req);
    ASSERT_EQ(without.status, 200u);
    for (const auto& d : parse_sse(without.body).data) {
        if (d == "[DONE]") continue;
        EXPECT_FALSE(json::parse(d).contains("usage")) << d;
    }
    req["stream_options"] = {{"include_usage", true}};
    auto with = complete(req);
    ASSERT_EQ(with.status, 200u);
    const auto events = parse_sse(with.body).data;
    ASSERT_GE(events.size(), 3u);
    EXPECT_EQ(events.back(), "[DONE]");
    const json last = json::parse(events[events.size() - 2]);
    EXPECT_EQ(last["choices"], json::array());
    EXPECT_EQ(last["object"], "text_completion");
    EXPECT_GT(last["usage"]["prompt_tokens"].get<int>(), 0);
    EXPECT_EQ(last["usage"]["total_tokens"],
              last["usage"]["prompt_tokens"].get<int>() + last["usage"]["completion_tokens"].get<int>());
    for (std::size_t i = 0; i + 2 < events.size(); ++i) {
        const json chunk = json::parse(events[i]);
        EXPECT_TRUE(chunk["usage"].is_null()) << events[i];
        EXPECT_EQ(chunk["choices"].size(), 1u);
    }
    // stream_options without a stream is an error naming it.
    json plain = completion_request("x", 1);
    plain["stream_options"] = {{"include_usage", true}};
    auto bad = complete(plain);
    EXPECT_EQ(bad.status, 400u);
    EXPECT_EQ(bad.json()["error"]["param"], "stream_options");
}

TEST_F(MoedOpenAi, DeveloperRoleRendersAsSystem) {
    const auto ask = [](const std::string& role) {
        json req{{"model", "tinymoe"},
                 {"messages", json::array({json{{"role", role}, {"content", "Answer in French."}},
                                           json{{"role", "user"}, {"content", "Hello"}}})},
                 {"max_tokens", 6},
                 {"temperature", 0}};
        return post(socket(), "/v1/chat/completions", req.dump());
    };
    auto sys = ask("system");
    auto dev = ask("developer");
    ASSERT_EQ(sys.status, 200u) << sys.body;
    ASSERT_EQ(dev.status, 200u) << dev.body;
    EXPECT_EQ(dev.json()["usage"], sys.json()["usage"]);
    EXPECT_EQ(dev.json()["choices"][0]["message"]["content"], sys.json()["choices"][0]["message"]["content"]);
}

TEST_F(MoedOpenAi, ModelById) {
    auto ok = get(socket(), "/v1/models/tinymoe");
    ASSERT_EQ(ok.status, 200u) << ok.body;
    const json m = ok.json();
    EXPECT_EQ(m["id"], "tinymoe");
    EXPECT_EQ(m["object"], "model");
    EXPECT_EQ(m["owned_by"], "moed");
    auto missing = get(socket(), "/v1/models/gpt-4o");
    EXPECT_EQ(missing.status, 404u);
    EXPECT_EQ(missing.error_type(), "not_found_error");
    EXPECT_EQ(missing.json()["error"]["code"], "model_not_found");
    EXPECT_EQ(missing.json()["error"]["param"], "model");
    auto post_it = post(socket(), "/v1/models/tinymoe", "{}");
    EXPECT_EQ(post_it.status, 405u);
    EXPECT_EQ(post_it.allow, "GET");
    // A generation naming an unknown model answers the same code.
    json req = completion_request("x", 1);
    req["model"] = "gpt-4o";
    auto gen = complete(req);
    EXPECT_EQ(gen.status, 404u);
    EXPECT_EQ(gen.json()["error"]["code"], "model_not_found");
}

TEST_F(MoedOpenAi, ErrorsCarryAStringCodeAndTheParam) {
    json req = completion_request("x", 1);
    req["max_tokens"] = "many";
    auto type = complete(req);
    EXPECT_EQ(type.status, 400u);
    EXPECT_EQ(type.json()["error"]["code"], "invalid_type") << type.body;
    EXPECT_EQ(type.json()["error"]["param"], "max_tokens");
    EXPECT_EQ(type.json()["error"]["status"], 400);

    req = completion_request("x", 1);
    req["presence_penalty"] = 3;
    auto range = complete(req);
    EXPECT_EQ(range.status, 400u);
    EXPECT_EQ(range.json()["error"]["code"], "invalid_value") << range.body;
    EXPECT_EQ(range.json()["error"]["param"], "presence_penalty");

    json c = chat_request("x", 1);
    c["top_logprobs"] = 21;
    c["logprobs"] = true;
    auto top = chat(c);
    EXPECT_EQ(top.status, 400u);
    EXPECT_EQ(top.json()["error"]["param"], "top_logprobs") << top.body;

    auto missing = post(socket(), "/v1/chat/completions", R"({"model":"tinymoe"})");
    EXPECT_EQ(missing.json()["error"]["code"], "missing_required_parameter") << missing.body;
    EXPECT_EQ(missing.json()["error"]["param"], "messages");

    auto malformed = post(socket(), "/v1/completions", "{");
    EXPECT_EQ(malformed.status, 400u);
    EXPECT_TRUE(malformed.json()["error"]["param"].is_null()) << malformed.body;
    EXPECT_TRUE(malformed.json()["error"]["code"].is_string());
}

TEST_F(MoedOpenAi, UnsupportedFieldsAreRefusedByName) {
    const json tool = json::array({json{{"type", "function"}, {"function", {{"name", "f"}}}}});
    const std::vector<std::pair<std::string, json>> chat_fields = {
        {"tools", tool},         {"tool_choice", "auto"},          {"functions", json::array()},
        {"n", 2},                {"audio", {{"voice", "alloy"}}},  {"modalities", json::array({"text", "audio"})},
        {"prediction", {{"type", "content"}, {"content", "x"}}},
    };
    for (const auto& [name, value] : chat_fields) {
        json c = chat_request("x", 1);
        c[name] = value;
        auto r = chat(c);
        EXPECT_EQ(r.status, 400u) << name << ": " << r.body;
        EXPECT_EQ(r.json()["error"]["param"], name) << r.body;
        EXPECT_EQ(r.json()["error"]["code"], "unsupported_parameter") << r.body;
    }
    for (const auto& [name, value] : std::vector<std::pair<std::string, json>>{
             {"suffix", "}"}, {"echo", true}, {"best_of", 3}}) {
        json req = completion_request("x", 1);
        req[name] = value;
        auto r = complete(req);
        EXPECT_EQ(r.status, 400u) << name << ": " << r.body;
        EXPECT_EQ(r.json()["error"]["param"], name) << r.body;
    }
    // What changes nothing is accepted: the defaults of the refused ones, and the ignored fields.
    json c = chat_request("x", 1);
    c["n"] = 1;
    c["user"] = "u-1";
    c["metadata"] = {{"k", "v"}};
    c["store"] = false;
    c["service_tier"] = "auto";
    c["tools"] = nullptr;
    auto ok = chat(c);
    EXPECT_EQ(ok.status, 200u) << ok.body;
}

}  // namespace
}  // namespace moed::test
