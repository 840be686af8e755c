// trace-replay: measures expert caching policies on a routing trace and prints JSON.
//
//   trace-replay [options] TRACE   demand misses and bytes read of lru, lfu and belady (the
//                                  offline optimum), demand-only caches; and of policy: what
//                                  moed runs (its prefetch planner and tier core, through
//                                  scheduler/tier_replay.h, on a simulated clock and link)
//
// TRACE is a routing trace: a moed trace file (scheduler/trace.h; moe-run/moed --trace), or
// the reference JSON lines of shared/models/traces, named *.jsonl or given on standard input
// as "-" (decompressed: `zcat tinymoe-routing.jsonl.gz | trace-replay ... -`).
// Options:
//   --budget LIST     cache sizes, comma-separated: P% or N slots ("25%,50%"). Without
//                     --model P% is that share of all experts as slots; with --model it is
//                     what moed's tiers.host_budget "P%" is (that share of the model's expert
//                     bytes), cut into slot classes as the host tier cuts it (a run of slots
//                     per distinct expert slot size, storage/slot_classes.h), so every policy
//                     has the daemon's capacities. N slots are one pool of N slots.
//   --scope LIST      per-layer,global (per-layer splits the slots evenly among layers); the
//                     policy keeps moed's own placement (one pool) and is run in global only
//   --policies LIST   lru,lfu,policy,belady (tier is another name for policy)
//   --model GGUF      expert sizes per layer from the model, as the host tier reads them;
//                     without it bytes count expert loads
// The policy's machine: --link-gbps G, --link-latency-us U (the simulated disk), --layer-us T
//   (one layer's compute per token), --engine-order (records as the engine ran them, batches
//   and all, instead of one token at a time); its planner: --no-prefetch, --pf-gate on|off,
//   --pf-floor P, --pf-min-score P, --pf-max-per-layer N, --pf-depth D; its tier: --no-ring.
// Profiles: --profile FILE for every sequence: a moed task profile (moectl profile create;
//   scheduler/profile.h; refused if made for another model) or JSON
//   {"scores": [[per expert] per layer]}; or
//   --profile-holdout: each prompt gets its domain's TCESS profile made from the other half
//   of that domain's prompts (halves by the prompt's index within its domain, even/odd).
//   The policy sets it on the tier as moed sets a request's profile.
// --half even|odd|all: only the prompts of that half of each domain (tune on one half,
//   check on the other).
// --n-expert N: experts per layer of a reference trace (default: largest id + 1).
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/memory_budget.h"
#include "engine/model.h"
#include "storage/slot_geometry.h"
#include "storage/tiers.h"
#include "scheduler/profile.h"
#include "scheduler/reference_trace.h"
#include "scheduler/replay.h"
#include "scheduler/tier_replay.h"
#include "scheduler/trace.h"
#include "tools/cli_util.h"

