// trace-stats: reads a routing trace (scheduler/trace.h) and prints one JSON object with
// what it holds and how well its recorded predictions did:
// - records, sequences, tokens (prefill and decode), tags;
// - chosen_not_top_k: records whose chosen experts are not the k largest recorded
//   probabilities (ties allowed; should be 0);
// - lookahead recall per distance d = 1..depth and per target layer L: for the record of
//   (seq, pos, L - d + 1), the top-k experts of its lookahead row d - 1 (the router of
//   layer L applied to the stream entering layer L - d + 1) against the experts layer L
//   actually chose: |top-k ∩ chosen| / n_expert_used, averaged over tokens, at k =
//   n_expert_used and 2 x n_expert_used. Distance 1 is "the layer's own router on the
//   stream entering the layer" (before attention). The *_excluding_embeddings figures leave
//   out predictions made at layer 0 (from the token embeddings rather than a layer's
//   output), i.e. they average target layers d..n_layer-1.
// - previous-token recall per layer: the experts the same sequence chose at pos - 1 against
//   those chosen at pos (the history baseline, k = n_expert_used).
// - per-domain expert skew, when the trace's tags name domains ("<domain>/<id>", as moe-run
//   --prompts writes them): for each domain and layer, the share of the domain's routings
//   (chosen experts) taken by the max(n_expert / 4, n_expert_used) experts it chose most
//   ("top_quarter_share": 0.25 when a domain spreads its routings evenly, 1 when it uses
//   only a quarter of the experts), and the total variation distance between the domain's
//   expert distribution and that of all domains together ("divergence_from_all": 0 when
//   domains route alike). Both are averaged over layers per domain, and over domains and
//   layers in "domains"."top_quarter_share" / "divergence_from_all".
//
//   trace-stats TRACE [--prefill-only | --decode-only]
#include <algorithm>
#include <cmath>
#include <functional>
#include <cstdio>
#include <iostream>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "scheduler/trace.h"
#include "tools/cli_util.h"

