// bench/decode: prefill and decode speed of one model, the way llama-bench measures them
// (pp: a prompt of P tokens in one forward pass per batch; tg: N tokens decoded one by
// one), plus peak RSS. Prints one JSON object. Token ids are fixed pseudo-random ids, so
// the figures do not depend on a tokenizer.
//
//   bench-decode -m MODEL [-t THREADS] [-p 512] [-n 128] [-b 512] [-r REPS]
//                [--host-budget 25%|4GiB [--io-depth N] [--no-uring] [--no-direct]
//                 [--prefetch on|off] [--lookahead D] [--max-inflight SIZE] [--no-ring]
//                 [--history] [--pf-gate on|off] [--pf-floor P] [--slow-disk LAT_US,MBPS]]
// With --host-budget the experts come through the tiered source (read from the file into a
// slab of that size) and the JSON adds the tier statistics and, for the decode runs, the time
// compute waited for expert I/O per token. --prefetch on (the default) drives the prefetch
// planner from a router lookahead of D layers (default 2); --slow-disk wraps the reader in a
// fault_reader with that per-read latency and bandwidth cap (a file in the page cache reads
// far faster than any disk, which hides what prefetching buys).
#include <sys/resource.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/units.h"
#include "engine/evaluator.h"
#include "engine/prefetch.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/cli_util.h"
#include "tools/slow_disk.h"

namespace {

[[noreturn]] void fail(const std::string& message) { moed::tools::fail("bench-decode", message); }

template <typename T>
T parse_number(const std::string& flag, const char* text) {
    return moed::tools::parse_number<T>("bench-decode", flag, text, moed::tools::sign::positive);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    std::string model_path;
    int threads = 2;
    std::int64_t n_prompt = 512, n_gen = 128, n_batch = 512;
    int reps = 3;
    moed::engine::load_options load;
    load.tier.lock = moed::storage::memory_lock::best_effort;
    moed::engine::prefetch_options prefetch;
    std::string slow_disk;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-m") model_path = next();
        else if (a == "-t") threads = parse_number<int>(a, next());
        else if (a == "-p") n_prompt = parse_number<std::int64_t>(a, next());
        else if (a == "-n") n_gen = parse_number<std::int64_t>(a, next());
        else if (a == "-b") n_batch = parse_number<std::int64_t>(a, next());
        else if (a == "-r") reps = parse_number<int>(a, next());
        else if (a == "--host-budget") {
            auto budget = moed::parse_budget(next());
            if (!budget) fail(budget.error().message);
            load.host_budget = *budget;
        } else if (a == "--io-depth") load.tier.queue_depth = parse_number<std::uint32_t>(a, next());
        else if (a == "--no-uring") load.tier.allow_uring = false;
        else if (a == "--no-direct") load.tier.allow_direct = false;
        else if (a == "--prefetch") {
            const std::string v = next();
            if (v != "on" && v != "off") fail("--prefetch takes on or off, not '" + v + "'");
            prefetch.enabled = v == "on";
        } else if (a == "--lookahead") prefetch.lookahead = parse_number<int>(a, next());
        else if (a == "--max-inflight") {
            auto bytes = moed::parse_bytes(next());
            if (!bytes) fail(bytes.error().message);
            load.tier.max_inflight_bytes = *bytes;
        } else if (a == "--max-prefetch-inflight") {
            auto bytes = moed::parse_bytes(next());
            if (!bytes) fail(bytes.error().message);
            load.tier.max_prefetch_inflight_bytes = *bytes;
        } else if (a == "--no-ring") load.tier.ring = false;
        else if (a == "--prefetch-after-demand") load.tier.prefetch_after_demand = true;
        else if (a == "--history") prefetch.planner.history = true;
        else if (a == "--skip-current") prefetch.planner.skip_current = true;
        else if (a == "--slots-per-layer") load.tier.slots_per_layer = parse_number<std::uint32_t>(a, next());
        else if (a == "--reuse-prior") load.tier.reuse_prior = parse_number<double>(a, next());
        else if (a == "--pf-max") prefetch.planner.max_per_layer = parse_number<std::uint32_t>(a, next());
        else if (a == "--pf-current") prefetch.planner.max_current = parse_number<std::uint32_t>(a, next());
        else if (a == "--pf-min") prefetch.planner.min_per_layer = parse_number<std::uint32_t>(a, next());
        else if (a == "--pf-min-score") prefetch.planner.min_score = parse_number<float>(a, next());
        else if (a == "--pf-floor") prefetch.planner.gate_options.floor = parse_number<float>(a, next());
        else if (a == "--pf-gate") {
            const std::string v = next();
            if (v != "on" && v != "off") fail("--pf-gate wants on or off, not '" + v + "'");
            prefetch.planner.gate = v == "on";
        }
        else if (a == "--slow-disk") {
            slow_disk = next();
            auto spec = moed::tools::parse_slow_disk(slow_disk);
            if (!spec) fail(spec.error().message);
            moed::tools::apply_slow_disk(*spec, load.tier);
        } else fail("unknown argument '" + a + "'; usage: bench-decode -m MODEL [-t N] [-p N] [-n N] [-b N] [-r N]");
    }
    if (model_path.empty()) fail("no model given (-m MODEL)");