namespace {

using namespace moed;
using namespace moed::scheduler;
using json = nlohmann::ordered_json;

constexpr std::string_view program = "trace-replay";

[[noreturn]] void fail(const std::string& message) { tools::fail(program, message); }

[[noreturn]] void usage(int code) {
    std::fprintf(code == 0 ? stdout : stderr,
                 "usage: trace-replay [--budget 25%%,50%%|N] [--scope per-layer,global] [--policies lru,lfu,policy,belady]\n"
                 "                    [--model GGUF] [--link-gbps G] [--link-latency-us U] [--layer-us T] [--engine-order]\n"
                 "                    [--no-prefetch] [--pf-gate on|off] [--pf-floor P] [--pf-min-score P]\n"
                 "                    [--pf-max-per-layer N] [--pf-depth D] [--no-ring]\n"
                 "                    [--profile FILE | --profile-holdout] [--half even|odd|all] [--n-expert N] TRACE|-\n");
    std::exit(code);
}

std::vector<std::string> split(std::string_view text, char sep) {
    std::vector<std::string> out;
    std::size_t start = 0;
    while (start <= text.size()) {
        const std::size_t end = std::min(text.find(sep, start), text.size());
        if (end > start) out.emplace_back(text.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

struct budget {
    std::string label;
    double fraction = 0.0;  // of all experts (of the expert bytes with --model), when a percentage
    std::uint32_t slots = 0;
};

// What --model tells about the host tier the daemon would run.
struct model_tier {
    storage::expert_layout layout;
    std::uint64_t expert_bytes = 0;  // all routed experts, as the daemon's budget shares count them
};

struct options {
    std::string trace_path;
    std::vector<budget> budgets;
    std::vector<cache_scope> scopes = {cache_scope::per_layer, cache_scope::global};
    std::vector<replay_policy> policies = {replay_policy::lru, replay_policy::lfu, replay_policy::belady};
    bool policy = true;  // moed's own: the planner and tier core
    tier_replay_options tier;
    std::optional<std::string> model_path;
    std::optional<std::string> profile_path;
    bool profile_holdout = false;
    std::string half = "all";
    std::uint32_t n_expert = 0;
};

budget parse_budget(const std::string& text) {
    budget b;
    b.label = text;
    if (!text.empty() && text.back() == '%') {
        const std::string number = text.substr(0, text.size() - 1);
        b.fraction = tools::parse_number<double>(program, "--budget", number.c_str(), tools::sign::positive) / 100.0;
        if (b.fraction > 1.0) fail("--budget " + text + " is more than every expert");
        return b;
    }
    std::string number = text;
    if (number.ends_with("-slots")) number.resize(number.size() - 6);
    b.slots = tools::parse_number<std::uint32_t>(program, "--budget", number.c_str(), tools::sign::positive);
    return b;
}

options parse(int argc, char** argv) {
    options o;
    std::vector<std::string> budgets = {"25%", "50%"};
    auto on_off = [](std::string_view flag, const std::string& v) {
        if (v != "on" && v != "off") fail(std::string(flag) + " takes on or off");
        return v == "on";
    };
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + std::string(a));
            return argv[++i];
        };
        if (a == "-h" || a == "--help") usage(0);
        else if (a == "--budget") budgets = split(next(), ',');
        else if (a == "--scope") {
            o.scopes.clear();
            for (const std::string& s : split(next(), ',')) {
                if (s == "per-layer") o.scopes.push_back(cache_scope::per_layer);
                else if (s == "global") o.scopes.push_back(cache_scope::global);
                else fail("unknown scope '" + s + "' (per-layer, global)");
            }
        } else if (a == "--policies") {
            o.policies.clear();
            o.policy = false;
            for (const std::string& s : split(next(), ',')) {
                if (s == "lru") o.policies.push_back(replay_policy::lru);
                else if (s == "lfu") o.policies.push_back(replay_policy::lfu);
                else if (s == "belady") o.policies.push_back(replay_policy::belady);
                else if (s == "policy" || s == "tier") o.policy = true;
                else fail("unknown policy '" + s + "' (lru, lfu, policy, belady)");
            }
        } else if (a == "--model") o.model_path = next();
        else if (a == "--profile") o.profile_path = next();
        else if (a == "--profile-holdout") o.profile_holdout = true;
        else if (a == "--half") {
            o.half = next();
            if (o.half != "even" && o.half != "odd" && o.half != "all") fail("--half takes even, odd or all");
        } else if (a == "--n-expert") o.n_expert = tools::parse_number<std::uint32_t>(program, a, next(), tools::sign::positive);
        else if (a == "--no-prefetch") o.tier.prefetch = false;
        else if (a == "--link-gbps") o.tier.link.bytes_per_s = 1e9 * tools::parse_number<double>(program, a, next(), tools::sign::positive);
        else if (a == "--link-latency-us") o.tier.link.latency_us = tools::parse_number<double>(program, a, next());
        else if (a == "--layer-us") o.tier.layer_compute_us = tools::parse_number<double>(program, a, next());
        else if (a == "--engine-order") o.tier.order = tier_replay_order::engine;
        else if (a == "--pf-gate") o.tier.planner.gate = on_off(a, next());
        else if (a == "--pf-floor") o.tier.planner.gate_options.floor = tools::parse_number<float>(program, a, next());
        else if (a == "--pf-min-score") o.tier.planner.min_score = tools::parse_number<float>(program, a, next());
        else if (a == "--pf-max-per-layer") o.tier.planner.max_per_layer = tools::parse_number<std::uint32_t>(program, a, next());
        else if (a == "--pf-depth") o.tier.planner.depth = tools::parse_number<int>(program, a, next(), tools::sign::positive);
        else if (a == "--no-ring") o.tier.tier.ring = false;
        else if (a.starts_with("--")) fail("unknown option " + std::string(a));
        else if (o.trace_path.empty()) o.trace_path = a;
        else fail("more than one trace given");
    }
    if (o.trace_path.empty()) usage(2);
    if (o.profile_path && o.profile_holdout) fail("--profile and --profile-holdout exclude each other");
    for (const std::string& b : budgets) o.budgets.push_back(parse_budget(b));
    if (o.budgets.empty()) fail("--budget lists no size");
    return o;
}

trace_data load_trace(const options& o) {
    reference_trace_options ro;
    ro.n_expert = o.n_expert;
    if (o.trace_path == "-") {
        auto t = read_reference_trace(std::cin, "<stdin>", ro);
        if (!t) fail(t.error().message);
        return std::move(t).value();
    }
    if (o.trace_path.ends_with(".gz")) fail(o.trace_path + ": decompress it first (zcat FILE | trace-replay ... -)");
    if (!o.trace_path.ends_with(".jsonl")) {
        // A moed trace file (scheduler/trace.h).
        trace_data t;
        auto records = read_trace(o.trace_path, t.info, &t.tag_names);
        if (!records) fail(records.error().message);
        t.records = std::move(records).value();
        return t;
    }
    std::ifstream in(o.trace_path);
    if (!in) fail("cannot open " + o.trace_path);
    ro.model_name = o.trace_path;
    auto t = read_reference_trace(in, o.trace_path, ro);
    if (!t) fail(t.error().message);
    return std::move(t).value();
}

// Index of each tag within its domain, in tag order (for the even/odd halves).
std::vector<std::uint32_t> index_in_domain(const trace_data& trace) {
    std::map<std::string, std::uint32_t, std::less<>> seen;
    std::vector<std::uint32_t> out(trace.tag_names.size(), 0);
    for (std::uint32_t t = 0; t < trace.tag_names.size(); ++t) out[t] = seen[std::string(tag_domain(trace, t))]++;
    return out;
}

void keep_half(trace_data& trace, const std::string& half) {
    if (half == "all") return;
    if (trace.tag_names.empty()) fail("--half needs a trace whose prompts have names");
    const auto index = index_in_domain(trace);
    const std::uint32_t want = half == "even" ? 0 : 1;
    std::erase_if(trace.records, [&](const trace_record& r) { return index[r.tag] % 2 != want; });
}

std::vector<float> read_profile_scores(const std::string& path, const trace_info& info) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("cannot open profile " + path);
    std::string magic(profile_magic.size(), '\0');
    in.read(magic.data(), static_cast<std::streamsize>(magic.size()));
    if (in && magic == profile_magic) {
        // A moed task profile (scheduler/profile.h): its TCESS scores, if made for this model.
        auto p = read_profile(path);
        if (!p) fail(p.error().message);
        const routing_shape shape{info.n_layer, info.n_expert, info.n_expert_used};
        const std::string identity = info.model_id.empty() ? p->model_identity : info.model_id;
        auto ok = check_profile_model(*p, path, identity, shape);
        if (!ok) fail(ok.error().message);
        return p->score;
    }
    in.clear();
    in.seekg(0);
    const json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("scores") || !j["scores"].is_array()) {
        fail(path + ": expected a JSON object with \"scores\": [[score per expert] per layer]");
    }
    const json& rows = j["scores"];
    if (rows.size() != info.n_layer) fail(path + ": " + std::to_string(rows.size()) + " layers, the trace has " + std::to_string(info.n_layer));
    std::vector<float> out;
    for (const json& row : rows) {
        if (!row.is_array() || row.size() != info.n_expert) fail(path + ": a layer's scores do not have n_expert entries");
        for (const json& v : row) {
            if (!v.is_number() || !(v.get<double>() >= 0.0)) fail(path + ": scores must be non-negative numbers");
            out.push_back(v.get<float>());
        }
    }
    return out;
}

