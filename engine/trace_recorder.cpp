#include "engine/trace_recorder.h"

#include <algorithm>
#include <filesystem>

#include "common/log.h"
#include "scheduler/model_identity.h"

namespace moed::engine {

namespace {
constexpr std::string_view k_component = "trace";
}  // namespace

scheduler::trace_info make_trace_info(const model& m, std::uint32_t lookahead_depth) {
    const model_hparams& hp = m.hparams();
    scheduler::trace_info info;
    if (const storage::gguf_value* name = m.file().find("general.name")) {
        if (auto s = name->as_string("general.name")) info.model_name = std::string(*s);
    }
    if (info.model_name.empty()) info.model_name = std::filesystem::path(m.file().path()).filename().string();
    if (info.model_name.size() > scheduler::trace_max_name_bytes) info.model_name.resize(scheduler::trace_max_name_bytes);
    info.model_id = scheduler::model_identity(m.file());
    info.n_layer = hp.n_moe_layer();
    info.n_expert = hp.n_expert;
    info.n_expert_used = hp.n_expert_used;
    info.lookahead_depth = lookahead_depth;
    for (std::uint32_t l = 0; l < hp.n_moe_layer(); ++l) info.expert_bytes.push_back(m.experts_layout().expert_bytes(l));
    return info;
}

trace_recorder::trace_recorder(scheduler::trace_writer& writer) : writer_(writer) {
    const scheduler::trace_info& info = writer_.info();
    record_.probs.reserve(info.n_expert);
    record_.chosen.reserve(info.n_expert_used);
    record_.lookahead.reserve(static_cast<std::size_t>(info.lookahead_depth) * info.n_expert);
}

void trace_recorder::attach(evaluator& eval) {
    MOED_ASSERT(writer_.info().lookahead_depth <= static_cast<std::uint32_t>(max_lookahead_depth));
    // A deeper lookahead set by someone else (the prefetch planner) stays: the recorder
    // takes the first rows it needs.
    eval.set_lookahead_depth(std::max(eval.lookahead_depth(), static_cast<int>(writer_.info().lookahead_depth)));
    batch_seqs_.reserve(static_cast<std::size_t>(eval.max_batch()));
    eval.add_routing_observer([this](const routing_event& ev) { on_routing(ev); });
}

void trace_recorder::begin_sequence(std::uint64_t seq, std::uint32_t tag, std::int64_t prompt_tokens) {
    sequences_[seq] = sequence_info{tag, prompt_tokens};
}

void trace_recorder::end_sequence(std::uint64_t seq) { sequences_.erase(seq); }

result<void> trace_recorder::status() const {
    if (failed_) return unexpected(error_);
    return {};
}

void trace_recorder::stop(error err) {
    MOED_LOG_ERROR(k_component, "routing trace {} stopped: {}", writer_.path(), err.message);
    failed_ = true;
    error_ = std::move(err);
}

void trace_recorder::on_routing(const routing_event& ev) {
    if (failed_) return;
    const scheduler::trace_info& info = writer_.info();
    const std::size_t n_exp = info.n_expert;
    const std::size_t k = info.n_expert_used;
    const std::size_t depth = info.lookahead_depth;
    if (ev.lookahead_depth < static_cast<int>(depth)) {
        stop(error{errc::internal, fmt::format("the evaluator's lookahead depth {} is below the trace's {}",
                                               ev.lookahead_depth, depth)});
        return;
    }
    const auto n = static_cast<std::size_t>(ev.n_tokens);
    // Sequences the caller did not declare: prefill when the batch holds several of their
    // tokens (a decode step gives each sequence one).
    bool guess_needed = false;
    for (const batch_token& bt : ev.tokens) guess_needed |= !sequences_.contains(bt.seq);
    if (guess_needed) {
        batch_seqs_.clear();
        for (const batch_token& bt : ev.tokens) batch_seqs_.push_back(bt.seq);
        std::sort(batch_seqs_.begin(), batch_seqs_.end());
    }
    for (std::size_t t = 0; t < n; ++t) {
        const batch_token& bt = ev.tokens[t];
        record_.seq = bt.seq;
        record_.pos = bt.pos;
        record_.token = bt.token;
        record_.layer = ev.layer;
        if (auto it = sequences_.find(bt.seq); it != sequences_.end()) {
            record_.tag = it->second.tag;
            record_.prefill = bt.pos < it->second.prompt_tokens;
        } else {
            record_.tag = 0;
            const auto [lo, hi] = std::equal_range(batch_seqs_.begin(), batch_seqs_.end(), bt.seq);
            record_.prefill = hi - lo > 1;
        }
        record_.probs.assign(ev.probs.begin() + t * n_exp, ev.probs.begin() + (t + 1) * n_exp);
        record_.chosen.assign(ev.chosen.begin() + t * k, ev.chosen.begin() + (t + 1) * k);
        record_.lookahead.resize(depth * n_exp);
        for (std::size_t j = 0; j < depth; ++j) {
            const float* row = ev.lookahead.data() + (j * n + t) * n_exp;
            std::copy_n(row, n_exp, record_.lookahead.data() + j * n_exp);
        }
        if (auto written = writer_.write(record_); !written) {
            stop(std::move(written).error());
            return;
        }
    }
}

}  // namespace moed::engine
