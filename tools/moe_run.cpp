// moe-run: the local command line. Loads a model, runs one prompt and prints the generated
// text (or, with --json, one JSON object with ids, text and speeds).
//
//   moe-run -m MODEL -p PROMPT -n N [--temp T --top-k K --top-p P --min-p P --seed S
//           --repeat-penalty R -t THREADS -c CTX -b BATCH --ignore-eos --parse-special]
//           [--host-budget 4GiB|25% --io-depth N --no-uring --no-direct --mlock required|best_effort|off
//            --prefetch on|off --lookahead D --max-inflight SIZE --slow-disk LAT_US,MBPS]
//           [--json]
// With --host-budget, prefetching is on unless --prefetch off: a router lookahead of D layers
// (default 2) predicts the coming layers' experts and the tiers read them ahead.
//   moe-run -m MODEL --tokenize TEXT [--parse-special] --json
//   moe-run -m MODEL --prompts FILE.jsonl [--trace OUT] [--n-predict N] [--lookahead D]
// --trace FILE records the routing of every evaluated token (prompt and generated) to a
// routing trace (scheduler/trace.h), with a router lookahead of --trace-lookahead D layers
// (default 2; --lookahead D sets it and the prefetch lookahead together). --prompts runs
// each line's "text" as its own sequence (fresh KV cache, sequence id = line index, tag
// "<domain>/<id>" when the line has both, else the line number): the prompt, then N greedy
// tokens each fed back (default 0: the prompt only); it prints one JSON summary line.
#include <dlfcn.h>
#include <sys/resource.h>

#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "common/units.h"
#include "engine/generator.h"
#include "engine/model.h"
#include "engine/prefetch.h"
#include "engine/trace_recorder.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/cli_util.h"
#include "tools/slow_disk.h"

