// profile-eval: how well task profiles pick the task of a prompt, measured honestly.
//
// Reads domain-labelled prompts (JSON lines with "domain", "id" and "text", as
// ../shared/models/traces/domain-prompts.jsonl), runs each through the model's evaluator
// with a routing observer, builds one profile per domain from half of each domain's prompts
// (ids ending in an even number, then the odd ones) and matches every prompt of the other
// half against those profiles, on the whole prompt and on its first --prefix tokens. Prints
// one JSON object: accuracy of the profile matcher (n-gram ranking, profile_matcher.h) and of
// the plain-cosine baseline, per split, per domain, with the confusion matrix.
//
//   profile-eval [-m MODEL] [--prompts FILE.jsonl] [--prefix N] [-t THREADS]
//   profile-eval --reference FILE.jsonl|-  [--prefix N]
// --reference reads routing rows instead of running a model ({"d","p","l","t","e","w"} per
// prompt x layer x token, as tinymoe-routing.jsonl; "-" is stdin, e.g. zcat FILE.gz |);
// the chosen experts' weights stand in for probabilities.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "engine/evaluator.h"
#include "engine/model.h"
#include "kernels/cpu/thread_pool.h"
#include "scheduler/model_identity.h"
#include "scheduler/profile.h"
#include "scheduler/profile_matcher.h"
#include "tools/cli_util.h"

namespace {

using json = nlohmann::json;
using moed::scheduler::routing_accumulator;
using moed::scheduler::routing_shape;

struct options {
    std::string model_path;
    std::string prompts_path;
    std::string reference_path;
    std::int64_t prefix = 32;
    int threads = 0;
};

// One prompt's statistics: over the whole prompt and over its first `prefix` tokens.
struct prompt_stats {
    std::string domain;
    std::string id;
    routing_accumulator whole;
    routing_accumulator head;
    std::int64_t tokens = 0;
};

[[noreturn]] void fail(const std::string& message) { moed::tools::fail("profile-eval", message); }

[[noreturn]] void usage(int code) {
    std::fprintf(code == 0 ? stdout : stderr,
                 "usage: profile-eval [-m MODEL] [--prompts FILE.jsonl] [--prefix N] [-t THREADS]\n"
                 "       profile-eval --reference ROUTING.jsonl|- [--prefix N]\n");
    std::exit(code);
}

options parse_args(int argc, char** argv) {
    options o;
    o.model_path = std::string(MOED_MODELS_DIR) + "/tinymoe-qwen3moe-Q4_K_M.gguf";
    o.prompts_path = std::string(MOED_SHARED_MODELS_DIR) + "/traces/domain-prompts.jsonl";
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-h" || a == "--help") usage(0);
        else if (a == "-m" || a == "--model") o.model_path = next();
        else if (a == "--prompts") o.prompts_path = next();
        else if (a == "--reference") o.reference_path = next();
        else if (a == "--prefix")
            o.prefix = moed::tools::parse_number<std::int64_t>("profile-eval", a, next(), moed::tools::sign::positive);
        else if (a == "-t" || a == "--threads") o.threads = moed::tools::parse_number<int>("profile-eval", a, next());
        else fail("unknown argument '" + a + "' (see --help)");
    }
    return o;
}

// The number at the end of an id ("c-17" -> 17); -1 without one.
int id_number(const std::string& id) {
    std::size_t i = id.size();
    while (i > 0 && id[i - 1] >= '0' && id[i - 1] <= '9') --i;
    if (i == id.size()) return -1;
    return std::stoi(id.substr(i));
}

