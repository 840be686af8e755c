// Integration test of response_format on the real `moed` binary with the bundled tinymoe
// model (a model that never learnt JSON, so the grammar does all the work):
// - json_object: completions and chat, greedy and seeded sampling, streamed and not, for
//   several prompts: the reply parses with nlohmann::json as an object and ends "stop";
// - json_schema: the reply parses and satisfies the schema (an independent validator,
//   tests/support/json_schema_check.h), including with the fewest max_tokens the schema allows;
// - {"type":"text"} is plain generation (the same greedy text as no response_format);
// - bad shapes and unsupported schema keywords are 400 naming the field or the keyword, and
//   a max_tokens below the schema's smallest document is 400 naming max_tokens.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "tests/daemon/http_test_client.h"
#include "tests/daemon/moed_process.h"
#include "tests/support/json_schema_check.h"

namespace moed::test {
namespace {

const json schema = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string"},
    "age": {"type": "integer"},
    "colour": {"enum": ["red", "green", "blue"]},
    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    "owner": {"type": ["object", "null"], "properties": {"id": {"type": "number"}}, "required": ["id"],
              "additionalProperties": false}
  },
  "required": ["name", "age", "colour"],
  "additionalProperties": false
})");

json request(bool chat, const std::string& prompt, int max_tokens, const json& format, double temperature,
             int seed, bool stream = false) {
    json j{{"model", "tinymoe"}, {"max_tokens", max_tokens}, {"temperature", temperature}, {"seed", seed},
           {"stream", stream}, {"response_format", format}};
    if (chat) j["messages"] = json::array({json{{"role", "user"}, {"content", prompt}}});
    else j["prompt"] = prompt;
    return j;
}

// The reply's text and finish reason, streamed or not.
std::pair<std::string, std::string> run(const moed_process& moed, bool chat, const json& body) {
    const char* path = chat ? "/v1/chat/completions" : "/v1/completions";
    const http_reply r = post(moed.socket(), path, body.dump());
    EXPECT_EQ(r.status, 200u) << r.body;
    if (r.status != 200) return {};
    if (body.value("stream", false)) {
        const stream_result s = read_stream(r.body);
        EXPECT_TRUE(s.framing_ok && s.done_last) << r.body;
        return {s.text, s.finish_reason};
    }
    const json j = r.json();
    const json& c = j["choices"][0];
    return {chat ? c["message"]["content"].get<std::string>() : c["text"].get<std::string>(),
            c["finish_reason"].get<std::string>()};
}

TEST(MoedJsonFormat, JsonObjectRepliesParse) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    const json format{{"type", "json_object"}};
    int n = 0;
    for (const char* prompt : {"int main(", "The river", "Reply in JSON: {\"name\":", "for f in *.txt; do"}) {
        for (bool chat : {false, true}) {
            for (int seed : {0, 1, 2}) {
                const double temperature = seed == 0 ? 0.0 : 0.9;
                const bool stream = (n++ % 3) == 1;
                const auto [text, finish] = run(moed, chat, request(chat, prompt, 80, format, temperature, seed, stream));
                json doc;
                ASSERT_NO_THROW(doc = json::parse(text)) << prompt << " -> " << text;
                EXPECT_TRUE(doc.is_object()) << text;
                EXPECT_EQ(finish, "stop") << text;
            }
        }
    }
}

TEST(MoedJsonFormat, JsonSchemaRepliesValidate) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    const json format{{"type", "json_schema"},
                      {"json_schema", {{"name", "pet_record"}, {"strict", true}, {"schema", schema}}}};
    for (const char* prompt : {"int main(", "The river", "Describe a cat as JSON."}) {
        for (bool chat : {false, true}) {
            for (int seed : {0, 3}) {
                const double temperature = seed == 0 ? 0.0 : 1.0;
                const auto [text, finish] = run(moed, chat, request(chat, prompt, 100, format, temperature, seed, seed == 3));
                json doc;
                ASSERT_NO_THROW(doc = json::parse(text)) << prompt << " -> " << text;
                EXPECT_EQ(schema_violation(doc, schema), "") << text;
                EXPECT_EQ(finish, "stop") << text;
            }
        }
    }
    // The fewest tokens the schema allows: {"age":0,"colour":"red","name":""} is 34 bytes.
    const auto [text, finish] = run(moed, false, request(false, "x", 34, format, 1.0, 5));
    json doc;
    ASSERT_NO_THROW(doc = json::parse(text)) << text;
    EXPECT_EQ(schema_violation(doc, schema), "") << text;
    const http_reply short_budget = post(moed.socket(), "/v1/completions", request(false, "x", 33, format, 1.0, 5).dump());
    EXPECT_EQ(short_budget.status, 400u) << short_budget.body;
    EXPECT_NE(short_budget.error_message().find("max_tokens"), std::string::npos) << short_budget.body;
}

TEST(MoedJsonFormat, TextFormatAndBadShapes) {
    moed_process moed({});
    ASSERT_TRUE(moed.ready());
    const json plain{{"model", "tinymoe"}, {"prompt", "int main("}, {"max_tokens", 12}, {"temperature", 0}};
    json text_format = plain;
    text_format["response_format"] = {{"type", "text"}};
    EXPECT_EQ(run(moed, false, plain), run(moed, false, text_format));

    const std::pair<json, std::string> bad[] = {
        {"json", "response_format: expected an object, got string"},
        {json::object(), "response_format.type: required"},
        {{{"type", "xml"}}, "response_format.type: 'xml' is not one of text, json_object, json_schema"},
        {{{"type", "json_object"}, {"schema", json::object()}}, "response_format.schema: unknown field for type "
                                                                "'json_object'"},
        {{{"type", "json_schema"}}, "response_format.json_schema: required"},
        {{{"type", "json_schema"}, {"json_schema", {{"schema", schema}}}}, "response_format.json_schema.name: required"},
        {{{"type", "json_schema"}, {"json_schema", {{"name", "a b"}}}},
         "response_format.json_schema.name: 1 to 64 letters, digits, '_' or '-'"},
        {{{"type", "json_schema"}, {"json_schema", {{"name", "a"}, {"strict", "yes"}}}},
         "response_format.json_schema.strict: expected a boolean, got string"},
        {{{"type", "json_schema"},
          {"json_schema", {{"name", "a"}, {"schema", {{"type", "string"}, {"pattern", "^[a-z]+$"}}}}}},
         "response_format.json_schema.schema: keyword 'pattern' is not supported"},
        {{{"type", "json_schema"},
          {"json_schema",
           {{"name", "a"},
            {"schema", {{"type", "object"}, {"properties", {{"n", {{"type", "integer"}, {"minimum", 0}}}}}}}}}},
         "response_format.json_schema.schema.properties.n: keyword 'minimum' is not supported"},
    };
    for (const auto& [format, message] : bad) {
        for (bool chat : {false, true}) {
            const http_reply r = post(moed.socket(), chat ? "/v1/chat/completions" : "/v1/completions",
                                      request(chat, "x", 16, format, 0.0, 1).dump());
            expect_error(r, 400, "invalid_request_error", message);
        }
    }
}

}  // namespace
}  // namespace moed::test