namespace {

struct options {
    std::string model_path;
    std::optional<std::string> prompt;
    std::optional<std::string> tokenize;
    std::optional<std::string> prompts_file;
    std::optional<std::string> trace_path;
    std::optional<std::string> trace_tag;
    int trace_lookahead = 2;
    std::optional<std::int32_t> n_predict_flag;
    std::int32_t n_predict = 32;
    int threads = 0;
    std::int64_t n_ctx = 0;
    std::int64_t n_batch = 256;
    bool json = false;
    bool ignore_eos = false;
    bool parse_special = false;
    moed::engine::sampling_params sampling;
    moed::engine::load_options load;
    moed::engine::prefetch_options prefetch;
};

[[noreturn]] void usage(int code) {
    std::fprintf(code == 0 ? stdout : stderr,
                 "usage: moe-run -m MODEL -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P]\n"
                 "               [--repeat-penalty R] [--seed S] [-t THREADS] [-c CTX] [-b BATCH]\n"
                 "               [--ignore-eos] [--parse-special] [--json]\n"
                 "               [--host-budget SIZE|PERCENT] [--io-depth N] [--no-uring] [--no-direct]\n"
                 "               [--mlock required|best_effort|off] [--prefetch on|off] [--pf-gate on|off] [--lookahead D]\n"
                 "               [--max-inflight SIZE] [--slow-disk LAT_US,MBPS]\n"
                 "               [--trace FILE [--trace-lookahead D] [--trace-tag NAME]]\n"
                 "       moe-run -m MODEL --prompts FILE.jsonl [--trace FILE] [-n N] [--lookahead D] [options]\n"
                 "       moe-run -m MODEL --tokenize TEXT [--parse-special] [--json]\n");
    std::exit(code);
}

[[noreturn]] void fail(const std::string& message) { moed::tools::fail("moe-run", message); }

template <typename T>
T parse_number(const char* flag, const char* text) {
    return moed::tools::parse_number<T>("moe-run", flag, text);
}

options parse_args(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-h" || a == "--help") usage(0);
        else if (a == "-m" || a == "--model") o.model_path = next();
        else if (a == "-p" || a == "--prompt") o.prompt = next();
        else if (a == "--tokenize") o.tokenize = next();
        else if (a == "-n" || a == "--n-predict") o.n_predict_flag = parse_number<std::int32_t>("-n", next());
        else if (a == "--prompts") o.prompts_file = next();
        else if (a == "--trace") o.trace_path = next();
        else if (a == "--trace-tag") o.trace_tag = next();
        else if (a == "--trace-lookahead") o.trace_lookahead = parse_number<int>("--trace-lookahead", next());
        else if (a == "--lookahead") {
            // One router lookahead for both: the trace records D rows and prefetching uses
            // them (0: no lookahead, so no prefetching).
            o.trace_lookahead = parse_number<int>("--lookahead", next());
            o.prefetch.lookahead = o.trace_lookahead;
            if (o.trace_lookahead == 0) o.prefetch.enabled = false;
        }
        else if (a == "-t" || a == "--threads") o.threads = parse_number<int>("-t", next());
        else if (a == "-c" || a == "--ctx-size") o.n_ctx = parse_number<std::int64_t>("-c", next());
        else if (a == "-b" || a == "--batch-size") o.n_batch = parse_number<std::int64_t>("-b", next());
        else if (a == "--temp") o.sampling.temperature = parse_number<float>("--temp", next());
        else if (a == "--top-k") o.sampling.top_k = parse_number<std::int32_t>("--top-k", next());
        else if (a == "--top-p") o.sampling.top_p = parse_number<float>("--top-p", next());
        else if (a == "--min-p") o.sampling.min_p = parse_number<float>("--min-p", next());
        else if (a == "--repeat-penalty") o.sampling.repeat_penalty = parse_number<float>("--repeat-penalty", next());
        else if (a == "--seed") o.sampling.seed = parse_number<std::uint64_t>("--seed", next());
        else if (a == "--json") o.json = true;
        else if (a == "--ignore-eos") o.ignore_eos = true;
        else if (a == "--parse-special") o.parse_special = true;
        else if (a == "--host-budget") {
            auto budget = moed::parse_budget(next());
            if (!budget) fail("--host-budget: " + budget.error().message);
            o.load.host_budget = *budget;
        } else if (a == "--io-depth") o.load.tier.queue_depth = parse_number<std::uint32_t>("--io-depth", next());
        else if (a == "--no-uring") o.load.tier.allow_uring = false;
        else if (a == "--no-direct") o.load.tier.allow_direct = false;
        else if (a == "--mlock") {
            const std::string v = next();
            if (v == "required") o.load.tier.lock = moed::storage::memory_lock::required;
            else if (v == "best_effort") o.load.tier.lock = moed::storage::memory_lock::best_effort;
            else if (v == "off") o.load.tier.lock = moed::storage::memory_lock::off;
            else fail("--mlock must be required, best_effort or off, not '" + v + "'");
        } else if (a == "--prefetch") {
            const std::string v = next();
            if (v != "on" && v != "off") fail("--prefetch must be on or off, not '" + v + "'");
            o.prefetch.enabled = v == "on";
        } else if (a == "--pf-gate") {
            // The planner's cost gate (scheduler/prefetch_gate.h), or its fixed score rule.
            const std::string v = next();
            if (v != "on" && v != "off") fail("--pf-gate must be on or off, not '" + v + "'");
            o.prefetch.planner.gate = v == "on";
        } else if (a == "--max-inflight") {
            auto bytes = moed::parse_bytes(next());
            if (!bytes) fail("--max-inflight: " + bytes.error().message);
            o.load.tier.max_inflight_bytes = *bytes;
        } else if (a == "--slow-disk") {
            auto spec = moed::tools::parse_slow_disk(next());
            if (!spec) fail(spec.error().message);
            moed::tools::apply_slow_disk(*spec, o.load.tier);
        }
        else fail("unknown argument '" + a + "' (see --help)");
    }
    if (o.model_path.empty()) fail("no model given (-m MODEL)");
    if (!o.prompt && !o.tokenize && !o.prompts_file) fail("nothing to do: give -p PROMPT, --prompts FILE or --tokenize TEXT");
    if (static_cast<int>(o.prompt.has_value()) + static_cast<int>(o.prompts_file.has_value()) > 1) {
        fail("give either -p PROMPT or --prompts FILE, not both");
    }
    // -n: tokens to generate; for --prompts the default is the prompt alone.
    o.n_predict = o.n_predict_flag.value_or(o.prompts_file ? 0 : 32);
    if (o.n_predict < 0) fail("-n must not be negative");
    if (o.trace_lookahead < 0 || o.trace_lookahead > moed::engine::max_lookahead_depth) {
        fail("--trace-lookahead must be between 0 and " + std::to_string(moed::engine::max_lookahead_depth));
    }
    if (o.trace_tag && !o.trace_path) fail("--trace-tag needs --trace FILE");
    if (o.threads < 0 || o.threads > 1024) fail("-t must be between 1 and 1024");
    if (o.threads == 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (o.n_batch < 1 || o.n_batch > 4096) fail("-b must be between 1 and 4096");
    if (o.n_ctx < 0) fail("-c must be positive");
    if (o.load.tier.queue_depth < 1 || o.load.tier.queue_depth > 4096) fail("--io-depth must be between 1 and 4096");
    if (auto v = o.sampling.validate(); !v) fail(v.error().message);
    return o;
}

// A routing trace being recorded: the writer and the evaluator's observer that feeds it.
struct trace_session {
    moed::scheduler::trace_writer writer;
    std::unique_ptr<moed::engine::trace_recorder> recorder;
};

// On the heap: the recorder keeps a reference to the writer.
std::unique_ptr<trace_session> start_trace(const options& opt, const moed::engine::model& m,
                                           moed::engine::evaluator& eval) {
    if (!opt.trace_path) return nullptr;
    auto writer = moed::scheduler::trace_writer::create(
        *opt.trace_path, moed::engine::make_trace_info(m, static_cast<std::uint32_t>(opt.trace_lookahead)));
    if (!writer) fail(writer.error().message);
    auto t = std::make_unique<trace_session>(trace_session{std::move(writer).value(), nullptr});
    t->recorder = std::make_unique<moed::engine::trace_recorder>(t->writer);
    t->recorder->attach(eval);
    return t;
}

void finish_trace(const std::unique_ptr<trace_session>& t) {
    if (!t) return;
    if (auto st = t->recorder->status(); !st) fail(st.error().message);
    if (auto closed = t->writer.close(); !closed) fail(closed.error().message);
}

struct prompt_line {
    std::string text;
    std::string tag;
};

// One JSON object per line with "text" (and optionally "domain" and "id"); blank lines are
// skipped. Errors name the file and line.
std::vector<prompt_line> read_prompts(const std::string& path) {
    std::ifstream in(path);
    if (!in) fail("cannot open prompts file " + path);
    std::vector<prompt_line> out;
    std::string line;
    for (std::size_t number = 1; std::getline(in, line); ++number) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        const std::string where = path + ":" + std::to_string(number);
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object()) fail(where + ": not a JSON object");
        const auto text = j.find("text");
        if (text == j.end() || !text->is_string()) fail(where + ": no \"text\" string");
        prompt_line p;
        p.text = text->get<std::string>();
        const auto domain = j.find("domain");
        const auto id = j.find("id");
        if (domain != j.end() && domain->is_string() && id != j.end() && (id->is_string() || id->is_number_integer())) {
            p.tag = domain->get<std::string>() + "/" + (id->is_string() ? id->get<std::string>() : std::to_string(id->get<std::int64_t>()));
        } else {
            p.tag = std::to_string(number);
        }
        out.push_back(std::move(p));
    }
    if (out.empty()) fail(path + ": no prompts");
    return out;
}

