#include "engine/generator.h"

#include <chrono>

namespace moed::engine {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

result<generation_result> generate(evaluator& eval, const model& m, kv_cache& cache,
                                   const generation_request& request) {
    MOED_TRY(request.sampling.validate());
    if (request.prompt.empty()) return make_error(errc::invalid_argument, "the prompt has no tokens");
    if (request.n_predict < 0) return make_error(errc::invalid_argument, "n_predict {} must be >= 0", request.n_predict);
    const std::int64_t needed = static_cast<std::int64_t>(request.prompt.size()) + request.n_predict;
    if (needed > cache.n_ctx()) {
        return make_error(errc::invalid_argument,
                          "prompt of {} tokens plus {} to generate exceeds the context of {} tokens",
                          request.prompt.size(), request.n_predict, cache.n_ctx());
    }
    cache.clear();
    generation_result out;
    if (request.n_predict == 0) return out;

    sampler smp(request.sampling);
    std::vector<token_id> history = request.prompt;
    history.reserve(static_cast<std::size_t>(needed));
    std::vector<float> logits;
    utf8_stream text;

    auto start = std::chrono::steady_clock::now();
    MOED_TRY(eval.run_sequence(request.prompt, cache, logits, request.seq));
    out.prefill_seconds = seconds_since(start);

    start = std::chrono::steady_clock::now();
    for (std::int32_t i = 0; i < request.n_predict; ++i) {
        if (i > 0) {
            const token_id last = out.tokens.back();
            MOED_TRY(eval.run_sequence(std::span<const token_id>(&last, 1), cache, logits, request.seq));
            ++out.decode_steps;
        }
        const token_id next = smp.sample(logits, history, out.tokens.size());
        out.tokens.push_back(next);
        history.push_back(next);
        const std::string piece = text.push(m.vocab().token_bytes(next));
        out.text += piece;
        if (request.on_token && !request.on_token(next, piece)) break;
        if (request.stop_at_eog && m.vocab().is_eog(next)) break;
    }
    out.decode_seconds = seconds_since(start);
    const std::string rest = text.finish();
    out.text += rest;
    if (request.on_token && !rest.empty()) request.on_token(-1, rest);
    return out;
}

}  // namespace moed::engine