std::vector<prompt_stats> run_model(const options& o, std::string& identity) {
    auto loaded = moed::engine::model::load(o.model_path);
    if (!loaded) fail(loaded.error().message);
    moed::engine::model& m = **loaded;
    const auto& hp = m.hparams();
    identity = moed::scheduler::model_identity(m.file());
    const routing_shape shape{hp.n_moe_layer(), hp.n_expert, hp.n_expert_used};
    const int threads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    moed::kernels::compute_pool pool(threads);
    moed::engine::evaluator eval(m, pool, 256);
    routing_accumulator* sink = nullptr;
    eval.set_routing_observer([&](const moed::engine::routing_event& ev) {
        sink->add_layer(ev.layer, ev.n_tokens, ev.probs, ev.chosen);
    });

    std::ifstream in(o.prompts_path);
    if (!in) fail("cannot open " + o.prompts_path);
    std::vector<prompt_stats> out;
    std::vector<float> logits;
    std::string line;
    std::size_t line_no = 0;
    std::int64_t mismatched = 0;
    while (std::getline(in, line)) {
        ++line_no;
        if (line.empty()) continue;
        const json j = json::parse(line, nullptr, false);
        if (!j.is_object() || !j.contains("text") || !j["text"].is_string() || !j.contains("domain"))
            fail(o.prompts_path + ":" + std::to_string(line_no) + ": expected an object with \"domain\", \"id\" and \"text\"");
        prompt_stats ps{j["domain"].get<std::string>(), j.value("id", std::to_string(line_no)), routing_accumulator(shape),
                        routing_accumulator(shape), 0};
        std::vector<moed::engine::token_id> tokens = m.vocab().encode(j["text"].get<std::string>(), false);
        if (m.vocab().add_bos() && m.vocab().bos_id() >= 0) tokens.insert(tokens.begin(), m.vocab().bos_id());
        const auto n_ctx = std::min<std::int64_t>(hp.n_ctx_train > 0 ? hp.n_ctx_train : 4096, 4096);
        if (static_cast<std::int64_t>(tokens.size()) > n_ctx) tokens.resize(static_cast<std::size_t>(n_ctx));
        if (tokens.empty()) fail(o.prompts_path + ":" + std::to_string(line_no) + ": empty prompt");
        if (j.contains("n_tokens") && j["n_tokens"].is_number_integer() &&
            j["n_tokens"].get<std::int64_t>() != static_cast<std::int64_t>(tokens.size()))
            ++mismatched;
        moed::engine::kv_cache cache(moed::engine::kv_shape_of(hp), n_ctx);
        const std::size_t head = std::min<std::size_t>(tokens.size(), static_cast<std::size_t>(o.prefix));
        sink = &ps.whole;
        if (auto r = eval.run_sequence(std::span(tokens).first(head), cache, logits); !r) fail(r.error().message);
        ps.head.merge(ps.whole);
        if (head < tokens.size()) {
            if (auto r = eval.run_sequence(std::span(tokens).subspan(head), cache, logits); !r) fail(r.error().message);
        }
        ps.tokens = static_cast<std::int64_t>(tokens.size());
        out.push_back(std::move(ps));
    }
    if (mismatched > 0) MOED_LOG_WARN("profile-eval", "{} prompts tokenized to a count other than their n_tokens", mismatched);
    return out;
}

// Routing rows of a reference trace; each prompt's tokens in position order.
std::vector<prompt_stats> read_reference(const options& o, std::string& identity) {
    std::istream* in = &std::cin;
    std::ifstream file;
    if (o.reference_path != "-") {
        file.open(o.reference_path);
        if (!file) fail("cannot open " + o.reference_path);
        in = &file;
    }
    struct row {
        std::uint32_t layer;
        std::vector<std::int32_t> e;
        std::vector<float> w;
    };
    // prompt -> position -> rows
    std::map<std::string, std::pair<std::string, std::map<std::int64_t, std::vector<row>>>> prompts;
    std::uint32_t n_layer = 0, n_expert = 0, k = 0;
    std::string line;
    while (std::getline(*in, line)) {
        if (line.empty()) continue;
        const json j = json::parse(line, nullptr, false);
        if (!j.is_object()) fail("reference: a line is not a JSON object");
        row r{j.at("l").get<std::uint32_t>(), j.at("e").get<std::vector<std::int32_t>>(), j.at("w").get<std::vector<float>>()};
        n_layer = std::max(n_layer, r.layer + 1);
        for (std::int32_t e : r.e) n_expert = std::max<std::uint32_t>(n_expert, static_cast<std::uint32_t>(e) + 1);
        k = static_cast<std::uint32_t>(r.e.size());
        auto& p = prompts[j.at("p").get<std::string>()];
        p.first = j.at("d").get<std::string>();
        p.second[j.at("t").get<std::int64_t>()].push_back(std::move(r));
    }
    identity = "reference";
    const routing_shape shape{n_layer, n_expert, k};
    std::vector<prompt_stats> out;
    for (auto& [id, p] : prompts) {
        prompt_stats ps{p.first, id, routing_accumulator(shape), routing_accumulator(shape), 0};
        for (auto& [pos, rows] : p.second) {
            std::sort(rows.begin(), rows.end(), [](const row& a, const row& b) { return a.layer < b.layer; });
            if (rows.size() != n_layer) fail("reference: prompt " + id + " position " + std::to_string(pos) + " lacks layers");
            for (const row& r : rows) {
                std::vector<float> probs(n_expert, 0.0f);
                for (std::size_t s = 0; s < r.e.size(); ++s) probs[static_cast<std::size_t>(r.e[s])] = r.w[s];
                ps.whole.add_layer(r.layer, 1, probs, r.e);
                if (ps.tokens < o.prefix) ps.head.add_layer(r.layer, 1, probs, r.e);
            }
            ++ps.tokens;
        }
        out.push_back(std::move(ps));
    }
    return out;
}

