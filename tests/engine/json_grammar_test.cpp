// Checks the JSON recogniser and the schema compiler (engine/json_grammar.h):
// - documents nlohmann::json writes (compact and indented, random values) are accepted and
//   complete; hand-picked invalid prefixes fail at the byte that makes them invalid (numbers,
//   literals, escapes, surrogate pairs, UTF-8 by RFC 3629, control characters, depth and
//   whitespace limits);
// - soundness against nlohmann::json: random mutations of valid documents that the
//   recogniser accepts as complete are valid JSON;
// - no dead ends and an exact closing count: from every state reached by random walks,
//   some byte lowers min_bytes_to_close by exactly one, so every accepted prefix completes;
// - schemas: random documents walked out of a schema's grammar parse and satisfy the schema
//   by an independent validator (tests/support/json_schema_check.h); required, optional and
//   extra properties, enums, type lists and item bounds are enforced byte by byte; every
//   unsupported keyword is an error naming it.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "engine/json_grammar.h"
#include "tests/support/json_schema_check.h"

namespace moed::engine {
namespace {

using json = nlohmann::json;

// How many bytes of `text` the recogniser takes before it refuses one.
std::size_t accepted_prefix(const json_recognizer& rec, std::string_view text, json_state* out = nullptr) {
    json_state s = rec.initial();
    std::size_t n = 0;
    while (n < text.size() && rec.feed(s, static_cast<std::uint8_t>(text[n]))) ++n;
    if (out) *out = s;
    return n;
}

bool accepts_complete(const json_recognizer& rec, std::string_view text) {
    json_state s;
    return accepted_prefix(rec, text, &s) == text.size() && rec.complete(s);
}

json random_value(std::mt19937& rng, int depth) {
    std::uniform_int_distribution<int> kind(0, depth > 4 ? 5 : 7);
    switch (kind(rng)) {
        case 0: return nullptr;
        case 1: return rng() % 2 == 0;
        case 2: return static_cast<std::int64_t>(rng()) - (1ll << 31);
        case 3: return std::ldexp(static_cast<double>(rng() % 100000) - 50000, static_cast<int>(rng() % 40) - 20);
        case 4:
        case 5: {
            static const char* pieces[] = {"a", "b c", "\"", "\\", "/", "\n", "\t", "\x01", "é", "€", "😀", "\x7f"};
            std::string s;
            for (unsigned i = rng() % 6; i > 0; --i) s += pieces[rng() % std::size(pieces)];
            return s;
        }
        case 6: {
            json a = json::array();
            for (unsigned i = rng() % 4; i > 0; --i) a.push_back(random_value(rng, depth + 1));
            return a;
        }
        default: {
            json o = json::object();
            for (unsigned i = rng() % 4; i > 0; --i) o["k" + std::to_string(rng() % 10)] = random_value(rng, depth + 1);
            return o;
        }
    }
}

TEST(json_grammar, accepts_documents_nlohmann_writes) {
    const json_grammar g = json_grammar::any_object();
    const json_recognizer rec(g);
    std::mt19937 rng(7);
    for (int i = 0; i < 500; ++i) {
        json doc = json::object();
        for (unsigned k = rng() % 5; k > 0; --k) doc["key" + std::to_string(k)] = random_value(rng, 1);
        for (int indent : {-1, 1, 2}) {
            // ensure_ascii writes \u escapes (surrogate pairs for the emoji).
            for (bool ascii : {false, true}) {
                const std::string text = doc.dump(indent, ' ', ascii);
                json_state s;
                ASSERT_EQ(accepted_prefix(rec, text, &s), text.size()) << text;
                EXPECT_TRUE(rec.complete(s)) << text;
                EXPECT_TRUE(rec.closed(s)) << text;
                EXPECT_EQ(rec.min_bytes_to_close(s), 0u);
            }
        }
    }
}

TEST(json_grammar, refuses_at_the_first_bad_byte) {
    const json_grammar g = json_grammar::any_object();
    const json_recognizer rec(g);
    struct bad {
        const char* text;
        std::size_t good;  // bytes accepted before the refusal
    };
    const bad cases[] = {
        {"[1]", 0},                          // json_object: the top is an object
        {"{\"a\":01}", 6},                   // no leading zeros
        {"{\"a\":-}", 6},                    // a sign needs a digit
        {"{\"a\":1.}", 7},                   // a point needs a digit
        {"{\"a\":1e}", 7},
        {"{\"a\":+1}", 5},
        {"{\"a\":.5}", 5},
        {"{\"a\":tru}", 8},
        {"{\"a\":nulll}", 9},
        {"{\"a\":True}", 5},
        {"{a:1}", 1},                        // keys are strings
        {"{\"a\" 1}", 5},
        {"{\"a\":1,}", 7},                   // no trailing comma
        {"{\"a\":[1,]}", 8},
        {"{\"a\":1}}", 7},                   // nothing after the document
        {"{\"a\":1} ", 7},
        {"{\"a\":\"\\x\"}", 7},              // unknown escape
        {"{\"a\":\"\\u12g4\"}", 10},
        {"{\"a\":\"\\udc00\"}", 9},          // a lone low surrogate, refused at its second hex digit
        {"{\"a\":\"\\ud800x\"}", 12},        // a high surrogate needs its low half
        {"{\"a\":\"\\ud800\\u0041\"}", 14},
        {"{\"a\":\"\x01\"}", 6},             // raw control character
        {"{\"a\":\"\xC0\x80\"}", 6},         // overlong
        {"{\"a\":\"\xE0\x80\x80\"}", 7},     // overlong three-byte form
        {"{\"a\":\"\xED\xA0\x80\"}", 7},     // UTF-8 surrogate
        {"{\"a\":\"\xF4\x90\x80\x80\"}", 7}, // past U+10FFFF
        {"{\"a\":\"\xF5\"}", 6},
        {"{\"a\":\"\xC3\"}", 7},             // a missing continuation byte
        {"{\"a\":\"\x80\"}", 6},
    };
    for (const bad& c : cases) {
        EXPECT_EQ(accepted_prefix(rec, c.text), c.good) << c.text;
        // Two are valid JSON that json_object refuses (a top that is no object, text after it).
        const std::string_view text(c.text);
        if (text != "[1]" && !text.ends_with(' ')) {
            EXPECT_FALSE(json::accept(c.text)) << "valid JSON: " << c.text;
        }
    }
    // Exponents stop at two digits: a double's range, which parsers check.
    EXPECT_EQ(accepted_prefix(rec, "{\"a\":1e123}"), 9u);
    EXPECT_FALSE(json::accept("[1e400]"));
    for (const char* good : {"{\"a\":\"\\ud83d\\ude00\\u00e9\\n\\\"\\/\"}", "{\"a\":\"\xF0\x9F\x98\x80\xE2\x82\xAC\"}",
                             "{\"a\":-0.5E+10,\"b\":[true,false,null,{}],\"c\":\"\"}", "{}", " \t\r\n{ } "}) {
        if (std::string_view(good).ends_with(' ')) {
            EXPECT_EQ(accepted_prefix(rec, good), std::string_view(good).size() - 1) << good;
        } else {
            EXPECT_TRUE(accepts_complete(rec, good)) << good;
        }
    }
}

TEST(json_grammar, bounds_whitespace_depth_and_numbers) {
    const json_grammar g = json_grammar::any_object();
    const json_recognizer rec(g);
    const std::string ws(max_json_whitespace_run, ' ');
    EXPECT_TRUE(accepts_complete(rec, ws + "{" + ws + "\"a\"" + ws + ":" + ws + "1" + ws + "}"));
    EXPECT_EQ(accepted_prefix(rec, "{" + ws + " }"), 1 + ws.size());
    // A run is broken by any other byte.
    EXPECT_TRUE(accepts_complete(rec, "{" + ws + "\"a\":" + ws + "[" + ws + "]}"));

    // Depth: the document's frame, then one per open object or array.
    // Depth: containers nest until one more would leave no frame for its values.
    json_state s = rec.initial();
    ASSERT_TRUE(rec.feed(s, "{\"a\":"));
    std::size_t containers = 1;
    while (rec.feed(s, static_cast<std::uint8_t>('['))) ++containers;
    EXPECT_EQ(containers, max_json_nesting - 1);
    s = rec.initial();
    ASSERT_TRUE(rec.feed(s, "{\"a\":" + std::string(containers - 1, '[')));
    json_state leaf = s;
    EXPECT_TRUE(rec.feed(leaf, "\"leaf\"")) << "a string still fits at the deepest level";
    EXPECT_TRUE(rec.feed(s, "-1.5e+12,null,"));
    EXPECT_FALSE(rec.feed(s, static_cast<std::uint8_t>('{')));

    const std::string digits(max_json_number_bytes, '7');
    EXPECT_TRUE(accepts_complete(rec, "{\"a\":" + digits + "}"));
    EXPECT_EQ(accepted_prefix(rec, "{\"a\":" + digits + "7}"), 5 + digits.size());
    // A byte that needs a digit after it is refused where the digit would not fit.
    EXPECT_EQ(accepted_prefix(rec, "{\"a\":" + digits.substr(1) + ".5}"), 5 + digits.size() - 1);
}

TEST(json_grammar, mutations_it_accepts_are_valid_json) {
    const json_grammar g = json_grammar::any_object();
    const json_recognizer rec(g);
    std::mt19937 rng(11);
    int accepted = 0;
    for (int i = 0; i < 20000; ++i) {
        json doc = json::object();
        for (unsigned k = rng() % 4; k > 0; --k) doc["k" + std::to_string(k)] = random_value(rng, 1);
        std::string text = doc.dump(rng() % 2 == 0 ? -1 : 1);
        for (unsigned m = 1 + rng() % 3; m > 0 && !text.empty(); --m) {
            const std::size_t at = rng() % text.size();
            static const char bytes[] = "{}[]:,\"\\ 0123456789.eE+-tfnrul\x01\x80\xC3\xED\xF4";
            switch (rng() % 3) {
                case 0: text.erase(at, 1); break;
                case 1: text.insert(at, 1, bytes[rng() % (sizeof bytes - 1)]); break;
                default: text[at] = bytes[rng() % (sizeof bytes - 1)]; break;
            }
        }
        if (accepts_complete(rec, text)) {
            ++accepted;
            EXPECT_TRUE(json::accept(text)) << text;
        }
    }
    EXPECT_GT(accepted, 100);
}

// Walks `rec` at random from its initial state: at each step every byte is tried; the walk
// prefers bytes that close the document once it is long. Checks on the way that some byte
// lowers min_bytes_to_close by exactly one (no dead ends, and the count is exact).
std::string random_walk(const json_recognizer& rec, std::mt19937& rng, std::size_t soft_length) {
    json_state s = rec.initial();
    std::string out;
    for (std::size_t step = 0; step < 20 * soft_length + 1000; ++step) {
        if (rec.closed(s)) return out;
        if (rec.complete(s) && rng() % 4 == 0) return out;
        const std::uint32_t need = rec.min_bytes_to_close(s);
        std::vector<std::uint8_t> any;
        std::vector<std::uint8_t> closer;
        for (int b = 0; b < 256; ++b) {
            json_state t = s;
            if (!rec.feed(t, static_cast<std::uint8_t>(b))) continue;
            any.push_back(static_cast<std::uint8_t>(b));
            if (rec.min_bytes_to_close(t) + 1 == need) closer.push_back(static_cast<std::uint8_t>(b));
        }
        EXPECT_FALSE(any.empty()) << "dead end after " << out;
        EXPECT_TRUE(need == 0 || !closer.empty()) << "no byte brings the end nearer after " << out << " (need " << need
                                                   << ")";
        if (any.empty()) return out;
        const bool close = out.size() > soft_length && !closer.empty();
        const std::vector<std::uint8_t>& from = close ? closer : any;
        const std::uint8_t b = from[rng() % from.size()];
        EXPECT_TRUE(rec.feed(s, b));
        out += static_cast<char>(b);
    }
    ADD_FAILURE() << "the walk did not end: " << out;
    return out;
}

TEST(json_grammar, every_prefix_completes_any_object) {
    const json_grammar g = json_grammar::any_object();
    const json_recognizer rec(g);
    std::mt19937 rng(3);
    for (int i = 0; i < 200; ++i) {
        const std::string text = random_walk(rec, rng, 60);
        EXPECT_TRUE(json::accept(text)) << text;
        json_state s;
        EXPECT_EQ(accepted_prefix(rec, text, &s), text.size());
        EXPECT_TRUE(rec.complete(s));
    }
}

const char* const person_schema = R"({
  "type": "object",
  "title": "person",
  "properties": {
    "name": {"type": "string", "description": "full name"},
    "age": {"type": "integer"},
    "height": {"type": "number"},
    "alive": {"type": "boolean"},
    "spouse": {"type": ["string", "null"]},
    "color": {"enum": ["red", "green", "r\"x", 12, null]},
    "kind": {"const": "human"},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}},
                "required": ["city"], "additionalProperties": false}
  },
  "required": ["name", "age", "kind", "address"],
  "additionalProperties": false
})";

