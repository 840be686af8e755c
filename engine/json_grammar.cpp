#include "engine/json_grammar.h"

#include <algorithm>
#include <cstring>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace moed::engine {

namespace {

using json = nlohmann::json;

enum frame_kind : std::uint8_t { f_document, f_object, f_array, f_string, f_number, f_literal };

// Object phases: after '{', inside a key, after a key, after ':', after a value, after ','.
enum object_phase : std::uint8_t { o_open, o_key, o_colon, o_value, o_after, o_next };
enum array_phase : std::uint8_t { a_open, a_after, a_next };
// Number phases; the complete ones are n_zero, n_int, n_frac and n_exp.
enum number_phase : std::uint8_t { n_minus, n_zero, n_int, n_dot, n_frac, n_e, n_esign, n_exp };
// String lexer: plain text, inside a UTF-8 sequence, after '\', reading \u hex digits, and
// the \uDC00..\uDFFF that must follow a high surrogate ('\', 'u', hex digits).
enum string_phase : std::uint8_t { s_plain, s_utf8, s_escape, s_hex, s_low_backslash, s_low_u, s_low_hex };

bool is_ws(std::uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(std::uint8_t c) { return c >= '0' && c <= '9'; }
int hex_value(std::uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

enum class lex : std::uint8_t { reject, more, closed };

// One byte of a string's content (after its opening quote).
lex lex_string(json_frame& f, std::uint8_t c) {
    switch (f.str) {
        case s_plain:
            if (c == '"') return lex::closed;
            if (c == '\\') {
                f.str = s_escape;
                return lex::more;
            }
            if (c < 0x20) return lex::reject;
            if (c < 0x80) return lex::more;
            // RFC 3629: the first continuation byte's range excludes overlong forms,
            // surrogates and code points past U+10FFFF.
            f.cont_lo = 0x80;
            f.cont_hi = 0xBF;
            if (c >= 0xC2 && c <= 0xDF) f.str_left = 1;
            else if (c == 0xE0) f.str_left = 2, f.cont_lo = 0xA0;
            else if (c >= 0xE1 && c <= 0xEC) f.str_left = 2;
            else if (c == 0xED) f.str_left = 2, f.cont_hi = 0x9F;
            else if (c >= 0xEE && c <= 0xEF) f.str_left = 2;
            else if (c == 0xF0) f.str_left = 3, f.cont_lo = 0x90;
            else if (c >= 0xF1 && c <= 0xF3) f.str_left = 3;
            else if (c == 0xF4) f.str_left = 3, f.cont_hi = 0x8F;
            else return lex::reject;
            f.str = s_utf8;
            return lex::more;
        case s_utf8:
            if (c < f.cont_lo || c > f.cont_hi) return lex::reject;
            f.cont_lo = 0x80;
            f.cont_hi = 0xBF;
            if (--f.str_left == 0) f.str = s_plain;
            return lex::more;
        case s_escape:
            if (c == 'u') {
                f.str = s_hex;
                f.str_left = 4;
                f.code = 0;
                return lex::more;
            }
            if (std::strchr("\"\\/bfnrt", c) == nullptr || c == 0) return lex::reject;
            f.str = s_plain;
            return lex::more;
        case s_hex:
        case s_low_hex: {
            const int v = hex_value(c);
            if (v < 0) return lex::reject;
            f.code = static_cast<std::uint16_t>(f.code * 16 + v);
            --f.str_left;
            if (f.str == s_hex) {
                // A lone low surrogate is refused as soon as its first byte is known.
                if (f.str_left == 2 && f.code >= 0xDC && f.code <= 0xDF) return lex::reject;
                if (f.str_left == 0) f.str = (f.code >= 0xD800 && f.code <= 0xDBFF) ? s_low_backslash : s_plain;
            } else {
                if (f.str_left == 3 && f.code != 0xD) return lex::reject;
                if (f.str_left == 2 && (f.code < 0xDC || f.code > 0xDF)) return lex::reject;
                if (f.str_left == 0) f.str = s_plain;
            }
            return lex::more;
        }
        case s_low_backslash:
            if (c != '\\') return lex::reject;
            f.str = s_low_u;
            return lex::more;
        case s_low_u:
            if (c != 'u') return lex::reject;
            f.str = s_low_hex;
            f.str_left = 4;
            f.code = 0;
            return lex::more;
        default: return lex::reject;
    }
}

// Bytes a string needs before its closing quote may come.
std::uint32_t lex_pending(const json_frame& f) {
    switch (f.str) {
        case s_hex: {
            // Once two digits say high surrogate (D8..DB), its low surrogate's six bytes follow.
            const int digits = 4 - f.str_left;
            const unsigned top = digits >= 2 ? static_cast<unsigned>(f.code) >> (4 * (digits - 2)) : 0u;
            return f.str_left + (top >= 0xD8 && top <= 0xDB ? 6u : 0u);
        }
        case s_utf8:
        case s_low_hex: return f.str_left;
        case s_escape: return 1;
        case s_low_backslash: return 6;
        case s_low_u: return 5;
        default: return 0;
    }
}

bool number_complete(std::uint8_t phase) { return phase == n_zero || phase == n_int || phase == n_frac || phase == n_exp; }

// Narrows the sorted candidates [lo, hi) that match `pos` bytes to those whose next byte is
// `c`. They stay contiguous: candidates with a common prefix sort together by the next byte.
void narrow(const std::vector<std::string>& cands, std::uint16_t& lo, std::uint16_t& hi, std::uint16_t pos,
            std::uint8_t c) {
    std::uint16_t new_lo = hi;
    std::uint16_t new_hi = hi;
    for (std::uint16_t i = lo; i < hi; ++i) {
        const std::string& k = cands[i];
        const bool match = k.size() > pos && static_cast<std::uint8_t>(k[pos]) == c;
        if (match && new_lo == hi) new_lo = i;
        if (!match && new_lo != hi) {
            new_hi = i;
            break;
        }
    }
    lo = new_lo;
    hi = new_lo == hi ? new_lo : new_hi;
}

std::uint64_t bit(std::size_t i) { return std::uint64_t{1} << i; }

}  // namespace

void json_state::assign(const json_state& other) noexcept {
    depth = other.depth;
    whitespace_run = other.whitespace_run;
    failed = other.failed;
    std::memcpy(frames.data(), other.frames.data(), sizeof(json_frame) * other.depth);
}

// --- grammar ---

json_grammar::json_grammar() {
    nodes_.resize(6);
    nodes_[any_node].kind = json_node_kind::any;
    nodes_[any_node].min_bytes = 1;
    nodes_[any_literal_node].kind = json_node_kind::literal;
    nodes_[any_literal_node].literals = {"false", "null", "true"};
    nodes_[any_literal_node].min_bytes = 4;
    nodes_[any_object_node].kind = json_node_kind::object;
    nodes_[any_object_node].additional = any_node;
    nodes_[any_object_node].min_bytes = 2;
    nodes_[any_array_node].kind = json_node_kind::array;
    nodes_[any_array_node].items = any_node;
    nodes_[any_array_node].min_bytes = 2;
    nodes_[any_string_node].kind = json_node_kind::string;
    nodes_[any_string_node].min_bytes = 2;
    nodes_[any_number_node].kind = json_node_kind::number;
    nodes_[any_number_node].min_bytes = 1;
}

json_grammar json_grammar::any_object() { return json_grammar(); }

class json_schema_compiler {
public:
    explicit json_schema_compiler(json_grammar& g) : g_(g) {}

    result<std::uint16_t> compile(const json& s, const std::string& path, std::size_t depth) {
        // The document's frame and a leaf's frame come on top of one frame per level.
        if (depth + 2 > max_json_nesting)
            return make_error(errc::invalid_argument, "{}: the schema nests deeper than {} levels", path,
                              max_json_nesting - 2);
        if (s.is_boolean()) {
            if (s.get<bool>()) return json_grammar::any_node;
            return make_error(errc::invalid_argument, "{}: the schema 'false' allows no value", path);
        }
        if (!s.is_object()) return make_error(errc::invalid_argument, "{}: expected a schema object", path);
        static constexpr const char* ignored[] = {"title", "description", "$schema", "$id", "$comment",
                                                  "examples", "default", "deprecated", "readOnly", "writeOnly"};
        static constexpr const char* known[] = {"type", "properties", "required", "additionalProperties",
                                                "items", "minItems", "maxItems", "enum", "const"};
        for (const auto& [key, value] : s.items()) {
            // A named copy: clang 14 does not let a lambda capture a structured binding.
            const std::string_view name = key;
            const bool is_known = std::find_if(std::begin(known), std::end(known),
                                               [name](const char* k) { return name == k; }) != std::end(known);
            const bool is_ignored = std::find_if(std::begin(ignored), std::end(ignored),
                                                 [name](const char* k) { return name == k; }) != std::end(ignored);
            if (!is_known && !is_ignored)
                return make_error(errc::invalid_argument, "{}: keyword '{}' is not supported", path, key);
        }
        if (s.contains("enum") || s.contains("const")) return literal(s, path);

        std::vector<std::string> types;
        if (auto t = s.find("type"); t != s.end()) {
            if (t->is_string()) {
                types.push_back(t->get<std::string>());
            } else if (t->is_array() && !t->empty()) {
                for (const json& e : *t) {
                    if (!e.is_string())
                        return make_error(errc::invalid_argument, "{}.type: expected a type name or a list of them",
                                          path);
                    if (std::find(types.begin(), types.end(), e.get<std::string>()) != types.end())
                        return make_error(errc::invalid_argument, "{}.type: '{}' is listed twice", path,
                                          e.get<std::string>());
                    types.push_back(e.get<std::string>());
                }
            } else {
                return make_error(errc::invalid_argument, "{}.type: expected a type name or a list of them", path);
            }
        } else if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) {
            types.push_back("object");
        } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) {
            types.push_back("array");
        } else {
            return json_grammar::any_node;
        }
        auto has = [&](const char* t) { return std::find(types.begin(), types.end(), t) != types.end(); };
        std::string message;
        if (!has("object") && reject_keywords(s, {"properties", "required", "additionalProperties"}, path, types, message))
            return unexpected(errc::invalid_argument, message);
        if (!has("array") && reject_keywords(s, {"items", "minItems", "maxItems"}, path, types, message))
            return unexpected(errc::invalid_argument, message);
        if (types.size() == 1) return typed(s, types[0], path, depth);
        // A union decided by the value's first byte: number and integer would both start
        // with a digit.
        if (std::find(types.begin(), types.end(), "number") != types.end() &&
            std::find(types.begin(), types.end(), "integer") != types.end())
            return make_error(errc::invalid_argument, "{}.type: 'number' and 'integer' together are not supported "
                                                      "(use 'number')",
                              path);
        std::vector<std::uint16_t> members;
        std::uint32_t min_bytes = UINT32_MAX;
        for (const std::string& t : types) {
            auto m = typed(s, t, path, depth);
            if (!m) return m;
            members.push_back(*m);
            min_bytes = std::min(min_bytes, g_.nodes_[*m].min_bytes);
        }
        if (types.size() == 2 && std::find(types.begin(), types.end(), "boolean") != types.end() &&
            std::find(types.begin(), types.end(), "null") != types.end()) {
            // Both literal sets: one literal node with both.
            json_node n;
            n.kind = json_node_kind::literal;
            n.literals = {"false", "null", "true"};
            n.min_bytes = 4;
            return add(std::move(n), path);
        }
        json_node n;
        n.kind = json_node_kind::one_of_types;
        n.values = std::move(members);
        n.min_bytes = min_bytes;
        return add(std::move(n), path);
    }

private:
    result<std::uint16_t> add(json_node n, const std::string& path) {
        if (g_.nodes_.size() >= max_schema_nodes)
            return make_error(errc::invalid_argument, "{}: the schema has more than {} parts", path, max_schema_nodes);
        g_.nodes_.push_back(std::move(n));
        return static_cast<std::uint16_t>(g_.nodes_.size() - 1);
    }

