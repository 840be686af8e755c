// bench/batch: the engine's batching gain without the HTTP layer. For each S in a list,
// S sequences each get a short prompt and then decode N tokens together, one forward pass
// of S tokens per step (what the daemon's continuous batching does); prints one JSON object
// with total decode tokens/s (and process CPU time per token) per S and the ratio of the largest S to S=1. Compare with
// bench/compare-serve.sh, which measures the same through the socket, to see what the
// server adds.
//
//   bench-batch -m MODEL [-t THREADS] [-s 1,4,16] [-n 64] [-p 16] [-r REPS]
#include <time.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/evaluator.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/thread_pool.h"
#include "tools/cli_util.h"

namespace {

[[noreturn]] void fail(const std::string& message) { moed::tools::fail("bench-batch", message); }

template <typename T>
T parse_number(const std::string& flag, const char* text) {
    return moed::tools::parse_number<T>("bench-batch", flag, text, moed::tools::sign::positive);
}

std::vector<std::int64_t> parse_list(const std::string& flag, const std::string& text) {
    std::vector<std::int64_t> out;
    std::stringstream ss(text);
    for (std::string item; std::getline(ss, item, ',');) out.push_back(parse_number<std::int64_t>(flag, item.c_str()));
    if (out.empty()) fail("empty list after " + flag);
    return out;
}

// CPU time of the whole process: with -t 1 it is the engine's own cost per token, which a
// busy machine does not inflate the way it inflates wall time.
double process_cpu_s() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    namespace engine = moed::engine;
    std::string model_path;
    int threads = 2;
    std::vector<std::int64_t> seqs{1, 4, 16};
    std::int64_t n_gen = 64, n_prompt = 16;
    int reps = 3;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char* {
            if (i + 1 >= argc) fail("missing value after " + a);
            return argv[++i];
        };
        if (a == "-m") model_path = next();
        else if (a == "-t") threads = parse_number<int>(a, next());
        else if (a == "-s") seqs = parse_list(a, next());
        else if (a == "-n") n_gen = parse_number<std::int64_t>(a, next());
        else if (a == "-p") n_prompt = parse_number<std::int64_t>(a, next());
        else if (a == "-r") reps = parse_number<int>(a, next());
        else fail("unknown argument '" + a + "'; usage: bench-batch -m MODEL [-t N] [-s 1,4,16] [-n N] [-p N] [-r N]");
    }
    if (model_path.empty()) fail("no model given (-m MODEL)");

    auto loaded = engine::model::load(model_path, {});
    if (!loaded) fail(loaded.error().message);
    engine::model& m = **loaded;
    const auto& hp = m.hparams();
    const std::int64_t max_s = *std::max_element(seqs.begin(), seqs.end());
    if (n_prompt + n_gen > hp.n_ctx_train) fail("-p plus -n exceeds the model's context");
    moed::kernels::compute_pool pool(threads);
    engine::evaluator eval(m, pool, std::max(max_s, n_prompt));
    std::vector<std::unique_ptr<engine::kv_cache>> caches;
    for (std::int64_t s = 0; s < max_s; ++s) {
        caches.push_back(std::make_unique<engine::kv_cache>(engine::kv_shape_of(hp), n_prompt + n_gen));
    }
    const std::size_t vocab = static_cast<std::size_t>(hp.n_vocab);
    std::vector<float> logits(static_cast<std::size_t>(max_s) * vocab);
    std::vector<engine::batch_token> batch;
    using clock = std::chrono::steady_clock;

    nlohmann::json results = nlohmann::json::array();
    double first = 0.0, last = 0.0;
    for (const std::int64_t s : seqs) {
        std::vector<double> runs, cpu_us;
        for (int r = 0; r < reps; ++r) {
            // Each sequence gets its own prompt (distinct ids, so they route differently).
            std::vector<engine::token_id> next(static_cast<std::size_t>(s));
            std::vector<float> last_logits;
            for (std::int64_t q = 0; q < s; ++q) {
                caches[q]->clear();
                std::vector<engine::token_id> prompt(static_cast<std::size_t>(n_prompt));
                for (std::int64_t i = 0; i < n_prompt; ++i) prompt[i] = static_cast<engine::token_id>(((q + 1) * 7919 + i * 104729) % hp.n_vocab);
                if (auto ok = eval.run_sequence(prompt, *caches[q], last_logits); !ok) fail(ok.error().message);
                next[q] = engine::argmax(last_logits);
            }
            const auto start = clock::now();
            const double cpu0 = process_cpu_s();
            for (std::int64_t step = 0; step < n_gen; ++step) {
                batch.clear();
                for (std::int64_t q = 0; q < s; ++q) {
                    batch.push_back(engine::batch_token{next[q], caches[q]->size(), caches[q].get(), true});
                }
                if (auto ok = eval.run(batch, logits.data()); !ok) fail(ok.error().message);
                for (std::int64_t q = 0; q < s; ++q) {
                    next[q] = engine::argmax(std::span<const float>(logits.data() + q * vocab, vocab));
                }
            }
            runs.push_back(static_cast<double>(s * n_gen) / std::chrono::duration<double>(clock::now() - start).count());
            cpu_us.push_back((process_cpu_s() - cpu0) * 1e6 / static_cast<double>(s * n_gen));
        }
        const double tps = median(runs);
        if (s == seqs.front()) first = tps;
        last = tps;
        results.push_back({{"sequences", s}, {"decode_tokens_per_s", tps}, {"runs", runs},
                           {"cpu_us_per_token", median(cpu_us)}});
    }
    nlohmann::json out{
        {"bench", "batch"},
        {"model", model_path},
        {"threads", threads},
        {"isa", std::string(moed::kernels::isa_name(moed::kernels::active_isa()))},
        {"n_prompt", n_prompt},
        {"n_gen", n_gen},
        {"results", results},
        {"gain_last_over_first", first > 0 ? last / first : 0.0},
    };
    std::cout << out.dump() << "\n";
    return 0;
}