// --prompts: each prompt as its own sequence, then n_predict greedy tokens fed back.
int run_prompts(const options& opt, moed::engine::model& m) {
    const auto prompts = read_prompts(*opt.prompts_file);
    std::vector<std::vector<moed::engine::token_id>> tokens;
    std::int64_t longest = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        auto ids = m.vocab().encode(prompts[i].text, opt.parse_special);
        if (m.vocab().add_bos() && m.vocab().bos_id() >= 0) ids.insert(ids.begin(), m.vocab().bos_id());
        if (ids.empty()) fail(*opt.prompts_file + ": prompt " + std::to_string(i + 1) + " has no tokens");
        longest = std::max(longest, static_cast<std::int64_t>(ids.size()) + opt.n_predict);
        tokens.push_back(std::move(ids));
    }
    const std::int64_t n_ctx = opt.n_ctx > 0 ? opt.n_ctx : std::max(m.hparams().n_ctx_train, longest);
    if (longest > n_ctx) fail("a prompt plus -n tokens needs " + std::to_string(longest) + " positions; -c is " + std::to_string(n_ctx));
    moed::kernels::compute_pool pool(opt.threads);
    moed::engine::evaluator eval(m, pool, opt.n_batch);
    // Prefetching changes no routing, so a trace recorded at a host budget is the same.
    auto planner = moed::engine::attach_prefetch(eval, m, opt.prefetch);
    if (!planner) fail(planner.error().message);
    moed::engine::kv_cache cache(moed::engine::kv_shape_of(m.hparams()), n_ctx);
    auto trace = start_trace(opt, m, eval);

    std::vector<float> logits;
    std::int64_t prompt_tokens = 0, generated_tokens = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
        const std::uint64_t seq = i;
        const auto& ids = tokens[i];
        if (trace) {
            auto tag = trace->writer.intern_tag(prompts[i].tag);
            if (!tag) fail(tag.error().message);
            trace->recorder->begin_sequence(seq, *tag, static_cast<std::int64_t>(ids.size()));
        }
        cache.clear();
        if (auto ran = eval.run_sequence(ids, cache, logits, seq); !ran) fail(ran.error().message);
        prompt_tokens += static_cast<std::int64_t>(ids.size());
        moed::engine::sampler smp(opt.sampling);
        std::vector<moed::engine::token_id> history = ids;
        for (std::int32_t g = 0; g < opt.n_predict; ++g) {
            const moed::engine::token_id next = smp.sample(logits, history);
            if (!opt.ignore_eos && m.vocab().is_eog(next)) break;
            history.push_back(next);
            if (auto ran = eval.run_sequence(std::span<const moed::engine::token_id>(&next, 1), cache, logits, seq); !ran) {
                fail(ran.error().message);
            }
            ++generated_tokens;
        }
        if (trace) trace->recorder->end_sequence(seq);
    }
    nlohmann::json out{{"model", opt.model_path},
                       {"prompts", prompts.size()},
                       {"prompt_tokens", prompt_tokens},
                       {"generated_tokens", generated_tokens}};
    if (const auto* tiers = m.tiers()) {
        auto st = tiers->stats();
        if (*planner) moed::scheduler::add_planner_stats((*planner)->stats(), st.prefetch);
        out["tiers"] = st;
        // What the tier measured of its link and of compute: what a replay of the trace
        // simulates the run with.
        const moed::storage::link_figures f = tiers->link();
        out["link"] = {{"bytes_per_s", f.bytes_per_s},
                       {"load_latency_us", f.load_latency_us},
                       {"layer_compute_us", f.layer_compute_us}};
    }
    if (trace) {
        const std::uint64_t records = trace->recorder->records();
        finish_trace(trace);
        out["trace"] = {{"path", *opt.trace_path},
                        {"records", records},
                        {"lookahead_depth", opt.trace_lookahead},
                        {"bytes", std::filesystem::file_size(*opt.trace_path)}};
    }
    std::cout << out.dump() << "\n";
    return 0;
}

