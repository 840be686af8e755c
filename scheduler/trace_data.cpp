#include "scheduler/trace_data.h"

#include <algorithm>
#include <numeric>
#include <tuple>

namespace moed::scheduler {

std::string_view tag_domain(const trace_data& trace, std::uint32_t tag) {
    if (tag >= trace.tag_names.size()) return {};
    std::string_view name = trace.tag_names[tag];
    return name.substr(0, name.find('/'));
}

result<void> validate_trace(const trace_data& trace) {
    const trace_info& info = trace.info;
    if (info.n_layer == 0 || info.n_expert == 0 || info.n_expert_used == 0 || info.n_expert_used > info.n_expert) {
        return make_error(errc::bad_file, "trace: bad shape (n_layer {}, n_expert {}, n_expert_used {})",
                          info.n_layer, info.n_expert, info.n_expert_used);
    }
    if (!info.expert_bytes.empty() && info.expert_bytes.size() != info.n_layer) {
        return make_error(errc::bad_file, "trace: expert_bytes has {} entries for {} layers",
                          info.expert_bytes.size(), info.n_layer);
    }
    const std::size_t lookahead_size = static_cast<std::size_t>(info.lookahead_depth) * info.n_expert;
    for (std::size_t i = 0; i < trace.records.size(); ++i) {
        const trace_record& r = trace.records[i];
        if (r.layer >= info.n_layer) {
            return make_error(errc::bad_file, "trace record {}: layer {} out of range (n_layer {})", i, r.layer,
                              info.n_layer);
        }
        if (r.chosen.size() != info.n_expert_used) {
            return make_error(errc::bad_file, "trace record {}: {} chosen experts, expected {}", i, r.chosen.size(),
                              info.n_expert_used);
        }
        for (std::int32_t e : r.chosen) {
            if (e < 0 || static_cast<std::uint32_t>(e) >= info.n_expert) {
                return make_error(errc::bad_file, "trace record {}: expert {} out of range (n_expert {})", i, e,
                                  info.n_expert);
            }
        }
        if (!r.probs.empty() && r.probs.size() != info.n_expert) {
            return make_error(errc::bad_file, "trace record {}: {} probabilities, expected {}", i, r.probs.size(),
                              info.n_expert);
        }
        if (!r.lookahead.empty() && r.lookahead.size() != lookahead_size) {
            return make_error(errc::bad_file, "trace record {}: {} lookahead values, expected {}", i,
                              r.lookahead.size(), lookahead_size);
        }
        if (!trace.tag_names.empty() && r.tag >= trace.tag_names.size()) {
            return make_error(errc::bad_file, "trace record {}: tag {} has no name ({} names)", i, r.tag,
                              trace.tag_names.size());
        }
    }
    return {};
}

result<std::vector<decode_token>> decode_order(const trace_data& trace) {
    MOED_TRY(validate_trace(trace));
    const auto& recs = trace.records;
    std::vector<std::size_t> order(recs.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    // Tag order first, so a multi-sequence recording replays prompt by prompt in the order
    // the caller labelled them, whatever sequence ids the engine handed out.
    auto key = [&](std::size_t i) { return std::tuple(recs[i].tag, recs[i].seq, recs[i].pos, recs[i].layer); };
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) < key(b); });

    std::vector<decode_token> tokens;
    for (std::size_t k = 0; k < order.size(); ++k) {
        const trace_record& r = recs[order[k]];
        const bool same_token = !tokens.empty() && tokens.back().seq == r.seq && tokens.back().tag == r.tag &&
                                tokens.back().pos == r.pos;
        if (same_token) {
            const trace_record& prev = recs[tokens.back().layers.back()];
            if (prev.layer == r.layer) {
                return make_error(errc::bad_file, "trace: sequence {} position {} layer {} recorded twice", r.seq,
                                  r.pos, r.layer);
            }
            tokens.back().layers.push_back(order[k]);
            continue;
        }
        decode_token t;
        t.seq = r.seq;
        t.tag = r.tag;
        t.pos = r.pos;
        t.first_of_sequence = tokens.empty() || tokens.back().seq != r.seq || tokens.back().tag != r.tag;
        t.layers.push_back(order[k]);
        tokens.push_back(std::move(t));
    }
    return tokens;
}

std::vector<float> tcess_scores(const trace_data& trace, const std::function<bool(std::uint32_t tag)>& use) {
    const trace_info& info = trace.info;
    const std::size_t ne = info.n_expert;
    std::vector<double> sum(static_cast<std::size_t>(info.n_layer) * ne, 0.0);
    std::vector<std::uint64_t> tokens(info.n_layer, 0);
    for (const trace_record& r : trace.records) {
        if (r.layer >= info.n_layer || !use(r.tag)) continue;
        ++tokens[r.layer];
        for (std::int32_t e : r.chosen) {
            if (e < 0 || static_cast<std::size_t>(e) >= ne) continue;
            const float p = r.probs.size() == ne ? r.probs[static_cast<std::size_t>(e)] : 1.0f / static_cast<float>(r.chosen.size());
            sum[r.layer * ne + static_cast<std::size_t>(e)] += p;
        }
    }
    std::vector<float> out(sum.size(), 0.0f);
    for (std::uint32_t l = 0; l < info.n_layer; ++l) {
        if (tokens[l] == 0) continue;
        for (std::size_t e = 0; e < ne; ++e) out[l * ne + e] = static_cast<float>(sum[l * ne + e] / static_cast<double>(tokens[l]));
    }
    return out;
}

}  // namespace moed::scheduler
