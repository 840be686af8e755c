// Fuzzes the JSON recogniser and the schema compiler (engine/json_grammar.cpp). The input's
// first byte picks the grammar: 0 reads the rest as a JSON Schema and only compiles it (an
// error or a grammar, never a crash); otherwise one of a fixed set of grammars (any object,
// and schemas with required, optional and extra properties, enums, unions and item bounds)
// and the rest is a document fed byte by byte. Checked on the prefix the recogniser takes:
// a complete prefix is JSON that nlohmann::json parses and that satisfies the schema (an
// independent validator); from the prefix, adding at each step a byte that lowers
// min_bytes_to_close by one completes the document in exactly that many bytes (so no
// accepted prefix is a dead end), and that completion parses and satisfies the schema too.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "engine/json_grammar.h"
#include "fuzz/fuzz_support.h"
#include "tests/support/json_schema_check.h"

namespace {

using moed::engine::json_grammar;
using moed::engine::json_recognizer;
using moed::engine::json_state;
using json = nlohmann::json;

const char* const schemas[] = {
    R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
        "tags":{"type":"array","items":{"enum":["a","ab",1,10,null]},"minItems":1,"maxItems":3},
        "pet":{"type":["object","null"],"properties":{"kind":{"const":"cat"}},"required":["kind"],
               "additionalProperties":false}},
       "required":["name"],"additionalProperties":false})",
    R"({"type":"object","properties":{"a":{"type":"number"},"b":{"type":"boolean"}},
        "additionalProperties":{"type":"array","items":{"type":["string","integer","null"]}}})",
    R"({"type":["array","number"],"items":{"type":"object"}})",
};

void check_document(const json_recognizer& rec, const json* schema, const std::string& text) {
    json doc;
    try {
        doc = json::parse(text);
    } catch (const std::exception& e) {
        moed::fuzz::fail("the recogniser completed '{}', which does not parse: {}", text, e.what());
    }
    if (schema != nullptr) {
        const std::string why = moed::test::schema_violation(doc, *schema);
        MOED_FUZZ_CHECK(why.empty(), "'{}' breaks the schema: {}", text, why);
    }
    (void)rec;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    moed::set_log_level(moed::log_level::error);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
    const unsigned pick = data[0] % 5;
    if (pick == 0) {
        const json s = json::parse(rest, nullptr, false);
        if (!s.is_discarded()) (void)json_grammar::from_schema(s);
        return 0;
    }
    static const json_grammar any = json_grammar::any_object();
    static const json parsed[] = {json::parse(schemas[0]), json::parse(schemas[1]), json::parse(schemas[2])};
    static const json_grammar compiled[] = {*json_grammar::from_schema(parsed[0]), *json_grammar::from_schema(parsed[1]),
                                            *json_grammar::from_schema(parsed[2])};
    const json_grammar& g = pick == 1 ? any : compiled[pick - 2];
    const json* schema = pick == 1 ? nullptr : &parsed[pick - 2];
    const json_recognizer rec(g);

    json_state s = rec.initial();
    std::string text;
    for (char ch : rest) {
        // A refused byte marks the state it was fed to failed: feed a copy, keep it only when taken.
        json_state t = s;
        if (!rec.feed(t, static_cast<std::uint8_t>(ch))) break;
        s = t;
        text += ch;
    }
    MOED_FUZZ_CHECK(!s.failed, "a refused byte marked the state failed but it was kept");
    if (rec.complete(s)) check_document(rec, schema, text);

    std::uint32_t need = rec.min_bytes_to_close(s);
    MOED_FUZZ_CHECK(need < 1u << 20, "'{}' cannot be completed (min_bytes_to_close {})", text, need);
    while (need > 0) {
        bool stepped = false;
        for (int b = 0; b < 256 && !stepped; ++b) {
            json_state t = s;
            if (rec.feed(t, static_cast<std::uint8_t>(b)) && rec.min_bytes_to_close(t) + 1 == need) {
                s = t;
                text += static_cast<char>(b);
                stepped = true;
            }
        }
        MOED_FUZZ_CHECK(stepped, "no byte brings '{}' nearer its end ({} bytes to go)", text, need);
        --need;
    }
    MOED_FUZZ_CHECK(rec.complete(s), "'{}' is not complete after its closing bytes", text);
    check_document(rec, schema, text);
    return 0;
}