    static bool reject_keywords(const json& s, std::initializer_list<const char*> keys, const std::string& path,
                                const std::vector<std::string>& types, std::string& message) {
        for (const char* k : keys) {
            if (s.contains(k)) {
                message = fmt::format("{}: keyword '{}' does not apply to type '{}'", path, k, fmt::join(types, "', '"));
                return true;
            }
        }
        return false;
    }

    result<std::uint16_t> literal(const json& s, const std::string& path) {
        if (s.contains("enum") && s.contains("const"))
            return make_error(errc::invalid_argument, "{}: 'enum' and 'const' together are not supported", path);
        std::vector<json> values;
        if (auto c = s.find("const"); c != s.end()) {
            values.push_back(*c);
        } else {
            const json& e = s.at("enum");
            if (!e.is_array() || e.empty())
                return make_error(errc::invalid_argument, "{}.enum: expected a non-empty array", path);
            if (e.size() > max_schema_enum_values)
                return make_error(errc::invalid_argument, "{}.enum: {} values is more than the {} allowed", path,
                                  e.size(), max_schema_enum_values);
            values.assign(e.begin(), e.end());
        }
        json_node n;
        n.kind = json_node_kind::literal;
        for (const json& v : values) {
            std::string text = v.dump(-1, ' ', false, json::error_handler_t::strict);
            if (text.size() > max_schema_literal_bytes)
                return make_error(errc::invalid_argument, "{}: an enum or const value of {} bytes is longer than the "
                                                          "{} allowed",
                                  path, text.size(), max_schema_literal_bytes);
            n.literals.push_back(std::move(text));
        }
        std::sort(n.literals.begin(), n.literals.end());
        n.literals.erase(std::unique(n.literals.begin(), n.literals.end()), n.literals.end());
        n.min_bytes = UINT32_MAX;
        for (const std::string& l : n.literals) n.min_bytes = std::min<std::uint32_t>(n.min_bytes, l.size());
        return add(std::move(n), path);
    }