// The profile for each tag: one for all, or per domain from the other half (holdout).
struct profiles {
    std::vector<float> single;
    std::vector<std::vector<float>> per_tag;
    std::function<std::span<const float>(std::uint32_t)> lookup() const {
        if (!single.empty()) return [this](std::uint32_t) { return std::span<const float>(single); };
        if (!per_tag.empty()) {
            return [this](std::uint32_t tag) {
                return tag < per_tag.size() ? std::span<const float>(per_tag[tag]) : std::span<const float>{};
            };
        }
        return {};
    }
};

profiles make_profiles(const options& o, const trace_data& full, const trace_info& info) {
    profiles p;
    if (o.profile_path) p.single = read_profile_scores(*o.profile_path, info);
    if (!o.profile_holdout) return p;
    if (full.tag_names.empty()) fail("--profile-holdout needs a trace whose prompts have domains");
    const auto index = index_in_domain(full);
    std::map<std::string, std::array<std::vector<float>, 2>, std::less<>> by_domain;
    for (std::uint32_t t = 0; t < full.tag_names.size(); ++t) {
        const std::string domain(tag_domain(full, t));
        auto& halves = by_domain[domain];
        if (!halves[0].empty()) continue;
        for (std::uint32_t h = 0; h < 2; ++h) {
            halves[h] = tcess_scores(full, [&](std::uint32_t tag) {
                return tag_domain(full, tag) == domain && index[tag] % 2 == h;
            });
        }
    }
    p.per_tag.resize(full.tag_names.size());
    for (std::uint32_t t = 0; t < full.tag_names.size(); ++t) {
        p.per_tag[t] = by_domain[std::string(tag_domain(full, t))][1 - index[t] % 2];
    }
    return p;
}

