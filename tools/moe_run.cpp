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
#include <dlfcn.h>
#include <sys/resource.h>

#include <charconv>
#include <cstdio>
#include <cstring>
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
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/cli_util.h"
#include "tools/slow_disk.h"

namespace {

struct options {
    std::string model_path;
    std::optional<std::string> prompt;
    std::optional<std::string> tokenize;
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
                 "               [--mlock required|best_effort|off] [--prefetch on|off] [--lookahead D]\n"
                 "               [--max-inflight SIZE] [--slow-disk LAT_US,MBPS]\n"
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
        else if (a == "-n" || a == "--n-predict") o.n_predict = parse_number<std::int32_t>("-n", next());
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
        } else if (a == "--lookahead") o.prefetch.lookahead = parse_number<int>("--lookahead", next());
        else if (a == "--max-inflight") {
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
    if (!o.prompt && !o.tokenize) fail("nothing to do: give -p PROMPT or --tokenize TEXT");
    if (o.threads < 0 || o.threads > 1024) fail("-t must be between 1 and 1024");
    if (o.threads == 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    if (o.n_batch < 1 || o.n_batch > 4096) fail("-b must be between 1 and 4096");
    if (o.n_ctx < 0) fail("-c must be positive");
    if (o.load.tier.queue_depth < 1 || o.load.tier.queue_depth > 4096) fail("--io-depth must be between 1 and 4096");
    if (auto v = o.sampling.validate(); !v) fail(v.error().message);
    return o;
}

// The allocator actually serving malloc: jemalloc exports mallctl when it is linked in.
const char* allocator_name() { return dlsym(RTLD_DEFAULT, "mallctl") != nullptr ? "jemalloc" : "system"; }

}  // namespace

int main(int argc, char** argv) {
    const options opt = parse_args(argc, argv);
    moed::set_log_level(moed::log_level::warn);

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
    moed::engine::kv_cache cache(m.hparams().n_layer, n_ctx, m.hparams().n_head_kv, m.hparams().head_dim);

    auto generated = moed::engine::generate(eval, m, cache, request);
    if (!generated) fail(generated.error().message);
    const auto& g = *generated;

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