// The allocator actually serving malloc: jemalloc exports mallctl when it is linked in.
const char* allocator_name() { return dlsym(RTLD_DEFAULT, "mallctl") != nullptr ? "jemalloc" : "system"; }

}  // namespace

int main(int argc, char** argv) {
    const options opt = parse_args(argc, argv);
    moed::set_log_level(moed::log_level::warn);
    if (auto isa_ok = moed::kernels::check_isa_env(); !isa_ok) fail(isa_ok.error().message);

    auto loaded = moed::engine::model::load(opt.model_path, opt.load);
    if (!loaded) fail(loaded.error().message);
    moed::engine::model& m = **loaded;

    if (opt.tokenize) {
        const auto ids = m.vocab().encode(*opt.tokenize, opt.parse_special);
        if (opt.json) {
            std::cout << nlohmann::json{{"tokens", ids}}.dump() << "\n";
        } else {
            for (std::size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
            std::cout << "\n";
        }
        return 0;
    }

    if (opt.prompts_file) return run_prompts(opt, m);

    moed::engine::generation_request request;
    request.prompt = m.vocab().encode(*opt.prompt, opt.parse_special);
    if (m.vocab().add_bos() && m.vocab().bos_id() >= 0) request.prompt.insert(request.prompt.begin(), m.vocab().bos_id());
    request.n_predict = opt.n_predict;
    request.sampling = opt.sampling;
    request.stop_at_eog = !opt.ignore_eos;
    if (!opt.json) {
        request.on_token = [](moed::engine::token_id, std::string_view piece) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
            return true;
        };
    }

    const std::int64_t n_ctx = opt.n_ctx > 0 ? opt.n_ctx : std::max<std::int64_t>(
        m.hparams().n_ctx_train, static_cast<std::int64_t>(request.prompt.size()) + opt.n_predict);
    moed::kernels::compute_pool pool(opt.threads);
    moed::engine::evaluator eval(m, pool, opt.n_batch);
    auto planner = moed::engine::attach_prefetch(eval, m, opt.prefetch);
    if (!planner) fail(planner.error().message);
    moed::engine::kv_cache cache(moed::engine::kv_shape_of(m.hparams()), n_ctx);
    auto trace = start_trace(opt, m, eval);
    if (trace) {
        std::uint32_t tag = 0;
        if (opt.trace_tag) {
            auto interned = trace->writer.intern_tag(*opt.trace_tag);
            if (!interned) fail(interned.error().message);
            tag = *interned;
        }
        trace->recorder->begin_sequence(request.seq, tag, static_cast<std::int64_t>(request.prompt.size()));
    }

    auto generated = moed::engine::generate(eval, m, cache, request);
    if (!generated) fail(generated.error().message);
    const auto& g = *generated;
    finish_trace(trace);

    if (opt.json) {
        const double prefill_tps = g.prefill_seconds > 0 ? static_cast<double>(request.prompt.size()) / g.prefill_seconds : 0.0;
        const double decode_tps = g.decode_seconds > 0 && g.decode_steps > 0
                                      ? static_cast<double>(g.decode_steps) / g.decode_seconds : 0.0;
        nlohmann::json out{
            {"model", opt.model_path},
            {"prompt_tokens", request.prompt},
            {"tokens", g.tokens},
            {"text", g.text},
            {"prefill_tokens_per_s", prefill_tps},
            {"decode_tokens_per_s", decode_tps},
            {"threads", opt.threads},
            {"isa", std::string(moed::kernels::isa_name(moed::kernels::active_isa()))},
            {"peak_rss_bytes", moed::tools::peak_rss_bytes()},
            {"model_bytes", m.file().file_size()},
            {"dense_bytes", m.dense_bytes()},
            {"expert_bytes", m.expert_bytes()},
            {"kv_cache_bytes", cache.bytes()},
            {"allocator", allocator_name()},
        };
        if (const auto* tiers = m.tiers()) {
            auto st = tiers->stats();  // common/status.h gives the JSON form
            if (*planner) moed::scheduler::add_planner_stats((*planner)->stats(), st.prefetch);
            out["tiers"] = st;
        }
        // Text may end mid-character in principle; replace rather than throw on bad UTF-8.
        std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    } else {
        std::cout << "\n";
    }
    return 0;
}