    result<std::uint16_t> typed(const json& s, const std::string& type, const std::string& path, std::size_t depth) {
        if (type == "string") return json_grammar::any_string_node;
        if (type == "number") return json_grammar::any_number_node;
        if (type == "integer") {
            json_node n;
            n.kind = json_node_kind::integer;
            n.min_bytes = 1;
            return add(std::move(n), path);
        }
        if (type == "boolean" || type == "null") {
            json_node n;
            n.kind = json_node_kind::literal;
            n.literals = type == "boolean" ? std::vector<std::string>{"false", "true"} : std::vector<std::string>{"null"};
            n.min_bytes = 4;
            return add(std::move(n), path);
        }
        if (type == "object") return object(s, path, depth);
        if (type == "array") return array(s, path, depth);
        return make_error(errc::invalid_argument, "{}.type: unknown type '{}'", path, type);
    }

    result<std::uint16_t> object(const json& s, const std::string& path, std::size_t depth) {
        json_node n;
        n.kind = json_node_kind::object;
        std::vector<std::pair<std::string, std::uint16_t>> props;
        std::vector<std::string> names;
        if (auto p = s.find("properties"); p != s.end()) {
            if (!p->is_object()) return make_error(errc::invalid_argument, "{}.properties: expected an object", path);
            if (p->size() > max_schema_properties)
                return make_error(errc::invalid_argument, "{}.properties: {} properties is more than the {} allowed",
                                  path, p->size(), max_schema_properties);
            for (const auto& [name, sub] : p->items()) {
                auto node = compile(sub, fmt::format("{}.properties.{}", path, name), depth + 1);
                if (!node) return node;
                std::string key = json(name).dump(-1, ' ', false, json::error_handler_t::strict).substr(1);
                props.emplace_back(std::move(key), *node);
                names.push_back(name);
            }
        }
        std::vector<std::size_t> order(props.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return props[a].first < props[b].first; });
        for (std::size_t i : order) {
            n.keys.push_back(props[i].first);
            n.values.push_back(props[i].second);
        }
        if (auto r = s.find("required"); r != s.end()) {
            if (!r->is_array()) return make_error(errc::invalid_argument, "{}.required: expected an array of names", path);
            for (const json& name : *r) {
                if (!name.is_string())
                    return make_error(errc::invalid_argument, "{}.required: expected an array of names", path);
                auto it = std::find(names.begin(), names.end(), name.get<std::string>());
                if (it == names.end())
                    return make_error(errc::invalid_argument, "{}.required: '{}' is not one of the properties", path,
                                      name.get<std::string>());
                const auto declared = static_cast<std::size_t>(it - names.begin());
                const auto sorted = static_cast<std::size_t>(std::find(order.begin(), order.end(), declared) -
                                                             order.begin());
                n.required |= bit(sorted);
            }
        }
        n.additional = json_grammar::any_node;
        if (auto a = s.find("additionalProperties"); a != s.end()) {
            if (a->is_boolean() && !a->get<bool>()) {
                n.additional = -1;
            } else {
                auto node = compile(*a, path + ".additionalProperties", depth + 1);
                if (!node) return node;
                n.additional = *node;
            }
        }
        n.min_bytes = 2;
        std::uint32_t n_required = 0;
        for (std::size_t i = 0; i < n.keys.size(); ++i) {
            if (n.required & bit(i)) {
                n.min_bytes += 1 + static_cast<std::uint32_t>(n.keys[i].size()) + 1 + g_.nodes_[n.values[i]].min_bytes;
                ++n_required;
            }
        }
        if (n_required > 1) n.min_bytes += n_required - 1;
        return add(std::move(n), path);
    }

    result<std::uint16_t> array(const json& s, const std::string& path, std::size_t depth) {
        json_node n;
        n.kind = json_node_kind::array;
        n.items = json_grammar::any_node;
        if (auto it = s.find("items"); it != s.end()) {
            auto node = compile(*it, path + ".items", depth + 1);
            if (!node) return node;
            n.items = *node;
        }
        auto bound = [&](const char* key, std::uint32_t& out) -> result<void> {
            auto it = s.find(key);
            if (it == s.end()) return {};
            if (!it->is_number_unsigned() || it->get<std::uint64_t>() > 4096)
                return make_error(errc::invalid_argument, "{}.{}: expected an integer in 0..4096", path, key);
            out = static_cast<std::uint32_t>(it->get<std::uint64_t>());
            return {};
        };
        if (auto r = bound("minItems", n.min_items); !r) return unexpected(r.error());
        if (auto r = bound("maxItems", n.max_items); !r) return unexpected(r.error());
        if (n.min_items > n.max_items)
            return make_error(errc::invalid_argument, "{}: minItems {} is more than maxItems {}", path, n.min_items,
                              n.max_items);
        const std::uint32_t item = g_.nodes_[n.items].min_bytes;
        n.min_bytes = 2 + n.min_items * item + (n.min_items > 0 ? n.min_items - 1 : 0);
        return add(std::move(n), path);
    }

    json_grammar& g_;
};