    auto loaded = moed::engine::model::load(model_path, load);
    if (!loaded) fail(loaded.error().message);
    moed::engine::model& m = **loaded;
    const auto& hp = m.hparams();
    moed::kernels::compute_pool pool(threads);
    moed::engine::evaluator eval(m, pool, std::min(n_batch, n_prompt));
    auto planner = moed::engine::attach_prefetch(eval, m, prefetch);
    if (!planner) fail(planner.error().message);
    moed::engine::kv_cache cache(moed::engine::kv_shape_of(hp), n_prompt + n_gen);

    std::vector<moed::engine::token_id> prompt(static_cast<std::size_t>(n_prompt));
    for (std::int64_t i = 0; i < n_prompt; ++i) prompt[i] = static_cast<moed::engine::token_id>((i * 7919 + 17) % hp.n_vocab);

    std::vector<float> logits;
    using clock = std::chrono::steady_clock;
    // One warm-up pass touches every weight once, as llama-bench's warm-up run does.
    {
        const std::vector<moed::engine::token_id> warm(prompt.begin(), prompt.begin() + std::min<std::int64_t>(n_prompt, 16));
        cache.clear();
        if (auto r = eval.run_sequence(warm, cache, logits); !r) fail(r.error().message);
    }
    std::vector<double> pp, tg, tg_wait_ns, tg_bytes, tg_misses;
    auto io_wait_ns = [&]() -> std::uint64_t { return m.tiers() ? m.tiers()->stats().prefetch.io_wait_ns : 0; };
    auto host_stats = [&]() { return m.tiers() ? m.tiers()->stats().host : moed::tier_stats{}; };
    for (int r = 0; r < reps; ++r) {
        cache.clear();
        auto start = clock::now();
        if (auto ok = eval.run_sequence(prompt, cache, logits); !ok) fail(ok.error().message);
        pp.push_back(static_cast<double>(n_prompt) / std::chrono::duration<double>(clock::now() - start).count());

        // Decode from an empty context, as llama-bench's tg test does.
        cache.clear();
        moed::engine::token_id token = prompt[0];
        const std::uint64_t wait_before = io_wait_ns();
        const moed::tier_stats host_before = host_stats();
        start = clock::now();
        for (std::int64_t i = 0; i < n_gen; ++i) {
            if (auto ok = eval.run_sequence(std::span<const moed::engine::token_id>(&token, 1), cache, logits); !ok) {
                fail(ok.error().message);
            }
            token = moed::engine::argmax(logits);
        }
        tg.push_back(static_cast<double>(n_gen) / std::chrono::duration<double>(clock::now() - start).count());
        tg_wait_ns.push_back(static_cast<double>(io_wait_ns() - wait_before) / static_cast<double>(n_gen));
        const moed::tier_stats host_after = host_stats();
        tg_bytes.push_back(static_cast<double>(host_after.bytes_read - host_before.bytes_read) / static_cast<double>(n_gen));
        tg_misses.push_back(static_cast<double>(host_after.misses - host_before.misses) / static_cast<double>(n_gen));
    }

    nlohmann::json out{
        {"bench", "decode"},
        {"model", model_path},
        {"threads", threads},
        {"isa", std::string(moed::kernels::isa_name(moed::kernels::active_isa()))},
        {"n_prompt", n_prompt},
        {"n_gen", n_gen},
        {"n_batch", n_batch},
        {"reps", reps},
        {"prefill_tokens_per_s", median(pp)},
        {"decode_tokens_per_s", median(tg)},
        {"prefill_runs", pp},
        {"decode_runs", tg},
        {"model_bytes", m.file().file_size()},
        {"kv_cache_bytes", cache.bytes()},
        {"peak_rss_bytes", moed::tools::peak_rss_bytes()},
        {"dense_bytes", m.dense_bytes()},
        {"expert_bytes", m.expert_bytes()},
    };
    if (const auto* tiers = m.tiers()) {
        auto st = tiers->stats();
        if (*planner) moed::scheduler::add_planner_stats((*planner)->stats(), st.prefetch);
        out["host_budget_bytes"] = st.host.capacity_bytes;
        out["host_budget_fraction"] = static_cast<double>(st.host.capacity_bytes) / static_cast<double>(m.expert_bytes());
        out["prefetch"] = prefetch.enabled;
        out["lookahead"] = prefetch.enabled ? prefetch.lookahead : 0;
        out["ring"] = load.tier.ring;
        out["slow_disk"] = slow_disk;
        // What compute waited for expert reads (or slots) per decoded token, median over reps.
        out["decode_io_wait_ns_per_token"] = median(tg_wait_ns);
        out["decode_io_wait_runs"] = tg_wait_ns;
        // Expert bytes read and acquires that waited for a read, per decoded token (median).
        out["decode_bytes_read_per_token"] = median(tg_bytes);
        out["decode_misses_per_token"] = median(tg_misses);
        out["tiers"] = st;
        if (*planner) {
            // How often the expert a single-token lookahead ranked r was chosen, per row
            // (row j: layer l + j predicted at the start of layer l), for the first 2k ranks.
            nlohmann::json rows = nlohmann::json::array();
            for (int j = 0; j < prefetch.lookahead; ++j) {
                auto rates = (*planner)->rank_hit_rates(j);
                rates.resize(std::min<std::size_t>(rates.size(), 2 * hp.n_expert_used));
                rows.push_back(rates);
            }
            out["lookahead_rank_hit_rates"] = rows;
        }
    }
    std::cout << out.dump() << "\n";
    return 0;
}
