#include "scheduler/recall.h"

#include <algorithm>

#include "common/assert.h"

namespace moed::scheduler {

const char* recall_predictor_name(recall_predictor p) noexcept {
    switch (p) {
        case recall_predictor::lookahead: return "lookahead";
        case recall_predictor::previous_token: return "previous_token";
        case recall_predictor::reuse: return "reuse";
        case recall_predictor::coactivation: return "coactivation";
        case recall_predictor::profile: return "profile";
        case recall_predictor::frequency: return "frequency";
        case recall_predictor::naive_sum: return "naive_sum";
        case recall_predictor::combined: return "combined";
    }
    return "?";
}

bool is_single_source(recall_predictor p) noexcept {
    return p != recall_predictor::naive_sum && p != recall_predictor::combined;
}

recall_counts& recall_report::at(recall_predictor p, std::uint32_t distance, std::uint32_t layer) {
    MOED_ASSERT(distance <= max_distance && layer < n_layer);
    return counts[(static_cast<std::size_t>(p) * (max_distance + 1) + distance) * n_layer + layer];
}

const recall_counts& recall_report::at(recall_predictor p, std::uint32_t distance, std::uint32_t layer) const {
    MOED_ASSERT(distance <= max_distance && layer < n_layer);
    return counts[(static_cast<std::size_t>(p) * (max_distance + 1) + distance) * n_layer + layer];
}

recall_counts recall_report::total(recall_predictor p, std::uint32_t distance) const {
    recall_counts sum;
    for (std::uint32_t l = 0; l < n_layer; ++l) sum += at(p, distance, l);
    return sum;
}

namespace {

class scorer {
public:
    scorer(recall_report& report, const trace_info& info) : report_(report), k_(info.n_expert_used) {}