result<json_grammar> json_grammar::from_schema(const nlohmann::json& schema) {
    json_grammar g;
    json_schema_compiler c(g);
    auto root = c.compile(schema, "schema", 0);
    if (!root) return unexpected(root.error());
    g.root_ = *root;
    return g;
}

// --- recogniser ---

json_state json_recognizer::initial() const noexcept {
    json_state s;
    s.frames[0] = json_frame{};
    s.frames[0].kind = f_document;
    s.frames[0].node = g_.root();
    s.depth = 1;
    return s;
}

bool json_recognizer::push(json_state& s, const json_frame& f) const noexcept {
    // An object or an array leaves room for a frame of its own values: an object opened
    // where no value could follow its ':' would be a dead end.
    const std::size_t need = f.kind == f_object || f.kind == f_array ? 2 : 1;
    if (s.depth + need > s.frames.size()) return false;
    s.frames[s.depth++] = f;
    return true;
}

bool json_recognizer::start_value(json_state& s, std::uint16_t node, std::uint8_t c) const noexcept {
    const json_node& n = g_.node(node);
    json_frame f;
    f.node = node;
    switch (n.kind) {
        case json_node_kind::any:
            if (c == '{') return start_value(s, json_grammar::any_object_node, c);
            if (c == '[') return start_value(s, json_grammar::any_array_node, c);
            if (c == '"') return start_value(s, json_grammar::any_string_node, c);
            if (c == '-' || is_digit(c)) return start_value(s, json_grammar::any_number_node, c);
            return start_value(s, json_grammar::any_literal_node, c);
        case json_node_kind::object:
            if (c != '{') return false;
            f.kind = f_object;
            f.phase = o_open;
            return push(s, f);
        case json_node_kind::array:
            if (c != '[') return false;
            f.kind = f_array;
            f.phase = a_open;
            return push(s, f);
        case json_node_kind::string:
            if (c != '"') return false;
            f.kind = f_string;
            return push(s, f);
        case json_node_kind::number:
        case json_node_kind::integer:
            f.kind = f_number;
            f.count = 1;
            if (c == '-') f.phase = n_minus;
            else if (c == '0') f.phase = n_zero;
            else if (is_digit(c)) f.phase = n_int;
            else return false;
            return push(s, f);
        case json_node_kind::literal: {
            f.kind = f_literal;
            f.lo = 0;
            f.hi = static_cast<std::uint16_t>(n.literals.size());
            narrow(n.literals, f.lo, f.hi, 0, c);
            if (f.lo == f.hi) return false;
            f.pos = 1;
            // A literal that nothing extends ends here ("true", "\"red\"").
            if (f.hi - f.lo == 1 && n.literals[f.lo].size() == 1) return true;
            return push(s, f);
        }
        case json_node_kind::one_of_types:
            for (std::uint16_t m : n.values) {
                const json_node_kind k = g_.node(m).kind;
                const bool starts = (k == json_node_kind::object && c == '{') || (k == json_node_kind::array && c == '[') ||
                                    (k == json_node_kind::string && c == '"') ||
                                    ((k == json_node_kind::number || k == json_node_kind::integer) &&
                                     (c == '-' || is_digit(c))) ||
                                    k == json_node_kind::literal || k == json_node_kind::any;
                if (!starts) continue;
                if (k == json_node_kind::literal || k == json_node_kind::any) {
                    json_state trial;
                    trial.assign(s);
                    if (!start_value(trial, m, c)) continue;
                    s.assign(trial);
                    return true;
                }
                return start_value(s, m, c);
            }
            return false;
    }
    return false;
}