TEST(json_grammar, schema_walks_satisfy_the_schema) {
    const json schema = json::parse(person_schema);
    auto g = json_grammar::from_schema(schema);
    ASSERT_TRUE(g) << g.error().message;
    const json_recognizer rec(*g);
    std::mt19937 rng(5);
    for (int i = 0; i < 300; ++i) {
        const std::string text = random_walk(rec, rng, 40 + i % 80);
        json doc;
        ASSERT_NO_THROW(doc = json::parse(text)) << text;
        EXPECT_EQ(test::schema_violation(doc, schema), "") << text;
    }
    // A free-form object schema with typed extra properties.
    const json extra = json::parse(R"({"type":"object","properties":{"a":{"type":"integer"}},
                                      "additionalProperties":{"type":"array","items":{"type":"boolean"}}})");
    auto g2 = json_grammar::from_schema(extra);
    ASSERT_TRUE(g2) << g2.error().message;
    const json_recognizer rec2(*g2);
    for (int i = 0; i < 200; ++i) {
        const std::string text = random_walk(rec2, rng, 30);
        json doc;
        ASSERT_NO_THROW(doc = json::parse(text)) << text;
        EXPECT_EQ(test::schema_violation(doc, extra), "") << text;
    }
}

TEST(json_grammar, schema_rules_byte_by_byte) {
    auto g = json_grammar::from_schema(json::parse(person_schema));
    ASSERT_TRUE(g) << g.error().message;
    const json_recognizer rec(*g);
    const std::string addr = R"("address":{"city":"X"})";
    EXPECT_TRUE(accepts_complete(rec, R"({"name":"a","age":3,"kind":"human",)" + addr + "}"));
    EXPECT_TRUE(accepts_complete(rec, R"({ "kind" : "human" , "age" : -3 , "name" : "" , )" + addr +
                                          R"(, "tags": ["x"], "color": "r\"x", "spouse": null, "alive": false,)"
                                          R"( "height": 1.5e3})"));
    // Missing a required property: '}' is refused.
    const std::string partial = R"({"name":"a","age":3,)" + addr;
    EXPECT_EQ(accepted_prefix(rec, partial + "}"), partial.size());
    // An unknown property, a repeated one, a wrong type, an enum miss.
    EXPECT_EQ(accepted_prefix(rec, R"({"nam":1})"), 5u);
    EXPECT_EQ(accepted_prefix(rec, R"({"zzz":1})"), 2u);
    EXPECT_EQ(accepted_prefix(rec, R"({"age":1,"age":2})"), 11u);  // "a" of address, alive
    EXPECT_EQ(accepted_prefix(rec, R"({"age":1.5})"), 8u);
    EXPECT_EQ(accepted_prefix(rec, R"({"age":"1"})"), 7u);
    EXPECT_EQ(accepted_prefix(rec, R"({"color":"blue"})"), 10u);
    EXPECT_EQ(accepted_prefix(rec, R"({"color":123})"), 11u);
    EXPECT_EQ(accepted_prefix(rec, R"({"kind":"humans"})"), 14u);
    EXPECT_EQ(accepted_prefix(rec, R"({"tags":[]})"), 9u);
    EXPECT_EQ(accepted_prefix(rec, R"({"tags":["a","b","c","d"]})"), 20u);
    EXPECT_EQ(accepted_prefix(rec, R"({"spouse":1})"), 10u);
    EXPECT_EQ(accepted_prefix(rec, R"({"address":{"city":"x","country":"y"}})"), 24u);
    // Once every property is given a comma is refused (nothing could follow it).
    const std::string full = R"({"name":"a","age":3,"height":1,"alive":true,"spouse":null,"color":12,"kind":"human",)"
                             R"("tags":["t"],)" + addr;
    EXPECT_EQ(accepted_prefix(rec, full + ",}"), full.size());
    EXPECT_TRUE(accepts_complete(rec, full + "}"));
    // A scalar at the top: complete but open until it can no longer grow.
    auto num = json_grammar::from_schema(json::parse(R"({"type":"integer"})"));
    ASSERT_TRUE(num);
    const json_recognizer nrec(*num);
    json_state s;
    EXPECT_EQ(accepted_prefix(nrec, "-12", &s), 3u);
    EXPECT_TRUE(nrec.complete(s));
    EXPECT_FALSE(nrec.closed(s));
    auto e = json_grammar::from_schema(json::parse(R"({"enum":["yes","no"]})"));
    ASSERT_TRUE(e);
    const json_recognizer erec(*e);
    EXPECT_EQ(accepted_prefix(erec, "\"no\"", &s), 4u);
    EXPECT_TRUE(erec.closed(s));
}

