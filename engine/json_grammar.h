// A JSON grammar and an incremental recogniser for it, byte by byte: what constrains a
// model's output to JSON (response_format json_object) or to a JSON Schema (json_schema).
//
// A grammar is a table of nodes, compiled once per request: `any` JSON value, objects with
// named properties (required ones, additionalProperties as a node or refused), arrays with
// an item node and item bounds, strings, numbers, integers, and literal sets (enum, const,
// true/false/null) matched byte for byte against their compact JSON text. A `type` list is
// a union that the first byte of the value decides (so number and integer cannot both be in
// one).
//
// The recogniser is a pushdown automaton whose whole state is a small value type
// (json_state: a fixed stack of frames), so trying a token's bytes is a copy and a few
// feeds, and a trie of tokens can be walked depth-first with one state per depth. Every
// prefix it accepts can still be completed (no dead ends): a comma is refused where no
// property or item may follow, a key must stay a prefix of a property not given yet, and so
// on. What it accepts is valid JSON for nlohmann::json::parse: UTF-8 is checked as RFC 3629
// has it (no overlong forms, no surrogates), \u escapes must pair surrogates, raw control
// characters are refused in strings.
// Bounds: nesting at most max_json_nesting, a run of whitespace at most
// max_json_whitespace_run bytes (so whitespace cannot go on forever), numbers at most
// max_json_number_bytes with at most two exponent digits (a double's range). Strings are unbounded; the token budget bounds them (see
// json_recognizer::min_bytes_to_close, which json_constraint uses to always close in time).
// Threads: a grammar and a recogniser are immutable; a json_state belongs to its user.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/result.h"

namespace moed::engine {

inline constexpr std::size_t max_json_nesting = 32;       // frames of objects, arrays and values
inline constexpr std::uint32_t max_json_whitespace_run = 16;
inline constexpr std::uint32_t max_json_number_bytes = 40;
// Schema limits: a property set is a 64-bit mask; enum texts and nodes are bounded so a
// schema cannot make the per-token work large.
inline constexpr std::size_t max_schema_properties = 64;
inline constexpr std::size_t max_schema_enum_values = 256;
inline constexpr std::size_t max_schema_literal_bytes = 1024;
inline constexpr std::size_t max_schema_nodes = 1024;

enum class json_node_kind : std::uint8_t { any, object, array, string, number, integer, literal, one_of_types };

struct json_node {
    json_node_kind kind = json_node_kind::any;
    // object: properties sorted by their JSON-encoded name; `keys` holds the encoded name
    // without the opening quote and with the closing one (`name"`), as the recogniser
    // matches it after the opening quote.
    std::vector<std::string> keys;
    std::vector<std::uint16_t> values;  // object: node of each property; one_of_types: the members
    std::uint64_t required = 0;         // object: bit i = keys[i] is required
    std::int32_t additional = -1;       // object: node of other properties' values; -1: none allowed
    std::uint16_t items = 0;            // array: node of every item
    std::uint32_t min_items = 0;
    std::uint32_t max_items = UINT32_MAX;
    std::vector<std::string> literals;  // literal: the compact JSON texts, sorted
    std::uint32_t min_bytes = 0;        // bytes of the shortest value of this node
};

class json_grammar {
public:
    // Any JSON object at the top (response_format json_object), any values inside.
    static json_grammar any_object();
    // The grammar of a JSON Schema (response_format json_schema). Errors (invalid_argument)
    // name the schema path and the keyword: "schema.properties.age: keyword 'minimum' is
    // not supported"; `pattern` and `format` are refused the same way.
    static result<json_grammar> from_schema(const nlohmann::json& schema);

    const json_node& node(std::uint16_t i) const noexcept { return nodes_[i]; }
    std::uint16_t root() const noexcept { return root_; }
    std::size_t size() const noexcept { return nodes_.size(); }

    // Node indices of the built-in nodes every grammar has.
    static constexpr std::uint16_t any_node = 0;
    static constexpr std::uint16_t any_literal_node = 1;  // false, null, true
    static constexpr std::uint16_t any_object_node = 2;   // an object of any values
    static constexpr std::uint16_t any_array_node = 3;
    static constexpr std::uint16_t any_string_node = 4;
    static constexpr std::uint16_t any_number_node = 5;

private:
    json_grammar();
    friend class json_schema_compiler;
    std::vector<json_node> nodes_;
    std::uint16_t root_ = any_object_node;
};

// One frame of the recogniser's stack. Kept trivially copyable and small.
struct json_frame {
    std::uint16_t node = 0;
    std::uint8_t kind = 0;    // frame_kind (json_grammar.cpp)
    std::uint8_t phase = 0;
    std::uint8_t str = 0;     // string lexer sub-state
    std::uint8_t str_left = 0;
    std::uint8_t cont_lo = 0;
    std::uint8_t cont_hi = 0;
    std::uint16_t code = 0;   // \u escape being read; a number's exponent digits
    std::uint16_t lo = 0;     // candidate keys or literals: [lo, hi), `pos` bytes matched
    std::uint16_t hi = 0;
    std::uint16_t pos = 0;
    std::int16_t prop = -1;   // object: the property whose value is being read; -1 additional
    std::uint32_t count = 0;  // array items, number bytes
    std::uint64_t seen = 0;   // object: properties given
};

struct json_state {
    std::array<json_frame, max_json_nesting + 1> frames{};
    std::uint32_t depth = 0;  // frames in use (frames[0] is the document)
    std::uint32_t whitespace_run = 0;
    bool failed = false;

    // Copies only the frames in use.
    void assign(const json_state& other) noexcept;
};

class json_recognizer {
public:
    explicit json_recognizer(const json_grammar& grammar) noexcept : g_(grammar) {}

    json_state initial() const noexcept;
    // Feeds one byte; false (and the state marked failed) when no document starts so.
    bool feed(json_state& s, std::uint8_t byte) const noexcept;
    bool feed(json_state& s, std::string_view bytes) const noexcept;
    // The document is a complete value (an end here is valid JSON).
    bool complete(const json_state& s) const noexcept;
    // Complete, and no byte can extend it (a closed object, not a number that may go on).
    bool closed(const json_state& s) const noexcept;
    // The fewest bytes that complete the document from `s` (0 when complete).
    std::uint32_t min_bytes_to_close(const json_state& s) const noexcept;

    const json_grammar& grammar() const noexcept { return g_; }

private:
    bool start_value(json_state& s, std::uint16_t node, std::uint8_t byte) const noexcept;
    bool feed_object(json_state& s, json_frame& f, std::uint8_t byte) const noexcept;
    bool feed_array(json_state& s, json_frame& f, std::uint8_t byte) const noexcept;
    bool push(json_state& s, const json_frame& f) const noexcept;
    std::uint32_t frame_min_bytes(const json_frame& f) const noexcept;
    std::uint32_t required_rest(const json_node& n, std::uint64_t seen) const noexcept;

    const json_grammar& g_;
};

}  // namespace moed::engine
