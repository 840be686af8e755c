// A small JSON Schema validator for the subset moed's json_schema response format takes
// (type / type lists, properties, required, additionalProperties, items, minItems, maxItems,
// enum, const), written apart from engine/json_grammar so that tests check the grammar's
// output against an independent reading of the schema.
#pragma once

#include <cmath>

#include <algorithm>
#include <string>

#include <nlohmann/json.hpp>

namespace moed::test {

// Empty when `value` satisfies `schema`; otherwise where and why it does not.
inline std::string schema_violation(const nlohmann::json& value, const nlohmann::json& schema,
                                    const std::string& path = "$") {
    if (schema.is_boolean()) return schema.get<bool>() ? "" : path + ": schema false";
    if (auto c = schema.find("const"); c != schema.end() && *c != value) return path + ": not the const value";
    if (auto e = schema.find("enum"); e != schema.end()) {
        if (std::find(e->begin(), e->end(), value) == e->end()) return path + ": not one of the enum values";
    }
    if (auto t = schema.find("type"); t != schema.end()) {
        auto is = [&](const std::string& type) {
            if (type == "object") return value.is_object();
            if (type == "array") return value.is_array();
            if (type == "string") return value.is_string();
            // JSON Schema: an integer is a number with no fractional part; one past 64 bits
            // reaches nlohmann as a double.
            if (type == "integer")
                return value.is_number_integer() ||
                       (value.is_number_float() && std::trunc(value.get<double>()) == value.get<double>());
            if (type == "number") return value.is_number();
            if (type == "boolean") return value.is_boolean();
            if (type == "null") return value.is_null();
            return false;
        };
        bool ok = false;
        if (t->is_string()) ok = is(t->get<std::string>());
        else for (const nlohmann::json& one : *t) ok = ok || is(one.get<std::string>());
        if (!ok) return path + ": wrong type " + value.type_name();
    }
    if (value.is_object()) {
        const nlohmann::json props = schema.value("properties", nlohmann::json::object());
        for (const nlohmann::json& r : schema.value("required", nlohmann::json::array())) {
            if (!value.contains(r.get<std::string>())) return path + ": missing required " + r.get<std::string>();
        }
        for (const auto& [key, v] : value.items()) {
            if (props.contains(key)) {
                if (std::string why = schema_violation(v, props[key], path + "." + key); !why.empty()) return why;
            } else if (auto a = schema.find("additionalProperties"); a != schema.end()) {
                if (std::string why = schema_violation(v, *a, path + "." + key); !why.empty()) return why;
            }
        }
    }
    if (value.is_array()) {
        if (value.size() < schema.value("minItems", 0u)) return path + ": too few items";
        if (value.size() > schema.value("maxItems", 1u << 30)) return path + ": too many items";
        if (auto items = schema.find("items"); items != schema.end()) {
            for (std::size_t i = 0; i < value.size(); ++i) {
                if (std::string why = schema_violation(value[i], *items, path + "[" + std::to_string(i) + "]");
                    !why.empty())
                    return why;
            }
        }
    }
    return "";
}

}  // namespace moed::test