TEST(json_grammar, unsupported_schema_keywords_are_named) {
    const std::pair<const char*, const char*> cases[] = {
        {R"({"type":"string","pattern":"^a"})", "'pattern'"},
        {R"({"type":"string","format":"date-time"})", "'format'"},
        {R"({"type":"string","minLength":2})", "'minLength'"},
        {R"({"type":"integer","minimum":0})", "'minimum'"},
        {R"({"anyOf":[{"type":"string"}]})", "'anyOf'"},
        {R"({"$ref":"#/$defs/a"})", "'$ref'"},
        {R"({"type":"object","properties":{"a":{"type":"array","prefixItems":[]}}})", "schema.properties.a: keyword "
                                                                                      "'prefixItems'"},
        {R"({"type":"object","properties":{"a":{}},"required":["b"]})", "'b' is not one of the properties"},
        {R"({"type":"strin"})", "unknown type 'strin'"},
        {R"({"type":["number","integer"]})", "'number' and 'integer'"},
        {R"({"type":"string","items":{}})", "'items' does not apply to type 'string'"},
        {R"({"enum":[]})", "schema.enum"},
        {R"(false)", "allows no value"},
    };
    for (const auto& [schema, expected] : cases) {
        auto g = json_grammar::from_schema(json::parse(schema));
        ASSERT_FALSE(g) << schema;
        EXPECT_EQ(g.error().code, errc::invalid_argument);
        EXPECT_NE(g.error().message.find(expected), std::string::npos) << g.error().message;
    }
    std::string deep = R"({"type":"string"})";
    for (std::size_t i = 0; i < max_json_nesting; ++i) deep = R"({"type":"array","items":)" + deep + "}";
    auto g = json_grammar::from_schema(json::parse(deep));
    ASSERT_FALSE(g);
    EXPECT_NE(g.error().message.find("nests deeper"), std::string::npos) << g.error().message;
}

}  // namespace
}  // namespace moed::engine