    void score(recall_predictor p, std::uint32_t distance, std::uint32_t layer, std::span<const float> scores,
               std::span<const std::int32_t> chosen) {
        recall_counts& c = report_.at(p, distance, layer);
        ++c.samples;
        c.chosen += chosen.size();
        c.hits_k += hits_at_k(scores, chosen, k_);
        c.hits_2k += hits_at_k(scores, chosen, 2 * k_);
    }

private:
    recall_report& report_;
    std::uint32_t k_;
};

}  // namespace

result<recall_report> measure_recall(const trace_data& trace, std::span<const decode_token> order,
                                     const recall_options& options) {
    MOED_TRY(validate_trace(trace));
    const trace_info& info = trace.info;
    predictor_config pc = options.predictor;
    pc.n_layer = info.n_layer;
    pc.n_expert = info.n_expert;
    pc.n_expert_used = info.n_expert_used;
    pc.lookahead_depth = info.lookahead_depth;
    pc.max_sequences = 1;
    if (pc.max_distance > predictor_distance_max || info.lookahead_depth > predictor_distance_max ||
        info.n_expert > predictor_experts_max || info.n_layer > predictor_layers_max) {
        return make_error(errc::invalid_argument, "recall: the trace or the distance exceeds the predictor's limits");
    }
    expert_predictor predictor(pc);

    recall_report report;
    report.n_layer = info.n_layer;
    report.n_expert_used = info.n_expert_used;
    report.max_distance = pc.max_distance;
    report.lookahead_depth = info.lookahead_depth;
    report.counts.assign(n_recall_predictors * (pc.max_distance + 1) * info.n_layer, recall_counts{});
    scorer score(report, info);

    const std::size_t ne = info.n_expert;
    const std::uint32_t k = info.n_expert_used;
    std::vector<float> scores(ne), fallback(ne), look(ne);
    std::vector<std::int32_t> previous(static_cast<std::size_t>(info.n_layer) * k, 0);
    std::vector<std::uint8_t> has_previous(info.n_layer, 0);
    // The token's records by layer (decode order lists them in layer order).
    std::vector<const trace_record*> by_layer(info.n_layer, nullptr);

    auto score_target = [&](std::int64_t pos, std::uint32_t layer, std::uint32_t d) {
        const trace_record* truth = by_layer[layer];
        if (truth == nullptr) return;
        const std::span<const std::int32_t> chosen(truth->chosen);
        (void)predictor.predict_source(prediction_source::frequency, 0, pos, layer, d, fallback);
        auto source = [&](recall_predictor rp, prediction_source ps) {
            if (!predictor.predict_source(ps, 0, pos, layer, d, scores)) std::copy(fallback.begin(), fallback.end(), scores.begin());
            score.score(rp, d, layer, scores, chosen);
        };
        if (d >= 1 && d <= info.lookahead_depth) source(recall_predictor::lookahead, prediction_source::lookahead);
        source(recall_predictor::reuse, prediction_source::reuse);
        source(recall_predictor::coactivation, prediction_source::coactivation);
        if (predictor.has_profile()) source(recall_predictor::profile, prediction_source::profile);
        score.score(recall_predictor::frequency, d, layer, fallback, chosen);
        if (has_previous[layer]) {
            for (std::size_t e = 0; e < ne; ++e) scores[e] = 1e-4f * fallback[e];
            for (std::uint32_t i = 0; i < k; ++i) scores[static_cast<std::size_t>(previous[layer * k + i])] += 1.0f;
        } else {
            std::copy(fallback.begin(), fallback.end(), scores.begin());
        }
        score.score(recall_predictor::previous_token, d, layer, scores, chosen);
        if (d >= 1 && d <= info.lookahead_depth &&
            predictor.predict_source(prediction_source::lookahead, 0, pos, layer, d, look)) {
            // scores holds the previous token's indicators (+ a tie-break); add the router's.
            for (std::size_t e = 0; e < ne; ++e) scores[e] += look[e];
            score.score(recall_predictor::naive_sum, d, layer, scores, chosen);
        }
        predictor.predict(0, pos, layer, d, scores);
        score.score(recall_predictor::combined, d, layer, scores, chosen);
    };

    for (const decode_token& token : order) {
        if (token.first_of_sequence) {
            predictor.reset_sequence(0);
            predictor.set_profile(options.profile_of ? options.profile_of(token.tag) : std::span<const float>{});
            std::fill(has_previous.begin(), has_previous.end(), 0);
            report.has_profile = report.has_profile || predictor.has_profile();
        }
        std::fill(by_layer.begin(), by_layer.end(), nullptr);
        for (std::size_t idx : token.layers) by_layer[trace.records[idx].layer] = &trace.records[idx];

        // Distance 0: nothing of this token known yet.
        for (std::uint32_t l = 0; l < info.n_layer; ++l) score_target(token.pos, l, 0);
        for (std::size_t idx : token.layers) {
            const trace_record& rec = trace.records[idx];
            if (!rec.lookahead.empty() && info.lookahead_depth > 0) {
                predictor.observe_lookahead(0, rec.pos, rec.layer, rec.lookahead);
            }
            for (std::uint32_t d = 1; d <= pc.max_distance; ++d) {
                const std::uint32_t target = rec.layer + d - 1;
                if (target >= info.n_layer) break;
                score_target(rec.pos, target, d);
            }
            predictor.observe_routing(0, rec.pos, rec.layer, rec.chosen);
        }
        for (std::size_t idx : token.layers) {
            const trace_record& rec = trace.records[idx];
            std::copy(rec.chosen.begin(), rec.chosen.end(), previous.begin() + static_cast<std::ptrdiff_t>(rec.layer * k));
            has_previous[rec.layer] = 1;
        }
    }

    report.final_weights.reserve(static_cast<std::size_t>(pc.max_distance + 1) * info.n_layer * n_prediction_sources);
    for (std::uint32_t d = 0; d <= pc.max_distance; ++d) {
        for (std::uint32_t l = 0; l < info.n_layer; ++l) {
            const auto w = predictor.mixture_weights(l, d);
            report.final_weights.insert(report.final_weights.end(), w.begin(), w.end());
        }
    }
    return report;
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