json evaluate_split(const std::vector<prompt_stats>& all, int train_parity, const std::string& identity, std::int64_t prefix) {
    std::map<std::string, routing_accumulator> per_domain;
    std::map<std::string, std::uint32_t> n_train;
    for (const prompt_stats& p : all) {
        if (id_number(p.id) % 2 != train_parity) continue;
        auto [it, fresh] = per_domain.try_emplace(p.domain, p.whole.shape());
        it->second.merge(p.whole);
        ++n_train[p.domain];
    }
    std::vector<std::shared_ptr<const moed::scheduler::profile>> profiles;
    for (const auto& [domain, acc] : per_domain) {
        profiles.push_back(std::make_shared<const moed::scheduler::profile>(moed::scheduler::make_profile(
            domain, identity, "eval", "profile-eval", n_train[domain], 0, acc)));
    }
    // Threshold 0: this measures the ranking; the gate is for prompts of no known task.
    const moed::scheduler::profile_matcher matcher(profiles, moed::scheduler::match_options{.threshold = 0.0});

    struct tally {
        int right = 0, total = 0;
        std::map<std::string, std::map<std::string, int>> confusion;
        std::map<std::string, std::pair<int, int>> per_domain;
        void add(const std::string& truth, const std::string& guess) {
            ++total;
            right += truth == guess;
            ++confusion[truth][guess];
            auto& d = per_domain[truth];
            d.first += truth == guess;
            ++d.second;
        }
        json to_json() const {
            json pd = json::object();
            for (const auto& [d, rt] : per_domain) pd[d] = static_cast<double>(rt.first) / rt.second;
            return {{"accuracy", total ? static_cast<double>(right) / total : 0.0}, {"right", right}, {"of", total},
                    {"per_domain", pd}, {"confusion", confusion}};
        }
    };
    tally ngram_whole, cosine_whole, ngram_head, cosine_head;
    double sim_right = 0.0;
    int n_sim = 0;
    for (const prompt_stats& p : all) {
        if (id_number(p.id) % 2 == train_parity) continue;
        const auto m = matcher.match(p.whole);
        ngram_whole.add(p.domain, m.candidate);
        cosine_whole.add(p.domain, matcher.match_cosine(p.whole).candidate);
        ngram_head.add(p.domain, matcher.match(p.head).candidate);
        cosine_head.add(p.domain, matcher.match_cosine(p.head).candidate);
        if (m.candidate == p.domain) {
            sim_right += m.similarity;
            ++n_sim;
        }
    }
    return {{"train", train_parity == 0 ? "even ids" : "odd ids"},
            {"test", train_parity == 0 ? "odd ids" : "even ids"},
            {"whole_prompt", {{"matcher", ngram_whole.to_json()}, {"plain_cosine", cosine_whole.to_json()}}},
            {"first_" + std::to_string(prefix) + "_tokens",
             {{"matcher", ngram_head.to_json()}, {"plain_cosine", cosine_head.to_json()}}},
            {"mean_similarity_when_right", n_sim ? sim_right / n_sim : 0.0}};
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const options o = parse_args(argc, argv);
        std::string identity;
        std::vector<prompt_stats> all = o.reference_path.empty() ? run_model(o, identity) : read_reference(o, identity);
        if (all.empty()) fail("no prompts");
        std::int64_t tokens = 0;
        for (const auto& p : all) tokens += p.tokens;
        json splits = json::array({evaluate_split(all, 0, identity, o.prefix), evaluate_split(all, 1, identity, o.prefix)});
        const std::string head_key = "first_" + std::to_string(o.prefix) + "_tokens";
        auto mean = [&](const char* part, const char* who) {
            return (splits[0][part][who]["accuracy"].get<double>() + splits[1][part][who]["accuracy"].get<double>()) / 2;
        };
        json out{{"source", o.reference_path.empty() ? o.model_path : o.reference_path},
                 {"model_identity", identity},
                 {"prompts", all.size()},
                 {"tokens", tokens},
                 {"splits", splits},
                 {"mean",
                  {{"whole_prompt", {{"matcher", mean("whole_prompt", "matcher")}, {"plain_cosine", mean("whole_prompt", "plain_cosine")}}},
                   {head_key, {{"matcher", mean(head_key.c_str(), "matcher")}, {"plain_cosine", mean(head_key.c_str(), "plain_cosine")}}}}}};
        std::cout << out.dump(2) << '\n';
        return 0;
    } catch (const std::exception& e) {
        fail(e.what());
    }
}