bool json_recognizer::feed_object(json_state& s, json_frame& f, std::uint8_t c) const noexcept {
    const json_node& n = g_.node(f.node);
    const std::uint64_t all = n.keys.size() == 64 ? ~std::uint64_t{0} : bit(n.keys.size()) - 1;
    const bool more_keys = n.additional >= 0 || (f.seen & all) != all;
    auto begin_key = [&]() {
        f.phase = o_key;
        f.str = s_plain;
        f.lo = 0;
        f.hi = static_cast<std::uint16_t>(n.keys.size());
        f.pos = 0;
        return true;
    };
    switch (f.phase) {
        case o_open:
            if (c == '}' && (n.required & ~f.seen) == 0) return s.depth--, true;
            if (c == '"' && more_keys) return begin_key();
            return false;
        case o_next:
            return c == '"' && begin_key();
        case o_after:
            if (c == '}' && (n.required & ~f.seen) == 0) return s.depth--, true;
            if (c == ',' && more_keys) {
                f.phase = o_next;
                return true;
            }
            return false;
        case o_colon:
            if (c != ':') return false;
            f.phase = o_value;
            return true;
        case o_value: {
            const auto node = f.prop >= 0 ? n.values[static_cast<std::size_t>(f.prop)]
                                          : static_cast<std::uint16_t>(n.additional);
            f.phase = o_after;
            return start_value(s, node, c);
        }
        case o_key: {
            const lex l = lex_string(f, c);
            if (l == lex::reject) return false;
            if (f.lo < f.hi) narrow(n.keys, f.lo, f.hi, f.pos, c);
            ++f.pos;
            if (n.additional < 0) {
                // Only properties not given yet may follow.
                bool open = false;
                for (std::uint16_t i = f.lo; i < f.hi && !open; ++i) open = (f.seen & bit(i)) == 0;
                if (!open) return false;
            }
            if (l == lex::closed) {
                f.prop = -1;
                if (f.lo < f.hi && n.keys[f.lo].size() == f.pos) f.prop = static_cast<std::int16_t>(f.lo);
                if (f.prop >= 0) {
                    if (f.seen & bit(static_cast<std::size_t>(f.prop))) return false;  // a repeated key
                    f.seen |= bit(static_cast<std::size_t>(f.prop));
                } else if (n.additional < 0) {
                    return false;
                }
                f.phase = o_colon;
            }
            return true;
        }
        default: return false;
    }
}

