#include "engine/prefetch.h"

#include <algorithm>
#include <vector>

namespace moed::engine {

result<std::unique_ptr<scheduler::prefetch_planner>> attach_prefetch(evaluator& eval, model& m,
                                                                     const prefetch_options& options) {
    if (!options.enabled || m.tiers() == nullptr) return std::unique_ptr<scheduler::prefetch_planner>();
    if (options.lookahead < 1 || options.lookahead > max_lookahead_depth) {
        return make_error(errc::invalid_argument, "prefetch lookahead {} is outside 1..{}", options.lookahead,
                          max_lookahead_depth);
    }
    const model_hparams& hp = m.hparams();
    scheduler::prefetch_planner_options po = options.planner;
    po.depth = options.lookahead;
    auto planner =
        std::make_unique<scheduler::prefetch_planner>(*m.tiers(), hp.n_moe_layer(), hp.n_expert, hp.n_expert_used, po);
    eval.set_lookahead_depth(std::max(eval.lookahead_depth(), options.lookahead));
    scheduler::prefetch_planner* p = planner.get();
    // Sequence ids only matter to the planner's history; the buffer grows to the largest
    // batch once and is reused.
    auto seqs = std::make_shared<std::vector<std::uint64_t>>();
    auto fill = [seqs, history = po.history](std::span<const batch_token> tokens) -> std::span<const std::uint64_t> {
        if (!history) return {};
        seqs->resize(tokens.size());
        for (std::size_t t = 0; t < tokens.size(); ++t) (*seqs)[t] = tokens[t].seq;
        return *seqs;
    };
    eval.add_layer_start_observer([p, fill](const lookahead_event& ev) {
        p->on_layer_start(ev.layer, ev.n_tokens, fill(ev.tokens), ev.depth, ev.probs);
    });
    eval.add_routing_observer([p, fill](const routing_event& ev) {
        p->on_routing(ev.layer, ev.n_tokens, fill(ev.tokens), ev.chosen);
    });
    return planner;
}

}  // namespace moed::engine