double round4(double x) { return std::round(x * 10000.0) / 10000.0; }

json replay_json(const replay_result& r) {
    json j;
    j["demand_misses"] = r.demand_misses;
    j["miss_rate"] = round4(static_cast<double>(r.demand_misses) / static_cast<double>(std::max<std::uint64_t>(r.accesses, 1)));
    j["bytes_read"] = r.bytes_read();
    return j;
}

}  // namespace

int main(int argc, char** argv) {
    options o = parse(argc, argv);
    trace_data trace = load_trace(o);

    std::optional<model_tier> tier_model;
    if (o.model_path) {
        auto m = engine::model::load(*o.model_path);
        if (!m) fail(m.error().message);
        const auto& hp = (*m)->hparams();
        if (hp.n_moe_layer() != trace.info.n_layer || hp.n_expert != trace.info.n_expert ||
            hp.n_expert_used != trace.info.n_expert_used) {
            fail(*o.model_path + ": model shape (" + std::to_string(hp.n_moe_layer()) + " MoE layers, " +
                 std::to_string(hp.n_expert) + " experts, top-" + std::to_string(hp.n_expert_used) +
                 ") does not match the trace");
        }
        trace.info.expert_bytes.clear();
        // What one load reads from the file, as the host tier reads it (each matrix from its
        // page-aligned start to its page-aligned end), so bytes compare with moed's own.
        for (std::uint32_t l = 0; l < hp.n_moe_layer(); ++l) {
            trace.info.expert_bytes.push_back(
                storage::mean_read_bytes((*m)->experts_layout(), l, storage::min_region_alignment));
        }
        if (trace.info.model_name.empty() || trace.info.model_name == o.trace_path) trace.info.model_name = *o.model_path;
        tier_model = model_tier{(*m)->experts_layout(), (*m)->expert_bytes()};
    }
    const profiles prof = make_profiles(o, trace, trace.info);
    keep_half(trace, o.half);
    auto order = decode_order(trace);
    if (!order) fail(order.error().message);
    if (order->empty()) fail("the trace has no records");

    const trace_info& info = trace.info;
    std::uint64_t sequences = 0;
    for (const decode_token& t : *order) sequences += t.first_of_sequence ? 1 : 0;
    json out;
    out["trace"] = o.trace_path;
    out["model"] = info.model_name;
    out["n_layer"] = info.n_layer;
    out["n_expert"] = info.n_expert;
    out["n_expert_used"] = info.n_expert_used;
    out["lookahead_depth"] = info.lookahead_depth;
    out["sequences"] = sequences;
    out["tokens"] = order->size();
    out["half"] = o.half;
    out["profile"] = o.profile_holdout ? "holdout (domain TCESS from the other half)" : o.profile_path.value_or("none");
    std::uint64_t expert_bytes_total = 0;
    for (std::uint32_t l = 0; l < info.n_layer; ++l) expert_bytes_total += expert_bytes_of(info, l) * info.n_expert;
    out["mode"] = "replay";
    out["expert_bytes_total"] = expert_bytes_total;
    out["bytes_unit"] = info.expert_bytes.empty() ? "expert loads" : "bytes";
    const tier_replay_options& t = o.tier;
    out["policy_machine"] = {{"link_bytes_per_s", t.link.bytes_per_s},
                             {"link_latency_us", t.link.latency_us},
                             {"layer_compute_us", t.layer_compute_us},
                             {"order", t.order == tier_replay_order::engine ? "engine" : "decode"},
                             {"prefetch", t.prefetch},
                             {"gate", t.planner.gate},
                             {"ring", t.tier.ring}};
    json runs = json::array();
    const std::uint64_t all_experts = static_cast<std::uint64_t>(info.n_layer) * info.n_expert;
    for (const budget& b : o.budgets) {
        std::uint32_t slots = b.slots;
        // With the model, a share is the daemon's host budget, cut into the host tier's slot
        // classes by the host tier's own function.
        storage::slot_classes classes;
        std::uint64_t budget_bytes = 0;
        if (slots == 0 && tier_model) {
            budget_bytes = engine::cap_host_budget(budget_spec{0, b.fraction, true}, tier_model->expert_bytes,
                                                   storage::tiered_every_expert_bytes(tier_model->layout,
                                                                                      engine::host_slot_alignment))
                               .bytes;
            auto planned = storage::tiered_slot_classes(tier_model->layout, engine::host_slot_alignment, budget_bytes, 1);
            if (!planned) fail("--budget " + b.label + ": " + planned.error().message);
            classes = std::move(planned).value();
            slots = classes.n_slots();
        }
        if (slots == 0) slots = static_cast<std::uint32_t>(std::llround(b.fraction * static_cast<double>(all_experts)));
        for (cache_scope scope : o.scopes) {
            json run;
            run["budget"] = b.label;
            run["slots"] = slots;
            if (classes.n_classes() > 0) {
                run["host_budget_bytes"] = budget_bytes;
                json cj = json::array();
                for (const storage::slot_class& c : classes.classes()) {
                    cj.push_back({{"slot_bytes", c.slot_bytes}, {"slots", c.n_slots}, {"layers", c.n_layer}});
                }
                run["slot_classes"] = cj;
            }
            run["scope"] = scope_name(scope);
            if (scope == cache_scope::per_layer) run["slots_per_layer"] = slots / info.n_layer;
            json per_policy;
            std::optional<replay_result> lru;
            std::optional<replay_result> belady;
            for (replay_policy p : o.policies) {
                replay_options opt;
                opt.policy = p;
                opt.scope = scope;
                opt.slots = slots;
                opt.classes = classes;
                auto r = replay_trace(trace, *order, opt);
                if (!r) fail(r.error().message);
                if (p == replay_policy::lru) lru = *r;
                if (p == replay_policy::belady) belady = *r;
                per_policy[policy_name(p)] = replay_json(*r);
            }
            for (auto& [name, pj] : per_policy.items()) {
                if (lru && lru->demand_misses > 0) {
                    pj["misses_vs_lru"] = round4(pj["demand_misses"].get<double>() / static_cast<double>(lru->demand_misses));
                    pj["bytes_vs_lru"] = round4(pj["bytes_read"].get<double>() / static_cast<double>(lru->bytes_read()));
                }
                if (belady && belady->demand_misses > 0) {
                    pj["misses_vs_belady"] = round4(pj["demand_misses"].get<double>() / static_cast<double>(belady->demand_misses));
                }
            }
            if (o.policy && scope == cache_scope::global) {
                tier_replay_options to = o.tier;
                to.slots = slots;
                to.classes = classes;
                to.profile_of = prof.lookup();
                auto r = replay_through_tier(trace, to);
                if (!r) fail(r.error().message);
                json tj;
                // As the daemon counts them: a demand miss is a load an acquire had to start;
                // a wait also counts a prefetch still loading when its expert was wanted.
                tj["demand_misses"] = r->demand_misses;
                tj["miss_rate"] = round4(static_cast<double>(r->demand_misses) / static_cast<double>(std::max<std::uint64_t>(r->accesses, 1)));
                tj["waits"] = r->misses;
                tj["bytes_read"] = r->bytes_read;
                tj["prefetch_loads"] = r->prefetch_loads;
                tj["prefetch_used"] = r->prefetch_hits + r->prefetch_late;
                tj["prefetch_late"] = r->prefetch_late;
                tj["wasted_prefetches"] = r->prefetch_wasted;
                tj["wasted_prefetch_bytes"] = r->prefetch_wasted_bytes;
                tj["recall"] = round4(r->recall);
                tj["io_wait_s"] = round4(r->io_wait_s);
                tj["simulated_s"] = round4(r->simulated_s);
                if (lru && lru->demand_misses > 0) {
                    const double lru_misses = static_cast<double>(lru->demand_misses);
                    tj["misses_vs_lru"] = round4(static_cast<double>(r->demand_misses) / lru_misses);
                    tj["waits_vs_lru"] = round4(static_cast<double>(r->misses) / lru_misses);
                    tj["bytes_vs_lru"] = round4(static_cast<double>(r->bytes_read) / static_cast<double>(lru->bytes_read()));
                }
                if (belady && belady->demand_misses > 0) {
                    tj["misses_vs_belady"] = round4(static_cast<double>(r->demand_misses) / static_cast<double>(belady->demand_misses));
                }
                per_policy["policy"] = tj;
            }
            run["policies"] = per_policy;
            if (belady) run["belady_misses"] = belady->demand_misses;
            runs.push_back(run);
        }
    }
    out["runs"] = runs;
    std::cout << out.dump(2) << "\n";
    return 0;
}