bool json_recognizer::feed_array(json_state& s, json_frame& f, std::uint8_t c) const noexcept {
    const json_node& n = g_.node(f.node);
    switch (f.phase) {
        case a_open:
            if (c == ']' && n.min_items == 0) return s.depth--, true;
            if (n.max_items == 0) return false;
            f.phase = a_after;
            ++f.count;
            return start_value(s, n.items, c);
        case a_after:
            if (c == ']' && f.count >= n.min_items) return s.depth--, true;
            if (c == ',' && f.count < n.max_items) {
                f.phase = a_next;
                return true;
            }
            return false;
        case a_next:
            f.phase = a_after;
            ++f.count;
            return start_value(s, n.items, c);
        default: return false;
    }
}

bool json_recognizer::feed(json_state& s, std::uint8_t c) const noexcept {
    if (s.failed) return false;
    for (;;) {
        json_frame& f = s.frames[s.depth - 1];
        // Whitespace between tokens of the frames that have such gaps.
        const bool gap = (f.kind == f_document && f.phase == 0) ||
                         (f.kind == f_object && f.phase != o_key) || f.kind == f_array;
        if (gap && is_ws(c)) {
            if (s.whitespace_run >= max_json_whitespace_run) break;
            ++s.whitespace_run;
            return true;
        }
        bool ok = false;
        switch (f.kind) {
            case f_document:
                if (f.phase != 0) break;
                f.phase = 1;
                ok = start_value(s, f.node, c);
                break;
            case f_object: ok = feed_object(s, f, c); break;
            case f_array: ok = feed_array(s, f, c); break;
            case f_string: {
                const lex l = lex_string(f, c);
                if (l == lex::closed) --s.depth;
                ok = l != lex::reject;
                break;
            }
            case f_number: {
                const bool integer = g_.node(f.node).kind == json_node_kind::integer;
                // Room for a digit after a byte that needs one.
                const bool room = f.count + 2 <= max_json_number_bytes;
                const bool digit_room = f.count + 1 <= max_json_number_bytes;
                std::uint8_t next = 0xFF;
                switch (f.phase) {
                    case n_minus:
                        if (c == '0') next = n_zero;
                        else if (is_digit(c)) next = n_int;
                        break;
                    case n_int:
                        if (is_digit(c) && digit_room) next = n_int;
                        [[fallthrough]];
                    case n_zero:
                        if (next != 0xFF) break;
                        if (!integer && c == '.' && room) next = n_dot;
                        else if (!integer && (c == 'e' || c == 'E') && room) next = n_e;
                        break;
                    case n_dot:
                        if (is_digit(c)) next = n_frac;
                        break;
                    case n_frac:
                        if (is_digit(c) && digit_room) next = n_frac;
                        else if ((c == 'e' || c == 'E') && room) next = n_e;
                        break;
                    case n_e:
                        if (is_digit(c)) next = n_exp, f.code = 1;
                        else if ((c == '+' || c == '-') && room) next = n_esign;
                        break;
                    case n_esign:
                    case n_exp:
                        // Two exponent digits: a larger exponent overflows a double, and
                        // parsers (nlohmann::json among them) refuse such a number.
                        if (is_digit(c) && digit_room && f.code < 2) next = n_exp, ++f.code;
                        break;
                    default: break;
                }
                if (next != 0xFF) {
                    f.phase = next;
                    ++f.count;
                    ok = true;
                    break;
                }
                if (!number_complete(f.phase)) break;
                --s.depth;  // the number ended; the byte belongs to the frame below
                continue;
            }
            case f_literal: {
                const json_node& n = g_.node(f.node);
                std::uint16_t lo = f.lo;
                std::uint16_t hi = f.hi;
                narrow(n.literals, lo, hi, f.pos, c);
                if (lo < hi) {
                    f.lo = lo;
                    f.hi = hi;
                    ++f.pos;
                    if (hi - lo == 1 && n.literals[lo].size() == f.pos) --s.depth;
                    ok = true;
                    break;
                }
                if (n.literals[f.lo].size() != f.pos) break;  // no literal ends here
                --s.depth;
                continue;
            }
            default: break;
        }
        if (!ok) break;
        s.whitespace_run = 0;
        return true;
    }
    s.failed = true;
    return false;
}