namespace {

using moed::scheduler::trace_record;

[[noreturn]] void fail(const std::string& message) { moed::tools::fail("trace-stats", message); }

// Indices of the k largest values (ties: lower index first).
void top_k(const float* v, std::size_t n, std::size_t k, std::vector<std::int32_t>& out) {
    out.resize(n);
    std::iota(out.begin(), out.end(), 0);
    std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(k), out.end(),
                      [&](std::int32_t a, std::int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
    out.resize(k);
}

double overlap(const std::vector<std::int32_t>& predicted, const std::vector<std::int32_t>& actual) {
    std::size_t hit = 0;
    for (std::int32_t e : actual) hit += std::find(predicted.begin(), predicted.end(), e) != predicted.end() ? 1 : 0;
    return static_cast<double>(hit) / static_cast<double>(actual.size());
}

// The label before the first '/' of a tag name, or "" when it has none.
std::string domain_of(const std::string& tag) {
    const std::size_t slash = tag.find('/');
    return slash == std::string::npos ? std::string() : tag.substr(0, slash);
}

struct mean {
    double sum = 0.0;
    std::uint64_t n = 0;
    void add(double v) {
        sum += v;
        ++n;
    }
    nlohmann::json json() const { return n ? nlohmann::json(sum / static_cast<double>(n)) : nlohmann::json(nullptr); }
};

// Per-domain skew (see the header comment) from each domain's routings per (layer, expert).
nlohmann::json domain_skew(const std::map<std::string, std::vector<std::uint64_t>>& counts, std::size_t n_layer,
                           std::size_t n_exp, std::size_t k) {
    const std::size_t top = std::max(n_exp / 4, k);
    std::vector<std::uint64_t> all(n_layer * n_exp, 0);
    for (const auto& [name, c] : counts) {
        for (std::size_t i = 0; i < all.size(); ++i) all[i] += c[i];
    }
    mean share_all, divergence_all;
    nlohmann::json per_domain = nlohmann::json::object();
    std::vector<std::uint64_t> sorted(n_exp);
    for (const auto& [name, c] : counts) {
        mean share, divergence;
        std::uint64_t routings = 0;
        for (std::size_t l = 0; l < n_layer; ++l) {
            const std::uint64_t* row = c.data() + l * n_exp;
            const std::uint64_t* all_row = all.data() + l * n_exp;
            const std::uint64_t total = std::accumulate(row, row + n_exp, std::uint64_t{0});
            const std::uint64_t all_total = std::accumulate(all_row, all_row + n_exp, std::uint64_t{0});
            if (total == 0) continue;
            routings += total;
            std::copy(row, row + n_exp, sorted.begin());
            std::partial_sort(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(top), sorted.end(),
                              std::greater<>());
            const std::uint64_t top_total = std::accumulate(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(top),
                                                            std::uint64_t{0});
            share.add(static_cast<double>(top_total) / static_cast<double>(total));
            double tv = 0.0;
            for (std::size_t e = 0; e < n_exp; ++e) {
                tv += std::abs(static_cast<double>(row[e]) / static_cast<double>(total) -
                               static_cast<double>(all_row[e]) / static_cast<double>(all_total));
            }
            divergence.add(tv / 2.0);
        }
        share_all.sum += share.sum;
        share_all.n += share.n;
        divergence_all.sum += divergence.sum;
        divergence_all.n += divergence.n;
        per_domain[name] = {{"routings", routings},
                            {"top_quarter_share", share.json()},
                            {"divergence_from_all", divergence.json()}};
    }
    return {{"top_experts", top},
            {"top_quarter_share", share_all.json()},
            {"divergence_from_all", divergence_all.json()},
            {"per_domain", per_domain}};
}

}  // namespace

int main(int argc, char** argv) {
    std::string path;
    int phase = 0;  // 0 all, 1 prefill only, 2 decode only
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help") {
            std::puts("usage: trace-stats TRACE [--prefill-only | --decode-only]");
            return 0;
        }
        if (a == "--prefill-only") phase = 1;
        else if (a == "--decode-only") phase = 2;
        else if (path.empty() && !a.starts_with("-")) path = a;
        else fail("unknown argument '" + a + "'");
    }
    if (path.empty()) fail("no trace given");

    moed::scheduler::trace_info info;
    std::vector<std::string> tags;
    auto records = moed::scheduler::read_trace(path, info, &tags);
    if (!records) fail(records.error().message);
    const std::size_t n_exp = info.n_expert;
    const std::size_t k = info.n_expert_used;
    const std::uint32_t depth = info.lookahead_depth;

    std::map<std::tuple<std::uint64_t, std::int64_t, std::uint32_t>, std::size_t> at;
    std::set<std::uint64_t> seqs;
    std::uint64_t prefill_records = 0, duplicates = 0, not_top_k = 0;
    for (std::size_t i = 0; i < records->size(); ++i) {
        const trace_record& r = (*records)[i];
        if (!at.emplace(std::make_tuple(r.seq, r.pos, r.layer), i).second) ++duplicates;
        seqs.insert(r.seq);
        prefill_records += r.prefill ? 1 : 0;
        // Chosen = a top-k of the probabilities: no unchosen expert above a chosen one.
        float min_chosen = 2.0f;
        for (std::int32_t e : r.chosen) min_chosen = std::min(min_chosen, r.probs[e]);
        for (std::size_t e = 0; e < n_exp; ++e) {
            if (std::find(r.chosen.begin(), r.chosen.end(), static_cast<std::int32_t>(e)) == r.chosen.end() &&
                r.probs[e] > min_chosen) {
                ++not_top_k;
                break;
            }
        }
    }

    // [distance-1][layer]
    std::vector<std::vector<mean>> recall_k(depth, std::vector<mean>(info.n_layer));
    std::vector<std::vector<mean>> recall_2k(depth, std::vector<mean>(info.n_layer));
    std::vector<mean> prev_token(info.n_layer);
    std::vector<std::int32_t> pred;
    std::vector<std::string> tag_domain;
    for (const std::string& t : tags) tag_domain.push_back(domain_of(t));
    // domain -> routings per (layer, expert)
    std::map<std::string, std::vector<std::uint64_t>> domain_counts;
    for (const trace_record& r : *records) {
        if ((phase == 1 && !r.prefill) || (phase == 2 && r.prefill)) continue;
        for (std::uint32_t d = 1; d <= depth && d <= r.layer + 1; ++d) {
            const std::uint32_t source_layer = r.layer + 1 - d;
            auto it = at.find(std::make_tuple(r.seq, r.pos, source_layer));
            if (it == at.end()) continue;
            const trace_record& src = (*records)[it->second];
            const float* row = src.lookahead.data() + static_cast<std::size_t>(d - 1) * n_exp;
            top_k(row, n_exp, k, pred);
            recall_k[d - 1][r.layer].add(overlap(pred, r.chosen));
            top_k(row, n_exp, std::min(2 * k, n_exp), pred);
            recall_2k[d - 1][r.layer].add(overlap(pred, r.chosen));
        }
        if (auto it = at.find(std::make_tuple(r.seq, r.pos - 1, r.layer)); it != at.end()) {
            prev_token[r.layer].add(overlap((*records)[it->second].chosen, r.chosen));
        }
        if (r.tag < tag_domain.size() && !tag_domain[r.tag].empty()) {
            std::vector<std::uint64_t>& counts = domain_counts[tag_domain[r.tag]];
            counts.resize(info.n_layer * n_exp, 0);
            for (std::int32_t e : r.chosen) ++counts[r.layer * n_exp + static_cast<std::size_t>(e)];
        }
    }

    nlohmann::json out{{"trace", path},
                       {"model_name", info.model_name},
                       {"model_id", info.model_id},
                       {"n_layer", info.n_layer},
                       {"n_expert", info.n_expert},
                       {"n_expert_used", info.n_expert_used},
                       {"lookahead_depth", depth},
                       {"records", records->size()},
                       {"prefill_records", prefill_records},
                       {"sequences", seqs.size()},
                       {"tags", tags.size()},
                       {"duplicate_records", duplicates},
                       {"chosen_not_top_k", not_top_k},
                       {"phase", phase == 0 ? "all" : phase == 1 ? "prefill" : "decode"}};
    nlohmann::json lookahead = nlohmann::json::array();
    for (std::uint32_t d = 1; d <= depth; ++d) {
        mean all_k, all_2k, later_k, later_2k;
        nlohmann::json per_layer = nlohmann::json::array();
        for (std::uint32_t l = 0; l < info.n_layer; ++l) {
            const mean& a = recall_k[d - 1][l];
            const mean& b = recall_2k[d - 1][l];
            all_k.sum += a.sum;
            all_k.n += a.n;
            all_2k.sum += b.sum;
            all_2k.n += b.n;
            if (l + 1 > d) {  // the source layer l + 1 - d is not layer 0
                later_k.sum += a.sum;
                later_k.n += a.n;
                later_2k.sum += b.sum;
                later_2k.n += b.n;
            }
            per_layer.push_back({{"layer", l}, {"recall_at_k", a.json()}, {"recall_at_2k", b.json()}, {"tokens", a.n}});
        }
        lookahead.push_back({{"distance", d},
                             {"k", k},
                             {"recall_at_k", all_k.json()},
                             {"recall_at_2k", all_2k.json()},
                             {"recall_at_k_excluding_embeddings", later_k.json()},
                             {"recall_at_2k_excluding_embeddings", later_2k.json()},
                             {"per_layer", per_layer}});
    }
    out["lookahead"] = lookahead;
    nlohmann::json prev = nlohmann::json::array();
    mean prev_all;
    for (std::uint32_t l = 0; l < info.n_layer; ++l) {
        prev.push_back({{"layer", l}, {"recall_at_k", prev_token[l].json()}});
        prev_all.sum += prev_token[l].sum;
        prev_all.n += prev_token[l].n;
    }
    out["previous_token"] = {{"recall_at_k", prev_all.json()}, {"per_layer", prev}};
    out["domains"] = domain_skew(domain_counts, info.n_layer, n_exp, k);
    std::cout << out.dump(2) << "\n";
    return 0;
}
