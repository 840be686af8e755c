#include "scheduler/reference_trace.h"

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

namespace moed::scheduler {

namespace {

// Bounds on what a line may claim, so a corrupt file fails with a message instead of
// allocating without limit.
constexpr std::int64_t layers_max = 4096;
constexpr std::int64_t experts_max = 65536;
constexpr std::size_t experts_used_max = 64;

struct raw_row {
    std::uint32_t tag = 0;
    std::uint32_t layer = 0;
    std::int64_t pos = 0;
    std::int32_t token = 0;
    std::vector<std::int32_t> chosen;
    std::vector<float> weights;
};

template <typename T>
result<T> field(const nlohmann::json& row, const char* name, const std::string& where) {
    auto it = row.find(name);
    if (it == row.end()) return make_error(errc::bad_file, "{}: missing field '{}'", where, name);
    try {
        return it->get<T>();
    } catch (const nlohmann::json::exception&) {
        return make_error(errc::bad_file, "{}: field '{}' has the wrong type", where, name);
    }
}

}  // namespace

result<trace_data> read_reference_trace(std::istream& in, const std::string& source,
                                        const reference_trace_options& options) {
    std::vector<raw_row> rows;
    std::map<std::string, std::uint32_t> prompt_tag;
    std::vector<std::string> tag_names;
    std::set<std::tuple<std::uint32_t, std::uint32_t, std::int64_t>> seen;
    std::uint32_t n_layer = 0;
    std::int32_t max_expert = -1;
    std::size_t n_used = 0;

    std::string line;
    std::size_t line_no = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = fmt::format("{}:{}", source, line_no);
        nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (row.is_discarded() || !row.is_object()) return make_error(errc::bad_file, "{}: not a JSON object", where);

        auto domain = field<std::string>(row, "d", where);
        if (!domain) return unexpected(std::move(domain).error());
        auto prompt = field<std::string>(row, "p", where);
        if (!prompt) return unexpected(std::move(prompt).error());
        auto layer = field<std::int64_t>(row, "l", where);
        if (!layer) return unexpected(std::move(layer).error());
        auto pos = field<std::int64_t>(row, "t", where);
        if (!pos) return unexpected(std::move(pos).error());
        auto token = field<std::int64_t>(row, "tok", where);
        if (!token) return unexpected(std::move(token).error());
        auto chosen = field<std::vector<std::int64_t>>(row, "e", where);
        if (!chosen) return unexpected(std::move(chosen).error());
        auto weights = field<std::vector<float>>(row, "w", where);
        if (!weights) return unexpected(std::move(weights).error());

        if (*layer < 0 || *layer >= layers_max) return make_error(errc::bad_file, "{}: layer {} out of range", where, *layer);
        if (*pos < 0) return make_error(errc::bad_file, "{}: negative position {}", where, *pos);
        if (*token < 0 || *token > std::numeric_limits<std::int32_t>::max()) {
            return make_error(errc::bad_file, "{}: token {} out of range", where, *token);
        }
        if (chosen->empty() || chosen->size() > experts_used_max || chosen->size() != weights->size()) {
            return make_error(errc::bad_file, "{}: 'e' has {} experts and 'w' {} weights", where, chosen->size(),
                              weights->size());
        }
        if (n_used != 0 && chosen->size() != n_used) {
            return make_error(errc::bad_file, "{}: {} chosen experts, earlier lines have {}", where, chosen->size(), n_used);
        }
        n_used = chosen->size();

        raw_row r;
        auto [it, inserted] = prompt_tag.try_emplace(*prompt, static_cast<std::uint32_t>(tag_names.size()));
        if (inserted) {
            const std::string& p = *prompt;
            const std::size_t dash = p.rfind('-');
            tag_names.push_back(*domain + "/" + (dash == std::string::npos ? p : p.substr(dash + 1)));
        }
        r.tag = it->second;
        r.layer = static_cast<std::uint32_t>(*layer);
        r.pos = *pos;
        r.token = static_cast<std::int32_t>(*token);
        if (!seen.emplace(r.tag, r.layer, r.pos).second) {
            return make_error(errc::bad_file, "{}: prompt {} layer {} position {} given twice", where, *prompt, *layer, *pos);
        }
        for (std::int64_t e : *chosen) {
            if (e < 0 || e >= experts_max) return make_error(errc::bad_file, "{}: expert {} out of range", where, e);
            if (std::count(chosen->begin(), chosen->end(), e) != 1) {
                return make_error(errc::bad_file, "{}: expert {} chosen twice", where, e);
            }
            r.chosen.push_back(static_cast<std::int32_t>(e));
            max_expert = std::max(max_expert, static_cast<std::int32_t>(e));
        }
        r.weights = std::move(*weights);
        n_layer = std::max(n_layer, r.layer + 1);
        rows.push_back(std::move(r));
    }
    if (in.bad()) return make_error(errc::io, "{}: read failed", source);
    if (rows.empty()) return make_error(errc::bad_file, "{}: no routing rows", source);

    trace_data trace;
    trace.info.model_name = options.model_name;
    trace.info.n_layer = n_layer;
    trace.info.n_expert = options.n_expert != 0 ? options.n_expert : static_cast<std::uint32_t>(max_expert + 1);
    trace.info.n_expert_used = static_cast<std::uint32_t>(n_used);
    if (static_cast<std::int64_t>(max_expert) >= static_cast<std::int64_t>(trace.info.n_expert)) {
        return make_error(errc::bad_file, "{}: expert {} is past --n-expert {}", source, max_expert, trace.info.n_expert);
    }
    if (trace.info.n_expert_used > trace.info.n_expert) {
        return make_error(errc::bad_file, "{}: {} chosen experts of {}", source, trace.info.n_expert_used,
                          trace.info.n_expert);
    }
    trace.tag_names = std::move(tag_names);
    trace.records.reserve(rows.size());
    for (raw_row& r : rows) {
        trace_record rec;
        rec.seq = r.tag;
        rec.tag = r.tag;
        rec.pos = r.pos;
        rec.token = r.token;
        rec.layer = r.layer;
        rec.prefill = true;
        rec.probs.assign(trace.info.n_expert, 0.0f);
        for (std::size_t i = 0; i < r.chosen.size(); ++i) rec.probs[static_cast<std::size_t>(r.chosen[i])] = r.weights[i];
        rec.chosen = std::move(r.chosen);
        trace.records.push_back(std::move(rec));
    }
    return trace;
}

}  // namespace moed::scheduler