bool json_recognizer::feed(json_state& s, std::string_view bytes) const noexcept {
    for (char ch : bytes) {
        if (!feed(s, static_cast<std::uint8_t>(ch))) return false;
    }
    return true;
}

bool json_recognizer::closed(const json_state& s) const noexcept {
    return !s.failed && s.depth == 1 && s.frames[0].phase == 1;
}

bool json_recognizer::complete(const json_state& s) const noexcept {
    if (s.failed) return false;
    if (closed(s)) return true;
    if (s.depth != 2 || s.frames[0].phase != 1) return false;
    const json_frame& f = s.frames[1];
    if (f.kind == f_number) return number_complete(f.phase);
    if (f.kind == f_literal) return g_.node(f.node).literals[f.lo].size() == f.pos;
    return false;
}

std::uint32_t json_recognizer::required_rest(const json_node& n, std::uint64_t seen) const noexcept {
    std::uint32_t total = 0;
    for (std::size_t i = 0; i < n.keys.size(); ++i) {
        if ((n.required & bit(i)) && !(seen & bit(i)))
            total += 1 + 1 + static_cast<std::uint32_t>(n.keys[i].size()) + 1 + g_.node(n.values[i]).min_bytes;
    }
    return total;  // each with its comma
}

std::uint32_t json_recognizer::frame_min_bytes(const json_frame& f) const noexcept {
    const json_node& n = g_.node(f.node);
    switch (f.kind) {
        case f_document: return f.phase == 0 ? g_.node(f.node).min_bytes : 0;
        case f_string: return lex_pending(f) + 1;
        case f_number:
            return number_complete(f.phase) ? 0 : 1;
        case f_literal: {
            std::uint32_t best = UINT32_MAX;
            for (std::uint16_t i = f.lo; i < f.hi; ++i)
                best = std::min<std::uint32_t>(best, static_cast<std::uint32_t>(n.literals[i].size()) - f.pos);
            return best;
        }
        case f_array: {
            const std::uint32_t item = g_.node(n.items).min_bytes;
            const auto left = [&](std::uint32_t count) { return n.min_items > count ? n.min_items - count : 0; };
            switch (f.phase) {
                case a_open: return 1 + (n.min_items > 0 ? n.min_items * item + n.min_items - 1 : 0);
                case a_after: return 1 + left(f.count) * (item + 1);
                default: return item + left(f.count + 1) * (item + 1) + 1;
            }
        }
        case f_object: {
            const std::uint32_t additional_value =
                n.additional >= 0 ? g_.node(static_cast<std::uint16_t>(n.additional)).min_bytes : 0;
            auto value_of = [&](std::int16_t prop) {
                return prop >= 0 ? g_.node(n.values[static_cast<std::size_t>(prop)]).min_bytes : additional_value;
            };
            switch (f.phase) {
                case o_open: {
                    const std::uint32_t rest = required_rest(n, f.seen);
                    return rest == 0 ? 1 : rest;  // n commas for n properties and '}' less the first comma
                }
                case o_after: return required_rest(n, f.seen) + 1;
                case o_colon: return 1 + value_of(f.prop) + required_rest(n, f.seen) + 1;
                case o_value: return value_of(f.prop) + required_rest(n, f.seen) + 1;
                case o_next: {
                    const std::uint32_t rest = required_rest(n, f.seen);
                    if (rest > 0) return rest;  // less the comma already written, plus '}'
                    std::uint32_t best = n.additional >= 0 ? 2 + 1 + additional_value : UINT32_MAX;
                    for (std::size_t i = 0; i < n.keys.size(); ++i) {
                        if (f.seen & bit(i)) continue;
                        best = std::min<std::uint32_t>(
                            best, 1 + static_cast<std::uint32_t>(n.keys[i].size()) + 1 + g_.node(n.values[i]).min_bytes);
                    }
                    return best + 1;
                }
                case o_key: {
                    std::uint32_t best = UINT32_MAX;
                    if (n.additional >= 0) {
                        // Closing the key now would name a given property (refused when seen, that
                        // property's value when not): an additional key needs one more byte first.
                        bool repeat = false;
                        for (std::uint16_t i = f.lo; i < f.hi; ++i)
                            repeat |= n.keys[i].size() == f.pos + 1u && f.str == s_plain;
                        best = lex_pending(f) + (repeat ? 1 : 0) + 1 + 1 + additional_value + required_rest(n, f.seen) + 1;
                    }
                    for (std::uint16_t i = f.lo; i < f.hi; ++i) {
                        if (f.seen & bit(i)) continue;
                        const std::uint32_t key_left = static_cast<std::uint32_t>(n.keys[i].size()) - f.pos;
                        best = std::min(best, key_left + 1 + g_.node(n.values[i]).min_bytes +
                                                  required_rest(n, f.seen | bit(i)) + 1);
                    }
                    return best;
                }
                default: return 0;
            }
        }
        default: return 0;
    }
}

std::uint32_t json_recognizer::min_bytes_to_close(const json_state& s) const noexcept {
    if (s.failed) return UINT32_MAX;
    std::uint32_t total = 0;
    for (std::uint32_t d = 0; d < s.depth; ++d) total += frame_min_bytes(s.frames[d]);
    return total;
}

}  // namespace moed::engine
